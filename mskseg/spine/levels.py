"""Find every vertebral level in a CT: the learned detector, the rule-based cross-check and transitional anatomy.

Two methods look at the same CT and each says where the vertebral levels are:

1. The learned detector (primary, :mod:`mskseg.spine.levelnet`): the bone projections of
   :mod:`mskseg.spine.geometry` read by a small network whose per-row level coordinate is decoded into level
   centres.
2. The rule-based count (cross-check, independent of any network, :mod:`mskseg.spine.rules`).

:func:`find_vertebra_levels` runs both, plus the targeted checks for transitional anatomy
(:mod:`mskseg.spine.transitional`), and returns every level found (:class:`VertebraLevels`). A task then picks
its level and asks :func:`cross_check_level` how the rule-based count agrees with it; SarcopeniaSeg does this in
:func:`mskseg.sarcopenia.l3.detect_l3`. :func:`check_ct_for_levels` rejects images that cannot hold the lumbar
levels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..anatomy import vertebra_order
from ..engine import CancelToken, Progress, ProgressReporter
from ..errors import MSKSegError
from ..image import Image
from .checks import LevelNotFoundError, check_ct_for_levels
from .geometry import BoneProjections, bone_projections, slice_of, vertebra_height
from .levelnet import (DETECTOR_CARD_NAME, LEVEL_INDEX, NetworkLevels, detector_levels, find_detector_card,
                       load_detector, network_levels)
from .rules import RuleLevels, rule_based_levels
from .transitional import anchor_findings, transitional_findings

if TYPE_CHECKING:
    from ..models.cards import ModelCard

__all__ = ["DISAGREEMENT_MM", "EDGE_FRACTION", "LevelNotFoundError", "VertebraLevels", "check_ct_for_levels",
           "count_warning", "cross_check_level", "find_vertebra_levels", "numbering_offset", "transitional_warning",
           "trim_levels"]

#: A level placed further than this (mm) from the rule-based count is a disagreement.
DISAGREEMENT_MM = 10.0
#: A level whose body centre lies closer than this share of a vertebra (the median distance between level
#: centres) to the top or bottom of the field of view is only partly in view (a vertebral body is about 0.8 of
#: that distance high): it is not named.
EDGE_FRACTION = 0.4
#: Two named levels closer than this share of a vertebra are not two vertebrae: the less confident is not named.
MIN_GAP_FRACTION = 0.5
#: Confidence factor when neither anchor of the count (sacrum, last rib) is in the field of view.
NO_ANCHOR_FACTOR = 0.6


@dataclass
class VertebraLevels:
    """Every vertebral level found in a CT, and how.

    Attributes:
        levels_mm: vertebra name -> LPS z (mm) of its body centre, for every level in the field of view.
        confidence: vertebra name -> 0..1 (the network's peak sharpness and ramp fit; 0.5 for rule-based levels).
        method: ``"network (<card name> <version>)"`` or ``"rules"``.
        projections: the bone projections (their rows map z to input slices, :meth:`slice_of`).
        network: what the learned detector found (None without a detector card).
        rules: what the rule-based count found (None when it was not run or could not count).
        rules_error: why the rules could not count (empty when they could or were not run).
        transitional: ``{"findings": [...], "measurements": {...}, "anchors": {...},
            "learned_rib_minus_sacrum": float | None}`` from :func:`mskseg.spine.transitional.transitional_findings`
            (``anchors``: where the last rib and the sacrum were seen, :func:`~mskseg.spine.transitional.count_anchors`).
        warnings: sentences for the user (e.g. no detector installed).
        unnamed: level name -> why a level the detector or the rules placed was left unnamed (its body only
            partly in the field of view, or too close to its neighbour to be another vertebra).
    """

    levels_mm: dict[str, float]
    confidence: dict[str, float]
    method: str
    projections: BoneProjections
    network: NetworkLevels | None = None
    rules: RuleLevels | None = None
    rules_error: str = ""
    transitional: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unnamed: dict[str, str] = field(default_factory=dict)

    @property
    def present(self) -> list[str]:
        """Names of the levels found, from the head down."""
        return sorted(self.levels_mm, key=vertebra_order)

    def slice_of(self, z_mm: float) -> int:
        """Input slice index nearest to ``z_mm``."""
        return slice_of(z_mm, self.projections)

    def slices(self) -> dict[str, int]:
        """Vertebra name -> input slice index of its centre, from the head down."""
        return {n: self.slice_of(self.levels_mm[n]) for n in self.present}


def find_vertebra_levels(image: Image, *, device: str = "auto", progress: Progress | None = None,
                         cancel_token: CancelToken | None = None, card: ModelCard | None = None,
                         cross_check: bool = True, what: str = "finding vertebral levels") -> VertebraLevels:
    """Find the centre of every vertebral body in the field of view of a CT.

    Args:
        image: CT volume in HU, (K, J, I), axial slices.
        device: torch device for the network ("auto", "cpu", "cuda", ...); the network is small, the CPU is fine.
        progress: ``progress(fraction, message)``; returning False cancels (reported up to 0.95).
        cancel_token: cancels from another thread.
        card: the detector's model card (default: the installed one, :func:`find_detector_card`; without one
            the rule-based count is used alone, with a warning).
        cross_check: also run the rule-based count (recommended; about a second).
        what: what the caller is doing, for the cancellation message.

    Returns:
        :class:`VertebraLevels`.

    Raises:
        InvalidImageError: the image cannot hold the levels (see :func:`check_ct_for_levels`).
        LevelNotFoundError: the field of view ends in the thorax, or no level at all was found.
        CancelledError: cancelled.
    """
    reporter = ProgressReporter(progress, cancel_token, what)
    reporter.report(0.0, "checking the CT")
    check_ct_for_levels(image)
    warnings: list[str] = []
    reporter.report(0.1, "computing bone projections")
    proj = bone_projections(image)
    card = card if card is not None else find_detector_card()
    net: NetworkLevels | None = None
    method = "rules"
    if card is not None:
        from ..engine import choose_device

        dev = choose_device(device).device
        reporter.report(0.3, "running the vertebral-level detector")
        net = network_levels(proj, load_detector(card, dev), dev, detector_levels(card))
        method = f"network ({card.name} {card.version})"
    else:
        warnings.append(f"no L3 detector model ({DETECTOR_CARD_NAME}) is installed: the level was counted by "
                        "anatomical rules alone, which is less reliable")
    rules: RuleLevels | None = None
    rules_error = ""
    if cross_check or net is None:
        reporter.report(0.5, "counting vertebrae by anatomical rules (cross-check)")
        try:
            rules = rule_based_levels(image)
        except MSKSegError as exc:
            rules_error = exc.message
    if net is not None:
        levels_mm = dict(net.levels_mm)
        level_conf = dict(net.level_confidence)
    elif rules is not None:
        z_lo, z_hi = float(proj.z_mm.min()), float(proj.z_mm.max())
        levels_mm = {n: z for n, z in rules.levels.items() if z_lo <= z <= z_hi and n in LEVEL_INDEX}
        level_conf = {n: 0.5 for n in levels_mm}
    else:
        raise LevelNotFoundError(f"no vertebral level could be identified: {rules_error}",
                                 "check that the CT covers the lumbar spine; set the L3 slice by hand")
    unnamed = trim_levels(levels_mm, level_conf, float(proj.z_mm.min()), float(proj.z_mm.max()))
    # transitional anatomy: targeted checks of the CT around the levels (ribs at T11/T12/L1, alae at and below L5)
    reporter.report(0.9, "checking for transitional anatomy")
    findings, measured = transitional_findings(image, levels_mm, proj, None if rules is None else rules.last_rib_mm,
                                               None if rules is None else rules.sacrum_top_mm)
    anchors = measured.pop("anchors", {})
    transitional = {"findings": findings, "measurements": measured, "anchors": anchors,
                    "learned_rib_minus_sacrum": None if net is None else round(float(net.rib_minus_sacrum), 2)}
    return VertebraLevels(levels_mm, level_conf, method, proj, net, rules, rules_error, transitional, warnings,
                          unnamed)


def trim_levels(levels_mm: dict[str, float], confidence: dict[str, float], z_lo: float,
                z_hi: float) -> dict[str, str]:
    """Leave unnamed (remove from ``levels_mm`` and ``confidence``, in place) the levels that are not a whole
    vertebra in view: a body centre closer than EDGE_FRACTION of a vertebra to the top or bottom of the field of
    view (part of the body is outside it, and its name would rest on counting up to an edge), and the less
    confident of two levels closer than MIN_GAP_FRACTION of a vertebra to each other.

    Returns:
        level name -> why it was left unnamed.
    """
    unnamed: dict[str, str] = {}
    height = vertebra_height(levels_mm)
    for name in sorted(levels_mm, key=vertebra_order):
        z = levels_mm[name]
        edge = min(z - z_lo, z_hi - z)
        if edge < EDGE_FRACTION * height:
            unnamed[name] = (f"its body is only partly in the field of view (centre {edge:.0f} mm from the "
                             f"{'bottom' if z - z_lo < z_hi - z else 'top'} edge)")
    for name in unnamed:
        levels_mm.pop(name, None)
        confidence.pop(name, None)
    while True:
        names = sorted(levels_mm, key=vertebra_order)
        close = [(a, b) for a, b in zip(names[:-1], names[1:])
                 if abs(levels_mm[a] - levels_mm[b]) < MIN_GAP_FRACTION * height]
        if not close:
            return unnamed
        a, b = close[0]
        drop, keep = (a, b) if confidence.get(a, 0.0) < confidence.get(b, 0.0) else (b, a)
        unnamed[drop] = f"placed {abs(levels_mm[a] - levels_mm[b]):.0f} mm from {keep}, closer than a vertebra"
        levels_mm.pop(drop)
        confidence.pop(drop, None)


def count_warning(found: VertebraLevels) -> tuple[str | None, float]:
    """What the anchors of the count say about the level names: ``(sentence or None, confidence factor)``.

    * Neither the sacrum nor the last rib-bearing vertebra is in the field of view: the names are counted from
      an edge of the field of view by the shape of the spine alone, and may be one off.
    * One anchor is seen and falls one level away from where the names put it, the other is not in view: a
      transitional vertebra and names one level off cannot be told apart.
    """
    if found.network is None and found.rules is None:
        return None, 1.0
    anchors = found.transitional.get("anchors") or {}
    rib, sacrum = anchors.get("last_rib") or {}, anchors.get("sacrum") or {}
    present = found.present
    span = f"{present[0]}-{present[-1]}" if present else "none"
    if not rib.get("seen") and not sacrum.get("seen"):
        return (f"the field of view holds no sacrum and no last rib: the level names ({span}) are counted from the "
                "shape of the spine alone, with no anatomical anchor, and may be one off; check the level on a "
                "scout view or a CT that shows the sacrum or the last rib"), NO_ANCHOR_FACTOR
    if rib.get("at") in ("T11", "L1") and not sacrum.get("seen"):
        pairs = {"T11": 11, "L1": 13}[rib["at"]]
        return (f"the last rib-bearing vertebra is the one named {rib['at']}: either {pairs} rib pairs, or that "
                "vertebra is T12 and every level name is one off; no sacrum is in the field of view to tell them "
                "apart: check the level"), NO_ANCHOR_FACTOR
    if sacrum.get("at") in ("L5", "below S1") and not rib.get("seen"):
        text = ("the sacral alae lie beside the vertebra named L5: either a sacralised L5, or that vertebra is S1"
                if sacrum["at"] == "L5" else "the sacrum begins more than a vertebra below the one named L5: "
                "either a sixth lumbar-type vertebra, or the vertebra below it is L5")
        return (f"{text} and every level name is one off; no last rib is in the field of view to tell them "
                "apart: check the level"), NO_ANCHOR_FACTOR
    return None, 1.0


def cross_check_level(found: VertebraLevels, level: str) -> tuple[dict[str, Any], float, str | None]:
    """How the rule-based count agrees with the learned detector at ``level``.

    Returns:
        ``(check, confidence factor, warning)``: ``check`` holds the rule-based result (``index``, ``levels``,
        ``agreement``, ``difference_mm``, ``difference_levels``, ``anchors``, ``lumbar_count``, its own
        ``warnings``, ``anchor_findings``), or ``{"available": False, "reason": ...}`` when the rules could not
        count; the factor (1, 0.7 or 0.5) lowers the level's confidence when the two disagree by more than
        :data:`DISAGREEMENT_MM`, and the warning then says so.
    """
    rules, proj = found.rules, found.projections
    if rules is None:
        return {"available": False, "reason": found.rules_error or "not run"}, 1.0, None
    factor, warning = 1.0, None
    check: dict[str, Any] = {
        "available": True, "levels": {n: slice_of(z, proj) for n, z in rules.levels.items()
                                      if proj.z_mm.min() <= z <= proj.z_mm.max()},
        "anchors": {"sacrum_top_mm": rules.sacrum_top_mm, "last_rib_mm": rules.last_rib_mm},
        "lumbar_count": rules.lumbar_count, "warnings": list(rules.warnings),
        "bone_threshold_hu": rules.bone_threshold_hu}
    offset, pairs = numbering_offset(found.levels_mm, rules.levels)
    check["numbering_offset"] = offset
    rule_z = rules.levels.get(level)
    if rule_z is not None:
        diff_mm = float(rule_z - found.levels_mm[level])
        height = vertebra_height(found.levels_mm)
        check.update(index=slice_of(rule_z, proj), difference_mm=round(diff_mm, 1),
                     difference_levels=round(diff_mm / height, 2), agreement=bool(abs(diff_mm) <= DISAGREEMENT_MM))
        if found.network is not None and abs(diff_mm) > DISAGREEMENT_MM:
            factor = 0.7 if abs(diff_mm) < 0.6 * height else 0.5
            warning = (f"the anatomical-rule count puts {level} {abs(diff_mm):.0f} mm "
                       f"{'higher' if diff_mm > 0 else 'lower'} (about {abs(diff_mm) / height:.1f} vertebra); "
                       "check the level")
    else:
        check.update(index=None, difference_mm=None, difference_levels=None, agreement=False)
        if found.network is not None and offset:
            # the rules name none of this level but count the vertebrae they share with the detector differently
            net_name, rule_name = pairs[0]
            factor = 0.5 if abs(offset) > 1 else 0.7
            warning = (f"the anatomical-rule count numbers the vertebrae differently (about {abs(offset)} "
                       f"level{'s' if abs(offset) > 1 else ''} apart): it calls the detector's {net_name} "
                       f"{rule_name} and has no {level}; check the level")
    check["disagreement_warning"] = warning
    # where the rule-based anchors sit on the learned levels: reported, not used to flag (the rules' last-rib
    # and sacrum finders are too weak for that, see mskseg.spine.transitional)
    check["anchor_findings"] = anchor_findings(found.levels_mm, rules)
    return check, factor, warning


def numbering_offset(levels_mm: dict[str, float], rule_levels: dict[str, float]) -> tuple[int, list[tuple[str, str]]]:
    """How many levels the rule-based names are off the detector's on the vertebrae both placed (a rule level
    within 0.35 vertebra of a detector level is the same vertebra): ``(median offset, positive when the rules'
    names are higher up the spine; [(detector name, rule name), ...] of the vertebrae named differently)``."""
    height = vertebra_height(levels_mm)
    offsets: list[int] = []
    differ: list[tuple[str, str]] = []
    for rule_name, z in rule_levels.items():
        near = [(abs(z - zn), n) for n, zn in levels_mm.items()]
        if not near or min(near)[0] >= 0.35 * height:
            continue
        net_name = min(near)[1]
        if net_name not in LEVEL_INDEX or rule_name not in LEVEL_INDEX:
            continue
        offsets.append(LEVEL_INDEX[net_name] - LEVEL_INDEX[rule_name])  # typical numbering: no T13 or L6
        if net_name != rule_name:
            differ.append((net_name, rule_name))
    if not offsets:
        return 0, []
    return int(np.round(np.median(offsets))), differ


def transitional_warning(found: VertebraLevels) -> str | None:
    """The sentence for the user when transitional anatomy was found (None when none was)."""
    findings = found.transitional.get("findings") or []
    if not findings:
        return None
    return (f"transitional anatomy: {'; '.join(findings)}; the levels are numbered from the top (T1 carries the "
            "first ribs), so counts from the last rib or from the sacrum differ; possible transitional vertebra: "
            "check the level by counting from T1 or on a scout view")
