"""Readers: every supported file or folder becomes one :class:`~mskseg.image.Image`.

Supported: a DICOM series folder (uncompressed or JPEG 2000 and the other transfer syntaxes GDCM decodes; a
folder with several series needs ``series_uid``), a single DICOM file (a CT/MR slice, or a DX/CR/MG radiograph
which becomes a 2D image), NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``, including ``.seg.nrrd``
voxels), MetaImage (``.mha``, ``.mhd``) and 2D pictures (PNG, JPEG, BMP, TIFF).

Every failure raises an :class:`~mskseg.errors.MSKSegError` subclass whose message names the path and says
what to do; SimpleITK/GDCM exceptions never reach the user as they are.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, InvalidImageError, SeriesSelectionError
from ..image import DICOM_METADATA_KEYS, Image
from .filecheck import check_file_before_reading, check_finite, check_voxel_count

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Modalities whose single-frame DICOM objects are projection radiographs (read as 2D images).
PROJECTION_MODALITIES = {"DX", "CR", "MG", "RF", "XA", "PX", "IO", "RG"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Modalities of DICOM objects that are not images (segmentations, reports, presentation states, ...): a
#: folder holding one image series and such objects reads the image series.
NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC", "FID", "AU",
                        "ECG", "HD", "PLAN", "RWV", "OT-REPORT"}
#: SOP class UID prefixes of non-image objects (structured reports, presentation states, key objects, SEG).
NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", SEG_SOP_CLASS,
                          "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.66.1",
                          "1.2.840.10008.5.1.4.1.1.104.")
#: Smallest and largest voxel spacing (mm) a medical image can have; outside, the header is wrong.
SPACING_LIMITS_MM = (1e-3, 1e3)
#: Leading bytes of the picture formats (a file with another content is refused with that cause).
_MAGIC = {".png": (b"\x89PNG",), ".jpg": (b"\xff\xd8",), ".jpeg": (b"\xff\xd8",), ".bmp": (b"BM",),
          ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), ".tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")}
_ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
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
    sop_class: str = ""

    @property
    def is_image(self) -> bool:
        """False for segmentations, structured reports, presentation states and other non-image objects."""
        return not (self.modality.upper() in NON_IMAGE_MODALITIES or self.sop_class.startswith(NON_IMAGE_SOP_PREFIXES))

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
    try:
        n_bytes = p.stat().st_size
    except OSError as e:
        raise ImageReadError(f"{p} cannot be read: {e.strerror}", "check the file's permissions") from None
    if n_bytes == 0:
        raise ImageReadError(f"{p} is empty (0 bytes)", "the file was not written or not copied completely; "
                             "copy or export it again")
    name = p.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        _check_volume_content(p)
        return _read_with_sitk(p, "volume")
    if name.endswith(PICTURE_SUFFIXES):
        if _has_dicom_magic(p):
            return _read_dicom_file(p)
        _check_picture_content(p)
        return _read_picture(p)
    if _is_dicom_file(p):
        return _read_dicom_file(p)
    raise ImageReadError(f"{p} is not an image MSKSeg can read (it holds {_describe_content(_head(p))})",
                         f"give the file a name ending that matches its content; supported: {SUPPORTED}")


def _head(p: Path, n: int = 132) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _has_dicom_magic(p: Path) -> bool:
    return _head(p)[128:132] == b"DICM"


def _describe_content(head: bytes) -> str:
    """A few words on what a file really holds, from its first bytes."""
    if head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, what in ((b"\x89PNG", "a PNG picture"), (b"\xff\xd8", "a JPEG picture"), (b"\x1f\x8b", "gzip data"),
                        (b"NRRD", "NRRD"), (b"PK\x03\x04", "a ZIP archive"), (b"%PDF", "a PDF document"),
                        (b"ObjectType", "MetaImage"), (b"<", "text (XML/HTML)"), (b"{", "text (JSON)")):
        if head.startswith(magic):
            return what
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head[:64]):
        return "plain text"
    return "unknown binary data"


def _check_picture_content(p: Path) -> None:
    suffix = p.suffix.lower()
    head = _head(p, 16)
    if not head.startswith(_MAGIC.get(suffix, (b"",))):
        raise ImageReadError(f"{p} is named {suffix} but is not a {suffix.lstrip('.').upper()} picture "
                             f"(it holds {_describe_content(_head(p))})",
                             f"check the file; supported: {SUPPORTED}")
    import struct

    head = _head(p, 32)
    sizes = None
    if suffix == ".png" and len(head) >= 24 and head[12:16] == b"IHDR":
        sizes = struct.unpack(">II", head[16:24])
    elif suffix == ".bmp" and len(head) >= 26:
        sizes = tuple(abs(v) for v in struct.unpack("<ii", head[18:26]))
    if sizes is not None:
        check_voxel_count(p, list(sizes), 4)


def _check_volume_content(p: Path) -> None:
    name = p.name.lower()
    head = _head(p, 348)
    if name.endswith(".gz") and not head.startswith(b"\x1f\x8b"):
        raise ImageReadError(f"{p} is named .nii.gz but is not gzip-compressed (it holds {_describe_content(_head(p))})",
                             "rename it to .nii if it is an uncompressed NIfTI, or export it again")
    if name.endswith(".nii"):
        import struct

        if len(head) < 348 or 348 not in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]) and \
                540 not in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]):
            raise ImageReadError(f"{p} is not a NIfTI file (it holds {_describe_content(_head(p))})",
                                 f"check the file; supported: {SUPPORTED}")
    if name.endswith(".nrrd") and not head.startswith(b"NRRD"):
        raise ImageReadError(f"{p} is not a NRRD file (it holds {_describe_content(_head(p))})",
                             f"check the file; supported: {SUPPORTED}")
    if name.endswith(".gz"):
        import gzip
        import zlib

        try:
            with gzip.open(p, "rb") as f:
                f.read(540)
        except (OSError, EOFError, zlib.error) as e:
            raise ImageReadError(f"{p} could not be read: its gzip data is damaged or cut short ({str(e)[:120]})",
                                 "copy or export the file again") from None
    check_file_before_reading(p)
    if name.endswith(".nii.gz"):
        from .filecheck import nifti_header

        if nifti_header(p) is None:
            raise ImageReadError(f"{p} is gzip data but not a NIfTI file (no NIfTI header inside)",
                                 f"check the file; supported: {SUPPORTED}")


_QUIET_LOCK = threading.Lock()
_QUIET_STATE: dict[str, Any] = {"depth": 0, "saved": None}


@contextlib.contextmanager
def _quiet_native():
    """Silence what ITK, GDCM and the codecs print on the process's own stdout/stderr while a file is read
    (the error that matters comes back as an exception and is reported once, plainly). Nested and concurrent
    uses share one redirection: the first to enter sets it up, the last to leave restores the streams."""
    import SimpleITK as sitk

    with _QUIET_LOCK:
        if _QUIET_STATE["depth"] == 0:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            try:
                saved = (os.dup(1), os.dup(2))
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.close(devnull)
            except OSError:
                saved = None
            _QUIET_STATE["saved"] = (saved, sitk.ProcessObject.GetGlobalWarningDisplay())
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        _QUIET_STATE["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_STATE["depth"] -= 1
            if _QUIET_STATE["depth"] == 0:
                saved, warn = _QUIET_STATE["saved"]
                if saved is not None:
                    os.dup2(saved[0], 1)
                    os.dup2(saved[1], 2)
                    for fd in saved:
                        os.close(fd)
                sitk.ProcessObject.SetGlobalWarningDisplay(warn)
                _QUIET_STATE["saved"] = None


def clean_text(value: Any) -> str:
    """A header string safe to print: terminal escape sequences and control characters removed (leading
    indentation kept)."""
    text = _ESCAPE_SEQUENCE.sub("", str(value))
    return "".join(c for c in text if c.isprintable() or c == " ").rstrip()


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
            value = clean_text(value)
            if not value:
                continue
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
        with _quiet_native():  # GDCM warns on stderr for every folder without a series
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(sub) or ()
            names_of = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(sub, uid) for uid in uids}
        for uid in uids:
            names = names_of[uid]
            if not names:
                continue
            try:
                ds = pydicom.dcmread(names[0], stop_before_pixels=True)
            except Exception:
                ds = {}
            found.append(SeriesInfo(clean_text(ds.get("SeriesInstanceUID", uid) or uid), sub, len(names),
                                    clean_text(ds.get("Modality", "") or ""),
                                    clean_text(ds.get("SeriesDescription", "") or ""),
                                    clean_text(ds.get("SeriesNumber", "") or ""), str(ds.get("SOPClassUID", "") or "")))
    return found


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Image:
    import SimpleITK as sitk

    if not any(f.is_file() for f in folder.rglob("*")):
        raise ImageReadError(f"folder {folder} is empty", "point to the folder that holds the DICOM files of one series")
    with _quiet_native():
        series = list_dicom_series(folder)
    if not series:
        others = [f.name for f in folder.rglob("*") if f.is_file()][:5]
        damaged = _damaged_dicom_files(folder, set(), None)
        if damaged:
            raise ImageReadError(f"{folder} holds no readable DICOM series, only damaged DICOM files: "
                                 f"{_name_list(damaged)}",
                                 "the files are truncated or empty (an interrupted copy?); copy the series again")
        raise ImageReadError(
            f"no DICOM series found in {folder} (files such as {[clean_text(o) for o in others]})",
            f"point to a DICOM series folder or to an image file; supported: {SUPPORTED}",
        )
    ignored: list[SeriesInfo] = []
    if series_uid is not None:
        chosen = [s for s in series if s.series_uid == series_uid]
        if not chosen:
            raise SeriesSelectionError(
                f"series {series_uid} is not in {folder}; found:\n  " + "\n  ".join(s.line() for s in series),
                "pass one of the SeriesInstanceUIDs listed (command line: --series UID)",
            )
    else:
        images = [s for s in series if s.is_image]
        if not images:
            raise ImageReadError(
                f"{folder} holds no image series, only non-image DICOM objects:\n  " + "\n  ".join(s.line() for s in series),
                "point to the folder of the CT (or other image) series; a DICOM-SEG is read together with its "
                "source series (mskseg.io.dicomseg.read_dicom_seg)")
        if len(images) > 1:
            raise SeriesSelectionError(
                f"{folder} holds {len(images)} DICOM series (images):\n  " + "\n  ".join(s.line() for s in images),
                "choose one with its SeriesInstanceUID (command line: --series UID; Python: series_uid=...)",
            )
        chosen = images
        ignored = [s for s in series if not s.is_image]
    info = chosen[0]
    # GDCM keys series by its own id, which equals the SeriesInstanceUID except for anonymised empty UIDs.
    with _quiet_native():
        gdcm_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(info.folder))
        listed = {gid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(info.folder, gid)) for gid in gdcm_ids}
    gdcm_id = info.series_uid if info.series_uid in gdcm_ids else gdcm_ids[0]
    files = listed[gdcm_id]
    damaged = _damaged_dicom_files(Path(info.folder), {os.path.abspath(f) for names in listed.values() for f in names},
                                   info.series_uid)
    if damaged:
        raise ImageReadError(
            f"the DICOM series in {info.folder} has {len(damaged)} damaged file(s) that cannot be read: "
            f"{_name_list(damaged)}; the series would be read without them",
            "the files are truncated or empty (an interrupted copy?); copy the series again, or remove the files "
            "if they do not belong to it")
    if len(files) == 1:
        image = _read_dicom_file(Path(files[0]))
    else:
        image = _read_dicom_files(files, folder)
    if ignored:
        image.metadata["ignored_series"] = [f"{s.modality or '?'} {s.series_uid} in {s.folder}" for s in ignored]
    return image


def _name_list(paths: list[tuple[Path, str]], n: int = 5) -> str:
    shown = ", ".join(f"{clean_text(p.name)} ({why})" for p, why in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _damaged_dicom_files(folder: Path, listed: set[str], series_uid: str | None) -> list[tuple[Path, str]]:
    """Files of ``folder`` (not recursive) that GDCM left out of every series but that look like DICOM slices:
    empty files with a DICOM-like name, files whose header is cut, or files of the series itself."""
    import pydicom

    damaged = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or os.path.abspath(f) in listed:
            continue
        suffix = f.suffix.lower()
        try:
            size = f.stat().st_size
        except OSError:
            continue
        if size == 0:
            if suffix in ("", ".dcm", ".dicom", ".ima") or suffix[1:].isdigit():
                damaged.append((f, "0 bytes"))
            continue
        if not _has_dicom_magic(f):
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            damaged.append((f, f"{size} bytes, header cut"))
            continue
        sop = str(ds.get("SOPClassUID", "") or "")
        modality = str(ds.get("Modality", "") or "").upper()
        if sop.startswith(NON_IMAGE_SOP_PREFIXES) or modality in NON_IMAGE_MODALITIES:
            continue  # a report, SEG, presentation state... GDCM rightly leaves it out
        if series_uid is not None and "SeriesInstanceUID" in ds and str(ds.SeriesInstanceUID) != series_uid:
            continue  # another series (GDCM lists those separately)
        want = _expected_pixel_bytes(ds)
        if "PixelData" in ds:
            if want and len(ds.PixelData) < want:
                damaged.append((f, f"truncated: {len(ds.PixelData)} of {want} pixel bytes"))
        elif "Rows" in ds or "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
            damaged.append((f, f"{size} bytes, cut before its pixel data"))
    return damaged


def _size(f) -> str:
    try:
        return str(os.path.getsize(f))
    except OSError:
        return "?"


def _expected_pixel_bytes(ds) -> int | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * frames * \
            int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None


def _check_dicom_pixels(ds, f: str | Path) -> None:
    """Pixel data present and complete (uncompressed), a sane size, a CT stored as CT numbers."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds or "SOPClassUID" not in ds:
            raise ImageReadError(f"{f} is damaged or truncated: it ends ({_size(f)} bytes) before its pixel data",
                                 "the file was cut short (an interrupted copy?); copy or export it again")
        raise ImageReadError(f"{f} is a DICOM object without pixel data (SOP class {ds.get('SOPClassUID', '?')})",
                             "point to an image series or a radiograph, not a report, SEG or structured report")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(f"{f} has pixel data but no image size (Rows/Columns missing)",
                             "the header is damaged; export the series again") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    check_voxel_count(f, [cols, rows, frames], max(int(ds.get("BitsAllocated", 16) or 16) // 8, 1))
    expected = _expected_pixel_bytes(ds)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    native = syntax in ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
    if native and expected and "PixelData" in ds:
        have = len(ds.PixelData)
        if have < expected:
            raise ImageReadError(
                f"{f} is truncated: it holds {have} bytes of pixel data, its header declares {expected} "
                f"({rows} x {cols} pixels of {ds.BitsAllocated} bits)",
                "the file was cut short (an interrupted copy or download); copy the series again")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality == "CT" and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        raise InvalidImageError(
            f"{f} is a CT stored as MONOCHROME1 (high values shown dark); CT images are MONOCHROME2 and its values "
            "cannot be trusted as Hounsfield units",
            "export the CT again from the scanner or PACS (CT numbers, MONOCHROME2)")
    for key in ("RescaleSlope", "RescaleIntercept"):
        if key in ds:
            try:
                value = float(ds.get(key))
            except (TypeError, ValueError):
                raise InvalidImageError(f"{f}: {key} '{clean_text(ds.get(key))}' is not a number",
                                        "the header is damaged; export the series again") from None
            absurd = (not np.isfinite(value) or (key == "RescaleSlope" and not 1e-4 <= abs(value) <= 1e3)
                      or (key == "RescaleIntercept" and abs(value) > 1e5))
            if absurd:
                raise InvalidImageError(
                    f"{f}: {key} {value:g} is absurd (pixel values = stored values x RescaleSlope + RescaleIntercept; "
                    "a CT has slope 1 and intercept about -1024)",
                    "the header is damaged; export the series again")


def _read_dicom_files(files: list[str], where: Path) -> Image:
    import SimpleITK as sitk
    import pydicom

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:
            raise ImageReadError(f"cannot read the DICOM file {f}: it is damaged or truncated ({str(e)[:160]})",
                                 "copy the series again") from None
        _check_dicom_pixels(ds, f)
        headers.append(ds)
    first = headers[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise InvalidImageError(f"{files[0]} is a multi-frame object inside a series of {len(files)} files",
                                "point to the single multi-frame file instead of the folder")
    _check_series_consistent(headers, files, where)
    check_voxel_count(where, [int(first.Columns), int(first.Rows), len(files)], max(int(first.BitsAllocated) // 8, 1))
    _check_slice_positions(headers, where)
    del headers[1:]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_native():
            img = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"cannot decode the DICOM series in {where} ({_syntax_name(first)}): {_short(e)}",
                             "the transfer syntax may be unsupported or the pixel data damaged; convert the series to "
                             "uncompressed DICOM or NIfTI") from None
    image = _from_sitk_checked(img, where)
    image.metadata.update(_dicom_metadata(first))
    image.metadata.update(source_path=str(where), format="dicom", source_files=[str(f) for f in files])
    _note_padding(image, first)
    return image


def _syntax_name(ds) -> str:
    """``transfer syntax NAME (UID)`` of a dataset, for decode errors."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "transfer syntax unknown"
    name = getattr(uid, "name", "") or ""
    return f"transfer syntax {name} {uid}".replace("  ", " ") if name and name != str(uid) else f"transfer syntax {uid}"


def _note_padding(image: Image, ds) -> None:
    """Record the DICOM PixelPaddingValue in output units (the tasks map padded voxels to air)."""
    if "PixelPaddingValue" in ds:
        try:
            value = float(ds.PixelPaddingValue) * float(ds.get("RescaleSlope", 1) or 1) + \
                float(ds.get("RescaleIntercept", 0) or 0)
            image.metadata["PixelPaddingValue"] = value
        except (TypeError, ValueError):
            pass


def _check_series_consistent(headers, files, where: Path) -> None:
    """One size, pixel spacing, orientation and geometry per series; positions present in every file."""
    def value(h, key):
        v = h.get(key, None)
        return None if v is None else tuple(str(x) for x in v) if hasattr(v, "__iter__") and not isinstance(v, str) \
            else str(v)

    for key, what in (("Rows", "sizes"), ("Columns", "sizes"), ("BitsAllocated", "bit depths"),
                      ("SamplesPerPixel", "samples per pixel")):
        values = {value(h, key) for h in headers}
        if len(values) > 1:
            sizes = sorted({f"{h.get('Columns')} x {h.get('Rows')}" for h in headers})
            raise InvalidImageError(
                f"the DICOM series in {where} mixes slices of different {what} ({', '.join(sizes) if what == 'sizes' else ', '.join(map(str, values))})",
                "the folder holds more than one image (e.g. a localiser or a second reconstruction with the same "
                "SeriesInstanceUID); keep the slices of one volume only")
    try:
        spacings = {tuple(round(float(v), 4) for v in h.PixelSpacing) for h in headers if "PixelSpacing" in h}
    except (TypeError, ValueError):
        raise InvalidImageError(f"the DICOM series in {where} has unreadable PixelSpacing values",
                                "the header is damaged; export the series again") from None
    bad = [sp for sp in spacings if len(sp) != 2 or not all(np.isfinite(v) and v > 0 for v in sp)]
    if bad:
        raise InvalidImageError(f"the DICOM series in {where} has PixelSpacing {list(bad[0])} mm: zero, negative or "
                                "not two values", "the header is damaged; export the series again")
    if len(spacings) > 1:
        raise InvalidImageError(f"the DICOM series in {where} mixes pixel spacings {sorted(spacings)}",
                                "keep the slices of one reconstruction only")
    for key, what in (("ImagePositionPatient", "slice positions"), ("ImageOrientationPatient", "slice orientation")):
        missing = [f for h, f in zip(headers, files) if key not in h or h.get(key) in (None, "")
                   or len(h.get(key)) != (3 if key == "ImagePositionPatient" else 6)]
        if missing:
            raise InvalidImageError(
                f"the DICOM series in {where} has no {key} ({what}) in {len(missing)} of its {len(files)} files "
                f"(e.g. {Path(missing[0]).name}): the slice spacing and the patient geometry cannot be known",
                "export the series again with its geometry (an anonymiser may have removed it); MSKSeg does not "
                "guess a slice spacing")
    if not spacings and str(headers[0].get("Modality", "")).upper() in ("CT", "MR", "PT"):
        raise InvalidImageError(f"the DICOM series in {where} has no PixelSpacing: the pixel size cannot be known",
                                "export the series again with its geometry; MSKSeg does not guess a pixel size")


def _check_slice_positions(headers, where: Path) -> None:
    """Refuse series whose slices are not evenly spaced along one normal (gaps, tilts, mixed orientations)."""
    try:
        iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        pos = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError):
        raise InvalidImageError(f"the DICOM series in {where} has unreadable ImagePositionPatient or "
                                "ImageOrientationPatient values",
                                "the header is damaged; export the series again") from None
    if not np.all(np.isfinite(pos)) or not np.all(np.isfinite(iop)):
        raise InvalidImageError(f"the DICOM series in {where} has non-finite slice positions or orientation",
                                "the header is damaged; export the series again")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        angle = float(np.degrees(np.arccos(np.clip(row @ col / max(np.linalg.norm(row) * np.linalg.norm(col), 1e-12),
                                                   -1, 1))))
        raise InvalidImageError(
            f"the DICOM series in {where} has an ImageOrientationPatient whose row and column directions are not "
            f"unit vectors at right angles (they meet at {angle:.2f} degrees): the pixels are sheared",
            "the header is damaged; export the series again")
    for h in headers[1:]:
        if not np.allclose([float(v) for v in h.ImageOrientationPatient], iop, atol=1e-3):
            raise InvalidImageError(f"the DICOM series in {where} mixes slice orientations",
                                    "load each orientation as its own series (e.g. split localisers from axials)")
    normal = np.cross(row, col)
    along = pos @ normal
    order = np.argsort(along)
    along, pos = along[order], pos[order]
    d = np.diff(along)
    if len(d) == 0:
        return
    if np.any(np.abs(d) < 1e-4):
        raise InvalidImageError(f"the DICOM series in {where} has two slices at the same position (zero spacing)",
                                "the folder may hold two reconstructions of one series; keep one")
    # Gantry tilt: successive slice origins move within the slice plane as well as along its normal. Judged on
    # the whole series (rounding of single positions to 0.01 mm never adds up to a tilt).
    lateral = pos - np.outer(along, normal)
    span = float(along[-1] - along[0])
    shift = float(np.linalg.norm(lateral[-1] - lateral[0]))
    angle = float(np.degrees(np.arctan2(shift, span)))
    if angle > 0.2 and shift > 0.2:
        raise InvalidImageError(
            f"the DICOM series in {where} was acquired with a gantry tilt of about {angle:.1f} degrees: each slice is "
            "shifted within its plane, so the voxels are not on a rectangular grid (reading it as one would shear the "
            "anatomy)",
            "resample it to an untilted grid first (e.g. dcm2niix corrects gantry tilt; Slicer's DICOM module offers "
            "'acquisition geometry regularization')")
    try:
        half_pixel = 0.5 * min(float(v) for v in headers[0].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        half_pixel = 0.25
    line = lateral[0] + np.outer((along - along[0]) / (span or 1.0), lateral[-1] - lateral[0])
    jitter = float(np.max(np.linalg.norm(lateral - line, axis=1)))
    if jitter > max(half_pixel, 0.05):
        raise InvalidImageError(
            f"the DICOM series in {where} has slices shifted within their planes by up to {jitter:.2g} mm from one "
            "another: they do not stack into one volume",
            "the folder may mix slices of several reconstructions or patient positions; keep one series")
    step = float(np.median(np.abs(d)))
    if np.ptp(d) > 0.05 * step + 1e-3:
        ratios = np.abs(d) / step
        if np.all(np.abs(ratios - np.round(ratios)) < 0.05) and np.all(np.round(ratios) >= 1):
            gaps = [(float(along[i]), float(along[i + 1]), int(round(r)) - 1) for i, r in enumerate(ratios) if round(r) > 1]
            n_missing = sum(g[2] for g in gaps)
            where_gaps = "; ".join(f"{g[2]} between {g[0]:.1f} and {g[1]:.1f} mm" for g in gaps[:3])
            raise InvalidImageError(
                f"the DICOM series in {where} is missing {n_missing} slice(s) ({where_gaps} along the slice normal; "
                f"the other slices are {step:.3g} mm apart)",
                "the series is incomplete (files lost in a copy or transfer); copy the whole series again")
        raise InvalidImageError(
            f"the DICOM series in {where} has uneven slice spacing ({np.min(np.abs(d)):.3g}..{np.max(np.abs(d)):.3g} mm)",
            "a variable-spacing reconstruction or mixed slices: resample to even spacing first",
        )


def _read_dicom_file(p: Path) -> Image:
    import SimpleITK as sitk
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as e:
        raise ImageReadError(f"{p} is not a readable DICOM file: it is damaged or truncated ({str(e)[:160]})",
                             "copy or export the file again") from None
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        raise ImageReadError(f"{p} is a DICOM Segmentation object, not an image",
                             "read it with mskseg.io.dicomseg.read_dicom_seg together with its source series")
    try:
        full = pydicom.dcmread(p)
    except Exception as e:
        raise ImageReadError(f"{p} is a damaged or truncated DICOM file ({str(e)[:160]})",
                             "copy or export the file again") from None
    _check_dicom_pixels(full, p)
    del full
    try:
        with _quiet_native():
            img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise ImageReadError(f"cannot decode {p} ({_syntax_name(ds)}): {_short(e)}",
                             "the transfer syntax may be unsupported or the pixel data damaged; convert the file to "
                             "uncompressed DICOM") from None
    modality = str(ds.get("Modality", "") or "")
    components = img.GetNumberOfComponentsPerPixel()
    if components > 1:
        img = _to_luminance(img)
    if img.GetDimension() == 3 and img.GetSize()[2] == 1 and modality in PROJECTION_MODALITIES:
        img = img[:, :, 0]
    image = _from_sitk_checked(img, p)
    if components > 1:
        image.metadata.update(rgb=True, bits_per_sample=int(ds.get("BitsAllocated", 8) or 8))
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        # GDCM already maps MONOCHROME1 (high values shown dark) to MONOCHROME2: bone is bright for every
        # radiograph. Recorded so nobody inverts it a second time.
        image.metadata["inverted_from"] = "MONOCHROME1"
    if image.ndim == 2 and "ImagerPixelSpacing" in ds and "PixelSpacing" not in ds:
        sp = [float(v) for v in ds.ImagerPixelSpacing]
        image = Image(image.array, (sp[1], sp[0]), image.origin, image.direction, image.metadata)
    image.metadata.update(_dicom_metadata(ds))
    image.metadata.update(source_path=str(p), format="dicom", source_files=[str(p)])
    _note_padding(image, ds)
    return image


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
        with _quiet_native():
            img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        msg = _short(e)
        if "orthonormal" in msg.lower():
            raise InvalidImageError(
                f"{p} has a sheared or degenerate direction matrix (its index axes are not at right angles): the "
                "voxels are not on a rectangular grid",
                "resample the image onto an orthogonal grid before segmenting") from None
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
        with _quiet_native():
            img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise ImageReadError(f"{p} could not be read as a picture: {_short(e)}",
                             "the file is damaged or cut short; check that it is a complete PNG/JPEG/BMP/TIFF") from None
    components = img.GetNumberOfComponentsPerPixel()
    bits = 8 * sitk.GetArrayViewFromImage(img).dtype.itemsize if components else 8
    if components > 1:
        img = _to_luminance(img)
    if img.GetDimension() == 3 and img.GetSize()[2] > 1:
        raise InvalidImageError(f"{p} is a picture with {img.GetSize()[2]} pages/frames",
                                "save the one picture to segment as its own file")
    image = _from_sitk_checked(img, p)
    if image.ndim == 3 and image.array.shape[0] == 1:
        image = Image(image.array[0], image.spacing[:2], image.origin[:2], image.direction[:2, :2], image.metadata)
    image.metadata.update(source_path=str(p), format=_format_name(p), spacing_known=False, picture=True,
                          bits_per_sample=bits, rgb=components > 1)
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
    low, high = SPACING_LIMITS_MM
    if any(not (low <= s <= high) for s in spacing):
        raise InvalidImageError(
            f"{where} has voxel spacing ({', '.join(f'{s:.4g}' for s in spacing)}) mm: outside {low:g}..{high:g} mm, "
            "which no medical image has; the header is wrong",
            "fix the spacing in the file header (NIfTI pixdim, NRRD space directions, DICOM PixelSpacing)")
    if img.GetPixelID() in _COMPLEX_PIXELS():
        raise InvalidImageError(f"{where} holds complex-valued voxels", "MSKSeg needs a real-valued scalar image")
    try:
        image = Image.from_sitk(img)
    except InvalidImageError as e:
        raise InvalidImageError(f"{where}: {e.message}", e.hint) from None
    check_finite(where, image.array)
    return image


def _COMPLEX_PIXELS() -> set:
    import SimpleITK as sitk

    return {getattr(sitk, n) for n in ("sitkComplexFloat32", "sitkComplexFloat64") if hasattr(sitk, n)}


def _format_name(p: Path) -> str:
    n = p.name.lower()
    for suffix, fmt in ((".seg.nrrd", "seg.nrrd"), (".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"),
                        (".nhdr", "nrrd"), (".mha", "metaimage"), (".mhd", "metaimage")):
        if n.endswith(suffix):
            return fmt
    return p.suffix.lstrip(".").lower()


_ITK_NOISE = re.compile(r"(Exception thrown in SimpleITK \S+:?|\S*/\S+\.(cxx|cpp|h|hxx|txx):\d+:?|"
                        r"(ITK |itk::)?ERROR:?|\w+\(0x[0-9a-f]+\):?|sitk::ERROR:?|itk::\w+:?)")


def _short(e: Exception) -> str:
    """The useful words of an ITK/GDCM exception, without source paths, object addresses and class names."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        text = _ITK_NOISE.sub("", ln).strip(" :")
        if len(text) >= 8 and not text.lower().startswith("reason: no such file"):
            if "unable to determine imageio reader" in text.lower() or "no imageio" in text.lower():
                return "no reader recognises its content"
            return text[:300]
    return "the reader failed without saying why (the file is probably damaged or not in the format its name says)"
