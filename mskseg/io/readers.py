"""Readers: every supported file or folder becomes one :class:`~mskseg.image.Image`.

Supported: a DICOM series folder (uncompressed or JPEG 2000 and the other transfer syntaxes GDCM decodes; a
folder with several series needs ``series_uid``), a single DICOM file (a CT/MR slice, or a DX/CR/MG radiograph
which becomes a 2D image), NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``, including ``.seg.nrrd``
voxels), MetaImage (``.mha``, ``.mhd``) and 2D pictures (PNG, JPEG, BMP, TIFF).

Every failure raises an :class:`~mskseg.errors.MSKSegError` subclass whose message names the path and says
what to do; SimpleITK/GDCM exceptions never reach the user as they are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, InvalidImageError, SeriesSelectionError
from ..image import DICOM_METADATA_KEYS, Image

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Modalities whose single-frame DICOM objects are projection radiographs (read as 2D images).
PROJECTION_MODALITIES = {"DX", "CR", "MG", "RF", "XA", "PX", "IO", "RG"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SUPPORTED = "DICOM folder or file, NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd), PNG, JPEG"


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder (for ``mskseg info`` and for choosing among several)."""

    series_uid: str
    folder: str
    n_files: int
    modality: str
    description: str
    series_number: str

    def line(self) -> str:
        """One line a person can read."""
        return (f"{self.series_uid or '(no SeriesInstanceUID)'}  {self.modality or '?':3s} "
                f"#{self.series_number or '-':>4s}  {self.n_files:4d} files  '{self.description}'  in {self.folder}")


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> Image:
    """Read a file or DICOM folder into an :class:`Image` (LPS geometry, scalar voxels).

    Args:
        path: file or folder.
        series_uid: SeriesInstanceUID to pick when a folder holds several DICOM series.

    Returns:
        A 3D image ``(K, J, I)`` or, for radiographs and pictures, a 2D image ``(J, I)``. ``metadata`` carries
        ``source_path``, ``format`` and, for DICOM, the attributes in ``DICOM_METADATA_KEYS`` and
        ``source_files`` (``source_files[k]`` is the file of slice ``k``).

    Raises:
        ImageReadError: missing path, empty folder, not an image, unsupported format.
        SeriesSelectionError: several series and no (or an unknown) ``series_uid``.
        InvalidImageError: 4D or vector image, zero/negative spacing, inconsistent DICOM slices.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageReadError(f"{p} does not exist", "check the path (and that the drive or share is mounted)")
    if p.is_dir():
        return _read_dicom_folder(p, series_uid)
    name = p.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return _read_with_sitk(p, "volume")
    if name.endswith(PICTURE_SUFFIXES):
        return _read_picture(p)
    if _is_dicom_file(p):
        return _read_dicom_file(p)
    raise ImageReadError(f"{p} is not an image MSKSeg can read", f"supported: {SUPPORTED}")


# --------------------------------------------------------------------------------------------- DICOM
def _is_dicom_file(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # Old files without preamble: try pydicom quickly
    try:
        import pydicom

        pydicom.dcmread(p, stop_before_pixels=True, force=False)
        return True
    except Exception:
        return False


def _dicom_metadata(ds) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in DICOM_METADATA_KEYS:
        value = ds.get(key, None)
        if value is None or value == "":
            continue
        if key in ("PatientSize", "PatientWeight"):
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if value <= 0:
                continue
        else:
            value = str(value)
        meta[key] = value
    return meta


def list_dicom_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """All DICOM series under ``folder`` (searched recursively), one :class:`SeriesInfo` each."""
    import SimpleITK as sitk
    import pydicom

    found = []
    for sub, _dirs, files in os.walk(folder):
        if not files:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(sub) or ():
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(sub, uid)
            if not names:
                continue
            try:
                ds = pydicom.dcmread(names[0], stop_before_pixels=True)
            except Exception:
                ds = {}
            found.append(SeriesInfo(str(ds.get("SeriesInstanceUID", uid) or uid), sub, len(names),
                                    str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""),
                                    str(ds.get("SeriesNumber", "") or "")))
    return found


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Image:
    import SimpleITK as sitk

    if not any(f.is_file() for f in folder.rglob("*")):
        raise ImageReadError(f"folder {folder} is empty", "point to the folder that holds the DICOM files of one series")
    series = list_dicom_series(folder)
    if not series:
        others = [f.name for f in folder.iterdir() if f.is_file()][:5]
        raise ImageReadError(
            f"no DICOM series found in {folder} (files such as {others})",
            f"point to a DICOM series folder or to an image file; supported: {SUPPORTED}",
        )
    if series_uid is not None:
        chosen = [s for s in series if s.series_uid == series_uid]
        if not chosen:
            raise SeriesSelectionError(
                f"series {series_uid} is not in {folder}; found:\n  " + "\n  ".join(s.line() for s in series),
                "pass one of the SeriesInstanceUIDs listed (command line: --series UID)",
            )
    elif len(series) > 1:
        raise SeriesSelectionError(
            f"{folder} holds {len(series)} DICOM series:\n  " + "\n  ".join(s.line() for s in series),
            "choose one with its SeriesInstanceUID (command line: --series UID; Python: series_uid=...)",
        )
    else:
        chosen = series
    info = chosen[0]
    # GDCM keys series by its own id, which equals the SeriesInstanceUID except for anonymised empty UIDs.
    gdcm_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(info.folder)
    gdcm_id = info.series_uid if info.series_uid in gdcm_ids else gdcm_ids[0]
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(info.folder, gdcm_id))
    if len(files) == 1:
        return _read_dicom_file(Path(files[0]))
    return _read_dicom_files(files, folder)


def _read_dicom_files(files: list[str], where: Path) -> Image:
    import SimpleITK as sitk
    import pydicom

    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as e:  # pragma: no cover - GDCM listed it, pydicom must read it
            raise ImageReadError(f"cannot read DICOM header of {f}: {e}") from None
    first = headers[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise InvalidImageError(f"{files[0]} is a multi-frame object inside a series of {len(files)} files",
                                "point to the single multi-frame file instead of the folder")
    _check_slice_positions(headers, where)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"cannot decode the DICOM series in {where}: {_short(e)}",
                             "the transfer syntax may be unsupported; convert the series to uncompressed DICOM or NIfTI") from None
    image = _from_sitk_checked(img, where)
    image.metadata.update(_dicom_metadata(first))
    image.metadata.update(source_path=str(where), format="dicom", source_files=[str(f) for f in files])
    return image


def _check_slice_positions(headers, where: Path) -> None:
    """Refuse series whose slices are not evenly spaced along one normal (gaps, tilts, mixed orientations)."""
    try:
        iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        pos = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError):
        return  # no geometry attributes: GDCM ordering stands
    for h in headers[1:]:
        if not np.allclose([float(v) for v in h.ImageOrientationPatient], iop, atol=1e-3):
            raise InvalidImageError(f"the DICOM series in {where} mixes slice orientations",
                                    "load each orientation as its own series (e.g. split localisers from axials)")
    normal = np.cross(iop[:3], iop[3:])
    d = np.diff(pos @ normal)
    if len(d) == 0:
        return
    if np.any(np.abs(d) < 1e-4):
        raise InvalidImageError(f"the DICOM series in {where} has two slices at the same position (zero spacing)",
                                "the folder may hold two reconstructions of one series; keep one")
    if np.ptp(d) > 0.05 * np.median(np.abs(d)) + 1e-3:
        raise InvalidImageError(
            f"the DICOM series in {where} has uneven slice spacing ({np.min(np.abs(d)):.3g}..{np.max(np.abs(d)):.3g} mm)",
            "missing slices or a variable-spacing reconstruction: resample to even spacing first",
        )


def _read_dicom_file(p: Path) -> Image:
    import SimpleITK as sitk
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as e:
        raise ImageReadError(f"{p} is not a readable DICOM file: {_short(e)}") from None
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        raise ImageReadError(f"{p} is a DICOM Segmentation object, not an image",
                             "read it with mskseg.io.dicomseg.read_dicom_seg together with its source series")
    if "PixelData" not in ds and "FloatPixelData" not in ds and not _has_pixel_tag(p):
        raise ImageReadError(f"{p} is a DICOM object without pixel data (SOP class {ds.get('SOPClassUID', '?')})",
                             "point to an image series or a radiograph, not a report, SEG or structured report")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise ImageReadError(f"cannot decode {p}: {_short(e)}") from None
    modality = str(ds.get("Modality", "") or "")
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = _to_luminance(img)
    if img.GetDimension() == 3 and img.GetSize()[2] == 1 and modality in PROJECTION_MODALITIES:
        img = img[:, :, 0]
    image = _from_sitk_checked(img, p)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        # GDCM already maps MONOCHROME1 (high values shown dark) to MONOCHROME2: bone is bright for every
        # radiograph. Recorded so nobody inverts it a second time.
        image.metadata["inverted_from"] = "MONOCHROME1"
    if image.ndim == 2 and "ImagerPixelSpacing" in ds and "PixelSpacing" not in ds:
        sp = [float(v) for v in ds.ImagerPixelSpacing]
        image = Image(image.array, (sp[1], sp[0]), image.origin, image.direction, image.metadata)
    image.metadata.update(_dicom_metadata(ds))
    image.metadata.update(source_path=str(p), format="dicom", source_files=[str(p)])
    return image


def _has_pixel_tag(p: Path) -> bool:
    import pydicom

    try:
        return "PixelData" in pydicom.dcmread(p)
    except Exception:
        return False


# --------------------------------------------------------------------------------------------- files
def _header_spacing(p: Path) -> list[float] | None:
    """Voxel spacing as the file header states it, before ITK (which silently takes absolute values)."""
    name = p.name.lower()
    try:
        if name.endswith((".mha", ".mhd")):
            with open(p, "rb") as f:
                head = f.read(4096).decode("latin-1", "replace")
            for line in head.splitlines():
                key, _, value = line.partition("=")
                if key.strip() in ("ElementSpacing", "ElementSize"):
                    return [float(v) for v in value.split()]
                if key.strip() == "ElementDataFile":
                    break
        elif name.endswith((".nrrd", ".nhdr")):
            import nrrd

            header = nrrd.read_header(str(p))
            if "spacings" in header:
                return [float(v) for v in header["spacings"] if np.isfinite(v)]
            if "space directions" in header:
                dirs = np.asarray(header["space directions"], dtype=float)
                return [float(np.linalg.norm(r)) for r in dirs if np.all(np.isfinite(r))]
        elif name.endswith((".nii", ".nii.gz")):
            return _nifti_raw_pixdim(p)
    except Exception:
        return None  # unreadable header: let the reader below report it
    return None


def _nifti_raw_pixdim(p: Path) -> list[float] | None:
    """``pixdim[1..3]`` as stored (nibabel and ITK both replace negative values by their absolute value)."""
    import gzip
    import struct

    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rb") as f:
        raw = f.read(540)
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == 348:  # NIfTI-1: dim int16[8] at 40, pixdim float32[8] at 76
            nd = struct.unpack(endian + "h", raw[40:42])[0]
            pix = struct.unpack(endian + "8f", raw[76:108])
            return [float(v) for v in pix[1:1 + min(max(nd, 1), 3)]]
        if size == 540:  # NIfTI-2: dim int64[8] at 16, pixdim float64[8] at 104
            nd = struct.unpack(endian + "q", raw[16:24])[0]
            pix = struct.unpack(endian + "8d", raw[104:168])
            return [float(v) for v in pix[1:1 + min(max(nd, 1), 3)]]
    return None


def _read_with_sitk(p: Path, kind: str) -> Image:
    import SimpleITK as sitk

    spacing = _header_spacing(p)
    if spacing is not None and any(not (v > 0) for v in spacing):
        raise InvalidImageError(
            f"{p} has voxel spacing {spacing} mm in its header: zero or negative",
            "fix the spacing in the file header (a flipped axis belongs in the direction matrix, not the spacing)",
        )
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        msg = _short(e)
        if "spacing" in msg.lower():
            raise InvalidImageError(f"{p} has zero or negative voxel spacing ({msg})",
                                    "fix the spacing in the file header") from None
        raise ImageReadError(f"{p} could not be read as an image: {msg}",
                             f"check that the file is complete and really is one of: {SUPPORTED}") from None
    image = _from_sitk_checked(img, p)
    image.metadata.update(source_path=str(p), format=_format_name(p))
    return image


def _read_picture(p: Path) -> Image:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise ImageReadError(f"{p} could not be read as a picture: {_short(e)}",
                             "check that the file is a complete PNG/JPEG/BMP/TIFF") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = _to_luminance(img)
    image = _from_sitk_checked(img, p)
    if image.ndim == 3 and image.array.shape[0] == 1:
        image = Image(image.array[0], image.spacing[:2], image.origin[:2], image.direction[:2, :2], image.metadata)
    image.metadata.update(source_path=str(p), format=_format_name(p), spacing_known=False)
    return image


def _to_luminance(img):
    """RGB(A) -> luminance (ITU-R BT.601 weights), dropping alpha."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    lum = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114 if arr.shape[-1] >= 3 else arr[..., 0]
    out = sitk.GetImageFromArray(lum.astype(np.float32))
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(img.GetOrigin())
    out.SetDirection(img.GetDirection())
    return out


def _from_sitk_checked(img, where: Path) -> Image:
    nd = img.GetDimension()
    if nd == 4:
        size = img.GetSize()
        if size[3] == 1:
            import SimpleITK as sitk

            img = sitk.Extract(img, list(size[:3]) + [0], [0, 0, 0, 0])
        else:
            raise InvalidImageError(
                f"{where} is a 4D image (size {size}); MSKSeg segments one 3D volume at a time",
                "extract the volume you want (e.g. one time point or phase) and save it as its own file",
            )
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise InvalidImageError(f"{where} has {img.GetNumberOfComponentsPerPixel()} components per voxel",
                                "MSKSeg needs a scalar (greyscale) image")
    spacing = img.GetSpacing()
    if any(not (s > 0) for s in spacing):
        raise InvalidImageError(f"{where} has voxel spacing {spacing}: zero or negative",
                                "fix the spacing in the file header")
    try:
        return Image.from_sitk(img)
    except InvalidImageError as e:
        raise InvalidImageError(f"{where}: {e.message}", e.hint) from None


def _format_name(p: Path) -> str:
    n = p.name.lower()
    for suffix, fmt in ((".seg.nrrd", "seg.nrrd"), (".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"),
                        (".nhdr", "nrrd"), (".mha", "metaimage"), (".mhd", "metaimage")):
        if n.endswith(suffix):
            return fmt
    return p.suffix.lstrip(".").lower()


def _short(e: Exception) -> str:
    """The useful last line of an ITK/GDCM exception (they carry file/line noise)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("sitk::", "itk::")):
            return ln[:300]
    return (lines[-1] if lines else repr(e))[:300]
