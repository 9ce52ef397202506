"""Building blocks of the L3 phantom (:mod:`mskseg.synth.phantom`): the pixel canvas in the patient's frame,
Fourier-perturbed ellipses (blobs), painting into the anatomy map, smooth random periodic profiles.
"""
from __future__ import annotations

import numpy as np


class Canvas:
    """Pixel grid with patient-frame coordinates (mm) and bounding-box helpers."""

    def __init__(self, size: int, spacing: float, rotation_deg: float, shift: tuple[float, float]):
        self.n, self.sp = size, spacing
        self.c, self.s = float(np.cos(np.deg2rad(rotation_deg))), float(np.sin(np.deg2rad(rotation_deg)))
        self.tx, self.ty = shift
        ax = ((np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * spacing)
        self.xi, self.yj = ax[None, :], ax[:, None]  # image mm (unrotated), for the table
        dx, dy = self.xi - self.tx, self.yj - self.ty
        self.X = (self.c * dx + self.s * dy).astype(np.float32)
        self.Y = (-self.s * dx + self.c * dy).astype(np.float32)

    def box(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Index slices of the square around patient point (cx, cy) with ``radius`` mm."""
        xi = self.c * cx - self.s * cy + self.tx
        yj = self.s * cx + self.c * cy + self.ty
        ci, cj = xi / self.sp + (self.n - 1) / 2.0, yj / self.sp + (self.n - 1) / 2.0
        rp = radius / self.sp + 2
        i0, i1 = int(max(ci - rp, 0)), int(min(ci + rp + 1, self.n))
        j0, j1 = int(max(cj - rp, 0)), int(min(cj + rp + 1, self.n))
        return slice(j0, max(j0, j1)), slice(i0, max(i0, i1))


class Blob:
    """A Fourier-perturbed ellipse: ``rho <= 1`` inside; ``rho <= q`` is the same shape scaled by q."""

    def __init__(self, cv: Canvas, rng: np.random.Generator, cx: float, cy: float, a: float, b: float,
                 angle_deg: float = 0.0, rough: float = 0.06, order: int = 5):
        self.sl = cv.box(cx, cy, max(a, b) * (1 + 3 * rough) + 1)
        X, Y = cv.X[self.sl] - cx, cv.Y[self.sl] - cy
        t = np.deg2rad(angle_deg)
        u = (np.float32(np.cos(t) / a) * X + np.float32(np.sin(t) / a) * Y)
        v = (np.float32(-np.sin(t) / b) * X + np.float32(np.cos(t) / b) * Y)
        rho0 = np.sqrt(u * u + v * v)
        inv = 1.0 / np.maximum(rho0, np.float32(1e-6))
        c1, s1 = u * inv, v * inv  # cos and sin of the polar angle, harmonics by recurrence (no trig)
        ck, sk = c1, s1
        radius = np.ones_like(rho0)
        for k in range(2, order + 1):
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
            ca, cb = rng.normal(0, rough / k, 2)
            radius += np.float32(ca) * ck + np.float32(cb) * sk
        self.rho = rho0 / np.maximum(radius, np.float32(0.3))
        self.a, self.b, self.cx, self.cy = a, b, cx, cy

    def mask(self, q: float = 1.0) -> np.ndarray:
        return self.rho <= q

    def inner(self, thickness_mm: float) -> np.ndarray:
        """Mask of the shape shrunk by about ``thickness_mm``."""
        return self.rho <= max(1.0 - thickness_mm / min(self.a, self.b), 0.0)


def paint(anat: np.ndarray, sl: tuple[slice, slice], mask: np.ndarray, value: int,
           allowed: list[int] | None = None, blocked: list[int] | None = None) -> None:
    """Write ``value`` into ``anat[sl]`` where ``mask``, optionally only over ``allowed`` / not ``blocked``."""
    view = anat[sl]
    if allowed is not None:
        mask = mask & np.isin(view, allowed)
    if blocked is not None:
        mask = mask & ~np.isin(view, blocked)
    view[mask] = value


def periodic_profile(rng: np.random.Generator, n: int, amp: float, order: int = 6) -> np.ndarray:
    """Smooth periodic random profile ``1 + sum_k c_k cos(k t + p_k)`` on ``n`` angles."""
    t = np.linspace(-np.pi, np.pi, n, endpoint=False)
    out = np.ones(n)
    for k in range(1, order + 1):
        out += rng.normal(0, amp / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return out


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)
