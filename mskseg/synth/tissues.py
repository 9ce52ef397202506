"""Tissue vocabulary of the synthetic-anatomy engine and physical CT numbers to draw from.

CT numbers are physical quantities, so a synthetic image is believable when every tissue gets a value from
its real range (``../docs/DATA_AND_MODELS.md``, table "CT numbers to synthesise from") and the values vary
from scan to scan as they do between scanners, patients and contrast timings. This module holds

* :data:`TISSUE_NAMES`: the tissue names every generator uses (label maps are mapped onto these names);
* :class:`ScanParams` and :func:`sample_scan_params`: how one simulated scan was acquired (contrast phase,
  noise, blur, slice thickness, streaks, metal, field of view);
* :func:`sample_tissue_hu`: one mean HU per tissue for one scan, for its phase;
* :data:`TISSUE_TEXTURE_SD`: the intrinsic heterogeneity of each tissue (HU), added as correlated texture.

Tissue keys may carry a variant after a colon (``"muscle:psoas"``): the part before the colon names the
tissue whose texture is used, so a generator can give one structure its own HU (fatty infiltration of one
muscle) without inventing a new tissue.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

#: Every tissue the generators know. Label maps are mapped onto these names before rendering.
TISSUE_NAMES: tuple[str, ...] = (
    "air", "lung", "fat", "water", "muscle", "liver", "spleen", "kidney_cortex", "kidney_medulla", "blood",
    "venous_blood", "bowel_wall", "bowel_gas", "bowel_fluid", "oral_contrast", "feces", "disc",
    "cancellous_bone", "cortical_bone", "cartilage", "skin", "metal", "table", "table_foam", "pancreas",
    "bile", "urine", "csf", "fascia",
)

PHASES: tuple[str, ...] = ("native", "arterial", "portal")

#: Intrinsic heterogeneity of each tissue in HU (standard deviation of a spatially correlated texture,
#: before scanner noise). Feces is mottled, bone is trabecular, fat and water are nearly uniform.
TISSUE_TEXTURE_SD: dict[str, float] = {
    "air": 2.0, "lung": 40.0, "fat": 6.0, "water": 3.0, "muscle": 7.0, "liver": 6.0, "spleen": 5.0,
    "kidney_cortex": 8.0, "kidney_medulla": 8.0, "blood": 4.0, "venous_blood": 6.0, "bowel_wall": 8.0,
    "bowel_gas": 5.0, "bowel_fluid": 4.0, "oral_contrast": 40.0, "feces": 60.0, "disc": 8.0,
    "cancellous_bone": 35.0, "cortical_bone": 120.0, "cartilage": 15.0, "skin": 8.0, "metal": 200.0,
    "table": 30.0, "table_foam": 20.0, "pancreas": 10.0, "bile": 3.0, "urine": 3.0, "csf": 4.0,
    "fascia": 8.0,
}

# (low, high) of the per-scan mean HU by phase; "*" holds for every phase.
_HU_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "air": {"*": (-1010.0, -990.0)},
    "lung": {"*": (-900.0, -700.0)},
    "fat": {"*": (-120.0, -80.0)},
    "water": {"*": (0.0, 20.0)},
    "bile": {"*": (0.0, 20.0)},
    "urine": {"*": (0.0, 20.0), "portal": (5.0, 40.0)},
    "bowel_fluid": {"*": (0.0, 20.0)},
    "csf": {"*": (0.0, 15.0)},
    "muscle": {"native": (35.0, 60.0), "arterial": (42.0, 70.0), "portal": (47.0, 78.0)},
    "liver": {"native": (50.0, 65.0), "arterial": (60.0, 85.0), "portal": (100.0, 130.0)},
    "spleen": {"native": (40.0, 55.0), "arterial": (90.0, 140.0), "portal": (110.0, 130.0)},
    "kidney_cortex": {"native": (30.0, 40.0), "arterial": (150.0, 240.0), "portal": (150.0, 200.0)},
    "kidney_medulla": {"native": (25.0, 35.0), "arterial": (50.0, 100.0), "portal": (110.0, 170.0)},
    "blood": {"native": (35.0, 50.0), "arterial": (250.0, 400.0), "portal": (150.0, 200.0)},
    "venous_blood": {"native": (35.0, 50.0), "arterial": (45.0, 90.0), "portal": (130.0, 180.0)},
    "bowel_wall": {"native": (30.0, 50.0), "arterial": (60.0, 100.0), "portal": (80.0, 120.0)},
    "pancreas": {"native": (35.0, 50.0), "arterial": (100.0, 140.0), "portal": (80.0, 110.0)},
    "bowel_gas": {"*": (-1010.0, -960.0)},
    "oral_contrast": {"*": (200.0, 500.0)},
    "feces": {"*": (-120.0, 40.0)},
    "disc": {"*": (70.0, 100.0)},
    "cancellous_bone": {"*": (150.0, 300.0)},
    "cortical_bone": {"*": (700.0, 1500.0)},
    "cartilage": {"*": (90.0, 180.0)},
    "skin": {"*": (20.0, 60.0)},
    "fascia": {"*": (20.0, 60.0)},
    "metal": {"*": (3000.0, 3071.0)},
    "table": {"*": (100.0, 400.0)},
    "table_foam": {"*": (-950.0, -750.0)},
}


@dataclass
class ScanParams:
    """How one simulated scan was acquired.

    Attributes:
        phase: contrast phase, ``"native"``, ``"arterial"`` or ``"portal"``.
        noise_sd_hu: standard deviation of the quantum noise in soft tissue (HU).
        noise_correlation_mm: correlation length of the noise (reconstruction kernel; sharp kernels ~0.5 mm).
        blur_fwhm_mm: in-plane system blur (full width at half maximum, mm).
        slice_thickness_mm: reconstructed slice thickness (mm); used by 3D rendering.
        streak_strength: amplitude of beam-hardening streaks from dense bone (HU).
        metal: whether a metal implant is simulated.
        fov_mm: diameter of the reconstruction circle (mm); tissue outside it is lost (truncation).
        low_dose: a low-dose scan (noise 30-60 HU).
        table: whether the patient table is drawn when the anatomy has none.
        padding_hu: value outside the reconstruction circle (-1024, -2048 or -3024 as scanners write).
        hu_offset: scanner calibration offset added to every tissue (HU).
        fatty_liver: liver steatosis (liver HU below 40 on native scans).
        osteoporotic: low cancellous-bone HU (50-150).
        seed: integer the rest of the scan's randomness was drawn from (for the record).
    """

    phase: str = "portal"
    noise_sd_hu: float = 18.0
    noise_correlation_mm: float = 0.8
    blur_fwhm_mm: float = 1.0
    slice_thickness_mm: float = 2.5
    streak_strength: float = 15.0
    metal: bool = False
    fov_mm: float = 500.0
    low_dose: bool = False
    table: bool = True
    padding_hu: float = -1024.0
    hu_offset: float = 0.0
    fatty_liver: bool = False
    osteoporotic: bool = False
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain JSON-able dict."""
        return asdict(self)


def sample_scan_params(rng: np.random.Generator, **overrides: Any) -> ScanParams:
    """Draw the acquisition of one scan: phase, dose and noise, kernel blur, thickness, streaks, metal, FOV.

    Args:
        rng: random generator (the only source of randomness).
        **overrides: any :class:`ScanParams` field to fix instead of drawing it (``phase="native"``).

    Returns:
        The drawn :class:`ScanParams` with the overrides applied.

    Raises:
        ValueError: for an unknown field name or phase.
    """
    names = {f.name for f in fields(ScanParams)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown scan parameter(s) {sorted(unknown)}; known: {sorted(names)}")
    phase = str(rng.choice(PHASES, p=[0.3, 0.15, 0.55]))
    low_dose = bool(rng.random() < 0.15)
    noise = float(rng.uniform(30.0, 60.0)) if low_dose else float(np.clip(rng.gamma(6.0, 3.2), 8.0, 40.0))
    params = ScanParams(
        phase=phase,
        noise_sd_hu=noise,
        noise_correlation_mm=float(rng.uniform(0.5, 1.3)),
        blur_fwhm_mm=float(rng.uniform(0.6, 1.8)),
        slice_thickness_mm=float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0])),
        streak_strength=float(rng.uniform(0.0, 35.0)),
        metal=bool(rng.random() < 0.06),
        fov_mm=float(rng.uniform(300.0, 500.0)),
        low_dose=low_dose,
        table=bool(rng.random() < 0.9),
        padding_hu=float(rng.choice([-1024.0, -2048.0, -3024.0], p=[0.6, 0.2, 0.2])),
        hu_offset=float(rng.normal(0.0, 3.0)),
        fatty_liver=bool(rng.random() < 0.12),
        osteoporotic=bool(rng.random() < 0.2),
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    for key, value in overrides.items():
        setattr(params, key, value)
    if params.phase not in PHASES:
        raise ValueError(f"unknown contrast phase {params.phase!r}; use one of {PHASES}")
    return params


def sample_tissue_hu(rng: np.random.Generator, params: ScanParams) -> dict[str, float]:
    """One mean CT number per tissue for one scan, drawn from the physical range of its contrast phase.

    Args:
        rng: random generator.
        params: the scan (phase, fatty liver, osteoporosis, calibration offset).

    Returns:
        ``{tissue name: mean HU}`` for every name in :data:`TISSUE_NAMES`. Soft tissues share one
        calibration offset; air and metal are not offset.
    """
    if params.phase not in PHASES:
        raise ValueError(f"unknown contrast phase {params.phase!r}; use one of {PHASES}")
    hu: dict[str, float] = {}
    for name in TISSUE_NAMES:
        ranges = _HU_RANGES[name]
        low, high = ranges.get(params.phase, ranges.get("*"))  # type: ignore[misc]
        hu[name] = float(rng.uniform(low, high))
    if params.fatty_liver:
        hu["liver"] = float(rng.uniform(-10.0, 38.0)) + (hu["liver"] - 57.0 if params.phase != "native" else 0.0)
    if params.osteoporotic:
        hu["cancellous_bone"] = float(rng.uniform(50.0, 150.0))
        hu["cortical_bone"] = float(rng.uniform(450.0, 900.0))
    for name in hu:
        if name not in ("air", "bowel_gas", "metal", "table_foam"):
            hu[name] += params.hu_offset
    return hu


def base_tissue(key: str) -> str:
    """The tissue name of a rendering key: ``"muscle:psoas"`` -> ``"muscle"``."""
    return key.split(":", 1)[0]
