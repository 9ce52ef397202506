"""Network builders: the architecture names a model card may use, and how each is built.

A card's ``architecture`` is ``{"name": ..., "args": {...}}``; ``args`` are the keyword arguments of the
builder named here. ``spatial_dims``, ``in_channels`` and ``out_channels`` may be left out of ``args``:
they then come from the card (``dimensions``, ``input.channels``, highest class label + 1).

torch and MONAI are imported only when a network is built, and MSKSeg's own networks (``mskseg.*``) are
imported from their module only when a card names them: nothing registers itself on import.
"""
from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ModelCardError

if TYPE_CHECKING:
    import torch

    from .cards import ModelCard


def _monai(class_name: str) -> Callable[..., torch.nn.Module]:
    def build(**kwargs: Any) -> torch.nn.Module:
        from monai.networks import nets

        return getattr(nets, class_name)(**kwargs)

    build.__doc__ = f"monai.networks.nets.{class_name}"
    build.monai_class = class_name  # type: ignore[attr-defined]
    return build


def _lazy(module: str, attribute: str) -> Callable[..., torch.nn.Module]:
    """A builder that imports ``module.attribute`` when it is first called (or its arguments are asked for)."""
    def build(**kwargs: Any) -> torch.nn.Module:
        return getattr(importlib.import_module(module), attribute)(**kwargs)

    build.__doc__ = f"{module}.{attribute}"
    build.lazy_target = (module, attribute)  # type: ignore[attr-defined]
    return build


#: Architecture name (as in a card) -> builder taking the card's ``architecture.args`` as keyword arguments.
NETWORKS: dict[str, Callable[..., torch.nn.Module]] = {
    "monai.UNet": _monai("UNet"),
    "monai.BasicUNet": _monai("BasicUNet"),
    "monai.DynUNet": _monai("DynUNet"),
    "monai.SegResNet": _monai("SegResNet"),
    "monai.AttentionUnet": _monai("AttentionUnet"),
    # the vertebral-level detector (mskseg.spine.levelnet.NETWORK_NAME)
    "mskseg.l3-projection-net": _lazy("mskseg.spine.levelnet", "build_projection_net"),
}


#: Architectures that are not per-voxel segmentation networks -> what they are and which command runs them.
#: ``mskseg segment``, BoneSeg and SpineSeg refuse cards of these (they cannot turn the output into a label map).
NOT_SEGMENTATION: dict[str, str] = {
    "mskseg.l3-projection-net": "the vertebral-level detector that `mskseg sarcopenia` runs to find L3",
}


def register_network(name: str, builder: Callable[..., torch.nn.Module]) -> None:
    """Make ``name`` usable as a card's ``architecture.name``; ``builder(**args)`` returns the module."""
    NETWORKS[name] = builder


def builder_parameters(builder: Callable[..., Any]) -> set[str] | None:
    """Keyword names the builder accepts, or None when it takes ``**kwargs`` of its own."""
    target: Any = builder
    class_name = getattr(builder, "monai_class", None)
    if class_name is not None:
        from monai.networks import nets

        target = getattr(nets, class_name)
    lazy_target = getattr(builder, "lazy_target", None)
    if lazy_target is not None:
        target = getattr(importlib.import_module(lazy_target[0]), lazy_target[1])
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def build_network_from_architecture(name: str, args: dict[str, Any], source: str = "model card") -> torch.nn.Module:
    """Build the network registered as ``name`` with keyword arguments ``args``.

    Raises:
        ModelCardError: ``name`` is not registered (the known names are listed) or ``args`` do not fit
            the builder (the constructor's complaint is quoted).
    """
    if name not in NETWORKS:
        raise ModelCardError(
            f"{source}: field 'architecture.name' is '{name}', which MSKSeg cannot build",
            f"use one of: {', '.join(sorted(NETWORKS))} (or register a builder with "
            "mskseg.models.networks.register_network)")
    builder = NETWORKS[name]
    accepted = builder_parameters(builder)
    if accepted is not None:
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise ModelCardError(
                f"{source}: field 'architecture.args.{unknown[0]}' is not an argument of {name}",
                f"{name} takes: {', '.join(sorted(accepted))}")
    try:
        return builder(**args)
    except (TypeError, ValueError, AssertionError, IndexError) as exc:
        raise ModelCardError(f"{source}: {name} cannot be built from field 'architecture.args' {args}: {exc}",
                             "check the arguments against the network's documentation in MONAI") from exc


def network_args(card: ModelCard) -> dict[str, Any]:
    """The card's ``architecture.args`` with ``spatial_dims``, ``in_channels`` and ``out_channels`` filled in
    from the card where they are absent (and where the builder takes them)."""
    args = dict(card.architecture["args"])
    defaults = {"spatial_dims": card.spatial_dims, "in_channels": int(card.input["channels"]),
                "out_channels": card.num_outputs}
    builder = NETWORKS.get(card.architecture["name"])
    accepted = builder_parameters(builder) if builder is not None else None
    for key, value in defaults.items():
        if key not in args and (accepted is None or key in accepted):
            args[key] = value
    return args


def build_network(card: ModelCard) -> torch.nn.Module:
    """An untrained network of the card's architecture (weights are loaded by :func:`load_model`).

    Raises:
        ModelCardError: unknown architecture name or arguments that do not fit it.
    """
    source = str(card.path) if card.path is not None else f"model card '{card.name}'"
    return build_network_from_architecture(card.architecture["name"], network_args(card), source)
