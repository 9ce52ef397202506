"""The vertebral-level finder shared by every task: SarcopeniaSeg finds L3 with it, SpineSeg and BoneSeg name
vertebrae with it.

* :mod:`~mskseg.spine.geometry`: the canonical view of a CT, bone projections, resampling to 2 mm rows;
* :mod:`~mskseg.spine.levelnet`: the projection network, its detector card, decoding its output into levels;
* :mod:`~mskseg.spine.rules`: rule-based vertebra counting (the independent cross-check);
* :mod:`~mskseg.spine.transitional`: checks for transitional anatomy (ribs, sacral alae, vertebral bodies);
* :mod:`~mskseg.spine.checks`: whether a CT can hold the levels at all;
* :mod:`~mskseg.spine.levels`: :func:`~mskseg.spine.levels.find_vertebra_levels`, every level found with its
  method, confidence and warnings.

Submodules are imported on use (``from mskseg.spine.levels import find_vertebra_levels``); torch is imported
only when the network runs.
"""
from __future__ import annotations
