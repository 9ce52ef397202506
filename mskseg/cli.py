"""The ``mskseg`` command: the MSKSeg core without Slicer, for one scan or a whole cohort.

Every subcommand prints what it did; bad input gives one clear error line (and a hint) on stderr and exit
status 2, never a traceback. ``--debug`` shows the traceback of unexpected internal errors.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import MSKSegError

EPILOG = """\
examples:
  mskseg sarcopenia --demo                   body composition at L3 of a synthetic CT made on the spot: L3 slice,
                                             muscle and fat, SMI, cut-off flags, .seg.nrrd, DICOM-SEG, CSV, report
  mskseg sarcopenia ct-folder/ --height 1.72 --weight 68 --sex F --out results/
                                             the same on your CT (`mskseg sarcopenia --help` for every option)
  mskseg demo --out demo-out                 make a synthetic abdominal CT (DICOM), export it in every format
  mskseg info path/to/dicom-folder           geometry, modality, patient attributes, series found
  mskseg export ct.nii.gz labels.nii.gz --labels 1=skeletal_muscle,2=subcutaneous_fat --out results/
                                             label map -> .seg.nrrd, DICOM-SEG (DICOM input), NIfTI, CSV, PNG
  mskseg segment scan1/ scan2.nii.gz --model sarcopenia-l3-tissue-2d --out results/
                                             run a model card (a name `mskseg models` lists, or a .card.json
                                             path) on one scan or several (one sub-folder each)
  mskseg models                              list installed model cards
  mskseg device                              which device inference will use, and why
  mskseg synth preview --out gallery.png     a gallery of synthetic L3 training slices

Images: a DICOM series folder (uncompressed or JPEG 2000; several series: --series UID), a DICOM file,
NIfTI, NRRD, MHA, or a radiograph (DICOM DX/CR, PNG, JPEG). Nothing is downloaded; nothing is overwritten
unless --overwrite is given. Documentation: README.md of the MSKSeg extension.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mskseg`` command (all subcommands)."""
    p = argparse.ArgumentParser(
        prog="mskseg",
        description="MSKSeg: AI segmentation of musculoskeletal CT and radiographs (body composition at L3, "
                    "bones, lumbar spine), headless. The same core runs inside 3D Slicer.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mskseg {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="describe an image: geometry, modality, patient attributes, series found",
                       description="Read an image or DICOM folder and print its geometry (size, spacing, origin, "
                                   "direction in LPS), modality, the patient attributes MSKSeg uses (sex, age, "
                                   "height, weight, contrast) and, for folders, every DICOM series found.")
    s.add_argument("image", help="image file or DICOM folder")
    s.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when the folder holds several")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")

    s = sub.add_parser("demo", help="run the whole input/output path on a synthetic CT made on the spot",
                       description="Make a synthetic abdominal CT, write it as a DICOM series, read it back, and "
                                   "export its true label map as .seg.nrrd, DICOM-SEG, NIfTI, CSV, JSON and a "
                                   "PNG report. Needs no data and no network.")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace files from an earlier run")

    s = sub.add_parser("export", help="export a label map on its image: .seg.nrrd, DICOM-SEG, NIfTI, CSV, PNG",
                       description="Write a label map (NIfTI/NRRD/.seg.nrrd/MHA) that lies on an image's grid in "
                                   "the formats asked for. DICOM-SEG needs the image as a DICOM series folder.")
    s.add_argument("image", help="the image the label map belongs to (file or DICOM folder)")
    s.add_argument("labelmap", help="label map file on the same grid (a .seg.nrrd brings its own names)")
    _add_output_args(s)
    s.add_argument("--labels", metavar="V=NAME,...",
                   help="names of the label values, e.g. 1=skeletal_muscle,2=subcutaneous_fat (class names of "
                        "`mskseg terminology`; other names are allowed). Default: the .seg.nrrd names, or those of a "
                        "<name>.labels.json beside the label map (as MSKSeg writes beside NIfTI), else label_V")
    s.add_argument("--series", metavar="UID", help="SeriesInstanceUID when the image folder holds several series")

    s = sub.add_parser("segment", help="run a model card on one scan or a cohort",
                       description="Segment each image with the network a model card describes and write the "
                                   "results of each into OUT/<case name>/. Weights are checked against the card's "
                                   "sha256 before use. Runs on CUDA, then MPS, then CPU unless --device says.")
    s.add_argument("images", nargs="+", help="image files or DICOM folders (a cohort: list them all)")
    s.add_argument("--model", required=True, metavar="CARD",
                   help="model card: a name that `mskseg models` lists, a .card.json file or a folder holding one")
    _add_output_args(s)
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    s.add_argument("--series", metavar="UID", help="SeriesInstanceUID when a folder holds several series")

    s = sub.add_parser("models", help="list installed model cards",
                       description="List model cards found in $MSKSEG_MODELS_DIR and Resources/Models/.")
    s.add_argument("--dir", action="append", metavar="DIR", help="also search this folder (repeatable)")

    s = sub.add_parser("device", help="report the inference device and why it was chosen")
    s.add_argument("--device", default="auto", help="preference: auto, cpu, cuda, cuda:N, mps")

    from .synth.cli import add_synth_parser

    add_synth_parser(sub)
    _add_task_parsers(sub)
    from .batch_cli import add_batch_parser

    add_batch_parser(sub)
    _add_optional_parsers(sub)

    s = sub.add_parser("terminology", help="list class names and codes, or write Slicer's .term.json")
    s.add_argument("--write", metavar="PATH", help="write the Slicer terminology file to PATH")
    s.add_argument("--overwrite", action="store_true")
    return p


def _add_task_parsers(sub) -> None:
    """One subcommand per registered task that has one (:data:`mskseg.tasks.TASKS`)."""
    from .tasks import TASKS, get_task

    for entry in TASKS:
        task = get_task(entry.name)
        if task.add_arguments is None or task.cli is None:
            continue
        s = sub.add_parser(task.name, help=task.summary, description=task.description or task.summary,
                           epilog=task.epilog or None, formatter_class=argparse.RawDescriptionHelpFormatter)
        task.add_arguments(s)
        s.set_defaults(task_cli=task.cli)


def _add_optional_parsers(sub) -> None:
    """Subcommands whose modules may be absent from a trimmed installation (training, evaluation)."""
    try:
        from .train.cli import add_evaluate_parser, add_train_parser
    except ImportError:
        return
    add_train_parser(sub)
    add_evaluate_parser(sub)


def _add_output_args(s: argparse.ArgumentParser) -> None:
    from .io.export import FORMATS

    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--formats", default=",".join(FORMATS), metavar="LIST",
                   help=f"comma-separated subset of {','.join(FORMATS)} (default: all; DICOM-SEG only for DICOM input)")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")


#: Options whose value is a range ``LO,HI`` that may start with a minus sign (argparse would take ``-190,-30``
#: for an option of its own).
RANGE_OPTIONS = ("--vat-window", "--window")


def join_negative_ranges(words: list[str]) -> list[str]:
    """``--vat-window -190,-30`` -> ``--vat-window=-190,-30`` (and the same for every :data:`RANGE_OPTIONS`), so
    that both spellings work."""
    import re

    out: list[str] = []
    i = 0
    while i < len(words):
        if (words[i] in RANGE_OPTIONS and i + 1 < len(words)
                and re.fullmatch(r"-[0-9.]+\s*,\s*-?[0-9.]+", words[i + 1])):
            out.append(f"{words[i]}={words[i + 1]}")
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mskseg`` command; returns the exit status."""
    from .batch_cli import split_task_options

    if argv is None:  # the program itself (not a call from Python): SIGTERM cleans up like Ctrl-C
        from .batch import terminate_on_sigterm

        terminate_on_sigterm()
    parser = build_parser()
    words, task_options = split_task_options(join_negative_ranges(list(sys.argv[1:] if argv is None else argv)))
    args = parser.parse_args(words)
    args.task_options = task_options
    if not args.command:
        parser.print_help()
        return 0
    try:
        command = getattr(args, "task_cli", None) or _commands()[args.command]
        with warnings.catch_warnings():
            _show_own_warnings_plainly(args.command)
            return command(args)
    except MSKSegError as e:
        from .io.readers import clean_text

        # paths and header values in a message may carry terminal escape codes: printed without them
        message = "\n".join(clean_text(line) if line.strip() else "" for line in str(e.message).split("\n"))
        print(f"mskseg {args.command}: error: {message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {clean_text(e.hint)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mskseg: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: say so plainly, keep the traceback for --debug
        if args.debug:
            raise
        print(f"mskseg {args.command}: internal error: {type(e).__name__}: {e}\n"
              "  hint: run again with --debug for the traceback, and report it with the command you ran",
              file=sys.stderr)
        return 1


def _show_own_warnings_plainly(command: str) -> None:
    """Print MSKSeg's own warnings (categories defined in ``mskseg``) as ``mskseg COMMAND: warning: ...`` lines
    on stderr, without Python's file and line; other warnings keep Python's format. Call inside
    ``warnings.catch_warnings()``."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if getattr(category, "__module__", "").startswith("mskseg"):
            print(f"mskseg {command}: warning: {message}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _commands() -> dict:
    """Subcommand name -> function(args) -> exit status, for the commands that are not tasks."""
    from .synth.cli import run_synth

    table = {"info": cmd_info, "demo": cmd_demo, "export": cmd_export, "segment": cmd_segment,
             "models": cmd_models, "device": cmd_device, "terminology": cmd_terminology, "synth": run_synth}
    try:
        from .train.cli import run_evaluate, run_train

        table.update(train=run_train, evaluate=run_evaluate)
    except ImportError:
        pass
    return table


# ------------------------------------------------------------------------------------------------ commands
def cmd_info(args) -> int:
    """``mskseg info``: geometry, modality, patient attributes and series of an image."""
    from .io import list_dicom_series, read_image
    from .io.readers import clean_text

    path = Path(args.image)
    series = list_dicom_series(path) if path.is_dir() else []
    image = read_image(path, series_uid=args.series)
    meta = {k: v for k, v in image.metadata.items() if k != "source_files"}
    if args.json:
        print(json.dumps({
            "size": image.size, "spacing": image.spacing, "origin": image.origin,
            "direction": image.direction.tolist(), "dtype": str(image.array.dtype),
            "min": float(image.array.min()), "max": float(image.array.max()), "metadata": meta,
            "series": [s.__dict__ for s in series],
            "n_files": len(image.metadata.get("source_files", [])) or None}, indent=2))
        return 0
    print(clean_text(path))
    print(image.describe())
    print(f"format      {meta.get('format', '?')}" + (f", {len(image.metadata['source_files'])} DICOM files"
                                                     if image.metadata.get("source_files") else ""))
    for key in ("Modality", "SeriesDescription", "StudyDate", "PatientSex", "PatientAge", "PatientSize",
                "PatientWeight", "ContrastBolusAgent", "Manufacturer", "BodyPartExamined", "SeriesInstanceUID"):
        if key in meta:
            unit = {"PatientSize": " m", "PatientWeight": " kg"}.get(key, "")
            print(f"{key:18s}{meta[key]}{unit}")
    if series:
        print(f"series found ({len(series)}):")
        for s in series:
            print("  " + clean_text(s.line()))
    for ignored in image.metadata.get("ignored_series", []):
        print(f"note        read the one image series; left out the non-image object {clean_text(ignored)}")
    return 0


def cmd_demo(args) -> int:
    """``mskseg demo``: synthetic CT -> DICOM -> read back -> every export format."""
    from tqdm import tqdm

    from .demo import DEMO_LABELS, demo_ct
    from .image import labels_on_grid
    from .io import read_image
    from .io.dicomwrite import write_dicom_series
    from .io.export import export_result

    from .io.export import FILE_NAMES
    from .io.output import check_output, final_paths, output_transaction

    out = Path(args.out)
    names = ["ct-dicom", *FILE_NAMES.values(), "segmentation.labels.json"]
    check_output(out, names, overwrite=args.overwrite)
    t0 = time.perf_counter()
    steps = tqdm(total=4, desc="demo", unit="step", file=sys.stderr, disable=not sys.stderr.isatty())
    ct, truth = demo_ct()
    steps.update()
    # One transaction for the CT series and the exported files: the folder ends with all of them or none.
    with output_transaction(out, names, overwrite=args.overwrite) as staging:
        dicom_dir = staging / "ct-dicom"
        write_dicom_series(ct, dicom_dir)
        steps.update()
        image = read_image(dicom_dir)
        # The DICOM reader stacks slices along the slice normal: map the true labels onto the grid read back.
        labelmap = image.with_array(labels_on_grid(truth, image), keep_metadata=False)
        steps.update()
        written = export_result(staging, image, labelmap, DEMO_LABELS, overwrite=True,
                                title="MSKSeg demo: synthetic abdominal CT, true labels",
                                summary={"input": str(out / "ct-dicom"), "note": "synthetic CT and its true label map"})
        steps.update()
    steps.close()
    print(f"synthetic CT written as DICOM: {out / 'ct-dicom'} ({image.size[2]} slices)")
    for p in final_paths(written, staging, out):
        print(f"wrote {p}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _parse_labels(text: str | None) -> dict[int, str] | None:
    from .errors import InvalidImageError

    if not text:
        return None
    labels = {}
    for part in text.split(","):
        if "=" not in part:
            raise InvalidImageError(f"--labels item '{part}' is not VALUE=NAME", "e.g. --labels 1=skeletal_muscle,2=visceral_fat")
        v, name = part.split("=", 1)
        try:
            labels[int(v)] = name.strip()
        except ValueError:
            raise InvalidImageError(f"--labels value '{v}' is not an integer") from None
    return labels


def _formats(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def cmd_export(args) -> int:
    """``mskseg export``: a label map on its image, in the requested formats."""
    import numpy as np

    from .io import read_image
    from .io.export import export_result
    from .io.output import check_output
    from .io.segnrrd import read_seg_nrrd
    from .io.writers import read_labels_sidecar

    check_output(args.out, overwrite=args.overwrite, inputs=[args.image])
    image = read_image(args.image, series_uid=args.series)
    if str(args.labelmap).lower().endswith(".seg.nrrd"):
        labelmap, labels = read_seg_nrrd(args.labelmap)
    else:
        labelmap = read_image(args.labelmap)
        labels = read_labels_sidecar(args.labelmap) or {}  # <name>.labels.json, as MSKSeg writes beside NIfTI
    given = _parse_labels(args.labels)
    if given:
        labels = given
    elif not labels:
        values = [int(v) for v in np.unique(labelmap.array) if v != 0]
        labels = {v: f"label_{v}" for v in values}
    image.check_same_grid(labelmap, "label map")
    written = export_result(args.out, image, labelmap.with_array(labelmap.array), labels,
                            formats=_formats(args.formats), overwrite=args.overwrite,
                            title=f"{Path(args.image).name}: {Path(args.labelmap).name}")
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_segment(args) -> int:
    """``mskseg segment``: run a model card on each image; one output folder per case."""
    from tqdm import tqdm

    from .batch import case_names
    from .cardtask import export_card_result, run_card
    from .engine import choose_device
    from .io import read_image
    from .io.export import FILE_NAMES
    from .io.output import check_output, child_folder
    from .models import resolve_model_card
    from .pipeline import check_segmentation_card

    card = resolve_model_card(args.model)
    check_segmentation_card(card)
    device = choose_device(args.device)
    print(f"model   {card.title} ({card.path})")
    print(f"device  {device.device}: {device.reason}")
    names = case_names(args.images)
    failures = 0
    for path, name in zip(args.images, names):
        bar = tqdm(total=100, desc=name, unit="%", file=sys.stderr, disable=not sys.stderr.isatty())

        def progress(fraction: float, message: str = "") -> bool:
            bar.n = int(round(100 * fraction))
            bar.set_postfix_str(message[:30])
            bar.refresh()
            return True

        t0 = time.perf_counter()
        try:
            folder = child_folder(args.out, name)
            check_output(folder, [*FILE_NAMES.values(), "segmentation.labels.json"], overwrite=args.overwrite,
                         inputs=[path])
            image = read_image(path, series_uid=args.series)
            result = run_card(image, model_card=card, device=device.device, progress=progress)
            written = export_card_result(folder, image, result, overwrite=args.overwrite,
                                         formats=_formats(args.formats), extra={"input": str(path)},
                                         title=f"{name}: {card.title}")
        except MSKSegError as e:
            if len(args.images) == 1:
                raise
            failures += 1
            print(f"{name}: error: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
            continue
        finally:
            bar.close()
        for warning in result.details.get("warnings", []):
            print(f"{name}: warning: {warning}")
        print(f"{name}: {len(written)} files in {Path(args.out) / name} ({time.perf_counter() - t0:.1f} s)")
    if failures:
        print(f"{failures} of {len(args.images)} cases failed", file=sys.stderr)
        return 2
    return 0


def cmd_models(args) -> int:
    """``mskseg models``: list model cards."""
    from .models import find_model_cards

    cards = find_model_cards(args.dir)
    if not cards:
        print("no model cards found (searched $MSKSEG_MODELS_DIR and Resources/Models/)")
        return 0
    from .models.networks import NOT_SEGMENTATION

    for c in cards:
        role = NOT_SEGMENTATION.get(str(c.architecture.get("name", "")))
        use = f"  ({role}; not for `mskseg segment`)" if role else ""
        print(f"{c.name:28s} {c.task:10s} {c.title}{use}  [{c.path}]")
    return 0


def cmd_device(args) -> int:
    """``mskseg device``: the device inference would use, and why."""
    from .engine import choose_device

    d = choose_device(args.device)
    print(f"{d.device}: {d.reason}")
    return 0


def cmd_terminology(args) -> int:
    """``mskseg terminology``: print the class table or write the Slicer terminology file."""
    from . import terminology
    from .io.output import output_transaction

    if args.write:
        path = Path(args.write)
        if path.is_dir():
            raise MSKSegError(f"--write {path} is a folder", "give the path of the file to write, e.g. MSKSeg.term.json")
        with output_transaction(path.parent, [path.name], overwrite=args.overwrite, marker=False) as staging:
            terminology.write_slicer_term_json(staging / path.name)
        print(f"wrote {path}")
        return 0
    for c in terminology.CLASSES.values():
        mod = f" ({c.type_modifier[2]})" if c.type_modifier else ""
        print(f"{c.name:22s} {c.type[0]} {c.type[1]:>10s}  {c.type[2]}{mod}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
