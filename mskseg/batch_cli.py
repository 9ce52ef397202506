"""``mskseg batch``: one task over a cohort, on this machine or on a Dask cluster (:mod:`mskseg.batch`)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

DESCRIPTION = """\
Run a task on every study of a cohort and write one folder per case plus one cohort table.

--input is a folder holding one study per entry (a DICOM series folder, or an image file) or a manifest CSV
with a 'path' column and, optionally, 'case', 'series_uid', 'height_m', 'weight_kg' and 'sex' per case.
Results go to OUT/cases/<case>/ (the task's own files and case.json) and OUT/cohort.csv / cohort.json (a row
per case: status and reason, level, method, warnings, every headline metric, run time, peak memory, software
and model versions).

A rerun with the same --out skips finished cases and retries failed ones; an interrupted run (Ctrl-C, SIGTERM,
a crash) leaves no half-written case. One bad case never stops the cohort."""

EPILOG = """\
examples:
  mskseg batch sarcopenia --input studies/ --out cohort/                       every study, one process
  mskseg batch sarcopenia --input manifest.csv --out cohort/ --workers 2 -- --slab 3 --cutoffs "Derstine 2018"
  mskseg batch sarcopenia --input studies/ --out cohort/ --scheduler tcp://10.0.0.5:8786    on a Dask cluster
  mskseg batch bone --input studies/ --out bones/ -- --model my-bone-model.json

Options after '--' are the task's own (those of `mskseg sarcopenia`; `--model CARD --device DEVICE` for bone
and spine). Manifest values (height, weight, sex) win over them for their case.
With --workers N the cases run in N local processes (torch threads shared among them). With --scheduler the
same cases run on the workers of a Dask distributed cluster that can read --input and write --out (a shared
file system); see the README for Slurm, PBS and Kubernetes."""


def add_batch_parser(sub: Any) -> None:
    """The ``batch`` subcommand."""
    from .tasks import task_names

    s = sub.add_parser("batch", help="run a task over a cohort (folder or manifest), resumable, local or on Dask",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("task", choices=task_names(), help="the task to run on every case")
    s.add_argument("--input", required=True, metavar="FOLDER|CSV", help="folder of studies or manifest CSV")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (reused by a rerun to resume)")
    s.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes (default 1)")
    s.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786")
    s.add_argument("--events", action="store_true",
                   help="print one JSON line per event on standard output instead of text (for the Slicer modules)")
    s.set_defaults(task_cli=run_batch_cli)


def split_task_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``mskseg batch ... -- OPTIONS`` cut at the ``--``: the command's words, then the task's options (other
    commands keep their ``--``)."""
    if "--" in argv and "batch" in argv[:argv.index("--")]:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def run_batch_cli(args: argparse.Namespace) -> int:
    """Run ``mskseg batch``; exit status 0 when every case is done, 2 when some failed (see the table)."""
    from .batch import find_cases, run_batch, terminate_on_sigterm
    from .tasks import get_task
    from .worker import task_options

    terminate_on_sigterm()
    task_args = list(getattr(args, "task_options", None) or [])
    task_options(get_task(args.task), task_args)  # refuse a bad option before any case runs
    cases = find_cases(args.input)
    follow = _Events(len(cases)) if args.events else _Progress(len(cases))
    report = run_batch(args.task, cases, args.out, task_args=task_args, workers=args.workers,
                       scheduler=args.scheduler, progress=follow.update, started=follow.start)
    follow.close()
    counts = report.counts
    failed = counts.get("failed", 0)
    if args.events:
        follow.emit({"event": "done", "table": str(report.table_csv), "counts": counts})
    else:
        print(f"{counts.get('done', 0)} of {len(cases)} cases done, {failed} failed; table: {report.table_csv}")
        if failed:
            print("the failed cases say why in the 'reason' column; run the same command again to retry them",
                  file=sys.stderr)
    return 2 if failed else 0


class _Progress:
    """A progress bar with rate and ETA on a terminal; one line per case otherwise."""

    def __init__(self, total: int):
        self.total = total
        self.t0 = time.perf_counter()
        self.first = 0
        self.bar = None

    def start(self, already_done: int) -> None:
        from tqdm import tqdm

        self.first = already_done
        if already_done:
            print(f"{already_done} of {self.total} cases already done: skipped")
        self.bar = tqdm(total=self.total, initial=already_done, unit="case", file=sys.stderr,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def update(self, done: int, total: int, record: dict[str, Any]) -> None:
        ran = done - self.first
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / ran * (total - done) if ran else 0.0
        status = record.get("status")
        why = f": {record.get('reason')}" if status != "done" else f" in {record.get('seconds', 0):.1f} s"
        line = (f"[{done}/{total}] {record.get('case')}: {status}{why}  "
                f"({60.0 * ran / max(elapsed, 1e-9):.1f} cases/min, ETA {_clock(eta)})")
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Events(_Progress):
    """JSON lines on standard output: ``start`` (already done), ``case`` (each case as it ends), ``done``."""

    def start(self, already_done: int) -> None:
        self.first = already_done
        self.emit({"event": "start", "total": self.total, "already_done": already_done})

    def update(self, done: int, total: int, record: dict[str, Any]) -> None:
        self.emit({"event": "case", "done": done, "total": total, "fraction": round(done / max(total, 1), 4),
                   "case": record.get("case"), "status": record.get("status"), "reason": record.get("reason", ""),
                   "folder": record.get("folder", "")})

    @staticmethod
    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
