"""The ``bodycomp-mix`` training source: real-anatomy slices T12-L5 with body layers, mixed with phantoms."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import DATA, require
from mskseg.errors import MSKSegError
from mskseg.sarcopenia.labels import TISSUE_LABELS
from mskseg.synth import bodycomp_source as B
from mskseg.train import data as D

ANATOMY = DATA / "totalseg-labelmaps"


def test_registered_with_the_tissue_classes():
    info = D.synthetic_sources()["bodycomp-mix"]
    assert info.version == B.GENERATOR_VERSION
    assert B.BodycompMixSource.labels == dict(TISSUE_LABELS)


def test_without_label_maps_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MSKSEG_ANATOMY_DIR", str(tmp_path / "absent"))
    with pytest.raises(MSKSegError, match="needs real anatomy label maps") as err:
        B.BodycompMixSource({"spacing_mm": [1.0, 1.0]}, 0)
    assert "MSKSEG_ANATOMY_DIR" in err.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(MSKSegError, match="no names table"):
        B.BodycompMixSource({"spacing_mm": [1.0, 1.0]}, 0, anatomy_dir=tmp_path / "empty")


def test_names_table_is_read(tmp_path):
    table = tmp_path / "labelmap_total_v2.tsv"
    table.write_text("id\tname\n1\tspleen\n31\tvertebrae_L3\n")
    assert B.read_names(table) == {1: "spleen", 31: "vertebrae_L3"}


@pytest.fixture(scope="module")
def source():
    require(ANATOMY)
    return B.BodycompMixSource({"spacing_mm": [1.0, 1.0]}, 5, anatomy_dir=ANATOMY)


def test_subjects_cover_the_lumbar_spine(source):
    assert {s.name for s in source.subjects} >= {"s0327", "s0328"}
    for s in source.subjects:
        assert s.slices.size > 60  # T12 to L5 at 1.5 mm: well over 100 mm of slices


def test_real_slices_are_deterministic_and_plausible(source):
    rng = np.random.default_rng([5, 1])
    hu, lab = source.real_sample(rng)
    hu2, lab2 = source.real_sample(np.random.default_rng([5, 1]))
    np.testing.assert_array_equal(lab, lab2)
    np.testing.assert_allclose(hu, hu2)
    assert hu.shape == lab.shape and hu.ndim == 2
    assert set(np.unique(lab)) <= {0, 1, 2, 3, 4}
    counts = np.bincount(lab.ravel(), minlength=5)
    assert counts[1] > 2000 and counts[2] > 1000 and counts[3] > 500  # mm^2 at 1 mm: muscle, SAT, VAT present
    # the truth follows the tissue: muscle is denser than fat by far (whatever the scan noise)
    assert np.median(hu[lab == 1]) - np.median(hu[lab == 2]) > 80
    # skin is not subcutaneous fat: the outermost body pixels carry no label
    body = ndimage.binary_fill_holes(hu > -500)
    rim = body & ~ndimage.binary_erosion(body, iterations=1)
    assert (lab[rim] == 2).mean() < 0.2


def test_mix_gives_both_worlds_at_the_card_spacing(source):
    shapes = set()
    for index in range(6):
        hu, lab = source(index)
        assert hu.shape == lab.shape
        shapes.add(hu.shape)
    assert len(shapes) > 1  # pixel sizes and bodies vary


def test_group_source_labels_the_real_muscles_on_muscle_pixels():
    require(ANATOMY)
    groups = B.BodycompGroupsSource({"spacing_mm": [1.0, 1.0]}, 5, anatomy_dir=ANATOMY)
    tissues = B.BodycompMixSource({"spacing_mm": [1.0, 1.0]}, 5, anatomy_dir=ANATOMY)
    assert groups.labels == {1: "psoas", 2: "paraspinal", 3: "abdominal_wall"}
    seen = set()
    for index in range(4):
        _, g = groups(index)
        _, t = tissues(index)
        assert g.shape == t.shape
        assert np.all(t[g > 0] == 1)  # groups only on skeletal muscle pixels (same slice, same draw)
        seen |= set(np.unique(g).tolist())
    assert {2, 3} <= seen  # paraspinal and abdominal wall in every world; psoas below L1
