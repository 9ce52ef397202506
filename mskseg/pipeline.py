"""Run any model card on an image: the generic pipeline every task builds on.

Steps (each a plain function, so it can be tested, timed or replaced alone):
``check_input`` -> ``resample_to_model`` -> ``normalise`` -> infer (2D / 2.5D slices:
``predict_on_model_grid``, or 3D sliding window) -> ``labels_to_source_grid``. ``segment_slices`` runs a 2D
card on chosen slices only (the body-composition tissues use it). The result is a label map on exactly the source image's grid with the card's
class names, ready for the writers and for :mod:`mskseg.mrml`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .ctvalues import check_ct_values, map_padding_to_air
from .engine import CancelToken, DeviceChoice, Progress, sub_progress
from .errors import InvalidImageError
from .image import Image, axial_plane, labels_on_grid, resample_to_spacing
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


def check_segmentation_card(card: ModelCard) -> None:
    """Refuse a card whose network does not segment (:data:`mskseg.models.networks.NOT_SEGMENTATION`).

    Raises:
        ModelCardError: naming what the card is and which command runs it.
    """
    from .errors import ModelCardError
    from .models.networks import NOT_SEGMENTATION

    role = NOT_SEGMENTATION.get(str(card.architecture.get("name", "")))
    if role is not None:
        raise ModelCardError(
            f"model '{card.name}' is {role}, not a segmentation network",
            "choose a segmentation model card (`mskseg models` marks which command runs each card)",
        )


def check_input(image: Image, card: ModelCard) -> None:
    """Refuse images the model cannot take (wrong modality, 3D model on a 2D image, too few slices) and cards
    that are not segmentation networks (:data:`mskseg.models.networks.NOT_SEGMENTATION`).

    Raises:
        InvalidImageError: with what was expected and what was found.
    """
    check_segmentation_card(card)
    modality = image.modality
    if modality and modality not in card.modalities:
        raise InvalidImageError(
            f"model '{card.name}' expects {'/'.join(card.modalities)} images, this image is {modality}",
            "choose a model for this modality (`mskseg models`), or check that the right series was loaded",
        )
    if "CT" in card.modalities and (not modality or modality == "CT") and \
            not set(card.modalities) & {"DX", "CR", "XR", "RG", "MG"}:
        check_ct_values(image, f"model '{card.name}' (trained on CT Hounsfield units)")
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


def pad_to_multiple(array: np.ndarray, multiple: int, value: float, *,
                    axes: int = 2) -> tuple[np.ndarray, tuple[int, ...]]:
    """Pad the last ``axes`` axes of ``array`` at their end up to a multiple of ``multiple`` with ``value``.

    U-Net down-sampling needs sizes divisible by :data:`PAD_MULTIPLE`. Returns ``(padded, sizes)``, ``sizes``
    the original lengths of the padded axes, so ``padded[..., :j, :i]`` (for ``axes=2``) cuts a prediction back.
    """
    sizes = tuple(int(n) for n in array.shape[array.ndim - axes:])
    pads = [(0, 0)] * (array.ndim - axes) + [(0, (-n) % multiple) for n in sizes]
    if any(after for _, after in pads):
        array = np.pad(array, pads, constant_values=value)
    return array, sizes


def load_network(card: ModelCard, device: str = "auto", network: Any = None) -> tuple[Any, DeviceChoice]:
    """``(network, device choice)``: ``network`` when given (an already loaded one), else the card's weights
    loaded onto the chosen device (checksum checked)."""
    from .engine import choose_device
    from .models.weights import load_model

    chosen = choose_device(device)
    return (network if network is not None else load_model(card, chosen.device)), chosen


def predict_on_model_grid(network: Any, volume: np.ndarray, card: ModelCard, device: Any, *,
                          slice_indices: Sequence[int] | None = None, output: str = "labels",
                          flip_average: bool = False, batch_size: int = 8, progress: Progress | None = None,
                          cancel_token: CancelToken | None = None) -> np.ndarray:
    """Run a 2D/2.5D card's network slice by slice on a normalised volume on the model grid.

    The volume is padded to :data:`PAD_MULTIPLE` (with its minimum) and the prediction cut back.

    Args:
        volume: ``(K, J, I)`` float32, normalised (:func:`mskseg.engine.normalise`).
        slice_indices: the slices to run (output in this order); default all. Neighbours give the context.
        output: ``"labels"`` or ``"probabilities"`` (see :func:`mskseg.engine.predict_slices`).
        flip_average: with probabilities, also run the left-right mirror image and average (twice the time).

    Returns:
        labels ``(K', J, I)`` uint8, or probabilities ``(C, K', J, I)`` (float32 when flip-averaged, else float16).
    """
    from .engine import predict_slices

    background = float(volume.min()) if volume.size else 0.0
    padded, (j, i) = pad_to_multiple(volume, PAD_MULTIPLE, background)
    result = predict_slices(network, padded, context=card.context_slices, batch_size=batch_size, device=device,
                            progress=progress, cancel_token=cancel_token, slice_indices=slice_indices,
                            output=output)
    if output == "probabilities" and flip_average:
        # the mirror image too (left-right), probabilities averaged: a boundary the network is unsure of is
        # decided by both views
        mirrored = predict_slices(network, np.ascontiguousarray(padded[..., ::-1]), context=card.context_slices,
                                  batch_size=batch_size, device=device, cancel_token=cancel_token,
                                  slice_indices=slice_indices, output=output)
        result = 0.5 * (result.astype(np.float32) + mirrored[..., ::-1].astype(np.float32))
    return result[..., :j, :i]


def segment_slices(image: Image, ks: Sequence[int], card: ModelCard, *, device: str = "auto",
                   progress: Progress | None = None, cancel_token: CancelToken | None = None,
                   network: Any = None, output: str = "labels",
                   flip_average: bool = False) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Run a 2D/2.5D card on slices ``ks`` only, each resampled to the card's spacing (with its context
    slices), and map the result back onto each source slice's grid.

    Args:
        image: ``(K, J, I)`` volume or one ``(J, I)`` slice (then ``ks == [0]``).
        ks: slice indices to segment.
        output: ``"labels"``: card label values (argmax on the model grid, nearest neighbour back; values the
            card does not name become 0); ``"probabilities"``: the softmax of every card class (channel ``c`` =
            card value ``c``, 0 = background) interpolated linearly onto the source grid, so boundaries fall
            between source pixels rather than on the model's coarser grid.
        flip_average: with probabilities, also run the left-right mirror image and average (twice the time).
        network: an already loaded network for ``card`` (skips loading).

    Returns:
        ``({k: (J, I) uint8 labels or (C, J, I) float32 probabilities}, details)``; details: model, device,
        device_reason, network_seconds.
    """
    from .engine import normalise
    from .image import values_on_grid

    t0 = time.perf_counter()
    net, chosen = load_network(card, device, network)
    context = card.context_slices
    n_slices = image.array.shape[0] if image.ndim == 3 else 1
    blocks = []
    grids = []
    for k in ks:
        neighbours = [min(max(k + o, 0), n_slices - 1) for o in range(-context, context + 1)]
        resampled = [resample_to_model(axial_plane(image, m), card) for m in neighbours]
        grids.append(resampled[context])
        blocks.append(np.stack([np.asarray(r.array, np.float32) for r in resampled]))
    shapes = {b.shape[1:] for b in blocks}
    if len(shapes) != 1:  # cannot happen for slices of one volume; guard for odd inputs
        raise InvalidImageError(f"resampled slices differ in shape: {sorted(shapes)}")
    volume = normalise(np.concatenate(blocks), card.input)
    centres = [b * (2 * context + 1) + context for b in range(len(ks))]
    result = predict_on_model_grid(net, volume, card, chosen.device, slice_indices=centres, output=output,
                                   flip_average=flip_average, progress=progress, cancel_token=cancel_token)
    out: dict[int, np.ndarray] = {}
    for n, k in enumerate(ks):
        source = axial_plane(image, k)
        if output == "probabilities":
            out[k] = np.stack([values_on_grid(grids[n].with_array(np.asarray(result[c, n], np.float32)), source,
                                              outside=1.0 if c == 0 else 0.0) for c in range(result.shape[0])])
        else:
            one = np.where(np.isin(result[n], list(card.labels)), result[n], 0).astype(np.uint8)
            out[k] = labels_to_source_grid(one, grids[n], source)
    return out, {"model": card.name, "device": chosen.device, "device_reason": chosen.reason,
                 "network_seconds": round(time.perf_counter() - t0, 3)}


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
    from .engine import normalise, predict_volume

    t0 = time.perf_counter()
    check_input(image, card)
    report = sub_progress(progress, 0.0, 0.1)
    if report:
        report(0.0, "loading model")
    net, chosen = load_network(card, device, model)
    warnings = []
    source = image
    if "CT" in card.modalities and (image.modality or "CT") == "CT":
        image, padding_warning = map_padding_to_air(image)  # -3024 / -2048 outside the scan circle: air
        warnings += [padding_warning] if padding_warning else []
    work = resample_to_model(image, card)
    volume = work.array[None] if work.ndim == 2 else work.array
    x = normalise(volume.astype(np.float32), card.input)
    infer = sub_progress(progress, 0.1, 1.0)
    if card.dimensions == "3d":
        lab = predict_volume(net, x, roi_size=card.input.get("patch_size") or [64, 128, 128], device=chosen.device,
                             progress=infer, cancel_token=cancel_token)
    else:
        lab = predict_on_model_grid(net, x, card, chosen.device, batch_size=batch_size, progress=infer,
                                    cancel_token=cancel_token)
    lab = lab[0] if work.ndim == 2 else lab
    lab = labels_to_source_grid(np.ascontiguousarray(lab).astype(np.uint8 if max(card.labels) < 256 else np.uint16),
                                work, image)
    present = {int(v) for v in np.unique(lab)} - {0}
    unknown = present - set(card.labels)
    if unknown:  # a network with more outputs than the card names: never write unnamed labels
        lab = np.where(np.isin(lab, list(unknown)), 0, lab)
    details = {"device_reason": chosen.reason}
    if warnings:
        details["warnings"] = warnings
    return SegmentationResult(source.with_array(lab, keep_metadata=False), dict(card.labels), card.name,
                              chosen.device, time.perf_counter() - t0, details)
