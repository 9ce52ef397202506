"""Weights files: sha256 check first, then a loader that cannot run code.

A weights file is checked against the sha256 its model card states BEFORE anything reads it as weights, and
it is read only by safetensors or by ``torch.load(weights_only=True)``, which refuse anything but tensors and
plain containers. A file that was altered, truncated or swapped is therefore never unpickled.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ..errors import ChecksumError, ModelCardError
from ..io.common import prepare_output
from .networks import build_network

if TYPE_CHECKING:
    import torch

    from .cards import ModelCard

WEIGHT_FORMATS = ("safetensors", "torch")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of the file at ``path`` as 64 lower-case hex digits (read in chunks, any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(card: ModelCard) -> Path:
    """Check that the card's weights file exists and has the card's sha256; return its path.

    Raises:
        ModelCardError: the weights file is missing.
        ChecksumError: its sha256 differs from the card's (expected and found are both stated).
    """
    path = card.weights_path
    if not path.is_file():
        raise ModelCardError(
            f"model '{card.name}': weights file {path} (field 'weights.file' of {card.path}) does not exist",
            "re-install the extension, or put the weights file beside the card")
    expected = str(card.weights["sha256"]).lower()
    found = sha256_file(path)
    if found != expected:
        raise ChecksumError(
            f"model '{card.name}': weights file {path} does not match its model card {card.path}\n"
            f"  expected sha256 {expected}\n  found    sha256 {found}",
            "the file is damaged or not the one the card describes: re-install the extension (bundled "
            "models) or re-train / re-export it (your own models); update 'weights.sha256' in the card only "
            "if you trust this file")
    return path


def _state_dict_from(obj: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelCardError(f"weights file {path} does not hold a state dict (name -> tensor)",
                             "save weights with mskseg.models.save_weights(model.state_dict(), path)")
    return {str(k): v for k, v in obj.items()}


def read_state_dict(path: str | Path, format: str) -> dict[str, torch.Tensor]:
    """Read a state dict (parameter name -> CPU tensor) WITHOUT any checksum check; prefer :func:`load_weights`.

    ``format`` is ``"safetensors"`` or ``"torch"`` (read with ``torch.load(weights_only=True,
    map_location="cpu")``, which refuses pickled Python objects other than tensors and plain containers).

    Raises:
        ModelCardError: unknown format, unreadable file, or a pickle that holds other objects.
    """
    path = Path(path)
    if format == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelCardError(f"weights file {path} is not a readable safetensors file: {exc}",
                                 "check 'weights.format' in the card, or re-export the weights") from exc
    if format == "torch":
        import torch

        try:
            obj = torch.load(str(path), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            # torch's own message suggests loading with weights_only=False; quote only what it found.
            found = [line.strip().split(" was not")[0] for line in str(exc).splitlines()
                     if "Unsupported global" in line]
            raise ModelCardError(
                f"refused to load weights file {path}: it holds Python objects other than tensors, and MSKSeg "
                "loads weights only with torch.load(weights_only=True)" + (f" ({found[0]})" if found else ""),
                "save only the state dict (model.state_dict()), preferably with mskseg.models.save_weights "
                "as safetensors") from exc
        except (RuntimeError, OSError, EOFError) as exc:
            raise ModelCardError(f"weights file {path} is not a readable torch file: {exc}",
                                 "check 'weights.format' in the card, or re-export the weights") from exc
        return _state_dict_from(obj, path)
    raise ModelCardError(f"weights format '{format}' is unknown", f"use one of: {', '.join(WEIGHT_FORMATS)}")


def load_weights(card: ModelCard) -> dict[str, torch.Tensor]:
    """The card's weights as a state dict on the CPU, after the sha256 check.

    Raises:
        ModelCardError: the weights file is missing or unreadable.
        ChecksumError: its sha256 differs from the card's (checked before the file is parsed).
    """
    path = verify_weights(card)
    return read_state_dict(path, card.weights["format"])


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | Path, format: str = "safetensors",
                 overwrite: bool = False) -> str:
    """Write ``state_dict`` to ``path`` and return the file's sha256 (for the card's ``weights.sha256``).

    Tensors are detached, moved to the CPU and made contiguous; tensors sharing memory are copied apart
    (safetensors requires it).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        ModelCardError: unknown ``format``.
    """
    import torch

    if format not in WEIGHT_FORMATS:
        raise ModelCardError(f"weights format '{format}' is unknown", f"use one of: {', '.join(WEIGHT_FORMATS)}")
    tensors = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    out = prepare_output(path, overwrite)
    if format == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(out))
    else:
        torch.save(tensors, str(out))
    return sha256_file(out)


def load_model(card: ModelCard, device: object = "cpu") -> torch.nn.Module:
    """The card's network with its checked weights loaded strictly, in eval mode, on ``device``.

    ``device`` is a ``str`` ("cpu", "cuda:0", "mps"), a ``torch.device`` or a
    :class:`mskseg.engine.DeviceChoice`.

    Raises:
        ModelCardError: unknown architecture, missing/unreadable weights, or weights that do not fit the
            architecture (missing and unexpected parameter names are listed).
        ChecksumError: the weights file does not match the card's sha256.
    """
    state_dict = load_weights(card)
    model = build_network(card)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelCardError(
            f"model '{card.name}': the weights in {card.weights_path} do not fit architecture "
            f"{card.architecture['name']} with the card's 'architecture.args': {str(exc)[:800]}",
            "the card's architecture and args must be exactly those the weights were trained with") from exc
    model.eval()
    return model.to(getattr(device, "device", device))
