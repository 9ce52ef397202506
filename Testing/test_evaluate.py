"""Segmentation metrics on hand-made masks whose answers are known exactly, and the evaluation tables."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mskseg.errors import GeometryMismatchError, InvalidImageError
from mskseg.image import Image
from mskseg.train.evaluate import (
    area_error_cm2,
    dice,
    evaluate_pairs,
    format_summary,
    hausdorff95,
    normalized_surface_dice,
    slice_position_error_mm,
    summarise,
    surface_distances,
)


def square(shape=(40, 40), top=10, left=10, size=10, value=1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[top:top + size, left:left + size] = value
    return out


# ------------------------------------------------------------------------------------------------ Dice
def test_dice_of_known_overlap():
    ref = square(size=10)                      # 100 pixels
    pred = square(left=15, size=10)            # 100 pixels, 50 shared
    assert dice(pred, ref) == pytest.approx(2 * 50 / 200)
    assert dice(ref, ref) == 1.0
    assert dice(square(left=25), ref) == 0.0


def test_dice_picks_the_label_and_defines_empty_cases():
    ref = square(value=2)
    pred = square(value=2) + square(top=25, value=1)
    assert dice(pred, ref, label=2) == 1.0
    assert dice(pred, ref, label=1) == 0.0      # only predicted: 0
    assert math.isnan(dice(pred, ref, label=3))  # both empty: undefined


# ------------------------------------------------------------------------------------------------ HD95
def test_hd95_of_squares_offset_along_i_uses_the_column_spacing():
    """A 10x10 square and its copy 3 columns over: the farthest boundary pixels are 3 columns apart, and 18
    of each square's 36 boundary pixels are that far, so the 95th percentile is 3 columns = 1.5 mm."""
    ref = square()
    pred = square(left=13)
    assert hausdorff95(pred, ref, spacing=(0.5, 2.0)) == pytest.approx(1.5)


def test_hd95_of_squares_offset_along_j_uses_the_row_spacing():
    """The same offset along rows (j) with 2 mm rows: 3 rows = 6 mm (10 of 36 boundary pixels at 6 mm)."""
    ref = square()
    pred = square(top=13)
    assert hausdorff95(pred, ref, spacing=(0.5, 2.0)) == pytest.approx(6.0)


def test_hd95_in_3d_uses_the_slice_spacing():
    ref = np.zeros((12, 20, 20), np.uint8)
    ref[2:6, 5:15, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[4:8, 5:15, 5:15] = 1                  # two slices further along k
    assert hausdorff95(pred, ref, spacing=(0.7, 0.7, 2.5)) == pytest.approx(5.0)


def test_hd95_empty_cases():
    empty = np.zeros((10, 10), np.uint8)
    assert math.isnan(hausdorff95(empty, empty, (1.0, 1.0)))
    assert hausdorff95(square((10, 10), 2, 2, 3), empty, (1.0, 1.0)) == math.inf
    assert hausdorff95(empty, square((10, 10), 2, 2, 3), (1.0, 1.0)) == math.inf


def test_hd95_of_concentric_squares_takes_the_larger_directed_percentile():
    """A 20x20 square inside a 24x24 one (2 px margin): every inner boundary pixel is 2 px from the outer
    boundary; of the 92 outer boundary pixels 80 are 2 px, 8 are sqrt(5) px and 4 (corners) sqrt(8) px from
    the inner boundary, so the outer->inner 95th percentile is sqrt(5) px."""
    inner = square((40, 40), 10, 10, 20)
    outer = square((40, 40), 8, 8, 24)
    to_outer, to_inner = surface_distances(inner, outer, (1.0, 1.0))
    assert to_outer.size == 76 and np.allclose(to_outer, 2.0)
    assert to_inner.size == 92
    assert sorted(np.round(to_inner, 6).tolist()).count(round(math.sqrt(8), 6)) == 4
    assert hausdorff95(inner, outer, (1.0, 1.0)) == pytest.approx(math.sqrt(5))
    assert hausdorff95(inner, outer, (0.8, 0.8)) == pytest.approx(0.8 * math.sqrt(5))


# ------------------------------------------------------------------------------------------------ NSD
@pytest.mark.parametrize("tolerance, expected", [
    (1.99, 0.0),                      # nothing is within 2 px
    (2.0, (168 - 12) / 168),          # the tolerance itself counts: all but the 12 outer pixels beyond 2 px
    (2.2, (168 - 12) / 168),
    (math.sqrt(5), (168 - 4) / 168),  # now the 8 pixels at sqrt(5) too
    (math.sqrt(8), 1.0),              # and the corners
])
def test_nsd_at_tolerance_boundaries(tolerance, expected):
    inner = square((40, 40), 10, 10, 20)
    outer = square((40, 40), 8, 8, 24)
    assert normalized_surface_dice(inner, outer, (1.0, 1.0), tolerance) == pytest.approx(expected)


def test_nsd_scales_with_spacing_and_defines_empty_cases():
    inner = square((40, 40), 10, 10, 20)
    outer = square((40, 40), 8, 8, 24)
    assert normalized_surface_dice(inner, outer, (0.5, 0.5), 1.0) == pytest.approx((168 - 12) / 168)
    empty = np.zeros((40, 40), np.uint8)
    assert math.isnan(normalized_surface_dice(empty, empty, (1.0, 1.0), 1.0))
    assert normalized_surface_dice(inner, empty, (1.0, 1.0), 1.0) == 0.0
    assert normalized_surface_dice(inner, inner, (1.0, 1.0), 0.0) == 1.0


# ------------------------------------------------------------------------------------------------ areas, slices
def test_area_error_in_cm2_with_anisotropic_pixels():
    ref = square(size=10)          # 100 pixels
    pred = square(size=10)
    pred[20:30, 30:40] = 1         # 100 more pixels
    # pixel = 0.5 mm x 0.8 mm = 0.4 mm2; 100 pixels = 40 mm2 = 0.4 cm2
    assert area_error_cm2(pred, ref, (0.5, 0.8)) == pytest.approx(0.4)
    assert area_error_cm2(ref, pred, (0.5, 0.8)) == pytest.approx(-0.4)
    assert area_error_cm2(np.zeros_like(ref), np.zeros_like(ref), (1.0, 1.0)) == 0.0
    with pytest.raises(InvalidImageError, match="2D"):
        area_error_cm2(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), (1.0, 1.0, 1.0))


def test_slice_position_error_uses_spacing_and_the_superior_direction():
    up = Image(np.zeros((20, 4, 4)), (0.7, 0.7, 2.5))  # k runs towards +S
    assert slice_position_error_mm(7, 3, up) == pytest.approx(10.0)
    assert slice_position_error_mm(3, 7, up) == pytest.approx(-10.0)
    down = Image(np.zeros((20, 4, 4)), (0.7, 0.7, 2.5), direction=np.diag([1.0, 1.0, -1.0]))  # k runs to -S
    assert slice_position_error_mm(7, 3, down) == pytest.approx(-10.0)
    assert slice_position_error_mm(5, 5, down) == 0.0
    with pytest.raises(InvalidImageError, match="outside"):
        slice_position_error_mm(20, 3, up)


# ------------------------------------------------------------------------------------------------ tables
def test_evaluate_pairs_rows_and_summary():
    ref_a = Image(square(), (0.5, 0.8))
    pred_a = ref_a.with_array(square(left=15))
    ref_b = Image(square(), (0.5, 0.8))
    pred_b = ref_b.with_array(square())
    rows = evaluate_pairs([("a", pred_a, ref_a), ("b", pred_b, ref_b)], {1: "skeletal_muscle", 2: "visceral_fat"})
    assert [(r["case"], r["class"]) for r in rows] == [("a", "skeletal_muscle"), ("a", "visceral_fat"),
                                                       ("b", "skeletal_muscle"), ("b", "visceral_fat")]
    assert rows[0]["dice"] == pytest.approx(0.5) and rows[2]["dice"] == 1.0
    assert rows[0]["area_error_cm2"] == pytest.approx(0.0)
    assert math.isnan(rows[1]["dice"])
    summary = {(s["class"], s["metric"]): s for s in summarise(rows)}
    muscle = summary[("skeletal_muscle", "dice")]
    assert muscle["n"] == 2 and muscle["mean"] == pytest.approx(0.75) and muscle["median"] == pytest.approx(0.75)
    assert muscle["sd"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert summary[("visceral_fat", "dice")]["n_undefined"] == 2
    text = format_summary(summarise(rows))
    assert "skeletal_muscle" in text and "2 undefined" in text


def test_evaluate_pairs_refuses_maps_on_other_grids():
    ref = Image(square(), (0.5, 0.8))
    pred = Image(square(), (0.5, 0.9))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        evaluate_pairs([("a", pred, ref)], {1: "skeletal_muscle"})


def test_evaluate_folders_matches_classes_by_name_and_names_plain_files_from_their_counterpart(tmp_path):
    import SimpleITK as sitk

    from mskseg.errors import MSKSegError
    from mskseg.io.segnrrd import write_seg_nrrd
    from mskseg.train.evaluate import evaluate_folders

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    (pred_dir / "case1").mkdir(parents=True)
    lab = np.zeros((3, 20, 20), np.uint8)
    lab[1, 2:10, 2:10] = 1
    lab[1, 12:18, 5:15] = 2
    grid = Image(lab, (0.7, 0.7, 3.0))
    # reference: values 1 = muscle, 2 = fat; prediction: the same classes numbered the other way round
    write_seg_nrrd(ref_dir / "case1.seg.nrrd", grid, {1: "skeletal_muscle", 2: "subcutaneous_fat"})
    swapped = np.where(lab == 1, 2, np.where(lab == 2, 1, 0)).astype(np.uint8)
    write_seg_nrrd(pred_dir / "case1" / "segmentation.seg.nrrd", grid.with_array(swapped),
                   {2: "skeletal_muscle", 1: "subcutaneous_fat"})
    rows, labels = evaluate_folders(pred_dir, ref_dir)
    assert sorted(labels.values()) == ["skeletal_muscle", "subcutaneous_fat"]
    assert [r["dice"] for r in rows] == [1.0, 1.0]
    assert rows[0]["volume_error_cm3"] == 0.0

    # a plain NIfTI prediction (no names) takes the reference's names for its values
    sitk.WriteImage(grid.to_sitk(), str(ref_dir / "case2.nii.gz"))
    write_seg_nrrd(ref_dir / "case2.seg.nrrd", grid, {1: "skeletal_muscle", 2: "subcutaneous_fat"})
    (ref_dir / "case2.nii.gz").rename(pred_dir / "case2.nii.gz")
    rows, _ = evaluate_folders(pred_dir, ref_dir)
    assert all(r["dice"] == 1.0 for r in rows if r["case"] == "case2")

    (ref_dir / "case3.seg.nrrd").write_bytes((ref_dir / "case2.seg.nrrd").read_bytes())
    with pytest.raises(MSKSegError, match="no prediction: case3"):
        evaluate_folders(pred_dir, ref_dir)
    rows, _ = evaluate_folders(pred_dir, ref_dir, allow_missing=True)
    assert {r["case"] for r in rows} == {"case1", "case2"}
