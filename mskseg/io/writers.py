"""Writers for label maps (NIfTI), measurements (CSV, JSON) and a PNG overlay report.

``.seg.nrrd`` lives in :mod:`mskseg.io.segnrrd`, DICOM-SEG in :mod:`mskseg.io.dicomseg`. Every writer refuses
to replace an existing file unless ``overwrite=True`` and writes label maps on exactly their own grid.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import terminology
from ..image import Image
from .common import Labels, check_labelmap, prepare_output, to_jsonable, write_sitk


def write_nifti_labelmap(path: str | Path, labelmap: Image, labels: Labels, *, source: Image | None = None,
                         overwrite: bool = False) -> Path:
    """Write a label map as NIfTI (``.nii.gz``) plus a sidecar ``<name>.labels.json`` naming each value.

    NIfTI stores RAS on disk; SimpleITK converts from our LPS geometry, so the file overlays the source in
    Slicer, ITK-SNAP and nibabel. The sidecar lists value, class name, display name and colour for each label.
    """
    arr = check_labelmap(labelmap, labels, source)
    path = prepare_output(path, overwrite)
    sidecar = prepare_output(_sidecar(path), overwrite)
    write_sitk(labelmap.with_array(arr).to_sitk(), path, compress=True)
    sidecar.write_text(json.dumps(
        [{"value": int(v), "name": n, "display_name": terminology.get_class(n).display_name,
          "color": list(terminology.get_class(n).color)} for v, n in sorted(labels.items())], indent=2) + "\n")
    return path


def _sidecar(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".labels.json")


def read_labels_sidecar(path: str | Path) -> Labels | None:
    """The label names of a label map file from its ``<name>.labels.json`` sidecar (as
    :func:`write_nifti_labelmap` writes it), or None when there is no sidecar.

    Raises:
        InvalidImageError: the sidecar is not a list of ``{"value", "name"}`` entries.
    """
    from ..errors import InvalidImageError

    sidecar = _sidecar(Path(path))
    if not sidecar.is_file():
        return None
    try:
        entries = json.loads(sidecar.read_text(encoding="utf-8"))
        return {int(e["value"]): str(e["name"]) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidImageError(f"label sidecar {sidecar} is not a list of {{value, name}} entries: {exc}",
                                "fix or remove the sidecar, or name the values with --labels") from exc


def write_metrics_csv(path: str | Path, rows: Sequence[dict[str, Any]], *, overwrite: bool = False,
                      units: dict[str, str] | None = None) -> Path:
    """Write measurement rows as CSV (one row per dict; columns in first-seen order).

    ``units`` (column -> unit) is written into the header as ``name [unit]`` so the file speaks for itself.
    Missing values are written empty, floats with up to 6 significant digits.
    """
    path = prepare_output(path, overwrite)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    units = units or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"{c} [{units[c]}]" if units.get(c) else c for c in columns])
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
    return path


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return str(v)


def write_metrics_json(path: str | Path, payload: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write a JSON document (numpy values converted; NaN written as null)."""
    path = prepare_output(path, overwrite)
    path.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path



def pick_report_slices(labelmap: Image, n: int = 3) -> list[int]:
    """Up to ``n`` axial slices spread over the labelled range, one of them the slice with the most labels."""
    arr = np.asarray(labelmap.array)
    if arr.ndim == 2:
        return [0]
    counts = np.count_nonzero(arr.reshape(arr.shape[0], -1), axis=1)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return [arr.shape[0] // 2]
    best = int(np.argmax(counts))
    spread = np.unique(np.linspace(nz[0], nz[-1], num=min(n, nz.size)).round().astype(int)).tolist()
    nearest = min(range(len(spread)), key=lambda i: abs(spread[i] - best))
    spread[nearest] = best  # the fullest slice replaces its nearest evenly spaced neighbour
    return sorted(set(spread))


def write_overlay_png(path: str | Path, image: Image, labelmap: Image, labels: Labels, *,
                      slices: Iterable[int] | None = None, window: tuple[float, float] = (-160.0, 240.0),
                      title: str | None = None, table: Sequence[dict[str, Any]] | None = None,
                      overwrite: bool = False, alpha: float = 0.45) -> Path:
    """A PNG report: the image (greyscale window) with coloured label contours+fill on chosen slices, a colour
    legend and, optionally, a table of measurements underneath.

    Args:
        image: the source image (3D ``(K, J, I)`` or 2D); pixels are drawn at their true aspect ratio.
        labelmap: label map on the image grid.
        slices: axial slice indices to show (default :func:`pick_report_slices`).
        window: display window in image units (HU for CT): (lower, upper).
        table: rows to print under the images (e.g. the metrics).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    arr = check_labelmap(labelmap, labels, image)
    path = prepare_output(path, overwrite)
    ks = list(slices) if slices is not None else pick_report_slices(labelmap)
    n = len(ks)
    lut = np.zeros((max([0, *labels]) + 1, 4))
    for v, name in labels.items():
        lut[v, :3] = terminology.get_class(name).color_float
        lut[v, 3] = alpha
    cmap = ListedColormap(lut)
    nrows = 2 if table else 1
    fig = plt.figure(figsize=(5.0 * n, 5.6 + (0.28 * (len(table) + 2) if table else 0)), dpi=110)
    gs = fig.add_gridspec(nrows, n, height_ratios=[5.0, 0.28 * (len(table) + 2)] if table else [1])
    lo, hi = window
    for col, k in enumerate(ks):
        ax = fig.add_subplot(gs[0, col])
        img2 = image.array if image.ndim == 2 else image.array[k]
        lab2 = arr if image.ndim == 2 else arr[k]
        sy, sx = (image.spacing[1], image.spacing[0])
        ax.imshow(np.clip(img2, lo, hi), cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx, interpolation="nearest")
        ax.imshow(lab2, cmap=cmap, vmin=0, vmax=len(lut) - 1, aspect=sy / sx, interpolation="nearest")
        for v, name in labels.items():
            if np.any(lab2 == v):
                ax.contour(lab2 == v, levels=[0.5], colors=[terminology.get_class(name).color_float], linewidths=0.7)
        pos = "" if image.ndim == 2 else f"slice {k}  z={image.index_to_physical([0, 0, k])[2]:.1f} mm"
        ax.set_title(pos, fontsize=9)
        ax.axis("off")
    handles = [Patch(color=terminology.get_class(nm).color_float, label=terminology.get_class(nm).display_name)
               for v, nm in sorted(labels.items())]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.995 if not title else 0.955))
    if title:
        fig.suptitle(title, fontsize=11, y=0.995)
    if table:
        ax = fig.add_subplot(gs[1, :])
        ax.axis("off")
        cols = list(dict.fromkeys(c for r in table for c in r))
        cells = [[_cell(r.get(c)) for c in cols] for r in table]
        t = ax.table(cellText=cells, colLabels=cols, loc="center", cellLoc="center")
        t.auto_set_font_size(False)
        t.set_fontsize(7)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_image(path: str | Path, image: Image, *, overwrite: bool = False) -> Path:
    """Write an intensity image (a CT in HU, any voxel type) as NRRD, NIfTI or MHA, by the suffix of ``path``.

    Geometry (spacing, origin, direction) is kept, so :func:`mskseg.io.read_image` reads back the same grid;
    metadata (DICOM attributes) is not stored in the file. Used to hand a Slicer volume to the background
    worker (:mod:`mskseg.worker`).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = prepare_output(path, overwrite)
    write_sitk(image.to_sitk(), path, compress=False)
    return path
