"""Tissues of the label-map driven CT synthesis (:mod:`mskseg.synth.labelmap_ct`).

:func:`build_tissue_map` turns classes into tissues (bones with cortex and cancellous interior, kidneys with
cortex, medulla and pelvis, bowel wall and content, vessels by contrast phase, fatty infiltration and
intermuscular fat streaks in muscles); :class:`BoneTexture` holds patches of real trabecular bone texture
(:func:`default_bone_texture` loads the bundled one when present).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InvalidImageError
from .labelmap_body import ARM_BONE, INTERNAL_LABELS, bbox, tissue_kind
from .tissues import ScanParams

if TYPE_CHECKING:
    from .labelmap_ct import Habitus


_ORGAN_TISSUE = {"liver": "liver", "spleen": "spleen", "pancreas": "pancreas", "gallbladder": "bile",
                 "urinary_bladder": "urine", "trachea": "air", "spinal_cord": "csf:cord", "brain": "csf:brain",
                 "prostate": "muscle:prostate", "thyroid_gland": "spleen:thyroid",
                 "adrenal_gland_left": "pancreas:adrenal", "adrenal_gland_right": "pancreas:adrenal"}


# --------------------------------------------------------------------------------------------------- tissues
def build_tissue_map(lab: np.ndarray, names: dict[int, str], spacing, habitus: Habitus, params: ScanParams,
                hu: dict[str, float], rng: np.random.Generator,
                ) -> tuple[np.ndarray, dict[int, str], dict[str, float]]:
    """Classes -> tissue keys on the output grid; returns (tissue map uint8, value -> key, extended HU)."""
    # The helpers draw from ``rng`` in the order they are called here, and number the tissue keys in the order
    # they first use them: keep that order.
    tk = _TissueKeys(lab.shape)
    hu = dict(hu)

    present = [int(v) for v in np.unique(lab) if v != 0]
    by_kind: dict[str, list[int]] = {}
    for v in present:
        kind = "bone" if v == ARM_BONE else (tissue_kind(names[v]) if v in names else "unknown")
        by_kind.setdefault(kind, []).append(v)

    _class_tissues(tk, lab, names, present)
    _tissue_hu(tk, hu, habitus.fatty_infiltration_hu, params, rng)
    _imat_streaks(tk, lab, names, present, by_kind, habitus, spacing, rng)
    _liver_vessels_and_fat_strands(tk, lab, names, present, hu, params, spacing, rng)
    _bone_shell(tk, lab, by_kind.get("bone", []), hu, spacing, rng)
    _kidney_parts(tk, lab, by_kind.get("kidney", []), spacing, rng)
    hu["fat:sinus"] = hu["fat"] + 15.0
    _bowel_contents(tk, lab, names, by_kind.get("bowel", []), params, spacing, rng)
    _heart_parts(tk, lab, by_kind.get("heart", []), hu, params, spacing)
    for key in tk.keys:
        if key not in hu:
            base = key.split(":")[0]
            hu[key] = hu[base]
    return tk.tmap, {i: k for i, k in enumerate(tk.keys)}, hu


class _TissueKeys:
    """The tissue map being built: value ``i`` of ``tmap`` is tissue key ``keys[i]`` (0 is air); keys are
    numbered in the order they are first used."""

    def __init__(self, shape: tuple[int, ...]):
        self.keys: list[str] = ["air"]
        self.key_id: dict[str, int] = {"air": 0}
        self.tmap = np.zeros(shape, np.uint8)

    def tid(self, key: str) -> int:
        """The value of tissue ``key`` (numbered now when new)."""
        if key not in self.key_id:
            self.key_id[key] = len(self.keys)
            self.keys.append(key)
        return self.key_id[key]

    def put(self, mask: np.ndarray, key: str) -> None:
        """Set ``mask`` to tissue ``key``."""
        self.tmap[mask] = self.tid(key)


def _class_tissues(tk: _TissueKeys, lab: np.ndarray, names: dict[int, str], present: list[int]) -> None:
    """The tissue of every class that is one tissue as a whole (added body classes, muscles, organs, lung,
    cartilage, cysts, vessels); bones, kidneys, bowel and heart get their parts later."""
    put = tk.put
    for v in present:
        n = names.get(v, "")
        kind = tissue_kind(n) if v in names else ("internal" if v in INTERNAL_LABELS else "unknown")
        m = lab == v
        if v in INTERNAL_LABELS:
            if INTERNAL_LABELS[v][1] != "bone":
                put(m, INTERNAL_LABELS[v][1])
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


def _tissue_hu(tk: _TissueKeys, hu: dict[str, float], infil: float, params: ScanParams,
               rng: np.random.Generator) -> None:
    """Add to ``hu`` the HU of the muscle groups used so far (fatty infiltration ``infil``) and of the fat,
    CSF, vein and gland variants."""
    # muscles: fatty infiltration and HU per muscle group
    for key in list(tk.key_id):
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


def _imat_streaks(tk: _TissueKeys, lab: np.ndarray, names: dict[int, str], present: list[int],
                  by_kind: dict[str, list[int]], habitus: Habitus, spacing, rng: np.random.Generator) -> None:
    """Intermuscular fat streaks inside the muscles (myosteatosis): ``habitus.imat_fraction`` of them."""
    put = tk.put
    # intermuscular fat streaks inside muscles (myosteatosis)
    mus_ids = by_kind.get("muscle", []) + [v for v in present if names.get(v) == "abdominal_wall"]
    if mus_ids and habitus.imat_fraction > 0:
        mus = np.isin(lab, mus_ids)
        box = bbox(mus, pad=(0, 0, 0))
        field_ = _anisotropic_noise(tuple(s.stop - s.start for s in box), rng, spacing, (1.0, 1.0, 6.0))
        thr = np.quantile(field_[mus[box]], 1 - habitus.imat_fraction) if mus[box].any() else np.inf
        streak = np.zeros(lab.shape, bool)
        streak[box] = (field_ > thr) & mus[box]
        put(streak, "fat:imat")


def _liver_vessels_and_fat_strands(tk: _TissueKeys, lab: np.ndarray, names: dict[int, str], present: list[int],
                                   hu: dict[str, float], params: ScanParams, spacing,
                                   rng: np.random.Generator) -> None:
    """Portal and hepatic vein branches in the liver; small vessels and septa in visceral and subcutaneous
    fat."""
    put = tk.put
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


def _bone_shell(tk: _TissueKeys, lab: np.ndarray, bone_ids: list[int], hu: dict[str, float], spacing,
                rng: np.random.Generator) -> None:
    """Bones: a cortical shell (its HU for the partial volume of a thin cortex) around cancellous bone."""
    put = tk.put
    # bones: cortical shell + cancellous interior
    if bone_ids:
        bone = np.isin(lab, bone_ids)
        box = bbox(bone, pad=(1, 1, 1))
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


def _kidney_parts(tk: _TissueKeys, lab: np.ndarray, kidney_ids: list[int], spacing,
                  rng: np.random.Generator) -> None:
    """Kidneys: cortex, medulla, and sinus fat and urine in the deep part."""
    sx, sy, sz = spacing
    tid, tmap = tk.tid, tk.tmap
    # kidneys: cortex, medulla, pelvis (urine); the hilum fat is the unlabelled notch (visceral fat)
    for v in kidney_ids:
        m = lab == v
        box = bbox(m, pad=(1, 1, 1))
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


def _bowel_contents(tk: _TissueKeys, lab: np.ndarray, names: dict[int, str], bowel_ids: list[int],
                    params: ScanParams, spacing, rng: np.random.Generator) -> None:
    """Bowel: the wall, and gas, fluid or oral contrast (small bowel) or feces (colon) in the lumen; gas
    rises anteriorly."""
    sx, sy, sz = spacing
    tid, tmap = tk.tid, tk.tmap
    # bowel: wall + content
    if bowel_ids:
        bow = np.isin(lab, bowel_ids)
        box = bbox(bow, pad=(1, 2, 2))
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


def _heart_parts(tk: _TissueKeys, lab: np.ndarray, heart_ids: list[int], hu: dict[str, float], params: ScanParams,
                 spacing) -> None:
    """Heart: a myocardium shell around blood."""
    sx, sy, sz = spacing
    tid, tmap = tk.tid, tk.tmap
    # heart: myocardium shell around blood
    for v in heart_ids:
        m = lab == v
        box = bbox(m, pad=(1, 1, 1))
        d = ndimage.distance_transform_edt(m[box], sampling=(sz, sy, sx))
        sub_t = tmap[box]
        sub_t[m[box] & (d <= 9.0)] = tid("muscle:myocardium")
        sub_t[m[box] & (d > 9.0)] = tid("blood")
        hu["muscle:myocardium"] = hu["muscle"] + (40.0 if params.phase != "native" else 0.0)


def _tubes(mask: np.ndarray, rng: np.random.Generator, spacing, scale_mm: tuple[float, float, float],
           width_range: tuple[float, float], second_width_factor: float = 1.0) -> np.ndarray:
    """Curvy tubes inside ``mask`` (K, J, I): where two smooth random fields of feature size ``scale_mm`` are
    both near zero (``|f1| < width``, ``|f2| < width * second_width_factor``, width drawn from
    ``width_range``). Vessels, fibrous septa."""
    box = bbox(mask, pad=(0, 0, 0))
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
