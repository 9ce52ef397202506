"""Projection geometry of the radiograph renderer (:mod:`mskseg.synth.drr`).

:func:`view_axes` gives the volume axes of a view; :func:`working_volume` brings the volume (and its labels)
onto an LPS-aligned grid ordered along the beam (resampling non-axis-aligned volumes first); :class:`Projector`
integrates along parallel or cone-beam rays and :class:`Detector` maps detector pixels to the isocentre plane.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import MSKSegError
from ..image import Image


# ----------------------------------------------------------------------------------------------- geometry
def view_axes(view: str, lateral_anterior: str) -> np.ndarray:
    """Rows: LPS unit vectors of the ray direction ``t``, image-up ``w`` and image-right ``u``."""
    if view == "frontal":
        return np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    if lateral_anterior == "left":
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _is_signed_permutation(direction: np.ndarray) -> bool:
    a = np.abs(direction)
    return bool(np.all((a < 1e-6) | (a > 1 - 1e-6)) and np.all(a.sum(0) > 1 - 1e-6) and np.all(a.sum(1) > 1 - 1e-6))


def _resample_axis_aligned(hu: Image, labels: Image | None) -> tuple[Image, Image | None]:
    """Both images on an LPS-aligned grid (identity direction) covering the volume, spacing kept per axis."""
    import SimpleITK as sitk

    d = hu.direction
    spacing = np.array([hu.spacing[int(np.argmax(np.abs(d[p, :])))] for p in range(3)])
    n = np.array(hu.size) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
    pts = hu.index_to_physical(corners)
    lo, hi = pts.min(0), pts.max(0)
    size = [int(np.ceil((hi[p] - lo[p]) / spacing[p])) + 1 for p in range(3)]

    def resample(img: Image, interp: int, default: float) -> Image:
        ref = sitk.Image(size, sitk.sitkFloat32 if interp == sitk.sitkLinear else sitk.sitkInt32)
        ref.SetSpacing(tuple(float(s) for s in spacing))
        ref.SetOrigin(tuple(float(v) for v in lo))
        src = img.to_sitk()
        if interp == sitk.sitkLinear:
            src = sitk.Cast(src, sitk.sitkFloat32)
        else:
            src = sitk.Cast(src, sitk.sitkInt32)
        out = sitk.Resample(src, ref, sitk.Transform(), interp, default)
        return Image.from_sitk(out)

    hu2 = resample(hu, sitk.sitkLinear, -1000.0)
    lab2 = resample(labels, sitk.sitkNearestNeighbor, 0) if labels is not None else None
    return hu2, lab2


@dataclass
class WorkingVolume:
    """A volume seen along the view: arrays ``(t, w, u)`` with coordinates ``start + step * index`` (mm)."""

    hu: np.ndarray
    labels: np.ndarray | None
    start: np.ndarray
    step: np.ndarray
    axes: np.ndarray

    def to_lps(self, index: np.ndarray) -> np.ndarray:
        """LPS mm of continuous working indices ``(..., 3)`` in ``(t, w, u)`` order."""
        return (self.start + np.asarray(index, float) * self.step) @ self.axes


def working_volume(hu: Image, labels: Image | None, axes: np.ndarray) -> WorkingVolume:
    """Transposed / flipped views of the arrays so that index axes run along ``axes`` (no copy)."""
    if not _is_signed_permutation(hu.direction):
        hu, labels = _resample_axis_aligned(hu, labels)
    d, origin, spacing = hu.direction, np.asarray(hu.origin), hu.spacing
    arrays = [hu.array] + ([labels.array] if labels is not None else [])
    perm, flips, start, step = [], [], [], []
    for e in axes:
        p = int(np.argmax(np.abs(e)))
        s_e = float(np.sign(e[p]))
        c = int(np.argmax(np.abs(d[p, :])))
        s_c = float(np.sign(d[p, c]))
        axis = 2 - c
        n = hu.array.shape[axis]
        perm.append(axis)
        step.append(spacing[c])
        if s_e * s_c > 0:
            flips.append(False)
            start.append(s_e * origin[p])
        else:
            flips.append(True)
            start.append(s_e * origin[p] - spacing[c] * (n - 1))
    out = []
    for arr in arrays:
        a = np.transpose(arr, perm)
        for ax, flip in enumerate(flips):
            if flip:
                a = np.flip(a, ax)
        out.append(a)
    return WorkingVolume(out[0], out[1] if labels is not None else None, np.array(start), np.array(step), axes)


class Projector:
    """Line integrals through ``(t, w, u)`` blocks onto an intermediate isocentre-plane grid ``(W, U)``.

    Parallel beam: the grid is the volume's own ``(w, u)`` grid and a block projects by summation along ``t``.
    Cone beam: the source lies at ``t_iso - sod`` on the central ray; a slab at depth ``t`` shrinks onto the
    isocentre plane by ``sod / (t - t_source)``, so each slab (grouped to <= 2 mm) is resampled with that scale
    and summed; the ray obliquity ``1 / cos`` is applied once at the end (:meth:`obliquity`).
    """

    def __init__(self, vol: WorkingVolume, geometry: str, iso: np.ndarray, sod: float):
        self.geometry = geometry
        self.t0, self.w0, self.u0 = vol.start
        self.dt, self.dw, self.du = vol.step
        nt, nw, nu = vol.hu.shape
        self.iso = iso
        self.sod = sod
        if geometry == "parallel":
            self.W0, self.U0, self.NW, self.NU = self.w0, self.u0, nw, nu
            self.group = 32
            self.t_source = None
            return
        self.t_source = iso[0] - sod
        t_lo, t_hi = self.t0, self.t0 + (nt - 1) * self.dt
        if t_lo - self.t_source < 50.0:
            raise MSKSegError(
                f"the X-ray source ({sod:.0f} mm from the isocentre) lies inside or next to the volume",
                "increase sdd_mm or reduce odd_mm, or crop the volume around the anatomy to image",
            )
        scales = [(t - self.t_source) / sod for t in (t_lo, t_hi)]
        ws = [iso[1] + (w - iso[1]) / s for s in scales for w in (self.w0, self.w0 + (nw - 1) * self.dw)]
        us = [iso[2] + (u - iso[2]) / s for s in scales for u in (self.u0, self.u0 + (nu - 1) * self.du)]
        self.W0, self.U0 = min(ws), min(us)
        self.NW = int(np.ceil((max(ws) - self.W0) / self.dw)) + 1
        self.NU = int(np.ceil((max(us) - self.U0) / self.du)) + 1
        self.group = max(1, int(np.floor(2.0 / self.dt + 1e-6)))

    def empty(self) -> np.ndarray:
        return np.zeros((self.NW, self.NU), np.float64)

    def add(self, acc: np.ndarray, m: np.ndarray, t_centre: float, wi0: int, ui0: int) -> None:
        """Add the slab-group integral ``m`` (rows from volume row ``wi0``, columns from ``ui0``) into ``acc``."""
        nwb, nub = m.shape
        if self.t_source is None:
            acc[wi0:wi0 + nwb, ui0:ui0 + nub] += m
            return
        s = (t_centre - self.t_source) / self.sod
        ia, ib = self._out_range(s, self.w0, self.dw, wi0, nwb, self.iso[1], self.W0, self.NW)
        ja, jb = self._out_range(s, self.u0, self.du, ui0, nub, self.iso[2], self.U0, self.NU)
        if ia >= ib or ja >= jb:
            return
        off_w = (self.iso[1] - self.w0) / self.dw - wi0 + s * (self.W0 + ia * self.dw - self.iso[1]) / self.dw
        off_u = (self.iso[2] - self.u0) / self.du - ui0 + s * (self.U0 + ja * self.du - self.iso[2]) / self.du
        acc[ia:ib, ja:jb] += ndimage.affine_transform(
            np.ascontiguousarray(m, dtype=np.float64), [s, s], offset=[off_w, off_u], output_shape=(ib - ia, jb - ja),
            order=1, mode="grid-constant", cval=0.0)

    @staticmethod
    def _out_range(s, v0, dv, i0, n, iso_v, V0, NV) -> tuple[int, int]:
        lo = iso_v + (v0 + (i0 - 1) * dv - iso_v) / s
        hi = iso_v + (v0 + (i0 + n) * dv - iso_v) / s
        return max(0, int(np.floor((lo - V0) / dv))), min(NV, int(np.ceil((hi - V0) / dv)) + 1)

    def project_block(self, acc: np.ndarray, block: np.ndarray, ti0: int, wi0: int, ui0: int) -> None:
        """Add the line integrals of ``block`` (values per mm of path, shape ``(t, w, u)``) into ``acc``."""
        nt = block.shape[0]
        step = nt if self.t_source is None else self.group
        for a in range(0, nt, step):
            b = min(nt, a + step)
            m = block[a:b].sum(0, dtype=np.float64) * self.dt
            self.add(acc, m, self.t0 + self.dt * (ti0 + (a + b - 1) / 2.0), wi0, ui0)

    def obliquity(self) -> np.ndarray | None:
        """``1 / cos(ray angle)`` per intermediate pixel (cone beam), None for parallel beam."""
        if self.t_source is None:
            return None
        w = self.W0 + np.arange(self.NW) * self.dw - self.iso[1]
        u = self.U0 + np.arange(self.NU) * self.du - self.iso[2]
        return np.sqrt(self.sod ** 2 + w[:, None] ** 2 + u[None, :] ** 2) / self.sod

    def point_to_plane(self, twu: np.ndarray) -> np.ndarray:
        """Isocentre-plane ``(W, U)`` of working coordinates ``(..., 3)`` (mm)."""
        twu = np.atleast_2d(np.asarray(twu, float))
        if self.t_source is None:
            return twu[:, 1:3].copy()
        s = (twu[:, 0] - self.t_source) / self.sod
        return self.iso[1:3] + (twu[:, 1:3] - self.iso[1:3]) / s[:, None]


@dataclass
class Detector:
    """The output pixel grid on the isocentre plane: row r at ``W = w_top - r p``, column c at ``U = u_left + c p``."""

    w_top: float
    u_left: float
    rows: int
    cols: int
    pixel_mm: float

    def resample(self, proj: Projector, sub: np.ndarray, iw0: int = 0, iu0: int = 0
                 ) -> tuple[np.ndarray, int, int]:
        """Bilinear resampling of an intermediate sub-map (starting at ``(iw0, iu0)``) onto the detector.

        Returns ``(values, r0, c0)``: the detector window covered by the sub-map and its top-left pixel.
        """
        p = self.pixel_mm
        w_lo = proj.W0 + (iw0 - 1) * proj.dw
        w_hi = proj.W0 + (iw0 + sub.shape[0]) * proj.dw
        u_lo = proj.U0 + (iu0 - 1) * proj.du
        u_hi = proj.U0 + (iu0 + sub.shape[1]) * proj.du
        r0 = max(0, int(np.floor((self.w_top - w_hi) / p)))
        r1 = min(self.rows, int(np.ceil((self.w_top - w_lo) / p)) + 1)
        c0 = max(0, int(np.floor((u_lo - self.u_left) / p)))
        c1 = min(self.cols, int(np.ceil((u_hi - self.u_left) / p)) + 1)
        if r0 >= r1 or c0 >= c1:
            return np.zeros((0, 0)), 0, 0
        off_r = (self.w_top - r0 * p - proj.W0) / proj.dw - iw0
        off_c = (self.u_left + c0 * p - proj.U0) / proj.du - iu0
        out = ndimage.affine_transform(np.ascontiguousarray(sub, dtype=np.float64), [-p / proj.dw, p / proj.du],
                                       offset=[off_r, off_c], output_shape=(r1 - r0, c1 - c0), order=1,
                                       mode="grid-constant", cval=0.0)
        return out, r0, c0

    def full(self, proj: Projector, sub: np.ndarray) -> np.ndarray:
        out = np.zeros((self.rows, self.cols), np.float64)
        vals, r0, c0 = self.resample(proj, sub)
        out[r0:r0 + vals.shape[0], c0:c0 + vals.shape[1]] = vals
        return out

    def plane_to_pixel(self, wu: np.ndarray) -> np.ndarray:
        """``(x, y)`` pixel positions of isocentre-plane ``(W, U)`` points ``(N, 2)``."""
        wu = np.atleast_2d(wu)
        return np.stack([(wu[:, 1] - self.u_left) / self.pixel_mm, (self.w_top - wu[:, 0]) / self.pixel_mm], axis=1)
