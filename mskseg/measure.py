"""Measurements any task can use: per-segment voxel statistics in Slicer's Segment Statistics style.

Pure functions over numpy: no I/O, no state. Columns follow Slicer's Segment Statistics names
(``Segment``, ``voxel_count``, ``volume_mm3``, ``volume_cm3``, ``mean``, ``stdev``, ``min``, ``max``, ``median``)
so tables look familiar to Slicer users; 2D images get ``area_mm2``/``area_cm2`` instead of volumes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import terminology
from .image import Image
from .io.common import Labels, check_labelmap

UNITS = {"volume_mm3": "mm3", "volume_cm3": "cm3", "area_mm2": "mm2", "area_cm2": "cm2", "mean": "HU",
         "stdev": "HU", "min": "HU", "max": "HU", "median": "HU"}


def segment_statistics(image: Image, labelmap: Image, labels: Labels) -> list[dict[str, Any]]:
    """One row per named label: size and intensity statistics of ``image`` inside it.

    Args:
        image: intensity image (HU for CT), 2D or 3D.
        labelmap: label map on exactly the image grid.
        labels: label value -> class name; empty labels get a row with zero size and no intensity values.

    Returns:
        Rows with ``Segment`` (display name), ``class``, ``label``, ``voxel_count``, volume (3D) or area (2D),
        and ``mean``, ``stdev``, ``min``, ``max``, ``median`` of the image inside the segment (None when empty).
    """
    arr = check_labelmap(labelmap, labels, image)
    voxel = float(np.prod(image.spacing))
    values = np.asarray(image.array)
    rows = []
    flat_lab = arr.ravel()
    flat_val = values.ravel()
    order = np.argsort(flat_lab, kind="stable")
    sorted_lab = flat_lab[order]
    for value, name in sorted(labels.items()):
        lo, hi = np.searchsorted(sorted_lab, [value, value + 1])
        inside = flat_val[order[lo:hi]].astype(np.float64)
        n = int(inside.size)
        row: dict[str, Any] = {"Segment": terminology.get_class(name).display_name, "class": name, "label": int(value),
                               "voxel_count": n}
        if image.ndim == 3:
            row["volume_mm3"] = n * voxel
            row["volume_cm3"] = n * voxel / 1000.0
        else:
            row["area_mm2"] = n * voxel
            row["area_cm2"] = n * voxel / 100.0
        if n:
            row.update(mean=float(inside.mean()), stdev=float(inside.std(ddof=1)) if n > 1 else 0.0,
                       min=float(inside.min()), max=float(inside.max()), median=float(np.median(inside)))
        else:
            row.update(mean=None, stdev=None, min=None, max=None, median=None)
        rows.append(row)
    return rows
