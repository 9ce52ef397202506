"""Body-composition tissues on one axial CT slice by image rules, no network (:func:`rule_based_tissues`).

The steps (each a small function below):

1. body: pixels above -500 HU, holes (bowel gas, lungs) filled, opened by 2.5 mm (removes the thin couch),
   split into cores by a 20 mm opening (10 mm for a slim arm); each pixel goes to its nearest core and only
   the trunk core (the largest) is kept, so arms beside the abdomen and the table are left out even where
   they touch the trunk. An arm pressed against the flank along its whole length survives every opening;
   it is cut off along the line between the two notches where its outline meets the trunk's
   (:func:`_touching_arm`; it must hold a bone and lie lateral).
2. skin: the outer 2 mm of the body is skin, never fat. Fat and soft tissue are told apart on a slightly
   smoothed image (Gaussian 0.8-2.5 mm, more for noisier images) at a per-slice threshold 40 % of the way
   from the fat peak to the soft-tissue peak of the histogram (fatty muscle can be near 0 HU).
3. fascia: along 360 rays from the body's centre, walking inwards from the skin, the first run of at
   least 3 mm of non-fat tissue is the outer fascia of the abdominal-wall / back muscles. Fat outside it
   (thin fibrous septa and Scarpa's fascia are crossed) is subcutaneous fat; where bowel gas comes first
   (a thin linea alba over a gas-filled loop), the fascia is the first soft tissue outside the gas. The radius per angle is
   median-filtered so one vessel in the fat cannot move it.
4. muscle ring: from the fascia inwards, the muscle layer (fat planes up to 3 mm between the oblique
   layers are crossed) until a thicker fat plane, bone, tissue brighter than 115 HU (kidney cortex,
   vessels) or an enhanced solid organ (liver, spleen: a large region more than 35 HU denser than the
   slice's own wall muscle, :func:`_enhanced_organs`). Its thickness is capped per angle at a robust local value
   (35th percentile over 31 degrees + 3 mm), so a bowel loop or organ lying against the wall is not
   taken as wall muscle.
5. psoas, quadratus lumborum and paraspinal muscles: muscle-like connected regions (mean below 90 HU)
   inside the ring that touch the spine (not its anterior face: aorta and cava lie there); small fat holes
   inside them (intramuscular fat) belong to them; fat behind the vertebral body enclosed by the back
   muscles and the vertebra is in the paraspinal compartment. A kidney, bowel loop or organ is separated
   from the muscles by fat, so it is not taken; the vertebra (its cancellous interior and the spinal
   canal included) is never a compartment.
   Behind the tip of the spinous process, in the midline, lie ligament and subcutaneous fat; that strip
   is never muscle or visceral fat, and the midline strip between the vertebral body and the most posterior
   arch bone (the spinal canal where the arch is open on the slice) is part of the vertebra.
6. labels with the windows: muscle-window pixels of the compartments are muscle, fat-window pixels of
   the compartments intermuscular fat (the fat between the paraspinal muscles is IMAT, not VAT), fat
   inside the ring outside the compartments visceral fat, fat between skin and fascia subcutaneous fat.

Muscle groups from the rules (:func:`rule_compartments`, ``groups``): psoas = muscle beside the vertebral body,
paraspinal = muscle posterior to the vertebral body and within :data:`PARASPINAL_REACH_MM` of the tips of the
transverse processes (erector spinae, multifidus, quadratus lumborum; the flat back muscles further out, such as
latissimus dorsi, are not paraspinal), abdominal wall = the rest of the muscle ring (values of :data:`~mskseg.sarcopenia.labels.GROUP_LABELS`).

The rules work on slices in the usual axial display (rows anterior -> posterior, columns patient right ->
left): :func:`display_transform`, :func:`to_display` and :func:`from_display` bring any storage orientation
there and back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from ..engine import CancelToken, Progress
from ..errors import CancelledError, InvalidImageError
from ..image import Image, axial_plane

if TYPE_CHECKING:
    from .settings import BodyCompSettings

# rule parameters (mm / HU)
_BODY_HU = -500.0
_SKIN_MM = 2.0
_SMOOTH_MM = 0.8
_FASCIA_RUN_MM = 4.0
_PLANE_GAP_MM = 3.0
_ORGAN_HU = 115.0
#: Enhanced organ tissue is at least this much denser than the wall muscle of the same slice (3 mm smoothing).
_ORGAN_ABOVE_MUSCLE_HU = 35.0
#: Smoothed HU between fat and (fatty-infiltrated) muscle, used to find the layers (not for the labels).
_SOFT_HU = -60.0
_BONE_HU = 200.0
#: Smoothed HU below which a pixel inside the body is gas (bowel, lung), never fat.
_GAS_HU = -400.0
#: Half-width of the midline strip behind the vertebral body that holds the spinal canal (mm).
_CANAL_HALF_MM = 9.0
_MAX_WALL_MM = 80.0
_N_RAYS = 360


@dataclass
class RuleCompartments:
    """The regions the rules find on one slice (all boolean ``(J, I)`` unless said otherwise).

    Attributes:
        body: the trunk (arms, table and air excluded), holes filled.
        inner_body: the body without its skin rim.
        subcutaneous: between skin and the outer fascia of the muscles.
        cavity: inside the outer fascia (muscle ring, retroperitoneum, abdominal cavity).
        compartments: the muscle compartments (ring, psoas, quadratus lumborum, paraspinal muscles).
        groups: uint8 ``(J, I)`` group of each compartment pixel: 5 psoas, 6 paraspinal, 7 abdominal wall.
        spine: the vertebra's bone.
    """

    body: np.ndarray
    inner_body: np.ndarray
    subcutaneous: np.ndarray
    cavity: np.ndarray
    compartments: np.ndarray
    groups: np.ndarray
    spine: np.ndarray


def _disk_open(mask: np.ndarray, radius_mm: float, sampling: tuple[float, float]) -> np.ndarray:
    """Morphological opening with a disk of ``radius_mm`` (Euclidean, anisotropic pixels allowed)."""
    eroded = ndimage.distance_transform_edt(mask, sampling=sampling) > radius_mm
    if not eroded.any():
        return eroded
    return ndimage.distance_transform_edt(~eroded, sampling=sampling) <= radius_mm


def trunk_mask(hu: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """The trunk: body pixels (> -500 HU) without table, couch and arms, holes filled."""
    raw = hu > _BODY_HU
    mask = ndimage.binary_fill_holes(raw)  # gas in bowel under a thin wall stays inside
    mask = _disk_open(mask, 2.5, sampling)  # the couch's thin shells and cables
    if not mask.any():
        return mask
    # cores (air near the edge left out, so the air between an arm and the flank does not bridge them): a
    # 20 mm opening separates arms pressed against the flanks; a slim arm that vanishes in it keeps its 10 mm core
    near_edge = ndimage.distance_transform_edt(mask, sampling=sampling) <= 15.0
    core_mask = mask & ~(near_edge & ~raw)
    cores = _disk_open(core_mask, 20.0, sampling)
    core_lab, n = ndimage.label(cores)
    if n:
        big = core_lab == int(np.argmax(np.bincount(core_lab.ravel())[1:])) + 1
        away = ndimage.distance_transform_edt(~big, sampling=sampling) > 15.0
        small_lab, n_small = ndimage.label(_disk_open(core_mask, 10.0, sampling) & away & (core_lab == 0))
        if n_small:
            area = np.bincount(small_lab.ravel())[1:] * sampling[0] * sampling[1]
            for value in np.flatnonzero(area > 1000.0) + 1:
                n += 1
                core_lab[small_lab == value] = n
    if n == 0:
        core_lab, n = ndimage.label(mask)
    sizes = ndimage.sum(np.ones_like(core_lab), core_lab, index=np.arange(1, n + 1))
    trunk_id = int(np.argmax(sizes)) + 1
    if n > 1:  # every body pixel belongs to its nearest core: an arm touching the flank stays an arm
        _, (jj, ii) = ndimage.distance_transform_edt(core_lab == 0, sampling=sampling, return_indices=True)
        nearest = core_lab[jj, ii]
        trunk = mask & (nearest == trunk_id)
    else:
        trunk = mask
    trunk = ndimage.binary_fill_holes(_largest_component(trunk))
    for _ in range(2):  # an arm on each side
        arm = _touching_arm(trunk, hu, sampling)
        if arm is None:
            break
        trunk = _largest_component(trunk & ~arm)
    return trunk


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (``mask`` itself when it has at most one)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1


def _touching_arm(body: np.ndarray, hu: np.ndarray, sampling: tuple[float, float]) -> np.ndarray | None:
    """An arm lying against the flank along its whole length, which no opening separates: cut off along the
    line between the two notches where its outline meets the trunk's.

    The notches are the two deepest concavities (body convex hull minus body, deeper than 8 mm) on one side
    of the body. The body beyond the line joining their tips (away from the body's centre) is an arm when it
    holds a bone of at least 1 cm2 (humerus, radius or ulna), lies lateral (its centre beyond 60 % of the
    half-width from the midline) and is smaller than a third of the body. None when there is no such arm.
    """
    sy, sx = sampling
    hull = _convex_fill(body)
    defects = hull & ~body
    if not defects.any():
        return None
    depth = ndimage.distance_transform_edt(hull, sampling=sampling)
    lab, n = ndimage.label(defects)
    if n < 2:
        return None
    cj, ci = ndimage.center_of_mass(body)
    cols = np.flatnonzero(body.any(axis=0))
    half_width = 0.5 * (cols[-1] - cols[0]) * sx
    tips = []
    for value in range(1, n + 1):
        where = lab == value
        d = np.where(where, depth, 0.0)
        flat = int(np.argmax(d))
        if d.flat[flat] < 8.0:
            continue
        tj, ti = np.unravel_index(flat, body.shape)
        tips.append((float(d.flat[flat]), tj, ti))
    for side in (-1, 1):
        own = sorted((t for t in tips if (t[2] - ci) * side > 0), reverse=True)[:2]
        if len(own) < 2:
            continue
        (_, aj, ai), (_, bj, bi) = own
        # the half-plane beyond the line a-b, on the side away from the body's centre
        jj, ii = np.mgrid[0:body.shape[0], 0:body.shape[1]]
        cross = (bi - ai) * (jj - aj) * sy - (bj - aj) * (ii - ai) * sx
        centre_side = np.sign((bi - ai) * (cj - aj) * sy - (bj - aj) * (ci - ai) * sx)
        if centre_side == 0:
            continue
        beyond = body & (np.sign(cross) == -centre_side)
        part, m = ndimage.label(beyond)
        if not m:
            continue
        mid = (int(round((aj + bj) / 2)), int(round((ai + bi) / 2)))
        near = np.zeros(body.shape, bool)
        near[max(mid[0] - 3, 0):mid[0] + 4, max(mid[1] - 3, 0):mid[1] + 4] = True
        ids = np.unique(part[near & beyond])
        if not ids.size:
            continue
        arm = np.isin(part, ids)
        area = arm.sum()
        if area > body.sum() / 3.0:
            continue
        aj_, ai_ = ndimage.center_of_mass(arm)
        if abs(ai_ - ci) * sx < 0.6 * half_width:
            continue
        bone = ndimage.binary_fill_holes(arm & (hu > 250.0))
        blab, bn = ndimage.label(bone)
        if not bn or np.bincount(blab.ravel())[1:].max() * sx * sy < 100.0:
            continue
        return arm
    return None


def _runs_first(flags: np.ndarray, length: int) -> int:
    """Index of the first run of at least ``length`` True values in ``flags`` (1D), or -1."""
    if length <= 1:
        idx = np.flatnonzero(flags)
        return int(idx[0]) if idx.size else -1
    window = np.convolve(flags.astype(np.int32), np.ones(length, np.int32), mode="valid")
    idx = np.flatnonzero(window >= length)
    return int(idx[0]) if idx.size else -1


def _circular_filter(values: np.ndarray, size: int, kind: str, percentile: float = 50.0) -> np.ndarray:
    if kind == "median":
        return ndimage.median_filter(values, size=size, mode="wrap")
    return ndimage.percentile_filter(values, percentile, size=size, mode="wrap")


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """The convex hull of ``mask`` as a mask (``mask`` itself when it has fewer than 3 pixels or is flat)."""
    pts = np.argwhere(mask)
    if len(pts) < 3:
        return mask
    from scipy.spatial import Delaunay, QhullError

    try:
        from scipy.spatial import ConvexHull

        hull = Delaunay(pts[ConvexHull(pts).vertices])
    except QhullError:
        return mask
    (j0, i0), (j1, i1) = pts.min(axis=0), pts.max(axis=0)
    jj, ii = np.mgrid[j0:j1 + 1, i0:i1 + 1]
    inside = hull.find_simplex(np.column_stack([jj.ravel(), ii.ravel()])) >= 0
    out = mask.copy()
    out[j0:j1 + 1, i0:i1 + 1] |= inside.reshape(jj.shape)
    return out


def _spine(smooth: np.ndarray, cavity: np.ndarray, centre: tuple[float, float],
           sampling: tuple[float, float]) -> np.ndarray:
    """The vertebra: the largest bone component inside the cavity near the midline, with bone within 35 mm."""
    bone = (smooth > _BONE_HU) & cavity
    lab, n = ndimage.label(bone)
    if n == 0:
        return bone
    idx = np.arange(1, n + 1)
    sizes = np.asarray(ndimage.sum(bone, lab, idx))
    com = np.asarray(ndimage.center_of_mass(bone, lab, idx)).reshape(n, 2)
    dx = np.abs(com[:, 1] - centre[1]) * sampling[1]
    candidates = np.where(dx < 60.0, sizes, 0)
    if candidates.max() <= 0:
        return np.zeros_like(bone)
    main = lab == (int(np.argmax(candidates)) + 1)
    near = ndimage.distance_transform_edt(~main, sampling=sampling) <= 35.0
    keep = np.unique(lab[near & bone])
    front = np.flatnonzero(main.any(axis=1))[0]
    keep = [v for v in keep if v > 0 and com[v - 1, 0] >= front]  # not the contrast-filled aorta in front
    spine = np.isin(lab, keep)
    # the cancellous interior (osteoporotic bone is below 200 HU) and the spinal canal belong to the vertebra
    closed = ndimage.binary_closing(spine, iterations=max(1, int(round(6.0 / min(sampling)))))
    return ndimage.binary_fill_holes(closed | spine)


def _noise_sd(hu: np.ndarray, region: np.ndarray) -> float:
    """Image noise (HU): the median over ``region`` of the standard deviation in 5 x 5 windows."""
    mean = ndimage.uniform_filter(hu, 5)
    var = np.maximum(ndimage.uniform_filter(hu * hu, 5) - mean * mean, 0.0)
    values = var[region]
    return float(np.sqrt(np.median(values))) if values.size else 0.0


def _fat_soft_threshold(smooth: np.ndarray, region: np.ndarray) -> float:
    """Smoothed HU separating fat from soft tissue on this slice: 40 % of the way from the fat peak to the
    soft-tissue peak of the histogram (fat texture and noise vary by scanner; fatty muscle can be near 0 HU)."""
    values = smooth[region]
    fat = values[(values > -200) & (values < -30)]
    soft = values[(values >= -29) & (values < 100)]
    if fat.size < 100 or soft.size < 100:
        return _SOFT_HU
    bins = np.arange(-200, 101, 5)
    hist, _ = np.histogram(values, bins)
    centres = bins[:-1] + 2.5
    fat_peak = centres[centres < -30][np.argmax(hist[centres < -30])]
    soft_peak = centres[centres >= -29][np.argmax(hist[centres >= -29])]
    return float(np.clip(fat_peak + 0.4 * (soft_peak - fat_peak), -75.0, -35.0))


def _enhanced_organs(hu: np.ndarray, walls: dict[int, np.ndarray], run_n: int, soft_hu: float,
                     inside: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """Contrast-enhanced solid organs (liver, spleen) of this slice: large, thick regions clearly denser than
    the slice's own wall muscle, so the walk through the muscle ring stops at them.

    The wall muscle's level is the median smoothed HU 4-12 mm inside the outer fascia over all rays. Organ
    pixels: on a 3 mm Gaussian, more than :data:`_ORGAN_ABOVE_MUSCLE_HU` above that level (and above 70 HU,
    below bone), in regions that survive a 6 mm opening and cover at least 15 cm2. A muscle is never that much
    denser than the other muscles of its slice over such an area, while portal-venous liver and spleen
    (80-130 HU) lying against the wall between the ribs are; before this the walk ran into them up to the
    fixed :data:`_ORGAN_HU`. Unenhanced organs are as dense as muscle and are not found here; the per-angle
    thickness cap keeps them out.
    """
    deep = [w[run_n:3 * run_n] for w in walls.values() if w.size > run_n]
    values = np.concatenate(deep) if deep else np.zeros(0)
    values = values[(values >= soft_hu) & (values <= _ORGAN_HU)]
    if values.size < 50:
        return np.zeros(hu.shape, bool)
    level = max(float(np.median(values)) + _ORGAN_ABOVE_MUSCLE_HU, 70.0)
    smooth3 = ndimage.gaussian_filter(hu, sigma=(3.0 / sampling[0], 3.0 / sampling[1]))
    organ = _disk_open(inside & (smooth3 > level) & (smooth3 < _BONE_HU), 6.0, sampling)
    lab, n = ndimage.label(organ)
    if not n:
        return organ
    area = np.bincount(lab.ravel())[1:] * sampling[0] * sampling[1]
    return np.isin(lab, np.flatnonzero(area >= 1500.0) + 1)


@dataclass
class _Rays:
    """Profiles along :data:`_N_RAYS` rays from the body's centre, one sample every ``step`` mm.

    Attributes:
        step: sample distance (mm).
        radii: ``(R,)`` distance of each sample from the centre (mm).
        theta: ``(N,)`` angle of each ray (radians, -pi..pi).
        pj, pi: ``(N, R)`` row and column of each sample.
        prof: ``(N, R)`` smoothed HU.
        inb: ``(N, R)`` inside the inner body.
    """

    step: float
    radii: np.ndarray
    theta: np.ndarray
    pj: np.ndarray
    pi: np.ndarray
    prof: np.ndarray
    inb: np.ndarray


@dataclass
class _SpineFrame:
    """Where the vertebra lies on the slice (rows and columns in pixels).

    Attributes:
        y_body_back: row of the posterior edge of the vertebral body.
        y_body_mid: row 22 % of the way from the front of the vertebra to its back.
        x_mid: column of the vertebra's middle.
        half_width: half the vertebra's width (pixels).
        midline: ``(1, I)`` columns within :data:`_CANAL_HALF_MM` of ``x_mid``.
    """

    y_body_back: float
    y_body_mid: float
    x_mid: float
    half_width: float
    midline: np.ndarray


def rule_compartments(hu2d: np.ndarray, spacing: Sequence[float]) -> RuleCompartments:
    """Find body, skin, subcutaneous layer, muscle compartments and groups on one axial slice (no network).

    Args:
        hu2d: HU image ``(J, I)``, rows anterior -> posterior, columns patient right -> left (the usual
            axial display; :func:`segment_tissues` reorients slices for this).
        spacing: pixel size ``(i, j)`` in mm.

    Returns:
        :class:`RuleCompartments`; the steps are described in this module's docstring.
    """
    hu = np.asarray(hu2d, np.float32)
    if hu.ndim != 2:
        raise InvalidImageError(f"rule-based tissues need one axial slice (J, I), got shape {hu.shape}")
    sp_i, sp_j = float(spacing[0]), float(spacing[1])
    sampling = (sp_j, sp_i)
    shape = hu.shape
    empty = np.zeros(shape, bool)
    body = trunk_mask(hu, sampling)
    if body.sum() * sp_i * sp_j < 2000.0:  # < 20 cm2: no trunk on this slice
        return RuleCompartments(body, empty, empty, empty, empty, np.zeros(shape, np.uint8), empty)
    inner_body = ndimage.distance_transform_edt(body, sampling=sampling) > _SKIN_MM
    sigma_mm = float(np.clip(_SMOOTH_MM * _noise_sd(hu, inner_body) / 12.0, _SMOOTH_MM, 2.5))
    smooth = ndimage.gaussian_filter(hu, sigma=(sigma_mm / sp_j, sigma_mm / sp_i))
    cj, ci = ndimage.center_of_mass(body)
    soft_hu = _fat_soft_threshold(smooth, inner_body)

    rays = _ray_profiles(smooth, body, inner_body, (cj, ci), sampling)
    r_fascia, thick = _fascia_and_wall(hu, rays, soft_hu, inner_body, sampling)
    yy = (np.arange(shape[0])[:, None] - cj) * sp_j
    xx = (np.arange(shape[1])[None, :] - ci) * sp_i
    rho = np.hypot(yy, xx)
    ang = np.arctan2(yy, xx)
    period = 2 * np.pi
    rf = np.interp(ang, rays.theta, r_fascia, period=period)
    tk = np.interp(ang, rays.theta, thick, period=period)
    cavity = body & (rho <= rf)
    subcutaneous = inner_body & ~cavity
    ring = cavity & (rho >= rf - tk)

    spine = _spine(smooth, cavity, (cj, ci), sampling)
    bone_near = ndimage.distance_transform_edt(~(smooth > _BONE_HU), sampling=sampling) <= 1.0
    compartments = ring & ~bone_near
    groups = np.zeros(shape, np.uint8)
    frame: _SpineFrame | None = None
    if spine.any():
        frame = _spine_frame(spine, sp_i)
        spine |= _convex_fill(spine & (np.arange(shape[0])[:, None] < frame.y_body_back))  # body with open cortex
        # the spinal canal where the arch is open on this slice (a slice through the pedicles or between
        # laminae): the midline strip from the body to the most posterior bone behind it (lamina or spinous
        # process) holds the canal and the dural sac, never muscle (multifidus lies beside the spinous process)
        spine |= _convex_fill(spine & frame.midline) & frame.midline
        _spine_muscles(smooth, cavity, ring, spine, bone_near, compartments, groups, frame, sampling)
    else:
        groups[compartments] = 7
    compartments &= ~spine
    if frame is not None:  # the spine was found (it only grows above)
        # behind the tip of the spinous process, in the midline, lie the supraspinous ligament and
        # subcutaneous fat, never muscle or visceral fat (the back muscles lie beside the process)
        strip_rows = np.flatnonzero((spine & frame.midline).any(axis=1))
        if strip_rows.size:
            behind = frame.midline & (np.arange(shape[0])[:, None] > strip_rows[-1]) & cavity
            cavity &= ~behind
            compartments &= ~behind
            subcutaneous |= behind & inner_body
    groups[~compartments] = 0
    return RuleCompartments(body, inner_body, subcutaneous, cavity, compartments, groups, spine)


def _ray_profiles(smooth: np.ndarray, body: np.ndarray, inner_body: np.ndarray, centre: tuple[float, float],
                  sampling: tuple[float, float]) -> _Rays:
    """Smoothed HU and inner body along rays from ``centre`` to beyond the body, a sample every half pixel."""
    cj, ci = centre
    sp_j, sp_i = sampling
    step = 0.5 * min(sp_i, sp_j)
    jj, ii = np.nonzero(body)
    r_max = float(np.max(np.hypot((jj - cj) * sp_j, (ii - ci) * sp_i))) + 3.0
    radii = np.arange(0.0, r_max, step)
    theta = np.linspace(-np.pi, np.pi, _N_RAYS, endpoint=False)
    pj = cj + np.sin(theta)[:, None] * radii[None, :] / sp_j
    pi = ci + np.cos(theta)[:, None] * radii[None, :] / sp_i
    prof = ndimage.map_coordinates(smooth, [pj, pi], order=1, mode="nearest")
    inb = ndimage.map_coordinates(inner_body.astype(np.float32), [pj, pi], order=1, mode="constant") > 0.5
    return _Rays(step, radii, theta, pj, pi, prof, inb)


def _fascia_and_wall(hu: np.ndarray, rays: _Rays, soft_hu: float, inner_body: np.ndarray,
                     sampling: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(fascia radius, muscle-wall thickness)`` per ray (mm), filtered around the circle (steps 3 and 4)."""
    step, prof = rays.step, rays.prof
    run_n = max(1, int(round(_FASCIA_RUN_MM / step)))
    gas_n = max(1, int(round(1.0 / step)))
    gap_n = max(1, int(round(_PLANE_GAP_MM / step)))
    max_n = int(round(_MAX_WALL_MM / step))
    r_fascia = np.zeros(_N_RAYS)
    thick = np.zeros(_N_RAYS)
    walls: dict[int, np.ndarray] = {}
    starts: dict[int, tuple[int, int]] = {}
    for m in range(_N_RAYS):
        inside = np.flatnonzero(rays.inb[m])
        if inside.size == 0:
            continue
        outer = int(inside[-1])
        seq = prof[m, outer::-1]  # inwards from the inner skin edge
        soft = seq >= soft_hu
        p = _runs_first(soft, run_n)
        # bowel gas met before the fascia: the wall is thinner than the run (linea alba over a gas-filled loop);
        # the fascia is the first soft tissue outside the gas (the thin wall), since subcutaneous fat never holds gas
        g = _runs_first(seq < _GAS_HU, gas_n)
        if g >= 0 and (p < 0 or g < p):
            first_soft = _runs_first(soft[:g], 1)
            p = first_soft if first_soft >= 0 else g
        if p < 0:
            r_fascia[m] = 0.0
            continue
        r_fascia[m] = rays.radii[outer - p]
        walls[m] = seq[p:p + max_n]
        starts[m] = (outer, p)
    organs = _enhanced_organs(hu, walls, run_n, soft_hu, inner_body, sampling)
    organ_prof = (ndimage.map_coordinates(organs.astype(np.float32), [rays.pj, rays.pi], order=1,
                                          mode="constant") > 0.5
                  if organs.any() else np.zeros(prof.shape, bool))
    for m, wall in walls.items():
        outer, p = starts[m]
        muscle = (wall >= soft_hu) & (wall <= _ORGAN_HU)
        other = (wall > _ORGAN_HU) | organ_prof[m, outer::-1][p:p + max_n]
        stop = len(wall)
        o = np.flatnonzero(other)
        if o.size:
            stop = min(stop, int(o[0]))
        f = _runs_first(wall < soft_hu, gap_n + 1)
        if f >= 0:
            stop = min(stop, f)
        last = np.flatnonzero(muscle[:stop])
        thick[m] = (int(last[-1]) + 1) * step if last.size else 0.0
    r_fascia = _circular_filter(r_fascia, 15, "median")
    robust = _circular_filter(thick, 31, "percentile", 35.0)
    thick = _circular_filter(np.minimum(thick, robust + 3.0), 5, "median")
    return r_fascia, thick


def _spine_frame(spine: np.ndarray, sp_i: float) -> _SpineFrame:
    """Rows and columns of the vertebra (non-empty ``spine``) that the muscle groups are told apart by."""
    srows = np.flatnonzero(spine.any(axis=1))
    scols = np.flatnonzero(spine.any(axis=0))
    y_front, y_back = srows[0], srows[-1]
    y_body_back = y_front + 0.45 * (y_back - y_front)  # posterior edge of the vertebral body
    y_body_mid = y_front + 0.22 * (y_back - y_front)
    x_mid = 0.5 * (scols[0] + scols[-1])
    midline = np.abs(np.arange(spine.shape[1])[None, :] - x_mid) * sp_i <= _CANAL_HALF_MM
    return _SpineFrame(y_body_back, y_body_mid, x_mid, (scols[-1] - scols[0]) * 0.5, midline)


def _spine_muscles(smooth: np.ndarray, cavity: np.ndarray, ring: np.ndarray, spine: np.ndarray,
                   bone_near: np.ndarray, compartments: np.ndarray, groups: np.ndarray, frame: _SpineFrame,
                   sampling: tuple[float, float]) -> None:
    """Add psoas, quadratus lumborum and paraspinal muscles to ``compartments`` and set ``groups`` (both in
    place; step 5): muscle-like regions inside the ring that touch the spine, and the fat behind the vertebral
    body that the back muscles enclose. Without such regions the whole ring is abdominal wall (7)."""
    shape = smooth.shape
    sp_j, sp_i = sampling
    candidate = cavity & ~ring & (smooth >= -29.0) & (smooth <= _ORGAN_HU) & ~bone_near & ~spine
    candidate = _disk_open(candidate, 1.0, sampling)
    lab, n = ndimage.label(candidate)
    if not n:
        groups[compartments] = 7
        return
    y_body_back, y_body_mid, x_mid = frame.y_body_back, frame.y_body_mid, frame.x_mid
    touch_spine = ndimage.distance_transform_edt(~spine, sampling=sampling) <= 3.0
    idx = np.arange(1, n + 1)
    com = np.asarray(ndimage.center_of_mass(candidate, lab, idx)).reshape(n, 2)
    mean_hu = np.asarray(ndimage.mean(smooth, lab, idx))
    hits_spine = np.asarray(ndimage.maximum(touch_spine, lab, idx)) > 0
    half_w = max(frame.half_width, 10.0 / sp_i)
    anterior = (com[:, 0] < y_body_mid) & (np.abs(com[:, 1] - x_mid) < half_w * 0.8)
    chosen = idx[hits_spine & ~anterior & (mean_hu < 90.0)]  # not cancellous bone, not organs
    muscles = np.isin(lab, chosen)
    # fat holes inside a muscle (intramuscular streaks) belong to it; never the spinal canal
    filled = ndimage.binary_fill_holes(muscles)
    holes, nh = ndimage.label(filled & ~muscles)
    if nh:
        hidx = np.arange(1, nh + 1)
        area = np.asarray(ndimage.sum(np.ones(shape), holes, hidx)) * sp_i * sp_j
        has_bone = np.asarray(ndimage.maximum(bone_near, holes, hidx)) > 0
        muscles |= np.isin(holes, hidx[(area < 400.0) & ~has_bone])
    compartments |= muscles
    # the paraspinal compartment: everything inside the fascia behind the vertebral body and within
    # reach of the transverse processes (its fat clefts are intermuscular fat, never visceral)
    cols = np.abs(np.arange(shape[1])[None, :] - x_mid) * sp_i
    tp_half = frame.half_width * sp_i
    rows_ = np.arange(shape[0])[:, None]
    back_box = cavity & (rows_ > y_body_back + 5.0 / sp_j) & (cols < tp_half + 25.0)
    back_box &= ~bone_near & ~spine
    posterior = (compartments & (rows_ > y_body_back)) | spine
    enclosed = ndimage.binary_fill_holes(posterior)
    # below 80 HU: muscle and fat, not the cancellous bone of a vertebral body whose cortex is open
    compartments |= _disk_open(back_box & enclosed & (smooth < 80.0), 0.8, sampling)
    rows = np.arange(shape[0])[:, None]
    psoas = np.isin(lab, idx[hits_spine & ~anterior & (com[:, 0] <= y_body_back)])
    psoas = ndimage.binary_fill_holes(psoas) & muscles
    groups[compartments] = 7
    back = compartments & (rows > y_body_back) & (cols < tp_half + PARASPINAL_REACH_MM)
    groups[back] = 6
    groups[psoas] = 5


#: How far (mm) beyond the tip of the transverse processes the paraspinal group reaches.
PARASPINAL_REACH_MM = 40.0


def _in(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    return (hu >= window[0]) & (hu <= window[1])


def rule_based_tissues(hu2d: np.ndarray, spacing: Sequence[float],
                       settings: BodyCompSettings | None = None) -> np.ndarray:
    """Skeletal muscle, SAT, VAT and IMAT on one axial CT slice by image rules (no network).

    Args:
        hu2d: HU image ``(J, I)``, rows anterior -> posterior (the usual axial display).
        spacing: pixel size ``(i, j)`` in mm.
        settings: HU windows; default :class:`~mskseg.sarcopenia.settings.BodyCompSettings` ().

    Returns:
        uint8 ``(J, I)`` with :data:`TISSUE_LABELS` values (1 muscle, 2 SAT, 3 VAT, 4 IMAT; 0 none). The HU
        windows are already applied.
    """
    from .settings import BodyCompSettings

    settings = settings or BodyCompSettings()
    hu = np.asarray(hu2d, np.float32)
    comp = rule_compartments(hu, spacing)
    return labels_from_compartments(hu, comp, settings)


def labels_from_compartments(hu: np.ndarray, comp: RuleCompartments, settings: BodyCompSettings) -> np.ndarray:
    """Tissue labels ``(J, I)`` uint8 (1 muscle, 2 SAT, 3 VAT, 4 IMAT) of one slice: each compartment's pixels
    inside the matching HU window of ``settings`` (step 6 of the rules)."""
    out = np.zeros(hu.shape, np.uint8)
    out[comp.subcutaneous & _in(hu, settings.sat_hu)] = 2
    out[comp.cavity & ~comp.compartments & ~comp.spine & _in(hu, settings.vat_hu)] = 3
    out[comp.compartments & _in(hu, settings.imat_hu)] = 4
    out[comp.compartments & _in(hu, settings.muscle_hu)] = 1
    return out



# ============================================================================================ slices
def display_transform(image: Image) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that put an axial slice of ``image`` in the usual display:
    rows anterior -> posterior (LPS +y), columns patient right -> left (LPS +x). Oblique grids are taken by
    their dominant axes."""
    d = np.asarray(image.direction, float)
    d2 = d[:2, :2] if d.shape[0] >= 2 else np.eye(2)
    # column c of the direction matrix: the physical direction of index axis c (i = 0, j = 1)
    transpose = abs(d2[0, 0]) + abs(d2[1, 1]) < abs(d2[1, 0]) + abs(d2[0, 1])
    if transpose:
        flip_cols = d2[0, 1] < 0  # after transposing, columns run along the old j axis
        flip_rows = d2[1, 0] < 0
    else:
        flip_cols = d2[0, 0] < 0
        flip_rows = d2[1, 1] < 0
    return bool(transpose), bool(flip_rows), bool(flip_cols)


def to_display(array: np.ndarray, how: tuple[bool, bool, bool]) -> np.ndarray:
    """A ``(J, I)`` slice in the usual axial display, ``how`` from :func:`display_transform` (a contiguous copy)."""
    transpose, flip_rows, flip_cols = how
    out = array.T if transpose else array
    if flip_rows:
        out = out[::-1]
    if flip_cols:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def from_display(array: np.ndarray, how: tuple[bool, bool, bool]) -> np.ndarray:
    """The inverse of :func:`to_display`: a displayed slice back in the image's own ``(J, I)`` storage order."""
    transpose, flip_rows, flip_cols = how
    out = array
    if flip_cols:
        out = out[:, ::-1]
    if flip_rows:
        out = out[::-1]
    return np.ascontiguousarray(out.T if transpose else out)



def rules_on_slices(image: Image, ks: list[int], settings: BodyCompSettings, want_groups: bool,
                     cancel: CancelToken | None, report: Progress | None) -> tuple[dict[int, np.ndarray],
                                                                                  dict[int, np.ndarray]]:
    """Rule labels (windows applied) and rule groups, per slice, on the source slice grid."""
    how = display_transform(image)
    labels: dict[int, np.ndarray] = {}
    groups: dict[int, np.ndarray] = {}
    for n, k in enumerate(ks):
        if cancel is not None:
            cancel.raise_if_cancelled("tissue segmentation")
        sl = axial_plane(image, k)
        hu = to_display(np.asarray(sl.array, np.float32), how)
        spacing = sl.spacing[::-1] if how[0] else sl.spacing
        comp = rule_compartments(hu, spacing)
        labels[k] = from_display(labels_from_compartments(hu, comp, settings), how)
        if want_groups:
            groups[k] = from_display(comp.groups, how)
        if report is not None and report((n + 1) / len(ks), f"rules: slice {n + 1}/{len(ks)}") is False:
            raise CancelledError("tissue segmentation was cancelled")
    return labels, groups



def groups_for_muscle(groups: np.ndarray, muscle: np.ndarray) -> np.ndarray:
    """Give every muscle pixel the group of the nearest grouped pixel (groups only on muscle pixels)."""
    out = np.zeros(muscle.shape, np.uint8)
    if not muscle.any():
        return out
    if not groups.any():
        out[muscle] = 7  # no compartment found: the muscle ring is all that is left
        return out
    _, (jj, ii) = ndimage.distance_transform_edt(groups == 0, return_indices=True)
    out[muscle] = groups[jj, ii][muscle]
    return out
