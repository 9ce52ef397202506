"""Body-composition tissues from the 2D tissue network: which card, how its probabilities become tissues.

The tissue model card (classes skeletal_muscle, subcutaneous_fat, visceral_fat, intermuscular_fat; found with
``find_model_cards(task="sarcopenia")``) is run on the chosen slices only with
:func:`mskseg.pipeline.segment_slices`, each slice resampled to the card's pixel spacing; its class
probabilities (averaged with those of the left-right mirror image) are interpolated back onto the exact source
grid and decoded with the HU windows (:func:`decode_tissue_probabilities`: the network says which compartment a
pixel lies in, the window which tissue it is); labels outside the trunk (arms, table:
:func:`~mskseg.sarcopenia.tissue_rules.trunk_mask`) are removed. Measured accuracy: the card's ``validation``
section and the README's "Bundled models".
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..engine import CancelToken, Progress
from ..errors import ModelCardError
from ..image import Image, axial_plane
from ..io.common import Labels
from ..pipeline import segment_slices
from .labels import GROUP_LABELS, TISSUE_LABELS
from .tissue_rules import display_transform, from_display, to_display, trunk_mask

if TYPE_CHECKING:
    from ..models.cards import ModelCard
    from .settings import BodyCompSettings

#: Name of the shipped tissue model card, preferred when several tissue cards are installed.
TISSUE_CARD_NAME = "sarcopenia-l3-tissue-2d"


def find_tissue_card(model: ModelCard | str | Path | None = None) -> ModelCard | None:
    """The tissue model card: ``model`` when given (a card, card file or name), else the installed card of task
    ``sarcopenia`` whose classes are the four tissues (``sarcopenia-l3-tissue-2d`` preferred); None if none.

    Raises:
        ModelCardError: ``model`` was given but is not a 2D/2.5D card with the four tissue classes.
    """
    from ..models import find_model_cards, resolve_model_card

    wanted = set(TISSUE_LABELS.values())
    if model is not None:
        card = resolve_model_card(model, task="sarcopenia")
        if not wanted <= set(card.labels.values()) or card.dimensions == "3d":
            raise ModelCardError(f"model card '{card.name}' is not a 2D tissue model (classes "
                                 f"{sorted(card.labels.values())}, {card.dimensions})",
                                 f"choose a 2D/2.5D card with the classes {sorted(wanted)}")
        return card
    cards = [c for c in find_model_cards(task="sarcopenia")
             if set(c.labels.values()) == wanted and c.dimensions in ("2d", "2.5d")]
    cards.sort(key=lambda c: c.name != TISSUE_CARD_NAME)
    return cards[0] if cards else None


def find_group_card() -> ModelCard | None:
    """An installed muscle-group card (task sarcopenia, classes psoas, paraspinal, abdominal_wall), or None."""
    from ..models import find_model_cards

    wanted = set(GROUP_LABELS.values())
    cards = [c for c in find_model_cards(task="sarcopenia")
             if set(c.labels.values()) == wanted and c.dimensions in ("2d", "2.5d")]
    return cards[0] if cards else None


def decode_tissue_probabilities(hu: np.ndarray, probabilities: np.ndarray, card_labels: Labels,
                                settings: BodyCompSettings) -> np.ndarray:
    """Tissue labels from the network's class probabilities on one slice, with the HU windows deciding the
    tissue and the network only the compartment.

    The windows already say whether a pixel is fat or muscle; what the network adds is where the pixel lies:
    in a muscle compartment (its muscle and intermuscular-fat probabilities together), under the skin
    (subcutaneous fat), in the abdomen (visceral fat) or outside all of them. Each pixel takes the most
    probable compartment, then :func:`~mskseg.sarcopenia.metrics.apply_windows` gives it its tissue: muscle in
    the muscle window, intermuscular fat in the IMAT window, the compartment's fat in its window, else nothing.
    So a fat pixel inside a muscle is never lost to a near tie between "muscle" and "IMAT", and a noisy pixel
    at the edge of a window cannot change compartment.

    Args:
        hu: ``(J, I)`` HU.
        probabilities: ``(C, J, I)`` class probabilities, channel = card label value (0 background).
        card_labels: the card's ``{value: class name}``.
        settings: the windows.

    Returns:
        ``(J, I)`` uint8 labels with :data:`TISSUE_LABELS` values.
    """
    from .metrics import apply_windows

    names = {int(v): n for v, n in card_labels.items()}
    by_name = {n: v for v, n in TISSUE_LABELS.items()}
    compartments = {0: np.asarray(probabilities[0], np.float32).copy()}  # tissue value -> probability
    for value in range(1, probabilities.shape[0]):
        name = names.get(value)
        if name not in by_name:
            compartments[0] += probabilities[value]
            continue
        target = by_name["skeletal_muscle"] if name == "intermuscular_fat" else by_name[name]
        compartments[target] = compartments.get(target, 0.0) + probabilities[value]
    order = sorted(compartments)
    stack = np.stack([np.broadcast_to(compartments[v], hu.shape) for v in order])
    labels = np.asarray(order, np.uint8)[np.argmax(stack, axis=0)]
    return apply_windows(np.asarray(hu, np.float32), labels, settings, TISSUE_LABELS).astype(np.uint8)


def network_tissues(image: Image, ks: Sequence[int], card: ModelCard, settings: BodyCompSettings, *,
                    device: str = "auto", progress: Progress | None = None, cancel_token: CancelToken | None = None,
                    network: Any = None) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Tissue labels of the network on slices ``ks``: flip-averaged probabilities on each source slice,
    decoded with the windows (:func:`decode_tissue_probabilities`), nothing outside the trunk.

    Args:
        image: CT in HU, ``(K, J, I)`` or ``(J, I)``.
        ks: checked slice indices.
        card: the tissue card; ``network``: its already loaded network (skips loading).

    Returns:
        ``({k: (J, I) uint8 labels with TISSUE_LABELS values}, details)`` (model, device, network_seconds).
    """
    probabilities, info = segment_slices(image, ks, card, device=device, cancel_token=cancel_token,
                                         progress=progress, network=network, output="probabilities",
                                         flip_average=True)
    how = display_transform(image)
    labels: dict[int, np.ndarray] = {}
    for k in ks:
        sl = axial_plane(image, k)
        hu = np.asarray(sl.array, np.float32)
        lab = decode_tissue_probabilities(hu, probabilities[k], card.labels, settings)
        # only the trunk is measured: arms beside the abdomen, the table and air are never a tissue
        hu_d = to_display(hu, how)
        spacing = sl.spacing[::-1] if how[0] else sl.spacing
        lab[~from_display(trunk_mask(hu_d, (float(spacing[1]), float(spacing[0]))), how)] = 0
        labels[k] = lab
    return labels, info


def network_groups(image: Image, k: int, card: ModelCard, *, device: str = "auto",
                   cancel_token: CancelToken | None = None) -> np.ndarray:
    """Muscle groups of a muscle-group card on slice ``k``: ``(J, I)`` uint8 with
    :data:`~mskseg.sarcopenia.labels.GROUP_LABELS` values (the card's classes matched by name)."""
    raw, _ = segment_slices(image, [k], card, device=device, cancel_token=cancel_token)
    by_name = {n: v for v, n in GROUP_LABELS.items()}
    groups = np.zeros(raw[k].shape, np.uint8)
    for value, name in card.labels.items():
        if name in by_name:
            groups[raw[k] == value] = by_name[name]
    return groups
