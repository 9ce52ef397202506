"""The spine of the procedural torso (:mod:`mskseg.synth.torso`): plan, vertebrae, ribs, pelvis and screws.

:func:`plan_spine` places every vertebra from C6 to the coccyx (names from :mod:`mskseg.anatomy`) on a sagittal
curve with sizes and tilts, for normal anatomy and the transitional variants; :func:`landmarks` derives the
landmarks the rest of the body hangs on; :func:`draw_spine`, :func:`draw_ribs`, :func:`draw_pelvis` and
:func:`draw_screws` paint the bones into the maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..anatomy import region_of, vertebra_names
from .torso_shapes import (ANATOMY_VALUE as _A, BONES, TORSO_LABEL_VALUE as _LV, TorsoMaps, ellipsoid, paint_tube,
                           rotation_matrix, spline_path)


# ============================================================================================ spine plan
@dataclass
class PlannedVertebra:
    name: str  # "T7", "L3", "S1" .. "S5", "Co1" ..
    kind: str  # cervical / thoracic / lumbar / sacral / coccygeal
    z: float  # body centre (patient mm, 0 = L3 centre after planning)
    y: float  # body centre, posterior +
    tilt: float  # radians; superior axis = (sin t, cos t) in (y, z)
    h: float  # body height
    a: float  # body half-width
    b: float  # body half-depth
    disc: float  # disc height below
    ribs: float = 0.0  # rib length scale (0 = no ribs)
    label: int = 0


# Normal adult body heights (mm), half-widths, half-depths and the disc below, by level.
_SIZES: dict[str, tuple[float, float, float, float]] = {
    "C6": (13, 11, 8, 5), "C7": (14, 13, 8.5, 5),
    "T1": (15, 15, 9, 4), "T2": (16, 15, 10, 4), "T3": (16.5, 15, 11, 4), "T4": (17, 15.5, 12, 4),
    "T5": (17.5, 16, 12.5, 4.5), "T6": (18, 16.5, 13, 4.5), "T7": (19, 17, 13.5, 4.5),
    "T8": (20, 18, 14, 5), "T9": (21, 19, 14.5, 5), "T10": (22, 20.5, 15, 5.5), "T11": (23, 22, 15, 6.5),
    "T12": (24, 23.5, 15.5, 7.5), "L1": (27, 25, 16, 9), "L2": (28, 26, 16.5, 10), "L3": (29, 27, 17, 11),
    "L4": (29, 28, 17, 11.5), "L5": (28, 28.5, 16.5, 10.5), "L6": (27.5, 28.5, 16.5, 10),
}
# Sagittal position of body centres relative to L3 (mm, posterior +): thoracic kyphosis, lumbar lordosis.
_SAGITTAL: dict[str, float] = {
    "C6": -22, "C7": -20, "T1": -18, "T2": -5, "T3": 8, "T4": 16, "T5": 21, "T6": 23, "T7": 24, "T8": 22,
    "T9": 19, "T10": 16, "T11": 12, "T12": 8, "L1": 6, "L2": 4, "L3": 0, "L4": -1, "L5": 5, "L6": 11,
}


def plan_spine(rng: np.random.Generator, variant: str, frame: float) -> list[PlannedVertebra]:
    """Vertebrae C6 .. coccyx with sizes, positions on the sagittal curve and tilts; z = 0 at the L3 centre."""
    names = vertebra_names("C6", "L6" if variant == "six_lumbar" else "L5")
    kyph, lord = float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.6, 1.5))
    size_scale = frame * rng.uniform(0.94, 1.06)
    verts: list[PlannedVertebra] = []
    for n in names:
        h, a, b, d = _SIZES[n]
        jitter = rng.uniform(0.95, 1.05)
        kind = region_of(n)
        off = _SAGITTAL[n]
        if kind == "lumbar" or n == "T12":
            y = off * lord
        else:
            y = (off - _SAGITTAL["T12"]) * kyph + _SAGITTAL["T12"] * lord
        verts.append(PlannedVertebra(n, kind, 0.0, y, 0.0, h * size_scale * jitter, a * size_scale, b * size_scale,
                               d * size_scale * rng.uniform(0.85, 1.15)))
    # ribs
    rib_top = {"ribs_11": 11, "ribs_13": 13}.get(variant, 12)
    for v in verts:
        if v.kind == "thoracic":
            n = int(v.name[1:])
            if n <= rib_top:
                v.ribs = 1.0
    if variant == "ribs_13":
        next(v for v in verts if v.name == "L1").ribs = float(rng.uniform(0.25, 0.45))
    if variant == "sacralised_L5":
        l5 = verts[-1]
        l5.disc = float(rng.uniform(1.0, 2.5))
        l5.kind = "lumbar_sacralised"
    # sacrum S1..S5 and coccyx
    s_h = [30, 22, 18, 15, 12]
    s_a = [26, 21, 16, 12, 9]
    s_b = [16, 13, 10, 8, 6]
    for i in range(5):
        verts.append(PlannedVertebra(f"S{i + 1}", "sacral", 0.0, 0.0, 0.0, s_h[i] * size_scale, s_a[i] * size_scale,
                               s_b[i] * size_scale, 1.5 if i < 4 else 3.0))
    for i, (h, a) in enumerate(((9, 8), (7, 6), (6, 4.5))):
        verts.append(PlannedVertebra(f"Co{i + 1}", "coccygeal", 0.0, 0.0, 0.0, h * size_scale, a * size_scale,
                               a * 0.7 * size_scale, 2.0))
    # z of the mobile spine from the top down: centre distance along the curve = h/2 + disc + h'/2
    mobile = [v for v in verts if v.kind not in ("sacral", "coccygeal")]
    for up, lo in zip(mobile[:-1], mobile[1:]):
        ds = up.h / 2 + up.disc + lo.h / 2
        dy = lo.y - up.y
        lo.z = up.z - float(np.sqrt(max(ds * ds - dy * dy, 0.25 * ds * ds)))
    # sacrum: S1 tilted forward by the sacral slope, the lower segments curling into the sacral kyphosis
    slope = np.deg2rad(rng.uniform(32, 50))
    last = mobile[-1]
    sacral = [v for v in verts if v.kind in ("sacral", "coccygeal")]
    t_prev = -slope
    s1 = sacral[0]
    s1.tilt = -slope
    ds = last.h / 2 + last.disc + s1.h / 2
    # S1 lies posterior-inferior of the last lumbar vertebra, along the mean of their axes
    mean_t = 0.5 * (s1.tilt - slope * (0.8 if variant == "sacralised_L5" else 0.45))
    step = np.array([np.sin(mean_t), np.cos(mean_t)]) * ds
    s1.y, s1.z = last.y - step[0], last.z - step[1]
    for i in range(1, len(sacral)):
        prev, cur = sacral[i - 1], sacral[i]
        cur.tilt = t_prev + np.deg2rad(rng.uniform(8, 14) if cur.kind == "sacral" else rng.uniform(12, 20))
        mean_t = 0.5 * (prev.tilt + cur.tilt)
        axis = np.array([np.sin(mean_t), np.cos(mean_t)])
        ds = prev.h / 2 + prev.disc + cur.h / 2
        cur.y, cur.z = prev.y - axis[0] * ds, prev.z - axis[1] * ds
        t_prev = cur.tilt
    # tilts of the mobile spine from the curve (central differences), the last one pulled towards S1
    chain = mobile + [s1]
    for i, v in enumerate(mobile):
        above = chain[max(i - 1, 0)]
        below = chain[i + 1]
        v.tilt = float(np.arctan2(above.y - below.y, above.z - below.z)) if above is not below else 0.0
    if variant == "sacralised_L5":
        mobile[-1].tilt = float(-slope * 0.7)
    # z = 0 at the L3 centre
    z3 = next(v.z for v in verts if v.name == "L3")
    for v in verts:
        v.z -= z3
        v.label = _LV.get(f"vertebrae_{v.name}", _LV["sacrum"])
    return verts


# ============================================================================================ landmarks, fov
def landmarks(rng: np.random.Generator, verts: list[PlannedVertebra], frame: float, male: bool) -> dict[str, float]:
    """z (and a few x, y) of the non-spinal landmarks, relative to the spine plan."""
    v = {x.name: x for x in verts}
    s1 = v["S1"]
    s1_top = s1.z + s1.h / 2 * np.cos(s1.tilt)
    head_r = frame * rng.uniform(22, 25) * (1.0 if male else 0.92)
    acet_roof = s1.z - rng.uniform(55, 75) * frame
    head_z = acet_roof - head_r
    last_lumbar = [x for x in verts if x.kind.startswith("lumbar")][-1]
    lm = {
        "s1_top": float(s1_top),
        "crest": float(s1_top + rng.uniform(35, 60) * frame),
        "head_z": float(head_z), "head_r": float(head_r),
        "head_x": float(frame * rng.uniform(82, 96) * (1.0 if male else 1.05)),
        "head_y": float(v["L3"].y + rng.uniform(-5, 20)),
        "femoral_heads": float(head_z - head_r),
        "bottom_limit": float(head_z - head_r - 90),
        "top_limit": float(v["T1"].z + 40),
        "dome_r": float(v["T10"].z + rng.uniform(-20, 15)),
        "dome_l": 0.0,
        "xiphoid": float(v["T10"].z + rng.uniform(-10, 15)),
        "last_lumbar_z": float(last_lumbar.z),
    }
    lm["dome_l"] = lm["dome_r"] - rng.uniform(5, 25)
    return lm


# ============================================================================================ skeleton
def _tilt_rot(t: float) -> np.ndarray:
    """Columns: the vertebra's x, v (posterior) and w (superior) axes in patient coordinates."""
    c, s = np.cos(t), np.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _bone_element(m: TorsoMaps, centre, semi, rot, label: int, cortex_mm: float, allowed=None) -> None:
    """An ellipsoidal bone part: cortical shell of ``cortex_mm`` around cancellous bone."""
    sl, rho = ellipsoid(m.g, centre, semi, rot)
    if sl is None:
        return
    inside = rho <= 1.0
    m.paint(sl, inside, _A["bone_cortex"], label, allowed=allowed)
    core = rho <= max(1.0 - cortex_mm / float(min(semi)), 0.0)
    m.paint(sl, core & inside, _A["bone_cancellous"], label, allowed=[_A["bone_cortex"]])


def _vertebra_geometry(v: PlannedVertebra, fr: float) -> dict[str, float]:
    lumbar = v.kind.startswith("lumbar")
    ca = (11.0 if lumbar else 8.5 if v.kind == "thoracic" else 11.0) * fr
    cb = (8.0 if lumbar else 8.0 if v.kind == "thoracic" else 7.0) * fr
    tp = {"L1": 16, "L2": 21, "L3": 26, "L4": 22, "L5": 20, "L6": 19}.get(v.name, 17 if v.kind == "thoracic" else 10)
    return {"ca": ca, "cb": cb, "tp": tp * fr, "vc": v.b + cb + 1.5 * fr}


def _vertebra_frame(v: PlannedVertebra, fr: float, x: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Canal geometry, rotation (tilt) and body centre ``(x, y, z)`` mm of a planned vertebra at left-right ``x``."""
    return _vertebra_geometry(v, fr), _tilt_rot(v.tilt), np.array([x, v.y, v.z])


def draw_spine(rng: np.random.Generator, m: TorsoMaps, verts: list[PlannedVertebra], st: dict[str, Any]) -> None:
    """Discs, vertebral bodies, posterior elements, sacrum and coccyx, spinal canal and cord."""
    g = m.g
    fr = st["frame"]
    osteo = st.get("osteoporotic", False)
    tc = rng.uniform(0.7, 1.0) if osteo else rng.uniform(1.0, 1.6)
    scol = st.get("scoliosis_mm", 0.0)
    zt8, zl5 = next(v.z for v in verts if v.name == "T8"), next(v.z for v in verts if v.name == "L5")
    xs = lambda zz: float(scol * np.sin(np.clip((zz - zt8) / (zl5 - zt8), 0, 1) * np.pi))  # noqa: E731
    zmin, zmax = float(g.z[0]), float(g.z[-1])
    mobile = [v for v in verts if v.kind not in ("sacral", "coccygeal")]
    chain = mobile + [next(v for v in verts if v.name == "S1")]
    # discs between consecutive bodies
    for up, lo in zip(chain[:-1], chain[1:]):
        zc = 0.5 * (up.z + lo.z)
        ext = max(up.a, lo.a) + 3
        if zc + 40 < zmin or zc - 40 > zmax:
            continue
        sl = g.box((xs(zc) - ext, min(up.y, lo.y) - max(up.b, lo.b) - 8, zc - 30),
                   (xs(zc) + ext, max(up.y, lo.y) + max(up.b, lo.b) + 8, zc + 30))
        if sl is None:
            continue
        X, Y, Z = g.coords(sl)
        ru, rl = _tilt_rot(up.tilt), _tilt_rot(lo.tilt)
        wu = (Y - up.y) * ru[1, 2] + (Z - up.z) * ru[2, 2]
        wl = (Y - lo.y) * rl[1, 2] + (Z - lo.z) * rl[2, 2]
        vl = (Y - lo.y) * rl[1, 1] + (Z - lo.z) * rl[2, 1]
        am, bm = 0.5 * (up.a + lo.a) * 1.02, 0.5 * (up.b + lo.b) * 1.02
        vv = np.where(vl > 0, vl * 1.25, vl)
        disc = (wu < -up.h / 2 + 0.6) & (wl > lo.h / 2 - 0.6) & (((X - xs(zc)) / am) ** 2 + (vv / bm) ** 2 <= 1) &\
            (wu > -up.h / 2 - up.disc - 4)
        m.paint(sl, disc, _A["intervertebral_disc"], _LV["intervertebral_disc"], blocked=[_A["bone_cortex"]])
    for v in verts:
        if v.z + v.h + 60 < zmin or v.z - v.h - 60 > zmax:
            continue
        geo, rot, C = _vertebra_frame(v, fr, xs(v.z))
        P = lambda lx, lv, lw: C + rot @ np.array([lx, lv, lw])  # noqa: E731
        lab = v.label if v.kind != "coccygeal" else 0
        # body: elliptic cylinder along w with a concave posterior wall and a slight waist
        ext = np.abs(rot) @ np.array([v.a, v.b, v.h / 2]) + 2
        sl = g.box(C - ext, C + ext)
        if sl is not None:
            X, Y, Z = g.coords(sl)
            ex = X - np.float32(C[0])
            ev = (Y - np.float32(C[1])) * np.float32(rot[1, 1]) + (Z - np.float32(C[2])) * np.float32(rot[2, 1])
            ew = (Y - np.float32(C[1])) * np.float32(rot[1, 2]) + (Z - np.float32(C[2])) * np.float32(rot[2, 2])
            qx = (ex / np.float32(v.a)) ** 2
            evc = np.where(ev > 0, ev * (1 + 0.3 * np.maximum(1 - qx, 0)), ev)
            waist = 1 - 0.06 * (1 - (2 * ew / v.h) ** 2)
            q = np.sqrt(qx + (evc / np.float32(v.b)) ** 2) / waist
            half_h = v.h / 2 + (v.disc * 0.6 if v.kind == "sacral" else 0.0)  # sacral segments are fused
            body = (q <= 1) & (np.abs(ew) <= half_h)
            m.paint(sl, body, _A["bone_cortex"], lab)
            core = body & (q <= 1 - tc / min(v.a, v.b)) & (np.abs(ew) <= half_h - tc * 0.9)
            m.paint(sl, core, _A["bone_cancellous"], lab)
        ca, cb, tp, vc = geo["ca"], geo["cb"], geo["tp"], geo["vc"]
        if v.kind in ("sacral", "coccygeal"):
            i = int(v.name[1:]) if v.kind == "sacral" else 9
            if v.kind == "sacral":
                ala = {1: (v.a + 12 * fr, 24, 0.55), 2: (v.a + 10 * fr, 20, 0.6), 3: (v.a + 6 * fr, 13, 0.6)}.get(i)
                for side in (-1, 1):
                    if ala is not None:
                        _bone_element(m, P(side * ala[0], v.b * 0.15, 0.0),
                                      (ala[1] * fr, v.b * 1.05, v.h * ala[2]), rot, lab, tc)
                    # fused laminae and the dorsal surface
                    _bone_element(m, P(side * ca * 0.6, vc + cb * 0.8, 0), (ca * 0.9, 4.0 * fr, v.h * 0.55), rot,
                                  lab, tc)
                _bone_element(m, P(0, vc + cb + 4 * fr, -v.h * 0.1), (3 * fr, 6 * fr, v.h * 0.4), rot, lab, tc)
                sl2, rho = ellipsoid(g, P(0, vc, 0), (ca * (1.0 - 0.12 * i), cb * 0.6, v.h / 2 + v.disc), rot)
                if sl2 is not None:
                    m.paint(sl2, rho <= 1, _A["spinal_canal"], 0)
            continue
        thor = v.kind == "thoracic"
        if v.kind == "lumbar_sacralised":  # transverse processes grown into alae fused with the sacrum
            for side in (-1, 1):
                _bone_element(m, P(side * (v.a + 12 * fr), v.b * 0.2, -v.h * 0.15), (24 * fr, v.b * 0.9, v.h * 0.5),
                              rot, lab, tc)
        for side in (-1, 1):
            # pedicle, lamina, articular processes, transverse process
            _bone_element(m, P(side * (ca + 3.5 * fr), v.b + cb * 0.9, v.h * 0.12),
                          ((4.5 if thor else 5.5) * fr, cb + 3, v.h * 0.28), rot, lab, tc)
            _bone_element(m, P(side * ca * 0.65, v.b + 2 * cb + 3.5 * fr, -v.h * 0.05),
                          (ca * 0.8, 3.5 * fr, v.h * 0.42), rot, lab, tc)
            _bone_element(m, P(side * (ca + 4 * fr), v.b + 2 * cb + 1, v.h / 2 + v.disc * 0.4),
                          (4.5 * fr, 5 * fr, v.disc * 0.5 + 5), rot, lab, tc)
            _bone_element(m, P(side * (ca + 2.5 * fr), v.b + 2 * cb + 3, -v.h / 2 - v.disc * 0.3),
                          (4.5 * fr, 5 * fr, 7 * fr), rot, lab, tc)
            if v.kind != "lumbar_sacralised":
                if thor:
                    _bone_element(m, P(side * (ca + 4 + tp * 0.45), v.b + cb * 1.4 + tp * 0.35, v.h * 0.05),
                                  (tp * 0.5, 5 * fr, 6 * fr), rot, lab, tc)
                else:
                    _bone_element(m, P(side * (ca + 4 + tp * 0.5), v.b + cb + 3, 0.0),
                                  (tp * 0.55, 4 * fr, 5.5 * fr), rot, lab, tc)
        # spinous process (thoracic: long and sloping down)
        sp = (30 if v.kind.startswith("lumbar") else 34 if thor else 22) * fr
        if thor:
            _bone_element(m, P(0, v.b + 2 * cb + 5 + sp * 0.3, -v.h * 0.2), (3.2 * fr, sp * 0.32, 6 * fr), rot, lab, tc)
            _bone_element(m, P(0, v.b + 2 * cb + 5 + sp * 0.75, -v.h * 0.85), (3.0 * fr, sp * 0.3, 6 * fr),
                          rot @ rotation_matrix(0, 40), lab, tc)
        else:
            _bone_element(m, P(0, v.b + 2 * cb + 4 + sp / 2, -v.h * 0.1), (3.5 * fr, sp / 2, v.h * 0.3), rot, lab, tc)
    # canal and cord last: through every level
    for v in mobile:
        if v.z + v.h + 40 < zmin or v.z - v.h - 40 > zmax:
            continue
        geo, rot, C = _vertebra_frame(v, fr, xs(v.z))
        centre = C + rot @ np.array([0.0, geo["vc"], -v.disc * 0.25])
        semi = (geo["ca"], geo["cb"], v.h / 2 + v.disc * 0.75 + 1)
        sl, rho = ellipsoid(g, centre, semi, rot)
        if sl is None:
            continue
        X, Y, Z = g.coords(sl)
        m.paint(sl, rho <= 1, _A["spinal_canal"], 0)
        if v.name[0] in "CT" or v.name == "L1":
            sl2, rho2 = ellipsoid(g, centre, (geo["ca"] * 0.55, geo["cb"] * 0.6, semi[2]), rot)
            if sl2 is not None:
                m.paint(sl2, rho2 <= 1, _A["spinal_cord"], _LV["spinal_cord"], allowed=[_A["spinal_canal"]])


def draw_ribs(rng: np.random.Generator, m: TorsoMaps, verts: list[PlannedVertebra], body: dict[str, Any],
               lm: dict[str, float], st: dict[str, Any]) -> None:
    """Ribs on every rib-bearing vertebra, costal cartilage, sternum."""
    g = m.g
    fr = st["frame"]
    a_fn, bant_fn = body["a_rc_fn"], body["b_rc_fn"]
    n = 0
    for v in verts:
        if v.ribs <= 0:
            continue
        n = int(v.name[1:]) if v.kind == "thoracic" else 13
        geo, rot, C = _vertebra_frame(v, fr, 0.0)
        lower = n >= 8
        drop = {1: 20, 2: 35}.get(n, 55 if n < 8 else 75 if n < 11 else 45) * fr * rng.uniform(0.8, 1.2)
        if n <= 7:
            a_end = np.deg2rad(rng.uniform(148, 160))
        elif n <= 10:
            a_end = np.deg2rad(rng.uniform(120, 138))
        elif n == 11:
            a_end = np.deg2rad(rng.uniform(92, 112))
        elif n == 12:
            a_end = np.deg2rad(rng.uniform(45, 85))
        else:
            a_end = 0.0
        for side, key in ((-1, "rib_right_"), (1, "rib_left_")):
            head = C + rot @ np.array([side * v.a * 0.95, v.b * 0.55, v.h * 0.4])
            tub = C + rot @ np.array([side * (geo["ca"] + 4 + geo["tp"] * 0.85),
                                      v.b + geo["cb"] * 1.4 + geo["tp"] * 0.4, v.h * 0.15])
            zc = tub[2] - 8
            wall = -4.0 * fr  # the ribs lie just outside the pleural cavity
            r_lat = float(a_fn(zc - drop * 0.5)) - wall
            ang = tub + np.array([side * 22 * fr, 8 * fr, -6])
            r_back = float(max(ang[1], 20.0))
            ctrl = [head, tub, ang]
            if n == 13:  # lumbar rib: a short stub beyond the transverse process
                ctrl = [head, tub, tub + np.array([side * rng.uniform(15, 40) * v.ribs * 2, 8, -5])]
            else:
                a0 = float(np.arcsin(np.clip(abs(ang[0]) / r_lat, 0.05, 0.95)))
                r_back = ang[1] / max(np.cos(a0), 0.2)
                if a_end > a0 + 0.1:
                    for al in np.linspace(a0, a_end, 8)[1:]:
                        f = (al - a0) / max(a_end - a0, 1e-3)
                        zz = ang[2] - drop * f ** 1.4
                        ra = float(bant_fn(zz)) - wall
                        ry = r_back * np.cos(al) if np.cos(al) > 0 else ra * np.cos(al)
                        rl = float(a_fn(zz)) - wall
                        ctrl.append(np.array([side * rl * np.sin(al), ry, zz]))
            ctrl = np.array(ctrl)
            if ctrl[:, 2].max() + 15 < g.z[0] or ctrl[:, 2].min() - 15 > g.z[-1]:
                continue
            thick = (3.2 + 0.1 * min(n, 10)) * fr * (0.85 if n == 1 else 1.0)
            height = (5.0 + 0.25 * min(n, 10)) * fr
            pts, rr = spline_path(ctrl, np.r_[thick * 1.2, np.full(len(ctrl) - 1, thick)], min(thick, 2.0))
            rz = np.full(len(pts), height)
            label = _LV[f"{key}{n}"]
            paint_tube(m, pts, rr, rz, core=_A["bone_cancellous"], shell=_A["bone_cortex"],
                        shell_mm=1.2 if not st.get("osteoporotic") else 0.8, label=label)
            # costal cartilage to the sternum (1-7) or to the cartilage above (8-10)
            if n <= 10 and a_end > 1.5:
                end = pts[-1]
                if not lower:
                    zz = end[2] + rng.uniform(0, 15) * (n / 7)
                    tip = np.array([side * 12 * fr, -(float(bant_fn(zz)) - wall * 0.8), zz])
                else:
                    zz = end[2] + rng.uniform(25, 45)
                    tip = np.array([side * float(a_fn(zz)) * rng.uniform(0.3, 0.5), -(float(bant_fn(zz)) - wall), zz])
                mid = 0.5 * (end + tip) + np.array([side * 8, -5, 0])
                cp, cr = spline_path(np.array([end, mid, tip]), np.array([thick * 1.1, thick * 1.3, thick * 1.2]), 1.5)
                paint_tube(m, cp, cr, cr * 1.4, core=_A["costal_cartilage"], label=_LV["costal_cartilage"],
                            blocked=BONES)
    # sternum: manubrium at T2-T4, body to the xiphoid at about T10
    v = {x.name: x for x in verts}
    z_top, z_bot = v["T2"].z + 10, lm["xiphoid"]
    if z_bot < g.z[-1] + 10 and z_top > g.z[0] - 10:
        zz = np.arange(z_bot, z_top, 2.0)
        for off in (-9.0, 0.0, 9.0):
            y = -(body["b_ant_fn"](zz) - 6 * fr)
            w = np.where(zz > v["T4"].z, 1.6, 1.0)
            pts = np.stack([off * fr * w, y, zz], axis=1)
            paint_tube(m, pts, np.full(len(zz), 6.5 * fr), np.full(len(zz), 3.0), core=_A["bone_cancellous"],
                        shell=_A["bone_cortex"], shell_mm=1.0, label=_LV["sternum"])


def draw_pelvis(rng: np.random.Generator, m: TorsoMaps, verts: list[PlannedVertebra], body: dict[str, Any],
                 lm: dict[str, float], st: dict[str, Any]) -> None:
    """Iliac wings, acetabula, pubis, ischium, femoral heads, necks and shafts; muscle lateral to the pelvis."""
    g = m.g
    fr = st["frame"]
    hx, hy, hz, hr = lm["head_x"], lm["head_y"], lm["head_z"], lm["head_r"]
    crest = lm["crest"]
    if hz - 250 > g.z[-1] or crest + 20 < g.z[0]:
        return
    v = {x.name: x for x in verts}
    s1 = v["S1"]
    x_si = s1.a + 30 * fr
    acet_top = hz + hr + 8
    a_fn = body["a_f_fn"]
    cortex = 0.9 if st.get("osteoporotic") else 1.5
    for side, hip, femur in ((-1, "hip_right", "femur_right"), (1, "hip_left", "femur_left")):
        # iliac wing: one curve per z level from the sacro-iliac joint round to the anterior spine
        pts_all, r_all, il_pts = [], [], []
        zs = np.arange(hz + hr * 0.3, crest, min(g.sk, 2.0))
        for zz in zs:
            f = float(np.clip((zz - acet_top) / (crest - acet_top), 0, 1))
            y_s = float(body["spine_y"](zz))
            glut_t = float(np.interp(zz, body["z"], body["glut"])) if len(body["z"]) > 1 else 20.0
            x_max = max(float(a_fn(zz)) - glut_t - 10 * fr, x_si + 30)
            x_lat = x_si + 25 + (x_max - x_si - 25) * (0.3 + 0.7 * f ** 0.6)
            p_si = (side * x_si, y_s + 5)
            p_post = (side * (x_si + 15 + 20 * f), y_s + 20 * (1 - 0.3 * f))
            p_lat = (side * x_lat, y_s - 25 - 30 * f)
            p_ant = (side * (x_lat * (0.8 + 0.1 * f)), -(float(body["b_ant_fn"](zz)) * (0.25 + 0.2 * f)) * f +
                     (1 - f) * (hy - 10))
            if f < 0.2:  # ilium body above the acetabulum: short and thick
                p_lat = (side * (hx + 5), hy + 10)
                p_ant = (side * (hx - 5), hy - 10)
            ctrl = np.array([(*p_si, zz), (*p_post, zz), (*p_lat, zz), (*p_ant, zz)])
            pts, _ = spline_path(ctrl, np.ones(4), 1.5)
            t = np.linspace(0, 1, len(pts))
            # the crest is highest in its middle and falls towards both iliac spines
            z_top = crest - np.where(t < 0.45, 12 * ((0.45 - t) / 0.45) ** 2, 30 * ((t - 0.45) / 0.55) ** 2) * fr
            keep = zz <= z_top
            thick = np.where(t < 0.3, 6.5 - 12 * t, np.where(t > 0.85, 2.8, 1.7)) * fr
            thick = np.where(z_top - zz < 6, np.maximum(thick, 3.5 * fr), thick)
            if f < 0.25:
                thick = np.maximum(thick, 7.0 * fr)
            pts_all.append(pts[keep])
            r_all.append(thick[keep])
            if 0.15 < f < 0.95:  # iliacus on the inner face of the wing
                sel = keep & (t > 0.3) & (t < 0.9)
                inward = np.array([0.0, y_s - 25.0])[None, :] - pts[sel, :2]
                inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-3)
                q = pts[sel].copy()
                q[:, :2] += inward * (thick[sel, None] + 7 * fr * st["muscle"])
                il_pts.append(q)
        if pts_all:
            pts = np.concatenate(pts_all)
            rr = np.concatenate(r_all)
            paint_tube(m, pts, rr, np.full(len(pts), max(min(g.sk, 2.0) * 0.8, 1.2)), core=_A["bone_cancellous"],
                        shell=_A["bone_cortex"], shell_mm=cortex, label=_LV[hip], blocked=[_A["bone_cortex"]])
        if il_pts:
            q = np.concatenate(il_pts)
            paint_tube(m, q, np.full(len(q), 8.0 * fr * st["muscle"] ** 0.5), np.full(len(q), 2.5),
                        core=_A["psoas"], label=_LV["psoas"], allowed=[_A["visceral_fat"]])
        H = np.array([side * hx, hy, hz])
        # acetabulum: a cup over the head (superior, medial, posterior), then joint cartilage
        sl, rho = ellipsoid(g, H, (hr + 11, hr + 11, hr + 11))
        if sl is not None:
            X, Y, Z = g.coords(sl)
            d = np.stack(np.broadcast_arrays(X - H[0], Y - H[1], Z - H[2]))
            n_cup = np.array([-side * 0.55, 0.25, 0.8])
            n_cup /= np.linalg.norm(n_cup)
            cosang = (d[0] * n_cup[0] + d[1] * n_cup[1] + d[2] * n_cup[2]) / np.maximum(np.sqrt((d ** 2).sum(0)), 1e-3)
            r = rho * (hr + 11)
            cup = (r >= hr + 2) & (r <= hr + 11) & (cosang > -0.25)
            m.paint(sl, cup, _A["bone_cortex"], _LV[hip])
            m.paint(sl, cup & (r >= hr + 3.5) & (r <= hr + 9.5), _A["bone_cancellous"], _LV[hip])
            m.paint(sl, (r < hr + 2) & (cosang > -0.25), _A["joint_cartilage"], 0)
        # pubis and ischium
        sym = np.array([side * 6 * fr, hy - 62 * fr, hz - 18])
        tub = np.array([side * (hx - 38 * fr), hy + 32 * fr, hz - 52])
        for ctrl, r in (([H + [-side * 12, -18, -4], H + [-side * 45, -45, -12], sym], [11, 9, 9]),
                        ([sym, sym + [side * 18, 10, -25], tub], [8, 7, 9]),
                        ([H + [-side * 10, 20, -8], H + [-side * 20, 30, -30], tub], [13, 11, 12])):
            pts, rr = spline_path(np.array(ctrl, float), np.array(r, float) * fr, 2.0)
            paint_tube(m, pts, rr, core=_A["bone_cancellous"], shell=_A["bone_cortex"], shell_mm=cortex,
                        label=_LV[hip], blocked=[_A["bone_cortex"], _A["joint_cartilage"]])
        # femur: head, neck, greater and lesser trochanter, shaft with fatty marrow
        _bone_element(m, H, (hr, hr, hr), None, _LV[femur], cortex)
        neck_end = H + np.array([side * 38 * fr, 6, -26])
        pts, rr = spline_path(np.array([H, neck_end]), np.array([15, 14]) * fr, 2.0)
        paint_tube(m, pts, rr, core=_A["bone_cancellous"], shell=_A["bone_cortex"], shell_mm=cortex,
                    label=_LV[femur], blocked=[_A["bone_cortex"]])
        _bone_element(m, H + np.array([side * 50 * fr, 10, -14]), (14 * fr, 18 * fr, 24 * fr), None, _LV[femur],
                      cortex)
        _bone_element(m, H + np.array([side * 24 * fr, 20, -58]), (8 * fr, 8 * fr, 10 * fr), None, _LV[femur], cortex)
        shaft = np.array([H + [side * 40 * fr, 8, -40], H + [side * 36 * fr, 5, -120], H + [side * 30 * fr, 0, -260]])
        pts, rr = spline_path(shaft, np.array([15, 13.5, 13]) * fr, 2.0)
        paint_tube(m, pts, rr, core=_A["bone_marrow_fat"], shell=_A["bone_cortex"], shell_mm=5.0 * fr,
                    label=_LV[femur], blocked=[_A["bone_cortex"], _A["bone_cancellous"]])
    # lateral to the iliac wings lie the gluteal muscles, not the abdominal cavity
    for k in range(g.nk):
        if not (acet_top - 5 < g.z[k] < crest + 5):
            continue
        for side, hip in ((-1, "hip_right"), (1, "hip_left")):
            wing = m.lab[k] == _LV[hip]
            if not wing.any():
                continue
            sx = side * g.x[None, :]
            outer = np.where(wing, sx, -np.inf).max(axis=1)
            lateral = (sx > outer[:, None]) & np.isfinite(outer)[:, None] & (m.anat[k] == _A["visceral_fat"])
            m.anat[k][lateral] = _A["gluteal_muscle"]
    # below the acetabular roof the fat lateral to the pelvic ring is muscle (obturator, gluteus minimus, ...)
    sl = g.box((-1000, -1000, g.z[0]), (1000, 1000, acet_top))
    if sl is not None:
        X, Y, Z = g.coords(sl)
        lateral = (np.abs(X) > hx - hr - 6) & (Y > hy - hr - 25)
        m.paint(sl, lateral, _A["gluteal_muscle"], 0, allowed=[_A["visceral_fat"]])


def draw_screws(rng: np.random.Generator, m: TorsoMaps, verts: list[PlannedVertebra]) -> list[str]:
    """Transpedicular screws with rods at 2-4 consecutive lumbosacral levels; returns the levels."""
    cands = [v for v in verts if v.kind.startswith("lumbar")] + [next(v for v in verts if v.name == "S1")]
    n = int(rng.integers(2, 5))
    start = int(rng.integers(max(len(cands) - n - 2, 0), len(cands) - n + 1))
    chosen = cands[start:start + n]
    heads = {-1: [], 1: []}
    for v in chosen:
        geo = _vertebra_geometry(v, 1.0)
        rot = _tilt_rot(v.tilt)
        C = np.array([0.0, v.y, v.z])
        for side in (-1, 1):
            entry = C + rot @ np.array([side * (geo["ca"] + 9), v.b + 2 * geo["cb"] + 8, v.h * 0.1])
            tip = C + rot @ np.array([side * v.a * 0.25, -v.b * 0.45, v.h * 0.1])
            pts, rr = spline_path(np.array([entry, tip]), np.array([3.3, 3.0]), 1.0)
            paint_tube(m, pts, rr, core=_A["metal"], label=None)
            heads[side].append(entry + rot @ np.array([0.0, 7.0, 0.0]))
    for side in (-1, 1):
        hp = np.array(heads[side])
        if len(hp) >= 2:
            ctrl = np.vstack([hp[0] + [0, 0, 12], hp, hp[-1] - [0, 0, 10]])
            pts, rr = spline_path(ctrl, np.full(len(ctrl), 2.8), 1.0)
            paint_tube(m, pts, rr, core=_A["metal"], label=None)
    return [v.name for v in chosen]
