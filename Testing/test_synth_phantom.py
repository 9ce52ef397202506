"""Synthetic L3 phantoms, tissue HU sampling and scan artefacts: determinism and label/intensity agreement."""
from __future__ import annotations

import numpy as np
import pytest

from mskseg.errors import OutputExistsError
from mskseg.synth import artifacts
from mskseg.synth.phantom import (ANATOMY_LABELS, FAT_WINDOW, GROUP_LABELS, MUSCLE_WINDOW, TISSUE_LABELS,
                                  make_l3_batch, make_l3_phantom)
from mskseg.synth.tissues import TISSUE_NAMES, sample_scan_params, sample_tissue_hu
from mskseg.terminology import get_class

A = {name: value for value, name in ANATOMY_LABELS.items()}
N_SURVEY = 30


@pytest.fixture(scope="module")
def survey():
    """30 phantoms of one batch at 256 x 256 (same anatomy, coarser pixels) to keep the suite fast."""
    return make_l3_batch(7, N_SURVEY, size=256, spacing_mm=1.6)


def test_same_seed_and_index_give_identical_samples():
    a = make_l3_batch(3, 1, start=5, size=192, spacing_mm=2.0)[0]
    b = make_l3_batch(3, 2, start=4, size=192, spacing_mm=2.0)[1]
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.tissue, b.tissue) and np.array_equal(a.anatomy, b.anatomy)
    c = make_l3_batch(4, 1, start=5, size=192, spacing_mm=2.0)[0]
    assert not np.array_equal(a.image.array, c.image.array)


def test_sample_has_promised_types_geometry_and_label_names():
    s = make_l3_phantom(np.random.default_rng(1))
    assert s.image.array.shape == (512, 512) and s.image.array.dtype == np.int16
    assert 0.6 <= s.image.spacing[0] <= 1.0 and s.image.spacing[0] == s.image.spacing[1]
    assert s.meta["spacing_mm"] == s.image.spacing[0]
    for m in (s.tissue, s.muscle_groups, s.anatomy):
        assert m.shape == (512, 512) and m.dtype == np.uint8
    assert s.tissue_labels == {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat",
                               4: "intermuscular_fat"}
    assert s.group_labels == {1: "psoas", 2: "paraspinal", 3: "abdominal_wall"}
    for name in list(s.tissue_labels.values()) + list(s.group_labels.values()):
        get_class(name)  # every class is in the terminology table
    assert set(np.unique(s.anatomy)) <= {0, *ANATOMY_LABELS}


def test_tissue_labels_follow_the_hu_windows_of_the_rendered_image(survey):
    for s in survey:
        hu = s.image.array
        sm, fat = hu[s.tissue == 1], hu[np.isin(s.tissue, [2, 3, 4])]
        assert sm.min() >= MUSCLE_WINDOW[0] and sm.max() <= MUSCLE_WINDOW[1]
        assert fat.min() >= FAT_WINDOW[0] and fat.max() <= FAT_WINDOW[1]
        assert MUSCLE_WINDOW[0] < sm.mean() < MUSCLE_WINDOW[1]
        assert -130 < hu[s.tissue == 2].mean() < -60
        # muscle groups are exactly the muscle pixels of their compartments
        assert np.array_equal(s.muscle_groups > 0, s.tissue == 1)


def test_skin_arms_and_bowel_content_are_never_labelled_tissue(survey):
    unlabelled = ["skin", "arm_skin", "arm_fat", "arm_muscle", "feces", "bowel_wall", "table", "liver"]
    for s in survey:
        assert not s.tissue[np.isin(s.anatomy, [A[n] for n in unlabelled])].any()


def test_visceral_fat_only_inside_the_abdominal_wall_and_never_in_the_back(survey):
    for s in survey:
        vat = s.tissue == 3
        assert set(np.unique(s.anatomy[vat])) <= {A["visceral_fat"], A["perirenal_fat"], A["renal_sinus_fat"]}
        # no visceral fat posterior to the front of the paraspinal muscles
        para = np.isin(s.anatomy, [A["erector_spinae"], A["multifidus"]])
        rows = np.nonzero(para.any(axis=1))[0]
        cols = np.nonzero(para.any(axis=0))[0]
        back = np.zeros_like(vat)
        back[rows.min() + (rows.max() - rows.min()) // 3:, cols.min():cols.max() + 1] = True
        assert not (vat & back & ~np.isin(s.anatomy, [A["perirenal_fat"]])).any()
        # fat inside the paraspinal compartment is intermuscular
        assert not np.isin(s.tissue[s.anatomy == A["intermuscular_fat"]], [2, 3]).any()


def test_every_class_and_anatomy_variant_appears_over_thirty_samples(survey):
    tissues = set().union(*(set(np.unique(s.tissue)) for s in survey))
    groups = set().union(*(set(np.unique(s.muscle_groups)) for s in survey))
    assert tissues == {0, *TISSUE_LABELS} and groups == {0, *GROUP_LABELS}
    anatomy = set().union(*(set(np.unique(s.anatomy)) for s in survey))
    for name in ["skin", "rectus_abdominis", "external_oblique", "internal_oblique", "transversus_abdominis",
                 "psoas", "quadratus_lumborum", "erector_spinae", "multifidus", "vertebra_cortex",
                 "spinal_canal", "kidney_cortex", "renal_sinus_fat", "perirenal_fat", "aorta",
                 "inferior_vena_cava", "bowel_wall", "bowel_gas", "bowel_fluid", "feces", "mesenteric_vessels",
                 "arm_muscle", "arm_bone_cortex", "table", "liver"]:
        assert A[name] in anatomy, name
    metas = [s.meta for s in survey]
    assert {m["arms"] for m in metas} == {"up", "down"}
    kidneys = [m["kidney_left"] or m["kidney_right"] for m in metas]
    assert any(kidneys) and not all(m["kidney_left"] and m["kidney_right"] for m in metas)
    assert any(m["sarcopenic"] for m in metas) and not all(m["sarcopenic"] for m in metas)
    assert max(m["bmi"] for m in metas) > 35 and min(m["bmi"] for m in metas) < 20
    assert {m["phase"] for m in metas} == {"native", "arterial", "portal"}


def test_subcutaneous_fat_area_spans_thin_to_obese():
    areas = {}
    for bmi in (16, 42):
        s = make_l3_phantom(np.random.default_rng(11), size=256, spacing_mm=2.0, habitus={"bmi": bmi})
        areas[bmi] = (s.tissue == 2).sum() * 4.0 / 100.0  # cm2
    assert areas[16] < 80 and areas[42] > 3 * areas[16]


def test_sarcopenic_body_has_less_and_fattier_muscle():
    def muscle(sarc: bool):
        s = make_l3_phantom(np.random.default_rng(5), size=256, spacing_mm=2.0,
                            habitus={"sarcopenic": sarc, "sex": "M", "age": 60, "bmi": 24})
        return (s.tissue == 1).sum(), s.meta["fatty_infiltration_hu"]
    (area_s, inf_s), (area_n, inf_n) = muscle(True), muscle(False)
    assert area_s < 0.85 * area_n and inf_s > inf_n


def test_contrast_phase_raises_blood_and_kidney_cortex():
    rng = np.random.default_rng(0)
    native = sample_tissue_hu(rng, sample_scan_params(rng, phase="native", hu_offset=0.0))
    arterial = sample_tissue_hu(rng, sample_scan_params(rng, phase="arterial", hu_offset=0.0))
    assert set(TISSUE_NAMES) <= set(native)
    assert native["blood"] < 55 and arterial["blood"] >= 250
    assert arterial["kidney_cortex"] > native["kidney_cortex"] + 100
    with pytest.raises(ValueError):
        sample_scan_params(rng, phase="delayed")


def test_noise_has_the_requested_sd_and_truncation_pads_outside_the_circle():
    rng = np.random.default_rng(0)
    flat = np.zeros((200, 200), np.float32)
    noisy = artifacts.add_noise(flat, 20.0, rng, (0.8, 0.8), correlation_mm=1.0)
    assert 18.0 < noisy.std() < 22.0
    cut = artifacts.truncate_fov(flat, (1.0, 1.0), 150.0, padding_hu=-3024.0)
    assert cut[0, 0] == -3024.0 and cut[100, 100] == 0.0


def test_render_rejects_map_values_without_tissue():
    with pytest.raises(ValueError, match="no entry"):
        artifacts.render_tissues(np.array([[0, 1], [1, 2]]), {0: "air", 1: "fat"}, {"air": -1000, "fat": -100},
                                 np.random.default_rng(0), (1.0, 1.0))


def test_gallery_is_written_once_and_not_overwritten(tmp_path):
    from mskseg.synth.preview import write_gallery

    out = write_gallery(tmp_path / "g.png", n=2, seed=1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError):
        write_gallery(out, n=2)
