"""Rule-based bone segmentation of a CT in the canonical orientation: HU threshold, marrow filling, classes by
position.

The method (every step a plain function, all on the canonical array ``(K, J, I)``: ``i`` towards the patient's
left, ``j`` towards posterior, ``k`` towards the head):

1. :func:`body_mask`: the patient's body (largest connected part above -400 HU, found on ~3 mm pixels after an
   in-plane opening that cuts thin connections such as the table top); bone is looked for only inside it, so the
   table and objects outside the body are never bone.
2. :func:`contrast_vessels`: contrast-filled vessels (the aorta in the first place: blood with contrast is
   150-350 HU, a homogeneous tube in front of the spine). Voxels of 130-500 HU whose in-plane neighbourhood is
   homogeneous (SD < 40 HU), at least 4 mm from the edge of that region in-plane and forming a tube at least
   40 mm long. They are taken out of the bone seed (marrow enclosed by cortex is put back by step 4).
3. seed: voxels of at least :data:`CORTEX_HU` inside the body, minus those vessels.
4. :func:`fill_marrow`: holes of the seed filled per axial slice, per coronal slice and in 3D when they look
   like marrow: red marrow / cancellous bone (mean >= 60 HU) or fatty marrow (mean -300 .. -40 HU, the
   femoral shaft), at most 30 cm2 (a slice) or 60 cm3 (3D). The spinal canal (CSF and epidural fat, mean about
   0-40 HU) and the pelvic cavity (too large) stay empty.
5. small components (< :data:`MIN_COMPONENT_CM3`, e.g. calcified plaque, noise in contrast organs) and
   components without cortical bone (< 2 % of voxels at :data:`DENSE_HU` or more: enhancing kidney cortex,
   bowel wall, vessels the tube rule missed) are removed.
6. :func:`classify_bone`: classes by position. The spine is tracked per slice (the most posterior run of bone
   near the body's midline); bone pieces (2D components per slice) centred within 30 mm of it belong to the
   vertebral column. Column bone is named per vertebra from the shared level finder
   (:func:`mskseg.spine.levels.find_vertebra_levels`), with boundaries at the slice of least bone between two
   body centres (the disc); below L5 it is the sacrum. Bone away from the column is split into ribs (above)
   and pelvis (below) at the longest empty gap along the body axis (or at L3 when no gap is seen and the levels
   are known), left and right by the side of the spine; in the pelvis the femur is a separate connected part
   that reaches lower than the hip bone. What the rules cannot tell stays "vertebrae" (level not identified)
   or "other bone" (e.g. sternum, clavicles, arm bones, bone where neither a gap nor levels are known).
7. :func:`find_aorta` (for the contrast phase, after the spine is tracked): the round contrast-filled tube,
   15-35 mm across, in front of / left of the vertebral bodies and continuous over at least 40 mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..anatomy import totalseg_name, vertebra_names, vertebra_order

#: Bone seed threshold (HU): cortical and dense cancellous bone.
CORTEX_HU = 200.0
#: Cortical bone: every bone part holds some voxels this dense (contrast-enhanced organs do not).
DENSE_HU = 450.0
#: Contrast-filled blood: the HU range of :func:`contrast_vessels`.
VESSEL_HU = (130.0, 500.0)
#: Holes of the seed filled as marrow: mean HU at least this (cancellous bone, red marrow) ...
MARROW_MIN_HU = 60.0
#: ... or within this range (fatty marrow).
FATTY_MARROW_HU = (-300.0, -40.0)
#: Components smaller than this are removed (cm3).
MIN_COMPONENT_CM3 = 0.3
#: Half-width (mm) around the spine within which a bone piece's centre makes it part of the vertebral column.
COLUMN_HALF_WIDTH_MM = 30.0
#: Farthest reach (mm) of the vertebral column from the spine's centre (transverse processes, sacral alae).
COLUMN_MAX_REACH_MM = 48.0

#: Fixed label values of the rule-based bone classes (the same in every result; a result lists those present).
BONE_CLASS_NAMES: tuple[str, ...] = (
    *(totalseg_name(n) for n in vertebra_names("C1", "L5")), "vertebrae", "sacrum", "hip_left", "hip_right",
    "femur_left", "femur_right", "ribs_left", "ribs_right", "other_bone")
BONE_LABELS: dict[int, str] = {i + 1: n for i, n in enumerate(BONE_CLASS_NAMES)}
BONE_VALUE: dict[str, int] = {n: v for v, n in BONE_LABELS.items()}
#: Value of the single class of ``classes="bone"``.
ALL_BONE_LABELS: dict[int, str] = {1: "bone"}
#: Class groups the ``classes`` option can name.
CLASS_GROUPS = ("vertebrae", "sacrum", "hip", "femur", "ribs", "other")


@dataclass
class SpineTrack:
    """Where the vertebral column is in each canonical slice (indices; NaN where no column was seen)."""

    x: np.ndarray  # (K,) column index i of the spine's centre
    front: np.ndarray  # (K,) row index j of the front of the vertebral body
    seen: np.ndarray  # (K,) bool: measured on this slice (not interpolated)


@dataclass
class BoneRules:
    """What the rules found: the class label map (canonical), the all-bone mask and how they were found."""

    labelmap: np.ndarray  # uint8 (K, J, I), values of BONE_LABELS
    labels: dict[int, str]
    bone: np.ndarray  # bool (K, J, I)
    spine: SpineTrack
    level_bounds: dict[str, tuple[int, int]] = field(default_factory=dict)  # level -> (first, last) canonical slice
    aorta_hu: float | None = None
    vessel_voxels: int = 0
    rib_pelvis_split: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ structuring
def _plane(connectivity: int = 1) -> np.ndarray:
    """A 3D structure connecting voxels within an axial slice only."""
    s = np.zeros((3, 3, 3), bool)
    s[1] = ndimage.generate_binary_structure(2, connectivity)
    return s


def _coronal_plane() -> np.ndarray:
    s = np.zeros((3, 3, 3), bool)
    s[:, 1, :] = ndimage.generate_binary_structure(2, 1)
    return s


def _upsample(small: np.ndarray, step: int, shape: tuple[int, int, int]) -> np.ndarray:
    return np.repeat(np.repeat(small, step, axis=1), step, axis=2)[:, :shape[1], :shape[2]]


# ------------------------------------------------------------------------------------------------ steps
def body_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The patient's body: the largest connected part above -400 HU (on ~3 mm pixels, after an in-plane
    opening of 6 mm that cuts thin connections such as the table), holes filled per slice, one pixel added."""
    step = max(1, int(round(3.0 / max(spacing[0], spacing[1]))))
    small = hu[:, ::step, ::step] > -400
    disk = np.zeros((1, 5, 5), bool)
    yy, xx = np.mgrid[-2:3, -2:3]
    disk[0] = xx ** 2 + yy ** 2 <= 4
    opened = ndimage.binary_opening(small, structure=disk)
    labels, n = ndimage.label(opened)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    body = ndimage.binary_fill_holes(body, structure=_plane())
    body = ndimage.binary_dilation(body, structure=_plane(2), iterations=2)
    return _upsample(body, step, hu.shape)


def contrast_vessels(hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]
                     ) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Contrast-filled vessel lumens (see the module description), on the full grid, and a description of each
    tube found (``z_extent_mm``, ``median_hu``, centre ``x``/``y`` in voxels, ``voxels``)."""
    step = max(1, int(round(1.5 / max(spacing[0], spacing[1]))))
    small_hu = np.asarray(hu[:, ::step, ::step], np.float32)
    small_body = body[:, ::step, ::step]
    cand = (small_hu >= VESSEL_HU[0]) & (small_hu < VESSEL_HU[1]) & small_body
    if not cand.any():
        return np.zeros(hu.shape, bool), []
    mean = ndimage.uniform_filter(small_hu, size=(1, 3, 3))
    sq = ndimage.uniform_filter(small_hu * small_hu, size=(1, 3, 3))
    sd = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    homog = cand & (sd < 40.0)
    px = max(spacing[0], spacing[1]) * step
    depth = ndimage.distance_transform_edt(homog, sampling=(1e4, px, px))
    core = depth >= 4.0
    if not core.any():
        return np.zeros(hu.shape, bool), []
    labels, n = ndimage.label(core)
    k_extent = hu.shape[0] * spacing[2]
    min_len = min(40.0, 0.6 * k_extent)
    found: list[dict[str, float]] = []
    keep = np.zeros(n + 1, bool)
    objects = ndimage.find_objects(labels)
    for value, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        z_len = (sl[0].stop - sl[0].start) * spacing[2]
        if z_len < min_len:
            continue
        part = labels[sl] == value
        values = small_hu[sl][part]
        keep[value] = True
        ys, xs = np.nonzero(part.any(axis=0))
        found.append({"z_extent_mm": float(z_len), "median_hu": float(np.median(values)),
                      "x": float((sl[2].start + xs.mean()) * step), "y": float((sl[1].start + ys.mean()) * step),
                      "voxels": int(part.sum())})
    if not keep.any():
        return np.zeros(hu.shape, bool), found
    tubes = keep[labels]
    # grow back to the lumen wall (the opening removed 4 mm): the homogeneous region within 4 mm of the cores
    near = ndimage.distance_transform_edt(~tubes, sampling=(1e4, px, px)) <= 4.5
    lumen = near & cand
    return _upsample(lumen, step, hu.shape) & (np.asarray(hu) < VESSEL_HU[1]), found


def fill_marrow(seed: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``seed`` with its holes that look like marrow filled: per axial slice, per coronal slice, then in 3D."""
    pixel_mm2 = spacing[0] * spacing[1]
    voxel_mm3 = pixel_mm2 * spacing[2]
    mask = seed.copy()
    for structure, max_size in ((_plane(), 3000.0 / pixel_mm2), (_coronal_plane(), 3000.0 / (spacing[0] * spacing[2])),
                                (None, 60000.0 / voxel_mm3)):
        filled = ndimage.binary_fill_holes(mask, structure=structure)
        holes = filled & ~mask
        if not holes.any():
            continue
        labels, n = ndimage.label(holes, structure=structure)
        flat = labels[holes]
        size = np.bincount(flat, minlength=n + 1).astype(float)
        total = np.bincount(flat, weights=np.asarray(hu)[holes].astype(np.float64), minlength=n + 1)
        mean = total / np.maximum(size, 1.0)
        marrow = (size <= max_size) & ((mean >= MARROW_MIN_HU) |
                                       ((mean >= FATTY_MARROW_HU[0]) & (mean <= FATTY_MARROW_HU[1])))
        marrow[0] = False
        mask |= marrow[labels]
    return mask


def remove_small(mask: np.ndarray, spacing: tuple[float, float, float], min_cm3: float = MIN_COMPONENT_CM3,
                 hu: np.ndarray | None = None) -> np.ndarray:
    """``mask`` without its connected parts (26-connected) smaller than ``min_cm3`` and, when ``hu`` is given,
    without parts that hold no cortical bone (fewer than 2 % of their voxels, and fewer than 3, at
    :data:`DENSE_HU` or more): contrast-enhanced organs such as the kidney cortex."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    counts = np.bincount(labels.ravel())
    keep = counts * float(np.prod(spacing)) / 1000.0 >= min_cm3
    if hu is not None:
        dense = np.bincount(labels[mask & (np.asarray(hu) >= DENSE_HU)], minlength=n + 1)
        keep &= dense >= np.maximum(3, 0.02 * counts)
    keep[0] = False
    return keep[labels]


def segment_bone(hu: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, dict[str, Any]]:
    """All bone (with marrow) of a canonical CT array: steps 1-5 of the module description.

    Returns:
        ``(bone mask, details)``: details hold ``aorta_hu`` (median HU of the contrast-filled tube in front
        of the spine, None when none was found), ``vessel_voxels`` and ``tubes``.
    """
    hu = np.asarray(hu)
    body = body_mask(hu, spacing)
    vessels, tubes = contrast_vessels(hu, body, spacing)
    seed = (hu >= CORTEX_HU) & body & ~vessels
    bone = fill_marrow(seed, hu, spacing)
    bone &= ~(vessels & ~ndimage.binary_fill_holes(seed, structure=_plane()))
    bone = remove_small(bone, spacing, hu=hu)
    return bone, {"vessel_voxels": int(vessels.sum()), "tubes": tubes}


# ------------------------------------------------------------------------------------------------ the spine
def track_spine(bone: np.ndarray, spacing: tuple[float, float, float]) -> SpineTrack:
    """The vertebral column per canonical slice: in a 40 mm band around the midline of the bone, the most
    posterior run of bone rows (gaps up to 25 mm, the spinal canal, bridged) is the column; its front row is
    the front of the vertebral body. Slices without one are interpolated; the track is smoothed along z."""
    k_n, j_n, i_n = bone.shape
    sx, sy, sz = spacing
    x = np.full(k_n, np.nan)
    front = np.full(k_n, np.nan)
    band = max(2, int(round(20.0 / sx)))
    gap = int(round(25.0 / sy))
    min_run = int(round(15.0 / sy))
    columns = bone.sum(axis=1)  # (K, I)
    for k in range(k_n):
        if columns[k].sum() == 0:
            continue
        cols = np.flatnonzero(columns[k])
        centre = int(round(np.median(np.repeat(np.arange(i_n), columns[k]))))
        centre = int(np.clip(centre, cols.min(), cols.max()))
        lo, hi = max(0, centre - band), min(i_n, centre + band + 1)
        rows = np.flatnonzero(bone[k, :, lo:hi].any(axis=1))
        if rows.size == 0:
            continue
        runs, start, prev = [], rows[0], rows[0]
        for r in rows[1:]:
            if r - prev > gap:
                runs.append((start, prev))
                start = r
            prev = r
        runs.append((start, prev))
        runs = [r for r in runs if r[1] - r[0] >= min_run] or runs
        first, last = runs[-1]
        part = bone[k, first:last + 1, lo:hi]
        xs = np.nonzero(part)[1]
        x[k] = lo + float(xs.mean()) if xs.size else centre
        front[k] = float(first)
    seen = ~np.isnan(x)
    if seen.sum() == 0:
        return SpineTrack(np.full(k_n, i_n / 2.0), np.full(k_n, j_n / 2.0), seen)
    ks = np.arange(k_n)
    x = np.interp(ks, ks[seen], x[seen])
    front = np.interp(ks, ks[seen], front[seen])
    window = max(1, int(round(15.0 / sz))) | 1
    x = ndimage.median_filter(x, size=window, mode="nearest")
    front = ndimage.median_filter(front, size=window, mode="nearest")
    return SpineTrack(x, front, seen)


#: The aorta as :func:`find_aorta` looks for it: lumen diameter (mm; normal abdominal aorta about 15-25 mm, an
#: aneurysm from 30 mm) ...
AORTA_DIAMETER_MM = (15.0, 35.0)
#: ... centre from the vertebral body's front (mm, + anterior) and from the spine's centre (mm, + patient's left):
#: the descending aorta lies on the left anterolateral side of the body in the lower thorax and on its front,
#: left of the midline, in the abdomen; the vena cava lies to the right and is left out.
AORTA_ANTERIOR_MM = (-25.0, 45.0)
AORTA_LEFT_MM = (-12.0, 45.0)
#: ... and a tube at least this long (mm; or 60 % of the scan when shorter), its centre moving at most
#: :data:`AORTA_STEP_MM` from slice to slice.
AORTA_MIN_LENGTH_MM = 40.0
AORTA_STEP_MM = 8.0
#: Lumen of contrast-filled blood (HU, on the 3 x 3 mean): above unenhanced blood (about 30-60 HU, up to ~70 with
#: a high haematocrit), muscle and unenhanced organs; a portal-venous aorta (about 120-200 HU) lies wholly above.
AORTA_LUMEN_HU = 100.0


def find_aorta(hu: np.ndarray, bone: np.ndarray, spine: SpineTrack, spacing: tuple[float, float, float]
               ) -> dict[str, Any] | None:
    """The contrast-filled aorta of a canonical CT, or None when there is none (an unenhanced scan).

    On ~1.5 mm pixels the HU are averaged over 3 x 3 pixels (pixel noise of a low-dose scan punches holes in a
    per-pixel threshold), bone is left out and what lies in :data:`AORTA_LUMEN_HU` .. 500 HU is opened by a 3 mm disk (cuts
    thin bridges to neighbouring vessels). On each slice where the spine was seen, a part that is round (minor
    / major axis >= 0.6), :data:`AORTA_DIAMETER_MM` across and placed as the aorta is relative to the vertebral
    body (:data:`AORTA_ANTERIOR_MM`, :data:`AORTA_LEFT_MM`) is a candidate; candidates on consecutive slices
    whose centres lie within :data:`AORTA_STEP_MM` form tubes, and the longest tube of at least
    :data:`AORTA_MIN_LENGTH_MM` is the aorta. Its HU is the median of the raw HU inside its parts, 1.5 mm in
    from their edge.

    Returns:
        ``{"median_hu", "z_extent_mm", "diameter_mm", "x", "y" (mean centre, canonical voxels), "slices",
        "voxels"}`` or None.
    """
    step = max(1, int(round(1.5 / max(spacing[0], spacing[1]))))
    sx, sy, sz = spacing[0] * step, spacing[1] * step, spacing[2]
    raw = np.asarray(hu[:, ::step, ::step], np.float32)
    smooth = ndimage.uniform_filter(raw, size=(1, 3, 3))
    no_bone = ~ndimage.binary_dilation(bone[:, ::step, ::step], structure=_plane(2))
    cand = (smooth >= AORTA_LUMEN_HU) & (smooth < VESSEL_HU[1]) & no_bone
    r = max(1, int(round(3.0 / sx)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = np.zeros((1, 2 * r + 1, 2 * r + 1), bool)
    disk[0] = (xx * sx) ** 2 + (yy * sy) ** 2 <= (3.0 ** 2)
    cand = ndimage.binary_opening(cand, structure=disk)
    k_n = hu.shape[0]
    per_slice: list[list[dict[str, Any]]] = [[] for _ in range(k_n)]
    for k in range(k_n):
        if not spine.seen[k] or not cand[k].any():
            continue
        labels, n = ndimage.label(cand[k])
        for value, sl in enumerate(ndimage.find_objects(labels), start=1):
            part = labels[sl] == value
            area = float(part.sum()) * sx * sy
            diameter = 2.0 * np.sqrt(area / np.pi)
            if not AORTA_DIAMETER_MM[0] <= diameter <= AORTA_DIAMETER_MM[1]:
                continue
            ys, xs = np.nonzero(part)
            cy, cx = ys.mean() + sl[0].start, xs.mean() + sl[1].start
            anterior = (spine.front[k] / step - cy) * sy
            left = (cx - spine.x[k] / step) * sx
            if not (AORTA_ANTERIOR_MM[0] <= anterior <= AORTA_ANTERIOR_MM[1]
                    and AORTA_LEFT_MM[0] <= left <= AORTA_LEFT_MM[1]):
                continue
            cov = np.cov(np.stack([ys * sy, xs * sx])) if ys.size > 2 else np.eye(2)
            eig = np.linalg.eigvalsh(cov)
            if eig[1] <= 0 or np.sqrt(max(eig[0], 0.0) / eig[1]) < 0.6:
                continue
            full = np.zeros(cand[k].shape, bool)
            full[sl] = part
            core = ndimage.binary_erosion(full)
            per_slice[k].append({"x": cx, "y": cy, "diameter": diameter,
                                 "values": raw[k][core if core.sum() >= 5 else full]})
    best: list[tuple[int, dict[str, Any]]] = []
    chains: list[list[tuple[int, dict[str, Any]]]] = []
    for k in range(k_n):
        for c in per_slice[k]:
            linked = [ch for ch in chains if ch[-1][0] == k - 1
                      and np.hypot((ch[-1][1]["x"] - c["x"]) * sx, (ch[-1][1]["y"] - c["y"]) * sy) <= AORTA_STEP_MM]
            if linked:
                longest = max(linked, key=len)
                chains.append(longest + [(k, c)])
            else:
                chains.append([(k, c)])
        chains = [ch for ch in chains if ch[-1][0] >= k - 1 or len(ch) > len(best)]
        for ch in chains:
            if len(ch) > len(best):
                best = ch
    min_len = min(AORTA_MIN_LENGTH_MM, 0.6 * k_n * sz)
    if not best or len(best) * sz < min_len:
        return None
    values = np.concatenate([c["values"] for _, c in best])
    return {"median_hu": float(np.median(values)), "z_extent_mm": float(len(best) * sz),
            "diameter_mm": float(np.median([c["diameter"] for _, c in best])),
            "x": float(np.mean([c["x"] for _, c in best]) * step), "y": float(np.mean([c["y"] for _, c in best]) * step),
            "slices": [k for k, _ in best], "voxels": int(values.size)}


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The 2D pieces of ``mask`` (components per axial slice): ``(labels, centre column, centre row, slice)``,
    the last three indexed by label (entry 0 unused); None when there is none."""
    labels, n = ndimage.label(mask, structure=_plane(2))
    if n == 0:
        return None
    kk, jj, ii = np.nonzero(labels)
    value = labels[kk, jj, ii]
    count = np.maximum(np.bincount(value, minlength=n + 1).astype(float), 1)
    cx = np.bincount(value, weights=ii, minlength=n + 1) / count
    cy = np.bincount(value, weights=jj, minlength=n + 1) / count
    ck = np.zeros(n + 1, int)
    ck[value] = kk
    return labels, cx, cy, ck


def column_mask(bone: np.ndarray, spine: SpineTrack, spacing: tuple[float, float, float]) -> np.ndarray:
    """Bone of the vertebral column: bone pieces (2D components per axial slice) whose centre lies within
    :data:`COLUMN_HALF_WIDTH_MM` of the spine and between 10 mm in front of the vertebral body and 110 mm
    behind its front."""
    sx, sy, _ = spacing
    pieces = _pieces(bone)
    if pieces is None:
        return np.zeros(bone.shape, bool)
    labels, cx, cy, ck = pieces
    dx = np.abs(cx - spine.x[ck]) * sx
    dy = (cy - spine.front[ck]) * sy
    keep = (dx <= COLUMN_HALF_WIDTH_MM) & (dy >= -10.0) & (dy <= 110.0)
    keep[0] = False
    # a piece joined to the column across a joint (an iliac wing at the sacro-iliac joint, a rib at its
    # costotransverse joint) belongs to it only within the column's width
    within = np.abs(np.arange(bone.shape[2])[None, None, :] - spine.x[:, None, None]) * sx <= COLUMN_MAX_REACH_MM
    return keep[labels] & within


def vertebra_bounds(column: np.ndarray, spine: SpineTrack, level_slices: dict[str, int],
                    spacing: tuple[float, float, float]) -> dict[str, tuple[int, int]]:
    """Canonical slice range ``(first, last)`` of each vertebra: between two body centres the boundary is the
    slice with the least vertebral-body bone (the disc); the end levels reach as far again beyond their centre
    (the last lumbar one down to the least-bone slice above the sacrum)."""
    names = sorted(level_slices, key=vertebra_order)  # head first
    if not names:
        return {}
    k_n = column.shape[0]
    sx, sy, sz = spacing
    # vertebral-body bone per slice: the column within 25 mm of the spine's centre and 45 mm behind its front
    jj = np.arange(column.shape[1])[None, :, None]
    ii = np.arange(column.shape[2])[None, None, :]
    near = (np.abs(ii - spine.x[:, None, None]) * sx <= 25.0) & \
           ((jj - spine.front[:, None, None]) * sy <= 45.0)
    body_bone = (column & near).sum(axis=(1, 2)).astype(float)
    centres = {n: int(level_slices[n]) for n in names}
    cuts: dict[tuple[str, str], int] = {}
    for upper, lower in zip(names, names[1:]):
        a, b = centres[lower], centres[upper]  # a < b (k grows towards the head)
        if b - a < 2:
            cuts[(upper, lower)] = (a + b) // 2
            continue
        inner = body_bone[a + 1:b]
        cuts[(upper, lower)] = a + 1 + int(np.argmin(inner))
    bounds: dict[str, tuple[int, int]] = {}
    height = float(np.median(np.diff(sorted(centres.values())))) if len(names) > 1 else 30.0 / sz
    for idx, name in enumerate(names):
        c = centres[name]
        top = cuts[(names[idx - 1], name)] - 1 if idx > 0 else None
        bottom = cuts[(name, names[idx + 1])] if idx + 1 < len(names) else None
        if top is None:
            top = c + (c - bottom if bottom is not None else int(round(height / 2)))
        if bottom is None:
            reach = (top - c) if idx > 0 else int(round(height / 2))
            lo = max(0, c - int(round(1.1 * max(reach, 1))))
            if name in ("L5", "L6") and c - lo >= 2:  # the disc above the sacrum: least bone below the centre
                bottom = lo + int(np.argmin(body_bone[lo:c]))
            else:
                bottom = c - max(reach, 1)
        bounds[name] = (int(np.clip(bottom, 0, k_n - 1)), int(np.clip(top, 0, k_n - 1)))
    return bounds


def classify_bone(hu: np.ndarray, bone: np.ndarray, spacing: tuple[float, float, float],
                  level_slices: dict[str, int] | None = None) -> BoneRules:
    """Classes by position for the all-bone mask (step 6 of the module description).

    Args:
        hu: canonical CT array.
        bone: all-bone mask of :func:`segment_bone`.
        spacing: canonical spacing ``(i, j, k)`` mm.
        level_slices: vertebra name -> canonical slice of its body centre (from the level finder or the user);
            empty or None: the column is one class, "vertebrae".
    """
    k_n, j_n, i_n = bone.shape
    sx, sy, sz = spacing
    warnings: list[str] = []
    level_slices = {n: int(k) for n, k in (level_slices or {}).items() if 0 <= int(k) < k_n and n != "S1"}
    spine = track_spine(bone, spacing)
    column = column_mask(bone, spine, spacing)
    out = np.zeros(bone.shape, np.uint8)
    ks = np.arange(k_n)

    # --- the vertebral column: named levels, the sacrum below L5, the rest unnamed
    bounds = vertebra_bounds(column, spine, level_slices, spacing)
    named = np.zeros(k_n, np.uint8)
    for name, (lo, hi) in bounds.items():
        named[lo:hi + 1] = BONE_VALUE[totalseg_name(name)]
    sacrum_top = None
    lowest_lumbar = [n for n in ("L6", "L5") if n in bounds]
    if lowest_lumbar:
        sacrum_top = bounds[lowest_lumbar[0]][0] - 1
        named[:sacrum_top + 1] = BONE_VALUE["sacrum"]
    named[named == 0] = BONE_VALUE["vertebrae"]
    out[column] = named[np.nonzero(column)[0]]

    # --- away from the column: ribs above, pelvis below
    lateral = bone & ~column
    present = lateral.sum(axis=(1, 2)) * sx * sy >= 50.0  # at least 0.5 cm2 of bone beside the column
    split = _rib_pelvis_split(present, sz)
    how = "gap"
    if split is None and level_slices:
        l3 = _estimate_level_slice(level_slices, "L3", sz)
        split, how = (l3, "L3") if l3 is not None else (None, "")
    elif split is None:
        how = ""
    side_left = (np.arange(i_n)[None, None, :] > spine.x[:, None, None])  # i grows towards the patient's left
    rib_zone = np.zeros(k_n, bool)
    pelvis_zone = np.zeros(k_n, bool)
    if split is not None:
        rib_zone = ks > split
        pelvis_zone = ks <= split
    if split is None:
        warnings.append("bone beside the spine could not be told apart as ribs or pelvis (no empty gap between "
                        "them along the body and no vertebral level found): it is labelled 'other bone'")
    # ribs: the lateral bone in the rib zone, except midline front pieces (sternum) which stay 'other bone'
    ribs = lateral & rib_zone[:, None, None]
    if ribs.any():
        front_mid = _front_midline(ribs, spine, spacing)
        ribs &= ~front_mid
        out[ribs & side_left] = BONE_VALUE["ribs_left"]
        out[ribs & ~side_left] = BONE_VALUE["ribs_right"]
    pelvis = lateral & pelvis_zone[:, None, None]
    if pelvis.any():
        for side, is_left in (("left", True), ("right", False)):
            part = pelvis & (side_left if is_left else ~side_left)
            hip, femur, merged = _split_hip_femur(part, spacing)
            out[hip] = BONE_VALUE[f"hip_{side}"]
            out[femur] = BONE_VALUE[f"femur_{side}"]
            if merged:
                warnings.append(f"the {side} femur touches the hip bone in the threshold mask: it could not be "
                                f"separated and is part of 'hip_{side}'")
    out[bone & (out == 0)] = BONE_VALUE["other_bone"]
    labels = {v: n for v, n in BONE_LABELS.items() if v in set(np.unique(out).tolist())}
    if not level_slices:
        warnings.append("no vertebral level was found: the vertebral column is one class, 'vertebrae' (the sacrum "
                        "is not separated from it)")
    return BoneRules(out, labels, bone, spine, bounds, rib_pelvis_split={"slice": split, "method": how},
                     warnings=warnings)


def _rib_pelvis_split(present: np.ndarray, sz: float) -> int | None:
    """The canonical slice in the middle of the longest run (>= 20 mm) without bone beside the column that has
    such bone both above and below; None when there is none."""
    k_n = present.size
    idx = np.flatnonzero(present)
    if idx.size == 0:
        return None
    best, best_len = None, 0
    start = None
    for k in range(idx.min(), idx.max() + 1):
        if not present[k]:
            start = k if start is None else start
        elif start is not None:
            if k - start > best_len:
                best, best_len = (start, k - 1), k - start
            start = None
    if best is None or best_len * sz < 20.0:
        return None
    return (best[0] + best[1]) // 2 if k_n else None


def _estimate_level_slice(level_slices: dict[str, int], name: str, sz: float) -> int | None:
    """Canonical slice of ``name``'s centre, found or extrapolated from the levels found (median step between
    them, or 30 mm)."""
    if name in level_slices:
        return level_slices[name]
    known = sorted(level_slices.items(), key=lambda t: vertebra_order(t[0]))
    if not known:
        return None
    steps = [(level_slices[a] - level_slices[b]) / max(vertebra_order(b) - vertebra_order(a), 1)
             for (a, _), (b, _) in zip(known, known[1:])]
    step = float(np.median(steps)) if steps else 30.0 / sz
    ref, k = min(known, key=lambda t: abs(vertebra_order(t[0]) - vertebra_order(name)))
    return int(round(k - (vertebra_order(name) - vertebra_order(ref)) * step))


def _front_midline(mask: np.ndarray, spine: SpineTrack, spacing: tuple[float, float, float]) -> np.ndarray:
    """Pieces (2D components) centred within 25 mm of the midline and more than 40 mm in front of the spine:
    the sternum and xiphoid, which the rules do not name."""
    sx, sy, _ = spacing
    pieces = _pieces(mask)
    if pieces is None:
        return np.zeros(mask.shape, bool)
    labels, cx, cy, ck = pieces
    keep = (np.abs(cx - spine.x[ck]) * sx <= 25.0) & ((spine.front[ck] - cy) * sy > 40.0)
    keep[0] = False
    return keep[labels]


def _split_hip_femur(part: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, bool]:
    """One side's pelvic bone as ``(hip, femur, merged)``: the femur is a separate connected part (>= 5 cm3,
    at least 40 mm long: head and neck) whose top lies at least 30 mm below the hip bone's top and that reaches
    lower than it; ``merged`` when the
    part reaching lowest also reaches the hip bone's top and the bone extends more than 60 mm below the
    acetabular region (a femur is probably in it)."""
    empty = np.zeros(part.shape, bool)
    if not part.any():
        return empty, empty, False
    labels, n = ndimage.label(part)
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    objects = ndimage.find_objects(labels)
    big = []
    for value, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        size = int((labels[sl] == value).sum())
        if size * voxel_cm3 >= 5.0:
            big.append((value, sl[0].start, sl[0].stop - 1, size))
    if not big:
        return part, empty, False
    hip = max(big, key=lambda t: (t[2], t[3]))  # reaches highest
    femur = [t for t in big if t[0] != hip[0] and t[2] <= hip[2] - 30.0 / spacing[2] and t[1] <= hip[1]
             and (t[2] - t[1] + 1) * spacing[2] >= 40.0]
    femur_mask = np.isin(labels, [t[0] for t in femur]) if femur else empty
    merged = not femur and (hip[2] - hip[1]) * spacing[2] > 260.0
    return part & ~femur_mask, femur_mask, merged


def restrict_classes(labelmap: np.ndarray, labels: dict[int, str], classes: Any) -> tuple[np.ndarray, dict[int, str]]:
    """The label map with only the asked classes: ``"all"`` (every class), ``"bone"`` (one class, all bone), or
    group names of :data:`CLASS_GROUPS` (``["vertebrae", "ribs"]``); other classes are cleared."""
    groups = parse_classes(classes)
    if groups == ["all"]:
        return labelmap, labels
    if groups == ["bone"]:
        return (labelmap > 0).astype(np.uint8), dict(ALL_BONE_LABELS) if (labelmap > 0).any() else {}
    keep = [v for v, n in labels.items() if class_group(n) in groups]
    out = np.where(np.isin(labelmap, keep), labelmap, 0).astype(labelmap.dtype)
    return out, {v: n for v, n in labels.items() if v in keep}


def class_group(name: str) -> str:
    """The group of :data:`CLASS_GROUPS` a class belongs to."""
    if name.startswith("vertebrae"):
        return "vertebrae"
    for group in ("sacrum", "hip", "femur", "ribs"):
        if name.startswith(group):
            return group
    return "other"


def parse_classes(classes: Any) -> list[str]:
    """``"all"``, ``"bone"`` or group names (a comma-separated string or a list) checked.

    Raises:
        MSKSegError: an unknown name.
    """
    from ..errors import MSKSegError

    if classes is None:
        return ["all"]
    words = [w.strip().lower() for w in (classes.split(",") if isinstance(classes, str) else classes) if str(w).strip()]
    if not words or words == ["all"]:
        return ["all"]
    if words == ["bone"]:
        return ["bone"]
    bad = [w for w in words if w not in CLASS_GROUPS]
    if bad:
        raise MSKSegError(f"unknown bone class(es): {', '.join(bad)}",
                          f"use all, bone (one class), or any of {', '.join(CLASS_GROUPS)} (e.g. --classes vertebrae,ribs)")
    return words
