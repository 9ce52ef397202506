"""Rule-based vertebra counting, independent of any network: the cross-check of the learned detector.

A bone mask with a threshold adapted to the bone density, the spinal column per slice, a robustly smoothed
centreline, the bone density profile along it (the junctions between vertebral bodies, a dark disc between
bright endplates, found as the most regular strong sequence of departures from the body plateau), the sacrum
(wide bone with iliac wings at its sides) as the inferior anchor and the last vertebra with ribs attached as the
superior anchor. L1..L5 are counted from both anchors (:func:`rule_based_levels`). Its last-rib finder merges
the last rib with enhancing kidneys and its sacrum finder misses a sacralised L5, so its anchors are reported
but do not flag transitional anatomy (:mod:`mskseg.spine.transitional` does).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..image import Image
from .checks import LevelNotFoundError
from .geometry import Canonical, block_mean, canonical


@dataclass
class RuleLevels:
    """What the rule-based count found.

    Attributes:
        levels: vertebra name -> LPS z (mm) of its body centre, as counted (from the sacrum when it is in the
            field of view, else from the last rib).
        discs_mm: z (mm) of the intervertebral discs found, superior first.
        bodies_mm: z (mm) of the vertebral bodies between them, superior first.
        sacrum_top_mm: z of the top of the sacrum (None when not in the field of view).
        last_rib_mm: z of the body of the last vertebra bearing ribs (None when not found).
        l3_from_sacrum_mm, l3_from_ribs_mm: L3 counted from each anchor (None when that anchor is missing).
        lumbar_count: vertebrae between the last rib-bearing one and the sacrum (5 in typical anatomy).
        warnings: transitional anatomy and other findings.
        bone_threshold_hu: the bone threshold used.
    """

    levels: dict[str, float]
    discs_mm: list[float]
    bodies_mm: list[float]
    sacrum_top_mm: float | None
    last_rib_mm: float | None
    l3_from_sacrum_mm: float | None
    l3_from_ribs_mm: float | None
    lumbar_count: int | None
    warnings: list[str]
    bone_threshold_hu: float


def _downsampled(can: Canonical, pixel_mm: float = 2.0) -> tuple[np.ndarray, float, float]:
    """(Z, Y', X') float32 in-plane block means to about ``pixel_mm`` pixels; returns (array, sx', sy')."""
    sx, sy, _ = can.spacing
    by, bx = max(1, int(round(pixel_mm / sy))), max(1, int(round(pixel_mm / sx)))
    ny, nx = can.array.shape[1] // by, can.array.shape[2] // bx
    out = np.empty((can.array.shape[0], ny, nx), np.float32)
    for z0 in range(0, can.array.shape[0], 32):
        z1 = min(can.array.shape[0], z0 + 32)
        out[z0:z1] = block_mean(can.array[z0:z1], by, bx, ny, nx)
    return out, sx * bx, sy * by


def _robust_smooth(values: np.ndarray, valid: np.ndarray, window: int, sigma: float, limit: float) -> np.ndarray:
    """Median filter, outlier rejection (> ``limit`` from the median), interpolation of gaps, Gaussian smoothing."""
    idx = np.arange(len(values))
    if valid.sum() < 3:
        return np.full(len(values), np.nan)
    filled = np.interp(idx, idx[valid], values[valid])
    med = ndimage.median_filter(filled, size=max(3, window | 1), mode="nearest")
    good = valid & (np.abs(values - med) <= limit)
    if good.sum() < 3:
        good = valid
    filled = np.interp(idx, idx[good], values[good])
    med = ndimage.median_filter(filled, size=max(3, window | 1), mode="nearest")
    return ndimage.gaussian_filter1d(med, sigma=max(sigma, 0.5), mode="nearest")


def _regular_junctions(junction: np.ndarray, z_mm: np.ndarray, valid: np.ndarray,
                       gap_mm: tuple[float, float] = (24.0, 50.0), regularity: float = 6.0,
                       cost: float = 0.4) -> list[float]:
    """Junctions between vertebral bodies as the most regular strong sequence of ``junction`` maxima.

    Dynamic programming on a 1 mm grid: each junction scores its normalised junction strength minus ``cost``,
    consecutive gaps must lie in ``gap_mm`` and are penalised by ``regularity`` x (relative change of the gap)^2,
    so that a weak junction between two strong ones is still found (vertebrae change height slowly) and noise
    peaks that break the rhythm are not.

    Returns:
        z (mm) of the junctions, superior first.
    """
    if valid.sum() < 3:
        return []
    lo, hi = float(z_mm[valid].min()), float(z_mm[valid].max())
    grid = np.arange(lo, hi + 0.5, 1.0)
    order = np.argsort(z_mm)
    strength = np.interp(grid, z_mm[order], junction[order])
    # normalised locally (+-60 mm): junctions of the lumbar spine count as much as the bright thoracic ones
    scale = ndimage.maximum_filter1d(ndimage.gaussian_filter1d(strength, 3.0), size=121, mode="nearest")
    scale = np.maximum(scale, 0.25 * float(np.percentile(strength, 95)) + 1e-6)
    gain = np.clip(strength / scale, 0.0, 1.5) - cost
    n = len(grid)
    gaps = np.arange(int(gap_mm[0]), int(gap_mm[1]) + 1)
    g_count = len(gaps)
    score = np.full((n, g_count), -np.inf)
    back = np.full((n, g_count), -1, int)
    # change penalty between the previous gap (columns) and the new one (rows)
    penalty = regularity * ((gaps[:, None] - gaps[None, :]) / gaps[None, :]) ** 2
    start = gain.copy()  # a first junction has no gap yet
    best_any = np.full(n, -np.inf)  # best score of a path ending at i (any gap), for the second junction
    for i in range(n):
        best_any[i] = max(start[i], float(np.max(score[i])) if np.isfinite(score[i]).any() else -np.inf)
        for gi, g in enumerate(gaps):
            j = i + g
            if j >= n:
                break
            # predecessor i with its own gap state, or i as the first junction
            with np.errstate(invalid="ignore"):
                cand = score[i] - penalty[gi]
            k = int(np.argmax(cand)) if np.isfinite(cand).any() else -1
            value, state = (float(cand[k]), k) if k >= 0 else (-np.inf, -1)
            if start[i] > value:
                value, state = float(start[i]), g_count  # g_count marks "i was the first junction"
            total = value + gain[j]
            if total > score[j, gi]:
                score[j, gi] = total
                back[j, gi] = i * (g_count + 1) + state
    end_scores = np.where(np.isfinite(score), score, -np.inf)
    if not np.isfinite(end_scores).any():
        return []
    j, gi = np.unravel_index(int(np.argmax(end_scores)), end_scores.shape)
    chosen = [int(j)]
    while True:
        code = back[j, gi]
        if code < 0:
            break
        i, state = divmod(int(code), g_count + 1)
        chosen.append(i)
        if state == g_count:
            break
        j, gi = i, state
    return sorted((float(grid[c]) for c in chosen), reverse=True)


def rule_based_levels(image: Image) -> RuleLevels:
    """Count the vertebral levels with anatomical rules alone (no network): the cross-check of
    :func:`mskseg.spine.levels.find_vertebra_levels`.

    Steps: bone mask with a threshold adapted to the bone density; per slice, the spinal column = the largest
    bone component near the body's midline, posterior to its centre; a centreline smoothed robustly (median
    filters, outlier rejection, Gaussian); the bone profile along it (mean of HU above 100 in a box on the
    vertebral body) whose departures from the body plateau (dark disc, bright endplates) mark the junctions, taken
    as the most regular strong sequence (``_regular_junctions``; robust to low bone density, where the disc
    is hardly darker than the body); the sacrum (wide spine bone with iliac bone at its sides, over at least
    20 mm) as the inferior anchor; ribs (long bone components whose medial end lies
    beside the spine) and the lowest vertebra they attach to as the superior anchor. L1..L5 are counted from both.

    Args:
        image: CT volume in HU (axial slices).

    Returns:
        :class:`RuleLevels`.

    Raises:
        LevelNotFoundError: no spinal column or fewer than two discs were found, or neither anchor is in the
            field of view, so nothing can be counted.
    """
    can = canonical(image)
    vol, px, py = _downsampled(can, 2.0)
    z_mm = can.z_mm
    dz = abs(float(can.spacing[2]))
    cx, cy, threshold = _body_centre_and_bone_threshold(vol, px, py)
    column = _spinal_column(vol > threshold, cx, cy, px, py)
    x_s, y_s = column["x"], column["y"]
    valid = ~np.isnan(x_s)
    if valid.sum() < max(5, int(40 / dz)):
        raise LevelNotFoundError("no spinal column was found in the image", "load a CT of the abdomen with the spine "
                                 "in the field of view")
    win = int(round(31.0 / dz))
    xc = _robust_smooth(x_s, valid, win, 8.0 / dz, 8.0)
    yc = _robust_smooth(y_s, valid, win, 8.0 / dz, 8.0)
    discs = _disc_junctions(vol, xc, yc, px, py, dz, z_mm, valid)
    if len(discs) < 2:
        raise LevelNotFoundError("the rule-based count found fewer than two intervertebral discs",
                                 "the spine may be outside the field of view or hidden by metal")
    bodies = [0.5 * (a + b) for a, b in zip(discs[:-1], discs[1:])]
    sacrum_top = _sacrum_top(column["width"], column["iliac"], dz, z_mm)
    rib_heads = _rib_heads(vol, threshold, xc, yc, px, py, dz, z_mm, sacrum_top)
    return _count_levels(discs, bodies, rib_heads, sacrum_top, threshold)


def _z_at(index: float, z_mm: np.ndarray) -> float:
    """z (mm) at a continuous canonical slice index."""
    return float(np.interp(index, np.arange(len(z_mm)), z_mm))


def _body_centre_and_bone_threshold(vol: np.ndarray, px: float, py: float) -> tuple[float, float, float]:
    """The body's centre ``(cx, cy)`` mm in the (Z, Y, X) volume and a bone threshold (HU) adapted to the density
    of the spine's cancellous bone (between soft tissue and it, 180..250 HU)."""
    nz = vol.shape[0]
    body_xy = vol[:: max(1, nz // 40)].mean(axis=0) > -400
    if body_xy.sum() < 50:
        raise LevelNotFoundError("no body was found in the image (nothing above -400 HU)", "load a CT of the abdomen")
    bjj, bii = np.nonzero(body_xy)
    cx, cy = float(np.median(bii) * px), float(np.median(bjj) * py)
    # adaptive bone threshold: between soft tissue and the density of the spine's cancellous bone
    core = vol[:, max(0, int((cy - 20) / py)): int((cy + 90) / py), max(0, int((cx - 25) / px)): int((cx + 25) / px)]
    bright = core[core > 120]
    cancellous = float(np.percentile(bright, 40)) if bright.size > 100 else 250.0
    threshold = float(np.clip(0.5 * (cancellous + 60.0), 180.0, 250.0))
    return cx, cy, threshold


def _spinal_column(bone: np.ndarray, cx: float, cy: float, px: float, py: float) -> dict[str, np.ndarray]:
    """Per slice of the (Z, Y, X) bone mask: the spinal column = the largest bone component near the body's
    midline, posterior to its centre.

    Returns:
        ``{"x", "y"}``: (Z,) mm of the vertebral body (the anterior half of the column's bone; NaN where there is
        none), ``"width"``: (Z,) mm of the column's bone, ``"iliac"``: (Z,) bool, large bone areas on both sides.
    """
    nz, ny, nx = bone.shape
    xs = np.arange(nx) * px
    ys = np.arange(ny) * py
    x_s = np.full(nz, np.nan)
    y_s = np.full(nz, np.nan)
    width = np.zeros(nz)
    iliac = np.zeros(nz, bool)
    search = (np.abs(xs[None, :] - cx) < 50) & (ys[:, None] > cy - 40) & (ys[:, None] < cy + 130)
    structure = np.ones((3, 3), bool)
    for z in range(nz):
        lab, n = ndimage.label(bone[z], structure)
        if n == 0:
            continue
        counts = np.bincount(lab[search].ravel(), minlength=n + 1)
        counts[0] = 0
        best = int(np.argmax(counts))
        if counts[best] * px * py < 150.0:  # less than 1.5 cm2 of bone: no vertebra on this slice
            continue
        comp = lab == best
        jj, ii = np.nonzero(comp)
        # the vertebral body: the anterior half of the column's bone (posterior elements behind it)
        anterior = jj <= np.median(jj)
        x_s[z] = float(np.median(ii[anterior])) * px
        y_s[z] = float(np.median(jj[anterior])) * py
        width[z] = (ii.max() - ii.min() + 1) * px
        # iliac bone: large bone areas on both sides, lateral to the spine
        lateral = bone[z] & (np.abs(xs[None, :] - x_s[z]) > 40) & (np.abs(xs[None, :] - x_s[z]) < 170) &\
            (ys[:, None] > y_s[z] - 60) & (ys[:, None] < y_s[z] + 80)
        left = lateral[:, xs > x_s[z]].sum() * px * py
        right = lateral[:, xs <= x_s[z]].sum() * px * py
        iliac[z] = min(left, right) > 250.0
    return {"x": x_s, "y": y_s, "width": width, "iliac": iliac}


def _disc_junctions(vol: np.ndarray, xc: np.ndarray, yc: np.ndarray, px: float, py: float, dz: float,
                    z_mm: np.ndarray, valid: np.ndarray) -> list[float]:
    """z (mm, superior first) of the junctions between vertebral bodies along the centreline ``(xc, yc)`` (Z,)."""
    nz = vol.shape[0]
    profile = np.zeros(nz)
    hx, hy = max(1, int(round(10.0 / px))), max(1, int(round(8.0 / py)))
    for z in range(nz):
        i0, j0 = int(round(xc[z] / px)), int(round(yc[z] / py))
        box = vol[z, max(0, j0 - hy): j0 + hy + 1, max(0, i0 - hx): i0 + hx + 1]
        profile[z] = float(np.mean(np.clip(box - 100.0, 0.0, 600.0))) if box.size else 0.0
    # Junctions between vertebral bodies (the dark disc and the bright endplates on either side of it) stand out
    # from the flat plateau of the body: the deviation from a running median marks them whatever the bone
    # density, and whether thick slices blur the disc into its endplates or not.
    profile = ndimage.gaussian_filter1d(profile, sigma=max(1.0 / dz, 0.3), mode="nearest")
    plateau = ndimage.median_filter(profile, size=max(3, int(round(21.0 / dz)) | 1), mode="nearest")
    junction = ndimage.gaussian_filter1d(np.abs(profile - plateau), sigma=max(4.5 / dz, 0.5), mode="nearest")
    discs = _regular_junctions(junction, z_mm, valid)
    return discs


def _sacrum_top(width: np.ndarray, iliac: np.ndarray, dz: float, z_mm: np.ndarray) -> float | None:
    """z (mm) of the top of the sacrum, None when it is not in the field of view.

    The longest run of slices where the spine's bone is wide with iliac bone at both sides: sacrum, alae and
    ilia (with the pelvic ring below); ribs joining the spine on a thoracic slice make only short runs. Its top
    slice is the top of the sacrum. Sacrum and ilia merged into one component (> 150 mm) are preferred; where
    the sacro-iliac joints keep them apart, sacral alae wider than a lumbar body (> 80 mm) are taken.
    """
    sacrum_top = None
    for min_width in (150.0, 80.0):
        wide = ndimage.median_filter(((width > min_width) & iliac).astype(np.uint8), size=3, mode="nearest") > 0
        runs, n_runs = ndimage.label(wide)
        if not n_runs:
            continue
        longest = max(range(1, n_runs + 1), key=lambda r: int(np.sum(runs == r)))
        idx = np.nonzero(runs == longest)[0]
        if len(idx) * dz >= 20.0:
            sacrum_top = _z_at(idx.max() + 0.5, z_mm)
            break
    return sacrum_top


def _rib_heads(vol: np.ndarray, threshold: float, xc: np.ndarray, yc: np.ndarray, px: float, py: float,
               dz: float, z_mm: np.ndarray, sacrum_top: float | None) -> list[float]:
    """z (mm) of the medial ends of the ribs: 3D bone components beside the spine, long, whose medial end is near
    the spine (a rib touching an enhancing kidney or bowel is re-split on denser bone; iliac wings are left out)."""
    nz, ny, nx = vol.shape
    xs = np.arange(nx) * px
    ys = np.arange(ny) * py
    rib_bodies: list[float] = []
    dist_x = np.abs(xs[None, :] - xc[:, None])  # (Z, X)
    # ribs are thin: at 2 mm pixels their partial-volumed cortex needs a lower threshold to stay connected
    lateral_bone = ((vol > threshold - 60.0) & (dist_x[:, None, :] > 22.0)
                    & (ys[None, :, None] > (yc - 50.0)[:, None, None]))
    lab3, n3 = ndimage.label(lateral_bone)
    candidates: list[tuple[np.ndarray, tuple[slice, ...], bool]] = []
    for value, sl in enumerate(ndimage.find_objects(lab3) if n3 else [], start=1):
        if sl is not None:
            candidates.append((lab3[sl] == value, sl, True))
    while candidates:
        part, sl, may_split = candidates.pop()
        if part.sum() * px * py * dz < 400.0:  # < 0.4 cm3: a process tip or noise
            continue
        zz, jj, ii = np.nonzero(part)
        zz = zz + sl[0].start
        jj = jj + sl[1].start
        ii = ii + sl[2].start
        if zz.max() >= nz - 1:  # cut by the top of the field of view: its head (and level) is not in the image
            continue
        d = np.hypot(ii * px - xc[zz], jj * py - yc[zz])
        extent = float(d.max() - d.min())
        if d.min() > 55.0 or extent < 45.0:  # not attached beside the spine, or too short for a rib
            continue
        if part.sum() * px * py * dz / extent > 300.0:  # mm3 per mm: too thick for a rib
            if may_split:  # a rib touching an enhancing kidney or bowel: keep only the denser bone, re-split
                dense = part & (vol[sl] > 250.0)
                sub, n_sub = ndimage.label(dense)
                for v2, sl2 in enumerate(ndimage.find_objects(sub) if n_sub else [], start=1):
                    if sl2 is not None:
                        glob = tuple(slice(a.start + b.start, a.start + b.stop) for a, b in zip(sl, sl2))
                        candidates.append((sub[sl2] == v2, glob, False))
            continue
        if float(np.percentile(vol[sl][part], 95)) < 500.0:  # no cortical bone: contrast-filled organ
            continue
        medial = d <= d.min() + 8.0
        medial_z = _z_at(float(zz[medial].mean()), z_mm)
        if sacrum_top is not None and (_z_at(float(zz.min()), z_mm) < sacrum_top or medial_z < sacrum_top + 40.0):
            continue  # an iliac wing, not a rib
        lateral_z = _z_at(float(zz[d >= d.max() - 15.0].mean()), z_mm)
        if lateral_z > medial_z + 5.0:
            continue  # rises away from the spine: an iliac wing (ribs descend from their head)
        rib_bodies.append(medial_z)
    return rib_bodies


def _count_levels(discs: list[float], bodies: list[float], rib_bodies: list[float], sacrum_top: float | None,
                  threshold: float) -> RuleLevels:
    """Name the vertebral bodies from the last rib-bearing one (T12) or, without it, from the sacrum (L5 above
    it), and compare the two counts."""
    last_rib = None
    warnings: list[str] = []
    if rib_bodies and bodies:
        lowest_rib = min(rib_bodies)
        # the rib head lies at the upper half of its vertebra: attach to the body whose span holds it
        spans = [(discs[i], discs[i + 1]) for i in range(len(bodies))]
        hit = [i for i, (top, bottom) in enumerate(spans) if bottom - 6.0 <= lowest_rib <= top + 6.0]
        if not hit and spans[-1][1] - 40.0 < lowest_rib < spans[0][0] + 40.0:
            hit = [int(np.argmin([abs(b - lowest_rib) for b in bodies]))]
        if hit:
            last_rib = bodies[max(hit)]
    l3_sacrum = l3_ribs = None
    sacral_index = None
    if sacrum_top is not None:
        # the lumbosacral junction: the junction closest to the top of the sacrum (wide alae and iliac bone
        # begin about there), no further than 25 mm from it
        below = [i for i, dsc in enumerate(discs) if abs(dsc - sacrum_top) <= 25.0]
        if below:
            lumbosacral = min(below, key=lambda i: abs(discs[i] - sacrum_top))
            sacral_index = lumbosacral  # bodies[lumbosacral - 1] is L5
            if lumbosacral - 3 >= 0:
                l3_sacrum = bodies[lumbosacral - 3]
    rib_index = bodies.index(last_rib) if last_rib is not None else None
    if rib_index is not None and rib_index + 3 < len(bodies):
        l3_ribs = bodies[rib_index + 3]
    lumbar_count = None
    if rib_index is not None and sacral_index is not None:
        lumbar_count = sacral_index - 1 - rib_index
        if lumbar_count != 5:
            warnings.append(
                f"counts from the sacrum and from the last rib differ by {abs(lumbar_count - 5)}: possible "
                f"transitional vertebra ({lumbar_count} vertebrae between the last rib-bearing one and the "
                "sacrum; six lumbar-type vertebrae, sacralised L5, 11 or 13 rib pairs)")
    levels: dict[str, float] = {}
    if rib_index is not None:  # vertebrae are numbered from the top: the last rib-bearing one is T12
        for n, name in enumerate(["T12", "L1", "L2", "L3", "L4", "L5"]):
            if rib_index + n < len(bodies):
                levels[name] = bodies[rib_index + n]
        for n, name in enumerate(["T11", "T10", "T9"]):
            if rib_index - 1 - n >= 0:
                levels[name] = bodies[rib_index - 1 - n]
    elif sacral_index is not None:
        for n, name in enumerate(["L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9"]):
            if sacral_index - 1 - n >= 0:
                levels[name] = bodies[sacral_index - 1 - n]
    else:
        raise LevelNotFoundError("the rule-based count found neither the sacrum nor the last rib-bearing vertebra",
                              "the field of view may be too tight to count levels by rules")
    return RuleLevels(levels, discs, bodies, sacrum_top, last_rib, l3_sacrum, l3_ribs, lumbar_count, warnings,
                      threshold)
