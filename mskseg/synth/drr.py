"""Radiographs from labelled volumes: digitally reconstructed radiographs (DRRs) with their label masks.

:func:`render_drr` turns a CT-like volume in HU (a real CT, or one synthesised from a label map) into a
radiograph-like display image, and projects the label map onto the same detector: one mask per label and one
centre point per vertebral body. It is the training-data source of the radiograph models (spine on lateral and
frontal films), so it renders what separates a real radiograph from a plain sum of CT numbers:

* physics: linear attenuation from HU at one effective energy derived from the tube voltage
  (``mu = mu_water(E) * (1 + HU/1000)`` for HU <= 0; above 0 the bone part is weighted by how much more bone
  than water attenuates at ``E`` than at the CT's 70 keV, so low kVp gives more bone contrast), parallel or cone
  beam (source-to-detector distance, magnification, ray obliquity), metal implants inserted into the volume
  (pedicle screws and rods, hip prostheses), scatter fog, heel effect, focal-spot and detector blur, quantum
  (Poisson) and electronic (Gaussian) noise at an automatic-exposure-controlled dose, anti-scatter grid lines;
* processing as a radiography system does it: log transform, dynamic-range (latitude) compression, edge
  enhancement, windowing and tone curve to a display image where bone is bright, collimator shutters black.

Conventions (``DRRSample.meta`` records them for every image):

* Input volumes are in LPS (``mskseg.image.Image``); any direction matrix is accepted (non-axis-aligned
  volumes are resampled onto an LPS-aligned grid first).
* ``view="frontal"``: an AP film. The beam travels along +y (anterior to posterior), the image is displayed as a
  radiologist hangs an AP film: the patient's right on the image left, superior up (DICOM PatientOrientation
  ``L\\F``: columns run toward the patient's left, rows toward the feet).
* ``view="lateral"`` with ``lateral_anterior="left"`` (default): a left lateral (left side against the detector,
  beam from the patient's right to left along +x), displayed as seen from the detector side: the patient faces
  the image left, superior up (PatientOrientation ``P\\F``). ``lateral_anterior="right"`` gives the mirror image,
  a right lateral (beam along -x; PatientOrientation ``A\\F``); the VerSe renders in ``../shared`` face right.
* ``pixel_mm`` is the pixel size at the isocentre (the plane through the isocentre, perpendicular to the central
  ray), which is what measurements on the film refer to. In cone-beam geometry the detector pitch is
  ``pixel_mm * magnification`` (``ImagerPixelSpacing`` in the image metadata).
* The isocentre is the centre of the volume's bounding box unless ``isocentre_lps`` is given; the central ray
  goes through it and through the image centre.
* Projected masks: a pixel belongs to a label when the ray through it crosses at least ``mask_min_mm``
  (default 1 mm, about one voxel of a 1 mm volume) of that label. This matches the "whole" projected masks of
  the VerSe renders: the silhouette of the complete vertebra, posterior elements included. Masks are cut to the
  collimated field.
* Vertebral-body centres (for labels named ``vertebrae_L3``, ``L3``, ``T12``, ``C7``, ``S1``, ...): the projected
  3D centroid of the vertebral body. Whole-vertebra labels (VerSe, TotalSegmentator) are reduced to their body
  by a morphological opening with a ball of radius 0.22 x (vertebra volume)^(1/3) (about 9 mm for a lumbar
  vertebra): the thin posterior elements (pedicles, laminae, processes) vanish, the thick body stays; the
  largest remaining part is the body. Centres outside the collimated field are left out (listed in
  ``meta["centres_outside_field"]``).
* The display image is float32 in [0, 1], pixel spacing ``(pixel_mm, pixel_mm)``, origin (0, 0), identity
  direction (a radiograph has no patient coordinates); ``meta["pixel_to_lps"]`` maps pixel ``(x, y, 0, 1)`` to
  the LPS point on the isocentre plane, and :func:`lps_to_pixel` projects any LPS point to ``(x, y)`` pixels.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

import numpy as np
from scipy import ndimage

from ..anatomy import vertebra_from_name, vertebra_order
from ..errors import InvalidImageError, MSKSegError
from ..image import Image

VIEWS = ("lateral", "frontal")
GEOMETRIES = ("parallel", "cone")
COLLIMATIONS = ("none", "rect", "ragged")
IMPLANT_KINDS = ("pedicle_screws", "hip_prosthesis")

# Mass attenuation coefficients (cm2/g), NIST XCOM: water and ICRU-44 cortical bone (density 1.92 g/cm3).
_KEV = np.array([30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0])
_MU_WATER = np.array([0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505])
_MU_BONE = np.array([1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480])
_BONE_DENSITY = 1.92
_CT_KEV = 70.0  # effective energy at which CT numbers are defined (120 kVp scan)

# Linear attenuation of implant materials relative to water near 50 keV (titanium alloy ~4.4 g/cm3, cobalt-chrome
# ~8.3 g/cm3). Both are far beyond the display window: what matters is that they saturate like real metal.
_TITANIUM_RATIO = 14.0
_COCR_RATIO = 45.0


_PATIENT_ORIENTATION = {("frontal", "left"): "L\\F", ("frontal", "right"): "L\\F",
                        ("lateral", "left"): "P\\F", ("lateral", "right"): "A\\F"}


@dataclass
class DRRParams:
    """How one radiograph was acquired and processed.

    Attributes:
        kvp: tube voltage (kV); sets the effective energy ``0.42 * kvp + 12`` keV (monochromatic approximation
            of the spectrum behind the patient) and with it the bone-to-soft-tissue contrast.
        exposure: mean detected photons per pixel behind the patient (automatic exposure control target); the
            quantum noise scales as ``1 / sqrt(exposure)``.
        electronic_noise: standard deviation of the additive detector read-out noise (photons).
        noise: draw quantum and electronic noise (False: the noise-free expected image).
        scatter_to_primary: scatter-to-primary ratio behind the patient (0.1-0.5 with a grid, > 1 without).
        scatter_sigma_mm: width of the scatter fog (Gaussian sigma, mm at the isocentre).
        focal_blur_mm: focal-spot unsharpness (Gaussian sigma, mm), applied before the noise.
        detector_blur_mm: scintillator / detector unsharpness (Gaussian sigma, mm), applied after the noise.
        sdd_mm: source-to-detector distance (mm), cone-beam geometry.
        odd_mm: isocentre-to-detector distance (mm); the source-to-isocentre distance is ``sdd_mm - odd_mm``.
        heel: heel-effect strength: the beam intensity varies by ``1 +/- heel`` across the image.
        heel_axis: ``"vertical"`` (anode-cathode axis along the patient, the usual set-up) or ``"horizontal"``.
        grid_lines: draw the stripes of a stationary anti-scatter grid.
        grid_period_px: period of the grid stripes in pixels (near 2 px they alias like a real grid does).
        grid_amplitude: relative intensity modulation of the grid stripes.
        grid_axis: ``"vertical"`` (stripes run top to bottom) or ``"horizontal"``.
        collimation: ``"none"``, ``"rect"`` (straight shutters) or ``"ragged"`` (wavy, uneven shutter edges).
        collimation_margins: fraction of the image width/height closed by the left, right, top, bottom shutter.
        collimation_tilt_deg: rotation of the shutters about the image centre (degrees).
        ragged_mm: largest offset (mm) of the irregular edges of ``"ragged"`` collimation.
        latitude_compression: fraction of the low-frequency attenuation removed (0: none, 1: all), as the
            multi-scale processing of radiography systems does to show bone through thick and thin parts at once.
        lowpass_mm: scale of the latitude compression (Gaussian sigma, mm).
        edge_enhance: gain of the small-scale unsharp mask (0: none).
        edge_mm: scale of the unsharp mask (Gaussian sigma, mm).
        window_percentiles: low and high percentile of the processed attenuation inside the field mapped to
            display 0 and 1.
        mid_gray: display value (0..1) of the median anatomy pixel; the tone curve (a gamma) is chosen so.
        implants: implant kinds to insert (``"pedicle_screws"``, ``"hip_prosthesis"``); each needs labels to
            know where (vertebrae / femurs) and is skipped with a note in the metadata otherwise.
    """

    kvp: float = 85.0
    exposure: float = 1500.0
    electronic_noise: float = 2.0
    noise: bool = True
    scatter_to_primary: float = 0.5
    scatter_sigma_mm: float = 40.0
    focal_blur_mm: float = 0.25
    detector_blur_mm: float = 0.2
    sdd_mm: float = 1150.0
    odd_mm: float = 200.0
    heel: float = 0.0
    heel_axis: str = "vertical"
    grid_lines: bool = False
    grid_period_px: float = 3.0
    grid_amplitude: float = 0.02
    grid_axis: str = "vertical"
    collimation: str = "none"
    collimation_margins: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    collimation_tilt_deg: float = 0.0
    ragged_mm: float = 2.0
    latitude_compression: float = 0.75
    lowpass_mm: float = 20.0
    edge_enhance: float = 0.4
    edge_mm: float = 1.5
    window_percentiles: tuple[float, float] = (2.0, 99.8)
    mid_gray: float = 0.5
    implants: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain JSON-able dict."""
        d = asdict(self)
        for key in ("collimation_margins", "window_percentiles", "implants"):
            d[key] = list(d[key])
        return d


def sample_drr_params(rng: np.random.Generator, **overrides: Any) -> DRRParams:
    """Draw the acquisition and processing of one radiograph.

    Ranges: 65-110 kVp; 150-5000 photons per pixel behind the patient (log-uniform); scatter-to-primary
    0.1-1.2; focal-spot blur 0.1-0.5 mm, detector blur 0.1-0.35 mm; source-to-detector 1000-1800 mm with the
    isocentre 120-300 mm from the detector; heel effect up to 15 %; grid stripes in 25 % of images; shutters in
    70 % (a third of them ragged, all turned by up to 4 degrees); latitude compression 0.5-0.9; edge
    enhancement 0-1; median anatomy grey 0.35-0.62; pedicle screws in 12 % and a hip prosthesis in 6 % of images.

    Args:
        rng: random generator (the only source of randomness).
        **overrides: any :class:`DRRParams` field to fix instead of drawing it (``collimation="rect"``).

    Returns:
        The drawn :class:`DRRParams` with the overrides applied and checked.

    Raises:
        MSKSegError: for an unknown field name or an invalid value.
    """
    names = {f.name for f in fields(DRRParams)}
    unknown = set(overrides) - names
    if unknown:
        raise MSKSegError(f"unknown radiograph parameter(s) {sorted(unknown)}", f"known parameters: {sorted(names)}")
    collimation = str(rng.choice(COLLIMATIONS, p=[0.3, 0.47, 0.23]))
    implants = tuple(kind for kind, p in (("pedicle_screws", 0.12), ("hip_prosthesis", 0.06)) if rng.random() < p)
    params = DRRParams(
        kvp=float(rng.uniform(65.0, 110.0)),
        exposure=float(np.exp(rng.uniform(np.log(150.0), np.log(5000.0)))),
        electronic_noise=float(rng.uniform(0.5, 5.0)),
        noise=True,
        scatter_to_primary=float(rng.uniform(0.1, 1.2)),
        scatter_sigma_mm=float(rng.uniform(25.0, 60.0)),
        focal_blur_mm=float(rng.uniform(0.1, 0.5)),
        detector_blur_mm=float(rng.uniform(0.1, 0.35)),
        sdd_mm=float(rng.uniform(1000.0, 1800.0)),
        odd_mm=float(rng.uniform(120.0, 300.0)),
        heel=float(rng.uniform(-0.15, 0.15)),
        heel_axis=str(rng.choice(["vertical", "horizontal"], p=[0.8, 0.2])),
        grid_lines=bool(rng.random() < 0.25),
        grid_period_px=float(rng.uniform(2.2, 5.0)),
        grid_amplitude=float(rng.uniform(0.01, 0.05)),
        grid_axis=str(rng.choice(["vertical", "horizontal"])),
        collimation=collimation,
        collimation_margins=tuple(float(m) for m in rng.uniform(0.0, 0.18, size=4)),  # type: ignore[arg-type]
        collimation_tilt_deg=float(rng.uniform(-4.0, 4.0)),
        ragged_mm=float(rng.uniform(1.0, 4.0)),
        latitude_compression=float(rng.uniform(0.5, 0.9)),
        lowpass_mm=float(rng.uniform(10.0, 35.0)),
        edge_enhance=float(rng.uniform(0.0, 1.0)),
        edge_mm=float(rng.uniform(0.8, 2.5)),
        window_percentiles=(float(rng.uniform(0.5, 8.0)), float(rng.uniform(99.0, 99.9))),
        mid_gray=float(rng.uniform(0.35, 0.62)),
        implants=implants,
    )
    for key, value in overrides.items():
        setattr(params, key, value)
    _check_params(params)
    return params


def _check_params(params: DRRParams) -> None:
    """Raise :class:`MSKSegError` naming the first invalid field of ``params``."""
    problems = []
    if not 40.0 <= params.kvp <= 150.0:
        problems.append(f"kvp={params.kvp} (use 40-150 kV)")
    if not params.exposure > 0:
        problems.append(f"exposure={params.exposure} (photons per pixel must be > 0)")
    if params.collimation not in COLLIMATIONS:
        problems.append(f"collimation={params.collimation!r} (use one of {COLLIMATIONS})")
    if len(params.collimation_margins) != 4 or not all(0 <= m < 0.45 for m in params.collimation_margins):
        problems.append(f"collimation_margins={params.collimation_margins} (four fractions in 0..0.45)")
    unknown = [k for k in params.implants if k not in IMPLANT_KINDS]
    if unknown:
        problems.append(f"implants={params.implants} (known kinds: {IMPLANT_KINDS})")
    if params.sdd_mm <= params.odd_mm + 100:
        problems.append(f"sdd_mm={params.sdd_mm}, odd_mm={params.odd_mm} "
                        "(the source must lie > 100 mm from the isocentre)")
    lo, hi = params.window_percentiles
    if not 0 <= lo < hi <= 100:
        problems.append(f"window_percentiles={params.window_percentiles} (0 <= low < high <= 100)")
    if params.heel_axis not in ("vertical", "horizontal") or params.grid_axis not in ("vertical", "horizontal"):
        problems.append("heel_axis and grid_axis must be 'vertical' or 'horizontal'")
    if not 0 < params.mid_gray < 1 or params.grid_period_px <= 0:
        problems.append(f"mid_gray={params.mid_gray} must lie in (0, 1) and grid_period_px > 0")
    if problems:
        raise MSKSegError("invalid radiograph parameters: " + "; ".join(problems))


@dataclass
class DRRSample:
    """One rendered radiograph with its projected labels.

    Attributes:
        image: the display image, 2D ``(J, I)`` float32 in [0, 1] (bone bright, shutters 0), pixel spacing
            ``(pixel_mm, pixel_mm)`` at the isocentre; ``image.metadata`` holds DICOM-like attributes
            (Modality ``DX``, ViewPosition, PatientOrientation, ImagerPixelSpacing, KVP, distances).
        masks: label name -> bool ``(J, I)`` projected mask (ray through >= ``mask_min_mm`` of the label), for
            every named label present in the volume (empty when collimated away).
        centres: vertebra name -> ``(x, y)`` pixel position (column, row; float) of the projected vertebral-body
            centroid, for vertebra labels whose centre lies in the collimated field.
        meta: how the image was made: view, geometry, parameters, energies, distances, ``pixel_to_lps``,
            ``projection`` (for :func:`lps_to_pixel`), ``field_mask``, ``line_integral`` (float32 ``(J, I)``,
            the noise-free attenuation integral ``sum mu * path`` per pixel, implants included), window,
            implants, rules, timing.
    """

    image: Image
    masks: dict[str, np.ndarray]
    centres: dict[str, tuple[float, float]]
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- physics
def effective_energy_kev(kvp: float) -> float:
    """Effective photon energy (keV) behind the patient for a tube voltage ``kvp`` (kV): ``0.42 kvp + 12``."""
    return 0.42 * float(kvp) + 12.0


def _log_interp(kev: float, table: np.ndarray) -> float:
    return float(np.exp(np.interp(np.log(kev), np.log(_KEV), np.log(table))))


def attenuation_terms(kvp: float) -> tuple[float, float]:
    """``(mu_water per mm, bone weight)`` at the effective energy of ``kvp``.

    A voxel of CT number ``h`` (clipped at -1000) attenuates ``mu = mu_water * (1 + h/1000)`` for ``h <= 0``
    and ``mu_water * (1 + bone_weight * h/1000)`` above: positive HU are read as a water/cortical-bone mixture,
    whose bone part attenuates ``bone_weight`` times more, relative to water, than at the CT's 70 keV
    (about 2.6 at 60 kVp, 1.9 at 80 kVp, 1.2 at 120 kVp).
    """
    kev = effective_energy_kev(kvp)
    mu_water = _log_interp(kev, _MU_WATER) / 10.0  # density 1 g/cm3, per mm
    ratio = _log_interp(kev, _MU_BONE) / _log_interp(kev, _MU_WATER) * _BONE_DENSITY
    ratio_ct = _log_interp(_CT_KEV, _MU_BONE) / _log_interp(_CT_KEV, _MU_WATER) * _BONE_DENSITY
    return mu_water, (ratio - 1.0) / (ratio_ct - 1.0)


# ----------------------------------------------------------------------------------------------- geometry
def _view_axes(view: str, lateral_anterior: str) -> np.ndarray:
    """Rows: LPS unit vectors of the ray direction ``t``, image-up ``w`` and image-right ``u``."""
    if view == "frontal":
        return np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    if lateral_anterior == "left":
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _is_signed_permutation(direction: np.ndarray) -> bool:
    a = np.abs(direction)
    return bool(np.all((a < 1e-6) | (a > 1 - 1e-6)) and np.all(a.sum(0) > 1 - 1e-6) and np.all(a.sum(1) > 1 - 1e-6))


def _resample_axis_aligned(hu: Image, labels: Image | None) -> tuple[Image, Image | None]:
    """Both images on an LPS-aligned grid (identity direction) covering the volume, spacing kept per axis."""
    import SimpleITK as sitk

    d = hu.direction
    spacing = np.array([hu.spacing[int(np.argmax(np.abs(d[p, :])))] for p in range(3)])
    n = np.array(hu.size) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
    pts = hu.index_to_physical(corners)
    lo, hi = pts.min(0), pts.max(0)
    size = [int(np.ceil((hi[p] - lo[p]) / spacing[p])) + 1 for p in range(3)]

    def resample(img: Image, interp: int, default: float) -> Image:
        ref = sitk.Image(size, sitk.sitkFloat32 if interp == sitk.sitkLinear else sitk.sitkInt32)
        ref.SetSpacing(tuple(float(s) for s in spacing))
        ref.SetOrigin(tuple(float(v) for v in lo))
        src = img.to_sitk()
        if interp == sitk.sitkLinear:
            src = sitk.Cast(src, sitk.sitkFloat32)
        else:
            src = sitk.Cast(src, sitk.sitkInt32)
        out = sitk.Resample(src, ref, sitk.Transform(), interp, default)
        return Image.from_sitk(out)

    hu2 = resample(hu, sitk.sitkLinear, -1000.0)
    lab2 = resample(labels, sitk.sitkNearestNeighbor, 0) if labels is not None else None
    return hu2, lab2


@dataclass
class _Working:
    """A volume seen along the view: arrays ``(t, w, u)`` with coordinates ``start + step * index`` (mm)."""

    hu: np.ndarray
    labels: np.ndarray | None
    start: np.ndarray
    step: np.ndarray
    axes: np.ndarray

    def to_lps(self, index: np.ndarray) -> np.ndarray:
        """LPS mm of continuous working indices ``(..., 3)`` in ``(t, w, u)`` order."""
        return (self.start + np.asarray(index, float) * self.step) @ self.axes


def _working_volume(hu: Image, labels: Image | None, axes: np.ndarray) -> _Working:
    """Transposed / flipped views of the arrays so that index axes run along ``axes`` (no copy)."""
    if not _is_signed_permutation(hu.direction):
        hu, labels = _resample_axis_aligned(hu, labels)
    d, origin, spacing = hu.direction, np.asarray(hu.origin), hu.spacing
    arrays = [hu.array] + ([labels.array] if labels is not None else [])
    perm, flips, start, step = [], [], [], []
    for e in axes:
        p = int(np.argmax(np.abs(e)))
        s_e = float(np.sign(e[p]))
        c = int(np.argmax(np.abs(d[p, :])))
        s_c = float(np.sign(d[p, c]))
        axis = 2 - c
        n = hu.array.shape[axis]
        perm.append(axis)
        step.append(spacing[c])
        if s_e * s_c > 0:
            flips.append(False)
            start.append(s_e * origin[p])
        else:
            flips.append(True)
            start.append(s_e * origin[p] - spacing[c] * (n - 1))
    out = []
    for arr in arrays:
        a = np.transpose(arr, perm)
        for ax, flip in enumerate(flips):
            if flip:
                a = np.flip(a, ax)
        out.append(a)
    return _Working(out[0], out[1] if labels is not None else None, np.array(start), np.array(step), axes)


class _Projector:
    """Line integrals through ``(t, w, u)`` blocks onto an intermediate isocentre-plane grid ``(W, U)``.

    Parallel beam: the grid is the volume's own ``(w, u)`` grid and a block projects by summation along ``t``.
    Cone beam: the source lies at ``t_iso - sod`` on the central ray; a slab at depth ``t`` shrinks onto the
    isocentre plane by ``sod / (t - t_source)``, so each slab (grouped to <= 2 mm) is resampled with that scale
    and summed; the ray obliquity ``1 / cos`` is applied once at the end (:meth:`obliquity`).
    """

    def __init__(self, vol: _Working, geometry: str, iso: np.ndarray, sod: float):
        self.geometry = geometry
        self.t0, self.w0, self.u0 = vol.start
        self.dt, self.dw, self.du = vol.step
        nt, nw, nu = vol.hu.shape
        self.iso = iso
        self.sod = sod
        if geometry == "parallel":
            self.W0, self.U0, self.NW, self.NU = self.w0, self.u0, nw, nu
            self.group = 32
            self.t_source = None
            return
        self.t_source = iso[0] - sod
        t_lo, t_hi = self.t0, self.t0 + (nt - 1) * self.dt
        if t_lo - self.t_source < 50.0:
            raise MSKSegError(
                f"the X-ray source ({sod:.0f} mm from the isocentre) lies inside or next to the volume",
                "increase sdd_mm or reduce odd_mm, or crop the volume around the anatomy to image",
            )
        scales = [(t - self.t_source) / sod for t in (t_lo, t_hi)]
        ws = [iso[1] + (w - iso[1]) / s for s in scales for w in (self.w0, self.w0 + (nw - 1) * self.dw)]
        us = [iso[2] + (u - iso[2]) / s for s in scales for u in (self.u0, self.u0 + (nu - 1) * self.du)]
        self.W0, self.U0 = min(ws), min(us)
        self.NW = int(np.ceil((max(ws) - self.W0) / self.dw)) + 1
        self.NU = int(np.ceil((max(us) - self.U0) / self.du)) + 1
        self.group = max(1, int(np.floor(2.0 / self.dt + 1e-6)))

    def empty(self) -> np.ndarray:
        return np.zeros((self.NW, self.NU), np.float64)

    def add(self, acc: np.ndarray, m: np.ndarray, t_centre: float, wi0: int, ui0: int) -> None:
        """Add the slab-group integral ``m`` (rows from volume row ``wi0``, columns from ``ui0``) into ``acc``."""
        nwb, nub = m.shape
        if self.t_source is None:
            acc[wi0:wi0 + nwb, ui0:ui0 + nub] += m
            return
        s = (t_centre - self.t_source) / self.sod
        ia, ib = self._out_range(s, self.w0, self.dw, wi0, nwb, self.iso[1], self.W0, self.NW)
        ja, jb = self._out_range(s, self.u0, self.du, ui0, nub, self.iso[2], self.U0, self.NU)
        if ia >= ib or ja >= jb:
            return
        off_w = (self.iso[1] - self.w0) / self.dw - wi0 + s * (self.W0 + ia * self.dw - self.iso[1]) / self.dw
        off_u = (self.iso[2] - self.u0) / self.du - ui0 + s * (self.U0 + ja * self.du - self.iso[2]) / self.du
        acc[ia:ib, ja:jb] += ndimage.affine_transform(
            np.ascontiguousarray(m, dtype=np.float64), [s, s], offset=[off_w, off_u], output_shape=(ib - ia, jb - ja),
            order=1, mode="grid-constant", cval=0.0)

    @staticmethod
    def _out_range(s, v0, dv, i0, n, iso_v, V0, NV) -> tuple[int, int]:
        lo = iso_v + (v0 + (i0 - 1) * dv - iso_v) / s
        hi = iso_v + (v0 + (i0 + n) * dv - iso_v) / s
        return max(0, int(np.floor((lo - V0) / dv))), min(NV, int(np.ceil((hi - V0) / dv)) + 1)

    def project_block(self, acc: np.ndarray, block: np.ndarray, ti0: int, wi0: int, ui0: int) -> None:
        """Add the line integrals of ``block`` (values per mm of path, shape ``(t, w, u)``) into ``acc``."""
        nt = block.shape[0]
        step = nt if self.t_source is None else self.group
        for a in range(0, nt, step):
            b = min(nt, a + step)
            m = block[a:b].sum(0, dtype=np.float64) * self.dt
            self.add(acc, m, self.t0 + self.dt * (ti0 + (a + b - 1) / 2.0), wi0, ui0)

    def obliquity(self) -> np.ndarray | None:
        """``1 / cos(ray angle)`` per intermediate pixel (cone beam), None for parallel beam."""
        if self.t_source is None:
            return None
        w = self.W0 + np.arange(self.NW) * self.dw - self.iso[1]
        u = self.U0 + np.arange(self.NU) * self.du - self.iso[2]
        return np.sqrt(self.sod ** 2 + w[:, None] ** 2 + u[None, :] ** 2) / self.sod

    def point_to_plane(self, twu: np.ndarray) -> np.ndarray:
        """Isocentre-plane ``(W, U)`` of working coordinates ``(..., 3)`` (mm)."""
        twu = np.atleast_2d(np.asarray(twu, float))
        if self.t_source is None:
            return twu[:, 1:3].copy()
        s = (twu[:, 0] - self.t_source) / self.sod
        return self.iso[1:3] + (twu[:, 1:3] - self.iso[1:3]) / s[:, None]


@dataclass
class _Detector:
    """The output pixel grid on the isocentre plane: row r at ``W = w_top - r p``, column c at ``U = u_left + c p``."""

    w_top: float
    u_left: float
    rows: int
    cols: int
    pixel_mm: float

    def resample(self, proj: _Projector, sub: np.ndarray, iw0: int = 0, iu0: int = 0
                 ) -> tuple[np.ndarray, int, int]:
        """Bilinear resampling of an intermediate sub-map (starting at ``(iw0, iu0)``) onto the detector.

        Returns ``(values, r0, c0)``: the detector window covered by the sub-map and its top-left pixel.
        """
        p = self.pixel_mm
        w_lo = proj.W0 + (iw0 - 1) * proj.dw
        w_hi = proj.W0 + (iw0 + sub.shape[0]) * proj.dw
        u_lo = proj.U0 + (iu0 - 1) * proj.du
        u_hi = proj.U0 + (iu0 + sub.shape[1]) * proj.du
        r0 = max(0, int(np.floor((self.w_top - w_hi) / p)))
        r1 = min(self.rows, int(np.ceil((self.w_top - w_lo) / p)) + 1)
        c0 = max(0, int(np.floor((u_lo - self.u_left) / p)))
        c1 = min(self.cols, int(np.ceil((u_hi - self.u_left) / p)) + 1)
        if r0 >= r1 or c0 >= c1:
            return np.zeros((0, 0)), 0, 0
        off_r = (self.w_top - r0 * p - proj.W0) / proj.dw - iw0
        off_c = (self.u_left + c0 * p - proj.U0) / proj.du - iu0
        out = ndimage.affine_transform(np.ascontiguousarray(sub, dtype=np.float64), [-p / proj.dw, p / proj.du],
                                       offset=[off_r, off_c], output_shape=(r1 - r0, c1 - c0), order=1,
                                       mode="grid-constant", cval=0.0)
        return out, r0, c0

    def full(self, proj: _Projector, sub: np.ndarray) -> np.ndarray:
        out = np.zeros((self.rows, self.cols), np.float64)
        vals, r0, c0 = self.resample(proj, sub)
        out[r0:r0 + vals.shape[0], c0:c0 + vals.shape[1]] = vals
        return out

    def plane_to_pixel(self, wu: np.ndarray) -> np.ndarray:
        """``(x, y)`` pixel positions of isocentre-plane ``(W, U)`` points ``(N, 2)``."""
        wu = np.atleast_2d(wu)
        return np.stack([(wu[:, 1] - self.u_left) / self.pixel_mm, (self.w_top - wu[:, 0]) / self.pixel_mm], axis=1)


def lps_to_pixel(sample: DRRSample | dict[str, Any], points_lps: np.ndarray) -> np.ndarray:
    """Project LPS points onto a rendered radiograph.

    Args:
        sample: a :class:`DRRSample` (or its ``meta`` dict).
        points_lps: ``(3,)`` or ``(N, 3)`` LPS positions in mm.

    Returns:
        ``(N, 2)`` float pixel positions ``(x, y)`` = (column, row) of the image.
    """
    meta = sample.meta if isinstance(sample, DRRSample) else sample
    g = meta["projection"]
    axes = np.asarray(g["axes"])
    twu = np.atleast_2d(np.asarray(points_lps, float)) @ axes.T
    iso = np.asarray(g["isocentre_twu"])
    if g["source_t"] is None:
        wu = twu[:, 1:3]
    else:
        s = (twu[:, 0] - g["source_t"]) / g["sod_mm"]
        wu = iso[1:3] + (twu[:, 1:3] - iso[1:3]) / s[:, None]
    p = g["pixel_mm"]
    return np.stack([(wu[:, 1] - g["u_left"]) / p, (g["w_top"] - wu[:, 0]) / p], axis=1)


# ----------------------------------------------------------------------------------------------- labels
def vertebra_rank(name: str) -> int | None:
    """Craniocaudal rank of a vertebra label name (``C1`` < ... < ``T12`` < ``L1`` < ... < ``S1``), else None.

    Accepts ``L3``, ``vertebrae_L3`` and ``vertebra_L3`` (any case); the rank is the order of
    :data:`mskseg.anatomy.VERTEBRAE`.
    """
    found = vertebra_from_name(name)
    return None if found is None else vertebra_order(found)


def is_vertebra_name(name: str) -> bool:
    """True when ``name`` names a vertebra (see :func:`vertebra_rank`)."""
    return vertebra_rank(name) is not None


def _body_centroid(mask: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Centroid (continuous index, same axes as ``mask``) of the vertebral body inside a whole-vertebra mask.

    The mask is subsampled to >= 2 mm, opened with a ball of radius ``0.22 * volume^(1/3)`` (shrunk when
    nothing survives), and the centroid of the largest surviving part is returned; the plain centroid when the
    mask is too small to open.
    """
    stride = np.maximum(1, np.round(2.0 / step)).astype(int)
    small = mask[::stride[0], ::stride[1], ::stride[2]]
    sampling = step * stride
    volume = float(mask.sum()) * float(np.prod(step))
    radius = 0.22 * volume ** (1.0 / 3.0)
    padded = np.pad(small, 1)
    inside = ndimage.distance_transform_edt(padded, sampling=sampling)
    for _ in range(4):
        core = inside > radius
        if core.any():
            comps, n = ndimage.label(core)
            if n > 1:
                sizes = ndimage.sum_labels(core, comps, index=np.arange(1, n + 1))
                core = comps == (int(np.argmax(sizes)) + 1)
            opened = (ndimage.distance_transform_edt(~core, sampling=sampling) <= radius) & padded
            idx = np.argwhere(opened).mean(0) - 1.0
            return idx * stride
        radius *= 0.7
    return np.argwhere(mask).mean(0)


def _present_labels(labels: np.ndarray, label_names: dict[int, str] | None
                    ) -> dict[int, tuple[str, tuple[slice, ...]]]:
    """value -> (name, bounding slices in the working array) for every named label present."""
    if labels.dtype.kind == "b":
        labels = labels.view(np.uint8)
    if labels.dtype.kind not in "iu":
        raise InvalidImageError(f"label map has dtype {labels.dtype}; labels must be integers",
                                "cast the label map to an integer type")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InvalidImageError(f"label map has negative values (min {labels.min()}); labels must be >= 0")
    boxes = ndimage.find_objects(labels)
    out = {}
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        if label_names is None:
            name = f"label_{value}"
        elif value in label_names:
            name = str(label_names[value])
        else:
            continue
        out[value] = (name, box)
    return out


# ----------------------------------------------------------------------------------------------- implants
@dataclass
class _Capsule:
    """A cylinder with round ends from ``a`` to ``b`` (LPS mm), ``radius`` mm, attenuation ``ratio`` x water."""

    a: np.ndarray
    b: np.ndarray
    radius: float
    ratio: float


@dataclass
class _Shell:
    """A hemispherical shell (acetabular cup): radii ``r_in``..``r_out`` around ``centre``, open against ``normal``."""

    centre: np.ndarray
    r_in: float
    r_out: float
    normal: np.ndarray
    ratio: float


def _pedicle_screws(bodies: dict[str, np.ndarray], rng: np.random.Generator
                    ) -> tuple[list[_Capsule | _Shell], dict[str, Any]] | None:
    """Bilateral pedicle screws in 2-4 adjacent thoracolumbar vertebrae joined by two rods (LPS mm)."""
    levels = sorted((n for n in bodies if (vertebra_rank(n) or 0) > vertebra_order("T8")), key=vertebra_rank)
    if len(levels) < 2:
        return None
    count = int(min(len(levels), rng.integers(2, 5)))
    first = int(rng.integers(0, len(levels) - count + 1))
    chosen = levels[first:first + count]
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    ratio = _TITANIUM_RATIO * float(rng.uniform(0.8, 1.2))
    rod_ratio = float(rng.choice([_TITANIUM_RATIO, _COCR_RATIO]))
    parts: list[_Capsule | _Shell] = []
    heads: dict[float, list[np.ndarray]] = {-1.0: [], 1.0: []}
    for name in chosen:
        body = bodies[name]
        length = float(rng.uniform(40.0, 50.0))
        for side in (-1.0, 1.0):
            conv = np.deg2rad(rng.uniform(8.0, 16.0))
            tip = body + side * 5.0 * ex - 8.0 * ey
            axis = np.cos(conv) * ey + np.sin(conv) * side * ex
            base = tip + length * axis
            head = base + 10.0 * ey
            parts.append(_Capsule(tip, base, 3.25, ratio))
            parts.append(_Capsule(base, head, 5.5, ratio))
            heads[side].append(head + 1.0 * ey)
    for pts in heads.values():
        pts_arr = np.array(pts)
        direction = pts_arr[-1] - pts_arr[0]
        direction /= max(np.linalg.norm(direction), 1e-6)
        ends = [pts_arr[0] - 8.0 * direction] + list(pts_arr[1:-1]) + [pts_arr[-1] + 8.0 * direction]
        for a, b in zip(ends[:-1], ends[1:]):
            parts.append(_Capsule(np.asarray(a), np.asarray(b), 2.75, rod_ratio))
    return parts, {"kind": "pedicle_screws", "levels": chosen}


def _hip_prosthesis(femurs: dict[str, np.ndarray], rng: np.random.Generator
                    ) -> tuple[list[_Capsule | _Shell], dict[str, Any]] | None:
    """A total hip: cup, head, neck and tapered stem along one femur given as LPS points ``(N, 3)``."""
    if not femurs:
        return None
    side = sorted(femurs)[int(rng.integers(0, len(femurs)))]
    pts = femurs[side]
    z = pts[:, 2]
    top = z.max()
    if top - z.min() < 40.0:
        return None
    head = pts[z >= top - 20.0].mean(0) - np.array([0.0, 0.0, 6.0])
    # Where the map ends above the shaft (abdominal CTs), the stem continues straight down out of the volume.
    below = pts[(z <= top - 70.0) & (z >= top - 100.0)]
    proximal = below.mean(0) if len(below) else head + np.array([0.0, 0.0, -80.0])
    distal = pts[(z <= top - 130.0) & (z >= top - 160.0)]
    distal_pt = distal.mean(0) if len(distal) else proximal - np.array([0.0, 0.0, 70.0])
    medial = np.array([-1.0 if "left" in side else 1.0, 0.0, 0.0])
    ratio = _COCR_RATIO * float(rng.uniform(0.8, 1.2))
    r_head = float(rng.uniform(14.0, 18.0))
    shoulder = proximal + np.array([0.0, 0.0, 35.0]) - 6.0 * medial
    normal = (np.array([0.0, 0.0, 1.0]) + medial) / np.sqrt(2.0)
    parts: list[_Capsule | _Shell] = [
        _Capsule(head, head, r_head, ratio),
        _Capsule(head, shoulder, 6.5, ratio),
        _Capsule(shoulder, proximal, 9.0, ratio),
        _Capsule(proximal, distal_pt, 6.0, ratio),
        _Shell(head, r_head + 1.0, r_head + 5.0, normal, _TITANIUM_RATIO),
    ]
    return parts, {"kind": "hip_prosthesis", "side": side}


def _part_box(part: _Capsule | _Shell, vol: _Working) -> tuple[np.ndarray, np.ndarray]:
    """Working-grid index range ``[i0, i1)`` (clipped to the volume) that holds an implant part."""
    if isinstance(part, _Capsule):
        ends, r = np.stack([part.a, part.b]) @ vol.axes.T, part.radius
    else:
        ends, r = part.centre[None] @ vol.axes.T, part.r_out
    shape = np.array(vol.hu.shape)
    i0 = np.clip(np.floor((ends.min(0) - r - 1.0 - vol.start) / vol.step).astype(int), 0, shape)
    i1 = np.clip(np.ceil((ends.max(0) + r + 1.0 - vol.start) / vol.step).astype(int) + 1, 0, shape)
    return i0, i1


def _rasterize(parts: list[_Capsule | _Shell], vol: _Working
               ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]] | None:
    """Occupancy (0..1, anti-aliased) and attenuation ratio of implant parts on the working grid, cropped.

    Returns ``(occupancy, ratio, first index)`` of the box holding all parts, or None when all lie outside.
    """
    boxes = [_part_box(part, vol) for part in parts]
    inside = [k for k, (i0, i1) in enumerate(boxes) if np.all(i1 > i0)]
    if not inside:
        return None
    lo = np.min([boxes[k][0] for k in inside], axis=0)
    hi = np.max([boxes[k][1] for k in inside], axis=0)
    occ = np.zeros(tuple(hi - lo), np.float32)
    ratio = np.zeros(tuple(hi - lo), np.float32)
    h = float(vol.step.min())
    for k in inside:
        part, (i0, i1) = parts[k], boxes[k]
        grids = [vol.start[a] + vol.step[a] * np.arange(i0[a], i1[a]) for a in range(3)]
        pos = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1)
        if isinstance(part, _Capsule):
            a, b = part.a @ vol.axes.T, part.b @ vol.axes.T
            ab = b - a
            denom = float(ab @ ab)
            x = np.clip(((pos - a) @ ab) / denom, 0.0, 1.0) if denom > 0 else np.zeros(pos.shape[:3])
            dist = np.linalg.norm(pos - (a + x[..., None] * ab), axis=-1)
            o = np.clip((part.radius - dist) / h + 0.5, 0.0, 1.0)
        else:
            c = part.centre @ vol.axes.T
            n = part.normal @ vol.axes.T
            dist = np.linalg.norm(pos - c, axis=-1)
            o = np.clip((part.r_out - dist) / h + 0.5, 0, 1) * np.clip((dist - part.r_in) / h + 0.5, 0, 1)
            o = o * (((pos - c) @ n) > 0)
        window = tuple(slice(i0[a] - lo[a], i1[a] - lo[a]) for a in range(3))
        better = o > occ[window]
        occ[window] = np.where(better, o, occ[window])
        ratio[window] = np.where(better, part.ratio, ratio[window])
    return occ, ratio, (int(lo[0]), int(lo[1]), int(lo[2]))


# ----------------------------------------------------------------------------------------------- image formation
def _smooth_noise(rng: np.random.Generator, n: int, corr: float) -> np.ndarray:
    x = ndimage.gaussian_filter1d(rng.normal(size=n + 40), max(corr, 1.0), mode="wrap")[20:20 + n]
    return x / max(float(x.std()), 1e-9)


def _collimation_field(shape: tuple[int, int], params: DRRParams, rng: np.random.Generator,
                       pixel_mm: float) -> np.ndarray:
    """bool ``(J, I)``: True inside the collimated (exposed) field.

    The shutters close ``collimation_margins`` of the image from each side and are turned by
    ``collimation_tilt_deg`` about the image centre; ``"ragged"`` edges get an irregular offset of up to
    ``ragged_mm``.
    """
    rows, cols = shape
    if params.collimation == "none":
        return np.ones(shape, bool)
    ml, mr, mt, mb = params.collimation_margins
    angle = np.deg2rad(params.collimation_tilt_deg)
    r = np.arange(rows, dtype=np.float64)[:, None] - (rows - 1) / 2.0
    c = np.arange(cols, dtype=np.float64)[None, :] - (cols - 1) / 2.0
    x = np.cos(angle) * c + np.sin(angle) * r  # field coordinates (columns, rows) relative to the centre
    y = -np.sin(angle) * c + np.cos(angle) * r
    half_w, half_h = cols / 2.0, rows / 2.0
    left, right = -half_w + ml * cols, half_w - mr * cols
    top, bottom = -half_h + mt * rows, half_h - mb * rows
    if params.collimation == "ragged":
        amp = params.ragged_mm / pixel_mm

        def jag(coord: np.ndarray, n: int) -> np.ndarray:
            profile = amp * np.abs(_smooth_noise(rng, n, n / 40.0))
            idx = np.clip(np.round(coord + (n - 1) / 2.0).astype(int), 0, n - 1)
            return profile[idx]

        left = left + jag(y, rows)
        right = right - jag(y, rows)
        top = top + jag(x, cols)
        bottom = bottom - jag(x, cols)
    return (x >= left) & (x < right) & (y >= top) & (y < bottom)


def _wide_gaussian(x: np.ndarray, sigma_px: float, mode: str = "nearest") -> np.ndarray:
    """Gaussian filter of a 2D array; wide kernels run on a block-averaged copy (same result to < 1 %, 20x faster)."""
    factor = int(sigma_px // 4)
    if factor < 2:
        return ndimage.gaussian_filter(x, sigma_px, mode=mode, truncate=3.0)
    rows, cols = x.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    padded = np.pad(x, ((0, pr), (0, pc)), mode="edge" if mode == "nearest" else "constant")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean((1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode=mode, truncate=3.0)
    # Block centres sit at (factor - 1) / 2 in full-resolution pixels.
    r = (np.arange(rows) - (factor - 1) / 2.0) / factor
    c = (np.arange(cols) - (factor - 1) / 2.0) / factor
    rr = np.clip(r, 0, small.shape[0] - 1)
    cc = np.clip(c, 0, small.shape[1] - 1)
    r0 = np.minimum(np.floor(rr).astype(int), small.shape[0] - 2) if small.shape[0] > 1 else np.zeros(rows, int)
    c0 = np.minimum(np.floor(cc).astype(int), small.shape[1] - 2) if small.shape[1] > 1 else np.zeros(cols, int)
    fr = (rr - r0)[:, None] if small.shape[0] > 1 else np.zeros((rows, 1))
    fc = (cc - c0)[None, :] if small.shape[1] > 1 else np.zeros((1, cols))
    r1 = np.minimum(r0 + 1, small.shape[0] - 1)
    c1 = np.minimum(c0 + 1, small.shape[1] - 1)
    top = small[r0][:, c0] * (1 - fc) + small[r0][:, c1] * fc
    bottom = small[r1][:, c0] * (1 - fc) + small[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def _masked_lowpass(x: np.ndarray, weight: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of ``x`` using only pixels where ``weight`` (normalised convolution)."""
    w = weight.astype(np.float64)
    num = _wide_gaussian(x * w, sigma_px)
    den = _wide_gaussian(w, sigma_px)
    return num / np.maximum(den, 1e-6)


def _form_image(line_integral: np.ndarray, params: DRRParams, rng: np.random.Generator, pixel_mm: float,
                field_mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Display image ``(J, I)`` float32 in [0, 1] from line integrals ``(J, I)`` (dimensionless, mu * mm)."""
    transmission = np.exp(-line_integral)
    if params.focal_blur_mm / pixel_mm > 0.05:
        transmission = ndimage.gaussian_filter(transmission, params.focal_blur_mm / pixel_mm)
    inside = field_mask & (line_integral > 0.1)
    reference = float(np.median(transmission[inside])) if inside.any() else float(np.median(transmission[field_mask]))
    photons = params.exposure / max(reference, 1e-12)
    rows, cols = transmission.shape
    gain = np.ones_like(transmission)
    if params.heel:
        ramp = np.linspace(-1.0, 1.0, rows if params.heel_axis == "vertical" else cols)
        gain = gain * (1.0 + params.heel * (ramp[:, None] if params.heel_axis == "vertical" else ramp[None, :]))
    if params.grid_lines:
        n = cols if params.grid_axis == "vertical" else rows
        stripes = 1.0 + params.grid_amplitude * np.cos(2 * np.pi * np.arange(n) / params.grid_period_px)
        gain = gain * (stripes[None, :] if params.grid_axis == "vertical" else stripes[:, None])
    primary = photons * transmission * gain * field_mask
    scatter_source = np.minimum(primary, photons * reference)
    scatter = params.scatter_to_primary * _wide_gaussian(scatter_source, params.scatter_sigma_mm / pixel_mm,
                                                         mode="constant")
    expected = primary + scatter
    det_sigma = params.detector_blur_mm / pixel_mm
    if params.noise:
        counts = rng.poisson(expected).astype(np.float64)
    else:
        counts = expected
    if det_sigma > 0.05:
        counts = ndimage.gaussian_filter(counts, det_sigma)
        expected = ndimage.gaussian_filter(expected, det_sigma)
    if params.noise and params.electronic_noise > 0:
        counts = counts + rng.normal(0.0, params.electronic_noise, counts.shape)
    floor = 0.5
    clean_log = -np.log(np.maximum(expected, floor) / photons)
    noisy_log = -np.log(np.maximum(counts, floor) / photons)

    def process(log_image: np.ndarray) -> np.ndarray:
        # Filters see only the exposed field: the shutters are filled with the field's low-pass first, so that
        # their edge neither darkens nor brightens the image next to it.
        lowpass = _masked_lowpass(log_image, field_mask, params.lowpass_mm / pixel_mm)
        if not field_mask.all():
            log_image = np.where(field_mask, log_image, lowpass)
        out = log_image - params.latitude_compression * lowpass
        if params.edge_enhance > 0:
            out += params.edge_enhance * (log_image - ndimage.gaussian_filter(log_image, params.edge_mm / pixel_mm))
        return out

    clean = process(clean_log)
    # Like the histogram analysis of radiography systems: the window covers the anatomy (pixels behind the
    # patient), not the direct exposure around it, which ends up black.
    thick = float(np.percentile(line_integral[field_mask], 95)) if field_mask.any() else 0.0
    anatomy = field_mask & (line_integral > max(0.5, 0.3 * thick))
    if anatomy.sum() < 0.01 * max(1, field_mask.sum()):
        anatomy = field_mask if field_mask.any() else np.ones_like(field_mask)
    values = clean[anatomy]
    lo, hi = (float(v) for v in np.percentile(values, params.window_percentiles))
    if hi <= lo:
        hi = lo + 1e-3
    noisy = process(noisy_log) if params.noise else clean
    median = float(np.clip((np.median(values) - lo) / (hi - lo), 0.02, 0.98))
    gamma = float(np.clip(np.log(params.mid_gray) / np.log(median), 0.3, 3.0))
    display = np.clip((noisy - lo) / (hi - lo), 0.0, 1.0) ** gamma
    display[~field_mask] = 0.0
    info = {"photons_unattenuated": photons, "reference_transmission": reference, "window": (lo, hi),
            "gamma": gamma}
    return display.astype(np.float32), info


# ----------------------------------------------------------------------------------------------- render
def _slab_group_integrals(hu: np.ndarray, group: int, mu_step: float, bone_weight: float):
    """Yield ``(t_start, t_stop, integral (w, u))`` of the attenuation over groups of ``group`` slabs.

    ``hu`` is a ``(t, w, u)`` view of any memory layout; it is read in chunks of rows ``w`` (contiguous for the
    usual axial volumes), converted to attenuation (``mu_step`` = mu_water x slab thickness), and summed per
    slab group with ``reduceat``, so no full float copy of the volume is made.
    """
    nt, nw, nu = hu.shape
    starts = np.arange(0, nt, group)
    counts = np.diff(np.append(starts, nt)).astype(np.float64)
    sums = np.empty((len(starts), nw, nu), np.float32)
    rows = max(1, int(4_000_000 // max(1, nt * nu)))
    for w0 in range(0, nw, rows):
        chunk = hu[:, w0:w0 + rows, :].astype(np.float32)
        np.maximum(chunk, -1000.0, out=chunk)
        s1 = np.add.reduceat(chunk, starts, axis=0)
        np.maximum(chunk, 0.0, out=chunk)
        s2 = np.add.reduceat(chunk, starts, axis=0)
        sums[:, w0:w0 + rows, :] = s1 + (bone_weight - 1.0) * s2
    for g, a in enumerate(starts):
        yield int(a), int(a + counts[g]), mu_step * (counts[g] + sums[g].astype(np.float64) / 1000.0)


def render_drr(
    hu: Image,
    labels: Image | None = None,
    label_names: dict[int, str] | None = None,
    rng: np.random.Generator | None = None,
    *,
    view: str = "lateral",
    pixel_mm: float = 0.5,
    geometry: str = "parallel",
    params: DRRParams | None = None,
    lateral_anterior: str = "left",
    isocentre_lps: tuple[float, float, float] | None = None,
    detector_mm: tuple[float, float] | None = None,
    mask_min_mm: float = 1.0,
    mask_names: Iterable[str] | None = None,
) -> DRRSample:
    """Render a radiograph of a volume and project its labels onto it.

    Args:
        hu: 3D volume in Hounsfield units, array ``(K, J, I)``, any grid and direction (LPS).
        labels: optional label map on exactly ``hu``'s grid (integers >= 0, 0 = background).
        label_names: label value -> name; only these labels get masks. None: every present value, named
            ``label_<value>``. Vertebra names (``vertebrae_L3``, ``L3``, ...) also get body centres.
        rng: random generator. None: the default :class:`DRRParams` with noise drawn from seed 0 (reproducible).
            Given (and ``params`` None): the parameters are drawn with :func:`sample_drr_params`.
        view: ``"lateral"`` or ``"frontal"`` (AP).
        pixel_mm: pixel size at the isocentre (mm).
        geometry: ``"parallel"`` or ``"cone"`` (point source at ``params.sdd_mm`` from the detector,
            ``params.odd_mm`` from the isocentre to the detector).
        params: acquisition and processing parameters; overrides the drawing.
        lateral_anterior: for the lateral view, the image side the patient faces, ``"left"`` (left lateral,
            default) or ``"right"`` (right lateral).
        isocentre_lps: point the central ray passes through (LPS mm); default the centre of the volume.
        detector_mm: ``(width, height)`` of the field at the isocentre plane, centred on the isocentre; default
            the whole projected volume.
        mask_min_mm: path length through a label (mm) from which a pixel belongs to its mask.
        mask_names: restrict the projected masks (and centres) to these label names (speed for big maps).

    Returns:
        A :class:`DRRSample` whose image is ``(J, I)`` float32 in [0, 1].

    Speed (one core, 300 x 300 x 300 voxels at 1 mm, 0.5 mm pixels): about 0.3 s in parallel geometry and
    1 s in cone-beam geometry (per-slab resampling), plus a few tens of ms per projected label.

    Raises:
        InvalidImageError: ``hu`` is not 3D, or the label map is not integer / has negative values.
        GeometryMismatchError: ``labels`` is not on ``hu``'s grid.
        MSKSegError: unknown view / geometry / side, non-positive pixel size, invalid parameters, or a source
            inside the volume.
    """
    started = time.perf_counter()
    if hu.ndim != 3:
        raise InvalidImageError(f"a radiograph is rendered from a 3D volume; got a {hu.ndim}D image",
                                "pass the CT volume (K, J, I), not a slice")
    if view not in VIEWS:
        raise MSKSegError(f"unknown radiograph view {view!r}", f"use one of {VIEWS}")
    if geometry not in GEOMETRIES:
        raise MSKSegError(f"unknown projection geometry {geometry!r}", f"use one of {GEOMETRIES}")
    if lateral_anterior not in ("left", "right"):
        raise MSKSegError(f"lateral_anterior={lateral_anterior!r}; the patient faces the image 'left' or 'right'")
    if not pixel_mm > 0:
        raise MSKSegError(f"pixel size {pixel_mm} mm must be > 0")
    if labels is not None:
        if labels.ndim != 3:
            raise InvalidImageError(f"the label map is {labels.ndim}D; it must be a 3D map on the volume's grid")
        hu.check_same_grid(labels, "label map")
    if rng is None:
        rng = np.random.default_rng(0)
        params = params or DRRParams()
    elif params is None:
        params = sample_drr_params(rng)
    _check_params(params)

    axes = _view_axes(view, lateral_anterior)
    vol = _working_volume(hu, labels, axes)
    shape = np.array(vol.hu.shape)
    if isocentre_lps is None:
        iso = vol.start + vol.step * (shape - 1) / 2.0
    else:
        iso = axes @ np.asarray(isocentre_lps, float)
    sod = params.sdd_mm - params.odd_mm
    proj = _Projector(vol, geometry, iso, sod)

    # Every named label is found (implants are placed by them); masks and centres only for ``mask_names``.
    named = _present_labels(vol.labels, label_names) if vol.labels is not None else {}
    wanted = None if mask_names is None else set(mask_names)
    present = {v: nb for v, nb in named.items() if wanted is None or nb[0] in wanted}
    bodies_twu: dict[str, np.ndarray] = {}
    for value, (name, box) in named.items():
        if is_vertebra_name(name):
            crop = vol.labels[box] == value
            idx = _body_centroid(crop, vol.step) + np.array([s.start for s in box])
            bodies_twu[name] = idx

    # Attenuation line integrals, slab group by slab group (the volume is never converted whole).
    mu_water, bone_weight = attenuation_terms(params.kvp)
    acc = proj.empty()
    for a, b, m in _slab_group_integrals(vol.hu, proj.group, mu_water * vol.step[0], bone_weight):
        proj.add(acc, m, vol.start[0] + vol.step[0] * (a + b - 1) / 2.0, 0, 0)

    implant_notes = []
    for kind in params.implants:
        made = None
        if kind == "pedicle_screws":
            made = _pedicle_screws({n: vol.to_lps(i) for n, i in bodies_twu.items()}, rng)
        elif kind == "hip_prosthesis" and vol.labels is not None:
            femurs = {}
            for value, (name, box) in named.items():
                if name.startswith("femur_"):
                    pts = np.argwhere(vol.labels[box] == value)[::7] + np.array([s.start for s in box])
                    femurs[name] = vol.to_lps(pts)
            made = _hip_prosthesis(femurs, rng)
        if made is None:
            need = "two thoracolumbar vertebra labels" if kind == "pedicle_screws" else "a femur_left/right label"
            implant_notes.append({"kind": kind, "skipped": f"needs {need} to place it"})
            continue
        parts, note = made
        raster = _rasterize(parts, vol)
        if raster is None:
            implant_notes.append({**note, "skipped": "outside the volume"})
            continue
        occ, ratio, (t0, w0, u0) = raster
        tissue = np.asarray(vol.hu[t0:t0 + occ.shape[0], w0:w0 + occ.shape[1], u0:u0 + occ.shape[2]], np.float32)
        tissue = np.maximum(tissue, -1000.0)
        tissue_ratio = 1.0 + tissue / 1000.0 + (bone_weight - 1.0) * np.maximum(tissue, 0.0) / 1000.0
        proj.project_block(acc, mu_water * occ * (ratio - tissue_ratio), t0, w0, u0)
        implant_notes.append(note)

    oblique = proj.obliquity()
    if oblique is not None:
        acc *= oblique

    # Detector grid on the isocentre plane.
    if detector_mm is None:
        w_top = proj.W0 + (proj.NW - 1) * proj.dw
        u_left = proj.U0
        rows = int(np.floor((proj.NW - 1) * proj.dw / pixel_mm + 1e-6)) + 1
        cols = int(np.floor((proj.NU - 1) * proj.du / pixel_mm + 1e-6)) + 1
    else:
        width, height = (float(v) for v in detector_mm)
        rows, cols = max(1, int(round(height / pixel_mm))), max(1, int(round(width / pixel_mm)))
        w_top = iso[1] + (rows - 1) * pixel_mm / 2.0
        u_left = iso[2] - (cols - 1) * pixel_mm / 2.0
    det = _Detector(w_top, u_left, rows, cols, pixel_mm)
    line_integral = det.full(proj, acc)

    field_mask = _collimation_field((rows, cols), params, rng, pixel_mm)
    display, info = _form_image(line_integral, params, rng, pixel_mm, field_mask)

    masks: dict[str, np.ndarray] = {}
    for value, (name, box) in present.items():
        crop = (vol.labels[box] == value).astype(np.float32)
        thick = proj.empty()
        proj.project_block(thick, crop, box[0].start, box[1].start, box[2].start)
        if oblique is not None:
            thick *= oblique
        mask = np.zeros((rows, cols), bool)
        nz = np.nonzero(thick)
        if len(nz[0]):
            iw0, iw1, iu0, iu1 = nz[0].min(), nz[0].max() + 1, nz[1].min(), nz[1].max() + 1
            vals, r0, c0 = det.resample(proj, thick[iw0:iw1, iu0:iu1], iw0, iu0)
            mask[r0:r0 + vals.shape[0], c0:c0 + vals.shape[1]] = vals >= mask_min_mm
        masks[name] = mask & field_mask

    centres: dict[str, tuple[float, float]] = {}
    outside: list[str] = []
    for name in sorted(bodies_twu, key=vertebra_rank):
        if wanted is not None and name not in wanted:
            continue
        twu = vol.start + vol.step * bodies_twu[name]
        x, y = det.plane_to_pixel(proj.point_to_plane(twu))[0]
        r, c = int(round(y)), int(round(x))
        if 0 <= r < rows and 0 <= c < cols and field_mask[r, c]:
            centres[name] = (float(x), float(y))
        else:
            outside.append(name)

    magnification = 1.0 if geometry == "parallel" else params.sdd_mm / sod
    iso_lps = iso @ axes
    e_t, e_w, e_u = axes
    plane_origin = iso[0] * e_t + w_top * e_w + u_left * e_u
    pixel_to_lps = np.eye(4)
    pixel_to_lps[:3, 0] = pixel_mm * e_u
    pixel_to_lps[:3, 1] = -pixel_mm * e_w
    pixel_to_lps[:3, 2] = e_t
    pixel_to_lps[:3, 3] = plane_origin
    view_position = "AP" if view == "frontal" else ("LL" if lateral_anterior == "left" else "RL")
    image_meta = {
        "Modality": "DX",
        "ViewPosition": view_position,
        "PatientOrientation": _PATIENT_ORIENTATION[(view, lateral_anterior)],
        "ImagerPixelSpacing": (pixel_mm * magnification, pixel_mm * magnification),
        "EstimatedRadiographicMagnificationFactor": magnification,
        "KVP": params.kvp,
        "DistanceSourceToDetector": params.sdd_mm if geometry == "cone" else None,
        "DistanceSourceToPatient": sod if geometry == "cone" else None,
        "BurnedInAnnotation": "NO",
        "synthetic": True,
    }
    image = Image(display, (pixel_mm, pixel_mm), (0.0, 0.0), np.eye(2), image_meta)
    meta = {
        "view": view,
        "view_position": view_position,
        "lateral_anterior": lateral_anterior if view == "lateral" else None,
        "geometry": geometry,
        "pixel_mm": pixel_mm,
        "params": params.as_dict(),
        "effective_kev": effective_energy_kev(params.kvp),
        "mu_water_per_mm": mu_water,
        "bone_weight": bone_weight,
        "sdd_mm": params.sdd_mm if geometry == "cone" else None,
        "sod_mm": sod if geometry == "cone" else None,
        "magnification": magnification,
        "isocentre_lps": iso_lps.tolist(),
        "source_lps": ((iso[0] - sod) * e_t + iso[1] * e_w + iso[2] * e_u).tolist() if geometry == "cone" else None,
        "pixel_to_lps": pixel_to_lps.tolist(),
        "projection": {"axes": axes.tolist(), "isocentre_twu": iso.tolist(), "pixel_mm": pixel_mm,
                       "w_top": w_top, "u_left": u_left, "sod_mm": sod,
                       "source_t": None if geometry == "parallel" else float(iso[0] - sod)},
        "field_mask": field_mask,
        "implants": implant_notes,
        "mask_rule": f"pixel in mask when the ray crosses >= {mask_min_mm} mm of the label; cut to the field",
        "centre_rule": "projected centroid of the vertebral body (whole-vertebra mask opened with a ball of "
                       "radius 0.22 * volume^(1/3), largest part)",
        "centres_outside_field": outside,
        "body_centroids_lps": {n: vol.to_lps(i).tolist() for n, i in bodies_twu.items()},
        "line_integral": line_integral.astype(np.float32),
        **info,
    }
    meta["render_seconds"] = time.perf_counter() - started
    return DRRSample(image=image, masks=masks, centres=centres, meta=meta)
