"""The vertebra table: names, order, regions, ribs, neighbours, and the VerSe / TotalSegmentator names."""
from __future__ import annotations

import pytest

from mskseg import anatomy


def test_vertebra_names_run_from_c1_to_s1_without_transitional_vertebrae_by_default():
    names = anatomy.vertebra_names()
    assert names[:2] == ["C1", "C2"] and names[-2:] == ["L5", "S1"]
    assert len(names) == 7 + 12 + 5 + 1 and "T13" not in names and "L6" not in names
    assert anatomy.vertebra_names("T11", "L2", include=("T13",)) == ["T11", "T12", "T13", "L1", "L2"]
    assert anatomy.vertebra_names("L4", "L6") == ["L4", "L5", "L6"]


def test_order_puts_transitional_vertebrae_between_their_neighbours():
    order = anatomy.vertebra_order
    assert order("C1") == 0 and order("T12") < order("T13") < order("L1") < order("L5") < order("L6") < order("S1")
    assert anatomy.sort_cranio_caudal(["L3", "T12", "S1", "C7"]) == ["C7", "T12", "L3", "S1"]


def test_regions_and_ribs():
    assert anatomy.region_of("C7") == "cervical" and anatomy.region_of("T13") == "thoracic"
    assert anatomy.region_of("L6") == "lumbar" and anatomy.region_of("S1") == "sacral"
    assert anatomy.carries_ribs("T1") and anatomy.carries_ribs("T12") and not anatomy.carries_ribs("L1")
    assert anatomy.vertebra("T13").transitional and not anatomy.vertebra("T12").transitional


def test_neighbours_skip_transitional_vertebrae_unless_asked_for():
    assert anatomy.level_above("L1") == "T12" and anatomy.level_below("T12") == "L1"
    assert anatomy.level_below("T12", include=("T13",)) == "T13"
    assert anatomy.level_below("L5") == "S1" and anatomy.level_below("L5", include=("L6",)) == "L6"
    assert anatomy.level_above("C1") is None and anatomy.level_below("S1") is None


@pytest.mark.parametrize("label,name", [(1, "C1"), (7, "C7"), (8, "T1"), (19, "T12"), (20, "L1"), (24, "L5"),
                                        (25, "L6"), (26, "S1"), (28, "T13")])
def test_verse_labels_map_both_ways(label, name):
    assert anatomy.vertebra_from_verse(label) == name and anatomy.verse_label(name) == label


def test_names_from_other_schemes():
    assert anatomy.totalseg_name("L3") == "vertebrae_L3"
    for text in ("vertebrae_L3", "vertebra_l3", "L3", " l3 "):
        assert anatomy.vertebra_from_name(text) == "L3"
    assert anatomy.vertebra_from_name("vertebrae_S1") == "S1"
    assert anatomy.vertebra_from_name("sacrum") is None and anatomy.vertebra_from_name("L7") is None
    assert anatomy.vertebra_from_verse(27) is None
