"""Inference engine: device choice, normalisation, 2D/2.5D slice inference, 3D sliding window, progress, cancel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mskseg.engine import (
    CancelToken,
    DeviceChoice,
    choose_device,
    normalise,
    predict_slices,
    predict_volume,
    sub_progress,
)
from mskseg.errors import CancelledError, InvalidImageError, MSKSegError

THRESHOLD = 0.5
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="pins the behaviour of a machine without CUDA")


class ThresholdModel(torch.nn.Module):
    """1x1 convolution reading one input channel: class 1 where that channel > THRESHOLD, else class 0.

    Logits are (0, 10 * (x - THRESHOLD)); ``forward_calls`` counts batches.
    """

    def __init__(self, in_channels: int = 1, read_channel: int = 0, spatial_dims: int = 2):
        super().__init__()
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        self.conv = conv(in_channels, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, read_channel] = 10.0
            self.conv.bias.copy_(torch.tensor([0.0, -10.0 * THRESHOLD]))
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return self.conv(x)


def slice_coded_volume(num_slices: int = 9, rows: int = 6, cols: int = 7) -> np.ndarray:
    """(K, J, I) float32 where each slice holds a different, known pattern around THRESHOLD."""
    rng = np.random.default_rng(3)
    volume = rng.uniform(0.0, 1.0, size=(num_slices, rows, cols)).astype(np.float32)
    volume[np.abs(volume - THRESHOLD) < 0.01] = 0.2  # keep every voxel clearly on one side
    return volume


def expected_labels(volume: np.ndarray) -> np.ndarray:
    return (volume > THRESHOLD).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- devices
@no_cuda
def test_auto_device_on_a_machine_without_gpu_is_cpu_with_a_reason(monkeypatch):
    monkeypatch.delenv("MSKSEG_DEVICE", raising=False)
    choice = choose_device()
    assert isinstance(choice, DeviceChoice)
    if choice.device == "mps":
        pytest.skip("this machine has an Apple GPU")
    assert choice.device == "cpu"
    assert "CUDA not available" in choice.reason and "using CPU" in choice.reason
    assert "CPU" in choice.name


@no_cuda
@pytest.mark.parametrize("request_", ["cuda", "cuda:1"])
def test_explicit_cuda_without_cuda_is_a_clear_error(monkeypatch, request_):
    monkeypatch.delenv("MSKSEG_DEVICE", raising=False)
    with pytest.raises(MSKSegError, match=f"device '{request_}' .*cannot be used: CUDA not available") as info:
        choose_device(request_)
    assert "available here: cpu" in info.value.hint


def test_explicit_cpu_is_honoured():
    choice = choose_device("cpu")
    assert choice.device == "cpu" and "requested" in choice.reason


def test_environment_variable_overrides_auto_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.setenv("MSKSEG_DEVICE", "cpu")
    choice = choose_device("auto")
    assert choice.device == "cpu" and "MSKSEG_DEVICE" in choice.reason
    monkeypatch.setenv("MSKSEG_DEVICE", "tpu")
    with pytest.raises(MSKSegError, match="set by MSKSEG_DEVICE"):
        choose_device()
    assert choose_device("cpu").device == "cpu"


def test_unknown_device_lists_the_choices():
    with pytest.raises(MSKSegError, match="'gpu0' .*is not a device MSKSeg knows") as info:
        choose_device("gpu0")
    assert "cuda:N" in info.value.hint and "cpu" in info.value.hint


# ---------------------------------------------------------------------------------------------- normalisation
def test_window_normalisation_clips_and_scales_to_unit_range():
    hu = np.array([[-1000, -200, 50, 300, 2000]], dtype=np.int16)
    out = normalise(hu, {"window": [-200, 300]})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_zscore_normalisation_uses_card_values_or_the_volume():
    data = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(normalise(data, {"normalisation": "zscore", "zscore": {"mean": 2, "std": 2}}),
                               [-0.5, 0.0, 0.5, 1.0])
    own = normalise(data, {"normalisation": "zscore"})
    assert abs(own.mean()) < 1e-6 and abs(own.std() - 1) < 1e-6
    with pytest.raises(MSKSegError, match="needs 'window'"):
        normalise(data, {"normalisation": "window"})


# ---------------------------------------------------------------------------------------------- slices
def test_predict_slices_gives_the_threshold_labels():
    volume = slice_coded_volume()
    labels = predict_slices(ThresholdModel(), volume, batch_size=4, device="cpu")
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    np.testing.assert_array_equal(labels, expected_labels(volume))


@pytest.mark.parametrize("context, read_channel, shift", [(1, 0, -1), (1, 1, 0), (1, 2, +1), (2, 0, -2), (2, 4, +2)])
def test_context_channels_are_neighbouring_slices_edge_replicated(context, read_channel, shift):
    volume = slice_coded_volume()
    model = ThresholdModel(in_channels=2 * context + 1, read_channel=read_channel)
    labels = predict_slices(model, volume, context=context, batch_size=3, device="cpu")
    source = np.clip(np.arange(volume.shape[0]) + shift, 0, volume.shape[0] - 1)
    np.testing.assert_array_equal(labels, expected_labels(volume[source]))


def test_slice_indices_run_only_those_slices_in_that_order():
    volume = slice_coded_volume()
    model = ThresholdModel(in_channels=3, read_channel=2)
    labels = predict_slices(model, volume, context=1, slice_indices=[8, 0, 4], batch_size=2, device="cpu")
    np.testing.assert_array_equal(labels, expected_labels(volume[[8, 1, 5]]))  # next slice, 8 replicated
    assert model.forward_calls == 2


def test_probabilities_are_float16_softmax_matching_the_labels():
    volume = slice_coded_volume()
    probabilities = predict_slices(ThresholdModel(), volume, output="probabilities", device="cpu")
    assert probabilities.dtype == np.float16 and probabilities.shape == (2,) + volume.shape
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), expected_labels(volume))


def test_a_single_2d_image_gives_a_2d_label_map():
    image = slice_coded_volume()[3]
    labels = predict_slices(ThresholdModel(), image, device="cpu")
    np.testing.assert_array_equal(labels, expected_labels(image))


def test_slice_index_outside_the_volume_is_refused():
    with pytest.raises(InvalidImageError, match=r"slice indices \[9\] are outside the volume's 9 slices"):
        predict_slices(ThresholdModel(), slice_coded_volume(), slice_indices=[0, 9], device="cpu")


def test_progress_rises_monotonically_to_one_once_per_batch():
    calls: list[tuple[float, str]] = []
    predict_slices(ThresholdModel(), slice_coded_volume(), batch_size=4, device="cpu",
                   progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(calls) == 1 + 3  # start + ceil(9 / 4) batches
    assert "9/9 slices" in calls[-1][1]


def test_progress_returning_false_cancels_before_the_next_batch():
    model = ThresholdModel()
    with pytest.raises(CancelledError, match="slice inference was cancelled"):
        predict_slices(model, slice_coded_volume(), batch_size=2, device="cpu",
                       progress=lambda fraction, message: fraction < 0.2)
    assert model.forward_calls == 1


def test_cancel_token_cancels_before_the_next_batch():
    model, token = ThresholdModel(), CancelToken()

    def cancel_after_first_batch(fraction: float, message: str) -> None:
        if fraction > 0:
            token.cancel()

    with pytest.raises(CancelledError):
        predict_slices(model, slice_coded_volume(), batch_size=2, device="cpu", progress=cancel_after_first_batch,
                       cancel_token=token)
    assert model.forward_calls == 1 and token.cancelled


def test_sub_progress_maps_onto_a_range_and_passes_cancel_through():
    seen: list[float] = []
    scaled = sub_progress(lambda f, m: seen.append(f) or False, 0.2, 0.6)
    assert scaled(0.5, "half") is False
    assert seen == [pytest.approx(0.4)]
    assert sub_progress(None, 0, 1) is None


# ---------------------------------------------------------------------------------------------- volume
def test_predict_volume_gives_the_threshold_labels_on_a_volume_larger_than_the_window():
    volume = np.random.default_rng(5).uniform(0, 1, size=(40, 50, 60)).astype(np.float32)
    volume[np.abs(volume - THRESHOLD) < 0.01] = 0.9
    labels = predict_volume(ThresholdModel(spatial_dims=3), volume, roi_size=(32, 32, 32), sw_batch_size=2,
                            device="cpu")
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    np.testing.assert_array_equal(labels, expected_labels(volume))


def test_predict_volume_blends_windows_as_monai_sliding_window_inference_does():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(3, 3, 3, padding=1)).eval()
    volume = np.random.default_rng(0).normal(size=(20, 26, 18)).astype(np.float32)
    roi = (8, 16, 24)  # smaller than the volume along k and j, larger along i (padded)
    ours = predict_volume(model, volume, roi_size=roi, overlap=0.5, sw_batch_size=3, device="cpu",
                          output="probabilities")
    with torch.no_grad():
        reference = sliding_window_inference(torch.from_numpy(volume)[None, None], roi, 3,
                                             lambda x: torch.softmax(model(x), 1), overlap=0.5, mode="gaussian")
    assert ours.dtype == np.float16 and ours.shape == (3,) + volume.shape
    np.testing.assert_allclose(ours.astype(np.float32), reference[0].numpy(), atol=1e-3)
    labels = predict_volume(model, volume, roi_size=roi, overlap=0.5, device="cpu")
    assert (labels == reference[0].numpy().argmax(0)).mean() > 0.999


def test_predict_volume_smaller_than_the_window_keeps_its_shape():
    volume = np.random.default_rng(2).uniform(0, 1, size=(5, 9, 7)).astype(np.float32)
    labels = predict_volume(ThresholdModel(spatial_dims=3), volume, roi_size=(16, 16, 16), device="cpu")
    np.testing.assert_array_equal(labels, expected_labels(volume))


def test_predict_volume_reports_each_window_batch_and_can_be_cancelled():
    volume = np.zeros((40, 50, 60), np.float32)
    fractions: list[float] = []
    predict_volume(ThresholdModel(spatial_dims=3), volume, roi_size=(32, 32, 32), sw_batch_size=2, device="cpu",
                   progress=lambda f, m: fractions.append(f))
    # window starts as MONAI places them: k 0, 8; j 0, 18; i 0, 24, 28 -> 6 windows per k row = 3 batches of 2
    assert fractions == pytest.approx([0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    model = ThresholdModel(spatial_dims=3)
    with pytest.raises(CancelledError, match="3D inference was cancelled"):
        predict_volume(model, volume, roi_size=(32, 32, 32), sw_batch_size=2, device="cpu",
                       progress=lambda f, m: f < 0.5)
    assert model.forward_calls == 3


def test_predict_volume_rejects_a_2d_window():
    with pytest.raises(InvalidImageError, match="roi_size must be three"):
        predict_volume(ThresholdModel(spatial_dims=3), np.zeros((4, 4, 4), np.float32), roi_size=(4, 4),
                       device="cpu")
