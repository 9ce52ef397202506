"""What the three Slicer modules do, as functions over an MRML scene: list models, run one on a volume node,
measure and export a segmentation node. The module Logic classes call these, so everything here is tested
headless with slicer-core; the module files keep only widgets, parameter nodes, progress and error display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .engine import CancelToken, Progress


def list_model_cards(task: str, dirs: Sequence[str | Path] | None = None) -> list:
    """Model cards installed for ``task`` (``sarcopenia``, ``bone``, ``spine``), in search order."""
    from .models import find_model_cards

    return find_model_cards(dirs, task=task)


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
    from .models import resolve_model_card
    from .pipeline import segment_image

    card = resolve_model_card(str(card_path))
    image = mrml.volume_node_to_image(volume_node)
    result = segment_image(image, card, device=device, progress=progress, cancel_token=cancel_token)
    reuse = segmentation_node is not None and segmentation_node.GetSegmentation().GetNumberOfSegments() == 0
    name = mrml.new_segmentation_node_name(scene, f"{volume_node.GetName()} {card.title}")
    node = mrml.labelmap_to_segmentation_node(result.labelmap, result.labels, scene, reference_volume_node=volume_node,
                                              name=name, segmentation_node=segmentation_node if reuse else None)
    node.SetAttribute("MSKSeg.Model", card.name)
    node.SetAttribute("MSKSeg.Device", result.device)
    return node


def measure_segmentation(scene, segmentation_node, volume_node, table_node=None):
    """Segment statistics of the segmentation AS IT IS NOW (after any edits) into a table node."""
    from . import mrml
    from .measure import UNITS, segment_statistics

    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, image)
    rows = segment_statistics(image, labelmap, labels)
    return mrml.metrics_to_table_node(rows, scene, name=f"{segmentation_node.GetName()} statistics", units=UNITS,
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
                            title=segmentation_node.GetName(), summary=extra)
    return [str(p) for p in written]
