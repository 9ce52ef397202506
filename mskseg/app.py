"""What every Slicer module can do with a model card, as functions over an MRML scene: list models, run one
on a volume node, measure and export a segmentation node. The tasks declare these as their Slicer functions
(:mod:`mskseg.tasks`); a task's own functions live with the task (e.g. :mod:`mskseg.sarcopenia.scene`).
Everything here is tested headless with slicer-core; MRML is spoken only through :mod:`mskseg.mrml`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .engine import CancelToken, Progress


def list_model_cards(task: str, dirs: Sequence[str | Path] | None = None) -> list:
    """Segmentation model cards installed for ``task`` (``sarcopenia``, ``bone``, ``spine``), in search order.

    Only cards whose network is a general segmentation network (``monai.*`` builders, what ``mskseg train``
    writes) are listed: a task-internal model such as the L3 level detector runs inside its pipeline and
    cannot segment a volume on its own.
    """
    from .models import find_model_cards

    return [c for c in find_model_cards(dirs, task=task) if str(c.architecture.get("name", "")).startswith("monai.")]


def device_report(preference: str = "auto") -> str:
    """One line: the device inference will use and why (shown in the modules' status line)."""
    from .engine import choose_device

    d = choose_device(preference)
    return f"{d.device} ({d.name}): {d.reason}" if getattr(d, "name", None) else f"{d.device}: {d.reason}"


def run_segmentation(scene, volume_node, card_path: str | Path, device: str = "auto",
                     progress: Progress | None = None, segmentation_node=None,
                     cancel_token: CancelToken | None = None):
    """Segment the volume in ``volume_node`` with a model card; return the segmentation node.

    A new node (uniquely named after the volume and model) is created unless ``segmentation_node`` is given
    AND empty: a node that already holds segments, e.g. one the user corrected, is never overwritten; a new
    node is made beside it instead.
    """
    from . import mrml
    from .cardtask import run_card
    from .models import resolve_model_card

    card = resolve_model_card(str(card_path))
    image = mrml.volume_node_to_image(volume_node)
    result = run_card(image, model_card=card, device=device, progress=progress, cancel_token=cancel_token)
    reuse = mrml.segment_count(segmentation_node) == 0 and segmentation_node is not None
    name = mrml.new_segmentation_node_name(scene, f"{mrml.node_name(volume_node)} {card.title}")
    node = mrml.labelmap_to_segmentation_node(result.labelmap, result.labels, scene, reference_volume_node=volume_node,
                                              name=name, segmentation_node=segmentation_node if reuse else None)
    mrml.set_attributes(node, {"Model": card.name, "Device": result.device}, prefix="MSKSeg.")
    return node


def measure_segmentation(scene, segmentation_node, volume_node, table_node=None):
    """Segment statistics of the segmentation AS IT IS NOW (after any edits) into a table node."""
    from . import mrml
    from .measure import UNITS, segment_statistics

    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, image)
    rows = segment_statistics(image, labelmap, labels)
    return mrml.metrics_to_table_node(rows, scene, name=f"{mrml.node_name(segmentation_node)} statistics", units=UNITS,
                                      table_node=table_node)


def export_results(scene, segmentation_node, volume_node, out_dir: str | Path,
                   formats: Sequence[str] = ("seg.nrrd", "dicom-seg", "csv"), overwrite: bool = False,
                   extra: dict[str, Any] | None = None) -> list[str]:
    """Write the current segmentation (after edits) and its statistics into ``out_dir``.

    DICOM-SEG is written when the volume came from DICOM (its files are known), and skipped otherwise unless
    it is the only format asked for (then a clear error says why). Existing files are never replaced unless
    ``overwrite``.
    """
    from . import mrml
    from .io.export import export_result

    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, image)
    fmts = list(formats)
    if "dicom-seg" in fmts and not image.metadata.get("source_files") and len(fmts) > 1:
        fmts.remove("dicom-seg")
    written = export_result(out_dir, image, labelmap, labels, formats=fmts, overwrite=overwrite,
                            title=mrml.node_name(segmentation_node), summary=extra)
    return [str(p) for p in written]


def load_result(scene, volume_node, folder: str | Path, segmentation_node=None):
    """Load the segmentation of a result folder written by a model-card run (the background worker's output)
    into the scene as a new segmentation node (``segmentation_node`` only when it is empty); returns the node.

    Raises:
        MSKSegError: the folder holds no ``segmentation.seg.nrrd`` (an incomplete run).
    """
    from . import mrml
    from .errors import MSKSegError
    from .image import labels_on_grid
    from .io.export import FILE_NAMES
    from .io.segnrrd import read_seg_nrrd

    path = Path(folder) / FILE_NAMES["seg.nrrd"]
    if not path.is_file():
        raise MSKSegError(f"the result folder {folder} is incomplete (no {path.name})", "run the segmentation again")
    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = read_seg_nrrd(path)
    labelmap = image.with_array(labels_on_grid(labelmap, image), keep_metadata=False)
    reuse = segmentation_node is not None and mrml.segment_count(segmentation_node) == 0
    name = mrml.new_segmentation_node_name(scene, f"{mrml.node_name(volume_node)} segmentation")
    return mrml.labelmap_to_segmentation_node(labelmap, labels, scene, reference_volume_node=volume_node, name=name,
                                              segmentation_node=segmentation_node if reuse else None)


def cohort_rows(out_root: str | Path) -> list[dict[str, Any]]:
    """The rows of a cohort's table (``OUT/cohort.json`` of ``mskseg batch``): case, status, reason, folder, the
    metrics; empty when the folder holds no cohort table yet."""
    import json

    path = Path(out_root) / "cohort.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("rows", []))
    except (OSError, ValueError):
        return []


def load_cohort_case(scene, task: str, out_root: str | Path, case: str) -> tuple[Any, Any]:
    """Load one finished case of a cohort for review and correction: its input image as a volume node (named
    after the case) and its result through the task's ``load_result``; returns ``(volume_node, result_node)``.

    Raises:
        MSKSegError: the case is not in the cohort folder, or it did not finish (with its reason).
    """
    from . import mrml
    from .batch import CASES_DIR, read_record
    from .errors import MSKSegError
    from .io import read_image
    from .tasks import get_task

    folder = Path(out_root) / CASES_DIR / case
    record = read_record(folder)
    if record is None:
        raise MSKSegError(f"case '{case}' has no finished result in {Path(out_root)}",
                          "run the cohort (again) into this folder; a rerun finishes what is missing")
    if record.get("status") != "done":
        raise MSKSegError(f"case '{case}' did not finish: {record.get('reason') or record.get('status')}",
                          "fix the study and run the cohort again: failed cases are retried")
    image = read_image(record["input"], series_uid=record.get("series_uid") or None)
    volume = mrml.image_to_volume_node(image, scene, name=case)
    return volume, get_task(task).slicer_function("load_result")(scene, volume, folder)
