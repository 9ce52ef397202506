"""Realism check: tissue statistics of synthetic CT next to those of a real CT series.

The same definitions are applied to the real series (with its TotalSegmentator labels) and to synthetic
volumes (whose input labels are TotalSegmentator labels too), so the numbers compare like with like:

* muscle: the paraspinal (``autochthon_*``) labels, eroded by one voxel in-plane;
* fat: HU -190..-30 inside the body (largest connected object per axial slice, holes filled) and outside
  every labelled structure (dilated by one voxel);
* liver, spleen: the organ labels eroded by two voxels in-plane;
* bone: the vertebra labels (whole bone: cortex and cancellous);
* noise: the standard deviation in small ROIs (5 x 5 pixels) wholly inside the eroded liver (median over
  ROIs), and the radial noise power spectrum (NPS) of mean-free liver patches: its peak and mean frequency.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..image import Image, labels_on_grid

#: Tissues compared, in table order.
TISSUES = ("muscle", "fat", "liver", "spleen", "bone")


def read_names_table(path: str | Path) -> dict[int, str]:
    """Read a TotalSegmentator label table (``id<TAB>name`` lines after a header).

    Args:
        path: the ``labelmap_total_v2.tsv`` file.

    Returns:
        ``{label value: class name}``.
    """
    names: dict[int, str] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def read_real_reference(dicom_dir: str | Path, labels_path: str | Path) -> tuple[Image, Image]:
    """The real CT series and its label map resampled (nearest neighbour) onto the CT's grid.

    Args:
        dicom_dir: folder of the DICOM series.
        labels_path: label map file (any grid covering the series).

    Returns:
        ``(ct, labels)``: HU image ``(K, J, I)`` and a uint16 label map on the same grid.
    """
    from ..io import read_image

    ct = read_image(dicom_dir)
    lab = read_image(labels_path)
    return ct.with_array(ct.array.astype(np.float32)), ct.with_array(labels_on_grid(lab, ct).astype(np.uint16))


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: per axial slice, the largest object above -500 HU with holes filled. ``(K, J, I)`` bool."""
    out = np.zeros(hu.shape, bool)
    for k in range(hu.shape[0]):
        lab, n = ndimage.label(hu[k] > -500)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        out[k] = ndimage.binary_fill_holes(lab == int(sizes.argmax()))
    return out


def _erode2d(mask: np.ndarray, iterations: int) -> np.ndarray:
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(mask, st, iterations=iterations) if iterations > 0 else mask


def tissue_masks(hu: np.ndarray, labels: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    """Masks of :data:`TISSUES` by the definitions of this module.

    Args:
        hu: HU volume ``(K, J, I)``.
        labels: label map on the same grid (TotalSegmentator values; values above 200 are the generator's added
            classes and do not count as labelled structures).
        names: label value -> class name (TotalSegmentator names).

    Returns:
        ``{tissue: bool mask (K, J, I)}``.
    """
    def ids(pred) -> list[int]:
        return [v for v, n in names.items() if v < 200 and pred(n)]

    structures = (labels > 0) & (labels < 200)
    st = np.zeros((3, 3, 3), bool)
    st[1] = True
    near = ndimage.binary_dilation(structures, st)
    body = body_mask(hu)
    return {
        "muscle": _erode2d(np.isin(labels, ids(lambda n: n.startswith("autochthon"))), 1),
        "fat": body & ~near & (hu >= -190) & (hu <= -30),
        "liver": _erode2d(np.isin(labels, ids(lambda n: n == "liver")), 2),
        "spleen": _erode2d(np.isin(labels, ids(lambda n: n == "spleen")), 2),
        "bone": np.isin(labels, ids(lambda n: n.startswith("vertebrae_"))),
    }


def tissue_stats(hu: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, tuple[float, float, int]]:
    """Mean, SD and voxel count of HU in each mask (NaN when a mask is empty)."""
    out = {}
    for name, m in masks.items():
        v = hu[m]
        out[name] = (float(v.mean()), float(v.std()), int(v.size)) if v.size else (np.nan, np.nan, 0)
    return out


def roi_noise_sd(hu: np.ndarray, mask: np.ndarray, roi: int = 5) -> float:
    """Median standard deviation of HU in ``roi`` x ``roi`` in-plane windows wholly inside ``mask`` (NaN if none)."""
    f = hu.astype(np.float64)
    size = (1, roi, roi)
    m1 = ndimage.uniform_filter(f, size)
    m2 = ndimage.uniform_filter(f * f, size)
    inside = ndimage.uniform_filter(mask.astype(np.float32), size) > 0.999
    sd = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))[inside]
    return float(np.median(sd)) if sd.size else float("nan")


def radial_nps(hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], patch: int = 24,
               n_bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Radial noise power spectrum of mean-free ``patch`` x ``patch`` in-plane patches wholly inside ``mask``.

    Each patch has its mean and linear trend removed (so organ shading does not count as noise).

    Args:
        hu: HU volume ``(K, J, I)``.
        mask: homogeneous region (e.g. the eroded liver), same shape.
        spacing: ``(i, j[, k])`` mm.
        patch: patch edge in pixels.
        n_bins: radial frequency bins up to the Nyquist frequency.

    Returns:
        ``(frequencies in 1/mm, NPS in HU^2 mm^2)`` of ``n_bins`` values (NaN when no patch fits).
    """
    si, sj = float(spacing[0]), float(spacing[1])
    fits = ndimage.uniform_filter(mask.astype(np.float32), (1, patch, patch)) > 0.999
    h = patch // 2
    spectra = []
    yy, xx = np.mgrid[0:patch, 0:patch].astype(float)
    design = np.stack([np.ones(patch * patch), yy.ravel(), xx.ravel()], axis=1)
    for k in range(hu.shape[0]):
        taken = np.zeros(hu.shape[1:], bool)
        for j, i in np.argwhere(fits[k]):
            if taken[j - h:j + h, i - h:i + h].any():
                continue
            taken[j - h:j + h, i - h:i + h] = True
            p = hu[k, j - h:j - h + patch, i - h:i - h + patch].astype(np.float64)
            coef, *_ = np.linalg.lstsq(design, p.ravel(), rcond=None)
            p = p - (design @ coef).reshape(patch, patch)
            spectra.append(np.abs(np.fft.fft2(p)) ** 2 * si * sj / (patch * patch))
    fy = np.fft.fftfreq(patch, sj)
    fx = np.fft.fftfreq(patch, si)
    fr = np.hypot(fy[:, None], fx[None, :])
    edges = np.linspace(0, min(0.5 / si, 0.5 / sj), n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    if not spectra:
        return centers, np.full(n_bins, np.nan)
    nps2d = np.mean(spectra, axis=0)
    idx = np.digitize(fr.ravel(), edges) - 1
    nps = np.array([nps2d.ravel()[idx == b].mean() if np.any(idx == b) else np.nan for b in range(n_bins)])
    return centers, nps


def noise_stats(hu: np.ndarray, liver: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Noise of a homogeneous region: ROI SD (HU), NPS peak and mean frequency (1/mm)."""
    f, nps = radial_nps(hu, liver, spacing)
    ok = np.isfinite(nps)
    if not ok.any():
        return {"roi_sd": roi_noise_sd(hu, liver), "nps_peak": np.nan, "nps_mean_freq": np.nan}
    return {
        "roi_sd": roi_noise_sd(hu, liver),
        "nps_peak": float(f[ok][np.argmax(nps[ok])]),
        "nps_mean_freq": float(np.sum(f[ok] * nps[ok]) / np.sum(nps[ok])),
    }


def measure(hu: np.ndarray, labels: np.ndarray, names: dict[int, str], spacing: Sequence[float]) -> dict[str, float]:
    """All numbers of the realism table for one volume: ``{"<tissue> mean": .., "<tissue> SD": .., noise ..}``."""
    masks = tissue_masks(hu, labels, names)
    measured = hu > -1024  # outside a scanner's reconstruction circle is padding, not tissue
    masks = {k: m & measured for k, m in masks.items()}
    stats = tissue_stats(hu, masks)
    row: dict[str, float] = {}
    for t in TISSUES:
        row[f"{t} mean"], row[f"{t} SD"], _ = stats[t]
    n = noise_stats(hu, masks["liver"], spacing)
    row["noise SD (5x5 ROI, liver)"] = n["roi_sd"]
    row["NPS peak (1/mm)"] = n["nps_peak"]
    row["NPS mean freq (1/mm)"] = n["nps_mean_freq"]
    return row


def markdown_table(real: dict[str, float], synthetic: list[dict[str, float]],
                   tolerance: dict[str, float] | None = None) -> str:
    """A Markdown table: quantity, real value, synthetic mean and range over samples, and whether real lies
    within the synthetic range widened by ``tolerance`` (absolute, per quantity; default 0)."""
    tolerance = tolerance or {}
    lines = ["| quantity | real | synthetic mean | synthetic min .. max | real within range |",
             "|---|---:|---:|---:|:---:|"]
    for key, value in real.items():
        vals = np.array([s[key] for s in synthetic], float)
        vals = vals[np.isfinite(vals)]
        fmt = "{:.3f}" if "1/mm" in key else "{:.1f}"
        if vals.size == 0:
            lines.append(f"| {key} | {fmt.format(value)} | - | - | - |")
            continue
        tol = tolerance.get(key, 0.0)
        ok = vals.min() - tol <= value <= vals.max() + tol
        lines.append(f"| {key} | {fmt.format(value)} | {fmt.format(vals.mean())} | "
                     f"{fmt.format(vals.min())} .. {fmt.format(vals.max())} | {'yes' if ok else 'no'} |")
    return "\n".join(lines)
