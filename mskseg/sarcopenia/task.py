"""The body-composition task in the registry (:mod:`mskseg.tasks`): its CLI, run, export and Slicer functions."""
from __future__ import annotations

from ..tasks import Task, lazy_function
from .cli import DESCRIPTION, add_sarcopenia_arguments, epilog, options_from_args, run_sarcopenia_cli
from .export import OUTPUT_FILES, export_sarcopenia
from .pipeline import STEPS, run_sarcopenia, summarise_sarcopenia

_SCENE = "mskseg.sarcopenia.scene"

TASK = Task(
    name="sarcopenia",
    title="Body composition at L3",
    summary="body composition at L3 of a CT: muscle, fat, SMI, flags, report",
    description=DESCRIPTION,
    epilog=epilog(),
    steps=STEPS,
    run=run_sarcopenia,
    export=export_sarcopenia,
    output_files=OUTPUT_FILES,
    add_arguments=add_sarcopenia_arguments,
    cli=run_sarcopenia_cli,
    options_from_args=options_from_args,
    slicer={**{name: lazy_function(_SCENE, name) for name in
               ("process", "find_l3", "describe_l3", "segment_body_composition", "measure_body_composition",
                "load_result")},
            **{name: lazy_function("mskseg.app", name) for name in
               ("export_results", "list_model_cards", "device_report", "cohort_rows", "load_cohort_case")}},
    slicer_module="SarcopeniaSeg",
    model_task="sarcopenia",
    summarise=summarise_sarcopenia,
)
