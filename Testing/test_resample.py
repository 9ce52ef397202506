"""One resampler for training and inference: the same voxel centres and values on both paths."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mskseg.engine import normalise
from mskseg.image import Image, resample_to_spacing, spacing_grid
from mskseg.pipeline import resample_to_model
from mskseg.train.data import LabelledCase, prepare_case, resample_array

SPACING = (0.7, 0.9, 2.5)
INPUT = {"window": [-2000, 2000], "channels": 1, "context_slices": 0}


def _ramp_case() -> LabelledCase:
    """A volume whose value is a linear function of the index (so linear interpolation is exact inside it),
    on an oblique grid with an origin far from 0, and a label map of blocks. Sizes and spacings are chosen so
    no output voxel centre falls exactly on the input's outer edge (where rounding decides inside/outside)."""
    kk, jj, ii = np.mgrid[0:6, 0:37, 0:41].astype(np.float32)
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image = Image(3 * ii + 5 * jj + 7 * kk - 600, SPACING, (-120.3, 40.2, 355.0), direction, {"Modality": "CT"})
    lab = np.zeros(image.array.shape, np.uint8)
    lab[:, 5:20, 7:30] = 1
    lab[:, 12:15, 9:12] = 2
    return LabelledCase("ramp", image, image.with_array(lab), {1: "skeletal_muscle", 2: "visceral_fat"})


def _ramp_at(image: Image, index: np.ndarray) -> np.ndarray:
    i, j, k = np.moveaxis(index, -1, 0)
    return 3 * i + 5 * j + 7 * k - 600


def test_grid_convention_keeps_the_first_outer_corner():
    case = _ramp_case()
    size, origin = spacing_grid(case.image, (1.3, 0.65, 2.5))
    assert size == (22, 51, 6)  # round(41 * 0.7 / 1.3 = 22.08), round(37 * 0.9 / 0.65 = 51.2), 6 slices
    corner_in = case.image.index_to_physical(np.array([-0.5, -0.5, -0.5]))
    out = Image(np.zeros(size[::-1]), (1.3, 0.65, 2.5), origin, case.image.direction)
    assert np.allclose(out.index_to_physical(np.array([-0.5, -0.5, -0.5])), corner_in, atol=1e-9)


@pytest.mark.parametrize("dimensions,target", [("2.5d", [1.3, 0.65]), ("3d", [1.3, 0.65, 1.1])])
def test_training_and_inference_see_the_same_voxel_centres_and_values(dimensions, target):
    case = _ramp_case()
    card = SimpleNamespace(input={**INPUT, "spacing_mm": target})
    infer = resample_to_model(case.image, card)  # the inference path
    # voxel centres: the inference grid is the documented one, and its values are the ramp at its centres
    size, origin = spacing_grid(case.image, list(target) + ([SPACING[2]] if len(target) == 2 else []))
    assert infer.size == size and np.allclose(infer.origin, origin)
    m = np.stack(np.meshgrid(*[np.arange(1, n - 1) for n in infer.size], indexing="ij"), -1).reshape(-1, 3)
    source_index = case.image.physical_to_index(infer.index_to_physical(m))
    inside = np.all((source_index >= 0) & (source_index <= np.array(case.image.size) - 1), axis=1)
    got = infer.array[m[inside, 2], m[inside, 1], m[inside, 0]]
    assert np.allclose(got, _ramp_at(case.image, source_index[inside]), atol=1e-2)
    # the training path gives the same values (so the same centres) and the same labels
    samples = prepare_case(case, {**INPUT, "spacing_mm": target}, "2d" if dimensions == "2.5d" else "3d",
                           {"skeletal_muscle": 1, "visceral_fat": 2}, only_labelled=False)
    if dimensions == "3d":
        train, train_labels = samples[0].image[0].astype(np.float32), samples[0].label
    else:
        train = np.stack([s.image[0] for s in samples]).astype(np.float32)
        train_labels = np.stack([s.label for s in samples])
    assert train.shape == infer.array.shape
    assert np.allclose(train, normalise(infer.array, INPUT).astype(np.float16), atol=1e-3)
    label_nearest = resample_to_spacing(case.labelmap, infer.spacing, interpolation="nearest")
    assert np.array_equal(train_labels, label_nearest.array)


def test_resample_array_is_resample_to_spacing_on_the_array():
    arr = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    out = resample_array(arr, (0.8, 0.8), (1.2, 1.0), is_label=False)
    ref = resample_to_spacing(Image(arr, (0.8, 0.8)), (1.2, 1.0)).array
    assert out.dtype == np.float32 and np.array_equal(out, ref)
    assert resample_array(arr, (0.8, 0.8), (0.8, 0.8), is_label=False) is not None
    lab = resample_array((arr % 3).astype(np.uint8), (0.8, 0.8), (1.2, 1.0), is_label=True)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
