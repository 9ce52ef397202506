"""Bone segmentation of a CT and opportunistic bone density: BoneSeg's own pipeline.

* ``rules``: the rule-based segmentation (HU threshold, marrow filling, vessels and table excluded, classes by
  position); ``density``: trabecular HU of L1-L4, the contrast phase and the screening flag;
* ``pipeline``: :func:`run_bone`, the named steps; ``report``: the PNG; ``export``: the files;
* ``cli``: ``mskseg bone``; ``scene``: the Slicer functions; ``task``: the registry entry.

Importing this package is cheap: the names below are loaded on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BoneResult", "run_bone", "write_bone_report"]

_LAZY = {"BoneResult": "pipeline", "run_bone": "pipeline", "write_bone_report": "report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
