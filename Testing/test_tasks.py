"""The task registry and the one step runner: every task declared once, the CLI built from the registry, the
command line and the Slicer Logic running the same orchestration with identical outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.engine import CancelToken
from mskseg.errors import CancelledError, MSKSegError
from mskseg.steps import StepRunner
from mskseg.tasks import TASKS, get_task, task_names

from conftest import REPO


# ------------------------------------------------------------------------------------------------ step runner
def test_step_runner_times_each_step_and_maps_progress_onto_the_whole_run():
    seen: list[tuple[float, str]] = []
    runner = StepRunner({"a": 1.0, "b": 3.0}, lambda f, m: seen.append((f, m)) or True)
    with runner.step("a", "first") as report:
        report(0.5, "half of a")
    with runner.step("b", "second") as report:
        report(0.5)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert (0.125, "half of a") in seen and (0.625, "second") in seen
    assert list(runner.timings) == ["a", "b"] and all(t >= 0 for t in runner.timings.values())


def test_step_runner_stops_when_progress_says_no_or_the_token_is_set():
    runner = StepRunner({"a": 1.0, "b": 1.0}, lambda f, m: f < 0.5)
    with runner.step("a", "first"):
        pass
    with pytest.raises(CancelledError, match="before 'b'"):
        with runner.step("b", "second"):
            pass
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        with StepRunner({"a": 1.0}, cancel_token=token).step("a", "first"):
            pass
    with pytest.raises(KeyError, match="not a step"):
        StepRunner({"a": 1.0}).step("z", "?")


# ------------------------------------------------------------------------------------------------ registry
def test_every_registered_task_loads_and_declares_run_export_and_slicer_functions():
    assert task_names() == ["sarcopenia", "bone", "spine"]
    for entry in TASKS:
        task = get_task(entry.name)
        assert task.name == entry.name and task.slicer_module == entry.slicer_module
        assert callable(task.run) and callable(task.export) and task.steps
        assert task.slicer, entry.name
    with pytest.raises(MSKSegError, match="no task named"):
        get_task("liver")


def test_loading_the_registry_imports_no_task_code():
    code = ("import sys, mskseg.tasks; assert 'mskseg.sarcopenia' not in sys.modules; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_the_command_line_has_a_subcommand_for_each_task_with_options():
    from mskseg.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for entry in TASKS:
        task = get_task(entry.name)
        assert (entry.name in subcommands) == (task.add_arguments is not None)
    args = parser.parse_args(["sarcopenia", "ct.nii.gz", "--out", "x", "--slab", "3", "--method", "rules"])
    options = get_task("sarcopenia").options_from_args(args)
    assert options["slab"] == 3 and options["method"] == "rules" and options["level_index"] is None


def test_a_slicer_function_that_a_task_lacks_is_a_clear_error():
    with pytest.raises(MSKSegError, match="no Slicer function"):
        get_task("bone").slicer_function("find_l3")


# ------------------------------------------------------------------------------------------------ one orchestration
def test_command_line_and_slicer_logic_give_identical_label_maps_and_tables(torso_ct, tmp_path):
    slicer = pytest.importorskip("slicer", reason="needs the pip package slicer-core")
    from mskseg import mrml
    from mskseg.cli import main
    from mskseg.io.segnrrd import read_seg_nrrd
    from mskseg.orientation import to_canonical

    ct_path = tmp_path / "ct.nrrd"
    sitk.WriteImage(torso_ct.to_sitk(), str(ct_path))
    options = ["--method", "rules", "--slab", "3", "--muscle-groups", "--height", "1.78", "--sex", "M",
               "--device", "cpu"]
    assert main(["sarcopenia", str(ct_path), "--out", str(tmp_path / "cli"), *options]) == 0
    cli_labels, cli_names = read_seg_nrrd(tmp_path / "cli" / "segmentation.seg.nrrd")
    cli_json = json.loads((tmp_path / "cli" / "metrics.json").read_text())

    from mskseg.io import read_image

    image = read_image(ct_path)
    scene = slicer.vtkMRMLScene()
    volume = mrml.image_to_volume_node(image, scene, "CT")
    task = get_task("sarcopenia")
    segmentation, table = task.slicer_function("process")(
        scene, volume, method="rules", slab=3, muscle_groups=True, height_m=1.78, sex="M", device="cpu")
    logic_labels, logic_names = mrml.segmentation_node_to_labelmap(segmentation, image)

    assert {v: n for v, n in cli_names.items()} == {v: n for v, n in logic_names.items()}
    full = np.zeros(image.array.shape, np.int32)
    from mskseg.image import labels_on_grid

    full[...] = labels_on_grid(cli_labels, image)
    assert np.array_equal(full, np.asarray(logic_labels.array))
    logic_rows = mrml.table_node_to_rows(table)
    assert len(logic_rows) == len(cli_json["rows"]) == 4  # three slices and their mean
    for cli_row, logic_row in zip(cli_json["rows"], logic_rows):
        for key in ("slice_index", "SMA_cm2", "SAT_cm2", "VAT_cm2", "IMAT_cm2", "SMI_cm2_m2", "psoas_cm2"):
            expected = cli_row[key]
            assert logic_row[key] == (expected if expected is None else pytest.approx(expected, rel=1e-6)), key
    assert int(segmentation.GetAttribute("MSKSeg.SliceIndex")) == cli_json["level"]["slice_index"]
    assert to_canonical(image)[1].is_identity


def test_a_result_folder_loads_into_the_scene_as_the_logic_makes_it(torso_ct, tmp_path):
    slicer = pytest.importorskip("slicer", reason="needs the pip package slicer-core")
    from mskseg import mrml

    task = get_task("sarcopenia")
    result = task.run(torso_ct, method="rules", device="cpu")
    task.export(tmp_path / "out", torso_ct, result)
    scene = slicer.vtkMRMLScene()
    volume = mrml.image_to_volume_node(torso_ct, scene, "CT")
    node = task.slicer_function("load_result")(scene, volume, tmp_path / "out")
    table = scene.GetNodeByID(node.GetAttribute("MSKSeg.MeasurementsTableID"))
    labels, names = mrml.segmentation_node_to_labelmap(node, torso_ct)
    assert set(names.values()) == set(result.labels.values())
    assert np.array_equal(np.asarray(labels.array) > 0, np.asarray(result.labelmap.array) > 0)
    assert mrml.table_node_to_rows(table)[0]["SMA_cm2"] == pytest.approx(result.headline_row()["SMA_cm2"])
    assert volume.GetAttribute("MSKSeg.L3.Index") == str(result.l3.index)
    with pytest.raises(MSKSegError, match="incomplete"):
        task.slicer_function("load_result")(scene, volume, tmp_path / "nothing-here")
