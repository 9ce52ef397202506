"""Procedural 3D torso phantoms: variants, level truth, geometry, HU ranges and body-composition labels."""
from __future__ import annotations

import numpy as np
import pytest

from mskseg.anatomy import vertebra_names
from mskseg.synth.phantom import FAT_WINDOW, MUSCLE_WINDOW
from mskseg.synth.tissues import sample_scan_params
from mskseg.synth.torso import (
    ANATOMY_LABELS,
    FOV_PRESETS,
    TORSO_LABELS,
    VARIANT_COUNTS,
    VARIANTS,
    make_demo_ct,
    make_torso,
)

_A = {name: value for value, name in ANATOMY_LABELS.items()}
_LEVEL_ORDER = vertebra_names("C7", "S1", include=("L6",))
# small and coarse, so a whole torso takes about a second
_FAST = {"size": 96, "spacing_mm": (4.5, 4.5, 5.0)}


def _quiet_params(seed: int, **overrides):
    return sample_scan_params(np.random.default_rng(seed), noise_sd_hu=10.0, low_dose=False, metal=False,
                              streak_strength=0.0, fov_mm=500.0, **overrides)


@pytest.fixture(scope="module")
def variant_samples():
    return {v: make_torso(np.random.default_rng(100 + i), z_range="chest_abdomen_pelvis", variant=v, **_FAST)
            for i, v in enumerate(VARIANTS)}


@pytest.fixture(scope="module")
def abdomen():
    return make_torso(np.random.default_rng(7), z_range="abdomen", size=128, spacing_mm=(3.2, 3.2, 3.0),
                      variant="normal", params=_quiet_params(7))


def _rib_numbers(sample) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {"left": set(), "right": set()}
    for name in sample.label_names.values():
        if name.startswith("rib_"):
            _, side, n = name.split("_")
            out[side].add(int(n))
    return out


def test_same_seed_gives_identical_torso_and_different_seed_another():
    a = make_torso(np.random.default_rng(3), z_range="tight_abdomen", **_FAST)
    b = make_torso(np.random.default_rng(3), z_range="tight_abdomen", **_FAST)
    c = make_torso(np.random.default_rng(4), z_range="tight_abdomen", **_FAST)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert np.array_equal(a.tissue.array, b.tissue.array)
    assert a.level_slices == b.level_slices and a.variant == b.variant
    assert a.image.array.shape != c.image.array.shape or not np.array_equal(a.image.array, c.image.array)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_has_its_promised_vertebrae_and_rib_pairs(variant_samples, variant):
    s = variant_samples[variant]
    names = set(s.label_names.values())
    ribs = _rib_numbers(s)
    n_pairs = VARIANT_COUNTS[variant]["rib_pairs"]
    assert ribs["left"] == ribs["right"] == set(range(1, n_pairs + 1))
    lumbar = {f"vertebrae_L{i}" for i in range(1, 7)} & names
    expected = {f"vertebrae_L{i}" for i in range(1, VARIANT_COUNTS[variant]["lumbar"] + 1)}
    assert lumbar == expected
    assert {"vertebrae_T1", "vertebrae_T12", "sacrum", "intervertebral_disc"} <= names
    assert s.variant == variant and s.meta["variant"] == variant
    assert ("L6" in s.level_slices) == (variant == "six_lumbar")


def test_variant_counts_name_the_vertebra_a_shortcut_count_would_pick(variant_samples):
    for variant, s in variant_samples.items():
        counts = s.meta["level_counts"]
        assert counts["l3_from_ribs_slice"] == s.level_slices[VARIANT_COUNTS[variant]["l3_from_ribs"]]
        assert counts["l3_from_sacrum_slice"] == s.level_slices[VARIANT_COUNTS[variant]["l3_from_sacrum"]]
        agree = counts["l3_from_ribs"] == counts["l3_from_sacrum"] == "L3"
        assert agree == (variant == "normal")


def test_twelfth_rib_is_short_and_thirteenth_rib_is_a_stub(variant_samples):
    s = variant_samples["ribs_13"]
    sizes = {n: int((s.labels.array == v).sum()) for v, n in s.label_names.items() if n.startswith("rib_left_")}
    assert sizes["rib_left_12"] < sizes["rib_left_8"]
    assert sizes["rib_left_13"] < sizes["rib_left_12"]


def test_level_slices_are_ordered_superior_to_inferior(variant_samples):
    for s in variant_samples.values():
        names = list(s.level_slices)
        assert names == [n for n in _LEVEL_ORDER if n in s.level_slices]
        ks = list(s.level_slices.values())
        assert all(a > b for a, b in zip(ks[:-1], ks[1:]))  # k grows towards the head
        zs = list(s.level_centres.values())
        assert all(a > b for a, b in zip(zs[:-1], zs[1:]))
        z0, sk = s.image.origin[2], s.image.spacing[2]
        for name, k in s.level_slices.items():
            assert abs(z0 + k * sk - s.level_centres[name]) <= sk / 2 + 1e-6


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_labels_at_the_l3_truth_slice_include_vertebra_l3(variant_samples, variant):
    s = variant_samples[variant]
    assert s.l3_index == s.level_slices["L3"]
    l3 = [v for v, n in TORSO_LABELS.items() if n == "vertebrae_L3"][0]
    assert (s.labels.array[s.l3_index] == l3).sum() > 10


def test_lumbar_spine_is_curved_not_straight(abdomen):
    """The lordosis moves the lumbar bodies forward of the line joining T12 and S1."""
    lab = abdomen.labels.array
    sj = abdomen.image.spacing[1]

    def centre_row(name):
        v = [k for k, n in TORSO_LABELS.items() if n == name][0]
        return np.argwhere(lab == v)[:, 1].mean() * sj

    rows = {n: centre_row(f"vertebrae_{n}") for n in ("T12", "L3", "L4")}
    rows["S1"] = centre_row("sacrum")
    assert max(rows["L3"], rows["L4"]) < 0.5 * (rows["T12"] + rows["S1"]) - 3.0


def test_image_and_label_maps_share_one_axial_grid(abdomen):
    s = abdomen
    assert s.image.array.dtype == np.int16 and s.labels.array.dtype == np.uint8 and s.tissue.array.dtype == np.uint8
    assert s.image.same_grid(s.labels) and s.image.same_grid(s.tissue)
    assert s.anatomy.shape == s.image.array.shape
    assert np.allclose(s.image.direction, np.eye(3))
    assert s.image.metadata["Modality"] == "CT"
    assert 1.4 < s.image.metadata["PatientSize"] < 2.1 and s.image.metadata["PatientWeight"] > 30


def test_bone_labels_hold_bone_hu_also_when_osteoporotic():
    for osteo in (False, True):
        s = make_torso(np.random.default_rng(11), z_range="tight_abdomen", size=128, spacing_mm=(3.0, 3.0, 3.0),
                       variant="normal", habitus={"osteoporotic": osteo},
                       params=_quiet_params(11, osteoporotic=osteo, fatty_liver=False))
        vert = np.isin(s.labels.array, [v for v, n in TORSO_LABELS.items() if n.startswith("vertebrae_")])
        cancellous = vert & (s.anatomy == _A["bone_cancellous"])
        median = float(np.median(s.image.array[cancellous]))
        if osteo:
            assert 40.0 <= median <= 190.0, median
        else:
            assert 130.0 <= median <= 380.0, median
        assert float(np.percentile(s.image.array[vert], 90)) > 150.0


def test_tissue_labels_follow_the_body_composition_windows(abdomen):
    hu, tissue = abdomen.image.array, abdomen.tissue.array
    muscle = hu[tissue == 1]
    assert muscle.size and muscle.min() >= MUSCLE_WINDOW[0] and muscle.max() <= MUSCLE_WINDOW[1]
    for value in (2, 3, 4):
        fat = hu[tissue == value]
        assert fat.size, value
        assert fat.min() >= FAT_WINDOW[0] and fat.max() <= FAT_WINDOW[1]
    k = abdomen.l3_index
    assert set(np.unique(tissue[k])) >= {0, 1, 2, 3, 4}
    assert abdomen.tissue_names == {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat",
                                    4: "intermuscular_fat"}
    # skin and organs are never body-composition tissue
    assert not tissue[abdomen.anatomy == _A["skin"]].any()
    assert not tissue[abdomen.anatomy == _A["liver"]].any()


def test_abdomen_holds_the_organs_at_their_levels(abdomen):
    s = abdomen
    names = set(s.label_names.values())
    assert {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "psoas", "paraspinal"} <= names
    kid = [v for v, n in TORSO_LABELS.items() if n == "kidney_right"][0]
    ks = np.flatnonzero((s.labels.array == kid).any(axis=(1, 2)))
    assert s.level_slices["L3"] - 8 <= ks.min() and ks.max() >= s.level_slices["L1"]
    # psoas grows from L1 to L4
    ps = [v for v, n in TORSO_LABELS.items() if n == "psoas"][0]
    area = {n: int((s.labels.array[s.level_slices[n]] == ps).sum()) for n in ("L1", "L4")}
    assert area["L4"] > 2 * area["L1"]


@pytest.mark.parametrize("fov", list(FOV_PRESETS))
def test_every_field_of_view_preset_covers_its_levels(fov):
    s = make_torso(np.random.default_rng(21), z_range=fov, **_FAST)
    top, bottom = FOV_PRESETS[fov]
    assert top in s.level_slices
    if bottom == "femoral_heads":
        assert {"femur_left", "femur_right", "hip_left", "hip_right"} <= set(s.label_names.values())
    else:
        assert bottom in s.level_slices
    assert s.meta["fov"] == fov
    assert s.image.same_grid(s.labels)


@pytest.mark.parametrize("spacing", [(0.6, 0.6, 0.5), (1.0, 1.0, 5.0), (2.0, 2.0, 2.5)])
def test_spacing_range_is_honoured(spacing):
    s = make_torso(np.random.default_rng(5), z_range=("L2", "L4"), size=64, spacing_mm=spacing)
    assert s.image.spacing == pytest.approx(spacing)
    extent = (s.image.array.shape[0] - 1) * spacing[2]
    assert 60.0 < extent < 220.0
    assert "L3" in s.level_slices


def test_drawn_defaults_and_mm_range_relative_to_l3():
    s = make_torso(np.random.default_rng(31), size=96)
    assert s.variant in VARIANTS and s.meta["fov"] in FOV_PRESETS
    assert 0.5 <= s.image.spacing[2] <= 5.0
    assert 0.6 * 512 / 96 - 1e-6 <= s.image.spacing[0] <= 1.0 * 512 / 96 + 1e-6  # 0.6-1.0 mm at 512 px, scaled
    r = make_torso(np.random.default_rng(32), size=96, z_range=(-60.0, 40.0), spacing_mm=(4.0, 4.0, 2.0))
    assert r.image.array.shape[0] == 51
    assert abs(r.level_centres["L3"] - (r.image.origin[2] + 60.0)) < 1e-6


def test_pedicle_screws_are_metal_with_streaks():
    p = sample_scan_params(np.random.default_rng(41), metal=True, fov_mm=500.0)
    s = make_torso(np.random.default_rng(41), z_range="tight_abdomen", size=128, spacing_mm=(3.0, 3.0, 3.0),
                   params=p)
    assert s.meta["pedicle_screws"] and (s.anatomy == _A["metal"]).any()
    assert (s.image.array > 2500).any()


def test_bad_requests_raise_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="variant"):
        make_torso(rng, variant="seven_lumbar", **_FAST)
    with pytest.raises(ValueError, match="field of view"):
        make_torso(rng, z_range="whole_body", **_FAST)
    with pytest.raises(ValueError, match="L6"):
        make_torso(rng, z_range=("L1", "L6"), variant="normal", **_FAST)
    with pytest.raises(ValueError, match="spacing"):
        make_torso(rng, z_range="abdomen", size=64, spacing_mm=(0.8, 0.8, 9.0))
    with pytest.raises(ValueError, match="leaves the torso"):
        make_torso(rng, z_range=(-2000.0, 0.0), **_FAST)


def test_demo_ct_is_a_fixed_normal_abdominal_ct_with_patient_metadata():
    d = make_demo_ct()
    assert d.variant == "normal" and d.image.array.shape[1:] == (512, 512)
    assert d.image.spacing == pytest.approx((0.78125, 0.78125, 2.5))
    md = d.image.metadata
    assert md["Modality"] == "CT" and md["PatientSex"] == "M"
    assert md["PatientSize"] == pytest.approx(1.76) and md["PatientWeight"] == pytest.approx(82.0)
    assert {"T11", "T12", "L1", "L2", "L3", "L4", "L5"} <= set(d.level_slices)
    assert d.l3_index == d.level_slices["L3"]
    assert d.meta["phase"] == "portal"
    # continuous along the body axis: the aorta in every slice from L4 to T12, bowel in every slice from L5 up
    # to L1 (a float32 rounding in the grid's boxes once dropped whole slices of every tube-shaped structure)
    lab = d.labels.array
    per_slice = lambda name: (lab == [v for v, n in TORSO_LABELS.items() if n == name][0]).any(axis=(1, 2))  # noqa: E731
    assert per_slice("aorta")[d.level_slices["L4"]:d.level_slices["T12"] + 1].all()
    bowel = per_slice("small_bowel") | per_slice("colon")
    assert bowel[d.level_slices["L5"]:d.level_slices["L1"] + 1].all()
    hips = per_slice("hip_left")
    assert hips[:d.level_slices["L5"]].all()


@pytest.mark.parametrize("z0", [-129.019840622214, 0.3, 17.123, -500.77])
@pytest.mark.parametrize("sk", [0.625, 1.25, 2.5, 3.0, 5.0])
def test_grid_box_around_a_slice_centre_selects_that_slice(z0, sk):
    from mskseg.synth.torso_shapes import TorsoGrid

    g = TorsoGrid(8, 8, 300, (0.78125, 0.78125, sk), (0.0, 0.0), z0)
    for k in range(g.nk):
        z = float(g.z[k])
        assert g.box((0.0, 0.0, z), (1.0, 1.0, z))[0] == slice(k, k + 1)
