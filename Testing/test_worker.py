"""The background worker (:mod:`mskseg.worker`) and the Slicer side's runner of it (``MSKSegLib.background``).

The worker runs a task in a child process and reports JSON events on its standard output; these tests run the
real child on a small synthetic CT (HU rules, a few seconds) and check what a GUI relies on: rising progress,
a "done" event whose files are those of an in-process run, errors without a traceback, and a Cancel that stops
the child within seconds.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import small_torso
from mskseg.io import read_image
from mskseg.io.writers import write_image
from mskseg.tasks import get_task
from mskseg.worker import WorkerProcess, run_worker, task_options

RULES = ["--method", "rules", "--device", "cpu"]


@pytest.fixture(scope="module")
def torso():
    """A small synthetic torso CT around L3 (43 slices of 256 x 256) with its patient metadata."""
    return small_torso(z_range=("L1", "L5")).image


@pytest.fixture(scope="module")
def ct_file(torso, tmp_path_factory) -> Path:
    """:func:`torso` written as NRRD (geometry kept, metadata not)."""
    return write_image(tmp_path_factory.mktemp("worker-input") / "ct.nrrd", torso)


def _in_process_metrics(image, out_dir: Path) -> str:
    task = get_task("sarcopenia")
    result = task.run(image, method="rules", device="cpu")
    task.export(out_dir, image, result, overwrite=True)
    return (out_dir / "metrics.csv").read_text()


def test_worker_reports_rising_progress_and_the_files_of_an_in_process_run(ct_file, tmp_path):
    worker = WorkerProcess("sarcopenia", ct_file, tmp_path / "worker", RULES).start()
    events = worker.wait(timeout=120)
    assert worker.done and worker.returncode == 0, (events, list(worker.stderr_tail))
    *progress, done = events
    fractions = [e["fraction"] for e in progress]
    assert all(e["event"] == "progress" and isinstance(e["message"], str) for e in progress)
    assert fractions == sorted(fractions) and fractions[0] < 0.1 and fractions[-1] == 1.0 and len(set(fractions)) > 3
    assert worker.progress == (1.0, progress[-1]["message"])
    assert done["event"] == "done" and done["seconds"] > 0
    files = [Path(f) for f in done["files"]]
    assert files and all(f.is_file() and f.parent == tmp_path / "worker" for f in files)
    assert {f.name for f in files} >= {"segmentation.seg.nrrd", "metrics.csv", "metrics.json"}
    assert worker.files == done["files"]
    expected = _in_process_metrics(read_image(ct_file), tmp_path / "in-process")
    assert (tmp_path / "worker" / "metrics.csv").read_text() == expected


def test_task_options_mean_what_they_mean_on_the_command_line():
    options = task_options(get_task("sarcopenia"), ["--method", "rules", "--slab", "3", "--levels", "12"])
    assert (options["method"], options["slab"], options["level_index"], options["cutoff_set"]) == \
        ("rules", 3, 12, "Martin 2013")
    assert task_options(get_task("bone"), ["--model", "bone.card.json", "--device", "cpu"]) == \
        {"model_card": "bone.card.json", "device": "cpu", "method": "auto", "classes": "all", "levels": None}


def test_bad_input_gives_one_error_event_exit_status_2_and_no_traceback(tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not a CT")
    for task, path, options, words in (("sarcopenia", not_an_image, RULES, "not an image"),
                                       ("sarcopenia", not_an_image, ["--method", "magic"], "invalid choice"),
                                       ("bone", not_an_image, ["--colour", "red"], "unrecognized arguments"),
                                       ("knee", not_an_image, [], "no task named 'knee'")):
        worker = WorkerProcess(task, path, tmp_path / "out", options).start()
        events = worker.wait(timeout=60)
        assert worker.returncode == 2 and len(events) == 1, events
        assert events[0]["event"] == "error" and words in events[0]["message"] and "hint" in events[0]
        assert not any("Traceback" in line for line in worker.stderr_tail)
        assert not (tmp_path / "out").exists()


def test_run_worker_writes_one_json_event_per_line(tmp_path):
    stream = io.StringIO()
    assert run_worker(["--task", "sarcopenia", "--input", str(tmp_path / "absent.nrrd"), "--out",
                       str(tmp_path), "--", *RULES], stream) == 2
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["error"]


def test_stray_prints_of_python_and_c_code_go_to_standard_error():
    code = ("import os; from mskseg.worker import _protocol_stream; events = _protocol_stream(); print('stray'); "
            "os.write(1, b'from C\\n'); events.write('{\"event\": \"progress\"}\\n')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout == '{"event": "progress"}\n'
    assert result.stderr.split() == ["stray", "from", "C"]


def test_cancel_stops_the_child_within_seconds(ct_file, tmp_path):
    worker = WorkerProcess("sarcopenia", ct_file, tmp_path / "out", RULES).start()
    deadline = time.monotonic() + 60
    while not any(e["event"] == "progress" for e in worker.poll()):  # the run is under way
        assert time.monotonic() < deadline and worker.returncode is None, list(worker.stderr_tail)
        time.sleep(0.02)
    t0 = time.monotonic()
    worker.cancel()
    events = worker.wait(timeout=10)
    assert time.monotonic() - t0 < 5
    assert worker.done and worker.returncode not in (0, None)
    assert events[-1] == {"event": "error", "message": "cancelled", "cancelled": True}
    assert not worker.files


def test_a_crashed_child_is_reported_as_an_internal_error(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nprint('segmentation fault in a C library', file=sys.stderr)\nsys.exit(139)\n")
    worker = WorkerProcess("sarcopenia", tmp_path / "ct.nrrd", tmp_path / "out", python=sys.executable)
    worker.command = lambda: [sys.executable, str(crash)]
    events = worker.start().wait(timeout=30)
    assert events == [{"event": "error", "message": "internal error: the worker stopped with exit status 139: "
                                                    "segmentation fault in a C library"}]


# ------------------------------------------------------------------------------ MSKSegLib.background
@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer", reason="needs the pip package slicer-core")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no vtkMRMLScene (install slicer-core)")
    return slicer.vtkMRMLScene()


class _Timer:
    """Stand-in for the ``QTimer`` that polls the run; the test calls ``poll`` itself."""

    def __init__(self):
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _background_run(scene, torso, **callbacks):
    from MSKSegLib.background import BackgroundRun
    from mskseg import mrml

    volume = mrml.image_to_volume_node(torso, scene, "CT")
    bar, label = SimpleNamespace(value=0), SimpleNamespace(text="")
    run = BackgroundRun("sarcopenia", volume, RULES, progress_bar=bar, status_label=label, timer=_Timer(),
                        python=sys.executable, **callbacks)
    return run, bar, label


def test_background_run_shows_progress_and_hands_over_the_result_folder(scene, torso, tmp_path):
    done, failed, finished, bars = [], [], [], []
    run, bar, label = _background_run(scene, torso, on_done=done.append, on_failed=lambda *a: failed.append(a),
                                      on_finished=lambda: finished.append(True))
    run.start()
    assert run.timer.active
    deadline = time.monotonic() + 120
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        bars.append(bar.value)
        time.sleep(0.05)
    assert failed == [] and done == [run.out_dir] and finished == [True]
    assert max(bars) >= 90 and bar.value == 0 and not run.timer.active
    assert not (run.folder / "input.nrrd").exists()  # the input copy is removed, the result kept
    # the volume's patient metadata went with it: the same metrics as an in-process run on the image
    assert (run.out_dir / "metrics.csv").read_text() == _in_process_metrics(torso, tmp_path)


def test_cancelled_background_run_discards_its_folder_and_loads_nothing(scene, torso):
    done, finished = [], []
    run, bar, label = _background_run(scene, torso, on_done=done.append, on_finished=lambda: finished.append(True))
    run.start()
    run.cancel()
    assert run.finished and finished == [True] and done == []
    assert label.text == "Cancelled." and not run.folder.exists()
