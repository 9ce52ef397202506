"""The model card a training run writes: the draft before training, its training and validation sections
after, and the measured inference time."""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..io.common import Labels
from . import data as D

if TYPE_CHECKING:
    import torch

    from ..models.cards import ModelCard
    from .trainer import TrainConfig


def draft_card(config: TrainConfig, base: ModelCard | None, dimensions: str, input_spec: Mapping[str, Any],
               classes: Labels, architecture: Mapping[str, Any]) -> dict[str, Any]:
    """The new model card as a dict, before training: its ``training`` and ``validation`` are filled in after."""
    from .. import terminology

    modality = config.modality or (base.modality if base is not None else "CT")
    task = config.task or (base.task if base is not None else "custom")
    return {
        "schema_version": "1.0",
        "name": config.name,
        "title": config.title or f"{config.name} (trained with mskseg train)",
        "task": task,
        "version": config.version,
        "description": config.description or (
            f"{dimensions} segmentation of {', '.join(classes.values())}, trained with mskseg train"
            + (f" (fine-tuned from {config.fine_tune_from})" if config.fine_tune_from is not None else "") + "."),
        "licence": config.licence,
        "modality": modality,
        "dimensions": dimensions,
        "input": json.loads(json.dumps(input_spec)),
        "classes": [{"label": int(v), "name": n, "display_name": terminology.get_class(n).display_name}
                    for v, n in sorted(classes.items())],
        "architecture": json.loads(json.dumps(architecture)),
        "weights": {"file": f"{config.name}.safetensors", "sha256": "0" * 64, "format": "safetensors"},
        "training": {"data": "pending"},
        "validation": [],
    }


def training_section(config: TrainConfig, cases, train_names, val_names, train_samples, val_samples,
                     synthetic: D.SyntheticData | None, fraction: float, synthetic_drawn: int, synthetic_val_n: int,
                     history, best_epoch, stopped_early, steps_per_epoch, global_step,
                     augmentation: D.Augmentation, pretrained_note, frozen, device, seconds, case_paths,
                     maker: Any) -> dict:
    """The card's ``training`` section: data sources, split, loss, optimiser, schedule, software, time.

    ``maker`` is the trainer's batch maker (its ``cache`` holds the synthetic pool samples used).
    """
    import monai
    import torch

    from .. import __version__

    parts, sources = [], []
    if cases:
        formats = sorted({label_format(p.label) for p in case_paths})
        unit = "volumes" if train_samples and train_samples[0].slice_index is None else "slices"
        parts.append(f"{len(train_samples)} {unit} from {len(train_names)} cases in {config.data} "
                     f"(label files: {', '.join(formats)})")
        sources.append({"kind": "files", "path": str(config.data), "label_formats": formats,
                        "cases": len(cases), "training_cases": len(train_names),
                        "validation_cases": len(val_names), "training_samples": len(train_samples),
                        "validation_samples": len(val_samples)})
    if synthetic is not None:
        if config.synthetic_pool:
            drawn = (f"a pool of {config.synthetic_pool} samples (indices 0..{config.synthetic_pool - 1}, "
                     f"{len(maker.cache)} used)")
        else:
            drawn = f"{synthetic_drawn} samples drawn (indices 0..{max(synthetic_drawn - 1, 0)})"
        parts.append(f"synthetic generator {synthetic.name} {synthetic.version or '(unversioned)'} with seed "
                     f"{config.seed}: {drawn}, {fraction:.0%} of each batch; {synthetic_val_n} held-out samples "
                     "for validation")
        sources.append({"kind": "synthetic", "generator": synthetic.name, "version": synthetic.version,
                        "samples_drawn": len(maker.cache) if config.synthetic_pool else synthetic_drawn,
                        "pool": config.synthetic_pool or None, "batch_fraction": fraction,
                        "held_out_samples": synthetic_val_n, "held_out_indices_from": D.HELD_OUT_INDEX})
    section: dict[str, Any] = {
        "data": "; ".join(parts),
        "generator_version": synthetic.version if synthetic is not None else None,
        "seed": int(config.seed),
        "epochs": len(history),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "sources": sources,
        "validation_cases": list(val_names),
        "split": ({"kind": "k-fold", "folds": config.folds, "fold": config.fold} if config.folds >= 2 else
                  {"kind": "hold-out", "fraction": config.validation_fraction}),
        "loss": {"name": "monai.losses.DiceCELoss", "dice_weight": float(config.dice_weight),
                 "ce_weight": float(config.ce_weight), "include_background_in_dice": False},
        "optimizer": {"name": "AdamW", "learning_rate": config.learning_rate, "weight_decay": config.weight_decay},
        "scheduler": config.scheduler,
        "batch_size": config.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "steps": global_step,
        "epochs_planned": config.epochs,
        "best_epoch": best_epoch,
        "early_stopping": {"patience": config.patience, "min_delta": config.min_delta,
                           "stopped_early": stopped_early},
        "augmentation": augmentation.describe(),
        "only_labelled_slices": config.only_labelled_slices,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "training_seconds": round(seconds, 1),
        "software": {"mskseg": __version__, "torch": torch.__version__, "monai": monai.__version__},
    }
    if pretrained_note is not None:
        section["fine_tuned_from"] = pretrained_note
        section["frozen_parameters"] = len(frozen)
    return section


def label_format(path: Path) -> str:
    """The label file format a path names (``"seg.nrrd"``, ``"NIfTI"``, ``"PNG mask"``, ``"DICOM-SEG"``...)."""
    lower = str(path).lower()
    for suffix, name in ((".seg.nrrd", "seg.nrrd"), (".nii.gz", "NIfTI"), (".nii", "NIfTI"), (".nrrd", "NRRD"),
                         (".nhdr", "NRRD"), (".mha", "MetaImage"), (".mhd", "MetaImage"), (".dcm", "DICOM-SEG")):
        if lower.endswith(suffix):
            return name
    if lower.endswith(D.PICTURE_SUFFIXES):
        return "PNG mask" if lower.endswith(".png") else "picture mask"
    return "DICOM-SEG"


def validation_section(history, best_epoch, classes: Labels, val_samples, val_names, config: TrainConfig,
                       synthetic: D.SyntheticData | None, synthetic_val_n: int) -> list[dict[str, Any]]:
    """Dice per class (and the mean) at the epoch whose weights are kept; nothing unmeasured."""
    rows = [h for h in history if h["epoch"] == best_epoch] or [h for h in history if any(
        k.endswith("_dice_mean") for k in h)][-1:]
    if not rows:
        return []
    row = rows[0]
    out = []
    sets = []
    if val_samples:
        where = (f"fold {config.fold} of {config.folds}" if config.folds >= 2 else
                 f"{len(val_names)} held-out cases")
        unit = "cases" if val_samples[0].slice_index is None else "slices"
        sets.append(("val", "real-development", f"user data {config.data}: {where}", len(val_samples), unit))
    if synthetic is not None and synthetic_val_n:
        sets.append(("synthetic_val", "synthetic-held-out",
                     f"{synthetic.name} {synthetic.version or ''} held-out samples".replace("  ", " "),
                     synthetic_val_n, "samples"))
    for prefix, kind, dataset, n, unit in sets:
        note = f"epoch {row['epoch']}; mean over {unit} where the class is present in reference or prediction"
        for value, name in sorted(classes.items()):
            v = row.get(f"{prefix}_dice_{name}")
            if v is not None and not math.isnan(v):
                out.append({"dataset": dataset, "kind": kind, "metric": "dice", "class": name,
                            "value": round(float(v), 4), "n": int(n), "note": note})
        mean = row.get(f"{prefix}_dice_mean")
        if mean is not None and not math.isnan(mean):
            out.append({"dataset": dataset, "kind": kind, "metric": "dice", "value": round(float(mean), 4),
                        "n": int(n), "note": note + "; mean over classes"})
    return out


def measure_inference(model: torch.nn.Module, input_spec: Mapping[str, Any], spatial_dims: int,
                      device: torch.device, amp: bool) -> dict[str, Any]:
    """Measured time of one forward pass of one patch (median of 3 after a warm-up)."""
    import torch

    from ..engine import choose_device

    patch = [int(p) for p in input_spec["patch_size"]]
    x = torch.zeros((1, int(input_spec.get("channels", 1)), *patch), device=device)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(4):
            t = time.perf_counter()
            if amp and device.type == "cuda":
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    model(x)
                torch.cuda.synchronize()
            else:
                model(x)
            if i:
                times.append(time.perf_counter() - t)
    key = "gpu_seconds" if device.type == "cuda" else "cpu_seconds"
    hardware = choose_device(str(device)).name
    return {key: round(float(np.median(times)), 4),
            "input": f"one {'x'.join(map(str, patch))} patch, batch 1 (network forward pass only)",
            "hardware": hardware}
