"""``mskseg sarcopenia``: body composition at L3 from a CT, headless, with every output file.

Declared in the task registry by :mod:`mskseg.sarcopenia.task` (:func:`add_sarcopenia_arguments`, :func:`run_sarcopenia_cli`,
:func:`options_from_args`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidImageError, MSKSegError

#: Output folder of ``mskseg sarcopenia --demo`` when --out is not given.
DEMO_OUT = "sarcopenia-demo"
#: Patient values of the demo CT when its sample carries none (a man of average build).
DEMO_PATIENT = {"PatientSex": "M", "PatientSize": 1.76, "PatientWeight": 82.0, "PatientAge": "064Y"}

DESCRIPTION = """\
Body composition at the third lumbar vertebra (L3) of an abdominal CT: find the L3 slice, segment skeletal
muscle (SM), intermuscular (IMAT), subcutaneous (SAT) and visceral (VAT) adipose tissue there, and measure
areas (cm2), mean and SD of HU (muscle radiodensity SMD), the skeletal muscle index SMI = SMA / height^2
(cm2/m2), VAT/SAT ratio and total adipose tissue, with the low-muscle and low-radiodensity flags of a
published cut-off set.

Writes into --out: segmentation.seg.nrrd (open in 3D Slicer with the CT), segmentation.dcm (DICOM-SEG, when
the CT is a DICOM series), metrics.csv, metrics.json (rows, units, level, confidence, windows, warnings) and
report.png (the L3 slice with the tissues, a sagittal view with the vertebra levels, the measurements)."""


def epilog() -> str:
    """The epilog of `mskseg sarcopenia --help`: examples, the cut-off sets, the tissue windows."""
    try:
        from .cutoffs import CUTOFF_SETS

        sets = "\n".join(f"  {s.describe()}" for s in CUTOFF_SETS.values())
    except ImportError:  # pragma: no cover - a partial installation
        sets = "  Prado 2008, Martin 2013, Derstine 2018, Yoon 2021, Kamo 2019"
    from .settings import windows_help_text

    return f"""\
examples:
  mskseg sarcopenia --demo                     the whole path on a synthetic CT made on the spot
                                               (written as DICOM first), results in ./{DEMO_OUT}
  mskseg sarcopenia ct-folder/ --height 1.72 --weight 68 --sex F --out results/
  mskseg sarcopenia ct.nii.gz --cutoffs "Derstine 2018" --slab 3 --out results/
  mskseg sarcopenia ct-folder/ --levels 57 --out results/      measure slice 57 (the user's L3 slice)
  mskseg sarcopenia ct-folder/ --levels all --out results/     every level from T12 to L5 in view, a row each
  mskseg sarcopenia ct-folder/ --levels T12,L1,L4 --out results/
  mskseg sarcopenia chest-ct/ --allow-fallback --out results/  L3 outside the field of view: use the
                                               next level of Derstine 2018's order L2, L4, L5, L1, T12, T11, T10

cut-off sets (--cutoffs; flags need sex and height, Martin 2013 also weight):
{sets}

tissue windows (HU; Slice-O-Matic / Comp2Comp convention, reported in every output):
{windows_help_text()}

Height, weight and sex default to the DICOM header (PatientSize in metres, PatientWeight, PatientSex).
Height is in metres (1.72, not 172). The slice index of --levels is k of `mskseg info` (0-based, along the
volume's slice axis). Nothing is overwritten unless --overwrite is given; nothing is downloaded.
"""


def add_sarcopenia_arguments(s: argparse.ArgumentParser) -> None:
    """Add the options of ``mskseg sarcopenia`` to its (sub)parser ``s``."""
    s.add_argument("ct", nargs="?", help="CT: DICOM series folder, DICOM file, NIfTI, NRRD or MHA")
    s.add_argument("--demo", action="store_true",
                   help=f"run on a synthetic abdominal CT made on the spot (default --out {DEMO_OUT})")
    s.add_argument("--out", metavar="DIR", help="output folder (required unless --demo)")
    s.add_argument("--overwrite", action="store_true", help="replace files of an earlier run in --out")
    s.add_argument("--series", metavar="UID", help="SeriesInstanceUID when the folder holds several series")
    patient = s.add_argument_group("patient (default: the DICOM header)")
    patient.add_argument("--height", type=float, metavar="M", help="height in metres, for SMI (e.g. 1.72)")
    patient.add_argument("--weight", type=float, metavar="KG", help="weight in kg, for BMI (Martin 2013)")
    patient.add_argument("--sex", choices=["M", "F"], help="sex, for the cut-offs")
    options = s.add_argument_group("measurement")
    options.add_argument("--cutoffs", default="Martin 2013", metavar="NAME",
                         help="cut-off set for the flags (default: Martin 2013; listed below)")
    options.add_argument("--levels", default="auto", metavar="auto|NAMES|all|INDEX",
                         help="auto: find L3 (default); level names: L3, or T12,L1,L4 (one set of rows per level); "
                              "all: every level from T12 to L5 in view; a slice index k: measure that slice "
                              "(method 'user')")
    options.add_argument("--slab", type=int, default=1, metavar="N",
                         help="slices centred on the level to measure; the mean row averages them (default 1)")
    options.add_argument("--method", choices=["auto", "network", "rules"], default="auto",
                         help="tissue segmentation: the installed network, the HU rules, or auto (the method that "
                              "measured better on the real-data harness: currently the network; the other runs as cross-check)")
    options.add_argument("--muscle-groups", action="store_true",
                         help="also measure psoas, paraspinal and abdominal wall muscles")
    options.add_argument("--allow-fallback", action="store_true",
                         help="when L3 is outside the field of view, measure the next level present")
    options.add_argument("--vat-window", metavar="LO,HI",
                         help="VAT window in HU, e.g. --vat-window -190,-30 (or --vat-window=-190,-30; "
                              "default -150,-50)")
    options.add_argument("--model", metavar="CARD",
                         help="tissue model card (file or name) to use instead of the installed one (--method network/auto)")
    options.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def run_sarcopenia_cli(args: argparse.Namespace) -> int:
    """Run ``mskseg sarcopenia`` for parsed ``args``; returns the exit status (errors raise MSKSegError)."""
    from ..io.output import check_output, final_paths, output_transaction
    from .export import OUTPUT_FILES, export_sarcopenia

    if args.demo and args.ct:
        raise MSKSegError("give either a CT or --demo, not both")
    if not args.demo and not args.ct:
        raise MSKSegError("no CT given", "mskseg sarcopenia CT --out DIR (or --demo to try it on a synthetic CT)")
    if not args.demo and not args.out:
        raise MSKSegError("no output folder given", "add --out DIR")
    out = Path(args.out or DEMO_OUT)
    options = options_from_args(args)  # a typo in --cutoffs or --levels fails before the CT is read
    names = list(OUTPUT_FILES.values()) + (["ct-dicom"] if args.demo else [])
    check_output(out, names, overwrite=args.overwrite, inputs=[] if args.demo else [args.ct])

    progress = _progress_bar()
    try:
        if args.demo:  # the demo CT and the results: one transaction, the folder ends with all or none
            with output_transaction(out, names, overwrite=args.overwrite) as staging:
                t0 = time.perf_counter()
                source = _write_demo_ct(staging / "ct-dicom", True)
                print(f"synthetic CT made and written as DICOM in {time.perf_counter() - t0:.1f} s: "
                      f"{out / 'ct-dicom'}")
                result, image, t_read = _run(source, args, options, progress)
                t1 = time.perf_counter()
                written = export_sarcopenia(staging, image, result, overwrite=True,
                                            extra={"input": str(out / "ct-dicom")})
            written = final_paths(written, staging, out)
        else:
            result, image, t_read = _run(Path(args.ct), args, options, progress)
            t1 = time.perf_counter()
            written = export_sarcopenia(out, image, result, overwrite=args.overwrite, extra={"input": str(args.ct)})
    finally:
        progress.close()
    t_write = time.perf_counter() - t1
    _print_result(result, written, t_read, t_write)
    return 0


def _run(source: Path, args: argparse.Namespace, options: dict[str, Any], progress) -> tuple[Any, Any, float]:
    """Read the CT and run the pipeline: ``(result, image, seconds to read)``."""
    from ..io import read_image
    from .pipeline import run_sarcopenia

    t0 = time.perf_counter()
    image = read_image(source, series_uid=args.series)
    t_read = time.perf_counter() - t0
    result = run_sarcopenia(image, **options, progress=progress)
    return result, image, t_read


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of :func:`mskseg.sarcopenia.pipeline.run_sarcopenia` for parsed ``args`` (the same
    for the command line, the batch runner and the background worker).

    Raises:
        MSKSegError: an unknown cut-off set, a ``--levels`` that is neither ``auto`` nor an index, a bad
            ``--vat-window``.
    """
    from .cutoffs import get_cutoff_set

    return {"height_m": args.height, "weight_kg": args.weight, "sex": args.sex,
            "cutoff_set": get_cutoff_set(args.cutoffs).name, **_levels(args.levels),
            "slab": args.slab, "method": args.method, "muscle_groups": args.muscle_groups,
            "allow_fallback": args.allow_fallback, "settings": _settings(args.vat_window), "device": args.device,
            "model": getattr(args, "model", None)}


def _print_result(result: Any, written: list[Path], t_read: float, t_write: float) -> None:
    l3 = result.l3
    row = result.headline_row()
    how = "chosen by the user" if l3.method == "user" else f"{l3.method}, confidence {l3.confidence:.2f}"
    print(f"level      {l3.level} at slice {l3.index} (z = {l3.position_mm:.1f} mm; {how})")
    if getattr(l3, "levels", None):
        print("levels     " + ", ".join(f"{n} {k}" for n, k in sorted(l3.levels.items(), key=lambda t: -t[1])))
    print(f"tissues    {result.tissue_method} on {len(result.slices)} slice(s) {result.slices}")
    if hasattr(result.patient, "describe"):
        print(f"patient    {result.patient.describe()}")

    def fmt(key: str, unit: str, digits: int = 1) -> str:
        value = row.get(key)
        return f"{value:.{digits}f} {unit}" if isinstance(value, (int, float)) else "-"

    if len(result.level_slices) > 1:
        for name, level_row in result.level_rows().items():
            print(f"at {name:7s} SMA {_cell(level_row, 'SMA_cm2')}  SMI {_cell(level_row, 'SMI_cm2_m2')}  "
                  f"SAT {_cell(level_row, 'SAT_cm2')}  VAT {_cell(level_row, 'VAT_cm2')}  IMAT {_cell(level_row, 'IMAT_cm2')}"
                  f"  (slice {level_row.get('slice_index') if level_row.get('row') != 'mean' else result.level_slices[name]})")
        print(f"headline   {result.headline_level}:")
    print(f"SMA        {fmt('SMA_cm2', 'cm2')}   SMD {fmt('SMD_HU', 'HU')}   SMI {fmt('SMI_cm2_m2', 'cm2/m2')}"
          + (f" ({row.get('SMI_reason')})" if row.get("SMI_cm2_m2") is None and row.get("SMI_reason") else ""))
    print(f"fat        SAT {fmt('SAT_cm2', 'cm2')}   VAT {fmt('VAT_cm2', 'cm2')}   IMAT {fmt('IMAT_cm2', 'cm2')}"
          f"   VAT/SAT {fmt('VAT_SAT_ratio', '', 2).strip()}")
    for flag, what in (("sarcopenia", "low SMI"), ("low_radiodensity", "low SMD")):
        value = row.get(flag)
        text = "yes" if value is True else "no" if value is False else f"undecided ({row.get(flag + '_reason')})"
        print(f"{what:10s} {text}  [{result.cutoff_set}]")
    for warning in (result.all_warnings() if hasattr(result, "all_warnings") else result.warnings):
        print(f"warning    {warning}")
    for path in written:
        print(f"wrote {path}")
    steps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
    print(f"time       read {t_read:.2f} s, {steps}, files {t_write:.2f} s")


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _settings(vat_window: str | None):
    from .settings import BodyCompSettings

    if not vat_window:
        return BodyCompSettings()
    try:
        low, high = (float(v) for v in vat_window.split(","))
    except ValueError:
        raise InvalidImageError(f"--vat-window '{vat_window}' is not LO,HI", "e.g. --vat-window=-190,-30") from None
    return BodyCompSettings(vat_hu=(low, high))


def _levels(levels: str) -> dict[str, Any]:
    """``--levels`` as options of run_sarcopenia: ``auto`` (L3 found), names or ``all`` (``levels``), or a slice
    index (``level_index``)."""
    from .pipeline import parse_level_names

    text = str(levels).strip()
    if text.lower() in ("", "auto"):
        return {"level_index": None}
    try:
        return {"level_index": int(text)}
    except ValueError:
        pass
    try:
        return {"level_index": None, "levels": parse_level_names(text)}
    except MSKSegError:
        raise MSKSegError(f"--levels '{levels}' is neither 'auto', level names, 'all' nor a slice index",
                          "e.g. --levels auto, --levels L3, --levels T12,L1,L4, --levels all, or --levels 57 to "
                          "measure slice 57") from None


def _write_demo_ct(folder: Path, overwrite: bool) -> Path:
    """Make the synthetic demo CT and write it as a DICOM series (:func:`mskseg.demo.write_demo_dicom`)."""
    from ..demo import write_demo_dicom

    return write_demo_dicom(folder, overwrite=overwrite, seed=0, patient=DEMO_PATIENT)


class _NoBar:
    def __call__(self, fraction: float, message: str = "") -> bool:
        return True

    def close(self) -> None:
        pass


def _progress_bar():
    """A tqdm progress callback on a terminal, a silent one otherwise."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    bar = tqdm(total=100, desc="sarcopenia", unit="%", file=sys.stderr)

    class _Bar:
        def __call__(self, fraction: float, message: str = "") -> bool:
            bar.n = int(round(100 * fraction))
            bar.set_postfix_str(message[:30])
            bar.refresh()
            return True

        def close(self) -> None:
            bar.close()

    return _Bar()
