"""Body composition at L3, from a CT volume to measurements, as named steps.

:func:`run_sarcopenia` runs, in order and each timed:

1. ``validate``: the image must be a CT volume in Hounsfield units that can hold a lumbar spine
   (:func:`mskseg.sarcopenia.l3.check_ct_for_l3`; only :func:`check_ct` when the user chose the slice): MR,
   radiographs, pictures, 2D images, thorax-only scans, single slices and extreme spacings are refused with a
   message that says why;
2. ``locate``: the L3 slice (:func:`mskseg.sarcopenia.l3.detect_l3`), or the slice the user chose;
3. ``segment``: skeletal muscle, subcutaneous, visceral and intermuscular fat on the slab of slices centred
   there (:func:`mskseg.sarcopenia.tissue.segment_tissues`);
4. ``measure``: areas, HU, SMI, VAT/SAT and the flags of the chosen cut-off set
   (:func:`mskseg.sarcopenia.metrics.measure_body_composition`).

:func:`export_sarcopenia` writes the result: ``segmentation.seg.nrrd``, ``segmentation.dcm`` (DICOM-SEG, when
the CT was read from DICOM), ``metrics.csv``, ``metrics.json`` and ``report.png``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine import CancelToken, Progress
from ..errors import CancelledError, InvalidImageError, OutputExistsError
from ..image import Image
from ..io.common import Labels, to_jsonable
from .labels import TISSUE_LABELS

#: Order of the steps of :func:`run_sarcopenia` (keys of :attr:`SarcopeniaResult.timings`).
STEPS = ("validate", "locate", "segment", "measure")
#: Share of the progress bar each step takes.
_PROGRESS_SPANS = {"validate": (0.0, 0.02), "locate": (0.02, 0.45), "segment": (0.45, 0.95), "measure": (0.95, 1.0)}
#: Lowest voxel value (HU) a CT of the abdomen holds somewhere: air outside the body, in the bowel or lungs.
_CT_AIR_HU = -500.0


@dataclass
class SarcopeniaResult:
    """What :func:`run_sarcopenia` found and measured.

    Attributes:
        labelmap: tissue labels on exactly the source grid ``(K, J, I)``, non-zero only on :attr:`slices`.
        labels: label value -> class name of :attr:`labelmap` (``TISSUE_LABELS``).
        l3: the level found (``mskseg.sarcopenia.l3.L3Result``): slice index, position, level name (``L3`` or
            the fall-back level), confidence, every vertebra level identified, method (``"user"`` when the
            slice was given), warnings.
        slices: the slice indices measured (the slab centred on ``l3.index``).
        metrics: the ``BodyCompResult`` (rows, units, summary) of :mod:`mskseg.sarcopenia.metrics`.
        tissue_method: how the tissues were segmented (``"network"``, ``"rules"``, ...).
        tissue_cross_check: per-class agreement of network and rules, when both ran.
        group_labelmap, group_labels: psoas / paraspinal / abdominal wall labels (they overlap the muscle
            label, hence a map of their own) when muscle groups were asked for, else None and ``{}``.
        settings: the ``BodyCompSettings`` used (windows); patient: the ``PatientInfo`` used.
        cutoff_set: name of the cut-off set the flags follow.
        warnings: everything the user should check (level uncertainty, fall-back level, disagreements).
        timings: seconds per step (``validate``, ``locate``, ``segment``, ``measure``).
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
    group_labelmap: Image | None = None
    group_labels: Labels = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

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

    def headline_row(self) -> dict[str, Any]:
        """The row that stands for the result: the ``mean`` row over a slab, else the single slice's row."""
        rows = self.rows
        return next((row for row in rows if row.get("row") == "mean"), rows[-1] if rows else {})

    def describe(self) -> dict[str, Any]:
        """A JSON-ready account of the whole run (for ``metrics.json``): level, method, windows, patient,
        cut-off set, summary, warnings and timings."""
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
            "tissue_method": self.tissue_method,
            "tissue_cross_check": to_jsonable(self.tissue_cross_check),
            "settings": to_jsonable(settings),
            "patient": to_jsonable(_patient_dict(self.patient)),
            "cutoff_set": self.cutoff_set,
            "summary": to_jsonable(self.summary),
            "warnings": list(self.warnings),
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
    slab: int = 1,
    method: str = "auto",
    muscle_groups: bool = False,
    allow_fallback: bool = False,
    settings: Any = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel_token: CancelToken | None = None,
) -> SarcopeniaResult:
    """Find L3 in a CT volume, segment the body-composition tissues there and measure them.

    Args:
        image: CT volume in HU, array ``(K, J, I)``; its ``metadata`` may hold the DICOM ``Modality``,
            ``PatientSize`` (m), ``PatientWeight`` (kg), ``PatientSex`` and ``PatientAge``.
        height_m, weight_kg, sex: patient values (``"M"``/``"F"``) that override the DICOM ones; height for
            SMI, weight for BMI (Martin 2013 cut-offs), sex for every cut-off set.
        cutoff_set: a name of ``mskseg.sarcopenia.cutoffs.CUTOFF_SETS``.
        level_index: the slice index ``k`` to measure, chosen by the user (then no detection runs and the
            level method is ``"user"``); None finds L3 automatically.
        slab: number of slices centred on the level to segment and measure (the mean row averages them).
        method: tissue segmentation ``"auto"`` (network when a model is installed, else rules),
            ``"network"`` or ``"rules"``.
        muscle_groups: also label psoas, paraspinal and abdominal wall muscles and report their areas.
        allow_fallback: when L3 is outside the field of view, measure at the first level of the fall-back
            order L2, L4, L5, L1, T12, T11, T10 that is present (and say so) instead of failing.
        settings: ``BodyCompSettings`` (tissue windows); default the published defaults.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        progress: ``progress(fraction, message)``; returning False cancels.
        cancel_token: a :class:`~mskseg.engine.CancelToken` another thread may set.

    Returns:
        A :class:`SarcopeniaResult`.

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

    timings: dict[str, float] = {}
    warnings: list[str] = []
    step = _StepRunner(progress, cancel_token, timings)

    with step("validate", "checking the CT"):
        if slab < 1:
            raise InvalidImageError(f"slab of {slab} slices: at least one slice is measured",
                                    "use --slab 1 for the L3 slice alone, or an odd number such as 3 or 5")
        settings = settings if settings is not None else BodyCompSettings()
        if level_index is None:
            l3_module.check_ct_for_l3(image)  # CT in HU, a volume, usable spacing, not thorax only
        else:  # the user chose the slice: any CT volume in HU will do
            check_ct(image)
            _check_level_index(image, level_index)
        # Patient values are checked before any long work, so that a height in cm fails at once.
        patient = patient_from_metadata(image.metadata, height_m=height_m, weight_kg=weight_kg, sex=sex)
        cutoff_set = get_cutoff_set(cutoff_set).name  # unknown names fail here, before any long work

    with step("locate", "finding L3") as sub:
        if level_index is None:
            l3 = l3_module.detect_l3(image, device=device, progress=sub, cancel_token=cancel_token,
                                     allow_fallback=allow_fallback)
        else:
            l3 = user_level(image, level_index)
        warnings += [str(w) for w in (getattr(l3, "warnings", None) or [])]
        if getattr(l3, "fallback_used", False) and not any("field of view" in w for w in warnings):
            warnings.insert(0, f"L3 is not in the field of view: measured at {l3.level} instead (fall-back order "
                               "L2, L4, L5, L1, T12, T11, T10); L3 cut-offs do not apply to this level")
        slices, clipped = slab_slices(int(l3.index), slab, image.array.shape[0])
        if clipped:
            warnings.append(f"the slab of {slab} slices reaches the edge of the volume: {len(slices)} slices measured")

    with step("segment", "segmenting tissues") as sub:
        tissue = segment_tissues(image, slices, method=method, settings=settings, device=device, progress=sub,
                                 cancel_token=cancel_token, muscle_groups=muscle_groups)
        warnings += [str(w) for w in (getattr(tissue, "warnings", None) or [])]
        labels = dict(getattr(tissue, "labels", None) or TISSUE_LABELS)
        # The map shown and exported is the map as measured: tissue labels inside their HU windows.
        labelmap = windowed_labelmap(image, tissue.labelmap, labels, slices, settings)
        group_labelmap = getattr(tissue, "group_labelmap", None) if muscle_groups else None
        group_labels = dict(getattr(tissue, "group_labels", None) or {}) if group_labelmap is not None else {}
        if not group_labels:
            group_labelmap = None

    with step("measure", "measuring"):
        level_name = str(getattr(l3, "level", "L3"))
        source = "user" if level_index is not None else \
            f"{l3.method} (confidence {float(getattr(l3, 'confidence', 0.0)):.2f})"
        metrics = measure_slab(image, labelmap, labels, slices, patient, settings, cutoff_set, level=level_name,
                               method=str(tissue.method), slice_source=source, group_labelmap=group_labelmap,
                               group_labels=group_labels or None)
        warnings += [str(w) for w in (getattr(metrics, "warnings", None) or [])]

    return SarcopeniaResult(
        labelmap=labelmap, labels=labels, l3=l3, slices=slices, metrics=metrics,
        tissue_method=str(tissue.method), settings=settings, patient=patient, cutoff_set=cutoff_set,
        tissue_cross_check=dict(getattr(tissue, "cross_check", None) or {}), group_labelmap=group_labelmap,
        group_labels=group_labels, warnings=list(dict.fromkeys(warnings)), timings=timings)


def user_level(image: Image, index: int):
    """An ``L3Result`` for a slice the user chose: method ``"user"``, confidence 1, no levels identified."""
    from .l3 import L3Result

    _check_level_index(image, index)
    return L3Result(index=int(index), position_mm=slice_position_mm(image, int(index)), level="L3", confidence=1.0,
                    levels={}, method="user", cross_check={}, warnings=[], fallback_used=False)


def slice_position_mm(image: Image, index: int) -> float:
    """LPS z (mm) of the centre of axial slice ``index`` of a volume ``(K, J, I)``."""
    centre = [(image.size[0] - 1) / 2.0, (image.size[1] - 1) / 2.0, float(index)]
    return float(image.index_to_physical(centre)[2])


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
    if not np.issubdtype(image.array.dtype, np.number):
        raise InvalidImageError(f"voxels of type {image.array.dtype} are not CT numbers")
    lowest = float(np.min(image.array))
    if lowest > _CT_AIR_HU:
        highest = float(np.max(image.array))
        raise InvalidImageError(
            f"voxel values {lowest:g} .. {highest:g} are not CT Hounsfield units: a CT holds air at about "
            "-1000 HU (outside the body, in bowel or lung), this image has nothing below "
            f"{_CT_AIR_HU:g}; it looks like an MR or a picture",
            "give the CT in HU (DICOM with RescaleSlope/Intercept, or a NIfTI/NRRD of HU values)")


def _check_level_index(image: Image, index: int) -> None:
    n = image.array.shape[0]
    if not 0 <= int(index) < n:
        raise InvalidImageError(f"slice index {index} is outside the volume (slices 0 .. {n - 1})",
                                "give the index k of the L3 slice, counted from 0 along the volume's slice axis")


def measure_slab(image: Image, labelmap: Image, labels: Labels, slices: list[int], patient: Any, settings: Any,
                 cutoff_set: str | None, *, group_labelmap: Image | None = None, group_labels: Labels | None = None,
                 **kwargs: Any):
    """:func:`mskseg.sarcopenia.metrics.measure_body_composition` on the slices ``slices`` only.

    The measures need only the slab of slices from ``min(slices)`` to ``max(slices)``; measuring a copy of
    that slab (same geometry: its origin is the first slab slice) spares the checks of the whole volume, which
    on a 512 x 512 x 300 CT take seconds. Slice indices in the rows and summary are those of the full volume.
    ``kwargs`` (level, method, slice_source) are passed on.
    """
    from .metrics import measure_body_composition

    first, last = min(slices), max(slices)

    def slab(volume: Image | None) -> Image | None:
        if volume is None:
            return None
        origin = volume.index_to_physical([0.0, 0.0, float(first)])
        return Image(np.asarray(volume.array[first:last + 1]), volume.spacing, origin, volume.direction,
                     volume.metadata)

    result = measure_body_composition(slab(image), slab(labelmap), labels, [k - first for k in slices], patient,
                                      settings, cutoff_set, group_labelmap=slab(group_labelmap),
                                      group_labels=group_labels, **kwargs)
    for row in result.rows:
        if isinstance(row.get("slice_index"), (int, np.integer)):
            row["slice_index"] = int(row["slice_index"]) + first
    summary = getattr(result, "summary", None)
    if isinstance(summary, dict):
        if isinstance(summary.get("slice_index"), (int, np.integer)):
            summary["slice_index"] = int(summary["slice_index"]) + first
        if isinstance(summary.get("slices"), list):
            summary["slices"] = [int(k) + first for k in summary["slices"]]
    result.warnings = [_shift_slice_numbers(w, first) for w in result.warnings]
    if isinstance(summary, dict) and isinstance(summary.get("warnings"), list):
        summary["warnings"] = list(result.warnings)
    return result


def _shift_slice_numbers(text: str, first: int) -> str:
    """``"slice 3: ..."`` -> ``"slice {3 + first}: ..."`` (metrics warnings name slab-relative slices)."""
    import re

    return re.sub(r"\bslice (\d+)", lambda m: f"slice {int(m.group(1)) + first}", str(text))


def windowed_labelmap(image: Image, labelmap: Image, labels: Labels, slices: list[int], settings: Any) -> Image:
    """``labelmap`` with :func:`mskseg.sarcopenia.metrics.apply_windows` applied on ``slices`` (a new map):
    muscle pixels in the IMAT window become IMAT, pixels outside their tissue's window are cleared."""
    from .metrics import apply_windows

    array = np.array(labelmap.array, copy=True)
    hu = np.asarray(image.array)
    for k in slices:
        array[k] = apply_windows(hu[k], array[k], settings, labels)
    return labelmap.with_array(array)


class _StepRunner:
    """Times named steps, maps their progress onto the whole run, and stops on cancel."""

    def __init__(self, progress: Progress | None, cancel_token: CancelToken | None, timings: dict[str, float]):
        self.progress, self.cancel_token, self.timings = progress, cancel_token, timings

    def __call__(self, name: str, message: str) -> "_Step":
        return _Step(self, name, message)

    def report(self, fraction: float, message: str) -> bool:
        if self.cancel_token is not None and self.cancel_token.cancelled:
            return False
        if self.progress is not None and self.progress(fraction, message) is False:
            return False
        return True


class _Step:
    def __init__(self, runner: _StepRunner, name: str, message: str):
        self.runner, self.name, self.message = runner, name, message
        self.start, self.stop = _PROGRESS_SPANS[name]

    def __enter__(self) -> Callable[[float, str], bool]:
        if not self.runner.report(self.start, self.message):
            raise CancelledError(f"body-composition analysis was cancelled before '{self.name}'")
        self.t0 = time.perf_counter()
        return self.sub

    def sub(self, fraction: float, message: str = "") -> bool:
        fraction = min(max(float(fraction), 0.0), 1.0)
        return self.runner.report(self.start + (self.stop - self.start) * fraction, message or self.message)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.runner.timings[self.name] = time.perf_counter() - self.t0
        if exc_type is None:
            self.runner.report(self.stop, self.message)


# ------------------------------------------------------------------------------------------------ export
#: File names :func:`export_sarcopenia` writes.
OUTPUT_FILES = {"seg.nrrd": "segmentation.seg.nrrd", "dicom-seg": "segmentation.dcm", "csv": "metrics.csv",
                "json": "metrics.json", "png": "report.png", "groups": "muscle_groups.seg.nrrd"}


def export_sarcopenia(out_dir: str | Path, image: Image, result: SarcopeniaResult, *, overwrite: bool = False,
                      extra: dict[str, Any] | None = None) -> list[Path]:
    """Write a result into ``out_dir`` and return the files written.

    Files (:data:`OUTPUT_FILES`): ``segmentation.seg.nrrd`` (Slicer), ``segmentation.dcm`` (DICOM-SEG, only
    when ``image`` was read from DICOM: it references the CT's instances), ``metrics.csv`` (one row per slice
    plus the mean row, units in the header), ``metrics.json`` (rows, units, and :meth:`SarcopeniaResult.describe`
    with ``extra`` merged in), ``report.png`` (:func:`mskseg.sarcopenia.report.write_sarcopenia_report`), and
    ``muscle_groups.seg.nrrd`` when muscle groups were segmented. Nothing is written when any of these files
    exists and ``overwrite`` is False (all are checked before the first is written).
    """
    from ..io.segnrrd import write_seg_nrrd
    from ..io.writers import write_metrics_csv, write_metrics_json
    from .report import write_sarcopenia_report

    out = Path(out_dir)
    formats = ["seg.nrrd", "csv", "json"]
    if image.metadata.get("source_files"):
        formats.insert(1, "dicom-seg")
    others = ["png"] + (["groups"] if result.group_labelmap is not None and result.group_labels else [])
    clashes = [str(out / OUTPUT_FILES[f]) for f in formats + others if (out / OUTPUT_FILES[f]).exists()]
    if clashes and not overwrite:
        raise OutputExistsError(f"output files already exist: {', '.join(clashes)}",
                                "choose another output folder or pass --overwrite")
    # The writers one by one (not export_result): each check of a full-size label map costs about a second
    # on a 512 x 512 x 300 CT, and export_result would check it once more.
    out.mkdir(parents=True, exist_ok=True)
    written = [write_seg_nrrd(out / OUTPUT_FILES["seg.nrrd"], result.labelmap, result.labels, source=image,
                              overwrite=overwrite)]
    if "dicom-seg" in formats:
        from ..io.dicomseg import write_dicom_seg

        try:
            written.append(write_dicom_seg(out / OUTPUT_FILES["dicom-seg"], result.labelmap, result.labels, image,
                                           overwrite=overwrite, series_description="MSKSeg body composition",
                                           content_label="BODYCOMP",
                                           content_description=f"body composition at {result.l3.level}"))
        except OutputExistsError:
            raise
        except Exception as error:  # e.g. source files whose headers highdicom cannot use: keep the other files
            result.warnings.append(f"DICOM-SEG was not written ({type(error).__name__}: {error}); the "
                                   ".seg.nrrd holds the same segmentation")
    rows = flat_rows(result.rows)
    written.append(write_metrics_csv(out / OUTPUT_FILES["csv"], rows, overwrite=overwrite, units=result.units))
    written.append(write_metrics_json(out / OUTPUT_FILES["json"], {**(extra or {}), **result.describe(),
                                                                  "units": result.units, "rows": result.rows},
                                      overwrite=overwrite))
    if "groups" in others:
        written.append(write_seg_nrrd(out / OUTPUT_FILES["groups"], result.group_labelmap, result.group_labels,
                                      source=image, overwrite=overwrite))
    written.append(write_sarcopenia_report(out / OUTPUT_FILES["png"], image, result, overwrite=overwrite))
    return written


def flat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with nested values flattened for a CSV: a dict cell ``{"a": 1}`` under ``flags`` becomes the
    column ``flags.a``; a list becomes one ``"; "``-joined cell."""
    flat = []
    for row in rows:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = "; ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
            elif isinstance(value, (list, tuple)):
                out[key] = "; ".join(map(str, value))
            else:
                out[key] = value
        flat.append(out)
    return flat


def _patient_dict(patient: Any) -> dict[str, Any]:
    if patient is None:
        return {}
    if hasattr(patient, "as_dict"):
        return patient.as_dict()
    if hasattr(patient, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(patient)
    return dict(vars(patient))
