"""Procedural 3D torso CT phantoms with a labelled spine, for vertebral-level (L3) detection and body composition.

A torso is drawn in the patient's frame (x towards the patient's left, y towards the back, z towards the head,
mm; the LPS axes of the output image) from a spine plan: every vertebra from C6 to the coccyx gets a body
height, a disc below it, an antero-posterior position on a sagittal curve (cervical lordosis, thoracic
kyphosis, lumbar lordosis, the sacrum tilted by the sacral slope) and a tilt that follows the curve, so
endplates are not horizontal and the lumbar spine bows forward. Everything else hangs on the spine plan:

* the vertebrae (body with cortical shell and endplates, pedicles, laminae, spinous, transverse and articular
  processes), the intervertebral discs (wedge-shaped where the curve bends), the spinal canal and cord;
* ribs on every rib-bearing vertebra (a curved, descending tube from the costovertebral joint round the chest
  wall; the 11th and 12th floating and short) with costal cartilage, the sternum, the sacrum with its alae,
  the hip bones (iliac wings from the sacro-iliac joints to the crest at about L4-L5, acetabulum, pubis,
  ischium) and the femoral heads, necks and shafts;
* the body wall per slice (skin, subcutaneous fat by habitus, the abdominal wall muscles with fat planes, the
  chest wall, the gluteal muscles, the paraspinal compartment, psoas growing from L1 to L5 into the
  iliopsoas, quadratus lumborum), the diaphragm domes with the lung bases and posterior recesses above them,
  liver, spleen, stomach and duodenum, pancreas, kidneys with sinus and perirenal fat, heart, aorta and
  iliac arteries, vena cava, colon and small-bowel loops with gas, fluid, oral contrast or feces, bladder;
  arms beside the abdomen in a share of scans, pedicle screws with rods sometimes.

The drawing is split by what it draws: :mod:`~mskseg.synth.torso_shapes` (label tables, the grid, tubes and
ellipsoids), :mod:`~mskseg.synth.torso_spine` (the spine plan, vertebrae, ribs, pelvis, screws),
:mod:`~mskseg.synth.torso_body` (body outline, wall muscles and fat, arms) and
:mod:`~mskseg.synth.torso_organs` (organs, vessels, bowel); this module plans a torso, renders it and holds the
public API.

The image is rendered with :mod:`mskseg.synth.artifacts` (tissue HU from :func:`~mskseg.synth.tissues.sample_tissue_hu`,
texture, slice thickness, blur, beam-hardening and metal streaks, table, noise, field of view). The texture and
the quantum noise are drawn for a small pool of slices and reused with random in-plane shifts: drawing them for
every slice of a large volume is slow, and shifted correlated noise is indistinguishable from fresh noise to a
reader or a network.

Anatomical variants (``variant``) and the truth of the vertebral level
-------------------------------------------------------------------------
Vertebrae are numbered from the top (C7, then T1 carrying the first ribs, downwards), which is the reference
standard of whole-spine imaging. L3 is the third vertebra below T12 in that numbering; in normal anatomy it is
also the third vertebra below the last rib-bearing vertebra and the third above the sacrum. In the variants the
two shortcut counts disagree with the truth, which is what a level detector must notice and report:

=================  ==============================================  ================  ==================
variant            anatomy                                         counted from the  counted up from
                                                                   last rib -> "L3"  the sacrum -> "L3"
=================  ==============================================  ================  ==================
``normal``         12 rib pairs, L1-L5, sacrum                     L3                L3
``six_lumbar``     12 rib pairs, L1-L6 (L6 rib-less, mobile)       L3                L4
``sacralised_L5``  12 rib pairs, L5 fused to the sacrum (wide      L3                L2
                   alae, no real L5-S1 disc), 4 mobile lumbar
``ribs_11``        11 rib pairs: T12 bears no ribs                 L2                L3
``ribs_13``        13 rib pairs: L1 bears small ribs               L4                L3
=================  ==============================================  ================  ==================

The label map always carries the true numbering (``vertebrae_L6`` exists only in ``six_lumbar``; the fused L5
of ``sacralised_L5`` is still ``vertebrae_L5``; the lumbar ribs of ``ribs_13`` are ``rib_left_13`` /
``rib_right_13``). :data:`VARIANT_COUNTS` holds the table and ``TorsoSample.meta["level_counts"]`` the slices a
counter from the ribs or from the sacrum would pick.

Body-composition labels (:attr:`TorsoSample.tissue`) follow the rule of :mod:`mskseg.synth.phantom` on every
slice: inside the muscle compartments (abdominal and chest wall, gluteal, paraspinal, psoas and iliacus,
quadratus lumborum) HU -29..150 is skeletal muscle and -190..-30 intermuscular fat; subcutaneous fat and the fat
inside the body wall (visceral, perirenal, renal sinus, mediastinal and pelvic fat, all "visceral_fat") within
-190..-30 get their class. Skin, organs, bone marrow, arms and the diaphragm are never labelled.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..image import Image
from . import artifacts
from .phantom import FAT_WINDOW, MUSCLE_WINDOW, TISSUE_LABELS
from .phantom import sample_habitus as sample_l3_habitus
from .tissues import TISSUE_TEXTURE_SD, ScanParams, base_tissue, sample_scan_params, sample_tissue_hu
from .torso_body import body_profiles, draw_arms, draw_body_wall, imat_streaks
from .torso_organs import draw_organs, finish_landmarks
from .torso_shapes import ANATOMY_LABELS, MUSCLE_COMPARTMENT, TISSUE_KEYS, TORSO_LABELS, VISCERAL_FAT_VALUES
from .torso_shapes import ANATOMY_VALUE as _A
from .torso_shapes import TorsoGrid, TorsoMaps
from .torso_spine import PlannedVertebra, draw_pelvis, draw_ribs, draw_screws, draw_spine, landmarks, plan_spine


__all__ = ["ANATOMY_LABELS", "FOV_PRESETS", "TORSO_LABELS", "VARIANTS", "VARIANT_COUNTS", "TorsoSample",
           "label_body_composition", "make_demo_ct", "make_torso", "sample_torso_habitus"]

#: Anatomical variants and their frequency when drawn (about 20 % transitional anatomy).
VARIANTS: dict[str, float] = {"normal": 0.80, "six_lumbar": 0.05, "sacralised_L5": 0.06, "ribs_11": 0.045,
                              "ribs_13": 0.045}

#: Which vertebra a shortcut count calls "L3" in each variant (see the module docstring).
VARIANT_COUNTS: dict[str, dict[str, Any]] = {
    "normal": {"rib_pairs": 12, "lumbar": 5, "l3_from_ribs": "L3", "l3_from_sacrum": "L3"},
    "six_lumbar": {"rib_pairs": 12, "lumbar": 6, "l3_from_ribs": "L3", "l3_from_sacrum": "L4"},
    "sacralised_L5": {"rib_pairs": 12, "lumbar": 5, "l3_from_ribs": "L3", "l3_from_sacrum": "L2"},
    "ribs_11": {"rib_pairs": 11, "lumbar": 5, "l3_from_ribs": "L2", "l3_from_sacrum": "L3"},
    "ribs_13": {"rib_pairs": 13, "lumbar": 5, "l3_from_ribs": "L4", "l3_from_sacrum": "L3"},
}

#: Named fields of view: (top level, bottom level); ``femoral_heads`` is the bottom of the femoral heads.
FOV_PRESETS: dict[str, tuple[str, str]] = {
    "chest_abdomen_pelvis": ("T1", "femoral_heads"),
    "abdomen_pelvis": ("T10", "femoral_heads"),
    "abdomen": ("T10", "S1"),
    "tight_abdomen": ("L1", "L5"),
}
_FOV_FREQUENCIES = {"abdomen": 0.35, "abdomen_pelvis": 0.25, "chest_abdomen_pelvis": 0.2, "tight_abdomen": 0.2}


@dataclass
class TorsoSample:
    """One synthetic torso CT with its labels and the truth of its vertebral levels.

    Attributes:
        image: CT, int16 HU array ``(K, J, I)``, axial slices, identity direction (LPS), ``k`` increasing
            towards the head; ``metadata`` has Modality, PatientSex, PatientAge, PatientSize (m),
            PatientWeight (kg) and ``synthetic``.
        labels: uint8 ``(K, J, I)`` anatomy labels on the image grid, values of :data:`TORSO_LABELS`.
        tissue: uint8 ``(K, J, I)`` body-composition labels on every slice, values of ``tissue_names``
            (1 skeletal_muscle, 2 subcutaneous_fat, 3 visceral_fat, 4 intermuscular_fat).
        label_names: ``{value: class name}`` of the classes present in ``labels``.
        tissue_names: ``{value: class name}`` of ``tissue``.
        level_centres: LPS z (mm) of the centre of every vertebral body of the spine (in the field of view or
            not), from the top down, with ``"S1"`` the first sacral segment.
        level_slices: slice index of each body centre inside the field of view, ordered superior -> inferior.
        l3_index: slice of the L3 body centre (the truth), ``None`` when L3 is outside the field of view.
        variant: anatomical variant (a key of :data:`VARIANTS`).
        anatomy: uint8 ``(K, J, I)`` fine structures (values of :data:`ANATOMY_LABELS`) the image was rendered
            from.
        meta: habitus, scan parameters, field of view, variant counts, timings.
    """

    image: Image
    labels: Image
    tissue: Image
    label_names: dict[int, str]
    tissue_names: dict[int, str]
    level_centres: dict[str, float]
    level_slices: dict[str, int]
    l3_index: int | None
    variant: str
    anatomy: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


# ============================================================================================ public API
def sample_torso_habitus(rng: np.random.Generator, **overrides: Any) -> dict[str, Any]:
    """Draw a body: the L3 phantom's habitus (sex, age, BMI, sarcopenia, arms) plus height, weight, bone density.

    Args:
        rng: random generator.
        **overrides: any key of the returned dict (``bmi=35``, ``sex="F"``, ``osteoporotic=True``,
            ``arms="down"``, ``height_m=1.8``).

    Returns:
        dict of plain values: sex, age, bmi, sarcopenic, arms, height_m, weight_kg, osteoporotic, frame, ...
    """
    base_keys = {"sex", "age", "bmi", "sarcopenic", "arms"}
    h = sample_l3_habitus(rng, organs=False, **{k: v for k, v in overrides.items() if k in base_keys})
    male = h["sex"] == "M"
    height = float(np.clip(rng.normal(1.77 if male else 1.64, 0.07), 1.45, 2.02))
    extra = {
        "height_m": height,
        "osteoporotic": bool(rng.random() < (0.08 + 0.3 * max(h["age"] - 50, 0) / 40) * (1.0 if male else 1.6)),
        "frame": float((1.0 if male else 0.92) * (height / (1.77 if male else 1.64)) ** 0.5 * rng.uniform(0.95, 1.05)),
        "scoliosis_mm": float(rng.normal(0, 4) if rng.random() < 0.8 else rng.normal(0, 15)),
        "bowel_fill": float(rng.uniform(0.4, 1.0)),
        "bladder_fill": float(rng.uniform(0.2, 1.0)),
    }
    h = {k: v for k, v in h.items() if k in base_keys or k in ("oral_contrast", "gallbladder")}
    h.update(extra)
    h.update({k: v for k, v in overrides.items() if k not in base_keys})
    h["weight_kg"] = float(h.get("weight_kg") or round(h["bmi"] * h["height_m"] ** 2, 1))
    return h


def make_torso(rng: np.random.Generator, *, z_range: str | tuple[str, str] | tuple[float, float] | None = None,
               spacing_mm: Sequence[float] | None = None, variant: str | None = None,
               habitus: dict[str, Any] | None = None, params: ScanParams | None = None, size: int | None = None,
               phase: str | None = None) -> TorsoSample:
    """Draw one 3D torso CT with vertebra, rib, organ and body-composition labels.

    Args:
        rng: random generator (the only source of randomness: same state, same sample).
        z_range: field of view along z: a preset name of :data:`FOV_PRESETS` (``"abdomen"`` = T10..S1,
            ``"chest_abdomen_pelvis"`` = T1..femoral heads, ``"abdomen_pelvis"``, ``"tight_abdomen"`` =
            L1..L5), a pair of level names (``("T10", "S1")``; ``"femoral_heads"`` allowed as the lower
            end), or a pair of numbers: mm from the L3 body centre, superior positive (``(-150.0, 120.0)``).
            Drawn from the presets, with random margins, when None.
        spacing_mm: ``(i, j, k)`` voxel spacing (mm). In-plane drawn in 0.6-1.0 mm for 512 pixels (scaled
            by 512 / size for smaller images) from the body width, slice spacing drawn in 0.625-5 mm.
        variant: ``None`` (drawn with :data:`VARIANTS` frequencies) or a key of :data:`VARIANTS`.
        habitus: overrides of :func:`sample_torso_habitus` (``{"bmi": 40, "arms": "down"}``).
        params: scan parameters (contrast phase, noise, thickness, metal, ...); drawn when None.
        size: in-plane pixels (square); 512 when None. Smaller sizes (256) are for fast tests.
        phase: contrast phase override (``"native"``, ``"arterial"``, ``"portal"``).

    Returns:
        :class:`TorsoSample`.

    Raises:
        ValueError: unknown variant, preset or level, a field of view outside the torso (above T1 or below the
            femoral heads), or a spacing outside 0.3-6 mm.
    """
    t_start = time.perf_counter()
    if variant is None:
        variant = str(rng.choice(list(VARIANTS), p=np.array(list(VARIANTS.values())) / sum(VARIANTS.values())))
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {list(VARIANTS)}")
    size = 512 if size is None else int(size)
    if not 32 <= size <= 1024:
        raise ValueError(f"size {size} is outside 32..1024 pixels")
    # The helpers draw from ``rng`` in the order they are called here: keep that order.
    h = sample_torso_habitus(rng, **(habitus or {}))
    male = h["sex"] == "M"
    age, frame = h["age"], h["frame"]
    sat_index, vat_index, muscle, infiltration, imat_amount = _draw_torso_proportions(rng, h)

    verts = plan_spine(rng, variant, frame)
    byname = {v.name: v for v in verts}
    y_l3 = frame * rng.uniform(12, 24) + 6 * max(vat_index, 0)
    for v in verts:
        v.y += y_l3
    lm = landmarks(rng, verts, frame, male)
    fov_name, (z_lo, z_hi), spacing, g = _torso_grid(rng, z_range, byname, lm, spacing_mm, size, h, sat_index,
                                                     vat_index)
    nk, shift = g.nk, g.shift
    m = TorsoMaps(g)

    # ---------------------------------------------------------------- anatomy
    state = {"sat_index": sat_index, "vat_index": vat_index, "muscle": muscle, "imat": imat_amount,
             "male": male, "age": age, "frame": frame}
    state.update(osteoporotic=h["osteoporotic"], scoliosis_mm=h["scoliosis_mm"])
    body = body_profiles(rng, g, verts, lm, state, h)
    finish_landmarks(rng, lm, verts, body, state)
    # the technologist centres the body in the field of view (give or take)
    n_t = len(body["theta"])
    y_front = -np.median(body["r_b"][:, n_t // 4])
    y_mid = 0.5 * (y_front + float(np.median(body["y_flat"])))
    g.set_shift((shift[0], shift[1] - y_mid))
    draw_body_wall(rng, m, body, lm, state)
    if h["arms"] == "down":
        draw_arms(rng, m, body, lm, state)
    draw_organs(rng, m, body, verts, lm, state, h)
    draw_spine(rng, m, verts, state)
    draw_ribs(rng, m, verts, body, lm, state)
    draw_pelvis(rng, m, verts, body, lm, state)
    imat_streaks(rng, m, state)
    p = _torso_scan_params(rng, params, phase, h, size, spacing)
    screws = draw_screws(rng, m, verts) if p.metal else []
    t_anatomy = time.perf_counter() - t_start

    # ---------------------------------------------------------------- render
    hu = _torso_tissue_hu(rng, p, h, infiltration)
    img = _render(rng, m.anat, g, p, hu, body)
    tissue = label_body_composition(img, m.anat)
    outside = artifacts.outside_fov((g.nj, g.ni), spacing, p.fov_mm)
    if outside.any() and (m.anat[:, outside] > 0).any():  # nothing is imaged outside the circle
        m.lab[:, outside] = 0
        tissue[:, outside] = 0

    # ---------------------------------------------------------------- outputs
    z_offset = float(rng.uniform(-500, 100))
    origin = (-(size - 1) / 2.0 * spacing[0], -(size - 1) / 2.0 * spacing[1], float(g.z0 + z_offset))
    image, labels, tissue_img = _torso_images(img, m.lab, tissue, spacing, origin, h, fov_name, p.phase)
    level_centres, level_slices = _level_truth(verts, z_offset, g.z0, spacing, nk)
    present = np.flatnonzero(np.bincount(m.lab.ravel(), minlength=256))
    label_names = {int(v): TORSO_LABELS[int(v)] for v in present if int(v) in TORSO_LABELS}
    counts = dict(VARIANT_COUNTS[variant])
    counts["l3_from_ribs_slice"] = level_slices.get(counts["l3_from_ribs"])
    counts["l3_from_sacrum_slice"] = level_slices.get(counts["l3_from_sacrum"])
    meta = {**h, "variant": variant, "fov": fov_name, "z_range_mm": [float(z_lo), float(z_hi)],
            "z_offset_mm": z_offset, "sat_index": sat_index, "vat_index": vat_index, "muscle_scale": muscle,
            "fatty_infiltration_hu": infiltration, "imat_amount": imat_amount, "phase": p.phase,
            "spacing_mm": list(spacing), "scan": p.as_dict(), "level_counts": counts,
            "iliac_crest_z": float(lm["crest"] + z_offset), "pedicle_screws": screws,
            "generator": "torso-1", "seconds_anatomy": round(t_anatomy, 3),
            "seconds_total": round(time.perf_counter() - t_start, 3)}
    return TorsoSample(image, labels, tissue_img, label_names, dict(TISSUE_LABELS), level_centres, level_slices,
                       level_slices.get("L3"), variant, m.anat, meta)


def _draw_torso_proportions(rng: np.random.Generator, h: dict[str, Any]) -> tuple[float, float, Any, Any, float]:
    """``(sat_index, vat_index, muscle scale, fatty infiltration (HU), IMAT amount)`` of the habitus."""
    male = h["sex"] == "M"
    bmi, age = h["bmi"], h["age"]
    sat_index = float(np.clip((bmi - 16.0) / 12.0, 0.03, 3.0)) * (1.25 if not male else 0.9)
    vat_index = float(np.clip((bmi - 20.0) / 14.0, -0.25, 2.0)) * (1.25 if male else 0.8) * rng.uniform(0.7, 1.3)
    muscle = (1.0 if male else 0.85) * rng.uniform(0.9, 1.1) * (1 + 0.008 * np.clip(bmi - 25, -8, 15))
    if h["sarcopenic"]:
        muscle *= rng.uniform(0.65, 0.82)
    infiltration = max(0.0, (age - 30) / 60) * 12 + (rng.uniform(8, 25) if h["sarcopenic"] else 0) +\
        max(0, bmi - 30) * 0.5
    imat_amount = float(np.clip(0.1 + 0.4 * (age - 20) / 70 + (0.3 if h["sarcopenic"] else 0)
                                + 0.015 * max(0, bmi - 28), 0.05, 1.0) * rng.uniform(0.6, 1.3))
    return sat_index, vat_index, muscle, infiltration, imat_amount


def _torso_grid(rng: np.random.Generator, z_range, byname: dict[str, PlannedVertebra], lm: dict[str, float],
                spacing_mm: Sequence[float] | None, size: int, h: dict[str, Any], sat_index: float,
                vat_index: float) -> tuple[str, tuple[float, float], tuple[float, ...], TorsoGrid]:
    """``(field-of-view name, (z_lo, z_hi), spacing, grid)``: the field of view along z, the voxel spacing
    ``(i, j, k)`` (drawn from the body width when not given) and the grid with a drawn shift.

    Raises:
        ValueError: a spacing that is not 3 values in 0.3-6 mm, or more than 2000 slices.
    """
    fov_name, (z_lo, z_hi) = _resolve_fov(rng, z_range, byname, lm)
    if spacing_mm is None:
        sk = float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0],
                              p=[0.05, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.15]))
        width = 2 * (h["frame"] * 135 * (1 + 0.3 * max(vat_index, 0)) + 10 + 24 * sat_index) +\
            (160 if h["arms"] == "down" else 0)
        s_in = float(np.clip(width * rng.uniform(1.0, 1.2) / 512, 0.6, 1.0)) * 512 / size
        spacing = (s_in, s_in, sk)
    else:
        spacing = tuple(float(s) for s in spacing_mm)
        if len(spacing) != 3:
            raise ValueError(f"spacing_mm must have 3 values (i, j, k), got {spacing_mm!r}")
    if not all(0.3 <= s <= 6.0 for s in spacing):
        raise ValueError(f"spacing {spacing} mm is outside 0.3-6 mm")
    nk = int(np.floor((z_hi - z_lo) / spacing[2])) + 1
    if nk > 2000:
        raise ValueError(f"{nk} slices: the field of view {z_hi - z_lo:.0f} mm at {spacing[2]} mm is too many")
    shift = (float(rng.normal(0, 8)), float(rng.normal(0, 8)))
    return fov_name, (z_lo, z_hi), spacing, TorsoGrid(size, size, nk, spacing, shift, z_lo)


def _torso_scan_params(rng: np.random.Generator, params: ScanParams | None, phase: str | None, h: dict[str, Any],
                       size: int, spacing: tuple[float, ...]) -> ScanParams:
    """The scan parameters: a copy of ``params``, or drawn (field of view and slice thickness from the grid);
    ``phase`` overrides the contrast phase; an osteoporotic habitus makes the scan osteoporotic."""
    p = params if params is not None else sample_scan_params(
        rng, fov_mm=float(size * spacing[0] * rng.uniform(0.95, 1.0)),
        slice_thickness_mm=float(min(5.0, spacing[2] * rng.choice([1.0, 1.0, 1.0, 1.5, 2.0]))),
        osteoporotic=h["osteoporotic"])
    if params is not None:
        p = dataclasses.replace(params)
    if phase is not None:
        p.phase = phase
    p.osteoporotic = bool(p.osteoporotic or h["osteoporotic"])
    return p


def _torso_tissue_hu(rng: np.random.Generator, p: ScanParams, h: dict[str, Any],
                     infiltration: float) -> dict[str, float]:
    """Tissue HU of this scan, with the torso's own keys: muscles by fatty infiltration, heart, bladder wall,
    marrow, cord, portal vein; bowel contents without oral contrast unless the habitus has it."""
    hu = sample_tissue_hu(rng, p)
    hu["muscle:wall"] = hu["muscle"] - infiltration * rng.uniform(0.7, 1.1)
    hu["muscle:psoas"] = hu["muscle"] - infiltration * rng.uniform(0.4, 0.8)
    hu["muscle:paraspinal"] = hu["muscle"] - infiltration * rng.uniform(0.9, 1.4)
    hu["muscle:arm"] = hu["muscle"] - infiltration * 0.6
    hu["muscle:heart"] = 0.6 * hu["muscle"] + 0.4 * hu["blood"]
    hu["muscle:bladder"] = hu["muscle"]
    hu["fat:marrow"] = hu["fat"] + rng.uniform(-10, 60)
    hu["csf:cord"] = hu["csf"] + rng.uniform(15, 30)
    hu["venous_blood:portal"] = hu["venous_blood"] + (rng.uniform(10, 40) if p.phase == "portal" else 0.0)
    if not h.get("oral_contrast", False):
        hu["oral_contrast"] = hu["bowel_fluid"]
    return hu


def _torso_images(img: np.ndarray, lab: np.ndarray, tissue: np.ndarray, spacing: tuple[float, ...],
                  origin: tuple[float, float, float], h: dict[str, Any], fov_name: str,
                  phase: str) -> tuple[Image, Image, Image]:
    """``(CT, anatomy labels, body-composition labels)`` on one grid; the CT carries DICOM-like patient and
    study metadata, the label maps only ``synthetic``."""
    metadata = {
        "Modality": "CT", "PatientSex": h["sex"], "PatientAge": f"{int(round(h['age'])):03d}Y",
        "PatientSize": round(h["height_m"], 2), "PatientWeight": round(h["weight_kg"], 1),
        "BodyPartExamined": "CHEST_ABDOMEN_PELVIS" if fov_name == "chest_abdomen_pelvis" else "ABDOMEN",
        "ContrastBolusAgent": "" if phase == "native" else "IV contrast", "synthetic": True,
    }
    image = Image(img, spacing, origin, None, metadata)
    labels = image.with_array(lab, keep_metadata=False)
    labels.metadata = {"synthetic": True}
    tissue_img = image.with_array(tissue, keep_metadata=False)
    tissue_img.metadata = {"synthetic": True}
    return image, labels, tissue_img


def _level_truth(verts: list[PlannedVertebra], z_offset: float, z0: float, spacing: tuple[float, ...],
                 nk: int) -> tuple[dict[str, float], dict[str, int]]:
    """``(level -> LPS z of its body centre, level -> slice index inside the field of view)`` of every vertebra
    from C7 down and S1 (not the other sacral or coccygeal segments)."""
    level_centres: dict[str, float] = {}
    level_slices: dict[str, int] = {}
    for v in verts:
        if v.kind == "coccygeal" or (v.kind == "sacral" and v.name != "S1"):
            continue
        if v.name in ("C6",):
            continue
        zc = float(v.z + z_offset)
        level_centres[v.name] = zc
        k = int(round((v.z - z0) / spacing[2]))
        if 0 <= k < nk:
            level_slices[v.name] = k
    return level_centres, level_slices


def make_demo_ct(seed: int = 0) -> TorsoSample:
    """A fixed abdominal CT for the sarcopenia demo: normal anatomy, 512 x 512, 0.78 mm pixels, 2.5 mm slices,
    T11..S1, portal phase, a 62-year-old man of 1.76 m and 82 kg (metadata as a DICOM reader gives them).

    Args:
        seed: random seed (0 gives the documented demo volume).

    Returns:
        :class:`TorsoSample` whose image metadata has Modality CT, PatientSex, PatientAge, PatientSize (m),
        PatientWeight (kg) and a SeriesDescription.
    """
    rng = np.random.default_rng([int(seed), 20240611])
    habitus = {"sex": "M", "age": 62.0, "bmi": 82.0 / 1.76 ** 2, "height_m": 1.76, "weight_kg": 82.0,
               "sarcopenic": False, "arms": "up", "osteoporotic": False, "scoliosis_mm": 2.0}
    params = sample_scan_params(rng, phase="portal", noise_sd_hu=14.0, low_dose=False, metal=False,
                                slice_thickness_mm=2.5, fov_mm=400.0, padding_hu=-1024.0, table=True,
                                osteoporotic=False, fatty_liver=False, streak_strength=10.0, hu_offset=0.0)
    sample = make_torso(rng, z_range=("T11", "S1"), spacing_mm=(0.78125, 0.78125, 2.5), variant="normal",
                        habitus=habitus, params=params, size=512)
    sample.image.metadata.update({"SeriesDescription": "Synthetic abdominal CT (MSKSeg demo)",
                                  "PatientID": "MSKSEG-DEMO", "BodyPartExamined": "ABDOMEN"})
    return sample


def label_body_composition(hu: np.ndarray, anatomy: np.ndarray) -> np.ndarray:
    """Body-composition labels from a rendered image and its anatomy map (BODYCOMP windows, every slice).

    Args:
        hu: HU array ``(K, J, I)`` or ``(J, I)``.
        anatomy: anatomy map of the same shape with :data:`ANATOMY_LABELS` values.

    Returns:
        uint8 array of the same shape with :data:`~mskseg.synth.phantom.TISSUE_LABELS` values: muscle
        compartments -29..150 -> 1 skeletal muscle, -190..-30 -> 4 intermuscular fat; subcutaneous fat within
        -190..-30 -> 2; visceral (incl. perirenal, sinus, mediastinal) fat within -190..-30 -> 3.
    """
    kind_lut = np.zeros(256, np.uint8)  # 1 muscle compartment, 2 subcutaneous fat, 3 visceral fat
    kind_lut[MUSCLE_COMPARTMENT] = 1
    kind_lut[_A["subcutaneous_fat"]] = 2
    kind_lut[VISCERAL_FAT_VALUES] = 3
    # window code of every HU value: 1 fat window, 2 muscle window (the windows do not overlap)
    offset = 4096
    hu_axis = np.arange(-offset, offset)
    win_lut = np.zeros(2 * offset, np.uint8)
    win_lut[(hu_axis >= FAT_WINDOW[0]) & (hu_axis <= FAT_WINDOW[1])] = 1
    win_lut[(hu_axis >= MUSCLE_WINDOW[0]) & (hu_axis <= MUSCLE_WINDOW[1])] = 2
    # (kind, window) -> tissue label
    final = np.zeros((4, 3), np.uint8)
    final[1, 1], final[1, 2], final[2, 1], final[3, 1] = 4, 1, 2, 3
    hu_i = np.clip(np.rint(hu), -offset, offset - 1).astype(np.int32) + offset
    return final.ravel()[kind_lut[anatomy].astype(np.int32) * 3 + win_lut[hu_i]]


def _level_z(name: str, byname: dict[str, PlannedVertebra], lm: dict[str, float], top: bool) -> float:
    if name == "femoral_heads":
        return lm["femoral_heads"] if not top else lm["head_z"] + lm["head_r"]
    if name in ("sacrum", "S1"):
        name = "S1"
    if name not in byname:
        raise ValueError(f"unknown level {name!r}: use T1..T12, L1..L5 (L6 only in the six_lumbar variant), "
                         "S1 or femoral_heads")
    v = byname[name]
    return v.z + (v.h / 2 if top else -v.h / 2)


def _resolve_fov(rng: np.random.Generator, z_range, byname, lm) -> tuple[str, tuple[float, float]]:
    """``(name, (z_lo, z_hi))`` in patient mm for the requested field of view."""
    margin = lambda: float(rng.uniform(3, 30))  # noqa: E731
    if z_range is None:
        name = str(rng.choice(list(_FOV_FREQUENCIES), p=list(_FOV_FREQUENCIES.values())))
        top, bottom = FOV_PRESETS[name]
    elif isinstance(z_range, str):
        if z_range not in FOV_PRESETS:
            raise ValueError(f"unknown field of view {z_range!r}; use one of {list(FOV_PRESETS)}")
        name = z_range
        top, bottom = FOV_PRESETS[name]
    else:
        if len(z_range) != 2:
            raise ValueError(f"z_range must be a preset name or a pair, got {z_range!r}")
        a, b = z_range
        number = (int, float, np.floating, np.integer)
        if isinstance(a, number) and isinstance(b, number):
            lo, hi = sorted((float(a), float(b)))
            if lo < lm["bottom_limit"] or hi > lm["top_limit"]:
                raise ValueError(f"z_range {z_range} mm leaves the torso this generator draws "
                                 f"({lm['bottom_limit']:.0f}..{lm['top_limit']:.0f} mm from the L3 centre)")
            return "mm", (lo, hi)
        name = "levels"
        top, bottom = str(a), str(b)
    hi = _level_z(top, byname, lm, True) + margin()
    lo = _level_z(bottom, byname, lm, False) - margin()
    if hi < lo:
        raise ValueError(f"z_range {z_range!r}: {top} lies below {bottom}")
    return name, (max(lo, lm["bottom_limit"]), min(hi, lm["top_limit"]))


# ============================================================================================ rendering
def _render(rng: np.random.Generator, anat: np.ndarray, g: TorsoGrid, p: ScanParams, hu: dict[str, float],
            body: dict[str, Any]) -> np.ndarray:
    """Anatomy map -> int16 HU volume with texture, slice thickness, blur, streaks, table, noise, FOV."""
    spacing = (g.si, g.sj, g.sk)
    lut_mean = np.zeros(256, np.float32)
    lut_sd = np.zeros(256, np.float32)
    for value, key in TISSUE_KEYS.items():
        lut_mean[value] = hu.get(key, hu.get(base_tissue(key), 0.0))
        lut_sd[value] = TISSUE_TEXTURE_SD.get(key, TISSUE_TEXTURE_SD.get(base_tissue(key), 5.0))
    img = lut_mean[anat]
    # texture from a pool of slices (see the module docstring), shifted per slice
    pool = min(g.nk, 6)
    fine = artifacts.correlated_noise((pool, g.nj, g.ni), rng, spacing, 0.7)
    coarse = artifacts.correlated_noise((pool, g.nj, g.ni), rng, spacing, 3.0)
    tex = 0.8 * fine + 0.6 * coarse
    del fine, coarse
    for k in range(g.nk):
        t = np.roll(tex[k % pool], (int(rng.integers(g.nj)), int(rng.integers(g.ni))), axis=(0, 1))
        img[k] += lut_sd[anat[k]] * t
    if p.slice_thickness_mm > g.sk * 1.05:
        img = artifacts.slice_thickness(img, spacing, p.slice_thickness_mm)
    img = artifacts.blur(img, spacing, p.blur_fwhm_mm)
    metal = anat == _A["metal"]
    if metal.any():
        ks = np.flatnonzero(metal.any(axis=(1, 2)))
        sub = img[ks]
        sub = artifacts.beam_hardening_streaks(sub, rng, float(rng.uniform(150, 450)), metal[ks])
        img[ks] = sub
    if p.streak_strength > 0:
        # streaks change slowly along z: draw them on every few slices and share them with the neighbours
        step = max(3, int(round(9.0 / g.sk)))
        ks = np.arange(step // 2, g.nk, step)
        dense = anat[ks] == _A["bone_cortex"]
        pattern = artifacts.beam_hardening_streaks(img[ks], rng, p.streak_strength * 0.6, dense) - img[ks]
        for n, k in enumerate(ks):
            img[max(k - step // 2, 0):k - step // 2 + step] += pattern[n]
    if p.table:  # the table is the same in every slice: draw it once under the body's silhouette
        silhouette = np.where((anat > 0).any(axis=0), np.float32(0.0), np.float32(-1000.0))
        table = np.zeros(silhouette.shape, bool)
        drawn = artifacts.add_table(silhouette, spacing[:2], rng, out_mask=table)
        img[:, table] = drawn[table]
    # quantum noise from a pool, scaled per slice with the body width (shoulders and hips are noisier)
    npool = min(g.nk, 8)
    noise = artifacts.correlated_noise((npool, g.nj, g.ni), rng, spacing, p.noise_correlation_mm)
    width = body["a_f"] + 0.5 * (body["b_ant"] + body["b_post"])
    scale = np.clip((width / np.median(width)) ** 1.5, 0.8, 1.6)
    for k in range(g.nk):
        t = np.roll(noise[k % npool], (int(rng.integers(g.nj)), int(rng.integers(g.ni))), axis=(0, 1))
        img[k] += np.float32(p.noise_sd_hu * scale[k]) * t
    np.clip(img, artifacts.HU_MIN, artifacts.HU_MAX, out=img)
    outside = artifacts.outside_fov((g.nj, g.ni), spacing, p.fov_mm)
    if outside.any() and (anat[:, outside] > 0).any():  # the body is cut: rim artefact slice by slice
        img = artifacts.truncate_fov(img, spacing, p.fov_mm, padding_hu=p.padding_hu)
    elif outside.any():
        img[:, outside] = np.float32(p.padding_hu)
    return np.rint(img).astype(np.int16)
