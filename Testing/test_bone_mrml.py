"""The Slicer side of bone segmentation, headless on slicer-core: Segment, Edit, Measure.

CT in (a synthetic torso as a volume node), a segmentation node with named bone segments and a measurements
table out; after an edit of the segmentation the measurement follows the edit exactly; a segmentation that
holds segments is never overwritten.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the pip package slicer-core")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no vtkMRMLScene (install slicer-core)", allow_module_level=True)

from mskseg import mrml  # noqa: E402
from mskseg.bone import scene as app  # noqa: E402  (the Slicer functions of the bone task)
from mskseg.errors import MSKSegError  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def ct_node(scene, torso_ct):
    return mrml.image_to_volume_node(torso_ct, scene, "Torso CT")


@pytest.fixture(scope="module")
def bones(scene, ct_node):
    """One rule-based run on the torso (shared by the tests: the run takes a few seconds)."""
    return app.run_segmentation(scene, ct_node, device="cpu", method="rules")


def _class_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [mrml._segment_tag(segmentation.GetSegment(segment_id), mrml.CLASS_NAME_TAG)
            for segment_id in segmentation.GetSegmentIDs()]


def _rows(table_node) -> dict[str, dict]:
    return {row["class"]: row for row in mrml.table_node_to_rows(table_node)}


def test_segment_gives_named_bone_segments_and_a_measurement_table(scene, ct_node, bones, torso_ct):
    assert bones.IsA("vtkMRMLSegmentationNode")
    names = set(_class_names(bones))
    assert {"vertebrae_L1", "vertebrae_L3", "sacrum", "hip_left", "hip_right", "ribs_left", "ribs_right"} <= names
    labelmap, labels = mrml.segmentation_node_to_labelmap(bones, ct_node)
    assert labelmap.same_grid(torso_ct)
    bone_hu = np.asarray(torso_ct.array)[labelmap.array > 0]
    assert bone_hu.size > 1000 and np.median(bone_hu) > 150
    table = scene.GetNodeByID(bones.GetAttribute("MSKSeg.MeasurementsTableID"))
    assert table is not None and table.IsA("vtkMRMLTableNode")
    rows = _rows(table)
    assert set(labels.values()) <= set(rows)
    assert rows["sacrum"]["volume_cm3"] > 0 and table.GetColumnUnitLabel("volume_cm3") == "cm3"
    assert 100 < rows["L1 trabecular ROI"]["trabecular_HU"] < 350
    assert bones.GetAttribute("MSKSeg.Method") == "rules"
    assert json.loads(bones.GetAttribute("MSKSeg.Phase"))["phase"] == "portal-venous"
    assert bones.GetAttribute("MSKSeg.ScreeningFlag") in ("not flagged", "possible osteoporosis",
                                                           "likely osteoporosis")


def test_measure_follows_an_edit_of_the_segmentation_exactly(scene, ct_node, bones, torso_ct):
    table = app.measure_bones(scene, bones, ct_node)
    assert table.GetID() == bones.GetAttribute("MSKSeg.MeasurementsTableID")  # the run's table, refilled
    before = _rows(table)
    # The user erases the patient's right half of the sacrum (Segment Editor's Erase, done through mrml).
    labelmap, labels = mrml.segmentation_node_to_labelmap(bones, ct_node)
    array = labelmap.array.copy()
    sacrum = next(v for v, n in labels.items() if n == "sacrum")
    ii = np.arange(array.shape[2])[None, None, :]
    erased = (array == sacrum) & (ii < np.median(np.nonzero(array == sacrum)[2]))
    assert erased.sum() > 100
    array[erased] = 0
    mrml.labelmap_to_segmentation_node(labelmap.with_array(array), labels, scene, ct_node, segmentation_node=bones,
                                       replace=True)
    again = app.measure_bones(scene, bones, ct_node)
    assert again.GetID() == table.GetID()
    after = _rows(again)
    voxel_cm3 = float(np.prod(torso_ct.spacing)) / 1000.0
    assert before["sacrum"]["volume_cm3"] - after["sacrum"]["volume_cm3"] == pytest.approx(
        int(erased.sum()) * voxel_cm3, abs=2e-3)  # the table keeps 3 decimals
    for name in ("hip_left", "hip_right", "vertebrae_L3"):
        assert after[name]["volume_cm3"] == pytest.approx(before[name]["volume_cm3"], abs=1e-9)
    assert after["L1 trabecular ROI"]["trabecular_HU"] == pytest.approx(before["L1 trabecular ROI"]["trabecular_HU"])


def test_a_segmentation_holding_segments_is_never_overwritten(scene, ct_node, bones):
    before, _ = mrml.segmentation_node_to_labelmap(bones, ct_node)
    second = app.run_segmentation(scene, ct_node, device="cpu", method="rules", segmentation_node=bones)
    assert second.GetID() != bones.GetID() and second.GetName() != bones.GetName()
    kept, _ = mrml.segmentation_node_to_labelmap(bones, ct_node)
    assert np.array_equal(kept.array, before.array)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my bones")
    with pytest.raises(MSKSegError, match="empty"):
        app.measure_bones(scene, empty, ct_node)
