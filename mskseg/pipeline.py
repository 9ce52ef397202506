"""Run any model card on an image: the generic pipeline every task builds on.

Steps (each a plain function, so it can be tested, timed or replaced alone):
``check_input`` -> ``resample_to_model`` -> ``normalise`` -> infer (2D / 2.5D slices or 3D sliding window)
-> ``labels_to_source_grid``. The result is a label map on exactly the source image's grid with the card's
class names, ready for the writers and for :mod:`mskseg.mrml`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine import CancelToken, Progress, sub_progress
from .errors import InvalidImageError
from .image import Image, labels_on_grid, resample_to_spacing
from .io.common import Labels
from .models.cards import ModelCard

#: Spatial sizes fed to the network are padded to a multiple of this (U-Net down-sampling needs it).
PAD_MULTIPLE = 32


@dataclass
class SegmentationResult:
    """A label map on the source grid, its class names, and how it was made."""

    labelmap: Image
    labels: Labels
    model: str
    device: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def check_input(image: Image, card: ModelCard) -> None:
    """Refuse images the model cannot take: wrong modality, 3D model on a 2D image, too few slices.

    Raises:
        InvalidImageError: with what was expected and what was found.
    """
    modality = image.modality
    if modality and modality not in card.modalities:
        raise InvalidImageError(
            f"model '{card.name}' expects {'/'.join(card.modalities)} images, this image is {modality}",
            "choose a model for this modality (`mskseg models`), or check that the right series was loaded",
        )
    if card.dimensions == "3d" and (image.ndim != 3 or image.array.shape[0] < 2):
        raise InvalidImageError(f"model '{card.name}' is a 3D model and needs a volume; the image is "
                                f"{image.ndim}D with shape {image.array.shape}")


def resample_to_model(image: Image, card: ModelCard) -> Image:
    """The image resampled (linear) to the card's ``input.spacing_mm``; unchanged when the card has none.

    2D and 2.5D cards give in-plane spacing ``[i, j]`` and keep the slice spacing; 3D cards give ``[i, j, k]``.
    The grid is :func:`mskseg.image.spacing_grid`'s, the one the training resampled to.
    """
    target = card.input.get("spacing_mm")
    if not target:
        return image
    target = [float(t) for t in target]
    if image.ndim == 3 and len(target) == 2:
        target = target + [image.spacing[2]]
    if image.ndim == 2:
        target = target[:2]
    return resample_to_spacing(image, target, interpolation="linear")


def labels_to_source_grid(labels: np.ndarray, model_grid: Image, source: Image) -> np.ndarray:
    """Map a label array on ``model_grid`` back onto ``source``'s grid (nearest neighbour); exact when equal."""
    return labels_on_grid(model_grid.with_array(labels), source)


def _pad(volume: np.ndarray, multiple: int, value: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the last two axes of ``(K, J, I)`` up to a multiple; returns the padded array and the original (J, I)."""
    j, i = volume.shape[-2:]
    pj, pi = (-j) % multiple, (-i) % multiple
    if pj or pi:
        volume = np.pad(volume, ((0, 0), (0, pj), (0, pi)), constant_values=value)
    return volume, (j, i)


def segment_image(image: Image, card: ModelCard, *, device: str = "auto", progress: Progress | None = None,
                  cancel_token: CancelToken | None = None, model=None, batch_size: int = 8) -> SegmentationResult:
    """Segment ``image`` with the network of ``card`` and return labels on the image's own grid.

    Args:
        image: 2D ``(J, I)`` or 3D ``(K, J, I)`` image (HU for CT).
        card: the model card (classes, input preparation, architecture, weights).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:N]`` or ``mps``.
        progress: ``callback(fraction, message)``; returning False cancels (CancelledError).
        model: an already loaded network (skips loading; for repeated calls).

    Raises:
        InvalidImageError: the image does not suit the model; ChecksumError / ModelCardError for bad weights.
    """
    from .engine import choose_device, normalise, predict_slices, predict_volume
    from .models.weights import load_model

    t0 = time.perf_counter()
    check_input(image, card)
    chosen = choose_device(device)
    report = sub_progress(progress, 0.0, 0.1)
    if report:
        report(0.0, "loading model")
    net = model if model is not None else load_model(card, chosen.device)
    work = resample_to_model(image, card)
    volume = work.array[None] if work.ndim == 2 else work.array
    x = normalise(volume.astype(np.float32), card.input)
    infer = sub_progress(progress, 0.1, 1.0)
    if card.dimensions == "3d":
        lab = predict_volume(net, x, roi_size=card.input.get("patch_size") or [64, 128, 128], device=chosen.device,
                             progress=infer, cancel_token=cancel_token)
    else:
        background = float(x.min()) if x.size else 0.0
        padded, (j, i) = _pad(x, PAD_MULTIPLE, background)
        lab = predict_slices(net, padded, context=card.context_slices, batch_size=batch_size, device=chosen.device,
                             progress=infer, cancel_token=cancel_token)[:, :j, :i]
    lab = lab[0] if work.ndim == 2 else lab
    lab = labels_to_source_grid(np.ascontiguousarray(lab).astype(np.uint8 if max(card.labels) < 256 else np.uint16),
                                work, image)
    present = {int(v) for v in np.unique(lab)} - {0}
    unknown = present - set(card.labels)
    if unknown:  # a network with more outputs than the card names: never write unnamed labels
        lab = np.where(np.isin(lab, list(unknown)), 0, lab)
    return SegmentationResult(image.with_array(lab, keep_metadata=False), dict(card.labels), card.name,
                              chosen.device, time.perf_counter() - t0, {"device_reason": chosen.reason})
