"""Checks that an image holds CT numbers in Hounsfield units, and the mapping of padding values to air.

Shared by every task that reads HU (the body-composition pipeline's validate step, ``check_input`` of the
generic card pipeline). A picture (8-bit PNG/JPEG, an RGB screenshot), a binary mask, a label map, a constant
image or undefined (NaN/inf) voxels are refused with that cause; voxels outside the scanner's reconstruction
circle stored as padding (-3024, -2048, -2000, or the DICOM PixelPaddingValue) are mapped to air, and the
caller says so in its warnings.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidImageError
from .image import Image

#: Air in HU: what padding voxels become.
AIR_HU = -1000.0
#: Voxels below this are not a physical CT number (air is -1000 HU; scanners clip at -1024): padding.
PADDING_BELOW_HU = -1100.0
#: A label map has at most this many distinct values (a CT has hundreds or thousands).
_MAX_LABELS = 64


def check_ct_values(image: Image, what: str = "this task") -> None:
    """Refuse an image whose voxels cannot be CT numbers in HU, naming the cause.

    Raises:
        InvalidImageError: undefined (NaN/inf) voxels, a picture (8-bit or RGB), a binary mask, a label map, a
            constant image.
    """
    arr = np.asarray(image.array)
    meta = image.metadata or {}
    if arr.size == 0:
        raise InvalidImageError("the image holds no voxels")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise InvalidImageError(f"voxels of type {arr.dtype} are not CT numbers")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InvalidImageError(
                f"{bad} voxels ({100.0 * bad / arr.size:.3g} %) are NaN or infinite: undefined values, which would "
                f"make every measurement of {what} wrong",
                "replace undefined voxels (e.g. by -1000 HU, air) or export the CT again")
    if meta.get("rgb") or meta.get("picture"):
        bits = int(meta.get("bits_per_sample", 8))
        kind = "an RGB picture (a screenshot or photo)" if meta.get("rgb") else \
            f"{'an' if bits in (8, 11, 18) else 'a'} {bits}-bit {str(meta.get('format', 'picture')).upper()} picture"
        plane = " x ".join(map(str, image.size[:2]))
        shape = f" (2D, {plane} pixels)" if image.ndim == 2 else f" ({image.size[2]} slice(s) of {plane} pixels)"
        raise InvalidImageError(
            f"the image is {kind}{shape}: its values are grey levels, not CT Hounsfield units, so {what} cannot use it",
            "give the CT itself (DICOM series, NIfTI, NRRD or MHA in HU), not a picture or screenshot of it")
    if arr.dtype == np.bool_:
        raise InvalidImageError(f"the image is a binary mask (true/false voxels), not a CT in Hounsfield units; "
                                f"{what} needs the CT", "give the CT image, not a mask or label map")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InvalidImageError(f"every voxel of the image has the value {lo:g}: it holds no picture of a body",
                                "the file is blank or was exported wrongly; export the CT again")
    if arr.dtype in (np.uint8, np.int8):
        raise InvalidImageError(
            f"the image has 8-bit voxels ({arr.dtype}, values {lo:g} .. {hi:g}): a picture or a label map, not CT "
            f"Hounsfield units (-1000 for air to over 1000 for bone), so {what} cannot use it",
            "give the CT in HU (DICOM with RescaleSlope/Intercept, or a 16-bit NIfTI/NRRD of HU values)")
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0:
        sample = arr.ravel()[:: max(1, arr.size // 2_000_000)]
        distinct = np.unique(sample)
        if distinct.size <= _MAX_LABELS:
            raise InvalidImageError(
                f"the image looks like a label map ({distinct.size} distinct values from {lo:g} to {hi:g}), not a CT "
                f"in Hounsfield units; {what} needs the CT",
                "give the CT image; a label map is given to `mskseg export` together with its CT")


def padding_mask(image: Image) -> tuple[np.ndarray, list[float]]:
    """Voxels that are padding, and the padding values.

    Padding is a constant stored where the scanner reconstructed nothing (outside the scan circle): one exact
    value below :data:`PADDING_BELOW_HU` held by many voxels (at least 0.1 % of the image, or 100), or the
    DICOM PixelPaddingValue. Scattered values below -1100 HU (noise or resampling undershoot in air) are not
    padding and stay as they are.
    """
    arr = np.asarray(image.array)
    none = np.zeros(arr.shape, bool), []
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.unsignedinteger) or arr.size == 0:
        return none
    declared = image.metadata.get("PixelPaddingValue")
    candidates: list[float] = []
    if float(arr.min()) < PADDING_BELOW_HU:
        values, counts = np.unique(arr[arr < PADDING_BELOW_HU], return_counts=True)
        candidates = [float(v) for v, c in zip(values, counts) if c >= max(100, 0.001 * arr.size)]
    if declared is not None and float(declared) <= -1000 and np.any(arr == declared):
        candidates.append(float(declared))
    if not candidates:
        return none
    values = sorted(set(candidates))
    return np.isin(arr, np.asarray(values, dtype=arr.dtype)), values


def map_padding_to_air(image: Image) -> tuple[Image, str | None]:
    """``(image, warning)``: padding voxels set to air (-1000 HU) in a copy, and a sentence saying so; the
    image itself and None when there is no padding."""
    mask, values = padding_mask(image)
    n = int(np.count_nonzero(mask))
    if not n:
        return image, None
    arr = np.array(image.array, copy=True)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return image, None
    arr[mask] = AIR_HU
    shown = ", ".join(f"{v:g}" for v in values[:3]) + (" ..." if len(values) > 3 else "")
    warning = (f"{n} voxels ({100.0 * n / arr.size:.3g} %) held padding values ({shown} HU: stored where the "
               f"scanner reconstructed nothing, outside its scan circle) and were mapped to air ({AIR_HU:g} HU)")
    return image.with_array(arr), warning


def fov_cut_warning(labelmap: np.ndarray, k: int, min_pixels: int = 8) -> str | None:
    """A warning when the labelled tissue of axial slice ``labelmap[k]`` touches the edge of the field of view:
    the body is cut, so subcutaneous (and visceral) fat is only partly in the image."""
    sl = np.asarray(labelmap[k]) != 0
    if sl.ndim != 2 or not sl.any():
        return None
    edge = np.concatenate([sl[0], sl[-1], sl[1:-1, 0], sl[1:-1, -1]])
    touching = int(np.count_nonzero(edge))
    if touching < min_pixels:
        return None
    perimeter_mm = touching
    return (f"slice {k}: the body is cut by the edge of the field of view ({perimeter_mm} edge pixels lie in "
            "labelled tissue): subcutaneous and visceral fat areas (SAT, VAT, VAT/SAT) are unreliable and too small; "
            "muscle may be cut too")
