"""``.seg.nrrd``: what we write is what Slicer (slicer-core) and slicerio read, voxel for voxel."""
from __future__ import annotations

import numpy as np
import pytest

from mskseg import terminology
from mskseg.errors import GeometryMismatchError, InvalidImageError, OutputExistsError
from mskseg.image import Image
from mskseg.io.segnrrd import read_seg_nrrd, write_seg_nrrd


def _axis_aligned(oblique_labels):
    lab, labels = oblique_labels
    return Image(lab.array, lab.spacing, lab.origin, np.eye(3)), labels


@pytest.fixture(params=["oblique", "axis-aligned"])
def labelled(request, oblique_labels):
    """Label maps with a non-identity and with an identity direction matrix."""
    return oblique_labels if request.param == "oblique" else _axis_aligned(oblique_labels)


def _export_through_slicer(path, shape):
    """Load ``path`` with Slicer's segmentation storage node and export all segments on the file's geometry."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    scene = slicer.vtkMRMLScene()
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(seg) == 1
    segmentation = seg.GetSegmentation()
    segments = []
    for i in range(segmentation.GetNumberOfSegments()):
        s = segmentation.GetNthSegment(i)
        tag = vtk.reference("")
        s.GetTag("TerminologyEntry", tag)
        segments.append((segmentation.GetNthSegmentID(i), s.GetName(), tuple(s.GetColor()), str(tag)))
    labelmap_node = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap_node)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    ok = logic.ExportAllSegmentsToLabelmapNode(seg, labelmap_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    assert ok
    m = vtk.vtkMatrix4x4()
    labelmap_node.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    img = labelmap_node.GetImageData()
    voxels = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(shape)
    # Slicer numbers exported labels 1..N in segment order
    return segments, ijk_to_ras, voxels


def test_seg_nrrd_round_trip_through_slicer_keeps_voxels_names_colours_geometry(tmp_path, labelled):
    lab, labels = labelled
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, labels)
    segments, ijk_to_ras, voxels = _export_through_slicer(path, lab.array.shape)
    assert [s[0] for s in segments] == [labels[v] for v in sorted(labels)]
    for (seg_id, name, colour, entry), value in zip(segments, sorted(labels)):
        c = terminology.get_class(labels[value])
        assert name == c.display_name
        assert np.allclose(colour, c.color_float, atol=1e-5)
        assert entry == terminology.slicer_terminology_entry(labels[value])
    assert np.allclose(ijk_to_ras, lab.ijk_to_ras(), atol=1e-6)
    # segment order = label order, and Slicer exports segment n as label n
    assert np.array_equal(voxels, lab.array)


def test_seg_nrrd_round_trip_through_slicerio(tmp_path, labelled):
    slicerio = pytest.importorskip("slicerio")
    lab, labels = labelled
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, labels)
    seg = slicerio.read_segmentation(str(path))
    assert np.allclose(seg["ijkToLPS"], lab.ijk_to_lps())
    assert np.array_equal(np.asarray(seg["voxels"]).transpose(2, 1, 0), lab.array)
    by_value = {s["labelValue"]: s for s in seg["segments"]}
    for value, name in labels.items():
        c = terminology.get_class(name)
        assert by_value[value]["name"] == c.display_name
        assert np.allclose(by_value[value]["color"], c.color_float, atol=1e-5)
        assert by_value[value]["terminology"]["type"][1] == c.type[1]


def test_seg_nrrd_read_back_by_our_reader(tmp_path, labelled):
    lab, labels = labelled
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, labels)
    back, back_labels = read_seg_nrrd(path)
    assert back_labels == labels
    assert back.same_grid(lab) and np.array_equal(back.array, lab.array)


def test_empty_named_segment_is_kept(tmp_path, oblique_labels):
    lab, labels = oblique_labels
    labels = {**labels, 7: "intermuscular_fat"}
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, labels)
    segments, _, _ = _export_through_slicer(path, lab.array.shape)
    assert "intermuscular_fat" in [s[0] for s in segments]


def test_2d_label_map_is_written_as_one_slice(tmp_path):
    lab = Image(np.array([[0, 1, 1], [2, 2, 0]], np.uint8), (0.7, 0.8), (5.0, -3.0))
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, {1: "skeletal_muscle", 2: "visceral_fat"})
    back, _ = read_seg_nrrd(path)
    assert back.array.shape == (1, 2, 3) and np.array_equal(back.array[0], lab.array)
    assert np.allclose(back.spacing[:2], lab.spacing) and np.allclose(back.origin[:2], lab.origin)


def test_writer_never_overwrites_silently(tmp_path, oblique_labels):
    lab, labels = oblique_labels
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, labels)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        write_seg_nrrd(path, lab.with_array(np.zeros_like(lab.array)), labels)
    assert path.read_bytes() == before
    write_seg_nrrd(path, lab.with_array(np.zeros_like(lab.array)), labels, overwrite=True)
    assert read_seg_nrrd(path)[0].array.max() == 0


def test_label_map_on_another_grid_or_with_unnamed_values_is_refused(tmp_path, oblique_ct, oblique_labels):
    lab, labels = oblique_labels
    shifted = Image(lab.array, lab.spacing, (0, 0, 0), lab.direction)
    with pytest.raises(GeometryMismatchError, match="not on the image's grid"):
        write_seg_nrrd(tmp_path / "a.seg.nrrd", shifted, labels, source=oblique_ct)
    with pytest.raises(InvalidImageError, match="no name"):
        write_seg_nrrd(tmp_path / "b.seg.nrrd", lab, {1: "skeletal_muscle"})
    assert not (tmp_path / "a.seg.nrrd").exists() and not (tmp_path / "b.seg.nrrd").exists()
