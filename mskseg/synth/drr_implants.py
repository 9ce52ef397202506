"""Metal implants inserted into the volume before a radiograph is rendered (:mod:`mskseg.synth.drr`).

:func:`pedicle_screws` (bilateral screws in 2-4 adjacent thoracolumbar vertebrae joined by two rods) and
:func:`hip_prosthesis` (stem, neck and head in a femur) build parts (:class:`Capsule`, :class:`Shell`) in LPS
mm; :func:`rasterize` paints them into the working volume with their attenuation relative to bone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..anatomy import label_order as vertebra_rank
from ..anatomy import vertebra_order
from .drr_projection import WorkingVolume


# Linear attenuation of implant materials relative to water near 50 keV (titanium alloy ~4.4 g/cm3, cobalt-chrome
# ~8.3 g/cm3). Both are far beyond the display window: what matters is that they saturate like real metal.
_TITANIUM_RATIO = 14.0
_COCR_RATIO = 45.0


# ----------------------------------------------------------------------------------------------- implants
@dataclass
class Capsule:
    """A cylinder with round ends from ``a`` to ``b`` (LPS mm), ``radius`` mm, attenuation ``ratio`` x water."""

    a: np.ndarray
    b: np.ndarray
    radius: float
    ratio: float


@dataclass
class Shell:
    """A hemispherical shell (acetabular cup): radii ``r_in``..``r_out`` around ``centre``, open against ``normal``."""

    centre: np.ndarray
    r_in: float
    r_out: float
    normal: np.ndarray
    ratio: float


def pedicle_screws(bodies: dict[str, np.ndarray], rng: np.random.Generator
                    ) -> tuple[list[Capsule | Shell], dict[str, Any]] | None:
    """Bilateral pedicle screws in 2-4 adjacent thoracolumbar vertebrae joined by two rods (LPS mm)."""
    levels = sorted((n for n in bodies if (vertebra_rank(n) or 0) > vertebra_order("T8")), key=vertebra_rank)
    if len(levels) < 2:
        return None
    count = int(min(len(levels), rng.integers(2, 5)))
    first = int(rng.integers(0, len(levels) - count + 1))
    chosen = levels[first:first + count]
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    ratio = _TITANIUM_RATIO * float(rng.uniform(0.8, 1.2))
    rod_ratio = float(rng.choice([_TITANIUM_RATIO, _COCR_RATIO]))
    parts: list[Capsule | Shell] = []
    heads: dict[float, list[np.ndarray]] = {-1.0: [], 1.0: []}
    for name in chosen:
        body = bodies[name]
        length = float(rng.uniform(40.0, 50.0))
        for side in (-1.0, 1.0):
            conv = np.deg2rad(rng.uniform(8.0, 16.0))
            tip = body + side * 5.0 * ex - 8.0 * ey
            axis = np.cos(conv) * ey + np.sin(conv) * side * ex
            base = tip + length * axis
            head = base + 10.0 * ey
            parts.append(Capsule(tip, base, 3.25, ratio))
            parts.append(Capsule(base, head, 5.5, ratio))
            heads[side].append(head + 1.0 * ey)
    for pts in heads.values():
        pts_arr = np.array(pts)
        direction = pts_arr[-1] - pts_arr[0]
        direction /= max(np.linalg.norm(direction), 1e-6)
        ends = [pts_arr[0] - 8.0 * direction] + list(pts_arr[1:-1]) + [pts_arr[-1] + 8.0 * direction]
        for a, b in zip(ends[:-1], ends[1:]):
            parts.append(Capsule(np.asarray(a), np.asarray(b), 2.75, rod_ratio))
    return parts, {"kind": "pedicle_screws", "levels": chosen}


def hip_prosthesis(femurs: dict[str, np.ndarray], rng: np.random.Generator
                    ) -> tuple[list[Capsule | Shell], dict[str, Any]] | None:
    """A total hip: cup, head, neck and tapered stem along one femur given as LPS points ``(N, 3)``."""
    if not femurs:
        return None
    side = sorted(femurs)[int(rng.integers(0, len(femurs)))]
    pts = femurs[side]
    z = pts[:, 2]
    top = z.max()
    if top - z.min() < 40.0:
        return None
    head = pts[z >= top - 20.0].mean(0) - np.array([0.0, 0.0, 6.0])
    # Where the map ends above the shaft (abdominal CTs), the stem continues straight down out of the volume.
    below = pts[(z <= top - 70.0) & (z >= top - 100.0)]
    proximal = below.mean(0) if len(below) else head + np.array([0.0, 0.0, -80.0])
    distal = pts[(z <= top - 130.0) & (z >= top - 160.0)]
    distal_pt = distal.mean(0) if len(distal) else proximal - np.array([0.0, 0.0, 70.0])
    medial = np.array([-1.0 if "left" in side else 1.0, 0.0, 0.0])
    ratio = _COCR_RATIO * float(rng.uniform(0.8, 1.2))
    r_head = float(rng.uniform(14.0, 18.0))
    shoulder = proximal + np.array([0.0, 0.0, 35.0]) - 6.0 * medial
    normal = (np.array([0.0, 0.0, 1.0]) + medial) / np.sqrt(2.0)
    parts: list[Capsule | Shell] = [
        Capsule(head, head, r_head, ratio),
        Capsule(head, shoulder, 6.5, ratio),
        Capsule(shoulder, proximal, 9.0, ratio),
        Capsule(proximal, distal_pt, 6.0, ratio),
        Shell(head, r_head + 1.0, r_head + 5.0, normal, _TITANIUM_RATIO),
    ]
    return parts, {"kind": "hip_prosthesis", "side": side}


def _part_box(part: Capsule | Shell, vol: WorkingVolume) -> tuple[np.ndarray, np.ndarray]:
    """Working-grid index range ``[i0, i1)`` (clipped to the volume) that holds an implant part."""
    if isinstance(part, Capsule):
        ends, r = np.stack([part.a, part.b]) @ vol.axes.T, part.radius
    else:
        ends, r = part.centre[None] @ vol.axes.T, part.r_out
    shape = np.array(vol.hu.shape)
    i0 = np.clip(np.floor((ends.min(0) - r - 1.0 - vol.start) / vol.step).astype(int), 0, shape)
    i1 = np.clip(np.ceil((ends.max(0) + r + 1.0 - vol.start) / vol.step).astype(int) + 1, 0, shape)
    return i0, i1


def rasterize(parts: list[Capsule | Shell], vol: WorkingVolume
               ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]] | None:
    """Occupancy (0..1, anti-aliased) and attenuation ratio of implant parts on the working grid, cropped.

    Returns ``(occupancy, ratio, first index)`` of the box holding all parts, or None when all lie outside.
    """
    boxes = [_part_box(part, vol) for part in parts]
    inside = [k for k, (i0, i1) in enumerate(boxes) if np.all(i1 > i0)]
    if not inside:
        return None
    lo = np.min([boxes[k][0] for k in inside], axis=0)
    hi = np.max([boxes[k][1] for k in inside], axis=0)
    occ = np.zeros(tuple(hi - lo), np.float32)
    ratio = np.zeros(tuple(hi - lo), np.float32)
    h = float(vol.step.min())
    for k in inside:
        part, (i0, i1) = parts[k], boxes[k]
        grids = [vol.start[a] + vol.step[a] * np.arange(i0[a], i1[a]) for a in range(3)]
        pos = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1)
        if isinstance(part, Capsule):
            a, b = part.a @ vol.axes.T, part.b @ vol.axes.T
            ab = b - a
            denom = float(ab @ ab)
            x = np.clip(((pos - a) @ ab) / denom, 0.0, 1.0) if denom > 0 else np.zeros(pos.shape[:3])
            dist = np.linalg.norm(pos - (a + x[..., None] * ab), axis=-1)
            o = np.clip((part.radius - dist) / h + 0.5, 0.0, 1.0)
        else:
            c = part.centre @ vol.axes.T
            n = part.normal @ vol.axes.T
            dist = np.linalg.norm(pos - c, axis=-1)
            o = np.clip((part.r_out - dist) / h + 0.5, 0, 1) * np.clip((dist - part.r_in) / h + 0.5, 0, 1)
            o = o * (((pos - c) @ n) > 0)
        window = tuple(slice(i0[a] - lo[a], i1[a] - lo[a]) for a in range(3))
        better = o > occ[window]
        occ[window] = np.where(better, o, occ[window])
        ratio[window] = np.where(better, part.ratio, ratio[window])
    return occ, ratio, (int(lo[0]), int(lo[1]), int(lo[2]))
