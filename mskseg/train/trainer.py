"""Training: one function, :func:`train`, from labelled files and/or a synthetic generator to a model card.

What a run does, in order:

1. Resolve the recipe: a base card (``model_card``, or ``fine_tune_from``) gives task, dimensions, input
   preparation, classes and architecture; explicit :class:`TrainConfig` fields override it; without a card,
   a small 2D U-Net (``unet-small``) on the data's own spacing.
2. Check the output folder BEFORE any work: writable, no earlier results unless ``overwrite`` (or ``resume``).
3. Read the labelled cases (:mod:`mskseg.train.data`), split them by case (hold-out or k-fold), prepare
   slices/volumes; build the synthetic generator and its held-out validation samples (indices from
   :data:`HELD_OUT_INDEX` on, never used for training).
4. Train with Dice + cross-entropy (MONAI ``DiceCELoss``, weights settable), AdamW, a per-step cosine or poly
   learning rate, mixed precision on CUDA, augmentation; validate every ``validate_every`` epochs (Dice per
   class); keep the best weights; stop early after ``patience`` validations without improvement.
5. After every epoch write ``checkpoint.pt`` (model, optimizer, scheduler, scaler, random states, counters,
   best weights, history) and ``training_log.csv``; ``resume=True`` continues from the checkpoint and gives
   exactly the weights an uninterrupted run gives (same machine, same thread count).
6. Write the best weights (safetensors, sha256) and a schema-valid model card beside them.

Reproducibility: ``seed`` seeds torch, the numpy Generator that draws batches and augmentations, the case
split, and the synthetic generator (sample ``i`` is drawn from ``(seed, i)``); with ``deterministic=True``
torch's deterministic algorithms are switched on for the run (and restored afterwards). The number of CPU
threads is left as the caller set it (``torch.set_num_threads``); results can differ between thread counts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CancelledError, ModelCardError, MSKSegError, OutputExistsError
from ..io.common import Labels
from ..engine import forward_logits
from . import data as D
from .card_writer import draft_card, measure_inference, training_section, validation_section
from .checkpoints import CHECKPOINT_FORMAT, config_fingerprint, load_checkpoint, save_checkpoint, write_log
from .data import HELD_OUT_INDEX

if TYPE_CHECKING:
    import torch

    from ..models.cards import ModelCard

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "training_log.csv"

#: Named architectures for ``--architecture``; any registered builder can be given as {"name", "args"} too.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "unet-tiny": {"name": "monai.UNet", "args": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 0}},
    "unet-small": {"name": "monai.UNet",
                   "args": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}},
    "unet-medium": {"name": "monai.UNet",
                    "args": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}},
}
DEFAULT_ARCHITECTURE = "unet-small"
SCHEDULERS = ("cosine", "poly", "constant")

#: Parameter-name patterns of the encoder (down path and bottleneck) per architecture, for ``freeze_encoder``.
ENCODER_PATTERNS: dict[str, str] = {
    "monai.UNet": r"^model(\.1\.submodule)*\.0\.|^model(\.1\.submodule)+\.(?!\d)",
    "monai.BasicUNet": r"^(conv_0|down_\d+)\.",
    "monai.DynUNet": r"^(input_block|downsamples|bottleneck)\.",
    "monai.SegResNet": r"^(convInit|down_layers)\.",
}

Progress = Callable[[float, str], "bool | None"]


@dataclass
class TrainConfig:
    """Everything a training run needs. Fields left None come from the base card, else from defaults.

    Data:
        data: ``--data``: a folder (``images/`` + ``labels/``) or a CSV manifest; None for synthetic only.
        labels: label value -> class name for label files that carry no names; with no card, these are the
            model's classes (in this numbering).
        synthetic: name of a registered synthetic generator (:func:`mskseg.train.data.synthetic_sources`).
        synthetic_fraction: share of each batch drawn from the generator (default 1.0 without ``data``,
            0.5 with both).
        synthetic_validation_samples: held-out generator samples to validate on.
        synthetic_pool: 0: a new generator sample for every draw; N > 0: draw from samples 0..N-1, each
            generated once and kept (augmentation still varies them). Use a pool on CPU when the generator is
            slow (an L3 phantom takes about 0.5 s; a batch of 8 fresh ones costs more than the network step).
        only_labelled_slices: 2D/2.5D: train on slices that hold labels only.

    Recipe (override the base card):
        model_card: a card (path, name or :class:`ModelCard`) whose recipe to train from scratch.
        fine_tune_from: a card whose weights (sha256-checked) to start from; its recipe is the base.
        freeze_encoder: with ``fine_tune_from``: train the decoder only.
        task, dimensions ("2d", "2.5d", "3d"), context_slices, spacing_mm (a list, or "own" for the image's
        own spacing), normalisation, window, patch_size, architecture (a name of :data:`ARCHITECTURES` or
        ``{"name", "args"}``), modality.
        name, title, description, version, licence: of the new card.

    Optimisation:
        epochs, steps_per_epoch (default: one pass over the training slices, or 100 steps for synthetic data
        only), batch_size, learning_rate, weight_decay, scheduler ("cosine", "poly", "constant"),
        dice_weight, ce_weight, augmentation, foreground_probability (share of patches centred on a label).

    Validation:
        folds, fold: k-fold cross-validation by case (folds >= 2), else ``validation_fraction`` of the cases
        held out; validate_every (epochs); patience (validations without improvement before stopping; None:
        never stop early); min_delta.

    Run:
        out_dir, seed, deterministic, device ("auto", "cpu", "cuda", ...), amp (CUDA only), resume,
        overwrite, checkpoint_every (epochs).
    """

    out_dir: str | Path
    name: str = "my-model"
    data: str | Path | None = None
    labels: Labels | None = None
    synthetic: str | None = None
    synthetic_fraction: float | None = None
    synthetic_validation_samples: int = 16
    synthetic_pool: int = 0
    only_labelled_slices: bool = True
    model_card: Any = None
    fine_tune_from: Any = None
    freeze_encoder: bool = False
    task: str | None = None
    dimensions: str | None = None
    context_slices: int | None = None
    spacing_mm: Sequence[float] | str | None = None
    normalisation: str | None = None
    window: Sequence[float] | None = None
    patch_size: Sequence[int] | None = None
    architecture: str | Mapping[str, Any] | None = None
    modality: str | None = None
    title: str | None = None
    description: str | None = None
    version: str = "1.0.0"
    licence: str = "unspecified"
    epochs: int = 50
    steps_per_epoch: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    augmentation: D.Augmentation = field(default_factory=D.Augmentation)
    foreground_probability: float = 0.5
    folds: int = 1
    fold: int = 0
    validation_fraction: float = 0.2
    validate_every: int = 1
    patience: int | None = 10
    min_delta: float = 0.0
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"
    amp: bool = True
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 1


@dataclass
class TrainResult:
    """What a run produced: the card and weights, the log, and the figures behind them."""

    card_path: Path
    weights_path: Path
    log_path: Path
    checkpoint_path: Path
    card: ModelCard
    epochs_run: int
    best_epoch: int | None
    best_score: float | None
    stopped_early: bool
    history: list[dict[str, Any]]
    seconds: float


# ============================================================================================== recipe
def _resolve_card(spec: Any) -> ModelCard | None:
    from ..models import resolve_model_card

    if spec is None:
        return None
    return resolve_model_card(spec)


def resolve_architecture(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"name", "args"}`` for a name of :data:`ARCHITECTURES`, a registered builder name, a JSON text or a dict.

    Raises:
        ModelCardError: unknown name or malformed spec (the known names are listed).
    """
    from ..models.networks import NETWORKS

    if spec is None:
        spec = DEFAULT_ARCHITECTURE
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ModelCardError(f"architecture JSON is not valid: {exc}",
                                     'e.g. {"name": "monai.UNet", "args": {"channels": [16, 32, 64], '
                                     '"strides": [2, 2]}}') from exc
        elif text in ARCHITECTURES:
            return json.loads(json.dumps(ARCHITECTURES[text]))
        elif text in NETWORKS:
            return {"name": text, "args": {}}
        else:
            raise ModelCardError(f"architecture '{text}' is unknown",
                                 f"use one of {', '.join(ARCHITECTURES)} or a network name "
                                 f"({', '.join(sorted(NETWORKS))}), or JSON {{\"name\": ..., \"args\": {{...}}}}")
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ModelCardError(f"architecture {spec!r} must be {{'name': ..., 'args': {{...}}}}")
    return {"name": str(spec["name"]), "args": dict(spec.get("args", {}))}


def _input_spec(config: TrainConfig, base: ModelCard | None, dimensions: str,
                picture_data: bool) -> dict[str, Any]:
    spec: dict[str, Any] = dict(base.input) if base is not None else {}
    if config.spacing_mm is not None:
        spec["spacing_mm"] = None if config.spacing_mm == "own" else [float(s) for s in config.spacing_mm]
    spec.setdefault("spacing_mm", None)
    if config.normalisation is not None:
        spec["normalisation"] = config.normalisation
    spec.setdefault("normalisation", "window")
    if config.window is not None:
        spec["window"] = [float(w) for w in config.window]
    if spec["normalisation"] == "window" and "window" not in spec:
        spec["window"] = [0.0, 255.0] if picture_data else [-250.0, 250.0]
    if spec["normalisation"] != "window":
        spec.pop("window", None)
    if config.context_slices is not None:
        spec["context_slices"] = int(config.context_slices)
    if dimensions == "2.5d":
        spec.setdefault("context_slices", 1)
        spec["channels"] = 2 * int(spec["context_slices"]) + 1
    else:
        spec.pop("context_slices", None)
        spec.setdefault("channels", 1)
        if base is not None and base.dimensions != dimensions:
            spec["channels"] = 1
    if config.patch_size is not None:
        spec["patch_size"] = [int(p) for p in config.patch_size]
    return spec


def _check_output_folder(config: TrainConfig) -> dict[str, Path]:
    out = Path(config.out_dir).expanduser()
    paths = {"card": out / f"{config.name}.card.json", "weights": out / f"{config.name}.safetensors",
             "log": out / LOG_NAME, "checkpoint": out / CHECKPOINT_NAME}
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mskseg-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise MSKSegError(f"cannot write to the output folder {out}: {exc.strerror or exc}",
                          "choose a folder you may write to (--out)") from exc
    if config.resume:
        if not paths["checkpoint"].is_file():
            raise MSKSegError(f"nothing to resume: {paths['checkpoint']} does not exist",
                              "start the run without --resume (or point --out at the interrupted run)")
        if paths["card"].exists() and not config.overwrite:
            raise OutputExistsError(f"the run in {out} has finished ({paths['card'].name} exists); nothing to resume",
                                    "use the card as it is, or pass --overwrite to finish it again")
    elif not config.overwrite:
        existing = [p.name for p in paths.values() if p.exists()]
        if existing:
            raise OutputExistsError(f"{out} already holds results of a run ({', '.join(existing)})",
                                    "choose another --out, pass --resume to continue an interrupted run, or "
                                    "--overwrite to replace them")
    return paths


def _default_name_check(name: str) -> None:
    if not re.match(r"^[a-z0-9][a-z0-9._-]*$", name):
        raise MSKSegError(f"model name '{name}' is not allowed",
                          "use lower-case letters, digits, '.', '_' and '-' (e.g. my-l3-model)")


# ============================================================================================== data
@dataclass
class _Dataset:
    train: list[D.Sample]
    validation: list[D.Sample]
    train_cases: list[str]
    validation_cases: list[str]
    formats: list[str]
    root: str | None


def _collect_classes(config: TrainConfig, base: ModelCard | None, cases: Sequence[D.LabelledCase],
                     synthetic: D.SyntheticData | None) -> Labels:
    if config.labels:
        return {int(v): str(n) for v, n in sorted(config.labels.items())}
    if base is not None:
        return dict(base.labels)
    named: dict[str, int] = {}
    for case in cases:
        for value, name in sorted((case.labels or {}).items()):
            named.setdefault(name, int(value))
    if not named and synthetic is not None:
        return dict(sorted(synthetic.labels.items()))
    if not named:
        raise MSKSegError("the label maps carry no class names and none were given",
                          "name the label values (--labels 1=skeletal_muscle,2=subcutaneous_fat,...), use "
                          ".seg.nrrd/DICOM-SEG labels, or a model card (--model)")
    values = list(named.values())
    if len(set(values)) != len(values):  # the same value means different classes in different files
        return {i + 1: n for i, n in enumerate(named)}
    return {v: n for n, v in sorted(named.items(), key=lambda item: item[1])}


def _read_cases(paths: Sequence[D.CasePaths], labels: Labels | None, progress: Progress | None) -> list[D.LabelledCase]:
    cases = []
    for n, p in enumerate(paths):
        if progress is not None and progress(0.0, f"reading case {n + 1}/{len(paths)}: {p.case}") is False:
            raise CancelledError("training cancelled while reading the data")
        cases.append(D.read_case(p, labels))
    return cases


def _split(config: TrainConfig, names: Sequence[str]) -> tuple[list[str], list[str]]:
    if config.folds and config.folds >= 2:
        return D.kfold_split(names, config.folds, config.fold, config.seed)
    return D.holdout_split(names, config.validation_fraction, config.seed)


def _default_patch(samples: Sequence[np.ndarray], spatial_dims: int) -> list[int]:
    cap = 256 if spatial_dims == 2 else 96
    sizes = np.max([s.shape[-spatial_dims:] for s in samples], axis=0)
    return [int(min(cap, 16 * math.ceil(int(s) / 16))) for s in sizes]


# ============================================================================================== model
def encoder_parameter_names(model: torch.nn.Module, architecture: str) -> list[str]:
    """Names of the encoder's parameters (down path and bottleneck) of a network built as ``architecture``.

    Raises:
        MSKSegError: the architecture has no known encoder layout (see :data:`ENCODER_PATTERNS`).
    """
    pattern = ENCODER_PATTERNS.get(architecture)
    if pattern is None:
        raise MSKSegError(f"freezing the encoder is not supported for architecture {architecture}",
                          f"supported: {', '.join(ENCODER_PATTERNS)}; or fine-tune without --freeze-encoder")
    regex = re.compile(pattern)
    return [name for name, _ in model.named_parameters() if regex.search(name)]


def load_pretrained(model: torch.nn.Module, card: ModelCard) -> tuple[list[str], list[str]]:
    """Load the card's weights (sha256 checked first) into ``model`` where names and shapes fit.

    Parameters whose shape differs (an output layer for other classes) keep their fresh initialisation.

    Returns:
        ``(loaded, skipped)`` parameter names.

    Raises:
        ChecksumError: the weights file does not match the card.
        ModelCardError: missing weights file, or no parameter fits the model.
    """
    from ..models import load_weights

    state = load_weights(card)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    skipped = sorted(set(own) - set(fitting))
    if not fitting:
        raise ModelCardError(f"none of the weights of '{card.name}' ({card.weights_path}) fit the network",
                             "fine-tune with the card's own architecture (leave --architecture out)")
    model.load_state_dict(fitting, strict=False)
    return sorted(fitting), skipped


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
class _BatchMaker:
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


# ============================================================================================== train
def train(config: TrainConfig, progress: Progress | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a segmentation network and write its weights, model card and training log to ``config.out_dir``.

    Args:
        config: the run (see :class:`TrainConfig`).
        progress: ``progress(fraction, message)`` after each step; returning False stops the run
            (:class:`CancelledError`) with the last epoch's checkpoint kept for ``resume``.
        on_epoch: called with each epoch's log row (epoch, loss, learning rate, validation Dice, seconds).

    Returns:
        A :class:`TrainResult`; ``result.card`` loads with :func:`mskseg.models.load_model_card`.

    Raises:
        MSKSegError: bad data (none found, label/grid mismatch, unnamed labels), unknown architecture or
            generator, unwritable or existing output (without ``overwrite``/``resume``), resume with other
            settings; CancelledError when cancelled.
    """
    import torch

    t_start = time.perf_counter()
    _default_name_check(config.name)
    if config.scheduler not in SCHEDULERS:
        raise MSKSegError(f"scheduler '{config.scheduler}' is unknown", f"use one of {', '.join(SCHEDULERS)}")
    if config.data is None and config.synthetic is None:
        raise MSKSegError("no training data: give labelled data (--data) and/or a synthetic generator (--synthetic)",
                          D.CONVENTION_HINT)
    if config.freeze_encoder and config.fine_tune_from is None:
        raise MSKSegError("freezing the encoder needs pre-trained weights", "add --fine-tune CARD")
    if config.epochs < 0 or config.batch_size < 1:
        raise MSKSegError(f"epochs ({config.epochs}) must be >= 0 and batch size ({config.batch_size}) >= 1")
    paths = _check_output_folder(config)

    fine_tune = _resolve_card(config.fine_tune_from)
    base = fine_tune or _resolve_card(config.model_card)
    dimensions = config.dimensions or (base.dimensions if base is not None else "2d")
    if dimensions not in ("2d", "2.5d", "3d"):
        raise MSKSegError(f"dimensions '{dimensions}' is unknown", "use 2d, 2.5d or 3d")
    spatial_dims = D.spatial_dims_of(dimensions)
    if fine_tune is not None and config.architecture is not None and \
            resolve_architecture(config.architecture) != fine_tune.architecture:
        raise MSKSegError("fine-tuning keeps the card's architecture; --architecture must be left out",
                          f"the card '{fine_tune.name}' uses {fine_tune.architecture['name']}")
    architecture = resolve_architecture(config.architecture) if (config.architecture is not None or base is None) \
        else json.loads(json.dumps(base.architecture))
    _check_architecture(architecture, spatial_dims)

    # ------------------------------------------------------------------ data
    case_paths = D.discover_cases(config.data) if config.data is not None else []
    picture_data = bool(case_paths) and all(str(p.image).lower().endswith(D.PICTURE_SUFFIXES) for p in case_paths)
    input_spec = _input_spec(config, base, dimensions, picture_data)
    synthetic = D.build_synthetic(config.synthetic, input_spec, config.seed) if config.synthetic else None
    cases = _read_cases(case_paths, config.labels or (base.labels if base is not None else None), progress)
    classes = _collect_classes(config, base, cases, synthetic)
    class_values = {name: value for value, name in classes.items()}
    names = [c.case for c in cases]
    train_names, val_names = _split(config, names) if names else ([], [])
    samples: dict[str, list[D.Sample]] = {}
    for case in cases:
        samples[case.case] = D.prepare_case(case, input_spec, dimensions, class_values,
                                            only_labelled=config.only_labelled_slices)
    train_samples = [s for n in train_names for s in samples[n]]
    val_samples = [s for n in val_names for s in samples[n]]
    if cases and not train_samples:
        raise MSKSegError("none of the training cases has a labelled slice",
                          "check that the label maps are not empty (or pass --all-slices)")
    synthetic_lookup = None
    synthetic_val: list[D.Sample] = []
    if synthetic is not None:
        synthetic_lookup = D.class_lookup(synthetic.labels, class_values, f"synthetic generator '{synthetic.name}'",
                                          strict=False)
        for i in range(config.synthetic_validation_samples):
            image, label = D.synthetic_sample(synthetic, HELD_OUT_INDEX + i, input_spec, spatial_dims,
                                              synthetic_lookup)
            synthetic_val.append(D.Sample(image.astype(np.float16), label, f"synthetic-{HELD_OUT_INDEX + i}"))
    if "patch_size" not in input_spec:
        pool = [s.image for s in train_samples] or [s.image for s in synthetic_val]
        if not pool and synthetic is not None:
            pool = [D.synthetic_sample(synthetic, 0, input_spec, spatial_dims, synthetic_lookup)[0]]
        input_spec["patch_size"] = _default_patch(pool, spatial_dims)
    patch = input_spec["patch_size"]
    fraction = config.synthetic_fraction
    if fraction is None:
        fraction = 0.0 if synthetic is None else (1.0 if not train_samples else 0.5)
    if synthetic is None and fraction > 0:
        raise MSKSegError("--synthetic-fraction needs a generator (--synthetic NAME)")

    # ------------------------------------------------------------------ card draft and network
    from ..models import ModelCard, build_network

    card_draft = draft_card(config, base, dimensions, input_spec, classes, architecture)
    draft = ModelCard.from_dict(card_draft, paths["card"])
    device = _device(config.device)
    torch.manual_seed(config.seed)
    model = build_network(draft)
    from ..models.networks import network_args

    card_draft["architecture"]["args"] = network_args(draft)
    pretrained_note = None
    if fine_tune is not None:
        loaded, skipped = load_pretrained(model, fine_tune)
        pretrained_note = {"name": fine_tune.name, "version": fine_tune.version,
                           "sha256": fine_tune.weights["sha256"], "parameters_loaded": len(loaded),
                           "parameters_reinitialised": skipped}
        if skipped:
            logger.info("fine-tuning from %s: %d parameters re-initialised (%s)", fine_tune.name, len(skipped),
                        ", ".join(skipped[:4]))
    frozen: list[str] = []
    if config.freeze_encoder:
        frozen = encoder_parameter_names(model, architecture["name"])
        for name, parameter in model.named_parameters():
            if name in set(frozen):
                parameter.requires_grad_(False)
    model.to(device)

    augmentation = config.augmentation
    if any(("left" in n or "right" in n) for n in classes.values()) and -1 in augmentation.flip_axes:
        augmentation = D.Augmentation(**{**augmentation.__dict__,
                                         "flip_axes": tuple(a for a in augmentation.flip_axes if a != -1)})
        logger.info("left-right flips switched off: class names say left/right")
    maker = _BatchMaker(train_samples, synthetic, fraction, synthetic_lookup, input_spec, spatial_dims, patch,
                        augmentation, config.foreground_probability, config.synthetic_pool)
    steps_per_epoch = config.steps_per_epoch or (math.ceil(len(train_samples) / config.batch_size)
                                                 if train_samples else 100)
    total_steps = steps_per_epoch * config.epochs

    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True,
                         lambda_dice=float(config.dice_weight), lambda_ce=float(config.ce_weight))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _LearningRate(config.scheduler, total_steps))
    use_amp = bool(config.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    # ------------------------------------------------------------------ state (fresh or resumed)
    rng = np.random.default_rng(config.seed)
    fingerprint = config_fingerprint(config)
    start_epoch, global_step, synthetic_index = 0, 0, 0
    best_score, best_epoch, best_state, bad_validations = -math.inf, None, None, 0
    history: list[dict[str, Any]] = []
    stopped_early = False
    if config.resume:
        state = load_checkpoint(paths["checkpoint"])
        saved = json.loads(state["config"])
        differences = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        if differences:
            raise MSKSegError(f"cannot resume: settings differ from the interrupted run ({', '.join(differences)})",
                              "resume with exactly the settings of the first run, or start a new run")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        synthetic_index = int(state["synthetic_index"])
        best_score = float(state["best_score"])
        best_epoch = state["best_epoch"]
        best_state = state["best_state"]
        bad_validations = int(state["bad_validations"])
        stopped_early = bool(state["stopped_early"])
        history = json.loads(state["history"])
        logger.info("resuming %s after epoch %d", config.name, start_epoch)

    validation_sets = []
    if val_samples:
        validation_sets.append(("real-development", val_samples))
    if synthetic_val:
        validation_sets.append(("synthetic-held-out", synthetic_val))
    monitor = validation_sets[0][0] if validation_sets else None

    # ------------------------------------------------------------------ loop
    elapsed_before = sum(float(h.get("seconds", 0.0)) for h in history)
    with _deterministic(config.deterministic):
        epoch = start_epoch
        while epoch < config.epochs and not stopped_early:
            t_epoch = time.perf_counter()
            data_seconds = 0.0
            model.train()
            losses = []
            for step in range(steps_per_epoch):
                t_data = time.perf_counter()
                x, y, synthetic_index = maker.batch(rng, config.batch_size, synthetic_index)
                data_seconds += time.perf_counter() - t_data
                xb = torch.from_numpy(x).to(device)
                yb = torch.from_numpy(y).unsqueeze(1).to(device)
                optimizer.zero_grad(set_to_none=True)
                if use_amp:
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
                global_step += 1
                losses.append(float(loss.detach()))
                if progress is not None:
                    message = (f"epoch {epoch + 1}/{config.epochs} step {step + 1}/{steps_per_epoch} "
                               f"loss {np.mean(losses):.4f}")
                    if progress(global_step / max(total_steps, 1), message) is False:
                        raise CancelledError(
                            f"training cancelled in epoch {epoch + 1}",
                            f"continue with resume (--resume) from the checkpoint of epoch {epoch} in "
                            f"{paths['checkpoint'].parent}" if epoch else None)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": global_step,
                                   "learning_rate": float(optimizer.param_groups[0]["lr"]),
                                   "train_loss": float(np.mean(losses)) if losses else float("nan")}
            validate = bool(validation_sets) and ((epoch + 1) % max(config.validate_every, 1) == 0
                                                  or epoch + 1 == config.epochs)
            if validate:
                for kind, vset in validation_sets:
                    predictions = _predict_samples(model, vset, spatial_dims, patch, device, use_amp,
                                                   config.batch_size)
                    per_class = _dice_per_class(predictions, vset, classes)
                    prefix = "val" if kind == "real-development" else "synthetic_val"
                    row[f"{prefix}_dice_mean"] = _mean_score(per_class)
                    for name, value in per_class.items():
                        row[f"{prefix}_dice_{name}"] = value
                score = row["val_dice_mean" if monitor == "real-development" else "synthetic_val_dice_mean"]
                if not math.isnan(score) and score > best_score + config.min_delta:
                    best_score, best_epoch, bad_validations = score, epoch + 1, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                else:
                    bad_validations += 1
                    if config.patience is not None and bad_validations >= config.patience:
                        stopped_early = True
                model.train()
            row["seconds"] = time.perf_counter() - t_epoch
            row["data_seconds"] = data_seconds
            history.append(row)
            epoch += 1
            if epoch % max(config.checkpoint_every, 1) == 0 or epoch == config.epochs or stopped_early:
                save_checkpoint(paths["checkpoint"], {
                    "format": CHECKPOINT_FORMAT, "config": json.dumps(fingerprint), "epoch": epoch,
                    "global_step": global_step, "synthetic_index": synthetic_index,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "best_score": best_score, "best_epoch": best_epoch, "best_state": best_state,
                    "bad_validations": bad_validations, "stopped_early": stopped_early,
                    "history": json.dumps(history)})
            write_log(paths["log"], history)
            if on_epoch is not None:
                on_epoch(dict(row))
    if stopped_early:
        logger.info("stopped early after epoch %d: no improvement for %d validations", len(history), bad_validations)

    # ------------------------------------------------------------------ outputs
    final_state = best_state if best_state is not None else model.state_dict()
    from ..models import save_model_card, save_weights

    sha = save_weights(final_state, paths["weights"], overwrite=True)
    model.load_state_dict(final_state)
    timing = measure_inference(model, input_spec, spatial_dims, device, use_amp)
    seconds = elapsed_before + (time.perf_counter() - t_start)
    card_draft["weights"] = {"file": paths["weights"].name, "sha256": sha, "format": "safetensors"}
    card_draft["training"] = training_section(
        config, cases, train_names, val_names, train_samples, val_samples, synthetic, fraction, synthetic_index,
        len(synthetic_val), history, best_epoch, stopped_early, steps_per_epoch, global_step, augmentation,
        pretrained_note, frozen, device, seconds, case_paths, maker)
    card_draft["validation"] = validation_section(history, best_epoch, classes, val_samples, val_names, config,
                                                   synthetic, len(synthetic_val))
    card_draft["timing"] = timing
    # Existing results were refused before training (unless overwrite): the card is this run's to write.
    card = save_model_card(card_draft, paths["card"], overwrite=True)
    return TrainResult(paths["card"], paths["weights"], paths["log"], paths["checkpoint"], card, len(history),
                       best_epoch, None if best_score == -math.inf else best_score, stopped_early, history, seconds)


def _check_architecture(architecture: Mapping[str, Any], spatial_dims: int) -> None:
    """Build the architecture once with placeholder channels so a bad spec fails before the data is read."""
    from ..models.networks import NETWORKS, builder_parameters, build_network_from_architecture

    args = dict(architecture["args"])
    builder = NETWORKS.get(architecture["name"])
    accepted = builder_parameters(builder) if builder is not None else None
    for key, value in (("spatial_dims", spatial_dims), ("in_channels", 1), ("out_channels", 2)):
        if accepted is None or key in accepted:
            args.setdefault(key, value)
    build_network_from_architecture(architecture["name"], args, "--architecture")


def _device(preference: str) -> torch.device:
    import torch

    from ..engine import choose_device

    return torch.device(choose_device(preference).device)
