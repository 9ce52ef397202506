"""Training checkpoints and the training log: what a resumed run checks, reads and writes."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import MSKSegError

if TYPE_CHECKING:
    from .trainer import TrainConfig

#: Format tag of a checkpoint file; a file without it is refused.
CHECKPOINT_FORMAT = "mskseg-train-checkpoint/1"


def config_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide the weights, JSON-ready (paths resolved, cards by path); a resumed run must
    have the same."""
    def text(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, os.PathLike):
            return str(Path(v).expanduser().resolve())
        if getattr(v, "path", None) is not None:  # a ModelCard
            return str(v.path)
        if isinstance(v, Mapping):
            return {str(k): text(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [text(x) for x in v]
        return str(getattr(v, "name", None) or v)

    keys = ("name", "data", "labels", "synthetic", "synthetic_fraction", "synthetic_validation_samples",
            "synthetic_pool",
            "only_labelled_slices", "model_card", "fine_tune_from", "freeze_encoder", "task", "dimensions",
            "context_slices", "spacing_mm", "normalisation", "window", "patch_size", "architecture", "epochs",
            "steps_per_epoch", "batch_size", "learning_rate", "weight_decay", "scheduler", "dice_weight",
            "ce_weight", "foreground_probability", "folds", "fold", "validation_fraction", "validate_every",
            "patience", "min_delta", "seed")
    out = {k: text(getattr(config, k)) for k in keys}
    out["augmentation"] = config.augmentation.describe()
    return json.loads(json.dumps(out))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training state with ``torch.save`` atomically (a temporary file, then a rename)."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, str(tmp))
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training state written by :func:`save_checkpoint`.

    Raises:
        MSKSegError: the file is damaged or not an MSKSeg checkpoint (:data:`CHECKPOINT_FORMAT`).
    """
    import torch

    try:
        state = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types for damaged files
        raise MSKSegError(f"checkpoint {path} cannot be read: {exc}",
                          "the file is damaged; start again without --resume (and --overwrite)") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MSKSegError(f"{path} is not an MSKSeg training checkpoint")
    return state


def write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """The per-epoch history as CSV (columns in order of appearance, floats to 6 digits, NaN empty), atomically."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in history:
            writer.writerow(["" if row.get(c) is None or (isinstance(row.get(c), float) and math.isnan(row[c]))
                             else (f"{row[c]:.6g}" if isinstance(row.get(c), float) else row[c]) for c in columns])
    os.replace(tmp, path)
