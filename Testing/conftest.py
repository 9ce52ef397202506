"""Shared pytest fixtures: paths to ../shared (skip when absent) and small synthetic images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mskseg.image import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSKSEG_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


def require(path: Path) -> Path:
    """Return ``path`` or skip the test with a reason when the shared data is not beside the clone."""
    if not path.exists():
        pytest.skip(f"needs {path} (the real test data in ../shared is not beside this clone)")
    return path


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; the test is skipped when it is absent."""
    return require(DATA)


@pytest.fixture
def oblique_ct() -> Image:
    """A small CT-like volume (HU) with anisotropic spacing, an offset origin and a non-identity direction."""
    rng = np.random.default_rng(0)
    arr = rng.normal(40, 10, size=(6, 20, 24)).astype(np.int16)
    arr[:, :3, :] = -1000
    a = np.deg2rad(20)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    direction = direction @ np.diag([1, 1, -1.0])  # also flip k, as many DICOM series are stored
    return Image(arr, (0.8, 0.7, 2.5), (-120.5, 33.25, 410.0), direction, {"Modality": "CT"})


@pytest.fixture
def oblique_labels(oblique_ct: Image) -> tuple[Image, dict[int, str]]:
    """A label map on ``oblique_ct``'s grid with three classes (one touching the border) and its label names."""
    lab = np.zeros(oblique_ct.array.shape, np.uint8)
    lab[1:4, 5:12, 4:10] = 1
    lab[2:6, 10:20, 12:24] = 2
    lab[0, 0:2, 0:3] = 3
    return oblique_ct.with_array(lab), {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat"}


def small_torso(z_range=("T11", "S1"), seed: int = 3):
    """A small synthetic torso CT (256 x 256, 1.5 mm pixels, 5 mm slices, normal anatomy) and its truth."""
    from mskseg.synth.torso import make_torso

    habitus = {"sex": "M", "age": 60.0, "height_m": 1.78, "weight_kg": 84.0, "bmi": 84.0 / 1.78 ** 2, "arms": "up"}
    return make_torso(np.random.default_rng(seed), z_range=z_range, spacing_mm=(1.5, 1.5, 5.0), variant="normal",
                      habitus=habitus, size=256, phase="portal")


@pytest.fixture(scope="module")
def torso_sample():
    """:func:`small_torso` made once per test module."""
    return small_torso()


@pytest.fixture(scope="module")
def torso_ct(torso_sample) -> Image:
    """The CT image of :func:`torso_sample`."""
    return torso_sample.image
