#!/usr/bin/env python3
"""Benchmark of the I/O path: read the real JPEG 2000 CT series, write .seg.nrrd and DICOM-SEG for a
512 x 512 x 300 label map. Targets (2-core CPU): each under 2 s.

usage: .venv/bin/python scripts/benchmark_io.py [--repeat N] [--json OUT.json]
The 300-slice synthetic DICOM series that DICOM-SEG references is written once beforehand (not timed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mskseg.image import Image  # noqa: E402
from mskseg.io import read_image  # noqa: E402
from mskseg.io.dicomwrite import write_dicom_series  # noqa: E402
from mskseg.io.segnrrd import write_seg_nrrd  # noqa: E402

SHARED_SERIES = ROOT.parent / "shared" / "data" / "ct-dicom-t12" / "dicom"
LABELS = {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat", 4: "intermuscular_fat"}


def _timed(fn, repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def _body_labelmap(shape=(300, 512, 512)) -> np.ndarray:
    """Nested ellipses like an abdomen: fat ring, muscle ring, visceral fat, small fat islands in muscle."""
    k, j, i = shape
    yy, xx = np.mgrid[0:j, 0:i]
    r = ((yy - j / 2) / (0.32 * j)) ** 2 + ((xx - i / 2) / (0.42 * i)) ** 2
    sl = np.zeros((j, i), np.uint8)
    sl[r <= 1.0] = 2
    sl[r <= 0.8] = 1
    sl[r <= 0.65] = 3
    sl[(r > 0.8 * 1.0) & (r <= 0.8) & ((xx + yy) % 17 == 0)] = 4
    return np.broadcast_to(sl, shape).copy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if SHARED_SERIES.exists():
            t = _timed(lambda i: read_image(SHARED_SERIES), args.repeat)
            results["read ct-dicom-t12 (20 x 512x512, JPEG 2000)"] = {"median_s": statistics.median(t), "runs_s": t}
        else:
            print(f"skipped the real-series read: {SHARED_SERIES} is absent")
        lab = _body_labelmap()
        ct = Image(np.where(lab > 0, 40, -1000).astype(np.int16), (0.78, 0.78, 1.0), (-200.0, -200.0, -150.0),
                   None, {"Modality": "CT"})
        write_dicom_series(ct, tmp / "ct300")
        t0 = time.perf_counter()
        src = read_image(tmp / "ct300")
        t_read300 = time.perf_counter() - t0
        results["read synthetic series (300 x 512x512, uncompressed)"] = {"median_s": t_read300, "runs_s": [t_read300]}
        labelmap = src.with_array(lab, keep_metadata=False)
        t = _timed(lambda i: write_seg_nrrd(tmp / f"s{i}.seg.nrrd", labelmap, LABELS, source=src), args.repeat)
        results["write .seg.nrrd (512x512x300, 4 segments)"] = {"median_s": statistics.median(t), "runs_s": t}
        from mskseg.io.dicomseg import write_dicom_seg

        t = _timed(lambda i: write_dicom_seg(tmp / f"s{i}.dcm", labelmap, LABELS, src), args.repeat)
        results["write DICOM-SEG (512x512x300, 4 segments, BINARY)"] = {"median_s": statistics.median(t), "runs_s": t}
    import os
    import platform

    env = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    print(f"MSKSeg I/O benchmark ({env['cpu_count']} CPUs, Python {env['python']}), median of {args.repeat}:")
    for name, r in results.items():
        print(f"  {name:55s} {r['median_s']:6.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
