"""Cohorts: one task over many studies, resumable, on this machine or on a Dask cluster.

Layout of ``--out``::

    OUT/cohort.csv, OUT/cohort.json      one row per case: status, reason, every headline metric, level, method,
                                         warnings, run time, peak memory, software and model versions
    OUT/cases/<case>/                    the task's own files (e.g. segmentation.seg.nrrd, metrics.csv, ...)
    OUT/cases/<case>/case.json           the case's record, written LAST: a case is finished when it is there

A case runs in a hidden folder ``OUT/cases/.<case>.partial-<pid>`` that is renamed to ``OUT/cases/<case>``
only when every file is written, so an interrupted or failed run never leaves a half-written case that looks
finished. A rerun skips the cases whose ``case.json`` says ``done``, retries the ``failed`` ones and removes
stale partial folders. One bad case never stops the cohort: its row says ``failed`` and why.

Where the cases run is the only thing that changes between ``--workers 1`` (this process), ``--workers N``
(a local process pool) and ``--scheduler ADDRESS`` (a Dask distributed cluster): :func:`run_case` is the same
pure function of its arguments everywhere, so the cohort tables are the same.
"""
from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import __version__
from .errors import MSKSegError
from .io.common import flat_rows

#: Image file endings a case may be (besides a DICOM folder); a ``.seg.nrrd`` is a result, never a study.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg")
_NAME_SUFFIXES = (".seg.nrrd",) + IMAGE_SUFFIXES
#: Endings of one-file volumes (a folder holding just one of these is that file; else a DICOM folder).
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Manifest columns that carry per-case patient values, and the run option each becomes.
MANIFEST_OPTIONS = {"height_m": float, "weight_kg": float, "sex": str}
CASE_FILE = "case.json"
CASES_DIR = "cases"
#: Columns that come first in the cohort table, in this order; metric columns follow, sorted.
LEADING_COLUMNS = ("case", "input", "folder", "status", "reason", "level", "level_slice_index", "level_confidence",
                   "level_method", "method", "warnings", "seconds", "peak_memory_mb", "mskseg_version", "models")


@dataclass(frozen=True)
class Case:
    """One study of a cohort: its name (output folder), image path, and per-case options (manifest values)."""

    name: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    series_uid: str | None = None


# ------------------------------------------------------------------------------------------------ finding cases
def case_names(paths: Sequence[str]) -> list[str]:
    """Unique, file-system safe case names from input paths or manifest names (``ct.nii.gz`` -> ``ct``).

    Only letters, digits, ``-`` and ``_`` are kept (anything else becomes ``_``), so a name can never be ``..``,
    hidden, or hold a path separator; a name left empty becomes ``case``; repeats get ``_2``, ``_3``, ...
    """
    names: list[str] = []
    taken: set[str] = set()
    for p in paths:
        n = Path(str(p).rstrip("/\\")).name
        for suffix in _NAME_SUFFIXES:
            if n.lower().endswith(suffix):
                n = n[: -len(suffix)]
                break
        n = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in n).strip("_") or "case"
        name, k = n, 1
        while name.lower() in taken:  # case-insensitive: two cases must not share a folder on macOS/Windows
            k += 1
            name = f"{n}_{k}"
        taken.add(name.lower())
        names.append(name)
    return names


def find_cases(source: str | Path) -> list[Case]:
    """The cases of a cohort: a folder holding one study per entry, or a manifest CSV.

    A folder: each sub-folder (a DICOM series, or a folder with one image file) and each image file directly in
    it is a case, in name order; hidden entries are skipped. A manifest: columns ``path`` (required; relative
    paths are relative to the manifest's folder), ``case`` (optional name), ``series_uid``, and the patient
    values ``height_m``, ``weight_kg``, ``sex`` (optional, per case).

    Raises:
        MSKSegError: the source does not exist, holds no case, or the manifest lacks a ``path`` column or has a
            bad value.
    """
    source = Path(source).absolute()  # workers elsewhere (a cluster) need paths that do not depend on a cwd
    if source.is_file() and source.suffix.lower() == ".csv":
        return _manifest_cases(source)
    if not source.is_dir():
        raise MSKSegError(f"--input {source} is neither a folder of studies nor a manifest .csv",
                          "give a folder with one sub-folder or image file per study, or a CSV with a 'path' column")
    entries = sorted(p for p in source.iterdir() if not p.name.startswith(".") and
                     (p.is_dir() or (p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_result(p))))
    if not entries:
        raise MSKSegError(f"no study found in {source}", "put one sub-folder (DICOM series) or image file per study in it")
    return [Case(name, str(_study_path(p))) for name, p in zip(case_names([str(p) for p in entries]), entries)]


def _study_path(entry: Path) -> Path:
    """A sub-folder holding exactly one image file (and no DICOM) is that file; otherwise the folder itself."""
    if entry.is_dir():
        files = [p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")]
        images = [p for p in files if p.name.lower().endswith(_VOLUME_SUFFIXES) and not _is_result(p)]
        if len(images) == 1 and len(files) == 1:
            return images[0]
    return entry


def _is_result(path: Path) -> bool:
    """A segmentation written beside a study (``.seg.nrrd``) is not a study."""
    return path.name.lower().endswith(".seg.nrrd")


def _manifest_cases(manifest: Path) -> list[Case]:
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise MSKSegError(f"manifest {manifest} has no 'path' column",
                          "write a CSV header such as: case,path,height_m,weight_kg,sex")
    paths = [str((manifest.parent / row["path"]).resolve()) if not os.path.isabs(row["path"]) else row["path"]
             for row in rows]
    names = case_names([row.get("case") or p for row, p in zip(rows, paths)])
    cases = []
    for n, (row, path, name) in enumerate(zip(rows, paths, names), start=2):
        options: dict[str, Any] = {}
        for column, kind in MANIFEST_OPTIONS.items():
            text = (row.get(column) or "").strip()
            if text:
                try:
                    options[column] = kind(text)
                except ValueError:
                    raise MSKSegError(f"manifest {manifest} line {n}: {column} '{text}' is not a number") from None
        cases.append(Case(name, path, options, (row.get("series_uid") or "").strip() or None))
    return cases


# ------------------------------------------------------------------------------------------------ one case
def run_case(task_name: str, case: Case, out_root: str | Path, options: dict[str, Any],
             task_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run task ``task_name`` on one case and write its folder; returns the case record (also in ``case.json``).

    A case already ``done`` is not run again (its record is returned). The files are written into a hidden
    partial folder, renamed into place when complete; a failure writes a folder holding only ``case.json`` with
    ``status: failed`` and the reason, and is retried by the next run. ``task_args`` are the task's own
    command-line options (parsed in the worker, so a cluster worker needs no pickled settings objects).
    """
    root = Path(out_root) / CASES_DIR
    final = root / case.name
    done = read_record(final)
    if done is not None and done.get("status") == "done":
        return done
    partial = root / f".{case.name}.partial-{os.getpid()}"
    t0 = time.perf_counter()
    record: dict[str, Any] = {"case": case.name, "input": case.path, "folder": f"{CASES_DIR}/{case.name}",
                              "series_uid": case.series_uid or "", "mskseg_version": __version__}
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            record.update(_run_task(task_name, case, partial, options, task_args))
            record["status"], record["reason"] = "done", ""
        except MSKSegError as error:
            _empty(partial)
            record["status"] = "failed"
            record["reason"] = error.message + (f" (hint: {error.hint})" if error.hint else "")
        except Exception as error:  # an internal error in one case must not stop the cohort
            import traceback

            _empty(partial)
            (partial / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            record["status"], record["reason"] = "failed", f"internal error: {type(error).__name__}: {error}"
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["peak_memory_mb"] = _peak_memory_mb()
        _write_json_atomic(partial / CASE_FILE, record)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    except BaseException:  # interrupted (SIGTERM, Ctrl-C) or the output place failed: nothing half-written
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return record


def _empty(folder: Path) -> None:
    """Remove what a failed case wrote: a failed case folder holds only its record (and error.txt)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _run_task(task_name: str, case: Case, folder: Path, options: dict[str, Any],
              task_args: Sequence[str]) -> dict[str, Any]:
    """Read the case, run the task, export into ``folder``; the task's summary row plus the models used."""
    from .io import read_image
    from .tasks import get_task
    from .worker import task_options

    task = get_task(task_name)
    run_options = {**task_options(task, task_args), **options}
    accepted = inspect.signature(task.run).parameters
    run_options.update({k: v for k, v in case.options.items() if k in accepted})  # manifest values win
    image = read_image(case.path, series_uid=case.series_uid)
    result = task.run(image, **run_options)
    task.export(folder, image, result, overwrite=True, extra={"input": case.path, "case": case.name})
    summary = dict(task.summarise(result)) if task.summarise is not None else {}
    summary["models"] = "; ".join(_model_versions(task.model_task))
    return summary


def _model_versions(model_task: str) -> list[str]:
    from .models import find_model_cards

    try:
        return [f"{c.name} {c.version}" for c in find_model_cards(task=model_task)] if model_task else []
    except Exception:  # a broken card folder must not fail a case that did not use it
        return []


def _peak_memory_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 1024.0 if sys.platform != "darwin" else peak / 2 ** 20, 1)


def read_record(case_folder: Path) -> dict[str, Any] | None:
    """The ``case.json`` record of a case folder, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(case_folder) / CASE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ the cohort
@dataclass
class BatchReport:
    """What a batch run did: the records in case order, and the cohort table files."""

    records: list[dict[str, Any]]
    table_csv: Path
    table_json: Path

    @property
    def counts(self) -> dict[str, int]:
        """Number of cases per status (``done``, ``failed``, ``pending``)."""
        out: dict[str, int] = {}
        for record in self.records:
            out[record["status"]] = out.get(record["status"], 0) + 1
        return out


def run_batch(task_name: str, cases: Sequence[Case], out_root: str | Path, *, options: dict[str, Any] | None = None,
              task_args: Sequence[str] = (), workers: int = 1, scheduler: str | None = None,
              progress: Callable[[int, int, dict[str, Any]], None] | None = None,
              started: Callable[[int], None] | None = None) -> BatchReport:
    """Run a task over ``cases`` into ``out_root``: locally (``workers`` processes) or on a Dask cluster.

    Finished cases are skipped, failed ones retried. After every case the cohort table is rewritten (atomically),
    so an interrupted run leaves a valid table of what is finished. ``started(already_done)`` is called once
    before the first case runs, ``progress(done, total, record)`` as each case ends.

    Raises:
        MSKSegError: two cases with one name, a bad worker count, or an unreachable scheduler.
    """
    out_root = Path(out_root)
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise MSKSegError("two cases have the same name", "give each case its own name in the manifest")
    if workers < 1:
        raise MSKSegError(f"--workers {workers}: at least one worker is needed")
    try:
        (out_root / CASES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MSKSegError(f"cannot create the output folder {out_root / CASES_DIR}: {error.strerror or error}",
                          "give --out a folder you can write to (not a file, not on a read-only disk)") from None
    remove_partial_folders(out_root)
    records = {c.name: read_record(out_root / CASES_DIR / c.name) or _pending(c) for c in cases}
    todo = [c for c in cases if records[c.name].get("status") != "done"]
    done_count = len(cases) - len(todo)
    write_cohort_table(out_root, [records[c.name] for c in cases])
    if started is not None:
        started(done_count)
    options = dict(options or {})
    for record in _execute(task_name, todo, out_root, options, task_args, workers, scheduler):
        records[record["case"]] = record
        done_count += 1
        write_cohort_table(out_root, [records[c.name] for c in cases])
        if progress is not None:
            progress(done_count, len(cases), record)
    csv_path, json_path = write_cohort_table(out_root, [records[c.name] for c in cases])
    return BatchReport([records[c.name] for c in cases], csv_path, json_path)


def _pending(case: Case) -> dict[str, Any]:
    return {"case": case.name, "input": case.path, "status": "pending", "reason": "not run yet"}


def _execute(task_name: str, cases: Sequence[Case], out_root: Path, options: dict[str, Any],
             task_args: Sequence[str], workers: int, scheduler: str | None) -> Iterable[dict[str, Any]]:
    """Records of ``cases`` in the order they finish, wherever they run."""
    args = (task_name, str(out_root), options, tuple(task_args))
    if scheduler:
        yield from _on_dask(scheduler, cases, args)
    elif workers == 1:
        for case in cases:
            yield run_case(task_name, case, out_root, options, task_args)
    else:
        yield from _in_process_pool(workers, cases, args)


def _call_run_case(case: Case, task_name: str, out_root: str, options: dict[str, Any],
                   task_args: Sequence[str]) -> dict[str, Any]:
    """:func:`run_case` with the case first (the shape ``map`` wants); threads limited to the worker's share."""
    _share_cpu()
    return run_case(task_name, case, out_root, options, task_args)


def _share_cpu() -> None:
    """One torch thread per worker process when several share the machine (else they oversubscribe it)."""
    threads = os.environ.get("MSKSEG_WORKER_THREADS")
    if threads:
        try:
            import torch

            torch.set_num_threads(int(threads))
        except Exception:  # torch absent or already started its pool: keep its default
            pass


def _in_process_pool(workers: int, cases: Sequence[Case], args: tuple) -> Iterable[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    os.environ.setdefault("MSKSEG_WORKER_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_call_run_case, case, *args) for case in cases]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            processes = list(getattr(pool, "_processes", {}).values())
            for process in processes:  # stop the running cases now
                process.terminate()
            for process in processes:
                process.join(timeout=10)
                _remove_partial_of(args[1], process.pid)
            raise


def _on_dask(address: str, cases: Sequence[Case], args: tuple) -> Iterable[dict[str, Any]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MSKSegError("--scheduler needs the Dask distributed package",
                          "pip install 'dask[distributed]' (or pip install 'mskseg[cluster]')") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise MSKSegError(f"cannot reach the Dask scheduler at {address}: {error}",
                          "start one (dask scheduler / dask-jobqueue / a Kubernetes cluster) and pass its address") from None
    try:
        futures = [client.submit(_call_run_case, case, *args, key=f"mskseg-{case.name}-{time.time_ns()}", pure=False)
                   for case in cases]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()


def _remove_partial_of(out_root: str | Path, pid: int | None) -> None:
    """Remove the partial case folders of worker process ``pid`` (stopped before it could clean up)."""
    for path in (Path(out_root) / CASES_DIR).glob(f".*.partial-{pid}"):
        shutil.rmtree(path, ignore_errors=True)


def remove_partial_folders(out_root: str | Path) -> list[Path]:
    """Remove the hidden partial case folders an interrupted run left; returns what was removed."""
    root = Path(out_root) / CASES_DIR
    stale = [p for p in root.glob(".*.partial-*") if p.is_dir()] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def write_cohort_table(out_root: str | Path, records: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``cohort.csv`` and ``cohort.json`` (a row per case, the leading columns first) atomically."""
    out_root = Path(out_root)
    rows = flat_rows(records)
    extra = sorted({key for row in rows for key in row} - set(LEADING_COLUMNS))
    columns = list(LEADING_COLUMNS) + extra
    csv_path, json_path = out_root / "cohort.csv", out_root / "cohort.json"
    tmp = csv_path.with_name(f".{csv_path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in columns})
        os.replace(tmp, csv_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_json_atomic(json_path, {"columns": columns, "rows": rows})
    return csv_path, json_path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_json_atomic(path: Path, payload: Any) -> None:
    from .io.common import to_jsonable

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(to_jsonable(payload), indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt in this process, so that a killed batch cleans up like Ctrl-C."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def record_fields(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the fields that differ between two runs of the same case (time, memory)."""
    return {k: v for k, v in record.items() if k not in ("seconds", "peak_memory_mb")}


__all__ = ["Case", "BatchReport", "case_names", "find_cases", "read_record", "record_fields",
           "remove_partial_folders", "run_batch", "run_case", "terminate_on_sigterm", "write_cohort_table"]
