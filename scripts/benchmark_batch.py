"""Benchmark of ``mskseg batch``: cases per minute, peak memory per worker, scaling from 1 to N workers.

A cohort of synthetic abdominal CTs (the torso phantom of :mod:`mskseg.synth.torso`, each with its own seed;
by default 256 x 256 pixels of 1.56 mm, 100 slices of 3 mm: T11 to the sacrum, as a routine portal-venous CT
reconstructed at 3 mm) is written as NIfTI files, then the whole task (find L3, segment, measure, write every
file) runs on it through :func:`mskseg.batch.run_batch` once per worker count, into fresh output folders.

Printed per worker count: wall time, cases per minute, median seconds per case, the largest peak resident
memory of a worker process (``ru_maxrss`` of the process that ran the case), and the speed-up over one worker.
``--json FILE`` also writes the figures. GPU figures: run it on a machine with a GPU (``--device cuda``).

    python scripts/benchmark_batch.py                        # 8 cases, 1 and 2 workers
    python scripts/benchmark_batch.py --cases 16 --workers 1,2,4 --size 512 --slices 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_cohort(folder: Path, n: int, size: int, slices: int, slice_mm: float) -> float:
    """Write ``n`` synthetic CTs into ``folder``; returns seconds taken."""
    from benchmark_sarcopenia import make_ct

    from mskseg.io.writers import write_image

    t0 = time.perf_counter()
    for seed in range(n):
        ct, _ = make_ct((slices, size, size), seed=100 + seed, slice_mm=slice_mm)
        write_image(folder / f"ct{seed:03d}.nii.gz", ct)
    return time.perf_counter() - t0


def run(task: str, cohort: Path, out: Path, workers: int, task_args: list[str]) -> dict:
    """One batch run; its figures."""
    from mskseg.batch import find_cases, run_batch

    t0 = time.perf_counter()
    report = run_batch(task, find_cases(cohort), out, task_args=task_args, workers=workers)
    wall = time.perf_counter() - t0
    done = [r for r in report.records if r["status"] == "done"]
    return {"workers": workers, "cases": len(report.records), "done": len(done), "wall_s": round(wall, 2),
            "cases_per_min": round(60.0 * len(report.records) / wall, 2),
            "median_case_s": round(statistics.median(r["seconds"] for r in done), 2) if done else None,
            "peak_worker_mb": max((r["peak_memory_mb"] for r in done), default=None),
            "failures": [f"{r['case']}: {r['reason']}" for r in report.records if r["status"] != "done"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sarcopenia")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--size", type=int, default=256, help="pixels per row and column (default 256)")
    parser.add_argument("--slices", type=int, default=100, help="slices per CT (default 100)")
    parser.add_argument("--slice-mm", type=float, default=3.0, help="slice spacing (default 3 mm)")
    parser.add_argument("--device", default="cpu", help="inference device of the task (default cpu)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mskseg-batch-bench-"))
    cohort = work / "studies"
    cohort.mkdir()
    made = make_cohort(cohort, args.cases, args.size, args.slices, args.slice_mm)
    print(f"{args.cases} synthetic CTs ({args.slices} x {args.size} x {args.size}, {args.slice_mm:g} mm slices) "
          f"made in {made:.0f} s into {cohort}")
    task_args = ["--device", args.device]
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        results.append(run(args.task, cohort, work / f"out-{workers}", workers, task_args))
    base = results[0]["wall_s"]
    print(f"\n{'workers':>7} {'wall s':>8} {'cases/min':>10} {'median s/case':>14} {'peak MB/worker':>15} "
          f"{'speed-up':>9}")
    for r in results:
        print(f"{r['workers']:>7} {r['wall_s']:>8.1f} {r['cases_per_min']:>10.2f} {r['median_case_s']:>14.2f} "
              f"{r['peak_worker_mb']:>15.0f} {base / r['wall_s']:>8.2f}x")
        for failure in r["failures"]:
            print(f"        failed {failure}")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"
    print(f"\nmachine: {machine}; task {args.task}, device {args.device}; work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "task": args.task, "device": args.device,
                                               "cases": args.cases, "shape": [args.slices, args.size, args.size],
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
