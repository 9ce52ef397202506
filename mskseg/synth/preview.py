"""Gallery of synthetic L3 phantoms with their tissue contours, optionally beside real CT slices.

Looking at what a generator makes is part of testing it: the gallery shows each sample in a soft-tissue
window (-160..240 HU) with the outlines of its tissue labels (muscle red, subcutaneous fat yellow, visceral
fat orange, intermuscular fat cyan), and real slices in the same window for comparison.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image import Image
from ..io.common import prepare_output
from .phantom import TISSUE_LABELS, make_l3_batch

#: Soft-tissue display window (HU).
WINDOW = (-160.0, 240.0)
_CONTOUR_COLOURS = {1: "red", 2: "yellow", 3: "orange", 4: "cyan"}


def write_gallery(path: str | Path, n: int = 12, seed: int = 0, real_slices: list[Image] | None = None,
                  overwrite: bool = False) -> Path:
    """Write a PNG grid of ``n`` synthetic L3 phantoms (and optional real slices) with tissue contours.

    Args:
        path: output PNG path (refused when it exists, unless ``overwrite``).
        n: number of synthetic samples (samples ``0..n-1`` of :func:`~mskseg.synth.phantom.make_l3_batch`).
        seed: batch seed.
        real_slices: 2D CT images ``(J, I)`` in HU shown first, in the same window, without contours.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: ``n`` < 1 or a real slice is not 2D.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    real_slices = list(real_slices or [])
    for im in real_slices:
        if im.ndim != 2:
            raise ValueError(f"real slices must be 2D images, got shape {im.array.shape}")
    out = prepare_output(Path(path), overwrite)
    samples = make_l3_batch(seed, n)
    total = len(real_slices) + n
    cols = min(4, total)
    rows = int(np.ceil(total / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    k = 0
    for im in real_slices:
        ax = axes.ravel()[k]
        ax.imshow(im.array, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=im.spacing[1] / im.spacing[0])
        ax.set_title(f"real CT {im.metadata.get('SeriesDescription', '')}".strip(), fontsize=9)
        k += 1
    for s in samples:
        ax = axes.ravel()[k]
        ax.imshow(s.image.array, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
        for value, colour in _CONTOUR_COLOURS.items():
            mask = s.tissue == value
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[colour], linewidths=0.4)
        m = s.meta
        ax.set_title(f"synthetic: BMI {m['bmi']:.0f} {m['sex']} {m['phase']} arms {m['arms']}"
                     + (" sarcopenic" if m["sarcopenic"] else ""), fontsize=8)
        k += 1
    legend = ", ".join(f"{TISSUE_LABELS[v]} {c}" for v, c in _CONTOUR_COLOURS.items())
    fig.suptitle(f"synthetic L3 phantoms (seed {seed}); window {WINDOW[0]:.0f}..{WINDOW[1]:.0f} HU; {legend}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
