"""Procedural axial CT phantoms at the third lumbar vertebra (L3), the training data of body composition.

Each phantom is drawn in the patient's frame (x towards the patient's left, y towards the back, mm, origin
near the middle of the abdomen), from smooth random contours (Fourier-perturbed ellipses and polar profiles),
never perfect ellipses, with left-right asymmetry, a few degrees of rotation and a shift. Layers from the
outside in: skin (its own structure, never fat), subcutaneous fat of habitus-dependent thickness (thin at
the back, thick at the flanks and belly), the fascia, the abdominal wall muscles (rectus pair with linea alba,
external/internal oblique and transversus with thin fat planes), the visceral cavity (bowel loops with gas,
fluid, oral contrast or feces, mesenteric vessels, kidneys with sinus and perirenal fat, aorta and cava, liver
and spleen tips, or in some phantoms a large liver or spleen against the wall), psoas, quadratus lumborum, the paraspinal compartment (erector spinae and multifidus inside
the thoracolumbar fascia) and the vertebra. Arms may lie beside the abdomen; the table lies below.

The CT image comes from :func:`mskseg.synth.artifacts.simulate_scan`. Tissue labels are then read off the
rendered image with the body-composition windows (``../docs/BODYCOMP.md``), so they match what the windows
give on real CT: inside the muscle compartments HU -29..150 is skeletal muscle and -190..-30 intermuscular
fat (the Comp2Comp convention); subcutaneous and visceral fat are the fat structures of their region within
-190..-30. Fat behind the thoracolumbar fascia is subcutaneous, fat between the paraspinal muscles is
intermuscular, never visceral; everything fatty inside the abdominal wall (perirenal and renal sinus fat
included) is visceral. Arm muscle and arm fat are not labelled (clinical L3 protocols exclude the arms).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..image import Image
from ..sarcopenia.labels import MUSCLE_GROUPS
from ..sarcopenia.settings import BodyCompSettings
from ..sarcopenia.labels import TISSUE_LABELS as BODYCOMP_TISSUE_LABELS
from .artifacts import simulate_scan
from .phantom_shapes import Blob as _Blob, Canvas as _Canvas, paint as _paint, periodic_profile
from .phantom_shapes import smoothstep as _smoothstep

#: Version of the phantom generator, written into the model cards of networks trained on it. 2: large liver
#: and spleen against the wall in a share of phantoms.
GENERATOR_VERSION = "mskseg l3-phantom 2"
from .tissues import ScanParams, sample_scan_params, sample_tissue_hu

#: Tissue label values of :attr:`PhantomSample.tissue`: those of every body-composition label map.
TISSUE_LABELS: dict[int, str] = dict(BODYCOMP_TISSUE_LABELS)
#: Label values of :attr:`PhantomSample.muscle_groups`, a compact map of its own (1, 2, 3 in the order of
#: :data:`mskseg.sarcopenia.labels.MUSCLE_GROUPS`); networks and outputs match groups by name, not value.
GROUP_LABELS: dict[int, str] = {i + 1: name for i, name in enumerate(MUSCLE_GROUPS)}

#: Body-composition HU windows used to label the rendered image (inclusive).
MUSCLE_WINDOW = BodyCompSettings().muscle_hu
FAT_WINDOW = BodyCompSettings().sat_hu

#: Fine-grained structures of :attr:`PhantomSample.anatomy` and the tissue each is rendered as.
ANATOMY: dict[int, tuple[str, str]] = {
    1: ("skin", "skin"),
    2: ("subcutaneous_fat", "fat"),
    3: ("visceral_fat", "fat"),
    4: ("perirenal_fat", "fat"),
    5: ("renal_sinus_fat", "fat"),
    6: ("intermuscular_fat", "fat"),
    7: ("rectus_abdominis", "muscle:wall"),
    8: ("external_oblique", "muscle:wall"),
    9: ("internal_oblique", "muscle:wall"),
    10: ("transversus_abdominis", "muscle:wall"),
    11: ("psoas", "muscle:psoas"),
    12: ("quadratus_lumborum", "muscle:paraspinal"),
    13: ("erector_spinae", "muscle:paraspinal"),
    14: ("multifidus", "muscle:paraspinal"),
    15: ("linea_alba", "fascia"),
    16: ("vertebra_cortex", "cortical_bone"),
    17: ("vertebral_body_cancellous", "cancellous_bone"),
    18: ("posterior_elements_cancellous", "cancellous_bone"),
    19: ("spinal_canal", "csf"),
    20: ("intervertebral_disc", "disc"),
    21: ("kidney_cortex", "kidney_cortex"),
    22: ("kidney_medulla", "kidney_medulla"),
    23: ("renal_pelvis", "urine"),
    24: ("renal_hilum_vessels", "venous_blood"),
    25: ("liver", "liver"),
    26: ("spleen", "spleen"),
    27: ("gallbladder", "bile"),
    28: ("aorta", "blood"),
    29: ("inferior_vena_cava", "venous_blood"),
    30: ("bowel_wall", "bowel_wall"),
    31: ("bowel_gas", "bowel_gas"),
    32: ("bowel_fluid", "bowel_fluid"),
    33: ("bowel_contrast", "oral_contrast"),
    34: ("feces", "feces"),
    35: ("mesenteric_vessels", "venous_blood"),
    36: ("arm_skin", "skin"),
    37: ("arm_fat", "fat"),
    38: ("arm_muscle", "muscle:arm"),
    39: ("arm_bone_cortex", "cortical_bone"),
    40: ("arm_bone_marrow", "fat:marrow"),
    41: ("table", "table"),
    42: ("table_foam", "table_foam"),
    43: ("rib", "cortical_bone"),
    44: ("aortic_calcification", "cortical_bone"),
    45: ("superficial_fascia", "fascia"),
    46: ("pancreas", "pancreas"),
}
#: ``{value: structure name}`` of :attr:`PhantomSample.anatomy`; 0 is air.
ANATOMY_LABELS: dict[int, str] = {k: v[0] for k, v in ANATOMY.items()}
_A = {v[0]: k for k, v in ANATOMY.items()}
_TISSUE_KEYS: dict[int, str] = {0: "air", **{k: v[1] for k, v in ANATOMY.items()}}

_WALL = [_A[n] for n in ("rectus_abdominis", "external_oblique", "internal_oblique", "transversus_abdominis")]
_PARASPINAL = [_A[n] for n in ("quadratus_lumborum", "erector_spinae", "multifidus")]
_COMPARTMENT = _WALL + _PARASPINAL + [_A["psoas"], _A["intermuscular_fat"]]
_VISCERAL_FAT = [_A["visceral_fat"], _A["perirenal_fat"], _A["renal_sinus_fat"]]


@dataclass
class PhantomSample:
    """One synthetic L3 slice with its labels.

    Attributes:
        image: CT image, int16 HU array ``(J, I)`` with its pixel spacing (J = rows, posterior downwards).
        tissue: uint8 ``(J, I)`` tissue labels, values of ``tissue_labels`` (0 = none).
        muscle_groups: uint8 ``(J, I)`` muscle-group labels (muscle pixels only), values of ``group_labels``.
        anatomy: uint8 ``(J, I)`` fine-grained structures, values of ``anatomy_labels`` (0 = air).
        tissue_labels, group_labels, anatomy_labels: ``{value: name}`` of the three maps.
        meta: habitus (BMI-like index, sex, age, sarcopenic, arms, kidneys, ...), scan parameters, spacing.
    """

    image: Image
    tissue: np.ndarray
    muscle_groups: np.ndarray
    anatomy: np.ndarray
    tissue_labels: dict[int, str] = field(default_factory=lambda: dict(TISSUE_LABELS))
    group_labels: dict[int, str] = field(default_factory=lambda: dict(GROUP_LABELS))
    anatomy_labels: dict[int, str] = field(default_factory=lambda: dict(ANATOMY_LABELS))
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- habitus
def sample_habitus(rng: np.random.Generator, organs: bool = True, **overrides: Any) -> dict[str, Any]:
    """Draw a body: sex, age, BMI (15-45), sarcopenia, fat distribution, organs at the slice, arms.

    Args:
        rng: random generator.
        organs: also draw whether a large liver or spleen lies against the wall (generator version 2); the
            3D torso phantoms, which share this function and draw their own organs, pass False and keep their
            random stream.
        **overrides: any key of the returned dict to fix (``bmi=40``, ``arms="down"``, ``sarcopenic=True``).

    Returns:
        dict of habitus parameters (plain values, JSON-able).
    """
    sex = str(rng.choice(["M", "F"]))
    age = float(rng.uniform(20, 90))
    bmi = float(rng.uniform(15, 45) if rng.random() < 0.5 else np.clip(rng.normal(27, 5), 15, 45))
    h: dict[str, Any] = {
        "sex": sex, "age": age, "bmi": bmi,
        "sarcopenic": bool(rng.random() < 0.12 + 0.25 * (age - 20) / 70),
        "arms": "down" if rng.random() < 0.3 else "up",
        "kidney_right": bool(rng.random() < 0.7), "kidney_left": bool(rng.random() < 0.6),
        "liver_tip": bool(rng.random() < 0.35), "spleen_tip": bool(rng.random() < 0.15),
        "gallbladder": bool(rng.random() < 0.08), "rib_tips": bool(rng.random() < 0.3),
        "disc_level": bool(rng.random() < 0.1), "oral_contrast": bool(rng.random() < 0.3),
        "rotation_deg": float(rng.uniform(-6, 6)), "shift_mm": [float(rng.uniform(-20, 20)),
                                                                  float(rng.uniform(-15, 15))],
    }
    if organs:
        # a large liver or spleen against the wall: hepatomegaly, a Riedel lobe, or a slice at L1-L2 (the
        # fall-back levels); enhanced, they are as bright as muscle or brighter and must not be called muscle
        h["large_liver"] = bool(rng.random() < 0.12)
        h["large_spleen"] = bool(rng.random() < 0.07)
    h.update(overrides)
    h["bmi"] = float(np.clip(h["bmi"], 13.0, 60.0))
    return h


# --------------------------------------------------------------------------------------------- phantom
@dataclass
class _Proportions:
    """The drawn proportions of one phantom's body (see :func:`make_l3_phantom`'s ``meta``)."""

    sat_index: float
    vat_index: float
    frame: float
    muscle: float
    infiltration: float
    imat_amount: float


@dataclass
class _Outline:
    """The drawn outline of one phantom (mm, patient frame, y posterior): fascia and body radius per angle
    ``theta``, the vertebra's place and the back's extent."""

    a_f: float
    b_ant: float
    vb_a: float
    vb_b: float
    y_vb: float
    canal_y: float
    y_tp: float
    tp_len: float
    para_depth: float
    para_half: float
    theta: np.ndarray
    r_f: np.ndarray
    r_b: np.ndarray
    skin_t: float
    skin_rad: np.ndarray
    y_flat: float


@dataclass
class _Polar:
    """Per-pixel patient coordinates of the canvas: ``X``, ``Y``, radius ``r`` and the fascia radius ``R_f``
    at each pixel's angle; ``inside`` is inside the fascia."""

    X: np.ndarray
    Y: np.ndarray
    r: np.ndarray
    R_f: np.ndarray
    inside: np.ndarray


def make_l3_phantom(rng: np.random.Generator, *, size: int = 512, spacing_mm: float | None = None,
                    habitus: dict[str, Any] | None = None, params: ScanParams | None = None) -> PhantomSample:
    """Draw one axial L3 CT phantom with tissue, muscle-group and anatomy labels.

    Args:
        rng: random generator (the only source of randomness: same state, same sample).
        size: image size in pixels (square, ``size x size``).
        spacing_mm: pixel spacing (mm); drawn in 0.6-1.0 from the body size when None.
        habitus: habitus overrides (see :func:`sample_habitus`), e.g. ``{"bmi": 40, "arms": "down"}``.
        params: scan parameters; drawn with :func:`~mskseg.synth.tissues.sample_scan_params` when None.

    Returns:
        :class:`PhantomSample` with an int16 HU image ``(size, size)`` and uint8 label maps of that shape.
    """
    # The helpers draw from ``rng`` in the order they are called here: keep that order.
    h = sample_habitus(rng, **(habitus or {}))
    pr = _draw_proportions(rng, h)
    o = _draw_outline(rng, h, pr)

    # pixel spacing from the body size (sometimes too tight: truncation)
    width = float(o.r_b[np.argmin(np.abs(o.theta))] + o.r_b[0]) + (180 if h["arms"] == "down" else 0)
    if spacing_mm is None:
        spacing_mm = float(np.clip(width * rng.uniform(1.0, 1.2) / size, 0.6, 1.0))
        if rng.random() < 0.1:
            spacing_mm = float(np.clip(spacing_mm * rng.uniform(0.8, 0.95), 0.6, 1.0))
    cv = _Canvas(size, spacing_mm, h["rotation_deg"], tuple(h["shift_mm"]))
    anat = np.zeros((size, size), np.uint8)
    pol = _body_layers(anat, cv, rng, pr, o)
    _paraspinal(anat, cv, rng, pr, o, pol)
    # abdominal wall: rectus + three lateral layers, radial bands inside the fascia
    ql_ax, ql_ay = (pr.muscle ** 0.7 * pr.frame * rng.uniform(15, 20),
                    pr.muscle ** 0.7 * pr.frame * rng.uniform(8, 11))
    _abdominal_wall(anat, rng, pr, o, pol)
    # retroperitoneum: kidneys with perirenal and sinus fat, vessels, liver/spleen tips
    psoas_ax, psoas_ay = (pr.muscle ** 0.7 * pr.frame * rng.uniform(14, 19),
                          pr.muscle ** 0.7 * pr.frame * rng.uniform(13, 17))
    structures = _kidneys(anat, cv, rng, h, pr, o, pol, psoas_ax)
    structures += _vessels_and_organs(anat, cv, rng, h, o)
    _posterior_wall_muscles(anat, cv, rng, pr, o, pol, (psoas_ax, psoas_ay), (ql_ax, ql_ay))
    structures += _vertebra(anat, cv, rng, h, pr, o)

    # bowel loops fill the free visceral fat, more densely in lean bodies
    _bowel(anat, cv, rng, h, pr.vat_index, o.a_f, o.b_ant)

    # arms beside the abdomen
    if h["arms"] == "down":
        _arms(anat, cv, rng, o.r_b, o.theta, pr.sat_index, o.y_vb)
    _table(anat, cv, rng, size, spacing_mm)

    img, p = _render_phantom(anat, rng, h, pr, params, size, spacing_mm, width)
    tissue, groups = label_tissues(img, anat)
    meta = {**h, "sat_index": pr.sat_index, "vat_index": pr.vat_index, "muscle_scale": pr.muscle,
            "fatty_infiltration_hu": pr.infiltration, "imat_amount": pr.imat_amount, "phase": p.phase,
            "spacing_mm": spacing_mm, "structures": structures, "scan": p.as_dict(), "generator": "l3-phantom-1"}
    origin = (-(size - 1) / 2 * spacing_mm,) * 2
    image = Image(img, (spacing_mm, spacing_mm), origin, None, {"Modality": "CT", "synthetic": True,
                                                                 "PatientSex": h["sex"]})
    return PhantomSample(image, tissue, groups, anat, meta=meta)


def _draw_proportions(rng: np.random.Generator, h: dict[str, Any]) -> _Proportions:
    """Fat indices, frame and muscle scale, fatty infiltration and IMAT amount from the habitus."""
    male = h["sex"] == "M"
    bmi, age, sarco = h["bmi"], h["age"], h["sarcopenic"]
    sat_index = float(np.clip((bmi - 16.0) / 12.0, 0.03, 3.0)) * (1.25 if not male else 0.9)
    vat_index = float(np.clip((bmi - 20.0) / 14.0, -0.25, 2.0)) * (1.25 if male else 0.8) * rng.uniform(0.7, 1.3)
    frame = (1.0 if male else 0.92) * rng.uniform(0.92, 1.08)
    muscle = (1.0 if male else 0.85) * rng.uniform(0.9, 1.1) * (1 + 0.008 * np.clip(bmi - 25, -8, 15))
    if sarco:
        muscle *= rng.uniform(0.65, 0.82)
    infiltration = max(0.0, (age - 30) / 60) * 12 + (rng.uniform(8, 25) if sarco else 0) + max(0, bmi - 30) * 0.5
    imat_amount = float(np.clip(0.1 + 0.4 * (age - 20) / 70 + (0.3 if sarco else 0) + 0.015 * max(0, bmi - 28),
                                0.05, 1.0) * rng.uniform(0.6, 1.3))
    return _Proportions(sat_index, vat_index, frame, muscle, infiltration, imat_amount)


def _draw_outline(rng: np.random.Generator, h: dict[str, Any], pr: _Proportions) -> _Outline:
    """The fascia (outer boundary of the muscle wall and back muscles, polar around the origin), the
    subcutaneous fat and skin outside it, and the vertebra and back it hugs."""
    bmi, frame, muscle, vat_index, sat_index = h["bmi"], pr.frame, pr.muscle, pr.vat_index, pr.sat_index
    a_f = frame * rng.uniform(112, 130) * (1 + 0.3 * vat_index)
    b_ant = frame * rng.uniform(72, 88) * (1 + 0.45 * vat_index)
    # spine and back muscles first: the posterior fascia hugs the paraspinal compartment
    vb_a, vb_b = frame * rng.uniform(22, 26), frame * rng.uniform(15, 18)
    y_vb = frame * rng.uniform(12, 24) + 6 * max(vat_index, 0)
    canal_y = y_vb + vb_b + frame * 8
    y_tp = y_vb + vb_b + 4
    tp_len = frame * rng.uniform(24, 34)
    para_depth = frame * muscle ** 0.6 * rng.uniform(46, 58)
    para_half = frame * muscle ** 0.5 * rng.uniform(62, 74)
    b_post = y_tp - 3 + para_depth
    n_t = 720
    theta = np.linspace(-np.pi, np.pi, n_t, endpoint=False)
    ct, st = np.cos(theta), np.sin(theta)
    b_t = np.where(st < 0, b_ant, b_post)
    p_sup = rng.uniform(2.0, 2.6)
    r_f = (np.abs(ct / a_f) ** p_sup + np.abs(st / b_t) ** p_sup) ** (-1 / p_sup)
    r_f *= periodic_profile(rng, n_t, 0.025, 5)
    # subcutaneous fat thickness: thin at the back, thick at flanks and belly; asymmetric
    t_ant = (4 + 20 * sat_index) * rng.uniform(0.8, 1.2)
    t_lat = [(4 + 22 * sat_index) * rng.uniform(0.8, 1.2) for _ in range(2)]
    t_post = (3 + 9 * sat_index) * rng.uniform(0.7, 1.3)
    key_ang = np.array([-np.pi, -np.pi / 2, 0.0, np.pi / 2, np.pi, 1.5 * np.pi])
    key_val = np.array([t_lat[0], t_ant, t_lat[1], t_post, t_lat[0], t_ant])
    t_sat = np.interp(np.r_[theta, theta[-1] + (theta[1] - theta[0])], key_ang, key_val)[:-1]
    t_sat = np.maximum(t_sat * periodic_profile(rng, n_t, 0.08, 4), 1.5)
    if bmi > 32:  # pannus and flank bulges
        t_sat *= 1 + rng.uniform(0.1, 0.4) * np.clip(-st, 0, 1) ** 3
    skin_t = rng.uniform(1.5, 3.0)
    r_b = r_f + t_sat + skin_t
    # radial thickness of the skin (normal thickness / cos of the contour's slope)
    slope = np.gradient(r_b, theta[1] - theta[0]) / r_b
    skin_rad = skin_t * np.sqrt(1 + slope ** 2)
    y_flat = float(r_b[np.argmin(np.abs(theta - np.pi / 2))] * rng.uniform(0.93, 0.99))
    return _Outline(a_f, b_ant, vb_a, vb_b, y_vb, canal_y, y_tp, tp_len, para_depth, para_half, theta, r_f, r_b,
                    skin_t, skin_rad, y_flat)


def _body_layers(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, pr: _Proportions,
                 o: _Outline) -> _Polar:
    """Paint skin, subcutaneous fat (with Scarpa's fascia), and visceral fat inside the fascia, the back
    excepted; return the canvas' polar coordinates."""
    theta, y_flat = o.theta, o.y_flat
    X, Y = cv.X, cv.Y
    r = np.sqrt(X * X + Y * Y)
    th = np.arctan2(Y, X)
    R_f = np.interp(th, theta, o.r_f, period=2 * np.pi)
    R_b = np.interp(th, theta, o.r_b, period=2 * np.pi)
    R_s = R_b - np.interp(th, theta, o.skin_rad, period=2 * np.pi)

    body = (r <= R_b) & (Y <= y_flat)
    anat[body] = _A["skin"]
    anat[(r <= R_s) & (Y <= y_flat - o.skin_t)] = _A["subcutaneous_fat"]
    if pr.sat_index > 0.5 and rng.random() < 0.6:  # Scarpa's fascia inside thick subcutaneous fat
        mid = R_f + 0.45 * (R_s - R_f)
        _put = (np.abs(r - mid) < 0.4) & (anat == _A["subcutaneous_fat"]) & (Y < 0.3 * y_flat)
        anat[_put] = _A["superficial_fascia"]

    inside = r <= R_f
    back = inside & (Y > o.y_tp) & (np.abs(X) < o.para_half + 6)
    anat[inside & ~back] = _A["visceral_fat"]
    return _Polar(X, Y, r, R_f, inside)


def _paraspinal(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, pr: _Proportions, o: _Outline,
                pol: _Polar) -> None:
    """Paint the paraspinal compartments (erector spinae + multifidus inside the thoracolumbar fascia); the
    fat behind the fascia and beside them is subcutaneous."""
    X, Y, r, R_f = pol.X, pol.Y, pol.r, pol.R_f
    para_half, para_depth, y_tp, imat_amount = o.para_half, o.para_depth, o.y_tp, pr.imat_amount
    back = pol.inside & (Y > y_tp) & (np.abs(X) < para_half + 6)
    for side in (-1, 1):
        ax_p, ay_p = para_half / 2 * rng.uniform(1.0, 1.1), para_depth / 2 * rng.uniform(1.05, 1.2)
        cx_p = side * (para_half / 2 + 3)
        cy_p = y_tp - 3 + para_depth / 2
        blob = _Blob(cv, rng, cx_p, cy_p, ax_p, ay_p, side * rng.uniform(-10, 5), 0.05)
        Xs, Ys = X[blob.sl], Y[blob.sl]
        comp = blob.mask() & (r[blob.sl] <= R_f[blob.sl] - 0.8) & (side * Xs >= 3.5) & (Ys >= y_tp - 3)
        _paint(anat, blob.sl, comp, _A["intermuscular_fat"])
        musc = comp & blob.mask(0.97 - 0.04 * imat_amount)
        split = (ax_p * rng.uniform(0.35, 0.5) + 4 + 3 * np.sin((Ys - cy_p) / rng.uniform(8, 20)))
        cleft = np.abs(side * Xs - split) < rng.uniform(0.4, 1.2) + 0.8 * imat_amount
        _paint(anat, blob.sl, musc & (side * Xs < split) & ~cleft, _A["multifidus"])
        _paint(anat, blob.sl, musc & (side * Xs > split) & ~cleft, _A["erector_spinae"])
        # fat behind the fascia and beside the compartment is subcutaneous
    anat[back & ~np.isin(anat, [_A["intermuscular_fat"], _A["multifidus"], _A["erector_spinae"]])] = \
        _A["subcutaneous_fat"]


def _abdominal_wall(anat: np.ndarray, rng: np.random.Generator, pr: _Proportions, o: _Outline,
                    pol: _Polar) -> None:
    """Paint rectus abdominis, the three lateral layers with fat planes between them, and the linea alba, as
    radial bands inside the fascia over visceral fat."""
    X, Y, r, R_f, inside = pol.X, pol.Y, pol.r, pol.R_f, pol.inside
    muscle, imat_amount, vat_index, b_ant = pr.muscle, pr.imat_amount, pr.vat_index, o.b_ant
    phi = np.arctan2(np.abs(X), -Y)  # 0 anterior, pi posterior
    side_x = np.sign(X)
    depth = R_f - r
    phi_end = float(np.arctan2(o.para_half + 8, -(o.y_tp + o.para_depth * 0.25)))
    for side in (-1, 1):
        s = side_x == side
        half_la = rng.uniform(2.0, 8.0) / b_ant + 0.01 * vat_index
        rect_w = muscle ** 0.3 * rng.uniform(55, 80) / b_ant
        t_r = muscle * rng.uniform(8, 13)
        t_eo, t_io, t_ta = (muscle * rng.uniform(5, 8), muscle * rng.uniform(5, 9), muscle * rng.uniform(3, 6))
        gap = rng.uniform(0.5, 1.3) + 0.4 * imat_amount
        ph = np.where(s & inside & (depth < 40), phi, -1.0)
        rect_prof = t_r * _smoothstep((ph - half_la) / 0.05) * _smoothstep((half_la + rect_w - ph) / 0.12)
        rect = (ph > half_la) & (depth >= 0) & (depth < rect_prof)
        o_start = half_la + rect_w * rng.uniform(0.75, 0.95)
        lat_prof = _smoothstep((ph - o_start) / 0.25) * _smoothstep((phi_end - ph) / 0.3)
        d0 = np.zeros_like(depth)
        for layer, tl in ((_A["external_oblique"], t_eo), (_A["internal_oblique"], t_io),
                          (_A["transversus_abdominis"], t_ta)):
            tk = tl * lat_prof * (0.3 + 0.7 * _smoothstep((phi_end - ph) / 0.5) if layer == _A["external_oblique"]
                                  else lat_prof)
            band = (ph > o_start) & (depth >= d0) & (depth < d0 + tk) & (tk > 0.7)
            anat[band & (anat == _A["visceral_fat"])] = layer
            plane = (ph > o_start) & (depth >= d0 + tk) & (depth < d0 + tk + gap) & (tk > 0.7)
            anat[plane & (anat == _A["visceral_fat"])] = _A["intermuscular_fat"]
            d0 = d0 + np.where(tk > 0.7, tk + gap, 0)
        anat[rect & (anat == _A["visceral_fat"])] = _A["rectus_abdominis"]
        la = s & (ph >= 0) & (ph <= half_la) & (depth >= 0) & (depth < rng.uniform(1.0, 2.5))
        anat[la & (anat == _A["visceral_fat"])] = _A["linea_alba"]


def _kidneys(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, h: dict[str, Any], pr: _Proportions,
             o: _Outline, pol: _Polar, psoas_ax: float) -> list[str]:
    """Paint the kidneys the habitus has (cortex, medulla, perirenal fat; sinus fat, pelvis and hilum vessels
    unless the slice is through a pole) lateral to the psoas; return their names."""
    r, R_f, vb_a, y_vb = pol.r, pol.R_f, o.vb_a, o.y_vb
    structures: list[str] = []
    for side, key in ((-1, "kidney_right"), (1, "kidney_left")):
        if not h[key]:
            continue
        structures.append(key)
        pole = rng.random() < 0.3
        ka, kb = (rng.uniform(14, 22), rng.uniform(12, 17)) if pole else (rng.uniform(24, 32), rng.uniform(18, 24))
        kx = side * (vb_a + 2 * psoas_ax + ka * 0.7 + rng.uniform(0, 10))
        ky = y_vb + rng.uniform(-8, 10)
        ang = side * rng.uniform(25, 50)
        prf = rng.uniform(3, 10) + 12 * max(pr.vat_index, 0)
        peri = _Blob(cv, rng, kx, ky, ka + prf, kb + prf * 0.8, ang, 0.08)
        _paint(anat, peri.sl, peri.mask() & (r[peri.sl] <= R_f[peri.sl] - 3), _A["perirenal_fat"],
               allowed=[_A["visceral_fat"]])
        kid = _Blob(cv, rng, kx, ky, ka, kb, ang, 0.04)
        _paint(anat, kid.sl, kid.mask(), _A["kidney_cortex"], allowed=[_A["perirenal_fat"], _A["visceral_fat"]])
        own = anat[kid.sl] == _A["kidney_cortex"]
        _paint(anat, kid.sl, own & kid.inner(rng.uniform(4, 7)), _A["kidney_medulla"])
        if not pole:  # hilum facing antero-medially: sinus fat, pelvis, vessels
            hx = kx - side * ka * 0.55 * np.cos(np.deg2rad(ang)) * 0.8
            hy = ky - kb * 0.35
            sinus = _Blob(cv, rng, hx, hy, ka * rng.uniform(0.35, 0.5), kb * rng.uniform(0.3, 0.45), ang, 0.15)
            _paint(anat, sinus.sl, sinus.mask(), _A["renal_sinus_fat"],
                   allowed=[_A["kidney_medulla"], _A["kidney_cortex"]])
            pel = _Blob(cv, rng, hx, hy, ka * 0.18, kb * 0.14, ang, 0.1)
            _paint(anat, pel.sl, pel.mask(), _A["renal_pelvis"], allowed=[_A["renal_sinus_fat"]])
            for _ in range(int(rng.integers(1, 4))):
                vx, vy = hx + rng.normal(0, 4), hy + rng.normal(0, 4)
                ves = _Blob(cv, rng, vx, vy, rng.uniform(2, 4), rng.uniform(1.5, 3), 0, 0.05)
                _paint(anat, ves.sl, ves.mask(), _A["renal_hilum_vessels"],
                       allowed=[_A["renal_sinus_fat"], _A["perirenal_fat"]])
    return structures


def _vessels_and_organs(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, h: dict[str, Any],
                        o: _Outline) -> list[str]:
    """Paint the aorta (calcified with age) and the inferior vena cava, the liver and spleen (large, or
    their tips) and the pancreas the habitus has; return the organs' names."""
    age, a_f, y_vb, vb_b = h["age"], o.a_f, o.y_vb, o.vb_b
    structures: list[str] = []
    aorta_r = rng.uniform(8, 12) * (1 + 0.004 * (age - 40))
    ao = _Blob(cv, rng, rng.uniform(4, 14), y_vb - vb_b - aorta_r - rng.uniform(1, 5), aorta_r, aorta_r, 0, 0.01)
    _paint(anat, ao.sl, ao.mask(), _A["aorta"])
    if age > 55 and rng.random() < 0.6:
        ring = ao.mask(1.0) & ~ao.mask(0.85) & (ao.rho < 2) & (rng.random(ao.rho.shape) < 0.08 * (age - 50) / 10)
        _paint(anat, ao.sl, ring, _A["aortic_calcification"])
    ivc = _Blob(cv, rng, -rng.uniform(16, 26), y_vb - vb_b - rng.uniform(6, 12), rng.uniform(9, 15),
                rng.uniform(5, 10), rng.uniform(-20, 20), 0.06)
    _paint(anat, ivc.sl, ivc.mask(), _A["inferior_vena_cava"], allowed=[_A["visceral_fat"]])
    if h.get("large_liver"):
        lv = _Blob(cv, rng, -a_f * rng.uniform(0.38, 0.5), rng.uniform(-25, 10), a_f * rng.uniform(0.45, 0.6),
                   rng.uniform(55, 85), rng.uniform(-25, 25), 0.08)
        _paint(anat, lv.sl, lv.mask(), _A["liver"], allowed=[_A["visceral_fat"]])
        structures.append("liver_large")
    elif h["liver_tip"]:
        lv = _Blob(cv, rng, -a_f * rng.uniform(0.5, 0.7), rng.uniform(-30, 15), rng.uniform(25, 45),
                   rng.uniform(30, 50), rng.uniform(-30, 30), 0.1)
        _paint(anat, lv.sl, lv.mask(), _A["liver"], allowed=[_A["visceral_fat"]])
        structures.append("liver_tip")
        if h["gallbladder"]:
            gb = _Blob(cv, rng, lv.cx + rng.uniform(5, 20), lv.cy - rng.uniform(15, 30), rng.uniform(10, 18),
                       rng.uniform(8, 14), rng.uniform(0, 90), 0.05)
            _paint(anat, gb.sl, gb.mask(), _A["gallbladder"], allowed=[_A["visceral_fat"], _A["liver"]])
            structures.append("gallbladder")
    if h.get("large_spleen"):
        sp = _Blob(cv, rng, a_f * rng.uniform(0.5, 0.65), rng.uniform(5, 35), a_f * rng.uniform(0.25, 0.38),
                   rng.uniform(35, 55), rng.uniform(-45, 0), 0.08)
        _paint(anat, sp.sl, sp.mask(), _A["spleen"], allowed=[_A["visceral_fat"], _A["perirenal_fat"]])
        structures.append("spleen_large")
    elif h["spleen_tip"]:
        spx = a_f * rng.uniform(0.55, 0.7)
        sp = _Blob(cv, rng, spx, y_vb + rng.uniform(-10, 15), rng.uniform(15, 28), rng.uniform(20, 35),
                   rng.uniform(-40, 0), 0.1)
        _paint(anat, sp.sl, sp.mask(), _A["spleen"], allowed=[_A["visceral_fat"], _A["perirenal_fat"]])
        structures.append("spleen_tip")
    if rng.random() < 0.3:
        pa = _Blob(cv, rng, rng.uniform(-25, -5), y_vb - vb_b - 2 * aorta_r - rng.uniform(5, 15),
                   rng.uniform(12, 22), rng.uniform(7, 12), rng.uniform(-20, 20), 0.12)
        _paint(anat, pa.sl, pa.mask(), _A["pancreas"], allowed=[_A["visceral_fat"]])
        structures.append("pancreas")
    return structures


def _posterior_wall_muscles(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, pr: _Proportions,
                            o: _Outline, pol: _Polar, psoas_axes: tuple[float, float],
                            ql_axes: tuple[float, float]) -> None:
    """Paint psoas and quadratus lumborum on both sides, then intermuscular fat streaks and islands inside
    every muscle."""
    (psoas_ax, psoas_ay), (ql_ax, ql_ay) = psoas_axes, ql_axes
    X, Y, vb_a, y_vb, imat_amount = pol.X, pol.Y, o.vb_a, o.y_vb, pr.imat_amount
    ql_x = vb_a * 0.5 + o.tp_len + ql_ax * 0.3
    ql_y = o.y_tp - ql_ay * 0.3
    for side in (-1, 1):
        ps = _Blob(cv, rng, side * (vb_a + psoas_ax * rng.uniform(0.55, 0.8)), y_vb - rng.uniform(-4, 6),
                   psoas_ax, psoas_ay, side * rng.uniform(-10, 30), 0.05)
        _paint(anat, ps.sl, ps.mask(), _A["psoas"])
        ql = _Blob(cv, rng, side * ql_x, ql_y, ql_ax, ql_ay, side * rng.uniform(15, 35), 0.06)
        _paint(anat, ql.sl, ql.mask(), _A["quadratus_lumborum"])
    # intermuscular fat streaks and islands inside every muscle
    n_streaks = int(rng.poisson(4 + 20 * imat_amount))
    muscle_ids = _WALL + _PARASPINAL + [_A["psoas"]]
    ys, xs = np.nonzero(np.isin(anat, muscle_ids))
    if len(ys):
        for _ in range(n_streaks):
            k = int(rng.integers(len(ys)))
            px = float(X[ys[k], xs[k]]); py = float(Y[ys[k], xs[k]])
            st_ = _Blob(cv, rng, px, py, rng.uniform(1.5, 6) * (0.6 + imat_amount), rng.uniform(0.5, 1.4),
                        rng.uniform(0, 180), 0.2)
            _paint(anat, st_.sl, st_.mask(), _A["intermuscular_fat"], allowed=muscle_ids)


def _vertebra(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, h: dict[str, Any], pr: _Proportions,
              o: _Outline) -> list[str]:
    """Paint the vertebra: body (or disc), pedicles, laminae, articular, spinous and transverse processes, the
    spinal canal, and rib tips when the habitus has them (then returns ``["rib_tips"]``)."""
    frame, vb_a, vb_b, y_vb, canal_y, tp_len, y_tp = pr.frame, o.vb_a, o.vb_b, o.y_vb, o.canal_y, o.tp_len, o.y_tp
    vb = _Blob(cv, rng, 0, y_vb, vb_a, vb_b, rng.uniform(-3, 3), 0.03)
    if h["disc_level"]:
        _paint(anat, vb.sl, vb.mask(), _A["intervertebral_disc"])
    else:
        _paint(anat, vb.sl, vb.mask(), _A["vertebra_cortex"])
        _paint(anat, vb.sl, vb.inner(rng.uniform(1.2, 2.2)), _A["vertebral_body_cancellous"])
    post: list[tuple[float, float, float, float, float]] = [  # cx, cy, a, b, angle
        (0, canal_y + 20 * frame, 3.5, 14 * frame, 0),  # spinous process
    ]
    for side in (-1, 1):
        post += [
            (side * 13 * frame, y_vb + vb_b + 4, 5.5, 8, side * 10),  # pedicle
            (side * 9 * frame, canal_y + 8, 10 * frame, 3.5, side * -35),  # lamina
            (side * 17 * frame, canal_y + 3, 6, 7, 0),  # articular processes
            (side * (vb_a * 0.5 + tp_len * 0.5), y_tp, tp_len * 0.5, 3.5, side * rng.uniform(-12, 4)),  # TP
        ]
    for cx, cy, a, b, ang in post:
        pb = _Blob(cv, rng, cx, cy, a, b, ang, 0.04)
        _paint(anat, pb.sl, pb.mask(), _A["vertebra_cortex"])
        _paint(anat, pb.sl, pb.inner(1.6), _A["posterior_elements_cancellous"])
    canal = _Blob(cv, rng, 0, canal_y, frame * rng.uniform(10, 12), frame * rng.uniform(7, 9), 0, 0.08)
    _paint(anat, canal.sl, canal.mask(), _A["spinal_canal"])
    if not h["rib_tips"]:
        return []
    for side in (-1, 1):
        ang = np.deg2rad(rng.uniform(25, 50))
        rr = np.interp(np.arctan2(np.sin(ang), side * np.cos(ang)), o.theta, o.r_f, period=2 * np.pi)
        rx, ry = side * np.cos(ang) * (rr - 8), np.sin(ang) * (rr - 8)
        rb = _Blob(cv, rng, rx, ry, rng.uniform(5, 9), rng.uniform(3, 5), rng.uniform(0, 180), 0.05)
        _paint(anat, rb.sl, rb.mask(), _A["rib"])
        _paint(anat, rb.sl, rb.inner(1.5), _A["posterior_elements_cancellous"])
    return ["rib_tips"]


def _table(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, size: int, spacing_mm: float) -> None:
    """Paint the table below the back, in the scanner frame (not rotated with the patient): foam in a shell."""
    rows = np.nonzero((anat > 0).any(axis=1))[0]
    top = (rows.max() + 1 + rng.uniform(0, 3) / spacing_mm) if len(rows) else size * 0.8
    thick = rng.uniform(8, 25) / spacing_mm
    jj = np.arange(size)[:, None]
    curve = top + (cv.xi / spacing_mm) ** 2 / (2 * rng.uniform(400, 1500) / spacing_mm)
    tab = (jj >= curve) & (jj < curve + thick) & (np.abs(cv.xi) < rng.uniform(200, 250))
    shell = tab & ((jj < curve + 2.0 / spacing_mm) | (jj >= curve + thick - 2.0 / spacing_mm))
    anat[tab & (anat == 0)] = _A["table_foam"]
    anat[shell & (anat == _A["table_foam"])] = _A["table"]


def _render_phantom(anat: np.ndarray, rng: np.random.Generator, h: dict[str, Any], pr: _Proportions,
                    params: ScanParams | None, size: int, spacing_mm: float,
                    width: float) -> tuple[np.ndarray, ScanParams]:
    """The int16 HU image of ``anat`` and the scan parameters used: drawn ones are noisier for larger bodies;
    muscles lose HU with fatty infiltration (the back most, the psoas least)."""
    infiltration = pr.infiltration
    p = params if params is not None else sample_scan_params(rng, fov_mm=size * spacing_mm)
    if params is None:  # larger bodies attenuate more: noisier
        p.noise_sd_hu = float(min(p.noise_sd_hu * np.clip(width / 380.0, 0.85, 1.25), 60.0))
    hu = sample_tissue_hu(rng, p)
    hu["muscle:wall"] = hu["muscle"] - infiltration * rng.uniform(0.7, 1.1)
    hu["muscle:psoas"] = hu["muscle"] - infiltration * rng.uniform(0.4, 0.8)
    hu["muscle:paraspinal"] = hu["muscle"] - infiltration * rng.uniform(0.9, 1.4)
    hu["muscle:arm"] = hu["muscle"] - infiltration * 0.6
    hu["fat:marrow"] = hu["fat"] + rng.uniform(-10, 60)
    if not h["oral_contrast"]:
        hu["oral_contrast"] = hu["bowel_fluid"]
    img, p = simulate_scan(anat, _TISSUE_KEYS, (spacing_mm, spacing_mm), rng, p, hu)
    return np.rint(np.clip(img, -32768, 32767)).astype(np.int16), p


def label_tissues(hu: np.ndarray, anatomy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and muscle-group labels from a rendered image and its anatomy map (BODYCOMP windows).

    Args:
        hu: HU image ``(J, I)``.
        anatomy: anatomy map ``(J, I)`` with :data:`ANATOMY_LABELS` values.

    Returns:
        ``(tissue, groups)``: uint8 ``(J, I)`` maps with :data:`TISSUE_LABELS` and :data:`GROUP_LABELS`
        values. Muscle compartments: HU -29..150 -> skeletal muscle, -190..-30 -> intermuscular fat;
        subcutaneous and visceral fat structures within -190..-30 -> their fat class.
    """
    comp = np.isin(anatomy, _COMPARTMENT)
    musc_win = (hu >= MUSCLE_WINDOW[0]) & (hu <= MUSCLE_WINDOW[1])
    fat_win = (hu >= FAT_WINDOW[0]) & (hu <= FAT_WINDOW[1])
    tissue = np.zeros(anatomy.shape, np.uint8)
    tissue[(anatomy == _A["subcutaneous_fat"]) & fat_win] = 2
    tissue[np.isin(anatomy, _VISCERAL_FAT) & fat_win] = 3
    tissue[comp & fat_win] = 4
    sm = comp & musc_win
    tissue[sm] = 1
    groups = np.zeros(anatomy.shape, np.uint8)
    groups[sm & (anatomy == _A["psoas"])] = 1
    groups[sm & np.isin(anatomy, _PARASPINAL)] = 2
    groups[sm & np.isin(anatomy, _WALL)] = 3
    # muscle-window pixels of the fat planes and streaks belong to the group of the muscle around them
    todo = sm & (groups == 0)
    grown = groups
    for _ in range(8):
        if not todo.any():
            break
        grown = ndimage.grey_dilation(grown, size=(5, 5))
        groups[todo] = grown[todo]
        todo &= groups == 0
    tissue[todo] = 0  # far from every muscle: not attributable to a group, so not counted as muscle
    return tissue, groups


def _bowel(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, h: dict[str, Any], vat_index: float,
           a_f: float, b_ant: float) -> None:
    """Bowel loops (wall + gas / fluid / contrast / feces) and mesenteric vessels in the free visceral fat."""
    vf = _A["visceral_fat"]
    free = anat == vf
    n_free = int(free.sum())
    if n_free == 0:
        return
    target = float(np.clip(0.78 - 0.28 * vat_index, 0.25, 0.85)) * rng.uniform(0.85, 1.1)
    covered = 0
    loops: list[tuple[float, float, float]] = []
    colon = [(-1, "ascending"), (1, "descending")]
    attempts = 0
    while covered < target * n_free and attempts < 120:
        attempts += 1
        if colon:
            side, _ = colon.pop(0)
            rad = rng.uniform(16, 28)
            cx = side * a_f * rng.uniform(0.55, 0.75)
            cy = rng.uniform(-b_ant * 0.1, b_ant * 0.4)
            kind = str(rng.choice(["feces", "gas", "fluid"], p=[0.6, 0.3, 0.1]))
        else:
            ys, xs = np.nonzero(free[:: 4, :: 4])
            if not len(ys):
                break
            k = int(rng.integers(len(ys)))
            cx, cy = float(cv.X[ys[k] * 4, xs[k] * 4]), float(cv.Y[ys[k] * 4, xs[k] * 4])
            rad = rng.uniform(7, 16)
            kind = str(rng.choice(["fluid", "gas", "collapsed", "contrast", "feces"],
                                  p=[0.35, 0.1, 0.3, 0.15 if h["oral_contrast"] else 0.0,
                                     0.1 + (0.0 if h["oral_contrast"] else 0.15)]))
        elong = rng.uniform(1.0, 2.4)
        blob = _Blob(cv, rng, cx, cy, rad * elong, rad * rng.uniform(0.7, 1.0), rng.uniform(0, 180), 0.12)
        m = blob.mask()
        view = anat[blob.sl]
        if m.sum() == 0 or (view[m] == vf).mean() < 0.8:
            continue
        m &= view == vf
        wall_t = rng.uniform(1.5, 3.0)
        view[m] = _A["bowel_wall"]
        lumen = m & blob.inner(wall_t)
        if kind == "collapsed":
            lumen &= blob.inner(rad * 0.7)
            view[lumen] = _A["bowel_fluid"] if rng.random() < 0.5 else _A["bowel_gas"]
        elif kind == "feces":
            view[lumen] = _A["feces"]
            bubbles = lumen & (rng.random(lumen.shape) < 0.05)
            bubbles = ndimage.binary_dilation(bubbles, iterations=1) & lumen
            view[bubbles] = _A["bowel_gas"]
        else:
            content = {"fluid": _A["bowel_fluid"], "gas": _A["bowel_gas"], "contrast": _A["bowel_contrast"]}[kind]
            view[lumen] = content
            if kind != "gas" and rng.random() < 0.4:  # gas-fluid level: gas rises anteriorly (supine)
                level = blob.cy - rad * rng.uniform(0.1, 0.6)
                view[lumen & (cv.Y[blob.sl] < level)] = _A["bowel_gas"]
        covered += int(m.sum())
        free[blob.sl] &= ~m
        loops.append((cx, cy, rad))
    # mesenteric vessels: small dots in the remaining fat
    ys, xs = np.nonzero(free[:: 3, :: 3])
    for _ in range(int(rng.integers(8, 40)) if len(ys) else 0):
        k = int(rng.integers(len(ys)))
        vx, vy = float(cv.X[ys[k] * 3, xs[k] * 3]), float(cv.Y[ys[k] * 3, xs[k] * 3])
        rv = rng.uniform(0.8, 3.0)
        ves = _Blob(cv, rng, vx, vy, rv, rv * rng.uniform(0.6, 1.0), rng.uniform(0, 180), 0.02)
        _paint(anat, ves.sl, ves.mask(), _A["mesenteric_vessels"], allowed=[vf])


def _arms(anat: np.ndarray, cv: _Canvas, rng: np.random.Generator, r_b: np.ndarray, theta: np.ndarray,
          sat_index: float, y_vb: float) -> None:
    """Forearms or elbows beside the abdomen: skin, fat, muscle, one or two bones (cortex + marrow)."""
    for side in (-1, 1):
        edge = float(np.interp(0.0 if side > 0 else np.pi, theta, r_b, period=2 * np.pi))
        ar = rng.uniform(30, 45) + 12 * min(sat_index, 2.0)
        cx = side * (edge + rng.uniform(-2, 30) + ar)
        cy = y_vb + rng.uniform(-60, 30)
        outer = _Blob(cv, rng, cx, cy, ar * rng.uniform(0.9, 1.1), ar * rng.uniform(0.75, 0.95),
                      rng.uniform(-30, 30), 0.05)
        _paint(anat, outer.sl, outer.mask(), _A["arm_skin"], allowed=[0])
        own = anat[outer.sl] == _A["arm_skin"]
        _paint(anat, outer.sl, own & outer.inner(2.0), _A["arm_fat"])
        fat_t = 3 + 8 * min(sat_index, 2.5)
        mus = _Blob(cv, rng, cx + rng.normal(0, 3), cy + rng.normal(0, 3), max(ar - fat_t, 8),
                    max(ar * 0.8 - fat_t, 6), rng.uniform(0, 180), 0.1)
        _paint(anat, mus.sl, mus.mask(), _A["arm_muscle"], allowed=[_A["arm_fat"]])
        bones = [(0.0, 0.0, rng.uniform(9, 13))] if rng.random() < 0.5 else \
            [(-9.0, 0.0, rng.uniform(5, 8)), (9.0, 2.0, rng.uniform(5, 8))]
        for bx, by, br in bones:
            b = _Blob(cv, rng, cx + bx, cy + by, br, br * rng.uniform(0.75, 1.0), rng.uniform(0, 180), 0.03)
            _paint(anat, b.sl, b.mask(), _A["arm_bone_cortex"], allowed=[_A["arm_muscle"], _A["arm_fat"]])
            _paint(anat, b.sl, b.inner(rng.uniform(1.5, 3.0)), _A["arm_bone_marrow"], allowed=[_A["arm_bone_cortex"]])


def make_l3_batch(seed: int, n: int, start: int = 0, **kwargs: Any) -> list[PhantomSample]:
    """``n`` phantoms, sample ``start + m`` drawn from its own stream of ``seed``: same (seed, index), same sample.

    Args:
        seed: base seed of the batch.
        n: number of samples.
        start: index of the first sample (so a data loader can draw sample ``k`` alone).
        **kwargs: passed to :func:`make_l3_phantom` (``size``, ``spacing_mm``, ``habitus``, ``params``).

    Returns:
        list of :class:`PhantomSample`.
    """
    return [make_l3_phantom(np.random.default_rng([int(seed), int(start + m)]), **kwargs) for m in range(n)]
