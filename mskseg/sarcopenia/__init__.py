"""Body composition at the third lumbar vertebra (L3) of a CT: find L3, segment the tissues, measure.

The pipeline (:func:`run_sarcopenia`) is a short list of named steps, each in its own module:

* ``l3``: find the L3 slice (:func:`mskseg.sarcopenia.l3.detect_l3`) and check that a CT can hold one;
* ``tissue``: skeletal muscle, subcutaneous, visceral and intermuscular fat on chosen slices;
* ``settings``, ``cutoffs``, ``metrics``: windows, patient data, published cut-offs and the measurements;
* ``pipeline``: the steps in order, with timings and warnings; ``report``: one PNG a radiologist can show;
* ``cli``: the ``mskseg sarcopenia`` command.

Importing this package is cheap: the names below are loaded on first use (torch is imported only by the
steps that run a network).
"""
from __future__ import annotations

from typing import Any

__all__ = ["SarcopeniaResult", "run_sarcopenia", "write_sarcopenia_report"]

_LAZY = {"SarcopeniaResult": "pipeline", "run_sarcopenia": "pipeline", "write_sarcopenia_report": "report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
