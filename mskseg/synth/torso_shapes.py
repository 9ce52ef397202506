"""Building blocks of the procedural torso (:mod:`mskseg.synth.torso`): label tables, the grid, shapes.

:data:`TORSO_LABELS` (the fixed label values of a torso's label map, vertebra names from :mod:`mskseg.anatomy`)
and :data:`ANATOMY_LABELS` (the fine structures of its anatomy map, each with the tissue key it is rendered
with); :class:`TorsoGrid` (the output grid in patient mm) and :class:`TorsoMaps` (the maps being drawn); tubes
along splines, ellipsoids, rotations and smooth random profiles along z.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator

from ..anatomy import totalseg_name, vertebra_names


def _build_labels() -> dict[int, str]:
    names = [totalseg_name(n) for n in vertebra_names("C6", "L6")] + ["sacrum", "intervertebral_disc"] +\
        [f"rib_left_{i}" for i in range(1, 14)] + [f"rib_right_{i}" for i in range(1, 14)] +\
        ["costal_cartilage", "sternum", "hip_left", "hip_right", "femur_left", "femur_right", "liver", "spleen",
         "kidney_left", "kidney_right", "aorta", "inferior_vena_cava", "lung_left", "lung_right", "heart",
         "spinal_cord", "stomach", "pancreas", "colon", "small_bowel", "urinary_bladder", "psoas", "paraspinal",
         "abdominal_wall"]
    return {i + 1: n for i, n in enumerate(names)}


#: Fixed label values of :attr:`TorsoSample.labels` (the same in every sample, whether present or not).
TORSO_LABELS: dict[int, str] = _build_labels()
#: Structure name -> label value of :data:`TORSO_LABELS`.
TORSO_LABEL_VALUE: dict[str, int] = {n: v for v, n in TORSO_LABELS.items()}
_LV = TORSO_LABEL_VALUE

# Fine structures of the anatomy map and the tissue key each is rendered with.
_ANATOMY_LIST: list[tuple[str, str]] = [
    ("skin", "skin"), ("subcutaneous_fat", "fat"), ("visceral_fat", "fat"), ("perirenal_fat", "fat"),
    ("renal_sinus_fat", "fat"), ("intermuscular_fat", "fat"), ("rectus_abdominis", "muscle:wall"),
    ("external_oblique", "muscle:wall"), ("internal_oblique", "muscle:wall"),
    ("transversus_abdominis", "muscle:wall"), ("chest_wall_muscle", "muscle:wall"),
    ("gluteal_muscle", "muscle:wall"), ("psoas", "muscle:psoas"), ("quadratus_lumborum", "muscle:paraspinal"),
    ("erector_spinae", "muscle:paraspinal"), ("multifidus", "muscle:paraspinal"), ("diaphragm", "muscle"),
    ("linea_alba", "fascia"), ("bone_cortex", "cortical_bone"), ("bone_cancellous", "cancellous_bone"),
    ("bone_marrow_fat", "fat:marrow"), ("spinal_canal", "csf"), ("spinal_cord", "csf:cord"),
    ("intervertebral_disc", "disc"), ("costal_cartilage", "cartilage"), ("joint_cartilage", "cartilage"),
    ("kidney_cortex", "kidney_cortex"), ("kidney_medulla", "kidney_medulla"), ("renal_pelvis", "urine"),
    ("liver", "liver"), ("spleen", "spleen"), ("gallbladder", "bile"), ("pancreas", "pancreas"),
    ("aorta", "blood"), ("artery", "blood"), ("vein", "venous_blood"), ("portal_vein", "venous_blood:portal"),
    ("heart_muscle", "muscle:heart"), ("heart_blood", "blood"), ("lung", "lung"),
    ("bowel_wall", "bowel_wall"), ("bowel_gas", "bowel_gas"), ("bowel_fluid", "bowel_fluid"),
    ("bowel_contrast", "oral_contrast"), ("feces", "feces"), ("bladder_wall", "muscle:bladder"),
    ("urine", "urine"), ("mediastinal_fat", "fat"), ("arm_skin", "skin"), ("arm_fat", "fat"),
    ("arm_muscle", "muscle:arm"), ("arm_bone_cortex", "cortical_bone"), ("arm_bone_marrow", "fat:marrow"),
    ("metal", "metal"), ("aortic_calcification", "cortical_bone"),
]
#: ``{value: structure name}`` of :attr:`TorsoSample.anatomy` (0 is air).
ANATOMY_LABELS: dict[int, str] = {i + 1: n for i, (n, _) in enumerate(_ANATOMY_LIST)}
#: Structure name -> value of :data:`ANATOMY_LABELS`.
ANATOMY_VALUE: dict[str, int] = {n: v for v, n in ANATOMY_LABELS.items()}
_A = ANATOMY_VALUE
TISSUE_KEYS: dict[int, str] = {0: "air", **{i + 1: t for i, (_, t) in enumerate(_ANATOMY_LIST)}}

WALL_MUSCLES = [_A[n] for n in ("rectus_abdominis", "external_oblique", "internal_oblique", "transversus_abdominis",
                         "chest_wall_muscle", "gluteal_muscle")]
PARASPINAL_MUSCLES = [_A[n] for n in ("quadratus_lumborum", "erector_spinae", "multifidus")]
MUSCLE_VALUES = WALL_MUSCLES + PARASPINAL_MUSCLES + [_A["psoas"]]
MUSCLE_COMPARTMENT = MUSCLE_VALUES + [_A["intermuscular_fat"]]
VISCERAL_FAT_VALUES = [_A[n] for n in ("visceral_fat", "perirenal_fat", "renal_sinus_fat", "mediastinal_fat")]
BONES = [_A[n] for n in ("bone_cortex", "bone_cancellous", "bone_marrow_fat", "metal")]
SOFT_CAVITY_VALUES = [_A["visceral_fat"], _A["mediastinal_fat"]]


# ============================================================================================ grid
#: Fraction of a voxel by which :meth:`TorsoGrid.box` widens its bounds (float32 rounding of voxel centres).
_BOX_TOLERANCE = 1e-3


def _index_range(lo: float, hi: float, first: float, step: float, tol: float) -> tuple[int, int]:
    """``(start, stop)`` of the indices whose centres ``first + n * step`` lie in ``lo..hi`` (``tol`` voxels of
    slack on each side)."""
    return int(np.ceil((lo - first) / step - tol)), int(np.floor((hi - first) / step + tol)) + 1


class TorsoGrid:
    """Voxel grid: patient coordinates of the columns (x), rows (y) and slices (z), boxes around points."""

    def __init__(self, ni: int, nj: int, nk: int, spacing: tuple[float, float, float], shift: tuple[float, float],
                 z0: float):
        self.ni, self.nj, self.nk = ni, nj, nk
        self.si, self.sj, self.sk = spacing
        self.shift = shift
        self.x = ((np.arange(ni) - (ni - 1) / 2.0) * self.si - shift[0]).astype(np.float32)
        self.y = ((np.arange(nj) - (nj - 1) / 2.0) * self.sj - shift[1]).astype(np.float32)
        self.z = (z0 + np.arange(nk) * self.sk).astype(np.float32)
        self.z0 = z0

    def set_shift(self, shift: tuple[float, float]) -> None:
        """Place the patient frame's origin at ``shift`` (x, y mm) from the centre of the slice."""
        self.shift = shift
        self.x = ((np.arange(self.ni) - (self.ni - 1) / 2.0) * self.si - shift[0]).astype(np.float32)
        self.y = ((np.arange(self.nj) - (self.nj - 1) / 2.0) * self.sj - shift[1]).astype(np.float32)

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Index slices (k, j, i) of the voxels with centres inside the patient box ``lo..hi`` (x, y, z).

        A bound that falls on a voxel centre includes that voxel: the coordinates are float32, so a centre
        given back as a bound (``box((x, y, z[k]), (x, y, z[k]))`` selects slice ``k``) may differ from the
        exact grid position by rounding, which a bare ceil/floor would turn into an empty box.
        """
        tol = _BOX_TOLERANCE
        i0, i1 = _index_range(lo[0], hi[0], float(self.x[0]), self.si, tol)
        j0, j1 = _index_range(lo[1], hi[1], float(self.y[0]), self.sj, tol)
        k0, k1 = _index_range(lo[2], hi[2], float(self.z[0]), self.sk, tol)
        i0, j0, k0 = max(i0, 0), max(j0, 0), max(k0, 0)
        i1, j1, k1 = min(i1, self.ni), min(j1, self.nj), min(k1, self.nk)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return slice(k0, k1), slice(j0, j1), slice(i0, i1)

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable patient coordinates ``(x (1,1,I), y (1,J,1), z (K,1,1))`` of a box."""
        return (self.x[sl[2]][None, None, :], self.y[sl[1]][None, :, None], self.z[sl[0]][:, None, None])


class TorsoMaps:
    """The anatomy map (fine structures) and the label map painted together."""

    def __init__(self, grid: TorsoGrid):
        self.g = grid
        shape = (grid.nk, grid.nj, grid.ni)
        self.anat = np.zeros(shape, np.uint8)
        self.lab = np.zeros(shape, np.uint8)

    def paint(self, sl, mask: np.ndarray, anat_value: int, label_value: int | None = 0,
              allowed: Sequence[int] | None = None, blocked: Sequence[int] | None = None) -> None:
        """Write ``anat_value`` (and ``label_value`` unless None) where ``mask`` in the box ``sl``."""
        view = self.anat[sl]
        mask = np.broadcast_to(mask, view.shape)
        if allowed is not None:
            mask = mask & isin_labels(view, allowed)
        if blocked is not None:
            mask = mask & ~isin_labels(view, blocked)
        view[mask] = anat_value
        if label_value is not None:
            self.lab[sl][mask] = label_value


def isin_labels(values: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """``np.isin`` for a handful of small integers (a lookup table is faster than sorting)."""
    lut = np.zeros(256, bool)
    lut[list(members)] = True
    return lut[values]


def spline_path(ctrl: np.ndarray, radii: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth path through control points ``(n, 3)`` resampled every ``step`` mm, radii interpolated."""
    ctrl = np.asarray(ctrl, float)
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
    keep = np.r_[True, seg > 1e-6]
    ctrl, radii = ctrl[keep], np.asarray(radii, float)[keep]
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))]
    if len(ctrl) < 2:
        return ctrl, radii
    n = max(int(np.ceil(s[-1] / step)) + 1, 2)
    t = np.linspace(0.0, s[-1], n)
    if len(ctrl) >= 3:
        pts = CubicSpline(s, ctrl, axis=0, bc_type="natural")(t)
    else:
        pts = np.stack([np.interp(t, s, ctrl[:, c]) for c in range(3)], axis=1)
    return pts, np.interp(t, s, radii)


def tube_slices(g: TorsoGrid, pts: np.ndarray, r: np.ndarray, rz: np.ndarray | None = None):
    """For every slice a tube crosses: ``(k, (j, i) slices, rho, r_eff, dy)``.

    The tube is the union of ellipsoids (in-plane radius ``r``, vertical radius ``rz``) centred on ``pts``;
    ``rho`` is the in-plane distance to the nearest centre over its in-slice radius ``r_eff`` (<= 1 inside)
    and ``dy`` the row offset (mm, anterior negative) from that centre.
    """
    pts = np.asarray(pts, np.float32)
    r = np.asarray(r, np.float32)
    rz = r if rz is None else np.asarray(rz, np.float32)
    zmin, zmax = float((pts[:, 2] - rz).min()), float((pts[:, 2] + rz).max())
    k0 = max(int(np.ceil((zmin - g.z[0]) / g.sk)), 0)
    k1 = min(int(np.floor((zmax - g.z[0]) / g.sk)) + 1, g.nk)
    min_r = 0.35 * min(g.si, g.sj)
    for k in range(k0, k1):
        dz = pts[:, 2] - g.z[k]
        sel = np.abs(dz) < rz
        if not sel.any():
            continue
        reff = r[sel] * np.sqrt(np.maximum(1.0 - (dz[sel] / rz[sel]) ** 2, 0.0))
        ok = reff > min_r
        if not ok.any():
            continue
        px, py, reff = pts[sel, 0][ok], pts[sel, 1][ok], reff[ok]
        bb = g.box((float((px - reff).min()), float((py - reff).min()), float(g.z[k])),
                   (float((px + reff).max()), float((py + reff).max()), float(g.z[k])))
        if bb is None:
            continue
        xs, ys = g.x[bb[2]], g.y[bb[1]]
        best = np.full((len(ys), len(xs)), np.inf, np.float32)
        idx = np.zeros(best.shape, np.int32)
        chunk = max(1, int(4_000_000 // max(best.size, 1)))
        for c0 in range(0, len(px), chunk):
            c1 = min(c0 + chunk, len(px))
            d2 = ((xs[None, None, :] - px[c0:c1, None, None]) ** 2 + (ys[None, :, None] - py[c0:c1, None, None]) ** 2)\
                / (reff[c0:c1, None, None] ** 2)
            am = np.argmin(d2, axis=0)
            mn = np.take_along_axis(d2, am[None], axis=0)[0]
            better = mn < best
            best[better] = mn[better]
            idx[better] = am[better] + c0
        yield k, (bb[1], bb[2]), np.sqrt(best), reff[idx], ys[:, None] - py[idx]


def paint_tube(m: TorsoMaps, pts, r, rz=None, *, core: int, shell: int | None = None, shell_mm: float = 0.0,
                label: int | None = 0, allowed=None, blocked=None, gas: float = 0.0) -> None:
    """Rasterise a tube: ``shell`` within ``shell_mm`` of its surface, ``core`` inside, optional gas level.

    Args:
        gas: fraction (0..1) of the lumen height filled with gas, anteriorly (the patient lies supine).
    """
    for k, (sj, si), rho, reff, dy in tube_slices(m.g, pts, r, rz):
        inside = rho <= 1.0
        if not inside.any():
            continue
        sl = (k, sj, si)
        if shell is not None and shell_mm > 0:
            is_shell = inside & ((1.0 - rho) * reff < shell_mm)
            m.paint(sl, inside & ~is_shell, core, label, allowed, blocked)
            m.paint(sl, is_shell, shell, label, allowed, blocked)
            lumen = inside & ~is_shell
        else:
            m.paint(sl, inside, core, label, allowed, blocked)
            lumen = inside
        if gas > 0:
            level = -reff + 2.0 * gas * reff  # gas above (anterior to) this row offset
            m.paint(sl, lumen & (dy < -reff + 2 * gas * reff) & (dy < level), _A["bowel_gas"], label,
                    [core], None)


def ellipsoid(g: TorsoGrid, centre: Sequence[float], semi: Sequence[float], rot: np.ndarray | None = None,
               pad: float = 0.0):
    """Box and normalised radius ``rho`` (<= 1 inside) of an ellipsoid with local axes the columns of ``rot``."""
    rot = np.eye(3) if rot is None else np.asarray(rot, float)
    ext = np.abs(rot) @ np.asarray(semi, float) + pad
    c = np.asarray(centre, float)
    sl = g.box(c - ext, c + ext)
    if sl is None:
        return None, None
    X, Y, Z = g.coords(sl)
    dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    acc = None
    for col in range(3):
        u = (np.float32(rot[0, col]) * dx + np.float32(rot[1, col]) * dy + np.float32(rot[2, col]) * dz)\
            / np.float32(semi[col])
        acc = u * u if acc is None else acc + u * u
    return sl, np.sqrt(acc)


def rotation_matrix(z_deg: float = 0.0, x_deg: float = 0.0, y_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix (columns = local axes in patient coordinates): about z, then x, then y."""
    a, b, c = np.deg2rad([z_deg, x_deg, y_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return ry @ rx @ rz


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def slow_curve(rng: np.random.Generator, amp: float, wavelength: float = 150.0):
    """A smooth random factor ``f(z) = 1 + ...`` along z (a few sinusoids of long wavelength), as a function."""
    terms = [(rng.normal(0, amp / 2), wavelength * rng.uniform(0.6, 1.6), rng.uniform(0, 2 * np.pi))
             for _ in range(3)]

    def factor(z):
        z = np.asarray(z, float)
        return 1.0 + sum(c * np.sin(2 * np.pi * z / wl + ph) for c, wl, ph in terms)

    return factor


def anchored(z: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Monotone smooth interpolation of ``(z, value)`` anchors at ``z``, constant beyond the ends."""
    pts = sorted(pts)
    zs = np.array([p[0] for p in pts], float)
    vs = np.array([p[1] for p in pts], float)
    keep = np.r_[True, np.diff(zs) > 1e-3]
    zs, vs = zs[keep], vs[keep]
    if len(zs) == 1:
        return np.full_like(z, vs[0], dtype=float)
    return PchipInterpolator(zs, vs, extrapolate=False)(np.clip(z, zs[0], zs[-1]))


def window_slices(xs: np.ndarray, ys: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
    """Row and column slices of a 2D box (coordinates ``ys`` rows, ``xs`` columns) inside ``x0..x1, y0..y1``."""
    i0, i1 = np.searchsorted(xs, x0), np.searchsorted(xs, x1, side="right")
    j0, j1 = np.searchsorted(ys, y0), np.searchsorted(ys, y1, side="right")
    return slice(int(j0), int(max(j0, j1))), slice(int(i0), int(max(i0, i1)))
