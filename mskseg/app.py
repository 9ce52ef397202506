"""What the three Slicer modules do, as functions over an MRML scene: list models, run one on a volume node,
measure and export a segmentation node. The module Logic classes call these, so everything here is tested
headless with slicer-core; the module files keep only widgets, parameter nodes, progress and error display.
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


# ------------------------------------------------------------------------------------------------ body composition
#: Volume node attributes where :func:`find_l3` keeps what it found (read by the module and by Segment/Measure).
L3_INDEX_ATTRIBUTE = "MSKSeg.L3.Index"
L3_ATTRIBUTE_PREFIX = "MSKSeg.L3."
#: Segmentation node attributes :func:`segment_body_composition` sets: slice measured, level, how found.
SLICE_INDEX_ATTRIBUTE = "MSKSeg.SliceIndex"


def find_l3(scene, volume_node, device: str = "auto", progress: Progress | None = None,
            allow_fallback: bool = False, cancel_token: CancelToken | None = None, levels_table: bool = True):
    """Find the L3 slice of the CT in ``volume_node``; returns the ``L3Result`` (``index`` = slice ``k``).

    The CT is checked first (CT in HU, a volume, a lumbar spine in the field of view). The result is kept on
    the volume node as attributes ``MSKSeg.L3.Index``, ``.Level``, ``.PositionMm``, ``.Confidence``,
    ``.Method``, ``.Levels`` (JSON: vertebra -> slice index) and ``.Warnings`` (JSON list), so that Segment and
    Measure use it; with ``levels_table`` a table node "<volume> vertebra levels" lists every level found.

    Raises:
        InvalidImageError: not a CT volume that can hold L3 (see :func:`mskseg.sarcopenia.l3.check_ct_for_l3`).
        L3NotFoundError: L3 is outside the field of view (and ``allow_fallback`` is False).
    """
    import json

    from . import mrml
    from .sarcopenia import l3 as l3_module

    image = mrml.volume_node_to_image(volume_node)
    l3_module.check_ct_for_l3(image)
    found = l3_module.detect_l3(image, device=device, progress=progress, cancel_token=cancel_token,
                                allow_fallback=allow_fallback)
    values = {"Index": int(found.index), "Level": found.level, "PositionMm": f"{found.position_mm:.2f}",
              "Confidence": f"{found.confidence:.3f}", "Method": found.method,
              "Levels": json.dumps({k: int(v) for k, v in (found.levels or {}).items()}),
              "Warnings": json.dumps([str(w) for w in (found.warnings or [])]),
              "FallbackUsed": "1" if found.fallback_used else "0"}
    for key, value in values.items():
        volume_node.SetAttribute(L3_ATTRIBUTE_PREFIX + key, str(value))
    if levels_table and found.levels:
        rows = [{"level": name, "slice_index": int(index),
                 "position_mm": _slice_position(image, int(index)), "measured": name == found.level}
                for name, index in sorted(found.levels.items(), key=lambda item: -item[1])]
        table = mrml.metrics_to_table_node(rows, scene, name=mrml.new_segmentation_node_name(
            scene, f"{volume_node.GetName()} vertebra levels"), units={"position_mm": "mm"})
        volume_node.SetAttribute(L3_ATTRIBUTE_PREFIX + "LevelsTableID", table.GetID())
    return found


def describe_l3(volume_node) -> str:
    """One line on what :func:`find_l3` found for ``volume_node`` (from its attributes), for the status line:
    ``"L3 at slice 57 (confidence 0.93). Levels: T12 91, L1 80, ... Check: ..."``; a note when not run yet."""
    import json

    get = lambda key: volume_node.GetAttribute(L3_ATTRIBUTE_PREFIX + key)  # noqa: E731
    if get("Index") is None:
        return "L3 not searched yet: press Find L3."
    text = f"{get('Level')} at slice {get('Index')} (confidence {float(get('Confidence') or 0):.2f})."
    if get("FallbackUsed") == "1":
        text = f"L3 is not in the field of view; {text[0].lower()}{text[1:]}"
    levels = json.loads(get("Levels") or "{}")
    if levels:
        text += " Levels: " + ", ".join(f"{n} {k}" for n, k in sorted(levels.items(), key=lambda t: -t[1])) + "."
    warnings = json.loads(get("Warnings") or "[]")
    if warnings:
        text += " Check: " + "; ".join(warnings) + "."
    return text


def segment_body_composition(scene, volume_node, slice_index: int, slab: int = 1, method: str = "auto",
                             muscle_groups: bool = False, device: str = "auto", progress: Progress | None = None,
                             segmentation_node=None, model_card: str | Path | None = None,
                             cancel_token: CancelToken | None = None):
    """Segment the body-composition tissues on the slab of ``slab`` slices centred on ``slice_index``.

    Returns a segmentation node with the segments skeletal muscle, subcutaneous fat, visceral fat and
    intermuscular fat (labels 1-4, as measured: each tissue inside its HU window), plus psoas, paraspinal and
    abdominal wall (5-7, painted over the muscle they belong to) when ``muscle_groups``. ``segmentation_node``
    is filled only when it is empty: a node that holds segments (perhaps corrected by hand) is never
    overwritten; a new, uniquely named node is made instead. The node records the slices, level and methods
    as attributes (``MSKSeg.SliceIndex``, ``MSKSeg.Slab``, ``MSKSeg.Level``, ``MSKSeg.SliceSource``,
    ``MSKSeg.TissueMethod``) for :func:`measure_body_composition`.

    Args:
        slice_index: axial slice ``k`` (numpy axis 0 of the volume's voxels) of the level, e.g. ``find_l3().index``.
        method: ``"auto"``, ``"network"`` or ``"rules"``.
        model_card: a tissue model card to use instead of the installed one (a card of another kind, e.g.
            the L3 detector's, is passed over).

    Raises:
        InvalidImageError: not a CT volume in HU, or ``slice_index`` outside the volume.
    """
    import numpy as np

    from . import mrml
    from .sarcopenia.metrics import MUSCLE_GROUPS
    from .sarcopenia.pipeline import TISSUE_LABELS, check_ct, slab_slices, windowed_labelmap
    from .sarcopenia.settings import BodyCompSettings
    from .sarcopenia.tissue import segment_tissues

    image = mrml.volume_node_to_image(volume_node)
    check_ct(image)
    n_slices = image.array.shape[0]
    if not 0 <= int(slice_index) < n_slices:
        from .errors import InvalidImageError

        raise InvalidImageError(f"slice {slice_index} is outside the volume (slices 0 .. {n_slices - 1})",
                                "press Find L3, or move the slice views to the level to measure")
    slices, _ = slab_slices(int(slice_index), max(int(slab), 1), n_slices)
    settings = BodyCompSettings()
    model = None
    if model_card:
        from .errors import ModelCardError
        from .sarcopenia.tissue import find_tissue_card

        try:
            model = find_tissue_card(str(model_card))
        except ModelCardError:
            # The module's Model box lists every body-composition card, the L3 detector's too: a card that
            # is not a tissue model is not an error here, the installed tissue model is used instead.
            model = None
    tissue = segment_tissues(image, slices, method=method, settings=settings, device=device, progress=progress,
                             cancel_token=cancel_token, muscle_groups=muscle_groups, model=model)
    labels = dict(tissue.labels or TISSUE_LABELS)
    labelmap = windowed_labelmap(image, tissue.labelmap, labels, slices, settings)
    if muscle_groups and tissue.group_labelmap is not None and tissue.group_labels:
        # Groups overlap the muscle: paint each over the muscle pixels it covers, so SMA stays the same
        # (the metrics count the group classes as skeletal muscle) and each group can be edited alone.
        array = np.array(labelmap.array, copy=True)
        muscle = array == next(v for v, n in labels.items() if n == "skeletal_muscle")
        next_value = max(labels) + 1
        for value, name in sorted(tissue.group_labels.items()):
            if name not in MUSCLE_GROUPS:
                continue
            array[muscle & (np.asarray(tissue.group_labelmap.array) == value)] = next_value
            labels[next_value] = name
            next_value += 1
        labelmap = labelmap.with_array(array)
    reuse = segmentation_node is not None and segmentation_node.GetSegmentation().GetNumberOfSegments() == 0
    name = mrml.new_segmentation_node_name(scene, f"{volume_node.GetName()} body composition")
    node = mrml.labelmap_to_segmentation_node(labelmap, labels, scene, reference_volume_node=volume_node,
                                              name=name, segmentation_node=segmentation_node if reuse else None)
    found_index = volume_node.GetAttribute(L3_INDEX_ATTRIBUTE)
    found_here = found_index is not None and int(found_index) == int(slice_index)
    level = volume_node.GetAttribute(L3_ATTRIBUTE_PREFIX + "Level") if found_here else "L3"
    if found_here:
        source = (f"{volume_node.GetAttribute(L3_ATTRIBUTE_PREFIX + 'Method')} (confidence "
                  f"{float(volume_node.GetAttribute(L3_ATTRIBUTE_PREFIX + 'Confidence') or 0):.2f})")
    else:
        source = "user"
    for key, value in ((SLICE_INDEX_ATTRIBUTE, int(slice_index)), ("MSKSeg.Slab", len(slices)),
                       ("MSKSeg.Slices", ",".join(map(str, slices))), ("MSKSeg.Level", level),
                       ("MSKSeg.SliceSource", source), ("MSKSeg.TissueMethod", tissue.method)):
        node.SetAttribute(key, str(value))
    return node


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
    import json

    import numpy as np

    from . import mrml
    from .errors import MSKSegError
    from .sarcopenia.metrics import measure_body_composition as measure
    from .sarcopenia.pipeline import flat_rows, slab_slices as slab_of
    from .sarcopenia.settings import BodyCompSettings, patient_from_metadata

    image = mrml.volume_node_to_image(volume_node)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, image)
    arr = np.asarray(labelmap.array)
    centre = segmentation_node.GetAttribute(SLICE_INDEX_ATTRIBUTE) or volume_node.GetAttribute(L3_INDEX_ATTRIBUTE)
    if centre is None:
        counts = np.count_nonzero(arr.reshape(arr.shape[0], -1), axis=1) if arr.ndim == 3 else None
        if counts is None or not counts.any():
            raise MSKSegError(f"segmentation '{segmentation_node.GetName()}' is empty: nothing to measure",
                              "segment the L3 slice first (Apply), or paint the tissues in the Segment Editor")
        centre = int(np.argmax(counts))
    n_slices = arr.shape[0] if arr.ndim == 3 else 1
    slices, _ = slab_of(int(centre), max(int(slab_slices), 1), n_slices)
    settings = BodyCompSettings(vat_hu=tuple(vat_hu)) if vat_hu else BodyCompSettings()
    patient = patient_from_metadata(image.metadata, height_m=height_m, weight_kg=weight_kg, sex=sex)
    result = measure(image, labelmap, labels, slices, patient, settings, cutoff_set,
                     level=segmentation_node.GetAttribute("MSKSeg.Level") or "L3",
                     method=segmentation_node.GetAttribute("MSKSeg.TissueMethod") or "user segmentation",
                     slice_source=segmentation_node.GetAttribute("MSKSeg.SliceSource") or "user")
    table = mrml.metrics_to_table_node(flat_rows(result.rows), scene,
                                       name=f"{segmentation_node.GetName()} measurements", units=result.units,
                                       descriptions=getattr(result, "descriptions", None), table_node=table_node)
    table.SetAttribute("MSKSeg.CutoffSet", str(result.cutoff_set))
    table.SetAttribute("MSKSeg.Warnings", json.dumps([str(w) for w in result.warnings]))
    return table


def _slice_position(image, index: int) -> float:
    from .sarcopenia.pipeline import slice_position_mm

    return slice_position_mm(image, index)
