"""Body composition at L3, from a CT volume to measurements, as named steps: the ONE orchestration of the task.

The command line (``mskseg sarcopenia``), the Slicer module's Logic (:mod:`mskseg.sarcopenia.slicer`) and the
batch runner all call :func:`run_sarcopenia`, which runs, in order and each timed
(:class:`mskseg.steps.StepRunner`):

1. ``validate``: the image must be a CT volume in Hounsfield units that can hold a lumbar spine
   (:func:`mskseg.sarcopenia.l3.check_ct_for_l3`; only :func:`check_ct` when the slice is given): MR,
   radiographs, pictures, 2D images, thorax-only scans, single slices and extreme spacings are refused with a
   message that says why. The volume is brought to the canonical orientation (:mod:`mskseg.orientation`):
   every later step sees the same voxels whatever the storage orientation;
2. ``locate``: the L3 slice (:func:`mskseg.sarcopenia.l3.detect_l3`), or the slice the user chose;
3. ``segment``: skeletal muscle, subcutaneous, visceral and intermuscular fat on the slab of slices centred
   there (:func:`mskseg.sarcopenia.tissue.segment_tissues`), each tissue inside its HU window, muscle groups
   (when asked) painted over the muscle they belong to;
4. ``measure``: areas, HU, SMI, VAT/SAT and the flags of the chosen cut-off set
   (:func:`mskseg.sarcopenia.metrics.measure_body_composition`).

The label map comes back on exactly the source grid, and every slice index in the result is counted along the
stored volume's axial axis (the axis closest to head-feet), as ``mskseg info`` and Slicer show it.
:func:`mskseg.sarcopenia.export.export_sarcopenia` writes the files.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..engine import CancelToken, Progress
from ..ctvalues import check_ct_values, fov_cut_warning, map_padding_to_air
from ..errors import InvalidImageError, MSKSegError
from ..image import Image
from ..io.common import Labels, flat_rows, to_jsonable
from ..orientation import Reorientation, labelmap_to_source, to_canonical
from ..steps import StepRunner
from .labels import TISSUE_LABELS

#: Order of the steps of :func:`run_sarcopenia` (keys of :attr:`SarcopeniaResult.timings`) and their share of
#: the progress bar.
STEP_WEIGHTS = {"validate": 0.02, "locate": 0.43, "segment": 0.50, "measure": 0.05}
STEPS = tuple(STEP_WEIGHTS)
#: Lowest voxel value (HU) a CT of the abdomen holds somewhere: air outside the body, in the bowel or lungs.
_CT_AIR_HU = -500.0


@dataclass
class CanonicalView:
    """The run as the steps saw it: the CT in the canonical orientation (radiological when shown), its label map,
    and the measured slices and level in canonical slice indices. The report draws from it."""

    image: Image
    labelmap: Image
    slices: list[int]
    l3: Any
    reorientation: Reorientation


@dataclass
class SarcopeniaResult:
    """What :func:`run_sarcopenia` found and measured.

    Attributes:
        labelmap: tissue labels on exactly the source grid (the stored array's shape), non-zero only on the
            measured slices.
        labels: label value -> class name of :attr:`labelmap`: ``TISSUE_LABELS``, plus ``psoas``,
            ``paraspinal`` and ``abdominal_wall`` (values 5-7, painted over the muscle they belong to) when muscle
            groups were asked for; the metrics count them as skeletal muscle.
        l3: the level found (``mskseg.sarcopenia.l3.L3Result``): slice index, position, level name (``L3`` or
            the fall-back level), confidence, every vertebra level identified, method (``"user"`` when the
            slice was given), warnings.
        slices: the slice indices measured (the slab centred on ``l3.index``).
        metrics: the ``BodyCompResult`` (rows, units, summary) of :mod:`mskseg.sarcopenia.metrics`.
        tissue_method: how the tissues were segmented (``"network"``, ``"rules"``, ...).
        tissue_cross_check: per-class agreement of network and rules, when both ran.
        settings: the ``BodyCompSettings`` used (windows); patient: the ``PatientInfo`` used.
        cutoff_set: name of the cut-off set the flags follow.
        warnings: everything the user should check (level uncertainty, fall-back level, disagreements).
        timings: seconds per step (``validate``, ``locate``, ``segment``, ``measure``).
        canonical: the same run in the canonical orientation (:class:`CanonicalView`), for the report.
        level_slices: level name -> the slices measured there (head to foot order of the request); one entry
            unless levels were asked for by name.

    Slice indices (``l3.index``, ``l3.levels``, ``slices``, the rows' ``slice_index``) count along the stored
    volume's axial axis (:attr:`mskseg.orientation.Reorientation.axial_axis`).
    """

    labelmap: Image
    labels: Labels
    l3: Any
    slices: list[int]
    metrics: Any
    tissue_method: str
    settings: Any
    patient: Any
    cutoff_set: str
    tissue_cross_check: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    canonical: CanonicalView | None = None
    level_slices: dict[str, list[int]] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Measurement rows: one per slice, plus a ``mean`` row when several slices were measured."""
        return list(getattr(self.metrics, "rows", []))

    @property
    def units(self) -> dict[str, str]:
        """Column -> unit of :attr:`rows` (``cm2``, ``HU``, ``cm2/m2``, ...)."""
        return dict(getattr(self.metrics, "units", {}) or {})

    @property
    def summary(self) -> dict[str, Any]:
        """The headline values (``BodyCompResult.summary``): SMA, SMD, SMI, flags, ... of the slab."""
        return dict(getattr(self.metrics, "summary", {}) or {})

    @property
    def level_method(self) -> str:
        """How the slice was found: ``"user"`` or the detector's method."""
        return str(getattr(self.l3, "method", ""))

    @property
    def headline_level(self) -> str:
        """The level that stands for the result: L3 when it was measured, else the first level measured."""
        names = list(self.level_slices) or [str(getattr(self.l3, "level", "L3"))]
        return "L3" if "L3" in names else names[0]

    def headline_row(self) -> dict[str, Any]:
        """The row that stands for the result: at :attr:`headline_level`, the ``mean`` row over a slab, else the
        single slice's row."""
        return level_row(self.rows, self.headline_level if len(self.level_slices) > 1 else None)

    def level_rows(self) -> dict[str, dict[str, Any]]:
        """Level name -> its row (the slab mean, or the single slice), in the order measured."""
        return {name: level_row(self.rows, name) for name in self.level_slices} if self.level_slices else \
            {self.headline_level: self.headline_row()}

    def disagreements(self) -> list[dict[str, str]]:
        """Every cross-check that disagreed: ``[{"check": "levels" | "tissues", "warning": sentence}, ...]``
        (the level detector against the rule-based count, the tissue method against the other one)."""
        found = []
        level_check = getattr(self.l3, "cross_check", None) or {}
        if level_check.get("disagreement_warning"):
            found.append({"check": "levels", "warning": str(level_check["disagreement_warning"])})
        tissue_check = self.tissue_cross_check or {}
        if tissue_check.get("disagreement"):
            found.append({"check": "tissues", "warning": str(tissue_check.get("warning") or
                                                            "the tissue methods disagree: check the segmentation")})
        return found

    def all_warnings(self) -> list[str]:
        """:attr:`warnings`, plus the sentence of any cross-check disagreement they do not already hold (a
        result whose checks disagree never reads "no warnings")."""
        out = list(self.warnings)
        out += [d["warning"] for d in self.disagreements() if d["warning"] not in out]
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-ready account of the whole run (for ``metrics.json``): level, method, windows, patient,
        cut-off set, summary, warnings (:meth:`all_warnings`), the cross-check ``disagreements`` and timings."""
        l3 = self.l3
        settings = self.settings.as_dict() if hasattr(self.settings, "as_dict") else dict(vars(self.settings))
        return {
            "level": {
                "name": getattr(l3, "level", None), "slice_index": getattr(l3, "index", None),
                "position_mm": getattr(l3, "position_mm", None), "method": getattr(l3, "method", None),
                "confidence": getattr(l3, "confidence", None), "fallback_used": getattr(l3, "fallback_used", False),
                "levels_found": dict(getattr(l3, "levels", {}) or {}),
                "cross_check": to_jsonable(getattr(l3, "cross_check", {}) or {}),
            },
            "slices": list(self.slices),
            "levels_measured": {name: list(ks) for name, ks in self.level_slices.items()},
            "tissue_method": self.tissue_method,
            "tissue_cross_check": to_jsonable(self.tissue_cross_check),
            "settings": to_jsonable(settings),
            "patient": to_jsonable(_patient_dict(self.patient)),
            "cutoff_set": self.cutoff_set,
            "summary": to_jsonable(self.summary),
            "warnings": self.all_warnings(),
            "disagreements": self.disagreements(),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


def run_sarcopenia(
    image: Image,
    *,
    height_m: float | None = None,
    weight_kg: float | None = None,
    sex: str | None = None,
    cutoff_set: str = "Martin 2013",
    level_index: int | None = None,
    level: Any = None,
    levels: Sequence[str] | str | None = None,
    slab: int = 1,
    method: str = "auto",
    muscle_groups: bool = False,
    allow_fallback: bool = False,
    settings: Any = None,
    model: Any = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel_token: CancelToken | None = None,
) -> SarcopeniaResult:
    """Find L3 in a CT volume, segment the body-composition tissues there and measure them.

    Args:
        image: CT volume in HU, array ``(K, J, I)`` in any storage orientation; its ``metadata`` may hold the
            DICOM ``Modality``, ``PatientSize`` (m), ``PatientWeight`` (kg), ``PatientSex`` and ``PatientAge``.
        height_m, weight_kg, sex: patient values (``"M"``/``"F"``) that override the DICOM ones; height for
            SMI, weight for BMI (Martin 2013 cut-offs), sex for every cut-off set.
        cutoff_set: a name of ``mskseg.sarcopenia.cutoffs.CUTOFF_SETS``.
        level_index: the slice to measure, chosen by the user, counted along the stored volume's axial axis
            (then no detection runs and the level method is ``"user"``); None finds L3 automatically.
        level: an ``L3Result`` found earlier for this image (Slicer's Find L3), used instead of detecting again.
        levels: vertebral levels to measure by name instead of L3 alone: names (``["T12", "L1", "L4"]`` or
            ``"T12,L1,L4"``) or ``"all"`` (every level from T12 to L5 in view); one slab per level, one set of
            rows per level. Levels outside the field of view are named in the warnings.
        slab: number of slices centred on the level to segment and measure (the mean row averages them).
        method: tissue segmentation ``"auto"`` (network when a model is installed, else rules),
            ``"network"`` or ``"rules"``.
        muscle_groups: also label psoas, paraspinal and abdominal wall muscles and report their areas.
        allow_fallback: when L3 is outside the field of view, measure at the first level of the fall-back
            order L2, L4, L5, L1, T12, T11, T10 that is present (and say so) instead of failing.
        settings: ``BodyCompSettings`` (tissue windows); default the published defaults.
        model: a tissue model card to use instead of the installed one.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        progress: ``progress(fraction, message)``; returning False cancels.
        cancel_token: a :class:`~mskseg.engine.CancelToken` another thread may set.

    Returns:
        A :class:`SarcopeniaResult`, its label map on the source grid.

    Raises:
        InvalidImageError: not a CT volume in HU (MR, radiograph, picture, 2D, single slice, extreme spacing,
            thorax only), a slab of less than one slice, or a level index outside the volume.
        L3NotFoundError: L3 is not in the field of view and ``allow_fallback`` is False.
        CancelledError: cancelled through ``progress`` or ``cancel_token``.
        MSKSegError: bad patient values (e.g. height in cm) or an unknown cut-off set.
    """
    from . import l3 as l3_module
    from .cutoffs import get_cutoff_set
    from .settings import BodyCompSettings, patient_from_metadata
    from .tissue import segment_tissues

    warnings: list[str] = []
    runner = StepRunner(STEP_WEIGHTS, progress, cancel_token, what="body-composition analysis")

    with runner.step("validate", "checking the CT"):
        wanted = parse_level_names(levels)
        if wanted is not None and level_index is not None:
            raise MSKSegError("give either level names or a slice index, not both",
                              "e.g. --levels L3, --levels T12,L1,L4, --levels all, or --levels 57 for slice 57")
        if slab < 1:
            raise InvalidImageError(f"slab of {slab} slices: at least one slice is measured",
                                    "use --slab 1 for the L3 slice alone, or an odd number such as 3 or 5")
        settings = settings if settings is not None else BodyCompSettings()
        check_ct(image)  # a CT volume in HU, before anything else (2D images get their own message)
        canon, how = to_canonical(image)
        canon, padding_warning = map_padding_to_air(canon)  # -3024 / -2048 outside the scan circle: air
        if padding_warning:
            warnings.append(padding_warning)
        if level_index is None and (level is None or wanted is not None):
            l3_module.check_ct_for_l3(canon)  # usable spacing, not thorax only
        elif level_index is not None:  # the user chose the slice: any CT volume in HU will do
            _check_level_index(image, level_index, how)
        # Patient values are checked before any long work, so that a height in cm fails at once.
        patient = patient_from_metadata(image.metadata, height_m=height_m, weight_kg=weight_kg, sex=sex)
        cutoff_set = get_cutoff_set(cutoff_set).name  # unknown names fail here, before any long work

    with runner.step("locate", "finding L3") as report:
        if level is not None:
            l3 = level_to_canonical(level, how)
        elif level_index is None:
            l3 = l3_module.detect_l3(canon, device=device, progress=report, cancel_token=cancel_token,
                                     allow_fallback=allow_fallback or wanted is not None)
        else:
            l3 = user_level(canon, how.canonical_slice(level_index))
        warnings += [str(w) for w in (getattr(l3, "warnings", None) or [])]
        if getattr(l3, "fallback_used", False) and not any("field of view" in w for w in warnings):
            warnings.insert(0, f"L3 is not in the field of view: measured at {l3.level} instead (fall-back order "
                               "L2, L4, L5, L1, T12, T11, T10); L3 cut-offs do not apply to this level")
        if wanted is None:
            by_level = {str(getattr(l3, "level", "L3")): int(l3.index)}
        else:
            by_level, missing = named_levels(l3, wanted)
            warnings = [w for w in warnings if "not in the field of view" not in w or "L3" not in wanted]
            warnings += missing
        level_slices: dict[str, list[int]] = {}
        for name, centre in by_level.items():
            level_slices[name], clipped = slab_slices(centre, slab, canon.array.shape[0])
            if clipped:
                warnings.append(f"the slab of {slab} slices at {name} reaches the edge of the volume: "
                                f"{len(level_slices[name])} slices measured")
        slices = sorted({k for ks in level_slices.values() for k in ks})

    with runner.step("segment", "segmenting tissues") as report:
        tissue = segment_tissues(canon, slices, method=method, settings=settings, device=device, progress=report,
                                 cancel_token=cancel_token, muscle_groups=muscle_groups, model=model)
        warnings += [str(w) for w in (getattr(tissue, "warnings", None) or [])]
        labels = dict(getattr(tissue, "labels", None) or TISSUE_LABELS)
        # The map shown and exported is the map as measured: tissue labels inside their HU windows.
        labelmap = windowed_labelmap(canon, tissue.labelmap, labels, slices, settings)
        if muscle_groups and tissue.group_labelmap is not None and tissue.group_labels:
            labelmap, labels = paint_muscle_groups(labelmap, labels, tissue.group_labelmap, tissue.group_labels)

        for k in slices:  # a body cut by the field of view: SAT/VAT too small
            cut = fov_cut_warning(labelmap.array, k)
            if cut:
                warnings.append(cut)

    with runner.step("measure", "measuring"):
        source = "user" if level_index is not None else \
            f"{l3.method} (confidence {float(getattr(l3, 'confidence', 0.0)):.2f})"
        metrics = combine_levels({name: measure_slab(
            canon, labelmap, labels, ks, patient, settings, cutoff_set, level=name, method=str(tissue.method),
            slice_source=source, to_source=how.source_slice) for name, ks in level_slices.items()})
        warnings += [str(w) for w in (getattr(metrics, "warnings", None) or [])]

    view = CanonicalView(canon, labelmap, slices, l3, how)
    return SarcopeniaResult(
        labelmap=labelmap_to_source(labelmap, image, how), labels=labels, l3=level_to_source(l3, how),
        slices=sorted(how.source_slice(k) for k in slices), metrics=metrics, tissue_method=str(tissue.method),
        level_slices={name: sorted(how.source_slice(k) for k in ks) for name, ks in level_slices.items()},
        settings=settings, patient=patient, cutoff_set=cutoff_set,
        tissue_cross_check=dict(getattr(tissue, "cross_check", None) or {}),
        warnings=list(dict.fromkeys(_source_slice_numbers(w, how.source_slice) for w in warnings)),
        timings=dict(runner.timings), canonical=view)


def find_level(image: Image, *, device: str = "auto", allow_fallback: bool = False, progress: Progress | None = None,
               cancel_token: CancelToken | None = None):
    """The ``locate`` step alone (Slicer's Find L3): check the CT, find L3 on its canonical orientation, and
    return the ``L3Result`` with slice indices counted along the stored axial axis.

    Raises:
        InvalidImageError: not a CT volume that can hold L3; L3NotFoundError: L3 is outside the field of view.
    """
    from . import l3 as l3_module

    check_ct(image)
    canon, how = to_canonical(image)
    l3_module.check_ct_for_l3(canon)
    found = l3_module.detect_l3(canon, device=device, progress=progress, cancel_token=cancel_token,
                                allow_fallback=allow_fallback)
    return level_to_source(found, how)


def measure_labelmap(image: Image, labelmap: Image, labels: Labels, centre: int, slab: int, patient: Any,
                     settings: Any, cutoff_set: str, level_slices: dict[str, Sequence[int]] | None = None,
                     **kwargs: Any):
    """The ``measure`` step alone, on a label map the user may have edited (Slicer's Measure).

    ``centre`` is the slice counted along the stored axial axis; the ``slab`` slices centred on it are
    measured on the canonical orientation, and slice numbers in the result are mapped back. With
    ``level_slices`` of two or more levels (level name -> slices along the stored axial axis, as
    ``SarcopeniaResult.level_slices``), every level is measured on its own slices instead, one set of rows each,
    as the run that made the segmentation did. ``kwargs`` (level, method, slice_source) are passed on to the
    metrics.
    """
    canon, how = to_canonical(image)
    canon_labels = canon.with_array(how.to_canonical(labelmap.array), keep_metadata=False)
    if level_slices and len(level_slices) > 1:  # every level the segmentation was made at, each its own rows
        kwargs.pop("level", None)
        return combine_levels({str(name): measure_slab(
            canon, canon_labels, labels, sorted(how.canonical_slice(int(k)) for k in ks), patient, settings,
            cutoff_set, level=str(name), to_source=how.source_slice, **kwargs) for name, ks in level_slices.items()})
    slices, _ = slab_slices(how.canonical_slice(int(centre)), max(int(slab), 1), canon.array.shape[0])
    return measure_slab(canon, canon_labels, labels, slices, patient, settings, cutoff_set,
                        to_source=how.source_slice, **kwargs)


def paint_muscle_groups(labelmap: Image, labels: Labels, group_labelmap: Image,
                        group_labels: Labels) -> tuple[Image, Labels]:
    """Muscle groups (psoas, paraspinal, abdominal wall) painted over the muscle pixels they cover.

    Groups overlap the muscle, so each becomes its own label (values after the tissue labels) on the muscle
    pixels only: SMA stays the same (the metrics count group classes as skeletal muscle) and each group can
    be edited alone in the Segment Editor. Returns the new map and its labels.
    """
    from .labels import MUSCLE_GROUPS

    array = np.array(labelmap.array, copy=True)
    labels = dict(labels)
    muscle = array == next(v for v, n in labels.items() if n == "skeletal_muscle")
    groups = np.asarray(group_labelmap.array)
    next_value = max(labels) + 1
    for value, name in sorted(group_labels.items()):
        if name not in MUSCLE_GROUPS:
            continue
        array[muscle & (groups == value)] = next_value
        labels[next_value] = name
        next_value += 1
    return labelmap.with_array(array), labels


def level_to_source(l3: Any, how: Reorientation) -> Any:
    """An ``L3Result`` found on the canonical volume, its slice indices counted along the stored axial axis."""
    if how.is_identity:
        return l3
    return dataclasses.replace(l3, index=how.source_slice(int(l3.index)),
                               levels={n: how.source_slice(int(k)) for n, k in (l3.levels or {}).items()},
                               warnings=[_source_slice_numbers(w, how.source_slice) for w in (l3.warnings or [])])


def level_to_canonical(l3: Any, how: Reorientation) -> Any:
    """The inverse of :func:`level_to_source` (the map of slice indices is its own inverse)."""
    return level_to_source(l3, how)


def user_level(image: Image, index: int):
    """An ``L3Result`` for axial slice ``index`` (numpy axis 0) the user chose: method ``"user"``, confidence 1,
    no levels identified."""
    from .l3 import L3Result

    if not 0 <= int(index) < image.array.shape[0]:
        raise InvalidImageError(f"slice index {index} is outside the volume (slices 0 .. {image.array.shape[0] - 1})",
                                "give the index k of the L3 slice, counted from 0 along the volume's axial slice axis")
    return L3Result(index=int(index), position_mm=slice_position_mm(image, int(index)), level="L3", confidence=1.0,
                    levels={}, method="user", cross_check={}, warnings=[], fallback_used=False)


def slice_position_mm(image: Image, index: int) -> float:
    """LPS z (mm) of the centre of axial slice ``index`` of a volume ``(K, J, I)``."""
    centre = [(image.size[0] - 1) / 2.0, (image.size[1] - 1) / 2.0, float(index)]
    return float(image.index_to_physical(centre)[2])


def slice_position_along_axial_axis(image: Image, index: int) -> float:
    """LPS z (mm) of slice ``index`` counted along the stored volume's axial axis (any storage orientation)."""
    canon, how = to_canonical(image)
    return slice_position_mm(canon, how.canonical_slice(int(index)))


def busiest_slice(image: Image, labelmap: Image) -> int | None:
    """The axial slice (counted along the stored axial axis) with the most labelled voxels; None when empty."""
    how = to_canonical(image)[1]
    labelled = how.to_canonical(np.asarray(labelmap.array)) != 0
    counts = np.count_nonzero(labelled.reshape(labelled.shape[0], -1), axis=1)
    return how.source_slice(int(np.argmax(counts))) if counts.any() else None


def slab_slices(centre: int, slab: int, n_slices: int) -> tuple[list[int], bool]:
    """The ``slab`` slice indices centred on ``centre`` (for an even count, one more index after ``centre`` than
    before it), cut to ``0 .. n_slices - 1``; and whether they had to be cut."""
    start = centre - (slab - 1) // 2
    wanted = list(range(start, start + slab))
    kept = [k for k in wanted if 0 <= k < n_slices]
    return kept, len(kept) != len(wanted)


def check_ct(image: Image) -> None:
    """Refuse what cannot be a CT volume in Hounsfield units: 2D images, other modalities, other value ranges.

    The check for a slice the user chose; finding L3 checks more (:func:`mskseg.sarcopenia.l3.check_ct_for_l3`).

    Raises:
        InvalidImageError: a 2D image, a DICOM Modality other than CT, or no voxel below -500 HU (no air).
    """
    if image.metadata.get("picture") or image.metadata.get("rgb"):
        check_ct_values(image, "body composition at L3")  # a picture: say so before "2D"
    if image.ndim != 3:
        raise InvalidImageError(
            f"the image is 2D ({image.array.shape[1]} x {image.array.shape[0]} pixels); body composition at L3 "
            "needs a CT volume of axial slices",
            "give the folder of the CT series (or a NIfTI/NRRD volume), not a single picture or radiograph")
    modality = str(image.metadata.get("Modality") or "").upper()
    if modality and modality != "CT":
        names = {"MR": "an MR image", "PT": "a PET image", "CR": "a radiograph", "DX": "a radiograph",
                 "US": "an ultrasound image", "NM": "a nuclear medicine image"}
        raise InvalidImageError(
            f"the image is {names.get(modality, f'of modality {modality}')} (DICOM Modality {modality}); body "
            "composition at L3 is defined on CT Hounsfield units",
            "choose the CT series of the study (mskseg info FOLDER lists the series)")
    check_ct_values(image, "body composition at L3")
    lowest = float(np.min(image.array))
    if lowest > _CT_AIR_HU:
        highest = float(np.max(image.array))
        raise InvalidImageError(
            f"voxel values {lowest:g} .. {highest:g} are not CT Hounsfield units: a CT holds air at about "
            "-1000 HU (outside the body, in bowel or lung), this image has nothing below "
            f"{_CT_AIR_HU:g}; it looks like an MR or a picture",
            "give the CT in HU (DICOM with RescaleSlope/Intercept, or a NIfTI/NRRD of HU values)")


def _check_level_index(image: Image, index: int, how: Reorientation) -> None:
    n = how.source_shape[how.axial_axis]
    if not 0 <= int(index) < n:
        raise InvalidImageError(f"slice index {index} is outside the volume (axial slices 0 .. {n - 1})",
                                "give the index k of the L3 slice, counted from 0 along the volume's axial slice axis")


def measure_slab(image: Image, labelmap: Image, labels: Labels, slices: list[int], patient: Any, settings: Any,
                 cutoff_set: str | None, *, to_source: Callable[[int], int] | None = None, **kwargs: Any):
    """:func:`mskseg.sarcopenia.metrics.measure_body_composition` on the axial slices ``slices`` only.

    ``image`` and ``labelmap`` are canonical volumes ``(K, J, I)`` (axial slices along numpy axis 0). The
    measures need only the slab of slices from ``min(slices)`` to ``max(slices)``; measuring a copy of that
    slab (same geometry: its origin is the first slab slice) spares the checks of the whole volume, which on a
    512 x 512 x 300 CT take seconds. Slice indices in the rows, summary and warnings are those of the full
    volume, mapped through ``to_source`` (canonical index -> stored index) when given. ``kwargs`` (level,
    method, slice_source, group_labelmap, group_labels) are passed on.
    """
    from .metrics import measure_body_composition

    first, last = min(slices), max(slices)

    def slab(volume: Image | None) -> Image | None:
        if volume is None:
            return None
        origin = volume.index_to_physical([0.0, 0.0, float(first)])
        return Image(np.asarray(volume.array[first:last + 1]), volume.spacing, origin, volume.direction,
                     volume.metadata)

    if kwargs.get("group_labelmap") is not None:
        kwargs["group_labelmap"] = slab(kwargs["group_labelmap"])
    result = measure_body_composition(slab(image), slab(labelmap), labels, [k - first for k in slices], patient,
                                      settings, cutoff_set, **kwargs)

    def index(k: Any) -> Any:
        if not isinstance(k, (int, np.integer)):
            return k
        k = int(k) + first
        return to_source(k) if to_source is not None else k

    summary = getattr(result, "summary", None)
    for record in [*result.rows, summary if isinstance(summary, dict) else {}]:
        if "slice_index" in record:
            record["slice_index"] = index(record["slice_index"])
    if isinstance(summary, dict):
        if isinstance(summary.get("slices"), list):
            summary["slices"] = [index(k) for k in summary["slices"]]
    result.warnings = [_source_slice_numbers(w, index) for w in result.warnings]
    if isinstance(summary, dict) and isinstance(summary.get("warnings"), list):
        summary["warnings"] = list(result.warnings)
    return result


def _source_slice_numbers(text: str, index: Callable[[int], int]) -> str:
    """``"slice 3: ..."`` -> ``"slice {index(3)}: ..."``: slice numbers in a sentence mapped to another count."""
    return re.sub(r"\bslice (\d+)", lambda m: f"slice {index(int(m.group(1)))}", str(text))


def windowed_labelmap(image: Image, labelmap: Image, labels: Labels, slices: list[int], settings: Any) -> Image:
    """``labelmap`` with :func:`mskseg.sarcopenia.metrics.apply_windows` applied on ``slices`` (a new map):
    muscle pixels in the IMAT window become IMAT, pixels outside their tissue's window are cleared."""
    from .metrics import apply_windows

    array = np.array(labelmap.array, copy=True)
    hu = np.asarray(image.array)
    for k in slices:
        array[k] = apply_windows(hu[k], array[k], settings, labels)
    return labelmap.with_array(array)


#: Levels ``levels="all"`` measures when in view (Comp2Comp's T12-L5).
ALL_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5")


def parse_level_names(levels: Sequence[str] | str | None) -> list[str] | None:
    """Level names to measure from ``"L3"``, ``"T12,L1,L4"``, ``["T12", "L1"]`` or ``"all"`` (None: L3 as
    detected, with its fall-back rules).

    Raises:
        MSKSegError: a name that is not a thoracic or lumbar vertebra (T1-T13, L1-L6).
    """
    from ..anatomy import vertebra_from_name

    if levels is None:
        return None
    words = [w.strip() for w in (levels.split(",") if isinstance(levels, str) else levels) if str(w).strip()]
    if not words:
        return None
    if [w.lower() for w in words] == ["all"]:
        return ["all"]
    names: list[str] = []
    for word in words:
        name = vertebra_from_name(str(word))
        if name is None or name[0] not in "TL":
            raise MSKSegError(f"level '{word}' is not a thoracic or lumbar vertebra",
                              "give names such as L3, or T12,L1,L4, or all (T12 to L5 in view)")
        if name not in names:
            names.append(name)
    return names


def named_levels(found: Any, wanted: list[str]) -> tuple[dict[str, int], list[str]]:
    """The canonical slice of each wanted level the detector found (head to foot), and a warning for each
    wanted level that is not in the field of view.

    Raises:
        MSKSegError: none of the wanted levels is in view.
    """
    from ..anatomy import vertebra_order

    levels = {str(n): int(k) for n, k in (getattr(found, "levels", None) or {}).items()}
    if getattr(found, "level", None) and str(found.level) not in levels and not getattr(found, "fallback_used", False):
        levels[str(found.level)] = int(found.index)
    names = [n for n in ALL_LEVELS if n in levels] if wanted == ["all"] else wanted
    order = {n: vertebra_order(n) for n in names}
    present = {n: levels[n] for n in sorted(names, key=order.get) if n in levels}
    if not present:
        raise MSKSegError(f"none of the levels {', '.join(wanted)} is in the field of view (levels found: "
                          f"{', '.join(sorted(levels, key=lambda n: -levels[n])) or 'none'})",
                          "ask for levels the CT covers, or --levels all")
    missing = [f"{n} is not in the field of view: not measured" for n in names if n not in levels]
    return present, missing


def level_row(rows: list[dict[str, Any]], level: str | None) -> dict[str, Any]:
    """The row standing for ``level`` (every row when None): its slab mean, else its single slice row."""
    mine = [row for row in rows if level is None or row.get("level") == level]
    return next((row for row in mine if row.get("row") == "mean"), mine[-1] if mine else {})


def combine_levels(per_level: dict[str, Any]) -> Any:
    """One measurement result for several levels: the rows of each level in turn; the summary, units and
    settings of the headline level (L3 when measured, else the first); every level's warnings."""
    results = list(per_level.values())
    if len(results) == 1:
        return results[0]
    headline = per_level.get("L3", results[0])
    return dataclasses.replace(headline, rows=[row for r in results for row in r.rows],
                   warnings=list(dict.fromkeys(w for r in results for w in r.warnings)))


def summarise_sarcopenia(result: SarcopeniaResult) -> dict[str, Any]:
    """The result's row of a cohort table: the level (name, slice, confidence, how it was found), the tissue
    method, the warnings, and every column of the headline row (:meth:`SarcopeniaResult.headline_row`: the
    slab mean or the single slice), flattened as in ``metrics.csv``."""
    l3 = result.l3
    row = flat_rows([result.headline_row()])[0]
    row.pop("row", None)
    return {"level": getattr(l3, "level", None), "level_slice_index": getattr(l3, "index", None),
            "level_confidence": getattr(l3, "confidence", None), "level_method": getattr(l3, "method", None),
            "method": result.tissue_method, "warnings": list(result.warnings), **row}


def _patient_dict(patient: Any) -> dict[str, Any]:
    if patient is None:
        return {}
    if hasattr(patient, "as_dict"):
        return patient.as_dict()
    if hasattr(patient, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(patient)
    return dict(vars(patient))
