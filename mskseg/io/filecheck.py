"""Checks of a volume file before and after it is decoded: declared size against the data present, absurd
voxel counts, sheared geometry, undefined voxel values.

ITK reads some damaged files without complaint: a truncated ``.nii.gz`` comes back with zero-filled slices,
a header declaring billions of voxels is allocated in full, a sheared NIfTI affine is replaced by the qform.
These checks read the header themselves (a few hundred bytes; compressed data is streamed, never held) and
raise an :class:`~mskseg.errors.MSKSegError` that names the true cause before ITK sees the file.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import ImageReadError, InvalidImageError

#: Most voxels MSKSeg reads in one image (2**31: 8 GB of float32); a header declaring more is refused.
MAX_VOXELS = 2 ** 31
#: NIfTI datatype code -> bytes per voxel.
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}
_NRRD_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
               "float32": 4, "float64": 8}
_META_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_voxel_count(where: Path | str, sizes: list[int] | tuple[int, ...], bytes_per_voxel: int) -> None:
    """Refuse a header that declares an absurd number of voxels, before anything is allocated.

    Raises:
        InvalidImageError: a size of 0 or less, more than :data:`MAX_VOXELS` voxels, or more bytes than the
            memory available.
    """
    sizes = [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise InvalidImageError(f"{where} declares an image of size {sizes}: a size of zero or less holds no voxels",
                                "the header is damaged; export the image again")
    count = int(np.prod(np.asarray(sizes, dtype=np.float64)))
    needed = count * max(int(bytes_per_voxel), 1)
    if count > MAX_VOXELS:
        raise InvalidImageError(
            f"{where} declares {' x '.join(map(str, sizes))} = {count:.3g} voxels ({needed / 1e9:.3g} GB): more "
            f"than MSKSeg reads in one image ({MAX_VOXELS:.3g} voxels); the header is probably damaged",
            "check the image size in the header; crop or downsample a genuinely huge volume first")
    free = available_memory()
    if free is not None and needed > free:
        raise InvalidImageError(
            f"{where} declares {' x '.join(map(str, sizes))} voxels ({needed / 1e9:.3g} GB), more than the "
            f"memory available ({free / 1e9:.3g} GB)",
            "check the image size in the header, or crop the volume first")


def _truncated(where: Path | str, have: int, want: int, unit_bytes: int | None = None, n_slices: int | None = None):
    missing = ""
    if unit_bytes and n_slices:
        lost = int(np.ceil((want - have) / unit_bytes))
        missing = f"; about {min(lost, n_slices)} of its {n_slices} slices are missing"
    return ImageReadError(
        f"{where} is truncated: it holds {max(have, 0)} bytes of voxel data, its header declares {want}{missing}",
        "the file was cut short (an interrupted copy or download); copy or export it again")


def _stream_length(opener, path: Path, start: int, where: Path | str, label: str) -> int:
    """Bytes a compressed stream decompresses to, read in chunks; a cut stream is reported as truncated."""
    total = 0
    try:
        with opener(path) as f:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise ImageReadError(f"{where} is truncated or damaged: its {label} voxel data breaks off before the "
                             f"end ({str(e)[:120]})",
                             "the file was cut short (an interrupted copy or download); copy or export it again"
                             ) from None
    return total


# --------------------------------------------------------------------------------------------- NIfTI
def nifti_header(p: Path) -> dict | None:
    """Sizes, bytes per voxel, data offset and sform/qform of a NIfTI-1/2 header, or None when not NIfTI."""
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as f:
            raw = f.read(540)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error):
        return None
    for endian in ("<", ">"):
        if len(raw) < 348:
            return None
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", raw[70:74])
            vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
            qform_code, sform_code = struct.unpack(endian + "hh", raw[252:256])
            srow = np.asarray(struct.unpack(endian + "12f", raw[280:328]), float).reshape(3, 4)
            scl = struct.unpack(endian + "2f", raw[112:120])
        elif size == 540 and len(raw) >= 540:
            dim = struct.unpack(endian + "8q", raw[16:80])
            datatype, bitpix = struct.unpack(endian + "hh", raw[12:16])
            vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
            qform_code, sform_code = struct.unpack(endian + "ii", raw[344:352])
            srow = np.asarray(struct.unpack(endian + "12d", raw[400:496]), float).reshape(3, 4)
            scl = struct.unpack(endian + "2d", raw[176:192])
        else:
            continue
        nd = int(dim[0])
        if not 1 <= nd <= 7:
            raise ImageReadError(f"{p} has a damaged NIfTI header (dim[0] = {nd}; it must be 1 to 7)",
                                 "export the image again")
        return {"sizes": [int(v) for v in dim[1:1 + nd]], "bytes": _NIFTI_BYTES.get(int(datatype), max(int(bitpix) // 8, 1)),
                "offset": int(vox_offset), "datatype": int(datatype), "scl": scl, "sform_code": int(sform_code), "qform_code": int(qform_code), "srow": srow}
    return None


def check_nifti_file(p: Path) -> None:
    """Voxel count, sheared sform and truncation of a NIfTI file (before ITK reads it)."""
    h = nifti_header(p)
    if h is None:
        return
    sizes = [max(s, 1) if i >= 3 else s for i, s in enumerate(h["sizes"])]
    check_voxel_count(p, sizes, h["bytes"])
    slope, inter = (float(v) for v in h["scl"])
    if not (np.isfinite(slope) and np.isfinite(inter)) or (slope != 0 and not 1e-4 <= abs(slope) <= 1e3) or \
            abs(inter) > 1e5:
        raise InvalidImageError(
            f"{p} has an absurd intensity scaling in its header (scl_slope {slope:g}, scl_inter {inter:g}; values = "
            "stored x slope + inter)", "the header is damaged; export the image again")
    if h["sform_code"] > 0:
        check_axes_orthonormal(p, h["srow"][:, :3], "its NIfTI sform (srow_x/y/z)")
    want = h["offset"] + int(np.prod(sizes)) * h["bytes"]
    slice_bytes = int(np.prod(sizes[:2])) * h["bytes"]
    n_slices = int(np.prod(sizes[2:])) if len(sizes) > 2 else 1
    if p.name.lower().endswith(".gz"):
        have = _stream_length(lambda q: gzip.open(q, "rb"), p, h["offset"], p, "compressed")
    else:
        have = os.path.getsize(p)
    if have < want:
        raise _truncated(p, have - h["offset"], want - h["offset"], slice_bytes, n_slices)
    if h["datatype"] in (16, 64, 1536):  # float voxels: ITK's NIfTI reader turns NaN into 0 without a word
        import nibabel as nib

        try:
            check_finite(p, np.asanyarray(nib.load(str(p)).dataobj))
        except InvalidImageError:
            raise
        except Exception:
            return  # unreadable for nibabel: ITK's own message follows


# --------------------------------------------------------------------------------------------- NRRD
def check_nrrd_file(p: Path) -> None:
    """Voxel count and truncation of a NRRD file (inline or detached data, raw or gzip)."""
    import nrrd

    try:
        header = nrrd.read_header(str(p))
    except Exception as e:
        raise ImageReadError(f"{p} is not a readable NRRD file: {str(e)[:200]}",
                             "check that the file is complete and really is NRRD") from None
    try:
        sizes = [int(v) for v in np.ravel(header["sizes"])]
        nbytes = _NRRD_BYTES.get(str(np.dtype(nrrd.reader._determine_datatype(header)).name), 1)  # type: ignore[attr-defined]
    except Exception:
        return
    check_voxel_count(p, sizes, nbytes)
    encoding = str(header.get("encoding", "raw")).lower()
    want = int(np.prod(sizes)) * nbytes
    slice_bytes = int(np.prod(sizes[:2])) * nbytes
    n_slices = int(np.prod(sizes[2:])) if len(sizes) > 2 else 1
    data_file = header.get("data file") or header.get("datafile")
    if data_file:
        target = Path(str(data_file).split()[0])
        target = target if target.is_absolute() else p.parent / target
        if not target.exists():
            raise ImageReadError(f"{p} is a detached NRRD header whose data file {target.name} is missing",
                                 "keep the .nhdr and its data file together in one folder")
        start, path = int(header.get("byte skip", 0) or 0), target
    else:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
        end = head.find(b"\n\n")
        if end < 0:
            return
        start, path = end + 2, p
    if encoding == "raw":
        have = os.path.getsize(path) - start
    elif encoding in ("gzip", "gz"):
        def opener(q):
            f = open(q, "rb")
            f.seek(start)
            return gzip.GzipFile(fileobj=f, mode="rb")
        have = _stream_length(opener, path, 0, p, "gzip")
    else:
        return
    if have < want:
        raise _truncated(p, have, want, slice_bytes, n_slices)


# --------------------------------------------------------------------------------------------- MetaImage
def check_metaimage_file(p: Path) -> None:
    """Voxel count and truncation of a MetaImage (``.mha`` with its data inline, ``.mhd`` + raw file)."""
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    fields: dict[str, str] = {}
    start = None
    pos = 0
    for line in head.split(b"\n"):
        pos += len(line) + 1
        key, _, value = line.decode("latin-1", "replace").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            start = pos
            break
    try:
        sizes = [int(v) for v in fields["DimSize"].split()]
        nbytes = _META_BYTES[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", "1") or 1)
    except (KeyError, ValueError):
        if "ElementDataFile" not in fields:
            raise ImageReadError(f"{p} is not a readable MetaImage file (no DimSize/ElementType/ElementDataFile)",
                                 "check that the file is complete and really is MetaImage") from None
        return
    check_voxel_count(p, sizes, nbytes)
    want = int(np.prod(sizes)) * nbytes
    data_file = fields.get("ElementDataFile", "")
    if data_file.upper() == "LOCAL":
        path, offset = p, start or 0
    elif data_file and " " not in data_file and "%" not in data_file and data_file.upper() != "LIST":
        path = Path(data_file) if Path(data_file).is_absolute() else p.parent / data_file
        offset = 0
        if not path.exists():
            raise ImageReadError(f"{p} is a MetaImage header whose data file {path.name} is missing",
                                 "keep the .mhd and its data file together in one folder")
    else:
        return
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        z = zlib.decompressobj()
        try:
            have = len(z.decompress(data))
        except zlib.error as e:
            raise ImageReadError(f"{p} is damaged: its compressed voxel data cannot be decompressed ({e})",
                                 "export the image again") from None
        if not z.eof:
            raise ImageReadError(f"{p} is truncated: its compressed voxel data ends after {have} of {want} bytes",
                                 "the file was cut short (an interrupted copy or download); copy or export it again")
    else:
        have = os.path.getsize(path) - offset
    if have < want:
        raise _truncated(p, have, want, int(np.prod(sizes[:2])) * nbytes, int(np.prod(sizes[2:])) if len(sizes) > 2 else 1)


def check_file_before_reading(p: Path) -> None:
    """The format's checks of :func:`check_nifti_file`, :func:`check_nrrd_file` or :func:`check_metaimage_file`."""
    name = p.name.lower()
    if os.path.getsize(p) == 0:
        raise ImageReadError(f"{p} is empty (0 bytes)", "the file was not written or not copied completely")
    if name.endswith((".nii", ".nii.gz")):
        check_nifti_file(p)
    elif name.endswith((".nrrd", ".nhdr")):
        check_nrrd_file(p)
    elif name.endswith((".mha", ".mhd")):
        check_metaimage_file(p)


# --------------------------------------------------------------------------------------------- geometry, values
def check_axes_orthonormal(where: Path | str, axes: np.ndarray, what: str = "its direction matrix") -> None:
    """Refuse index axes (columns of ``axes``, scaled or not) that are sheared or degenerate.

    The columns are normalised first (their lengths are the voxel spacing); what is left must be orthonormal
    within 1e-3. ``|det| = 1`` alone lets a shear pass, so every pair of axes is checked.
    """
    a = np.asarray(axes, dtype=float)
    if not np.all(np.isfinite(a)):
        raise InvalidImageError(f"{where}: {what} holds a non-finite value", "fix the geometry in the file header")
    lengths = np.linalg.norm(a, axis=0)
    if np.any(lengths <= 0):
        raise InvalidImageError(f"{where}: {what} has an index axis of length zero (zero voxel spacing)",
                                "fix the geometry in the file header")
    d = a / lengths[None, :]
    gram = d.T @ d
    off = np.abs(gram - np.eye(d.shape[1]))
    if np.max(off) > 1e-3:
        i, j = np.unravel_index(int(np.argmax(off)), off.shape)
        angle = float(np.degrees(np.arccos(np.clip(gram[i, j], -1.0, 1.0))))
        raise InvalidImageError(
            f"{where}: {what} is sheared (index axes {i} and {j} meet at {angle:.2f} degrees, not 90): the voxels "
            "are not on a rectangular grid",
            "resample the image onto an orthogonal grid (e.g. Slicer's Resample Scalar Volume or a gantry-tilt "
            "correction) before segmenting")


def check_finite(where: Path | str, array: np.ndarray) -> None:
    """Refuse NaN or infinite voxels (any float image)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    n = int(np.count_nonzero(bad))
    if n:
        kinds = []
        if np.isnan(array).any():
            kinds.append("NaN")
        if np.isinf(array).any():
            kinds.append("infinite")
        raise InvalidImageError(
            f"{where} has {n} voxels ({100.0 * n / array.size:.3g} %) that are {' or '.join(kinds)}: their values "
            "are undefined, and every measurement over them would be wrong",
            "replace undefined voxels when exporting (e.g. by -1000 HU, air, for a CT) or export the image again")
