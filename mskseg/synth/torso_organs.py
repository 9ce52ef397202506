"""The organs of the procedural torso (:mod:`mskseg.synth.torso`): viscera, vessels and bowel.

:func:`finish_landmarks` places the organs' landmarks on the spine plan; :func:`draw_organs` paints lungs,
heart, liver, spleen, stomach, pancreas, kidneys and bladder; :func:`draw_vessels` the aorta, vena cava and
iliac vessels; :func:`draw_bowel` colon and small-bowel loops with their contents.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .torso_shapes import (ANATOMY_VALUE as _A, BONES, TORSO_LABEL_VALUE as _LV, TorsoMaps, ellipsoid, paint_tube,
                           rotation_matrix, spline_path, tube_slices)
from .torso_spine import PlannedVertebra


def finish_landmarks(rng: np.random.Generator, lm: dict[str, float], verts: list[PlannedVertebra],
                      body: dict[str, Any], st: dict[str, Any]) -> None:
    """Landmarks that depend on the outline: diaphragm domes, liver edge, organ positions."""
    v = {x.name: x for x in verts}
    for n in ("T4", "T8", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"):
        lm[f"z_{n}"] = float(v[n].z)
        lm[f"y_{n}"] = float(v[n].y)
    fr = st["frame"]
    sp = body["spine_y"]
    # outline values at the dome (use the plan when the slice range does not reach it)
    a_dome = fr * 140 * (1 + 0.15 * max(st["vat_index"], 0))
    b_post = float(sp(lm["dome_r"])) + v["T10"].b + 4 + 40 * fr
    lm.update({
        "a_dome": a_dome, "b_post_dome": b_post, "b_ant_dome": fr * 100, "yc_dome": -0.1 * fr * 100,
        "recess": float(min(v["L1"].z + v["L1"].h / 2 + rng.uniform(-10, 15), lm["dome_r"] - 60)),
        "dia_t": float(rng.uniform(3, 5)), "med_half": float(fr * rng.uniform(18, 28)),
        "liver_tip": float(v["L2"].z + rng.uniform(-25, 20) - (25 if rng.random() < 0.1 else 0)),
        "liver_left": float(a_dome * rng.uniform(0.25, 0.6)),
        "tp_len": float(24 * fr),
        "ps_x_s1": float(v["S1"].a + 38 * fr), "ps_y_s1": float(v["S1"].y - v["S1"].b - 18),
    })
    # the liver bottom rises from the right tip to the left lobe at about T11
    lm["liver_slope_x"] = float((v["T11"].z - lm["liver_tip"]) / (a_dome * 1.1))


# ============================================================================================ organs
def draw_organs(rng: np.random.Generator, m: TorsoMaps, body: dict[str, Any], verts: list[PlannedVertebra],
                 lm: dict[str, float], st: dict[str, Any], h: dict[str, Any]) -> None:
    """Spleen, stomach and duodenum, pancreas, kidneys, gallbladder, heart, vessels, bowel, bladder."""
    g = m.g
    v = {x.name: x for x in verts}
    fr, vat = st["frame"], max(st["vat_index"], 0.0)
    VF = _A["visceral_fat"]
    soft = [VF, _A["intermuscular_fat"]]
    a_d = lm["a_dome"]
    y_ao_off = lambda n: v[n].y - v[n].b  # noqa: E731  anterior surface of a vertebral body

    # spleen: posterolateral on the left under the dome, along the 10th rib
    sl, rho = ellipsoid(g, (a_d * rng.uniform(0.55, 0.68), v["T11"].y + rng.uniform(-5, 25),
                             lm["dome_l"] - rng.uniform(45, 65)),
                         (rng.uniform(20, 28), rng.uniform(45, 65), rng.uniform(40, 60)),
                         rotation_matrix(rng.uniform(25, 45), rng.uniform(-25, -10)))
    if sl is not None:
        m.paint(sl, rho <= 1, _A["spleen"], _LV["spleen"], allowed=[VF])
    # stomach (fundus under the left dome -> body -> antrum -> pylorus) and duodenum (C-loop round the pancreas
    # head, the third part crossing in front of the aorta at L3)
    yb = lambda n: v[n].y  # noqa: E731
    ctrl = np.array([
        (a_d * 0.32, yb("T11") - 15, lm["dome_l"] - 35), (a_d * 0.38, yb("T11") - 50, lm["z_T12"]),
        (a_d * 0.2, -0.55 * lm["b_ant_dome"], lm["z_L1"] + 10), (-a_d * 0.05, -0.55 * lm["b_ant_dome"], lm["z_L1"]),
        (-a_d * 0.22, yb("L1") - 70, lm["z_L1"] + 5), (-a_d * 0.3, yb("L2") - 40, lm["z_L2"]),
        (-a_d * 0.28, yb("L3") - 35, lm["z_L3"] + 5), (-a_d * 0.1, y_ao_off("L3") - 28, lm["z_L3"] - 3),
        (a_d * 0.12, y_ao_off("L3") - 30, lm["z_L3"] + 5), (a_d * 0.15, y_ao_off("L2") - 35, lm["z_L2"]),
    ])
    fill = h.get("bowel_fill", 0.7)
    rad = np.array([40, 36, 30, 22, 12, 12, 12, 11, 11, 11]) * fr * (0.7 + 0.4 * fill)
    pts, rr = spline_path(ctrl, rad, 4.0)
    gas = float(rng.uniform(0.0, 0.5))
    content = _A["bowel_contrast"] if h.get("oral_contrast") and rng.random() < 0.7 else _A["bowel_fluid"]
    paint_tube(m, pts, rr, core=content, shell=_A["bowel_wall"], shell_mm=rng.uniform(3, 5), label=_LV["stomach"],
                allowed=soft, gas=gas)
    # pancreas: head in the duodenal C-loop, body in front of the aorta, tail to the splenic hilum
    ctrl = np.array([(-a_d * 0.2, y_ao_off("L2") - 28, lm["z_L2"]), (-10, y_ao_off("L1") - 30, lm["z_L1"] + 5),
                     (30, y_ao_off("L1") - 28, lm["z_L1"] + 15), (a_d * 0.5, yb("T12") + 5, lm["z_T12"] + 5)])
    pts, rr = spline_path(ctrl, np.array([18, 12, 11, 10]) * fr, 2.0)
    paint_tube(m, pts, rr, rr * 1.4, core=_A["pancreas"], label=_LV["pancreas"], allowed=[VF])
    # kidneys with perirenal fat, cortex, medulla, sinus fat, pelvis; right lower than left
    for side, name in ((-1, "kidney_right"), (1, "kidney_left")):
        kz = lm["z_L2"] + rng.uniform(-10, 10) if side < 0 else 0.5 * (lm["z_L1"] + lm["z_L2"]) + rng.uniform(0, 15)
        yk = float(body["spine_y"](kz))
        kx = side * (float(np.interp(kz, [v["L3"].z, v["T12"].z], [v["L3"].a, v["T12"].a])) + 2 * 12 * fr
                     + 30 + rng.uniform(0, 10))
        semi = np.array([rng.uniform(26, 32), rng.uniform(20, 25), rng.uniform(48, 60)]) * fr
        rot = rotation_matrix(side * rng.uniform(25, 45), rng.uniform(-20, -8), side * rng.uniform(-18, -8))
        centre = np.array([kx, yk + rng.uniform(-5, 10), kz])
        prf = rng.uniform(3, 10) + 12 * vat
        sl, rho = ellipsoid(g, centre, semi + prf, rot)
        if sl is None:
            continue
        m.paint(sl, rho <= 1, _A["perirenal_fat"], 0, allowed=[VF])
        sl, rho = ellipsoid(g, centre, semi, rot)
        if sl is None:
            continue
        kid = rho <= 1
        m.paint(sl, kid, _A["kidney_cortex"], _LV[name], allowed=[VF, _A["perirenal_fat"], _A["liver"]])
        m.paint(sl, rho <= 0.78, _A["kidney_medulla"], _LV[name], allowed=[_A["kidney_cortex"]])
        hil = centre + rot @ np.array([-side * semi[0] * 0.55, -semi[1] * 0.45, 0.0])
        sl2, rho2 = ellipsoid(g, hil, semi * np.array([0.45, 0.4, 0.45]), rot)
        if sl2 is not None:
            m.paint(sl2, rho2 <= 1, _A["renal_sinus_fat"], _LV[name],
                    allowed=[_A["kidney_medulla"], _A["kidney_cortex"]])
            m.paint(sl2, rho2 <= 0.45, _A["renal_pelvis"], _LV[name], allowed=[_A["renal_sinus_fat"]])
        # renal vein to the cava / artery from the aorta
        to = np.array([-22.0 if side < 0 else 12.0, y_ao_off("L1") - 8, hil[2]])
        pts, rr = spline_path(np.array([hil, 0.5 * (hil + to) + [0, -6, 0], to]), np.array([4.5, 5, 5.5]), 1.5)
        paint_tube(m, pts, rr, core=_A["vein"], label=0, allowed=[VF, _A["perirenal_fat"], _A["renal_sinus_fat"]])
    # gallbladder under the liver
    if h.get("gallbladder", False) or rng.random() < 0.7:
        sl, rho = ellipsoid(g, (-a_d * 0.35, -0.35 * lm["b_ant_dome"], lm["liver_tip"] + 35),
                             (rng.uniform(12, 18), rng.uniform(12, 18), rng.uniform(25, 40)), rotation_matrix(20, 30))
        if sl is not None:
            m.paint(sl, rho <= 1, _A["gallbladder"], 0, allowed=[_A["liver"], VF])
    # heart on the central diaphragm (only in chest fields of view)
    hz = 0.5 * (lm["dome_r"] + lm["dome_l"]) + rng.uniform(45, 60)
    sl, rho = ellipsoid(g, (fr * 25, -fr * 35, hz), np.array([55, 42, 42]) * fr * rng.uniform(0.9, 1.1),
                         rotation_matrix(rng.uniform(20, 40), 15))
    if sl is not None:
        above = g.coords(sl)[2] > (lm["dome_r"] - 15)
        cav = [VF, _A["lung"]]
        m.paint(sl, (rho <= 1.08) & above, _A["mediastinal_fat"], 0, allowed=cav)
        m.paint(sl, (rho <= 1) & above, _A["heart_muscle"], _LV["heart"], allowed=cav + [_A["mediastinal_fat"]])
        m.paint(sl, (rho <= 0.78) & above, _A["heart_blood"], _LV["heart"], allowed=[_A["heart_muscle"]])
    _draw_vessels(rng, m, body, verts, lm, st)
    _draw_bowel(rng, m, body, verts, lm, st, h)
    # bladder in the low pelvis
    bf = h.get("bladder_fill", 0.5)
    sl, rho = ellipsoid(g, (0.0, -fr * 45, lm["head_z"] + 5 + 20 * bf),
                         np.array([30 + 30 * bf, 22 + 25 * bf, 20 + 25 * bf]) * fr)
    if sl is not None:
        m.paint(sl, rho <= 1, _A["bladder_wall"], _LV["urinary_bladder"], allowed=[VF])
        m.paint(sl, rho <= 0.9, _A["urine"], _LV["urinary_bladder"], allowed=[_A["bladder_wall"]])


def _draw_vessels(rng: np.random.Generator, m: TorsoMaps, body: dict[str, Any], verts: list[PlannedVertebra],
                  lm: dict[str, float], st: dict[str, Any]) -> None:
    """Aorta (arch, descending, abdominal, bifurcation, iliac and femoral arteries), cava and iliac veins,
    superior mesenteric vessels."""
    v = {x.name: x for x in verts}
    fr, age = st["frame"], st["age"]
    r_ao = fr * rng.uniform(9, 12) * (1 + 0.004 * (age - 40))
    front = lambda n, dx=0.0, gap=2.0, r=r_ao: (dx, v[n].y - v[n].b - r - gap, v[n].z)  # noqa: E731
    hx, hy, hz, hr = lm["head_x"], lm["head_y"], lm["head_z"], lm["head_r"]
    ctrl = [(-fr * 5, -fr * 40, v["T8"].z), (-fr * 8, -fr * 35, v["T5"].z), (0, -fr * 15, v["T3"].z),
            (fr * 18, v["T4"].y - 5, v["T4"].z - 5),
            (fr * 20, v["T6"].y - v["T6"].b * 0.6, v["T6"].z), (fr * 16, v["T10"].y - v["T10"].b - 4, v["T10"].z),
            front("T12", fr * 8), front("L1", fr * 10), front("L2", fr * 12), front("L3", fr * 14),
            (fr * 12, v["L4"].y - v["L4"].b - r_ao, v["L4"].z + 8)]
    rad = [16, 16, 14, 13, 12.5, 12, 11, 10.5, 10, 10, 9.5]
    pts, rr = spline_path(np.array(ctrl), np.array(rad) * r_ao / 11, 2.0)
    paint_tube(m, pts, rr, core=_A["aorta"], label=_LV["aorta"], blocked=BONES)
    if age > 50:
        for k, (sj, si), rho, _, _ in tube_slices(m.g, pts, rr):
            calc = (rho > 0.85) & (rho <= 1.0) & (m.g.z[k] < v["L1"].z) &\
                (rng.random(rho.shape) < 0.01 * (age - 50) / 10)
            m.paint((k, sj, si), calc, _A["aortic_calcification"], _LV["aorta"], allowed=[_A["aorta"]])
    for side in (-1, 1):
        ctrl = [(fr * 12, v["L4"].y - v["L4"].b - r_ao, v["L4"].z + 8),
                (side * 25 * fr, v["L5"].y - v["L5"].b - 10, v["L5"].z),
                (side * 45 * fr, v["S1"].y - v["S1"].b - 22, lm["s1_top"] - 20),
                (side * (hx - 25), hy - hr - 18, hz + 25), (side * (hx - 18), hy - hr - 22, hz - 40)]
        pts, rr = spline_path(np.array(ctrl), np.array([7, 6.5, 6, 5, 5]) * fr, 2.0)
        paint_tube(m, pts, rr, core=_A["artery"], label=0, blocked=BONES + [_A["psoas"]])
        ctrl = [(-fr * 18, v["L5"].y - v["L5"].b - 4, v["L5"].z + 5),
                (side * 30 * fr, v["S1"].y - v["S1"].b - 8, lm["s1_top"] - 5),
                (side * 48 * fr, v["S1"].y - v["S1"].b - 12, lm["s1_top"] - 40),
                (side * (hx - 35), hy - hr - 12, hz + 20), (side * (hx - 30), hy - hr - 15, hz - 40)]
        pts, rr = spline_path(np.array(ctrl), np.array([9, 8, 7.5, 7, 7]) * fr, 2.0)
        paint_tube(m, pts, rr, core=_A["vein"], label=0, blocked=BONES + [_A["psoas"], _A["artery"]])
    # inferior vena cava: right of the aorta, through the liver to the right atrium
    ctrl = [(-fr * 18, v["L5"].y - v["L5"].b - 4, v["L5"].z + 5), (-fr * 22, v["L3"].y - v["L3"].b - 10, v["L3"].z),
            (-fr * 24, v["L1"].y - v["L1"].b - 12, v["L1"].z), (-fr * 26, v["T11"].y - v["T11"].b - 18, v["T11"].z),
            (-fr * 18, -fr * 20, lm["dome_r"] + 25)]
    pts, rr = spline_path(np.array(ctrl), np.array([10, 11, 12, 13, 14]) * fr, 2.0)
    paint_tube(m, pts, rr, rr * 1.0, core=_A["vein"], label=_LV["inferior_vena_cava"], blocked=BONES + [_A["aorta"]])
    # superior mesenteric artery and vein, portal vein
    top = front("L1", fr * 10)
    ctrl = [top, (fr * 6, top[1] - 22, v["L1"].z - 10), (fr * 2, top[1] - 30, v["L3"].z),
            (-fr * 8, top[1] - 40, v["L5"].z)]
    pts, rr = spline_path(np.array(ctrl), np.array([4, 4, 3.5, 3]) * fr, 1.5)
    paint_tube(m, pts, rr, core=_A["artery"], label=0, allowed=[_A["visceral_fat"]])
    ctrl = [(-fr * 14, top[1] - 22, v["L4"].z), (-fr * 10, top[1] - 26, v["L2"].z), (-fr * 12, top[1] - 22, v["L1"].z),
            (-fr * 35, top[1] - 10, v["T12"].z + 10), (-fr * 60, top[1] - 5, v["T11"].z + 15)]
    pts, rr = spline_path(np.array(ctrl), np.array([5, 6, 7, 7, 6]) * fr, 1.5)
    paint_tube(m, pts, rr, core=_A["portal_vein"], label=0, allowed=[_A["visceral_fat"], _A["liver"], _A["pancreas"]])


def _draw_bowel(rng: np.random.Generator, m: TorsoMaps, body: dict[str, Any], verts: list[PlannedVertebra],
                lm: dict[str, float], st: dict[str, Any], h: dict[str, Any]) -> None:
    """Colon (cecum to rectum) and small-bowel loops in the free visceral fat."""
    v = {x.name: x for x in verts}
    fr, vat = st["frame"], max(st["vat_index"], 0.0)
    a = lm["a_dome"] * 0.85
    b = lm["b_ant_dome"]
    VF = _A["visceral_fat"]
    yb = lambda n: v[n].y  # noqa: E731
    sac = v["S3"]
    ctrl = np.array([
        (-a * 0.6, -b * 0.15, lm["s1_top"] - 10), (-a * 0.68, yb("L4") - 15, v["L4"].z),
        (-a * 0.68, yb("L2") - 10, v["L2"].z),
        (-a * 0.55, -b * 0.3, v["L1"].z + 5), (-a * 0.25, -b * 0.7, v["L2"].z - 15 * (1 + vat)),
        (a * 0.25, -b * 0.68, v["L2"].z - 5), (a * 0.6, yb("T12") - 30, v["T12"].z - 5),
        (a * 0.72, yb("L2") - 5, v["L2"].z), (a * 0.68, yb("L4") - 10, v["L5"].z),
        (a * 0.45, -b * 0.25, lm["s1_top"] - 35), (a * 0.1, -b * 0.05, lm["s1_top"] - 60),
        (0.0, sac.y - sac.b - 25, sac.z), (0.0, sac.y - sac.b - 22, lm["head_z"] - 20)])
    rad = np.array([28, 25, 24, 24, 24, 23, 22, 20, 19, 17, 17, 20, 18]) * fr
    pts, rr = spline_path(ctrl, rad, 5.0)
    kinds = rng.choice(["feces", "gas", "fluid"], size=4, p=[0.55, 0.35, 0.1])
    n4 = len(pts) // 4 + 1
    for q in range(4):
        seg = slice(q * n4, min((q + 1) * n4 + 2, len(pts)))
        if seg.start >= len(pts):
            break
        kind = kinds[q]
        core = {"feces": _A["feces"], "gas": _A["bowel_gas"], "fluid": _A["bowel_fluid"]}[kind]
        paint_tube(m, pts[seg], rr[seg], core=core, shell=_A["bowel_wall"], shell_mm=rng.uniform(1.5, 3.0),
                    label=_LV["colon"], allowed=[VF], gas=0.0 if kind != "fluid" else 0.4)
    # small bowel: random smooth loops in the mid and lower abdomen, fewer in fat bellies
    n_loops = int(rng.integers(10, 22) * float(np.clip(1.15 - 0.3 * vat, 0.5, 1.2)))
    zlo, zhi = lm["head_z"] + 20, v["L1"].z
    for _ in range(n_loops):
        p = np.array([rng.uniform(-a * 0.45, a * 0.45), rng.uniform(-b * 0.7, yb("L3") - 45), rng.uniform(zlo, zhi)])
        d = rng.normal(size=3); d /= np.linalg.norm(d)
        ctrl = [p.copy()]
        for _ in range(int(rng.integers(4, 9))):
            d = d + rng.normal(0, 0.8, 3); d /= np.linalg.norm(d)
            p = p + d * rng.uniform(18, 30)
            p[0] = np.clip(p[0], -a * 0.55, a * 0.55)
            p[1] = np.clip(p[1], -b * 0.85, yb("L3") - 35)
            p[2] = np.clip(p[2], zlo, zhi)
            ctrl.append(p.copy())
        r0 = rng.uniform(8, 15) * fr * (0.6 + 0.5 * h.get("bowel_fill", 0.7))
        pts, rr = spline_path(np.array(ctrl), np.full(len(ctrl), r0), max(2.0, 0.4 * r0))
        kind = rng.choice(["fluid", "gas", "collapsed", "contrast", "feces"],
                          p=[0.4, 0.12, 0.28, 0.12 if h.get("oral_contrast") else 0.0,
                             0.08 + (0.0 if h.get("oral_contrast") else 0.12)])
        core = {"fluid": _A["bowel_fluid"], "gas": _A["bowel_gas"], "collapsed": _A["bowel_wall"],
                "contrast": _A["bowel_contrast"], "feces": _A["feces"]}[kind]
        paint_tube(m, pts, rr, core=core, shell=_A["bowel_wall"], shell_mm=rng.uniform(1.5, 2.5),
                    label=_LV["small_bowel"], allowed=[VF],
                    gas=float(rng.uniform(0, 0.4)) if kind in ("fluid", "contrast") else 0.0)
    # mesenteric vessels: short thin tubes in the remaining fat
    for _ in range(int(rng.integers(10, 30))):
        p = np.array([rng.uniform(-a * 0.4, a * 0.4), rng.uniform(-b * 0.6, yb("L3") - 40), rng.uniform(zlo, zhi)])
        q = p + rng.normal(0, 1, 3) * [10, 10, 30]
        pts, rr = spline_path(np.array([p, q]), np.full(2, rng.uniform(1.0, 2.5)), 1.0)
        paint_tube(m, pts, rr, core=_A["vein"], label=0, allowed=[VF])
