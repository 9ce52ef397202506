"""The Slicer side of body composition, headless on slicer-core: Find L3, Segment, Edit, Measure.

CT in (a synthetic torso as a volume node), a segmentation node with the four named tissue segments and a
table node out; after an edit of the segmentation the measurement follows the edit exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the pip package slicer-core")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no vtkMRMLScene (install slicer-core)", allow_module_level=True)

from mskseg import mrml  # noqa: E402
from mskseg.sarcopenia import scene as app  # noqa: E402  (the Slicer functions of the sarcopenia task)
from mskseg.errors import InvalidImageError  # noqa: E402

TISSUES = ["skeletal_muscle", "subcutaneous_fat", "visceral_fat", "intermuscular_fat"]




@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def ct_node(scene, torso_ct):
    return mrml.image_to_volume_node(torso_ct, scene, "Torso CT")


def _class_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [mrml._segment_tag(segmentation.GetSegment(segment_id), mrml.CLASS_NAME_TAG)
            for segment_id in segmentation.GetSegmentIDs()]


def _only_row(table_node) -> dict:
    rows = mrml.table_node_to_rows(table_node)
    assert len(rows) == 1, rows
    return rows[0]


def test_find_l3_keeps_the_level_on_the_volume_node_and_lists_the_levels(scene, ct_node):
    found = app.find_l3(scene, ct_node, device="cpu")
    assert 0 <= found.index < ct_node.GetImageData().GetDimensions()[2]
    assert ct_node.GetAttribute(app.L3_INDEX_ATTRIBUTE) == str(found.index)
    assert json.loads(ct_node.GetAttribute("MSKSeg.L3.Levels")) == {k: int(v) for k, v in found.levels.items()}
    assert f"slice {found.index}" in app.describe_l3(ct_node)
    if found.levels:
        table = scene.GetNodeByID(ct_node.GetAttribute("MSKSeg.L3.LevelsTableID"))
        rows = mrml.table_node_to_rows(table)
        assert {r["level"]: r["slice_index"] for r in rows} == {k: int(v) for k, v in found.levels.items()}


def test_find_l3_refuses_a_volume_that_is_not_ct(scene, torso_ct):
    mr_like = torso_ct.with_array(np.clip(torso_ct.array + 1024, 0, None).astype(np.int16))
    node = mrml.image_to_volume_node(mr_like, scene, "MR-like")
    with pytest.raises(InvalidImageError, match="Hounsfield"):
        app.find_l3(scene, node, device="cpu")
    assert node.GetAttribute(app.L3_INDEX_ATTRIBUTE) is None


def test_segment_gives_four_named_tissue_segments_on_the_chosen_slice(scene, ct_node, torso_ct):
    k = torso_ct.array.shape[0] // 2
    node = app.segment_body_composition(scene, ct_node, k, method="rules", device="cpu")
    assert node.IsA("vtkMRMLSegmentationNode")
    assert _class_names(node) == TISSUES
    names = [node.GetSegmentation().GetNthSegment(i).GetName() for i in range(4)]
    assert names == ["Skeletal muscle", "Subcutaneous adipose tissue", "Visceral adipose tissue",
                     "Intermuscular adipose tissue"]
    labelmap, labels = mrml.segmentation_node_to_labelmap(node, ct_node)
    assert labelmap.same_grid(torso_ct)
    labelled = np.flatnonzero(np.count_nonzero(labelmap.array.reshape(labelmap.array.shape[0], -1), axis=1))
    assert labelled.tolist() == [k]
    muscle = labelmap.array[k] == 1
    assert muscle.sum() > 100
    hu = torso_ct.array[k][muscle]
    assert hu.min() >= -29 and hu.max() <= 150  # the segments are the tissues as measured: inside the windows
    assert node.GetAttribute(app.SLICE_INDEX_ATTRIBUTE) == str(k)
    assert node.GetAttribute("MSKSeg.SliceSource") == "user"


def test_measure_follows_an_edit_of_the_segmentation_exactly(scene, ct_node, torso_ct):
    k = torso_ct.array.shape[0] // 2
    node = app.segment_body_composition(scene, ct_node, k, method="rules", device="cpu")
    table = app.measure_body_composition(scene, node, ct_node, height_m=1.75, weight_kg=80, sex="M",
                                         cutoff_set="Prado 2008")
    before = _only_row(table)
    assert before["SMA_cm2"] > 0 and before["SMI_cm2_m2"] == pytest.approx(before["SMA_cm2"] / 1.75 ** 2)
    assert before["slice_index"] == k and before["cutoff_set"] == "Prado 2008"
    assert table.GetTable().GetColumnByName("SMA_cm2") is not None
    assert table.GetColumnUnitLabel("SMA_cm2") == "cm2"

    # The user erases the muscle on the patient's right half (Segment Editor's Erase, done through mrml).
    labelmap, labels = mrml.segmentation_node_to_labelmap(node, ct_node)
    array = labelmap.array.copy()
    muscle_value = next(v for v, n in labels.items() if n == "skeletal_muscle")
    erased = (array[k] == muscle_value) & (np.arange(array.shape[2])[None, :] < array.shape[2] // 2)
    assert erased.sum() > 50
    array[k][erased] = 0
    mrml.labelmap_to_segmentation_node(labelmap.with_array(array), labels, scene, ct_node, segmentation_node=node,
                                       replace=True)
    again = app.measure_body_composition(scene, node, ct_node, height_m=1.75, weight_kg=80, sex="M",
                                         cutoff_set="Prado 2008", table_node=table)
    after = _only_row(again)
    pixel_cm2 = torso_ct.spacing[0] * torso_ct.spacing[1] / 100.0
    assert again is table
    assert before["SMA_cm2"] - after["SMA_cm2"] == pytest.approx(int(erased.sum()) * pixel_cm2, abs=1e-9)
    assert after["SAT_cm2"] == pytest.approx(before["SAT_cm2"], abs=1e-9)
    assert after["sarcopenia"] == (after["SMI_cm2_m2"] < 52.4)


def test_a_segmentation_holding_segments_is_never_overwritten(scene, ct_node, torso_ct):
    k = torso_ct.array.shape[0] // 2
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    first = app.segment_body_composition(scene, ct_node, k, method="rules", device="cpu", segmentation_node=empty)
    assert first is empty  # an empty node is filled
    before, _ = mrml.segmentation_node_to_labelmap(first, ct_node)
    second = app.segment_body_composition(scene, ct_node, k, method="rules", device="cpu", segmentation_node=first)
    assert second.GetID() != first.GetID() and second.GetName() != first.GetName()
    kept, _ = mrml.segmentation_node_to_labelmap(first, ct_node)
    assert np.array_equal(kept.array, before.array)


def test_measure_of_an_empty_segmentation_says_there_is_nothing(scene, ct_node):
    from mskseg.errors import MSKSegError

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(MSKSegError, match="empty"):
        app.measure_body_composition(scene, empty, ct_node)


def test_measure_after_an_edit_remeasures_every_level_of_a_multi_level_run(scene, ct_node, torso_ct):
    node, table = app.process(scene, ct_node, levels="L2,L3", method="rules", device="cpu", height_m=1.75,
                              weight_kg=80, sex="M")
    rows = {row["level"]: row for row in mrml.table_node_to_rows(table)}
    assert set(rows) == {"L2", "L3"}
    assert json.loads(node.GetAttribute("MSKSeg.LevelSlices")).keys() == {"L2", "L3"}
    k2 = int(rows["L2"]["slice_index"])
    # the user erases every muscle pixel of the L2 slice; L3 is untouched
    labelmap, labels = mrml.segmentation_node_to_labelmap(node, ct_node)
    array = labelmap.array.copy()
    muscle_value = next(v for v, n in labels.items() if n == "skeletal_muscle")
    erased = array[k2] == muscle_value
    assert erased.sum() > 50
    array[k2][erased] = 0
    mrml.labelmap_to_segmentation_node(labelmap.with_array(array), labels, scene, ct_node, segmentation_node=node,
                                       replace=True)
    again = {row["level"]: row for row in mrml.table_node_to_rows(
        app.measure_body_composition(scene, node, ct_node, height_m=1.75, weight_kg=80, sex="M"))}
    assert set(again) == {"L2", "L3"}
    pixel_cm2 = torso_ct.spacing[0] * torso_ct.spacing[1] / 100.0
    assert rows["L2"]["SMA_cm2"] - again["L2"]["SMA_cm2"] == pytest.approx(int(erased.sum()) * pixel_cm2, abs=1e-6)
    assert again["L3"]["SMA_cm2"] == pytest.approx(rows["L3"]["SMA_cm2"], abs=1e-9)
