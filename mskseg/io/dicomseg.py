"""DICOM Segmentation (DICOM-SEG) export and import of label maps, on the grid of a CT read from DICOM.

A DICOM-SEG object is what PACS, OHIF, 3D Slicer (QuantitativeReporting) and dcmqi exchange: one segment
per class, each described by SNOMED CT codes (:mod:`mskseg.terminology`), with frames that reference the
source CT slices. Writing uses highdicom; reading uses pydicom.

Choices made here, and why:

* **BINARY is the default segmentation type.** One bit-packed frame per (segment, slice) that holds any of
  the segment. dciodvfy reports no errors on these files and dcmqi, Slicer and OHIF read them. LABELMAP
  (one frame per slice, DICOM Supplement 243) is available for viewers that ask for it, but dciodvfy does not
  know that SOP class yet and reports errors on such files (unknown IOD; segment 0 "Background" breaks its
  numbering rule), and older DICOM readers reject them. dcmqi 1.5.7 reads them as one merged label volume.
* **Empty frames are omitted** (highdicom's ``omit_empty_frames``), which keeps files small and writing fast.
* **A class named in ``labels`` but absent from the label map is kept as a segment with no frames.** The
  segment's description (name, codes, colour) is still in the Segment Sequence, so a reader sees that the
  class was looked for and not found. dciodvfy accepts this; dcmqi writes an all-zero volume for it; our
  reader returns its label name with no voxels.
* **Segment numbers are 1..N** in the order of increasing label value (DICOM requires consecutive numbers from
  1), so label values ``{1, 5}`` come back from :func:`read_dicom_seg` as ``{1, 2}`` with the same names.
* **Frames are placed by their position in the patient** (ImagePositionPatient against the image grid), never
  by their order in the file, so a series whose k axis runs against the slice positions maps back exactly.
* **A source series without a Frame of Reference UID gets one for the SEG**, with a :class:`DicomSegWarning`.
  Anonymisers sometimes remove (0020,0052); the Segmentation IOD requires the Frame of Reference module
  (FrameOfReferenceUID is Type 1) because its frames are placed in patient coordinates. The new UID is derived
  from the source's SOP Instance UIDs, so every export of one series names the same frame, and is written
  only into the SEG (the source files are never changed). It does not match any UID of the source series: a
  viewer finds the CT through the SEG's references to the source instances (Referenced Series Sequence and
  each frame's Source Image Sequence), not through the Frame of Reference.
* **Overlapping segments are an error on reading** (:class:`~mskseg.errors.InvalidImageError`): a label map
  holds one class per voxel, and silently giving a voxel to one of two classes would change volumes and areas
  without telling anyone. Pass ``overlap="later_wins"`` to accept the loss knowingly (the segment with the
  higher segment number keeps the voxel).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import GeometryMismatchError, ImageReadError, InvalidImageError
from ..image import Image
from ..terminology import CLASSES, PRIVATE_SCHEME, get_class
from .common import Labels, check_labelmap, prepare_output

#: Segmentation types accepted by :func:`write_dicom_seg`.
SEGMENT_TYPES = ("BINARY", "LABELMAP")
#: Segment algorithm types DICOM allows (SegmentAlgorithmType).
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
#: Overlap rules accepted by :func:`read_dicom_seg`.
OVERLAP_RULES = ("error", "later_wins")

_SEG_SOP_CLASS_UIDS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "BINARY/FRACTIONAL",
    "1.2.840.10008.5.1.4.1.1.66.7": "LABELMAP",
}


class DicomSegWarning(UserWarning):
    """Something about the DICOM-SEG that the user should know, though the file was written (e.g. a Frame of
    Reference UID made for a source series that had none)."""


# Position tolerance, as a fraction of the voxel size, for placing a frame on a grid slice.
_POSITION_TOLERANCE = 0.05
_DIRECTION_TOLERANCE = 1e-3


# ====================================================================================================== write
def write_dicom_seg(
    path: str | Path,
    labelmap: Image,
    labels: Labels,
    source: Image,
    *,
    overwrite: bool = False,
    segment_type: str = "BINARY",
    series_description: str = "MSKSeg segmentation",
    series_number: int | None = None,
    instance_number: int = 1,
    algorithm_name: str = "MSKSeg",
    algorithm_version: str = __version__,
    algorithm_type: str = "AUTOMATIC",
    manufacturer: str = "MSKSeg",
    manufacturer_model_name: str = "MSKSeg",
    software_versions: str = __version__,
    device_serial_number: str = "0",
    content_label: str = "SEGMENTATION",
    content_description: str | None = None,
) -> Path:
    """Write a label map as a DICOM-SEG object that references the DICOM slices of ``source``.

    Args:
        path: output file (conventionally ``*.dcm``).
        labelmap: integer label map, array shape ``(K, J, I)`` (or ``(J, I)`` for a 2D source), on exactly the
            grid of ``source``.
        labels: label value -> class name (a key of :data:`mskseg.terminology.CLASSES` or a user's own name).
            Every value in the map must be named; a named value absent from the map becomes an empty segment.
        source: the image the map was made on, read from DICOM: ``source.metadata["source_files"][k]`` is the
            file of slice ``k`` of ``source.array``.
        overwrite: replace an existing ``path``.
        segment_type: ``"BINARY"`` (default; one bit-packed frame per non-empty segment and slice) or
            ``"LABELMAP"`` (one frame per slice holding segment numbers). LABELMAP needs a recent viewer and
            fails dciodvfy validation (unknown IOD), so export BINARY for exchange.
        series_description, series_number, instance_number: of the new series. ``series_number`` defaults to
            the source's SeriesNumber + 1000 (or 1000).
        algorithm_name, algorithm_version, algorithm_type: written into each segment's
            SegmentAlgorithmType and SegmentationAlgorithmIdentificationSequence (``algorithm_type`` is one of
            ``AUTOMATIC``, ``SEMIAUTOMATIC``, ``MANUAL``; the algorithm is written for the first two only).
        manufacturer, manufacturer_model_name, software_versions, device_serial_number: the equipment that
            made the segmentation (General Equipment / Enhanced General Equipment modules).
        content_label, content_description: Content Identification (ContentLabel must be a DICOM CS value:
            upper case, digits, space or underscore, at most 16 characters).

    Returns:
        The path written.

    Raises:
        InvalidImageError: ``source`` was not read from DICOM, its files do not match its slices, the label
            map is not a valid label map, or an option has a value DICOM does not allow.
        GeometryMismatchError: the label map is not on the source grid.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    segment_type, algorithm_type = _check_write_options(labels, segment_type, algorithm_type)
    source_files = _source_files(source)
    voxels = check_labelmap(labelmap, labels, source)
    source_datasets = _read_source_datasets(source_files, source)
    path = prepare_output(path, overwrite)

    # DICOM wants segment numbers 1..N: number the named label values in increasing order.
    label_values = sorted(int(v) for v in labels)
    frames = _segment_number_frames(voxels, label_values)
    descriptions = _segment_descriptions(labels, label_values, algorithm_type, algorithm_name, algorithm_version)
    if series_number is None:
        series_number = int(source_datasets[0].get("SeriesNumber") or 0) + 1000
    seg = _build_segmentation(
        source_datasets, frames, descriptions,
        segmentation_type=segment_type,
        series_number=series_number,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=software_versions,
        device_serial_number=device_serial_number,
        content_label=content_label,
        content_description=content_description,
    )
    seg.SeriesDescription = series_description
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = ""  # type 2: present, empty for an automatic result (dcmqi expects it)
    _save_dataset(seg, path)
    return path


def _check_write_options(labels: Labels, segment_type: str, algorithm_type: str) -> tuple[str, str]:
    """``(segment_type, algorithm_type)`` in upper case, or an error for an unknown one or empty ``labels``."""
    segment_type = str(segment_type).upper()
    if segment_type not in SEGMENT_TYPES:
        raise InvalidImageError(f"segment_type {segment_type!r} is not one of {', '.join(SEGMENT_TYPES)}")
    algorithm_type = str(algorithm_type).upper()
    if algorithm_type not in ALGORITHM_TYPES:
        raise InvalidImageError(f"algorithm_type {algorithm_type!r} is not one of {', '.join(ALGORITHM_TYPES)}")

    if not labels:
        raise InvalidImageError(
            "labels is empty: a DICOM-SEG needs at least one named segment",
            "name the label values, e.g. {1: 'skeletal_muscle'}",
        )
    return segment_type, algorithm_type


def _segment_number_frames(voxels: np.ndarray, label_values: list[int]) -> np.ndarray:
    """The label map as frames ``(K, J, I)`` of segment numbers: ``label_values[n - 1]`` becomes ``n``."""
    frames = voxels if voxels.ndim == 3 else voxels[None]
    if label_values != list(range(1, len(label_values) + 1)):
        lookup = np.zeros(int(max([int(frames.max()), *label_values])) + 1, dtype=np.uint16)
        for number, value in enumerate(label_values, start=1):
            lookup[value] = number
        frames = lookup[frames]
    return frames.astype(np.uint8 if len(label_values) < 256 else np.uint16, copy=False)


def _segment_descriptions(labels: Labels, label_values: list[int], algorithm_type: str, algorithm_name: str,
                          algorithm_version: str) -> list:
    """One highdicom SegmentDescription per label value, numbered 1..N; the algorithm unless MANUAL."""
    import highdicom as hd

    algorithm = None
    if algorithm_type != "MANUAL":
        from pydicom.sr.codedict import codes

        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
        )
    return [
        _segment_description(number, labels[value], algorithm_type, algorithm)
        for number, value in enumerate(label_values, start=1)
    ]


def _build_segmentation(source_datasets: list, frames: np.ndarray, descriptions: list, *, segmentation_type: str,
                        series_number: Any, instance_number: Any, **equipment: Any):
    """The highdicom Segmentation with new series and instance UIDs; empty frames are left out.

    ``equipment``: manufacturer, manufacturer_model_name, software_versions, device_serial_number,
    content_label and content_description, passed to highdicom as they are.

    Raises:
        InvalidImageError: highdicom refuses a value (it names the attribute).
    """
    import highdicom as hd

    with warnings.catch_warnings():
        # highdicom warns about source attribute values it copies as they are (e.g. single-component
        # PatientName); the copied values are the source's, not ours to change.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return hd.seg.Segmentation(
                source_images=source_datasets,
                pixel_array=frames,
                segmentation_type=segmentation_type,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=int(series_number),
                sop_instance_uid=hd.UID(),
                instance_number=int(instance_number),
                omit_empty_frames=True,
                **equipment,
            )
        except (ValueError, AttributeError) as exc:
            # highdicom names the offending attribute (a value DICOM does not allow, or one the source lacks).
            raise InvalidImageError(
                f"the DICOM-SEG could not be built: {exc}",
                "check the option values (content_label: upper case, digits, '_' and space, 16 characters at "
                "most) and that the source series is a complete single-frame CT/MR series",
            ) from exc


def _save_dataset(dataset, path: Path) -> None:
    """Write a DICOM Part 10 file (preamble and file meta), with pydicom 3 or pydicom 2."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x spelling
        dataset.save_as(path, write_like_original=False)


def _source_files(source: Image) -> list[str]:
    files = source.metadata.get("source_files")
    hint = "DICOM-SEG needs a CT read from DICOM; export .seg.nrrd instead"
    if not files:
        raise InvalidImageError(
            "the source image was not read from DICOM (it has no source_files), so a DICOM-SEG cannot reference "
            "its slices",
            hint,
        )
    files = [str(f) for f in files]
    slices = source.array.shape[0] if source.ndim == 3 else 1
    if len(files) != slices:
        raise InvalidImageError(
            f"the source image has {slices} slices but {len(files)} source files; each slice needs its file",
            hint,
        )
    return files


def _read_source_datasets(files: list[str], source: Image) -> list:
    """Read the source slices' headers and check that file k really is slice k of ``source``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets = []
    for k, file in enumerate(files):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise InvalidImageError(
                f"source file {file} (slice {k}) cannot be read as DICOM: {exc}",
                "DICOM-SEG needs the CT's DICOM files where they were read from",
            ) from exc
        # An empty SpecificCharacterSet (seen in real data) means the default repertoire; highdicom rejects ''.
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        # Some anonymisers blank SOPClassUID / SOPInstanceUID in the dataset but keep them in the file meta
        # header (seen in real data); the referenced-image sequence needs them.
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise InvalidImageError(
                f"source file {file} is a multi-frame image; MSKSeg writes DICOM-SEG for single-frame series",
                "export .seg.nrrd instead",
            )
        rows, columns = source.array.shape[-2:]
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise InvalidImageError(
                f"source file {file} has {ds.Rows}x{ds.Columns} pixels but the image slices are {rows}x{columns}"
            )
        datasets.append(ds)

    if source.ndim == 3 and all("ImagePositionPatient" in ds for ds in datasets):
        expected = source.index_to_physical(np.array([[0.0, 0.0, float(k)] for k in range(len(files))]))
        actual = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        tolerance = _POSITION_TOLERANCE * max(source.spacing)
        wrong = np.flatnonzero(np.linalg.norm(actual - expected, axis=1) > tolerance)
        if wrong.size:
            k = int(wrong[0])
            raise InvalidImageError(
                f"source_files[{k}] ({files[k]}) lies at {np.round(actual[k], 3).tolist()} mm but slice {k} of the "
                f"image is at {np.round(expected[k], 3).tolist()} mm; source_files must list the files in slice order",
                "read the series with mskseg.io.read_image, which records the files in slice order",
            )
    if source.ndim == 3 and "ImageOrientationPatient" in datasets[0]:
        orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient]).reshape(2, 3)
        if not np.allclose(orientation, source.direction[:, :2].T, atol=_DIRECTION_TOLERANCE):
            raise InvalidImageError(
                "the source files' ImageOrientationPatient does not match the image's row/column directions",
                "read the series with mskseg.io.read_image so that the image keeps the DICOM pixel layout",
            )
    _fill_blank_series_uids(datasets)
    _fill_missing_frame_of_reference(datasets, files)
    return datasets


def _fill_missing_frame_of_reference(datasets: list, files: list[str]) -> None:
    """Give the in-memory headers of a series without a FrameOfReferenceUID one derived from its SOP Instance
    UIDs, and warn (:class:`DicomSegWarning`); see the module docstring.

    Raises:
        InvalidImageError: only some slices of the series carry a FrameOfReferenceUID, or they carry several
            (the slices are not one frame of reference, so no single SEG can reference them all).
    """
    from pydicom.uid import generate_uid

    present = {str(ds.FrameOfReferenceUID) for ds in datasets if ds.get("FrameOfReferenceUID")}
    if len(present) > 1:
        raise InvalidImageError(
            f"the source slices name {len(present)} different Frames of Reference (FrameOfReferenceUID)",
            "a DICOM-SEG references one frame of reference: read one series at a time (--series UID)")
    if present and all(ds.get("FrameOfReferenceUID") for ds in datasets):
        return
    if present:
        missing = next(f for f, ds in zip(files, datasets) if not ds.get("FrameOfReferenceUID"))
        raise InvalidImageError(
            f"some source slices have a FrameOfReferenceUID and others (e.g. {missing}) have none",
            "the series is incomplete or mixed: read it again from the original files")
    instances = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    uid = generate_uid(entropy_srcs=["FrameOfReferenceUID", *instances])
    for ds in datasets:
        ds.FrameOfReferenceUID = uid
        if "PositionReferenceIndicator" not in ds:
            ds.PositionReferenceIndicator = ""  # type 2: unknown
    warnings.warn(
        f"the source series has no Frame of Reference UID (removed by anonymisation?): the DICOM-SEG names a new "
        f"one, {uid}, derived from the source instances; it references the CT by its instance UIDs",
        DicomSegWarning, stacklevel=3)


def _fill_blank_series_uids(datasets: list) -> None:
    """Give an anonymised series with blank Study/Series Instance UIDs stable stand-in UIDs.

    DICOM-SEG must name the study and series it belongs to (dciodvfy: "Empty attribute ... Type 1"). When
    the source blanked them, the same UIDs are derived from the slices' SOP Instance UIDs every time, so
    repeated exports of one series agree with each other. Nothing is written back to the source files.
    """
    from pydicom.uid import generate_uid

    instances = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if all(ds.get(key) for ds in datasets):
            continue
        uid = generate_uid(entropy_srcs=[key, *instances])
        for ds in datasets:
            if not ds.get(key):
                setattr(ds, key, uid)


def _segment_description(number: int, name: str, algorithm_type: str, algorithm):
    """A highdicom SegmentDescription for class ``name``: label, codes, modifier, colour, class key."""
    import highdicom as hd

    cls = get_class(name)
    known = name in CLASSES
    description = hd.seg.SegmentDescription(
        segment_number=number,
        # Known classes get the name a reader shows; a user's own class keeps its own name.
        segment_label=(cls.display_name if known else name)[:64],
        segmented_property_category=hd.sr.CodedConcept(cls.category[1], cls.category[0], cls.category[2]),
        segmented_property_type=hd.sr.CodedConcept(cls.type[1], cls.type[0], cls.type[2]),
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*cls.color),
    )
    if cls.type_modifier is not None:
        modifier = hd.sr.CodedConcept(cls.type_modifier[1], cls.type_modifier[0], cls.type_modifier[2])
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    # The class key travels in SegmentDescription so that read_dicom_seg maps the segment back exactly.
    description.SegmentDescription = name[:64]
    return description


# ====================================================================================================== read
def read_dicom_seg(path: str | Path, source: Image | None = None, *, overlap: str = "error") -> tuple[Image, Labels]:
    """Read a DICOM-SEG object (MSKSeg's or another tool's) as a label map.

    Frames are placed by their ImagePositionPatient, so the result maps onto the patient exactly whatever the
    order of the frames in the file.

    Args:
        path: a DICOM Segmentation file (BINARY, FRACTIONAL or LABELMAP).
        source: the image the segmentation belongs to. When given, the label map is returned on its grid
            (array shape = ``source.array.shape``) and every frame must lie on one of its slices. When None, the
            grid is the one the SEG describes: rows and columns as in the SEG, the k axis along the right-handed
            slice normal (as SimpleITK and dcmqi read DICOM), spanning the first to the last slice that has a
            frame (slices in between without frames are empty; the slice spacing is SpacingBetweenSlices, or
            the smallest distance between frames when the SEG does not state it).
        overlap: ``"error"`` (default) raises when segments overlap, since a label map cannot hold two classes
            in one voxel; ``"later_wins"`` gives such voxels to the segment with the higher number.

    Returns:
        ``(labelmap, labels)``: label map of dtype uint8 (uint16 beyond 255 segments), array shape ``(K, J, I)``
        with label value = segment number; ``labels`` maps every segment number, empty segments included, to a
        class name: the MSKSeg class when the segment was written by MSKSeg or its label or codes match a class
        of :mod:`mskseg.terminology`, otherwise the SegmentLabel.
        FRACTIONAL segments count a voxel when its value is at least half of MaximumFractionalValue.

    Raises:
        ImageReadError: ``path`` is missing or not a DICOM Segmentation.
        GeometryMismatchError: a frame does not lie on the source grid (other orientation, spacing or size).
        InvalidImageError: segments overlap (with ``overlap="error"``), or ``overlap`` is not a known rule.
    """
    if overlap not in OVERLAP_RULES:
        raise InvalidImageError(f"overlap rule {overlap!r} is not one of {', '.join(OVERLAP_RULES)}")
    path = Path(path)
    ds = _open_seg(path)

    # LABELMAP objects may describe the background as segment 0; a label map keeps 0 for background anyway.
    segments = [item for item in ds.SegmentSequence if int(item.SegmentNumber) != 0]
    if not segments:
        raise ImageReadError(f"{path} describes no segment other than the background")
    segment_numbers = [int(item.SegmentNumber) for item in segments]
    labels = {number: _class_name(item) for number, item in zip(segment_numbers, segments)}
    segmentation_type = str(ds.get("SegmentationType", "BINARY")).upper()
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns = int(ds.Rows), int(ds.Columns)
    dtype = np.uint8 if max(segment_numbers) < 256 else np.uint16

    if n_frames == 0 or "PixelData" not in ds:
        frame_pixels = np.zeros((0, rows, columns), np.uint8)
    else:
        frame_pixels = np.asarray(ds.pixel_array).reshape(n_frames, rows, columns)
    positions, orientation, pixel_spacing, slice_spacing = _frame_geometry(ds, n_frames)
    frame_segments = _frame_segment_numbers(ds, n_frames, segmentation_type)

    grid = source if source is not None else _grid_from_frames(ds, positions, orientation, pixel_spacing,
                                                               slice_spacing, rows, columns)
    slice_of_frame = _place_frames(path, grid, positions, orientation, pixel_spacing, rows, columns)
    out = np.zeros(grid.array.shape if grid.ndim == 3 else (1, *grid.array.shape), dtype=dtype)

    if segmentation_type == "FRACTIONAL":
        threshold = max(1, (int(ds.get("MaximumFractionalValue", 255)) + 1) // 2)
        frame_pixels = frame_pixels >= threshold
    _paint_segments(out, frame_pixels, frame_segments, n_frames, slice_of_frame, segment_numbers, labels,
                    segmentation_type, overlap, path)

    array = out if grid.ndim == 3 else out[0]
    return Image(array, grid.spacing, grid.origin, grid.direction.copy(), _seg_metadata(ds, path)), labels


def _open_seg(path: Path):
    """The DICOM Segmentation dataset at ``path``, with at least one item in its Segment Sequence.

    Raises:
        ImageReadError: ``path`` is missing, not DICOM, or not a Segmentation.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise ImageReadError(f"{path} does not exist or is not a file")
    try:
        ds = pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise ImageReadError(f"{path} is not a DICOM file: {exc}") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in _SEG_SOP_CLASS_UIDS and ds.get("Modality") != "SEG":
        raise ImageReadError(
            f"{path} is not a DICOM Segmentation (SOP class {sop_class or 'missing'}, modality "
            f"{ds.get('Modality', 'missing')})",
            "read images with mskseg.io.read_image; read_dicom_seg reads SEG objects only",
        )
    if "SegmentSequence" not in ds or not len(ds.SegmentSequence):
        raise ImageReadError(f"{path} has no Segment Sequence: there are no segments to read")
    return ds


def _paint_segments(out: np.ndarray, frame_pixels: np.ndarray, frame_segments: np.ndarray, n_frames: int,
                    slice_of_frame: np.ndarray, segment_numbers: list[int], labels: Labels, segmentation_type: str,
                    overlap: str, path: Path) -> None:
    """Write every segment's frames into the label map ``out`` ``(K, J, I)`` (in place), in increasing segment
    number, so that with ``overlap="later_wins"`` a shared voxel keeps the higher number.

    Raises:
        InvalidImageError: two segments share a voxel and ``overlap`` is ``"error"``.
    """
    for number in sorted(segment_numbers):
        if segmentation_type == "LABELMAP":
            selected = range(n_frames)
        else:
            selected = np.flatnonzero(frame_segments == number)
        for f in selected:
            mask = frame_pixels[f] == number if segmentation_type == "LABELMAP" else frame_pixels[f] != 0
            if not mask.any():
                continue
            target = out[slice_of_frame[f]]
            if segmentation_type != "LABELMAP" and overlap == "error":
                clash = target[mask]
                clash = clash[clash != 0]
                if clash.size:
                    raise InvalidImageError(
                        f"segments {int(clash[0])} ({labels[int(clash[0])]}) and {number} ({labels[number]}) of "
                        f"{path} overlap ({clash.size} voxels in slice {slice_of_frame[f]}); a label map holds "
                        "one class per voxel",
                        "read with overlap='later_wins' to give shared voxels to the later segment, or convert "
                        "the segments one by one (dcmqi segimage2itkimage writes one file per segment)",
                    )
            target[mask] = number


def _seg_metadata(ds, path: Path) -> dict[str, Any]:
    """The label map's metadata: where it was read from, the SEG's series, study and patient, the series it
    references."""
    metadata: dict[str, Any] = {"source_path": str(path), "Modality": "SEG"}
    for key in ("SeriesInstanceUID", "SeriesDescription", "StudyInstanceUID", "PatientID"):
        if key in ds:
            metadata[key] = str(ds.get(key))
    referenced = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]
    if referenced:
        metadata["ReferencedSeriesInstanceUIDs"] = referenced
    return metadata


def _class_name(item) -> str:
    """The MSKSeg class name of a Segment Sequence item, or its SegmentLabel when no class matches."""
    label = str(item.get("SegmentLabel", "") or "").strip()
    description = str(item.get("SegmentDescription", "") or "").strip()
    if description in CLASSES:
        return description
    if label in CLASSES:
        return label
    by_display = [name for name, c in CLASSES.items() if c.display_name.lower() == label.lower()]
    if len(by_display) == 1:
        return by_display[0]
    type_item = item.SegmentedPropertyTypeCodeSequence[0] if "SegmentedPropertyTypeCodeSequence" in item else None
    if type_item is not None:
        code = (str(type_item.CodingSchemeDesignator), str(type_item.CodeValue))
        modifier = None
        if "SegmentedPropertyTypeModifierCodeSequence" in type_item and len(
                type_item.SegmentedPropertyTypeModifierCodeSequence):
            m = type_item.SegmentedPropertyTypeModifierCodeSequence[0]
            modifier = (str(m.CodingSchemeDesignator), str(m.CodeValue))
        if code[0] != PRIVATE_SCHEME:
            matches = [
                name for name, c in CLASSES.items()
                if c.type[:2] == code and (c.type_modifier[:2] if c.type_modifier else None) == modifier
            ]
            if len(matches) == 1:
                return matches[0]
    return label or description or f"segment_{int(item.SegmentNumber)}"


def _frame_geometry(ds, n_frames: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float | None]:
    """Per-frame ImagePositionPatient ``(F, 3)``, orientation ``(2, 3)``, PixelSpacing and slice spacing."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))

    def functional(name: str, f: int):
        if per_frame and name in per_frame[f]:
            return per_frame[f][name][0]
        if shared is not None and name in shared:
            return shared[name][0]
        return None

    orientation_item = functional("PlaneOrientationSequence", 0)
    measures = functional("PixelMeasuresSequence", 0)
    if orientation_item is None or measures is None:
        raise ImageReadError(
            "the DICOM-SEG has no plane orientation or pixel measures; MSKSeg reads segmentations of "
            "cross-sectional images (CT, MR) only"
        )
    orientation = np.array([float(v) for v in orientation_item.ImageOrientationPatient]).reshape(2, 3)
    pixel_spacing = tuple(float(v) for v in measures.PixelSpacing)
    # SliceThickness is not the distance between slices (thick slices overlap), so only SpacingBetweenSlices.
    slice_spacing = float(measures.SpacingBetweenSlices) if measures.get("SpacingBetweenSlices") else None
    positions = np.zeros((n_frames, 3))
    for f in range(n_frames):
        item = functional("PlanePositionSequence", f)
        if item is None:
            raise ImageReadError(f"frame {f + 1} of the DICOM-SEG has no ImagePositionPatient")
        positions[f] = [float(v) for v in item.ImagePositionPatient]
    return positions, orientation, pixel_spacing, slice_spacing  # type: ignore[return-value]


def _frame_segment_numbers(ds, n_frames: int, segmentation_type: str) -> np.ndarray:
    """The segment number of each frame ``(F,)`` (0 for LABELMAP frames, which hold all segments)."""
    if segmentation_type == "LABELMAP":
        return np.zeros(n_frames, int)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    numbers = np.zeros(n_frames, int)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    for f in range(n_frames):
        group = per_frame[f] if per_frame and "SegmentIdentificationSequence" in per_frame[f] else shared
        if group is None or "SegmentIdentificationSequence" not in group:
            raise ImageReadError(f"frame {f + 1} of the DICOM-SEG does not say which segment it belongs to")
        numbers[f] = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    return numbers


def _grid_from_frames(ds, positions: np.ndarray, orientation: np.ndarray, pixel_spacing: tuple[float, float],
                      slice_spacing: float | None, rows: int, columns: int) -> Image:
    """The 3D grid the frames describe: i along rows' direction, j along columns', k along the slice normal."""
    row_direction, column_direction = orientation
    normal = np.cross(row_direction, column_direction)
    direction = np.stack([row_direction, column_direction, normal], axis=1)
    spacing_ij = (pixel_spacing[1], pixel_spacing[0])  # PixelSpacing is (between rows, between columns)
    if len(positions) == 0:
        origin = np.array([float(v) for v in ds.get("ImagePositionPatient", [0, 0, 0])])
        heights = np.array([0.0])
    else:
        heights = positions @ normal
        origin = positions[int(np.argmin(heights))]
    unique = np.unique(np.round(heights - heights.min(), 4))
    steps = np.diff(unique)
    # Slices without any segment have no frame, so the gaps between frames can be multiples of the spacing:
    # trust SpacingBetweenSlices when every gap is a whole multiple of it, else take the smallest gap.
    if slice_spacing and slice_spacing > 0 and np.allclose(steps / slice_spacing, np.rint(steps / slice_spacing),
                                                           atol=_POSITION_TOLERANCE):
        spacing_k = slice_spacing
    elif steps.size:
        spacing_k = float(steps.min())
    else:
        spacing_k = 1.0
    n_slices = int(round((unique.max() - unique.min()) / spacing_k)) + 1
    grid = Image(np.zeros((n_slices, rows, columns), np.uint8), (*spacing_ij, spacing_k), origin, direction)
    return grid


def _place_frames(path: Path, grid: Image, positions: np.ndarray, orientation: np.ndarray,
                  pixel_spacing: tuple[float, float], rows: int, columns: int) -> np.ndarray:
    """Slice index k of ``grid`` for each frame ``(F,)``; raises when a frame is not on a slice of the grid."""
    hint = ("the DICOM-SEG was made on another series or grid; read it without a source image, or with the "
            "image it references")
    if grid.ndim == 2:
        if len(np.unique(np.round(positions, 3), axis=0)) > 1:
            raise GeometryMismatchError(f"{path} has frames at several positions but the source image is 2D", hint)
        if grid.array.shape != (rows, columns):
            raise GeometryMismatchError(
                f"{path} has {rows}x{columns} frames but the source image is {grid.array.shape[0]}x"
                f"{grid.array.shape[1]}", hint)
        return np.zeros(len(positions), int)
    if grid.array.shape[1:] != (rows, columns):
        raise GeometryMismatchError(
            f"{path} has {rows}x{columns} frames but the source slices are {grid.array.shape[1]}x"
            f"{grid.array.shape[2]} (rows x columns)", hint)
    if not np.allclose(orientation, grid.direction[:, :2].T, atol=_DIRECTION_TOLERANCE):
        raise GeometryMismatchError(
            f"{path} frames have orientation {np.round(orientation.ravel(), 4).tolist()} but the source slices "
            f"have {np.round(grid.direction[:, :2].T.ravel(), 4).tolist()}", hint)
    if not np.allclose((pixel_spacing[1], pixel_spacing[0]), grid.spacing[:2], rtol=1e-3, atol=1e-4):
        raise GeometryMismatchError(
            f"{path} has pixel spacing {pixel_spacing} mm (rows, columns) but the source has "
            f"{(grid.spacing[1], grid.spacing[0])} mm", hint)
    index = grid.physical_to_index(positions) if len(positions) else np.zeros((0, 3))
    k = np.rint(index[:, 2]).astype(int)
    off_grid = (
        (np.abs(index[:, 0]) > _POSITION_TOLERANCE) | (np.abs(index[:, 1]) > _POSITION_TOLERANCE)
        | (np.abs(index[:, 2] - k) > _POSITION_TOLERANCE) | (k < 0) | (k >= grid.array.shape[0])
    )
    if off_grid.any():
        f = int(np.flatnonzero(off_grid)[0])
        raise GeometryMismatchError(
            f"frame {f + 1} of {path} lies at {np.round(positions[f], 3).tolist()} mm, which is not on a slice of "
            f"the source grid (continuous index {np.round(index[f], 3).tolist()})", hint)
    return k
