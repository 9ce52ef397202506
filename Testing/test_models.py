"""Model cards, weights files with checksums, and network builders."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mskseg
from mskseg.errors import ChecksumError, ModelCardError, OutputExistsError
from mskseg.models import (
    NETWORKS,
    ModelCard,
    build_network,
    default_model_dirs,
    find_model_cards,
    load_model,
    load_model_card,
    load_weights,
    read_state_dict,
    resolve_model_card,
    save_model_card,
    save_weights,
    sha256_file,
)
from mskseg.models.networks import build_network_from_architecture

TINY_UNET_ARGS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def valid_card(**changes) -> dict:
    """A complete, valid 2.5D card for a tiny UNet (weights file not written)."""
    card = {
        "schema_version": "1.0",
        "name": "test-l3-tiny",
        "title": "Tiny L3 body composition (test)",
        "task": "sarcopenia",
        "version": "0.0.1",
        "description": "A tiny network for tests.",
        "licence": "Apache-2.0",
        "modality": "CT",
        "dimensions": "2.5d",
        "input": {"spacing_mm": [1.0, 1.0], "window": [-200, 300], "channels": 3, "context_slices": 1,
                  "patch_size": [16, 16]},
        "classes": [{"label": 1, "name": "skeletal_muscle"}, {"label": 2, "name": "subcutaneous_fat"},
                    {"label": 3, "name": "visceral_fat"}],
        "architecture": {"name": "monai.UNet", "args": dict(TINY_UNET_ARGS)},
        "weights": {"file": "test-l3-tiny.safetensors", "sha256": "0" * 64, "format": "safetensors"},
        "training": {"data": "synthetic phantoms", "generator_version": "0.1.0", "seed": 0, "epochs": 1},
        "validation": [{"dataset": "synthetic held-out", "kind": "synthetic-held-out", "metric": "dice",
                        "class": "skeletal_muscle", "value": 0.5, "n": 10}],
        "references": ["Billot et al., SynthSeg, Medical Image Analysis 2023"],
    }
    card.update(changes)
    return card


def write_card(folder: Path, card: dict, file_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file_name or f"{card['name']}.card.json")
    path.write_text(json.dumps(card), encoding="utf-8")
    return path


def card_with_weights(folder: Path, fmt: str = "safetensors", **changes) -> ModelCard:
    """A card beside real weights of its tiny UNet, sha256 filled in."""
    card = valid_card(**changes)
    card["weights"] = {"file": f"{card['name']}.{fmt}", "sha256": "0" * 64, "format": fmt}
    model = build_network(ModelCard.from_dict(card, folder / "x.card.json"))
    card["weights"]["sha256"] = save_weights(model.state_dict(), folder / card["weights"]["file"], format=fmt)
    return load_model_card(write_card(folder, card))


def nested_set(card: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    target = card
    for part in parents:
        target = target[part]
    target[last] = value


def nested_delete(card: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    target = card
    for part in parents:
        target = target[part]
    del target[last]


# ---------------------------------------------------------------------------------------------- cards
def test_valid_card_loads_with_labels_and_weights_path(tmp_path):
    path = write_card(tmp_path, valid_card())
    card = load_model_card(path)
    assert card.labels == {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat"}
    assert card.num_outputs == 4
    assert card.context_slices == 1 and card.spatial_dims == 2
    assert card.modalities == ("CT",)
    assert card.weights_path == tmp_path.resolve() / "test-l3-tiny.safetensors"
    assert json.loads(card.to_json()) == valid_card()


@pytest.mark.parametrize("field", ["name", "task", "licence", "dimensions", "input.channels", "input.window",
                                   "weights.sha256", "training.data", "architecture.args", "validation"])
def test_card_missing_field_is_named(tmp_path, field):
    card = valid_card()
    nested_delete(card, field)
    path = write_card(tmp_path, card, "broken.card.json")
    with pytest.raises(ModelCardError) as info:
        load_model_card(path)
    assert f"field '{field}'" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.hint


@pytest.mark.parametrize("field, value", [
    ("dimensions", "3D"),
    ("input.channels", "3"),
    ("input.window", "soft tissue"),
    ("weights.sha256", "abc123"),
    ("weights.format", "pickle"),
    ("classes", {"1": "skeletal_muscle"}),
    ("modality", "computed tomography"),
    ("validation", [{"dataset": "x", "kind": "guess", "metric": "dice", "value": 0.9}]),
])
def test_card_wrong_type_or_value_is_named(tmp_path, field, value):
    card = valid_card()
    nested_set(card, field, value)
    with pytest.raises(ModelCardError) as info:
        load_model_card(write_card(tmp_path, card))
    assert f"field '{field}" in str(info.value)


def test_card_wrong_type_inside_a_list_names_the_index(tmp_path):
    card = valid_card()
    card["classes"][1]["label"] = "2"
    with pytest.raises(ModelCardError, match=r"field 'classes\[1\]\.label'"):
        load_model_card(write_card(tmp_path, card))


def test_card_unknown_field_is_named_with_the_allowed_ones(tmp_path):
    card = valid_card()
    card["license"] = card.pop("licence")
    with pytest.raises(ModelCardError) as info:
        load_model_card(write_card(tmp_path, card))
    message = str(info.value)
    assert "field 'license' is not a model-card field" in message
    assert "licence" in message


@pytest.mark.parametrize("change, field", [
    (lambda c: c["input"].update(channels=5), "input.channels"),
    (lambda c: c["classes"].append({"label": 1, "name": "visceral_fat_2"}), "classes[0].label"),
    (lambda c: c["input"].update(window=[300, -200]), "input.window"),
    (lambda c: c["architecture"]["args"].update(out_channels=3), "architecture.args.out_channels"),
    (lambda c: c["architecture"]["args"].update(spatial_dims=3), "architecture.args.spatial_dims"),
])
def test_card_inconsistent_fields_are_named(tmp_path, change, field):
    card = valid_card()
    change(card)
    with pytest.raises(ModelCardError, match=re.escape(f"field '{field}'")):
        load_model_card(write_card(tmp_path, card))


def test_card_window_normalisation_needs_a_window_but_zscore_does_not(tmp_path):
    card = valid_card()
    del card["input"]["window"]
    card["input"]["normalisation"] = "zscore"
    assert load_model_card(write_card(tmp_path, card)).input["normalisation"] == "zscore"
    card["input"]["normalisation"] = "window"
    with pytest.raises(ModelCardError, match="field 'input.window' is missing"):
        load_model_card(write_card(tmp_path, card))


def test_card_of_a_newer_schema_says_to_update(tmp_path):
    with pytest.raises(ModelCardError) as info:
        load_model_card(write_card(tmp_path, valid_card(schema_version="2.0")))
    assert "field 'schema_version'" in str(info.value)
    assert "update MSKSeg" in info.value.hint


def test_card_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "bad.card.json"
    path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ModelCardError, match="bad.card.json is not valid JSON"):
        load_model_card(path)


def test_missing_card_file_is_a_model_card_error(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        load_model_card(tmp_path / "absent.card.json")


def test_save_model_card_round_trips_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "models" / "test-l3-tiny.card.json"
    saved = save_model_card(valid_card(), path)
    assert load_model_card(path) == saved
    assert load_model_card(path).to_dict() == valid_card()
    with pytest.raises(OutputExistsError):
        save_model_card(valid_card(), path)
    save_model_card(valid_card(version="0.0.2"), path, overwrite=True)
    assert load_model_card(path).version == "0.0.2"


def test_save_model_card_rejects_an_invalid_card_without_writing(tmp_path):
    path = tmp_path / "x.card.json"
    with pytest.raises(ModelCardError):
        save_model_card(valid_card(dimensions="4d"), path)
    assert not path.exists()


def test_default_model_dirs_start_with_the_environment_then_resources(monkeypatch, tmp_path):
    monkeypatch.setenv("MSKSEG_MODELS_DIR", f"{tmp_path / 'a'}{__import__('os').pathsep}{tmp_path / 'b'}")
    dirs = default_model_dirs()
    assert dirs[:2] == [tmp_path / "a", tmp_path / "b"]
    assert dirs[2] == Path(mskseg.__file__).resolve().parents[1] / "Resources" / "Models"
    assert dirs[3] == Path(mskseg.__file__).resolve().parent / "models" / "bundled"


def test_find_model_cards_searches_in_order_and_earlier_folders_shadow_later(monkeypatch, tmp_path):
    user, bundled = tmp_path / "user", tmp_path / "bundled"
    write_card(user, valid_card(version="9.0"))
    write_card(bundled / "sub", valid_card(version="1.0"))
    write_card(bundled, valid_card(name="test-spine", task="spine"))
    cards = find_model_cards([user, bundled, tmp_path / "absent"])
    assert [(c.name, c.version) for c in cards] == [("test-l3-tiny", "9.0"), ("test-spine", "0.0.1")]
    assert [c.name for c in find_model_cards([user, bundled], task="spine")] == ["test-spine"]
    monkeypatch.setenv("MSKSEG_MODELS_DIR", str(bundled))
    assert {c.name for c in find_model_cards()} >= {"test-l3-tiny", "test-spine"}


def test_find_model_cards_skips_an_invalid_card_with_a_warning_unless_strict(tmp_path, caplog):
    write_card(tmp_path, valid_card())
    write_card(tmp_path, valid_card(name="broken", dimensions="4d"))
    with caplog.at_level(logging.WARNING, logger="mskseg.models.cards"):
        assert [c.name for c in find_model_cards([tmp_path])] == ["test-l3-tiny"]
    assert "broken.card.json" in caplog.text
    with pytest.raises(ModelCardError, match="field 'dimensions'"):
        find_model_cards([tmp_path], strict=True)


def test_resolve_model_card_by_name_path_or_folder(tmp_path):
    path = write_card(tmp_path / "m", valid_card())
    assert resolve_model_card("test-l3-tiny", dirs=[tmp_path]).path == path.resolve()
    assert resolve_model_card(str(path)).name == "test-l3-tiny"
    assert resolve_model_card(tmp_path / "m", task="sarcopenia").name == "test-l3-tiny"
    with pytest.raises(ModelCardError) as info:
        resolve_model_card("no-such-model", task="sarcopenia", dirs=[tmp_path])
    assert "test-l3-tiny" in info.value.hint
    with pytest.raises(ModelCardError, match="is for task 'sarcopenia', not 'spine'"):
        resolve_model_card(path, task="spine")


# ---------------------------------------------------------------------------------------------- weights
def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(1).bytes(3_000_000)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_weights_round_trip_in_both_formats(tmp_path, fmt):
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.arange(4.0), "count": torch.tensor(7)}
    state["tied"] = state["conv.bias"]  # shared memory: copied apart on save
    digest = save_weights(state, tmp_path / f"w.{fmt}", format=fmt)
    assert digest == sha256_file(tmp_path / f"w.{fmt}")
    loaded = read_state_dict(tmp_path / f"w.{fmt}", fmt)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value) and loaded[key].dtype == value.dtype


def test_save_weights_refuses_to_overwrite(tmp_path):
    save_weights({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(OutputExistsError):
        save_weights({"a": torch.ones(2)}, tmp_path / "w.safetensors")


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_checksum_mismatch_is_raised_before_the_file_is_parsed(tmp_path, monkeypatch, fmt):
    card = card_with_weights(tmp_path, fmt)
    with open(card.weights_path, "ab") as f:
        f.write(b"tampered")

    def must_not_parse(*args, **kwargs):
        raise AssertionError("the weights file was parsed before its checksum was checked")

    monkeypatch.setattr(torch, "load", must_not_parse)
    monkeypatch.setattr("safetensors.torch.load_file", must_not_parse)
    with pytest.raises(ChecksumError) as info:
        load_weights(card)
    message = str(info.value)
    assert f"expected sha256 {card.weights['sha256']}" in message
    assert f"found    sha256 {sha256_file(card.weights_path)}" in message
    assert "re-install" in info.value.hint and "only if you trust" in info.value.hint


def test_missing_weights_file_says_to_reinstall(tmp_path):
    card = ModelCard.from_dict(valid_card(), tmp_path / "x.card.json")
    with pytest.raises(ModelCardError, match="does not exist") as info:
        load_weights(card)
    assert "re-install" in info.value.hint


class _NotATensor:
    def __init__(self):
        self.payload = "code could run here"


def test_torch_weights_with_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "extra": _NotATensor()}, path)
    card = valid_card()
    card["weights"] = {"file": "evil.pt", "sha256": sha256_file(path), "format": "torch"}
    with pytest.raises(ModelCardError, match="refused to load weights file .*evil.pt") as info:
        load_weights(ModelCard.from_dict(card, tmp_path / "x.card.json"))
    assert "state dict" in info.value.hint


def test_torch_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelCardError, match="does not hold a state dict"):
        read_state_dict(path, "torch")


def test_load_model_loads_checked_weights_strictly_in_eval_mode(tmp_path):
    card = card_with_weights(tmp_path, "safetensors")
    model = load_model(card, "cpu")
    assert not model.training
    reference = read_state_dict(card.weights_path, "safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key])
    out = model(torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 4, 16, 16)


def test_load_model_with_weights_of_another_architecture_names_the_mismatch(tmp_path):
    card = card_with_weights(tmp_path, "safetensors")
    changed = card.to_dict()
    changed["architecture"]["args"]["channels"] = [4, 16]
    other = save_model_card(changed, tmp_path / "other.card.json")
    with pytest.raises(ModelCardError, match="do not fit architecture monai.UNet"):
        load_model(other)


# ---------------------------------------------------------------------------------------------- networks
TINY_ARGS = {
    "monai.UNet": dict(TINY_UNET_ARGS),
    "monai.BasicUNet": {"features": [4, 4, 4, 4, 4, 4]},
    "monai.DynUNet": {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
                      "filters": [4, 8, 8]},
    "monai.SegResNet": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
    "monai.AttentionUnet": {"channels": [4, 8], "strides": [2]},
}


def test_every_registered_monai_network_has_a_forward_test():
    # Task modules register their own special-purpose networks (e.g. the L3 projection net) and test them
    # themselves; every general-purpose MONAI builder must be covered here.
    assert {n for n in NETWORKS if n.startswith("monai.") and "." not in n[len("monai."):]} == set(TINY_ARGS)


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
@pytest.mark.parametrize("dimensions", ["2d", "3d"])
def test_build_network_runs_a_forward_pass(name, dimensions):
    card = valid_card(dimensions=dimensions, architecture={"name": name, "args": TINY_ARGS[name]})
    card["input"] = {"window": [-200, 300], "channels": 1}
    model = build_network(ModelCard.from_dict(card)).eval()
    shape = (1, 1) + (32,) * (2 if dimensions == "2d" else 3)  # BasicUNet halves 4 times
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (1, 4) + shape[2:]


def test_unknown_architecture_lists_the_known_ones():
    card = ModelCard.from_dict(valid_card(architecture={"name": "monai.NoSuchNet", "args": {}}))
    with pytest.raises(ModelCardError, match="'architecture.name' is 'monai.NoSuchNet'") as info:
        build_network(card)
    assert all(name in info.value.hint for name in NETWORKS)


def test_unknown_architecture_argument_is_named():
    args = dict(TINY_UNET_ARGS, chanels=[4, 8])
    with pytest.raises(ModelCardError, match="'architecture.args.chanels' is not an argument of monai.UNet"):
        build_network(ModelCard.from_dict(valid_card(architecture={"name": "monai.UNet", "args": args})))


def test_architecture_arguments_the_network_rejects_are_reported():
    with pytest.raises(ModelCardError, match="cannot be built"):
        build_network_from_architecture("monai.UNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                                       "channels": [4], "strides": []})


def test_card_classes_are_not_changed_by_building(tmp_path):
    card = ModelCard.from_dict(valid_card())
    before = copy.deepcopy(card.to_dict())
    build_network(card)
    assert card.to_dict() == before
