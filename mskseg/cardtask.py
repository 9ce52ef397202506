"""A task that runs the model card the user chooses: BoneSeg and SpineSeg until their own pipelines land.

:func:`run_card` is the one orchestration (validate, segment, back to the source grid) that the ``mskseg
segment`` command and the modules' Apply share. The image is segmented in the canonical orientation
(:mod:`mskseg.orientation`) and the label map mapped back onto the source grid, so a volume stored sagittally
gives the labels a volume stored axially gives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import CancelToken, Progress
from .errors import MSKSegError
from .image import Image
from .steps import StepRunner
from .tasks import Task, TaskEntry, lazy_function

STEP_WEIGHTS = {"validate": 0.02, "segment": 0.98}


def run_card(image: Image, *, model_card: Any = None, device: str = "auto", progress: Progress | None = None,
             cancel_token: CancelToken | None = None, model: Any = None):
    """Segment ``image`` with the network of ``model_card`` (a card, or the path or name of one).

    Returns:
        The :class:`mskseg.pipeline.SegmentationResult`, its label map on exactly the source grid, with
        ``details["timings"]`` (seconds per step).

    Raises:
        MSKSegError: no model card given; InvalidImageError when the image does not suit the card.
    """
    from .models import resolve_model_card
    from .orientation import labelmap_to_source, to_canonical
    from .pipeline import check_input, segment_image

    runner = StepRunner(STEP_WEIGHTS, progress, cancel_token, what="segmentation")
    with runner.step("validate", "checking the image"):
        if model_card is None:
            raise MSKSegError("no model card chosen", "choose a model card (`mskseg models` lists the installed ones)")
        card = resolve_model_card(model_card) if isinstance(model_card, (str, Path)) else model_card
        check_input(image, card)
        work, how = to_canonical(image) if image.ndim == 3 else (image, None)
    with runner.step("segment", f"segmenting with {card.name}") as report:
        result = segment_image(work, card, device=device, progress=report, cancel_token=cancel_token, model=model)
    if how is not None:
        result.labelmap = labelmap_to_source(result.labelmap, image, how)
    result.details["timings"] = dict(runner.timings)
    return result


def export_card_result(out_dir: str | Path, image: Image, result: Any, *, overwrite: bool = False,
                       extra: dict[str, Any] | None = None, formats: Any = None, title: str | None = None
                       ) -> list[Path]:
    """Write a :func:`run_card` result in ``formats`` (default all of :data:`mskseg.io.export.FORMATS`:
    .seg.nrrd, DICOM-SEG when the image came from DICOM, NIfTI, CSV, JSON and a PNG)."""
    from .io.export import FORMATS, export_result

    return export_result(out_dir, image, result.labelmap, result.labels, formats=list(formats or FORMATS),
                         overwrite=overwrite, title=title or result.model,
                         summary={**(extra or {}), "model": result.model, "device": result.device})


def summarise_card(result: Any) -> dict[str, Any]:
    """The result's row of a cohort table: the model, and the volume (cm3) of every class of its card."""
    import numpy as np

    labelmap = result.labelmap
    counts = np.bincount(np.asarray(labelmap.array).ravel().astype(np.int64), minlength=max(result.labels, default=0) + 1)
    voxel_cm3 = float(np.prod(labelmap.spacing)) / 1000.0
    return {"method": result.model,
            **{f"{name}_cm3": round(float(counts[value]) * voxel_cm3, 3) for value, name in sorted(result.labels.items())}}


def make_task(entry: TaskEntry) -> Task:
    """The :class:`~mskseg.tasks.Task` of a registry line whose module is this one (``bone``, ``spine``)."""
    return Task(
        name=entry.name, title=entry.slicer_module, summary=entry.summary, steps=tuple(STEP_WEIGHTS), run=run_card,
        export=export_card_result, slicer_module=entry.slicer_module, model_task=entry.name, summarise=summarise_card,
        slicer={name: lazy_function("mskseg.app", name) for name in
                ("run_segmentation", "measure_segmentation", "export_results", "list_model_cards", "device_report",
                 "load_result", "cohort_rows", "load_cohort_case")},
    )
