"""Body composition at L3 end to end: the pipeline's steps, the ``mskseg sarcopenia`` command (demo, files,
DICOM-SEG, cut-off sets, the user's slice, never overwriting) and a clear error, exit status 2, for every
kind of unusable input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.cli import main
from mskseg.errors import InvalidImageError, MSKSegError
from mskseg.io.dicomwrite import write_dicom_series
from mskseg.sarcopenia.cutoffs import CUTOFF_SETS
from mskseg.sarcopenia.pipeline import STEPS, run_sarcopenia, slab_slices

from conftest import DATA, require, small_torso

OUTPUTS = ("segmentation.seg.nrrd", "metrics.csv", "metrics.json", "report.png")




@pytest.fixture(scope="module")
def torso_result(torso_ct):
    """The whole pipeline, L3 found automatically."""
    return run_sarcopenia(torso_ct, method="rules", device="cpu")


@pytest.fixture(scope="module")
def true_l3_result(torso_sample):
    """The pipeline on the true L3 slice (given as the user's slice): measurements without detection."""
    return run_sarcopenia(torso_sample.image, level_index=torso_sample.l3_index, method="rules", device="cpu")


def run_cli(*args, capsys=None) -> tuple[int, str, str]:
    """``mskseg ARGS`` in this process; returns (exit status, stdout, stderr)."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return status, out, err


def assert_clear_error(status: int, err: str, *words: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err and "error:" in err
    for word in words:
        assert word.lower() in err.lower(), err


# ------------------------------------------------------------------------------------------------ the pipeline
def test_pipeline_finds_l3_and_runs_its_named_steps(torso_sample, torso_ct, torso_result):
    result = torso_result
    assert result.l3.level == "L3" and abs(result.l3.index - torso_sample.l3_index) <= 1  # 5 mm slices
    assert result.l3.method != "user" and 0 <= result.l3.confidence <= 1
    assert list(result.timings) == list(STEPS) and all(t >= 0 for t in result.timings.values())
    assert result.slices == [result.l3.index] and result.headline_row()["slice_index"] == result.l3.index


def test_result_is_on_the_source_grid_and_is_the_map_as_measured(torso_ct, true_l3_result):
    result = true_l3_result
    assert result.labelmap.same_grid(torso_ct)
    assert result.labels == {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat", 4: "intermuscular_fat"}
    labelled = np.flatnonzero(np.count_nonzero(result.labelmap.array.reshape(torso_ct.array.shape[0], -1), axis=1))
    assert labelled.tolist() == result.slices == [result.l3.index]
    row = result.headline_row()
    assert row["SMA_cm2"] > 20 and row["SAT_cm2"] > 5 and row["VAT_cm2"] > 0
    assert row["SMI_cm2_m2"] == pytest.approx(row["SMA_cm2"] / 1.78 ** 2)  # height from the DICOM attributes
    pixel_cm2 = torso_ct.spacing[0] * torso_ct.spacing[1] / 100
    muscle_pixels = int((result.labelmap.array[result.l3.index] == 1).sum())
    assert row["SMA_cm2"] == pytest.approx(muscle_pixels * pixel_cm2)  # the exported map is the map measured


# ------------------------------------------------------------------------------------------------ levels by name
def test_level_names_are_read_as_users_write_them():
    from mskseg.sarcopenia.pipeline import parse_level_names

    assert parse_level_names("L3") == ["L3"]
    assert parse_level_names("t12, L1,l4") == ["T12", "L1", "L4"]
    assert parse_level_names(["L1", "L1", "vertebrae_L2"]) == ["L1", "L2"]
    assert parse_level_names("ALL") == ["all"] and parse_level_names(None) is None
    for bad in ("X9", "C5", "S1", "L3;L4", "all,L3"):
        with pytest.raises(MSKSegError, match="not a thoracic or lumbar vertebra"):
            parse_level_names(bad)


def test_command_line_levels_mean_names_all_auto_or_a_slice():
    from mskseg.sarcopenia.cli import _levels

    assert _levels("auto") == {"level_index": None}
    assert _levels("57") == {"level_index": 57}
    assert _levels("all") == {"level_index": None, "levels": ["all"]}
    assert _levels("T12,L1,L4") == {"level_index": None, "levels": ["T12", "L1", "L4"]}
    with pytest.raises(MSKSegError, match="neither 'auto', level names"):
        _levels("third lumbar")


def test_every_level_in_view_gets_its_own_rows(torso_ct, torso_result):
    from mskseg.sarcopenia.pipeline import ALL_LEVELS, summarise_sarcopenia

    result = run_sarcopenia(torso_ct, levels="all", method="rules", device="cpu", slab=3)
    found = torso_result.l3.levels
    expected = [n for n in ALL_LEVELS if n in found]
    assert list(result.level_slices) == expected and len(expected) >= 5  # T11 to S1 in view
    for name, slices in result.level_slices.items():
        assert slices[1] == found[name] and len(slices) == 3  # a slab of 3 centred on each level
        mine = [row for row in result.rows if row["level"] == name]
        assert [row["row"] for row in mine] == ["slice", "slice", "slice", "mean"]
    assert result.headline_level == "L3" and result.headline_row()["level"] == "L3"
    assert result.headline_row()["row"] == "mean"
    assert summarise_sarcopenia(result)["SMA_cm2"] == result.level_rows()["L3"]["SMA_cm2"]
    assert result.labelmap.same_grid(torso_ct)
    measured = {k for ks in result.level_slices.values() for k in ks}
    assert set(np.nonzero(np.asarray(result.labelmap.array).any(axis=(1, 2)))[0]) <= measured


def test_level_l3_by_name_measures_what_the_default_measures(torso_ct, torso_result):
    by_name = run_sarcopenia(torso_ct, levels="L3", method="rules", device="cpu")
    assert by_name.rows == torso_result.rows
    assert np.array_equal(by_name.labelmap.array, torso_result.labelmap.array)


def test_levels_out_of_view_are_named_and_none_in_view_is_an_error(torso_ct):
    result = run_sarcopenia(torso_ct, levels="T9,L2", method="rules", device="cpu")
    assert list(result.level_slices) == ["L2"] and result.headline_level == "L2"
    assert any("T9 is not in the field of view" in w for w in result.warnings)
    with pytest.raises(MSKSegError, match="none of the levels T5, T6 is in the field of view"):
        run_sarcopenia(torso_ct, levels="T5,T6", method="rules", device="cpu")


def test_levels_all_through_the_command(tmp_path, torso_ct, capsys):
    from mskseg.io.writers import write_image

    ct = write_image(tmp_path / "ct.nii.gz", torso_ct)
    status, out, err = run_cli("sarcopenia", ct, "--levels", "L1,L3", "--method", "rules", "--out", tmp_path / "o",
                               capsys=capsys)
    assert status == 0, err
    assert "at L1 " in out and "at L3 " in out and "headline   L3" in out
    rows = json.loads((tmp_path / "o" / "metrics.json").read_text())["rows"]
    assert [r["level"] for r in rows] == ["L1", "L3"]


def test_users_slice_is_measured_as_given_with_method_user(torso_ct):
    k = torso_ct.array.shape[0] // 3
    result = run_sarcopenia(torso_ct, level_index=k, slab=3, method="rules", device="cpu")
    assert result.l3.method == "user" and result.l3.index == k and result.l3.levels == {}
    assert result.slices == [k - 1, k, k + 1]
    assert [r["row"] for r in result.rows] == ["slice", "slice", "slice", "mean"]
    assert result.headline_row()["row"] == "mean"
    with pytest.raises(InvalidImageError, match="outside the volume"):
        run_sarcopenia(torso_ct, level_index=torso_ct.array.shape[0], method="rules")


def test_fallback_level_is_measured_named_and_warned_about(torso_sample, monkeypatch):
    from mskseg.sarcopenia import l3

    k = torso_sample.level_slices["L1"]

    def detect_l1(image, **kwargs):
        assert kwargs["allow_fallback"] is True
        return l3.L3Result(index=k, position_mm=0.0, level="L1", confidence=0.8, levels={"L1": k, "T12": k + 7},
                           method="network", fallback_used=True)

    monkeypatch.setattr(l3, "detect_l3", detect_l1)
    result = run_sarcopenia(torso_sample.image, allow_fallback=True, method="rules")
    assert result.slices == [k] and result.headline_row()["level"] == "L1"
    assert any("not in the field of view" in w and "L1" in w for w in result.warnings)
    assert result.describe()["level"] == {**result.describe()["level"], "name": "L1", "fallback_used": True}


def test_cancel_stops_the_run_between_steps(torso_ct):
    from mskseg.errors import CancelledError

    seen = []

    def progress(fraction, message):
        seen.append(message)
        return message != "segmenting tissues"

    with pytest.raises(CancelledError, match="segment"):
        run_sarcopenia(torso_ct, level_index=10, method="rules", progress=progress)
    assert seen[-1] == "segmenting tissues"


def test_slab_is_centred_and_cut_at_the_volume_edges():
    assert slab_slices(10, 1, 20) == ([10], False)
    assert slab_slices(10, 5, 20) == ([8, 9, 10, 11, 12], False)
    assert slab_slices(10, 4, 20) == ([9, 10, 11, 12], False)
    assert slab_slices(0, 3, 20) == ([0, 1], True)


@pytest.mark.parametrize("cutoff_set", list(CUTOFF_SETS))
def test_flags_follow_the_chosen_cutoff_set(torso_ct, true_l3_result, cutoff_set):
    from mskseg.sarcopenia.metrics import measure_body_composition

    result = true_l3_result
    smi_threshold = {"Prado 2008": 52.4, "Derstine 2018": 45.4, "Yoon 2021": 39.33, "Kamo 2019": 40.31}
    for height, weight in ((1.78, 84.0), (1.95, 70.0)):
        patient = result.patient.__class__(height_m=height, weight_kg=weight, sex="M")
        row = measure_body_composition(torso_ct, result.labelmap, result.labels, result.slices, patient,
                                       result.settings, cutoff_set).rows[-1]
        bmi = weight / height ** 2
        threshold = smi_threshold.get(cutoff_set, 43.0 if bmi < 25 else 53.0)
        assert row["cutoff_set"] == cutoff_set
        assert row["sarcopenia"] == (row["SMI_cm2_m2"] < threshold)


# ------------------------------------------------------------------------------------------------ the command
def test_demo_writes_every_file_with_dicom_seg_and_never_overwrites(tmp_path, torso_sample, monkeypatch, capsys):
    from mskseg.synth import torso

    # The demo's own CT is 512 x 512 x 115 (about 10 s to make); the small torso runs the same path faster.
    monkeypatch.setattr(torso, "make_demo_ct", lambda seed=0: torso_sample)
    out = tmp_path / "demo"
    args = ("sarcopenia", "--demo", "--out", out, "--cutoffs", "Prado 2008", "--method", "rules")
    status, stdout, err = run_cli(*args, capsys=capsys)
    assert status == 0, err
    for name in (*OUTPUTS, "segmentation.dcm"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "ct-dicom").glob("*.dcm"))) == torso_sample.image.array.shape[0]
    import pydicom

    seg = pydicom.dcmread(out / "segmentation.dcm")
    ct_series = pydicom.dcmread(next((out / "ct-dicom").glob("*.dcm"))).SeriesInstanceUID
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_series
    assert [s.SegmentLabel for s in seg.SegmentSequence][:1] == ["Skeletal muscle"]
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["rows"][-1]
    assert row["height_m"] == 1.78  # from the DICOM PatientSize written with the demo CT
    assert row["SMI_cm2_m2"] == pytest.approx(row["SMA_cm2"] / row["height_m"] ** 2)
    assert row["cutoff_set"] == "Prado 2008" and row["sarcopenia"] == (row["SMI_cm2_m2"] < 52.4)
    assert metrics["settings"]["vat_hu"] == [-150.0, -50.0] and metrics["level"]["slice_index"] == row["slice_index"]
    assert "SMA_cm2 [cm2]" in (out / "metrics.csv").read_text().splitlines()[0]
    assert f"level      {metrics['level']['name']} at slice {row['slice_index']}" in stdout

    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    status, _, err = run_cli(*args, capsys=capsys)
    assert_clear_error(status, err, "already exist", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_users_slice_through_the_command(tmp_path, torso_ct, capsys):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(torso_ct.to_sitk(), str(path))
    k = torso_ct.array.shape[0] // 2
    status, out, err = run_cli("sarcopenia", path, "--levels", k, "--height", "1.7", "--sex", "F", "--method", "rules",
                               "--vat-window=-190,-30", "--out", tmp_path / "o", capsys=capsys)
    assert status == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["level"]["method"] == "user" and metrics["level"]["slice_index"] == k
    assert metrics["settings"]["vat_hu"] == [-190.0, -30.0]
    assert not (tmp_path / "o" / "segmentation.dcm").exists()  # NIfTI input: no DICOM-SEG
    assert metrics["rows"][-1]["sex"] == "F" and metrics["rows"][-1]["cutoff_set"] == "Martin 2013"


# ------------------------------------------------------------------------------------------------ bad input
def _nifti(tmp_path: Path, array: np.ndarray, spacing=(0.8, 0.8, 3.0), name="x.nii.gz") -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def test_mr_series_is_refused_by_modality(tmp_path, torso_ct, capsys):
    import pydicom

    files = write_dicom_series(torso_ct, tmp_path / "mr")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    status, _, err = run_cli("sarcopenia", tmp_path / "mr", "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err, "MR", "CT")
    assert not (tmp_path / "o").exists()


def test_mr_like_values_are_refused_by_hu_range(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = _nifti(tmp_path, rng.integers(0, 1200, size=(40, 64, 64)).astype(np.int16))
    status, _, err = run_cli("sarcopenia", path, "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err, "Hounsfield")


def test_2d_picture_is_refused(tmp_path, capsys):
    from PIL import Image as PILImage

    path = tmp_path / "slice.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    status, _, err = run_cli("sarcopenia", path, "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err, "2D")


def test_single_slice_volume_is_refused(tmp_path, torso_ct, capsys):
    k = torso_ct.array.shape[0] // 2
    path = _nifti(tmp_path, torso_ct.array[k:k + 1], spacing=torso_ct.spacing)
    status, _, err = run_cli("sarcopenia", path, "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err, "slice")


def test_extreme_slice_spacing_is_refused(tmp_path, torso_ct, capsys):
    path = _nifti(tmp_path, torso_ct.array[::8], spacing=(torso_ct.spacing[0], torso_ct.spacing[1], 25.0))
    status, _, err = run_cli("sarcopenia", path, "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err, "spacing")


def test_thorax_only_ct_is_refused(tmp_path, capsys):
    chest = small_torso(z_range=("T3", "T10")).image
    path = _nifti(tmp_path, chest.array, spacing=chest.spacing)
    status, _, err = run_cli("sarcopenia", path, "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err)
    assert any(word in err.lower() for word in ("lumbar", "l3", "field of view")), err
    assert not (tmp_path / "o").exists()


def test_height_in_centimetres_is_refused_before_any_work(tmp_path, torso_ct, capsys):
    path = _nifti(tmp_path, torso_ct.array, spacing=torso_ct.spacing)
    status, _, err = run_cli("sarcopenia", path, "--height", "178", "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err, "metres")


# ------------------------------------------------------------------------------------------------ real data
def test_real_t11_t12_series_has_no_l3_and_falls_back_when_allowed(tmp_path, capsys):
    series = require(DATA / "ct-dicom-t12")
    status, _, err = run_cli("sarcopenia", series, "--out", tmp_path / "o", capsys=capsys)
    assert_clear_error(status, err)
    assert any(word in err.lower() for word in ("lumbar", "l3", "field of view")), err
    status, out, err = run_cli("sarcopenia", series, "--allow-fallback", "--height", "1.75", "--sex", "M",
                               "--method", "rules", "--out", tmp_path / "f", capsys=capsys)
    assert status == 0, err
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["level"]["fallback_used"] is True and metrics["level"]["name"] in ("T12", "T11", "T10", "L1")
    assert any("not in the field of view" in w for w in metrics["warnings"])
    # DICOM-SEG: written, or (headers highdicom cannot use) a warning that says so; never a crash.
    assert (tmp_path / "f" / "segmentation.dcm").exists() or any("DICOM-SEG" in w for w in metrics["warnings"])
