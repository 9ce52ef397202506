"""The body wall of the procedural torso (:mod:`mskseg.synth.torso`): outline, muscles, fat, arms.

:func:`body_profiles` gives the per-slice outline tables (fascia, skin, spine position, muscle sizes along z);
:func:`draw_body_wall` paints skin, subcutaneous fat, the abdominal and chest wall muscles, the paraspinal
compartment, psoas and quadratus lumborum; :func:`draw_arms` the arms beside the abdomen; :func:`imat_streaks`
intermuscular fat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator

from .phantom import periodic_profile
from .torso_shapes import (ANATOMY_VALUE as _A, MUSCLE_VALUES, TORSO_LABEL_VALUE as _LV, TorsoGrid, TorsoMaps,
                           anchored, ellipsoid, paint_tube, rotation_matrix, slow_curve, smoothstep, spline_path,
                           window_slices)
from .torso_spine import PlannedVertebra


# ============================================================================================ body wall
def body_profiles(rng: np.random.Generator, g: TorsoGrid, verts: list[PlannedVertebra], lm: dict[str, float],
                   st: dict[str, Any], h: dict[str, Any]) -> dict[str, Any]:
    """Per-slice outline tables (fascia, skin), spine position and muscle sizes along z."""
    z = g.z.astype(float)
    v = {x.name: x for x in verts}
    fr, mu, vat, sat = st["frame"], st["muscle"], max(st["vat_index"], 0.0), st["sat_index"]
    zv = np.array([x.z for x in verts])
    order = np.argsort(zv)
    spine_y = PchipInterpolator(zv[order], np.array([x.y for x in verts])[order], extrapolate=True)
    y_body = spine_y(np.clip(z, zv.min() - 30, zv.max() + 30))
    a_body = np.interp(z, zv[order], np.array([x.a for x in verts])[order])
    b_body = np.interp(z, zv[order], np.array([x.b for x in verts])[order])
    scol = st.get("scoliosis_mm", 0.0)
    x_spine = scol * np.sin(np.clip((z - v["T8"].z) / (v["L5"].z - v["T8"].z), 0, 1) * np.pi)
    y_tp = y_body + b_body + 4
    Z = lambda n: v[n].z  # noqa: E731
    head_z, crest = lm["head_z"], lm["crest"]
    # muscles along z
    para_depth = anchored(z, [(Z("T1"), 28), (Z("T6"), 34), (Z("T12"), 42), (Z("L3"), 52), (Z("L5"), 50),
                              (Z("S1"), 38), (Z("S3"), 14), (Z("S5"), 6), (head_z - 80, 4)]) * fr * mu ** 0.6
    para_half = anchored(z, [(Z("T1"), 38), (Z("T6"), 44), (Z("T12"), 52), (Z("L3"), 66), (Z("L5"), 62),
                             (Z("S1"), 48), (Z("S3"), 30), (Z("S5"), 20), (head_z - 80, 16)]) * fr * mu ** 0.5
    y_sback = y_tp + 10
    glut = anchored(z, [(crest + 15, 0), (crest - 30, 22), (head_z + 20, 45), (head_z - 80, 50)]) * fr * mu ** 0.5
    # outline of the fascia (outer boundary of the muscles)
    a_w = fr * rng.uniform(112, 130) * (1 + 0.3 * vat)
    b_w = fr * rng.uniform(72, 88) * (1 + 0.45 * vat)
    a_chest = fr * rng.uniform(138, 152)
    b_chest = fr * rng.uniform(95, 110)
    a_hip = max(a_w * 1.02, lm["head_x"] + 62 * fr)
    a_pts = [(Z("T1"), a_chest * 0.85), (Z("T5"), a_chest), (Z("T10"), max(a_chest, a_w * 0.95)),
             (Z("L3"), a_w), (crest, a_w * 1.03 + 4), (Z("S3"), a_hip), (head_z, a_hip), (head_z - 80, a_hip * 0.97)]
    b_pts = [(Z("T1"), b_chest * 0.65), (Z("T4"), b_chest * 0.92), (Z("T8"), b_chest),
             (lm["xiphoid"], b_chest * (1 + 0.15 * vat)), (Z("L3"), b_w), (Z("S1"), b_w * 0.95),
             (head_z, fr * 85 * (1 + 0.2 * vat)), (head_z - 80, fr * 80)]
    slow_a, slow_b = slow_curve(rng, 0.03), slow_curve(rng, 0.04)

    z_tab = np.arange(lm["bottom_limit"] - 100, lm["top_limit"] + 100, 1.0)
    a_tab = anchored(z_tab, a_pts) * slow_a(z_tab)
    b_tab = anchored(z_tab, b_pts) * slow_b(z_tab)

    def a_f_fn(zz):
        return np.interp(np.atleast_1d(np.asarray(zz, float)), z_tab, a_tab)

    def b_ant_fn(zz):
        return np.interp(np.atleast_1d(np.asarray(zz, float)), z_tab, b_tab)

    a_f, b_ant = a_f_fn(z), b_ant_fn(z)
    # rib cage: narrow at the thoracic inlet, widest at T8; the chest wall muscles fill the rest
    t_cw = (7 + 6 * mu) * fr
    pect = rng.uniform(10, 25) * mu * (1.0 if st["male"] else 0.7)
    a_rc_max = a_chest - t_cw
    rc_pts = [(Z("T1") - 15, 0.42), (Z("T2") - 20, 0.6), (Z("T3") - 20, 0.74), (Z("T4") - 20, 0.84),
              (Z("T5") - 20, 0.91), (Z("T6") - 20, 0.96), (Z("T8"), 1.0), (head_z - 100, 1.0)]
    rc_tab = anchored(z_tab, rc_pts)
    pect_tab = pect * np.exp(-0.5 * ((z_tab - Z("T4")) / 45.0) ** 2)
    a_rc_tab = np.minimum(a_tab - t_cw, a_rc_max * rc_tab)
    b_rc_tab = b_tab - t_cw - pect_tab

    def a_rc_fn(zz):
        return np.interp(np.atleast_1d(np.asarray(zz, float)), z_tab, a_rc_tab)

    def b_rc_fn(zz):
        return np.interp(np.atleast_1d(np.asarray(zz, float)), z_tab, b_rc_tab)

    b_post = np.maximum(y_tp - 3 + para_depth, y_sback + glut)
    b_post = np.maximum(b_post, y_body + b_body + 20)
    # posterior extent along the whole torso (not only the field of view) for the table plane
    zp = np.linspace(lm["femoral_heads"], v["T1"].z, 60)
    yp = spine_y(zp) + np.interp(zp, zv[order], np.array([x.b for x in verts])[order]) + 4
    b_post_plan = np.maximum(yp - 3 + np.interp(zp, z, para_depth) if len(z) > 1 else yp, yp + 20) + 8 + 9 * sat
    p_exp = anchored(z, [(Z("T6"), 2.0), (Z("L3"), rng.uniform(2.0, 2.6)), (head_z, 2.3)])
    n_t = 360
    theta = np.linspace(-np.pi, np.pi, n_t, endpoint=False) + np.pi / n_t
    ct, sn = np.cos(theta)[None, :], np.sin(theta)[None, :]
    b_t = np.where(sn < 0, b_ant[:, None], b_post[:, None])
    pe = p_exp[:, None]
    r_f = (np.abs(ct / a_f[:, None]) ** pe + np.abs(sn / b_t) ** pe) ** (-1 / pe)
    r_f *= periodic_profile(rng, n_t, 0.02, 5)[None, :]
    # subcutaneous fat by angle and level
    t_ant = (4 + 20 * sat) * rng.uniform(0.8, 1.2) * anchored(z, [(Z("T4"), 0.35), (Z("T10"), 0.6), (Z("L3"), 1.0),
                                                                 (Z("L5"), 1.15), (head_z, 0.8)])
    t_lat = (4 + 22 * sat) * rng.uniform(0.8, 1.2) * anchored(z, [(Z("T4"), 0.45), (Z("T10"), 0.65), (Z("L3"), 1.0),
                                                                 (crest, 1.15), (head_z, 1.2 if st["male"] else 1.5)])
    t_post = (3 + 9 * sat) * rng.uniform(0.7, 1.3) * anchored(z, [(Z("T4"), 0.9), (Z("L3"), 1.0), (Z("S2"), 1.5),
                                                                 (head_z, 1.8)])
    w_lat, w_ant, w_post = ct ** 2, np.clip(-sn, 0, 1) ** 2, np.clip(sn, 0, 1) ** 2
    asym = rng.uniform(-0.15, 0.15)
    t_sat = (w_lat * t_lat[:, None] * (1 + asym * np.sign(ct)) + w_ant * t_ant[:, None] + w_post * t_post[:, None])
    t_sat *= periodic_profile(rng, n_t, 0.08, 4)[None, :]
    if sat > 1.3:  # pannus: belly fat hanging lower and forward
        t_sat *= 1 + rng.uniform(0.1, 0.4) * np.clip(-sn, 0, 1) ** 3 * anchored(z, [(Z("L2"), 0.3), (Z("L5"), 1.0),
                                                                                  (head_z, 0.6)])[:, None]
    if not st["male"]:  # breasts
        bz = np.exp(-0.5 * ((z - 0.5 * (Z("T4") + Z("T7"))) / 35.0) ** 2)
        for side in (-1, 1):
            d_ang = np.angle(np.exp(1j * (theta - (-np.pi / 2 + side * 0.55))))
            t_sat += (15 + 30 * sat) * bz[:, None] * np.exp(-0.5 * (d_ang / 0.3) ** 2)[None, :]
    t_sat = np.maximum(t_sat, 1.5)
    b_rc_post = (y_tp + 14 * fr)[:, None]
    b_rc_t = np.where(sn < 0, b_rc_fn(z)[:, None], b_rc_post)
    r_rc = (np.abs(ct / a_rc_fn(z)[:, None]) ** 2 + np.abs(sn / b_rc_t) ** 2) ** -0.5
    skin = float(rng.uniform(1.5, 3.0))
    r_b = r_f + t_sat + skin
    # the patient lies on the table: the back and buttocks are flattened onto one plane
    y_back = r_b[:, np.argmin(np.abs(theta - np.pi / 2))]
    y_table = float(np.percentile(np.r_[y_back, b_post_plan], 60))
    y_flat = np.minimum(y_back * rng.uniform(0.95, 0.99), y_table)
    return {
        "z": z, "theta": theta, "r_f": r_f.astype(np.float32), "r_b": r_b.astype(np.float32),
        "r_s": (r_b - skin).astype(np.float32), "skin": skin, "y_flat": y_flat, "a_f": a_f, "b_ant": b_ant,
        "b_post": b_post, "y_body": y_body, "a_body": a_body, "b_body": b_body, "y_tp": y_tp, "x_spine": x_spine,
        "para_depth": para_depth, "para_half": para_half, "glut": glut, "spine_y": spine_y,
        "r_rc": np.minimum(r_rc, r_f - 4).astype(np.float32),
        "a_rc_fn": lambda zz: float(a_rc_fn(zz)[0]) if np.ndim(zz) == 0 else a_rc_fn(zz),
        "b_rc_fn": lambda zz: float(b_rc_fn(zz)[0]) if np.ndim(zz) == 0 else b_rc_fn(zz),
        "a_f_fn": lambda zz: float(a_f_fn(zz)[0]) if np.ndim(zz) == 0 else a_f_fn(zz),
        "b_ant_fn": lambda zz: float(b_ant_fn(zz)[0]) if np.ndim(zz) == 0 else b_ant_fn(zz),
    }


@dataclass
class _WallGrid:
    """The in-plane box of :func:`draw_body_wall` and its per-pixel lookups (the same on every slice).

    Attributes:
        xs1, ys1: patient x of the columns, y of the rows.
        X2, Y2: the same as broadcastable ``(1, I)`` and ``(J, 1)`` arrays; ``r2`` the radius ``(J, I)``.
        tidx: index of each pixel's angle in the outline tables (``body["theta"]``).
        phis: table of angles from the front (0..pi); ``pidx`` each pixel's index in it.
        right_side: the patient's right half (x < 0).
    """

    xs1: np.ndarray
    ys1: np.ndarray
    X2: np.ndarray
    Y2: np.ndarray
    r2: np.ndarray
    tidx: np.ndarray
    phis: np.ndarray
    pidx: np.ndarray
    right_side: np.ndarray


@dataclass
class _WallLayers:
    """Per-scan parameters of the abdominal wall (as the L3 phantom draws them): linea alba half width and
    rectus width (mm), rectus thickness, the three lateral layers' thicknesses, the fat plane between them."""

    half_la: float
    rect_w_mm: float
    t_r: float
    t_lay: list[float]
    gap: float


def draw_body_wall(rng: np.random.Generator, m: TorsoMaps, body: dict[str, Any], lm: dict[str, float],
                   st: dict[str, Any]) -> None:
    """Skin, subcutaneous fat, body-wall muscles, paraspinal compartment, psoas, quadratus lumborum, cavity,
    lungs above the diaphragm and the diaphragm itself, slice by slice.

    Thicknesses that depend on the angle round the body are computed on a table of angles per slice and
    gathered, and the smaller structures are drawn in sub-boxes, which keeps a 512 x 512 slice at a few ms.
    """
    g = m.g
    z = body["z"]
    mu, imat = st["muscle"], st["imat"]
    rmax = float(body["r_b"].max()) + 4
    bb = g.box((-rmax, -rmax, g.z[0]), (rmax, rmax, g.z[-1]))
    if bb is None:
        return
    sj, si = bb[1], bb[2]
    xs1, ys1 = g.x[si].astype(np.float32), g.y[sj].astype(np.float32)
    X2, Y2 = xs1[None, :], ys1[:, None]
    r2 = np.sqrt(X2 * X2 + Y2 * Y2)
    n_t = len(body["theta"])
    tidx = (((np.arctan2(Y2, X2) + np.pi) / (2 * np.pi) * n_t).astype(np.int32)) % n_t
    n_phi = 256
    phis = np.linspace(0.0, np.pi, n_phi).astype(np.float32)
    pidx = np.rint(np.arctan2(np.abs(X2), -Y2) / np.pi * (n_phi - 1)).astype(np.int32)
    right_side = np.broadcast_to(X2 < 0, r2.shape)
    wg = _WallGrid(xs1, ys1, X2, Y2, r2, tidx, phis, pidx, right_side)
    # per-scan wall parameters (as the L3 phantom draws them)
    half_la = rng.uniform(2.0, 8.0)
    rect_w_mm = mu ** 0.3 * rng.uniform(55, 80)
    t_r = mu * rng.uniform(8, 13)
    t_lay = [mu * rng.uniform(5, 8), mu * rng.uniform(5, 9), mu * rng.uniform(3, 6)]
    gap = rng.uniform(0.5, 1.3) + 0.4 * imat
    wall = _WallLayers(half_la, rect_w_mm, t_r, t_lay, gap)
    psoas_a, psoas_b, psoas_x, psoas_y, ql_a, ql_b = _posterior_muscle_sizes(z, body, lm, st)
    w_chest = smoothstep((z - (lm["xiphoid"] - 10)) / 45.0)
    w_pelvis = smoothstep((lm["crest"] + 10 - z) / 50.0)
    ps_prof = periodic_profile(rng, 64, 0.05, 4).astype(np.float32)
    VF, SAT = _A["visceral_fat"], _A["subcutaneous_fat"]
    for k in range(g.nk):
        zk = float(z[k])
        Rf = body["r_f"][k][tidx]
        a2 = np.zeros(r2.shape, np.uint8)
        l2 = np.zeros(r2.shape, np.uint8)
        yflat = body["y_flat"][k]
        a2[(r2 <= body["r_b"][k][tidx]) & (Y2 <= yflat)] = _A["skin"]
        a2[(r2 <= body["r_s"][k][tidx]) & (Y2 <= yflat - body["skin"])] = SAT
        inside = r2 <= Rf
        a2[inside] = VF
        depth = Rf - r2
        wc, wp = float(w_chest[k]), float(w_pelvis[k])
        _wall_muscles(a2, l2, wg, body, k, inside, depth, wc, wp, wall)
        _back_compartment(a2, l2, wg, body, k, inside, depth, imat, ps_prof)
        _psoas_and_quadratus(a2, l2, wg, body, k, lm, inside, (float(psoas_a[k]), float(psoas_b[k])),
                             (float(psoas_x[k]), float(psoas_y[k])), (float(ql_a[k]), float(ql_b[k])), ps_prof)
        if zk > lm["recess"] - 5:
            _chest_and_liver(a2, l2, wg, body, k, lm, zk, wc)
        m.anat[k, sj, si] = a2
        m.lab[k, sj, si] = l2


def _posterior_muscle_sizes(z: np.ndarray, body: dict[str, Any], lm: dict[str, float],
                            st: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """Per slice: psoas semi-axes ``(a, b)``, its lateral offset and y, and quadratus lumborum semi-axes
    ``(a, b)`` (mm), anchored at the vertebral levels, the sacrum and the femoral heads."""
    fr, mu = st["frame"], st["muscle"]
    zt12, zl1, zl3, zl5 = lm["z_T12"], lm["z_L1"], lm["z_L3"], lm["z_L5"]
    psoas_a = anchored(z, [(zt12 + 5, 0.0), (zl1, 7), (lm["z_L2"], 12), (zl3, 16), (lm["z_L4"], 21), (zl5, 24),
                           (lm["s1_top"] - 20, 26), (lm["head_z"] + 20, 22), (lm["head_z"] - 60, 18)]) * fr * mu ** 0.7
    psoas_b = anchored(z, [(zt12 + 5, 0.0), (zl1, 7), (lm["z_L2"], 11), (zl3, 14), (lm["z_L4"], 17), (zl5, 19),
                           (lm["s1_top"] - 20, 18), (lm["head_z"] + 20, 16), (lm["head_z"] - 60, 15)]) * fr * mu ** 0.7
    psoas_x = np.where(z > lm["s1_top"], body["a_body"] + 0.75 * psoas_a,
                       anchored(z, [(lm["s1_top"], lm["ps_x_s1"]), (lm["head_z"], lm["head_x"] - 8)]))
    psoas_y = anchored(z, [(zl1, lm["y_L1"] + 2), (zl3, lm["y_L3"] - 3), (zl5, lm["y_L5"] - 10),
                           (lm["s1_top"] - 20, lm["ps_y_s1"]), (lm["head_z"], lm["head_y"] - lm["head_r"] - 10)])
    ql_a = anchored(z, [(zt12, 0.0), (zl1, 9), (lm["z_L2"], 14), (lm["z_L4"], 17), (lm["crest"], 8),
                        (lm["crest"] - 10, 0.0)]) * fr * mu ** 0.7
    ql_b = ql_a * 0.55
    return psoas_a, psoas_b, psoas_x, psoas_y, ql_a, ql_b


def _wall_muscles(a2: np.ndarray, l2: np.ndarray, wg: _WallGrid, body: dict[str, Any], k: int, inside: np.ndarray,
                  depth: np.ndarray, wc: float, wp: float, wall: _WallLayers) -> None:
    """Slice ``k``: the body-wall layers from the fascia inwards (chest wall muscle above, gluteal muscle in
    the pelvis, the three lateral layers with fat planes, rectus and linea alba), from thickness tables over
    the angle from the front; ``wc`` and ``wp`` weigh the chest and the pelvis in."""
    phis, pidx, tidx, r2 = wg.phis, wg.pidx, wg.tidx, wg.r2
    n_phi = len(phis)
    half_la, rect_w_mm, t_r, t_lay, gap = wall.half_la, wall.rect_w_mm, wall.t_r, wall.t_lay, wall.gap
    VF, IM = _A["visceral_fat"], _A["intermuscular_fat"]
    y_tp = float(body["y_tp"][k])
    ph_half, ph_depth = float(body["para_half"][k]), float(body["para_depth"][k])
    phi_end = float(np.arctan2(ph_half + 8, -(y_tp + ph_depth * 0.25)))
    b_ant = float(body["b_ant"][k])
    before = phis < phi_end
    # --- body-wall layers from the fascia inwards, thickness tables over the angle from the front
    wa = 1.0 - wc
    d0 = np.zeros(n_phi, np.float32)
    if wc > 0.02:
        band = inside & (r2 > body["r_rc"][k][tidx]) & before[pidx]
        a2[band] = _A["chest_wall_muscle"]
    if wa > 0.02:
        hl, rw = half_la / b_ant, rect_w_mm / b_ant
        rect_t = wa * t_r * (1 - 0.25 * wp) * smoothstep((phis - hl) / 0.05) * smoothstep((hl + rw - phis) / 0.12)
        rect_t = (rect_t * ((phis > hl) & before)).astype(np.float32)
        o_start = hl + rw * 0.85
        lat = smoothstep((phis - o_start) / 0.25) * smoothstep((phi_end - phis) / 0.3) * (phis > o_start)
        glut_t = (wp * float(body["glut"][k]) * smoothstep((phis - 1.35) / 0.35) * before).astype(np.float32)
        if wp > 0.02:
            gl = np.where(glut_t > 1.0, glut_t, 0.0)
            gb = inside & (depth < gl[pidx])
            a2[gb] = _A["gluteal_muscle"]
            d0 = gl.copy()
        fade = 1.0 - wp * smoothstep((phis - 1.1) / 0.3)
        free = a2 == VF
        for layer, tl in zip(("external_oblique", "internal_oblique", "transversus_abdominis"), t_lay):
            tkk = wa * tl * lat * fade
            tkk = np.where(tkk > 0.7, tkk, 0.0).astype(np.float32)
            lo, hi = d0[pidx], (d0 + tkk)[pidx]
            bandm = free & (depth >= lo) & (depth < hi)
            a2[bandm] = _A[layer]
            l2[bandm] = _LV["abdominal_wall"]
            plane = free & (depth >= hi) & (depth < (d0 + tkk + np.float32(gap) * (tkk > 0))[pidx])
            a2[plane] = IM
            d0 = (d0 + np.where(tkk > 0, tkk + gap, 0.0)).astype(np.float32)
        rect = free & (depth < rect_t[pidx])
        a2[rect] = _A["rectus_abdominis"]
        l2[rect] = _LV["abdominal_wall"]
        if rect_t.max() > 2:
            la = inside & (pidx <= int(hl / np.pi * (n_phi - 1))) & (depth < 2.0) & (a2 == VF)
            a2[la] = _A["linea_alba"]


def _back_compartment(a2: np.ndarray, l2: np.ndarray, wg: _WallGrid, body: dict[str, Any], k: int,
                      inside: np.ndarray, depth: np.ndarray, imat: float, ps_prof: np.ndarray) -> None:
    """Slice ``k``: fat behind the thoracolumbar fascia is subcutaneous; the paraspinal compartments
    (multifidus and erector spinae, a cleft between them) beside the spine."""
    xs1, ys1, X2, Y2 = wg.xs1, wg.ys1, wg.X2, wg.Y2
    SAT, IM = _A["subcutaneous_fat"], _A["intermuscular_fat"]
    y_tp = float(body["y_tp"][k])
    ph_half, ph_depth = float(body["para_half"][k]), float(body["para_depth"][k])
    xs = float(body["x_spine"][k])
    # --- back: fat behind the thoracolumbar fascia is subcutaneous; the paraspinal compartment
    bj, bi = window_slices(xs1, ys1, xs - ph_half - 8, xs + ph_half + 8, y_tp, 1e4)
    if bj.stop > bj.start and bi.stop > bi.start:
        sub_in = inside[bj, bi]
        av = a2[bj, bi]
        lv = l2[bj, bi]
        Xs, Ys = X2[:, bi], Y2[bj, :]
        av[sub_in & (np.abs(Xs - xs) < ph_half + 6)] = SAT
        if ph_depth > 4:
            dsub = depth[bj, bi]
            for side in (-1, 1):
                ax_p, ay_p = ph_half / 2 * 1.05, ph_depth / 2 * 1.12
                cx_p, cy_p = xs + side * (ph_half / 2 + 3), y_tp - 3 + ph_depth / 2
                dxp, dyp = (Xs - cx_p) / ax_p, (Ys - cy_p) / ay_p
                ang = ((np.arctan2(dyp, dxp) + np.pi) / (2 * np.pi) * 63.999).astype(np.int32)
                rho = np.sqrt(dxp * dxp + dyp * dyp) / ps_prof[ang]
                comp = (rho <= 1) & (dsub > 0.8) & (side * (Xs - xs) >= 3.5)
                av[comp] = IM
                lv[comp] = 0
                musc = comp & (rho <= 0.97 - 0.04 * imat)
                split = ax_p * 0.42 + 4 + 3 * np.sin((Ys - cy_p) / 13.0)
                off = side * (Xs - xs) - split
                cleft = np.abs(off) < 0.6 + 0.8 * imat
                mf = musc & (off < 0) & ~cleft
                es = musc & (off > 0) & ~cleft
                av[mf] = _A["multifidus"]
                av[es] = _A["erector_spinae"]
                lv[mf | es] = _LV["paraspinal"]


def _psoas_and_quadratus(a2: np.ndarray, l2: np.ndarray, wg: _WallGrid, body: dict[str, Any], k: int,
                         lm: dict[str, float], inside: np.ndarray, psoas_ab: tuple[float, float],
                         psoas_xy: tuple[float, float], ql_ab: tuple[float, float], ps_prof: np.ndarray) -> None:
    """Slice ``k``: psoas (iliopsoas in the pelvis) and quadratus lumborum on both sides, over fat only."""
    xs1, ys1, X2, Y2 = wg.xs1, wg.ys1, wg.X2, wg.Y2
    VF, SAT, IM = _A["visceral_fat"], _A["subcutaneous_fat"], _A["intermuscular_fat"]
    y_tp = float(body["y_tp"][k])
    xs = float(body["x_spine"][k])
    # --- psoas (iliopsoas in the pelvis) and quadratus lumborum
    pa, pb = psoas_ab
    if pa > 2:
        for side in (-1, 1):
            cx, cy = xs + side * psoas_xy[0], psoas_xy[1]
            bj, bi = window_slices(xs1, ys1, cx - pa * 1.2, cx + pa * 1.2, cy - pb * 1.2, cy + pb * 1.2)
            dxp, dyp = (X2[:, bi] - cx) / pa, (Y2[bj, :] - cy) / pb
            ang = ((np.arctan2(dyp, dxp) + np.pi) / (2 * np.pi) * 63.999).astype(np.int32)
            av, lv = a2[bj, bi], l2[bj, bi]
            ps = (np.sqrt(dxp * dxp + dyp * dyp) <= ps_prof[ang]) & inside[bj, bi] & ((av == VF) | (av == IM))
            av[ps] = _A["psoas"]
            lv[ps] = _LV["psoas"]
    qa, qb = ql_ab
    if qa > 2:
        for side in (-1, 1):
            qx = xs + side * (float(body["a_body"][k]) + lm["tp_len"] + qa * 0.3)
            qy = y_tp - qb * 0.3
            bj, bi = window_slices(xs1, ys1, qx - qa, qx + qa, qy - qb, qy + qb)
            av, lv = a2[bj, bi], l2[bj, bi]
            ql = (((X2[:, bi] - qx) / qa) ** 2 + ((Y2[bj, :] - qy) / qb) ** 2 <= 1) & inside[bj, bi] &\
                ((av == VF) | (av == SAT))
            av[ql] = _A["quadratus_lumborum"]
            lv[ql] = _LV["paraspinal"]


def _chest_and_liver(a2: np.ndarray, l2: np.ndarray, wg: _WallGrid, body: dict[str, Any], k: int,
                     lm: dict[str, float], zk: float, wc: float) -> None:
    """Slice ``k`` near or above the diaphragm: lungs (inside the rib cage, beside the mediastinum), the
    diaphragm, and the liver below it."""
    X2, Y2, r2, tidx, right_side = wg.X2, wg.Y2, wg.r2, wg.tidx, wg.right_side
    VF = _A["visceral_fat"]
    y_tp = float(body["y_tp"][k])
    zd = _diaphragm(X2, Y2, lm)
    cav = a2 == VF
    lung = cav & (zk > zd)
    if wc > 0:
        lung &= ~((np.abs(X2 - 8) < lm["med_half"] * wc) & (Y2 < y_tp - 10))
    # the pleural recesses stay inside the rib cage; outside it lie intercostal and back muscles
    outside_cage = lung & (r2 > body["r_rc"][k][tidx])
    a2[outside_cage] = _A["chest_wall_muscle"]
    lung &= ~outside_cage
    a2[lung] = _A["lung"]
    l2[lung & right_side] = _LV["lung_right"]
    l2[lung & ~right_side] = _LV["lung_left"]
    dia = cav & (zk <= zd) & (zk > zd - lm["dia_t"])
    a2[dia] = _A["diaphragm"]
    # left border of the liver: near the cava posteriorly, the left lobe reaching across anteriorly
    x_left = lm["liver_left"] - 0.6 * (lm["dome_r"] - zk)
    xl = -12.0 + (x_left + 12.0) * smoothstep((lm["y_L1"] - 15 - Y2) / 70.0)
    liver = cav & (zk <= zd - lm["dia_t"]) & (zk > _liver_bottom(X2, Y2, lm)) & (X2 < xl)
    a2[liver] = _A["liver"]
    l2[liver] = _LV["liver"]


def _diaphragm(X2: np.ndarray, Y2: np.ndarray, lm: dict[str, float]) -> np.ndarray:
    """z of the diaphragm surface above each point (two domes, deep posterior and lateral recesses)."""
    right = X2 < 0
    dome = np.where(right, lm["dome_r"], lm["dome_l"])
    xc = np.where(right, -0.4, 0.4) * lm["a_dome"]
    qx = (X2 - xc) / (0.75 * lm["a_dome"])
    qy = np.where(Y2 > lm["yc_dome"], (Y2 - lm["yc_dome"]) / (0.8 * lm["b_post_dome"]),
                  (Y2 - lm["yc_dome"]) / (1.3 * lm["b_ant_dome"]))
    zd = dome - (lm["dome_r"] - lm["recess"]) * (qx * qx + qy * qy)
    return np.maximum(zd, lm["recess"])


def _liver_bottom(X2: np.ndarray, Y2: np.ndarray, lm: dict[str, float]) -> np.ndarray:
    """z of the inferior liver surface: lowest at the right lobe tip, rising to the left and posteriorly."""
    return lm["liver_tip"] + lm["liver_slope_x"] * (X2 + lm["a_dome"] * 0.7) +\
        0.35 * np.maximum(Y2 - lm["y_L1"] + 10, 0.0)


def draw_arms(rng: np.random.Generator, m: TorsoMaps, body: dict[str, Any], lm: dict[str, float],
               st: dict[str, Any]) -> None:
    """Arms beside the abdomen (upper arm above the elbow at about L1, forearm below, down to the hips)."""
    g = m.g
    elbow = lm["z_L1"] + rng.uniform(-30, 30)
    z_end = lm["crest"] - rng.uniform(0, 60)
    for side in (-1, 1):
        ar = rng.uniform(30, 42) + 10 * min(st["sat_index"], 2.0)
        gap = rng.uniform(0, 35)
        ctrl, rad = [], []
        for zz in np.linspace(g.z[-1] + 20, z_end, 8):
            k = int(np.clip(round((zz - g.z0) / g.sk), 0, g.nk - 1))
            half = float(body["r_b"][k][0 if side < 0 else len(body["theta"]) // 2])
            ctrl.append((side * (half + gap + ar), float(body["y_body"][k]) - rng.uniform(10, 40), zz))
            rad.append(ar * (0.85 if zz < elbow else 1.0))
        pts, rr = spline_path(np.array(ctrl), np.array(rad), 3.0)
        paint_tube(m, pts, rr, core=_A["arm_fat"], shell=_A["arm_skin"], shell_mm=2.0, label=0, allowed=[0])
        paint_tube(m, pts, rr * 0.72, core=_A["arm_muscle"], label=0, allowed=[_A["arm_fat"]])
        for off in ((0.0,) if rng.random() < 0.5 else (-9.0, 9.0)):
            bone = pts.copy()
            bone[:, 0] += off
            br = np.where(pts[:, 2] > elbow, 12.0, 7.0) * rng.uniform(0.9, 1.1)
            paint_tube(m, bone, br, core=_A["arm_bone_marrow"], shell=_A["arm_bone_cortex"], shell_mm=2.5,
                        label=0, allowed=[_A["arm_muscle"], _A["arm_fat"]])


def imat_streaks(rng: np.random.Generator, m: TorsoMaps, st: dict[str, Any]) -> None:
    """Intermuscular fat streaks along the muscle fibres (elongated along z)."""
    g = m.g
    step = 4
    coarse = np.isin(m.anat[::step, ::step, ::step], MUSCLE_VALUES)
    where = np.argwhere(coarse)
    if not len(where):
        return
    n = int(rng.poisson((20 + 160 * st["imat"]) * g.nk * g.sk / 300.0))
    for _ in range(n):
        k, j, i = where[rng.integers(len(where))] * step
        c = (float(g.x[min(i, g.ni - 1)]), float(g.y[min(j, g.nj - 1)]), float(g.z[min(k, g.nk - 1)]))
        semi = (rng.uniform(1.5, 5.0) * (0.6 + st["imat"]), rng.uniform(0.6, 1.5), rng.uniform(6, 25))
        sl, rho = ellipsoid(g, c, semi, rotation_matrix(rng.uniform(0, 180), rng.uniform(-15, 15)))
        if sl is not None:
            m.paint(sl, rho <= 1, _A["intermuscular_fat"], None, allowed=MUSCLE_VALUES)
