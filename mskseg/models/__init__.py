"""Models: model cards (data), weights with checksums, and the networks they describe.

Importing this package is cheap (json and jsonschema only); torch and MONAI are imported when weights are
read or a network is built.

Typical use::

    from mskseg.models import resolve_model_card, load_model
    card = resolve_model_card("sarcopenia-l3-tissue-2d", task="sarcopenia")   # or a path to a .card.json
    model = load_model(card, device="cpu")                                # sha256 checked first
    labels = card.labels                                                  # {1: "skeletal_muscle", ...}
"""
from __future__ import annotations

from .cards import (
    CARD_SUFFIX,
    MODELS_DIR_ENV,
    SCHEMA_PATH,
    ModelCard,
    default_model_dirs,
    find_model_cards,
    load_model_card,
    model_card_schema,
    resolve_model_card,
    save_model_card,
    validate_model_card,
)
from .networks import NETWORKS, build_network, build_network_from_architecture, network_args, register_network
from .weights import (
    load_model,
    load_weights,
    read_state_dict,
    save_weights,
    sha256_file,
    verify_weights,
)

__all__ = [
    "CARD_SUFFIX", "MODELS_DIR_ENV", "NETWORKS", "SCHEMA_PATH", "ModelCard", "build_network",
    "build_network_from_architecture", "default_model_dirs", "find_model_cards", "load_model", "load_model_card",
    "load_weights", "model_card_schema", "network_args", "read_state_dict", "register_network",
    "resolve_model_card", "save_model_card", "save_weights", "sha256_file", "validate_model_card",
    "verify_weights",
]
