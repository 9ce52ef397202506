"""Geometry of the vertebral-level finder: the canonical view of a CT and the bone projections.

:func:`canonical` gives an axis-aligned view of an axial CT with axes (z up, y posterior, x left) and the map
back to input slices. :func:`bone_projections` computes the frontal view (maximum and summed bone over the
antero-posterior axis: spine, ribs, pelvis) and the sagittal one (the same over a 50 mm slab centred on the
spine: vertebral bodies, discs, spinous processes); :func:`resample_rows` brings them onto 2 mm rows along the
patient axis, the learned detector's input (:mod:`mskseg.spine.levelnet`).

Conventions: positions along the patient axis are LPS z in mm (superior positive); "row" means one 2 mm row of
the projections, "slice" (``k``) one slice of the input volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..anatomy import vertebra_order
from ..errors import InvalidImageError
from ..image import Image


#: Projection geometry: row height (mm, along z), column width (mm), number of columns of each view.
ROW_MM = 2.0
COLUMN_MM = 3.0
FRONTAL_COLUMNS = 128  # 384 mm wide, centred on the spine
SAGITTAL_COLUMNS = 96  # 288 mm deep, centred on the spine
SAGITTAL_SLAB_MM = 25.0  # half-width of the slab around the spine that the sagittal view sums
BONE_HU = 150.0  # bone part of a voxel: HU above this value
MIP_WINDOW = (150.0, 1150.0)
#: Scale of the summed bone (HU above BONE_HU times mm) so that typical values are about 1.
SUM_SCALE = 1.0 / 30000.0


# The volume as (z, y, x) = (inferior->superior, anterior->posterior, right->left)
@dataclass
class Canonical:
    """A view of the volume with axes (z up, y posterior, x left) and the map back to input slices."""

    array: np.ndarray  # (Z, Y, X) view (no copy), HU
    spacing: tuple[float, float, float]  # (x, y, z) mm
    z_mm: np.ndarray  # (Z,) LPS z of each canonical slice
    k_of_z: np.ndarray  # (Z,) input slice index of each canonical slice


def canonical(image: Image) -> Canonical:
    """Axis-aligned view of a 3D image with slices along z; raises for non-axial volumes."""
    d = np.asarray(image.direction)
    # index axis c (0=i, 1=j, 2=k) -> dominant LPS axis and its sign
    axis_of = [int(np.argmax(np.abs(d[:, c]))) for c in range(3)]
    if sorted(axis_of) != [0, 1, 2] or axis_of[2] != 2 or abs(d[2, 2]) < 0.7:
        raise InvalidImageError(
            "the volume's slices are not axial (its slice axis does not run head to feet)",
            "reformat the CT to axial slices (e.g. Slicer's 'Resample Scalar/Vector/DWI Volume' or the "
            "scanner's axial reconstruction) and load that")
    arr = image.array  # (K, J, I)
    # numpy axis of each LPS axis: LPS axis a is index axis c -> numpy axis 2 - c
    numpy_axis = {axis_of[c]: 2 - c for c in range(3)}
    view = np.transpose(arr, (numpy_axis[2], numpy_axis[1], numpy_axis[0]))
    signs = [np.sign(d[axis_of[c], c]) for c in range(3)]  # sign of index axis c along its LPS axis
    sign_of_lps = {axis_of[c]: signs[c] for c in range(3)}
    k_count = arr.shape[0]
    k_of_z = np.arange(k_count)
    if sign_of_lps[2] < 0:
        view = view[::-1]
        k_of_z = k_of_z[::-1]
    if sign_of_lps[1] < 0:
        view = view[:, ::-1]
    if sign_of_lps[0] < 0:
        view = view[:, :, ::-1]
    spacing_lps = {axis_of[c]: image.spacing[c] for c in range(3)}
    z_mm = image.origin[2] + d[2, 2] * image.spacing[2] * k_of_z.astype(float)
    return Canonical(view, (spacing_lps[0], spacing_lps[1], spacing_lps[2]), z_mm, k_of_z.copy())


@dataclass
class BoneProjections:
    """The detector's input: frontal and sagittal bone projections, one row per input slice (native z).

    Attributes:
        frontal: (2, Z, FRONTAL_COLUMNS) float32: bone maximum (window 150..1150 HU -> 0..1) and summed bone
            over the antero-posterior axis, 3 mm columns centred on the spine (patient's right first).
        sagittal: (2, Z, SAGITTAL_COLUMNS) float32: the same over a 50 mm slab around the spine, columns
            anterior first.
        z_mm: (Z,) LPS z of each row, rising (inferior first).
        k_of_row: (Z,) input slice index of each row.
        spine_x_mm, spine_y_mm: where the spine was found (mm from the first voxel, canonical axes).
    """

    frontal: np.ndarray
    sagittal: np.ndarray
    z_mm: np.ndarray
    k_of_row: np.ndarray
    spine_x_mm: float
    spine_y_mm: float


def _resample_columns(profile: np.ndarray, pixel_mm: float, centre_mm: float, columns: int) -> np.ndarray:
    """(C, Z, N) rows sampled at ``pixel_mm`` -> (C, Z, columns) at COLUMN_MM centred on ``centre_mm``.

    Area-averaged (box filter of the output column width), zero outside the input.
    """
    n = profile.shape[-1]
    factor = COLUMN_MM / pixel_mm
    if factor > 1.5:
        profile = ndimage.uniform_filter1d(profile, size=max(int(round(factor)), 1), axis=-1, mode="nearest")
    out_centres = centre_mm + (np.arange(columns) - (columns - 1) / 2.0) * COLUMN_MM
    pos = out_centres / pixel_mm  # continuous input column
    i0 = np.floor(pos).astype(int)
    w = pos - i0
    valid = (pos >= -0.5) & (pos <= n - 0.5)
    a = np.clip(i0, 0, n - 1)
    b = np.clip(i0 + 1, 0, n - 1)
    out = profile[..., a] * (1 - w) + profile[..., b] * w
    out[..., ~valid] = 0.0
    return out.astype(np.float32)


def block_mean(chunk: np.ndarray, by: int, bx: int, ny: int, nx: int) -> np.ndarray:
    """(Z, Y, X) chunk -> (Z, ny, nx) float32 means of by x bx in-plane blocks (strided adds, no big reshape)."""
    acc = np.zeros((chunk.shape[0], chunk.shape[1], nx), np.float32)
    for o in range(bx):
        np.add(acc, chunk[:, :, o: o + nx * bx: bx], out=acc, casting="unsafe")
    if by == 1:
        out = acc
    else:
        out = np.zeros((chunk.shape[0], ny, nx), np.float32)
        for o in range(by):
            out += acc[:, o: o + ny * by: by]
    if by * bx > 1:
        out *= 1.0 / (by * bx)
    return out


def bone_projections(image: Image, chunk_slices: int = 32) -> BoneProjections:
    """Frontal and sagittal bone projections of a CT volume (the learned detector's input).

    Computed in chunks of slices so that memory stays small (no full-volume temporaries): one pass for the
    frontal maximum and sum, one pass over a 50 mm slab for the sagittal ones. A 512 x 512 x 300 volume takes
    a few tenths of a second.

    Args:
        image: CT volume in HU, (K, J, I), axial slices (any in-plane orientation that is axis aligned).
        chunk_slices: slices processed at a time.

    Returns:
        :class:`BoneProjections` with one row per input slice, inferior first.

    Raises:
        InvalidImageError: the volume's slices are not axial.
    """
    can = canonical(image)
    vol = can.array
    sx, sy, _ = can.spacing
    nz = vol.shape[0]
    # In-plane block averaging to pixels of about 1.5 mm: the maximum of noise along a long ray would otherwise
    # look like bone on low-dose scans.
    by, bx = max(1, int(round(1.5 / sy))), max(1, int(round(1.5 / sx)))
    ny, nx = vol.shape[1] // by, vol.shape[2] // bx
    sx, sy = sx * bx, sy * by
    f_max = np.empty((nz, nx), np.float32)
    f_sum = np.empty((nz, nx), np.float32)
    for z0 in range(0, nz, chunk_slices):
        z1 = min(nz, z0 + chunk_slices)
        b = block_mean(vol[z0:z1], by, bx, ny, nx)
        b -= BONE_HU
        np.clip(b, 0.0, 2000.0, out=b)
        b.max(axis=1, out=f_max[z0:z1])
        b.sum(axis=1, out=f_sum[z0:z1])
    f_sum *= sy * SUM_SCALE
    # The spine: the columns that hold bone on most slices, nearest the middle of the body.
    bone_rows = (f_max > 250.0).mean(axis=0)  # (X,)
    x_mm = np.arange(nx) * sx
    weight = bone_rows * np.exp(-0.5 * ((x_mm - x_mm.mean()) / max(0.25 * nx * sx, 1.0)) ** 2)
    smooth = ndimage.gaussian_filter1d(weight, sigma=max(10.0 / sx, 1.0))
    spine_x = float(x_mm[int(np.argmax(smooth))]) if smooth.max() > 0 else float(x_mm.mean())
    half = int(round(SAGITTAL_SLAB_MM / sx))
    xc = int(round(spine_x / sx))
    xa, xb = max(0, xc - half), min(nx, xc + half + 1)
    s_max = np.empty((nz, ny), np.float32)
    s_sum = np.empty((nz, ny), np.float32)
    for z0 in range(0, nz, chunk_slices):
        z1 = min(nz, z0 + chunk_slices)
        b = block_mean(vol[z0:z1, :, xa * bx: xb * bx], by, bx, ny, xb - xa)
        b -= BONE_HU
        np.clip(b, 0.0, 2000.0, out=b)
        b.max(axis=2, out=s_max[z0:z1])
        b.sum(axis=2, out=s_sum[z0:z1])
    s_sum *= sx * SUM_SCALE * 4.0
    y_mm = np.arange(ny) * sy
    rows_y = (s_max > 250.0).mean(axis=0)
    smooth_y = ndimage.gaussian_filter1d(rows_y, sigma=max(10.0 / sy, 1.0))
    spine_y = float(np.sum(y_mm * smooth_y) / smooth_y.sum()) if smooth_y.sum() > 0 else float(y_mm.mean())
    scale = 1.0 / (MIP_WINDOW[1] - MIP_WINDOW[0])
    frontal = _resample_columns(np.stack([np.minimum(f_max * scale, 1.2), f_sum]), sx, spine_x, FRONTAL_COLUMNS)
    sagittal = _resample_columns(np.stack([np.minimum(s_max * scale, 1.2), s_sum]), sy, spine_y, SAGITTAL_COLUMNS)
    return BoneProjections(frontal, sagittal, can.z_mm.astype(float), can.k_of_z, spine_x, spine_y)


def resample_rows(image: np.ndarray, z_mm: np.ndarray, row_mm: float = ROW_MM,
                  start_mm: float | None = None, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample projection rows (C, Z, W) at the positions ``z_mm`` (rising) onto rows ``row_mm`` apart.

    Thin slices are averaged over the output row height first (no aliasing of noise); rows outside the input
    are zero.

    Returns:
        ``(resampled (C, R, W) float32, row positions (R,) mm)``.
    """
    z_mm = np.asarray(z_mm, float)
    step = float(np.median(np.diff(z_mm))) if len(z_mm) > 1 else row_mm
    if row_mm / step > 1.5:
        image = ndimage.uniform_filter1d(image, size=int(round(row_mm / step)), axis=1, mode="nearest")
    if start_mm is None:
        start_mm = float(z_mm[0])
    if rows is None:
        rows = int(math.floor((z_mm[-1] - start_mm) / row_mm)) + 1
    out_z = start_mm + np.arange(rows) * row_mm
    pos = (out_z - z_mm[0]) / step
    i0 = np.floor(pos).astype(int)
    w = (pos - i0)[None, :, None]
    a = np.clip(i0, 0, len(z_mm) - 1)
    b = np.clip(i0 + 1, 0, len(z_mm) - 1)
    out = image[:, a] * (1 - w) + image[:, b] * w
    out[:, (pos < -0.5) | (pos > len(z_mm) - 0.5)] = 0.0
    return out.astype(np.float32), out_z


def slice_of(z: float, proj: BoneProjections) -> int:
    """Input slice index nearest to z (mm)."""
    r = int(np.argmin(np.abs(proj.z_mm - z)))
    return int(proj.k_of_row[r])


def vertebra_height(levels_mm: dict[str, float]) -> float:
    """Median distance (mm) between neighbouring level centres found, 32 mm when fewer than two."""
    zs = [levels_mm[n] for n in sorted(levels_mm, key=vertebra_order)]
    gaps = [abs(a - b) for a, b in zip(zs[:-1], zs[1:])]
    return float(np.median(gaps)) if gaps else 32.0
