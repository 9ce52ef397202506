"""Label-map driven CT synthesis: real anatomy label maps -> CT volumes in HU with added body layers.

A label map of real anatomy (TotalSegmentator "total" v2 ids, VerSe vertebra masks, or any map with a name
table) becomes a CT-like volume whose every voxel has a known class. The steps, each a plain function:

1. ``_canonical``: reorient the map to index axes pointing Left, Posterior, Superior (``array[k, j, i]``:
   slices inferior -> superior, rows anterior -> posterior, columns right -> left) and crop.
2. ``_add_discs`` / ``_atrophy_muscles``: intervertebral discs between labelled vertebrae where the map has
   none; muscle atrophy (muscle labels eroded by a habitus-dependent margin).
3. ``_add_body_layers``: where the map lacks them, the body wall is drawn around the labelled anatomy:
   a convex-ish hull (per axial slice, smooth along z) grown by a habitus-dependent visceral margin, an
   abdominal wall muscle layer (rectus sheath anteriorly, three oblique layers with thin fat planes laterally),
   subcutaneous fat of varying thickness, a 1.5-3 mm skin rim; visceral fat fills the remaining cavity,
   fat behind the paraspinal muscles is subcutaneous; optionally arms beside the abdomen.
4. ``_warp``: one resampling from the output grid into the map: affine (rotation, tilt, scaling), elastic
   displacement and the output spacing (0.5-5 mm) together, nearest-neighbour so labels stay labels.
5. ``_tissue_map``: classes -> tissues (:data:`~mskseg.synth.tissues.TISSUE_NAMES` keys): bones with a
   cortical shell and cancellous interior, kidneys with cortex, medulla and pelvis, bowel wall and content
   (gas, fluid, oral contrast, feces), vessels by contrast phase, fatty infiltration and intermuscular fat
   streaks in muscles.
6. :func:`~mskseg.synth.artifacts.simulate_scan` renders and adds the scanner (noise, blur, slice thickness,
   streaks, metal, table, field of view); real trabecular bone texture (patches of real CT, see
   :class:`BoneTexture`) is added inside the bones, rescaled to the scan's drawn bone HU.

Output labels (:attr:`SynthVolume.labels`): every input label keeps its value and name; the added classes
have the fixed values of :data:`ADDED_LABELS` (201 skin, 202 subcutaneous_fat, 203 abdominal_wall,
204 visceral_fat, 205 intermuscular_fat, 206 intervertebral_disc, 207 arm). Skin is its own class, never fat.
:func:`bodycomp_labels` turns a synthetic volume into the four body-composition classes at L3.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ..anatomy import vertebra_names
from ..errors import InvalidImageError
from ..image import Image
from .artifacts import outside_fov, simulate_scan
from .tissues import ScanParams, sample_scan_params, sample_tissue_hu

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

#: Body-composition classes of :func:`bodycomp_labels`.
BODYCOMP_LABELS: dict[int, str] = {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat",
                                   4: "intermuscular_fat"}

#: Internal value: fibrous tissue (linea alba, Scarpa's fascia) inside the subcutaneous fat; rendered as fascia,
#: reported as subcutaneous_fat.
_FASCIA_IN_FAT = 241
#: Internal values of the parts of the added arms, all reported as ``arm``.
_ARM_SKIN, _ARM_FAT, _ARM_MUSCLE, _ARM_BONE = 242, 243, 244, 245
_INTERNAL: dict[int, tuple[int, str]] = {  # value -> (reported value, tissue key)
    _FASCIA_IN_FAT: (ADDED_LABELS["subcutaneous_fat"], "fascia"),
    _ARM_SKIN: (ADDED_LABELS["arm"], "skin"),
    _ARM_FAT: (ADDED_LABELS["arm"], "fat:arm"),
    _ARM_MUSCLE: (ADDED_LABELS["arm"], "muscle:arm"),
    _ARM_BONE: (ADDED_LABELS["arm"], "bone"),
}

#: Margin (mm) added around the label map in-plane so that the added body wall fits.
_BODY_PAD_MM = 60.0

_VERTEBRA_ORDER = vertebra_names("C1", "S1", include=("L6",))


# --------------------------------------------------------------------------------------------------- params
@dataclass
class Habitus:
    """Body build of one synthetic patient.

    Attributes:
        sat_mm: mean subcutaneous fat thickness (mm).
        sat_variation: relative variation of the thickness around the body (0 = uniform).
        vat_margin_mm: visceral fat added between the labelled organs and the abdominal wall (mm).
        bowel_growth_mm: bowel loops grown into the surrounding fat (mm; lean patients have little
            mesenteric fat).
        wall_muscle_mm: thickness of the rectus / oblique muscle layer (mm).
        skin_mm: skin thickness (mm, 1.5-3).
        muscle_atrophy_mm: muscles eroded by this margin (mm; sarcopenia).
        fatty_infiltration_hu: muscle HU lowered by this amount (myosteatosis).
        imat_fraction: share of muscle voxels turned into intermuscular fat streaks (0-0.15).
        arms_down: arms beside the abdomen instead of raised.
    """

    sat_mm: float = 20.0
    sat_variation: float = 0.3
    vat_margin_mm: float = 6.0
    bowel_growth_mm: float = 0.0
    wall_muscle_mm: float = 11.0
    skin_mm: float = 2.0
    muscle_atrophy_mm: float = 0.0
    fatty_infiltration_hu: float = 0.0
    imat_fraction: float = 0.02
    arms_down: bool = False


def sample_habitus(rng: np.random.Generator, **overrides: Any) -> Habitus:
    """Draw a body build: lean to obese, young to sarcopenic, arms up (most scans) or down.

    Args:
        rng: random generator.
        **overrides: any :class:`Habitus` field to fix instead of drawing it.

    Returns:
        The drawn :class:`Habitus`.

    Raises:
        ValueError: for an unknown field name.
    """
    _check_overrides(Habitus, overrides)
    obese = float(rng.beta(2.0, 2.5))  # 0 lean .. 1 obese
    sarcopenic = float(rng.beta(1.3, 3.0))
    h = Habitus(
        sat_mm=4.0 + 60.0 * obese ** 1.3,
        sat_variation=float(rng.uniform(0.15, 0.45)),
        vat_margin_mm=float(max(0.0, 25.0 * obese + rng.normal(0.0, 4.0))),
        bowel_growth_mm=float(rng.uniform(0.0, 4.5) * (1.0 - obese)),
        wall_muscle_mm=float(rng.uniform(8.0, 15.0) * (1.0 - 0.45 * sarcopenic)),
        skin_mm=float(rng.uniform(1.5, 3.0)),
        muscle_atrophy_mm=float(3.5 * sarcopenic ** 1.5),
        fatty_infiltration_hu=float(35.0 * sarcopenic ** 1.5 + rng.uniform(0.0, 5.0)),
        imat_fraction=float(0.005 + 0.12 * sarcopenic * rng.random()),
        arms_down=bool(rng.random() < 0.2),
    )
    for key, value in overrides.items():
        setattr(h, key, value)
    return h


@dataclass
class SpatialParams:
    """Spatial augmentation of one sample.

    Attributes:
        rotation_deg: rotation about the cranio-caudal axis (degrees).
        tilt_deg: rotation about the left-right axis (gantry tilt / lordosis, degrees).
        scale: isotropic scaling (> 1 makes the patient larger).
        scale_ap: extra scaling of the antero-posterior axis (body shape).
        elastic_mm: standard deviation of the elastic displacement (mm).
        elastic_grid_mm: spacing of the elastic control points (mm).
    """

    rotation_deg: float = 0.0
    tilt_deg: float = 0.0
    scale: float = 1.0
    scale_ap: float = 1.0
    elastic_mm: float = 0.0
    elastic_grid_mm: float = 50.0

    @property
    def is_identity(self) -> bool:
        """True when the augmentation moves nothing."""
        return (self.rotation_deg == 0 and self.tilt_deg == 0 and self.scale == 1 and self.scale_ap == 1
                and self.elastic_mm == 0)


def sample_spatial(rng: np.random.Generator, **overrides: Any) -> SpatialParams:
    """Draw a spatial augmentation (rotation +-10 deg, tilt +-4 deg, scale 0.85-1.15, elastic 0-4 mm).

    Args:
        rng: random generator.
        **overrides: any :class:`SpatialParams` field to fix.

    Returns:
        The drawn :class:`SpatialParams`.
    """
    _check_overrides(SpatialParams, overrides)
    s = SpatialParams(
        rotation_deg=float(rng.uniform(-10.0, 10.0)),
        tilt_deg=float(rng.uniform(-4.0, 4.0)),
        scale=float(rng.uniform(0.85, 1.15)),
        scale_ap=float(rng.uniform(0.9, 1.1)),
        elastic_mm=float(rng.uniform(0.0, 4.0)),
        elastic_grid_mm=float(rng.uniform(35.0, 70.0)),
    )
    for key, value in overrides.items():
        setattr(s, key, value)
    return s


def _check_overrides(cls: type, overrides: dict[str, Any]) -> None:
    names = {f.name for f in fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: {sorted(names)}")


@dataclass(eq=False)
class SynthVolume:
    """One synthetic CT and its truth.

    Attributes:
        image: float32 HU volume ``(K, J, I)``, axes Left / Posterior / Superior.
        labels: uint16 label map on ``image``'s grid: input labels plus :data:`ADDED_LABELS`.
        label_names: label value -> class name for every value in ``labels`` (0 = outside the body).
        tissue_map: uint8 map on the same grid: the tissue each voxel was rendered as.
        tissue_names: tissue map value -> tissue key (``"muscle:autochthon"``; the part before ``:`` is a
            name of :data:`~mskseg.synth.tissues.TISSUE_NAMES`).
        params: the scan parameters used.
        meta: everything else that was drawn (habitus, spatial augmentation, tissue HU, timings).
    """

    image: Image
    labels: Image
    label_names: dict[int, str]
    tissue_map: Image
    tissue_names: dict[int, str]
    params: ScanParams
    meta: dict[str, Any] = field(default_factory=dict)


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


def _kind(name: str) -> str:
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


_ORGAN_TISSUE = {"liver": "liver", "spleen": "spleen", "pancreas": "pancreas", "gallbladder": "bile",
                 "urinary_bladder": "urine", "trachea": "air", "spinal_cord": "csf:cord", "brain": "csf:brain",
                 "prostate": "muscle:prostate", "thyroid_gland": "spleen:thyroid",
                 "adrenal_gland_left": "pancreas:adrenal", "adrenal_gland_right": "pancreas:adrenal"}


# --------------------------------------------------------------------------------------------------- main
def synthesize_ct(labelmap: Image, names: dict[int, str], rng: np.random.Generator, *,
                  params: ScanParams | None = None, spacing_mm: float | Sequence[float] | None = None,
                  habitus: Habitus | None = None, add_body: bool = True,
                  spatial: SpatialParams | None = None, augment: bool = True,
                  crop: Sequence[tuple[int, int]] | None = None,
                  bone_texture: "BoneTexture | bool | None" = None) -> SynthVolume:
    """Synthesise one CT volume (HU) with its label map from a label map of real anatomy.

    Args:
        labelmap: integer label map ``(K, J, I)`` with any geometry (reoriented internally).
        names: label value -> class name (TotalSegmentator names such as ``vertebrae_L3``, ``iliopsoas_left``,
            ``kidney_right``; unknown names are rendered as soft tissue). Values absent from ``names`` are
            treated as background.
        rng: random generator; the same seed gives identical arrays.
        params: scan parameters; drawn with :func:`~mskseg.synth.tissues.sample_scan_params` when None.
        spacing_mm: output voxel size ``(i, j, k)`` mm, or one number for all axes; None keeps the input
            spacing in-plane and uses ``params.slice_thickness_mm`` between slices.
        habitus: body build; drawn with :func:`sample_habitus` when None.
        add_body: draw skin, subcutaneous fat, abdominal wall muscles and visceral fat around the anatomy
            (when the map already has them, pass False).
        spatial: spatial augmentation; drawn with :func:`sample_spatial` when None and ``augment`` is True.
        augment: with ``spatial`` None, False means no spatial augmentation.
        crop: index ranges ``((k0, k1), (j0, j1), (i0, i1))`` of the input array (end exclusive), or
            ``((k0, k1),)`` for a range of input slices; the output covers that physical region
            (see :func:`slab_around`). The body is still computed from the whole slices.
        bone_texture: real bone texture source; None or True: :func:`default_bone_texture` (procedural
            texture only when no real bone CT is found); False: procedural texture only.

    Returns:
        A :class:`SynthVolume`; image and labels share one grid (axes Left, Posterior, Superior).

    Raises:
        InvalidImageError: a 2D map, a non-integer map, an empty crop, or labels colliding with
            :data:`ADDED_LABELS`.
    """
    import time

    t0 = time.perf_counter()
    lab, geo = _canonical(labelmap, names, crop)
    names = {int(v): str(n) for v, n in names.items()}
    params = sample_scan_params(rng) if params is None else params
    habitus = sample_habitus(rng) if habitus is None else habitus
    if spatial is None:
        spatial = sample_spatial(rng) if augment else SpatialParams()
    in_spacing = geo["spacing"]  # (i, j, k) of the canonical map
    if spacing_mm is None:
        out_spacing = (in_spacing[0], in_spacing[1], float(max(params.slice_thickness_mm, 0.5)))
    else:
        out_spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_mm, float), (3,)))
    if min(out_spacing) <= 0:
        raise InvalidImageError(f"output spacing {out_spacing} mm must be positive")

    lab_names = dict(names)
    lab = _add_discs(lab, lab_names, in_spacing)
    if habitus.muscle_atrophy_mm > 0:
        lab = _atrophy_muscles(lab, lab_names, in_spacing, habitus.muscle_atrophy_mm)
    if habitus.bowel_growth_mm > 0:
        lab = _grow_bowel(lab, lab_names, in_spacing, habitus.bowel_growth_mm)
    if add_body:
        lab = _add_body_layers(lab, lab_names, in_spacing, habitus, rng, _raster_box(geo, spatial))
    t_anatomy = time.perf_counter() - t0

    out_lab, out_geo = _warp(lab, geo, out_spacing, spatial, rng)
    t_warp = time.perf_counter() - t0 - t_anatomy

    hu = sample_tissue_hu(rng, params)
    tmap, tnames, hu = _tissue_map(out_lab, lab_names, out_spacing, habitus, params, hu, rng)
    img, params = simulate_scan(tmap, tnames, out_spacing, rng, params, hu)
    texture = default_bone_texture() if bone_texture is None or bone_texture is True else (bone_texture or None)
    if texture is not None:
        img = texture.apply(img, tmap, tnames, hu, out_spacing, rng, params)
    t_total = time.perf_counter() - t0

    # Nothing outside the reconstruction circle is imaged: no label there (a radiologist cannot outline it).
    out_lab[:, outside_fov(out_lab.shape[-2:], out_spacing, params.fov_mm)] = 0
    for value, (reported, _) in _INTERNAL.items():
        out_lab[out_lab == value] = reported
    present = {int(v) for v in np.unique(out_lab)}
    out_names = {v: n for v, n in lab_names.items() if v in present and v != 0}
    image = Image(img.astype(np.float32), out_spacing, out_geo["origin"], out_geo["direction"],
                  {"Modality": "CT", "synthetic": True})
    meta = {
        "habitus": asdict(habitus), "spatial": asdict(spatial), "tissue_hu": {k: round(v, 2) for k, v in hu.items()},
        "seconds": {"anatomy": round(t_anatomy, 3), "warp": round(t_warp, 3), "total": round(t_total, 3)},
        "real_bone_texture": texture is not None,
    }
    return SynthVolume(image, image.with_array(out_lab.astype(np.uint16), keep_metadata=False), out_names,
                       image.with_array(tmap, keep_metadata=False), tnames, params, meta)


def slab_around(labelmap: Image, names: dict[int, str], name: str, margin_mm: float = 20.0,
                ) -> tuple[tuple[int, int]]:
    """The crop ``((k0, k1),)`` of input slices covering class ``name`` plus ``margin_mm`` above and below.

    Args:
        labelmap: the label map ``(K, J, I)`` given to :func:`synthesize_ct`.
        names: its label names.
        name: class to centre on (``"vertebrae_L3"``).
        margin_mm: extra extent on each side along the slice axis (mm).

    Returns:
        ``((k0, k1),)`` for the ``crop`` argument of :func:`synthesize_ct`.

    Raises:
        InvalidImageError: ``name`` is not in the map.
    """
    values = [v for v, n in names.items() if n == name]
    mask = np.isin(labelmap.array, values) if values else np.zeros(1, bool)
    if not mask.any():
        raise InvalidImageError(f"class {name!r} is not in the label map",
                                "choose a class that is present (see the names table)")
    ks = np.nonzero(mask.any(axis=(1, 2)))[0]
    pad = int(round(margin_mm / labelmap.spacing[2]))
    return ((max(0, int(ks[0]) - pad), min(labelmap.array.shape[0], int(ks[-1]) + 1 + pad)),)


def bodycomp_labels(volume: SynthVolume, muscle_hu: tuple[float, float] = (-29.0, 150.0),
                    fat_hu: tuple[float, float] = (-190.0, -30.0)) -> tuple[Image, dict[int, str]]:
    """Body-composition truth of a synthetic volume: muscle, SAT, VAT, IMAT (:data:`BODYCOMP_LABELS`).

    Skeletal muscle = psoas, paraspinal, gluteal, quadratus lumborum and abdominal wall labels whose rendered
    tissue is muscle; muscle voxels rendered as fat are intermuscular fat, as the BODYCOMP convention moves
    fat pixels out of muscle. The HU windows are applied to the noiseless tissue class, not to the noisy image,
    so the truth does not depend on noise. Skin and arms are background.

    Args:
        volume: output of :func:`synthesize_ct`.
        muscle_hu, fat_hu: kept for the record in the returned names' order (the windows of BODYCOMP.md).

    Returns:
        ``(label map uint8 on the volume's grid, BODYCOMP_LABELS)``.
    """
    lab = volume.labels.array
    tissue = volume.tissue_map.array
    fat_t = [v for v, k in volume.tissue_names.items() if k.split(":")[0] == "fat"]
    muscle_t = [v for v, k in volume.tissue_names.items() if k.split(":")[0] == "muscle"]
    muscle_l = [v for v, n in volume.label_names.items()
                if _kind(n) == "muscle" or n == "abdominal_wall"]
    is_fat = np.isin(tissue, fat_t)
    in_muscle = np.isin(lab, muscle_l)
    out = np.zeros(lab.shape, np.uint8)
    out[in_muscle & np.isin(tissue, muscle_t)] = 1
    out[(lab == ADDED_LABELS["subcutaneous_fat"]) & is_fat] = 2
    out[(lab == ADDED_LABELS["visceral_fat"]) & is_fat] = 3
    out[((lab == ADDED_LABELS["intermuscular_fat"]) | in_muscle) & is_fat] = 4
    return volume.labels.with_array(out), dict(BODYCOMP_LABELS)


# --------------------------------------------------------------------------------------------------- geometry
def _canonical(labelmap: Image, names: dict[int, str], crop) -> tuple[np.ndarray, dict[str, Any]]:
    """Reorient to Left/Posterior/Superior index axes, apply ``crop`` (given in input indices)."""
    import SimpleITK as sitk

    if labelmap.ndim != 3:
        raise InvalidImageError(f"synthesize_ct needs a 3D label map, got shape {labelmap.array.shape}")
    arr = np.asarray(labelmap.array)
    if arr.dtype.kind not in "iub":
        if not np.allclose(arr, np.round(arr)):
            raise InvalidImageError("the label map holds non-integer values; give an integer label map")
    clash = sorted({int(v) for v in names} & set(ADDED_LABELS.values()))
    if clash:
        raise InvalidImageError(f"label values {clash} collide with the generator's added classes "
                                f"{ADDED_LABELS}", "renumber the input labels below 200")
    if crop is not None:
        crop = [tuple(int(x) for x in c) for c in crop]
        slices = [slice(max(0, a), min(n, b)) for (a, b), n in zip(crop, arr.shape)]
        slices += [slice(0, n) for n in arr.shape[len(slices):]]
        if any(s.stop <= s.start for s in slices):
            raise InvalidImageError(f"crop {crop} is empty for a label map of shape {arr.shape}")
    else:
        slices = [slice(0, n) for n in arr.shape]
    # Keep whole slices (the body needs them) and a margin of slices for the spatial augmentation.
    k_margin = int(np.ceil(15.0 / labelmap.spacing[2]))
    sk = slice(max(0, slices[0].start - k_margin), min(arr.shape[0], slices[0].stop + k_margin))
    sub = np.ascontiguousarray(arr[sk]).astype(np.uint16)
    origin = labelmap.index_to_physical(np.array([0.0, 0.0, float(sk.start)]))
    img = Image(sub, labelmap.spacing, origin, labelmap.direction).to_sitk()
    img = sitk.DICOMOrient(img, "LPS")
    can = Image.from_sitk(img)
    # Room around the anatomy for the body wall the generator adds (label maps often end at the organs).
    pad_i, pad_j = (int(np.ceil(_BODY_PAD_MM / s)) for s in can.spacing[:2])
    padded = np.pad(can.array, ((0, 0), (pad_j, pad_j), (pad_i, pad_i)))
    can = Image(padded, can.spacing, can.index_to_physical(np.array([-pad_i, -pad_j, 0.0])), can.direction)
    in_plane_given = crop is not None and len(crop) >= 2
    # The requested output region as a physical box in the canonical frame.
    corners = []
    for k in (slices[0].start, slices[0].stop - 1):
        for j in (slices[1].start, slices[1].stop - 1):
            for i in (slices[2].start, slices[2].stop - 1):
                corners.append(labelmap.index_to_physical(np.array([i, j, k], float)))
    cidx = can.physical_to_index(np.array(corners))
    lo = np.clip(np.floor(cidx.min(axis=0) + 1e-6), 0, None)
    hi = np.minimum(np.ceil(cidx.max(axis=0) - 1e-6), np.array(can.size) - 1)
    if not in_plane_given:
        lo[:2] = 0
        hi[:2] = np.array(can.size[:2]) - 1
    geo = {"spacing": can.spacing, "origin": np.asarray(can.origin), "direction": can.direction,
           "region_lo": lo, "region_hi": hi}  # (i, j, k) continuous indices of the output box
    return can.array, geo


def _warp(lab: np.ndarray, geo: dict[str, Any], out_spacing: tuple[float, float, float],
          spatial: SpatialParams, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Resample ``lab`` (canonical, ``(K, J, I)``) onto the output grid with affine + elastic augmentation."""
    sp_in = np.asarray(geo["spacing"], float)  # (i, j, k)
    lo, hi = geo["region_lo"], geo["region_hi"]
    extent = (hi - lo) * sp_in  # mm between first and last voxel centre, (i, j, k)
    n_out = np.maximum(1, np.floor(extent / np.asarray(out_spacing) + 1e-6).astype(int) + 1)
    origin_idx = lo + (extent - (n_out - 1) * np.asarray(out_spacing)) / 2.0 / sp_in  # centre the grid
    origin = geo["origin"] + geo["direction"] @ (origin_idx * sp_in)
    out_geo = {"origin": origin, "direction": geo["direction"]}
    shape = tuple(int(n) for n in n_out[::-1])  # (K, J, I)
    if spatial.is_identity and np.allclose(out_spacing, sp_in) and np.allclose(origin_idx, np.round(origin_idx)):
        o = np.round(origin_idx).astype(int)
        return lab[o[2]:o[2] + shape[0], o[1]:o[1] + shape[1], o[0]:o[0] + shape[2]].copy(), out_geo
    # Output voxel centre in mm relative to the output box centre, (x=i, y=j, z=k) order.
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(n_out, out_spacing)]
    centre_in_mm = (origin_idx * sp_in) + (n_out - 1) * np.asarray(out_spacing) / 2.0
    a = np.deg2rad(spatial.rotation_deg)
    t = np.deg2rad(spatial.tilt_deg)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    scale = np.diag([spatial.scale, spatial.scale * spatial.scale_ap, spatial.scale])
    # output mm -> input mm: inverse of (scale then rotate)
    m = np.linalg.inv(rot_z @ rot_x @ scale)
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij", sparse=True)
    coords = []
    for row in range(3):
        c = m[row, 0] * xx + m[row, 1] * yy + m[row, 2] * zz + centre_in_mm[row]
        coords.append(np.broadcast_to(c, shape).astype(np.float32))
    if spatial.elastic_mm > 0:
        # smooth random displacement: control points on a coarse grid, separable Gaussian interpolation
        weights = []
        for n, s in zip(shape, out_spacing[::-1]):
            g = max(2, int(np.ceil(n * s / spatial.elastic_grid_mm)) + 1)
            ctrl_pos = np.linspace(0, n - 1, g)
            sig = max((n - 1) / (g - 1), 1.0) * 0.6
            w = np.exp(-0.5 * ((np.arange(n)[:, None] - ctrl_pos[None, :]) / sig) ** 2)
            weights.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
        for row in range(3):
            ctrl = rng.normal(0.0, spatial.elastic_mm, size=[w.shape[1] for w in weights]).astype(np.float32)
            disp = np.einsum("ka,abc->kbc", weights[0], ctrl)
            disp = np.einsum("jb,kbc->kjc", weights[1], disp)
            coords[row] = coords[row] + np.einsum("ic,kjc->kji", weights[2], disp)
    idx = [coords[2] / np.float32(sp_in[2]), coords[1] / np.float32(sp_in[1]), coords[0] / np.float32(sp_in[0])]
    out = ndimage.map_coordinates(lab, idx, order=0, mode="constant", cval=0, prefilter=False)
    return out.astype(lab.dtype), out_geo


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


def _add_discs(lab: np.ndarray, names: dict[int, str], spacing) -> np.ndarray:
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
        box = _bbox(a | b, pad=(int(8 / sz) + 1, 2, 2))
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


def _bbox(mask: np.ndarray, pad=(0, 0, 0)):
    nz = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    if any(len(n) == 0 for n in nz):
        return None
    return tuple(slice(max(0, n[0] - p), min(s, n[-1] + 1 + p)) for n, p, s in zip(nz, pad, mask.shape))


def _atrophy_muscles(lab: np.ndarray, names: dict[int, str], spacing, mm: float) -> np.ndarray:
    """Erode every muscle label by ``mm`` in-plane (the freed rim becomes fat of the surrounding compartment)."""
    ids = _ids(names, lambda n: _kind(n) == "muscle")
    if not ids:
        return lab
    mus = np.isin(lab, ids)
    box = _bbox(mus, pad=(0, 1, 1))
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


def _grow_bowel(lab: np.ndarray, names: dict[int, str], spacing, mm: float) -> np.ndarray:
    """Grow bowel labels into unlabelled voxels by ``mm`` (less mesenteric fat in lean patients)."""
    ids = _ids(names, lambda n: _kind(n) == "bowel")
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


def _raster_box(geo: dict[str, Any], spatial: SpatialParams) -> tuple[slice, slice]:
    """Rows and columns (j, i) of the canonical map that the output can sample, with room for augmentation."""
    sp = np.asarray(geo["spacing"], float)
    lo, hi = geo["region_lo"], geo["region_hi"]
    half = (hi - lo) * sp / 2.0
    reach = np.hypot(half[0], half[1]) * max(spatial.scale, 1.0 / max(spatial.scale, 0.5))
    margin = reach - half[:2] + 4.0 * spatial.elastic_mm + 6.0  # mm beyond the box a rotation can reach
    if spatial.rotation_deg == 0 and spatial.scale == 1 and spatial.scale_ap == 1:
        margin = np.full(2, 4.0 * spatial.elastic_mm + 3.0)
    lo_v = np.floor(lo[:2] - margin / sp[:2]).astype(int)
    hi_v = np.ceil(hi[:2] + margin / sp[:2]).astype(int) + 1
    return slice(max(0, lo_v[1]), hi_v[1]), slice(max(0, lo_v[0]), hi_v[0])


def _add_body_layers(lab: np.ndarray, names: dict[int, str], spacing, habitus: Habitus,
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
    zvar = 1 + 0.1 * ndimage.gaussian_filter1d(rng.normal(0, 1, K), max(1.0, 30.0 / sz), mode="nearest") \
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
        planes = wall_m & (np.abs(th_) > np.deg2rad(40)) & ((np.abs(depth - 0.33) < 0.07) | (np.abs(depth - 0.66) < 0.07))
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
        sl[alba] = _FASCIA_IN_FAT
        sl[wall_m & ~planes] = wall_v
        sl[wall_m & planes] = imat_v
        sl[inside & ~back] = vat_v
        # Scarpa's fascia: a thin fibrous line inside the anterior and lateral subcutaneous fat
        fdepth = (r - rw) / np.maximum(rf - rw, 1e-3)
        fascia = sat_m & (np.abs(fdepth - scarpa) * (rf - rw) < 0.6) & (np.abs(th_) < np.deg2rad(110)) & (rf - rw > 12)
        sl[fascia] = _FASCIA_IN_FAT
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
        out[free & (np.hypot(by, bx) <= bone_r) & (rr <= radius - habitus.skin_mm - 0.5 * fat)] = _ARM_BONE
    names[ADDED_LABELS["arm"]] = "arm"
    return out


# --------------------------------------------------------------------------------------------------- tissues
def _tissue_map(lab: np.ndarray, names: dict[int, str], spacing, habitus: Habitus, params: ScanParams,
                hu: dict[str, float], rng: np.random.Generator,
                ) -> tuple[np.ndarray, dict[int, str], dict[str, float]]:
    """Classes -> tissue keys on the output grid; returns (tissue map uint8, value -> key, extended HU)."""
    sx, sy, sz = spacing
    keys: list[str] = ["air"]
    key_id: dict[str, int] = {"air": 0}
    tmap = np.zeros(lab.shape, np.uint8)
    hu = dict(hu)

    def tid(key: str) -> int:
        if key not in key_id:
            key_id[key] = len(keys)
            keys.append(key)
        return key_id[key]

    def put(mask: np.ndarray, key: str) -> None:
        tmap[mask] = tid(key)

    present = [int(v) for v in np.unique(lab) if v != 0]
    by_kind: dict[str, list[int]] = {}
    for v in present:
        kind = "bone" if v == _ARM_BONE else (_kind(names[v]) if v in names else "unknown")
        by_kind.setdefault(kind, []).append(v)

    infil = habitus.fatty_infiltration_hu
    for v in present:
        n = names.get(v, "")
        kind = _kind(n) if v in names else ("internal" if v in _INTERNAL else "unknown")
        m = lab == v
        if v in _INTERNAL:
            if _INTERNAL[v][1] != "bone":
                put(m, _INTERNAL[v][1])
            continue
        if kind == "added":
            key = {"skin": "skin", "subcutaneous_fat": "fat:sat", "visceral_fat": "fat:vat",
                   "intermuscular_fat": "fat:imat", "abdominal_wall": "muscle:wall",
                   "intervertebral_disc": "disc", "arm": "fat:arm"}[n]
            put(m, key)
        elif kind == "muscle":
            put(m, "muscle:" + n.split("_")[0])
        elif kind == "organ":
            put(m, _ORGAN_TISSUE.get(n, "muscle:organ"))
        elif kind in ("lung", "cartilage", "cyst"):
            put(m, {"lung": "lung", "cartilage": "cartilage", "cyst": "water"}[kind])
        elif kind == "artery":
            put(m, "blood")
        elif kind == "vein":
            put(m, "venous_blood:portal" if n.startswith("portal") else "venous_blood")
        elif kind == "unknown":
            put(m, "muscle:organ")
        # bone, kidney, bowel, heart: below, on their whole class
    # muscles: fatty infiltration and HU per muscle group
    for key in list(key_id):
        if key.startswith("muscle:"):
            hu[key] = hu["muscle"] - infil + float(rng.normal(0, 3.0))
    hu["muscle:organ"] = hu["muscle"] + 5.0
    # visceral fat is a little denser than subcutaneous fat (more vessels and septa)
    hu["fat:sat"] = hu["fat"] + float(rng.uniform(0.0, 10.0))
    hu["fat:vat"] = hu["fat"] + float(rng.uniform(5.0, 20.0))
    hu["fat:imat"] = hu["fat"] + float(rng.uniform(10, 30))
    hu["fat:arm"] = hu["fat"]
    hu["csf:cord"] = hu["csf"] + float(rng.uniform(15, 25))
    hu["csf:brain"] = hu["csf"] + 25.0
    hu["venous_blood:portal"] = hu["venous_blood"] + (float(rng.uniform(0, 30)) if params.phase != "native" else 0)
    hu["spleen:thyroid"] = hu["spleen"] + 30.0
    hu["pancreas:adrenal"] = hu["pancreas"]
    # intermuscular fat streaks inside muscles (myosteatosis)
    mus_ids = by_kind.get("muscle", []) + [v for v in present if names.get(v) == "abdominal_wall"]
    if mus_ids and habitus.imat_fraction > 0:
        mus = np.isin(lab, mus_ids)
        box = _bbox(mus, pad=(0, 0, 0))
        field_ = _anisotropic_noise(tuple(s.stop - s.start for s in box), rng, spacing, (1.0, 1.0, 6.0))
        thr = np.quantile(field_[mus[box]], 1 - habitus.imat_fraction) if mus[box].any() else np.inf
        streak = np.zeros(lab.shape, bool)
        streak[box] = (field_ > thr) & mus[box]
        put(streak, "fat:imat")
    # liver: portal and hepatic vein branches (curvy tubes where two smooth random fields are both near zero)
    liver_ids = [v for v in present if names.get(v) == "liver"]
    if liver_ids:
        vessel = _tubes(np.isin(lab, liver_ids), rng, spacing, (9.0, 9.0, 9.0), (0.12, 0.22))
        put(vessel, "venous_blood:hepatic")
        hu["venous_blood:hepatic"] = hu["venous_blood"] + (float(rng.uniform(-20, 20)) if params.phase == "portal"
                                                           else 0.0)
    # fat is not uniform: small vessels and fibrous septa (labelled as the fat around them)
    fat_vals = [v for v in present if names.get(v) in ("visceral_fat", "subcutaneous_fat")]
    if fat_vals:
        strand = _tubes(np.isin(lab, fat_vals), rng, spacing, (3.0, 3.0, 5.0), (0.05, 0.11), second_width_factor=4.0)
        put(strand, "fascia:strand")
        hu["fascia:strand"] = hu["fat"] + float(rng.uniform(60, 120))
    # bones: cortical shell + cancellous interior
    bone_ids = by_kind.get("bone", [])
    if bone_ids:
        bone = np.isin(lab, bone_ids)
        box = _bbox(bone, pad=(1, 1, 1))
        sub = bone[box]
        n_it = max(1, int(round(1.0 / min(spacing))))
        inner = ndimage.binary_erosion(sub, iterations=n_it)
        canc = np.zeros(lab.shape, bool)
        canc[box] = inner
        put(bone & ~canc, "cortical_bone:shell")
        put(canc, "cancellous_bone")
        # partial volume of a ~1 mm cortex in a coarse voxel
        t_cort = float(rng.uniform(0.35, 0.9))
        pv = float(np.clip(t_cort / (n_it * float(np.mean(spacing[:2]))), 0.15, 0.9))
        hu["cortical_bone:shell"] = hu["cancellous_bone"] + pv * (hu["cortical_bone"] - hu["cancellous_bone"])
    # kidneys: cortex, medulla, pelvis (urine); the hilum fat is the unlabelled notch (visceral fat)
    for v in by_kind.get("kidney", []):
        m = lab == v
        box = _bbox(m, pad=(1, 1, 1))
        d = ndimage.distance_transform_edt(m[box], sampling=(sz, sy, sx))
        c_mm = float(rng.uniform(4.0, 7.0))
        sub_t = tmap[box]
        sub_m = m[box]
        sub_t[sub_m & (d <= c_mm)] = tid("kidney_cortex")
        medulla = sub_m & (d > c_mm)
        sub_t[medulla] = tid("kidney_medulla")
        deep = sub_m & (d > c_mm + float(rng.uniform(5.0, 9.0)))
        if deep.any():
            sinus_noise = _anisotropic_noise(deep.shape, rng, spacing, (4.0, 4.0, 4.0))
            sub_t[deep & (sinus_noise > 0.3)] = tid("fat:sinus")
            sub_t[deep & (sinus_noise <= 0.3) & (sinus_noise > -0.2)] = tid("urine")
    hu["fat:sinus"] = hu["fat"] + 15.0
    # bowel: wall + content
    bowel_ids = by_kind.get("bowel", [])
    if bowel_ids:
        bow = np.isin(lab, bowel_ids)
        box = _bbox(bow, pad=(1, 2, 2))
        sub = bow[box]
        wall_mm = float(rng.uniform(1.5, 3.0))
        d = ndimage.distance_transform_edt(sub, sampling=(max(sz, 3.0), sy, sx))
        lumen = sub & (d > wall_mm)
        sub_t = tmap[box]
        sub_t[sub & ~lumen] = tid("bowel_wall")
        sub_lab = lab[box]
        oral = params.phase != "native" and rng.random() < 0.35
        fld = _anisotropic_noise(sub.shape, rng, spacing, (5.0, 5.0, 8.0))
        # gas rises: anterior parts of the abdomen hold more gas
        j_rel = (np.arange(sub.shape[1]) / max(sub.shape[1] - 1, 1))[None, :, None]
        gas_score = fld + 1.2 * (0.5 - j_rel)
        for v in bowel_ids:
            n = names.get(v, "")
            lm = lumen & (sub_lab == v)
            if not lm.any():
                continue
            if n.startswith("colon"):
                fec = _anisotropic_noise(sub.shape, rng, spacing, (1.2, 1.2, 1.2))
                sub_t[lm] = tid("feces")
                sub_t[lm & (fec > 0.9)] = tid("bowel_gas")
                sub_t[lm & (gas_score > 0.6)] = tid("bowel_gas")
            else:
                sub_t[lm] = tid("oral_contrast" if oral else "bowel_fluid")
                sub_t[lm & (gas_score > 1.0)] = tid("bowel_gas")
    # heart: myocardium shell around blood
    for v in by_kind.get("heart", []):
        m = lab == v
        box = _bbox(m, pad=(1, 1, 1))
        d = ndimage.distance_transform_edt(m[box], sampling=(sz, sy, sx))
        sub_t = tmap[box]
        sub_t[m[box] & (d <= 9.0)] = tid("muscle:myocardium")
        sub_t[m[box] & (d > 9.0)] = tid("blood")
        hu["muscle:myocardium"] = hu["muscle"] + (40.0 if params.phase != "native" else 0.0)
    for key in keys:
        if key not in hu:
            base = key.split(":")[0]
            hu[key] = hu[base]
    return tmap, {i: k for i, k in enumerate(keys)}, hu


def _tubes(mask: np.ndarray, rng: np.random.Generator, spacing, scale_mm: tuple[float, float, float],
           width_range: tuple[float, float], second_width_factor: float = 1.0) -> np.ndarray:
    """Curvy tubes inside ``mask`` (K, J, I): where two smooth random fields of feature size ``scale_mm`` are
    both near zero (``|f1| < width``, ``|f2| < width * second_width_factor``, width drawn from
    ``width_range``). Vessels, fibrous septa."""
    box = _bbox(mask, pad=(0, 0, 0))
    shp = tuple(s_.stop - s_.start for s_ in box)
    f1 = _anisotropic_noise(shp, rng, spacing, scale_mm)
    f2 = _anisotropic_noise(shp, rng, spacing, scale_mm)
    width = float(rng.uniform(*width_range))
    out = np.zeros(mask.shape, bool)
    out[box] = (np.abs(f1) < width) & (np.abs(f2) < width * second_width_factor) & mask[box]
    return out


def _anisotropic_noise(shape: tuple[int, ...], rng: np.random.Generator, spacing,
                       sigma_mm: tuple[float, float, float]) -> np.ndarray:
    """Unit-SD Gaussian random field ``(K, J, I)`` smoothed by ``sigma_mm`` (i, j, k) mm."""
    white = rng.standard_normal(shape, dtype=np.float32)
    sig = (sigma_mm[2] / spacing[2], sigma_mm[1] / spacing[1], sigma_mm[0] / spacing[0])
    out = ndimage.gaussian_filter(white, sig, mode="wrap")
    sd = float(out.std())
    return out / sd if sd > 0 else out


# --------------------------------------------------------------------------------------------------- bone
class BoneTexture:
    """Real trabecular bone texture: patches of real CT, re-tiled into a cube and rescaled per scan.

    The source is a CT volume in which only bone is kept (HU >= 200, 0 elsewhere, as
    ``totalseg-labelmaps/bone_ct/ct328_bone.nrrd``). Bone interiors are found by filling the bone outline of
    every axial slice; voxels under 200 HU inside (marrow-rich cancellous bone) are filled from their
    neighbourhood. Cubes of 10 voxels lying wholly inside bone are blended into a texture cube; its zero-mean
    deviations are added inside the synthetic cancellous bone, scaled to the scan's drawn cancellous HU.

    Args:
        paths: bone CT files (NRRD / NIfTI / MHA) readable by SimpleITK.
        cube_voxels: edge of the quilted texture cube (voxels of the source spacing).
        seed: seed of the quilting (the texture cube is fixed for a given source).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], cube_voxels: int = 48, seed: int = 0):
        import SimpleITK as sitk

        rng = np.random.default_rng(seed)
        block = 10
        blocks: list[np.ndarray] = []
        spacing = None
        for p in paths:
            img = sitk.ReadImage(str(p))
            arr = sitk.GetArrayFromImage(img).astype(np.float32)
            spacing = img.GetSpacing()
            bone = arr > 0
            closed = ndimage.binary_closing(bone, np.ones((1, 3, 3), bool), iterations=2)
            filled = np.stack([ndimage.binary_fill_holes(s) for s in closed])
            interior = ndimage.binary_erosion(filled, iterations=2)
            smooth = ndimage.gaussian_filter(np.where(bone, arr, 120.0), 0.8)
            vals = np.where(bone, arr, np.minimum(smooth, 199.0))
            ok = ndimage.uniform_filter(interior.astype(np.float32), block) > 0.999
            cand = np.argwhere(ok)
            if len(cand) == 0:
                continue
            take = cand[rng.choice(len(cand), size=min(len(cand), 4000), replace=False)]
            h = block // 2
            for c in take:
                sl = tuple(slice(x - h, x - h + block) for x in c)
                b = vals[sl]
                if b.shape == (block,) * 3:
                    blocks.append(b)
        if not blocks:
            raise InvalidImageError(f"no bone interior found in {list(map(str, paths))}",
                                    "give CT volumes holding bone (HU >= 200)")
        # Overlapping blocks under a smooth window, summed with weights normalised by sqrt(sum w^2): the
        # texture keeps its variance at the seams and shows no block edges.
        stride = block - 4
        n = cube_voxels // stride + 1
        size = n * stride + block
        acc = np.zeros((size,) * 3, np.float32)
        wsum = np.zeros((size,) * 3, np.float32)
        win1 = np.sin(np.pi * (np.arange(block) + 0.5) / block).astype(np.float32)
        win = win1[:, None, None] * win1[None, :, None] * win1[None, None, :]
        all_mean = float(np.mean([b.mean() for b in blocks]))
        picks = rng.integers(0, len(blocks), size=n ** 3)
        for idx, (a, b_, c) in enumerate(np.ndindex(n, n, n)):
            sl = (slice(a * stride, a * stride + block), slice(b_ * stride, b_ * stride + block),
                  slice(c * stride, c * stride + block))
            acc[sl] += win * (blocks[picks[idx]] - all_mean)
            wsum[sl] += win * win
        core = slice(block // 2, block // 2 + cube_voxels)
        cube = acc[core, core, core] / np.sqrt(np.maximum(wsum[core, core, core], 1e-6)) + all_mean
        self.mean = float(cube.mean())
        self.cube = cube - self.mean
        self.spacing = tuple(float(s) for s in spacing)  # (i, j, k)
        self.sources = [str(p) for p in paths]

    @lru_cache(maxsize=8)
    def _cube_at(self, spacing: tuple[float, float, float]) -> np.ndarray:
        zoom = [self.spacing[2] / spacing[2], self.spacing[1] / spacing[1], self.spacing[0] / spacing[0]]
        return ndimage.zoom(self.cube, zoom, order=1, mode="grid-wrap").astype(np.float32)

    def apply(self, img: np.ndarray, tissue_map: np.ndarray, tissue_names: dict[int, str], hu: dict[str, float],
              spacing, rng: np.random.Generator, params: ScanParams) -> np.ndarray:
        """Add the real texture inside cancellous (and, damped, cortical) bone of a rendered image.

        Args:
            img: rendered HU volume ``(K, J, I)``.
            tissue_map, tissue_names: the tissue map it was rendered from.
            hu: the scan's tissue HU (for the scaling).
            spacing: ``(i, j, k)`` mm.
            rng: random generator (offsets and flips of the texture).
            params: the scan (voxels outside the field of view are left alone).

        Returns:
            float32 HU volume of the same shape.
        """
        ids_c = [v for v, k in tissue_names.items() if k.split(":")[0] == "cancellous_bone"]
        ids_s = [v for v, k in tissue_names.items() if k.split(":")[0] == "cortical_bone"]
        if not ids_c and not ids_s:
            return img
        key = tuple(round(float(s), 2) for s in spacing)
        cube = self._cube_at(key)
        if rng.random() < 0.5:
            cube = cube[:, :, ::-1]
        if rng.random() < 0.5:
            cube = cube[:, ::-1, :]
        scale = float(np.clip(hu.get("cancellous_bone", 200.0) / max(self.mean, 1.0), 0.4, 1.6))
        out = img.copy()
        inside = out > params.padding_hu + 1
        for ids, damp in ((ids_c, 1.0), (ids_s, 0.5)):
            if not ids:
                continue
            kk, jj, ii = np.nonzero(np.isin(tissue_map, ids) & inside)
            off = rng.integers(0, cube.shape)
            tex = cube[(kk + off[0]) % cube.shape[0], (jj + off[1]) % cube.shape[1], (ii + off[2]) % cube.shape[2]]
            out[kk, jj, ii] += np.float32(scale * damp) * tex
        return out


@lru_cache(maxsize=1)
def default_bone_texture() -> BoneTexture | None:
    """The real bone texture when the shared data is beside the clone (or ``MSKSEG_BONE_CT`` names files).

    Looks for ``MSKSEG_BONE_CT`` (paths separated by ``os.pathsep``), else
    ``$MSKSEG_SHARED/data/totalseg-labelmaps/bone_ct/*.nrrd``, else ``../shared`` beside the repository.
    Returns None (procedural texture only) when none exists.
    """
    env = os.environ.get("MSKSEG_BONE_CT")
    if env:
        paths = [p for p in env.split(os.pathsep) if p and Path(p).exists()]
    else:
        shared = Path(os.environ.get("MSKSEG_SHARED", Path(__file__).resolve().parents[3] / "shared"))
        paths = sorted((shared / "data" / "totalseg-labelmaps" / "bone_ct").glob("*.nrrd"))
    return BoneTexture(paths) if paths else None
