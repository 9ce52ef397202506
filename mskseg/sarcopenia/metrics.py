"""Body-composition measures at L3 (or any chosen slices) from a CT and a tissue label map.

Pure functions over numpy: the label map may come from the network, from the HU rules, or from the user's
edited segmentation; the measures are those of the label map as it is.

Windows (Comp2Comp / Slice-O-Matic convention, :class:`BodyCompSettings`): a labelled pixel counts for its
tissue only inside that tissue's HU window. Muscle-labelled pixels whose HU lies in the IMAT window are
intermuscular fat, not muscle; muscle pixels outside both windows (bone, air, contrast) are dropped; fat
pixels outside their window are dropped. Psoas, paraspinal and abdominal-wall labels are skeletal muscle
too (a segmentation with muscle groups painted over the muscle segment keeps its SMA).

Areas: pixel count x in-plane pixel area (``spacing[0] * spacing[1]`` mm2 / 100 = cm2). SMI = SMA / height^2
(cm2/m2); BMI = weight / height^2 (kg/m2). SD of HU uses ddof=1 (0 for a single pixel), as
:func:`mskseg.measure.segment_statistics` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidImageError, MSKSegError
from ..image import Image
from ..io.common import Labels, check_labelmap
from .cutoffs import CUTOFF_SETS, classify, classify_all
from .labels import MUSCLE_CLASSES, MUSCLE_GROUPS, TISSUE_LABELS
from .settings import BodyCompSettings, PatientInfo, patient_from_metadata

__all__ = [
    "BodyCompResult", "BodyCompSettings", "PatientInfo", "patient_from_metadata", "TISSUE_LABELS",
    "MUSCLE_CLASSES", "MUSCLE_GROUPS", "apply_windows", "tissue_masks", "measure_body_composition", "UNITS",
    "DESCRIPTIONS",
]


#: The tissues measured, in column order: tissue key -> column prefix.
_TISSUES = {"muscle": "SM", "imat": "IMAT", "sat": "SAT", "vat": "VAT"}

def _canonical_class(name: str) -> str:
    """The class name a segment name stands for: ``"Skeletal muscle"`` (a display name, as a segment the user
    adds and names in the Segment Editor may be called) -> ``"skeletal_muscle"``; other names unchanged."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return _CLASS_ALIASES.get(key, str(name))


def _alias_table() -> dict[str, str]:
    from .. import terminology

    aliases = {}
    for class_name in (*MUSCLE_CLASSES, "intermuscular_fat", "subcutaneous_fat", "visceral_fat"):
        aliases[class_name] = class_name
        try:
            display = terminology.get_class(class_name).display_name
        except Exception:  # a class missing from the terminology table keeps only its own name
            continue
        aliases[display.strip().lower().replace(" ", "_").replace("-", "_")] = class_name
    return aliases


_CLASS_ALIASES = _alias_table()


def _values_of(labels: Labels, class_names: Sequence[str]) -> list[int]:
    """Label values whose class (by class or display name, any case) is one of ``class_names``."""
    return [int(v) for v, n in labels.items() if _canonical_class(n) in class_names]


#: Column -> unit (for CSV headers and table nodes).
UNITS: dict[str, str] = {
    "position_mm": "mm", "SMA_cm2": "cm2", "SMD_HU": "HU", "SM_sd_HU": "HU",
    "IMAT_cm2": "cm2", "IMAT_mean_HU": "HU", "IMAT_sd_HU": "HU",
    "SAT_cm2": "cm2", "SAT_mean_HU": "HU", "SAT_sd_HU": "HU",
    "VAT_cm2": "cm2", "VAT_mean_HU": "HU", "VAT_sd_HU": "HU",
    "TAT_cm2": "cm2", "SMI_cm2_m2": "cm2/m2", "BMI": "kg/m2", "height_m": "m", "weight_kg": "kg",
    "sarcopenia_SMI_threshold": "cm2/m2", "low_radiodensity_SMD_threshold_HU": "HU",
    "muscle_window_HU": "HU", "imat_window_HU": "HU", "sat_window_HU": "HU", "vat_window_HU": "HU",
    **{f"{g}_cm2": "cm2" for g in MUSCLE_GROUPS}, **{f"{g}_mean_HU": "HU" for g in MUSCLE_GROUPS},
}

#: Column -> description (for table nodes).
DESCRIPTIONS: dict[str, str] = {
    "row": "'slice' for one slice, 'mean' for the mean over the chosen slices",
    "slice_index": "axial slice index k (0-based) in the CT volume",
    "n_slices": "number of slices the row covers",
    "position_mm": "LPS z (mm) of the slice centre",
    "level": "vertebral level of the slice",
    "SMA_cm2": "skeletal muscle area (muscle window)",
    "SMD_HU": "skeletal muscle radiodensity: mean HU of the muscle pixels",
    "SM_sd_HU": "standard deviation of HU of the muscle pixels",
    "IMAT_cm2": "intermuscular adipose tissue area (muscle-labelled pixels in the IMAT window, and IMAT labels)",
    "SAT_cm2": "subcutaneous adipose tissue area (SAT window)",
    "VAT_cm2": "visceral adipose tissue area (VAT window)",
    "TAT_cm2": "total adipose tissue area = SAT + VAT + IMAT",
    "VAT_SAT_ratio": "VAT area / SAT area",
    "SMI_cm2_m2": "skeletal muscle index = SMA / height^2",
    "SMI_reason": "why the SMI is missing",
    "BMI": "body-mass index = weight / height^2",
    "sarcopenia": "SMI below the cut-off of the chosen set (1 yes, 0 no, empty undecided)",
    "low_radiodensity": "SMD below the cut-off of the chosen set (1 yes, 0 no, empty undecided)",
    "method": "how the tissues were segmented",
    "slice_source": "how the slice was chosen (automatic with confidence, or by the user)",
}


@dataclass
class BodyCompResult:
    """The measures of one CT.

    Attributes:
        rows: one dict per slice (``row == "slice"``) and, when there are several slices, a last one with the
            mean (``row == "mean"``). Columns: see :data:`UNITS` / :data:`DESCRIPTIONS` (plain Python values:
            float, int, str, bool or None).
        units: column -> unit.
        summary: the row that represents the CT (the mean row for a slab, else the single slice row) plus
            ``slices``, ``patient``, ``settings`` (the windows), ``cutoff_set``, ``cutoff_set_description``,
            ``classification_all_sets`` and ``warnings``; JSON-ready.
        settings: the windows used.
        patient: the patient information used.
        cutoff_set: name of the chosen cut-off set (None when none was chosen).
        warnings: what a reader should check (e.g. much muscle-labelled tissue outside the windows).
        descriptions: column -> description.
    """

    rows: list[dict[str, Any]]
    units: dict[str, str]
    summary: dict[str, Any]
    settings: BodyCompSettings
    patient: PatientInfo
    cutoff_set: str | None
    warnings: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=lambda: dict(DESCRIPTIONS))

    @property
    def summary_row(self) -> dict[str, Any]:
        """The mean row for several slices, else the only slice row."""
        return self.rows[-1]

    def to_dict(self) -> dict[str, Any]:
        """Rows, units, summary, windows, patient and warnings as one JSON-ready dict."""
        return {"rows": [dict(r) for r in self.rows], "units": dict(self.units), "summary": dict(self.summary),
                "settings": self.settings.as_dict(), "patient": self.patient.as_dict(),
                "cutoff_set": self.cutoff_set, "warnings": list(self.warnings)}


# --------------------------------------------------------------------------------------------- windows
def tissue_masks(hu_slice: np.ndarray, labels_slice: np.ndarray, settings: BodyCompSettings,
                 labels: Labels = TISSUE_LABELS) -> dict[str, np.ndarray]:
    """Boolean masks of each measured tissue after the HU windows (see the module docstring).

    Args:
        hu_slice: HU values, any shape (usually ``(J, I)``).
        labels_slice: label values, same shape.
        settings: the windows.
        labels: label value -> class name; classes other than the muscle classes, ``intermuscular_fat``,
            ``subcutaneous_fat`` and ``visceral_fat`` are ignored.

    Returns:
        ``{"muscle", "imat", "sat", "vat"}`` -> bool array of the input shape; the masks are disjoint.
    """
    hu = np.asarray(hu_slice)
    lab = np.asarray(labels_slice)
    if hu.shape != lab.shape:
        raise InvalidImageError(f"HU array shape {hu.shape} and label array shape {lab.shape} differ")

    def labelled(*names: str) -> np.ndarray:
        values = _values_of(labels, names)
        return np.isin(lab, values) if values else np.zeros(lab.shape, bool)

    def inside(window: tuple[float, float]) -> np.ndarray:
        return (hu >= window[0]) & (hu <= window[1])

    muscle_labelled = labelled(*MUSCLE_CLASSES)
    in_imat_window = inside(settings.imat_hu)
    return {
        "muscle": muscle_labelled & inside(settings.muscle_hu) & ~in_imat_window,
        "imat": (muscle_labelled | labelled("intermuscular_fat")) & in_imat_window,
        "sat": labelled("subcutaneous_fat") & inside(settings.sat_hu),
        "vat": labelled("visceral_fat") & inside(settings.vat_hu),
    }


def apply_windows(hu_slice: np.ndarray, labels_slice: np.ndarray, settings: BodyCompSettings,
                  labels: Labels = TISSUE_LABELS) -> np.ndarray:
    """The label map as measured: tissue labels restricted to their HU windows (Comp2Comp convention).

    Muscle pixels (any muscle class) in the IMAT window become ``intermuscular_fat``; muscle pixels outside
    both windows, and fat pixels outside their window, become 0. Muscle-group labels keep their value where
    they stay muscle. Labels of other classes are kept as they are.

    Args:
        hu_slice: HU values, shape ``(J, I)`` (any shape works).
        labels_slice: label values, same shape.
        settings: the windows.
        labels: label value -> class name (default :data:`TISSUE_LABELS`).

    Returns:
        A new label array, same shape and dtype as ``labels_slice``.

    Raises:
        MSKSegError: muscle pixels fall in the IMAT window but ``labels`` has no ``intermuscular_fat`` value
            to give them.
    """
    lab = np.asarray(labels_slice)
    masks = tissue_masks(hu_slice, lab, settings, labels)
    tissue_values = _values_of(labels, (*MUSCLE_CLASSES, "intermuscular_fat", "subcutaneous_fat", "visceral_fat"))
    out = np.where(np.isin(lab, tissue_values), 0, lab).astype(lab.dtype)
    for name in ("muscle", "sat", "vat"):
        out[masks[name]] = lab[masks[name]]
    if masks["imat"].any():
        imat_values = _values_of(labels, ("intermuscular_fat",))
        if not imat_values:
            raise MSKSegError(
                f"{int(masks['imat'].sum())} muscle pixels lie in the IMAT window but the labels {dict(labels)} "
                "have no 'intermuscular_fat' value to give them",
                "add an intermuscular_fat label (e.g. 4) to the labels",
            )
        out[masks["imat"]] = min(imat_values)
    return out


# --------------------------------------------------------------------------------------------- measuring
def measure_body_composition(
    image: Image,
    labelmap: Image,
    labels: Labels,
    slices: Sequence[int],
    patient: PatientInfo | None,
    settings: BodyCompSettings | None = None,
    cutoff_set: str | None = None,
    level: str = "L3",
    method: str = "",
    slice_source: str = "",
    *,
    group_labelmap: Image | None = None,
    group_labels: Labels | None = None,
) -> BodyCompResult:
    """Areas, HU statistics, SMI, VAT/SAT ratio and cut-off flags on the chosen axial slices.

    Args:
        image: CT in HU, shape ``(K, J, I)`` (or a single slice ``(J, I)``).
        labelmap: tissue label map on exactly the image's grid.
        labels: label value -> class name (``skeletal_muscle``, ``subcutaneous_fat``, ``visceral_fat``,
            ``intermuscular_fat``; muscle-group classes count as muscle; other classes are not measured).
        slices: axial slice indices k to measure (duplicates ignored; a 2D image has only slice 0).
        patient: height/weight/sex (None: nothing known).
        settings: HU windows (default :class:`BodyCompSettings`).
        cutoff_set: name of a :data:`CUTOFF_SETS` set for the flags (None: no flags, with that reason).
        level: vertebral level of the slices, reported in every row.
        method: how the tissues were segmented (reported).
        slice_source: how the slices were chosen, e.g. ``"automatic (confidence 0.93)"`` or ``"user"``.
        group_labelmap: optional muscle-group label map (psoas, paraspinal, abdominal_wall) on the image grid,
            kept apart from ``labelmap`` because groups overlap the muscle; each group gets ``<group>_cm2``
            and ``<group>_mean_HU`` (its pixels in the muscle window, outside the IMAT window).
        group_labels: label value -> group name of ``group_labelmap``.

    Returns:
        :class:`BodyCompResult`.

    Raises:
        InvalidImageError, GeometryMismatchError: bad label map or not on the image grid.
        MSKSegError: no slice, a slice outside the volume, an unknown cut-off set.
    """
    settings = settings or BodyCompSettings()
    patient = patient or PatientInfo()
    if cutoff_set is not None:
        cutoff_set = _cutoff_set_name(cutoff_set)
    lab = check_labelmap(labelmap, labels, image)
    groups_arr = None
    if group_labelmap is not None:
        if not group_labels:
            raise MSKSegError("a muscle-group label map was given without its labels",
                              "pass group_labels, e.g. {5: 'psoas', 6: 'paraspinal', 7: 'abdominal_wall'}")
        groups_arr = check_labelmap(group_labelmap, group_labels, image)
    slice_list = _checked_slices(image, slices)
    pixel_cm2 = image.spacing[0] * image.spacing[1] / 100.0
    hu_all = np.asarray(image.array)

    measured_groups = [g for g in MUSCLE_GROUPS
                       if _values_of(labels, (g,)) or _values_of(group_labels or {}, (g,))]
    warnings: list[str] = []
    rows = []
    for k in slice_list:
        hu = hu_all if image.ndim == 2 else hu_all[k]
        lab_k = lab if image.ndim == 2 else lab[k]
        masks = tissue_masks(hu, lab_k, settings, labels)
        row: dict[str, Any] = {"row": "slice", "slice_index": k, "n_slices": 1,
                               "position_mm": _slice_position(image, k), "level": level}
        row.update(_tissue_columns(hu, masks, pixel_cm2))
        for group in measured_groups:
            group_mask = np.isin(lab_k, _values_of(labels, (group,)))
            if groups_arr is not None:
                group_k = groups_arr if image.ndim == 2 else groups_arr[k]
                group_mask |= np.isin(group_k, _values_of(group_labels, (group,)))
            in_muscle = group_mask & (hu >= settings.muscle_hu[0]) & (hu <= settings.muscle_hu[1]) & ~(
                (hu >= settings.imat_hu[0]) & (hu <= settings.imat_hu[1]))
            row[f"{group}_cm2"] = float(np.count_nonzero(in_muscle) * pixel_cm2)
            row[f"{group}_mean_HU"] = float(hu[in_muscle].mean()) if in_muscle.any() else None
        warnings += _slice_warnings(k, hu, lab_k, labels, masks, pixel_cm2)
        rows.append(row)

    if len(rows) > 1:
        rows.append(_mean_row(rows, level))
    for row in rows:
        _add_patient_columns(row, patient, cutoff_set)
        row["method"] = method
        row["slice_source"] = slice_source
        row.update(settings.window_strings())

    final = rows[-1]
    summary = dict(final)
    summary.update(
        slices=slice_list,
        patient=patient.as_dict(),
        settings=settings.as_dict(),
        cutoff_set=cutoff_set,
        cutoff_set_description=CUTOFF_SETS[cutoff_set].describe() if cutoff_set else None,
        classification_all_sets=classify_all(final["SMI_cm2_m2"], final["SMD_HU"], patient),
        warnings=list(warnings),
    )
    units = {c: u for c, u in UNITS.items() if any(c in r for r in rows)}
    return BodyCompResult(rows, units, summary, settings, patient, cutoff_set, warnings)


def _cutoff_set_name(name: str) -> str:
    from .cutoffs import get_cutoff_set

    return get_cutoff_set(name).name


def _checked_slices(image: Image, slices: Sequence[int]) -> list[int]:
    if slices is None or len(slices) == 0:
        raise MSKSegError("no slice chosen to measure", "choose the L3 slice (or a slab of slices) first")
    n = 1 if image.ndim == 2 else image.array.shape[0]
    out = []
    for k in slices:
        if isinstance(k, (bool, np.bool_)) or int(k) != k:
            raise MSKSegError(f"slice index {k!r} is not a whole number")
        k = int(k)
        if not 0 <= k < n:
            raise MSKSegError(f"slice index {k} is outside the image (slices 0..{n - 1})",
                              "choose slices inside the volume")
        out.append(k)
    return sorted(set(out))


def _slice_position(image: Image, k: int) -> float | None:
    """LPS z (mm) of the centre of axial slice k; None for a 2D image (no z)."""
    if image.ndim == 2:
        return None
    n_i, n_j = image.size[0], image.size[1]
    centre = image.index_to_physical(np.array([(n_i - 1) / 2.0, (n_j - 1) / 2.0, float(k)]))
    return float(centre[2])


def _stats(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    values = values.astype(np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _tissue_columns(hu: np.ndarray, masks: dict[str, np.ndarray], pixel_cm2: float) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for tissue, prefix in _TISSUES.items():
        values = hu[masks[tissue]]
        area = float(values.size * pixel_cm2)
        mean, sd = _stats(values)
        if tissue == "muscle":
            cols.update(SMA_cm2=area, SMD_HU=mean, SM_sd_HU=sd)
        else:
            cols.update({f"{prefix}_cm2": area, f"{prefix}_mean_HU": mean, f"{prefix}_sd_HU": sd})
    cols["TAT_cm2"] = cols["SAT_cm2"] + cols["VAT_cm2"] + cols["IMAT_cm2"]
    cols["VAT_SAT_ratio"] = cols["VAT_cm2"] / cols["SAT_cm2"] if cols["SAT_cm2"] > 0 else None
    return cols


_MEANED = ("position_mm", "SMA_cm2", "SMD_HU", "SM_sd_HU", "IMAT_cm2", "IMAT_mean_HU", "IMAT_sd_HU", "SAT_cm2",
           "SAT_mean_HU", "SAT_sd_HU", "VAT_cm2", "VAT_mean_HU", "VAT_sd_HU")


def _mean_row(rows: list[dict[str, Any]], level: str) -> dict[str, Any]:
    """Each measure averaged over the slice rows (a slice without that tissue is left out of its HU means);
    TAT and VAT/SAT are recomputed from the mean areas."""
    mean: dict[str, Any] = {"row": "mean", "slice_index": None, "n_slices": len(rows), "level": level}
    keys = list(_MEANED) + [k for k in rows[0] if k.endswith(("_cm2", "_mean_HU")) and k not in _MEANED
                             and k != "TAT_cm2"]
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    mean["TAT_cm2"] = mean["SAT_cm2"] + mean["VAT_cm2"] + mean["IMAT_cm2"]
    mean["VAT_SAT_ratio"] = mean["VAT_cm2"] / mean["SAT_cm2"] if mean["SAT_cm2"] > 0 else None
    return {k: mean.get(k) for k in rows[0]}  # the slice rows' column order


def _add_patient_columns(row: dict[str, Any], patient: PatientInfo, cutoff_set: str | None) -> None:
    if patient.height_m is None:
        row["SMI_cm2_m2"], row["SMI_reason"] = None, "height unknown: give the patient's height in metres"
    elif row["SMA_cm2"] <= 0:
        row["SMI_cm2_m2"], row["SMI_reason"] = None, "no skeletal muscle on this slice"
    else:
        row["SMI_cm2_m2"], row["SMI_reason"] = row["SMA_cm2"] / patient.height_m ** 2, None
    row["BMI"] = patient.bmi
    row["height_m"] = patient.height_m
    row["weight_kg"] = patient.weight_kg
    row["sex"] = patient.sex
    if cutoff_set is None:
        reason = "no cut-off set chosen"
        row.update(cutoff_set=None, sarcopenia=None, sarcopenia_SMI_threshold=None, sarcopenia_rule=None,
                   sarcopenia_reason=reason, low_radiodensity=None, low_radiodensity_SMD_threshold_HU=None,
                   low_radiodensity_rule=None, low_radiodensity_reason=reason)
    else:
        row.update(classify(row["SMI_cm2_m2"], row["SMD_HU"], patient, cutoff_set))


def _slice_warnings(k: int, hu: np.ndarray, lab: np.ndarray, labels: Labels, masks: dict[str, np.ndarray],
                    pixel_cm2: float) -> list[str]:
    """Warnings for one slice: no muscle, or much labelled muscle/fat falling outside every window."""
    warnings = []
    if not masks["muscle"].any():
        warnings.append(f"slice {k}: no skeletal muscle inside the muscle window")
    checks = (("muscle", MUSCLE_CLASSES, masks["muscle"] | masks["imat"]),
              ("subcutaneous fat", ("subcutaneous_fat",), masks["sat"]),
              ("visceral fat", ("visceral_fat",), masks["vat"]))
    for what, names, kept in checks:
        values = _values_of(labels, names)
        labelled = np.isin(lab, values) if values else np.zeros(lab.shape, bool)
        n_labelled = int(np.count_nonzero(labelled))
        n_dropped = int(np.count_nonzero(labelled & ~kept))
        if n_labelled and n_dropped / n_labelled > 0.10:
            warnings.append(f"slice {k}: {100.0 * n_dropped / n_labelled:.0f} % of the {what}-labelled area "
                            f"({n_dropped * pixel_cm2:.1f} cm2) lies outside its HU window and is not counted")
    return warnings
