"""Body-composition tissues on chosen axial CT slices: skeletal muscle, SAT, VAT and IMAT (BODYCOMP.md).

Two methods, both ending with the BODYCOMP HU windows of :class:`~mskseg.sarcopenia.settings.BodyCompSettings`
(:func:`~mskseg.sarcopenia.metrics.apply_windows`):

* ``"network"``: the 2D tissue model card, decoded with the windows (:mod:`mskseg.sarcopenia.tissue_network`);
* ``"rules"``: image rules, no network (:mod:`mskseg.sarcopenia.tissue_rules`).

This module runs them (:func:`segment_tissues`). ``method="auto"`` uses :data:`DEFAULT_METHOD`; the other
method runs as a cross-check and its per-class Dice against the chosen one is reported, with ``disagreement``
set when the Dice of muscle, SAT or VAT (:data:`DISAGREEMENT_CLASSES`) is below :data:`DISAGREEMENT_DICE`.

Muscle groups (:data:`~mskseg.sarcopenia.labels.GROUP_LABELS`: psoas, paraspinal, abdominal wall) overlap the
muscle label, so they are returned as a separate label map: from a muscle-group model card when one is
installed (a card of task sarcopenia whose classes are psoas, paraspinal, abdominal_wall), else from the rules.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..engine import CancelToken, Progress, sub_progress
from ..errors import InvalidImageError, ModelCardError, MSKSegError
from ..image import Image
from ..io.common import Labels
from ..pipeline import segment_slices as network_on_slices
from .labels import GROUP_LABELS, TISSUE_LABELS
from .tissue_network import (TISSUE_CARD_NAME, decode_tissue_probabilities, find_group_card, find_tissue_card,
                             network_groups, network_tissues)
from .tissue_rules import RuleCompartments, groups_for_muscle, rule_based_tissues, rule_compartments, rules_on_slices

if TYPE_CHECKING:
    from ..models.cards import ModelCard
    from .settings import BodyCompSettings

__all__ = [
    "TissueResult", "segment_tissues", "class_dice", "DEFAULT_METHOD", "DISAGREEMENT_DICE", "DISAGREEMENT_CLASSES",
    # re-exported from the modules that own them, so ``mskseg.sarcopenia.tissue.X`` keeps working
    "TISSUE_LABELS", "GROUP_LABELS", "TISSUE_CARD_NAME", "find_tissue_card", "find_group_card",
    "decode_tissue_probabilities", "network_on_slices", "RuleCompartments", "rule_compartments",
    "rule_based_tissues",
]

#: The method ``method="auto"`` runs, chosen on the real-data harness (``scripts/evaluate_real.py``: every real
#: CT of ../shared/data, figures in the README, "Bundled models"). The rules call enhancing and unenhanced
#: organs muscle (23 % of the ircad liver and 15 % of its vessels at its lumbar levels, 88 % of the dcmqi liver);
#: the network calls under 0.6 % of them anything but keeps its own failures (1.6 % of the organs of
#: ct-dicom-t12 called muscle, small psoas). Rules that call organs muscle cannot be the default: "network" is,
#: and the rules run beside it as the cross-check (their disagreement is reported). Without a tissue card the
#: rules run, and say so.
DEFAULT_METHOD = "network"

#: Cross-check threshold: when any tissue's Dice between the two methods is below this, the result carries
#: ``cross_check["disagreement"] = True`` and a warning. Published L3 tissue Dice between good systems and
#: readers is 0.94-0.98 (BODYCOMP.md); two methods that both work agree at about 0.9 or better on every class,
#: while a failed method (wrong slice content, a kidney taken as muscle, the fascia missed) falls below 0.85.
DISAGREEMENT_DICE = 0.85
#: Classes the disagreement flag looks at. Intermuscular fat is left out: its pixels are few and scattered
#: (noise decides many of them), so its Dice is low even between two good methods (figures: README, "Bundled
#: models"); its Dice is still reported.
DISAGREEMENT_CLASSES = ("skeletal_muscle", "subcutaneous_fat", "visceral_fat")


@dataclass
class TissueResult:
    """Tissue labels on the chosen slices of an image, and how they were made.

    Attributes:
        labelmap: uint8 label map on exactly the source image's grid (``(K, J, I)`` or ``(J, I)``), values of
            ``labels``, non-zero only on ``slices``.
        labels: label value -> class name (:data:`TISSUE_LABELS`).
        method: the method whose labels these are: ``"network"`` or ``"rules"``.
        slices: the slice indices segmented.
        cross_check: per-class Dice between the two methods (``dice``: class name -> value or None),
            ``disagreement`` (bool), ``threshold``, ``other_method``, ``warning`` (the sentence when they disagree,
            else None); empty when only one method ran.
        warnings: things the user should know (no model installed, methods disagree, ...).
        group_labelmap: muscle groups on the same grid (values of ``group_labels``), or None when not asked.
        group_labels: label value -> group name (:data:`GROUP_LABELS`) or empty.
        details: model name, device, seconds, settings used.
    """

    labelmap: Image
    labels: Labels
    method: str
    slices: list[int]
    cross_check: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    group_labelmap: Image | None = None
    group_labels: Labels = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def class_dice(a: np.ndarray, b: np.ndarray, labels: Labels = TISSUE_LABELS) -> dict[str, float | None]:
    """Per-class Dice between two label arrays of one shape; None for a class absent from both."""
    from ..train.evaluate import dice

    out: dict[str, float | None] = {}
    for value, name in labels.items():
        d = dice(a, b, value)
        out[name] = None if math.isnan(d) else round(float(d), 4)
    return out


def _checked_slices(image: Image, slices: Sequence[int]) -> list[int]:
    if image.ndim == 2:
        ks = [int(k) for k in slices] if slices is not None else [0]
        if any(k != 0 for k in ks):
            raise InvalidImageError(f"slice indices {ks} given for a 2D image", "use [0] (or no slices) for a 2D image")
        return [0]
    if image.ndim != 3:
        raise InvalidImageError(f"tissue segmentation needs an axial slice or a volume, got shape {image.array.shape}")
    ks = sorted({int(k) for k in slices})
    if not ks:
        raise InvalidImageError("no slice chosen for tissue segmentation", "give at least one slice index (e.g. L3)")
    bad = [k for k in ks if not 0 <= k < image.array.shape[0]]
    if bad:
        raise InvalidImageError(f"slice indices {bad} are outside the volume's {image.array.shape[0]} slices",
                                f"use indices 0..{image.array.shape[0] - 1}")
    return ks


def segment_tissues(image: Image, slices: Sequence[int] | None, *, method: str = "auto",
                    settings: BodyCompSettings | None = None, device: str = "auto",
                    progress: Progress | None = None, cancel_token: CancelToken | None = None,
                    muscle_groups: bool = False, model: ModelCard | str | Path | None = None,
                    network: Any = None, cross_check: bool = True) -> TissueResult:
    """Skeletal muscle, SAT, VAT and IMAT on the chosen axial slices of a CT, BODYCOMP windows applied.

    Args:
        image: CT in HU, ``(K, J, I)`` volume or one ``(J, I)`` slice.
        slices: slice indices ``k`` to segment (for a 2D image: ``[0]`` or None).
        method: ``"auto"`` (:data:`DEFAULT_METHOD`, rules when no tissue card is installed), ``"network"``
            (the tissue model card; error when none is installed) or ``"rules"``.
        settings: HU windows; default ``BodyCompSettings()``.
        device: torch device for the network (``auto``, ``cpu``, ``cuda``...).
        progress: ``progress(fraction, message)``; returning False cancels.
        cancel_token: cancels from another thread between slices / batches.
        muscle_groups: also return psoas / paraspinal / abdominal wall as :attr:`TissueResult.group_labelmap`.
        model: the tissue model card (card, card file or name) instead of the installed one.
        network: an already loaded network for that card (skips loading).
        cross_check: also run the other method and report per-class Dice between the two.

    Returns:
        :class:`TissueResult`: labels on exactly ``image``'s grid, non-zero only on ``slices``.

    Raises:
        InvalidImageError: slices outside the image, a non-2D/3D image.
        ModelCardError: ``method="network"`` without an installed tissue card, or an unsuitable ``model``.
        MSKSegError: an unknown ``method``.
        CancelledError: cancelled.
    """
    from .settings import BodyCompSettings

    t0 = time.perf_counter()
    if method not in ("auto", "network", "rules"):
        raise MSKSegError(f"tissue method '{method}' is unknown", "use auto, network or rules")
    settings = settings or BodyCompSettings()
    ks = _checked_slices(image, [0] if slices is None and image.ndim == 2 else (slices or []))
    warnings: list[str] = []
    card = find_tissue_card(model) if (method != "rules" or cross_check) else None
    chosen = _choose_method(method, card, warnings)
    run_network = card is not None and (chosen == "network" or cross_check)
    run_rules = chosen == "rules" or cross_check

    details: dict[str, Any] = {"settings": settings.as_dict()}
    share = 0.7 if run_network and run_rules else 1.0
    net_lab: dict[int, np.ndarray] = {}
    if run_network:
        net_lab, info = network_tissues(image, ks, card, settings, device=device, cancel_token=cancel_token,
                                        progress=sub_progress(progress, 0.0, share), network=network)
        details.update(info)
    rule_lab: dict[int, np.ndarray] = {}
    rule_groups: dict[int, np.ndarray] = {}
    if run_rules or muscle_groups:
        rule_lab, rule_groups = rules_on_slices(image, ks, settings, muscle_groups, cancel_token,
                                                sub_progress(progress, share if run_network else 0.0, 1.0))

    primary = net_lab if chosen == "network" else rule_lab
    other = rule_lab if chosen == "network" else net_lab
    full = _on_image(image, ks, primary)
    check: dict[str, Any] = {}
    if cross_check and other:
        check = _cross_check(primary, other, ks, chosen, warnings)
    elif cross_check and chosen == "rules" and card is None:
        warnings.append("no tissue model card is installed: no cross-check with a network was possible")

    group_image = None
    group_labels: Labels = {}
    if muscle_groups:
        group_image, details["groups_from"] = _muscle_groups(image, ks, full, rule_groups, device, cancel_token)
        group_labels = dict(GROUP_LABELS)
    details["seconds"] = round(time.perf_counter() - t0, 3)
    return TissueResult(image.with_array(full, keep_metadata=False), dict(TISSUE_LABELS), chosen, ks, check,
                        warnings, group_image, group_labels, details)


def _choose_method(method: str, card: ModelCard | None, warnings: list[str]) -> str:
    """The method that gives the labels: ``method``, or for ``"auto"`` :data:`DEFAULT_METHOD` when it can run.

    Raises:
        ModelCardError: ``method="network"`` and no tissue card.
    """
    if method == "network" and card is None:
        raise ModelCardError("no tissue model card is installed (task sarcopenia, classes skeletal_muscle, "
                             "subcutaneous_fat, visceral_fat, intermuscular_fat)",
                             f"install {TISSUE_CARD_NAME} in Resources/Models or MSKSEG_MODELS_DIR, pass --model, "
                             "or use method 'rules'")
    if method != "auto":
        return method
    if card is None and DEFAULT_METHOD == "network":
        warnings.append("no tissue model card is installed: the rule-based method was used")
    return DEFAULT_METHOD if (DEFAULT_METHOD == "rules" or card is not None) else "rules"


def _on_image(image: Image, ks: list[int], per_slice: dict[int, np.ndarray]) -> np.ndarray:
    """Per-slice ``(J, I)`` labels placed into a uint8 array of ``image``'s shape (0 elsewhere)."""
    full = np.zeros(image.array.shape, np.uint8)
    for k in ks:
        if image.ndim == 2:
            full[...] = per_slice[k]
        else:
            full[k] = per_slice[k]
    return full


def _cross_check(primary: dict[int, np.ndarray], other: dict[int, np.ndarray], ks: list[int], chosen: str,
                 warnings: list[str]) -> dict[str, Any]:
    """Per-class Dice between the two methods on slices ``ks``; a warning when they disagree."""
    dices = class_dice(np.stack([primary[k] for k in ks]), np.stack([other[k] for k in ks]))
    low = {n: d for n, d in dices.items() if n in DISAGREEMENT_CLASSES and d is not None and d < DISAGREEMENT_DICE}
    warning = None
    if low:
        warning = ("the network and the rule-based method disagree on " + ", ".join(
            f"{n} (Dice {d:.2f})" for n, d in low.items()) + f" (threshold {DISAGREEMENT_DICE}): check the "
            "segmentation before using the measurements")
        warnings.append(warning)
    return {"dice": dices, "disagreement": bool(low), "threshold": DISAGREEMENT_DICE,
            "other_method": "rules" if chosen == "network" else "network", "warning": warning}


def _muscle_groups(image: Image, ks: list[int], tissues: np.ndarray, rule_groups: dict[int, np.ndarray],
                   device: str, cancel_token: CancelToken | None) -> tuple[Image, str]:
    """The muscle-group label map on ``image``'s grid (every muscle pixel of ``tissues`` in a group) and
    where the groups came from (the group card's name, or ``"rules"``)."""
    group_card = find_group_card()
    per_slice = {}
    for k in ks:
        muscle = tissues[k] == 1 if image.ndim == 3 else tissues == 1
        if group_card is not None:
            groups = network_groups(image, k, group_card, device=device, cancel_token=cancel_token)
        else:
            groups = rule_groups[k]
        per_slice[k] = groups_for_muscle(groups, muscle)
    return (image.with_array(_on_image(image, ks, per_slice), keep_metadata=False),
            group_card.name if group_card is not None else "rules")
