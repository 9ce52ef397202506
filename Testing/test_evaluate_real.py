"""The real-data harness (scripts/evaluate_real.py): its counts on hand-made arrays, and a run over the small
real cases (skipped without ../shared/data)."""
from __future__ import annotations

import importlib.util
import sys
import numpy as np
import pytest

from conftest import DATA, REPO, require


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("evaluate_real", REPO / "scripts" / "evaluate_real.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_real"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_counts_on_hand_made_arrays(harness):
    pred = np.zeros((10, 10), np.uint8)
    ref = np.zeros((10, 10), bool)
    ref[2:4, 2:7] = True  # 10 reference voxels
    pred[2, 2:6] = harness.MUSCLE  # 4 of them muscle
    pred[3, 2] = harness.SAT  # 1 fat
    assert harness.share(pred, ref, harness.MUSCLE_VALUES) == pytest.approx(0.4)
    assert harness.share(pred, ref, harness.FAT_VALUES) == pytest.approx(0.1)
    assert np.isnan(harness.share(pred, np.zeros_like(ref), harness.MUSCLE_VALUES))
    assert harness.dice(pred == harness.MUSCLE, ref) == pytest.approx(2 * 4 / (4 + 10))
    body = np.zeros((10, 10), bool)
    body[:, 1:9] = True  # midline between columns 4 and 5
    psoas = np.zeros((10, 10), np.uint8)
    psoas[5, 2:4] = harness.PSOAS  # 2 pixels on the image's left: the patient's right
    psoas[5, 6] = harness.PSOAS
    assert harness.psoas_sides(psoas, body, 1.0) == (2.0, 1.0)
    labels = np.zeros((5, 4, 4), np.uint8)
    labels[1:3, 1, 1] = 22  # VerSe L3 on slices 1 and 2
    assert harness.centres(labels, {"L3": 22, "L4": 23}, axis=0) == {"L3": 1.5}


def test_the_harness_runs_on_the_small_real_cases(harness, tmp_path):
    data = require(DATA / "verse-crops").parent
    require(DATA / "dcmqi-ct3slice")
    results = harness.case_verse(data, "rules", None) + [harness.case_dcmqi(data, "rules", None)]
    assert [r.name for r in results] == ["verse006", "verse007", "verse008", "dcmqi-ct3slice"]
    levels = {(row["case"], row["level"]): row for r in results for row in r.levels}
    assert levels[("verse008", "L3")]["error_mm"] < 3.0  # the lumbar spine fully in view
    assert "liver_as_muscle" in results[-1].rows[0].values
    harness.write_montage(tmp_path / "montage.png", [p for r in results for p in r.panels])
    assert (tmp_path / "montage.png").stat().st_size > 10_000
    assert any("levels vs truth" in line for line in harness.summarise(results))
