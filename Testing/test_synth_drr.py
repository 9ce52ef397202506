"""Radiograph rendering: geometry and orientation, projected masks and centres, image formation effects."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mskseg.errors import GeometryMismatchError, InvalidImageError, MSKSegError
from mskseg.image import Image
from mskseg.synth.drr import (
    DRRParams,
    attenuation_terms,
    lps_to_pixel,
    render_drr,
    sample_drr_params,
    vertebra_rank,
)

LEVELS = ("L1", "L2", "L3", "L4", "L5")
#: A clean, linear rendering: no noise, scatter, blur or processing, so the display grows with attenuation.
CLEAN = DRRParams(noise=False, scatter_to_primary=0.0, focal_blur_mm=0.0, detector_blur_mm=0.0,
                  latitude_compression=0.0, edge_enhance=0.0, window_percentiles=(0.0, 100.0))


def lumbar_phantom(spacing: float = 1.5) -> tuple[Image, Image, dict[int, str]]:
    """Five stacked vertebrae (body anterior, a thin posterior arch) in a soft-tissue cylinder, LPS axes.

    Array ``(K, J, I)``: k toward superior, j toward posterior, i toward the patient's left. L1 is on top.
    """
    shape = (int(190 / spacing), int(150 / spacing), int(150 / spacing))
    k, j, i = np.meshgrid(*(np.arange(n) * spacing for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(j - 75) ** 2 + ((i - 75) / 1.2) ** 2 < 68 ** 2] = 40.0
    labels = np.zeros(shape, np.uint8)
    for n in range(5):
        top = 175 - 34 * n  # L1 highest
        slab = (k > top - 26) & (k <= top)
        body = slab & ((j - 55) ** 2 + (i - 75) ** 2 < 20 ** 2)
        arch = slab & (k > top - 20) & (j > 78) & (j < 112) & (np.abs(i - 75) < 4)
        ring = slab & (k > top - 20) & (j > 72) & (j < 82) & (np.abs(i - 75) < 16)
        labels[body | arch | ring] = n + 1
    bone = labels > 0
    hu[bone] = 800.0
    hu[ndimage.binary_erosion(bone, iterations=2)] = 250.0
    img = Image(hu, (spacing,) * 3, (-75.0, -60.0, 300.0))
    return img, img.with_array(labels), {n + 1: name for n, name in enumerate(LEVELS)}


@pytest.fixture(scope="module")
def phantom() -> tuple[Image, Image, dict[int, str]]:
    """The lumbar phantom at 1.5 mm (shared by the tests of this module; never modified)."""
    return lumbar_phantom()


def marker_volume(points_lps: list[tuple[float, float, float]], radius: float = 4.0) -> Image:
    """An air volume (1 mm, 120 mm cube centred on the origin) with dense balls at the given LPS points."""
    n = 121
    img = Image(np.full((n, n, n), -1000.0, np.float32), (1.0, 1.0, 1.0), (-60.0, -60.0, -60.0))
    coord = np.arange(n) - 60.0  # identity direction: i -> x, j -> y, k -> z
    for x, y, z in points_lps:
        d2 = (coord[:, None, None] - z) ** 2 + (coord[None, :, None] - y) ** 2 + (coord[None, None, :] - x) ** 2
        img.array[d2 < radius ** 2] = 2000.0
    return img


def bright_spot(sample, threshold: float = 0.5) -> np.ndarray:
    """``(x, y)`` centroid of the bright pixels of a clean render."""
    ys, xs = np.nonzero(sample.image.array > threshold)
    return np.array([xs.mean(), ys.mean()])


# --------------------------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_radiograph_and_masks(phantom):
    hu, lab, names = phantom
    a = render_drr(hu, lab, names, np.random.default_rng(7))
    b = render_drr(hu, lab, names, np.random.default_rng(7))
    c = render_drr(hu, lab, names, np.random.default_rng(8))
    assert np.array_equal(a.image.array, b.image.array)
    assert all(np.array_equal(a.masks[n], b.masks[n]) for n in LEVELS)
    assert a.centres == b.centres
    assert not np.array_equal(a.image.array, c.image.array)
    assert a.image.array.dtype == np.float32 and a.image.ndim == 2
    assert 0.0 <= a.image.array.min() and a.image.array.max() <= 1.0


def test_without_rng_the_default_rendering_is_reproducible(phantom):
    hu, lab, names = phantom
    a = render_drr(hu, lab, names)
    b = render_drr(hu, lab, names)
    assert np.array_equal(a.image.array, b.image.array)
    assert a.meta["params"] == DRRParams().as_dict()


# --------------------------------------------------------------------------------------------- masks and centres
@pytest.mark.parametrize("view", ["lateral", "frontal"])
@pytest.mark.parametrize("geometry", ["parallel", "cone"])
def test_vertebra_masks_run_l1_to_l5_top_to_bottom_with_centres_inside(phantom, view, geometry):
    hu, lab, names = phantom
    s = render_drr(hu, lab, names, np.random.default_rng(1), view=view, geometry=geometry,
                   params=sample_drr_params(np.random.default_rng(1), collimation="none"))
    rows = [np.nonzero(s.masks[n])[0].mean() for n in LEVELS]
    assert rows == sorted(rows), f"masks not ordered top to bottom: {rows}"
    centre_rows = [s.centres[n][1] for n in LEVELS]
    assert centre_rows == sorted(centre_rows)
    for n in LEVELS:
        x, y = s.centres[n]
        assert s.masks[n][int(round(y)), int(round(x))], f"{n} centre {x, y} outside its mask"
    assert s.image.spacing == (0.5, 0.5)


@pytest.mark.parametrize("view", ["lateral", "frontal"])
@pytest.mark.parametrize("geometry", ["parallel", "cone"])
def test_projected_mask_covers_the_bright_bone(view, geometry):
    """With only L3 dense (800 HU in air), the pixels whose rays cross >= 3 mm of bone are the L3 mask."""
    hu, lab, names = lumbar_phantom()
    hu = hu.with_array(np.where(lab.array == 3, 800.0, -1000.0).astype(np.float32))
    s = render_drr(hu, lab, names, view=view, geometry=geometry, params=CLEAN, mask_min_mm=3.0)
    mu_water, bone_weight = attenuation_terms(CLEAN.kvp)
    bone = s.meta["line_integral"] > 3.0 * mu_water * (1.0 + bone_weight * 0.8)
    mask = s.masks["L3"]
    iou = (bone & mask).sum() / (bone | mask).sum()
    assert iou > 0.95, f"bone and mask disagree (IoU {iou:.2f})"
    # ... and the display shows that bone bright: it rises with the attenuation.
    image = s.image.array
    assert image[mask].mean() > 0.3 > image[~mask].mean()
    assert np.corrcoef(image.ravel(), s.meta["line_integral"].ravel())[0, 1] > 0.8


def test_centre_marks_the_body_not_the_posterior_arch(phantom):
    hu, lab, names = phantom
    s = render_drr(hu, lab, names, params=CLEAN, view="lateral")  # anterior on the image left
    body_lps = np.array(s.meta["body_centroids_lps"]["L3"])
    # The phantom's L3 body: a cylinder centred 55 mm behind the front of the volume.
    assert abs(body_lps[1] - (-60.0 + 55.0)) < 3.0
    x, y = s.centres["L3"]
    whole_x = np.nonzero(s.masks["L3"])[1].mean()
    assert x < whole_x - 10, "the centre should lie anterior (image left) of the whole-vertebra silhouette"
    assert np.allclose(lps_to_pixel(s, body_lps)[0], (x, y))


# --------------------------------------------------------------------------------------------- orientation
def test_frontal_view_shows_patient_left_on_image_right_and_superior_up():
    # LPS: +x = patient's left, +z = superior.
    left = render_drr(marker_volume([(40.0, 0.0, 0.0)]), view="frontal", params=CLEAN)
    right = render_drr(marker_volume([(-40.0, 0.0, 0.0)]), view="frontal", params=CLEAN)
    top = render_drr(marker_volume([(0.0, 0.0, 40.0)]), view="frontal", params=CLEAN)
    centre = (np.array(left.image.array.shape[::-1]) - 1) / 2.0
    assert bright_spot(left)[0] > centre[0] + 60  # 40 mm at 0.5 mm pixels = 80 px right of centre
    assert bright_spot(right)[0] < centre[0] - 60
    assert bright_spot(top)[1] < centre[1] - 60
    assert left.image.metadata["PatientOrientation"] == "L\\F"
    assert left.image.metadata["ViewPosition"] == "AP"


@pytest.mark.parametrize("side", ["left", "right"])
def test_lateral_view_puts_anterior_on_the_chosen_side(side):
    anterior = marker_volume([(0.0, -40.0, 0.0)])  # LPS: -y = anterior
    s = render_drr(anterior, view="lateral", lateral_anterior=side, params=CLEAN)
    x, y = bright_spot(s)
    centre = (np.array(s.image.array.shape[::-1]) - 1) / 2.0
    assert (x < centre[0] - 60) if side == "left" else (x > centre[0] + 60)
    superior = render_drr(marker_volume([(0.0, 0.0, 40.0)]), view="lateral", lateral_anterior=side, params=CLEAN)
    assert bright_spot(superior)[1] < centre[1] - 60
    assert s.image.metadata["PatientOrientation"] == ("P\\F" if side == "left" else "A\\F")


def test_lps_to_pixel_finds_markers_in_both_geometries():
    points = [(25.0, -30.0, 35.0), (-20.0, 30.0, -25.0)]
    for view in ("lateral", "frontal"):
        for geometry in ("parallel", "cone"):
            for p in points:
                s = render_drr(marker_volume([p]), view=view, geometry=geometry, params=CLEAN)
                expected = lps_to_pixel(s, np.array(p))[0]
                assert np.linalg.norm(bright_spot(s) - expected) < 1.0, (view, geometry, p)


def test_cone_beam_magnifies_what_lies_near_the_source():
    params = DRRParams(noise=False, scatter_to_primary=0.0, focal_blur_mm=0.0, detector_blur_mm=0.0,
                       latitude_compression=0.0, edge_enhance=0.0, window_percentiles=(0.0, 100.0),
                       sdd_mm=1000.0, odd_mm=200.0)
    # Frontal: the source is anterior (-y); the detector posterior.
    near_source = render_drr(marker_volume([(0.0, -50.0, 0.0)], 8.0), view="frontal", geometry="cone", params=params)
    near_detector = render_drr(marker_volume([(0.0, 50.0, 0.0)], 8.0), view="frontal", geometry="cone", params=params)
    area_source = (near_source.meta["line_integral"] > 0.1).sum()
    area_detector = (near_detector.meta["line_integral"] > 0.1).sum()
    # Expected diameter ratio (800 + 50) / (800 - 50): area ratio about 1.28.
    assert 1.15 < area_source / area_detector < 1.45
    assert near_source.meta["magnification"] == pytest.approx(1000.0 / 800.0)
    assert near_source.image.metadata["ImagerPixelSpacing"][0] == pytest.approx(0.5 * 1.25)


def test_flipped_and_rotated_volumes_render_the_same_radiograph(phantom):
    hu, lab, names = phantom
    ref = render_drr(hu, lab, names, params=CLEAN, view="frontal")
    # Same voxels stored with the i and k axes reversed (direction diag(-1, 1, -1)), as many files are.
    flipped_hu = Image(hu.array[::-1, :, ::-1].copy(), hu.spacing,
                       hu.index_to_physical(np.array([hu.size[0] - 1, 0, hu.size[2] - 1])), np.diag([-1.0, 1.0, -1.0]))
    flipped_lab = flipped_hu.with_array(lab.array[::-1, :, ::-1].copy())
    flipped = render_drr(flipped_hu, flipped_lab, names, params=CLEAN, view="frontal")
    assert np.allclose(flipped.image.array, ref.image.array, atol=1e-5)
    assert all(np.array_equal(flipped.masks[n], ref.masks[n]) for n in LEVELS)
    # An oblique direction (rotated 30 degrees about z) is resampled; the anatomy rotates with it.
    a = np.deg2rad(30.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    oblique_hu = Image(hu.array, hu.spacing, hu.origin, rot)
    oblique = render_drr(oblique_hu, oblique_hu.with_array(lab.array), names, params=CLEAN, view="frontal")
    l3_lps = rot @ (np.array(ref.meta["body_centroids_lps"]["L3"]) - np.array(hu.origin)) + np.array(hu.origin)
    assert np.allclose(oblique.meta["body_centroids_lps"]["L3"], l3_lps, atol=2.0)
    x, y = oblique.centres["L3"]
    assert np.linalg.norm(lps_to_pixel(oblique, l3_lps)[0] - (x, y)) < 4.0


# --------------------------------------------------------------------------------------------- image formation
def test_collimation_sets_the_field_outside_the_shutters_to_zero(phantom):
    hu, lab, names = phantom
    for kind in ("rect", "ragged"):
        params = sample_drr_params(np.random.default_rng(3), collimation=kind,
                                   collimation_margins=(0.1, 0.15, 0.1, 0.2), collimation_tilt_deg=3.0)
        s = render_drr(hu, lab, names, np.random.default_rng(3), params=params)
        field = s.meta["field_mask"]
        assert 0.4 < field.mean() < 0.8
        assert np.all(s.image.array[~field] == 0.0)
        assert s.image.array[field].mean() > 0.1
        assert not any((m & ~field).any() for m in s.masks.values())
        assert not field[:, :5].any() and not field[-5:, :].any()


def test_noise_grows_when_exposure_falls(phantom):
    hu, lab, names = phantom

    def noise_sd(exposure: float) -> float:
        base = dict(exposure=exposure, collimation="none", implants=(), grid_lines=False, heel=0.0)
        noisy = render_drr(hu, None, None, np.random.default_rng(5), params=DRRParams(**base))
        clean = render_drr(hu, None, None, np.random.default_rng(5), params=DRRParams(noise=False, **base))
        diff = noisy.image.array - clean.image.array
        inside = (clean.image.array > 0.1) & (clean.image.array < 0.9)
        return float(diff[inside].std())

    low, high = noise_sd(100.0), noise_sd(10000.0)
    assert low > 3 * high > 0


def test_grid_lines_and_heel_effect_modulate_the_image(phantom):
    hu, _, _ = phantom
    base = {**CLEAN.as_dict(), "latitude_compression": 0.0}
    plain = render_drr(hu, params=DRRParams(**base)).meta
    striped = render_drr(hu, params=DRRParams(**{**base, "grid_lines": True, "grid_period_px": 4.0,
                                                  "grid_amplitude": 0.05, "grid_axis": "vertical"}))
    heeled = render_drr(hu, params=DRRParams(**{**base, "heel": 0.15}))
    assert plain["window"] is not None
    # Grid stripes run top to bottom: the column profile gains a component at 1/4 cycles per pixel.
    profile = striped.image.array.mean(0)
    spectrum = np.abs(np.fft.rfft(profile - profile.mean()))
    peak = int(round(len(profile) / 4.0))
    assert spectrum[peak - 1:peak + 2].max() > 5 * np.median(spectrum)
    # More beam at the bottom (heel > 0) means less attenuation read there: bottom darker than without it.
    plain_image = render_drr(hu, params=DRRParams(**base)).image.array
    rows = heeled.image.array.shape[0]
    lower = slice(int(0.75 * rows), int(0.85 * rows))
    upper = slice(int(0.15 * rows), int(0.25 * rows))
    assert heeled.image.array[lower].mean() - plain_image[lower].mean() < heeled.image.array[upper].mean() - \
        plain_image[upper].mean()


@pytest.mark.parametrize("seed", range(4))
def test_random_parameters_always_give_a_valid_radiograph(phantom, seed):
    hu, lab, names = phantom
    rng = np.random.default_rng(100 + seed)
    params = sample_drr_params(rng, implants=("pedicle_screws",) if seed % 2 else ())
    s = render_drr(hu, lab, names, rng, view=("lateral", "frontal")[seed % 2],
                   geometry=("parallel", "cone")[seed // 2], params=params)
    image = s.image.array
    assert np.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0
    assert 0.2 < image[s.meta["field_mask"]].mean() < 0.8
    assert set(s.masks) == set(LEVELS)
    assert set(s.centres) | set(s.meta["centres_outside_field"]) == set(LEVELS)


def test_lower_kvp_gives_more_bone_contrast():
    mu60, bone60 = attenuation_terms(60.0)
    mu120, bone120 = attenuation_terms(120.0)
    assert mu60 > mu120 > 0.015
    assert bone60 > 1.5 > bone120 > 0.8


def test_pedicle_screws_are_inserted_at_the_labelled_vertebrae(phantom):
    hu, lab, names = phantom
    plain = render_drr(hu, lab, names, params=CLEAN)
    params = DRRParams(**{**CLEAN.as_dict(), "implants": ("pedicle_screws",)})
    screwed = render_drr(hu, lab, names, np.random.default_rng(2), params=params)
    note = screwed.meta["implants"][0]
    assert note["kind"] == "pedicle_screws" and 2 <= len(note["levels"]) <= 4
    assert set(note["levels"]) <= set(LEVELS)
    # Metal attenuates far more than bone: the window top rises, and the masks are unchanged.
    assert screwed.meta["window"][1] > plain.meta["window"][1] + 1.0
    assert all(np.array_equal(screwed.masks[n], plain.masks[n]) for n in LEVELS)
    hip = render_drr(hu, lab, names, np.random.default_rng(2),
                     params=DRRParams(**{**CLEAN.as_dict(), "implants": ("hip_prosthesis",)}))
    assert "skipped" in hip.meta["implants"][0]  # no femur labels


# --------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(phantom):
    hu, lab, names = phantom
    with pytest.raises(MSKSegError, match="view"):
        render_drr(hu, view="oblique")
    with pytest.raises(MSKSegError, match="geometry"):
        render_drr(hu, geometry="fan")
    with pytest.raises(InvalidImageError):
        render_drr(hu.axial_slice(3))
    other = Image(lab.array, (1.0, 1.0, 1.0), lab.origin)
    with pytest.raises(GeometryMismatchError):
        render_drr(hu, other, names)
    with pytest.raises(MSKSegError, match="unknown radiograph parameter"):
        sample_drr_params(np.random.default_rng(0), brightness=2)
    with pytest.raises(MSKSegError, match="kvp"):
        render_drr(hu, params=DRRParams(kvp=10.0))
    with pytest.raises(MSKSegError, match="source"):
        render_drr(hu, geometry="cone", params=DRRParams(sdd_mm=260.0, odd_mm=150.0))


def test_vertebra_names_are_ranked_craniocaudally():
    names = ["vertebrae_L1", "T12", "vertebra_C7", "L5", "S1", "vertebrae_T1"]
    assert sorted(names, key=vertebra_rank) == ["vertebra_C7", "vertebrae_T1", "T12", "vertebrae_L1", "L5", "S1"]
    assert vertebra_rank("liver") is None and vertebra_rank("sacrum") is None


# --------------------------------------------------------------------------------------------- real anatomy
def _verse005_volume(shared_data) -> tuple[Image, Image, dict[int, str]]:
    from mskseg.io.readers import read_image

    labels = None
    for value, name in enumerate(LEVELS, start=1):
        mask = read_image(shared_data / "verse005" / "masks" / f"{name}_seg.nii.gz")
        if labels is None:
            labels, ref = np.zeros(mask.array.shape, np.uint8), mask
        labels[mask.array > 0] = value
    # A crude CT from the masks alone (its CT is not available): soft tissue, cortical shell, cancellous core.
    hu = np.full(labels.shape, 40.0, np.float32)
    bone = labels > 0
    hu[bone] = 900.0
    hu[ndimage.binary_erosion(bone, iterations=2)] = 220.0
    return ref.with_array(hu), ref.with_array(labels), {v: n for v, n in enumerate(LEVELS, start=1)}


def _normalised(mask: np.ndarray, size: int = 64) -> np.ndarray:
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    crop = mask[box].astype(np.float32)
    return ndimage.zoom(crop, (size / crop.shape[0], size / crop.shape[1]), order=1) > 0.5


def test_verse005_lateral_masks_match_the_verse_projected_masks(shared_data):
    from PIL import Image as PILImage

    hu, lab, names = _verse005_volume(shared_data)
    # The VerSe lateral renders face right; their pixel size differs, so silhouettes are compared in their boxes.
    s = render_drr(hu, lab, names, np.random.default_rng(0), view="lateral", lateral_anterior="right",
                   params=sample_drr_params(np.random.default_rng(0), collimation="none"))
    rows = [np.nonzero(s.masks[n])[0].mean() for n in LEVELS]
    assert rows == sorted(rows)
    for name in LEVELS:
        x, y = s.centres[name]
        assert s.masks[name][int(round(y)), int(round(x))]
        theirs = np.array(PILImage.open(shared_data / "verse005" / "drr" / "masks" / f"verse005_LA_{name}_whole_1.png"))
        theirs = (theirs[..., 0] if theirs.ndim == 3 else theirs) > 127
        mine, ref = _normalised(s.masks[name]), _normalised(theirs)
        iou = (mine & ref).sum() / (mine | ref).sum()
        mirrored = (mine[:, ::-1] & ref).sum() / (mine[:, ::-1] | ref).sum()
        assert iou > 0.8 and iou > mirrored + 0.2, f"{name}: IoU {iou:.2f} (mirrored {mirrored:.2f})"
        # The body centre lies anterior (image right here) of the silhouette's middle.
        assert x > np.nonzero(s.masks[name])[1].mean()


def test_totalsegmentator_map_gives_an_ordered_lateral_lumbar_radiograph(shared_data):
    from mskseg.io.readers import read_image

    path = shared_data / "totalseg-labelmaps" / "s0328" / "s0328_combined_total_v2.nii.gz"
    tsv = shared_data / "totalseg-labelmaps" / "labelmap_total_v2.tsv"
    lab = read_image(path)
    names = {int(r.split("\t")[0]): r.split("\t")[1] for r in tsv.read_text().splitlines()[1:] if r.strip()}
    arr = lab.array.astype(np.uint8)
    # Piecewise CT: labelled soft tissue 40 HU, bones 700 HU, air elsewhere.
    bone_ids = [v for v, n in names.items() if n.startswith(("vertebrae", "sacrum", "hip_", "femur", "rib_"))]
    hu = np.where(arr > 0, 40.0, -1000.0).astype(np.float32)
    hu[np.isin(arr, bone_ids)] = 700.0
    wanted = [f"vertebrae_{n}" for n in ("T12",) + LEVELS + ("S1",)]
    s = render_drr(lab.with_array(hu), lab.with_array(arr), names, np.random.default_rng(4), view="lateral",
                   pixel_mm=0.6, params=sample_drr_params(np.random.default_rng(4), collimation="none"),
                   mask_names=wanted)
    assert set(s.masks) == set(wanted)
    centre_rows = [s.centres[n][1] for n in wanted]
    assert centre_rows == sorted(centre_rows)
    for n in wanted[1:-1]:
        x, y = s.centres[n]
        assert s.masks[n][int(round(y)), int(round(x))], n
