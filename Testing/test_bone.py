"""BoneSeg's own pipeline: rule-based bone segmentation, trabecular HU and the screening flag, outputs, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.bone.density import screening_flag, trabecular_roi, vertebral_body
from mskseg.bone.pipeline import run_bone
from mskseg.errors import InvalidImageError, MSKSegError
from mskseg.image import Image
from mskseg.synth.torso_shapes import TORSO_LABEL_VALUE

BONES = ("vertebrae", "sacrum", "hip_", "femur", "rib_", "sternum")


@pytest.fixture(scope="module")
def torso_result(torso_sample):
    return run_bone(torso_sample.image, device="cpu")


def test_all_bone_dice_on_the_synthetic_torso(torso_sample, torso_result):
    truth = np.isin(torso_sample.labels.array, [v for v, n in torso_sample.label_names.items() if n.startswith(BONES)])
    found = np.asarray(torso_result.labelmap.array) > 0
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert dice > 0.93, dice
    names = set(torso_result.labels.values())
    assert {"vertebrae_L1", "vertebrae_L3", "sacrum", "hip_left", "hip_right", "ribs_left", "ribs_right"} <= names
    l3 = torso_result.labelmap.array == next(v for v, n in torso_result.labels.items() if n == "vertebrae_L3")
    truth_l3 = torso_sample.labels.array == TORSO_LABEL_VALUE["vertebrae_L3"]
    assert 2 * (l3 & truth_l3).sum() / (l3.sum() + truth_l3.sum()) > 0.85


def test_trabecular_roi_lies_inside_the_vertebral_body(torso_sample, torso_result):
    view = torso_result.canonical
    rows = {r["level"]: r for r in torso_result.rows if r.get("row") == "level"}
    assert {"L1", "L2", "L3", "L4"} <= set(rows)
    for d in view.densities:
        truth = torso_sample.labels.array[d.slices] == TORSO_LABEL_VALUE[f"vertebrae_{d.level}"]
        assert d.roi.sum() > 0 and np.all(truth[d.roi]), d.level
        assert 100 < d.mean_hu < 350
    assert torso_result.density["phase"]["phase"] == "portal-venous"  # the torso is drawn in the portal phase
    assert torso_result.density["flag"]["note"] == "screening flag, not a diagnosis"


def _phantom(trabecular_hu: float = 120.0, axes: str = "axial") -> Image:
    """Air, a water body, and a vertebra-like cylinder: 1.5 mm cortex of 700 HU around trabecular bone."""
    k_n, n = 24, 96
    arr = np.full((k_n, n, n), -1000, np.int16)
    yy, xx = np.mgrid[0:n, 0:n]
    body = ((xx - 48) / 44.0) ** 2 + ((yy - 48) / 36.0) ** 2 <= 1
    r = np.hypot(xx - 48, yy - 62)
    arr[:, body] = 40
    arr[:, r <= 20] = 700
    arr[:, r <= 18] = int(trabecular_hu)
    image = Image(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), {"Modality": "CT"})
    if axes == "sagittal":  # stored with axes P, I, R as VerSe stores volumes
        stored = np.ascontiguousarray(np.transpose(arr, (2, 0, 1))[:, ::-1, :])  # (I, K, J): k index runs down
        direction = np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]])  # columns: index axes i->P, j->I, k->R
        image = Image(stored, (1.0, 2.0, 1.0), (95.0, 0.0, 46.0), direction, {"Modality": "CT"})
    return image


def test_a_120_hu_cylinder_measures_120_and_is_flagged():
    result = run_bone(_phantom(120.0), levels={"L1": 12}, device="cpu")
    row = next(r for r in result.rows if r.get("row") == "level")
    assert row["level"] == "L1" and row["trabecular_HU"] == pytest.approx(120.0, abs=2.0)
    assert row["trabecular_SD_HU"] < 2.0
    assert result.density["phase"]["phase"] == "unenhanced" and row["trabecular_HU_corrected"] == row["trabecular_HU"]
    assert result.density["flag"]["flag"] == "possible osteoporosis"
    assert screening_flag(100.0)["flag"] == "likely osteoporosis"
    assert screening_flag(200.0)["flag"] == "not flagged"
    assert screening_flag(None)["flag"] == "not assessed"


def test_roi_keeps_inside_the_cortex():
    yy, xx = np.mgrid[0:80, 0:80]
    vertebra = np.hypot(xx - 40, yy - 40) <= 20
    body = vertebral_body(vertebra, 40.0, 20.0, (1.0, 1.0, 2.0))
    roi = trabecular_roi(body, (1.0, 1.0, 2.0))
    assert roi.any() and np.all(np.hypot(xx - 40, yy - 40)[roi] <= 17.0)


@pytest.mark.parametrize("axes", ["axial", "sagittal"])
def test_outputs_have_the_input_geometry(axes, tmp_path):
    from mskseg.cli import main
    from mskseg.io.segnrrd import read_seg_nrrd

    image = _phantom(150.0, axes)
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image.to_sitk(), str(path))
    assert main(["bone", str(path), "--out", str(tmp_path / "out"), "--levels", "L1=12", "--device", "cpu"]) == 0
    labelmap, labels = read_seg_nrrd(tmp_path / "out" / "segmentation.seg.nrrd")
    from mskseg.image import labels_on_grid
    from mskseg.io import read_image

    ct = read_image(path)
    full = labels_on_grid(labelmap, ct)
    assert full.shape == ct.array.shape and np.allclose(labelmap.direction, ct.direction)
    assert (full > 0).sum() == (np.asarray(ct.array) >= 200).sum() + (np.asarray(ct.array) == 150).sum()
    described = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert described["density"]["L1_HU"] == pytest.approx(150.0, abs=2.0)
    assert (tmp_path / "out" / "report.png").stat().st_size > 10_000
    assert "trabecular_HU" in (tmp_path / "out" / "metrics.csv").read_text()


def test_bad_input_is_refused_with_clear_messages():
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidImageError, match="2D"):
        run_bone(Image(rng.normal(0, 300, (64, 64)).astype(np.int16), (1.0, 1.0), (0, 0), np.eye(2), {}))
    with pytest.raises(InvalidImageError, match="MR"):
        run_bone(Image(np.zeros((8, 64, 64), np.int16) + np.arange(64, dtype=np.int16), (1, 1, 2), (0, 0, 0),
                       np.eye(3), {"Modality": "MR"}))
    tiny = np.ascontiguousarray(_phantom().array[:2, 0:30, 30:60])
    with pytest.raises(InvalidImageError, match="too small"):
        run_bone(Image(tiny, (1, 1, 2), (0, 0, 0), np.eye(3), {"Modality": "CT"}))
    with pytest.raises(InvalidImageError, match="slice spacing"):
        run_bone(Image(_phantom().array, (1, 1, 25.0), (0, 0, 0), np.eye(3), {"Modality": "CT"}))
    with pytest.raises(MSKSegError, match="unknown bone class"):
        run_bone(_phantom(), classes="skull")
    with pytest.raises(MSKSegError, match="model card"):
        run_bone(_phantom(), method="network")


def test_classes_option_and_the_command_line_error(tmp_path, torso_sample):
    result = run_bone(_phantom(), levels={"L1": 12}, classes="bone")
    assert result.labels == {1: "bone"}
    from mskseg.cli import main

    assert main(["bone", str(tmp_path / "absent.nrrd"), "--out", str(tmp_path / "o")]) != 0


def test_ircad_real_ct_all_bone_dice_and_input_grid():
    """The real portal-venous abdominal CT of 3D-IRCADb patient 17 against its expert all-bone mask
    (measured 0.840 with scripts/evaluate_bone_real.py)."""
    from conftest import DATA, require

    from mskseg.io import read_image

    case = require(DATA / "ircad-abdomen-ct17")
    image = read_image(case / "dicom")
    result = run_bone(image, device="cpu")
    assert result.labelmap.same_grid(image) and result.labelmap.array.shape == image.array.shape
    ref = image.to_sitk()
    truth = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(case / "masks" / "bone.nii.gz")), ref,
                                                 sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    found = np.asarray(result.labelmap.array) > 0
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert dice >= 0.80, dice


def test_contrast_phase_of_a_native_and_a_portal_torso(torso_sample, torso_result):
    """The aorta is found as the round contrast-filled tube in front of / left of the spine on a portal-venous
    torso (its centre inside the drawn aorta, the correction applied), and none on the same anatomy unenhanced."""
    from mskseg.bone.density import PORTAL_VENOUS_OFFSET_HU
    from mskseg.bone.rules import find_aorta

    portal = torso_result.density["phase"]
    assert portal["phase"] == "portal-venous" and portal["correction_hu"] == -PORTAL_VENOUS_OFFSET_HU
    view = torso_result.canonical
    aorta = find_aorta(np.asarray(view.image.array), view.labelmap > 0, view.spine, view.image.spacing)
    assert aorta is not None and aorta["median_hu"] == portal["aorta_hu"] and aorta["z_extent_mm"] >= 40
    truth = torso_sample.labels.array == TORSO_LABEL_VALUE["aorta"]  # the torso is stored axially (identity)
    k = aorta["slices"][len(aorta["slices"]) // 2]
    assert truth[k, int(round(aorta["y"])), int(round(aorta["x"]))]
    row = next(r for r in torso_result.rows if r.get("level") == "L1")
    assert row["trabecular_HU_corrected"] == pytest.approx(row["trabecular_HU"] - PORTAL_VENOUS_OFFSET_HU, abs=0.11)

    from mskseg.synth.torso import make_torso

    habitus = {"sex": "M", "age": 60.0, "height_m": 1.78, "weight_kg": 84.0, "bmi": 84.0 / 1.78 ** 2, "arms": "up"}
    native = make_torso(np.random.default_rng(3), z_range=("T11", "S1"), spacing_mm=(1.5, 1.5, 5.0),
                        variant="normal", habitus=habitus, size=256, phase="native")  # small_torso's anatomy
    result = run_bone(native.image, device="cpu")
    phase = result.density["phase"]
    assert phase["phase"] == "unenhanced" and phase["aorta_hu"] is None and phase["correction_hu"] == 0.0
    row = next(r for r in result.rows if r.get("level") == "L1")
    assert row["trabecular_HU_corrected"] == row["trabecular_HU"]
