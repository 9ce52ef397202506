"""Model cards: what a model is, as data.

A model card is a JSON file (``<name>.card.json``) beside its weights file. It states the task, the classes
(label value -> class name, the names being keys of :mod:`mskseg.terminology`), how to prepare the input
(spacing, intensity window or z-score, 2.5D context slices, patch size), the network architecture and its
arguments, the weights file with its sha256, what data trained it, and the accuracy measured on what data.
The schema is ``model-card.schema.json`` next to this file; ``Resources/Models/README.md`` explains each field.

Cards are found (:func:`find_model_cards`) in, in this order:

1. the folders in the environment variable ``MSKSEG_MODELS_DIR`` (separated by ``os.pathsep``),
2. the extension's ``Resources/Models/`` folder,
3. ``mskseg/models/bundled/`` when the package carries one.

A card found earlier shadows a later card of the same ``name``, so users can replace a bundled model.
Only :mod:`json` and :mod:`jsonschema` are needed here: listing models never imports torch.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ModelCardError
from ..io.common import Labels, prepare_output

logger = logging.getLogger(__name__)

#: File name ending that marks a model card in a models folder.
CARD_SUFFIX = ".card.json"
#: Environment variable with extra model folders (``os.pathsep``-separated), searched first.
MODELS_DIR_ENV = "MSKSEG_MODELS_DIR"
SCHEMA_PATH = Path(__file__).with_name("model-card.schema.json")

_SPATIAL_DIMS = {"2d": 2, "2.5d": 2, "3d": 3}


@lru_cache(maxsize=1)
def model_card_schema() -> dict[str, Any]:
    """The model-card JSON Schema (draft 2020-12) as a dict."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ModelCard:
    """A validated model card. Build with :func:`load_model_card` or :meth:`ModelCard.from_dict`.

    The attributes mirror the card's JSON fields (see ``model-card.schema.json``); ``path`` is the card file,
    against which the weights file is resolved. ``data`` is the full card as read, for fields this class
    does not name.
    """

    name: str
    title: str
    task: str
    version: str
    description: str
    licence: str
    modality: str | list[str]
    dimensions: str
    input: dict[str, Any]
    classes: list[dict[str, Any]]
    architecture: dict[str, Any]
    weights: dict[str, Any]
    training: dict[str, Any]
    validation: list[dict[str, Any]]
    schema_version: str
    timing: dict[str, Any] | None = None
    references: list[Any] = field(default_factory=list)
    path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, card: Mapping[str, Any], path: str | Path | None = None) -> ModelCard:
        """Validate ``card`` (a dict as in the JSON file) and build a :class:`ModelCard`.

        Args:
            card: the card's fields.
            path: the card file it came from (weights are resolved relative to it); named in errors.

        Raises:
            ModelCardError: the card does not follow the schema or is inconsistent; the message names the
                field path (e.g. ``input.window``).
        """
        source = str(path) if path is not None else "model card"
        validate_model_card(card, source)
        data = copy.deepcopy(dict(card))
        return cls(
            name=data["name"], title=data["title"], task=data["task"], version=data["version"],
            description=data["description"], licence=data["licence"], modality=data["modality"],
            dimensions=data["dimensions"], input=data["input"], classes=data["classes"],
            architecture=data["architecture"], weights=data["weights"], training=data["training"],
            validation=data["validation"], schema_version=data["schema_version"], timing=data.get("timing"),
            references=data.get("references", []), path=Path(path).resolve() if path is not None else None,
            data=data,
        )

    @property
    def labels(self) -> Labels:
        """Label value -> class name, as every writer takes it (background 0 not listed)."""
        return {int(c["label"]): str(c["name"]) for c in sorted(self.classes, key=lambda c: c["label"])}

    @property
    def modalities(self) -> tuple[str, ...]:
        """The DICOM modalities the model expects, always as a tuple."""
        return (self.modality,) if isinstance(self.modality, str) else tuple(self.modality)

    @property
    def num_outputs(self) -> int:
        """Number of output channels the network needs: highest label + 1 (background is channel 0)."""
        return max(self.labels) + 1

    @property
    def spatial_dims(self) -> int:
        """2 for 2d and 2.5d models, 3 for 3d models."""
        return _SPATIAL_DIMS[self.dimensions]

    @property
    def context_slices(self) -> int:
        """Neighbouring slices on each side fed as channels (0 unless the model is 2.5d)."""
        return int(self.input.get("context_slices", 0))

    @property
    def weights_path(self) -> Path:
        """The weights file: ``weights.file`` relative to the card's folder (to the working folder without one)."""
        file = Path(self.weights["file"])
        if file.is_absolute() or self.path is None:
            return file
        return self.path.parent / file

    def to_dict(self) -> dict[str, Any]:
        """The card as a plain dict (a deep copy), ready for :func:`save_model_card`."""
        return copy.deepcopy(self.data)

    def to_json(self) -> str:
        """The card as indented JSON text, as :func:`save_model_card` writes it."""
        return json.dumps(self.data, indent=2, ensure_ascii=False) + "\n"

    def describe(self) -> str:
        """One line for listings: name, version, task, dimensions and classes."""
        names = ", ".join(self.labels.values())
        return f"{self.name} {self.version} ({self.task}, {self.dimensions}, {'/'.join(self.modalities)}): {names}"


def _field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe_schema_error(error: Any) -> tuple[str, str]:
    """(field path, message) of one jsonschema ValidationError; missing and unknown fields named exactly."""
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            return _field_path(path + [missing[0]]), "is missing (a required field)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(name for name in error.instance if name not in allowed)
        if extra:
            return _field_path(path + [extra[0]]), (
                f"is not a model-card field (allowed here: {', '.join(sorted(allowed))})")
    return _field_path(path), f"is wrong: {error.message}"


def validate_model_card(card: Mapping[str, Any], source: str = "model card") -> None:
    """Check ``card`` against the schema and for consistency between fields.

    Raises:
        ModelCardError: naming ``source`` and the offending field path, listing every problem found.
    """
    from jsonschema import Draft202012Validator

    if not isinstance(card, Mapping):
        raise ModelCardError(f"{source}: a model card must be a JSON object, not {type(card).__name__}",
                             "see Resources/Models/README.md for the fields of a card")
    validator = Draft202012Validator(model_card_schema())
    errors = sorted(validator.iter_errors(dict(card)), key=lambda e: (list(e.absolute_path), e.message))
    problems = [_describe_schema_error(e) for e in errors]
    if not problems:
        problems = _consistency_problems(card)
    if problems:
        first_field, first_message = problems[0]
        lines = [f"{source}: field '{first_field}' {first_message}"]
        lines += [f"  also: field '{f}' {m}" for f, m in problems[1:10]]
        if len(problems) > 10:
            lines.append(f"  ... and {len(problems) - 10} more problems")
        hint = "fix the card so that it follows mskseg/models/model-card.schema.json (fields explained in " \
               "Resources/Models/README.md)"
        if first_field == "schema_version":
            hint = "this card was written for another MSKSeg version; update MSKSeg or rewrite the card"
        raise ModelCardError("\n".join(lines), hint)


def _consistency_problems(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rules the schema cannot say: unique labels and names, channels vs context, spatial dims, outputs."""
    problems: list[tuple[str, str]] = []
    labels = [c["label"] for c in card["classes"]]
    names = [c["name"] for c in card["classes"]]
    for i, c in enumerate(card["classes"]):
        if labels.count(c["label"]) > 1:
            problems.append((f"classes[{i}].label", f"{c['label']} is used by more than one class"))
        if names.count(c["name"]) > 1:
            problems.append((f"classes[{i}].name", f"'{c['name']}' is used by more than one class"))
    inp = card["input"]
    dims = card["dimensions"]
    context = inp.get("context_slices", 0)
    if dims != "2.5d" and context:
        problems.append(("input.context_slices", f"is {context} but only 2.5d models take context slices"))
    if dims == "2.5d" and inp["channels"] != 2 * context + 1:
        problems.append(("input.channels", f"is {inp['channels']} but a 2.5d model with context_slices="
                         f"{context} takes 2 * {context} + 1 = {2 * context + 1} channels"))
    if "window" in inp and inp["window"][1] <= inp["window"][0]:
        problems.append(("input.window", f"{inp['window']} must be [low, high] with low < high"))
    expected_dims = _SPATIAL_DIMS[dims]
    if dims == "3d" and inp.get("spacing_mm") and len(inp["spacing_mm"]) != 3:
        problems.append(("input.spacing_mm", f"has {len(inp['spacing_mm'])} values; a 3d model needs 3"))
    if inp.get("patch_size") and len(inp["patch_size"]) != expected_dims:
        problems.append(("input.patch_size", f"has {len(inp['patch_size'])} values; a {dims} model needs "
                         f"{expected_dims}"))
    args = card["architecture"]["args"]
    if "spatial_dims" in args and args["spatial_dims"] != expected_dims:
        problems.append(("architecture.args.spatial_dims", f"is {args['spatial_dims']} but a {dims} model "
                         f"needs {expected_dims}"))
    if "in_channels" in args and args["in_channels"] != inp["channels"]:
        problems.append(("architecture.args.in_channels", f"is {args['in_channels']} but input.channels is "
                         f"{inp['channels']}"))
    if "out_channels" in args and args["out_channels"] < max(labels) + 1:
        problems.append(("architecture.args.out_channels", f"is {args['out_channels']} but the highest class "
                         f"label is {max(labels)} (needs at least {max(labels) + 1} outputs with background)"))
    return problems


def load_model_card(path: str | Path) -> ModelCard:
    """Read and validate the model card at ``path`` (a ``.json`` file, or a folder holding exactly one card).

    Raises:
        ModelCardError: the file is missing, not JSON, or not a valid card (the field path is named).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        cards = sorted(path.glob(f"*{CARD_SUFFIX}"))
        if len(cards) != 1:
            found = ", ".join(c.name for c in cards) or "none"
            raise ModelCardError(f"{path} is a folder with {len(cards)} model cards (*{CARD_SUFFIX}): {found}",
                                 "give the path of one card file")
        path = cards[0]
    if not path.is_file():
        raise ModelCardError(f"model card {path} does not exist",
                             f"give the path of a *{CARD_SUFFIX} file, or put the card in a folder listed in "
                             f"{MODELS_DIR_ENV}")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"{path} is not valid JSON: {exc}", "check the file with a JSON validator") from exc
    return ModelCard.from_dict(card, path)


def save_model_card(card: Mapping[str, Any] | ModelCard, path: str | Path, overwrite: bool = False) -> ModelCard:
    """Validate ``card`` and write it as indented JSON to ``path``; return the card as loaded from there.

    ``weights.file`` is resolved relative to ``path``'s folder, so write the card beside its weights.

    Raises:
        ModelCardError: the card is invalid (nothing is written).
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    data = card.to_dict() if isinstance(card, ModelCard) else dict(card)
    validated = ModelCard.from_dict(data, path)
    out = prepare_output(path, overwrite)
    out.write_text(validated.to_json(), encoding="utf-8")
    return validated


def default_model_dirs() -> list[Path]:
    """The folders searched for model cards, in order: ``MSKSEG_MODELS_DIR`` entries, ``Resources/Models``,
    ``mskseg/models/bundled``. Folders that do not exist are listed all the same."""
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_DIR_ENV, "").split(os.pathsep) if p.strip()]
    import mskseg

    dirs.append(Path(mskseg.__file__).resolve().parents[1] / "Resources" / "Models")
    dirs.append(Path(__file__).resolve().parent / "bundled")
    return dirs


def find_model_cards(dirs: Iterable[str | Path] | None = None, *, task: str | None = None,
                     strict: bool = False) -> list[ModelCard]:
    """All model cards in ``dirs`` (default: :func:`default_model_dirs`), first found first.

    Each folder is searched for ``*.card.json`` files, itself and its sub-folders. A card whose ``name``
    was already found in an earlier folder is shadowed (skipped).

    Args:
        dirs: folders to search instead of the default ones.
        task: keep only cards of this task (``sarcopenia``, ``bone``, ``spine``, ...).
        strict: raise on an invalid card instead of skipping it with a logged warning.

    Raises:
        ModelCardError: with ``strict``, the first invalid card found.
    """
    search = default_model_dirs() if dirs is None else [Path(d).expanduser() for d in dirs]
    cards: list[ModelCard] = []
    seen: set[str] = set()
    for folder in search:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(f"*{CARD_SUFFIX}")):
            try:
                card = load_model_card(path)
            except ModelCardError as exc:
                if strict:
                    raise
                logger.warning("skipping invalid model card: %s", exc)
                continue
            if card.name in seen:
                logger.info("model card %s is shadowed by an earlier card named %s", path, card.name)
                continue
            seen.add(card.name)
            if task is None or card.task == task:
                cards.append(card)
    return cards


def resolve_model_card(spec: str | Path | ModelCard, task: str | None = None,
                       dirs: Iterable[str | Path] | None = None) -> ModelCard:
    """The card that ``spec`` names: a card, a card file, a folder with one card, or a card ``name``.

    This is what ``--model`` on the command line and the model selector in the modules accept.

    Raises:
        ModelCardError: nothing matches (the available names are listed), or the card is of another task.
    """
    if isinstance(spec, ModelCard):
        card = spec
    elif Path(spec).expanduser().exists() or str(spec).endswith(".json"):
        card = load_model_card(spec)
    else:
        matches = [c for c in find_model_cards(dirs) if c.name == str(spec)]
        if not matches:
            available = [c.name for c in find_model_cards(dirs, task=task)]
            raise ModelCardError(
                f"no model card named '{spec}'" + (f" for task '{task}'" if task else ""),
                f"available: {', '.join(available) or 'none'}; or give the path of a *{CARD_SUFFIX} file "
                f"(folders searched: {os.pathsep.join(str(d) for d in (dirs or default_model_dirs()))})")
        card = matches[0]
    if task is not None and card.task != task:
        raise ModelCardError(f"model card '{card.name}' ({card.path}) is for task '{card.task}', not '{task}'",
                             f"choose a {task} model")
    return card
