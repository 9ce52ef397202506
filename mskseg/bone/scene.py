"""Bone segmentation over an MRML scene: what the BoneSeg module's Logic calls.

Every function runs the task's own steps (:func:`mskseg.bone.pipeline.run_bone`, the same orchestration as
``mskseg bone``) on the image of a volume node and puts the result into nodes through :mod:`mskseg.mrml`.
Headless tests run all of it on slicer-core.

* :func:`run_segmentation`: the whole run -> segmentation node (+ its measurements table);
* :func:`measure_bones`: the measurements of the segmentation as it is now (after edits) into its table;
* :func:`load_result`: a result folder written by :func:`mskseg.bone.export.export_bone` (the background
  worker's output) into the scene, as :func:`run_segmentation` would have made it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import mrml
from ..engine import CancelToken, Progress
from ..errors import MSKSegError

#: Segmentation node attributes written here (prefix ``MSKSeg.``).
PREFIX = "MSKSeg."


def run_segmentation(scene, volume_node, card_path: str | Path | None = None, device: str = "auto",
                     progress: Progress | None = None, segmentation_node=None,
                     cancel_token: CancelToken | None = None, **options: Any):
    """Segment and measure the bones of the CT in ``volume_node``; returns the segmentation node.

    ``card_path``: a bone model card (the network method), or empty/None for the rules. ``options`` are those
    of :func:`mskseg.bone.pipeline.run_bone` (``method``, ``classes``, ``levels``). The measurements go into
    a table node whose ID the segmentation keeps in ``MSKSeg.MeasurementsTableID``. A ``segmentation_node``
    that already holds segments (perhaps corrected by hand) is never overwritten: a new node is made.
    """
    from .pipeline import run_bone

    image = mrml.volume_node_to_image(volume_node)
    result = run_bone(image, model_card=str(card_path) if card_path else None, device=device, progress=progress,
                      cancel_token=cancel_token, **options)
    node = _segmentation_node(scene, volume_node, result.labelmap, result.labels, segmentation_node)
    _describe(scene, node, result.describe(), result.rows, result.units)
    return node


def measure_bones(scene, segmentation_node, volume_node, table_node=None):
    """Measure the segmentation AS IT IS NOW (after any Segment Editor edits) into a table node.

    Rows as in :func:`mskseg.bone.pipeline.run_bone`: per class volume, mean and SD of HU; per lumbar vertebra
    segment (``vertebrae_L1`` .. ``vertebrae_L4``) whose level slice the run kept (``MSKSeg.Levels``) the
    trabecular ROI again, with the contrast phase the run found (``MSKSeg.Phase``; unenhanced when unknown).
    Segments are recognised by their class (``MSKSeg.ClassName`` tag, else their name). The table is
    ``table_node``, else the one the segmentation names (``MSKSeg.MeasurementsTableID``), else a new one.

    Raises:
        MSKSegError: the segmentation is empty.
    """
    import numpy as np

    from ..orientation import to_canonical
    from .density import Phase, measure_lumbar_density, screening_flag
    from .pipeline import class_rows
    from .rules import track_spine

    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, image)
    hu = np.asarray(image.array)
    lab = np.asarray(labelmap.array)
    if not lab.any():
        raise MSKSegError(f"segmentation '{mrml.node_name(segmentation_node)}' is empty: nothing to measure",
                          "run the bone segmentation first (Apply), or paint the bones in the Segment Editor")
    rows = class_rows(hu, lab, labels, image.spacing)
    done = mrml.attributes(segmentation_node, PREFIX)
    stored = json.loads(done.get("Phase") or "{}")
    phase = Phase(**stored) if stored else Phase("unenhanced", None, 0.0, "phase unknown: no correction applied")
    canon, how = to_canonical(image)
    canon_lab = np.asarray(to_canonical(labelmap)[0].array)
    level_slices = {n: how.canonical_slice(int(k)) for n, k in json.loads(done.get("Levels") or "{}").items()}
    level_values = {n[len("vertebrae_"):]: v for v, n in labels.items() if n.startswith("vertebrae_")}
    densities = []
    if level_slices and level_values:
        spine = track_spine(canon_lab > 0, canon.spacing)
        densities = measure_lumbar_density(np.asarray(canon.array), canon_lab, level_values, level_slices, spine,
                                           canon.spacing, phase)
    for d in densities:
        rows.append({"row": "level", "class": f"{d.level} trabecular ROI", "level": d.level,
                     "trabecular_HU": d.mean_hu, "trabecular_SD_HU": d.sd_hu, "trabecular_HU_corrected": d.corrected_hu,
                     "roi_area_mm2": d.area_mm2, "slices": [how.source_slice(k) for k in d.slices]})
    l1 = next((d for d in densities if d.level == "L1"), None)
    flag = screening_flag(None if l1 is None else l1.corrected_hu)
    if table_node is None and done.get("MeasurementsTableID"):
        table_node = scene.GetNodeByID(done["MeasurementsTableID"])
    from .pipeline import BoneResult

    described = {"warnings": [], "density": {"flag": flag, "phase": phase.as_dict()}, "method": done.get("Method", ""),
                 "levels": json.loads(done.get("Levels") or "{}")}
    return _describe(scene, segmentation_node, described, rows, BoneResult.units, table_node)


def load_result(scene, volume_node, folder: str | Path, segmentation_node=None):
    """Load a result folder of :func:`mskseg.bone.export.export_bone` into the scene; returns the
    segmentation node (a new one unless ``segmentation_node`` is empty), with its measurements table.

    Raises:
        MSKSegError: the folder lacks ``segmentation.seg.nrrd`` or ``metrics.json`` (an incomplete run).
    """
    from ..image import labels_on_grid
    from ..io.segnrrd import read_seg_nrrd
    from .export import OUTPUT_FILES

    from ..io.output import read_result_folder

    seg_path, described = read_result_folder(folder, OUTPUT_FILES, "run the bone segmentation again")
    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = read_seg_nrrd(seg_path)
    labelmap = image.with_array(labels_on_grid(labelmap, image), keep_metadata=False)
    node = _segmentation_node(scene, volume_node, labelmap, labels, segmentation_node)
    _describe(scene, node, described, described.get("rows") or [], described.get("units") or {})
    return node


def _segmentation_node(scene, volume_node, labelmap, labels, segmentation_node=None):
    reuse = segmentation_node is not None and mrml.segment_count(segmentation_node) == 0
    name = mrml.new_segmentation_node_name(scene, f"{mrml.node_name(volume_node)} bones")
    return mrml.labelmap_to_segmentation_node(labelmap, labels, scene, reference_volume_node=volume_node, name=name,
                                              segmentation_node=segmentation_node if reuse else None)


def _describe(scene, node, described: dict[str, Any], rows: list[dict[str, Any]], units: dict[str, str],
              table_node=None):
    from ..io.common import flat_rows

    table = mrml.metrics_to_table_node(flat_rows(rows), scene, name=f"{mrml.node_name(node)} measurements",
                                       units=units, table_node=table_node)
    density = described.get("density") or {}
    mrml.set_attributes(table, {"MSKSeg.Warnings": json.dumps(described.get("warnings") or []),
                                "MSKSeg.ScreeningFlag": json.dumps(density.get("flag") or {})})
    mrml.set_attributes(node, {"MeasurementsTableID": mrml.node_id(table), "Method": described.get("method", ""),
                               "Levels": json.dumps(described.get("levels") or {}),
                               "Phase": json.dumps(density.get("phase") or {}),
                               "ScreeningFlag": (density.get("flag") or {}).get("flag", "")}, prefix=PREFIX)
    return table
