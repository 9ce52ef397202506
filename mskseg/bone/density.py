"""Opportunistic bone density: trabecular HU of the lumbar vertebral bodies, the contrast phase and the
osteoporosis screening flag.

* :func:`trabecular_roi`: an elliptical region of interest in the cancellous centre of a vertebral body on one
  axial slice: the body is the vertebra's bone in front of the spinal canal; the ellipse (semi-axes 30 % of the
  body's width and 25 % of its depth) is centred slightly in front of the body's middle, away from the
  basivertebral vein that enters from behind, and kept at least 3 mm inside the cortex.
* :func:`measure_lumbar_density`: that ROI on the mid-body slices (the centre slice and those within 3 mm) of
  L1-L4 as in view: mean, SD and area of HU.
* :func:`contrast_phase`: the phase from the aorta's HU (the round contrast-filled tube in front of / left of
  the vertebral bodies found by :func:`mskseg.bone.rules.find_aorta`): none found -> unenhanced; median 100-250 HU -> portal-venous-like;
  above 250 HU -> arterial or angiographic.
* :func:`screening_flag`: the thresholds of Pickhardt et al. 2013 (Ann Intern Med 158:588-595) at L1: <= 160 HU
  about 90 % sensitive, <= 110 HU more than 90 % specific for osteoporosis (DXA T-score <= -2.5). A screening
  flag, not a diagnosis.

Contrast correction: Pickhardt et al. 2016 (Osteoporos Int 27:147-152) measured L1 trabecular HU +11.2 HU
(SD 19.2) higher on the portal-venous series than on the unenhanced series of the same 157 patients. For a
portal-venous-like phase :data:`PORTAL_VENOUS_OFFSET_HU` is subtracted before the flag; for an arterial or
angiographic phase no published correction of that study applies and none is applied (said in the result);
unenhanced scans need none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

#: Pickhardt et al. 2013 thresholds at L1 (HU): <= this is ~90 % sensitive for osteoporosis ...
SENSITIVE_HU = 160.0
#: ... and <= this is > 90 % specific.
SPECIFIC_HU = 110.0
#: Mean L1 difference portal-venous minus unenhanced, Pickhardt et al. 2016 (Osteoporos Int 27:147-152).
PORTAL_VENOUS_OFFSET_HU = 11.2
#: Aorta median HU from which the scan is taken as contrast-enhanced (unenhanced blood is about 30-60 HU; the
#: aorta finder's lumen starts at 100 HU, :data:`mskseg.bone.rules.AORTA_LUMEN_HU`); above the second, arterial.
CONTRAST_AORTA_HU = 100.0
ARTERIAL_AORTA_HU = 250.0
#: Levels measured.
DENSITY_LEVELS = ("L1", "L2", "L3", "L4")
#: The ROI keeps this far (mm) inside the vertebral body's edge.
CORTEX_MARGIN_MM = 3.0
FLAG_NOTE = "screening flag, not a diagnosis"
PICKHARDT_2013 = "Pickhardt et al. 2013, Ann Intern Med 158:588-595"
PICKHARDT_2016 = "Pickhardt et al. 2016, Osteoporos Int 27:147-152"


@dataclass
class Phase:
    """The contrast phase as told from the aorta, and the correction applied to trabecular HU."""

    phase: str  # "unenhanced", "portal-venous", "arterial"
    aorta_hu: float | None
    correction_hu: float
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "aorta_hu": self.aorta_hu, "correction_hu": self.correction_hu, "note": self.note}


@dataclass
class LevelDensity:
    """Trabecular HU of one vertebra: the ROI on its mid-body slices (canonical indices)."""

    level: str
    slices: list[int]
    mean_hu: float
    sd_hu: float
    area_mm2: float
    corrected_hu: float
    roi: np.ndarray = field(repr=False)  # bool (len(slices), J, I): the ROI on each slice


def contrast_phase(aorta: dict[str, Any] | None) -> Phase:
    """The phase from the contrast-filled aorta found by :func:`mskseg.bone.rules.find_aorta` (None: none)."""
    if aorta is None or aorta["median_hu"] < CONTRAST_AORTA_HU:
        return Phase("unenhanced", None if aorta is None else round(aorta["median_hu"], 1), 0.0,
                     "no contrast-filled aorta found (median >= 100 HU): taken as unenhanced, no correction applied")
    hu = round(float(aorta["median_hu"]), 1)
    if hu > ARTERIAL_AORTA_HU:
        return Phase("arterial", hu, 0.0,
                     f"aorta {hu:g} HU: arterial or angiographic phase; no correction applied (the published "
                     f"correction, {PICKHARDT_2016}, is for the portal-venous phase)")
    return Phase("portal-venous", hu, -PORTAL_VENOUS_OFFSET_HU,
                 f"aorta {hu:g} HU: portal-venous-like contrast phase; {PORTAL_VENOUS_OFFSET_HU:g} HU subtracted "
                 f"from trabecular HU before the flag ({PICKHARDT_2016}: L1 +11.2 HU on portal-venous vs unenhanced)")


def vertebral_body(vertebra: np.ndarray, spine_x: float, spine_front: float, spacing: tuple[float, float, float]
                   ) -> np.ndarray:
    """The vertebral body on one axial slice: the vertebra's bone from its front back to the spinal canal
    (walking back along the midline until the bone ends), within 35 mm of the spine's centre."""
    sx, sy = spacing[0], spacing[1]
    j_n, i_n = vertebra.shape
    if not vertebra.any():
        return np.zeros_like(vertebra)
    half = max(1, int(round(6.0 / sx)))
    x0 = int(round(spine_x))
    band = vertebra[:, max(0, x0 - half):min(i_n, x0 + half + 1)].any(axis=1)
    rows = np.flatnonzero(band)
    if rows.size == 0:
        return np.zeros_like(vertebra)
    first = int(rows[0])
    last = first
    while last + 1 < j_n and band[last + 1]:
        last += 1
    jj = np.arange(j_n)[:, None]
    ii = np.arange(i_n)[None, :]
    body = vertebra & (jj >= first) & (jj <= last) & (np.abs(ii - spine_x) * sx <= 35.0)
    labels, n = ndimage.label(body)
    if n > 1:  # the piece on the midline
        on_mid = labels[first:last + 1, max(0, x0 - half):min(i_n, x0 + half + 1)]
        values = np.bincount(on_mid.ravel(), minlength=n + 1)
        values[0] = 0
        body = labels == int(np.argmax(values))
    return ndimage.binary_fill_holes(body)


def trabecular_roi(body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The elliptical trabecular ROI inside a vertebral body mask of one axial slice (see the module
    description); empty when the body is too small to hold one."""
    sx, sy = spacing[0], spacing[1]
    if body.sum() * sx * sy < 50.0:
        return np.zeros_like(body)
    jj, ii = np.nonzero(body)
    x_lo, x_hi = ii.min(), ii.max()
    y_lo, y_hi = jj.min(), jj.max()
    width = (x_hi - x_lo + 1) * sx
    depth = (y_hi - y_lo + 1) * sy
    cx = float(ii.mean())
    cy = y_lo + 0.45 * (y_hi - y_lo)  # slightly in front of the middle: away from the basivertebral vein
    a, b = 0.30 * width, 0.25 * depth
    yy, xx = np.mgrid[0:body.shape[0], 0:body.shape[1]]
    ellipse = ((xx - cx) * sx / a) ** 2 + ((yy - cy) * sy / b) ** 2 <= 1.0
    inside = ndimage.distance_transform_edt(body, sampling=(sy, sx)) >= CORTEX_MARGIN_MM
    return ellipse & inside


def measure_lumbar_density(hu: np.ndarray, labelmap: np.ndarray, level_values: dict[str, int],
                           level_slices: dict[str, int], spine: Any, spacing: tuple[float, float, float],
                           phase: Phase) -> list[LevelDensity]:
    """Trabecular HU of L1-L4 as in view, on the canonical arrays.

    Args:
        hu, labelmap: canonical CT and class label map.
        level_values: vertebra name -> its label value in ``labelmap``.
        level_slices: vertebra name -> canonical slice of its body centre.
        spine: the :class:`mskseg.bone.rules.SpineTrack`.
        phase: the contrast phase; its correction is added to give ``corrected_hu``.
    """
    out: list[LevelDensity] = []
    reach = int(round(3.0 / spacing[2]))
    for level in DENSITY_LEVELS:
        if level not in level_slices or level not in level_values:
            continue
        centre = int(level_slices[level])
        slices = [k for k in range(centre - reach, centre + reach + 1) if 0 <= k < hu.shape[0]]
        rois, values, kept = [], [], []
        for k in slices:
            vertebra = labelmap[k] == level_values[level]
            body = vertebral_body(vertebra, float(spine.x[k]), float(spine.front[k]), spacing)
            roi = trabecular_roi(body, spacing)
            if roi.sum() < 5:
                continue
            rois.append(roi)
            values.append(np.asarray(hu[k], np.float64)[roi])
            kept.append(k)
        if not kept:
            continue
        allv = np.concatenate(values)
        mean = float(allv.mean())
        out.append(LevelDensity(level, kept, round(mean, 1), round(float(allv.std()), 1),
                                round(float(sum(r.sum() for r in rois) * spacing[0] * spacing[1] / len(rois)), 1),
                                round(mean + phase.correction_hu, 1), np.stack(rois)))
    return out


def screening_flag(l1_hu: float | None) -> dict[str, Any]:
    """The opportunistic screening flag from L1 trabecular HU (corrected for the phase when it could be).

    Returns ``{"flag": "likely osteoporosis" | "possible osteoporosis" | "not flagged" | "not assessed",
    "rule": ..., "note": "screening flag, not a diagnosis", "reference": ...}``.
    """
    base = {"note": FLAG_NOTE, "reference": PICKHARDT_2013, "thresholds_hu": {"sensitive": SENSITIVE_HU,
                                                                            "specific": SPECIFIC_HU}}
    if l1_hu is None:
        return {**base, "flag": "not assessed", "rule": "L1 is not in view or its trabecular ROI could not be placed"}
    if l1_hu <= SPECIFIC_HU:
        return {**base, "flag": "likely osteoporosis",
                "rule": f"L1 {l1_hu:g} HU <= {SPECIFIC_HU:g} HU (> 90 % specific for osteoporosis)"}
    if l1_hu <= SENSITIVE_HU:
        return {**base, "flag": "possible osteoporosis",
                "rule": f"L1 {l1_hu:g} HU <= {SENSITIVE_HU:g} HU (~90 % sensitive threshold; DXA advised)"}
    return {**base, "flag": "not flagged", "rule": f"L1 {l1_hu:g} HU > {SENSITIVE_HU:g} HU"}
