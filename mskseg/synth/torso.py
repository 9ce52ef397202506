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

The image is rendered with :mod:`mskseg.synth.artifacts` (tissue HU from :func:`~mskseg.synth.tissues.sample_tissue_hu`,
texture, slice thickness, blur, beam-hardening and metal streaks, table, noise, field of view). The texture and
the quantum noise are drawn for a small pool of slices and reused with random in-plane shifts: drawing them for
every slice of a 512 x 512 x 300 volume costs more than ten seconds, and shifted correlated noise is
indistinguishable from fresh noise to a reader or a network.

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
from scipy.interpolate import CubicSpline, PchipInterpolator

from ..image import Image
from . import artifacts
from .phantom import FAT_WINDOW, MUSCLE_WINDOW, TISSUE_LABELS, periodic_profile
from .phantom import sample_habitus as sample_l3_habitus
from .tissues import TISSUE_TEXTURE_SD, ScanParams, base_tissue, sample_scan_params, sample_tissue_hu

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

_THORACIC = [f"T{i}" for i in range(1, 13)]


def _build_labels() -> dict[int, str]:
    names = ["vertebrae_C6", "vertebrae_C7"] + [f"vertebrae_{t}" for t in _THORACIC] + \
        [f"vertebrae_L{i}" for i in range(1, 7)] + ["sacrum", "intervertebral_disc"] + \
        [f"rib_left_{i}" for i in range(1, 14)] + [f"rib_right_{i}" for i in range(1, 14)] + \
        ["costal_cartilage", "sternum", "hip_left", "hip_right", "femur_left", "femur_right", "liver", "spleen",
         "kidney_left", "kidney_right", "aorta", "inferior_vena_cava", "lung_left", "lung_right", "heart",
         "spinal_cord", "stomach", "pancreas", "colon", "small_bowel", "urinary_bladder", "psoas", "paraspinal",
         "abdominal_wall"]
    return {i + 1: n for i, n in enumerate(names)}


#: Fixed label values of :attr:`TorsoSample.labels` (the same in every sample, whether present or not).
TORSO_LABELS: dict[int, str] = _build_labels()
_LV = {n: v for v, n in TORSO_LABELS.items()}

# Fine structures of the anatomy map and the tissue key each is rendered with.
_ANATOMY_LIST: list[tuple[str, str]] = [
    ("skin", "skin"), ("subcutaneous_fat", "fat"), ("visceral_fat", "fat"), ("perirenal_fat", "fat"),
    ("renal_sinus_fat", "fat"), ("intermuscular_fat", "fat"), ("rectus_abdominis", "muscle:wall"),
    ("external_oblique", "muscle:wall"), ("internal_oblique", "muscle:wall"),
    ("transversus_abdominis", "muscle:wall"), ("chest_wall_muscle", "muscle:wall"),
    ("gluteal_muscle", "muscle:wall"), ("psoas", "muscle:psoas"), ("quadratus_lumborum", "muscle:paraspinal"),
    ("erector_spinae", "muscle:paraspinal"), ("multifidus", "muscle:paraspinal"), ("diaphragm", "muscle"),
    ("linea_alba", "fascia"), ("bone_cortex", "cortical_bone"), ("bone_cancellous", "cancellous_bone"),
    ("bone_marrow_fat", "fat:marrow"), ("spinal_canal", "csf"), ("spinal_cord", "csf:cord"),
    ("intervertebral_disc", "disc"), ("costal_cartilage", "cartilage"), ("joint_cartilage", "cartilage"),
    ("kidney_cortex", "kidney_cortex"), ("kidney_medulla", "kidney_medulla"), ("renal_pelvis", "urine"),
    ("liver", "liver"), ("spleen", "spleen"), ("gallbladder", "bile"), ("pancreas", "pancreas"),
    ("aorta", "blood"), ("artery", "blood"), ("vein", "venous_blood"), ("portal_vein", "venous_blood:portal"),
    ("heart_muscle", "muscle:heart"), ("heart_blood", "blood"), ("lung", "lung"),
    ("bowel_wall", "bowel_wall"), ("bowel_gas", "bowel_gas"), ("bowel_fluid", "bowel_fluid"),
    ("bowel_contrast", "oral_contrast"), ("feces", "feces"), ("bladder_wall", "muscle:bladder"),
    ("urine", "urine"), ("mediastinal_fat", "fat"), ("arm_skin", "skin"), ("arm_fat", "fat"),
    ("arm_muscle", "muscle:arm"), ("arm_bone_cortex", "cortical_bone"), ("arm_bone_marrow", "fat:marrow"),
    ("metal", "metal"), ("aortic_calcification", "cortical_bone"),
]
#: ``{value: structure name}`` of :attr:`TorsoSample.anatomy` (0 is air).
ANATOMY_LABELS: dict[int, str] = {i + 1: n for i, (n, _) in enumerate(_ANATOMY_LIST)}
_A = {n: v for v, n in ANATOMY_LABELS.items()}
_TISSUE_KEYS: dict[int, str] = {0: "air", **{i + 1: t for i, (_, t) in enumerate(_ANATOMY_LIST)}}

_WALL = [_A[n] for n in ("rectus_abdominis", "external_oblique", "internal_oblique", "transversus_abdominis",
                         "chest_wall_muscle", "gluteal_muscle")]
_PARASPINAL = [_A[n] for n in ("quadratus_lumborum", "erector_spinae", "multifidus")]
_MUSCLES = _WALL + _PARASPINAL + [_A["psoas"]]
_COMPARTMENT = _MUSCLES + [_A["intermuscular_fat"]]
_VISCERAL = [_A[n] for n in ("visceral_fat", "perirenal_fat", "renal_sinus_fat", "mediastinal_fat")]
_BONE = [_A[n] for n in ("bone_cortex", "bone_cancellous", "bone_marrow_fat", "metal")]
_SOFT_CAVITY = [_A["visceral_fat"], _A["mediastinal_fat"]]


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


# ============================================================================================ spine plan
@dataclass
class _Vertebra:
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


def _plan_spine(rng: np.random.Generator, variant: str, frame: float) -> list[_Vertebra]:
    """Vertebrae C6 .. coccyx with sizes, positions on the sagittal curve and tilts; z = 0 at the L3 centre."""
    names = ["C6", "C7"] + _THORACIC + ["L1", "L2", "L3", "L4", "L5"] + (["L6"] if variant == "six_lumbar" else [])
    kyph, lord = float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.6, 1.5))
    size_scale = frame * rng.uniform(0.94, 1.06)
    verts: list[_Vertebra] = []
    for n in names:
        h, a, b, d = _SIZES[n]
        jitter = rng.uniform(0.95, 1.05)
        kind = {"C": "cervical", "T": "thoracic", "L": "lumbar"}[n[0]]
        off = _SAGITTAL[n]
        if kind == "lumbar" or n == "T12":
            y = off * lord
        else:
            y = (off - _SAGITTAL["T12"]) * kyph + _SAGITTAL["T12"] * lord
        verts.append(_Vertebra(n, kind, 0.0, y, 0.0, h * size_scale * jitter, a * size_scale, b * size_scale,
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
        verts.append(_Vertebra(f"S{i + 1}", "sacral", 0.0, 0.0, 0.0, s_h[i] * size_scale, s_a[i] * size_scale,
                               s_b[i] * size_scale, 1.5 if i < 4 else 3.0))
    for i, (h, a) in enumerate(((9, 8), (7, 6), (6, 4.5))):
        verts.append(_Vertebra(f"Co{i + 1}", "coccygeal", 0.0, 0.0, 0.0, h * size_scale, a * size_scale,
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


# ============================================================================================ grid
class _Grid:
    """Voxel grid: patient coordinates of the columns (x), rows (y) and slices (z), boxes around points."""

    def __init__(self, ni: int, nj: int, nk: int, spacing: tuple[float, float, float], shift: tuple[float, float],
                 z0: float):
        self.ni, self.nj, self.nk = ni, nj, nk
        self.si, self.sj, self.sk = spacing
        self.shift = shift
        self.x = ((np.arange(ni) - (ni - 1) / 2.0) * self.si - shift[0]).astype(np.float32)
        self.y = ((np.arange(nj) - (nj - 1) / 2.0) * self.sj - shift[1]).astype(np.float32)
        self.z = (z0 + np.arange(nk) * self.sk).astype(np.float32)
        self.z0 = z0

    def set_shift(self, shift: tuple[float, float]) -> None:
        """Place the patient frame's origin at ``shift`` (x, y mm) from the centre of the slice."""
        self.shift = shift
        self.x = ((np.arange(self.ni) - (self.ni - 1) / 2.0) * self.si - shift[0]).astype(np.float32)
        self.y = ((np.arange(self.nj) - (self.nj - 1) / 2.0) * self.sj - shift[1]).astype(np.float32)

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Index slices (k, j, i) of the voxels with centres inside the patient box ``lo..hi`` (x, y, z)."""
        i0 = int(np.ceil((lo[0] - self.x[0]) / self.si)); i1 = int(np.floor((hi[0] - self.x[0]) / self.si)) + 1
        j0 = int(np.ceil((lo[1] - self.y[0]) / self.sj)); j1 = int(np.floor((hi[1] - self.y[0]) / self.sj)) + 1
        k0 = int(np.ceil((lo[2] - self.z[0]) / self.sk)); k1 = int(np.floor((hi[2] - self.z[0]) / self.sk)) + 1
        i0, j0, k0 = max(i0, 0), max(j0, 0), max(k0, 0)
        i1, j1, k1 = min(i1, self.ni), min(j1, self.nj), min(k1, self.nk)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return slice(k0, k1), slice(j0, j1), slice(i0, i1)

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable patient coordinates ``(x (1,1,I), y (1,J,1), z (K,1,1))`` of a box."""
        return (self.x[sl[2]][None, None, :], self.y[sl[1]][None, :, None], self.z[sl[0]][:, None, None])


class _Maps:
    """The anatomy map (fine structures) and the label map painted together."""

    def __init__(self, grid: _Grid):
        self.g = grid
        shape = (grid.nk, grid.nj, grid.ni)
        self.anat = np.zeros(shape, np.uint8)
        self.lab = np.zeros(shape, np.uint8)

    def paint(self, sl, mask: np.ndarray, anat_value: int, label_value: int | None = 0,
              allowed: Sequence[int] | None = None, blocked: Sequence[int] | None = None) -> None:
        """Write ``anat_value`` (and ``label_value`` unless None) where ``mask`` in the box ``sl``."""
        view = self.anat[sl]
        mask = np.broadcast_to(mask, view.shape)
        if allowed is not None:
            mask = mask & _isin(view, allowed)
        if blocked is not None:
            mask = mask & ~_isin(view, blocked)
        view[mask] = anat_value
        if label_value is not None:
            self.lab[sl][mask] = label_value


def _isin(values: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """``np.isin`` for a handful of small integers (a lookup table is faster than sorting)."""
    lut = np.zeros(256, bool)
    lut[list(members)] = True
    return lut[values]


def _spline_path(ctrl: np.ndarray, radii: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth path through control points ``(n, 3)`` resampled every ``step`` mm, radii interpolated."""
    ctrl = np.asarray(ctrl, float)
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
    keep = np.r_[True, seg > 1e-6]
    ctrl, radii = ctrl[keep], np.asarray(radii, float)[keep]
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))]
    if len(ctrl) < 2:
        return ctrl, radii
    n = max(int(np.ceil(s[-1] / step)) + 1, 2)
    t = np.linspace(0.0, s[-1], n)
    if len(ctrl) >= 3:
        pts = CubicSpline(s, ctrl, axis=0, bc_type="natural")(t)
    else:
        pts = np.stack([np.interp(t, s, ctrl[:, c]) for c in range(3)], axis=1)
    return pts, np.interp(t, s, radii)


def _tube_slices(g: _Grid, pts: np.ndarray, r: np.ndarray, rz: np.ndarray | None = None):
    """For every slice a tube crosses: ``(k, (j, i) slices, rho, r_eff, dy)``.

    The tube is the union of ellipsoids (in-plane radius ``r``, vertical radius ``rz``) centred on ``pts``;
    ``rho`` is the in-plane distance to the nearest centre over its in-slice radius ``r_eff`` (<= 1 inside)
    and ``dy`` the row offset (mm, anterior negative) from that centre.
    """
    pts = np.asarray(pts, np.float32)
    r = np.asarray(r, np.float32)
    rz = r if rz is None else np.asarray(rz, np.float32)
    zmin, zmax = float((pts[:, 2] - rz).min()), float((pts[:, 2] + rz).max())
    k0 = max(int(np.ceil((zmin - g.z[0]) / g.sk)), 0)
    k1 = min(int(np.floor((zmax - g.z[0]) / g.sk)) + 1, g.nk)
    min_r = 0.35 * min(g.si, g.sj)
    for k in range(k0, k1):
        dz = pts[:, 2] - g.z[k]
        sel = np.abs(dz) < rz
        if not sel.any():
            continue
        reff = r[sel] * np.sqrt(np.maximum(1.0 - (dz[sel] / rz[sel]) ** 2, 0.0))
        ok = reff > min_r
        if not ok.any():
            continue
        px, py, reff = pts[sel, 0][ok], pts[sel, 1][ok], reff[ok]
        bb = g.box((float((px - reff).min()), float((py - reff).min()), float(g.z[k])),
                   (float((px + reff).max()), float((py + reff).max()), float(g.z[k])))
        if bb is None:
            continue
        xs, ys = g.x[bb[2]], g.y[bb[1]]
        best = np.full((len(ys), len(xs)), np.inf, np.float32)
        idx = np.zeros(best.shape, np.int32)
        chunk = max(1, int(4_000_000 // max(best.size, 1)))
        for c0 in range(0, len(px), chunk):
            c1 = min(c0 + chunk, len(px))
            d2 = ((xs[None, None, :] - px[c0:c1, None, None]) ** 2 + (ys[None, :, None] - py[c0:c1, None, None]) ** 2) \
                / (reff[c0:c1, None, None] ** 2)
            am = np.argmin(d2, axis=0)
            mn = np.take_along_axis(d2, am[None], axis=0)[0]
            better = mn < best
            best[better] = mn[better]
            idx[better] = am[better] + c0
        yield k, (bb[1], bb[2]), np.sqrt(best), reff[idx], ys[:, None] - py[idx]


def _paint_tube(m: _Maps, pts, r, rz=None, *, core: int, shell: int | None = None, shell_mm: float = 0.0,
                label: int | None = 0, allowed=None, blocked=None, gas: float = 0.0) -> None:
    """Rasterise a tube: ``shell`` within ``shell_mm`` of its surface, ``core`` inside, optional gas level.

    Args:
        gas: fraction (0..1) of the lumen height filled with gas, anteriorly (the patient lies supine).
    """
    for k, (sj, si), rho, reff, dy in _tube_slices(m.g, pts, r, rz):
        inside = rho <= 1.0
        if not inside.any():
            continue
        sl = (k, sj, si)
        if shell is not None and shell_mm > 0:
            is_shell = inside & ((1.0 - rho) * reff < shell_mm)
            m.paint(sl, inside & ~is_shell, core, label, allowed, blocked)
            m.paint(sl, is_shell, shell, label, allowed, blocked)
            lumen = inside & ~is_shell
        else:
            m.paint(sl, inside, core, label, allowed, blocked)
            lumen = inside
        if gas > 0:
            level = -reff + 2.0 * gas * reff  # gas above (anterior to) this row offset
            m.paint(sl, lumen & (dy < -reff + 2 * gas * reff) & (dy < level), _A["bowel_gas"], label,
                    [core], None)


def _ellipsoid(g: _Grid, centre: Sequence[float], semi: Sequence[float], rot: np.ndarray | None = None,
               pad: float = 0.0):
    """Box and normalised radius ``rho`` (<= 1 inside) of an ellipsoid with local axes the columns of ``rot``."""
    rot = np.eye(3) if rot is None else np.asarray(rot, float)
    ext = np.abs(rot) @ np.asarray(semi, float) + pad
    c = np.asarray(centre, float)
    sl = g.box(c - ext, c + ext)
    if sl is None:
        return None, None
    X, Y, Z = g.coords(sl)
    dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    acc = None
    for col in range(3):
        u = (np.float32(rot[0, col]) * dx + np.float32(rot[1, col]) * dy + np.float32(rot[2, col]) * dz) \
            / np.float32(semi[col])
        acc = u * u if acc is None else acc + u * u
    return sl, np.sqrt(acc)


def _rot(z_deg: float = 0.0, x_deg: float = 0.0, y_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix (columns = local axes in patient coordinates): about z, then x, then y."""
    a, b, c = np.deg2rad([z_deg, x_deg, y_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return ry @ rx @ rz


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _slow_curve(rng: np.random.Generator, amp: float, wavelength: float = 150.0):
    """A smooth random factor ``f(z) = 1 + ...`` along z (a few sinusoids of long wavelength), as a function."""
    terms = [(rng.normal(0, amp / 2), wavelength * rng.uniform(0.6, 1.6), rng.uniform(0, 2 * np.pi))
             for _ in range(3)]

    def factor(z):
        z = np.asarray(z, float)
        return 1.0 + sum(c * np.sin(2 * np.pi * z / wl + ph) for c, wl, ph in terms)

    return factor


def _anchors(z: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Monotone smooth interpolation of ``(z, value)`` anchors at ``z``, constant beyond the ends."""
    pts = sorted(pts)
    zs = np.array([p[0] for p in pts], float)
    vs = np.array([p[1] for p in pts], float)
    keep = np.r_[True, np.diff(zs) > 1e-3]
    zs, vs = zs[keep], vs[keep]
    if len(zs) == 1:
        return np.full_like(z, vs[0], dtype=float)
    return PchipInterpolator(zs, vs, extrapolate=False)(np.clip(z, zs[0], zs[-1]))


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
    h = sample_torso_habitus(rng, **(habitus or {}))
    male = h["sex"] == "M"
    bmi, age = h["bmi"], h["age"]
    frame = h["frame"]
    sat_index = float(np.clip((bmi - 16.0) / 12.0, 0.03, 3.0)) * (1.25 if not male else 0.9)
    vat_index = float(np.clip((bmi - 20.0) / 14.0, -0.25, 2.0)) * (1.25 if male else 0.8) * rng.uniform(0.7, 1.3)
    muscle = (1.0 if male else 0.85) * rng.uniform(0.9, 1.1) * (1 + 0.008 * np.clip(bmi - 25, -8, 15))
    if h["sarcopenic"]:
        muscle *= rng.uniform(0.65, 0.82)
    infiltration = max(0.0, (age - 30) / 60) * 12 + (rng.uniform(8, 25) if h["sarcopenic"] else 0) + \
        max(0, bmi - 30) * 0.5
    imat_amount = float(np.clip(0.1 + 0.4 * (age - 20) / 70 + (0.3 if h["sarcopenic"] else 0)
                                + 0.015 * max(0, bmi - 28), 0.05, 1.0) * rng.uniform(0.6, 1.3))

    verts = _plan_spine(rng, variant, frame)
    byname = {v.name: v for v in verts}
    y_l3 = frame * rng.uniform(12, 24) + 6 * max(vat_index, 0)
    for v in verts:
        v.y += y_l3
    lm = _landmarks(rng, verts, frame, male)

    # ---------------------------------------------------------------- field of view and grid
    fov_name, (z_lo, z_hi) = _resolve_fov(rng, z_range, byname, lm)
    if spacing_mm is None:
        sk = float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0],
                              p=[0.05, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.15]))
        width = 2 * (frame * 135 * (1 + 0.3 * max(vat_index, 0)) + 10 + 24 * sat_index) + \
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
    g = _Grid(size, size, nk, spacing, shift, z_lo)
    m = _Maps(g)

    # ---------------------------------------------------------------- anatomy
    state = {"sat_index": sat_index, "vat_index": vat_index, "muscle": muscle, "imat": imat_amount,
             "male": male, "age": age, "frame": frame}
    state.update(osteoporotic=h["osteoporotic"], scoliosis_mm=h["scoliosis_mm"])
    body = _body_profiles(rng, g, verts, lm, state, h)
    _finish_landmarks(rng, lm, verts, body, state)
    # the technologist centres the body in the field of view (give or take)
    n_t = len(body["theta"])
    y_front = -np.median(body["r_b"][:, n_t // 4])
    y_mid = 0.5 * (y_front + float(np.median(body["y_flat"])))
    g.set_shift((shift[0], shift[1] - y_mid))
    _draw_body_wall(rng, m, body, lm, state)
    if h["arms"] == "down":
        _draw_arms(rng, m, body, lm, state)
    _draw_organs(rng, m, body, verts, lm, state, h)
    _draw_spine(rng, m, verts, state)
    _draw_ribs(rng, m, verts, body, lm, state)
    _draw_pelvis(rng, m, verts, body, lm, state)
    _imat_streaks(rng, m, state)
    p = params if params is not None else sample_scan_params(
        rng, fov_mm=float(size * spacing[0] * rng.uniform(0.95, 1.0)),
        slice_thickness_mm=float(min(5.0, spacing[2] * rng.choice([1.0, 1.0, 1.0, 1.5, 2.0]))),
        osteoporotic=h["osteoporotic"])
    if params is not None:
        p = dataclasses.replace(params)
    if phase is not None:
        p.phase = phase
    p.osteoporotic = bool(p.osteoporotic or h["osteoporotic"])
    screws = _draw_screws(rng, m, verts) if p.metal else []
    t_anatomy = time.perf_counter() - t_start

    # ---------------------------------------------------------------- render
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
    img = _render(rng, m.anat, g, p, hu, body)
    tissue = label_body_composition(img, m.anat)
    outside = artifacts.outside_fov((g.nj, g.ni), spacing, p.fov_mm)
    if outside.any() and (m.anat[:, outside] > 0).any():  # nothing is imaged outside the circle
        m.lab[:, outside] = 0
        tissue[:, outside] = 0

    # ---------------------------------------------------------------- outputs
    z_offset = float(rng.uniform(-500, 100))
    origin = (-(size - 1) / 2.0 * spacing[0], -(size - 1) / 2.0 * spacing[1], float(g.z0 + z_offset))
    metadata = {
        "Modality": "CT", "PatientSex": h["sex"], "PatientAge": f"{int(round(age)):03d}Y",
        "PatientSize": round(h["height_m"], 2), "PatientWeight": round(h["weight_kg"], 1),
        "BodyPartExamined": "CHEST_ABDOMEN_PELVIS" if fov_name == "chest_abdomen_pelvis" else "ABDOMEN",
        "ContrastBolusAgent": "" if p.phase == "native" else "IV contrast", "synthetic": True,
    }
    image = Image(img, spacing, origin, None, metadata)
    labels = image.with_array(m.lab, keep_metadata=False)
    labels.metadata = {"synthetic": True}
    tissue_img = image.with_array(tissue, keep_metadata=False)
    tissue_img.metadata = {"synthetic": True}
    level_centres: dict[str, float] = {}
    level_slices: dict[str, int] = {}
    for v in verts:
        if v.kind == "coccygeal" or (v.kind == "sacral" and v.name != "S1"):
            continue
        if v.name in ("C6",):
            continue
        zc = float(v.z + z_offset)
        level_centres[v.name] = zc
        k = int(round((v.z - g.z0) / spacing[2]))
        if 0 <= k < nk:
            level_slices[v.name] = k
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
    kind_lut[_COMPARTMENT] = 1
    kind_lut[_A["subcutaneous_fat"]] = 2
    kind_lut[_VISCERAL] = 3
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


# ============================================================================================ landmarks, fov
def _landmarks(rng: np.random.Generator, verts: list[_Vertebra], frame: float, male: bool) -> dict[str, float]:
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


def _level_z(name: str, byname: dict[str, _Vertebra], lm: dict[str, float], top: bool) -> float:
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


# ============================================================================================ body wall
def _body_profiles(rng: np.random.Generator, g: _Grid, verts: list[_Vertebra], lm: dict[str, float],
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
    para_depth = _anchors(z, [(Z("T1"), 28), (Z("T6"), 34), (Z("T12"), 42), (Z("L3"), 52), (Z("L5"), 50),
                              (Z("S1"), 38), (Z("S3"), 14), (Z("S5"), 6), (head_z - 80, 4)]) * fr * mu ** 0.6
    para_half = _anchors(z, [(Z("T1"), 38), (Z("T6"), 44), (Z("T12"), 52), (Z("L3"), 66), (Z("L5"), 62),
                             (Z("S1"), 48), (Z("S3"), 30), (Z("S5"), 20), (head_z - 80, 16)]) * fr * mu ** 0.5
    y_sback = y_tp + 10
    glut = _anchors(z, [(crest + 15, 0), (crest - 30, 22), (head_z + 20, 45), (head_z - 80, 50)]) * fr * mu ** 0.5
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
    slow_a, slow_b = _slow_curve(rng, 0.03), _slow_curve(rng, 0.04)

    z_tab = np.arange(lm["bottom_limit"] - 100, lm["top_limit"] + 100, 1.0)
    a_tab = _anchors(z_tab, a_pts) * slow_a(z_tab)
    b_tab = _anchors(z_tab, b_pts) * slow_b(z_tab)

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
    rc_tab = _anchors(z_tab, rc_pts)
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
    p_exp = _anchors(z, [(Z("T6"), 2.0), (Z("L3"), rng.uniform(2.0, 2.6)), (head_z, 2.3)])
    n_t = 360
    theta = np.linspace(-np.pi, np.pi, n_t, endpoint=False) + np.pi / n_t
    ct, sn = np.cos(theta)[None, :], np.sin(theta)[None, :]
    b_t = np.where(sn < 0, b_ant[:, None], b_post[:, None])
    pe = p_exp[:, None]
    r_f = (np.abs(ct / a_f[:, None]) ** pe + np.abs(sn / b_t) ** pe) ** (-1 / pe)
    r_f *= periodic_profile(rng, n_t, 0.02, 5)[None, :]
    # subcutaneous fat by angle and level
    t_ant = (4 + 20 * sat) * rng.uniform(0.8, 1.2) * _anchors(z, [(Z("T4"), 0.35), (Z("T10"), 0.6), (Z("L3"), 1.0),
                                                                 (Z("L5"), 1.15), (head_z, 0.8)])
    t_lat = (4 + 22 * sat) * rng.uniform(0.8, 1.2) * _anchors(z, [(Z("T4"), 0.45), (Z("T10"), 0.65), (Z("L3"), 1.0),
                                                                 (crest, 1.15), (head_z, 1.2 if st["male"] else 1.5)])
    t_post = (3 + 9 * sat) * rng.uniform(0.7, 1.3) * _anchors(z, [(Z("T4"), 0.9), (Z("L3"), 1.0), (Z("S2"), 1.5),
                                                                 (head_z, 1.8)])
    w_lat, w_ant, w_post = ct ** 2, np.clip(-sn, 0, 1) ** 2, np.clip(sn, 0, 1) ** 2
    asym = rng.uniform(-0.15, 0.15)
    t_sat = (w_lat * t_lat[:, None] * (1 + asym * np.sign(ct)) + w_ant * t_ant[:, None] + w_post * t_post[:, None])
    t_sat *= periodic_profile(rng, n_t, 0.08, 4)[None, :]
    if sat > 1.3:  # pannus: belly fat hanging lower and forward
        t_sat *= 1 + rng.uniform(0.1, 0.4) * np.clip(-sn, 0, 1) ** 3 * _anchors(z, [(Z("L2"), 0.3), (Z("L5"), 1.0),
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


def _sub(xs: np.ndarray, ys: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
    """Row and column slices of a 2D box (coordinates ``ys`` rows, ``xs`` columns) inside ``x0..x1, y0..y1``."""
    i0, i1 = np.searchsorted(xs, x0), np.searchsorted(xs, x1, side="right")
    j0, j1 = np.searchsorted(ys, y0), np.searchsorted(ys, y1, side="right")
    return slice(int(j0), int(max(j0, j1))), slice(int(i0), int(max(i0, i1)))


def _draw_body_wall(rng: np.random.Generator, m: _Maps, body: dict[str, Any], lm: dict[str, float],
                    st: dict[str, Any]) -> None:
    """Skin, subcutaneous fat, body-wall muscles, paraspinal compartment, psoas, quadratus lumborum, cavity,
    lungs above the diaphragm and the diaphragm itself, slice by slice.

    Thicknesses that depend on the angle round the body are computed on a table of angles per slice and
    gathered, and the smaller structures are drawn in sub-boxes, which keeps a 512 x 512 slice at a few ms.
    """
    g = m.g
    z = body["z"]
    fr, mu, imat = st["frame"], st["muscle"], st["imat"]
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
    # per-scan wall parameters (as the L3 phantom draws them)
    half_la = rng.uniform(2.0, 8.0)
    rect_w_mm = mu ** 0.3 * rng.uniform(55, 80)
    t_r = mu * rng.uniform(8, 13)
    t_lay = [mu * rng.uniform(5, 8), mu * rng.uniform(5, 9), mu * rng.uniform(3, 6)]
    gap = rng.uniform(0.5, 1.3) + 0.4 * imat
    zt12, zl1, zl3, zl5 = lm["z_T12"], lm["z_L1"], lm["z_L3"], lm["z_L5"]
    psoas_a = _anchors(z, [(zt12 + 5, 0.0), (zl1, 7), (lm["z_L2"], 12), (zl3, 16), (lm["z_L4"], 21), (zl5, 24),
                           (lm["s1_top"] - 20, 26), (lm["head_z"] + 20, 22), (lm["head_z"] - 60, 18)]) * fr * mu ** 0.7
    psoas_b = _anchors(z, [(zt12 + 5, 0.0), (zl1, 7), (lm["z_L2"], 11), (zl3, 14), (lm["z_L4"], 17), (zl5, 19),
                           (lm["s1_top"] - 20, 18), (lm["head_z"] + 20, 16), (lm["head_z"] - 60, 15)]) * fr * mu ** 0.7
    psoas_x = np.where(z > lm["s1_top"], body["a_body"] + 0.75 * psoas_a,
                       _anchors(z, [(lm["s1_top"], lm["ps_x_s1"]), (lm["head_z"], lm["head_x"] - 8)]))
    psoas_y = _anchors(z, [(zl1, lm["y_L1"] + 2), (zl3, lm["y_L3"] - 3), (zl5, lm["y_L5"] - 10),
                           (lm["s1_top"] - 20, lm["ps_y_s1"]), (lm["head_z"], lm["head_y"] - lm["head_r"] - 10)])
    ql_a = _anchors(z, [(zt12, 0.0), (zl1, 9), (lm["z_L2"], 14), (lm["z_L4"], 17), (lm["crest"], 8),
                        (lm["crest"] - 10, 0.0)]) * fr * mu ** 0.7
    ql_b = ql_a * 0.55
    w_chest = _smoothstep((z - (lm["xiphoid"] - 10)) / 45.0)
    w_pelvis = _smoothstep((lm["crest"] + 10 - z) / 50.0)
    ps_prof = periodic_profile(rng, 64, 0.05, 4).astype(np.float32)
    VF, SAT, IM = _A["visceral_fat"], _A["subcutaneous_fat"], _A["intermuscular_fat"]
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
        y_tp = float(body["y_tp"][k])
        ph_half, ph_depth = float(body["para_half"][k]), float(body["para_depth"][k])
        xs = float(body["x_spine"][k])
        phi_end = float(np.arctan2(ph_half + 8, -(y_tp + ph_depth * 0.25)))
        b_ant = float(body["b_ant"][k])
        before = phis < phi_end
        # --- body-wall layers from the fascia inwards, thickness tables over the angle from the front
        wc, wp = float(w_chest[k]), float(w_pelvis[k])
        wa = 1.0 - wc
        d0 = np.zeros(n_phi, np.float32)
        if wc > 0.02:
            band = inside & (r2 > body["r_rc"][k][tidx]) & before[pidx]
            a2[band] = _A["chest_wall_muscle"]
        if wa > 0.02:
            hl, rw = half_la / b_ant, rect_w_mm / b_ant
            rect_t = wa * t_r * (1 - 0.25 * wp) * _smoothstep((phis - hl) / 0.05) * _smoothstep((hl + rw - phis) / 0.12)
            rect_t = (rect_t * ((phis > hl) & before)).astype(np.float32)
            o_start = hl + rw * 0.85
            lat = _smoothstep((phis - o_start) / 0.25) * _smoothstep((phi_end - phis) / 0.3) * (phis > o_start)
            glut_t = (wp * float(body["glut"][k]) * _smoothstep((phis - 1.35) / 0.35) * before).astype(np.float32)
            if wp > 0.02:
                gl = np.where(glut_t > 1.0, glut_t, 0.0)
                gb = inside & (depth < gl[pidx])
                a2[gb] = _A["gluteal_muscle"]
                d0 = gl.copy()
            fade = 1.0 - wp * _smoothstep((phis - 1.1) / 0.3)
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
        # --- back: fat behind the thoracolumbar fascia is subcutaneous; the paraspinal compartment
        bj, bi = _sub(xs1, ys1, xs - ph_half - 8, xs + ph_half + 8, y_tp, 1e4)
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
        # --- psoas (iliopsoas in the pelvis) and quadratus lumborum
        pa, pb = float(psoas_a[k]), float(psoas_b[k])
        if pa > 2:
            for side in (-1, 1):
                cx, cy = xs + side * float(psoas_x[k]), float(psoas_y[k])
                bj, bi = _sub(xs1, ys1, cx - pa * 1.2, cx + pa * 1.2, cy - pb * 1.2, cy + pb * 1.2)
                dxp, dyp = (X2[:, bi] - cx) / pa, (Y2[bj, :] - cy) / pb
                ang = ((np.arctan2(dyp, dxp) + np.pi) / (2 * np.pi) * 63.999).astype(np.int32)
                av, lv = a2[bj, bi], l2[bj, bi]
                ps = (np.sqrt(dxp * dxp + dyp * dyp) <= ps_prof[ang]) & inside[bj, bi] & ((av == VF) | (av == IM))
                av[ps] = _A["psoas"]
                lv[ps] = _LV["psoas"]
        qa, qb = float(ql_a[k]), float(ql_b[k])
        if qa > 2:
            for side in (-1, 1):
                qx = xs + side * (float(body["a_body"][k]) + lm["tp_len"] + qa * 0.3)
                qy = y_tp - qb * 0.3
                bj, bi = _sub(xs1, ys1, qx - qa, qx + qa, qy - qb, qy + qb)
                av, lv = a2[bj, bi], l2[bj, bi]
                ql = (((X2[:, bi] - qx) / qa) ** 2 + ((Y2[bj, :] - qy) / qb) ** 2 <= 1) & inside[bj, bi] & \
                    ((av == VF) | (av == SAT))
                av[ql] = _A["quadratus_lumborum"]
                lv[ql] = _LV["paraspinal"]
        # --- diaphragm, lungs, liver
        if zk > lm["recess"] - 5:
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
            xl = -12.0 + (x_left + 12.0) * _smoothstep((lm["y_L1"] - 15 - Y2) / 70.0)
            liver = cav & (zk <= zd - lm["dia_t"]) & (zk > _liver_bottom(X2, Y2, lm)) & (X2 < xl)
            a2[liver] = _A["liver"]
            l2[liver] = _LV["liver"]
        m.anat[k, sj, si] = a2
        m.lab[k, sj, si] = l2


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
    return lm["liver_tip"] + lm["liver_slope_x"] * (X2 + lm["a_dome"] * 0.7) + \
        0.35 * np.maximum(Y2 - lm["y_L1"] + 10, 0.0)


def _draw_arms(rng: np.random.Generator, m: _Maps, body: dict[str, Any], lm: dict[str, float],
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
        pts, rr = _spline_path(np.array(ctrl), np.array(rad), 3.0)
        _paint_tube(m, pts, rr, core=_A["arm_fat"], shell=_A["arm_skin"], shell_mm=2.0, label=0, allowed=[0])
        _paint_tube(m, pts, rr * 0.72, core=_A["arm_muscle"], label=0, allowed=[_A["arm_fat"]])
        for off in ((0.0,) if rng.random() < 0.5 else (-9.0, 9.0)):
            bone = pts.copy()
            bone[:, 0] += off
            br = np.where(pts[:, 2] > elbow, 12.0, 7.0) * rng.uniform(0.9, 1.1)
            _paint_tube(m, bone, br, core=_A["arm_bone_marrow"], shell=_A["arm_bone_cortex"], shell_mm=2.5,
                        label=0, allowed=[_A["arm_muscle"], _A["arm_fat"]])


def _finish_landmarks(rng: np.random.Generator, lm: dict[str, float], verts: list[_Vertebra],
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
def _draw_organs(rng: np.random.Generator, m: _Maps, body: dict[str, Any], verts: list[_Vertebra],
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
    sl, rho = _ellipsoid(g, (a_d * rng.uniform(0.55, 0.68), v["T11"].y + rng.uniform(-5, 25),
                             lm["dome_l"] - rng.uniform(45, 65)),
                         (rng.uniform(20, 28), rng.uniform(45, 65), rng.uniform(40, 60)),
                         _rot(rng.uniform(25, 45), rng.uniform(-25, -10)))
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
    pts, rr = _spline_path(ctrl, rad, 4.0)
    gas = float(rng.uniform(0.0, 0.5))
    content = _A["bowel_contrast"] if h.get("oral_contrast") and rng.random() < 0.7 else _A["bowel_fluid"]
    _paint_tube(m, pts, rr, core=content, shell=_A["bowel_wall"], shell_mm=rng.uniform(3, 5), label=_LV["stomach"],
                allowed=soft, gas=gas)
    # pancreas: head in the duodenal C-loop, body in front of the aorta, tail to the splenic hilum
    ctrl = np.array([(-a_d * 0.2, y_ao_off("L2") - 28, lm["z_L2"]), (-10, y_ao_off("L1") - 30, lm["z_L1"] + 5),
                     (30, y_ao_off("L1") - 28, lm["z_L1"] + 15), (a_d * 0.5, yb("T12") + 5, lm["z_T12"] + 5)])
    pts, rr = _spline_path(ctrl, np.array([18, 12, 11, 10]) * fr, 2.0)
    _paint_tube(m, pts, rr, rr * 1.4, core=_A["pancreas"], label=_LV["pancreas"], allowed=[VF])
    # kidneys with perirenal fat, cortex, medulla, sinus fat, pelvis; right lower than left
    for side, name in ((-1, "kidney_right"), (1, "kidney_left")):
        kz = lm["z_L2"] + rng.uniform(-10, 10) if side < 0 else 0.5 * (lm["z_L1"] + lm["z_L2"]) + rng.uniform(0, 15)
        yk = float(body["spine_y"](kz))
        kx = side * (float(np.interp(kz, [v["L3"].z, v["T12"].z], [v["L3"].a, v["T12"].a])) + 2 * 12 * fr
                     + 30 + rng.uniform(0, 10))
        semi = np.array([rng.uniform(26, 32), rng.uniform(20, 25), rng.uniform(48, 60)]) * fr
        rot = _rot(side * rng.uniform(25, 45), rng.uniform(-20, -8), side * rng.uniform(-18, -8))
        centre = np.array([kx, yk + rng.uniform(-5, 10), kz])
        prf = rng.uniform(3, 10) + 12 * vat
        sl, rho = _ellipsoid(g, centre, semi + prf, rot)
        if sl is None:
            continue
        m.paint(sl, rho <= 1, _A["perirenal_fat"], 0, allowed=[VF])
        sl, rho = _ellipsoid(g, centre, semi, rot)
        if sl is None:
            continue
        kid = rho <= 1
        m.paint(sl, kid, _A["kidney_cortex"], _LV[name], allowed=[VF, _A["perirenal_fat"], _A["liver"]])
        m.paint(sl, rho <= 0.78, _A["kidney_medulla"], _LV[name], allowed=[_A["kidney_cortex"]])
        hil = centre + rot @ np.array([-side * semi[0] * 0.55, -semi[1] * 0.45, 0.0])
        sl2, rho2 = _ellipsoid(g, hil, semi * np.array([0.45, 0.4, 0.45]), rot)
        if sl2 is not None:
            m.paint(sl2, rho2 <= 1, _A["renal_sinus_fat"], _LV[name],
                    allowed=[_A["kidney_medulla"], _A["kidney_cortex"]])
            m.paint(sl2, rho2 <= 0.45, _A["renal_pelvis"], _LV[name], allowed=[_A["renal_sinus_fat"]])
        # renal vein to the cava / artery from the aorta
        to = np.array([-22.0 if side < 0 else 12.0, y_ao_off("L1") - 8, hil[2]])
        pts, rr = _spline_path(np.array([hil, 0.5 * (hil + to) + [0, -6, 0], to]), np.array([4.5, 5, 5.5]), 1.5)
        _paint_tube(m, pts, rr, core=_A["vein"], label=0, allowed=[VF, _A["perirenal_fat"], _A["renal_sinus_fat"]])
    # gallbladder under the liver
    if h.get("gallbladder", False) or rng.random() < 0.7:
        sl, rho = _ellipsoid(g, (-a_d * 0.35, -0.35 * lm["b_ant_dome"], lm["liver_tip"] + 35),
                             (rng.uniform(12, 18), rng.uniform(12, 18), rng.uniform(25, 40)), _rot(20, 30))
        if sl is not None:
            m.paint(sl, rho <= 1, _A["gallbladder"], 0, allowed=[_A["liver"], VF])
    # heart on the central diaphragm (only in chest fields of view)
    hz = 0.5 * (lm["dome_r"] + lm["dome_l"]) + rng.uniform(45, 60)
    sl, rho = _ellipsoid(g, (fr * 25, -fr * 35, hz), np.array([55, 42, 42]) * fr * rng.uniform(0.9, 1.1),
                         _rot(rng.uniform(20, 40), 15))
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
    sl, rho = _ellipsoid(g, (0.0, -fr * 45, lm["head_z"] + 5 + 20 * bf),
                         np.array([30 + 30 * bf, 22 + 25 * bf, 20 + 25 * bf]) * fr)
    if sl is not None:
        m.paint(sl, rho <= 1, _A["bladder_wall"], _LV["urinary_bladder"], allowed=[VF])
        m.paint(sl, rho <= 0.9, _A["urine"], _LV["urinary_bladder"], allowed=[_A["bladder_wall"]])


def _draw_vessels(rng: np.random.Generator, m: _Maps, body: dict[str, Any], verts: list[_Vertebra],
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
    pts, rr = _spline_path(np.array(ctrl), np.array(rad) * r_ao / 11, 2.0)
    _paint_tube(m, pts, rr, core=_A["aorta"], label=_LV["aorta"], blocked=_BONE)
    if age > 50:
        for k, (sj, si), rho, _, _ in _tube_slices(m.g, pts, rr):
            calc = (rho > 0.85) & (rho <= 1.0) & (m.g.z[k] < v["L1"].z) & \
                (rng.random(rho.shape) < 0.01 * (age - 50) / 10)
            m.paint((k, sj, si), calc, _A["aortic_calcification"], _LV["aorta"], allowed=[_A["aorta"]])
    for side in (-1, 1):
        ctrl = [(fr * 12, v["L4"].y - v["L4"].b - r_ao, v["L4"].z + 8),
                (side * 25 * fr, v["L5"].y - v["L5"].b - 10, v["L5"].z),
                (side * 45 * fr, v["S1"].y - v["S1"].b - 22, lm["s1_top"] - 20),
                (side * (hx - 25), hy - hr - 18, hz + 25), (side * (hx - 18), hy - hr - 22, hz - 40)]
        pts, rr = _spline_path(np.array(ctrl), np.array([7, 6.5, 6, 5, 5]) * fr, 2.0)
        _paint_tube(m, pts, rr, core=_A["artery"], label=0, blocked=_BONE + [_A["psoas"]])
        ctrl = [(-fr * 18, v["L5"].y - v["L5"].b - 4, v["L5"].z + 5),
                (side * 30 * fr, v["S1"].y - v["S1"].b - 8, lm["s1_top"] - 5),
                (side * 48 * fr, v["S1"].y - v["S1"].b - 12, lm["s1_top"] - 40),
                (side * (hx - 35), hy - hr - 12, hz + 20), (side * (hx - 30), hy - hr - 15, hz - 40)]
        pts, rr = _spline_path(np.array(ctrl), np.array([9, 8, 7.5, 7, 7]) * fr, 2.0)
        _paint_tube(m, pts, rr, core=_A["vein"], label=0, blocked=_BONE + [_A["psoas"], _A["artery"]])
    # inferior vena cava: right of the aorta, through the liver to the right atrium
    ctrl = [(-fr * 18, v["L5"].y - v["L5"].b - 4, v["L5"].z + 5), (-fr * 22, v["L3"].y - v["L3"].b - 10, v["L3"].z),
            (-fr * 24, v["L1"].y - v["L1"].b - 12, v["L1"].z), (-fr * 26, v["T11"].y - v["T11"].b - 18, v["T11"].z),
            (-fr * 18, -fr * 20, lm["dome_r"] + 25)]
    pts, rr = _spline_path(np.array(ctrl), np.array([10, 11, 12, 13, 14]) * fr, 2.0)
    _paint_tube(m, pts, rr, rr * 1.0, core=_A["vein"], label=_LV["inferior_vena_cava"], blocked=_BONE + [_A["aorta"]])
    # superior mesenteric artery and vein, portal vein
    top = front("L1", fr * 10)
    ctrl = [top, (fr * 6, top[1] - 22, v["L1"].z - 10), (fr * 2, top[1] - 30, v["L3"].z),
            (-fr * 8, top[1] - 40, v["L5"].z)]
    pts, rr = _spline_path(np.array(ctrl), np.array([4, 4, 3.5, 3]) * fr, 1.5)
    _paint_tube(m, pts, rr, core=_A["artery"], label=0, allowed=[_A["visceral_fat"]])
    ctrl = [(-fr * 14, top[1] - 22, v["L4"].z), (-fr * 10, top[1] - 26, v["L2"].z), (-fr * 12, top[1] - 22, v["L1"].z),
            (-fr * 35, top[1] - 10, v["T12"].z + 10), (-fr * 60, top[1] - 5, v["T11"].z + 15)]
    pts, rr = _spline_path(np.array(ctrl), np.array([5, 6, 7, 7, 6]) * fr, 1.5)
    _paint_tube(m, pts, rr, core=_A["portal_vein"], label=0, allowed=[_A["visceral_fat"], _A["liver"], _A["pancreas"]])


def _draw_bowel(rng: np.random.Generator, m: _Maps, body: dict[str, Any], verts: list[_Vertebra],
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
    pts, rr = _spline_path(ctrl, rad, 5.0)
    kinds = rng.choice(["feces", "gas", "fluid"], size=4, p=[0.55, 0.35, 0.1])
    n4 = len(pts) // 4 + 1
    for q in range(4):
        seg = slice(q * n4, min((q + 1) * n4 + 2, len(pts)))
        if seg.start >= len(pts):
            break
        kind = kinds[q]
        core = {"feces": _A["feces"], "gas": _A["bowel_gas"], "fluid": _A["bowel_fluid"]}[kind]
        _paint_tube(m, pts[seg], rr[seg], core=core, shell=_A["bowel_wall"], shell_mm=rng.uniform(1.5, 3.0),
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
        pts, rr = _spline_path(np.array(ctrl), np.full(len(ctrl), r0), max(2.0, 0.4 * r0))
        kind = rng.choice(["fluid", "gas", "collapsed", "contrast", "feces"],
                          p=[0.4, 0.12, 0.28, 0.12 if h.get("oral_contrast") else 0.0,
                             0.08 + (0.0 if h.get("oral_contrast") else 0.12)])
        core = {"fluid": _A["bowel_fluid"], "gas": _A["bowel_gas"], "collapsed": _A["bowel_wall"],
                "contrast": _A["bowel_contrast"], "feces": _A["feces"]}[kind]
        _paint_tube(m, pts, rr, core=core, shell=_A["bowel_wall"], shell_mm=rng.uniform(1.5, 2.5),
                    label=_LV["small_bowel"], allowed=[VF],
                    gas=float(rng.uniform(0, 0.4)) if kind in ("fluid", "contrast") else 0.0)
    # mesenteric vessels: short thin tubes in the remaining fat
    for _ in range(int(rng.integers(10, 30))):
        p = np.array([rng.uniform(-a * 0.4, a * 0.4), rng.uniform(-b * 0.6, yb("L3") - 40), rng.uniform(zlo, zhi)])
        q = p + rng.normal(0, 1, 3) * [10, 10, 30]
        pts, rr = _spline_path(np.array([p, q]), np.full(2, rng.uniform(1.0, 2.5)), 1.0)
        _paint_tube(m, pts, rr, core=_A["vein"], label=0, allowed=[VF])


# ============================================================================================ skeleton
def _tilt_rot(t: float) -> np.ndarray:
    """Columns: the vertebra's x, v (posterior) and w (superior) axes in patient coordinates."""
    c, s = np.cos(t), np.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _bone_element(m: _Maps, centre, semi, rot, label: int, cortex_mm: float, allowed=None) -> None:
    """An ellipsoidal bone part: cortical shell of ``cortex_mm`` around cancellous bone."""
    sl, rho = _ellipsoid(m.g, centre, semi, rot)
    if sl is None:
        return
    inside = rho <= 1.0
    m.paint(sl, inside, _A["bone_cortex"], label, allowed=allowed)
    core = rho <= max(1.0 - cortex_mm / float(min(semi)), 0.0)
    m.paint(sl, core & inside, _A["bone_cancellous"], label, allowed=[_A["bone_cortex"]])


def _vertebra_geometry(v: _Vertebra, fr: float) -> dict[str, float]:
    lumbar = v.kind.startswith("lumbar")
    ca = (11.0 if lumbar else 8.5 if v.kind == "thoracic" else 11.0) * fr
    cb = (8.0 if lumbar else 8.0 if v.kind == "thoracic" else 7.0) * fr
    tp = {"L1": 16, "L2": 21, "L3": 26, "L4": 22, "L5": 20, "L6": 19}.get(v.name, 17 if v.kind == "thoracic" else 10)
    return {"ca": ca, "cb": cb, "tp": tp * fr, "vc": v.b + cb + 1.5 * fr}


def _draw_spine(rng: np.random.Generator, m: _Maps, verts: list[_Vertebra], st: dict[str, Any]) -> None:
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
        disc = (wu < -up.h / 2 + 0.6) & (wl > lo.h / 2 - 0.6) & (((X - xs(zc)) / am) ** 2 + (vv / bm) ** 2 <= 1) & \
            (wu > -up.h / 2 - up.disc - 4)
        m.paint(sl, disc, _A["intervertebral_disc"], _LV["intervertebral_disc"], blocked=[_A["bone_cortex"]])
    for v in verts:
        if v.z + v.h + 60 < zmin or v.z - v.h - 60 > zmax:
            continue
        geo = _vertebra_geometry(v, fr)
        rot = _tilt_rot(v.tilt)
        C = np.array([xs(v.z), v.y, v.z])
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
                sl2, rho = _ellipsoid(g, P(0, vc, 0), (ca * (1.0 - 0.12 * i), cb * 0.6, v.h / 2 + v.disc), rot)
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
                          rot @ _rot(0, 40), lab, tc)
        else:
            _bone_element(m, P(0, v.b + 2 * cb + 4 + sp / 2, -v.h * 0.1), (3.5 * fr, sp / 2, v.h * 0.3), rot, lab, tc)
    # canal and cord last: through every level
    for v in mobile:
        if v.z + v.h + 40 < zmin or v.z - v.h - 40 > zmax:
            continue
        geo = _vertebra_geometry(v, fr)
        rot = _tilt_rot(v.tilt)
        C = np.array([xs(v.z), v.y, v.z])
        centre = C + rot @ np.array([0.0, geo["vc"], -v.disc * 0.25])
        semi = (geo["ca"], geo["cb"], v.h / 2 + v.disc * 0.75 + 1)
        sl, rho = _ellipsoid(g, centre, semi, rot)
        if sl is None:
            continue
        X, Y, Z = g.coords(sl)
        m.paint(sl, rho <= 1, _A["spinal_canal"], 0)
        if v.name[0] in "CT" or v.name == "L1":
            sl2, rho2 = _ellipsoid(g, centre, (geo["ca"] * 0.55, geo["cb"] * 0.6, semi[2]), rot)
            if sl2 is not None:
                m.paint(sl2, rho2 <= 1, _A["spinal_cord"], _LV["spinal_cord"], allowed=[_A["spinal_canal"]])


def _draw_ribs(rng: np.random.Generator, m: _Maps, verts: list[_Vertebra], body: dict[str, Any],
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
        geo = _vertebra_geometry(v, fr)
        rot = _tilt_rot(v.tilt)
        C = np.array([0.0, v.y, v.z])
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
            pts, rr = _spline_path(ctrl, np.r_[thick * 1.2, np.full(len(ctrl) - 1, thick)], min(thick, 2.0))
            rz = np.full(len(pts), height)
            label = _LV[f"{key}{n}"]
            _paint_tube(m, pts, rr, rz, core=_A["bone_cancellous"], shell=_A["bone_cortex"],
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
                cp, cr = _spline_path(np.array([end, mid, tip]), np.array([thick * 1.1, thick * 1.3, thick * 1.2]), 1.5)
                _paint_tube(m, cp, cr, cr * 1.4, core=_A["costal_cartilage"], label=_LV["costal_cartilage"],
                            blocked=_BONE)
    # sternum: manubrium at T2-T4, body to the xiphoid at about T10
    v = {x.name: x for x in verts}
    z_top, z_bot = v["T2"].z + 10, lm["xiphoid"]
    if z_bot < g.z[-1] + 10 and z_top > g.z[0] - 10:
        zz = np.arange(z_bot, z_top, 2.0)
        for off in (-9.0, 0.0, 9.0):
            y = -(body["b_ant_fn"](zz) - 6 * fr)
            w = np.where(zz > v["T4"].z, 1.6, 1.0)
            pts = np.stack([off * fr * w, y, zz], axis=1)
            _paint_tube(m, pts, np.full(len(zz), 6.5 * fr), np.full(len(zz), 3.0), core=_A["bone_cancellous"],
                        shell=_A["bone_cortex"], shell_mm=1.0, label=_LV["sternum"])


def _draw_pelvis(rng: np.random.Generator, m: _Maps, verts: list[_Vertebra], body: dict[str, Any],
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
            pts, _ = _spline_path(ctrl, np.ones(4), 1.5)
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
            _paint_tube(m, pts, rr, np.full(len(pts), max(min(g.sk, 2.0) * 0.8, 1.2)), core=_A["bone_cancellous"],
                        shell=_A["bone_cortex"], shell_mm=cortex, label=_LV[hip], blocked=[_A["bone_cortex"]])
        if il_pts:
            q = np.concatenate(il_pts)
            _paint_tube(m, q, np.full(len(q), 8.0 * fr * st["muscle"] ** 0.5), np.full(len(q), 2.5),
                        core=_A["psoas"], label=_LV["psoas"], allowed=[_A["visceral_fat"]])
        H = np.array([side * hx, hy, hz])
        # acetabulum: a cup over the head (superior, medial, posterior), then joint cartilage
        sl, rho = _ellipsoid(g, H, (hr + 11, hr + 11, hr + 11))
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
            pts, rr = _spline_path(np.array(ctrl, float), np.array(r, float) * fr, 2.0)
            _paint_tube(m, pts, rr, core=_A["bone_cancellous"], shell=_A["bone_cortex"], shell_mm=cortex,
                        label=_LV[hip], blocked=[_A["bone_cortex"], _A["joint_cartilage"]])
        # femur: head, neck, greater and lesser trochanter, shaft with fatty marrow
        _bone_element(m, H, (hr, hr, hr), None, _LV[femur], cortex)
        neck_end = H + np.array([side * 38 * fr, 6, -26])
        pts, rr = _spline_path(np.array([H, neck_end]), np.array([15, 14]) * fr, 2.0)
        _paint_tube(m, pts, rr, core=_A["bone_cancellous"], shell=_A["bone_cortex"], shell_mm=cortex,
                    label=_LV[femur], blocked=[_A["bone_cortex"]])
        _bone_element(m, H + np.array([side * 50 * fr, 10, -14]), (14 * fr, 18 * fr, 24 * fr), None, _LV[femur],
                      cortex)
        _bone_element(m, H + np.array([side * 24 * fr, 20, -58]), (8 * fr, 8 * fr, 10 * fr), None, _LV[femur], cortex)
        shaft = np.array([H + [side * 40 * fr, 8, -40], H + [side * 36 * fr, 5, -120], H + [side * 30 * fr, 0, -260]])
        pts, rr = _spline_path(shaft, np.array([15, 13.5, 13]) * fr, 2.0)
        _paint_tube(m, pts, rr, core=_A["bone_marrow_fat"], shell=_A["bone_cortex"], shell_mm=5.0 * fr,
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


def _imat_streaks(rng: np.random.Generator, m: _Maps, st: dict[str, Any]) -> None:
    """Intermuscular fat streaks along the muscle fibres (elongated along z)."""
    g = m.g
    step = 4
    coarse = np.isin(m.anat[::step, ::step, ::step], _MUSCLES)
    where = np.argwhere(coarse)
    if not len(where):
        return
    n = int(rng.poisson((20 + 160 * st["imat"]) * g.nk * g.sk / 300.0))
    for _ in range(n):
        k, j, i = where[rng.integers(len(where))] * step
        c = (float(g.x[min(i, g.ni - 1)]), float(g.y[min(j, g.nj - 1)]), float(g.z[min(k, g.nk - 1)]))
        semi = (rng.uniform(1.5, 5.0) * (0.6 + st["imat"]), rng.uniform(0.6, 1.5), rng.uniform(6, 25))
        sl, rho = _ellipsoid(g, c, semi, _rot(rng.uniform(0, 180), rng.uniform(-15, 15)))
        if sl is not None:
            m.paint(sl, rho <= 1, _A["intermuscular_fat"], None, allowed=_MUSCLES)


def _draw_screws(rng: np.random.Generator, m: _Maps, verts: list[_Vertebra]) -> list[str]:
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
            pts, rr = _spline_path(np.array([entry, tip]), np.array([3.3, 3.0]), 1.0)
            _paint_tube(m, pts, rr, core=_A["metal"], label=None)
            heads[side].append(entry + rot @ np.array([0.0, 7.0, 0.0]))
    for side in (-1, 1):
        hp = np.array(heads[side])
        if len(hp) >= 2:
            ctrl = np.vstack([hp[0] + [0, 0, 12], hp, hp[-1] - [0, 0, 10]])
            pts, rr = _spline_path(ctrl, np.full(len(ctrl), 2.8), 1.0)
            _paint_tube(m, pts, rr, core=_A["metal"], label=None)
    return [v.name for v in chosen]


# ============================================================================================ rendering
def _render(rng: np.random.Generator, anat: np.ndarray, g: _Grid, p: ScanParams, hu: dict[str, float],
            body: dict[str, Any]) -> np.ndarray:
    """Anatomy map -> int16 HU volume with texture, slice thickness, blur, streaks, table, noise, FOV."""
    spacing = (g.si, g.sj, g.sk)
    lut_mean = np.zeros(256, np.float32)
    lut_sd = np.zeros(256, np.float32)
    for value, key in _TISSUE_KEYS.items():
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
