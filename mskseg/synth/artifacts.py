"""Image formation: from a tissue map to a CT-like HU array with the flaws of real scans.

All functions work on float32 HU arrays of shape ``(J, I)`` (one axial slice) or ``(K, J, I)`` (a volume,
axial slices along K), with ``spacing`` in ITK index order ``(i, j[, k])`` in mm, and return a new array
(inputs are never modified). Random effects take a ``np.random.Generator`` so a seed fixes the result.
In-plane effects (blur, streaks, table, field of view) act on every axial slice; through-plane averaging
is :func:`slice_thickness`. The array's row axis J points posterior (LPS, patient supine), so the table
lies at large J.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .tissues import TISSUE_TEXTURE_SD, ScanParams, base_tissue, sample_scan_params, sample_tissue_hu

#: The range scanners store (12-bit CT numbers).
HU_MIN, HU_MAX = -1024.0, 3071.0


def _in_plane_sigma(spacing: Sequence[float], ndim: int, sigma_mm: float) -> tuple[float, ...]:
    """Gaussian sigma in voxels per numpy axis for an in-plane sigma in mm (0 through-plane)."""
    si, sj = float(spacing[0]), float(spacing[1])
    sig = (sigma_mm / sj, sigma_mm / si)
    return sig if ndim == 2 else (0.0,) + sig


def _check(hu: np.ndarray, spacing: Sequence[float]) -> None:
    if hu.ndim not in (2, 3):
        raise ValueError(f"expected a 2D (J, I) or 3D (K, J, I) array, got shape {hu.shape}")
    if len(spacing) != hu.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {hu.ndim}D array")


def correlated_noise(shape: tuple[int, ...], rng: np.random.Generator, spacing: Sequence[float],
                     correlation_mm: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed in-plane over ``correlation_mm``.

    Args:
        shape: ``(J, I)`` or ``(K, J, I)``.
        rng: random generator.
        spacing: ``(i, j[, k])`` mm.
        correlation_mm: Gaussian sigma of the in-plane correlation (mm); 0 gives white noise.

    Returns:
        float32 array of ``shape`` with standard deviation 1.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    if correlation_mm <= 0:
        return white
    sig = _in_plane_sigma(spacing, len(shape), correlation_mm)
    smooth = ndimage.gaussian_filter(white, sig, mode="wrap")
    # Gaussian-filtered white noise has variance prod(1 / (2 sqrt(pi) sigma)) for sigmas above ~0.5 voxel;
    # for finer kernels the discrete filter departs from that, so measure it.
    if all(s == 0 or s >= 0.5 for s in sig):
        sd = float(np.sqrt(np.prod([1.0 / (2.0 * np.sqrt(np.pi) * s) for s in sig if s > 0])))
    else:
        sd = float(smooth.std()) or 1.0
    smooth *= np.float32(1.0 / sd)
    return smooth


def render_tissues(tissue_map: np.ndarray, tissue_ids: dict[int, str], hu: dict[str, float],
                   rng: np.random.Generator, spacing: Sequence[float], texture: bool = True) -> np.ndarray:
    """Piecewise-constant HU per tissue plus a spatially correlated texture per tissue.

    Args:
        tissue_map: integer map ``(J, I)`` or ``(K, J, I)``; every value present must be a key of
            ``tissue_ids``.
        tissue_ids: map value -> tissue key (a name of :data:`~mskseg.synth.tissues.TISSUE_NAMES`,
            optionally with a ``":variant"`` suffix).
        hu: tissue key -> mean HU (from :func:`~mskseg.synth.tissues.sample_tissue_hu`, possibly extended
            with variant keys).
        rng: random generator.
        spacing: ``(i, j[, k])`` mm.
        texture: add texture of SD :data:`~mskseg.synth.tissues.TISSUE_TEXTURE_SD` (fine grain at ~1 mm plus
            a coarser component at ~4 mm).

    Returns:
        float32 HU array of the map's shape.

    Raises:
        ValueError: a map value has no tissue, or a tissue has no HU.
    """
    tissue_map = np.asarray(tissue_map)
    _check(tissue_map, spacing)
    present = np.unique(tissue_map)
    missing = [int(v) for v in present if int(v) not in tissue_ids]
    if missing:
        raise ValueError(f"tissue map values {missing} have no entry in tissue_ids")
    no_hu = sorted({tissue_ids[int(v)] for v in present} - set(hu))
    if no_hu:
        raise ValueError(f"no HU given for tissue(s) {no_hu}")
    size = int(max(int(present.max()) + 1, max(tissue_ids) + 1)) if len(present) else 1
    lut_mean = np.zeros(size, np.float32)
    lut_sd = np.zeros(size, np.float32)
    for value, key in tissue_ids.items():
        if key in hu:
            lut_mean[value] = hu[key]
            lut_sd[value] = TISSUE_TEXTURE_SD.get(key, TISSUE_TEXTURE_SD.get(base_tissue(key), 5.0))
    idx = tissue_map.astype(np.intp, copy=False)
    out = lut_mean[idx]
    if texture:
        fine = correlated_noise(tissue_map.shape, rng, spacing, 0.7)
        coarse = correlated_noise(tissue_map.shape, rng, spacing, 3.0)
        fine *= np.float32(0.8)
        fine += np.float32(0.6) * coarse
        out += lut_sd[idx] * fine
    return out.astype(np.float32, copy=False)


def add_noise(hu: np.ndarray, sd: float | np.ndarray, rng: np.random.Generator, spacing: Sequence[float],
              correlation_mm: float = 0.8) -> np.ndarray:
    """Add correlated Gaussian quantum noise.

    Args:
        hu: HU array ``(J, I)`` or ``(K, J, I)``.
        sd: noise standard deviation (HU), a number or an array broadcastable to ``hu`` (noise rising in the
            middle of large patients).
        rng: random generator.
        spacing: ``(i, j[, k])`` mm.
        correlation_mm: in-plane correlation length (mm) of the reconstruction kernel.

    Returns:
        float32 array, ``hu`` plus noise.
    """
    _check(hu, spacing)
    noise = correlated_noise(hu.shape, rng, spacing, correlation_mm)
    return (hu + noise * np.asarray(sd, dtype=np.float32)).astype(np.float32, copy=False)


def blur(hu: np.ndarray, spacing: Sequence[float], fwhm_mm: float) -> np.ndarray:
    """In-plane Gaussian blur (system resolution) of full width at half maximum ``fwhm_mm``.

    Args:
        hu: HU array ``(J, I)`` or ``(K, J, I)``; a volume is blurred in-plane only.
        spacing: ``(i, j[, k])`` mm.
        fwhm_mm: full width at half maximum (mm); 0 returns a copy.

    Returns:
        float32 array of the same shape.
    """
    _check(hu, spacing)
    if fwhm_mm <= 0:
        return np.array(hu, dtype=np.float32)
    sig = _in_plane_sigma(spacing, hu.ndim, fwhm_mm / 2.3548)
    return ndimage.gaussian_filter(np.asarray(hu, np.float32), sig, mode="nearest")


def slice_thickness(vol: np.ndarray, spacing: Sequence[float], thickness_mm: float) -> np.ndarray:
    """Average a volume along K over a slab of ``thickness_mm`` (partial volume of thick slices).

    Args:
        vol: HU volume ``(K, J, I)``; a 2D ``(J, I)`` slice has no through-plane extent and is returned as a
            copy.
        spacing: ``(i, j, k)`` mm.
        thickness_mm: slab thickness (mm); slabs thinner than the slice spacing leave the volume unchanged.

    Returns:
        float32 array of the same shape.
    """
    _check(vol, spacing)
    vol = np.asarray(vol, np.float32)
    if vol.ndim == 2:
        return vol.copy()
    width = thickness_mm / float(spacing[2])
    if width <= 1.0:
        return vol.copy()
    half = width / 2.0
    n = int(np.ceil(half - 0.5))
    offsets = np.arange(-n, n + 1)
    weights = np.clip(half + 0.5 - np.abs(offsets), 0.0, 1.0)
    weights /= weights.sum()
    return ndimage.correlate1d(vol, weights.astype(np.float32), axis=0, mode="nearest")


def _streak_pattern(shape: tuple[int, int], rng: np.random.Generator, centers: list[tuple[float, float]],
                    sizes: list[float], strength: float, n_lines: int, width_px: float) -> np.ndarray:
    """Sum of thin lines through each centre, alternating sign, fading with distance (2D, HU)."""
    jj = np.arange(shape[0], dtype=np.float32)[:, None]
    ii = np.arange(shape[1], dtype=np.float32)[None, :]
    out = np.zeros(shape, np.float32)
    for (cj, ci), size in zip(centers, sizes):
        dj, di = jj - cj, ii - ci
        r = np.sqrt(dj * dj + di * di) + np.float32(1.0)
        fade = np.float32(size) / (r + np.float32(size))
        lines = np.zeros(shape, np.float32)
        for angle in rng.uniform(0, np.pi, n_lines):
            d = np.abs(di * np.float32(np.sin(angle)) - dj * np.float32(np.cos(angle)))
            w = width_px * rng.uniform(0.6, 1.6)
            amp = strength * rng.uniform(0.4, 1.0) * (1 if rng.random() < 0.45 else -1)
            lines += np.float32(amp) * np.exp(-(d * d) / np.float32(2 * w * w))
        out += lines * fade
    return out


def _dark_bands(shape: tuple[int, int], points: list[tuple[float, float]], sizes: list[float],
                strength: float) -> np.ndarray:
    """Dark bands joining pairs of dense objects (the classic beam-hardening shadow), 2D HU."""
    jj = np.arange(shape[0], dtype=np.float32)[:, None]
    ii = np.arange(shape[1], dtype=np.float32)[None, :]
    out = np.zeros(shape, np.float32)
    for a in range(len(points)):
        for b in range(a + 1, len(points)):
            (ja, ia), (jb, ib) = points[a], points[b]
            vj, vi = jb - ja, ib - ia
            length = float(np.hypot(vj, vi))
            if length < 1:
                continue
            t = ((jj - ja) * vj + (ii - ia) * vi) / np.float32(length * length)
            inside = (t > 0) & (t < 1)
            d = np.abs((jj - ja) * vi - (ii - ia) * vj) / np.float32(length)
            w = np.float32(0.5 * min(sizes[a], sizes[b]))
            out -= np.float32(strength) * inside * np.exp(-(d * d) / (2 * w * w))
    return out


def _dense_objects(mask2d: np.ndarray, max_objects: int = 4) -> tuple[list[tuple[float, float]], list[float]]:
    """Centroids (j, i) and radii (px) of the largest connected dense objects of a 2D mask."""
    lab, n = ndimage.label(mask2d)
    if n == 0:
        return [], []
    counts = np.bincount(lab.ravel())[1:]
    order = np.argsort(counts)[::-1][:max_objects]
    keep = [int(o) + 1 for o in order if counts[o] >= 4]
    cents = ndimage.center_of_mass(mask2d, lab, keep)
    radii = [float(np.sqrt(counts[k - 1] / np.pi)) for k in keep]
    return [(float(c[0]), float(c[1])) for c in cents], radii


def beam_hardening_streaks(hu: np.ndarray, rng: np.random.Generator, strength: float,
                           sources_mask: np.ndarray | None = None) -> np.ndarray:
    """Beam-hardening streaks radiating from dense objects and dark bands between them.

    Args:
        hu: HU array ``(J, I)`` or ``(K, J, I)``.
        rng: random generator.
        strength: peak streak amplitude (HU); 0 returns a copy.
        sources_mask: boolean mask of the dense objects (same shape); default ``hu > 400``.

    Returns:
        float32 array of the same shape. Only voxels inside the body (HU > -500) are changed.
    """
    hu = np.asarray(hu, np.float32)
    if strength <= 0:
        return hu.copy()
    src = (hu > 400) if sources_mask is None else np.asarray(sources_mask, bool)
    if src.shape != hu.shape:
        raise ValueError(f"sources_mask shape {src.shape} differs from image shape {hu.shape}")
    out = hu.copy()
    slices = [out] if hu.ndim == 2 else list(out)
    masks = [src] if hu.ndim == 2 else list(src)
    n_lines = int(rng.integers(6, 16))
    for sl, m in zip(slices, masks):
        points, sizes = _dense_objects(m)
        if not points:
            continue
        width = float(rng.uniform(0.6, 1.5))
        pattern = _streak_pattern(sl.shape, rng, points[:2], sizes[:2], strength, n_lines, width)
        if len(points) > 1:
            pattern += _dark_bands(sl.shape, points, sizes, strength * 0.8)
        body = sl > -500
        sl += pattern * body
    return out


def metal_implant(hu: np.ndarray, rng: np.random.Generator, where_mask: np.ndarray, spacing: Sequence[float],
                  out_mask: np.ndarray | None = None) -> np.ndarray:
    """Insert a small metal object (screw, clip, fragment) with bright and dark streaks.

    Args:
        hu: HU array ``(J, I)`` or ``(K, J, I)``.
        rng: random generator.
        where_mask: boolean mask of allowed centres (bone for screws, soft tissue for clips); nothing is
            inserted when it is empty.
        spacing: ``(i, j[, k])`` mm.
        out_mask: optional boolean array of ``hu``'s shape that receives the metal voxels (set to True).

    Returns:
        float32 array with the metal (3000-3071 HU) and its streaks (up to several hundred HU).
    """
    _check(hu, spacing)
    out = np.array(hu, dtype=np.float32)
    where = np.argwhere(np.asarray(where_mask, bool))
    if len(where) == 0:
        return out
    centre = where[rng.integers(len(where))]
    si, sj = float(spacing[0]), float(spacing[1])
    length_mm, width_mm = rng.uniform(4.0, 25.0), rng.uniform(2.0, 6.5)
    angle = rng.uniform(0, np.pi)
    shape2 = hu.shape[-2:]
    jj = (np.arange(shape2[0], dtype=np.float32)[:, None] - centre[-2]) * sj
    ii = (np.arange(shape2[1], dtype=np.float32)[None, :] - centre[-1]) * si
    u = ii * np.cos(angle) + jj * np.sin(angle)
    v = -ii * np.sin(angle) + jj * np.cos(angle)
    obj = (u / (length_mm / 2)) ** 2 + (v / (width_mm / 2)) ** 2 <= 1.0
    strength = float(rng.uniform(150.0, 600.0))
    pattern = _streak_pattern(shape2, rng, [(float(centre[-2]), float(centre[-1]))],
                              [max(length_mm / si, 3.0)], strength, int(rng.integers(8, 20)), 1.2)
    metal_value = np.float32(rng.uniform(3000.0, HU_MAX))
    if hu.ndim == 2:
        ks = [None]
    else:
        half = max(1, int(round(rng.uniform(2.0, 15.0) / float(spacing[2]) / 2)))
        ks = list(range(max(0, centre[0] - half), min(hu.shape[0], centre[0] + half + 1)))
    for k in ks:
        sl = out if k is None else out[k]
        body = sl > -500
        sl += pattern * body
        sl[obj] = metal_value
        if out_mask is not None:
            (out_mask if k is None else out_mask[k])[obj] = True
    return out


def add_table(hu: np.ndarray, spacing: Sequence[float], rng: np.random.Generator,
              out_mask: np.ndarray | None = None) -> np.ndarray:
    """Draw a curved carbon-fibre patient table (dense shells around a foam core) below the body.

    Args:
        hu: HU array ``(J, I)`` or ``(K, J, I)``; the body is taken as HU > -500 and the table is placed
            2-30 mm posterior to (below) its lowest point, the same in every slice.
        spacing: ``(i, j[, k])`` mm.
        rng: random generator.
        out_mask: optional boolean array of ``hu``'s shape that receives the table voxels.

    Returns:
        float32 array with the table drawn where it does not overlap the body.
    """
    _check(hu, spacing)
    out = np.array(hu, dtype=np.float32)
    body = out > -500
    rows = np.nonzero(body.any(axis=tuple(a for a in range(out.ndim) if a != out.ndim - 2)))[0]
    si, sj = float(spacing[0]), float(spacing[1])
    n_j, n_i = out.shape[-2:]
    bottom = int(rows.max()) if len(rows) else n_j // 2 + int(120 / sj)
    top_mm = bottom * sj + rng.uniform(2.0, 30.0)
    x = (np.arange(n_i) - n_i / 2.0) * si
    radius = rng.uniform(500.0, 2000.0)
    curve = top_mm - (np.sqrt(np.maximum(radius**2 - x**2, 0.0)) - radius)  # rises at the edges
    half_width = rng.uniform(220.0, 260.0)
    thickness = rng.uniform(10.0, 40.0)
    shell = rng.uniform(1.5, 3.0)
    y = (np.arange(n_j) * sj)[:, None]
    depth = y - curve[None, :]
    inside = (depth >= 0) & (depth <= thickness) & (np.abs(x)[None, :] <= half_width)
    is_shell = inside & ((depth <= shell) | (depth >= thickness - shell))
    foam = inside & ~is_shell
    table = np.full((n_j, n_i), np.nan, np.float32)
    table[foam] = rng.uniform(-950.0, -750.0)
    table[is_shell] = rng.uniform(100.0, 400.0)
    drawn = ~np.isnan(table)
    for k in ([None] if out.ndim == 2 else range(out.shape[0])):
        sl = out if k is None else out[k]
        put = drawn & (sl <= -500)
        sl[put] = table[put]
        if out_mask is not None:
            (out_mask if k is None else out_mask[k])[put] = True
    return out


def _outside_fov(shape: Sequence[int], spacing: Sequence[float], fov_mm: float,
                 center: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(outside, r, angle)`` for a slice of ``shape`` (J, I): pixels outside the reconstruction circle, their
    distance (mm) from its centre ``(i, j)`` (default the middle of the slice) and their polar angle."""
    n_j, n_i = int(shape[0]), int(shape[1])
    si, sj = float(spacing[0]), float(spacing[1])
    ci, cj = ((n_i - 1) / 2.0, (n_j - 1) / 2.0) if center is None else (float(center[0]), float(center[1]))
    x = ((np.arange(n_i) - ci) * si)[None, :]
    y = ((np.arange(n_j) - cj) * sj)[:, None]
    r = np.sqrt(x * x + y * y)
    return r > fov_mm / 2.0, r, np.arctan2(y, x)


def outside_fov(shape: Sequence[int], spacing: Sequence[float], fov_mm: float,
                center: Sequence[float] | None = None) -> np.ndarray:
    """Boolean ``(J, I)`` mask of the pixels :func:`truncate_fov` replaces: nothing is imaged there, so no
    label may be true there either."""
    return _outside_fov(shape, spacing, fov_mm, center)[0]


def truncate_fov(hu: np.ndarray, spacing: Sequence[float], fov_mm: float,
                 center: Sequence[float] | None = None, padding_hu: float = -1024.0,
                 rim_hu: float = 80.0) -> np.ndarray:
    """Keep the reconstruction circle only, as scanners do; body cut by the circle gets a bright rim.

    Args:
        hu: HU array ``(J, I)`` or ``(K, J, I)``.
        spacing: ``(i, j[, k])`` mm.
        fov_mm: diameter of the reconstruction circle (mm).
        center: circle centre as continuous index ``(i, j)``; default the middle of the slice.
        padding_hu: value written outside the circle (-1024; some scanners write -2048 or -3024).
        rim_hu: peak brightening (HU) of tissue within ~15 mm inside the circle edge where the body
            extends beyond it (the truncation artefact); 0 for none.

    Returns:
        float32 array of the same shape.
    """
    _check(hu, spacing)
    out = np.array(hu, dtype=np.float32)
    outside, r, ang = _outside_fov(out.shape[-2:], spacing, fov_mm, center)
    if not outside.any():
        return out
    for k in ([None] if out.ndim == 2 else range(out.shape[0])):
        sl = out if k is None else out[k]
        if rim_hu and bool((sl[outside] > -500).any()):
            bins = np.linspace(-np.pi, np.pi, 181)
            cut = np.histogram(ang[outside & (sl > -500)], bins)[0] > 0
            cut = np.convolve(np.r_[cut[-3:], cut, cut[:3]].astype(float), np.ones(7) / 7, "same")[3:-3]
            weight = np.interp(ang, 0.5 * (bins[1:] + bins[:-1]), cut)
            depth = np.maximum(fov_mm / 2.0 - r, 0.0)
            ramp = np.exp(-depth / 8.0) * (depth < 25.0)
            sl += (np.float32(rim_hu) * weight * ramp * (sl > -500)).astype(np.float32)
        sl[outside] = padding_hu
    return out


def simulate_scan(tissue_map: np.ndarray, tissue_ids: dict[int, str], spacing: Sequence[float],
                  rng: np.random.Generator, params: ScanParams | None = None,
                  hu: dict[str, float] | None = None) -> tuple[np.ndarray, ScanParams]:
    """Tissue map -> CT-like HU image: render, slab, blur, streaks, metal, table, noise, field of view.

    Args:
        tissue_map: integer map ``(J, I)`` or ``(K, J, I)``.
        tissue_ids: map value -> tissue key (see :func:`render_tissues`).
        spacing: ``(i, j[, k])`` mm.
        rng: random generator.
        params: the scan; drawn with :func:`~mskseg.synth.tissues.sample_scan_params` when None.
        hu: tissue key -> mean HU; drawn with :func:`~mskseg.synth.tissues.sample_tissue_hu` when None.

    Returns:
        ``(hu_image, params)``: float32 array of the map's shape clipped to -1024..3071 (the padding value
        outside the field of view may be lower), and the parameters used.
    """
    _check(np.asarray(tissue_map), spacing)
    params = sample_scan_params(rng) if params is None else params
    hu = sample_tissue_hu(rng, params) if hu is None else hu
    img = render_tissues(tissue_map, tissue_ids, hu, rng, spacing)
    if img.ndim == 3:
        img = slice_thickness(img, spacing, params.slice_thickness_mm)
    dense_ids = [v for v, k in tissue_ids.items() if base_tissue(k) in ("cortical_bone", "metal")]
    if params.metal:
        bone_ids = [v for v, k in tissue_ids.items() if base_tissue(k) in ("cancellous_bone", "cortical_bone")]
        where = np.isin(tissue_map, bone_ids) if bone_ids else img > -200
        img = metal_implant(img, rng, where, spacing)
    img = blur(img, spacing, params.blur_fwhm_mm)
    if params.streak_strength > 0:
        sources = np.isin(tissue_map, dense_ids) if dense_ids else None
        if params.metal:
            sources = img > 2000 if sources is None else (sources | (img > 2000))
        img = beam_hardening_streaks(img, rng, params.streak_strength, sources)
    has_table = any(base_tissue(k) == "table" for k in tissue_ids.values())
    if params.table and not has_table:
        img = add_table(img, spacing, rng)
    img = add_noise(img, params.noise_sd_hu, rng, spacing, params.noise_correlation_mm)
    np.clip(img, HU_MIN, HU_MAX, out=img)
    img = truncate_fov(img, spacing, params.fov_mm, padding_hu=params.padding_hu)
    return img, params
