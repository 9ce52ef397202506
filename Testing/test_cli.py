"""The ``mskseg`` command end to end: help that teaches, the demo, and a clear error (no traceback, exit 2)
for every kind of bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from mskseg.io.dicomwrite import write_dicom_series


def run(*args, cwd=None):
    """Run ``python -m mskseg ARGS``; returns the completed process (text)."""
    return subprocess.run([sys.executable, "-m", "mskseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_clear_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error:" in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def test_help_lists_commands_and_examples():
    p = run("--help")
    assert p.returncode == 0
    for word in ("info", "demo", "export", "segment", "models", "device", "examples:", "--overwrite"):
        assert word in p.stdout


def test_demo_writes_every_format_and_never_overwrites(tmp_path):
    p = run("demo", "--out", tmp_path / "d")
    assert p.returncode == 0, p.stderr
    for name in ("segmentation.seg.nrrd", "segmentation.dcm", "segmentation.nii.gz", "metrics.csv", "metrics.json",
                 "report.png"):
        assert (tmp_path / "d" / name).stat().st_size > 0
    rows = json.loads((tmp_path / "d" / "metrics.json").read_text())["rows"]
    assert {r["class"] for r in rows} == {"skeletal_muscle", "subcutaneous_fat", "visceral_fat", "vertebrae_L3"}
    muscle = next(r for r in rows if r["class"] == "skeletal_muscle")
    assert 30 < muscle["mean"] < 60  # HU of the synthetic muscle survives DICOM write + read
    again = run("demo", "--out", tmp_path / "d")
    assert_clear_error(again, "overwrite")
    assert run("demo", "--out", tmp_path / "d", "--overwrite").returncode == 0


def test_info_prints_geometry_and_patient_attributes(tmp_path, oblique_ct):
    ct = oblique_ct.with_array(oblique_ct.array)
    ct.metadata.update(PatientSex="M", PatientSize=1.8, PatientWeight=90)
    write_dicom_series(ct, tmp_path / "s")
    p = run("info", tmp_path / "s")
    assert p.returncode == 0, p.stderr
    assert "0.8, 0.7, 2.5" in p.stdout and "PatientSize       1.8 m" in p.stdout and "series found (1)" in p.stdout
    j = json.loads(run("info", tmp_path / "s", "--json").stdout)
    assert j["size"] == [24, 20, 6] and j["metadata"]["PatientSex"] == "M"


def test_info_on_the_real_jpeg2000_series(shared_data):
    p = run("info", shared_data / "ct-dicom-t12" / "dicom")
    assert p.returncode == 0, p.stderr
    assert "512 x 512 x 20" in p.stdout and "Modality          CT" in p.stdout


def test_bad_inputs_give_clear_errors(tmp_path, oblique_ct):
    assert_clear_error(run("info", tmp_path / "missing.nii.gz"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clear_error(run("info", tmp_path / "empty"), "empty")
    (tmp_path / "notes.txt").write_text("hello")
    assert_clear_error(run("info", tmp_path / "notes.txt"), "not an image")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(tmp_path / "t4.nii.gz"))
    assert_clear_error(run("info", tmp_path / "t4.nii.gz"), "4D")
    p = tmp_path / "neg.nrrd"
    p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 3 2\n"
                  b"space directions: (1,0,0) (0,-0,0) (0,0,1)\nkinds: domain domain domain\n"
                  b"endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n" + bytes(48))
    assert_clear_error(run("info", p))
    mixed = tmp_path / "mixed"
    write_dicom_series(oblique_ct, mixed / "a", series_uid="1.2.826.0.1.1")
    write_dicom_series(oblique_ct, mixed / "b", series_uid="1.2.826.0.1.2")
    assert_clear_error(run("info", mixed), "2 DICOM series", "1.2.826.0.1.1", "--series")
    assert run("info", mixed, "--series", "1.2.826.0.1.2").returncode == 0


def test_export_refuses_a_label_map_on_another_grid(tmp_path, oblique_ct, oblique_labels):
    lab, labels = oblique_labels
    sitk.WriteImage(oblique_ct.to_sitk(), str(tmp_path / "ct.nii.gz"))
    shifted = lab.to_sitk()
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "lab.nii.gz"))
    assert_clear_error(run("export", tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", "--out", tmp_path / "o"),
                       "not on the image's grid", "origin")
    assert not (tmp_path / "o").exists()


def test_export_writes_dicom_seg_for_a_dicom_series(tmp_path, oblique_ct, oblique_labels):
    lab, labels = oblique_labels
    write_dicom_series(oblique_ct, tmp_path / "ct")
    # the series reads back with k reversed (see write_dicom_series); give the label map that grid
    from mskseg.io import read_image

    ct = read_image(tmp_path / "ct")
    flipped = ct.with_array(lab.array[::-1].copy(), keep_metadata=False)
    sitk.WriteImage(flipped.to_sitk(), str(tmp_path / "lab.nrrd"))
    p = run("export", tmp_path / "ct", tmp_path / "lab.nrrd", "--labels", "1=skeletal_muscle,2=subcutaneous_fat,3=visceral_fat",
            "--out", tmp_path / "o")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o" / "segmentation.dcm").exists() and (tmp_path / "o" / "report.png").exists()
    assert_clear_error(run("export", tmp_path / "ct", tmp_path / "lab.nrrd", "--labels", "1=x,2", "--out", tmp_path / "o2"),
                       "VALUE=NAME")


def test_terminology_writes_slicer_term_json(tmp_path):
    p = run("terminology", "--write", tmp_path / "t.term.json")
    assert p.returncode == 0
    doc = json.loads((tmp_path / "t.term.json").read_text())
    assert doc["SegmentationCategoryTypeContextName"].endswith("MSKSeg")
    assert_clear_error(run("terminology", "--write", tmp_path / "t.term.json"), "already exists")


def _unet_card(tmp_path):
    """A schema-valid card for a tiny MONAI U-Net with saved (untrained) weights."""
    from mskseg.models import load_model_card
    from mskseg.models.networks import build_network_from_architecture
    from mskseg.models.weights import save_weights

    arch = {"name": "monai.UNet", "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                                            "channels": [4, 8], "strides": [2], "num_res_units": 0}}
    net = build_network_from_architecture(arch["name"], arch["args"])
    sha = save_weights(net.state_dict(), tmp_path / "tiny.safetensors")
    card = {"schema_version": "1.0", "name": "tiny-unet", "title": "Tiny U-Net", "task": "bone", "version": "0.0.1",
            "description": "untrained, for command-line tests", "licence": "Apache-2.0", "modality": "CT",
            "dimensions": "2d", "input": {"spacing_mm": None, "window": [-200, 400], "channels": 1,
                                          "patch_size": [32, 32]},
            "classes": [{"label": 1, "name": "vertebrae_L3"}, {"label": 2, "name": "sacrum"}],
            "architecture": arch, "weights": {"file": "tiny.safetensors", "sha256": sha, "format": "safetensors"},
            "training": {"data": "none"}, "validation": []}
    (tmp_path / "tiny.card.json").write_text(json.dumps(card))
    return load_model_card(tmp_path / "tiny.card.json")


def test_segment_runs_a_card_on_a_cohort_and_refuses_tampered_weights(tmp_path, oblique_ct):
    card = _unet_card(tmp_path)
    sitk.WriteImage(oblique_ct.to_sitk(), str(tmp_path / "a.nii.gz"))
    write_dicom_series(oblique_ct, tmp_path / "b")
    p = run("segment", tmp_path / "a.nii.gz", tmp_path / "b", "--model", card.path, "--out", tmp_path / "out",
            "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "a" / "segmentation.seg.nrrd").exists()
    assert (tmp_path / "out" / "b" / "segmentation.dcm").exists()  # DICOM input -> DICOM-SEG too
    assert "device  cpu" in p.stdout
    card.weights_path.write_bytes(card.weights_path.read_bytes()[:-4] + b"\0\0\0\0")
    bad = run("segment", tmp_path / "a.nii.gz", "--model", card.path, "--out", tmp_path / "out2")
    assert_clear_error(bad, "sha256")
    assert not (tmp_path / "out2").exists()


def test_export_gives_back_the_names_of_a_nifti_written_by_mskseg(tmp_path):
    """segmentation.nii.gz with its segmentation.labels.json (as `mskseg demo` writes them) keeps its names."""
    assert run("demo", "--out", tmp_path / "d").returncode == 0
    p = run("export", tmp_path / "d" / "ct-dicom", tmp_path / "d" / "segmentation.nii.gz", "--out", tmp_path / "e",
            "--formats", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads((tmp_path / "e" / "metrics.json").read_text())["rows"]
    assert {r["class"] for r in rows} == {"skeletal_muscle", "subcutaneous_fat", "visceral_fat", "vertebrae_L3"}
    (tmp_path / "d" / "segmentation.labels.json").write_text("{not json")
    assert_clear_error(run("export", tmp_path / "d" / "ct-dicom", tmp_path / "d" / "segmentation.nii.gz",
                           "--out", tmp_path / "f"), "labels.json")


def test_a_negative_range_is_accepted_with_or_without_equals_sign():
    from mskseg.cli import build_parser, join_negative_ranges

    words = join_negative_ranges(["sarcopenia", "ct.nii.gz", "--vat-window", "-190,-30", "--out", "r"])
    assert words[2] == "--vat-window=-190,-30"
    assert build_parser().parse_args(words).vat_window == "-190,-30"
    assert join_negative_ranges(["train", "--window", "-160,240"]) == ["train", "--window=-160,240"]
    assert join_negative_ranges(["train", "--window", "0,255"]) == ["train", "--window", "0,255"]
    words = join_negative_ranges(["batch", "sarcopenia", "--", "--vat-window", "-190,-30"])
    assert words[-1] == "--vat-window=-190,-30"
