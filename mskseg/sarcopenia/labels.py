"""The label values of body composition: the one place that says which value is which tissue or muscle group.

Every module that writes or reads a tissue or muscle-group label map imports these names; none repeats them.
"""
from __future__ import annotations

from ..io.common import Labels

__all__ = ["TISSUE_LABELS", "GROUP_LABELS", "MUSCLE_GROUPS", "MUSCLE_CLASSES"]

#: Tissue label values of a body-composition label map (the tissue step's output and the measured classes).
TISSUE_LABELS: Labels = {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat", 4: "intermuscular_fat"}

#: Muscle-group label values; they overlap the muscle label, so they live in a label map of their own.
GROUP_LABELS: Labels = {5: "psoas", 6: "paraspinal", 7: "abdominal_wall"}

#: Muscle-group class names, in label order; each is skeletal muscle for the SMA and gets its own columns.
MUSCLE_GROUPS: tuple[str, ...] = tuple(GROUP_LABELS[v] for v in sorted(GROUP_LABELS))

#: Class names counted as skeletal muscle.
MUSCLE_CLASSES: tuple[str, ...] = ("skeletal_muscle", *MUSCLE_GROUPS)
