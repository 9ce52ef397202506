"""Label-map edits of the label-map driven CT synthesis (:mod:`mskseg.synth.labelmap_ct`).

:data:`ADDED_LABELS` (the classes the generator adds) and the internal values of the added parts; the kind of
each input label from its name (:func:`tissue_kind`: bone, muscle, artery, bowel, ...); intervertebral discs
between consecutive labelled vertebrae (:func:`add_discs`, vertebra order from :mod:`mskseg.anatomy`); muscle
atrophy and bowel growth; the body wall drawn around the labelled anatomy (:func:`add_body_layers`: hull,
visceral margin, abdominal wall muscle layers, subcutaneous fat, skin) and the arms beside the abdomen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from ..anatomy import vertebra_names

if TYPE_CHECKING:
    from .labelmap_ct import Habitus


#: Values of the classes the generator adds (fixed, so a trainer can rely on them).
ADDED_LABELS: dict[str, int] = {
    "skin": 201,
    "subcutaneous_fat": 202,
    "abdominal_wall": 203,
    "visceral_fat": 204,
    "intermuscular_fat": 205,
    "intervertebral_disc": 206,
    "arm": 207,
}

#: Internal value: fibrous tissue (linea alba, Scarpa's fascia) inside the subcutaneous fat; rendered as fascia,
#: reported as subcutaneous_fat.
FASCIA_IN_FAT = 241
#: Internal values of the parts of the added arms, all reported as ``arm``.
_ARM_SKIN, _ARM_FAT, _ARM_MUSCLE, ARM_BONE = 242, 243, 244, 245
INTERNAL_LABELS: dict[int, tuple[int, str]] = {  # value -> (reported value, tissue key)
    FASCIA_IN_FAT: (ADDED_LABELS["subcutaneous_fat"], "fascia"),
    _ARM_SKIN: (ADDED_LABELS["arm"], "skin"),
    _ARM_FAT: (ADDED_LABELS["arm"], "fat:arm"),
    _ARM_MUSCLE: (ADDED_LABELS["arm"], "muscle:arm"),
    ARM_BONE: (ADDED_LABELS["arm"], "bone"),
}

_VERTEBRA_ORDER = vertebra_names("C1", "S1", include=("L6",))

# --------------------------------------------------------------------------------------------------- names
_ARTERIES = ("aorta", "brachiocephalic_trunk", "subclavian_artery", "common_carotid_artery", "iliac_artery",
             "pulmonary_artery")
_VEINS = ("inferior_vena_cava", "superior_vena_cava", "brachiocephalic_vein", "iliac_vena",
          "portal_vein_and_splenic_vein", "pulmonary_vein", "atrial_appendage")
_BOWEL = ("small_bowel", "duodenum", "colon", "stomach", "esophagus")
_BONE = ("vertebrae_", "sacrum", "hip_", "femur_", "rib_", "sternum", "humerus_", "scapula_", "clavicula_",
         "skull", "vertebra")
_MUSCLE = ("iliopsoas", "psoas", "autochthon", "gluteus", "quadratus_lumborum", "skeletal_muscle",
           "abdominal_wall", "paraspinal", "muscle")
_ARMS = ("humerus_", "radius", "ulna")
_BACK_MUSCLE = ("autochthon", "paraspinal", "erector_spinae")


def tissue_kind(name: str) -> str:
    """What a class name is for the generator: bone, muscle, kidney, bowel, artery, vein, ... or other."""
    n = name.lower()
    if n in ADDED_LABELS:
        return "added"
    if n.startswith("kidney_cyst"):
        return "cyst"
    if n.startswith("kidney"):
        return "kidney"
    if n.startswith("costal_cartilage"):
        return "cartilage"
    if n.startswith(_BONE):
        return "bone"
    if n.startswith(_BOWEL):
        return "bowel"
    if n.startswith(_ARTERIES):
        return "artery"
    if n.startswith(_VEINS):
        return "vein"
    if n.startswith(_MUSCLE) or n.endswith("_muscle"):
        return "muscle"
    if n.startswith("lung"):
        return "lung"
    if n == "heart":
        return "heart"
    return "organ"


# --------------------------------------------------------------------------------------------------- anatomy
def _ids(names: dict[int, str], pred) -> list[int]:
    return [v for v, n in names.items() if pred(n)]


def _ball(radius_vox: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element with radii (k, j, i) in voxels."""
    r = [max(0.0, float(x)) for x in radius_vox]
    n = [int(np.floor(x)) for x in r]
    g = np.ogrid[tuple(slice(-a, a + 1) for a in n)]
    d = sum((gi / max(ri, 1e-6)) ** 2 if ri > 0 else (gi != 0) * 1e9 for gi, ri in zip(g, r))
    return d <= 1.0


def add_discs(lab: np.ndarray, names: dict[int, str], spacing) -> np.ndarray:
    """Intervertebral discs between consecutive labelled vertebral bodies (when the map has no disc)."""
    if any("disc" in n for n in names.values()):
        return lab
    levels = {}
    for v, n in names.items():
        if n.startswith("vertebrae_") and n[len("vertebrae_"):] in _VERTEBRA_ORDER:
            levels[_VERTEBRA_ORDER.index(n[len("vertebrae_"):])] = v
    present = set(np.unique(lab).tolist())
    order = sorted(o for o in levels if levels[o] in present)
    if len(order) < 2:
        return lab
    sx, sy, sz = spacing
    out = lab
    disc = np.zeros(lab.shape, bool)
    for upper, lower in zip(order[:-1], order[1:]):
        if lower != upper + 1:
            continue
        a, b = lab == levels[upper], lab == levels[lower]
        box = bbox(a | b, pad=(int(8 / sz) + 1, 2, 2))
        if box is None:
            continue
        A, B = _body_part(a[box], sy), _body_part(b[box], sy)
        if not A.any() or not B.any():
            continue
        gap = _ball((7.0 / sz, 2.5 / sy, 2.5 / sx))
        region = ndimage.binary_dilation(A, gap) & ndimage.binary_dilation(B, gap)
        # Fill the space between the two end plates, within the outline of the two bodies.
        outline = ndimage.binary_dilation(A.any(axis=0) | B.any(axis=0), iterations=1)
        region &= outline[None] & (lab[box] == 0)
        disc[box] |= region
    if disc.any():
        out = lab.copy()
        out[disc] = ADDED_LABELS["intervertebral_disc"]
        names[ADDED_LABELS["intervertebral_disc"]] = "intervertebral_disc"
    return out


def _body_part(mask: np.ndarray, sy: float) -> np.ndarray:
    """The vertebral body of a vertebra mask: its anterior part (rows j anterior of the canal)."""
    rows = np.nonzero(mask.any(axis=(0, 2)))[0]
    if len(rows) == 0:
        return mask
    j0, j1 = rows[0], rows[-1]
    cut = j0 + int(round(0.42 * (j1 - j0 + 1)))
    out = mask.copy()
    out[:, cut:, :] = False
    return out


def bbox(mask: np.ndarray, pad=(0, 0, 0)):
    nz = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    if any(len(n) == 0 for n in nz):
        return None
    return tuple(slice(max(0, n[0] - p), min(s, n[-1] + 1 + p)) for n, p, s in zip(nz, pad, mask.shape))


def atrophy_muscles(lab: np.ndarray, names: dict[int, str], spacing, mm: float) -> np.ndarray:
    """Erode every muscle label by ``mm`` in-plane (the freed rim becomes fat of the surrounding compartment)."""
    ids = _ids(names, lambda n: tissue_kind(n) == "muscle")
    if not ids:
        return lab
    mus = np.isin(lab, ids)
    box = bbox(mus, pad=(0, 1, 1))
    if box is None:
        return lab
    st = _ball((0, mm / spacing[1], mm / spacing[0]))
    if st.sum() <= 1:
        return lab
    sub = mus[box]
    kept = ndimage.binary_erosion(sub, st, border_value=1)
    out = lab.copy()
    region = out[box]
    region[sub & ~kept] = 0
    return out


def grow_bowel(lab: np.ndarray, names: dict[int, str], spacing, mm: float) -> np.ndarray:
    """Grow bowel labels into unlabelled voxels by ``mm`` (less mesenteric fat in lean patients)."""
    ids = _ids(names, lambda n: tissue_kind(n) == "bowel")
    mask = np.isin(lab, ids)
    if not mask.any():
        return lab
    st = _ball((0, mm / spacing[1], mm / spacing[0]))
    if st.sum() <= 1:
        return lab
    # grey dilation spreads the label values themselves
    grown = ndimage.grey_dilation(np.where(mask, lab, 0), footprint=st)
    out = lab.copy()
    put = (lab == 0) & (grown > 0)
    out[put] = grown[put]
    return out


def _smooth_random_curve(rng: np.random.Generator, n: int, harmonics: int = 4) -> np.ndarray:
    """A smooth periodic curve of ``n`` samples with zero mean and standard deviation ~1."""
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    curve = np.zeros(n)
    for h in range(1, harmonics + 1):
        curve += rng.normal(0, 1.0 / h) * np.cos(h * th + rng.uniform(0, 2 * np.pi))
    sd = curve.std()
    return curve / sd if sd > 0 else curve


def add_body_layers(lab: np.ndarray, names: dict[int, str], spacing, habitus: Habitus,
                     rng: np.random.Generator, box: tuple[slice, slice] | None = None) -> np.ndarray:
    """Add skin, subcutaneous fat, abdominal wall muscles, visceral and intermuscular fat around the anatomy.

    Works per axial slice in polar coordinates around the anatomy's centre: the radius of the anatomy's hull
    per angle (made convex-ish and smooth along z) is grown outward layer by layer. Angle 0 points anterior.
    """
    sx, sy, sz = spacing
    K, J, I = lab.shape
    present = set(np.unique(lab).tolist())
    have = {n for v, n in names.items() if v in present}
    arm_ids = _ids(names, lambda n: n.startswith(_ARMS))
    anatomy = (lab > 0) & ~np.isin(lab, arm_ids) if arm_ids else lab > 0
    if not anatomy.any():
        return lab
    w = max(1, int(round(6.0 / sz)))
    anatomy_w = ndimage.maximum_filter1d(anatomy, 2 * w + 1, axis=0)
    n_th = 144
    # centre of each slice (smoothed along z)
    cnt = anatomy_w.sum(axis=(1, 2)).astype(float)
    jj = np.arange(J, dtype=float)
    ii = np.arange(I, dtype=float)
    cy = (anatomy_w.sum(axis=2) @ jj) / np.maximum(cnt, 1)
    cx = (anatomy_w.sum(axis=1) @ ii) / np.maximum(cnt, 1)
    valid = cnt > 0
    ks = np.arange(K)
    cy = np.interp(ks, ks[valid], cy[valid])
    cx = np.interp(ks, ks[valid], cx[valid])
    sig_k = max(1.0, 15.0 / sz)
    cy = ndimage.gaussian_filter1d(cy, sig_k, mode="nearest")
    cx = ndimage.gaussian_filter1d(cx, sig_k, mode="nearest")
    centers = (np.arange(n_th) + 0.5) / n_th * 2 * np.pi - np.pi
    r_hull = _polar_hull(anatomy_w, cy, cx, spacing, n_th)
    r_hull[~anatomy.any(axis=(1, 2))] = 0.0
    # rib cage: where ribs lie outside the organs, the cavity ends at the ribs (no visceral margin there)
    # and the ribs sit in a band of intercostal / diaphragm muscle
    rib_ids = _ids(names, lambda n: n.startswith(("rib_", "costal_cartilage", "sternum")))
    rib_band = np.zeros_like(r_hull)
    if rib_ids and np.isin(lab, rib_ids).any():
        soft = anatomy & ~np.isin(lab, rib_ids + _ids(names, lambda n: n.startswith(_BACK_MUSCLE)))
        soft_w = ndimage.maximum_filter1d(soft, 2 * w + 1, axis=0)
        r_soft = _polar_hull(soft_w, cy, cx, spacing, n_th)
        rib_band = np.clip((r_hull - r_soft - 2.0) / 6.0, 0, 1)
        rib_band = ndimage.gaussian_filter1d(rib_band, 2.0, axis=1, mode="wrap")

    ang = np.abs(centers)  # 0 anterior .. pi posterior
    deg = np.rad2deg(ang)
    # visceral margin: anterior and lateral, none at the back
    w_vat = np.clip((150.0 - deg) / 60.0, 0, 1)
    vat = habitus.vat_margin_mm * w_vat * (1 + 0.3 * _smooth_random_curve(rng, n_th, 3))
    r_cav = r_hull + np.clip(vat, 0, None)[None] * (1 - rib_band)
    # wall muscle: rectus anteriorly (gap at the linea alba), obliques laterally, tapering to the back
    wall = np.full(n_th, habitus.wall_muscle_mm)
    wall *= np.clip((150.0 - deg) / 25.0, 0, 1)  # none behind ~150 deg (paraspinal muscles there)
    wall *= np.where(deg < 35.0, 1.0, 0.85)
    wall *= 1 + 0.15 * _smooth_random_curve(rng, n_th, 3)
    r_wall = r_cav + wall[None]
    sat = habitus.sat_mm * (1 + habitus.sat_variation * _smooth_random_curve(rng, n_th, 4))
    sat *= 1.0 + 0.25 * (deg > 60) * (deg < 150)  # flanks slightly thicker
    sat *= 1.0 - 0.45 * np.clip((deg - 150.0) / 20.0, 0, 1)  # compressed on the table behind the back
    sat = np.clip(sat, 2.0, None)
    zvar = 1 + 0.1 * ndimage.gaussian_filter1d(rng.normal(0, 1, K), max(1.0, 30.0 / sz), mode="nearest")\
        * np.sqrt(30.0 / sz)
    r_fat = r_wall + sat[None] * np.clip(zvar, 0.7, 1.3)[:, None]
    r_skin = r_fat + habitus.skin_mm

    # back compartment: behind the front edge of the paraspinal muscles, between them
    back_ids = _ids(names, lambda n: n.startswith(_BACK_MUSCLE))
    bm = np.isin(lab, back_ids) if back_ids else None
    alba_mm = float(rng.uniform(2.5, 6.0))
    scarpa = float(rng.uniform(0.3, 0.6))  # depth of Scarpa's fascia within the anterior fat
    out = lab.copy()
    ext = np.concatenate([centers - 2 * np.pi, centers, centers + 2 * np.pi])

    def ring(radius: np.ndarray, th_: np.ndarray) -> np.ndarray:
        return np.interp(th_, ext, np.tile(radius, 3)).astype(np.float32)

    skin_v, sat_v, wall_v, imat_v, vat_v = (ADDED_LABELS["skin"], ADDED_LABELS["subcutaneous_fat"],
                                            ADDED_LABELS["abdominal_wall"], ADDED_LABELS["intermuscular_fat"],
                                            ADDED_LABELS["visceral_fat"])
    bj, bi = box if box is not None else (slice(0, J), slice(0, I))
    jb, ib = jj[bj], ii[bi]
    dyv = (jb * sy).astype(np.float32)[:, None]
    dxv = (ib * sx).astype(np.float32)[None, :]
    for k in np.nonzero(r_hull.max(axis=1) > 0)[0]:
        dy = dyv - np.float32(cy[k] * sy)
        dx = dxv - np.float32(cx[k] * sx)
        r = np.sqrt(dy * dy + dx * dx)
        th_ = np.arctan2(dx, -dy)
        rs = ring(r_skin[k], th_)
        body = r <= rs
        free = (lab[k, bj, bi] == 0) & body
        if not free.any():
            continue
        rf, rw, rc = ring(r_fat[k], th_), ring(r_wall[k], th_), ring(r_cav[k], th_)
        sl = out[k, bj, bi]
        skin = free & (r > rf)
        sat_m = free & ~skin & (r > rw)
        wall_m = free & (r > rc) & (r <= rw)
        alba = wall_m & (np.abs(dx) < alba_mm / 2) & (dy < 0)
        wall_m &= ~alba
        depth = (r - rc) / np.maximum(rw - rc, 1e-3)
        planes = wall_m & (np.abs(th_) > np.deg2rad(40)) & \
            ((np.abs(depth - 0.33) < 0.07) | (np.abs(depth - 0.66) < 0.07))
        inside = free & (r <= rc)
        intercostal = inside & (r > rc - 10.0 * ring(rib_band[k], th_)) & (ring(rib_band[k], th_) > 0.3)
        inside &= ~intercostal
        wall_m |= intercostal
        back = np.zeros_like(inside)
        if bm is not None:
            has = bm[k].any(axis=0)
            if has.any():
                front = bm[k].argmax(axis=0)
                cols = np.nonzero(has)[0]
                line = np.interp(ib, cols, front[cols])
                line[(ib < cols[0]) | (ib > cols[-1])] = J
                back = jb[:, None] > line[None, :]
        sl[skin] = skin_v
        sl[sat_m | (inside & back)] = sat_v
        sl[alba] = FASCIA_IN_FAT
        sl[wall_m & ~planes] = wall_v
        sl[wall_m & planes] = imat_v
        sl[inside & ~back] = vat_v
        # Scarpa's fascia: a thin fibrous line inside the anterior and lateral subcutaneous fat
        fdepth = (r - rw) / np.maximum(rf - rw, 1e-3)
        fascia = sat_m & (np.abs(fdepth - scarpa) * (rf - rw) < 0.6) & (np.abs(th_) < np.deg2rad(110)) & (rf - rw > 12)
        sl[fascia] = FASCIA_IN_FAT
    if habitus.arms_down:
        out = _add_arms(out, names, spacing, r_skin, cy, cx, n_th, habitus, rng)
    for name in ("skin", "subcutaneous_fat", "abdominal_wall", "visceral_fat", "intermuscular_fat", "arm"):
        if name in have or name == "arm" and not habitus.arms_down:
            continue
        names[ADDED_LABELS[name]] = name
    return out


def _polar_hull(mask: np.ndarray, cy: np.ndarray, cx: np.ndarray, spacing, n_th: int) -> np.ndarray:
    """Radius (mm) per slice and angle bin ``(K, n_th)`` of a convex-ish hull of ``mask`` around ``(cy, cx)``.

    Convex-ish: the union of the discs whose diameters join the centre to each boundary point (concavities
    are bridged, the outline stays smooth), then smoothed over angle and along z.
    """
    sx, sy, sz = spacing
    K = mask.shape[0]
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    edge = mask & ~ndimage.binary_erosion(mask, st)
    ek, ej, ei = np.nonzero(edge)
    dy = (ej - cy[ek]) * sy
    dx = (ei - cx[ek]) * sx
    th = np.arctan2(dx, -dy)  # 0 anterior, +pi/2 left
    b = ((th + np.pi) / (2 * np.pi) * n_th).astype(int) % n_th
    rmax = np.zeros((K, n_th))
    np.maximum.at(rmax, (ek, b), np.hypot(dx, dy))
    centers = (np.arange(n_th) + 0.5) / n_th * 2 * np.pi - np.pi
    cosd = np.cos(centers[:, None] - centers[None, :])
    cosd[cosd < 0] = 0
    r_hull = np.maximum((rmax[:, None, :] * cosd[None]).max(axis=2), rmax)
    r_hull = ndimage.gaussian_filter1d(r_hull, 1.5, axis=1, mode="wrap")
    return ndimage.gaussian_filter1d(r_hull, max(1.0, 4.0 / sz), axis=0, mode="nearest")


def _add_arms(lab: np.ndarray, names: dict[int, str], spacing, r_skin: np.ndarray, cy: np.ndarray,
              cx: np.ndarray, n_th: int, habitus: Habitus, rng: np.random.Generator) -> np.ndarray:
    """Two upper arms beside the trunk: skin, fat, muscle and a humerus (all reported as ``arm``)."""
    sx, sy, sz = spacing
    K, J, I = lab.shape
    out = lab
    radius = rng.uniform(38.0, 55.0)
    fat = min(radius * 0.45, 3.0 + 0.35 * habitus.sat_mm)
    bone_r = rng.uniform(9.0, 13.0)
    gap = rng.uniform(3.0, 25.0)
    has = (r_skin.max(axis=1) > 0)[:, None, None]
    for side in (-1, 1):
        b = int(((side * np.pi / 2 + np.pi) / (2 * np.pi)) * n_th) % n_th
        dist = r_skin[:, b] + gap + radius  # (K,)
        ay = cy * sy + rng.uniform(-20.0, 30.0)
        ax = cx * sx + side * dist
        yy = np.arange(J)[None, :, None] * sy - ay[:, None, None]
        xx = np.arange(I)[None, None, :] * sx - ax[:, None, None]
        rr = np.hypot(yy, xx)
        free = has & (out == 0)
        by = yy - rng.uniform(-8.0, 8.0)
        bx = xx + side * rng.uniform(0.0, 10.0)
        out[free & (rr <= radius)] = _ARM_SKIN
        out[free & (rr <= radius - habitus.skin_mm)] = _ARM_FAT
        out[free & (rr <= radius - habitus.skin_mm - fat)] = _ARM_MUSCLE
        out[free & (np.hypot(by, bx) <= bone_r) & (rr <= radius - habitus.skin_mm - 0.5 * fat)] = ARM_BONE
    names[ADDED_LABELS["arm"]] = "arm"
    return out
