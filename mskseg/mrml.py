"""The one place where MSKSeg speaks MRML: images, label maps and metrics into and out of a Slicer scene.

Everything here takes the scene as an argument (in 3D Slicer callers pass ``slicer.mrmlScene``), so the same
code runs inside Slicer and headless under the pip package ``slicer-core``, where the tests exercise it.

Conversions, all without loss of geometry:

* :func:`image_to_volume_node` / :func:`volume_node_to_image`: :class:`~mskseg.image.Image` (LPS) <->
  ``vtkMRMLScalarVolumeNode`` (IJK to RAS matrix). A 2D image becomes a single-slice volume and comes back 2D.
* :func:`labelmap_to_segmentation_node` / :func:`segmentation_node_to_labelmap`: label map + ``labels``
  <-> ``vtkMRMLSegmentationNode`` whose segments carry name, colour and terminology of each class, and the
  class name and label value as tags, so that the segments the user corrected in the Segment Editor come
  back as the same classes with the same label values.
* :func:`metrics_to_table_node` / :func:`table_node_to_rows`: measurement rows <-> ``vtkMRMLTableNode``
  with units and descriptions per column.
* :func:`load_segmentation_file` / :func:`save_segmentation_node`: ``.seg.nrrd`` through Slicer's own
  ``vtkMRMLSegmentationStorageNode``.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping

import numpy as np

try:
    import slicer
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import VTK_DOUBLE, VTK_FLOAT, reference, vtkDoubleArray, vtkIntArray, vtkStringArray
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mskseg.mrml needs Slicer's MRML libraries: run it inside 3D Slicer, or install the pip package "
        "'slicer-core' for headless use"
    ) from exc

from .errors import ImageReadError, InvalidImageError, MSKSegError
from .image import DICOM_METADATA_KEYS, LPS_TO_RAS, Image
from .io.common import Labels, check_labelmap, prepare_output, to_jsonable
from .terminology import get_class, slicer_terminology_entry

#: Segment tag holding the MSKSeg class name (key of ``terminology.CLASSES`` or a user name).
CLASS_NAME_TAG = "MSKSeg.ClassName"
#: Segment tag holding the label value the segment had in the label map it came from.
LABEL_VALUE_TAG = "MSKSeg.LabelValue"
#: Volume node attribute set to ``"2"`` when the node holds a 2D image as a single slice.
IMAGE_DIMENSION_ATTRIBUTE = "MSKSeg.ImageDimension"
#: Prefix of volume node attributes that keep ``Image.metadata`` entries (JSON-encoded values).
METADATA_ATTRIBUTE_PREFIX = "MSKSeg.Metadata."

# Image.metadata entries kept on volume nodes: the DICOM attributes and the per-slice source files.
_KEPT_METADATA_KEYS = (*DICOM_METADATA_KEYS, "source_files")
_MAX_SEGMENT_LABEL_VALUE = 32767  # merged label maps from Slicer are signed short


# --------------------------------------------------------------------------------------------- volumes
def image_to_volume_node(
    image: Image, scene: slicer.vtkMRMLScene, name: str = "Volume"
) -> slicer.vtkMRMLScalarVolumeNode:
    """Add ``image`` to ``scene`` as a new ``vtkMRMLScalarVolumeNode`` (voxels copied, geometry kept).

    The node's IJK to RAS matrix is ``image.ijk_to_ras()``. A 2D image ``(J, I)`` becomes a single-slice
    volume ``(1, J, I)`` and is marked so that :func:`volume_node_to_image` gives it back as 2D. DICOM
    attributes of ``image.metadata`` (``DICOM_METADATA_KEYS``) and ``source_files`` are kept as node
    attributes, so that the round trip keeps them.

    Args:
        image: voxels ``(K, J, I)`` or ``(J, I)``, any numeric dtype (bool is stored as uint8, float16 as float32).
        scene: the MRML scene (``slicer.mrmlScene`` inside Slicer).
        name: node name shown to the user.

    Returns:
        The new ``vtkMRMLScalarVolumeNode``, with default display nodes.
    """
    array = _vtk_compatible(np.asarray(image.array))
    if image.ndim == 2:
        array = array[np.newaxis]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(_vtk_matrix(image.ijk_to_ras()))
    node.SetAndObserveImageData(_vtk_image_from_array(array, vtkImageData))
    if image.ndim == 2:
        node.SetAttribute(IMAGE_DIMENSION_ATTRIBUTE, "2")
    for key in _KEPT_METADATA_KEYS:
        value = image.metadata.get(key)
        if value is None:
            continue
        try:
            node.SetAttribute(METADATA_ATTRIBUTE_PREFIX + key, json.dumps(to_jsonable(value)))
        except TypeError:  # a value JSON cannot hold (e.g. a pydicom object): not worth failing for
            continue
    node.CreateDefaultDisplayNodes()
    return node


def volume_node_to_image(node: slicer.vtkMRMLScalarVolumeNode, ndim: int | None = None) -> Image:
    """The :class:`Image` of a scalar (or label map) volume node: voxels copied, geometry in LPS.

    The geometry is the node's IJK to RAS matrix, with a linear parent transform applied (harden a
    non-linear one first). Metadata holds the DICOM attributes (``DICOM_METADATA_KEYS``) that can be found:
    those :func:`image_to_volume_node` kept, and, for volumes loaded by Slicer's DICOM module, those of the
    node's series, study and patient in the subject hierarchy; plus ``source_files`` when the DICOM database
    of a running Slicer knows the files. Without any of these, metadata is empty.

    Args:
        node: ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.
        ndim: 2 to get a single-slice volume as a 2D image ``(J, I)``, 3 for ``(K, J, I)``; by default 2 only
            for nodes that :func:`image_to_volume_node` made from a 2D image.

    Raises:
        InvalidImageError: the node has no voxels, several components per voxel, a non-linear transform, or
            ``ndim=2`` was asked for a volume of several slices.
    """
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InvalidImageError(
            f"volume node '{_node_name(node)}' holds no voxels",
            "load or compute the volume before using it",
        )
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InvalidImageError(
            f"volume node '{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per voxel; "
            "MSKSeg needs a scalar volume",
            "convert it to a scalar volume first (Slicer: Vector to Scalar Volume module)",
        )
    array = _array_from_vtk_image(image_data)
    if ndim is None:
        ndim = _default_ndim(node)
    if ndim not in (2, 3):
        raise InvalidImageError(f"ndim={ndim}: a volume node gives a 2D or a 3D image")
    metadata = _volume_node_metadata(node, n_slices=array.shape[0])
    geometry = _node_geometry(node, ndim, array.shape)
    if ndim == 2:
        array = array[0]
    return Image(np.array(array, copy=True), geometry.spacing, geometry.origin, geometry.direction, metadata)


# --------------------------------------------------------------------------------------------- node attributes
def node_name(node) -> str:
    """The node's name (``"(none)"`` for no node)."""
    return _node_name(node)


def node_id(node) -> str:
    """The node's ID in its scene (e.g. ``vtkMRMLTableNode1``)."""
    return str(node.GetID())


def set_attributes(node, values: Mapping[str, Any], prefix: str = "") -> None:
    """Keep ``values`` on ``node`` as string attributes ``prefix + key`` (saved with the scene)."""
    for key, value in values.items():
        node.SetAttribute(prefix + key, str(value))


def attributes(node, prefix: str) -> dict[str, str]:
    """The attributes of ``node`` whose name starts with ``prefix``, keyed by the rest of the name."""
    names = node.GetAttributeNames() or ()
    return {name[len(prefix):]: node.GetAttribute(name) for name in names if name.startswith(prefix)}


def segment_count(segmentation_node: slicer.vtkMRMLSegmentationNode | None) -> int:
    """Number of segments in ``segmentation_node`` (0 for no node)."""
    return 0 if segmentation_node is None else int(segmentation_node.GetSegmentation().GetNumberOfSegments())


# --------------------------------------------------------------------------------------------- segmentations
def new_segmentation_node_name(scene: slicer.vtkMRMLScene, base: str) -> str:
    """``base`` when no node of ``scene`` is called so, else ``"base (2)"``, ``"base (3)"``, ... (first free)."""
    taken = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    if base not in taken:
        return base
    n = 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


def labelmap_to_segmentation_node(
    labelmap: Image,
    labels: Labels,
    scene: slicer.vtkMRMLScene,
    reference_volume_node: slicer.vtkMRMLScalarVolumeNode | None = None,
    name: str = "Segmentation",
    segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
    replace: bool = False,
) -> slicer.vtkMRMLSegmentationNode:
    """Put a label map into a segmentation node: one segment per entry of ``labels``.

    Each segment has id = class name (made unique if a class appears twice), name = the class's display
    name, colour and ``TerminologyEntry`` tag from :mod:`mskseg.terminology`, and the tags
    ``MSKSeg.ClassName`` and ``MSKSeg.LabelValue`` that :func:`segmentation_node_to_labelmap` reads back.
    Classes named in ``labels`` but absent from the map get empty segments (the user can still paint them).
    The segments share one label map layer (no voxel is copied per class), as Slicer's own import does.

    With ``reference_volume_node`` the segmentation takes its geometry as reference geometry, refers to it
    (Segment Editor's source volume), and is placed beside it in the subject hierarchy (under its study,
    which DICOM-SEG export from Slicer needs).

    Args:
        labelmap: label values, shape ``(K, J, I)`` or ``(J, I)``, on the reference volume's grid.
        labels: label value -> class name; every non-zero value of the map must be named.
        scene: the MRML scene.
        reference_volume_node: the volume that was segmented (recommended).
        name: name of a new node; pass :func:`new_segmentation_node_name` to keep earlier results.
        segmentation_node: an existing node to fill instead of adding a new one.
        replace: allow replacing the segments of a non-empty ``segmentation_node``.

    Raises:
        MSKSegError: ``segmentation_node`` already holds segments and ``replace`` is False (they may have
            been corrected by hand: a re-run never overwrites them silently).
        InvalidImageError, GeometryMismatchError: unnamed label values, values out of range, or a label map
            that is not on the reference volume's grid.
    """
    if reference_volume_node is not None:
        reference = _geometry_image(reference_volume_node, labelmap.ndim)
        voxels = check_labelmap(labelmap, labels, reference)
    else:
        voxels = check_labelmap(labelmap, labels)
    too_large = [v for v in labels if int(v) > _MAX_SEGMENT_LABEL_VALUE]
    if too_large:
        raise InvalidImageError(
            f"label values {too_large} are above {_MAX_SEGMENT_LABEL_VALUE}, the largest a Slicer label map holds"
        )

    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        segments = segmentation_node.GetSegmentation().GetNumberOfSegments()
        if segments and not replace:
            raise MSKSegError(
                f"segmentation '{segmentation_node.GetName()}' already holds {segments} segments, which may have "
                "been corrected by hand; MSKSeg does not overwrite them",
                "write the result into a new segmentation node, or confirm replacing them (replace=True)",
            )
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()

    if voxels.ndim == 2:
        voxels = voxels[np.newaxis]
    shared_labelmap = _vtk_image_from_array(voxels, slicer.vtkOrientedImageData)
    shared_labelmap.SetImageToWorldMatrix(_vtk_matrix(labelmap.ijk_to_ras()))
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()

    was_modifying = segmentation_node.StartModify()
    try:
        segmentation = segmentation_node.GetSegmentation()
        segmentation.RemoveAllSegments()
        # SetSourceRepresentationName is Slicer >= 5.4's name of SetMasterRepresentationName.
        set_source = getattr(segmentation, "SetSourceRepresentationName", None) or \
            segmentation.SetMasterRepresentationName
        set_source(labelmap_name)
        if reference_volume_node is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
            segmentation_node.SetNodeReferenceID(
                segmentation_node.GetReferenceImageGeometryReferenceRole(), reference_volume_node.GetID()
            )
        else:
            segmentation.SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                slicer.vtkSegmentationConverter.SerializeImageGeometry(shared_labelmap),
            )
        for value in sorted(labels, key=int):
            class_name = labels[value]
            segment_class = get_class(class_name)
            segment = slicer.vtkSegment()
            segment.SetName(segment_class.display_name)
            segment.SetNameAutoGenerated(False)
            segment.SetColor(*segment_class.color_float)
            segment.SetColorAutoGenerated(False)
            segment.SetLabelValue(int(value))
            segment.AddRepresentation(labelmap_name, shared_labelmap)
            segment.SetTag(_terminology_tag_name(segment), slicer_terminology_entry(class_name))
            segment.SetTag(CLASS_NAME_TAG, class_name)
            segment.SetTag(LABEL_VALUE_TAG, str(int(value)))
            segment_id = class_name if segmentation.GetSegment(class_name) is None \
                else segmentation.GenerateUniqueSegmentID(class_name)
            if not segmentation.AddSegment(segment, segment_id):
                raise MSKSegError(f"Slicer refused to add segment '{segment_id}' to '{segmentation_node.GetName()}'")
    finally:
        segmentation_node.EndModify(was_modifying)

    if reference_volume_node is not None:
        _place_beside_in_subject_hierarchy(segmentation_node, reference_volume_node)
    return segmentation_node


def segmentation_node_to_labelmap(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    reference: Image | slicer.vtkMRMLScalarVolumeNode,
    segment_ids: list[str] | None = None,
) -> tuple[Image, Labels]:
    """Export the current segments (including the user's Segment Editor edits) as a label map on ``reference``.

    Label values: each segment keeps the value of its ``MSKSeg.LabelValue`` tag; segments without one (added
    by the user) or whose value an earlier segment already took get values above every tagged value of the
    segmentation (so they do not depend on which segments are exported). Class names: the
    ``MSKSeg.ClassName`` tag, else the segment name. Where segments overlap, the segment later in
    ``segment_ids`` (by default: later in the segment list) wins.

    Args:
        segmentation_node: the ``vtkMRMLSegmentationNode``.
        reference: the grid to export on, an :class:`Image` or a volume node. Segments are resampled onto it
            (nearest neighbour) where their own geometry differs.
        segment_ids: the segments to export, in painting order; default all.

    Returns:
        ``(labelmap, labels)``: uint8 (or uint16) label map on exactly ``reference``'s grid (shape
        ``(K, J, I)``, or ``(J, I)`` for a 2D reference), metadata copied from ``reference``; and label
        value -> class name for every exported segment, empty ones included.

    Raises:
        MSKSegError: a segment id is not in the segmentation.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None:
        segment_ids = list(segmentation.GetSegmentIDs())
    missing = [s for s in segment_ids if segmentation.GetSegment(s) is None]
    if missing:
        raise MSKSegError(
            f"segmentation '{segmentation_node.GetName()}' has no segment with id {missing}",
            f"choose among {list(segmentation.GetSegmentIDs())}",
        )
    if isinstance(reference, Image):
        reference_image = reference
        reference_node = _geometry_volume_node(reference)
    else:  # the reference volume's grid and metadata, without copying its voxels
        reference_image = _geometry_image(reference, _default_ndim(reference))
        reference_image.metadata = _volume_node_metadata(reference, reference.GetImageData().GetDimensions()[2])
        reference_node = reference

    values, labels = _segment_label_values(segmentation, segment_ids)
    shape = reference_image.array.shape if reference_image.ndim == 3 else (1, *reference_image.array.shape)
    merged = np.zeros(shape, np.int32)
    if segment_ids:
        ids = vtkStringArray()
        label_values = vtkIntArray()
        for segment_id, value in zip(segment_ids, values):
            ids.InsertNextValue(segment_id)
            label_values.InsertNextValue(value)
        exported = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
            segmentation_node, reference_node, ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, exported,
            label_values,
        )
        _paste_extent(merged, exported)
    dtype = np.uint8 if max(values, default=0) < 256 else np.uint16
    return reference_image.with_array(merged.reshape(reference_image.array.shape).astype(dtype)), labels


def load_segmentation_file(path: str | Path, scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLSegmentationNode:
    """Load a ``.seg.nrrd`` (or other file Slicer's segmentation storage reads) into a new segmentation node.

    Raises:
        ImageReadError: the file is missing or Slicer cannot read it as a segmentation.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"segmentation file {path} does not exist")
    name = path.name
    for suffix in (".seg.nrrd", ".nrrd", ".seg.vtm", ".vtm", ".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise ImageReadError(
            f"{path} could not be read as a segmentation",
            "check that it is a .seg.nrrd written by Slicer or MSKSeg (a plain label map loads as a volume)",
        )
    node.CreateDefaultDisplayNodes()
    return node


def save_segmentation_node(
    segmentation_node: slicer.vtkMRMLSegmentationNode, path: str | Path, overwrite: bool = False
) -> Path:
    """Write a segmentation node to ``path`` (``.seg.nrrd``) with Slicer's segmentation storage.

    The file keeps every segment's name, colour, tags (terminology, class name, label value) and the full
    reference extent (not cropped), so that it lies on the reference volume's grid. The node's own storage
    node (where Slicer would save it next) is left untouched.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        MSKSegError: ``path`` does not end in ``.nrrd``, or writing failed.
    """
    path = Path(path)
    if not path.name.lower().endswith(".nrrd"):
        raise MSKSegError(f"{path}: a segmentation is written as .seg.nrrd", "name the file <name>.seg.nrrd")
    path = prepare_output(path, overwrite)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetCropToMinimumExtent(False)
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentation_node):
        raise MSKSegError(f"could not write segmentation '{segmentation_node.GetName()}' to {path}")
    return path


# --------------------------------------------------------------------------------------------- tables
def metrics_to_table_node(
    rows: list[dict],
    scene: slicer.vtkMRMLScene,
    name: str = "Metrics",
    units: dict[str, str] | None = None,
    descriptions: dict[str, str] | None = None,
    table_node: slicer.vtkMRMLTableNode | None = None,
) -> slicer.vtkMRMLTableNode:
    """Show measurement rows as a ``vtkMRMLTableNode`` (Slicer's Segment Statistics column style).

    Columns come in the order of the first row's keys (keys that appear only in later rows follow, in order
    of appearance). A column whose values are all numbers (or missing) is a double column, missing values
    NaN; any other column is a string column, missing values empty.

    Args:
        rows: one dict per row, e.g. ``{"Segment": "Skeletal muscle", "area_cm2": 152.3}``.
        scene: the MRML scene.
        name: name of a new table node.
        units: column -> unit label (``"cm2"``, ``"HU"``), set with ``SetColumnUnitLabel``.
        descriptions: column -> description, set with ``SetColumnDescription``.
        table_node: an existing table node to refill (its columns are replaced) instead of adding one.

    Returns:
        The table node.
    """
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        for column in columns:
            values = [row.get(column) for row in rows]
            if all(v is None or _is_number(v) for v in values):
                array = vtkDoubleArray()
                for v in values:
                    array.InsertNextValue(math.nan if v is None else float(v))
            else:
                array = vtkStringArray()
                for v in values:
                    array.InsertNextValue("" if v is None else str(v))
            array.SetName(str(column))
            table_node.AddColumn(array)
        for column, unit in (units or {}).items():
            if column in columns:
                table_node.SetColumnUnitLabel(str(column), str(unit))
        for column, description in (descriptions or {}).items():
            if column in columns:
                table_node.SetColumnDescription(str(column), str(description))
    finally:
        table_node.EndModify(was_modifying)
    return table_node


def table_node_to_rows(table_node: slicer.vtkMRMLTableNode) -> list[dict]:
    """The rows of a table node as dicts (column name -> value), columns in table order.

    Double columns give floats (NaN, a missing value, gives None), integer columns ints, other columns str.
    """
    table = table_node.GetTable()
    arrays = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row: dict[str, Any] = {}
        for array in arrays:
            row[array.GetName()] = _table_value(array, r)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- internals
def _vtk_matrix(matrix: np.ndarray) -> vtkMatrix4x4:
    vtk_matrix = vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            vtk_matrix.SetElement(i, j, float(matrix[i, j]))
    return vtk_matrix


def _numpy_matrix(vtk_matrix: vtkMatrix4x4) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _vtk_compatible(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise InvalidImageError(f"voxels of dtype {array.dtype} cannot be put into a Slicer volume")
    return array


def _vtk_image_from_array(array: np.ndarray, image_class):
    """A new ``image_class`` (vtkImageData or vtkOrientedImageData) holding a copy of ``array`` (K, J, I)."""
    array = np.ascontiguousarray(array)
    image = image_class()
    image.SetDimensions(*array.shape[::-1])
    scalars = numpy_support.numpy_to_vtk(
        array.ravel(), deep=True, array_type=numpy_support.get_vtk_array_type(array.dtype)
    )
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def _array_from_vtk_image(image_data) -> np.ndarray:
    """The voxels of a vtkImageData as a numpy view ``(K, J, I)`` (x fastest, as VTK stores them)."""
    dims = image_data.GetDimensions()
    return numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1])


def _paste_extent(target: np.ndarray, image) -> None:
    """Copy the voxels of an oriented image into ``target`` (K, J, I) where its extent overlaps 0..shape-1."""
    if image.GetPointData().GetScalars() is None:
        return
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return
    source = _array_from_vtk_image(image)
    lo = [extent[4], extent[2], extent[0]]
    src_slices, dst_slices = [], []
    for axis in range(3):
        start = max(lo[axis], 0)
        stop = min(lo[axis] + source.shape[axis], target.shape[axis])
        if stop <= start:
            return
        dst_slices.append(slice(start, stop))
        src_slices.append(slice(start - lo[axis], stop - lo[axis]))
    target[tuple(dst_slices)] = source[tuple(src_slices)]


def _node_name(node) -> str:
    return node.GetName() if node is not None else "(none)"


def _ijk_to_world_ras(node) -> np.ndarray:
    """The node's IJK to RAS matrix, with its linear parent transform applied."""
    ijk_to_ras = vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _numpy_matrix(ijk_to_ras)
    parent = node.GetParentTransformNode()
    if parent is not None:
        to_world = vtkMatrix4x4()
        if not parent.GetMatrixTransformToWorld(to_world):
            raise InvalidImageError(
                f"volume '{node.GetName()}' is under the non-linear transform '{parent.GetName()}'",
                "harden the transform on the volume first (Data module, right-click: Harden transform)",
            )
        matrix = _numpy_matrix(to_world) @ matrix
    return matrix


def _node_geometry(node, ndim: int, shape: tuple[int, int, int]) -> Image:
    """A geometry-only :class:`Image` (no voxel memory) of a volume node with voxel array ``shape`` (K, J, I)."""
    ijk_to_lps = LPS_TO_RAS @ _ijk_to_world_ras(node)
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction = axes / spacing[None, :]
    origin = ijk_to_lps[:3, 3]
    if ndim == 2:
        if shape[0] != 1:
            raise InvalidImageError(
                f"volume '{node.GetName()}' has {shape[0]} slices; only a single-slice volume is a 2D image"
            )
        direction2 = direction[:2, :2]
        if abs(abs(np.linalg.det(direction2)) - 1.0) > 1e-3:
            raise InvalidImageError(
                f"the single slice of volume '{node.GetName()}' is not in an axial plane, so it has no 2D geometry"
            )
        return Image(np.broadcast_to(np.uint8(0), shape[1:]), spacing[:2], origin[:2], direction2)
    return Image(np.broadcast_to(np.uint8(0), shape), spacing, origin, direction)


def _default_ndim(volume_node) -> int:
    """2 for a volume node that :func:`image_to_volume_node` made from a 2D image, else 3."""
    return 2 if volume_node.GetAttribute(IMAGE_DIMENSION_ATTRIBUTE) == "2" else 3


def _geometry_image(volume_node, ndim: int) -> Image:
    """The grid of ``volume_node`` as a geometry-only Image, 2D when ``ndim`` is 2 (for 2D label maps)."""
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise InvalidImageError(f"reference volume '{volume_node.GetName()}' holds no voxels")
    dims = image_data.GetDimensions()
    return _node_geometry(volume_node, ndim, (dims[2], dims[1], dims[0]))


def _geometry_volume_node(image: Image):
    """A volume node outside any scene that has ``image``'s grid and no voxels (a reference geometry)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    geometry = vtkImageData()
    geometry.SetDimensions(*(image.size if image.ndim == 3 else (*image.size, 1)))
    node.SetAndObserveImageData(geometry)
    node.SetIJKToRASMatrix(_vtk_matrix(image.ijk_to_ras()))
    return node


def _volume_node_metadata(node, n_slices: int) -> dict[str, Any]:
    """DICOM attributes reachable from a volume node (see :func:`volume_node_to_image`)."""
    metadata: dict[str, Any] = {}
    scene = node.GetScene()
    if scene is not None:
        metadata.update(_subject_hierarchy_dicom_attributes(scene, node))
    for key in _KEPT_METADATA_KEYS:
        value = node.GetAttribute(METADATA_ATTRIBUTE_PREFIX + key)
        if value is not None and key not in metadata:
            try:
                metadata[key] = json.loads(value)
            except ValueError:
                metadata[key] = value
    if "source_files" not in metadata:
        files = _dicom_database_files(node)
        if files and len(files) == n_slices:
            metadata["source_files"] = files
    return metadata


def _subject_hierarchy_dicom_attributes(scene, node) -> dict[str, str]:
    """DICOM attributes that Slicer's DICOM module stored on the node's series, study and patient items."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return {}
    item = sh.GetItemByDataNode(node)
    if not item:
        return {}
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    prefix = constants.GetDICOMAttributePrefix()
    uid_name = constants.GetDICOMUIDName()
    found: dict[str, str] = {}
    series_uid = sh.GetItemUID(item, uid_name)
    if series_uid:
        found["SeriesInstanceUID"] = series_uid
    scene_item = sh.GetSceneItemID()
    while item and item != scene_item:
        for attribute in sh.GetItemAttributeNames(item):
            if attribute.startswith(prefix):
                key = attribute[len(prefix):]
                value = sh.GetItemAttribute(item, attribute)
                if key in DICOM_METADATA_KEYS and value:
                    found.setdefault(key, value)
        level = sh.GetItemLevel(item)
        uid = sh.GetItemUID(item, uid_name)
        if uid and level == constants.GetDICOMLevelStudy():
            found.setdefault("StudyInstanceUID", uid)
        elif uid and level == constants.GetDICOMLevelPatient():
            found.setdefault("PatientID", uid)
        item = sh.GetItemParent(item)
    return found


def _dicom_database_files(node) -> list[str]:
    """Files of the node's DICOM instances, in slice order; only inside Slicer, where a DICOM database exists."""
    database = getattr(slicer, "dicomDatabase", None)
    uids = node.GetAttribute("DICOM.instanceUIDs")
    if database is None or not uids:
        return []
    try:
        files = [database.fileForInstance(uid) for uid in uids.split()]
    except Exception:  # a database that is closed or of an older interface: files are optional metadata
        return []
    return files if all(files) else []


def _place_beside_in_subject_hierarchy(node, reference_volume_node) -> None:
    """Give ``node`` the subject hierarchy parent of ``reference_volume_node`` (its study), when it has one."""
    scene = node.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None
    if sh is None:
        return
    reference_item = sh.GetItemByDataNode(reference_volume_node)
    if not reference_item:
        return
    parent = sh.GetItemParent(reference_item)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def _terminology_tag_name(segment) -> str:
    getter = getattr(segment, "GetTerminologyEntryTagName", None)
    return getter() if getter is not None else "TerminologyEntry"


def _segment_label_values(segmentation, segment_ids: list[str]) -> tuple[list[int], Labels]:
    """Label value and class name of each segment to export.

    A segment keeps its ``MSKSeg.LabelValue`` tag unless an earlier exported segment took that value; the
    others get values above every tagged value of the whole segmentation, so that the value of a segment the
    user added does not depend on which other segments are exported.
    """
    tagged = {segment_id: _tagged_label_value(segmentation.GetSegment(segment_id))
              for segment_id in segmentation.GetSegmentIDs()}
    next_value = max((v for v in tagged.values() if v is not None), default=0) + 1
    values: list[int] = []
    for segment_id in segment_ids:
        value = tagged.get(segment_id)
        if value is None or value in values:
            value = next_value
            next_value += 1
        values.append(value)
    if max(values, default=0) > _MAX_SEGMENT_LABEL_VALUE:
        raise MSKSegError(f"too many segments to export as one label map (max label {_MAX_SEGMENT_LABEL_VALUE})")
    labels: Labels = {}
    for segment_id, value in zip(segment_ids, values):
        segment = segmentation.GetSegment(segment_id)
        labels[value] = _segment_tag(segment, CLASS_NAME_TAG) or segment.GetName()
    return values, labels


def _tagged_label_value(segment) -> int | None:
    """The segment's ``MSKSeg.LabelValue`` tag as an int, None when absent or not a valid label value."""
    tag = _segment_tag(segment, LABEL_VALUE_TAG)
    if tag is None or not tag.strip().isdigit():
        return None
    value = int(tag)
    return value if 1 <= value <= _MAX_SEGMENT_LABEL_VALUE else None


def _segment_tag(segment, tag: str) -> str | None:
    """The value of a segment tag, None when the segment has no such tag."""
    holder = reference("")  # vtkSegment.GetTag(tag, value&) returns the value through an out argument
    return str(holder) if segment.GetTag(tag, holder) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Number, np.number)) and not isinstance(value, complex)


def _table_value(array, row: int) -> Any:
    if array.IsA("vtkStringArray"):
        return array.GetValue(row)
    if not array.IsA("vtkDataArray"):  # vtkVariantArray and the like
        return array.GetVariantValue(row).ToString()
    value = array.GetTuple1(row)
    if array.GetDataType() in (VTK_FLOAT, VTK_DOUBLE):
        return None if math.isnan(value) else float(value)
    return int(value)
