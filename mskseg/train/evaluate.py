"""Segmentation metrics (pure functions over numpy masks) and the evaluation of predicted label maps.

Conventions, the same in every function here:

* ``pred`` and ``ref`` are label maps of one shape, ``(J, I)`` for a slice or ``(K, J, I)`` for a volume (numpy
  order). ``label`` picks one class (``mask = array == label``); ``label=None`` means "any non-zero value".
* ``spacing`` is in ITK index order ``(i, j[, k])`` in mm, exactly as :attr:`mskseg.image.Image.spacing`.
* Surfaces are boundary voxels: voxels of the mask with at least one face-neighbour outside it (the border of
  the array counts as outside). Distances are Euclidean in mm between voxel centres
  (:func:`scipy.ndimage.distance_transform_edt` with the voxel spacing), each boundary voxel weighted equally.

Empty masks (decided once, here, for every metric):

=========================  ===================  ====================  ==============================
metric                     both empty           one of them empty     why
=========================  ===================  ====================  ==============================
:func:`dice`               NaN                  0.0                   nothing to overlap: undefined
:func:`hausdorff95`        NaN                  ``inf``               no surface to measure from
:func:`normalized_surface_dice`  NaN            0.0                   no surface within tolerance
:func:`area_error_cm2`     0.0                  the other's area      areas are always defined
=========================  ===================  ====================  ==============================

:func:`summarise` leaves NaN out of the statistics and counts it (``n_undefined``); infinite values are left
out of mean/median/SD and counted too (``n_infinite``), so one missed class cannot hide behind a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import GeometryMismatchError, InvalidImageError
from ..image import Image
from ..io.common import Labels

#: Metrics :func:`evaluate_pairs` reports per case and class (besides sizes).
METRICS = ("dice", "hausdorff95_mm", "nsd")
#: Units of the columns :func:`evaluate_pairs` writes (for ``write_metrics_csv``).
UNITS = {"hausdorff95_mm": "mm", "area_pred_cm2": "cm2", "area_ref_cm2": "cm2", "area_error_cm2": "cm2",
         "volume_pred_cm3": "cm3", "volume_ref_cm3": "cm3", "volume_error_cm3": "cm3"}


def _mask(array: np.ndarray, label: int | None) -> np.ndarray:
    arr = np.asarray(array)
    return arr != 0 if label is None else arr == label


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if np.shape(pred) != np.shape(ref):
        raise GeometryMismatchError(f"prediction shape {np.shape(pred)} differs from reference shape {np.shape(ref)}",
                                    "compare label maps on the same grid")


def _sampling(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """ITK-order spacing (i, j[, k]) -> numpy-order sampling (k, j, i)."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise InvalidImageError(f"spacing {spacing} has {len(spacing)} values for a {ndim}D label map",
                                "give one spacing per axis in (i, j[, k]) order, as Image.spacing")
    if not all(s > 0 and math.isfinite(s) for s in spacing):
        raise InvalidImageError(f"spacing {spacing} must be positive and finite")
    return spacing[::-1]


def dice(pred: np.ndarray, ref: np.ndarray, label: int | None = None) -> float:
    """Dice coefficient ``2 |P & R| / (|P| + |R|)`` of one class.

    Args:
        pred, ref: label maps of one shape, any dimension.
        label: class value; None: any non-zero value.

    Returns:
        A value in [0, 1]; NaN when both masks are empty.
    """
    _check_pair(pred, ref)
    p, r = _mask(pred, label), _mask(ref, label)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus one voxel (distances are unchanged: every
    surface voxel lies inside the box)."""
    union = p | r
    slices = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(np.any(union, axis=others))
        slices.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    box = tuple(slices)
    return p[box], r[box]


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                      label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary voxel of one mask to the nearest boundary voxel of the other.

    Args:
        pred, ref: label maps of one shape, 2D ``(J, I)`` or 3D ``(K, J, I)``.
        spacing: voxel size in ITK order ``(i, j[, k])``, mm.
        label: class value; None: any non-zero value.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: 1D float arrays, one value per boundary voxel of ``pred`` (resp.
        ``ref``). Both are empty when either mask is empty.
    """
    from scipy import ndimage

    _check_pair(pred, ref)
    sampling = _sampling(spacing, np.ndim(pred))
    p, r = _mask(pred, label), _mask(ref, label)
    if not p.any() or not r.any():
        return np.zeros(0), np.zeros(0)
    p, r = _crop_to_union(p, r)
    sp, sr = _surface(p), _surface(r)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return to_ref[sp], to_pred[sr]


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], label: int | None = None) -> float:
    """95th-percentile Hausdorff distance in mm (the larger of the two directed 95th percentiles).

    Each direction takes the 95th percentile (numpy's linear interpolation) of the distances from one mask's
    boundary voxels to the other mask's boundary; the result is the larger of the two, as in MONAI's
    ``compute_hausdorff_distance(percentile=95)``.

    Returns:
        Distance in mm; NaN when both masks are empty, ``inf`` when exactly one is empty.
    """
    _check_pair(pred, ref)
    has_p, has_r = bool(_mask(pred, label).any()), bool(_mask(ref, label).any())
    if not has_p and not has_r:
        return float("nan")
    if has_p != has_r:
        return float("inf")
    to_ref, to_pred = surface_distances(pred, ref, spacing, label)
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
                            label: int | None = None) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) at ``tolerance_mm``, over boundary voxels.

    ``(#pred boundary voxels within tolerance of ref's boundary + #ref boundary voxels within tolerance of
    pred's boundary) / (#pred boundary voxels + #ref boundary voxels)``; "within" includes the tolerance
    itself (distance <= tolerance).

    Returns:
        A value in [0, 1]; NaN when both masks are empty, 0.0 when exactly one is empty.
    """
    if tolerance_mm < 0:
        raise InvalidImageError(f"tolerance {tolerance_mm} mm must be >= 0")
    _check_pair(pred, ref)
    has_p, has_r = bool(_mask(pred, label).any()), bool(_mask(ref, label).any())
    if not has_p and not has_r:
        return float("nan")
    if has_p != has_r:
        return 0.0
    to_ref, to_pred = surface_distances(pred, ref, spacing, label)
    eps = 1e-9 * max(1.0, tolerance_mm)  # distances are sums of squares: keep exact boundary cases inside
    within = int((to_ref <= tolerance_mm + eps).sum()) + int((to_pred <= tolerance_mm + eps).sum())
    return within / (to_ref.size + to_pred.size)


def area_cm2(mask_or_labels: np.ndarray, spacing: Sequence[float], label: int | None = None) -> float:
    """Area in cm2 of one class on a 2D slice ``(J, I)`` with pixel ``spacing`` ``(i, j)`` in mm."""
    arr = np.asarray(mask_or_labels)
    if arr.ndim != 2:
        raise InvalidImageError(f"area needs a 2D slice (J, I), got shape {arr.shape}",
                                "pass one slice, e.g. labelmap.array[k]")
    sampling = _sampling(spacing, 2)
    return int(_mask(arr, label).sum()) * sampling[0] * sampling[1] / 100.0


def area_error_cm2(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], label: int | None = None) -> float:
    """Signed area error ``area(pred) - area(ref)`` in cm2 on a 2D slice (``spacing`` ``(i, j)`` in mm).

    Positive: the prediction is too large. Defined for empty masks too (an empty mask has area 0).
    """
    _check_pair(pred, ref)
    return area_cm2(pred, spacing, label) - area_cm2(ref, spacing, label)


def slice_position_error_mm(pred_index: int, ref_index: int, image: Image) -> float:
    """Signed distance in mm between the centres of two slices of ``image`` (e.g. a detected L3 slice).

    Positive when the predicted slice lies superior (cranial, LPS +S) of the reference slice; for a volume
    whose slice axis has no superior component (a sagittal stack) the sign follows increasing k.

    Args:
        pred_index, ref_index: slice indices k of ``image`` (3D, ``(K, J, I)``).
        image: the volume the indices refer to; its spacing and direction give the distance.
    """
    if image.ndim != 3:
        raise InvalidImageError("slice position error needs a 3D volume")
    n = image.array.shape[0]
    for name, k in (("pred_index", pred_index), ("ref_index", ref_index)):
        if not 0 <= int(k) < n:
            raise InvalidImageError(f"{name} {k} is outside the volume's {n} slices (0..{n - 1})")
    offset = image.index_to_physical([0.0, 0.0, float(pred_index)]) - image.index_to_physical(
        [0.0, 0.0, float(ref_index)])
    distance = float(np.linalg.norm(offset))
    superior = float(offset[2])
    if abs(superior) > 1e-6 * max(distance, 1.0):
        return math.copysign(distance, superior)
    return math.copysign(distance, float(pred_index) - float(ref_index)) if distance else 0.0


# ------------------------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class EvaluationPair:
    """One case to evaluate: a predicted and a reference label map on the same grid, same label values."""

    case: str
    pred: Image
    ref: Image


def evaluate_pairs(pairs: Iterable[EvaluationPair | tuple[str, Image, Image]], labels: Labels, *,
                   tolerance_mm: float = 2.0, progress: Any = None) -> list[dict[str, Any]]:
    """Metrics of each case and class: one row per (case, class).

    Args:
        pairs: :class:`EvaluationPair` or ``(case, pred, ref)`` tuples; ``pred`` and ``ref`` must share a grid
            (GeometryMismatchError otherwise) and use the label values of ``labels``.
        labels: label value -> class name of the classes to evaluate.
        tolerance_mm: tolerance of the normalised surface Dice.
        progress: optional ``progress(fraction, message)``; returning False stops (CancelledError).

    Returns:
        Rows with ``case``, ``class``, ``label``, ``dice``, ``hausdorff95_mm``, ``nsd``, ``nsd_tolerance_mm`` and
        sizes: 2D maps ``area_pred_cm2``, ``area_ref_cm2``, ``area_error_cm2``; 3D maps ``volume_pred_cm3``,
        ``volume_ref_cm3``, ``volume_error_cm3`` (signed, prediction minus reference).
    """
    from ..errors import CancelledError

    pairs = [p if isinstance(p, EvaluationPair) else EvaluationPair(*p) for p in pairs]
    rows: list[dict[str, Any]] = []
    for n, pair in enumerate(pairs):
        pair.ref.check_same_grid(pair.pred, f"prediction of case '{pair.case}'")
        pred, ref = np.asarray(pair.pred.array), np.asarray(pair.ref.array)
        spacing = pair.ref.spacing
        voxel_cm3 = float(np.prod(spacing)) / 1000.0
        for value, name in sorted(labels.items()):
            row: dict[str, Any] = {
                "case": pair.case, "class": name, "label": int(value),
                "dice": dice(pred, ref, value),
                "hausdorff95_mm": hausdorff95(pred, ref, spacing, value),
                "nsd": normalized_surface_dice(pred, ref, spacing, tolerance_mm, value),
                "nsd_tolerance_mm": float(tolerance_mm),
            }
            if pred.ndim == 2:
                row["area_pred_cm2"] = area_cm2(pred, spacing, value)
                row["area_ref_cm2"] = area_cm2(ref, spacing, value)
                row["area_error_cm2"] = row["area_pred_cm2"] - row["area_ref_cm2"]
            else:
                row["volume_pred_cm3"] = int((pred == value).sum()) * voxel_cm3
                row["volume_ref_cm3"] = int((ref == value).sum()) * voxel_cm3
                row["volume_error_cm3"] = row["volume_pred_cm3"] - row["volume_ref_cm3"]
            rows.append(row)
        if progress is not None and progress((n + 1) / len(pairs), f"evaluated {pair.case}") is False:
            raise CancelledError("evaluation cancelled")
    return rows


#: Columns :func:`summarise` summarises when they are present.
SUMMARY_COLUMNS = ("dice", "hausdorff95_mm", "nsd", "area_error_cm2", "volume_error_cm3")


def summarise(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> list[dict[str, Any]]:
    """Per class and metric: ``n``, ``mean``, ``median``, ``sd`` (sample SD, NaN for n < 2), ``min``, ``max``
    over the finite values, plus ``n_undefined`` (NaN: both masks empty) and ``n_infinite`` (one mask empty).

    Returns:
        One dict per (class, metric), classes in first-seen order.
    """
    classes: list[str] = []
    for r in rows:
        if r["class"] not in classes:
            classes.append(r["class"])
    out = []
    for name in classes:
        for column in columns:
            raw = [r.get(column) for r in rows if r["class"] == name and column in r]
            if not raw:
                continue
            values = np.array([np.nan if v is None else float(v) for v in raw], dtype=float)
            finite = values[np.isfinite(values)]
            out.append({
                "class": name, "metric": column, "n": int(finite.size),
                "mean": float(finite.mean()) if finite.size else float("nan"),
                "median": float(np.median(finite)) if finite.size else float("nan"),
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                "min": float(finite.min()) if finite.size else float("nan"),
                "max": float(finite.max()) if finite.size else float("nan"),
                "n_undefined": int(np.isnan(values).sum()), "n_infinite": int(np.isinf(values).sum()),
            })
    return out


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary of :func:`summarise` as an aligned text table (one line per class and metric)."""
    def num(v: float) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    lines = [f"{'class':24s} {'metric':16s} {'n':>5s} {'mean':>9s} {'median':>9s} {'sd':>9s} {'min':>9s} "
             f"{'max':>9s}  notes"]
    for s in summary:
        notes = []
        if s["n_undefined"]:
            notes.append(f"{s['n_undefined']} undefined (both empty)")
        if s["n_infinite"]:
            notes.append(f"{s['n_infinite']} infinite (one empty)")
        lines.append(f"{s['class']:24s} {s['metric']:16s} {s['n']:5d} {num(s['mean']):>9s} {num(s['median']):>9s} "
                     f"{num(s['sd']):>9s} {num(s['min']):>9s} {num(s['max']):>9s}  {', '.join(notes)}")
    return "\n".join(lines)


def evaluate_folders(pred_dir: str, ref_dir: str, *, labels: Labels | None = None, images_dir: str | None = None,
                     tolerance_mm: float = 2.0, allow_missing: bool = False,
                     progress: Any = None) -> tuple[list[dict[str, Any]], Labels]:
    """Evaluate every case found in both folders (matched by case name).

    A case is ``<dir>/<case>.<ext>`` (``.seg.nrrd``, NIfTI, NRRD, MHA, PNG mask, DICOM-SEG ``.dcm``) or a
    sub-folder ``<dir>/<case>/`` holding one label file (as ``mskseg segment`` writes:
    ``segmentation.seg.nrrd``). Classes are matched by NAME, so label values may differ between the two
    (DICOM-SEG renumbers segments 1..N). Names come from the files (.seg.nrrd, DICOM-SEG, NIfTI sidecar
    ``.labels.json``), else from ``labels``, else from the other file of the pair (same values), else
    ``label_<value>``. Predicted classes that the reference does not name are not evaluated.

    Args:
        pred_dir, ref_dir: folders of predicted and reference label maps.
        labels: names for label maps that carry none, and (when given) the classes to evaluate.
        images_dir: folder with the images (``<case>.<ext>`` or ``<case>/`` DICOM series), needed to place
            DICOM-SEG frames on their source grid; optional otherwise.
        tolerance_mm: normalised surface Dice tolerance.
        allow_missing: evaluate the common cases when some reference cases have no prediction (otherwise an
            error lists them).

    Returns:
        ``(rows, labels)``: the rows of :func:`evaluate_pairs` and the classes evaluated.

    Raises:
        MSKSegError: no label maps found, no common case, cases without prediction, a grid mismatch.
    """
    from ..errors import MSKSegError
    from .data import find_label_files, find_image_for_case, read_labelmap

    preds, refs = find_label_files(pred_dir), find_label_files(ref_dir)
    for what, found, folder in (("prediction", preds, pred_dir), ("reference", refs, ref_dir)):
        if not found:
            raise MSKSegError(f"no {what} label maps found in {folder}",
                              "put one label file per case there (<case>.seg.nrrd, <case>.nii.gz, <case>.png, "
                              "<case>.dcm) or one sub-folder per case as `mskseg segment` writes")
    missing = sorted(set(refs) - set(preds))
    common = sorted(set(refs) & set(preds))
    if not common:
        raise MSKSegError(f"no case names in common between {pred_dir} ({', '.join(sorted(preds)[:5])} ...) "
                          f"and {ref_dir} ({', '.join(sorted(refs)[:5])} ...)",
                          "name each prediction after its reference case (same file name)")
    if missing and not allow_missing:
        raise MSKSegError(f"{len(missing)} reference cases have no prediction: {', '.join(missing[:10])}"
                          + (" ..." if len(missing) > 10 else ""),
                          "predict them too, or pass --allow-missing to evaluate only the cases that have one")
    name_to_value: dict[str, int] = {}
    if labels:
        name_to_value = {name: int(v) for v, name in labels.items()}
    pairs = []
    for case in common:
        source = None
        if images_dir is not None:
            image_path = find_image_for_case(images_dir, case)
            if image_path is not None:
                from ..io import read_image

                source = read_image(image_path)
        ref_map, ref_names = read_labelmap(refs[case], source=source, labels=labels)
        pred_map, pred_names = read_labelmap(preds[case], source=source if source is not None else ref_map,
                                             labels=labels)
        ref_map.check_same_grid(pred_map, f"prediction of case '{case}'")
        # A file without names uses its counterpart's values (a NIfTI prediction of a .seg.nrrd reference).
        ref_names = ref_names or pred_names or _default_names(ref_map.array)
        pred_names = pred_names or ref_names
        if not labels:
            for v, name in sorted(ref_names.items()):
                name_to_value.setdefault(name, len(name_to_value) + 1)
        pairs.append(EvaluationPair(case, pred_map.with_array(_renumber(pred_map.array, pred_names, name_to_value)),
                                    ref_map.with_array(_renumber(ref_map.array, ref_names, name_to_value))))
    evaluated: Labels = {v: n for n, v in sorted(name_to_value.items(), key=lambda item: item[1])}
    return evaluate_pairs(pairs, evaluated, tolerance_mm=tolerance_mm, progress=progress), evaluated


def _default_names(array: np.ndarray) -> Labels:
    return {int(v): f"label_{int(v)}" for v in np.unique(array) if v != 0}


def _renumber(array: np.ndarray, names: Labels, name_to_value: Mapping[str, int]) -> np.ndarray:
    """Label values by class name onto the common numbering; classes outside it become 0."""
    arr = np.asarray(array)
    out = np.zeros(arr.shape, np.uint16)
    for value, name in names.items():
        if name in name_to_value:
            out[arr == value] = name_to_value[name]
    return out
