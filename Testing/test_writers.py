"""NIfTI label maps, metrics CSV/JSON, PNG report, one-call export and segment statistics."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mskseg.demo import DEMO_LABELS, demo_ct
from mskseg.errors import InvalidImageError, OutputExistsError
from mskseg.image import Image
from mskseg.io import read_image
from mskseg.io.export import export_result
from mskseg.io.writers import (pick_report_slices, write_metrics_csv, write_metrics_json, write_nifti_labelmap,
                               write_overlay_png)
from mskseg.measure import segment_statistics


def test_nifti_labelmap_overlays_the_source_and_names_its_labels(tmp_path, oblique_ct, oblique_labels):
    lab, labels = oblique_labels
    path = write_nifti_labelmap(tmp_path / "lab.nii.gz", lab, labels, source=oblique_ct)
    back = read_image(path)
    assert back.same_grid(oblique_ct) and np.array_equal(back.array, lab.array)
    side = json.loads((tmp_path / "lab.labels.json").read_text())
    assert {d["value"]: d["name"] for d in side} == labels


def test_metrics_csv_has_units_in_header_and_empty_cells_for_missing(tmp_path):
    rows = [{"Segment": "Muscle", "area_cm2": 150.123456789, "flag": True}, {"Segment": "Fat", "area_cm2": None}]
    p = write_metrics_csv(tmp_path / "m.csv", rows, units={"area_cm2": "cm2"})
    got = list(csv.reader(p.open()))
    assert got[0] == ["Segment", "area_cm2 [cm2]", "flag"]
    assert got[1] == ["Muscle", "150.123", "true"] and got[2] == ["Fat", "", ""]
    with pytest.raises(OutputExistsError):
        write_metrics_csv(p, rows)


def test_metrics_json_converts_numpy_and_nan(tmp_path):
    p = write_metrics_json(tmp_path / "m.json", {"a": np.float32(1.5), "b": float("nan"), "c": np.arange(2)})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": None, "c": [0, 1]}


def test_segment_statistics_are_exact_on_a_hand_made_map():
    img = Image(np.array([[[10, 20], [30, 40]], [[-5, -5], [0, 0]]], np.int16), (0.5, 2.0, 3.0))
    lab = img.with_array(np.array([[[1, 1], [2, 0]], [[1, 0], [0, 0]]], np.uint8))
    rows = {r["class"]: r for r in segment_statistics(img, lab, {1: "skeletal_muscle", 2: "visceral_fat",
                                                                3: "intermuscular_fat"})}
    m = rows["skeletal_muscle"]
    assert m["voxel_count"] == 3 and m["volume_mm3"] == pytest.approx(9.0) and m["volume_cm3"] == pytest.approx(0.009)
    assert m["mean"] == pytest.approx(25 / 3) and m["stdev"] == pytest.approx(np.std([10, 20, -5], ddof=1))
    assert rows["visceral_fat"]["mean"] == 30 and rows["visceral_fat"]["stdev"] == 0.0
    assert rows["intermuscular_fat"]["voxel_count"] == 0 and rows["intermuscular_fat"]["mean"] is None


def test_2d_statistics_report_areas():
    img = Image(np.full((4, 5), 40, np.int16), (0.5, 0.8))
    lab = img.with_array((np.arange(20).reshape(4, 5) < 10).astype(np.uint8))
    (row,) = segment_statistics(img, lab, {1: "skeletal_muscle"})
    assert row["area_mm2"] == pytest.approx(10 * 0.4) and row["area_cm2"] == pytest.approx(0.04)


def test_overlay_png_is_written_with_the_slices_that_hold_labels(tmp_path):
    from PIL import Image as PILImage

    ct, lab = demo_ct(n_slices=6, size=96)
    ks = pick_report_slices(lab)
    assert all(lab.array[k].any() for k in ks)
    p = write_overlay_png(tmp_path / "r.png", ct, lab, DEMO_LABELS, title="t", table=[{"a": 1.0}])
    im = PILImage.open(p)
    assert im.size[0] > 300 and np.asarray(im).std() > 10  # a real picture, not a blank canvas


def test_export_result_writes_every_format_and_refuses_partial_overwrite(tmp_path, oblique_ct, oblique_labels):
    lab, labels = oblique_labels
    files = export_result(tmp_path, oblique_ct, lab, labels, formats=["seg.nrrd", "nifti", "csv", "json", "png"])
    assert sorted(p.name for p in files) == sorted(["segmentation.seg.nrrd", "segmentation.nii.gz", "metrics.csv",
                                                    "metrics.json", "report.png"])
    stamp = {p: p.stat().st_mtime_ns for p in files}
    with pytest.raises(OutputExistsError):
        export_result(tmp_path, oblique_ct, lab, labels)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())


def test_export_dicom_seg_needs_dicom_input(tmp_path, oblique_ct, oblique_labels):
    lab, labels = oblique_labels
    with pytest.raises(InvalidImageError, match="DICOM"):
        export_result(tmp_path, oblique_ct, lab, labels, formats=["dicom-seg"])
    # the default list skips DICOM-SEG for non-DICOM input instead of failing
    files = export_result(tmp_path, oblique_ct, lab, labels)
    assert not any(p.suffix == ".dcm" for p in files)


def test_to_jsonable_is_the_one_json_converter(tmp_path):
    import dataclasses
    import json
    from pathlib import Path

    from mskseg.io.common import to_jsonable

    @dataclasses.dataclass
    class Window:
        low: float
        high: float

    value = {1: (np.int16(3), np.float32(0.5)), "w": Window(-29.0, 150.0), "nan": float("nan"),
             "arr": np.array([[1, 2]]), "flag": np.bool_(True), "path": Path("/x"), "inf": np.float64("inf")}
    plain = to_jsonable(value)
    assert plain == {"1": [3, 0.5], "w": {"low": -29.0, "high": 150.0}, "nan": None, "arr": [[1, 2]],
                     "flag": True, "path": "/x", "inf": None}
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain
