"""mskseg.mrml against Slicer's real MRML libraries (pip package slicer-core), headless.

Each test builds its own scene; the oblique fixtures (rotated, k flipped, anisotropic) catch any geometry
that is lost or transposed on the way into or out of MRML.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip(
    "slicer", reason="needs Slicer's MRML libraries: the pip package slicer-core (pip install slicer-core)"
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no vtkMRMLScene (install slicer-core)", allow_module_level=True)

from mskseg import mrml  # noqa: E402
from mskseg.errors import (  # noqa: E402
    GeometryMismatchError, ImageReadError, InvalidImageError, MSKSegError, OutputExistsError,
)
from mskseg.image import Image  # noqa: E402
from mskseg.terminology import get_class, slicer_terminology_entry  # noqa: E402


@pytest.fixture
def scene():
    """A fresh, empty MRML scene."""
    return slicer.vtkMRMLScene()


@pytest.fixture
def labels_with_empty_class(oblique_labels) -> dict[int, str]:
    """The fixture's three classes plus one named class (psoas, value 4) that has no voxel."""
    return {**oblique_labels[1], 4: "psoas"}


def _ijk_to_ras(node) -> np.ndarray:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _assert_same_geometry(actual: Image, expected: Image) -> None:
    assert actual.size == expected.size
    np.testing.assert_allclose(actual.spacing, expected.spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(actual.origin, expected.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(actual.direction, expected.direction, rtol=0, atol=1e-9)


def _segment_tag(segment, tag: str) -> str | None:
    from vtkmodules.vtkCommonCore import reference

    value = reference("")
    return str(value) if segment.GetTag(tag, value) else None


def _set_segment_voxels(segmentation_node, segment_id: str, mask: np.ndarray, grid: Image) -> None:
    """Replace a segment's voxels the way Segment Editor effects do (SetBinaryLabelmapToSegment)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*grid.size)
    image.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, np.uint8).ravel(), deep=True)
    )
    matrix = vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            matrix.SetElement(i, j, grid.ijk_to_ras()[i, j])
    image.SetImageToWorldMatrix(matrix)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE, image.GetExtent())


def _add_user_segment(segmentation_node, name: str, mask: np.ndarray, grid: Image) -> str:
    """Add an untagged segment, as a user's "Add segment" + painting would."""
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    _set_segment_voxels(segmentation_node, segment_id, mask, grid)
    return segment_id


# --------------------------------------------------------------------------------------------- volumes
def test_volume_node_round_trip_keeps_voxels_geometry_and_modality(scene, oblique_ct):
    node = mrml.image_to_volume_node(oblique_ct, scene, "CT")

    np.testing.assert_allclose(_ijk_to_ras(node), oblique_ct.ijk_to_ras(), rtol=0, atol=1e-12)
    assert node.GetName() == "CT" and node.GetScene() is scene
    back = mrml.volume_node_to_image(node)
    assert back.ndim == 3
    assert back.array.dtype == oblique_ct.array.dtype
    np.testing.assert_array_equal(back.array, oblique_ct.array)
    _assert_same_geometry(back, oblique_ct)
    assert back.metadata["Modality"] == "CT"


def test_volume_node_voxels_are_copied_not_shared(scene, oblique_ct):
    node = mrml.image_to_volume_node(oblique_ct, scene)
    back = mrml.volume_node_to_image(node)
    back.array[0, 0, 0] = 1234
    assert mrml.volume_node_to_image(node).array[0, 0, 0] == oblique_ct.array[0, 0, 0]


def test_2d_image_becomes_single_slice_volume_and_comes_back_2d(scene, oblique_ct):
    radiograph = oblique_ct.axial_slice(2)
    node = mrml.image_to_volume_node(radiograph, scene, "DX")

    assert node.GetImageData().GetDimensions() == (*radiograph.size, 1)
    np.testing.assert_allclose(_ijk_to_ras(node), radiograph.ijk_to_ras(), atol=1e-12)
    back = mrml.volume_node_to_image(node)
    assert back.ndim == 2
    np.testing.assert_array_equal(back.array, radiograph.array)
    _assert_same_geometry(back, radiograph)
    as_volume = mrml.volume_node_to_image(node, ndim=3)
    assert as_volume.array.shape == (1, *radiograph.array.shape)


def test_several_slices_cannot_be_read_as_2d(scene, oblique_ct):
    node = mrml.image_to_volume_node(oblique_ct, scene)
    with pytest.raises(InvalidImageError, match="6 slices"):
        mrml.volume_node_to_image(node, ndim=2)


def test_volume_node_without_voxels_raises_invalid_image_error(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InvalidImageError, match="'Empty' holds no voxels"):
        mrml.volume_node_to_image(empty)


def test_volume_metadata_comes_from_the_dicom_subject_hierarchy(scene, oblique_ct):
    # A volume as Slicer's DICOM module loads it: no MSKSeg attributes, DICOM attributes on its
    # series, study and patient items in the subject hierarchy.
    node = mrml.image_to_volume_node(oblique_ct.with_array(oblique_ct.array, keep_metadata=False), scene)
    assert mrml.volume_node_to_image(node).metadata == {}  # nothing reachable: empty metadata

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Anonymous")
    sh.SetItemUID(patient, constants.GetDICOMUIDName(), "PAT-7")
    sh.SetItemAttribute(patient, constants.GetDICOMPatientSexAttributeName(), "F")
    study = sh.CreateStudyItem(patient, "CT abdomen")
    sh.SetItemUID(study, constants.GetDICOMUIDName(), "1.2.826.0.1.3680043.1")
    sh.SetItemAttribute(study, constants.GetDICOMStudyDateAttributeName(), "20200131")
    series = sh.CreateItem(study, node)
    sh.SetItemUID(series, constants.GetDICOMUIDName(), "1.2.826.0.1.3680043.1.2")
    sh.SetItemAttribute(series, constants.GetDICOMSeriesModalityAttributeName(), "CT")

    metadata = mrml.volume_node_to_image(node).metadata
    assert metadata == {
        "Modality": "CT", "SeriesInstanceUID": "1.2.826.0.1.3680043.1.2", "StudyInstanceUID": "1.2.826.0.1.3680043.1",
        "StudyDate": "20200131", "PatientSex": "F", "PatientID": "PAT-7",
    }


# --------------------------------------------------------------------------------------------- segmentations
def test_segments_get_names_colours_terminology_and_class_tags(scene, oblique_ct, oblique_labels,
                                                                labels_with_empty_class):
    volume = mrml.image_to_volume_node(oblique_ct, scene, "CT")
    node = mrml.labelmap_to_segmentation_node(oblique_labels[0], labels_with_empty_class, scene, volume, "Result")

    segmentation = node.GetSegmentation()
    assert node.GetName() == "Result"
    assert segmentation.GetNumberOfSegments() == 4
    assert list(segmentation.GetSegmentIDs()) == ["skeletal_muscle", "subcutaneous_fat", "visceral_fat", "psoas"]
    for value, class_name in labels_with_empty_class.items():
        segment = segmentation.GetSegment(class_name)
        expected = get_class(class_name)
        assert segment.GetName() == expected.display_name
        np.testing.assert_allclose(segment.GetColor(), expected.color_float, atol=1e-6)
        assert _segment_tag(segment, segment.GetTerminologyEntryTagName()) == slicer_terminology_entry(class_name)
        assert _segment_tag(segment, "MSKSeg.ClassName") == class_name
        assert _segment_tag(segment, "MSKSeg.LabelValue") == str(value)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume


def test_segmentation_round_trip_on_reference_grid_is_identical(scene, oblique_ct, oblique_labels,
                                                                labels_with_empty_class):
    labelmap, _ = oblique_labels
    volume = mrml.image_to_volume_node(oblique_ct, scene, "CT")
    node = mrml.labelmap_to_segmentation_node(labelmap, labels_with_empty_class, scene, volume)

    for reference in (volume, oblique_ct):  # a volume node or an Image as the reference grid
        exported, labels = mrml.segmentation_node_to_labelmap(node, reference)
        assert labels == labels_with_empty_class  # the empty class is kept
        np.testing.assert_array_equal(exported.array, labelmap.array)
        _assert_same_geometry(exported, oblique_ct)
        assert exported.array.dtype == np.uint8


def test_segmentation_of_a_2d_image_round_trips(scene, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    radiograph = oblique_ct.axial_slice(2)
    volume = mrml.image_to_volume_node(radiograph, scene)
    node = mrml.labelmap_to_segmentation_node(radiograph.with_array(labelmap.array[2]), labels, scene, volume)

    exported, exported_labels = mrml.segmentation_node_to_labelmap(node, volume)
    assert exported.ndim == 2
    np.testing.assert_array_equal(exported.array, labelmap.array[2])
    _assert_same_geometry(exported, radiograph)
    assert exported_labels == labels


def test_labelmap_off_the_reference_grid_raises_geometry_mismatch(scene, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    volume = mrml.image_to_volume_node(oblique_ct, scene)
    shifted = Image(labelmap.array, labelmap.spacing, np.add(labelmap.origin, (5.0, 0, 0)), labelmap.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        mrml.labelmap_to_segmentation_node(shifted, labels, scene, volume)


def test_unnamed_label_value_raises_before_anything_is_added(scene, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    volume = mrml.image_to_volume_node(oblique_ct, scene)
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(InvalidImageError, match=r"values \[3\]"):
        mrml.labelmap_to_segmentation_node(labelmap, {1: labels[1], 2: labels[2]}, scene, volume)
    assert scene.GetNumberOfNodes() == nodes_before


def test_export_reflects_the_users_segment_edits(scene, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    volume = mrml.image_to_volume_node(oblique_ct, scene)
    node = mrml.labelmap_to_segmentation_node(labelmap, labels, scene, volume)

    # The user grows the muscle by two rows and erases its first slice ...
    muscle = labelmap.array == 1
    muscle[1:4, 12:14, 4:10] = True
    muscle[1] = False
    _set_segment_voxels(node, "skeletal_muscle", muscle, oblique_ct)
    # ... and adds a segment of their own that overlaps the subcutaneous fat.
    extra = np.zeros_like(muscle)
    extra[4:6, 15:18, 15:20] = True
    extra_id = _add_user_segment(node, "Tumour", extra, oblique_ct)

    exported, exported_labels = mrml.segmentation_node_to_labelmap(node, volume)

    expected = labelmap.array.copy()
    expected[expected == 1] = 0
    expected[muscle] = 1
    expected[extra] = 4  # next free label value; the later segment wins where segments overlap
    np.testing.assert_array_equal(exported.array, expected)
    assert exported_labels == {**labels, 4: "Tumour"}
    assert node.GetSegmentation().GetSegment(extra_id).GetName() == "Tumour"


def test_later_segment_wins_where_segments_overlap(scene, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    node = mrml.labelmap_to_segmentation_node(labelmap, labels, scene)
    overlap = np.zeros(labelmap.array.shape, bool)
    overlap[2:4, 8:14, 6:16] = True  # covers muscle, fat and background
    _add_user_segment(node, "Overlap", overlap, oblique_ct)

    ids = list(node.GetSegmentation().GetSegmentIDs())
    first, _ = mrml.segmentation_node_to_labelmap(node, oblique_ct)
    assert np.all(first.array[overlap] == 4)
    last_is_muscle, _ = mrml.segmentation_node_to_labelmap(node, oblique_ct, [ids[-1], "skeletal_muscle"])
    painted = last_is_muscle.array
    assert np.all(painted[overlap & (labelmap.array == 1)] == 1)
    assert np.all(painted[overlap & (labelmap.array != 1)] == 4)


def test_exporting_an_unknown_segment_id_names_the_existing_ones(scene, oblique_ct, oblique_labels):
    node = mrml.labelmap_to_segmentation_node(*oblique_labels, scene)
    with pytest.raises(MSKSegError, match="no segment with id") as caught:
        mrml.segmentation_node_to_labelmap(node, oblique_ct, ["liver"])
    assert "skeletal_muscle" in caught.value.hint


def test_rerun_never_overwrites_a_segmentation_silently(scene, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    volume = mrml.image_to_volume_node(oblique_ct, scene)
    node = mrml.labelmap_to_segmentation_node(labelmap, labels, scene, volume, "Body composition")
    corrected = labelmap.array == 1
    corrected[0] = True
    _set_segment_voxels(node, "skeletal_muscle", corrected, oblique_ct)

    rerun = labelmap.with_array(np.where(labelmap.array == 2, 2, 0).astype(np.uint8))
    with pytest.raises(MSKSegError, match="already holds 3 segments"):
        mrml.labelmap_to_segmentation_node(rerun, {2: labels[2]}, scene, volume, segmentation_node=node)
    kept, _ = mrml.segmentation_node_to_labelmap(node, volume)
    # The edit is kept (where it overlaps the later visceral fat segment, the later segment wins).
    np.testing.assert_array_equal(kept.array, np.where(corrected & (labelmap.array == 0), 1, labelmap.array))

    mrml.labelmap_to_segmentation_node(rerun, {2: labels[2]}, scene, volume, segmentation_node=node, replace=True)
    assert list(node.GetSegmentation().GetSegmentIDs()) == ["subcutaneous_fat"]
    replaced, replaced_labels = mrml.segmentation_node_to_labelmap(node, volume)
    np.testing.assert_array_equal(replaced.array, rerun.array)
    assert replaced_labels == {2: "subcutaneous_fat"}


def test_new_segmentation_node_name_counts_up_past_taken_names(scene, oblique_labels):
    assert mrml.new_segmentation_node_name(scene, "Bones") == "Bones"
    mrml.labelmap_to_segmentation_node(*oblique_labels, scene, name="Bones")
    assert mrml.new_segmentation_node_name(scene, "Bones") == "Bones (2)"
    mrml.labelmap_to_segmentation_node(*oblique_labels, scene, name="Bones (2)")
    assert mrml.new_segmentation_node_name(scene, "Bones") == "Bones (3)"


def test_segmentation_goes_under_the_volumes_study(scene, oblique_ct, oblique_labels):
    volume = mrml.image_to_volume_node(oblique_ct, scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Anonymous")
    study = sh.CreateStudyItem(patient, "CT abdomen")
    sh.CreateItem(study, volume)

    node = mrml.labelmap_to_segmentation_node(*oblique_labels, scene, volume)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


# --------------------------------------------------------------------------------------------- files
def test_seg_nrrd_round_trip_keeps_names_colours_tags_voxels_and_geometry(scene, tmp_path, oblique_ct,
                                                                          oblique_labels, labels_with_empty_class):
    nrrd = pytest.importorskip("nrrd", reason="needs pynrrd to read the file header")
    labelmap, _ = oblique_labels
    volume = mrml.image_to_volume_node(oblique_ct, scene, "CT")
    node = mrml.labelmap_to_segmentation_node(labelmap, labels_with_empty_class, scene, volume)

    path = mrml.save_segmentation_node(node, tmp_path / "result.seg.nrrd")
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], (oblique_ct.direction * oblique_ct.spacing).T, atol=1e-6)
    np.testing.assert_allclose(header["space origin"], oblique_ct.origin, atol=1e-6)
    assert list(header["sizes"]) == list(oblique_ct.size)

    loaded = mrml.load_segmentation_file(path, scene)
    assert loaded is not node and loaded.GetName() == "result"
    original, copy = node.GetSegmentation(), loaded.GetSegmentation()
    assert list(copy.GetSegmentIDs()) == list(original.GetSegmentIDs())
    for segment_id in original.GetSegmentIDs():
        a, b = original.GetSegment(segment_id), copy.GetSegment(segment_id)
        assert b.GetName() == a.GetName()
        np.testing.assert_allclose(b.GetColor(), a.GetColor(), atol=1e-5)
        for tag in (a.GetTerminologyEntryTagName(), "MSKSeg.ClassName", "MSKSeg.LabelValue"):
            assert _segment_tag(b, tag) == _segment_tag(a, tag)
    exported, labels = mrml.segmentation_node_to_labelmap(loaded, oblique_ct)
    np.testing.assert_array_equal(exported.array, labelmap.array)
    assert labels == labels_with_empty_class


def test_saving_a_segmentation_refuses_to_overwrite(scene, tmp_path, oblique_labels):
    node = mrml.labelmap_to_segmentation_node(*oblique_labels, scene)
    path = mrml.save_segmentation_node(node, tmp_path / "out.seg.nrrd")
    first = path.read_bytes()
    with pytest.raises(OutputExistsError):
        mrml.save_segmentation_node(node, path)
    assert path.read_bytes() == first
    mrml.save_segmentation_node(node, path, overwrite=True)
    with pytest.raises(MSKSegError, match="seg.nrrd"):
        mrml.save_segmentation_node(node, tmp_path / "out.nii.gz")


def test_loading_a_missing_or_unreadable_segmentation_raises_image_read_error(scene, tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        mrml.load_segmentation_file(tmp_path / "absent.seg.nrrd", scene)
    junk = tmp_path / "junk.seg.nrrd"
    junk.write_text("not a segmentation\n")
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(ImageReadError, match="could not be read"):
        mrml.load_segmentation_file(junk, scene)
    assert scene.GetNumberOfNodes() == nodes_before


# --------------------------------------------------------------------------------------------- tables
ROWS = [
    {"Segment": "Skeletal muscle", "area_cm2": 152.25, "mean_HU": 38.5, "voxels": 2431},
    {"Segment": "Visceral adipose tissue", "area_cm2": 98.0, "mean_HU": -92.75, "voxels": 1570},
]
UNITS = {"area_cm2": "cm2", "mean_HU": "HU"}
DESCRIPTIONS = {"area_cm2": "Cross-sectional area at L3"}


def test_metrics_table_has_typed_columns_units_and_values(scene):
    table = mrml.metrics_to_table_node(ROWS, scene, "L3 metrics", UNITS, DESCRIPTIONS)

    assert table.GetName() == "L3 metrics"
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(ROWS[0])
    assert table.GetTable().GetColumnByName("Segment").IsA("vtkStringArray")
    for numeric in ("area_cm2", "mean_HU", "voxels"):
        assert table.GetTable().GetColumnByName(numeric).GetDataTypeAsString() == "double"
    assert table.GetColumnUnitLabel("area_cm2") == "cm2" and table.GetColumnUnitLabel("mean_HU") == "HU"
    assert table.GetColumnDescription("area_cm2") == "Cross-sectional area at L3"
    assert table.GetCellText(1, 0) == "Visceral adipose tissue"
    assert table.GetTable().GetValueByName(0, "area_cm2").ToDouble() == 152.25


def test_table_rows_round_trip_and_missing_values(scene):
    table = mrml.metrics_to_table_node(ROWS, scene, units=UNITS)
    assert mrml.table_node_to_rows(table) == ROWS  # numbers compare equal as floats

    sparse = [{"Segment": "a", "area_cm2": 1.5}, {"Segment": "b", "note": "edited"}]
    mrml.metrics_to_table_node(sparse, scene, table_node=table)  # refills the same node
    assert mrml.table_node_to_rows(table) == [
        {"Segment": "a", "area_cm2": 1.5, "note": ""},
        {"Segment": "b", "area_cm2": None, "note": "edited"},
    ]
    assert table.GetColumnUnitLabel("area_cm2") == ""  # units of the previous content are not left behind


def test_metrics_table_written_as_csv_by_slicer_holds_values_and_units(scene, tmp_path):
    table = mrml.metrics_to_table_node(ROWS, scene, units=UNITS)
    storage = slicer.vtkMRMLTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "metrics.csv"))
    assert storage.WriteData(table)

    with open(tmp_path / "metrics.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [row["Segment"] for row in written] == [r["Segment"] for r in ROWS]
    assert [float(row["area_cm2"]) for row in written] == [r["area_cm2"] for r in ROWS]
    assert [float(row["voxels"]) for row in written] == [r["voxels"] for r in ROWS]
    schema = Path(storage.GetSchemaFileName())
    with open(schema, newline="") as f:
        units = {row["columnName"]: row.get("unitLabel", "") for row in csv.DictReader(f)}
    assert units["area_cm2"] == "cm2" and units["mean_HU"] == "HU"
