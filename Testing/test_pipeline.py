"""The generic pipeline (any model card on any image) and the Slicer-side app functions, headless."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mskseg.errors import ChecksumError, InvalidImageError
from mskseg.image import Image
from mskseg.models import load_model_card
from mskseg.models.networks import NETWORKS, register_network
from mskseg.models.weights import save_weights
from mskseg.pipeline import segment_image


class ThresholdNet(torch.nn.Module):
    """Label 1 where the (window-normalised) centre channel is above 0.5, i.e. HU above the window centre."""

    def __init__(self, in_channels: int = 1, **_):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            c = in_channels // 2
            self.conv.weight[0, c] = -1.0
            self.conv.weight[1, c] = 1.0
            self.conv.bias[:] = torch.tensor([0.5, -0.5])

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def threshold_card(tmp_path):
    """A schema-valid 2.5D model card whose network labels voxels above 0 HU as skeletal muscle."""
    if "test.threshold" not in NETWORKS:
        register_network("test.threshold", ThresholdNet)
    sha = save_weights(ThresholdNet(3).state_dict(), tmp_path / "thr.safetensors")
    card = {
        "schema_version": "1.0", "name": "test-threshold", "title": "Threshold test model", "task": "sarcopenia",
        "version": "0.0.1", "description": "HU > 0 -> muscle (tests only)", "licence": "Apache-2.0",
        "modality": "CT", "dimensions": "2.5d",
        "input": {"spacing_mm": None, "window": [-100, 100], "channels": 3, "context_slices": 1, "patch_size": [32, 32]},
        "classes": [{"label": 1, "name": "skeletal_muscle"}],
        "architecture": {"name": "test.threshold", "args": {"in_channels": 3}},
        "weights": {"file": "thr.safetensors", "sha256": sha, "format": "safetensors"},
        "training": {"data": "none: hand-set weights"}, "validation": [],
    }
    path = tmp_path / "thr.card.json"
    path.write_text(json.dumps(card))
    return load_model_card(path)


def _ct(oblique_ct):
    arr = np.full(oblique_ct.array.shape, -200, np.int16)
    arr[:, 5:15, 6:18] = 60
    return oblique_ct.with_array(arr)


def test_segment_image_gives_the_known_labels_on_the_source_grid(oblique_ct, threshold_card):
    ct = _ct(oblique_ct)
    result = segment_image(ct, threshold_card, device="cpu")
    assert result.labelmap.same_grid(ct)
    assert np.array_equal(result.labelmap.array, (ct.array > 0).astype(np.uint8))
    assert result.labels == {1: "skeletal_muscle"} and result.device == "cpu"


def test_resampled_model_spacing_maps_back_onto_the_source_grid(oblique_ct, threshold_card, tmp_path):
    data = threshold_card.to_dict()
    data["input"]["spacing_mm"] = [0.4, 0.35]  # twice as fine as the image
    (tmp_path / "fine.card.json").write_text(json.dumps(data))
    card = load_model_card(tmp_path / "fine.card.json")
    ct = _ct(oblique_ct)
    result = segment_image(ct, card, device="cpu")
    assert result.labelmap.same_grid(ct)
    truth = ct.array > 0
    wrong = result.labelmap.array.astype(bool) != truth
    # only voxels at the block edges may differ after resampling: on a grid exactly twice as fine, every
    # source voxel centre lies midway between two model voxel centres (grid of mskseg.image.spacing_grid), so
    # nearest-neighbour mapping back may take the outer one at an edge
    from scipy import ndimage

    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0, 1, :] = in_plane[0, :, 1] = True
    edges = ndimage.binary_dilation(truth, in_plane) & ~ndimage.binary_erosion(truth, in_plane)
    assert not (wrong & ~edges).any()
    assert np.mean(~wrong) > 0.9


def test_wrong_modality_and_tampered_weights_are_refused(oblique_ct, threshold_card):
    mr = _ct(oblique_ct)
    mr.metadata["Modality"] = "MR"
    with pytest.raises(InvalidImageError, match="expects CT"):
        segment_image(mr, threshold_card, device="cpu")
    threshold_card.weights_path.write_bytes(threshold_card.weights_path.read_bytes() + b"\0")
    with pytest.raises(ChecksumError):
        segment_image(_ct(oblique_ct), threshold_card, device="cpu")


def test_2d_radiograph_through_a_2d_card(tmp_path, threshold_card):
    data = threshold_card.to_dict()
    data.update(modality=["DX", "CR"], dimensions="2d", name="test-thr-2d")
    data["input"].update(channels=1, context_slices=0)
    data["architecture"]["args"] = {"in_channels": 1}
    data["weights"]["sha256"] = save_weights(ThresholdNet(1).state_dict(), tmp_path / "thr1.safetensors")
    data["weights"]["file"] = "thr1.safetensors"
    (tmp_path / "t2.card.json").write_text(json.dumps(data))
    card = load_model_card(tmp_path / "t2.card.json")
    xray = Image(np.where(np.arange(40 * 30).reshape(40, 30) % 30 < 10, 50, -50), (0.2, 0.2), metadata={"Modality": "DX"})
    result = segment_image(xray, card, device="cpu")
    assert result.labelmap.ndim == 2 and np.array_equal(result.labelmap.array, (xray.array > 0).astype(np.uint8))


# ------------------------------------------------------------------------------------- app (slicer-core)
@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is not installed")
    return slicer.vtkMRMLScene()


def test_app_runs_measures_and_exports_without_overwriting_a_corrected_segmentation(scene, oblique_ct,
                                                                                    threshold_card, tmp_path):
    from mskseg import app, mrml

    ct = _ct(oblique_ct)
    volume = mrml.image_to_volume_node(ct, scene, "CT")
    seg = app.run_segmentation(scene, volume, threshold_card.path, device="cpu")
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    table = app.measure_segmentation(scene, seg, volume)
    (row,) = mrml.table_node_to_rows(table)
    assert row["voxel_count"] == int((ct.array > 0).sum()) and row["mean"] == pytest.approx(60)
    # The user corrects the segmentation: erase one slice.
    lab, labels = mrml.segmentation_node_to_labelmap(seg, ct)
    edited = lab.array.copy()
    edited[0] = 0
    mrml.labelmap_to_segmentation_node(lab.with_array(edited), labels, scene, volume, segmentation_node=seg, replace=True)
    # A re-run must not overwrite the corrected node: it makes a new one.
    seg2 = app.run_segmentation(scene, volume, threshold_card.path, device="cpu", segmentation_node=seg)
    assert seg2 is not seg and seg2.GetName() != seg.GetName()
    assert np.array_equal(mrml.segmentation_node_to_labelmap(seg, ct)[0].array, edited)
    # Measurements follow the edit.
    (row,) = mrml.table_node_to_rows(app.measure_segmentation(scene, seg, volume))
    assert row["voxel_count"] == int(edited.sum())
    files = app.export_results(scene, seg, volume, tmp_path / "out")
    assert sorted(p.split("/")[-1] for p in files) == ["metrics.csv", "segmentation.seg.nrrd"]
    with pytest.raises(Exception, match="already exist"):
        app.export_results(scene, seg, volume, tmp_path / "out")
    assert "cpu" in app.device_report("cpu")
