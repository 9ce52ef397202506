"""The shared vertebral-level finder (mskseg.spine): every level with its method, the card's level names, the
explicit network wiring, and the checks."""
from __future__ import annotations

import numpy as np
import pytest

from mskseg.errors import InvalidImageError
from mskseg.image import Image
from mskseg.spine import levelnet
from mskseg.spine.checks import check_ct_for_levels
from mskseg.spine.levels import cross_check_level, find_vertebra_levels

torso = pytest.importorskip("mskseg.synth.torso")


@pytest.fixture(scope="module")
def abdomen():
    rng = np.random.default_rng(9101)
    return torso.make_torso(rng, z_range="abdomen", variant="normal", size=160, spacing_mm=(2.4, 2.4, 3.0))


def test_find_vertebra_levels_returns_every_level_with_method_and_confidence(abdomen):
    found = find_vertebra_levels(abdomen.image, device="cpu")
    assert {"L1", "L2", "L3", "L4"} <= set(found.levels_mm)
    assert found.present == sorted(found.present, key=lambda n: levelnet.LEVEL_INDEX[n])
    assert all(0.0 <= found.confidence[n] <= 1.0 for n in found.levels_mm)
    slices = found.slices()
    assert abs(slices["L3"] - abdomen.l3_index) <= 1
    assert found.method.startswith("network") or found.method == "rules"
    assert set(found.transitional) == {"findings", "measurements", "anchors", "learned_rib_minus_sacrum"}
    assert set(found.transitional["anchors"]) == {"last_rib", "sacrum"}
    check, factor, warning = cross_check_level(found, "L3")
    assert check["available"] == (found.rules is not None) and factor in (1.0, 0.7, 0.5)
    assert (warning is None) == (factor == 1.0)


def test_rules_alone_when_no_detector_is_given(abdomen, monkeypatch):
    monkeypatch.setattr("mskseg.spine.levels.find_detector_card", lambda: None)
    found = find_vertebra_levels(abdomen.image, device="cpu")
    assert found.method == "rules" and found.network is None
    assert any("anatomical rules alone" in w for w in found.warnings)


def test_level_names_come_from_the_detector_card():
    card = levelnet.find_detector_card()
    if card is None:
        pytest.skip("no detector card installed")
    levels = levelnet.detector_levels(card)
    assert levels == levelnet.LEVEL_INDEX and levels["T1"] == 1 and levels["L3"] == 15
    assert levelnet.detector_levels(None) == levelnet.LEVEL_INDEX


def test_decode_levels_uses_the_given_numbering():
    z = np.arange(0.0, 200.0, levelnet.ROW_MM)
    ramp = 20.0 - z / 30.0  # one level per 30 mm, falling towards the head
    outputs = np.stack([ramp, ramp, ramp, np.full_like(z, -5.0)])
    default = levelnet.decode_levels(outputs, z)
    shifted = levelnet.decode_levels(outputs, z, {n: i + 1 for i, n in enumerate(levelnet.LEVELS[1:])} | {"S1": 18})
    assert set(default.levels_mm) and set(shifted.levels_mm)
    assert default.levels_mm["L3"] == pytest.approx(shifted.levels_mm["L4"])


def test_the_network_builder_is_wired_explicitly_not_by_import():
    from mskseg.models.networks import NETWORKS, build_network_from_architecture

    assert levelnet.NETWORK_NAME in NETWORKS
    pytest.importorskip("torch")
    net = build_network_from_architecture(levelnet.NETWORK_NAME, {"width": 16})
    assert net.frontal_columns == levelnet.FRONTAL_COLUMNS


def test_check_rejects_a_single_slice_with_a_message():
    with pytest.raises(InvalidImageError, match="one slice"):
        check_ct_for_levels(Image(np.zeros((1, 32, 32), np.int16), (1.0, 1.0, 2.0), metadata={"Modality": "CT"}))
