"""``mskseg train`` and ``mskseg evaluate``: argument parsers and the commands behind them.

``mskseg.cli`` adds the parsers with :func:`add_train_parser` / :func:`add_evaluate_parser` and calls
:func:`run_train` / :func:`run_evaluate`, which return the exit status. Bad input raises
:class:`~mskseg.errors.MSKSegError`, which ``mskseg.cli.main`` prints as one error line with a hint (exit 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import MSKSegError

TRAIN_EPILOG = """\
examples:
  # fine-tune a shipped L3 model on your own labelled slices (.seg.nrrd, NIfTI, NRRD, DICOM + DICOM-SEG, PNG)
  mskseg train --data ~/l3-cohort --fine-tune sarcopenia-l3-tissue-2d --epochs 30 --out runs/my-l3

  # train from scratch with a card's recipe (classes, spacing, window, architecture), 5-fold CV, fold 0
  mskseg train --data ~/l3-cohort --model sarcopenia-l3-tissue-2d --folds 5 --fold 0 --name my-l3-f0 --out runs/f0

  # a muscle-only 2D U-Net on label maps that carry no names (value 1 = muscle), on the data's own spacing with
  # a soft-tissue window ('=' before a negative number)
  mskseg train --data ~/muscle-cohort --labels 1=skeletal_muscle --window=-160,240 --out runs/muscle

  # a small 2D U-Net on PNG pairs whose masks hold label values 1..3
  mskseg train --data ~/png-pairs --labels 1=skeletal_muscle,2=subcutaneous_fat,3=visceral_fat \\
      --window 0,255 --modality OT --out runs/png

  # synthetic phantoms only, or mixed 30/70 with real data
  mskseg train --synthetic l3-phantom --synthetic-pool 400 --epochs 20 --steps-per-epoch 200 --out runs/synth
  mskseg train --data ~/l3-cohort --synthetic l3-phantom --synthetic-fraction 0.3 --out runs/mixed

  # continue an interrupted run exactly where its last epoch ended
  mskseg train ...same options... --resume

data layout (--data):
  DATA/images/<case>.nii.gz  DATA/labels/<case>.seg.nrrd     any image/label formats, paired by case name
  DATA/images/<case>/        DATA/labels/<case>.dcm          a DICOM series and its DICOM-SEG
  DATA/images/<case>.png     DATA/labels/<case>.png          mask grey value = label value (or class colours)
  or a CSV manifest (a .csv file, or DATA/manifest.csv) with columns image,label[,case].
  Label maps must lie on their image's grid. Names come from .seg.nrrd/DICOM-SEG files, else --labels, else
  the card; classes are matched by name.

output (--out): <name>.safetensors, <name>.card.json (use it with `mskseg segment --model` or in Slicer),
training_log.csv, checkpoint.pt. Nothing is overwritten without --overwrite. Threads: --threads N (default:
torch's choice, one per core).
"""

EVALUATE_EPILOG = """\
examples:
  mskseg evaluate --pred runs/my-l3/predictions --ref ~/l3-cohort/labels --out results.csv
  mskseg evaluate --pred out/ --ref refs/ --labels 1=skeletal_muscle,2=subcutaneous_fat --tolerance-mm 1 \\
      --out results.csv

Cases are matched by name: <dir>/<case>.<ext> or <dir>/<case>/ (as `mskseg segment` writes). Classes are
matched by name (from .seg.nrrd/DICOM-SEG files, NIfTI .labels.json sidecars, else --labels). Metrics per case
and class: Dice, HD95 (mm), normalised surface Dice at --tolerance-mm, area error (cm2, 2D) or volume error
(cm3, 3D). Empty masks: Dice and NSD are undefined (blank) when both are empty; HD95 is infinite when one is.
"""


def parse_labels(text: str | None) -> dict[int, str] | None:
    """``"1=skeletal_muscle,2=visceral_fat"`` -> ``{1: "skeletal_muscle", 2: "visceral_fat"}`` (None for no text).

    Raises:
        MSKSegError: an item is not VALUE=NAME with an integer value.
    """
    if not text:
        return None
    labels: dict[int, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        value, sep, name = part.partition("=")
        if not sep or not name.strip():
            raise MSKSegError(f"--labels item '{part}' is not VALUE=NAME",
                              "e.g. --labels 1=skeletal_muscle,2=visceral_fat")
        try:
            labels[int(value)] = name.strip()
        except ValueError:
            raise MSKSegError(f"--labels value '{value}' is not an integer") from None
    return labels


def _numbers(text: str | None, kind: type, what: str, count: tuple[int, ...] | None = None) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise MSKSegError(f"{what} '{text}' must be comma-separated numbers") from None
    if count and len(values) not in count:
        raise MSKSegError(f"{what} '{text}' needs {' or '.join(map(str, count))} values")
    return values


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``mskseg`` subcommands; returns its parser."""
    p = subparsers.add_parser(
        "train", help="train or fine-tune a segmentation model from labelled files and/or synthetic data",
        description="Train a 2D, 2.5D or 3D segmentation network (Dice + cross-entropy, AdamW, cosine learning "
                    "rate, mixed precision on GPU) on labelled image/label pairs and/or a synthetic generator, "
                    "validate on held-out cases (or k-fold), stop early, and write the weights with a complete "
                    "model card.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR|CSV", help="labelled data: a folder with images/ and labels/, or a manifest")
    g.add_argument("--labels", metavar="V=NAME,...", help="names of label values in files that carry none "
                   "(NIfTI/NRRD/PNG); without a card these are the model's classes")
    g.add_argument("--synthetic", metavar="NAME", help="synthetic generator (see --list-synthetic)")
    g.add_argument("--synthetic-fraction", type=float, metavar="F",
                   help="share of each batch from the generator (default: 1 without --data, 0.5 with)")
    g.add_argument("--synthetic-val", type=int, default=16, metavar="N",
                   help="held-out generator samples to validate on (default 16)")
    g.add_argument("--synthetic-pool", type=int, default=0, metavar="N",
                   help="draw from N generator samples made once and kept (0: a new one every draw; on CPU a "
                        "pool of a few hundred keeps a slow generator from dominating the run)")
    g.add_argument("--all-slices", action="store_true", help="2D/2.5D: train on every slice, not only labelled ones")
    g.add_argument("--list-synthetic", action="store_true", help="list the synthetic generators and exit")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="CARD", help="train from scratch with this card's recipe (classes, input, "
                   "architecture)")
    g.add_argument("--fine-tune", metavar="CARD", help="start from this card's weights (sha256-checked)")
    g.add_argument("--freeze-encoder", action="store_true", help="with --fine-tune: train the decoder only")
    g.add_argument("--name", default="my-model", help="name of the new model (file names, card; default my-model)")
    g.add_argument("--task", help="task key of the card (default: the base card's, else 'custom')")
    g.add_argument("--dimensions", choices=("2d", "2.5d", "3d"), help="default: the card's, else 2d")
    g.add_argument("--context", type=int, metavar="N", help="2.5d: neighbouring slices on each side (default 1)")
    g.add_argument("--spacing", metavar="MM,MM[,MM]|own", help="resample to this spacing (i,j[,k]) or keep 'own'")
    g.add_argument("--normalisation", choices=("window", "zscore", "none"))
    g.add_argument("--window", metavar="LOW,HIGH",
                   help="intensity window, e.g. --window -160,240 (or --window=-160,240; default -250,250 for CT, "
                        "0,255 for PNG data)")
    g.add_argument("--patch-size", metavar="N,N[,N]", help="training patch (default: the data's size, at most 256)")
    g.add_argument("--architecture", metavar="NAME|JSON",
                   help="unet-tiny, unet-small (default), unet-medium, a network name (monai.BasicUNet, ...) or "
                        'JSON {"name": ..., "args": {...}}')
    g.add_argument("--modality", help="DICOM modality the model is for (default CT)")
    g.add_argument("--title")
    g.add_argument("--description")
    g.add_argument("--version", default="1.0.0", help="version of the new model (default 1.0.0)")
    g.add_argument("--licence", default="unspecified", help="licence of the new weights (default unspecified)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help="default: one pass over the training slices (100 for synthetic data only)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--scheduler", choices=("cosine", "poly", "constant"), default="cosine")
    g.add_argument("--dice-weight", type=float, default=1.0)
    g.add_argument("--ce-weight", type=float, default=1.0)
    g.add_argument("--no-augment", action="store_true", help="switch off flips, rotations and intensity changes")
    g = p.add_argument_group("validation")
    g.add_argument("--folds", type=int, default=1, help="k-fold cross-validation by case (k >= 2)")
    g.add_argument("--fold", type=int, default=0, help="which fold to hold out (0..k-1)")
    g.add_argument("--val-fraction", type=float, default=0.2, help="without --folds: share of cases held out")
    g.add_argument("--validate-every", type=int, default=1, metavar="EPOCHS")
    g.add_argument("--patience", type=int, default=10, help="stop after N validations without improvement (0: never)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="output folder (required)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    return p


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the ``mskseg`` subcommands; returns its parser."""
    p = subparsers.add_parser(
        "evaluate", help="compare predicted label maps with references: Dice, HD95, NSD, area/volume error",
        description="Compute per-case, per-class segmentation metrics between two folders of label maps, "
                    "write them as CSV and print mean/median/SD per class.",
        epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted label maps")
    p.add_argument("--ref", required=True, metavar="DIR", help="reference label maps")
    p.add_argument("--labels", metavar="V=NAME,...", help="names for files without names; also the classes evaluated")
    p.add_argument("--images", metavar="DIR", help="the images (needed to place DICOM-SEG frames on their grid)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="normalised surface Dice tolerance (default 2)")
    p.add_argument("--allow-missing", action="store_true", help="evaluate only cases that have a prediction")
    p.add_argument("--out", required=True, metavar="CSV", help="per-case results (CSV)")
    p.add_argument("--summary", metavar="CSV", help="also write the per-class summary as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def _progress_bar(desc: str, total: int = 1000):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="‰", file=sys.stderr, disable=not sys.stderr.isatty(),
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction: float, message: str = "") -> bool:
        bar.n = int(round(total * max(0.0, min(fraction, 1.0))))
        bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()
        return True

    return bar, progress


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~mskseg.train.trainer.TrainConfig` the parsed ``mskseg train`` arguments describe."""
    from .data import NO_AUGMENTATION, Augmentation
    from .trainer import TrainConfig

    if not args.out:
        raise MSKSegError("mskseg train needs --out DIR (where the weights, card and log go)")
    spacing: Any = None
    if args.spacing is not None:
        spacing = "own" if args.spacing.strip().lower() == "own" else _numbers(args.spacing, float, "--spacing", (2, 3))
    return TrainConfig(
        out_dir=Path(args.out), name=args.name, data=args.data, labels=parse_labels(args.labels),
        synthetic=args.synthetic, synthetic_fraction=args.synthetic_fraction,
        synthetic_validation_samples=args.synthetic_val, synthetic_pool=args.synthetic_pool,
        only_labelled_slices=not args.all_slices,
        model_card=args.model, fine_tune_from=args.fine_tune, freeze_encoder=args.freeze_encoder, task=args.task,
        dimensions=args.dimensions, context_slices=args.context, spacing_mm=spacing,
        normalisation=args.normalisation, window=_numbers(args.window, float, "--window", (2,)),
        patch_size=_numbers(args.patch_size, int, "--patch-size", (2, 3)), architecture=args.architecture,
        modality=args.modality, title=args.title, description=args.description, version=args.version,
        licence=args.licence, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, scheduler=args.scheduler,
        dice_weight=args.dice_weight, ce_weight=args.ce_weight,
        augmentation=dataclasses.replace(NO_AUGMENTATION, hooks=[]) if args.no_augment else Augmentation(),
        folds=args.folds, fold=args.fold, validation_fraction=args.val_fraction,
        validate_every=args.validate_every, patience=args.patience or None, seed=args.seed, device=args.device,
        amp=not args.no_amp, resume=args.resume, overwrite=args.overwrite)


def run_train(args: argparse.Namespace) -> int:
    """``mskseg train``: train, print one line per epoch and the files written; returns the exit status.

    0: done; 130: interrupted (Ctrl-C) or cancelled, with the last epoch's checkpoint kept for ``--resume``.
    """
    from .data import synthetic_sources

    if args.list_synthetic:
        sources = synthetic_sources()
        if not sources:
            print("no synthetic generators are registered")
        for name, info in sorted(sources.items()):
            print(f"{name:20s} {info.version or '':12s} {info.description}")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .trainer import train

    config = config_from_args(args)
    bar, progress = _progress_bar(f"train {config.name}")

    def on_epoch(row: dict[str, Any]) -> None:
        parts = [f"epoch {row['epoch']:3d}", f"loss {row['train_loss']:.4f}", f"lr {row['learning_rate']:.2e}"]
        for key in ("val_dice_mean", "synthetic_val_dice_mean"):
            if key in row:
                parts.append(f"{key.replace('_dice_mean', '')} Dice {row[key]:.3f}")
        parts.append(f"{row['seconds']:.0f} s")
        if bar.disable:
            print("  ".join(parts), flush=True)
        else:
            bar.write("  ".join(parts), file=sys.stderr)

    t0 = time.perf_counter()
    try:
        result = train(config, progress=progress, on_epoch=on_epoch)
    except KeyboardInterrupt:
        bar.close()
        print(f"mskseg train: interrupted; continue with the same options and --resume (checkpoint in "
              f"{config.out_dir})", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"trained {result.epochs_run} epochs in {time.perf_counter() - t0:.0f} s"
          + (f" (stopped early; best epoch {result.best_epoch})" if result.stopped_early else "")
          + (f"; best validation Dice {result.best_score:.3f}" if result.best_score is not None else ""))
    for path in (result.weights_path, result.card_path, result.log_path, result.checkpoint_path):
        print(f"wrote {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``mskseg evaluate``: metrics per case and class -> CSV, summary printed; returns the exit status."""
    from ..io.common import prepare_output
    from ..io.writers import write_metrics_csv
    from .evaluate import UNITS, evaluate_folders, format_summary, summarise

    try:  # refuse existing or unwritable output before the work, not after
        out = prepare_output(args.out, args.overwrite)
        if args.summary:
            prepare_output(args.summary, args.overwrite)
    except OSError as exc:
        raise MSKSegError(f"cannot write {args.out}: {exc.strerror or exc}",
                          "choose a folder you may write to") from exc
    bar, progress = _progress_bar("evaluate")
    try:
        rows, labels = evaluate_folders(args.pred, args.ref, labels=parse_labels(args.labels),
                                        images_dir=args.images, tolerance_mm=args.tolerance_mm,
                                        allow_missing=args.allow_missing, progress=progress)
    finally:
        bar.close()
    write_metrics_csv(out, rows, overwrite=True, units=UNITS)
    summary = summarise(rows)
    n_cases = len({r["case"] for r in rows})
    print(f"{n_cases} cases, {len(labels)} classes ({', '.join(labels.values())})")
    print(format_summary(summary))
    print(f"wrote {out}")
    if args.summary:
        write_metrics_csv(args.summary, summary, overwrite=True)
        print(f"wrote {args.summary}")
    return 0
