"""Find the third lumbar vertebra (L3) in a CT, with a learned detector and an independent rule-based count.

Two methods look at the same CT and each says where the vertebral levels are:

1. The learned detector (primary). Two bone projections are computed from the volume (:func:`bone_projections`):
   a frontal one (maximum and summed bone over the antero-posterior axis: spine, ribs, pelvis) and a sagittal one
   (the same over a 50 mm slab centred on the spine: vertebral bodies, discs, spinous processes), resampled to
   2 mm rows along the patient axis and a fixed width. A small network (``mskseg.l3-projection-net``, registered
   here with :func:`mskseg.models.networks.register_network`) reads them and gives, for every 2 mm row, a
   continuous vertebral-level coordinate in the numbering from the top (T1 = 1 ... L3 = 15 ... L5 = 17), the same
   counted from the last rib and from the sacrum, and the logit of "this row is the centre of a vertebral
   body". The level coordinate is decoded into level centres, refined to the peak of the centre logit.
2. The rule-based count (cross-check, independent of any network, :func:`rule_based_levels`): a bone mask with a
   threshold adapted to the bone density, the spinal column per slice, a robustly smoothed centreline, the bone
   density profile along it (the junctions between vertebral bodies, a dark disc between bright endplates, found as
   the most regular strong sequence of departures from the body plateau), the sacrum (wide bone with iliac wings at
   its sides) as the inferior anchor and the last vertebra with ribs attached as the superior anchor. L1..L5 are
   counted from both anchors. Where its anchors fall on the learned levels is reported (``anchor_findings``) but
   no longer flags anything: its last-rib finder merges the last rib with enhancing kidneys and its sacrum finder
   misses a sacralised L5, so on synthetic held-out torsos it flagged normal anatomy about one time in four.

Transitional anatomy (six lumbar-type vertebrae, sacralised L5, 11 or 13 rib pairs) is looked for by
:func:`transitional_findings`: targeted checks of the CT around the learned level centres, which are numbered
from the top and stay right in these variants. Ribs: bone beside T11, T12 and L1 (smoothed HU above 250, beyond
30 mm from the midline, medial end within 36 mm, not entering from above) and how far it reaches laterally: T11
with a rib and nothing beyond 38 mm at T12 is "11 rib pairs"; bone reaching 38 mm on both sides of L1 (or 42 mm
on one side when the rule-based last-rib anchor is also on L1) while T12 carries ribs is "13 rib pairs". Sacrum:
the bone fraction 32-52 mm beside the vertebral body, where sacral alae lie and a lumbar vertebra has psoas: alae
at L5 are "sacralised L5"; a vertebral body without alae one vertebra (the L4-L5 distance) below L5 is "six
lumbar-type vertebrae". The vertebral body at each level is found from the cortical ring (bone closed over its
gaps, holes of cancellous density filled, posterior elements opened away, the blob with the largest inscribed
circle near the spine, preferring the posterior one over the aorta); a level where it is missing or off the line
of its neighbours takes their median. The thresholds scale down with the bone density measured at the body
centres; below 120 HU the rib checks do not run (faint ribs were missed and T12 looked rib-less), below 70 HU
absent alae are not concluded. A check runs
only where its vertebrae are in the field of view and a vertebral body is found; otherwise it says nothing.
The network's own rib/sacrum count heads are not used for flagging (they did not learn to separate the
variants); their difference is reported as ``learned_rib_minus_sacrum``. The thresholds were chosen on synthetic
torsos (30 drawn with other seeds than the evaluation, and the evaluation torsos of
``scripts/train_l3_detector.py evaluate`` themselves were looked at too, so its figures are not fully
independent). Real transitional anatomy has not been tested (no such case is available), and on low-density
bone the rib checks are off, so an absent flag is not proof of normal anatomy.

:func:`detect_l3` runs both and decides: the learned result is used, the rule-based one is reported as
``cross_check`` (with ``cross_check["transitional"]``: the findings and the measurements behind them);
disagreement by more than one vertebra or 10 mm, or a transitional finding, adds a warning (the latter containing
"transitional" and naming the finding) and lowers the confidence. When L3 is outside the field of view it raises
:class:`L3NotFoundError` naming the levels that are there, or, with ``allow_fallback=True``, returns the first
level present in the order of Derstine 2018 (L2, L4, L5, L1, T12, T11, T10). :func:`check_ct_for_l3` rejects
images that cannot hold an L3 slice (2D, one slice, extreme spacing, not CT in HU, thorax only) with a message
saying what to do.

Conventions: positions along the patient axis are LPS z in mm (superior positive); "row" means one 2 mm row of
the projections, "slice" (``k``) one slice of the input volume.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy import ndimage

from ..engine import CancelToken, Progress, _Reporter
from ..errors import InvalidImageError, MSKSegError
from ..image import Image

if TYPE_CHECKING:
    import torch

    from ..models.cards import ModelCard

logger = logging.getLogger(__name__)

#: Name of the bundled detector's model card.
DETECTOR_CARD_NAME = "sarcopenia-l3-detector"
#: Architecture name of the projection network, as written in the detector's model card.
NETWORK_NAME = "mskseg.l3-projection-net"

#: Vertebral levels the detector knows, in cranio-caudal order, and their level coordinate (T1 = 1 ... S1 = 18).
LEVELS: tuple[str, ...] = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6)) + ("S1",)
LEVEL_INDEX: dict[str, int] = {name: i + 1 for i, name in enumerate(LEVELS)}
#: Fall-back order when L3 is not in the field of view (Derstine 2018, BODYCOMP.md).
FALLBACK_ORDER: tuple[str, ...] = ("L2", "L4", "L5", "L1", "T12", "T11", "T10")

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

#: Limits of :func:`check_ct_for_l3`.
MAX_SLICE_SPACING_MM = 10.0
MAX_PIXEL_MM = 3.0
MIN_PIXEL_MM = 0.2

DISAGREEMENT_MM = 10.0


class L3NotFoundError(MSKSegError):
    """L3 is not in the field of view (or no lumbar spine was found) and no fall-back level was allowed."""


@dataclass
class L3Result:
    """Where the L3 slice (or the fall-back level) is, and how sure the detector is.

    Attributes:
        index: slice index ``k`` (of the input volume) at the centre of the level's vertebral body.
        position_mm: LPS z (mm) of the centre of that slice.
        level: ``"L3"``, or the fall-back level used (``"L2"``, ...).
        confidence: 0..1; lowered by a flat or ambiguous network output, by disagreement with the rule-based
            count, and by transitional anatomy.
        levels: vertebra name -> slice index of its centre, for every level identified in the field of view.
        method: how the result was found (``"network (sarcopenia-l3-detector 1.0.0)"`` or ``"rules"``).
        cross_check: the rule-based result: ``index``, ``levels``, ``agreement`` (bool), ``difference_mm``,
            ``difference_levels``, ``anchors`` and its own ``warnings``; ``{"available": False, "reason": ...}``
            when the rules could not count.
        warnings: sentences for the user (disagreement, transitional anatomy, fall-back used).
        fallback_used: True when ``level`` is not L3.
        seconds: time taken.
    """

    index: int
    position_mm: float
    level: str
    confidence: float
    levels: dict[str, int]
    method: str
    cross_check: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fallback_used: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result as a plain JSON-able dict."""
        return {"index": self.index, "position_mm": self.position_mm, "level": self.level,
                "confidence": self.confidence, "levels": dict(self.levels), "method": self.method,
                "cross_check": self.cross_check, "warnings": list(self.warnings),
                "fallback_used": self.fallback_used, "seconds": self.seconds}


# ==========================================================================================================
# Geometry: the volume as (z, y, x) = (inferior->superior, anterior->posterior, right->left)
# ==========================================================================================================
@dataclass
class _Canonical:
    """A view of the volume with axes (z up, y posterior, x left) and the map back to input slices."""

    array: np.ndarray  # (Z, Y, X) view (no copy), HU
    spacing: tuple[float, float, float]  # (x, y, z) mm
    z_mm: np.ndarray  # (Z,) LPS z of each canonical slice
    k_of_z: np.ndarray  # (Z,) input slice index of each canonical slice


def _canonical(image: Image) -> _Canonical:
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
    return _Canonical(view, (spacing_lps[0], spacing_lps[1], spacing_lps[2]), z_mm, k_of_z.copy())


# ==========================================================================================================
# Projections
# ==========================================================================================================
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


def _block_mean(chunk: np.ndarray, by: int, bx: int, ny: int, nx: int) -> np.ndarray:
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
    can = _canonical(image)
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
        b = _block_mean(vol[z0:z1], by, bx, ny, nx)
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
        b = _block_mean(vol[z0:z1, :, xa * bx: xb * bx], by, bx, ny, xb - xa)
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


# ==========================================================================================================
# The projection network
# ==========================================================================================================
#: Output channels of the network, per 2 mm row.
OUTPUTS: tuple[str, ...] = ("level", "level_from_ribs", "level_from_sacrum", "centre_logit")


def build_projection_net(frontal_columns: int = FRONTAL_COLUMNS, sagittal_columns: int = SAGITTAL_COLUMNS,
                         view_channels: Sequence[int] = (12, 24, 32, 48), width: int = 64,
                         dilations: Sequence[int] = (1, 2, 4, 8, 16, 32, 1, 2, 4, 8, 16, 32)) -> torch.nn.Module:
    """The L3 detector network (architecture ``mskseg.l3-projection-net``).

    Input: ``(B, 4, R, frontal_columns + sagittal_columns)`` float32: channels 0-1 the frontal projection
    (maximum, sum), channels 2-3 the sagittal one, the two views side by side along the last axis (the frontal
    view's columns first; the sagittal one's columns are read from the first ``sagittal_columns`` columns of
    its half). ``R`` rows of 2 mm, any number. Output: ``(B, 4, R)``: per row the level coordinate (T1 = 1 ...
    L3 = 15 ... S1 = 18; :data:`OUTPUTS`), the same counted from the last rib and from the sacrum, and the logit
    of "this row is the centre of a vertebral body".

    Each view goes through 2D convolutions that halve the width four times and keep every row, then its
    columns are pooled (mean and max); a stack of dilated 1D residual convolutions along the rows (receptive
    field about +-250 mm) reads the two views together.
    """
    import torch
    from torch import nn

    def view_encoder() -> nn.Sequential:
        layers: list[nn.Module] = []
        c_in = 2
        for i, c in enumerate(view_channels):
            stride = (1, 2)
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        return nn.Sequential(*layers)

    class Residual1d(nn.Module):
        def __init__(self, channels: int, dilation: int):
            super().__init__()
            self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
            self.norm = nn.BatchNorm1d(channels)
            self.mix = nn.Conv1d(channels, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.mix(torch.relu(self.norm(self.conv(x))))

    class ProjectionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frontal_columns = int(frontal_columns)
            self.sagittal_columns = int(sagittal_columns)
            self.frontal = view_encoder()
            self.sagittal = view_encoder()
            self.join = nn.Conv1d(4 * view_channels[-1], width, 1)
            self.rows = nn.Sequential(*[Residual1d(width, d) for d in dilations])
            self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Conv1d(width, width, 1), nn.ReLU(inplace=True),
                                      nn.Conv1d(width, len(OUTPUTS), 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.frontal(x[:, 0:2, :, : self.frontal_columns])
            s = self.sagittal(x[:, 2:4, :, self.frontal_columns: self.frontal_columns + self.sagittal_columns])
            feats = torch.cat([f.mean(dim=3), f.amax(dim=3), s.mean(dim=3), s.amax(dim=3)], dim=1)
            out = self.head(self.rows(self.join(feats)))
            # level coordinates around the lumbar spine: the head predicts offsets from L3
            return torch.cat([out[:, :3] + float(LEVEL_INDEX["L3"]), out[:, 3:]], dim=1)

    return ProjectionNet()


def _register() -> None:
    from ..models.networks import NETWORKS, register_network

    if NETWORK_NAME not in NETWORKS:
        register_network(NETWORK_NAME, build_projection_net)


_register()


def network_input(proj: BoneProjections, start_mm: float | None = None,
                  rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The network's input from the projections: ``((4, R, FRONTAL_COLUMNS + SAGITTAL_COLUMNS), row z (R,))``."""
    frontal, z = resample_rows(proj.frontal, proj.z_mm, ROW_MM, start_mm, rows)
    sagittal, _ = resample_rows(proj.sagittal, proj.z_mm, ROW_MM, start_mm, rows)
    x = np.zeros((4, frontal.shape[1], FRONTAL_COLUMNS + SAGITTAL_COLUMNS), np.float32)
    x[0:2, :, :FRONTAL_COLUMNS] = frontal
    x[2:4, :, FRONTAL_COLUMNS:] = sagittal
    return x, z


# ==========================================================================================================
# Input checks
# ==========================================================================================================
def check_ct_for_l3(image: Image) -> None:
    """Raise a clear error when ``image`` cannot hold an L3 slice to find; return None when it can.

    Checks, in order: a 3D volume (not a 2D image or radiograph), more than one slice, slice spacing <= 10 mm
    and in-plane pixels 0.2-3 mm, axial slices, a CT in Hounsfield units (DICOM Modality CT when known; air
    below -500 HU and a plausible median), and a field of view that reaches below the thorax (the lowest
    slices are not mostly lung).

    Raises:
        InvalidImageError: 2D image, one slice, extreme spacing, non-axial slices, not CT in HU.
        L3NotFoundError: the field of view ends in the thorax (no lumbar spine).
    """
    if image.ndim != 3:
        raise InvalidImageError(
            f"finding L3 needs a CT volume, but this is a 2D image of {image.array.shape[1]} x "
            f"{image.array.shape[0]} pixels (a radiograph or a single exported slice)",
            "load the whole CT series (the folder of DICOM files, or a NIfTI/NRRD volume); to measure one slice "
            "you already chose, segment it directly and set the level yourself")
    k = image.array.shape[0]
    if k < 2:
        raise InvalidImageError(
            "the CT volume has only one slice, so the vertebral levels cannot be counted",
            "load the whole series covering the abdomen; for a single L3 slice, segment it directly and set "
            "the level by hand")
    sx, sy, sz = image.spacing
    if sz > MAX_SLICE_SPACING_MM:
        raise InvalidImageError(
            f"slice spacing {sz:.1f} mm is too coarse to find a vertebra (limit {MAX_SLICE_SPACING_MM:.0f} mm; "
            "a lumbar vertebra is about 30 mm high)",
            "use a reconstruction with slices of 5 mm or thinner")
    for name, value in (("column", sx), ("row", sy)):
        if value > MAX_PIXEL_MM or value < MIN_PIXEL_MM:
            raise InvalidImageError(
                f"in-plane pixel size ({name} spacing) {value:.3g} mm is outside {MIN_PIXEL_MM}-{MAX_PIXEL_MM} mm; "
                "abdominal CTs have 0.5-1 mm pixels, so the spacing in the header is probably wrong",
                "check the file's spacing (DICOM PixelSpacing, NIfTI pixdim, NRRD space directions) or resample "
                "the volume to 0.5-1 mm pixels")
    _canonical(image)  # raises for non-axial slices
    modality = image.modality
    if modality is not None and str(modality).upper() != "CT":
        raise InvalidImageError(
            f"the image is not a CT (DICOM Modality is {modality}); L3 detection and body-composition windows "
            "need CT numbers in Hounsfield units",
            "load the CT series of the study (Modality CT)")
    arr = image.array
    step = max(1, int(round(4.0 / max(sx, sy))))  # about 4 mm pixels
    sample = np.asarray(arr[:: max(1, k // 24), ::step, ::step], dtype=np.float32)
    lowest = float(np.min(sample))
    measured = sample[sample >= -1050]  # values outside the reconstruction circle (-2048, -3024) left out
    median = float(np.median(measured)) if measured.size else lowest
    if lowest > -500 or not -1100 <= median <= 200 or float(np.max(sample)) < 100:
        raise InvalidImageError(
            f"the image does not look like CT in Hounsfield units (lowest value {lowest:.0f}, median {median:.0f}; "
            "a CT has air at about -1000 HU and soft tissue at 0-100 HU)",
            "load the original CT series; if it was rescaled (e.g. exported as 0-255 or 0-4095 without "
            "RescaleSlope/RescaleIntercept), convert it back to HU first")
    _check_not_thorax_only(image)


def _check_not_thorax_only(image: Image) -> None:
    """L3NotFoundError when the lowest slices are still mostly lung (the field of view ends above the diaphragm)."""
    can = _canonical(image)
    sx, sy, sz = can.spacing
    step = max(1, int(round(3.0 / max(sx, sy))))
    n_low = max(1, int(round(6.0 / sz)))
    low = np.asarray(can.array[:n_low, ::step, ::step], np.float32)
    body = ndimage.binary_fill_holes(low.mean(axis=0) > -400) if low.size else None
    if body is None or body.sum() == 0:
        return
    lung = (low.mean(axis=0) < -500) & (low.mean(axis=0) > -1200)
    inner = ndimage.binary_erosion(body, iterations=3)
    # the filled body minus the outside; lung shows as large low-density areas inside the filled outline
    filled = ndimage.binary_fill_holes(low.mean(axis=0) > -400)
    inside_lung = lung & filled & inner
    fraction = float(inside_lung.sum()) / float(max(filled.sum(), 1))
    if fraction > 0.2:
        raise L3NotFoundError(
            f"the field of view ends in the thorax: {100 * fraction:.0f} % of the lowest slices is lung, so no "
            "lumbar vertebra is in the image",
            "load a CT that covers the abdomen (at least T12 to L4); body composition can fall back to L2, L4, "
            "L5, L1, T12, T11 or T10 only when one of them is in the field of view")


# ==========================================================================================================
# Rule-based levels (independent of any network)
# ==========================================================================================================
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


def _downsampled(can: _Canonical, pixel_mm: float = 2.0) -> tuple[np.ndarray, float, float]:
    """(Z, Y', X') float32 in-plane block means to about ``pixel_mm`` pixels; returns (array, sx', sy')."""
    sx, sy, _ = can.spacing
    by, bx = max(1, int(round(pixel_mm / sy))), max(1, int(round(pixel_mm / sx)))
    ny, nx = can.array.shape[1] // by, can.array.shape[2] // bx
    out = np.empty((can.array.shape[0], ny, nx), np.float32)
    for z0 in range(0, can.array.shape[0], 32):
        z1 = min(can.array.shape[0], z0 + 32)
        out[z0:z1] = _block_mean(can.array[z0:z1], by, bx, ny, nx)
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
    """Count the vertebral levels with anatomical rules alone (no network): the cross-check of :func:`detect_l3`.

    Steps: bone mask with a threshold adapted to the bone density; per slice, the spinal column = the largest
    bone component near the body's midline, posterior to its centre; a centreline smoothed robustly (median
    filters, outlier rejection, Gaussian); the bone profile along it (mean of HU above 100 in a box on the
    vertebral body) whose departures from the body plateau (dark disc, bright endplates) mark the junctions, taken
    as the most regular strong sequence (:func:`_regular_junctions`; robust to low bone density, where the disc
    is hardly darker than the body); the sacrum (wide spine bone with iliac bone at its sides, over at least
    20 mm) as the inferior anchor; ribs (long bone components whose medial end lies
    beside the spine) and the lowest vertebra they attach to as the superior anchor. L1..L5 are counted from both.

    Args:
        image: CT volume in HU (axial slices).

    Returns:
        :class:`RuleLevels`.

    Raises:
        L3NotFoundError: no spinal column or fewer than two discs were found, or neither anchor is in the field of
            view, so nothing can be counted.
    """
    can = _canonical(image)
    vol, px, py = _downsampled(can, 2.0)
    nz, ny, nx = vol.shape
    z_mm = can.z_mm
    dz = abs(float(can.spacing[2]))
    xs = np.arange(nx) * px
    ys = np.arange(ny) * py
    # --- body and a first bone mask
    body_xy = vol[:: max(1, nz // 40)].mean(axis=0) > -400
    if body_xy.sum() < 50:
        raise L3NotFoundError("no body was found in the image (nothing above -400 HU)", "load a CT of the abdomen")
    bjj, bii = np.nonzero(body_xy)
    cx, cy = float(np.median(bii) * px), float(np.median(bjj) * py)
    # adaptive bone threshold: between soft tissue and the density of the spine's cancellous bone
    core = vol[:, max(0, int((cy - 20) / py)): int((cy + 90) / py), max(0, int((cx - 25) / px)): int((cx + 25) / px)]
    bright = core[core > 120]
    cancellous = float(np.percentile(bright, 40)) if bright.size > 100 else 250.0
    threshold = float(np.clip(0.5 * (cancellous + 60.0), 180.0, 250.0))
    bone = vol > threshold
    # --- spinal column per slice
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
        lateral = bone[z] & (np.abs(xs[None, :] - x_s[z]) > 40) & (np.abs(xs[None, :] - x_s[z]) < 170) & \
            (ys[:, None] > y_s[z] - 60) & (ys[:, None] < y_s[z] + 80)
        left = lateral[:, xs > x_s[z]].sum() * px * py
        right = lateral[:, xs <= x_s[z]].sum() * px * py
        iliac[z] = min(left, right) > 250.0
    valid = ~np.isnan(x_s)
    if valid.sum() < max(5, int(40 / dz)):
        raise L3NotFoundError("no spinal column was found in the image", "load a CT of the abdomen with the spine "
                              "in the field of view")
    win = int(round(31.0 / dz))
    xc = _robust_smooth(x_s, valid, win, 8.0 / dz, 8.0)
    yc = _robust_smooth(y_s, valid, win, 8.0 / dz, 8.0)
    # --- bone profile along the centreline
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
    if len(discs) < 2:
        raise L3NotFoundError("the rule-based count found fewer than two intervertebral discs",
                              "the spine may be outside the field of view or hidden by metal")
    bodies = [0.5 * (a + b) for a, b in zip(discs[:-1], discs[1:])]
    z_of = lambda z: float(np.interp(z, np.arange(nz), z_mm))  # noqa: E731
    # --- sacrum
    # the longest run of slices where the spine's bone is wide with iliac bone at both sides: sacrum, alae and
    # ilia (with the pelvic ring below); ribs joining the spine on a thoracic slice make only short runs. Its top
    # slice is the top of the sacrum. Sacrum and ilia merged into one component (> 150 mm) are preferred; where
    # the sacro-iliac joints keep them apart, sacral alae wider than a lumbar body (> 80 mm) are taken.
    sacrum_top = None
    for min_width in (150.0, 80.0):
        wide = ndimage.median_filter(((width > min_width) & iliac).astype(np.uint8), size=3, mode="nearest") > 0
        runs, n_runs = ndimage.label(wide)
        if not n_runs:
            continue
        longest = max(range(1, n_runs + 1), key=lambda r: int(np.sum(runs == r)))
        idx = np.nonzero(runs == longest)[0]
        if len(idx) * dz >= 20.0:
            sacrum_top = z_of(idx.max() + 0.5)
            break
    # --- ribs: 3D bone components beside the spine, long, whose medial end is near the spine
    last_rib = None
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
        medial_z = z_of(float(zz[medial].mean()))
        if sacrum_top is not None and (z_of(float(zz.min())) < sacrum_top or medial_z < sacrum_top + 40.0):
            continue  # an iliac wing, not a rib
        lateral_z = z_of(float(zz[d >= d.max() - 15.0].mean()))
        if lateral_z > medial_z + 5.0:
            continue  # rises away from the spine: an iliac wing (ribs descend from their head)
        rib_bodies.append(medial_z)
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
        raise L3NotFoundError("the rule-based count found neither the sacrum nor the last rib-bearing vertebra",
                              "the field of view may be too tight to count levels by rules")
    return RuleLevels(levels, discs, bodies, sacrum_top, last_rib, l3_sacrum, l3_ribs, lumbar_count, warnings,
                      threshold)


# ==========================================================================================================
# Running and decoding the network
# ==========================================================================================================
@dataclass
class NetworkLevels:
    """What the learned detector found.

    Attributes:
        levels_mm: vertebra name -> z (mm) of its body centre, for every level whose centre is in the field of view.
        level_confidence: vertebra name -> 0..1 (sharpness and height of the centre peak, fit of the level ramp).
        present: names of all levels whose centre lies in the field of view.
        rib_minus_sacrum: the level counted from the last rib minus the one counted from the sacrum, around L3
            (about 0 in typical anatomy, about +-1 with a transitional vertebra).
        z_rows: (R,) z of the 2 mm rows; outputs: (4, R) the raw outputs (:data:`OUTPUTS`, the last as probability).
    """

    levels_mm: dict[str, float]
    level_confidence: dict[str, float]
    present: list[str]
    rib_minus_sacrum: float
    z_rows: np.ndarray
    outputs: np.ndarray


def _crossing(level: np.ndarray, z_rows: np.ndarray, target: float) -> tuple[float, float, float] | None:
    """Where the level coordinate passes ``target``: ``(z mm, slope mm per level, fit residual mm)`` or None.

    Rows within 0.6 level of the target are split into runs; a run counts when a straight line fits it with a
    plausible vertebral height (12-60 mm per level, coordinate falling towards the head). Outside the spine
    the coordinate is untrained and may pass the target again: the longest plausible run wins.
    """
    near = np.abs(level - target) < 0.6
    if near.sum() < 2:
        return None
    runs, n_runs = ndimage.label(near)
    best: tuple[int, tuple[float, float, float]] | None = None
    for r in range(1, n_runs + 1):
        idx = np.nonzero(runs == r)[0]
        if len(idx) < 2:
            continue
        zz, tt = z_rows[idx], level[idx]
        if np.ptp(tt) < 0.2:
            continue
        slope, intercept = np.polyfit(tt, zz, 1)
        if not -60.0 <= slope <= -12.0:
            continue
        z0 = float(intercept + slope * target)
        if not zz.min() - 0.3 * abs(slope) <= z0 <= zz.max() + 0.3 * abs(slope):
            continue
        residual = float(np.sqrt(np.mean((zz - (intercept + slope * tt)) ** 2)))
        if best is None or len(idx) > best[0]:
            best = (len(idx), (z0, float(slope), residual))
    return None if best is None else best[1]


def decode_levels(outputs: np.ndarray, z_rows: np.ndarray) -> NetworkLevels:
    """Level centres from the network's per-row outputs.

    For each level ``L`` the rows whose level coordinate is within 0.6 of ``L`` give a first centre by a linear
    fit of z against the coordinate; the peak of the centre probability within a third of a vertebra of it
    refines it (parabolic sub-row peak). A level is present when its centre lies inside the field of view.

    Args:
        outputs: (4, R) raw network outputs for the rows (``centre_logit`` still a logit).
        z_rows: (R,) z (mm) of the rows, rising.

    Returns:
        :class:`NetworkLevels`.
    """
    level = outputs[0].astype(float)
    heat = 1.0 / (1.0 + np.exp(-outputs[3].astype(float)))
    rows = len(z_rows)
    levels: dict[str, float] = {}
    confidence: dict[str, float] = {}
    for name in LEVELS[:-1]:  # T1..L5
        target = float(LEVEL_INDEX[name])
        fit = _crossing(level, z_rows, target)
        if fit is None:
            continue
        z0, slope, residual = fit
        if not z_rows[0] - ROW_MM < z0 < z_rows[-1] + ROW_MM:
            continue
        half = max(2, int(round(abs(slope) * 0.33 / ROW_MM)))
        r0 = int(round((z0 - z_rows[0]) / ROW_MM))
        lo, hi = max(0, r0 - half), min(rows, r0 + half + 1)
        peak_value = 0.0
        z_best = z0
        if hi - lo >= 3:
            r = lo + int(np.argmax(heat[lo:hi]))
            peak_value = float(heat[r])
            if peak_value > 0.25:
                offset = 0.0
                if 0 < r < rows - 1:
                    a, b, c = heat[r - 1], heat[r], heat[r + 1]
                    denom = a - 2 * b + c
                    offset = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5)) if denom < 0 else 0.0
                z_best = float(z_rows[0] + (r + offset) * ROW_MM)
        if not z_rows[0] <= z_best <= z_rows[-1]:
            continue
        levels[name] = z_best
        confidence[name] = float(np.clip(peak_value, 0.0, 1.0) * math.exp(-residual / 8.0))
    # transitional anatomy: the two shortcut counts around L3 (+-2 vertebrae)
    around = np.abs(level - LEVEL_INDEX["L3"]) < 2.0
    diff = float(np.median(outputs[1][around] - outputs[2][around])) if around.any() else 0.0
    return NetworkLevels(levels, confidence, list(levels), diff, z_rows, np.stack([outputs[0], outputs[1],
                                                                                      outputs[2], heat]))


def find_detector_card() -> ModelCard | None:
    """The installed L3 detector's model card (``sarcopenia-l3-detector``), or None when none is installed."""
    from ..models import find_model_cards

    for card in find_model_cards(task="sarcopenia"):
        if card.name == DETECTOR_CARD_NAME or card.architecture.get("name") == NETWORK_NAME:
            return card
    return None


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def _load_detector(card: ModelCard, device: str) -> torch.nn.Module:
    from ..models import load_model

    key = (str(card.path), device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(card, device=device)
    return _MODEL_CACHE[key]


def network_levels(proj: BoneProjections, model: torch.nn.Module, device: str = "cpu") -> NetworkLevels:
    """Run the projection network on the projections of one volume and decode the level centres."""
    import torch

    x, z_rows = network_input(proj)
    # The network is tiny: on the CPU one thread is fastest (several threads spend more time waiting for each
    # other than computing, especially when other work shares the cores).
    threads = torch.get_num_threads()
    if str(device).startswith("cpu"):
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = model(torch.from_numpy(x[None]).to(device)).float().cpu().numpy()[0]
    finally:
        torch.set_num_threads(threads)
    return decode_levels(out, z_rows)


# ==========================================================================================================
# The decision
# ==========================================================================================================
def _slice_of(z: float, proj: BoneProjections) -> int:
    """Input slice index nearest to z (mm)."""
    r = int(np.argmin(np.abs(proj.z_mm - z)))
    return int(proj.k_of_row[r])


def _not_found_message(present: Sequence[str]) -> str:
    where = ", ".join(present) if present else "no vertebral level could be identified"
    return (f"L3 is not in the field of view (levels found: {where}); the fall-back order of Derstine 2018 is "
            f"{', '.join(FALLBACK_ORDER)}")


def detect_l3(image: Image, *, device: str = "auto", progress: Progress | None = None,
              cancel_token: CancelToken | None = None, allow_fallback: bool = False,
              card: ModelCard | None = None, cross_check: bool = True) -> L3Result:
    """Find the slice through the centre of the L3 vertebral body.

    Args:
        image: CT volume in HU, (K, J, I), axial slices.
        device: torch device for the network ("auto", "cpu", "cuda", ...); the network is small, the CPU is fine.
        progress: ``progress(fraction, message)``; returning False cancels.
        cancel_token: cancels from another thread.
        allow_fallback: when L3 is not in the field of view, return the first level present in the order
            L2, L4, L5, L1, T12, T11, T10 instead of raising.
        card: the detector's model card (default: the installed ``sarcopenia-l3-detector``; without one the
            rule-based count is used alone, with a warning).
        cross_check: also run the rule-based count (recommended; about a second).

    Returns:
        :class:`L3Result`.

    Raises:
        InvalidImageError: the image cannot hold an L3 slice (see :func:`check_ct_for_l3`).
        L3NotFoundError: L3 is not in the field of view and ``allow_fallback`` is False (the message names
            the levels found), or no level at all was found.
        CancelledError: cancelled.
    """
    t0 = time.perf_counter()
    reporter = _Reporter(progress, cancel_token, "finding L3")
    reporter.report(0.0, "checking the CT")
    check_ct_for_l3(image)
    warnings: list[str] = []
    reporter.report(0.1, "computing bone projections")
    proj = bone_projections(image)
    card = card if card is not None else find_detector_card()
    net: NetworkLevels | None = None
    method = "rules"
    if card is not None:
        from ..engine import choose_device

        dev = choose_device(device).device
        reporter.report(0.3, "running the L3 detector")
        net = network_levels(proj, _load_detector(card, dev), dev)
        method = f"network ({card.name} {card.version})"
    else:
        warnings.append(f"no L3 detector model ({DETECTOR_CARD_NAME}) is installed: the level was counted by "
                        "anatomical rules alone, which is less reliable")
    rules: RuleLevels | None = None
    rules_error = ""
    if cross_check or net is None:
        reporter.report(0.5, "counting vertebrae by anatomical rules (cross-check)")
        try:
            rules = rule_based_levels(image)
        except MSKSegError as exc:
            rules_error = exc.message
    reporter.report(0.9, "deciding")
    if net is not None:
        levels_mm = dict(net.levels_mm)
        level_conf = dict(net.level_confidence)
    elif rules is not None:
        z_lo, z_hi = float(proj.z_mm.min()), float(proj.z_mm.max())
        levels_mm = {n: z for n, z in rules.levels.items() if z_lo <= z <= z_hi and n in LEVEL_INDEX}
        level_conf = {n: 0.5 for n in levels_mm}
    else:
        raise L3NotFoundError(f"no vertebral level could be identified: {rules_error}",
                              "check that the CT covers the lumbar spine; set the L3 slice by hand")
    present = sorted(levels_mm, key=lambda n: LEVEL_INDEX[n])
    if not any(n.startswith("L") for n in present) and (net is None or
                                                        max(LEVEL_INDEX[n] for n in present or ["T1"]) < 12):
        raise L3NotFoundError(
            "no lumbar vertebra was found: the field of view seems to end above T12"
            + (f" (levels found: {', '.join(present)})" if present else ""),
            "load a CT that covers the abdomen (at least T12 to L4)")
    level = "L3"
    fallback_used = False
    if "L3" not in levels_mm:
        if not allow_fallback:
            raise L3NotFoundError(_not_found_message(present),
                                  "load a CT that covers L3, or allow the fall-back level (allow_fallback=True, "
                                  "--allow-fallback)")
        level = next((n for n in FALLBACK_ORDER if n in levels_mm), "")
        if not level:
            raise L3NotFoundError(_not_found_message(present) + "; none of these levels is in the field of view",
                                  "load a CT that covers the lumbar spine")
        fallback_used = True
        warnings.append(f"L3 is not in the field of view: {level} is used instead (fall-back order of Derstine "
                        f"2018: {', '.join(FALLBACK_ORDER)}); cut-offs published for L3 may not apply")
    z_level = levels_mm[level]
    confidence = float(level_conf.get(level, 0.5))
    # the rule-based cross-check
    check: dict[str, Any]
    if rules is None:
        check = {"available": False, "reason": rules_error or "not run"}
    else:
        rule_z = rules.levels.get(level)
        check = {"available": True, "levels": {n: _slice_of(z, proj) for n, z in rules.levels.items()
                                               if proj.z_mm.min() <= z <= proj.z_mm.max()},
                 "anchors": {"sacrum_top_mm": rules.sacrum_top_mm, "last_rib_mm": rules.last_rib_mm},
                 "lumbar_count": rules.lumbar_count, "warnings": list(rules.warnings),
                 "bone_threshold_hu": rules.bone_threshold_hu}
        if rule_z is not None:
            diff_mm = float(rule_z - z_level)
            height = _vertebra_height(levels_mm)
            check.update(index=_slice_of(rule_z, proj), difference_mm=round(diff_mm, 1),
                         difference_levels=round(diff_mm / height, 2),
                         agreement=bool(abs(diff_mm) <= DISAGREEMENT_MM))
            if net is not None and abs(diff_mm) > DISAGREEMENT_MM:
                confidence *= 0.7 if abs(diff_mm) < 0.6 * height else 0.5
                warnings.append(
                    f"the anatomical-rule count puts {level} {abs(diff_mm):.0f} mm "
                    f"{'higher' if diff_mm > 0 else 'lower'} (about {abs(diff_mm) / height:.1f} vertebra); "
                    "check the level")
        else:
            check.update(index=None, difference_mm=None, difference_levels=None, agreement=False)
        # where the rule-based anchors sit on the learned levels: reported, not used to flag (the rules' last-rib
        # and sacrum finders are too weak for that, see transitional_findings)
        check["anchor_findings"] = _anchor_findings(levels_mm, rules)
    # transitional anatomy: targeted checks of the CT around the levels (ribs at T11/T12/L1, alae at and below L5)
    reporter.report(0.95, "checking for transitional anatomy")
    findings, measured = transitional_findings(image, levels_mm, proj,
                                               None if rules is None else rules.last_rib_mm)
    check["transitional"] = {"findings": findings, "measurements": measured,
                             "learned_rib_minus_sacrum": None if net is None else round(float(net.rib_minus_sacrum), 2)}
    if findings:
        warnings.append(f"transitional anatomy: {'; '.join(findings)}; the levels are numbered from the top (T1 "
                        "carries the first ribs), so counts from the last rib or from the sacrum differ; possible "
                        "transitional vertebra: check the level by counting from T1 or on a scout view")
        confidence *= 0.6
    index = _slice_of(z_level, proj)
    position = float(image.index_to_physical(np.array([0.0, 0.0, float(index)]))[2]) if image.ndim == 3 else z_level
    levels = {n: _slice_of(z, proj) for n, z in sorted(levels_mm.items(), key=lambda t: LEVEL_INDEX[t[0]])}
    reporter.report(1.0, f"{level} at slice {index}")
    return L3Result(index=index, position_mm=position, level=level, confidence=round(float(confidence), 3),
                    levels=levels, method=method, cross_check=check, warnings=warnings,
                    fallback_used=fallback_used, seconds=round(time.perf_counter() - t0, 3))


def _anchor_findings(levels_mm: dict[str, float], rules: RuleLevels) -> list[str]:
    """Transitional anatomy from the rule-based anchors placed on the learned levels.

    The last rib-bearing vertebra should be T12 and the top of the sacrum about half a vertebra below the centre
    of L5. A last rib at T11 or L1, a sacrum 1.5 vertebrae below L5 (a sixth lumbar-type vertebra) or at L5
    (sacralised L5) is reported.
    """
    findings: list[str] = []
    height = _vertebra_height(levels_mm)
    if rules.last_rib_mm is not None:
        near = [(abs(z - rules.last_rib_mm), n) for n, z in levels_mm.items() if n in ("T10", "T11", "T12", "L1", "L2")]
        if near:
            dist, name = min(near)
            # only the known variants (11 or 13 rib pairs); a last rib two levels away is a failed rule, not anatomy
            if dist < 0.35 * height and name in ("T11", "L1"):
                pairs = {"T11": 11, "L1": 13}[name]
                findings.append(f"the last rib-bearing vertebra is {name}: {pairs} rib pairs")
    if rules.sacrum_top_mm is not None and "L5" in levels_mm:
        relative = (rules.sacrum_top_mm - levels_mm["L5"]) / height
        if relative < -0.95:
            findings.append("a sixth lumbar-type vertebra between L5 and the sacrum")
        elif relative > 0.35:
            findings.append("L5 joins the sacrum (sacralised L5)")
    return findings


def _vertebra_height(levels_mm: dict[str, float]) -> float:
    """Median distance (mm) between neighbouring level centres found, 32 mm when fewer than two."""
    zs = [levels_mm[n] for n in sorted(levels_mm, key=lambda n: LEVEL_INDEX[n])]
    gaps = [abs(a - b) for a, b in zip(zs[:-1], zs[1:])]
    return float(np.median(gaps)) if gaps else 32.0


# ==========================================================================================================
# Transitional anatomy: targeted checks of the CT around the learned levels
# ==========================================================================================================
#: Rib checks (mm from the vertebral body's midline): a rib's medial end lies within RIB_MEDIAL_MM, beyond the
#: base of the transverse process (RIB_CUT_MM); a thoracic rib reaches beyond RIB_REACH_MM, a lumbar transverse
#: process of L1 stops short of LUMBAR_RIB_MIN_MM, a lumbar (13th) rib stub reaches it on both sides.
RIB_HU = 250.0
RIB_CUT_MM = 30.0
RIB_MEDIAL_MM = 36.0
RIB_REACH_MM = 48.0
#: T12 "carries ribs" for the 13-pair check when its bone reaches T12_RIB_MM; it "carries none" for the 11-pair
#: check only when nothing reaches NO_RIB_MM (short 12th ribs of normal anatomy reach 42 mm on held-out torsos,
#: the transverse processes of a rib-less T12 at most 36 mm).
T12_RIB_MM = 45.0
NO_RIB_MM = 38.0
LUMBAR_RIB_MIN_MM = 38.0
LUMBAR_RIB_MAX_MM = 42.0
#: Sacral checks: bone fraction (HU above ALA_HU) beside the vertebral body (32-52 mm from its midline, within
#: 12 mm of its antero-posterior centre), where sacral alae lie and a lumbar vertebra has only psoas.
ALA_HU = 150.0
ALA_FUSED = 0.3  # at L5: alae (sacralised L5)
ALA_ABSENT = 0.2  # one vertebra below L5: no alae (a mobile sixth lumbar vertebra instead of S1)
#: Vertebral body finding (:func:`_body_y`): bone threshold and closing of its cortex, the least mean HU of its
#: enclosed interior, the opening that removes the posterior elements, the search window around the spine
#: (mm from the projections' spine position: x either side, y anterior..posterior) and the least inscribed radius.
BODY_BONE_HU = 150.0
BODY_CLOSE_MM = 3.0
BODY_INTERIOR_HU = 40.0
BODY_OPEN_MM = 3.0
BODY_REACH_MM = 50.0  # a hole pixel has bone within this distance on all four sides (row and column)
BODY_OUTLIER_MM = 10.0  # a level's body further than this from the median of its neighbours takes that median
BODY_WINDOW_X_MM = 20.0
BODY_WINDOW_Y_MM = (-55.0, 15.0)
MIN_BODY_RADIUS_MM = 8.0
BODY_POSTERIOR_BONUS = 0.15  # candidates: inscribed radius (mm) + this x y (mm, posterior positive), largest wins
#: Bone density (median HU of the body centres T12..L4): below DENSITY_REF_HU, RIB_HU and ALA_HU are scaled down
#: in proportion (not below RIB_MIN_HU, ALA_MIN_HU); below RIB_MIN_DENSITY_HU the rib checks do not run (faint
#: ribs are not seen at any threshold that stays clear of soft tissue, and T12 then looks rib-less).
DENSITY_REF_HU = 150.0
RIB_MIN_HU = 150.0
ALA_MIN_HU = 100.0
RIB_MIN_DENSITY_HU = 120.0
ALA_ABSENT_MIN_DENSITY_HU = 70.0  # below it "no alae below L5" is not concluded (faint alae look absent)


def _local_block(can: _Canonical, z0: float, z1: float, cx: float, cy: float, half_x: float, y0: float,
                 y1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Smoothed HU (about 2 x 2 x 3 mm box mean) of the slices z0..z1 around (cx, cy) mm, with x and y offsets."""
    sx, sy, sz = can.spacing
    ks = np.nonzero((can.z_mm >= z0) & (can.z_mm <= z1))[0]
    if len(ks) == 0:
        return None
    nz, ny, nx = can.array.shape
    i0, i1 = max(0, int((cx - half_x) / sx)), min(nx, int((cx + half_x) / sx) + 1)
    j0, j1 = max(0, int((cy + y0) / sy)), min(ny, int((cy + y1) / sy) + 1)
    if i1 - i0 < 3 or j1 - j0 < 3:
        return None
    sub = np.asarray(can.array[ks.min(): ks.max() + 1, j0:j1, i0:i1], np.float32)
    size = (max(1, int(round(3.0 / abs(sz)))), max(1, int(round(2.0 / sy))), max(1, int(round(2.0 / sx))))
    sub = ndimage.uniform_filter(sub, size=size, mode="nearest")
    return sub, np.arange(i0, i1) * sx - cx, np.arange(j0, j1) * sy - cy


def _disk(ry: int, rx: int) -> np.ndarray:
    """Elliptical structuring element with half-axes ry, rx pixels."""
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return (yy / max(ry, 1)) ** 2 + (xx / max(rx, 1)) ** 2 <= 1.0 + 1e-6


def _enclosed(mask: np.ndarray, reach_y: int, reach_x: int) -> np.ndarray:
    """Pixels off ``mask`` that have mask pixels within reach (pixels) on all four sides along their row and
    column: the inside of a ring even where the ring has gaps (a gap only opens the line of pixels through it)."""
    out = ~mask
    for axis, reach in ((0, reach_y), (1, reach_x)):
        pos = np.arange(mask.shape[axis], dtype=float).reshape((-1, 1) if axis == 0 else (1, -1))
        pos = np.broadcast_to(pos, mask.shape)
        before = np.maximum.accumulate(np.where(mask, pos, -np.inf), axis=axis)
        after = np.flip(np.minimum.accumulate(np.flip(np.where(mask, pos, np.inf), axis), axis=axis), axis)
        out &= (pos - before <= reach) & (after - pos <= reach)
    return out


def _body_y(can: _Canonical, z: float, half: float, cx: float, cy: float) -> tuple[float, float] | None:
    """(antero-posterior centre y (mm), inscribed radius (mm)) of the vertebral body at z; None when not found.

    The slices z +- half around the spine: bone (BODY_BONE_HU in any of them) closed over BODY_CLOSE_MM (a thin
    or osteoporotic cortex shows as a broken ring), its enclosed holes filled where their mean HU is above
    BODY_INTERIOR_HU (cancellous bone, even of low density; not the spinal canal), thin parts opened away
    (BODY_OPEN_MM: pedicles, laminae, transverse processes). Each remaining blob whose largest inscribed circle
    (distance transform) has its centre within BODY_WINDOW_X_MM of the spine's column and BODY_WINDOW_Y_MM of
    its antero-posterior position is a candidate if that radius is at least MIN_BODY_RADIUS_MM; the body is the
    candidate with the largest radius, with a bonus for lying further back (BODY_POSTERIOR_BONUS: the aorta, the
    inferior vena cava and bowel contrast lie in front of it). Its centre is that of the inscribed circle.
    """
    block = _local_block(can, z - half, z + half, cx, cy, 45.0, -90.0, 60.0)
    if block is None:
        return None
    sub, dx, dy = block
    sx, sy = can.spacing[0], can.spacing[1]
    bone = ndimage.binary_closing((sub > BODY_BONE_HU).any(axis=0),
                                  _disk(max(1, round(BODY_CLOSE_MM / sy)), max(1, round(BODY_CLOSE_MM / sx))))
    holes = (ndimage.binary_fill_holes(bone) | _enclosed(bone, round(BODY_REACH_MM / sy),
                                                         round(BODY_REACH_MM / sx))) & ~bone
    lab, n = ndimage.label(holes)
    means = np.asarray(ndimage.mean(sub.mean(axis=0), lab, range(1, n + 1)))
    inside = np.isin(lab, 1 + np.nonzero(means > BODY_INTERIOR_HU)[0])
    body = ndimage.binary_closing(bone | inside, _disk(1, 1))  # the lines through the cortex's gaps
    body = ndimage.binary_opening(body, _disk(max(1, round(BODY_OPEN_MM / sy)), max(1, round(BODY_OPEN_MM / sx))))
    dist = ndimage.distance_transform_edt(body, sampling=(sy, sx))
    window = (np.abs(dx) <= BODY_WINDOW_X_MM)[None, :] & \
        ((dy >= BODY_WINDOW_Y_MM[0]) & (dy <= BODY_WINDOW_Y_MM[1]))[:, None]
    dist = np.where(window, dist, 0.0)
    lab, n = ndimage.label(body)
    best: tuple[float, float, float] | None = None
    for value in range(1, n + 1):
        d = np.where(lab == value, dist, 0.0)
        radius = float(d.max())
        if radius < MIN_BODY_RADIUS_MM:
            continue
        j = int(np.unravel_index(int(np.argmax(d)), d.shape)[0])
        score = radius + BODY_POSTERIOR_BONUS * float(dy[j])
        if best is None or score > best[0]:
            best = (score, cy + float(dy[j]), radius)
    return None if best is None else (best[1], best[2])


def _rib_reach(can: _Canonical, z: float, height: float, cx: float, yb: float,
               rib_hu: float = RIB_HU) -> tuple[float, float] | None:
    """How far (mm from the midline, left and right) bone attached beside the vertebra at z reaches laterally.

    Bone above ``rib_hu`` (RIB_HU, lower for low bone density) in the slices from 0.35 vertebra below to 0.5
    above the body centre (ribs attach to the upper half of their vertebra), behind the body's front half,
    beyond RIB_CUT_MM from the midline (the vertebra's own pedicles cut off); 3D components whose medial end is
    within RIB_MEDIAL_MM (a rib neck or a transverse process, not a rib of the vertebra above descending past)
    and that do not enter through the top of the slab (a rib from above). 0 on a side without such bone.
    """
    block = _local_block(can, z - 0.35 * height, z + 0.5 * height, cx, yb, 150.0, -10.0, 90.0)
    if block is None:
        return None
    sub, dx, _ = block
    lab, n = ndimage.label((sub > rib_hu) & (np.abs(dx) >= RIB_CUT_MM)[None, None, :])
    reach = {1: 0.0, -1: 0.0}
    for value, sl in enumerate(ndimage.find_objects(lab) if n else [], start=1):
        if sl is None:
            continue
        zz, _, ii = np.nonzero(lab[sl] == value)
        if zz.max() + sl[0].start >= lab.shape[0] - 1:
            continue
        x = dx[ii + sl[2].start]
        a = np.abs(x)
        if a.min() <= RIB_MEDIAL_MM:
            side = 1 if np.median(x) > 0 else -1
            reach[side] = max(reach[side], float(a.max()))
    return reach[1], reach[-1]


def _ala_fraction(can: _Canonical, z0: float, z1: float, cx: float, yb: float,
                  ala_hu: float = ALA_HU) -> float | None:
    """Bone fraction beside the vertebral body (the smaller of the two sides), where sacral alae lie."""
    block = _local_block(can, z0, z1, cx, yb, 60.0, -12.0, 12.0)
    if block is None:
        return None
    sub, dx, _ = block
    a = np.abs(dx)
    band = (a >= 32.0) & (a <= 52.0)
    if not (band & (dx > 0)).any() or not (band & (dx < 0)).any():
        return None
    left = float((sub[:, :, band & (dx > 0)] > ala_hu).mean())
    right = float((sub[:, :, band & (dx < 0)] > ala_hu).mean())
    return min(left, right)


def transitional_findings(image: Image, levels_mm: dict[str, float], proj: BoneProjections | None = None,
                          last_rib_mm: float | None = None) -> tuple[list[str], dict[str, Any]]:
    """Look for transitional anatomy in the CT around the given level centres (numbered from the top).

    The vertebral body at every level is found by :func:`_body_y` (a level where it is missing or off the line
    of its neighbours takes their median) and the bone density measured at the body centres; RIB_HU and ALA_HU
    are scaled down for low density, the rib checks are skipped below RIB_MIN_DENSITY_HU and absent alae not
    concluded below ALA_ABSENT_MIN_DENSITY_HU. Checks, each only where its vertebrae are wholly in the field of
    view (and a body was found):

    * 11 rib pairs: T11 carries a rib (bone beside it reaching beyond RIB_REACH_MM) and T12 none (nothing beyond
      NO_RIB_MM on either side);
    * 13 rib pairs: L1 carries rib stubs on both sides (bone attached beside it reaching at least
      LUMBAR_RIB_MIN_MM on both sides and LUMBAR_RIB_MAX_MM on one; an L1 transverse process is shorter) while
      T12 carries ribs; or a stub on one side only (LUMBAR_RIB_MAX_MM) when the rule-based last-rib anchor
      (``last_rib_mm``, from :func:`rule_based_levels`) also lies on L1 (two weak signs that agree);
    * sacralised L5: sacral-type alae beside the body of L5 (bone fraction >= ALA_FUSED in the alar band);
    * six lumbar-type vertebrae: one vertebra below L5 (the L4-L5 distance) there is a vertebral body but no
      alae (bone fraction < ALA_ABSENT): a mobile sixth lumbar vertebra where S1 should be.

    Returns:
        ``(findings, measurements)``: sentences naming what was seen (empty when nothing is transitional or the
        evidence is not clear) and the numbers behind them.
    """
    can = _canonical(image)
    proj = proj if proj is not None else bone_projections(image)
    cx, cy = proj.spine_x_mm, proj.spine_y_mm
    z_lo, z_hi = float(can.z_mm.min()), float(can.z_mm.max())
    height = _vertebra_height(levels_mm)
    measured: dict[str, Any] = {}
    findings: list[str] = []

    def body(z: float, half: float) -> float | None:
        found = _body_y(can, z, half, cx, cy)
        return None if found is None else found[0]

    # the body at every level in the field of view; a level where it was not found, or found more than
    # BODY_OUTLIER_MM from the median of its neighbours (two levels either side), takes that median
    own = {n: body(z, 0.15 * height) for n, z in levels_mm.items() if z_lo <= z <= z_hi}

    def body_at(name: str) -> float | None:
        i = LEVEL_INDEX[name]
        near = [y for n, y in own.items() if y is not None and 0 < abs(LEVEL_INDEX[n] - i) <= 2]
        if len(near) >= 2:
            ref = float(np.median(near))
            if own.get(name) is None or abs(own[name] - ref) > BODY_OUTLIER_MM:  # type: ignore[operator]
                return ref
        return own.get(name)

    # bone density: median HU of the centre (+- 6 mm) of the bodies T12..L4; thresholds scale down with it
    cores = []
    for name in ("T12", "L1", "L2", "L3", "L4"):
        y = own.get(name)
        if y is not None:
            block = _local_block(can, levels_mm[name] - 0.15 * height, levels_mm[name] + 0.15 * height, cx, y,
                                 6.0, -6.0, 6.0)
            if block is not None:
                cores.append(float(np.median(block[0])))
    density = float(np.median(cores)) if cores else None
    measured["body_density_hu"] = None if density is None else round(density, 1)
    if density is None:
        return findings, measured
    scale = min(1.0, density / DENSITY_REF_HU)
    rib_hu, ala_hu = max(RIB_MIN_HU, RIB_HU * scale), max(ALA_MIN_HU, ALA_HU * scale)
    reach: dict[str, tuple[float, float]] = {}
    for name in ("T11", "T12", "L1") if density >= RIB_MIN_DENSITY_HU else ():
        z = levels_mm.get(name)
        if z is None or z - 0.35 * height < z_lo or z + 0.5 * height > z_hi:
            continue
        yb = body_at(name)
        r = _rib_reach(can, z, height, cx, yb, rib_hu) if yb is not None else None
        if r is not None:
            reach[name] = r
            measured[f"rib_reach_{name}_mm"] = [round(r[0], 1), round(r[1], 1)]
    if "T11" in reach and "T12" in reach and max(reach["T11"]) >= RIB_REACH_MM and max(reach["T12"]) < NO_RIB_MM:
        findings.append("11 rib pairs: T12 carries no ribs")
    if "L1" in reach and "T12" in reach and max(reach["T12"]) >= T12_RIB_MM \
            and max(reach["L1"]) >= LUMBAR_RIB_MAX_MM:
        anchor_on_l1 = last_rib_mm is not None and abs(last_rib_mm - levels_mm["L1"]) < 0.35 * height
        if min(reach["L1"]) >= LUMBAR_RIB_MIN_MM or anchor_on_l1:
            findings.append("13 rib pairs: L1 carries ribs")
    if "L5" in levels_mm and "L4" in levels_mm:
        gap = levels_mm["L4"] - levels_mm["L5"]
        z5 = levels_mm["L5"]
        if gap > 10.0 and z5 - 0.2 * gap >= z_lo and z5 + 0.1 * gap <= z_hi:
            yb = body_at("L5")
            fused = _ala_fraction(can, z5 - 0.2 * gap, z5 + 0.1 * gap, cx, yb, ala_hu) if yb is not None else None
            if fused is not None:
                measured["ala_fraction_L5"] = round(fused, 3)
                if fused >= ALA_FUSED:
                    findings.append("sacralised L5: L5 has sacral-type alae joined to the sacrum")
        z6 = z5 - gap
        if gap > 10.0 and z6 - 0.2 * gap >= z_lo:
            yb = body(z6, 0.15 * gap)
            below = _ala_fraction(can, z6 - 0.2 * gap, z6 + 0.1 * gap, cx, yb, ala_hu) if yb is not None else None
            if below is not None:
                measured["ala_fraction_below_L5"] = round(below, 3)
                if below < ALA_ABSENT and density >= ALA_ABSENT_MIN_DENSITY_HU \
                        and not any(f.startswith("sacralised") for f in findings):
                    findings.append("six lumbar-type vertebrae: a mobile vertebra without sacral alae lies "
                                    "between L5 and the sacrum")
    return findings, measured
