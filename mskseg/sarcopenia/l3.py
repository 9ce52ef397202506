"""Find the third lumbar vertebra (L3) in a CT: a thin client of the vertebral-level finder (:mod:`mskseg.spine`).

:func:`mskseg.spine.levels.find_vertebra_levels` finds every level in the field of view with the learned
detector, cross-checked by an independent rule-based count, and looks for transitional anatomy (six
lumbar-type vertebrae, sacralised L5, 11 or 13 rib pairs). :func:`detect_l3` picks L3 from those levels and
decides: the learned result is used, the rule-based one is reported as ``cross_check`` (with
``cross_check["transitional"]``: the findings and the measurements behind them); disagreement by more than one
vertebra or 10 mm, or a transitional finding, adds a warning (the latter containing "transitional" and naming
the finding) and lowers the confidence. When L3 is outside the field of view it raises
:class:`L3NotFoundError` naming the levels that are there, or, with ``allow_fallback=True``, returns the first
level present in the order of Derstine 2018 (L2, L4, L5, L1, T12, T11, T10). :func:`check_ct_for_l3` rejects
images that cannot hold an L3 slice (2D, one slice, extreme spacing, not CT in HU, thorax only) with a message
saying what to do.

The names of the spine package that code written against this module used (``bone_projections``,
``rule_based_levels``, ``LEVELS``, ...) are re-exported here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..anatomy import vertebra_order
from ..engine import CancelToken, Progress, ProgressReporter
from ..image import Image
from ..spine.checks import (MAX_PIXEL_MM, MAX_SLICE_SPACING_MM, MIN_PIXEL_MM, LevelNotFoundError,
                            check_ct_for_levels)
from ..spine.geometry import COLUMN_MM, FRONTAL_COLUMNS, ROW_MM, SAGITTAL_COLUMNS, BoneProjections, bone_projections
from ..spine.levelnet import (DETECTOR_CARD_NAME, LEVEL_INDEX, LEVELS, NETWORK_NAME, OUTPUTS, NetworkLevels,
                              build_projection_net, decode_levels, find_detector_card, network_input,
                              network_levels)
from ..spine.levels import (DISAGREEMENT_MM, count_warning, cross_check_level, find_vertebra_levels,
                            transitional_warning)
from ..spine.rules import RuleLevels, rule_based_levels
from ..spine.transitional import MIN_BODY_RADIUS_MM, transitional_findings

if TYPE_CHECKING:
    from ..models.cards import ModelCard

__all__ = [
    "COLUMN_MM", "DETECTOR_CARD_NAME", "DISAGREEMENT_MM", "FALLBACK_ORDER", "FRONTAL_COLUMNS", "LEVELS",
    "LEVEL_INDEX", "MAX_PIXEL_MM", "MAX_SLICE_SPACING_MM", "MIN_BODY_RADIUS_MM", "MIN_PIXEL_MM", "NETWORK_NAME",
    "OUTPUTS", "ROW_MM", "SAGITTAL_COLUMNS", "BoneProjections", "L3NotFoundError", "L3Result", "NetworkLevels",
    "RuleLevels", "bone_projections", "build_projection_net", "check_ct_for_l3", "decode_levels", "detect_l3",
    "find_detector_card", "network_input", "network_levels", "rule_based_levels", "transitional_findings",
]

#: Fall-back order when L3 is not in the field of view (Derstine 2018, BODYCOMP.md).
FALLBACK_ORDER: tuple[str, ...] = ("L2", "L4", "L5", "L1", "T12", "T11", "T10")


class L3NotFoundError(LevelNotFoundError):
    """L3 is not in the field of view (or no lumbar spine was found) and no fall-back level was allowed."""


@dataclass
class L3Result:
    """Where the L3 slice (or the fall-back level) is, and how sure the detector is.

    Attributes:
        index: slice index ``k`` (of the input volume) at the centre of the level's vertebral body.
        position_mm: LPS z (mm) of the centre of that slice.
        level: ``"L3"``, or the fall-back level used (``"L2"``, ...).
        confidence: 0..1; lowered by a flat or ambiguous network output, by disagreement with the rule-based
            count, and by transitional anatomy.
        levels: vertebra name -> slice index of its centre, for every level identified in the field of view.
        method: how the result was found (``"network (sarcopenia-l3-detector 1.0.0)"`` or ``"rules"``).
        cross_check: the rule-based result: ``index``, ``levels``, ``agreement`` (bool), ``difference_mm``,
            ``difference_levels``, ``numbering_offset``, ``disagreement_warning`` (the sentence when the count
            disagrees with the detector, else None), the rules' ``anchors`` and own ``warnings``;
            ``{"available": False, "reason": ...}`` when the rules could not count. Always added: ``transitional``,
            ``count_anchors`` (where the last rib and the sacrum were seen on the named levels), ``unnamed`` (levels left
            unnamed at the edge of the field of view, with why) and ``names_uncertain`` (no anchor confirms the
            names).
        warnings: sentences for the user (disagreement, transitional anatomy, fall-back used).
        fallback_used: True when ``level`` is not L3.
        seconds: time taken.
    """

    index: int
    position_mm: float
    level: str
    confidence: float
    levels: dict[str, int]
    method: str
    cross_check: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fallback_used: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result as a plain JSON-able dict."""
        return {"index": self.index, "position_mm": self.position_mm, "level": self.level,
                "confidence": self.confidence, "levels": dict(self.levels), "method": self.method,
                "cross_check": self.cross_check, "warnings": list(self.warnings),
                "fallback_used": self.fallback_used, "seconds": self.seconds}


def check_ct_for_l3(image: Image) -> None:
    """Raise a clear error when ``image`` cannot hold an L3 slice to find; return None when it can.

    The checks of :func:`mskseg.spine.checks.check_ct_for_levels`: a 3D volume, more than one slice, usable
    spacing, axial slices, a CT in Hounsfield units, and a field of view that reaches below the thorax.

    Raises:
        InvalidImageError: 2D image, one slice, extreme spacing, non-axial slices, not CT in HU.
        L3NotFoundError: the field of view ends in the thorax (no lumbar spine).
    """
    try:
        check_ct_for_levels(image)
    except L3NotFoundError:
        raise
    except LevelNotFoundError as exc:
        raise L3NotFoundError(exc.message, exc.hint) from exc


def _not_found_message(present: Sequence[str]) -> str:
    where = ", ".join(present) if present else "no vertebral level could be identified"
    return (f"L3 is not in the field of view (levels found: {where}); the fall-back order of Derstine 2018 is "
            f"{', '.join(FALLBACK_ORDER)}")


def _choose_level(levels_mm: dict[str, float], present: list[str], learned: bool,
                  allow_fallback: bool) -> str:
    """L3, or the first fall-back level present (when allowed); raises L3NotFoundError otherwise."""
    if not any(n.startswith("L") for n in present) and (
            not learned or max(vertebra_order(n) for n in present or ["T1"]) < vertebra_order("T12")):
        raise L3NotFoundError(
            "no lumbar vertebra was found: the field of view seems to end above T12"
            + (f" (levels found: {', '.join(present)})" if present else ""),
            "load a CT that covers the abdomen (at least T12 to L4)")
    if "L3" in levels_mm:
        return "L3"
    if not allow_fallback:
        raise L3NotFoundError(_not_found_message(present),
                              "load a CT that covers L3, or allow the fall-back level (allow_fallback=True, "
                              "--allow-fallback)")
    level = next((n for n in FALLBACK_ORDER if n in levels_mm), "")
    if not level:
        raise L3NotFoundError(_not_found_message(present) + "; none of these levels is in the field of view",
                              "load a CT that covers the lumbar spine")
    return level


def detect_l3(image: Image, *, device: str = "auto", progress: Progress | None = None,
              cancel_token: CancelToken | None = None, allow_fallback: bool = False,
              card: ModelCard | None = None, cross_check: bool = True) -> L3Result:
    """Find the slice through the centre of the L3 vertebral body.

    Args:
        image: CT volume in HU, (K, J, I), axial slices.
        device: torch device for the network ("auto", "cpu", "cuda", ...); the network is small, the CPU is fine.
        progress: ``progress(fraction, message)``; returning False cancels.
        cancel_token: cancels from another thread.
        allow_fallback: when L3 is not in the field of view, return the first level present in the order
            L2, L4, L5, L1, T12, T11, T10 instead of raising.
        card: the detector's model card (default: the installed ``sarcopenia-l3-detector``; without one the
            rule-based count is used alone, with a warning).
        cross_check: also run the rule-based count (recommended; about a second).

    Returns:
        :class:`L3Result`.

    Raises:
        InvalidImageError: the image cannot hold an L3 slice (see :func:`check_ct_for_l3`).
        L3NotFoundError: L3 is not in the field of view and ``allow_fallback`` is False (the message names
            the levels found), or no level at all was found.
        CancelledError: cancelled.
    """
    t0 = time.perf_counter()
    try:
        found = find_vertebra_levels(image, device=device, progress=progress, cancel_token=cancel_token,
                                     card=card, cross_check=cross_check, what="finding L3")
    except L3NotFoundError:
        raise
    except LevelNotFoundError as exc:
        raise L3NotFoundError(exc.message, exc.hint) from exc
    warnings = list(found.warnings)
    level = _choose_level(found.levels_mm, found.present, found.network is not None, allow_fallback)
    fallback_used = level != "L3"
    if fallback_used:
        warnings.append(f"L3 is not in the field of view: {level} is used instead (fall-back order of Derstine "
                        f"2018: {', '.join(FALLBACK_ORDER)}); cut-offs published for L3 may not apply")
    confidence = float(found.confidence.get(level, 0.5))
    check, factor, disagreement = cross_check_level(found, level)
    if disagreement is not None:
        confidence *= factor
        warnings.append(disagreement)
    check["transitional"] = found.transitional
    check["count_anchors"] = found.transitional.get("anchors", {})
    check["unnamed"] = dict(found.unnamed)
    count, count_factor = count_warning(found)
    check["names_uncertain"] = count is not None
    if count is not None:
        warnings.append(count)
        confidence *= count_factor
    transitional = transitional_warning(found)
    if transitional is not None:
        warnings.append(transitional)
        confidence *= 0.6
    index = found.slice_of(found.levels_mm[level])
    position = float(image.index_to_physical(np.array([0.0, 0.0, float(index)]))[2])
    ProgressReporter(progress, cancel_token, "finding L3").report(1.0, f"{level} at slice {index}")
    return L3Result(index=index, position_mm=position, level=level, confidence=round(float(confidence), 3),
                    levels=found.slices(), method=found.method, cross_check=check, warnings=warnings,
                    fallback_used=fallback_used, seconds=round(time.perf_counter() - t0, 3))
