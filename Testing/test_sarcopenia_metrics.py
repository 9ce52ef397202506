"""Body-composition measures, HU windows, patient data and published cut-offs on hand-made label maps.

Every expected number below is worked out by hand from the pixel counts, the spacing and the HU values that
the maps are painted with, not computed by the code under test.
"""
from __future__ import annotations

import numpy as np
import pytest

from mskseg.errors import GeometryMismatchError, MSKSegError
from mskseg.image import Image
from mskseg.sarcopenia.cutoffs import CUTOFF_SETS, classify, get_cutoff_set
from mskseg.sarcopenia.metrics import (TISSUE_LABELS, apply_windows, measure_body_composition, tissue_masks)
from mskseg.sarcopenia.settings import (VAT_HU_WIDE, BodyCompSettings, PatientInfo, parse_dicom_age,
                                        patient_from_metadata)

SPACING = (0.5, 0.8, 2.5)  # mm: one pixel is 0.4 mm2 = 0.004 cm2
PIXEL_CM2 = 0.004
ORIGIN = (-10.0, 20.0, 100.0)


def _paint_slice(hu: np.ndarray, lab: np.ndarray) -> None:
    """Paint one 40 x 50 slice with known tissues (see the expected values in ``test_metrics_exact...``).

    Muscle (label 1), rows 5..14 x cols 5..24 (10 x 20 = 200 px): 150 px at 40 HU, 10 px at -29 HU (the window's
    edge, still muscle), 30 px at -100 HU (IMAT window: intermuscular fat), 10 px at 300 HU (bone: dropped).
    IMAT label (4), 5 px at -50 HU. SAT (2), 10 x 20 px: 180 px at -100 HU, 20 px at 0 HU (dropped).
    VAT (3), 10 x 10 px: 60 px at -100 HU, 40 px at -170 HU (outside the default -150..-50 window).
    Unlabelled pixels are 40 HU (muscle-like): they must not count.
    """
    hu[:] = 40
    lab[5:15, 5:25] = 1
    muscle = hu[5:15, 5:25]  # a view: rows of 20 px
    muscle[7, 0:10] = 300  # 10 px
    muscle[7, 10:20] = -29  # 10 px
    muscle[8, :] = -100  # 20 px
    muscle[9, 0:10] = -100  # 10 px
    lab[2, 30:35] = 4
    hu[2, 30:35] = -50
    lab[20:30, 5:25] = 2
    hu[20:30, 5:25] = -100
    hu[20, 5:25] = 0
    lab[20:30, 30:40] = 3
    hu[20:26, 30:40] = -100
    hu[26:30, 30:40] = -170


@pytest.fixture
def ct_and_labels() -> tuple[Image, Image]:
    """A 3-slice CT (HU) and its tissue label map; slice 1 painted by ``_paint_slice``, slices 0 and 2 simpler."""
    hu = np.full((3, 40, 50), -1000, np.int16)
    lab = np.zeros((3, 40, 50), np.uint8)
    _paint_slice(hu[1], lab[1])
    # slice 0: 100 px muscle at 50 HU, 100 px SAT at -100, 50 px VAT at -100
    lab[0, 0:10, 0:10], hu[0, 0:10, 0:10] = 1, 50
    lab[0, 20:30, 0:10], hu[0, 20:30, 0:10] = 2, -100
    lab[0, 30:35, 20:30], hu[0, 30:35, 20:30] = 3, -100
    # slice 2: 300 px muscle at 30 HU, 250 px SAT at -100, 150 px VAT at -80
    lab[2, 0:15, 0:20], hu[2, 0:15, 0:20] = 1, 30
    lab[2, 20:30, 0:25], hu[2, 20:30, 0:25] = 2, -100
    lab[2, 30:40, 20:35], hu[2, 30:40, 20:35] = 3, -80
    image = Image(hu, SPACING, ORIGIN, None, {"Modality": "CT"})
    return image, image.with_array(lab)


# --------------------------------------------------------------------------------------------- measures
def test_metrics_exact_on_hand_made_slice_with_imat_inside_muscle(ct_and_labels):
    image, labelmap = ct_and_labels
    result = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], PatientInfo(), BodyCompSettings(),
                                      "Prado 2008")
    assert len(result.rows) == 1
    row = result.rows[0]
    muscle_values = [40.0] * 150 + [-29.0] * 10
    imat_values = [-100.0] * 30 + [-50.0] * 5
    assert row["slice_index"] == 1 and row["row"] == "slice" and row["level"] == "L3"
    assert row["position_mm"] == pytest.approx(102.5)
    assert row["SMA_cm2"] == pytest.approx(160 * PIXEL_CM2, rel=1e-12)  # 0.64
    assert row["SMD_HU"] == pytest.approx((150 * 40 - 10 * 29) / 160, rel=1e-12)  # 35.6875
    assert row["SM_sd_HU"] == pytest.approx(np.std(muscle_values, ddof=1), rel=1e-12)
    assert row["IMAT_cm2"] == pytest.approx(35 * PIXEL_CM2, rel=1e-12)
    assert row["IMAT_mean_HU"] == pytest.approx((30 * -100 + 5 * -50) / 35, rel=1e-12)
    assert row["IMAT_sd_HU"] == pytest.approx(np.std(imat_values, ddof=1), rel=1e-12)
    assert row["SAT_cm2"] == pytest.approx(180 * PIXEL_CM2, rel=1e-12)  # 0.72
    assert row["SAT_mean_HU"] == pytest.approx(-100.0) and row["SAT_sd_HU"] == pytest.approx(0.0)
    assert row["VAT_cm2"] == pytest.approx(60 * PIXEL_CM2, rel=1e-12)  # 0.24, the -170 HU pixels left out
    assert row["VAT_mean_HU"] == pytest.approx(-100.0)
    assert row["TAT_cm2"] == pytest.approx((180 + 60 + 35) * PIXEL_CM2, rel=1e-12)
    assert row["VAT_SAT_ratio"] == pytest.approx(60 / 180, rel=1e-12)
    assert result.units["SMA_cm2"] == "cm2" and result.units["SMD_HU"] == "HU"


def test_area_of_a_10_by_20_block_at_half_by_0_8_mm_is_0_8_cm2():
    hu = np.full((30, 40), 50, np.int16)
    lab = np.zeros((30, 40), np.uint8)
    lab[3:13, 4:24] = 1
    image = Image(hu, (0.5, 0.8))
    result = measure_body_composition(image, image.with_array(lab), TISSUE_LABELS, [0], None)
    row = result.rows[0]
    assert row["SMA_cm2"] == pytest.approx(0.8, rel=1e-12)
    assert row["SMD_HU"] == 50.0 and row["SM_sd_HU"] == 0.0
    assert row["position_mm"] is None  # a single 2D slice has no z


def test_area_uses_in_plane_spacing_only_on_an_oblique_volume(oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    result = measure_body_composition(oblique_ct, labelmap, labels, [2], None)
    muscle = (labelmap.array[2] == 1) & (oblique_ct.array[2] >= -29) & (oblique_ct.array[2] <= 150)
    assert result.rows[0]["SMA_cm2"] == pytest.approx(muscle.sum() * 0.8 * 0.7 / 100, rel=1e-12)
    centre = oblique_ct.index_to_physical(np.array([11.5, 9.5, 2.0]))
    assert result.rows[0]["position_mm"] == pytest.approx(centre[2])


def test_smi_and_bmi_exact(ct_and_labels):
    image, labelmap = ct_and_labels
    patient = PatientInfo(height_m=1.6, weight_kg=64.0, sex="F")
    row = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], patient, None, "Prado 2008").rows[0]
    assert row["SMI_cm2_m2"] == pytest.approx(0.64 / 2.56, rel=1e-12)
    assert row["SMI_reason"] is None
    assert row["BMI"] == pytest.approx(25.0, rel=1e-12)
    assert (row["height_m"], row["weight_kg"], row["sex"]) == (1.6, 64.0, "F")


def test_unknown_height_gives_no_smi_and_says_why(ct_and_labels):
    image, labelmap = ct_and_labels
    result = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], PatientInfo(sex="M", weight_kg=80),
                                      None, "Derstine 2018")
    row = result.rows[0]
    assert row["SMI_cm2_m2"] is None and "height unknown" in row["SMI_reason"]
    assert row["BMI"] is None
    assert row["sarcopenia"] is None and "height unknown" in row["sarcopenia_reason"]
    assert row["sarcopenia_SMI_threshold"] == 45.4  # the threshold is known, only the SMI is not
    assert row["low_radiodensity"] is True  # SMD 35.69 < 38.5 HU needs no height
    assert row["low_radiodensity_SMD_threshold_HU"] == 38.5 and row["low_radiodensity_reason"] is None


def test_muscle_window_setting_changes_sma(ct_and_labels):
    image, labelmap = ct_and_labels
    settings = BodyCompSettings(muscle_hu=(0, 150))  # the 10 px at -29 HU are no longer muscle (nor IMAT)
    row = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], None, settings).rows[0]
    assert row["SMA_cm2"] == pytest.approx(150 * PIXEL_CM2, rel=1e-12)
    assert row["SMD_HU"] == pytest.approx(40.0)
    assert row["IMAT_cm2"] == pytest.approx(35 * PIXEL_CM2, rel=1e-12)
    assert row["muscle_window_HU"] == "0..150"


def test_wide_vat_window_setting_counts_the_minus_170_hu_pixels(ct_and_labels):
    image, labelmap = ct_and_labels
    default = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], None).rows[0]
    wide = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], None,
                                    BodyCompSettings(vat_hu=VAT_HU_WIDE)).rows[0]
    assert default["VAT_cm2"] == pytest.approx(60 * PIXEL_CM2, rel=1e-12)
    assert wide["VAT_cm2"] == pytest.approx(100 * PIXEL_CM2, rel=1e-12)
    assert wide["VAT_mean_HU"] == pytest.approx((60 * -100 + 40 * -170) / 100, rel=1e-12)
    assert wide["TAT_cm2"] == pytest.approx((180 + 100 + 35) * PIXEL_CM2, rel=1e-12)
    assert (default["vat_window_HU"], wide["vat_window_HU"]) == ("-150..-50", "-190..-30")
    assert default["SAT_cm2"] == wide["SAT_cm2"] and default["SMA_cm2"] == wide["SMA_cm2"]


def test_windows_are_reported_in_every_row_the_summary_and_the_json(ct_and_labels):
    image, labelmap = ct_and_labels
    result = measure_body_composition(image, labelmap, TISSUE_LABELS, [0, 1, 2], None)
    expected = {"muscle_hu": [-29.0, 150.0], "imat_hu": [-190.0, -30.0], "sat_hu": [-190.0, -30.0],
                "vat_hu": [-150.0, -50.0]}
    assert BodyCompSettings().as_dict() == expected
    for row in result.rows:
        assert (row["muscle_window_HU"], row["imat_window_HU"], row["sat_window_HU"], row["vat_window_HU"]) == (
            "-29..150", "-190..-30", "-190..-30", "-150..-50")
    assert result.summary["settings"] == expected
    assert result.to_dict()["settings"] == expected


def test_empty_or_reversed_window_is_refused():
    with pytest.raises(MSKSegError, match="vat_hu"):
        BodyCompSettings(vat_hu=(-50, -150))
    with pytest.raises(MSKSegError, match="muscle_hu"):
        BodyCompSettings(muscle_hu=(10, 10))


def test_apply_windows_moves_fat_in_muscle_to_imat_and_drops_out_of_window_pixels(ct_and_labels):
    image, labelmap = ct_and_labels
    hu, lab = image.array[1], labelmap.array[1]
    windowed = apply_windows(hu, lab, BodyCompSettings())
    assert windowed.dtype == lab.dtype and windowed.shape == lab.shape
    counts = {v: int((windowed == v).sum()) for v in (1, 2, 3, 4)}
    assert counts == {1: 160, 2: 180, 3: 60, 4: 35}
    assert np.all(windowed[5:15, 5:25][8, :] == 4)  # muscle pixels at -100 HU became IMAT
    assert np.all(windowed[5:15, 5:25][7, 0:10] == 0)  # muscle-labelled bone (300 HU) dropped
    assert np.all(windowed[20, 5:25] == 0)  # SAT-labelled 0 HU dropped
    assert np.all(windowed[26:30, 30:40] == 0)  # VAT-labelled -170 HU dropped by the default VAT window
    masks = tissue_masks(hu, lab, BodyCompSettings())
    total = sum(m.astype(int) for m in masks.values())
    assert total.max() == 1  # the tissue masks never overlap


def test_apply_windows_without_an_imat_label_to_give_says_so(ct_and_labels):
    image, labelmap = ct_and_labels
    with pytest.raises(MSKSegError, match="intermuscular_fat"):
        apply_windows(image.array[1], labelmap.array[1], BodyCompSettings(),
                      {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat", 4: "other"})


def test_slab_gives_a_row_per_slice_and_a_mean_row(ct_and_labels):
    image, labelmap = ct_and_labels
    patient = PatientInfo(height_m=2.0, weight_kg=80.0, sex="M")  # BMI 20
    result = measure_body_composition(image, labelmap, TISSUE_LABELS, [2, 0, 1, 1], patient, None, "Martin 2013",
                                      level="L3", method="rules", slice_source="user")
    assert [r["row"] for r in result.rows] == ["slice", "slice", "slice", "mean"]
    assert [r["slice_index"] for r in result.rows] == [0, 1, 2, None]
    assert [r["SMA_cm2"] for r in result.rows[:3]] == pytest.approx([0.4, 0.64, 1.2], rel=1e-12)
    mean = result.rows[-1]
    assert mean is result.summary_row and mean["n_slices"] == 3
    assert mean["position_mm"] == pytest.approx(102.5)
    assert mean["SMA_cm2"] == pytest.approx((0.4 + 0.64 + 1.2) / 3, rel=1e-12)
    assert mean["SMD_HU"] == pytest.approx((50 + 35.6875 + 30) / 3, rel=1e-12)
    assert mean["SAT_cm2"] == pytest.approx((0.4 + 0.72 + 1.0) / 3, rel=1e-12)
    assert mean["VAT_cm2"] == pytest.approx((0.2 + 0.24 + 0.6) / 3, rel=1e-12)
    assert mean["IMAT_cm2"] == pytest.approx(0.14 / 3, rel=1e-12)
    assert mean["IMAT_mean_HU"] == pytest.approx((30 * -100 + 5 * -50) / 35, rel=1e-12)  # only slice 1 has IMAT
    assert mean["TAT_cm2"] == pytest.approx(1.1, rel=1e-12)
    assert mean["VAT_SAT_ratio"] == pytest.approx(1.04 / 2.12, rel=1e-12)
    assert mean["SMI_cm2_m2"] == pytest.approx((0.4 + 0.64 + 1.2) / 3 / 4.0, rel=1e-12)
    assert mean["sarcopenia"] is True and mean["sarcopenia_SMI_threshold"] == 43.0
    assert mean["low_radiodensity"] is True and mean["low_radiodensity_SMD_threshold_HU"] == 41.0  # 38.56 < 41
    assert result.rows[0]["low_radiodensity"] is False  # slice 0: SMD 50
    assert all(r["method"] == "rules" and r["slice_source"] == "user" and r["level"] == "L3" for r in result.rows)
    assert result.summary["slices"] == [0, 1, 2]
    assert result.summary["SMA_cm2"] == mean["SMA_cm2"]
    assert set(result.summary["classification_all_sets"]) == set(CUTOFF_SETS)


def test_muscle_group_labels_count_as_muscle_and_get_their_own_area(ct_and_labels):
    image, labelmap = ct_and_labels
    lab = labelmap.array.copy()
    lab[1, 5:10, 5:15] = 5  # 50 px of the muscle block (all at 40 HU) painted as psoas
    labels = {**TISSUE_LABELS, 5: "psoas"}
    groups = np.zeros_like(lab)
    groups[1, 12:14, 5:25] = 6  # muscle rows 7..8: 10 px bone, 10 px at -29 HU, 20 px at -100 HU (IMAT)
    row = measure_body_composition(image, labelmap.with_array(lab), labels, [1], None,
                                   group_labelmap=labelmap.with_array(groups), group_labels={6: "paraspinal"}).rows[0]
    assert row["SMA_cm2"] == pytest.approx(160 * PIXEL_CM2, rel=1e-12)  # unchanged by the psoas paint
    assert row["psoas_cm2"] == pytest.approx(50 * PIXEL_CM2, rel=1e-12)
    assert row["psoas_mean_HU"] == pytest.approx(40.0)
    assert row["paraspinal_cm2"] == pytest.approx(10 * PIXEL_CM2, rel=1e-12)  # only the -29 HU pixels
    assert row["paraspinal_mean_HU"] == pytest.approx(-29.0)


def test_window_warning_names_the_slice_and_tissue(ct_and_labels):
    image, labelmap = ct_and_labels
    result = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], None)
    assert any("slice 1" in w and "visceral fat" in w and "40 %" in w for w in result.warnings)
    assert not any("muscle-labelled" in w for w in result.warnings)  # 10 of 200 px dropped: 5 %


def test_bad_slices_grids_and_set_names_raise_clear_errors(ct_and_labels, oblique_ct):
    image, labelmap = ct_and_labels
    with pytest.raises(MSKSegError, match="outside the image"):
        measure_body_composition(image, labelmap, TISSUE_LABELS, [3], None)
    with pytest.raises(MSKSegError, match="no slice"):
        measure_body_composition(image, labelmap, TISSUE_LABELS, [], None)
    with pytest.raises(MSKSegError, match="unknown cut-off set"):
        measure_body_composition(image, labelmap, TISSUE_LABELS, [1], None, None, "Prado 2009")
    shifted = Image(labelmap.array, SPACING, (0.0, 20.0, 100.0))
    with pytest.raises(GeometryMismatchError):
        measure_body_composition(image, shifted, TISSUE_LABELS, [1], None)


# --------------------------------------------------------------------------------------------- cut-offs
def test_cutoff_sets_are_exactly_the_five_published_sets():
    assert list(CUTOFF_SETS) == ["Prado 2008", "Martin 2013", "Derstine 2018", "Yoon 2021", "Kamo 2019"]
    assert get_cutoff_set(" martin 2013 ").name == "Martin 2013"
    with pytest.raises(MSKSegError) as err:
        get_cutoff_set("Baumgartner 1998")
    assert "Derstine 2018" in str(err.value)


#: (set, sex, BMI or None, SMI threshold in cm2/m2), written from BODYCOMP.md.
SMI_THRESHOLDS = [
    ("Prado 2008", "M", None, 52.4), ("Prado 2008", "F", None, 38.5),
    ("Martin 2013", "M", 24.9, 43.0), ("Martin 2013", "M", 25.1, 53.0),
    ("Martin 2013", "F", 24.9, 41.0), ("Martin 2013", "F", 25.1, 41.0),
    ("Derstine 2018", "M", None, 45.4), ("Derstine 2018", "F", None, 34.4),
    ("Yoon 2021", "M", None, 39.33), ("Yoon 2021", "F", None, 27.77),
    ("Kamo 2019", "M", None, 40.31), ("Kamo 2019", "F", None, 30.88),
]


def _patient(sex: str | None, bmi: float | None, height_m: float = 1.7) -> PatientInfo:
    return PatientInfo(height_m, None if bmi is None else bmi * height_m ** 2, sex)


@pytest.mark.parametrize("set_name, sex, bmi, threshold", SMI_THRESHOLDS)
def test_smi_cutoff_boundaries(set_name, sex, bmi, threshold):
    patient = _patient(sex, 22.0 if bmi is None else bmi)
    below = classify(threshold - 0.01, 45.0, patient, set_name)
    at = classify(threshold, 45.0, patient, set_name)
    above = classify(threshold + 0.01, 45.0, patient, set_name)
    assert (below["sarcopenia"], at["sarcopenia"], above["sarcopenia"]) == (True, False, False)
    assert below["sarcopenia_SMI_threshold"] == threshold and below["sarcopenia_reason"] is None
    assert f"< {threshold:g} cm2/m2" in below["sarcopenia_rule"]


#: (set, sex, BMI, SMD threshold in HU), written from BODYCOMP.md.
SMD_THRESHOLDS = [
    ("Martin 2013", "M", 24.9, 41.0), ("Martin 2013", "F", 24.9, 41.0),
    ("Martin 2013", "M", 25.1, 33.0), ("Martin 2013", "F", 25.1, 33.0),
    ("Derstine 2018", "M", 22.0, 38.5), ("Derstine 2018", "F", 22.0, 34.3),
]


@pytest.mark.parametrize("set_name, sex, bmi, threshold", SMD_THRESHOLDS)
def test_smd_cutoff_boundaries(set_name, sex, bmi, threshold):
    patient = _patient(sex, bmi)
    flags = [classify(60.0, smd, patient, set_name)["low_radiodensity"]
             for smd in (threshold - 0.01, threshold, threshold + 0.01)]
    assert flags == [True, False, False]
    assert classify(60.0, 20.0, patient, set_name)["low_radiodensity_SMD_threshold_HU"] == threshold


@pytest.mark.parametrize("set_name", ["Prado 2008", "Yoon 2021", "Kamo 2019"])
def test_sets_without_radiodensity_cutoff_leave_the_flag_undecided(set_name):
    flags = classify(30.0, 10.0, _patient("M", 22.0), set_name)
    assert flags["low_radiodensity"] is None and flags["low_radiodensity_SMD_threshold_HU"] is None
    assert "defines no muscle radiodensity cut-off" in flags["low_radiodensity_reason"]


def test_martin_bmi_of_exactly_25_falls_in_the_upper_group():
    patient = PatientInfo(height_m=1.6, weight_kg=64.0, sex="M")  # 64 / 1.6^2 = 25.0 (24.999999999999996 in floats)
    flags = classify(50.0, 35.0, patient, "Martin 2013")
    assert flags["sarcopenia_SMI_threshold"] == 53.0 and flags["sarcopenia"] is True
    assert flags["low_radiodensity_SMD_threshold_HU"] == 33.0 and flags["low_radiodensity"] is False
    assert "BMI >= 25" in flags["sarcopenia_rule"]


def test_unknown_sex_leaves_sex_specific_flags_undecided_but_not_martin_radiodensity():
    patient = PatientInfo(height_m=1.7, weight_kg=80.0, sex=None)  # BMI 27.7
    derstine = classify(30.0, 30.0, patient, "Derstine 2018")
    assert derstine["sarcopenia"] is None and "sex unknown" in derstine["sarcopenia_reason"]
    assert derstine["low_radiodensity"] is None and "sex unknown" in derstine["low_radiodensity_reason"]
    martin = classify(30.0, 30.0, patient, "Martin 2013")
    assert martin["sarcopenia"] is None and "sex unknown" in martin["sarcopenia_reason"]
    assert martin["low_radiodensity"] is True and martin["low_radiodensity_SMD_threshold_HU"] == 33.0


def test_martin_needs_the_bmi_for_men_but_not_for_women_smi():
    men = classify(50.0, 35.0, PatientInfo(height_m=1.7, sex="M"), "Martin 2013")
    assert men["sarcopenia"] is None and men["sarcopenia_SMI_threshold"] is None
    assert "BMI needed" in men["sarcopenia_reason"] and "weight unknown" in men["sarcopenia_reason"]
    assert men["low_radiodensity"] is None and "weight unknown" in men["low_radiodensity_reason"]
    women = classify(40.0, 35.0, PatientInfo(height_m=1.7, sex="F"), "Martin 2013")
    assert women["sarcopenia"] is True and women["sarcopenia_SMI_threshold"] == 41.0


def test_unknown_height_leaves_smi_flag_undecided_with_reason():
    flags = classify(None, 45.0, PatientInfo(sex="F"), "Prado 2008")
    assert flags["sarcopenia"] is None and flags["sarcopenia_SMI_threshold"] == 38.5
    assert "height unknown" in flags["sarcopenia_reason"]


# --------------------------------------------------------------------------------------------- patient
def test_patient_from_dicom_metadata():
    patient = patient_from_metadata({"PatientSize": 1.78, "PatientWeight": 82.0, "PatientSex": "M",
                                     "PatientAge": "065Y", "Modality": "CT"})
    assert (patient.height_m, patient.weight_kg, patient.sex, patient.age_years) == (1.78, 82.0, "M", 65.0)
    assert patient.bmi == pytest.approx(82.0 / 1.78 ** 2, rel=1e-12)
    assert patient.sources == {"height_m": "DICOM PatientSize", "weight_kg": "DICOM PatientWeight",
                               "sex": "DICOM PatientSex", "age_years": "DICOM PatientAge"}
    text = patient_from_metadata({"PatientSize": "1.65", "PatientWeight": "70", "PatientSex": "F ",
                                  "PatientAge": "018M"})
    assert (text.height_m, text.weight_kg, text.sex, text.age_years) == (1.65, 70.0, "F", 1.5)


def test_user_values_override_dicom_values():
    patient = patient_from_metadata({"PatientSize": 1.78, "PatientWeight": 82.0, "PatientSex": "M"},
                                    height_m=1.65, weight_kg=60, sex="f")
    assert (patient.height_m, patient.weight_kg, patient.sex) == (1.65, 60.0, "F")
    assert patient.sources == {"height_m": "user", "weight_kg": "user", "sex": "user"}


def test_missing_or_unrecorded_dicom_values_are_unknown():
    patient = patient_from_metadata({"PatientSize": 0, "PatientWeight": "", "PatientSex": "O",
                                     "PatientAge": "sixty"})
    assert (patient.height_m, patient.weight_kg, patient.sex, patient.age_years) == (None, None, None, None)
    assert patient.bmi is None and patient.sources == {}
    assert any("PatientAge" in note for note in patient.notes)
    assert patient_from_metadata(None) == PatientInfo()


def test_height_in_centimetres_is_refused_with_a_hint_about_metres():
    with pytest.raises(MSKSegError) as err:
        patient_from_metadata({}, height_m=178)
    assert "metres" in str(err.value) and "1.78" in err.value.hint
    with pytest.raises(MSKSegError) as err:
        patient_from_metadata({"PatientSize": 178.0})
    assert "PatientSize" in str(err.value) and "metres" in err.value.hint and "DICOM header" in err.value.hint
    assert patient_from_metadata({"PatientSize": 178.0}, height_m=1.78).height_m == 1.78  # the user's value wins


@pytest.mark.parametrize("kwargs, words", [
    ({"weight_kg": 820}, "kilograms"), ({"weight_kg": -3}, "kilograms"), ({"height_m": 0.1}, "metres"),
    ({"height_m": 0.5}, "not a plausible height"), ({"weight_kg": 12}, "not a plausible weight"),
    ({"sex": "X"}, "'M' or 'F'"), ({"height_m": "tall"}, "not a number"), ({"age_years": 200}, "years"),
])
def test_implausible_user_values_are_refused(kwargs, words):
    with pytest.raises(MSKSegError, match=words):
        patient_from_metadata({}, **kwargs)


def test_the_patient_line_names_each_value_and_its_source():
    patient = patient_from_metadata({"PatientSize": 1.78, "PatientWeight": 82.0, "PatientSex": "M"}, weight_kg=80)
    assert patient.describe() == "male (DICOM), 1.78 m (DICOM), 80 kg (given), BMI 25.2"
    assert patient_from_metadata({}).describe() == "sex unknown, height unknown, weight unknown"
    assert patient_from_metadata({"PatientSex": "F"}, height_m=1.6).describe() == \
        "female (DICOM), 1.60 m (given), weight unknown"
    assert patient_from_metadata({"PatientSize": 1.78, "PatientWeight": 82.0, "PatientSex": "M"}).describe() == \
        "male, 1.78 m, 82 kg, BMI 25.9 (DICOM)"
    with pytest.raises(MSKSegError, match="PatientSize 0.5 is not a plausible height"):
        patient_from_metadata({"PatientSize": 0.5})  # a wrong header is refused too, not measured


def test_dicom_age_strings():
    assert parse_dicom_age("065Y") == (65.0, None)
    assert parse_dicom_age("006M") == (0.5, None)
    assert parse_dicom_age("052W")[0] == pytest.approx(52 * 7 / 365.25)
    assert parse_dicom_age("") == (None, None)
    age, note = parse_dicom_age("65 years")
    assert age is None and "065Y" in note


def test_overlapping_imat_window_takes_muscle_pixels_as_imat(ct_and_labels):
    image, labelmap = ct_and_labels
    settings = BodyCompSettings(imat_hu=(-190, 0))  # now -29 HU is in both windows: IMAT wins
    row = measure_body_composition(image, labelmap, TISSUE_LABELS, [1], None, settings).rows[0]
    assert row["SMA_cm2"] == pytest.approx(150 * PIXEL_CM2, rel=1e-12)
    assert row["IMAT_cm2"] == pytest.approx(45 * PIXEL_CM2, rel=1e-12)
    assert row["imat_window_HU"] == "-190..0"


def test_segments_named_by_display_name_are_measured(ct_and_labels):
    image, labelmap = ct_and_labels
    labels = {1: "Skeletal muscle", 2: "subcutaneous adipose tissue", 3: "Visceral adipose tissue",
              4: "Intermuscular adipose tissue"}
    row = measure_body_composition(image, labelmap, labels, [1], None).rows[0]
    assert row["SMA_cm2"] == pytest.approx(160 * PIXEL_CM2, rel=1e-12)
    assert row["SAT_cm2"] == pytest.approx(180 * PIXEL_CM2, rel=1e-12)
    assert row["VAT_cm2"] == pytest.approx(60 * PIXEL_CM2, rel=1e-12)
    assert row["IMAT_cm2"] == pytest.approx(35 * PIXEL_CM2, rel=1e-12)


def test_classes_that_are_not_tissues_are_not_measured(ct_and_labels):
    image, labelmap = ct_and_labels
    labels = {1: "vertebrae_L3", 2: "subcutaneous_fat", 3: "visceral_fat", 4: "intermuscular_fat"}
    result = measure_body_composition(image, labelmap, labels, [1], PatientInfo(1.7, 70.0, "M"), None, "Prado 2008")
    row = result.rows[0]
    assert row["SMA_cm2"] == 0.0 and row["SMD_HU"] is None
    assert row["SMI_cm2_m2"] is None and "no skeletal muscle" in row["SMI_reason"]
    assert row["sarcopenia"] is None and "no skeletal muscle" in row["sarcopenia_reason"]
    assert any("slice 1: no skeletal muscle" in w for w in result.warnings)
    assert row["IMAT_cm2"] == pytest.approx(5 * PIXEL_CM2, rel=1e-12)  # only the IMAT-labelled pixels
