"""Benchmark of ``mskseg sarcopenia`` on a 512 x 512 x 300 abdominal CT: time per step and peak memory.

The CT is a synthetic torso (:mod:`mskseg.synth.torso`) written to disk as a DICOM series (or NIfTI with
``--format nifti``) and read back; reading is timed on its own. Then, ``--repeats`` times: validate, find L3,
segment the tissues, measure, write the files (.seg.nrrd, DICOM-SEG, CSV, JSON, PNG report). Printed: the
median seconds of each step, the total after reading against the target (5 s), the process's peak resident
memory (``ru_maxrss``) against the target (4 GB), and the peak of Python/numpy allocations of one extra run
(``tracemalloc``; torch's own allocations are not in it).

    python scripts/benchmark_sarcopenia.py                       # DICOM, 3 repeats
    python scripts/benchmark_sarcopenia.py --format nifti --repeats 5 --device cpu
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

TARGET_SECONDS = 5.0
TARGET_GB = 4.0
STEPS = ("validate", "locate", "segment", "measure", "files")


def make_ct(shape: tuple[int, int, int], seed: int, slice_mm: float = 1.0):
    """A synthetic abdominal CT (Image, HU) of ``shape`` (K, J, I): the torso phantom, ``slice_mm`` slices
    centred on L3 (300 slices of 1 mm: about T11 to S1), 0.78 mm pixels for 512."""
    from mskseg.synth.torso import make_torso

    k, j, _ = shape
    half = (k - 1) * slice_mm / 2.0
    pixel = 0.78125 * 512 / j
    sample = make_torso(np.random.default_rng(seed), z_range=(-half, half), spacing_mm=(pixel, pixel, slice_mm),
                        variant="normal", size=j, habitus={"sex": "M", "height_m": 1.76, "weight_kg": 80.0,
                                                           "bmi": 80.0 / 1.76 ** 2, "age": 60.0})
    return _resize(sample.image, shape), sample.l3_index


def _resize(image, shape: tuple[int, int, int]):
    """``image`` resampled (linear) onto ``shape`` voxels over the same field of view."""
    import SimpleITK as sitk

    from mskseg.image import Image

    if image.array.shape == tuple(shape):
        return image
    size = [shape[2], shape[1], shape[0]]
    spacing = [image.spacing[a] * image.size[a] / size[a] for a in range(3)]
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetOrigin(image.origin)
    ref.SetDirection(tuple(image.direction.ravel()))
    out = sitk.Resample(image.to_sitk(), ref, sitk.Transform(), sitk.sitkLinear, -1000, sitk.sitkInt16)
    return Image.from_sitk(out, metadata=dict(image.metadata))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; return 0 when both targets are met, else 1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="300,512,512", help="K,J,I voxels (default 300,512,512)")
    parser.add_argument("--format", choices=["dicom", "nifti"], default="dicom")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", default="auto", choices=["auto", "network", "rules"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", choices=["auto", "true"], default="auto",
                        help="auto: find L3 (default); true: measure the phantom's true L3 slice (no detection)")
    parser.add_argument("--work", help="folder for the CT and outputs (default: a temporary folder)")
    args = parser.parse_args(argv)

    from mskseg.io import read_image
    from mskseg.sarcopenia.export import export_sarcopenia
    from mskseg.sarcopenia.pipeline import run_sarcopenia

    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="mskseg-bench-"))
    t0 = time.perf_counter()
    ct, true_l3 = make_ct(shape, args.seed)
    ct.metadata.update({"PatientSex": "M", "PatientSize": 1.76, "PatientWeight": 80.0})
    print(f"synthetic CT {ct.array.shape} (K, J, I), spacing {tuple(round(s, 3) for s in ct.spacing)} mm, "
          f"made in {time.perf_counter() - t0:.1f} s; true L3 slice {true_l3}")
    if args.format == "dicom":
        from mskseg.io.dicomwrite import write_dicom_series

        source = work / "ct-dicom"
        write_dicom_series(ct, source, overwrite=True)
    else:
        import SimpleITK as sitk

        source = work / "ct.nii.gz"
        sitk.WriteImage(ct.to_sitk(), str(source))
    del ct

    level_index = true_l3 if args.levels == "true" else None
    read_times, step_times = [], {s: [] for s in STEPS}
    totals = []
    for repeat in range(args.repeats):
        t0 = time.perf_counter()
        image = read_image(source)
        read_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = run_sarcopenia(image, method=args.method, device=args.device, level_index=level_index)
        t1 = time.perf_counter()
        export_sarcopenia(work / f"out{repeat}", image, result, overwrite=True)
        t2 = time.perf_counter()
        for step in STEPS[:-1]:
            step_times[step].append(result.timings.get(step, 0.0))
        step_times["files"].append(t2 - t1)
        totals.append(t2 - t0)
        print(f"run {repeat + 1}: read {read_times[-1]:.2f} s, after reading {totals[-1]:.2f} s "
              f"(level {result.l3.level} at slice {result.l3.index}, tissues {result.tissue_method})")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kB

    tracemalloc.start()
    result = run_sarcopenia(image, method=args.method, device=args.device, level_index=level_index)
    export_sarcopenia(work / "out-traced", image, result, overwrite=True)
    traced_gb = tracemalloc.get_traced_memory()[1] / 1e9
    tracemalloc.stop()

    print()
    print(f"{'step':<26s}{'median s':>10s}{'min s':>9s}{'max s':>9s}")
    print(f"{'read (' + args.format + ', not counted)':<26s}{statistics.median(read_times):>10.2f}"
          f"{min(read_times):>9.2f}{max(read_times):>9.2f}")
    for step in STEPS:
        values = step_times[step]
        print(f"{step:<26s}{statistics.median(values):>10.2f}{min(values):>9.2f}{max(values):>9.2f}")
    total = statistics.median(totals)
    print(f"{'total after reading':<26s}{total:>10.2f}{min(totals):>9.2f}{max(totals):>9.2f}"
          f"   target < {TARGET_SECONDS:g} s: {'met' if total < TARGET_SECONDS else 'NOT met'}")
    print(f"peak resident memory (ru_maxrss, whole process incl. reading): {rss_gb:.2f} GB"
          f"   target < {TARGET_GB:g} GB: {'met' if rss_gb < TARGET_GB else 'NOT met'}")
    print(f"peak Python/numpy allocations of one run (tracemalloc, after reading): {traced_gb:.2f} GB")
    print(f"image {image.array.shape}, {image.array.dtype}; cores: {_cores()}; work folder {work}")
    return 0 if total < TARGET_SECONDS and rss_gb < TARGET_GB else 1


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
