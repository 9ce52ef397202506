"""``mskseg bone``: bone segmentation and opportunistic bone density of a CT, headless, with every output file.

Declared in the task registry by :mod:`mskseg.bone.task`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import MSKSegError

DESCRIPTION = """\
Bone segmentation of a CT: all bone with its marrow (HU threshold, marrow filled, table and contrast-filled
vessels left out), named by position where rules can tell: vertebrae per level (from the shared vertebral
level finder), sacrum, hip bones, femora and ribs left/right, 'other bone' for the rest. Measures the volume,
mean and SD of HU of each class and the trabecular HU of L1-L4 (elliptical ROI in the vertebral body), with
the contrast phase, its correction and the opportunistic screening flag at L1 (Pickhardt et al. 2013: <= 160
HU ~90 % sensitive, <= 110 HU > 90 % specific for osteoporosis; a screening flag, not a diagnosis).

Writes into --out: segmentation.seg.nrrd, segmentation.dcm (DICOM-SEG, when the CT is a DICOM series),
metrics.csv, metrics.json and report.png."""

EPILOG = """\
examples:
  mskseg bone ct-folder/ --out results/
  mskseg bone ct.nii.gz --classes vertebrae,ribs --out results/
  mskseg bone ct.nii.gz --classes bone --out results/          one class: all bone
  mskseg bone ct.nii.gz --levels L1=57,L2=40 --out results/    level centres given (slice k of `mskseg info`)

--classes: all (default), bone, or any of vertebrae, sacrum, hip, femur, ribs, other.
--method: rules (today's only method without a model), network (a bone model card, --model), auto (the
network when --model is given, else the rules). Nothing is overwritten unless --overwrite is given.
"""


def add_bone_arguments(s: argparse.ArgumentParser) -> None:
    """Add the options of ``mskseg bone`` to its (sub)parser ``s``."""
    s.add_argument("ct", nargs="?", help="CT: DICOM series folder, DICOM file, NIfTI, NRRD or MHA")
    s.add_argument("--out", metavar="DIR", help="output folder (required)")
    s.add_argument("--overwrite", action="store_true", help="replace files of an earlier run in --out")
    s.add_argument("--series", metavar="UID", help="SeriesInstanceUID when the folder holds several series")
    s.add_argument("--method", choices=["auto", "rules", "network"], default="auto",
                   help="rules, network (needs --model) or auto (default: network with --model, else rules)")
    s.add_argument("--classes", default="all", metavar="all|bone|LIST",
                   help="classes to write: all (default), bone (one class) or e.g. vertebrae,ribs")
    s.add_argument("--levels", default="auto", metavar="auto|NAME=K,...",
                   help="auto: find the vertebral levels (default); or centres given, e.g. L1=57,L2=40")
    s.add_argument("--model", metavar="CARD", help="bone model card (file or name) for --method network/auto")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword options of :func:`mskseg.bone.pipeline.run_bone` for parsed ``args`` (CLI, worker, batch).

    Raises:
        MSKSegError: bad --classes or --levels.
    """
    from .rules import parse_classes

    parse_classes(args.classes)
    return {"method": args.method, "classes": args.classes, "levels": _levels(args.levels),
            "model_card": getattr(args, "model", None) or None, "device": args.device}


def _levels(text: str) -> dict[str, int] | None:
    text = str(text or "").strip()
    if text.lower() in ("", "auto"):
        return None
    levels: dict[str, int] = {}
    for part in text.split(","):
        name, _, index = part.partition("=")
        try:
            levels[name.strip()] = int(index)
        except ValueError:
            raise MSKSegError(f"--levels '{text}' is not auto or NAME=K pairs",
                              "e.g. --levels L1=57,L2=40 (slice k along the axial axis)") from None
    return levels


def run_bone_cli(args: argparse.Namespace) -> int:
    """Run ``mskseg bone`` for parsed ``args``; returns the exit status (errors raise MSKSegError)."""
    from ..io import read_image
    from ..io.output import check_output
    from .export import OUTPUT_FILES, export_bone
    from .pipeline import run_bone

    if not args.ct:
        raise MSKSegError("no CT given", "mskseg bone CT --out DIR")
    if not args.out:
        raise MSKSegError("no output folder given", "add --out DIR")
    options = options_from_args(args)
    check_output(Path(args.out), list(OUTPUT_FILES.values()), overwrite=args.overwrite, inputs=[args.ct])
    t0 = time.perf_counter()
    image = read_image(Path(args.ct), series_uid=args.series)
    t_read = time.perf_counter() - t0
    result = run_bone(image, **options)
    t1 = time.perf_counter()
    written = export_bone(args.out, image, result, overwrite=args.overwrite, extra={"input": str(args.ct)})
    t_write = time.perf_counter() - t1
    summary = result.summary
    print(f"method     {result.method}; levels {result.level_method}: "
          + (", ".join(f"{n} {k}" for n, k in result.levels.items()) or "none"))
    print(f"classes    {len(result.labels)}; all bone {summary['bone_volume_cm3']:.1f} cm3")
    for row in result.rows:
        if row.get("row") == "level":
            print(f"{row['level']:10s} trabecular {row['trabecular_HU']:.0f} HU (SD {row['trabecular_SD_HU']:.0f}; "
                  f"corrected {row['trabecular_HU_corrected']:.0f})")
    density = result.density
    print(f"phase      {density['phase']['note']}")
    print(f"flag       {density['flag']['flag']}: {density['flag']['rule']} ({density['flag']['note']})")
    for warning in result.warnings:
        print(f"warning    {warning}")
    for path in written:
        print(f"wrote {path}")
    steps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
    print(f"time       read {t_read:.2f} s, {steps}, files {t_write:.2f} s")
    return 0
