"""Cohorts (``mskseg batch``): eight small studies, two broken on purpose, run in this process and on a Dask
LocalCluster give identical cohort tables; the broken ones are reported with their reasons; a batch killed by
SIGTERM mid-way resumes without redoing finished cases and leaves no partial file; case names are safe."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mskseg.batch import (CASE_FILE, Case, case_names, find_cases, read_record, record_fields, run_batch,
                          write_cohort_table)
from mskseg.demo import demo_ct
from mskseg.errors import MSKSegError
from mskseg.io.dicomwrite import write_dicom_series
from mskseg.io.writers import write_image

#: The task options of every run here: the rules on a chosen slice (no L3 search on these small phantoms).
TASK_ARGS = ["--levels", "3", "--method", "rules"]
N_GOOD = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A folder of 8 studies: 5 NIfTI files, 1 DICOM series folder, a file that is not an image and a folder
    without any image."""
    root = tmp_path_factory.mktemp("cohort") / "studies"
    root.mkdir()
    for seed in range(N_GOOD - 1):
        ct, _ = demo_ct(n_slices=7, size=96, spacing_mm=3.0, seed=seed)
        write_image(root / f"patient{seed}.nii.gz", ct)
    ct, _ = demo_ct(n_slices=7, size=96, spacing_mm=3.0, seed=11)
    write_dicom_series(ct, root / "patient5_dicom", attributes={"PatientSex": "F", "PatientSize": 1.6,
                                                                 "PatientWeight": 60.0})
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("a study folder with no image in it")
    return root


def table_rows(out: Path) -> list[dict]:
    """The cohort table's rows without the fields that differ between runs (seconds, memory)."""
    rows = json.loads((out / "cohort.json").read_text())["rows"]
    return [record_fields(row) for row in rows]


def no_partial_files(out: Path) -> list[str]:
    """Every hidden partial folder or temporary file left under ``out`` (must be none)."""
    return [str(p) for p in out.rglob(".*") if "partial-" in p.name or ".tmp-" in p.name]


@pytest.fixture(scope="module")
def local_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    report = run_batch("sarcopenia", find_cases(cohort), out, task_args=TASK_ARGS)
    return out, report


def test_cases_are_found_one_per_study(cohort):
    cases = find_cases(cohort)
    assert [c.name for c in cases] == ["broken", "no_images", "patient0", "patient1", "patient2", "patient3",
                                       "patient4", "patient5_dicom"]
    assert all(Path(c.path).is_absolute() for c in cases)
    assert Path(cases[2].path).name == "patient0.nii.gz" and Path(cases[-1].path).is_dir()


def test_a_cohort_runs_whole_and_reports_the_broken_cases_with_reasons(local_run):
    out, report = local_run
    assert report.counts == {"done": N_GOOD, "failed": 2}
    rows = {row["case"]: row for row in table_rows(out)}
    assert "could not be read" in rows["broken"]["reason"]
    assert "no_images" in rows["no_images"]["reason"] or "DICOM" in rows["no_images"]["reason"]
    for name in ("patient0", "patient5_dicom"):
        row = rows[name]
        assert row["status"] == "done" and row["reason"] == "" and row["level"] == "L3"
        assert row["level_slice_index"] == 3 and row["method"] == "rules"
        assert row["SMA_cm2"] > 1 and row["SAT_cm2"] > 1 and row["mskseg_version"]
        folder = out / row["folder"]
        assert {p.name for p in folder.iterdir()} >= {"segmentation.seg.nrrd", "metrics.csv", "metrics.json",
                                                      "report.png", CASE_FILE}
    assert (out / rows["patient5_dicom"]["folder"] / "segmentation.dcm").exists()  # DICOM in, DICOM-SEG out
    assert rows["patient5_dicom"]["sex"] == "F"  # patient values from the DICOM header
    failed = out / rows["broken"]["folder"]
    assert sorted(p.name for p in failed.iterdir()) == [CASE_FILE]  # nothing half-written beside the record
    csv_lines = (out / "cohort.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case,input,folder,status,reason,level") and len(csv_lines) == 9
    assert no_partial_files(out) == []


def test_a_dask_cluster_gives_the_same_cohort_table(cohort, local_run, tmp_path):
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install "
                                                             "'mskseg[cluster]')")
    out_local, _ = local_run
    out = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        report = run_batch("sarcopenia", find_cases(cohort), out, task_args=TASK_ARGS,
                           scheduler=cluster.scheduler_address)
    assert report.counts == {"done": N_GOOD, "failed": 2}
    assert table_rows(out) == table_rows(out_local)
    assert (out / "cohort.csv").read_text().splitlines()[0] == (out_local / "cohort.csv").read_text().splitlines()[0]


def test_an_unreachable_scheduler_is_a_clear_error(cohort, tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(MSKSegError, match="cannot reach the Dask scheduler"):
        run_batch("sarcopenia", find_cases(cohort)[:1], tmp_path / "o", task_args=TASK_ARGS,
                  scheduler="tcp://127.0.0.1:9")


def test_a_rerun_skips_finished_cases_and_retries_failed_ones(cohort, local_run, tmp_path):
    out_local, _ = local_run
    out = tmp_path / "rerun"
    run_batch("sarcopenia", find_cases(cohort), out, task_args=TASK_ARGS)
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob(f"*/{CASE_FILE}")}
    seen = []
    run_batch("sarcopenia", find_cases(cohort), out, task_args=TASK_ARGS,
              progress=lambda done, total, record: seen.append(record["case"]))
    assert sorted(seen) == ["broken", "no_images"]  # only the failed cases ran again
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob(f"*/{CASE_FILE}")}
    assert all(after[name] == stamps[name] for name in stamps if name not in ("broken", "no_images"))
    assert table_rows(out) == table_rows(out_local)


def test_sigterm_mid_batch_leaves_no_partial_file_and_the_rerun_finishes_only_the_rest(cohort, local_run, tmp_path):
    out_local, _ = local_run
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "mskseg", "batch", "sarcopenia", "--input", str(cohort), "--out", str(out),
               "--", *TASK_ARGS]
    for kill_after_done in (1, 4):  # two interruptions at different points of the cohort
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            done = [read_record(p) for p in (out / "cases").glob("[!.]*")] if (out / "cases").is_dir() else []
            if sum(1 for r in done if r) >= kill_after_done:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the batch ended before it could be interrupted: {process.stderr.read()}"
        time.sleep(0.3)  # well inside the next case
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) != 0
        assert no_partial_files(out) == []
        for folder in (out / "cases").iterdir():  # every case folder in place is complete
            assert read_record(folder) is not None, f"{folder} has no record"
        rows = json.loads((out / "cohort.json").read_text())["rows"]  # a valid table of what is finished
        assert len(rows) == 8 and {r["status"] for r in rows} <= {"done", "failed", "pending"}
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob(f"*/{CASE_FILE}")
                if read_record(p.parent)["status"] == "done"}
    assert finished, "no case finished before the interruptions"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr  # two cases fail on purpose
    assert f"{len(finished)} of 8 cases already done: skipped" in result.stdout
    for name, stamp in finished.items():
        assert (out / "cases" / name / CASE_FILE).stat().st_mtime_ns == stamp  # not redone
    assert table_rows(out) == table_rows(out_local)
    assert no_partial_files(out) == []


def test_a_manifest_carries_per_case_patient_values(cohort, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case,path,height_m,weight_kg,sex\n"
                        f"tall,{cohort / 'patient0.nii.gz'},1.95,90,M\n"
                        f"short,{cohort / 'patient0.nii.gz'},1.50,50,F\n")
    report = run_batch("sarcopenia", find_cases(manifest), tmp_path / "out", task_args=TASK_ARGS)
    rows = {r["case"]: r for r in report.records}
    assert rows["tall"]["height_m"] == 1.95 and rows["short"]["sex"] == "F"
    assert rows["tall"]["SMA_cm2"] == pytest.approx(rows["short"]["SMA_cm2"])
    assert rows["short"]["SMI_cm2_m2"] == pytest.approx(rows["tall"]["SMI_cm2_m2"] * (1.95 / 1.5) ** 2)


def test_bad_manifests_and_sources_are_refused_clearly(tmp_path):
    (tmp_path / "m.csv").write_text("file,height\nx.nii.gz,1.7\n")
    with pytest.raises(MSKSegError, match="no 'path' column"):
        find_cases(tmp_path / "m.csv")
    (tmp_path / "h.csv").write_text("path,height_m\nx.nii.gz,tall\n")
    with pytest.raises(MSKSegError, match="line 2: height_m 'tall' is not a number"):
        find_cases(tmp_path / "h.csv")
    with pytest.raises(MSKSegError, match="neither a folder of studies nor a manifest"):
        find_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MSKSegError, match="no study found"):
        find_cases(tmp_path / "empty")
    cases = [Case("a", "x"), Case("a", "y")]
    with pytest.raises(MSKSegError, match="same name"):
        run_batch("sarcopenia", cases, tmp_path / "o")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(MSKSegError, match="cannot create the output folder"):
        run_batch("sarcopenia", [Case("a", "x")], tmp_path / "a-file" / "out")


def test_case_names_cannot_leave_the_output_folder():
    names = case_names(["..", "../../etc", "a/b/ct.nii.gz", ".hidden", "Ünïcode scan.nrrd", "ct.nii.gz",
                        "CT.nii.gz", "", "x.seg.nrrd"])
    assert names == ["case", "etc", "ct", "hidden", "n_code_scan", "ct_2", "CT_3", "case_2", "x"]
    assert all(n and not n.startswith(".") and "/" not in n and "\\" not in n for n in names)


def test_the_cohort_table_is_written_whole(tmp_path):
    records = [{"case": "a", "status": "done", "SMA_cm2": 123.456789, "warnings": ["w1", "w2"]},
               {"case": "b", "status": "failed", "reason": "bad", "extra": {"x": 1}}]
    csv_path, json_path = write_cohort_table(tmp_path, records)
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:4] == ["case", "input", "folder", "status"]
    assert "123.457" in lines[1] and "w1; w2" in lines[1] and lines[0].endswith("extra.x")
    assert json.loads(json_path.read_text())["rows"][1]["extra.x"] == 1
    assert sorted(os.listdir(tmp_path)) == ["cohort.csv", "cohort.json"]


def test_the_command_line_runs_a_cohort_and_prints_progress(cohort, tmp_path):
    from mskseg.cli import main

    out = tmp_path / "cli"
    status = main(["batch", "sarcopenia", "--input", str(cohort), "--out", str(out), "--", *TASK_ARGS])
    assert status == 2  # two cases fail on purpose
    assert (out / "cohort.csv").exists() and len(list((out / "cases").iterdir())) == 8
    assert main(["batch", "sarcopenia", "--input", str(cohort), "--out", str(out), "--", "--slab", "0"]) == 2
    assert main(["batch", "sarcopenia", "--input", str(cohort), "--out", str(out), "--", "--no-such"]) == 2


def test_events_for_the_slicer_modules(cohort, tmp_path, capsys):
    from mskseg.cli import main

    out = tmp_path / "events"
    main(["batch", "sarcopenia", "--input", str(cohort), "--out", str(out), "--events", "--", *TASK_ARGS])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "start", "total": 8, "already_done": 0}
    cases = [e for e in events if e["event"] == "case"]
    assert [e["done"] for e in cases] == list(range(1, 9)) and cases[-1]["fraction"] == 1.0
    assert {e["case"] for e in cases if e["status"] == "failed"} == {"broken", "no_images"}
    assert events[-1]["event"] == "done" and events[-1]["counts"] == {"done": N_GOOD, "failed": 2}
    assert np.all([(out / e["folder"]).is_dir() for e in cases])


# ------------------------------------------------------------------------------ in Slicer (MRML on slicer-core)
class _Timer:
    """Stand-in for the ``QTimer`` that polls a background run; the test calls ``poll`` itself."""

    active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _cohort_run(cohort, out, **callbacks):
    from types import SimpleNamespace

    from MSKSegLib.background import CohortRun

    bar, label = SimpleNamespace(value=0), SimpleNamespace(text="")
    run = CohortRun("sarcopenia", cohort, out, TASK_ARGS, progress_bar=bar, status_label=label, timer=_Timer(),
                    python=sys.executable, **callbacks)
    return run, bar, label


def test_a_module_runs_a_cohort_in_the_background_case_by_case(cohort, local_run, tmp_path):
    out_local, _ = local_run
    cases, done, failed, bars = [], [], [], []
    run, bar, label = _cohort_run(cohort, tmp_path / "slicer", on_case=cases.append, on_done=done.append,
                                  on_failed=lambda *a: failed.append(a))
    run.start()
    deadline = time.monotonic() + 180
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        bars.append(bar.value)
        time.sleep(0.05)
    assert failed == [] and done == [tmp_path / "slicer"]
    assert [e["done"] for e in cases] == list(range(1, 9)) and max(bars) >= 85
    assert run.worker.counts == {"done": N_GOOD, "failed": 2}
    assert table_rows(tmp_path / "slicer") == table_rows(out_local)  # the same cohort as the command line


def test_a_cancelled_cohort_keeps_its_finished_cases_whole(cohort, tmp_path):
    out = tmp_path / "cancelled"
    cases, done = [], []
    run, _, label = _cohort_run(cohort, out, on_case=cases.append, on_done=done.append)
    run.start()
    deadline = time.monotonic() + 120
    while not cases and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.05)
    run.cancel()
    assert run.finished and done == [] and label.text == "Cancelled."
    assert no_partial_files(out) == []
    assert all(read_record(folder) is not None for folder in (out / "cases").iterdir())
    assert len(list((out / "cases").iterdir())) < 8


def test_a_study_folder_that_holds_the_output_is_refused(tmp_path):
    from MSKSegLib.cohort import check_cohort_places

    (tmp_path / "studies").mkdir()
    with pytest.raises(MSKSegError, match="inside the folder of studies"):
        check_cohort_places(tmp_path / "studies", tmp_path / "studies" / "results")
    with pytest.raises(MSKSegError, match="No output folder"):
        check_cohort_places(tmp_path / "studies", "")
    with pytest.raises(MSKSegError, match="does not exist"):
        check_cohort_places(tmp_path / "nothing", tmp_path / "out")
    assert check_cohort_places(tmp_path / "studies", tmp_path / "out") == (tmp_path / "studies", tmp_path / "out")


def test_any_case_loads_for_review_and_the_table_shows_each_case(local_run):
    slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
    from MSKSegLib.cohort import case_table_rows
    from mskseg import app, mrml

    out, _ = local_run
    rows = app.cohort_rows(out)
    shown = dict((case, (status, text)) for case, status, text in case_table_rows(rows))
    assert shown["patient0"][0] == "done" and shown["patient0"][1].startswith("L3, SMA ")
    assert shown["broken"][0] == "failed" and "could not be read" in shown["broken"][1]
    scene = slicer.vtkMRMLScene()
    volume, segmentation = app.load_cohort_case(scene, "sarcopenia", out, "patient5_dicom")
    assert mrml.node_name(volume) == "patient5_dicom" and mrml.segment_count(segmentation) >= 3
    labelmap = mrml.segmentation_node_to_labelmap(segmentation, volume)[0]
    saved = app_labels(out / "cases" / "patient5_dicom")
    assert np.array_equal(labelmap.array > 0, saved > 0)  # the result as written, on the case's CT
    with pytest.raises(MSKSegError, match="did not finish: .*could not be read"):
        app.load_cohort_case(scene, "sarcopenia", out, "broken")
    with pytest.raises(MSKSegError, match="no finished result"):
        app.load_cohort_case(scene, "sarcopenia", out, "nobody")


def app_labels(folder: Path) -> np.ndarray:
    from mskseg.io.segnrrd import read_seg_nrrd

    return np.asarray(read_seg_nrrd(folder / "segmentation.seg.nrrd")[0].array)
