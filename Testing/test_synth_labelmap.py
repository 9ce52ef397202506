"""Label-map driven CT synthesis: determinism, label/image alignment, added body classes, augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from mskseg.errors import InvalidImageError
from mskseg.image import Image
from mskseg.synth.labelmap_ct import (ADDED_LABELS, Habitus, SpatialParams, bodycomp_labels, slab_around,
                                      synthesize_ct)
from mskseg.synth.tissues import sample_scan_params

NAMES = {1: "liver", 2: "vertebrae_L2", 3: "vertebrae_L3", 4: "iliopsoas_left", 5: "iliopsoas_right",
         6: "autochthon_left", 7: "autochthon_right", 8: "aorta", 9: "small_bowel"}


def _toy_abdomen(spacing: float = 2.0) -> Image:
    """A small abdomen-like label map (K, J, I) = (30, 80, 100) at 2 mm: spine, psoas, back muscles, organs."""
    k, j, i = np.mgrid[0:30, 0:80, 0:100]
    lab = np.zeros((30, 80, 100), np.uint8)
    y, x = j - 40, i - 50
    lab[((x / 22.0) ** 2 + ((y + 10) / 14.0) ** 2) < 1] = 9  # bowel
    lab[((x + 20) / 12.0) ** 2 + ((y + 5) / 10.0) ** 2 < 1] = 1  # liver
    body = (x ** 2 + (y - 12) ** 2) < 64
    lab[body & (k < 14)] = 2
    lab[body & (k >= 16)] = 3
    lab[(x ** 2 + (y - 2) ** 2) < 9] = 8  # aorta in front of the spine
    lab[((x + 14) ** 2 + (y - 14) ** 2) < 25] = 4
    lab[((x - 14) ** 2 + (y - 14) ** 2) < 25] = 5
    lab[((x + 9) ** 2 + (y - 27) ** 2) < 36] = 6
    lab[((x - 9) ** 2 + (y - 27) ** 2) < 36] = 7
    return Image(lab, (spacing, spacing, spacing), (-100.0, -80.0, 0.0))


def _params(**kw):
    base = dict(phase="portal", noise_sd_hu=10.0, slice_thickness_mm=2.0, blur_fwhm_mm=1.0, metal=False, streak_strength=0.0, fov_mm=600.0,
                fatty_liver=False, osteoporotic=False)
    base.update(kw)
    return sample_scan_params(np.random.default_rng(99), **base)


def _habitus(**kw) -> Habitus:
    return Habitus(**{"sat_mm": 15.0, "vat_margin_mm": 6.0, "muscle_atrophy_mm": 0.0, **kw})


def _mean_in(vol, value: int) -> float:
    m = vol.labels.array == value
    assert m.any(), f"label {value} absent"
    return float(vol.image.array[m].mean())


def test_same_seed_gives_identical_volumes_and_other_seed_differs():
    lab = _toy_abdomen()
    kw = dict(params=_params(), habitus=_habitus(), bone_texture=False, spacing_mm=2.0)
    a = synthesize_ct(lab, NAMES, np.random.default_rng(5), **kw)
    b = synthesize_ct(lab, NAMES, np.random.default_rng(5), **kw)
    c = synthesize_ct(lab, NAMES, np.random.default_rng(6), **kw)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.image.array, c.image.array)


def test_added_body_classes_present_and_hu_match_their_labels():
    lab = _toy_abdomen()
    vol = synthesize_ct(lab, NAMES, np.random.default_rng(1), params=_params(), habitus=_habitus(),
                        spatial=SpatialParams(), bone_texture=False, spacing_mm=2.0)
    present = set(vol.label_names.values())
    for name in ("skin", "subcutaneous_fat", "abdominal_wall", "visceral_fat", "intervertebral_disc"):
        assert name in present, name
        assert vol.label_names[ADDED_LABELS[name]] == name
    assert vol.image.same_grid(vol.labels) and vol.image.same_grid(vol.tissue_map)
    assert -150 < _mean_in(vol, ADDED_LABELS["subcutaneous_fat"]) < -50
    assert -150 < _mean_in(vol, ADDED_LABELS["visceral_fat"]) < -40
    assert -10 < _mean_in(vol, ADDED_LABELS["skin"])  # skin is not fat
    assert 20 < _mean_in(vol, ADDED_LABELS["abdominal_wall"]) < 110
    assert _mean_in(vol, 3) > 150  # vertebra: bone
    assert 60 < _mean_in(vol, ADDED_LABELS["intervertebral_disc"]) < 130
    # the input labels are kept: every input class is still there
    assert {"vertebrae_L2", "vertebrae_L3", "liver", "aorta"} <= present


def test_bodycomp_labels_follow_the_tissue():
    vol = synthesize_ct(_toy_abdomen(), NAMES, np.random.default_rng(2), params=_params(), habitus=_habitus(),
                        spatial=SpatialParams(), bone_texture=False, spacing_mm=2.0)
    bc, names = bodycomp_labels(vol)
    assert bc.same_grid(vol.image)
    hu = vol.image.array
    assert -29 < hu[bc.array == 1].mean() < 150
    for v in (2, 3):
        assert -190 < hu[bc.array == v].mean() < -30, names[v]
    assert not (bc.array[vol.labels.array == ADDED_LABELS["skin"]]).any()


def test_spatial_augmentation_keeps_image_and_labels_aligned():
    """A cube of known tissue stays where its label goes under rotation, scaling and elastic warping."""
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[12:28, 12:28, 12:28] = 1
    img = Image(lab, (2.0, 2.0, 2.0))
    spatial = SpatialParams(rotation_deg=17.0, tilt_deg=4.0, scale=1.1, scale_ap=0.95, elastic_mm=3.0)
    vol = synthesize_ct(img, {1: "liver"}, np.random.default_rng(3), params=_params(noise_sd_hu=0.0),
                        add_body=False, spatial=spatial, bone_texture=False, spacing_mm=2.0)
    cube = vol.labels.array == 1
    assert cube.sum() > 0.8 * (16 ** 3) * 1.1 ** 3 * 0.95 * 0.8
    # not the identity: the label moved
    assert not np.array_equal(cube, lab.astype(bool))
    from scipy import ndimage

    inner = ndimage.binary_erosion(cube, iterations=2)
    liver_hu = vol.meta["tissue_hu"]["liver"]
    assert abs(float(vol.image.array[inner].mean()) - liver_hu) < 8
    outside = ndimage.binary_dilation(cube, iterations=3) ^ ndimage.binary_dilation(cube, iterations=2)
    assert float(vol.image.array[outside].mean()) < -500  # air around the cube


def test_resampling_changes_spacing_and_keeps_physical_extent():
    lab = _toy_abdomen()
    params = _params()
    fine = synthesize_ct(lab, NAMES, np.random.default_rng(4), params=params, habitus=_habitus(),
                         spatial=SpatialParams(), bone_texture=False, spacing_mm=2.0)
    coarse = synthesize_ct(lab, NAMES, np.random.default_rng(4), params=params, habitus=_habitus(),
                           spatial=SpatialParams(), bone_texture=False, spacing_mm=(3.0, 3.0, 5.0))
    assert coarse.image.spacing == (3.0, 3.0, 5.0)
    ext_f = np.array(fine.image.size) * np.array(fine.image.spacing)
    ext_c = np.array(coarse.image.size) * np.array(coarse.image.spacing)
    assert np.all(np.abs(ext_f - ext_c) <= np.array(coarse.image.spacing))
    centre_f = fine.image.index_to_physical((np.array(fine.image.size) - 1) / 2)
    centre_c = coarse.image.index_to_physical((np.array(coarse.image.size) - 1) / 2)
    assert np.allclose(centre_f, centre_c, atol=1e-3)
    # the vertebra sits at the same physical place
    def centroid(v):
        idx = np.argwhere(v.labels.array == 3)[:, ::-1].mean(axis=0)
        return v.image.index_to_physical(idx)
    assert np.linalg.norm(centroid(fine) - centroid(coarse)) < 3.0


def test_crop_selects_slab_and_bad_input_is_refused():
    lab = _toy_abdomen()
    crop = slab_around(lab, NAMES, "vertebrae_L3", margin_mm=0.0)
    assert crop == ((16, 30),)
    vol = synthesize_ct(lab, NAMES, np.random.default_rng(0), params=_params(), habitus=_habitus(),
                        spatial=SpatialParams(), bone_texture=False, spacing_mm=2.0, crop=crop)
    assert vol.image.array.shape[0] == 14
    assert "vertebrae_L2" not in vol.label_names.values()
    with pytest.raises(InvalidImageError):
        synthesize_ct(lab, {201: "liver"}, np.random.default_rng(0))
    with pytest.raises(InvalidImageError):
        synthesize_ct(Image(np.zeros((5, 5), np.uint8), (1.0, 1.0)), NAMES, np.random.default_rng(0))
    with pytest.raises(InvalidImageError):
        slab_around(lab, NAMES, "vertebrae_T1")


def _ts_names(shared_data) -> dict[int, str]:
    from mskseg.synth.realism import read_names_table

    return read_names_table(shared_data / "totalseg-labelmaps" / "labelmap_total_v2.tsv")


def test_s0328_l3_slab_has_every_added_class_with_plausible_hu(shared_data):
    import SimpleITK as sitk

    from mskseg.synth.labelmap_ct import default_bone_texture

    names = _ts_names(shared_data)
    lab = Image.from_sitk(sitk.ReadImage(str(shared_data / "totalseg-labelmaps" / "s0328" /
                                             "s0328_combined_total_v2.nii.gz")))
    crop = slab_around(lab, names, "vertebrae_L3", margin_mm=5.0)
    vol = synthesize_ct(lab, names, np.random.default_rng(7), params=_params(), habitus=_habitus(),
                        spacing_mm=(1.5, 1.5, 3.0), crop=crop)
    assert vol.meta["real_bone_texture"] == (default_bone_texture() is not None)
    present = set(vol.label_names.values())
    for name in ("skin", "subcutaneous_fat", "abdominal_wall", "visceral_fat", "intervertebral_disc",
                 "vertebrae_L3", "iliopsoas_left", "autochthon_right", "kidney_left"):
        assert name in present, name
    l3 = [v for v, n in vol.label_names.items() if n == "vertebrae_L3"][0]
    assert 150 < _mean_in(vol, l3) < 700
    assert -150 < _mean_in(vol, ADDED_LABELS["subcutaneous_fat"]) < -50
    assert _mean_in(vol, ADDED_LABELS["skin"]) > -30
    psoas = [v for v, n in vol.label_names.items() if n.startswith("iliopsoas")]
    assert -29 < float(vol.image.array[np.isin(vol.labels.array, psoas)].mean()) < 150


def test_truncated_field_of_view_leaves_no_label_where_nothing_is_imaged():
    lab = _toy_abdomen()
    vol = synthesize_ct(lab, NAMES, np.random.default_rng(7), params=_params(fov_mm=120.0), habitus=_habitus(),
                        spatial=SpatialParams(), bone_texture=False, spacing_mm=2.0)
    from mskseg.synth.artifacts import outside_fov

    outside = outside_fov(vol.image.array.shape[-2:], vol.image.spacing, 120.0)
    assert outside.any() and (vol.labels.array[:, ~outside] > 0).any()
    assert not (vol.labels.array[:, outside] > 0).any()
    assert np.all(vol.image.array[:, outside] <= -1000)
