"""Body composition over an MRML scene: what the SarcopeniaSeg module's Logic calls.

Every function here runs the task's own steps (:mod:`mskseg.sarcopenia.pipeline`: the same orchestration as
``mskseg sarcopenia``) on the image of a volume node and puts the result into nodes through :mod:`mskseg.mrml`,
the only module that speaks MRML. Headless tests run all of it on slicer-core.

* :func:`process`: the whole run (find L3, segment, measure) -> segmentation node + table node;
* :func:`find_l3`, :func:`segment_body_composition`, :func:`measure_body_composition`: the steps one by one,
  as the panel offers them (Find L3, Apply at the slice shown, Measure after the user's edits);
* :func:`load_result`: a result folder written by the task's export (the background worker's output) into
  the scene.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import mrml
from ..engine import CancelToken, Progress
from ..errors import InvalidImageError, MSKSegError

#: Volume node attributes where :func:`find_l3` keeps what it found (read by the module and by Segment/Measure).
L3_ATTRIBUTE_PREFIX = "MSKSeg.L3."
L3_INDEX_ATTRIBUTE = L3_ATTRIBUTE_PREFIX + "Index"
#: Segmentation node attributes: slice measured, slab, level, how the slice was found, tissue method.
SLICE_INDEX_ATTRIBUTE = "MSKSeg.SliceIndex"
SEGMENTATION_ATTRIBUTE_PREFIX = "MSKSeg."


def process(scene, volume_node, *, segmentation_node=None, table_node=None, progress: Progress | None = None,
            cancel_token: CancelToken | None = None, **options: Any):
    """Find L3, segment and measure the CT of ``volume_node`` in one go (the command line's run).

    ``options`` are those of :func:`mskseg.sarcopenia.pipeline.run_sarcopenia` (``height_m``, ``cutoff_set``,
    ``slab``, ``method``, ``muscle_groups``, ``level_index``, ...). Returns ``(segmentation node, table
    node)``; a ``segmentation_node`` that already holds segments (perhaps corrected by hand) is never
    overwritten: a new node is made.
    """
    from .pipeline import run_sarcopenia

    image = mrml.volume_node_to_image(volume_node)
    result = run_sarcopenia(image, progress=progress, cancel_token=cancel_token, **options)
    _keep_level(scene, volume_node, image, result.l3)
    node = _result_segmentation(scene, volume_node, result, segmentation_node)
    table = _result_table(scene, node, result.rows, result.units, getattr(result.metrics, "descriptions", None),
                          result.cutoff_set, result.warnings, table_node)
    return node, table


def find_l3(scene, volume_node, device: str = "auto", progress: Progress | None = None,
            allow_fallback: bool = False, cancel_token: CancelToken | None = None, levels_table: bool = True):
    """Find the L3 slice of the CT in ``volume_node``; returns the ``L3Result`` (``index``: the slice along the
    stored volume's axial axis).

    The result is kept on the volume node as attributes ``MSKSeg.L3.Index``, ``.Level``, ``.PositionMm``,
    ``.Confidence``, ``.Method``, ``.Levels`` (JSON: vertebra -> slice index) and ``.Warnings`` (JSON list),
    so that Segment and Measure use it; with ``levels_table`` a table node "<volume> vertebra levels" lists
    every level found.

    Raises:
        InvalidImageError: not a CT volume that can hold L3 (see :func:`mskseg.sarcopenia.l3.check_ct_for_l3`).
        L3NotFoundError: L3 is outside the field of view (and ``allow_fallback`` is False).
    """
    from .pipeline import find_level

    image = mrml.volume_node_to_image(volume_node)
    found = find_level(image, device=device, allow_fallback=allow_fallback, progress=progress,
                       cancel_token=cancel_token)
    _keep_level(scene, volume_node, image, found, levels_table=levels_table)
    return found


def describe_l3(volume_node) -> str:
    """One line on what :func:`find_l3` found for ``volume_node`` (from its attributes), for the status line:
    ``"L3 at slice 57 (confidence 0.93). Levels: T12 91, L1 80, ... Check: ..."``; a note when not run yet."""
    found = mrml.attributes(volume_node, L3_ATTRIBUTE_PREFIX)
    if found.get("Index") is None:
        return "L3 not searched yet: press Find L3."
    text = f"{found.get('Level')} at slice {found.get('Index')} (confidence {float(found.get('Confidence') or 0):.2f})."
    if found.get("FallbackUsed") == "1":
        text = f"L3 is not in the field of view; {text[0].lower()}{text[1:]}"
    levels = json.loads(found.get("Levels") or "{}")
    if levels:
        text += " Levels: " + ", ".join(f"{n} {k}" for n, k in sorted(levels.items(), key=lambda t: -t[1])) + "."
    warnings = json.loads(found.get("Warnings") or "[]")
    if warnings:
        text += " Check: " + "; ".join(warnings) + "."
    return text


def segment_body_composition(scene, volume_node, slice_index: int, slab: int = 1, method: str = "auto",
                             muscle_groups: bool = False, device: str = "auto", progress: Progress | None = None,
                             segmentation_node=None, model_card: str | Path | None = None,
                             cancel_token: CancelToken | None = None):
    """Segment the body-composition tissues on the slab of ``slab`` slices centred on ``slice_index``.

    The same run as :func:`process` with the level given: the L3 that :func:`find_l3` found when
    ``slice_index`` is its slice, else the user's slice. Returns a segmentation node with the segments
    skeletal muscle, subcutaneous fat, visceral fat and intermuscular fat (labels 1-4, as measured: each tissue
    inside its HU window), plus psoas, paraspinal and abdominal wall (5-7, painted over the muscle they belong
    to) when ``muscle_groups``. A ``segmentation_node`` that holds segments (perhaps corrected by hand) is never
    overwritten; a new, uniquely named node is made instead. The node records the slices, level and methods
    as attributes for :func:`measure_body_composition`.

    Args:
        slice_index: the slice of the level, along the stored volume's axial axis (e.g. ``find_l3().index``).
        method: ``"auto"``, ``"network"`` or ``"rules"``.
        model_card: a tissue model card to use instead of the installed one (a card of another kind, e.g.
            the L3 detector's, is passed over).

    Raises:
        InvalidImageError: not a CT volume in HU, or ``slice_index`` outside the volume.
    """
    from .pipeline import run_sarcopenia

    image = mrml.volume_node_to_image(volume_node)
    found = _kept_level(volume_node)
    level = found if found is not None and int(found.index) == int(slice_index) else None
    try:
        result = run_sarcopenia(image, level=level, level_index=None if level is not None else int(slice_index),
                                slab=max(int(slab), 1), method=method, muscle_groups=muscle_groups,
                                model=_tissue_card(model_card), device=device, progress=progress,
                                cancel_token=cancel_token)
    except InvalidImageError as error:
        if "outside the volume" in error.message:
            raise InvalidImageError(error.message, "press Find L3, or move the slice views to the level to measure")
        raise
    return _result_segmentation(scene, volume_node, result, segmentation_node)


def measure_body_composition(scene, segmentation_node, volume_node, height_m: float | None = None,
                             weight_kg: float | None = None, sex: str | None = None, cutoff_set: str = "Martin 2013",
                             slab_slices: int = 1, muscle_groups: bool = False, table_node=None,
                             vat_hu: tuple[float, float] | None = None):
    """Body-composition measurements of the segmentation AS IT IS NOW (after any edits) into a table node.

    The slices measured are the ``slab_slices`` slices centred on the segmentation's slice (its
    ``MSKSeg.SliceIndex`` attribute; else the volume's L3 from :func:`find_l3`; else the slice with the most
    labelled pixels). Segments are recognised by their class (``MSKSeg.ClassName`` tag, else their name):
    skeletal muscle and the muscle groups count as muscle, subcutaneous, visceral and intermuscular fat as
    such; each tissue only inside its HU window. Height, weight and sex default to the DICOM attributes of
    the volume. ``muscle_groups`` is accepted for the module's parameter node: group segments, when present,
    are always measured (their own ``<group>_cm2`` columns) and count as skeletal muscle.

    Returns:
        The table node (one row per slice, a mean row for a slab; units per column), refilled when
        ``table_node`` is given. Its attributes hold the cut-off set and the warnings (JSON).

    Raises:
        MSKSegError: an empty segmentation, bad patient values (e.g. height in cm), unknown cut-off set.
    """
    from .pipeline import busiest_slice, measure_labelmap
    from .settings import BodyCompSettings, patient_from_metadata

    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, image)
    done = mrml.attributes(segmentation_node, SEGMENTATION_ATTRIBUTE_PREFIX)
    centre = done.get("SliceIndex") or mrml.attributes(volume_node, L3_ATTRIBUTE_PREFIX).get("Index")
    if centre is None:
        centre = busiest_slice(image, labelmap)
        if centre is None:
            raise MSKSegError(f"segmentation '{mrml.node_name(segmentation_node)}' is empty: nothing to measure",
                              "segment the L3 slice first (Apply), or paint the tissues in the Segment Editor")
    settings = BodyCompSettings(vat_hu=tuple(vat_hu)) if vat_hu else BodyCompSettings()
    patient = patient_from_metadata(image.metadata, height_m=height_m, weight_kg=weight_kg, sex=sex)
    result = measure_labelmap(image, labelmap, labels, int(centre), slab_slices, patient, settings, cutoff_set,
                              level=done.get("Level") or "L3",
                              method=done.get("TissueMethod") or "user segmentation",
                              slice_source=done.get("SliceSource") or "user",
                              level_slices=json.loads(done.get("LevelSlices") or "{}"))
    return _result_table(scene, segmentation_node, result.rows, result.units, getattr(result, "descriptions", None),
                         result.cutoff_set, result.warnings, table_node)


def load_result(scene, volume_node, folder: str | Path, segmentation_node=None, table_node=None):
    """Load a result folder written by :func:`mskseg.sarcopenia.export.export_sarcopenia` (the background
    worker's output) into the scene, as :func:`process` would have made it; returns the segmentation node (a
    new one unless ``segmentation_node`` is empty). Its measurements go into a table node whose ID the
    segmentation keeps in the attribute ``MSKSeg.MeasurementsTableID``.

    Raises:
        MSKSegError: the folder lacks ``segmentation.seg.nrrd`` or ``metrics.json`` (an incomplete run).
    """
    from .export import OUTPUT_FILES
    from .l3 import L3Result

    from ..io.output import read_result_folder

    seg_path, described = read_result_folder(folder, OUTPUT_FILES, "run the analysis again")
    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = _read_seg(seg_path, image)
    level = described.get("level") or {}
    found = L3Result(index=int(level.get("slice_index")), position_mm=float(level.get("position_mm") or 0.0),
                     level=str(level.get("name") or "L3"), confidence=float(level.get("confidence") or 0.0),
                     levels={k: int(v) for k, v in (level.get("levels_found") or {}).items()},
                     method=str(level.get("method") or ""), fallback_used=bool(level.get("fallback_used")),
                     warnings=[w for w in described.get("warnings", [])])
    if found.method != "user":
        _keep_level(scene, volume_node, image, found)
    node = _segmentation_node(scene, volume_node, labelmap, labels, segmentation_node)
    _describe_segmentation(node, found, described.get("slices") or [found.index], described.get("tissue_method"),
                           described.get("levels_measured"))
    from ..io.common import flat_rows

    table = mrml.metrics_to_table_node(flat_rows(described.get("rows") or []), scene,
                                       name=f"{mrml.node_name(node)} measurements",
                                       units=described.get("units") or {}, table_node=table_node)
    mrml.set_attributes(table, {"MSKSeg.CutoffSet": described.get("cutoff_set"),
                                "MSKSeg.Warnings": json.dumps(described.get("warnings") or [])})
    mrml.set_attributes(node, {"MeasurementsTableID": mrml.node_id(table)}, prefix=SEGMENTATION_ATTRIBUTE_PREFIX)
    return node


# ------------------------------------------------------------------------------------------------ helpers
def _read_seg(path: Path, image):
    """The label map of a ``.seg.nrrd`` on ``image``'s grid (the file may hold only the labelled extent)."""
    from ..image import labels_on_grid
    from ..io.segnrrd import read_seg_nrrd

    labelmap, labels = read_seg_nrrd(path)
    return image.with_array(labels_on_grid(labelmap, image), keep_metadata=False), labels


def _tissue_card(model_card: str | Path | None):
    if not model_card:
        return None
    from ..errors import ModelCardError
    from .tissue import find_tissue_card

    try:
        return find_tissue_card(str(model_card))
    except ModelCardError:
        # The module's Model box lists every body-composition card, the L3 detector's too: a card that is not
        # a tissue model is not an error here, the installed tissue model is used instead.
        return None


def _keep_level(scene, volume_node, image, found, levels_table: bool = False) -> None:
    """Keep an ``L3Result`` on the volume node (attributes), and list its levels in a table node."""
    from .pipeline import slice_position_along_axial_axis

    if str(found.method) == "user":
        return
    mrml.set_attributes(volume_node, {
        "Index": int(found.index), "Level": found.level, "PositionMm": f"{found.position_mm:.2f}",
        "Confidence": f"{found.confidence:.3f}", "Method": found.method,
        "Levels": json.dumps({k: int(v) for k, v in (found.levels or {}).items()}),
        "Warnings": json.dumps([str(w) for w in (found.warnings or [])]),
        "FallbackUsed": "1" if found.fallback_used else "0"}, prefix=L3_ATTRIBUTE_PREFIX)
    if levels_table and found.levels:
        rows = [{"level": name, "slice_index": int(index),
                 "position_mm": slice_position_along_axial_axis(image, int(index)), "measured": name == found.level}
                for name, index in sorted(found.levels.items(), key=lambda item: -item[1])]
        table = mrml.metrics_to_table_node(rows, scene, name=mrml.new_segmentation_node_name(
            scene, f"{mrml.node_name(volume_node)} vertebra levels"), units={"position_mm": "mm"})
        mrml.set_attributes(volume_node, {"LevelsTableID": mrml.node_id(table)}, prefix=L3_ATTRIBUTE_PREFIX)


def _kept_level(volume_node):
    """The ``L3Result`` :func:`find_l3` kept on ``volume_node``, or None."""
    from .l3 import L3Result

    found = mrml.attributes(volume_node, L3_ATTRIBUTE_PREFIX)
    if found.get("Index") is None:
        return None
    return L3Result(index=int(found["Index"]), position_mm=float(found.get("PositionMm") or 0.0),
                    level=found.get("Level") or "L3", confidence=float(found.get("Confidence") or 0.0),
                    levels={k: int(v) for k, v in json.loads(found.get("Levels") or "{}").items()},
                    method=found.get("Method") or "", warnings=json.loads(found.get("Warnings") or "[]"),
                    fallback_used=found.get("FallbackUsed") == "1")


def _segmentation_node(scene, volume_node, labelmap, labels, segmentation_node=None):
    """A segmentation node holding ``labelmap``: the given node only when it is empty (never overwrite edits)."""
    reuse = segmentation_node is not None and mrml.segment_count(segmentation_node) == 0
    name = mrml.new_segmentation_node_name(scene, f"{mrml.node_name(volume_node)} body composition")
    return mrml.labelmap_to_segmentation_node(labelmap, labels, scene, reference_volume_node=volume_node, name=name,
                                              segmentation_node=segmentation_node if reuse else None)


def _describe_segmentation(node, level, slices, tissue_method, level_slices=None) -> None:
    source = "user" if str(level.method) == "user" else f"{level.method} (confidence {float(level.confidence):.2f})"
    by_level = {str(n): [int(k) for k in ks] for n, ks in (level_slices or {}).items()}
    mrml.set_attributes(node, {"SliceIndex": int(level.index), "Slab": len(slices),
                               "Slices": ",".join(map(str, slices)), "Level": level.level,
                               "LevelSlices": json.dumps(by_level) if len(by_level) > 1 else "",
                               "SliceSource": source, "TissueMethod": tissue_method},
                        prefix=SEGMENTATION_ATTRIBUTE_PREFIX)


def _result_segmentation(scene, volume_node, result, segmentation_node=None):
    node = _segmentation_node(scene, volume_node, result.labelmap, result.labels, segmentation_node)
    _describe_segmentation(node, result.l3, result.slices, result.tissue_method, result.level_slices)
    return node


def _result_table(scene, segmentation_node, rows, units, descriptions, cutoff_set, warnings, table_node=None):
    from ..io.common import flat_rows

    table = mrml.metrics_to_table_node(flat_rows(rows), scene,
                                       name=f"{mrml.node_name(segmentation_node)} measurements", units=units,
                                       descriptions=descriptions, table_node=table_node)
    mrml.set_attributes(table, {"MSKSeg.CutoffSet": str(cutoff_set),
                                "MSKSeg.Warnings": json.dumps([str(w) for w in warnings])})
    return table
