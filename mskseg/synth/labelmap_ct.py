"""Label-map driven CT synthesis: real anatomy label maps -> CT volumes in HU with added body layers.

A label map of real anatomy (TotalSegmentator "total" v2 ids, VerSe vertebra masks, or any map with a name
table) becomes a CT-like volume whose every voxel has a known class. The steps, each a plain function:

1. ``_canonical``: reorient the map to index axes pointing Left, Posterior, Superior (``array[k, j, i]``:
   slices inferior -> superior, rows anterior -> posterior, columns right -> left) and crop.
2. ``add_discs`` / ``atrophy_muscles`` (:mod:`~mskseg.synth.labelmap_body`): intervertebral discs between
   labelled vertebrae where the map has none; muscle atrophy (muscle labels eroded by a habitus-dependent margin).
3. ``add_body_layers`` (:mod:`~mskseg.synth.labelmap_body`): where the map lacks them, the body wall is drawn
   around the labelled anatomy:
   a convex-ish hull (per axial slice, smooth along z) grown by a habitus-dependent visceral margin, an
   abdominal wall muscle layer (rectus sheath anteriorly, three oblique layers with thin fat planes laterally),
   subcutaneous fat of varying thickness, a 1.5-3 mm skin rim; visceral fat fills the remaining cavity,
   fat behind the paraspinal muscles is subcutaneous; optionally arms beside the abdomen.
4. ``_warp``: one resampling from the output grid into the map: affine (rotation, tilt, scaling), elastic
   displacement and the output spacing (0.5-5 mm) together, nearest-neighbour so labels stay labels.
5. ``build_tissue_map`` (:mod:`~mskseg.synth.labelmap_tissue`): classes -> tissues
   (:data:`~mskseg.synth.tissues.TISSUE_NAMES` keys): bones with a
   cortical shell and cancellous interior, kidneys with cortex, medulla and pelvis, bowel wall and content
   (gas, fluid, oral contrast, feces), vessels by contrast phase, fatty infiltration and intermuscular fat
   streaks in muscles.
6. :func:`~mskseg.synth.artifacts.simulate_scan` renders and adds the scanner (noise, blur, slice thickness,
   streaks, metal, table, field of view); real trabecular bone texture (patches of real CT, see
   :class:`BoneTexture`) is added inside the bones, rescaled to the scan's drawn bone HU.

The label-map edits (discs, atrophy, body wall, arms) live in :mod:`~mskseg.synth.labelmap_body`, the tissue map
and the bone texture in :mod:`~mskseg.synth.labelmap_tissue`; this module holds the parameters, the public API
and the resampling.

Output labels (:attr:`SynthVolume.labels`): every input label keeps its value and name; the added classes
have the fixed values of :data:`ADDED_LABELS` (201 skin, 202 subcutaneous_fat, 203 abdominal_wall,
204 visceral_fat, 205 intermuscular_fat, 206 intervertebral_disc, 207 arm). Skin is its own class, never fat.
:func:`bodycomp_labels` turns a synthetic volume into the four body-composition classes at L3.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InvalidImageError
from ..image import Image
from ..sarcopenia.labels import TISSUE_LABELS
from .artifacts import outside_fov, simulate_scan
from .labelmap_body import (ADDED_LABELS, INTERNAL_LABELS, add_body_layers, add_discs, atrophy_muscles, grow_bowel,
                            tissue_kind)
from .labelmap_tissue import BoneTexture, build_tissue_map, default_bone_texture
from .tissues import ScanParams, sample_scan_params, sample_tissue_hu

__all__ = ["ADDED_LABELS", "BODYCOMP_LABELS", "BoneTexture", "Habitus", "SpatialParams", "SynthVolume",
           "bodycomp_labels", "default_bone_texture", "sample_habitus", "sample_spatial", "slab_around",
           "synthesize_ct"]


#: Body-composition classes of :func:`bodycomp_labels`.
BODYCOMP_LABELS: dict[int, str] = dict(TISSUE_LABELS)

#: Margin (mm) added around the label map in-plane so that the added body wall fits.
BODY_PAD_MM = 60.0


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
    lab = add_discs(lab, lab_names, in_spacing)
    if habitus.muscle_atrophy_mm > 0:
        lab = atrophy_muscles(lab, lab_names, in_spacing, habitus.muscle_atrophy_mm)
    if habitus.bowel_growth_mm > 0:
        lab = grow_bowel(lab, lab_names, in_spacing, habitus.bowel_growth_mm)
    if add_body:
        lab = add_body_layers(lab, lab_names, in_spacing, habitus, rng, _raster_box(geo, spatial))
    t_anatomy = time.perf_counter() - t0

    out_lab, out_geo = _warp(lab, geo, out_spacing, spatial, rng)
    t_warp = time.perf_counter() - t0 - t_anatomy

    hu = sample_tissue_hu(rng, params)
    tmap, tnames, hu = build_tissue_map(out_lab, lab_names, out_spacing, habitus, params, hu, rng)
    img, params = simulate_scan(tmap, tnames, out_spacing, rng, params, hu)
    texture = default_bone_texture() if bone_texture is None or bone_texture is True else (bone_texture or None)
    if texture is not None:
        img = texture.apply(img, tmap, tnames, hu, out_spacing, rng, params)
    t_total = time.perf_counter() - t0

    # Nothing outside the reconstruction circle is imaged: no label there (a radiologist cannot outline it).
    out_lab[:, outside_fov(out_lab.shape[-2:], out_spacing, params.fov_mm)] = 0
    for value, (reported, _) in INTERNAL_LABELS.items():
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
                if tissue_kind(n) == "muscle" or n == "abdominal_wall"]
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
    pad_i, pad_j = (int(np.ceil(BODY_PAD_MM / s)) for s in can.spacing[:2])
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
