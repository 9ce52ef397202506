"""Outputs whole or absent (mskseg.io.output): staging and commit, the completion marker, --overwrite, links,
unwritable / full / misplaced output folders, and SIGINT / SIGTERM at many points of a real command."""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.cli import main
from mskseg.demo import DEMO_LABELS, demo_ct
from mskseg.errors import OutputError, OutputExistsError
from mskseg.io import output
from mskseg.io.export import export_result
from mskseg.io.output import MARKER, STAGING_PREFIX, child_folder, hold_signals, output_transaction, read_marker

LABELS_ARG = ",".join(f"{v}={n}" for v, n in DEMO_LABELS.items())
EXPORTED = {"segmentation.seg.nrrd", "segmentation.nii.gz", "segmentation.labels.json", "metrics.csv",
            "metrics.json", "report.png", MARKER}


def leftovers(folder: Path) -> list[str]:
    """Temporary entries (staging folders, temporary names) anywhere under ``folder``."""
    if not folder.exists():
        return []
    return [str(p) for p in folder.rglob("*") if p.name.startswith(STAGING_PREFIX) or ".tmp" in p.name]


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    """A small CT and its true label map as NIfTI files (8 slices of 96 x 96)."""
    folder = tmp_path_factory.mktemp("case")
    ct, lab = demo_ct(n_slices=8, size=96)
    sitk.WriteImage(ct.to_sitk(), str(folder / "ct.nii.gz"))
    sitk.WriteImage(lab.to_sitk(), str(folder / "lab.nii.gz"))
    return folder / "ct.nii.gz", folder / "lab.nii.gz"


def export_args(case, out, *more):
    return ["export", str(case[0]), str(case[1]), "--labels", LABELS_ARG, "--out", str(out), *map(str, more)]


def run_main(args, capsys):
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(status, err, *words):
    assert status == 2, err
    assert "internal error" not in err and "Traceback" not in err
    for w in words:
        assert w in err, err


# ------------------------------------------------------------------------------------------------ the transaction
def test_a_transaction_moves_everything_into_place_with_a_completion_marker(tmp_path):
    out = tmp_path / "out"
    with output_transaction(out, ["a.txt", "sub"]) as staging:
        assert staging.parent == out and staging.name.startswith(STAGING_PREFIX)
        (staging / "a.txt").write_text("a")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text("b")
        assert not (out / "a.txt").exists()  # nothing in place before the end
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    marker = read_marker(out)
    assert marker["status"] == "complete" and marker["files"] == ["a.txt", "sub"]
    assert leftovers(out) == []


def test_a_failed_or_interrupted_transaction_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    for error in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with output_transaction(out, ["a.txt"]) as staging:
                (staging / "a.txt").write_text("half")
                raise error
        assert not out.exists()  # made by the transaction, removed again
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(ValueError):
        with output_transaction(out, ["a.txt"]) as staging:
            (staging / "a.txt").write_text("half")
            raise ValueError
    assert sorted(os.listdir(out)) == ["mine.txt"]


def test_overwrite_replaces_the_whole_earlier_result_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    with output_transaction(out, ["a.txt", "b.txt"]) as staging:
        (staging / "a.txt").write_text("1")
        (staging / "b.txt").write_text("1")
    with pytest.raises(OutputExistsError, match="already exist"):
        with output_transaction(out, ["a.txt"]):
            pass
    with pytest.raises(OutputExistsError, match="already holds the result of an earlier run"):
        with output_transaction(out, ["c.txt"]):
            pass
    with pytest.raises(OutputExistsError, match="already exists"):  # the user's file: never replaced silently
        output.check_output(out, ["mine.txt"])
    with output_transaction(out, ["a.txt"], overwrite=True) as staging:
        (staging / "a.txt").write_text("2")
    assert sorted(os.listdir(out)) == [MARKER, "a.txt", "mine.txt"]  # b.txt was the earlier result's
    assert (out / "a.txt").read_text() == "2" and read_marker(out)["files"] == ["a.txt"]


def test_an_incomplete_earlier_run_is_named_and_replaced_with_overwrite(tmp_path, small_case, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "segmentation.seg.nrrd").write_bytes(b"NRRD0004\ncut sh")  # a crash while the files were moved
    (out / MARKER).write_text(json.dumps({"status": "incomplete", "files": ["segmentation.seg.nrrd", "metrics.csv"]}))
    status, _, err = run_main(export_args(small_case, out), capsys)
    assert_refused(status, err, "incomplete earlier run", "--overwrite")
    status, _, err = run_main(export_args(small_case, out, "--overwrite"), capsys)
    assert status == 0, err
    assert set(os.listdir(out)) == EXPORTED and read_marker(out)["status"] == "complete"


def test_staging_folders_of_a_crashed_run_are_removed_by_the_next(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f"{STAGING_PREFIX}{dead.pid}-x").mkdir()
    (out / f"{STAGING_PREFIX}{dead.pid}-x" / "report.png").write_bytes(b"\x89PNG cut")
    (out / f"{STAGING_PREFIX}{os.getppid()}-y").mkdir()  # a run still going on (a live process): kept
    with output_transaction(out, ["a.txt"]) as staging:
        (staging / "a.txt").write_text("a")
    assert sorted(os.listdir(out)) == sorted([MARKER, "a.txt", f"{STAGING_PREFIX}{os.getppid()}-y"])


def test_links_at_target_names_are_never_written_through(tmp_path, small_case, capsys):
    out, outside = tmp_path / "o", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "precious.csv").write_text("keep me")
    (out / "metrics.csv").symlink_to(outside / "precious.csv")
    (out / "report.png").symlink_to(outside / "missing.png")  # dangling
    status, _, err = run_main(export_args(small_case, out), capsys)
    assert_refused(status, err, "already exist", "metrics.csv", "report.png")
    status, _, err = run_main(export_args(small_case, out, "--overwrite"), capsys)
    assert status == 0, err
    assert (outside / "precious.csv").read_text() == "keep me" and not (outside / "missing.png").exists()
    assert not (out / "metrics.csv").is_symlink() and not (out / "report.png").is_symlink()
    # a case folder of `mskseg segment` that is a link out of --out is refused
    (out / "case1").symlink_to(outside)
    with pytest.raises(OutputError, match="symbolic link"):
        child_folder(out, "case1")
    with pytest.raises(OutputError):
        child_folder(out, "..")


def test_signals_are_held_while_files_are_moved_into_place():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own Ctrl-C handler, whatever
    try:                                                               # earlier tests' libraries installed
        with pytest.raises(KeyboardInterrupt):
            with hold_signals():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                moved = True  # reached: the signal waited
        assert moved
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, before)


# ------------------------------------------------------------------------------------------------ output places
def test_out_inside_the_input_dicom_folder_is_refused(tmp_path, oblique_ct, oblique_labels, capsys):
    from mskseg.io import read_image
    from mskseg.io.dicomwrite import write_dicom_series

    lab, labels = oblique_labels
    write_dicom_series(oblique_ct, tmp_path / "ct")
    ct = read_image(tmp_path / "ct")
    sitk.WriteImage(ct.with_array(lab.array[::-1].copy(), keep_metadata=False).to_sitk(), str(tmp_path / "lab.nrrd"))
    for out in (tmp_path / "ct", tmp_path / "ct" / "results"):
        status, _, err = run_main(["export", tmp_path / "ct", tmp_path / "lab.nrrd", "--out", out], capsys)
        assert_refused(status, err, "inside the input DICOM folder", "outside the input folder")
    assert sorted(os.listdir(tmp_path / "ct")) == [f"IM{k:04d}.dcm" for k in range(6)]
    # the export function of the Slicer modules refuses it too (the image knows its DICOM files)
    with pytest.raises(OutputError, match="inside the input DICOM folder"):
        export_result(tmp_path / "ct" / "seg", ct, ct.with_array(np.zeros(ct.array.shape, np.uint8)), {})
    assert run_main(["export", tmp_path / "ct", tmp_path / "lab.nrrd", "--out", tmp_path / "res"], capsys)[0] == 0


def test_out_that_is_or_lies_under_a_file_gives_one_clear_message(tmp_path, small_case, capsys):
    (tmp_path / "f.txt").write_text("x")
    status, _, err = run_main(export_args(small_case, tmp_path / "f.txt"), capsys)
    assert_refused(status, err, "is a file, not a folder")
    status, _, err = run_main(export_args(small_case, tmp_path / "f.txt" / "sub" / "o"), capsys)
    assert_refused(status, err, "lies under", "which is a file")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    status, _, err = run_main(export_args(small_case, tmp_path / "broken"), capsys)
    assert_refused(status, err, "broken symbolic link")
    status, _, err = run_main(["terminology", "--write", tmp_path / "f.txt" / "t.json"], capsys)
    assert_refused(status, err, "is a file, not a folder")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="chmod does not stop root")
def test_a_read_only_folder_gives_one_clear_message_chmod(tmp_path, small_case, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        status, _, err = run_main(export_args(small_case, tmp_path / "ro" / "o"), capsys)
        assert_refused(status, err, "no permission to write")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_read_only_and_missing_places_give_one_clear_message_each(tmp_path, small_case, capsys, monkeypatch):
    monkeypatch.setattr(output, "_read_only", lambda path: True)
    status, _, err = run_main(export_args(small_case, tmp_path / "o"), capsys)
    assert_refused(status, err, "read-only file system", "writable disk")
    monkeypatch.undo()
    monkeypatch.setattr(output.os, "access", lambda path, mode: False)
    status, _, err = run_main(export_args(small_case, tmp_path / "o"), capsys)
    assert_refused(status, err, "no permission to write")
    monkeypatch.undo()

    def missing(self, *a, **k):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", missing)
    status, _, err = run_main(export_args(small_case, tmp_path / "gone" / "o"), capsys)
    assert_refused(status, err, "cannot be made", "missing")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, ("is full", "free some space")),
                                         (errno.EROFS, ("read-only",)), (errno.EACCES, ("no permission",))])
def test_a_writer_failing_midway_leaves_nothing_and_says_why(tmp_path, small_case, capsys, monkeypatch, code, words):
    from mskseg.io import writers

    real = writers.write_metrics_csv

    def failing(path, *a, **k):
        real(path, *a, **k)  # a part written, then the disk fails
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(writers, "write_metrics_csv", failing)
    out = tmp_path / "o"
    status, _, err = run_main(export_args(small_case, out), capsys)
    assert_refused(status, err, *words)
    assert not out.exists() and leftovers(tmp_path) == []
    out.mkdir()
    status, _, err = run_main(export_args(small_case, out), capsys)
    assert_refused(status, err, *words)
    assert os.listdir(out) == []


def test_a_full_disk_under_simpleitk_is_named(tmp_path, small_case, capsys, monkeypatch):
    import shutil

    def no_space(*a, **k):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: ... Write failed")

    monkeypatch.setattr(sitk, "WriteImage", no_space)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    status, _, err = run_main(export_args(small_case, tmp_path / "o", "--formats", "nifti,csv"), capsys)
    assert_refused(status, err, "is full")
    assert not (tmp_path / "o").exists()


def test_terminology_write_is_whole_or_absent(tmp_path, capsys, monkeypatch):
    from mskseg import terminology

    target = tmp_path / "t.term.json"

    def broken(path, names=None):
        Path(path).write_text('{"half')
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(terminology, "write_slicer_term_json", broken)
    status, _, err = run_main(["terminology", "--write", target], capsys)
    assert_refused(status, err, "is full")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    assert run_main(["terminology", "--write", target], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["t.term.json"]  # one file: no marker beside it
    status, _, err = run_main(["terminology", "--write", target], capsys)
    assert_refused(status, err, "already exists")


# ------------------------------------------------------------------------------------------------ signals
SARCOPENIA = {"segmentation.seg.nrrd", "metrics.csv", "metrics.json", "report.png", MARKER}


def _state(out: Path, expected: set[str]) -> str:
    """'none' (no result file), 'whole' (every file complete, marker says so), else a description."""
    bad = leftovers(out.parent)
    if bad:
        return f"temporary files left: {bad}"
    names = set(os.listdir(out)) if out.exists() else set()
    if not names:
        return "none"
    if names != expected:
        return f"partial set: {sorted(names)}"
    from PIL import Image as PILImage

    from mskseg.io.segnrrd import read_seg_nrrd

    assert read_marker(out)["status"] == "complete"
    with PILImage.open(out / "report.png") as im:
        im.load()
    read_seg_nrrd(out / "segmentation.seg.nrrd")
    json.loads((out / "metrics.json").read_text())
    assert len(list(csv.reader((out / "metrics.csv").open()))) >= 2
    if "segmentation.nii.gz" in expected:
        sitk.ReadImage(str(out / "segmentation.nii.gz"))
        json.loads((out / "segmentation.labels.json").read_text())
    return "whole"


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "mskseg", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_staging(proc, out, limit=60.0):
    t0 = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - t0 < limit:
        if out.exists() and any(n.startswith(STAGING_PREFIX) for n in os.listdir(out)):
            return time.perf_counter()
        time.sleep(0.005)
    return None


def _kill_loop(tmp_path, command, expected, early, late):
    """Run ``command(out)`` once undisturbed, then again with SIGINT / SIGTERM (alternating) at ``early``
    fractions of the time before the files are written and ``late`` fractions of the write phase; after each,
    the folder holds the whole result or nothing, and no temporary file."""
    t0 = time.perf_counter()
    proc = _start(command(tmp_path / "base"))
    t_stage = _wait_for_staging(proc, tmp_path / "base")
    proc.wait(timeout=120)
    t_end = time.perf_counter()
    assert proc.returncode == 0 and t_stage is not None, proc.stderr.read()
    assert _state(tmp_path / "base", expected) == "whole"
    before, during = (t_stage - t0), (t_end - t_stage)
    points = [("start", f * before) for f in early] + [("write", f * during) for f in late]
    outcomes = [("baseline", 0.0, "-", 0, "whole")]
    for n, (phase, delay) in enumerate(points):
        out = tmp_path / f"o{n}"
        sig = signal.SIGINT if n % 2 == 0 else signal.SIGTERM
        proc = _start(command(out))
        if phase == "write":
            _wait_for_staging(proc, out)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=120)
        err = proc.stderr.read()
        state = _state(out, expected)
        outcomes.append((phase, round(float(delay), 2), sig.name, proc.returncode, state))
        assert state in ("none", "whole"), (outcomes[-1], err)
    print(f"files written after {before:.2f} s, for {during:.2f} s:", *outcomes, sep="\n")
    assert {o[-1] for o in outcomes} == {"none", "whole"}, outcomes
    assert any(o[3] == 130 for o in outcomes), outcomes  # the command's own clean-up ran ("interrupted")


def test_sigint_and_sigterm_at_any_point_of_export_leave_the_whole_result_or_nothing(tmp_path, small_case):
    # 3 kill points before the write phase (start-up, reading, statistics), 11 spread over it (the .seg.nrrd,
    # NIfTI, CSV, JSON and PNG writers and the move into place) up to just past its end.
    _kill_loop(tmp_path, lambda out: export_args(small_case, out), EXPORTED, (0.15, 0.5, 0.9),
               np.linspace(0.0, 1.05, 11))


def test_sigint_and_sigterm_during_sarcopenia_leave_the_whole_result_or_nothing(tmp_path, small_case):
    def command(out):
        return ["sarcopenia", str(small_case[0]), "--levels", "4", "--method", "rules", "--out", str(out)]

    _kill_loop(tmp_path, command, SARCOPENIA, (0.6, 0.9), np.linspace(0.0, 1.0, 5))
