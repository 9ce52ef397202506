"""The bone task in the registry (:mod:`mskseg.tasks`): its CLI, run, export and Slicer functions."""
from __future__ import annotations

from ..tasks import Task, lazy_function
from .cli import DESCRIPTION, EPILOG, add_bone_arguments, options_from_args, run_bone_cli
from .export import OUTPUT_FILES, export_bone
from .pipeline import STEPS, run_bone, summarise_bone

_SCENE = "mskseg.bone.scene"

TASK = Task(
    name="bone",
    title="Bone segmentation and density",
    summary="bone segmentation of a CT (rules or a bone model), classes, volumes, L1-L4 trabecular HU, flag",
    description=DESCRIPTION,
    epilog=EPILOG,
    steps=STEPS,
    run=run_bone,
    export=export_bone,
    output_files=OUTPUT_FILES,
    add_arguments=add_bone_arguments,
    cli=run_bone_cli,
    options_from_args=options_from_args,
    slicer={**{name: lazy_function(_SCENE, name) for name in ("run_segmentation", "load_result")},
            **{name: lazy_function("mskseg.app", name) for name in
               ("measure_segmentation", "export_results", "list_model_cards", "device_report", "cohort_rows", "load_cohort_case")}},
    slicer_module="BoneSeg",
    model_task="bone",
    summarise=summarise_bone,
)
