"""Training slices for the body-composition tissue network: real anatomy where a real label map exists.

``bodycomp-mix`` (registered in :mod:`mskseg.train.data`) draws each training sample either from

* a **real anatomy** label map (TotalSegmentator "total" v2 maps, e.g. ``../shared/data/totalseg-labelmaps``):
  an axial slice anywhere from T12 to L5 (vertebral bodies and discs), rendered by
  :func:`~mskseg.synth.labelmap_ct.synthesize_ct` with the missing body layers (skin, subcutaneous fat,
  abdominal wall, visceral fat), the real psoas, paraspinal muscles, organs, bowel and vessels beside the
  muscles, and everything a network must not rely on randomised: tissue HU, contrast phase, noise, blur,
  streaks, in-plane pixel size 0.6-3.5 mm and slice thickness 0.6-5 mm, body build, fatty and atrophic muscle;
  truth from :func:`~mskseg.synth.labelmap_ct.bodycomp_labels` (skin is not fat, bowel contents are not VAT);
* or a **procedural L3 phantom** (:func:`mskseg.synth.phantom.make_l3_phantom`), the world the first network
  learnt from, so what it does well is kept.

Samples depend only on ``(seed, index)``. The label maps are found in ``$MSKSEG_ANATOMY_DIR`` or, beside a source
checkout, in ``../shared/data/totalseg-labelmaps``; each sub-folder with a ``*_combined_total_v2.nii.gz`` and the
names table ``labelmap_total_v2.tsv`` is one subject.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import MSKSegError
from ..sarcopenia.labels import MUSCLE_GROUPS, TISSUE_LABELS

#: Generator version written into model cards.
GENERATOR_VERSION = "mskseg bodycomp-mix 1"

#: Vertebrae whose slices (body and the disc below) are drawn from, head to foot.
LEVELS = ("vertebrae_T12", "vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4", "vertebrae_L5")

#: Share of samples drawn from real anatomy (the rest are phantoms).
REAL_FRACTION = 0.65

#: In-plane pixel size range (mm) the real-anatomy slices are rendered at before resampling to the card's grid.
PIXEL_MM = (0.6, 3.5)


def default_anatomy_dir() -> Path | None:
    """The folder of real label maps: ``$MSKSEG_ANATOMY_DIR``, else ``../shared/data/totalseg-labelmaps``."""
    env = os.environ.get("MSKSEG_ANATOMY_DIR")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[3] / "shared" / "data" / "totalseg-labelmaps"
    return guess if guess.is_dir() else None


def read_names(table: Path) -> dict[int, str]:
    """``labelmap_total_v2.tsv`` (value, name per line; a header line is skipped) as ``{value: name}``."""
    names: dict[int, str] = {}
    with open(table, newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) >= 2 and row[0].strip().isdigit():
                names[int(row[0])] = row[1].strip()
    return names


@dataclass
class Subject:
    """One real label map with the slice range of each level in :data:`LEVELS` that it holds."""

    name: str
    labelmap: Any  # mskseg.image.Image
    names: dict[int, str]
    slices: np.ndarray  # input slice indices from the top of T12 (or L1) to the bottom of L5, as present


def load_subjects(folder: Path) -> list[Subject]:
    """Every subject in ``folder`` with at least two lumbar levels in view.

    Raises:
        MSKSegError: no names table, or no usable subject.
    """
    from ..io import read_image

    table = folder / "labelmap_total_v2.tsv"
    if not table.is_file():
        raise MSKSegError(f"no names table {table}", "point MSKSEG_ANATOMY_DIR at a folder of TotalSegmentator "
                          "label maps with labelmap_total_v2.tsv")
    names = read_names(table)
    out = []
    for path in sorted(folder.glob("*/*_combined_total_v2.nii.gz")):
        lm = read_image(path)
        lab = np.asarray(lm.array)
        values = {n: v for v, n in names.items()}
        ks: list[int] = []
        found = 0
        for level in LEVELS:
            if level in values:
                hit = np.nonzero((lab == values[level]).any(axis=(1, 2)))[0]
                if hit.size:
                    found += 1
                    ks += range(int(hit.min()), int(hit.max()) + 1)
        if found >= 2:
            out.append(Subject(path.parent.name, lm, names, np.arange(min(ks), max(ks) + 1)))
    if not out:
        raise MSKSegError(f"no label map in {folder} shows two or more of T12-L5",
                          "give TotalSegmentator combined label maps (<subject>/<subject>_combined_total_v2.nii.gz)")
    return out


#: Muscle groups of ``bodycomp-groups`` (values as the phantoms' :data:`mskseg.synth.phantom.GROUP_LABELS`).
GROUP_LABELS: dict[int, str] = {i + 1: name for i, name in enumerate(MUSCLE_GROUPS)}

#: Real label-map classes (name prefixes) of each muscle group; the added body wall is the abdominal wall.
GROUP_SOURCES = {"psoas": ("iliopsoas", "psoas"), "paraspinal": ("autochthon", "quadratus_lumborum"),
                 "abdominal_wall": ("abdominal_wall",)}


def group_truth(volume: Any, tissue_truth: np.ndarray) -> np.ndarray:
    """Muscle groups (:data:`GROUP_LABELS`) of a synthetic volume: each group's classes on its muscle pixels."""
    lab = np.asarray(volume.labels.array)
    out = np.zeros(lab.shape, np.uint8)
    muscle = tissue_truth == next(v for v, n in TISSUE_LABELS.items() if n == "skeletal_muscle")
    for value, group in GROUP_LABELS.items():
        ids = [v for v, n in volume.label_names.items() if n.startswith(GROUP_SOURCES[group])]
        out[np.isin(lab, ids) & muscle] = value
    return out


class BodycompMixSource:
    """``bodycomp-mix``: real-anatomy slices (:data:`REAL_FRACTION`) and phantoms at the card's spacing;
    ``groups=True`` (``bodycomp-groups``): the same slices labelled with the muscle groups."""

    labels = dict(TISSUE_LABELS)
    version = GENERATOR_VERSION

    def __init__(self, input_spec: Mapping[str, Any], seed: int, anatomy_dir: Path | None = None,
                 groups: bool = False):
        from ..train.data import _PhantomSource

        self.input_spec = dict(input_spec)
        self.seed = int(seed)
        self.groups = bool(groups)
        if self.groups:
            self.labels = dict(GROUP_LABELS)
        self.phantoms = _PhantomSource(input_spec, seed)
        folder = anatomy_dir or default_anatomy_dir()
        if folder is None or not Path(folder).is_dir():
            raise MSKSegError("bodycomp-mix needs real anatomy label maps and none were found",
                              "set MSKSEG_ANATOMY_DIR to a folder of TotalSegmentator label maps "
                              "(e.g. ../shared/data/totalseg-labelmaps)")
        self.subjects = load_subjects(Path(folder))

    def real_sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One real-anatomy slice ``(HU, tissue labels)`` at the card's spacing."""
        from ..train.data import resample_array
        from .labelmap_ct import bodycomp_labels, synthesize_ct
        from .tissues import sample_scan_params

        subject = self.subjects[int(rng.integers(len(self.subjects)))]
        k = int(rng.choice(subject.slices))
        params = sample_scan_params(rng)
        pixel = float(np.exp(rng.uniform(*np.log(PIXEL_MM))))  # resolution must not matter
        vol = synthesize_ct(subject.labelmap, subject.names, rng, params=params,
                            spacing_mm=(pixel, pixel, max(params.slice_thickness_mm, 0.6)),
                            crop=((max(0, k - 4), k + 5),))
        truth, _ = bodycomp_labels(vol)
        mid = vol.image.array.shape[0] // 2
        hu = np.asarray(vol.image.array[mid], np.float32)
        lab = np.asarray(truth.array[mid], np.uint8)
        if self.groups:
            lab = group_truth(vol, np.asarray(truth.array))[mid]
        spacing = tuple(vol.image.spacing[:2])
        target = self.input_spec.get("spacing_mm")
        if target:
            hu = resample_array(hu, spacing, target[:2], is_label=False)
            lab = resample_array(lab, spacing, target[:2], is_label=True)
        return hu, lab

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 7919, int(index)])
        if rng.random() < REAL_FRACTION:
            return self.real_sample(rng)
        if not self.groups:
            return self.phantoms(index)
        from ..train.data import resample_array

        sample = self.phantoms._sample(index)
        by_name = {n: v for v, n in GROUP_LABELS.items()}
        groups = np.zeros(np.shape(sample.muscle_groups), np.uint8)
        for value, name in dict(sample.group_labels).items():  # matched by name, whatever the phantom's values
            groups[np.asarray(sample.muscle_groups) == int(value)] = by_name[str(name)]
        arr, spacing = np.asarray(sample.image.array, np.float32), sample.image.spacing
        target = self.input_spec.get("spacing_mm")
        if target:
            arr = resample_array(arr, spacing, target[:2], is_label=False)
            groups = resample_array(groups, spacing, target[:2], is_label=True)
        return arr, groups


class BodycompGroupsSource(BodycompMixSource):
    """``bodycomp-groups``: :class:`BodycompMixSource` slices labelled with psoas, paraspinal, abdominal wall."""

    labels = dict(GROUP_LABELS)

    def __init__(self, input_spec: Mapping[str, Any], seed: int, anatomy_dir: Path | None = None):
        super().__init__(input_spec, seed, anatomy_dir, groups=True)
