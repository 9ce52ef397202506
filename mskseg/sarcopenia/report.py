"""One PNG that shows a body-composition result the way it goes into a slide or a tumour-board report.

Three panels on a 16:9 page:

(a) the measured axial slice (soft-tissue window W400/L40) with the tissues filled in colour (skeletal muscle
    red, subcutaneous fat yellow, visceral fat orange, intermuscular fat cyan), a legend with the area of each
    tissue, orientation letters and a 5 cm scale bar;
(b) a sagittal reformat through the spine (thin-slab maximum intensity projection, bone window W1800/L400)
    with every vertebra level the detector identified, the measured level highlighted, its confidence and
    the warnings;
(c) the measurements: areas, mean and SD of HU, SMI, VAT/SAT, total adipose tissue, BMI, the flags of the
    chosen cut-off set with the threshold that applied, the windows and how slice and tissues were found.
"""
from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Image
from ..io.common import prepare_output
from .labels import MUSCLE_GROUPS

#: Report colours (RGB 0..1) of the tissues; radiology-slide convention, not the Slicer terminology colours.
TISSUE_COLOURS = {
    "skeletal_muscle": (0.86, 0.12, 0.12),
    "subcutaneous_fat": (0.98, 0.86, 0.18),
    "visceral_fat": (1.0, 0.55, 0.0),
    "intermuscular_fat": (0.0, 0.85, 0.92),
}
#: Soft-tissue window (W400/L40) of the axial panel, bone window (W1800/L400) of the sagittal panel.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
BONE_WINDOW = (-500.0, 1300.0)
_SHORT_NAMES = {"skeletal_muscle": "Skeletal muscle (SM)", "subcutaneous_fat": "Subcutaneous fat (SAT)",
                "visceral_fat": "Visceral fat (VAT)", "intermuscular_fat": "Intermuscular fat (IMAT)"}
_AREA_KEYS = {"skeletal_muscle": "SMA_cm2", "subcutaneous_fat": "SAT_cm2", "visceral_fat": "VAT_cm2",
              "intermuscular_fat": "IMAT_cm2"}


def write_sarcopenia_report(path: str | Path, image: Image, result: Any, overwrite: bool = False,
                            title: str | None = None) -> Path:
    """Write the report PNG of a :class:`~mskseg.sarcopenia.pipeline.SarcopeniaResult` and return its path.

    Args:
        path: the PNG to write; refused when it exists unless ``overwrite``.
        image: the CT volume ``(K, J, I)`` in HU the result was computed on.
        result: the result (``labelmap``, ``labels``, ``l3``, ``slices``, ``rows``, ``summary``, ``settings``,
            ``patient``, ``cutoff_set``, ``tissue_method``, ``warnings``).
        overwrite: replace an existing file.
        title: first line of the page; default names the series (SeriesDescription) when known.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = prepare_output(path, overwrite)
    fig = plt.figure(figsize=(16, 9), dpi=120, facecolor="black")
    grid = fig.add_gridspec(1, 3, width_ratios=[1.2, 0.62, 1.0], left=0.01, right=0.99, top=0.90, bottom=0.02,
                            wspace=0.04)
    many = list(getattr(result, "level_slices", {}) or {})
    if len(many) > 1:  # levels by name: the pictures and the headline block show the headline level
        result = _at_headline_level(result, image)
    l3 = result.l3
    row = result.headline_row() if hasattr(result, "headline_row") else (result.rows[-1] if result.rows else {})
    # Pictures in radiological convention: drawn from the canonical orientation of the run (anterior up, the
    # patient's right on the image's left, head up), whatever the storage orientation; texts name the slice
    # as stored.
    view = getattr(result, "canonical", None)
    picture, drawn = (view.image, replace(result, labelmap=view.labelmap, slices=view.slices, l3=view.l3)) \
        if view is not None else (image, result)
    k = int(drawn.l3.index)
    _axial_panel(fig.add_subplot(grid[0, 0]), picture, drawn, k, row, stored_k=int(l3.index))
    _sagittal_panel(fig.add_subplot(grid[0, 1]), picture, drawn, k)
    _table_panel(fig.add_subplot(grid[0, 2]), image, result, row)
    series = str(image.metadata.get("SeriesDescription") or "").strip()
    where = "the slice chosen by the user" if str(getattr(l3, "method", "")) == "user" else \
        (", ".join(many) if len(many) > 1 else str(getattr(l3, "level", "L3")))
    heading = title or f"Body composition at {where}" + (f"  |  {series}" if series else "")
    fig.text(0.01, 0.965, heading, color="white", fontsize=17, fontweight="bold", va="center")
    fig.text(0.01, 0.925, _subtitle(image, result), color="#bbbbbb", fontsize=10.5, va="center")
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path


def _at_headline_level(result: Any, image: Image) -> Any:
    """A multi-level result seen at its headline level: its slices, and the level marker on its centre slice
    (every level's row stays in the table)."""
    name = result.headline_level
    source = list(result.level_slices[name])
    centre = source[len(source) // 2]
    view = result.canonical
    if view is not None:
        canon = sorted(view.reorientation.canonical_slice(k) for k in source)
        view = replace(view, slices=canon, l3=replace(view.l3, index=canon[len(canon) // 2], level=name))
    from .pipeline import slice_position_along_axial_axis

    position = slice_position_along_axial_axis(image, centre)
    return replace(result, slices=source, l3=replace(result.l3, index=centre, level=name, position_mm=position),
                   canonical=view)


# --------------------------------------------------------------------------------------------- panels
def _axial_panel(ax, image: Image, result: Any, k: int, row: dict[str, Any], stored_k: int | None = None) -> None:
    from matplotlib.patches import Patch, Rectangle

    hu = np.asarray(image.array[k], dtype=np.float32)
    labels = np.asarray(result.labelmap.array[k])
    sx, sy = float(image.spacing[0]), float(image.spacing[1])
    rows_, cols_ = _body_box(hu, margin_mm=15.0, spacing=(sx, sy))
    hu, labels = hu[rows_, cols_], labels[rows_, cols_]
    extent = (0, hu.shape[1] * sx, hu.shape[0] * sy, 0)  # millimetres: true aspect ratio
    lo, hi = SOFT_TISSUE_WINDOW
    ax.imshow(np.clip(hu, lo, hi), cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="bilinear")
    overlay = np.zeros((*labels.shape, 4), np.float32)
    handles = []
    for value, name in sorted(result.labels.items()):
        colour = TISSUE_COLOURS.get(name)
        if colour is None:
            continue
        mask = labels == value
        overlay[mask, :3] = colour
        overlay[mask, 3] = 0.5
        area = _number(row.get(_AREA_KEYS.get(name, "")))
        area_text = f"  {area:.1f} cm²" if area is not None else ""
        handles.append(Patch(facecolor=colour, edgecolor="white", label=_SHORT_NAMES.get(name, name) + area_text))
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.axis("off")
    position = getattr(result.l3, "position_mm", None)
    user = str(getattr(result.l3, "method", "")) == "user"
    shown = k if stored_k is None else stored_k
    ax.set_title((f"Slice {shown}, chosen by the user" if user else
                  f"{getattr(result.l3, 'level', 'L3')}: slice {shown}") +
                 (f"  (z = {position:.1f} mm)" if position is not None else "") +
                 (f", slab of {len(result.slices)} slices" if len(result.slices) > 1 else ""),
                 color="white", fontsize=12, loc="left")
    left, right = ("R", "L") if image.direction[0, 0] >= 0 else ("L", "R")
    for x, text in ((0.01, left), (0.99, right)):
        ax.text(x, 0.5, text, transform=ax.transAxes, color="white", fontsize=13, fontweight="bold",
                ha="left" if x < 0.5 else "right", va="center")
    ax.add_patch(Rectangle((8, 6), 50, 2.5, color="white"))  # 5 cm scale bar, top left
    ax.text(33, 11, "5 cm", color="white", fontsize=9, ha="center", va="top")
    legend = ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.005), ncol=2, fontsize=10.5,
                       frameon=False, labelcolor="white", handlelength=1.4)
    legend.set_in_layout(False)


def _sagittal_panel(ax, image: Image, result: Any, k: int) -> None:
    hu = np.asarray(image.array)
    sx, sy, sz = (float(s) for s in image.spacing)
    column = _spine_column(hu[k], sx)
    half = max(1, int(round(6.0 / sx)))  # a 12 mm thin slab: the vertebral bodies and spinous processes
    slab = hu[:, :, max(0, column - half): column + half + 1]
    sagittal = slab.max(axis=2).astype(np.float32)  # (K, J)
    superior_up = image.direction[2, 2] >= 0  # k runs to the head: draw slice 0 at the bottom
    body_rows, _ = _body_box(np.asarray(hu[k], np.float32), margin_mm=10.0, spacing=(sx, sy))
    sagittal = sagittal[:, body_rows]
    n_slices = sagittal.shape[0]
    if not superior_up:
        sagittal = sagittal[::-1]
    height_mm, width_mm = n_slices * sz, sagittal.shape[1] * sy
    extent = (0, width_mm, 0, height_mm)
    lo, hi = BONE_WINDOW
    ax.imshow(np.clip(sagittal, lo, hi), cmap="gray", vmin=lo, vmax=hi, extent=extent, origin="lower",
              interpolation="bilinear", aspect="equal")

    def z_of(index: float) -> float:
        return ((index if superior_up else n_slices - 1 - index) + 0.5) * sz

    levels = dict(getattr(result.l3, "levels", {}) or {})
    measured = str(getattr(result.l3, "level", "L3"))
    for name, index in sorted(levels.items(), key=lambda item: item[1]):
        if name == measured and int(index) == k:
            continue
        ax.axhline(z_of(index), color="#66ccff", lw=0.8, alpha=0.8, ls="--")
        ax.text(width_mm * 0.99, z_of(index), name, color="#66ccff", fontsize=9.5, ha="right", va="bottom")
    ax.axhspan(z_of(min(result.slices)) - sz / 2, z_of(max(result.slices)) + sz / 2, color="red", alpha=0.25, lw=0)
    ax.axhline(z_of(k), color="red", lw=2.0)
    ax.text(width_mm * 0.02, z_of(k), f" {measured}", color="red", fontsize=13, fontweight="bold", ha="left",
            va="bottom")
    ax.set_xlim(0, width_mm)
    ax.axis("off")
    confidence = getattr(result.l3, "confidence", None)
    method = str(getattr(result.l3, "method", ""))
    how = "chosen by the user" if method == "user" else f"{method}\nconfidence {float(confidence):.2f}" \
        if confidence is not None else method
    how = how.replace(" (", "\n(", 1)  # the method names a model card: keep the title inside its panel
    ax.set_title(f"Sagittal through the spine\n{measured}: {how}", color="white", fontsize=10, loc="left")
    front, back = ("A", "P") if image.direction[1, 1] >= 0 else ("P", "A")
    ax.text(0.01, 0.01, front, transform=ax.transAxes, color="white", fontsize=11, fontweight="bold")
    ax.text(0.99, 0.01, back, transform=ax.transAxes, color="white", fontsize=11, fontweight="bold", ha="right")


def _table_panel(ax, image: Image, result: Any, row: dict[str, Any]) -> None:
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    lines = _metric_lines(result, row)
    y = 0.985
    ax.text(0.0, y, "Measurements" + (f" (mean of {len(result.slices)} slices)" if len(result.slices) > 1 else ""),
            color="white", fontsize=13, fontweight="bold", va="top")
    y -= 0.05
    for name, value, colour in lines:
        ax.text(0.0, y, name, color="#cccccc", fontsize=11, va="top", family="DejaVu Sans")
        decided = colour not in ("white", "#aaaaaa")
        ax.text(0.50, y, value, color=colour, fontsize=11 if decided or colour == "white" else 10, va="top",
                fontweight="bold" if decided else None)
        y -= 0.038
    y -= 0.01
    previous = None
    for heading, text in _notes(result):
        wrapped = textwrap.wrap(text, 60) or [""]
        if heading != previous:
            ax.text(0.0, y, heading, color="#cccccc", fontsize=9.5, va="top", fontweight="bold")
        previous = heading
        for line in wrapped:
            ax.text(0.22, y, line, color="#ffb347" if heading == "Warnings" and text != "none" else "#dddddd",
                    fontsize=9.5, va="top")
            y -= 0.03
            if y < 0.03:
                ax.text(0.22, y, "… (all warnings are in metrics.json)", color="#aaaaaa", fontsize=9, va="top")
                return


# --------------------------------------------------------------------------------------------- content
def _metric_lines(result: Any, row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value text, colour) of each measurement line of the table panel."""
    def area(key: str, hu_key: str, sd_key: str) -> str:
        a = _number(row.get(key))
        if a is None:
            return "–"
        mean, sd = _number(row.get(hu_key)), _number(row.get(sd_key))
        return f"{a:.1f} cm²" + (f"   {mean:.0f} ± {sd:.0f} HU" if mean is not None and sd is not None else
                                 f"   {mean:.0f} HU" if mean is not None else "")

    smd, smd_sd = _number(row.get("SMD_HU")), _number(row.get("SM_sd_HU"))
    smi = _number(row.get("SMI_cm2_m2"))
    smi_text = f"{smi:.1f} cm²/m²" if smi is not None else "– " + _reason(row, "SMI_reason", "height unknown")
    ratio = _number(row.get("VAT_SAT_ratio"))
    patient = getattr(result, "patient", None)
    lines = [
        ("Skeletal muscle area (SMA)", area("SMA_cm2", "SMD_HU", "SM_sd_HU").split("   ")[0], "white"),
        ("Muscle radiodensity (SMD)", f"{smd:.1f} ± {smd_sd:.1f} HU" if smd is not None and smd_sd is not None
         else (f"{smd:.1f} HU" if smd is not None else "–"), "white"),
        ("Skeletal muscle index (SMI)", smi_text, "white"),
        ("Intermuscular fat (IMAT)", area("IMAT_cm2", "IMAT_mean_HU", "IMAT_sd_HU"), "white"),
        ("Subcutaneous fat (SAT)", area("SAT_cm2", "SAT_mean_HU", "SAT_sd_HU"), "white"),
        ("Visceral fat (VAT)", area("VAT_cm2", "VAT_mean_HU", "VAT_sd_HU"), "white"),
        ("Total adipose (SAT+VAT+IMAT)", f"{_number(row.get('TAT_cm2')):.1f} cm²"
         if _number(row.get("TAT_cm2")) is not None else "–", "white"),
        ("VAT / SAT", f"{ratio:.2f}" if ratio is not None else "–", "white"),
    ]
    for name in MUSCLE_GROUPS:
        if _number(row.get(f"{name}_cm2")) is not None:
            lines.append(("  " + name.replace("_", " ").capitalize(), area(f"{name}_cm2", f"{name}_mean_HU", "-"),
                          "white"))
    if len(getattr(result, "level_slices", {}) or {}) > 1:
        for name, level_row in result.level_rows().items():
            sma, sat, vat = (_number(level_row.get(k)) for k in ("SMA_cm2", "SAT_cm2", "VAT_cm2"))
            lines.append((f"  at {name}", " / ".join("–" if v is None else f"{v:.1f}" for v in (sma, sat, vat))
                          + " cm² (SMA / SAT / VAT)", "white"))
    import textwrap

    who = patient.describe() if hasattr(patient, "describe") else "sex, height, weight unknown"
    for n, part in enumerate(textwrap.wrap(who, 32)):  # the value column holds about 32 characters
        lines.append(("Patient" if n == 0 else "", part, "white"))
    flags = _flags(result, row)
    cutoff = getattr(result, "cutoff_set", "")
    lines.append((f"Low SMI ({cutoff})", *_flag_text(flags, "sarcopenia", "sarcopenia_rule", "sarcopenia_reason")))
    lines.append((f"Low SMD ({cutoff})", *_flag_text(flags, "low_radiodensity", "low_radiodensity_rule",
                                                    "low_radiodensity_reason")))
    return lines


def _flag_text(flags: dict[str, Any], key: str, rule_key: str, reason_key: str) -> tuple[str, str]:
    value = flags.get(key)
    if value is True:
        return "YES: " + _short_rule(flags.get(rule_key)), "#ff6b6b"
    if value is False:
        return "no (" + _short_rule(flags.get(rule_key)).replace("<", "not <") + ")", "#7bd88f"
    reason = str(flags.get(reason_key) or "not decided").split(":")[0]
    return "undecided (" + textwrap.shorten(reason, 26, placeholder="…") + ")", "#aaaaaa"


def _short_rule(rule: Any) -> str:
    text = str(rule or "")
    return text.split(" (")[0] if text else "below the cut-off"


def _flags(result: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The flag entries (``sarcopenia``, ``low_radiodensity`` and their rules/reasons) wherever the metrics
    put them: in the row, in its ``flags`` dict, or in the summary."""
    found: dict[str, Any] = {}
    summary = getattr(result, "summary", {}) or {}
    for source in (summary.get("flags") if isinstance(summary.get("flags"), dict) else {}, summary,
                   row.get("flags") if isinstance(row.get("flags"), dict) else {}, row):
        for key, value in source.items():
            if key.startswith(("sarcopenia", "low_radiodensity")) and value is not None:
                found[key] = value
    return found


def _notes(result: Any) -> list[tuple[str, str]]:
    settings = getattr(result, "settings", None)
    windows = ""
    if settings is not None:
        w = {name: getattr(settings, name) for name in ("muscle_hu", "imat_hu", "sat_hu", "vat_hu")
             if hasattr(settings, name)}
        windows = ", ".join(f"{name.split('_')[0].upper().replace('MUSCLE', 'SM')} {lo:g}..{hi:g}"
                            for name, (lo, hi) in w.items()) + " HU"
    l3 = result.l3
    level_method = str(getattr(l3, "method", ""))
    notes = [("Windows", windows),
             ("Method", f"level: {level_method}; tissues: {getattr(result, 'tissue_method', '')}")]
    levels = dict(getattr(l3, "levels", {}) or {})
    if levels:
        notes.append(("Levels", ", ".join(f"{n} {i}" for n, i in sorted(levels.items(), key=lambda t: -t[1]))))
    warnings = report_warnings(result)
    notes += [("Warnings", f"• {w}") for w in warnings] or [("Warnings", "none")]
    return notes


def report_warnings(result: Any) -> list[str]:
    """The warnings the report lists: the result's, with every cross-check disagreement (level detector against
    the rule-based count, network against rules for the tissues) even when the result's list lacks it."""
    if hasattr(result, "all_warnings"):
        return list(result.all_warnings())
    warnings = list(getattr(result, "warnings", []) or [])
    level_check = getattr(getattr(result, "l3", None), "cross_check", None) or {}
    tissue_check = getattr(result, "tissue_cross_check", None) or {}
    for text in (level_check.get("disagreement_warning"),
                 (tissue_check.get("warning") or "the tissue methods disagree: check the segmentation")
                 if tissue_check.get("disagreement") else None):
        if text and text not in warnings:
            warnings.append(str(text))
    return warnings


def _subtitle(image: Image, result: Any) -> str:
    sx, sy, sz = image.spacing
    k, j, i = image.array.shape
    bits = [f"CT {i} x {j} x {k}, {sx:.2f} x {sy:.2f} x {sz:.2f} mm"]
    for key in ("PatientID", "StudyDate"):
        if image.metadata.get(key):
            bits.append(f"{key} {image.metadata[key]}")
    bits.append(f"cut-offs: {getattr(result, 'cutoff_set', '')}")
    bits.append("automatic result: check before clinical use")
    return "   |   ".join(bits)


# --------------------------------------------------------------------------------------------- geometry
def _body_box(hu2d: np.ndarray, margin_mm: float, spacing: tuple[float, float]) -> tuple[slice, slice]:
    """Row and column slices of the body (HU > -500, largest extent) on an axial slice, with a margin."""
    body = hu2d > -500
    if not body.any():
        return slice(None), slice(None)
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    my, mx = int(round(margin_mm / spacing[1])), int(round(margin_mm / spacing[0]))
    return (slice(max(rows[0] - my, 0), min(rows[-1] + my + 1, hu2d.shape[0])),
            slice(max(cols[0] - mx, 0), min(cols[-1] + mx + 1, hu2d.shape[1])))


def _spine_column(hu2d: np.ndarray, spacing_i: float) -> int:
    """Column index ``i`` of the spine on an axial slice: the centre of bone (HU > 200) near the body's middle."""
    body_cols = np.flatnonzero((hu2d > -500).any(axis=0))
    middle = int((body_cols[0] + body_cols[-1]) // 2) if body_cols.size else hu2d.shape[1] // 2
    half = int(round(40.0 / spacing_i))  # the spine lies within 4 cm of the body's midline
    lo, hi = max(middle - half, 0), min(middle + half + 1, hu2d.shape[1])
    bone = hu2d[:, lo:hi] > 200
    if not bone.any():
        return middle
    weights = bone.sum(axis=0).astype(float)
    return int(round(lo + np.average(np.arange(hi - lo), weights=weights)))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _reason(row: dict[str, Any], key: str, default: str) -> str:
    reason = str(row.get(key) or default).split(":")[0]  # "height unknown: give ..." -> "height unknown"
    return f"({textwrap.shorten(reason, 30, placeholder='…')})"
