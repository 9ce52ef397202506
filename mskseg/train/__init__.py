"""Training and evaluation of segmentation models from image/label pairs and synthetic data.

Typical use::

    from mskseg.train import TrainConfig, train, evaluate_folders, summarise, format_summary
    result = train(TrainConfig(out_dir="runs/my-l3", name="my-l3", data="data/l3",
                               labels={1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat"},
                               epochs=40))
    print(result.card_path)          # a model card that `mskseg segment --model` and Slicer accept

Importing this package is cheap: torch and MONAI are imported when a run starts.
"""
from __future__ import annotations

from .data import (
    Augmentation,
    CasePaths,
    LabelledCase,
    Sample,
    SampleSource,
    SyntheticSourceInfo,
    discover_cases,
    get_synthetic_source,
    kfold_split,
    prepare_case,
    read_case,
    read_labelmap,
    register_synthetic_source,
    synthetic_sources,
)
from .evaluate import (
    area_error_cm2,
    dice,
    evaluate_folders,
    evaluate_pairs,
    format_summary,
    hausdorff95,
    normalized_surface_dice,
    slice_position_error_mm,
    summarise,
)
from .trainer import ARCHITECTURES, TrainConfig, TrainResult, train

__all__ = [
    "ARCHITECTURES", "Augmentation", "CasePaths", "LabelledCase", "Sample", "SampleSource", "SyntheticSourceInfo",
    "TrainConfig", "TrainResult", "area_error_cm2", "dice", "discover_cases", "evaluate_folders", "evaluate_pairs",
    "format_summary", "get_synthetic_source", "hausdorff95", "kfold_split", "normalized_surface_dice",
    "prepare_case", "read_case", "read_labelmap", "register_synthetic_source", "slice_position_error_mm",
    "summarise", "synthetic_sources", "train",
]
