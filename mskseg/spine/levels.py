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

__all__ = ["DISAGREEMENT_MM", "LevelNotFoundError", "VertebraLevels", "check_ct_for_levels", "cross_check_level",
           "find_vertebra_levels", "transitional_warning"]

#: A level placed further than this (mm) from the rule-based count is a disagreement.
DISAGREEMENT_MM = 10.0


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
        transitional: ``{"findings": [...], "measurements": {...}, "learned_rib_minus_sacrum": float | None}``
            from :func:`mskseg.spine.transitional.transitional_findings`.
        warnings: sentences for the user (e.g. no detector installed).
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
    # transitional anatomy: targeted checks of the CT around the levels (ribs at T11/T12/L1, alae at and below L5)
    reporter.report(0.9, "checking for transitional anatomy")
    findings, measured = transitional_findings(image, levels_mm, proj, None if rules is None else rules.last_rib_mm)
    transitional = {"findings": findings, "measurements": measured,
                    "learned_rib_minus_sacrum": None if net is None else round(float(net.rib_minus_sacrum), 2)}
    return VertebraLevels(levels_mm, level_conf, method, proj, net, rules, rules_error, transitional, warnings)


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
    # where the rule-based anchors sit on the learned levels: reported, not used to flag (the rules' last-rib
    # and sacrum finders are too weak for that, see mskseg.spine.transitional)
    check["anchor_findings"] = anchor_findings(found.levels_mm, rules)
    return check, factor, warning


def transitional_warning(found: VertebraLevels) -> str | None:
    """The sentence for the user when transitional anatomy was found (None when none was)."""
    findings = found.transitional.get("findings") or []
    if not findings:
        return None
    return (f"transitional anatomy: {'; '.join(findings)}; the levels are numbered from the top (T1 carries the "
            "first ribs), so counts from the last rib or from the sacrum differ; possible transitional vertebra: "
            "check the level by counting from T1 or on a scout view")
