"""Checks that a CT can hold vertebral levels to find, with messages that say what to do.

:func:`check_ct_for_levels` rejects 2D images, single slices, extreme spacing, non-axial slices, images that
are not CT in Hounsfield units, and fields of view that end in the thorax (no lumbar spine).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InvalidImageError, MSKSegError
from ..image import Image
from .geometry import canonical


#: Limits of :func:`check_ct_for_levels`.
MAX_SLICE_SPACING_MM = 10.0
MAX_PIXEL_MM = 3.0
MIN_PIXEL_MM = 0.2


class LevelNotFoundError(MSKSegError):
    """The vertebral levels asked for are not in the field of view, or no level could be identified."""


def check_ct_for_levels(image: Image) -> None:
    """Raise a clear error when ``image`` cannot hold the lumbar levels (L3) to find; return None when it can.

    Checks, in order: a 3D volume (not a 2D image or radiograph), more than one slice, slice spacing <= 10 mm
    and in-plane pixels 0.2-3 mm, axial slices, a CT in Hounsfield units (DICOM Modality CT when known; air
    below -500 HU and a plausible median), and a field of view that reaches below the thorax (the lowest
    slices are not mostly lung).

    Raises:
        InvalidImageError: 2D image, one slice, extreme spacing, non-axial slices, not CT in HU.
        LevelNotFoundError: the field of view ends in the thorax (no lumbar spine).
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
    canonical(image)  # raises for non-axial slices
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
    check_not_thorax_only(image)


def check_not_thorax_only(image: Image) -> None:
    """Raise LevelNotFoundError when the lowest slices are still mostly lung (the field of view ends above the
    diaphragm)."""
    can = canonical(image)
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
        raise LevelNotFoundError(
            f"the field of view ends in the thorax: {100 * fraction:.0f} % of the lowest slices is lung, so no "
            "lumbar vertebra is in the image",
            "load a CT that covers the abdomen (at least T12 to L4); body composition can fall back to L2, L4, "
            "L5, L1, T12, T11 or T10 only when one of them is in the field of view")
