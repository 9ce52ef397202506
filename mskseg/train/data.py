"""Training data: labelled cases from disk in the formats clinical groups keep, and synthetic samples on the fly.

On disk (:func:`discover_cases`), ``--data`` is one of:

* a folder with ``images/`` and ``labels/`` (or nnU-Net's ``imagesTr/`` and ``labelsTr/``): ``images/<case>.<ext>``
  pairs with ``labels/<case>.<ext>``. An image may be a DICOM series folder ``images/<case>/``; its label may be
  a DICOM-SEG ``labels/<case>.dcm`` (or a folder ``labels/<case>/`` holding it). nnU-Net's channel suffix
  ``_0000`` on image names is ignored when matching.
* a CSV manifest (a ``.csv`` file, or ``manifest.csv`` in the folder) with columns ``image,label[,case]``;
  relative paths are relative to the manifest's folder.

Label maps (:func:`read_labelmap`): ``.seg.nrrd`` (names from the file), DICOM-SEG (names from the file),
NIfTI/NRRD/MHA (names from a ``<name>.labels.json`` sidecar as MSKSeg writes it, else from ``--labels`` or the
model card), PNG masks (grey values = label values; a 0/255 mask with one named class is that class; palette
PNGs: palette index = label value; RGB masks: each colour is the terminology colour of a named class, black is
background). Every label map must lie on its image's grid (:class:`GeometryMismatchError` otherwise); a
``.seg.nrrd`` that Slicer cropped to the segments' extent is placed back onto the image grid.

Preparation (:func:`prepare_case`): label values are mapped by class NAME onto the model's classes, the image
and labels are resampled to the card's ``input.spacing_mm``, intensities are normalised with
:func:`mskseg.engine.normalise`, and 2D/2.5D models get one sample per slice along k (the labelled slices only
by default), with ``2 * context + 1`` neighbouring slices as channels (edge slices repeated, as at inference).

Synthetic data: a :class:`SampleSource` maps an index to ``(image, label)`` (raw intensities, e.g. HU, at the
card's spacing; normalisation is applied here). Generators register a factory under a name with
:func:`register_synthetic_source`; ``"l3-phantom"`` is registered on first use when
:mod:`mskseg.synth.phantom` is installed.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..errors import GeometryMismatchError, ImageReadError, InvalidImageError, MSKSegError
from ..image import Image, resample_to_spacing
from ..io.common import Labels
# patches and augmentation live in augment.py; re-exported here, where the trainer and users find the data API
from .augment import (NO_AUGMENTATION, Augmentation, AugmentHook, augment, crop_or_pad,  # noqa: F401
                      pad_sample_to_multiple, random_flip, random_intensity, random_rotate)

logger = logging.getLogger(__name__)

#: File name endings of label maps, longest first (".seg.nrrd" before ".nrrd").
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff",
                  ".bmp", ".dcm")
#: File name endings of images (a folder is a DICOM series).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                  ".bmp", ".dcm")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_FOLDER_PAIRS = (("images", "labels"), ("imagesTr", "labelsTr"))
_SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
CONVENTION_HINT = ("put images in DATA/images/<case>.<ext> (or DATA/images/<case>/ for a DICOM series) and label "
                   "maps in DATA/labels/<case>.<ext>, or give a CSV manifest with columns image,label[,case]")


# ============================================================================================== discovery
def case_name(path: str | Path) -> str:
    """The case name of a file or folder: its name without a known image/label ending (``ct.nii.gz`` -> ``ct``)."""
    name = Path(str(path).rstrip("/\\")).name
    lower = name.lower()
    for suffix in LABEL_SUFFIXES + IMAGE_SUFFIXES + (".labels.json",):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class CasePaths:
    """Where one labelled case lives: ``image`` (file or DICOM folder) and ``label`` (file or folder)."""

    case: str
    image: Path
    label: Path


def _is_label_file(p: Path) -> bool:
    lower = p.name.lower()
    return p.is_file() and lower.endswith(LABEL_SUFFIXES) and not lower.endswith(".labels.json")


def _label_in_folder(folder: Path) -> Path | None:
    """The one label file inside a case folder: .seg.nrrd first, then NIfTI, NRRD, MHA, a DICOM-SEG, PNG."""
    files = [p for p in sorted(folder.iterdir()) if _is_label_file(p)]
    for suffixes in ((".seg.nrrd",), (".nii.gz", ".nii"), (".nrrd", ".nhdr"), (".mha", ".mhd"), (".dcm",),
                     PICTURE_SUFFIXES):
        matches = [p for p in files if p.name.lower().endswith(suffixes)
                   and not (suffixes == (".nrrd", ".nhdr") and p.name.lower().endswith(".seg.nrrd"))]
        if suffixes == (".dcm",):
            matches = [p for p in matches if _is_dicom_seg(p)]
        if matches:
            return matches[0]
    # a folder of DICOM files without extension: look for the SEG object
    segs = [p for p in sorted(folder.iterdir()) if p.is_file() and "." not in p.name and _is_dicom_seg(p)]
    return segs[0] if segs else None


def _is_dicom_seg(p: Path) -> bool:
    try:
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:
        return False
    return str(ds.get("SOPClassUID", "")) in _SEG_SOP_CLASSES or ds.get("Modality") == "SEG"


def find_label_files(folder: str | Path) -> dict[str, Path]:
    """Label maps in ``folder`` by case name: ``<case>.<ext>`` files and ``<case>/`` sub-folders holding one.

    A sub-folder counts when it holds a label file (``mskseg segment`` writes ``<case>/segmentation.seg.nrrd``)
    or a DICOM-SEG object. Returns an empty dict for a missing folder.
    """
    folder = Path(folder).expanduser()
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            label = _label_in_folder(p)
            if label is not None:
                found[p.name] = label
        elif _is_label_file(p):
            if p.name.lower().endswith(".dcm") and not _is_dicom_seg(p):
                continue
            found.setdefault(case_name(p), p)
    return found


def find_image_for_case(folder: str | Path, case: str) -> Path | None:
    """The image of ``case`` in ``folder``: ``<case>.<ext>``, ``<case>_0000.<ext>`` or a ``<case>/`` folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        name = case_name(p)
        if name in (case, f"{case}_0000") and (p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES)):
            return p
    return None


def read_manifest(path: str | Path) -> list[CasePaths]:
    """Cases listed in a CSV manifest with columns ``image,label[,case]`` (paths relative to the CSV's folder).

    Raises:
        MSKSegError: missing columns, empty manifest, duplicate case names.
        ImageReadError: a listed file does not exist (the row is named).
    """
    path = Path(path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            columns = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except OSError as exc:
        raise ImageReadError(f"cannot read manifest {path}: {exc}") from exc
    if not rows:
        raise MSKSegError(f"manifest {path} lists no cases", "one row per case with columns image,label[,case]")
    if "image" not in columns or "label" not in columns:
        raise MSKSegError(f"manifest {path} has columns {columns}; it needs 'image' and 'label' (and optionally "
                          "'case')", "first line e.g.: image,label,case")
    cases: list[CasePaths] = []
    for n, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        image, label = path.parent / row["image"], path.parent / row["label"]
        for what, p in (("image", image), ("label", label)):
            if not p.exists():
                raise ImageReadError(f"manifest {path}, line {n}: {what} {p} does not exist",
                                     "paths are relative to the manifest's folder")
        cases.append(CasePaths(row.get("case") or case_name(image), image, label))
    _check_unique(cases, str(path))
    return cases


def _check_unique(cases: Sequence[CasePaths], where: str) -> None:
    seen: set[str] = set()
    for c in cases:
        if c.case in seen:
            raise MSKSegError(f"case name '{c.case}' appears twice in {where}",
                              "give every case a unique name (manifest column 'case')")
        seen.add(c.case)


def discover_cases(data: str | Path) -> list[CasePaths]:
    """Image/label pairs of a ``--data`` folder or manifest (see the module documentation for the layout).

    Raises:
        MSKSegError: nothing found (the expected layout is explained), or images without labels / labels
            without images (listed).
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise ImageReadError(f"training data {data} does not exist", CONVENTION_HINT)
    if data.is_file():
        if data.suffix.lower() == ".csv":
            return read_manifest(data)
        raise MSKSegError(f"{data} is a file but not a CSV manifest", CONVENTION_HINT)
    if (data / "manifest.csv").is_file():
        return read_manifest(data / "manifest.csv")
    for image_dir, label_dir in _FOLDER_PAIRS:
        if (data / image_dir).is_dir() and (data / label_dir).is_dir():
            break
    else:
        raise MSKSegError(f"no training data found in {data}: it has no images/ and labels/ folders and no "
                          "manifest.csv", CONVENTION_HINT)
    labels = find_label_files(data / label_dir)
    images: dict[str, Path] = {}
    for p in sorted((data / image_dir).iterdir()):
        if p.name.startswith(".") or not (p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES)):
            continue
        name = case_name(p)
        if name not in labels and name.endswith("_0000") and name[:-5] in labels:
            name = name[:-5]
        images[name] = p
    unlabelled = sorted(set(images) - set(labels))
    orphans = sorted(set(labels) - set(images))
    if unlabelled or orphans:
        parts = []
        if unlabelled:
            parts.append(f"images without a label map: {', '.join(unlabelled[:10])}")
        if orphans:
            parts.append(f"label maps without an image: {', '.join(orphans[:10])}")
        raise MSKSegError(f"{data}: " + "; ".join(parts),
                          "every image needs a label file of the same case name (move unlabelled images "
                          "elsewhere, or list the pairs in a manifest.csv)")
    if not images:
        raise MSKSegError(f"no image/label pairs found in {data / image_dir} and {data / label_dir}", CONVENTION_HINT)
    return [CasePaths(name, images[name], labels[name]) for name in sorted(images)]


# ============================================================================================== reading
@dataclass
class LabelledCase:
    """One case read from disk: the image, its label map on the image grid, and the label names.

    ``labels`` is None when neither the file nor the caller named the values.
    """

    case: str
    image: Image
    labelmap: Image
    labels: Labels | None


def _read_sidecar(path: Path) -> Labels | None:
    from ..io.writers import read_labels_sidecar

    return read_labels_sidecar(path)


def _read_mask_picture(path: Path, labels: Labels | None) -> np.ndarray:
    """Label values of a PNG/TIFF/BMP mask ``(J, I)``: grey values, palette indices, or class colours (RGB)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pic:
            mode = pic.mode
            arr = np.asarray(pic)
    except OSError as exc:
        raise ImageReadError(f"{path} could not be read as a mask picture: {exc}") from exc
    if arr.ndim == 2:  # L, I;16, I, P (palette index), 1
        return _read_mask_grey(arr, labels)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3].astype(np.int32)
        if arr.shape[2] == 4:
            rgb[arr[..., 3] == 0] = 0
        if np.all(rgb == rgb[..., :1]):  # grey saved as RGB
            return _read_mask_grey(rgb[..., 0], labels)
        if not labels:
            raise InvalidImageError(f"{path} is a colour ({mode}) mask but no class names were given",
                                    "name the classes (--labels 1=skeletal_muscle,...): each class's colour is "
                                    "its terminology colour (see `mskseg terminology`)")
        from .. import terminology

        out = np.zeros(rgb.shape[:2], np.int64)
        matched = np.all(rgb == 0, axis=-1)
        for value, name in labels.items():
            colour = np.asarray(terminology.get_class(name).color, np.int32)
            hit = np.all(np.abs(rgb - colour) <= 2, axis=-1)
            out[hit] = int(value)
            matched |= hit
        if not matched.all():
            unknown = np.unique(rgb[~matched].reshape(-1, 3), axis=0)[:5].tolist()
            raise InvalidImageError(
                f"{path}: colours {unknown} match none of the classes {dict(labels)}",
                "colour masks must use each class's terminology colour (mskseg terminology) and black for "
                "background; or save masks with grey value = label value")
        return out
    raise InvalidImageError(f"{path} has shape {arr.shape}; a mask needs one grey or RGB(A) value per pixel")


def _read_mask_grey(arr: np.ndarray, labels: Labels | None) -> np.ndarray:
    arr = arr.astype(np.int64)
    if labels and set(np.unique(arr).tolist()) - {0} == {255} and len(labels) == 1 and 255 not in labels:
        arr = np.where(arr == 255, next(iter(labels)), 0)
    return arr


def _integer_array(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.all(np.mod(arr, 1) == 0):
            raise InvalidImageError(f"{path} has non-integer values; a label map holds integer label values",
                                    "is this an image rather than a label map? check the labels/ folder")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise InvalidImageError(f"{path} has negative values (min {arr.min()}); label values are 0..65535")
    return arr


def place_on_grid(labelmap: Image, image: Image, what: str = "label map") -> Image:
    """``labelmap`` on exactly ``image``'s grid, or :class:`GeometryMismatchError`.

    Accepted besides an identical grid: a one-slice 3D map for a 2D image (a 2D ``.seg.nrrd``), and a map
    with the image's spacing and direction covering a sub-block of it at whole-voxel offsets (Slicer crops
    ``.seg.nrrd`` files to the segments' extent); the rest of the grid is background.
    """
    if image.same_grid(labelmap):
        return image.with_array(np.asarray(labelmap.array), keep_metadata=False)
    if image.ndim == 2 and labelmap.ndim == 3 and labelmap.array.shape[0] == 1:
        flat = Image(labelmap.array[0], labelmap.spacing[:2], labelmap.origin[:2],
                     labelmap.direction[:2, :2] if abs(abs(np.linalg.det(labelmap.direction[:2, :2])) - 1) < 1e-3
                     else np.eye(2))
        return place_on_grid(flat, image, what)
    if (labelmap.ndim == image.ndim and np.allclose(labelmap.spacing, image.spacing, rtol=1e-3)
            and np.allclose(labelmap.direction, image.direction, atol=1e-3)):
        offset = image.physical_to_index(np.asarray(labelmap.origin))
        start = np.rint(offset).astype(int)
        size = np.asarray(labelmap.size)
        if (np.allclose(offset, start, atol=1e-2) and np.all(start >= 0)
                and np.all(start + size <= np.asarray(image.size))):
            out = np.zeros(image.array.shape, dtype=labelmap.array.dtype)
            box = tuple(slice(int(s), int(s + n)) for s, n in zip(start[::-1], size[::-1]))
            out[box] = labelmap.array
            return image.with_array(out, keep_metadata=False)
    image.check_same_grid(labelmap, what)  # raises, naming the difference
    return labelmap  # pragma: no cover - check_same_grid raised


def read_labelmap(path: str | Path, *, source: Image | None = None,
                  labels: Labels | None = None) -> tuple[Image, Labels | None]:
    """Read a label map in any supported format, on ``source``'s grid when ``source`` is given.

    Args:
        path: ``.seg.nrrd``, DICOM-SEG file (or a folder holding one), NIfTI/NRRD/MHA, or a PNG/TIFF/BMP mask.
        source: the image the map belongs to; DICOM-SEG frames are placed on its slices, PNG masks take its
            geometry, other maps must lie on its grid (see :func:`place_on_grid`).
        labels: names for maps that carry none (NIfTI/NRRD/PNG without sidecar); needed for colour masks.

    Returns:
        ``(labelmap, names)``: integer label map, and the names stored with the file (``.seg.nrrd``,
        DICOM-SEG, NIfTI sidecar), else ``labels``, else None.

    Raises:
        ImageReadError, InvalidImageError: unreadable file, non-integer values, values without a name.
        GeometryMismatchError: the map is not on ``source``'s grid.
    """
    from ..io import read_image
    from ..io.common import check_labelmap

    p = Path(path).expanduser()
    if not p.exists():
        raise ImageReadError(f"label map {p} does not exist")
    if p.is_dir():
        inner = _label_in_folder(p)
        if inner is None:
            raise ImageReadError(f"folder {p} holds no label file or DICOM-SEG object",
                                 "a label folder must hold one .seg.nrrd, NIfTI, NRRD, PNG or DICOM-SEG file")
        p = inner
    lower = p.name.lower()
    names: Labels | None
    if lower.endswith(".seg.nrrd"):
        from ..io.segnrrd import read_seg_nrrd

        labelmap, names = read_seg_nrrd(p)
    elif lower.endswith(".dcm") or "." not in p.name:
        from ..io.dicomseg import read_dicom_seg

        labelmap, names = read_dicom_seg(p, source)
    elif lower.endswith(PICTURE_SUFFIXES):
        arr = _read_mask_picture(p, labels)
        if source is not None:
            if source.array.shape != arr.shape:
                raise GeometryMismatchError(f"mask {p} has {arr.shape[0]}x{arr.shape[1]} pixels but its image has "
                                            f"{source.array.shape[0]}x{source.array.shape[1]}",
                                            "a mask must have exactly its image's size")
            labelmap = source.with_array(arr, keep_metadata=False)
        else:
            labelmap = Image(arr, (1.0, 1.0))
        names = labels
    else:
        labelmap = read_image(p)
        labelmap = labelmap.with_array(_integer_array(np.asarray(labelmap.array), p), keep_metadata=False)
        names = _read_sidecar(p) or labels
    if source is not None:
        labelmap = place_on_grid(labelmap, source, f"label map {p}")
    arr = _integer_array(np.asarray(labelmap.array), p)
    if names:
        try:
            arr = check_labelmap(labelmap.with_array(arr), names)
        except InvalidImageError as exc:
            raise InvalidImageError(f"{p}: {exc.message}", exc.hint) from None
    else:
        arr = arr.astype(np.uint16 if arr.size and arr.max() > 255 else np.uint8)
    return labelmap.with_array(arr, keep_metadata=False), (dict(names) if names else None)


def read_case(paths: CasePaths, labels: Labels | None = None) -> LabelledCase:
    """Read one case's image (:func:`mskseg.io.read_image`) and its label map on the image grid.

    Raises:
        GeometryMismatchError: the label map is not on the image grid (the difference is named).
        ImageReadError, InvalidImageError: unreadable files or invalid label maps.
    """
    from ..io import read_image

    image = read_image(paths.image)
    labelmap, names = read_labelmap(paths.label, source=image, labels=labels)
    return LabelledCase(paths.case, image, labelmap, names)


# ============================================================================================== preparation
@dataclass
class Sample:
    """One prepared training or validation sample.

    ``image``: ``(C, J, I)`` (2D/2.5D) or ``(C, K, J, I)`` (3D), normalised, float16 to halve memory.
    ``label``: ``(J, I)`` or ``(K, J, I)`` uint8 in the model's label values.
    """

    image: np.ndarray
    label: np.ndarray
    case: str
    slice_index: int | None = None


def resample_array(array: np.ndarray, spacing: Sequence[float], target: Sequence[float], *,
                   is_label: bool) -> np.ndarray:
    """Resample a 2D or 3D array from ``spacing`` to ``target`` (both ITK order, mm) with
    :func:`mskseg.image.resample_to_spacing` (the inference resampler; grid of :func:`mskseg.image.spacing_grid`).

    Linear interpolation (float32) for images, nearest neighbour for label maps (uint8 when the labels fit,
    else uint16); outside the array: the array minimum for images, 0 for labels.
    """
    arr = np.asarray(array)
    if np.allclose(tuple(float(s) for s in spacing), tuple(float(t) for t in target), rtol=1e-3):
        return arr
    image = Image(arr.astype(np.uint16) if is_label else arr.astype(np.float32), spacing)
    result = resample_to_spacing(image, target, interpolation="nearest" if is_label else "linear").array
    return result.astype(np.uint8) if is_label and result.max(initial=0) < 256 else result


def class_lookup(names: Labels, classes: Mapping[str, int], where: str, strict: bool = True) -> np.ndarray:
    """Lookup table ``file label value -> model label value``, matching classes by name.

    Args:
        names: the file's label value -> class name.
        classes: the model's class name -> label value.
        strict: a class the model does not have is an error (True) or becomes background with a warning.

    Raises:
        MSKSegError: (strict) a class name in the data that the model does not segment.
    """
    unknown = sorted(n for n in names.values() if n not in classes)
    if unknown and strict:
        raise MSKSegError(f"{where} has classes {unknown} that the model does not segment (its classes: "
                          f"{', '.join(classes)})",
                          "name the labels like the model's classes (--labels 1=skeletal_muscle,...), or train "
                          "a model with these classes (no --model/--fine-tune card, or --labels listing them)")
    if unknown:
        logger.warning("%s: classes %s are not among the model's classes and are treated as background",
                       where, unknown)
    table = np.zeros(max([0, *names]) + 1, np.uint8)
    for value, name in names.items():
        table[int(value)] = classes.get(name, 0)
    return table


def apply_lookup(array: np.ndarray, table: np.ndarray, where: str) -> np.ndarray:
    """``table[array]`` with a clear error for values the table does not cover (uint8 result)."""
    arr = np.asarray(array)
    if arr.size and int(arr.max()) >= table.size:
        raise InvalidImageError(f"{where} holds label value {int(arr.max())}, which has no class name",
                                "name every label value (--labels V=NAME,...)")
    return table[arr].astype(np.uint8)


def spatial_dims_of(dimensions: str) -> int:
    """2 for "2d"/"2.5d", 3 for "3d"."""
    return 3 if dimensions == "3d" else 2


def prepare_case(case: LabelledCase, input_spec: Mapping[str, Any], dimensions: str, classes: Mapping[str, int],
                 *, only_labelled: bool = True) -> list[Sample]:
    """Turn a labelled case into samples for a model with ``input_spec`` (a card's ``input``) and ``dimensions``.

    Args:
        case: image + label map + names (names must be known: from the file or the caller).
        input_spec: ``spacing_mm`` (None: the image's own), normalisation/window, ``channels``, ``context_slices``.
        dimensions: ``"2d"``, ``"2.5d"`` or ``"3d"``.
        classes: model class name -> label value; data classes must be among them.
        only_labelled: 2D/2.5D: keep only slices holding a label (all slices otherwise).

    Returns:
        2D/2.5D: one :class:`Sample` per kept slice, image ``(2c+1, J', I')``; 3D: one sample ``(1, K', J', I')``.
    """
    from ..engine import normalise

    if not case.labels:
        raise MSKSegError(f"case '{case.case}': the label values have no class names",
                          "name them with --labels 1=skeletal_muscle,2=... or use a model card (--model) whose "
                          "classes they are, or label files that carry names (.seg.nrrd, DICOM-SEG)")
    table = class_lookup(case.labels, classes, f"case '{case.case}'")
    label = apply_lookup(case.labelmap.array, table, f"case '{case.case}'")
    image = case.image
    target = input_spec.get("spacing_mm")
    channels = int(input_spec.get("channels", 1))
    if dimensions == "3d":
        if image.ndim != 3:
            raise InvalidImageError(f"case '{case.case}' is a 2D image; a 3d model needs volumes")
        arr = np.asarray(image.array, np.float32)
        if target:
            arr = resample_array(arr, image.spacing, target, is_label=False)
            label = resample_array(label, image.spacing, target, is_label=True)
        norm = normalise(arr, input_spec)[None]
        if channels > 1:
            norm = np.repeat(norm, channels, axis=0)
        return [Sample(norm.astype(np.float16), label.astype(np.uint8), case.case, None)]
    context = int(input_spec.get("context_slices", 0))
    if channels != 2 * context + 1 and not (dimensions == "2d" and channels >= 1 and context == 0):
        raise MSKSegError(f"input.channels {channels} does not fit context_slices {context}")
    volume = np.asarray(image.array, np.float32)
    labels3 = label
    if image.ndim == 2:
        volume, labels3 = volume[None], label[None]
    in_plane = image.spacing[:2]
    target_ij = tuple(target[:2]) if target else in_plane
    if only_labelled:
        keep = np.flatnonzero(labels3.reshape(labels3.shape[0], -1).any(axis=1)).tolist()
    else:
        keep = list(range(volume.shape[0]))
    offsets = list(range(-context, context + 1)) if context else [0] * channels
    resampled: dict[int, np.ndarray] = {}
    samples = []
    last = volume.shape[0] - 1
    for k in keep:
        chans = []
        for o in offsets:
            kk = min(max(k + o, 0), last)
            if kk not in resampled:
                resampled[kk] = normalise(resample_array(volume[kk], in_plane, target_ij, is_label=False), input_spec)
            chans.append(resampled[kk])
        lab = resample_array(labels3[k], in_plane, target_ij, is_label=True)
        samples.append(Sample(np.stack(chans).astype(np.float16), lab.astype(np.uint8), case.case, int(k)))
    return samples


# ============================================================================================== splits
def kfold_split(cases: Sequence[str], folds: int, fold: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, validation)`` case names of fold ``fold`` of ``folds`` (cases shuffled with ``seed``).

    Over ``fold = 0 .. folds-1`` the validation sets are disjoint and together hold every case exactly once;
    fold sizes differ by at most one. Splitting is by case, never by slice, so no patient is on both sides.

    Raises:
        MSKSegError: ``folds < 2``, ``fold`` outside ``0..folds-1``, or fewer cases than folds.
    """
    names = sorted(dict.fromkeys(cases))
    if folds < 2:
        raise MSKSegError(f"folds must be >= 2 for cross-validation (got {folds})")
    if not 0 <= fold < folds:
        raise MSKSegError(f"fold {fold} is outside 0..{folds - 1}", f"choose a fold from 0 to {folds - 1}")
    if len(names) < folds:
        raise MSKSegError(f"{len(names)} cases cannot be split into {folds} folds", "use fewer folds")
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    validation = shuffled[fold::folds]
    held = set(validation)
    return [n for n in shuffled if n not in held], validation


def holdout_split(cases: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, validation)``: ``round(fraction * n)`` cases (at least 1 when n >= 2 and fraction > 0) held out."""
    names = sorted(dict.fromkeys(cases))
    n_val = int(round(fraction * len(names)))
    if fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    else:
        n_val = 0
    order = np.random.default_rng(seed).permutation(len(names))
    validation = {names[i] for i in order[:n_val]}
    return [n for n in names if n not in validation], sorted(validation)


# ============================================================================================== synthetic
class SampleSource(Protocol):
    """A synthetic data generator: ``source(index) -> (image, label)``, deterministic in ``index``.

    ``image``: ``(C, J, I)`` or ``(J, I)`` float32 (3D models: ``(C, K, J, I)`` or ``(K, J, I)``) in raw units
    (HU for CT) at the card's ``input.spacing_mm``; normalisation is applied by the trainer.
    ``label``: ``(J, I)`` (or ``(K, J, I)``) integer label map on the same grid.
    Optional attributes: ``labels`` (label value -> class name) and ``version`` (generator version string).
    """

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


#: ``factory(input_spec, seed) -> SampleSource``: builds a source for a card's ``input`` and a seed.
SourceFactory = Callable[[Mapping[str, Any], int], SampleSource]


@dataclass(frozen=True)
class SyntheticSourceInfo:
    """A registered synthetic generator."""

    name: str
    factory: SourceFactory
    labels: Labels | None = None
    version: str | None = None
    description: str = ""


_SOURCES: dict[str, SyntheticSourceInfo] = {}


def register_synthetic_source(name: str, factory: SourceFactory, *, labels: Labels | None = None,
                              version: str | None = None, description: str = "") -> None:
    """Make ``name`` usable as ``mskseg train --synthetic NAME``.

    Args:
        name: the generator's name (lower case, e.g. ``"l3-phantom"``).
        factory: ``factory(input_spec, seed)`` returning a :class:`SampleSource`; sample ``i`` must depend only
            on ``(seed, i)`` (e.g. ``np.random.default_rng([seed, i])``), which makes runs reproducible and lets
            the trainer hold out indices for validation.
        labels: label value -> class name of the source's label maps (else the source's ``labels`` attribute).
        version: generator version written into model cards (else the source's ``version`` attribute).
        description: one line for listings.
    """
    _SOURCES[name] = SyntheticSourceInfo(name, factory, dict(labels) if labels else None, version, description)


def _register_builtin_sources() -> None:
    if "l3-phantom" in _SOURCES:
        return
    try:
        from ..synth import phantom  # noqa: F401
    except ImportError:
        return
    register_synthetic_source("l3-phantom", _PhantomSource, version=_phantom_version(),
                              description="procedural axial L3 CT phantoms (mskseg.synth.phantom.make_l3_phantom)")
    from ..synth.bodycomp_source import GENERATOR_VERSION, BodycompGroupsSource, BodycompMixSource

    register_synthetic_source("bodycomp-mix", BodycompMixSource, version=GENERATOR_VERSION,
                              description="T12-L5 slices of real anatomy label maps with the body layers added, "
                                          "mixed with L3 phantoms (mskseg.synth.bodycomp_source)")
    register_synthetic_source("bodycomp-groups", BodycompGroupsSource, version=GENERATOR_VERSION,
                              description="the bodycomp-mix slices labelled with the muscle groups (psoas, "
                                          "paraspinal, abdominal wall)")


def _phantom_version() -> str:
    from .. import __version__, synth
    from ..synth import phantom

    for module in (phantom, synth):
        for attr in ("GENERATOR_VERSION", "__version__", "VERSION"):
            value = getattr(module, attr, None)
            if value:
                return str(value)
    return f"mskseg {__version__}"


class _PhantomSource:
    """``l3-phantom``: :func:`mskseg.synth.phantom.make_l3_phantom` resampled to the card's spacing."""

    def __init__(self, input_spec: Mapping[str, Any], seed: int):
        self.input_spec = dict(input_spec)
        self.seed = int(seed)
        self.version = _phantom_version()
        self._labels: Labels | None = None

    def _sample(self, index: int) -> Any:
        from ..synth.phantom import make_l3_phantom

        return make_l3_phantom(np.random.default_rng([self.seed, int(index)]))

    @property
    def labels(self) -> Labels:
        """Label value -> class name of the phantom's tissue map (read from one sample)."""
        if self._labels is None:
            raw = dict(self._sample(0).tissue_labels)
            if raw and isinstance(next(iter(raw)), str):
                raw = {int(v): k for k, v in raw.items()}
            self._labels = {int(k): str(v) for k, v in raw.items() if int(k) != 0}
        return self._labels

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self._sample(index)
        image: Image = sample.image
        arr = np.asarray(image.array, np.float32)
        tissue = np.asarray(sample.tissue)
        target = self.input_spec.get("spacing_mm")
        if target:
            arr = resample_array(arr, image.spacing, target[:2], is_label=False)
            tissue = resample_array(tissue, image.spacing, target[:2], is_label=True)
        return arr, tissue


#: Synthetic sample indices from here on are held out for validation and never drawn for training.
HELD_OUT_INDEX = 1_000_000_000


def synthetic_sources() -> dict[str, SyntheticSourceInfo]:
    """All registered synthetic generators by name (built-in ones registered on first call)."""
    _register_builtin_sources()
    return dict(_SOURCES)


def get_synthetic_source(name: str) -> SyntheticSourceInfo:
    """The generator registered as ``name``.

    Raises:
        MSKSegError: unknown name (the registered names are listed).
    """
    sources = synthetic_sources()
    if name not in sources:
        hint = f"registered: {', '.join(sorted(sources)) or 'none'}"
        if name == "l3-phantom":
            hint += " (l3-phantom needs the module mskseg.synth.phantom)"
        raise MSKSegError(f"synthetic data generator '{name}' is not registered", hint)
    return sources[name]


@dataclass
class SyntheticData:
    """A built synthetic source with what the card needs to say about it."""

    name: str
    source: SampleSource
    labels: Labels
    version: str | None


def build_synthetic(name: str, input_spec: Mapping[str, Any], seed: int) -> SyntheticData:
    """Build generator ``name`` for ``input_spec`` and ``seed``; resolve its labels and version.

    Raises:
        MSKSegError: unknown generator, or a generator that names no classes.
    """
    info = get_synthetic_source(name)
    source = info.factory(dict(input_spec), int(seed))
    labels = info.labels or getattr(source, "labels", None)
    if not labels:
        raise MSKSegError(f"synthetic generator '{name}' does not say which classes its labels are",
                          "register it with labels={1: 'skeletal_muscle', ...} or give the source a 'labels' "
                          "attribute")
    version = info.version or getattr(source, "version", None)
    return SyntheticData(name, source, {int(k): str(v) for k, v in dict(labels).items()},
                         str(version) if version else None)


def synthetic_sample(data: SyntheticData, index: int, input_spec: Mapping[str, Any], spatial_dims: int,
                     lookup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of a synthetic source, normalised, with ``channels`` channels and model label values.

    Returns:
        ``(image (C, *spatial) float32, label (*spatial) uint8)``.
    """
    from ..engine import normalise

    image, label = data.source(int(index))
    image = np.asarray(image, np.float32)
    if image.ndim == spatial_dims:
        image = image[None]
    if image.ndim != spatial_dims + 1:
        raise MSKSegError(f"synthetic generator '{data.name}' returned an image of shape {image.shape}; a "
                          f"{spatial_dims}D model needs (C, {'K, ' if spatial_dims == 3 else ''}J, I)")
    channels = int(input_spec.get("channels", 1))
    if image.shape[0] == 1 and channels > 1:
        image = np.repeat(image, channels, axis=0)
    if image.shape[0] != channels:
        raise MSKSegError(f"synthetic generator '{data.name}' returned {image.shape[0]} channels; the model takes "
                          f"{channels}")
    label = apply_lookup(np.asarray(label), lookup, f"synthetic generator '{data.name}'")
    if label.shape != image.shape[1:]:
        raise MSKSegError(f"synthetic generator '{data.name}' returned label shape {label.shape} for image shape "
                          f"{image.shape[1:]}")
    return normalise(image, input_spec), label
