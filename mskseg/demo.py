"""Synthetic demo CTs, made on the spot (no data files needed): the one place that makes them.

* :func:`demo_torso_ct`: the sarcopenia demo's abdominal CT (T11..S1, 512 x 512, 2.5 mm slices), drawn by the
  procedural torso of the synthetic engine (:func:`mskseg.synth.torso.make_demo_ct`) with its true labels and
  vertebral levels; :func:`write_demo_dicom` writes it as a DICOM series (``mskseg sarcopenia --demo``).
* :func:`demo_ct`: a small schematic abdominal CT with its true label map for the input/output demo
  (``mskseg demo``): DICOM series in, label map, ``.seg.nrrd``, DICOM-SEG, NIfTI, measurements and a PNG
  report out. The anatomy is ellipses (skin, subcutaneous fat, an abdominal-wall and back muscle ring, psoas,
  visceral fat, bowel with gas, a vertebral body with cortex, and a table), so it is made in a blink.
* :func:`box_case`: a tiny CT-like volume with one box-shaped segment per class, for self-tests that only need
  geometry and segment metadata (the Slicer modules' Reload and Test).

Values are CT numbers (HU) with noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .image import Image

if TYPE_CHECKING:
    from .synth.torso import TorsoSample

#: Patient values of the sarcopenia demo CT when its sample carries none (a man of average build).
DEMO_PATIENT: dict[str, Any] = {"PatientSex": "M", "PatientSize": 1.76, "PatientWeight": 82.0, "PatientAge": "064Y"}
#: Series description of the sarcopenia demo CT when its sample carries none.
DEMO_SERIES_DESCRIPTION = "MSKSeg synthetic abdominal CT"

#: Labels of the demo phantom's true map (terminology class names).
DEMO_LABELS = {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat", 4: "vertebrae_L3"}


def demo_torso_ct(seed: int = 0) -> TorsoSample:
    """The sarcopenia demo's abdominal CT with its truth (:func:`mskseg.synth.torso.make_demo_ct`).

    Returns:
        :class:`~mskseg.synth.torso.TorsoSample`: ``image`` int16 HU ``(K, 512, 512)`` with patient metadata,
        ``labels`` and ``tissue`` on the same grid, the vertebral level centres and the L3 slice.
    """
    from .synth import torso  # looked up on call, so that tests can put a smaller torso in its place

    return torso.make_demo_ct(seed)


def write_demo_dicom(folder: Path | str, *, overwrite: bool = False, seed: int = 0,
                     patient: dict[str, Any] | None = None) -> Path:
    """Make the sarcopenia demo CT (:func:`demo_torso_ct`) and write it as a DICOM series into ``folder``.

    Args:
        folder: output folder of the series.
        overwrite: replace files already there (otherwise an existing series is an error).
        seed: random seed of the demo CT (0 gives the documented volume).
        patient: DICOM patient values used where the sample's metadata has none (default :data:`DEMO_PATIENT`).

    Returns:
        ``folder``.
    """
    from .io.dicomwrite import write_dicom_series

    folder = Path(folder)
    sample = demo_torso_ct(seed)
    image = getattr(sample, "image", sample)
    defaults = DEMO_PATIENT if patient is None else patient
    attributes = {key: image.metadata.get(key) or value for key, value in defaults.items()}
    attributes["SeriesDescription"] = image.metadata.get("SeriesDescription") or DEMO_SERIES_DESCRIPTION
    write_dicom_series(image, folder, overwrite=overwrite, attributes=attributes)
    return folder


def box_case(class_names: Sequence[str]) -> tuple[Image, Image]:
    """A tiny CT-like volume and a label map with one box per class (label ``n + 1`` for ``class_names[n]``).

    The volume is ``(16, 48, 64)`` (K, J, I) int16 HU, spacing 0.8 x 0.8 x 2.5 mm: air around a body with a fat
    layer, muscle and a bone block; at most 8 classes fit side by side.

    Returns:
        ``(ct, labelmap)``: ``labelmap`` uint8 on the grid of ``ct``.
    """
    hu = np.full((16, 48, 64), -1000, np.int16)
    hu[:, 8:40, 8:56] = -100  # fat
    hu[:, 14:34, 14:50] = 40  # muscle and organs
    hu[:, 20:28, 28:36] = 400  # bone
    labels = np.zeros(hu.shape, np.uint8)
    for index in range(len(class_names)):
        labels[2:14, 16:30, 16 + 4 * index:19 + 4 * index] = index + 1
    volume = Image(hu, (0.8, 0.8, 2.5), (-25.6, -19.2, 100.0), np.eye(3), {"Modality": "CT"})
    return volume, volume.with_array(labels)


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def demo_ct(n_slices: int = 24, size: int = 256, spacing_mm: float = 1.5, slice_mm: float = 3.0,
            seed: int = 0) -> tuple[Image, Image]:
    """A synthetic abdominal CT volume and its true label map (``DEMO_LABELS``).

    Returns:
        ``(ct, labelmap)``: ``ct`` int16 HU, shape ``(n_slices, size, size)``, LPS geometry centred on the
        origin, metadata as a DICOM reader would give it (Modality CT, sex, height, weight); ``labelmap``
        uint8 on the same grid.
    """
    rng = np.random.default_rng(seed)
    ct = np.full((n_slices, size, size), -1000.0, np.float32)
    lab = np.zeros((n_slices, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2.0
    for k in range(n_slices):
        s = 1.0 + 0.04 * np.sin(k / max(n_slices - 1, 1) * np.pi)  # body slightly wider mid-volume
        ry, rx = 0.30 * size * s, 0.42 * size * s
        body = _ellipse(yy, xx, c, c, ry, rx)
        inner_fat = _ellipse(yy, xx, c, c, ry - 10, rx - 12)  # subcutaneous fat outside this
        wall = _ellipse(yy, xx, c, c, ry - 16, rx - 18)  # abdominal wall muscle ring
        cavity = _ellipse(yy, xx, c - 4, c, ry - 22, rx - 24)
        vert = _ellipse(yy, xx, c + 0.16 * size, c, 0.06 * size, 0.07 * size)
        cortex = vert & ~_ellipse(yy, xx, c + 0.16 * size, c, 0.06 * size - 2.5, 0.07 * size - 2.5)
        psoas = (_ellipse(yy, xx, c + 0.15 * size, c - 0.13 * size, 0.05 * size, 0.045 * size)
                 | _ellipse(yy, xx, c + 0.15 * size, c + 0.13 * size, 0.05 * size, 0.045 * size))
        back = _ellipse(yy, xx, c + 0.25 * size, c, 0.05 * size, 0.15 * size) & body
        skin = body & ~_ellipse(yy, xx, c, c, ry - 1.5, rx - 1.5)
        ct[k][body] = -100
        lab[k][body & ~skin] = 2
        ring = body & ~inner_fat & wall
        ct[k][inner_fat & ~wall] = 45
        lab[k][inner_fat & ~wall] = 1
        ct[k][wall] = -95
        lab[k][wall] = 3
        ct[k][cavity & ~wall] = 45  # (empty by construction; kept for clarity of layering)
        del ring
        for _ in range(6):  # bowel loops: wall + fluid or gas
            by, bx = c + rng.uniform(-0.18, 0.05) * size, c + rng.uniform(-0.25, 0.25) * size
            r = rng.uniform(0.03, 0.06) * size
            loop = _ellipse(yy, xx, by, bx, r, r) & wall
            ct[k][loop] = 40
            lab[k][loop] = 0
            lumen = _ellipse(yy, xx, by, bx, r - 2, r - 2) & wall
            ct[k][lumen] = -1000 if rng.random() < 0.4 else 10
        for m in (psoas, back):
            ct[k][m] = 50
            lab[k][m] = 1
        ct[k][vert] = 220
        ct[k][cortex] = 900
        lab[k][vert] = 4
        ct[k][skin] = 30
        lab[k][skin] = 0
        table = (yy > c + ry + 8) & (yy < c + ry + 14) & (np.abs(xx - c) < 0.45 * size)
        ct[k][table] = 300
    ct += rng.normal(0, 12, ct.shape).astype(np.float32)
    origin = (-c * spacing_mm, -c * spacing_mm, -n_slices * slice_mm / 2)
    meta = {"Modality": "CT", "PatientSex": "M", "PatientSize": 1.78, "PatientWeight": 82.0,
            "SeriesDescription": "MSKSeg synthetic abdomen", "PatientID": "MSKSEG-DEMO"}
    image = Image(np.clip(ct, -1024, 3071).astype(np.int16), (spacing_mm, spacing_mm, slice_mm), origin, None, meta)
    return image, image.with_array(lab, keep_metadata=False)
