"""The epoch loop of a training run (internal to :func:`mskseg.train.trainer.train`): batches, the optimiser
and learning-rate schedule, the steps, validation and early stopping, checkpoints and the log.

The order of every random draw (the numpy Generator that draws batches and augmentations, torch's generator)
is that of an uninterrupted run; a resumed run restores both from the checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..engine import forward_logits
from ..errors import CancelledError, MSKSegError
from ..io.common import Labels
from . import data as D
from .checkpoints import CHECKPOINT_FORMAT, config_fingerprint, load_checkpoint, save_checkpoint, write_log

if TYPE_CHECKING:
    import torch

    from .trainer import Progress, TrainConfig

logger = logging.getLogger(__name__)


# ============================================================================================== schedule
class _LearningRate:
    """Per-step learning-rate factor: cosine from 1 to 0, poly ``(1 - t)^0.9``, or constant."""

    def __init__(self, kind: str, total_steps: int):
        self.kind, self.total = kind, max(int(total_steps), 1)

    def __call__(self, step: int) -> float:
        t = min(step / self.total, 1.0)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "poly":
            return (1.0 - t) ** 0.9
        return 1.0


@contextlib.contextmanager
def _deterministic(enabled: bool):
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


# ============================================================================================== batches
class BatchMaker:
    """Draws training batches: real samples and synthetic samples mixed by ``synthetic_fraction``."""

    def __init__(self, real: Sequence[D.Sample], synthetic: D.SyntheticData | None, synthetic_fraction: float,
                 synthetic_lookup: np.ndarray | None, input_spec: Mapping[str, Any], spatial_dims: int,
                 patch: Sequence[int], augmentation: D.Augmentation, foreground_probability: float,
                 pool: int = 0):
        self.pool, self.cache = int(pool), {}  # index -> (image float16, label); a pure function of the index
        self.real, self.synthetic, self.fraction = list(real), synthetic, float(synthetic_fraction)
        self.lookup, self.input_spec, self.spatial_dims = synthetic_lookup, input_spec, spatial_dims
        self.patch, self.augmentation, self.foreground = list(patch), augmentation, foreground_probability

    def batch(self, rng: np.random.Generator, size: int, synthetic_index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(images (B, C, *patch) float32, labels (B, *patch) int64, next synthetic index)``."""
        images, labels = [], []
        for _ in range(size):
            use_synthetic = self.synthetic is not None and (not self.real or rng.random() < self.fraction)
            if use_synthetic and self.pool:
                index = int(rng.integers(self.pool))
                if index not in self.cache:
                    image, label = D.synthetic_sample(self.synthetic, index, self.input_spec, self.spatial_dims,
                                                      self.lookup)
                    self.cache[index] = (image.astype(np.float16), label)
                image, label = self.cache[index][0].astype(np.float32), self.cache[index][1]
            elif use_synthetic:
                image, label = D.synthetic_sample(self.synthetic, synthetic_index, self.input_spec,
                                                  self.spatial_dims, self.lookup)
                synthetic_index += 1
            else:
                sample = self.real[int(rng.integers(len(self.real)))]
                image, label = sample.image.astype(np.float32), sample.label
            image, label = D.crop_or_pad(image, label, self.patch, rng, self.foreground)
            image, label = D.augment(image, label, rng, self.augmentation)
            images.append(image)
            labels.append(label)
        return np.stack(images), np.stack(labels).astype(np.int64), synthetic_index


# ============================================================================================== validation
def _predict_samples(model: torch.nn.Module, samples: Sequence[D.Sample], spatial_dims: int,
                     patch: Sequence[int], device: Any, amp: bool, batch_size: int) -> list[np.ndarray]:
    """Label predictions for whole validation samples (2D: padded to a multiple of 32; 3D: sliding window)."""
    import torch

    from ..engine import predict_volume

    if spatial_dims == 3:
        return [predict_volume(model, s.image.astype(np.float32), roi_size=patch, device=device, amp=amp)
                for s in samples]
    model.eval()
    predictions: list[np.ndarray] = []
    with torch.inference_mode():
        start = 0
        while start < len(samples):
            shape = samples[start].image.shape
            group = [samples[start]]
            while (start + len(group) < len(samples) and len(group) < batch_size
                   and samples[start + len(group)].image.shape == shape):
                group.append(samples[start + len(group)])
            padded = [D.pad_sample_to_multiple(s.image.astype(np.float32), s.label, 32) for s in group]
            batch = torch.from_numpy(np.stack([p[0] for p in padded])).to(device)
            logits = forward_logits(model, batch, device, amp)
            labels = torch.argmax(logits, dim=1).to(torch.uint8).cpu().numpy()
            for (_, _, crop), lab in zip(padded, labels):
                predictions.append(lab[crop])
            start += len(group)
    return predictions


def _dice_per_class(predictions: Sequence[np.ndarray], samples: Sequence[D.Sample],
                    classes: Labels) -> dict[str, float]:
    from .evaluate import dice

    out: dict[str, float] = {}
    for value, name in classes.items():
        values = [dice(p, s.label, value) for p, s in zip(predictions, samples)]
        finite = [v for v in values if not math.isnan(v)]
        out[name] = float(np.mean(finite)) if finite else float("nan")
    return out


def _mean_score(per_class: Mapping[str, float]) -> float:
    finite = [v for v in per_class.values() if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ============================================================================================== run
@dataclass
class Session:
    """What the epoch loop works with and does not change: the network, its optimisation, batches, validation."""

    model: torch.nn.Module
    device: torch.device
    use_amp: bool
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    maker: BatchMaker
    steps_per_epoch: int
    total_steps: int
    spatial_dims: int
    patch: Sequence[int]
    classes: Labels
    validation_sets: list[tuple[str, list[D.Sample]]]
    checkpoint_path: Path
    log_path: Path
    fingerprint: dict[str, Any]


@dataclass
class RunState:
    """What the epoch loop changes, and a checkpoint keeps: counters, random state, best weights, history."""

    rng: np.random.Generator
    epoch: int = 0
    global_step: int = 0
    synthetic_index: int = 0
    best_score: float = -math.inf
    best_epoch: int | None = None
    best_state: dict[str, Any] | None = None
    bad_validations: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def start_session(config: TrainConfig, model: torch.nn.Module, device: torch.device, maker: BatchMaker,
                  steps_per_epoch: int, spatial_dims: int, patch: Sequence[int], classes: Labels,
                  validation_sets: list[tuple[str, list[D.Sample]]], paths: Mapping[str, Path]) -> Session:
    """The loss (Dice + cross-entropy), AdamW over the trainable parameters, the per-step schedule and the
    gradient scaler (mixed precision on CUDA only) for ``model``."""
    import torch
    from monai.losses import DiceCELoss

    total_steps = steps_per_epoch * config.epochs
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True,
                         lambda_dice=float(config.dice_weight), lambda_ce=float(config.ce_weight))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _LearningRate(config.scheduler, total_steps))
    use_amp = bool(config.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return Session(model, device, use_amp, loss_fn, optimizer, scheduler, scaler, maker, steps_per_epoch,
                   total_steps, spatial_dims, patch, classes, validation_sets, paths["checkpoint"], paths["log"],
                   config_fingerprint(config))


def start_state(config: TrainConfig, session: Session) -> RunState:
    """A fresh state seeded by ``config.seed``, or (``config.resume``) the checkpoint's, restored into the
    session's model, optimiser, schedule and scaler.

    Raises:
        MSKSegError: the checkpoint was written with other settings.
    """
    import torch

    state = RunState(np.random.default_rng(config.seed))
    if not config.resume:
        return state
    saved_state = load_checkpoint(session.checkpoint_path)
    saved = json.loads(saved_state["config"])
    fingerprint = session.fingerprint
    differences = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differences:
        raise MSKSegError(f"cannot resume: settings differ from the interrupted run ({', '.join(differences)})",
                          "resume with exactly the settings of the first run, or start a new run")
    session.model.load_state_dict(saved_state["model"])
    session.optimizer.load_state_dict(saved_state["optimizer"])
    session.scheduler.load_state_dict(saved_state["scheduler"])
    session.scaler.load_state_dict(saved_state["scaler"])
    state.rng.bit_generator.state = json.loads(saved_state["numpy_rng"])
    torch.set_rng_state(saved_state["torch_rng"])
    if torch.cuda.is_available() and saved_state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved_state["cuda_rng"])
    state.epoch, state.global_step = int(saved_state["epoch"]), int(saved_state["global_step"])
    state.synthetic_index = int(saved_state["synthetic_index"])
    state.best_score = float(saved_state["best_score"])
    state.best_epoch = saved_state["best_epoch"]
    state.best_state = saved_state["best_state"]
    state.bad_validations = int(saved_state["bad_validations"])
    state.stopped_early = bool(saved_state["stopped_early"])
    state.history = json.loads(saved_state["history"])
    logger.info("resuming %s after epoch %d", config.name, state.epoch)
    return state


def run_epochs(config: TrainConfig, session: Session, state: RunState, progress: Progress | None,
               on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Train from ``state.epoch`` to ``config.epochs`` (or an early stop): steps, validation when due, a
    checkpoint every ``checkpoint_every`` epochs and the log after every epoch.

    Raises:
        CancelledError: ``progress`` returned False.
    """
    with _deterministic(config.deterministic):
        while state.epoch < config.epochs and not state.stopped_early:
            t_epoch = time.perf_counter()
            row, data_seconds = _train_epoch(config, session, state, progress)
            epoch = state.epoch
            validate = bool(session.validation_sets) and ((epoch + 1) % max(config.validate_every, 1) == 0
                                                          or epoch + 1 == config.epochs)
            if validate:
                _validate(config, session, state, row)
            row["seconds"] = time.perf_counter() - t_epoch
            row["data_seconds"] = data_seconds
            state.history.append(row)
            state.epoch += 1
            epoch = state.epoch
            if epoch % max(config.checkpoint_every, 1) == 0 or epoch == config.epochs or state.stopped_early:
                _save_state(session, state)
            write_log(session.log_path, state.history)
            if on_epoch is not None:
                on_epoch(dict(row))


def _train_epoch(config: TrainConfig, session: Session, state: RunState,
                 progress: Progress | None) -> tuple[dict[str, Any], float]:
    """One epoch of steps: ``(its log row without validation and time, seconds spent drawing batches)``."""
    import torch

    epoch, model, device = state.epoch, session.model, session.device
    optimizer, scheduler, scaler, loss_fn = session.optimizer, session.scheduler, session.scaler, session.loss_fn
    data_seconds = 0.0
    model.train()
    losses = []
    for step in range(session.steps_per_epoch):
        t_data = time.perf_counter()
        x, y, state.synthetic_index = session.maker.batch(state.rng, config.batch_size, state.synthetic_index)
        data_seconds += time.perf_counter() - t_data
        xb = torch.from_numpy(x).to(device)
        yb = torch.from_numpy(y).unsqueeze(1).to(device)
        optimizer.zero_grad(set_to_none=True)
        if session.use_amp:
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                loss = loss_fn(model(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        scheduler.step()
        state.global_step += 1
        losses.append(float(loss.detach()))
        if progress is not None:
            message = (f"epoch {epoch + 1}/{config.epochs} step {step + 1}/{session.steps_per_epoch} "
                       f"loss {np.mean(losses):.4f}")
            if progress(state.global_step / max(session.total_steps, 1), message) is False:
                raise CancelledError(
                    f"training cancelled in epoch {epoch + 1}",
                    f"continue with resume (--resume) from the checkpoint of epoch {epoch} in "
                    f"{session.checkpoint_path.parent}" if epoch else None)
    row: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step,
                           "learning_rate": float(optimizer.param_groups[0]["lr"]),
                           "train_loss": float(np.mean(losses)) if losses else float("nan")}
    return row, data_seconds


def _validate(config: TrainConfig, session: Session, state: RunState, row: dict[str, Any]) -> None:
    """Dice per class on every validation set into ``row``; keep the best weights by the first set's mean Dice,
    count validations without improvement and stop early after ``patience`` of them."""
    model = session.model
    monitor = session.validation_sets[0][0]
    for kind, vset in session.validation_sets:
        predictions = _predict_samples(model, vset, session.spatial_dims, session.patch, session.device,
                                       session.use_amp, config.batch_size)
        per_class = _dice_per_class(predictions, vset, session.classes)
        prefix = "val" if kind == "real-development" else "synthetic_val"
        row[f"{prefix}_dice_mean"] = _mean_score(per_class)
        for name, value in per_class.items():
            row[f"{prefix}_dice_{name}"] = value
    score = row["val_dice_mean" if monitor == "real-development" else "synthetic_val_dice_mean"]
    if not math.isnan(score) and score > state.best_score + config.min_delta:
        state.best_score, state.best_epoch, state.bad_validations = score, state.epoch + 1, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    else:
        state.bad_validations += 1
        if config.patience is not None and state.bad_validations >= config.patience:
            state.stopped_early = True
    model.train()


def _save_state(session: Session, state: RunState) -> None:
    """Write the checkpoint: everything :func:`start_state` needs to continue exactly where the run is."""
    import torch

    save_checkpoint(session.checkpoint_path, {
        "format": CHECKPOINT_FORMAT, "config": json.dumps(session.fingerprint), "epoch": state.epoch,
        "global_step": state.global_step, "synthetic_index": state.synthetic_index,
        "model": session.model.state_dict(), "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(), "scaler": session.scaler.state_dict(),
        "numpy_rng": json.dumps(state.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "best_score": state.best_score, "best_epoch": state.best_epoch, "best_state": state.best_state,
        "bad_validations": state.bad_validations, "stopped_early": state.stopped_early,
        "history": json.dumps(state.history)})
