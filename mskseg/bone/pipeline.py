"""Bone segmentation and opportunistic bone density of a CT, as named steps: the ONE orchestration of the task.

The command line (``mskseg bone``), the Slicer module's Logic (:mod:`mskseg.bone.scene`), the background
worker and the batch runner all call :func:`run_bone`, which runs, in order and each timed
(:class:`mskseg.steps.StepRunner`):

1. ``validate``: a CT volume in HU (the checks of SarcopeniaSeg: not MR, not a picture, not 2D, not a single
   slice, usable spacing); brought to the canonical orientation (:mod:`mskseg.orientation`);
2. ``levels``: the vertebral levels from the shared finder (:func:`mskseg.spine.levels.find_vertebra_levels`),
   or the ones the user gave; when none can be found the column stays one class and a warning says why;
3. ``segment``: the rule-based bone segmentation (:mod:`mskseg.bone.rules`), or a bone model card's network
   with the rules as cross-check (all-bone Dice of the two reported);
4. ``measure``: volume, mean and SD of HU per class; trabecular HU of L1-L4, the contrast phase and the
   screening flag (:mod:`mskseg.bone.density`).

The label map comes back on exactly the source grid; slice indices in the result count along the stored
volume's axial axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import CancelToken, Progress
from ..errors import InvalidImageError, MSKSegError
from ..image import Image
from ..io.common import Labels, to_jsonable
from ..orientation import Reorientation, labelmap_to_source, to_canonical
from ..steps import StepRunner

STEP_WEIGHTS = {"validate": 0.02, "levels": 0.18, "segment": 0.70, "measure": 0.10}
STEPS = tuple(STEP_WEIGHTS)
METHODS = ("auto", "rules", "network")
#: Smallest volume the rules can work on: slices and pixels per axis.
MIN_SLICES = 3
MIN_PIXELS = 32
MAX_SLICE_SPACING_MM = 10.0
PIXEL_RANGE_MM = (0.2, 3.0)


@dataclass
class BoneCanonical:
    """The run as the steps saw it (canonical orientation), for the report."""

    image: Image
    labelmap: np.ndarray
    level_slices: dict[str, int]
    densities: list[Any]
    spine: Any
    reorientation: Reorientation


@dataclass
class BoneResult:
    """What :func:`run_bone` found and measured.

    Attributes:
        labelmap: bone classes on exactly the source grid; labels: value -> class name.
        method: ``"rules"`` or ``"network (<card>)"``.
        levels: vertebra name -> slice (stored axial axis) of its body centre; level_method: how found.
        rows: one measurement row per class (volume_cm3, mean_HU, SD_HU) and one per lumbar level
            (trabecular_HU, trabecular_SD_HU, trabecular_HU_corrected, roi_area_mm2, slices).
        density: the phase, the L1 value and the screening flag.
        cross_check: the rules' all-bone Dice with the network's, when a network ran.
        warnings, timings; canonical: the run in canonical orientation (report).
    """

    labelmap: Image
    labels: Labels
    method: str
    levels: dict[str, int]
    level_method: str
    rows: list[dict[str, Any]]
    density: dict[str, Any]
    cross_check: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    canonical: BoneCanonical | None = None

    units = {"volume_cm3": "cm3", "mean_HU": "HU", "SD_HU": "HU", "trabecular_HU": "HU",
             "trabecular_SD_HU": "HU", "trabecular_HU_corrected": "HU", "roi_area_mm2": "mm2"}

    @property
    def summary(self) -> dict[str, Any]:
        """Headline values: all-bone volume, L1 trabecular HU (raw and corrected), phase and flag."""
        classes = [r for r in self.rows if r.get("row") == "class"]
        return {"bone_volume_cm3": round(sum(r["volume_cm3"] for r in classes), 2),
                "L1_trabecular_HU": self.density.get("L1_HU"),
                "L1_trabecular_HU_corrected": self.density.get("L1_HU_corrected"),
                "phase": self.density.get("phase", {}).get("phase"),
                "screening_flag": self.density.get("flag", {}).get("flag")}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready account of the run (for ``metrics.json``)."""
        return {"method": self.method, "levels": dict(self.levels), "level_method": self.level_method,
                "classes": {str(v): n for v, n in sorted(self.labels.items())},
                "summary": to_jsonable(self.summary), "density": to_jsonable(self.density),
                "cross_check": to_jsonable(self.cross_check), "warnings": list(self.warnings),
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


def check_bone_ct(image: Image) -> None:
    """Refuse what the bone pipeline cannot read: the checks of :func:`mskseg.sarcopenia.pipeline.check_ct`
    (2D, not CT, not HU), too few slices or pixels, extreme spacing.

    Raises:
        InvalidImageError: with a message that says why and what to do.
    """
    from ..sarcopenia.pipeline import check_ct

    what = "bone segmentation"
    try:
        check_ct(image)
    except InvalidImageError as error:
        raise InvalidImageError(error.message.replace("body composition at L3", what), error.hint) from None
    canon, _ = to_canonical(image)
    k, j, i = canon.array.shape
    if k < MIN_SLICES or j < MIN_PIXELS or i < MIN_PIXELS:
        raise InvalidImageError(
            f"the volume is too small for {what} ({i} x {j} pixels, {k} slice(s)); at least {MIN_PIXELS} x "
            f"{MIN_PIXELS} pixels and {MIN_SLICES} axial slices are needed",
            "give the whole CT series, not a crop or a few slices")
    sx, sy, sz = canon.spacing
    if sz > MAX_SLICE_SPACING_MM:
        raise InvalidImageError(f"slice spacing {sz:.1f} mm is too coarse for {what} (limit "
                                f"{MAX_SLICE_SPACING_MM:.0f} mm)", "use a reconstruction with slices of 5 mm or thinner")
    for name, value in (("column", sx), ("row", sy)):
        if not PIXEL_RANGE_MM[0] <= value <= PIXEL_RANGE_MM[1]:
            raise InvalidImageError(
                f"in-plane pixel size ({name} spacing) {value:.3g} mm is outside {PIXEL_RANGE_MM[0]}-"
                f"{PIXEL_RANGE_MM[1]} mm; the spacing in the header is probably wrong",
                "check the file's spacing (DICOM PixelSpacing, NIfTI pixdim, NRRD space directions)")


def run_bone(image: Image, *, method: str = "auto", classes: Any = "all", levels: dict[str, int] | None = None,
             model_card: Any = None, device: str = "auto", progress: Progress | None = None,
             cancel_token: CancelToken | None = None) -> BoneResult:
    """Segment the bones of a CT, name them where rules can, and measure them.

    Args:
        image: CT volume in HU, any storage orientation.
        method: ``"rules"``, ``"network"`` (a bone model card's network; needs ``model_card``), or ``"auto"``
            (the network when a card is given, else the rules).
        classes: ``"all"``, ``"bone"`` (one class) or group names (see :func:`mskseg.bone.rules.parse_classes`).
        levels: vertebra name -> slice index along the stored axial axis of its body centre, given by the user
            (then the level finder does not run).
        model_card: a bone model card (object, path or name) for the network method.
        device, progress, cancel_token: as for every task.

    Raises:
        InvalidImageError: not a CT volume the pipeline can read; MSKSegError: bad options.
        CancelledError: cancelled.
    """
    from ..ctvalues import map_padding_to_air
    from ..spine.checks import LevelNotFoundError
    from .density import contrast_phase, measure_lumbar_density, screening_flag
    from .rules import BONE_VALUE, classify_bone, find_aorta, parse_classes, restrict_classes, segment_bone

    if method not in METHODS:
        raise MSKSegError(f"unknown method '{method}'", f"use one of {', '.join(METHODS)}")
    parse_classes(classes)
    warnings: list[str] = []
    runner = StepRunner(STEP_WEIGHTS, progress, cancel_token, what="bone analysis")
    with runner.step("validate", "checking the CT"):
        check_bone_ct(image)
        canon, how = to_canonical(image)
        canon, padding = map_padding_to_air(canon)
        if padding:
            warnings.append(padding)
        use_network = method == "network" or (method == "auto" and model_card is not None)
        if use_network and model_card is None:
            raise MSKSegError("the network method needs a bone model card",
                              "give --model CARD, or use --method rules (no bone network is installed yet)")
        k_n = canon.array.shape[0]
        user_levels = None
        if levels:
            from ..anatomy import vertebra_from_name

            user_levels = {}
            for name, index in levels.items():
                level = vertebra_from_name(str(name))
                if level is None or not 0 <= int(index) < how.source_shape[how.axial_axis]:
                    raise MSKSegError(f"level {name} at slice {index}: not a vertebra or outside the volume",
                                      "give vertebra names and slice indices along the axial axis, e.g. L1=57")
                user_levels[level] = how.canonical_slice(int(index))

    with runner.step("levels", "finding the vertebral levels") as report:
        if user_levels is not None:
            level_slices, level_method = user_levels, "user"
        else:
            from ..spine.levels import find_vertebra_levels

            try:
                found = find_vertebra_levels(canon, device=device, progress=report, cancel_token=cancel_token,
                                             what="finding the vertebral levels")
                level_slices = {n: k for n, k in found.slices().items() if 0 <= k < k_n}
                level_method = found.method
                warnings += [w for w in found.warnings if "L3 detector" not in w]
            except (LevelNotFoundError, InvalidImageError) as error:
                level_slices, level_method = {}, "none"
                warnings.append(f"vertebral levels not found ({error.message}): vertebrae are not named")

    with runner.step("segment", "segmenting the bones") as report:
        hu = np.asarray(canon.array)
        bone, details = segment_bone(hu, canon.spacing)
        report(0.6, "naming the bones")
        rules = classify_bone(hu, bone, canon.spacing, level_slices)
        warnings += rules.warnings
        labelmap, labels, method_name, cross = rules.labelmap, dict(rules.labels), "rules", {}
        if use_network:
            labelmap, labels, method_name, cross = _network(canon, model_card, device, report, cancel_token, bone)
        labelmap, labels = restrict_classes(labelmap, labels, classes)

    with runner.step("measure", "measuring"):
        spacing = canon.spacing
        rows: list[dict[str, Any]] = class_rows(hu, labelmap, labels, spacing)
        spine = rules.spine
        phase = contrast_phase(find_aorta(hu, bone, spine, spacing))
        # density on the rules' named vertebrae (whatever classes were asked for in the output)
        level_values = {n[len("vertebrae_"):]: v for n, v in BONE_VALUE.items() if n.startswith("vertebrae_")}
        densities = measure_lumbar_density(hu, rules.labelmap, level_values, level_slices, spine, spacing, phase)
        for d in densities:
            rows.append({"row": "level", "class": f"{d.level} trabecular ROI", "level": d.level,
                         "trabecular_HU": d.mean_hu, "trabecular_SD_HU": d.sd_hu,
                         "trabecular_HU_corrected": d.corrected_hu, "roi_area_mm2": d.area_mm2,
                         "slices": [how.source_slice(k) for k in d.slices]})
        l1 = next((d for d in densities if d.level == "L1"), None)
        flag = screening_flag(None if l1 is None else l1.corrected_hu)
        missing = [n for n in ("L1", "L2", "L3", "L4") if n not in {d.level for d in densities}]
        if missing:
            warnings.append(f"trabecular HU not measured at {', '.join(missing)} (not in view, not found or no ROI)")
        density = {"phase": phase.as_dict(), "L1_HU": None if l1 is None else l1.mean_hu,
                   "L1_HU_corrected": None if l1 is None else l1.corrected_hu, "flag": flag,
                   "roi": "ellipse 30 % x 25 % of the vertebral body's width and depth, slightly in front of its "
                          "centre, >= 3 mm inside the cortex, on the mid-body slices (within 3 mm)"}

    level_out = {n: how.source_slice(k) for n, k in sorted(level_slices.items(), key=lambda t: -t[1])}
    view = BoneCanonical(canon, labelmap, level_slices, densities, spine, how)
    return BoneResult(labelmap=labelmap_to_source(canon.with_array(labelmap, keep_metadata=False), image, how),
                      labels=labels, method=method_name, levels=level_out, level_method=level_method, rows=rows,
                      density=density, cross_check=cross, warnings=list(dict.fromkeys(warnings)),
                      timings=dict(runner.timings), canonical=view)


def class_rows(hu: np.ndarray, labelmap: np.ndarray, labels: Labels, spacing) -> list[dict[str, Any]]:
    """One row per class present in ``labelmap``: volume (cm3), mean and SD of HU (any orientation)."""
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    rows: list[dict[str, Any]] = []
    flat = np.asarray(labelmap).astype(np.int64).ravel()
    values = np.asarray(hu).ravel().astype(np.float64)
    size = max(int(flat.max(initial=0)) + 1, 256)
    counts = np.bincount(flat, minlength=size)
    sums = np.bincount(flat, weights=values, minlength=size)
    squares = np.bincount(flat, weights=values ** 2, minlength=size)
    for value, name in sorted(labels.items()):
        n = counts[value] if value < size else 0
        if n == 0:
            continue
        mean = sums[value] / n
        rows.append({"row": "class", "class": name, "volume_cm3": round(float(n * voxel_cm3), 3),
                     "mean_HU": round(float(mean), 1),
                     "SD_HU": round(float(np.sqrt(max(squares[value] / n - mean ** 2, 0.0))), 1)})
    return rows


def _network(canon: Image, model_card: Any, device: str, report: Progress, cancel_token, rules_bone: np.ndarray):
    """The network of a bone model card on the canonical image; the rules' all-bone mask as cross-check."""
    from pathlib import Path

    from ..models import resolve_model_card
    from ..pipeline import check_input, segment_image

    card = resolve_model_card(model_card) if isinstance(model_card, (str, Path)) else model_card
    check_input(canon, card)
    result = segment_image(canon, card, device=device, progress=report, cancel_token=cancel_token)
    labelmap = np.asarray(result.labelmap.array).astype(np.uint8)
    net_bone = labelmap > 0
    dice = 2.0 * float((net_bone & rules_bone).sum()) / max(float(net_bone.sum() + rules_bone.sum()), 1.0)
    return labelmap, dict(result.labels), f"network ({card.name} {card.version})", \
        {"rules_all_bone_dice": round(dice, 4)}


def summarise_bone(result: BoneResult) -> dict[str, Any]:
    """The result's row of a cohort table: method, levels found, the summary and the warnings."""
    return {"method": result.method, "level_method": result.level_method, **result.summary,
            "warnings": list(result.warnings)}
