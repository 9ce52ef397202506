"""One PNG that shows a bone result: where the bones are, what they are called, and the density at L1-L4.

Panels on a 16:9 page, every picture in radiological convention (anterior up, the patient's right on the
image's left, head up), drawn from the canonical orientation of the run whatever the storage:

(a) an axial slice through L1 (else the middle of the lumbar levels found, else the volume's middle) with the
    classes in colour and the trabecular ROI outlined; (b) a coronal slice through the vertebral bodies; (c) a
    sagittal slice through the spine with the level names; (d) a coronal maximum-label projection of the whole
    labelled skeleton; (e) the trabecular HU table of L1-L4, the contrast phase and correction, the screening
    flag ("screening flag, not a diagnosis"), the class volumes and the warnings.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Image
from ..io.common import prepare_output
from ..terminology import get_class

BONE_WINDOW = (-400.0, 1100.0)


def _colours(labels: dict[int, str]) -> np.ndarray:
    table = np.zeros((256, 4))
    for value, name in labels.items():
        c = get_class(name).color
        table[value] = (c[0] / 255, c[1] / 255, c[2] / 255, 0.55)
    return table


def _grey(hu: np.ndarray) -> np.ndarray:
    lo, hi = BONE_WINDOW
    return np.clip((np.asarray(hu, np.float32) - lo) / (hi - lo), 0, 1)


def _show(ax, hu: np.ndarray, labels2d: np.ndarray, table: np.ndarray, aspect: float, title: str) -> None:
    ax.imshow(_grey(hu), cmap="gray", aspect=aspect, interpolation="nearest")
    ax.imshow(table[labels2d], aspect=aspect, interpolation="nearest")
    ax.set_title(title, color="white", fontsize=11)
    ax.axis("off")


def write_bone_report(path: str | Path, image: Image, result: Any, overwrite: bool = False) -> Path:
    """Write the report PNG of a :class:`~mskseg.bone.pipeline.BoneResult`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = prepare_output(path, overwrite)
    view = result.canonical
    hu = np.asarray(view.image.array)
    lab = np.asarray(view.labelmap)
    sx, sy, sz = view.image.spacing
    k_n, j_n, i_n = hu.shape
    table = _colours(result.labels)
    levels = view.level_slices
    k = levels.get("L1", int(np.median([levels[n] for n in levels if n.startswith("L")]))
                   if any(n.startswith("L") for n in levels) else k_n // 2)
    k = int(np.clip(k, 0, k_n - 1))
    x = int(np.clip(round(float(view.spine.x[k])), 0, i_n - 1))
    y = int(np.clip(round(float(view.spine.front[k]) + 15.0 / sy), 0, j_n - 1))

    fig = plt.figure(figsize=(16, 9), dpi=110, facecolor="black")
    grid = fig.add_gridspec(2, 4, width_ratios=[1.0, 1.0, 0.8, 1.25], left=0.01, right=0.99, top=0.90,
                            bottom=0.02, wspace=0.05, hspace=0.12)
    ax = fig.add_subplot(grid[0, 0])
    _show(ax, hu[k], lab[k], table, sy / sx, f"axial, slice {view.reorientation.source_slice(k)}"
          + (" (L1)" if "L1" in levels and levels["L1"] == k else ""))
    for d in view.densities:
        if k in d.slices:
            ax.contour(d.roi[d.slices.index(k)], levels=[0.5], colors="yellow", linewidths=1.2)
    _letters(ax, "R", "L", "A", "P")
    ax = fig.add_subplot(grid[0, 1])
    _show(ax, hu[::-1, y, :], lab[::-1, y, :], table, sz / sx, "coronal, through the vertebral bodies")
    _letters(ax, "R", "L", "S", "I")
    ax = fig.add_subplot(grid[1, 0])
    _show(ax, hu[::-1, :, x], lab[::-1, :, x], table, sz / sy, "sagittal, through the spine")
    for name, kk in levels.items():
        ax.text(2, k_n - 1 - kk, name, color="white", fontsize=8, va="center")
    for d in view.densities:
        for kk in d.slices:
            ax.plot([view.spine.front[kk], view.spine.front[kk] + 30.0 / sy], [k_n - 1 - kk] * 2, color="yellow", lw=0.8)
    _letters(ax, "A", "P", "S", "I")
    ax = fig.add_subplot(grid[1, 1])
    mip_lab = _max_label_projection(lab)
    bone_mip = np.where(lab > 0, hu, -1000).max(axis=1)
    _show(ax, bone_mip[::-1], mip_lab[::-1], table, sz / sx, "coronal projection of the labelled skeleton")
    _letters(ax, "R", "L", "S", "I")
    ax = fig.add_subplot(grid[:, 2])
    _legend(ax, result, table)
    ax = fig.add_subplot(grid[:, 3])
    _text_panel(ax, result)
    heading = "Bone segmentation and opportunistic bone density"
    series = str(image.metadata.get("SeriesDescription") or "").strip()
    fig.text(0.01, 0.965, heading + (f"  |  {series}" if series else ""), color="white", fontsize=16,
             fontweight="bold", va="center")
    k0, j0, i0 = image.array.shape
    fig.text(0.01, 0.925, f"CT {i0} x {j0} x {k0}, {image.spacing[0]:.2f} x {image.spacing[1]:.2f} x "
             f"{image.spacing[2]:.2f} mm   |   method: {result.method}   |   levels: {result.level_method}   |   "
             "automatic result: check before clinical use", color="#bbbbbb", fontsize=10, va="center")
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path


def _max_label_projection(lab: np.ndarray) -> np.ndarray:
    """Per (k, i) the label of the most anterior labelled voxel along j (the front of the skeleton)."""
    has = lab > 0
    first = np.argmax(has, axis=1)
    out = np.take_along_axis(lab, first[:, None, :], axis=1)[:, 0, :]
    return np.where(has.any(axis=1), out, 0)


def _letters(ax, left: str, right: str, top: str, bottom: str) -> None:
    for text, xy, ha, va in ((left, (0.01, 0.5), "left", "center"), (right, (0.99, 0.5), "right", "center"),
                             (top, (0.5, 0.99), "center", "top"), (bottom, (0.5, 0.01), "center", "bottom")):
        ax.text(*xy, text, color="#ffcc66", fontsize=9, ha=ha, va=va, transform=ax.transAxes)


def _legend(ax, result: Any, table: np.ndarray) -> None:
    ax.set_facecolor("black")
    ax.axis("off")
    rows = [r for r in result.rows if r.get("row") == "class"]
    ax.text(0.0, 1.0, "class              volume   mean HU", color="white", fontsize=9.5, family="monospace",
            va="top", transform=ax.transAxes)
    value_of = {n: v for v, n in result.labels.items()}
    for n, row in enumerate(rows[:34]):
        yy = 0.965 - n * 0.027
        colour = table[value_of[row["class"]]][:3]
        ax.add_patch(__import__("matplotlib").patches.Rectangle((0.0, yy - 0.017), 0.04, 0.018, color=colour,
                                                              transform=ax.transAxes))
        name = row["class"].replace("vertebrae_", "").replace("_", " ")
        ax.text(0.06, yy, f"{name:15s}{row['volume_cm3']:7.1f} cm3 {row['mean_HU']:6.0f}", color="white",
                fontsize=8.5, family="monospace", va="top", transform=ax.transAxes)


def _text_panel(ax, result: Any) -> None:
    ax.set_facecolor("black")
    ax.axis("off")
    d = result.density
    lines: list[tuple[str, str]] = [("Trabecular HU (elliptical ROI, mid-body)", "white")]
    lines.append((f"{'level':6s}{'mean':>7s}{'SD':>6s}{'corr.':>7s}{'ROI mm2':>9s}", "#bbbbbb"))
    for row in result.rows:
        if row.get("row") == "level":
            lines.append((f"{row['level']:6s}{row['trabecular_HU']:7.0f}{row['trabecular_SD_HU']:6.0f}"
                          f"{row['trabecular_HU_corrected']:7.0f}{row['roi_area_mm2']:9.0f}", "white"))
    if not any(row.get("row") == "level" for row in result.rows):
        lines.append(("no lumbar level L1-L4 measured", "#ff9966"))
    phase = d.get("phase", {})
    lines += [("", "white"), (f"Contrast phase: {phase.get('phase')}", "white")]
    lines += [(t, "#bbbbbb") for t in textwrap.wrap(str(phase.get("note", "")), 58)]
    flag = d.get("flag", {})
    colour = {"likely osteoporosis": "#ff5555", "possible osteoporosis": "#ffaa33"}.get(flag.get("flag"), "#88dd88")
    lines += [("", "white"), (f"Screening flag: {flag.get('flag')}", colour)]
    lines += [(t, "#dddddd") for t in textwrap.wrap(str(flag.get("rule", "")), 58)]
    lines += [(f"({flag.get('note')}; {flag.get('reference')})", "#bbbbbb")]
    if result.cross_check:
        lines += [("", "white"), (f"rules cross-check: {result.cross_check}", "#bbbbbb")]
    if result.warnings:
        lines += [("", "white"), ("Check:", "#ff9966")]
        for w in result.warnings[:6]:
            lines += [(t, "#ffbb99") for t in textwrap.wrap("- " + w, 58)]
    for n, (text, colour) in enumerate(lines[:44]):
        ax.text(0.0, 1.0 - n * 0.0225, text, color=colour, fontsize=9, family="monospace", va="top",
                transform=ax.transAxes)
