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
from . import data as D
from .card_writer import draft_card, measure_inference, training_section, validation_section
from .data import HELD_OUT_INDEX
from .loop import BatchMaker, RunState, Session, run_epochs, start_session, start_state

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
class _Recipe:
    """The resolved recipe of a run: base card (the fine-tuned one, if any), dimensions and architecture."""

    fine_tune: ModelCard | None
    base: ModelCard | None
    dimensions: str
    spatial_dims: int
    architecture: dict[str, Any]


@dataclass
class _Dataset:
    """The prepared data of a run: cases and their split, samples, the synthetic generator, patch and mix."""

    case_paths: list[D.CasePaths]
    input_spec: dict[str, Any]
    synthetic: D.SyntheticData | None
    cases: list[D.LabelledCase]
    classes: Labels
    train_names: list[str]
    val_names: list[str]
    train_samples: list[D.Sample]
    val_samples: list[D.Sample]
    synthetic_lookup: np.ndarray | None
    synthetic_val: list[D.Sample]
    patch: list[int]
    fraction: float


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
    t_start = time.perf_counter()
    _check_request(config)
    paths = _check_output_folder(config)
    recipe = _resolve_recipe(config)
    dataset = _prepare_data(config, recipe, progress)
    card_draft, model, device, pretrained_note, frozen = _build_model(config, recipe, dataset, paths)

    augmentation = _augmentation_for(config.augmentation, dataset.classes)
    maker = BatchMaker(dataset.train_samples, dataset.synthetic, dataset.fraction, dataset.synthetic_lookup,
                       dataset.input_spec, recipe.spatial_dims, dataset.patch, augmentation,
                       config.foreground_probability, config.synthetic_pool)
    steps_per_epoch = config.steps_per_epoch or (math.ceil(len(dataset.train_samples) / config.batch_size)
                                                 if dataset.train_samples else 100)
    validation_sets = []
    if dataset.val_samples:
        validation_sets.append(("real-development", dataset.val_samples))
    if dataset.synthetic_val:
        validation_sets.append(("synthetic-held-out", dataset.synthetic_val))
    session = start_session(config, model, device, maker, steps_per_epoch, recipe.spatial_dims, dataset.patch,
                            dataset.classes, validation_sets, paths)
    state = start_state(config, session)
    elapsed_before = sum(float(h.get("seconds", 0.0)) for h in state.history)
    run_epochs(config, session, state, progress, on_epoch)
    if state.stopped_early:
        logger.info("stopped early after epoch %d: no improvement for %d validations", len(state.history),
                    state.bad_validations)
    return _write_outputs(config, paths, dataset, session, state, card_draft, augmentation, pretrained_note,
                          frozen, elapsed_before, t_start)


def _check_request(config: TrainConfig) -> None:
    """Refuse a run whose settings cannot work, before anything is read or written."""
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


def _resolve_recipe(config: TrainConfig) -> _Recipe:
    """The base card (``fine_tune_from`` or ``model_card``), the dimensions and the architecture; the
    architecture is built once here so that a bad one fails before the data is read."""
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
    return _Recipe(fine_tune, base, dimensions, spatial_dims, architecture)


def _prepare_data(config: TrainConfig, recipe: _Recipe, progress: Progress | None) -> _Dataset:
    """Read and split the labelled cases, prepare their samples, build the synthetic generator and its
    held-out validation samples, and settle the patch size and the synthetic share of each batch."""
    base, dimensions, spatial_dims = recipe.base, recipe.dimensions, recipe.spatial_dims
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
    synthetic_lookup, synthetic_val = _synthetic_validation(config, synthetic, class_values, input_spec,
                                                            spatial_dims)
    if "patch_size" not in input_spec:
        pool = [s.image for s in train_samples] or [s.image for s in synthetic_val]
        if not pool and synthetic is not None:
            pool = [D.synthetic_sample(synthetic, 0, input_spec, spatial_dims, synthetic_lookup)[0]]
        input_spec["patch_size"] = _default_patch(pool, spatial_dims)
    fraction = config.synthetic_fraction
    if fraction is None:
        fraction = 0.0 if synthetic is None else (1.0 if not train_samples else 0.5)
    if synthetic is None and fraction > 0:
        raise MSKSegError("--synthetic-fraction needs a generator (--synthetic NAME)")
    return _Dataset(case_paths, input_spec, synthetic, cases, classes, train_names, val_names, train_samples,
                    val_samples, synthetic_lookup, synthetic_val, input_spec["patch_size"], fraction)


def _synthetic_validation(config: TrainConfig, synthetic: D.SyntheticData | None, class_values: Mapping[str, int],
                          input_spec: Mapping[str, Any], spatial_dims: int
                          ) -> tuple[np.ndarray | None, list[D.Sample]]:
    """``(lookup from generator labels to class values, held-out validation samples)`` of the generator:
    ``(None, [])`` without one. The samples are drawn from indices :data:`HELD_OUT_INDEX` on."""
    synthetic_lookup = None
    synthetic_val: list[D.Sample] = []
    if synthetic is not None:
        synthetic_lookup = D.class_lookup(synthetic.labels, class_values, f"synthetic generator '{synthetic.name}'",
                                          strict=False)
        for i in range(config.synthetic_validation_samples):
            image, label = D.synthetic_sample(synthetic, HELD_OUT_INDEX + i, input_spec, spatial_dims,
                                              synthetic_lookup)
            synthetic_val.append(D.Sample(image.astype(np.float16), label, f"synthetic-{HELD_OUT_INDEX + i}"))
    return synthetic_lookup, synthetic_val


def _build_model(config: TrainConfig, recipe: _Recipe, dataset: _Dataset, paths: Mapping[str, Path]
                 ) -> tuple[dict[str, Any], torch.nn.Module, torch.device, dict[str, Any] | None, list[str]]:
    """The card draft and the network on its device, seeded by ``config.seed``, with the fine-tuned card's
    weights loaded and the encoder frozen when asked.

    Returns:
        ``(card draft, model, device, note on the pre-trained weights or None, frozen parameter names)``.
    """
    import torch

    from ..models import ModelCard, build_network
    from ..models.networks import network_args

    card_draft = draft_card(config, recipe.base, recipe.dimensions, dataset.input_spec, dataset.classes,
                            recipe.architecture)
    draft = ModelCard.from_dict(card_draft, paths["card"])
    device = _device(config.device)
    torch.manual_seed(config.seed)
    model = build_network(draft)
    card_draft["architecture"]["args"] = network_args(draft)
    pretrained_note = None
    fine_tune = recipe.fine_tune
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
        frozen = encoder_parameter_names(model, recipe.architecture["name"])
        for name, parameter in model.named_parameters():
            if name in set(frozen):
                parameter.requires_grad_(False)
    model.to(device)
    return card_draft, model, device, pretrained_note, frozen


def _augmentation_for(augmentation: D.Augmentation, classes: Labels) -> D.Augmentation:
    """``augmentation`` without left-right flips when class names say left/right."""
    if any(("left" in n or "right" in n) for n in classes.values()) and -1 in augmentation.flip_axes:
        augmentation = D.Augmentation(**{**augmentation.__dict__,
                                         "flip_axes": tuple(a for a in augmentation.flip_axes if a != -1)})
        logger.info("left-right flips switched off: class names say left/right")
    return augmentation


def _write_outputs(config: TrainConfig, paths: Mapping[str, Path], dataset: _Dataset, session: Session,
                   state: RunState, card_draft: dict[str, Any], augmentation: D.Augmentation,
                   pretrained_note: dict[str, Any] | None, frozen: list[str], elapsed_before: float,
                   t_start: float) -> TrainResult:
    """Write the best weights (the last ones when never validated) and the finished model card; the card's
    training time is ``elapsed_before`` (earlier parts of a resumed run) plus the time since ``t_start``."""
    from ..models import save_model_card, save_weights

    model, best_epoch = session.model, state.best_epoch
    final_state = state.best_state if state.best_state is not None else model.state_dict()
    sha = save_weights(final_state, paths["weights"], overwrite=True)
    model.load_state_dict(final_state)
    timing = measure_inference(model, dataset.input_spec, session.spatial_dims, session.device, session.use_amp)
    seconds = elapsed_before + (time.perf_counter() - t_start)
    card_draft["weights"] = {"file": paths["weights"].name, "sha256": sha, "format": "safetensors"}
    card_draft["training"] = training_section(
        config, dataset.cases, dataset.train_names, dataset.val_names, dataset.train_samples, dataset.val_samples,
        dataset.synthetic, dataset.fraction, state.synthetic_index, len(dataset.synthetic_val), state.history,
        best_epoch, state.stopped_early, session.steps_per_epoch, state.global_step, augmentation,
        pretrained_note, frozen, session.device, seconds, dataset.case_paths, session.maker)
    card_draft["validation"] = validation_section(state.history, best_epoch, dataset.classes, dataset.val_samples,
                                                  dataset.val_names, config, dataset.synthetic,
                                                  len(dataset.synthetic_val))
    card_draft["timing"] = timing
    # Existing results were refused before training (unless overwrite): the card is this run's to write.
    card = save_model_card(card_draft, paths["card"], overwrite=True)
    return TrainResult(paths["card"], paths["weights"], paths["log"], paths["checkpoint"], card,
                       len(state.history), best_epoch, None if state.best_score == -math.inf else state.best_score,
                       state.stopped_early, state.history, seconds)


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
