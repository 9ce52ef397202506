"""Warnings that can be trusted: level names at the edges of the field of view, the anchors of the vertebral
count (sacrum, last rib), transitional flags only on clear evidence, and every cross-check disagreement in the
terminal output, the report and metrics.json.

Hand-made inputs test each rule alone; the pipeline tests force a disagreement and look for it in every
output; the real CTs of ``../shared/data`` (skipped when absent) are normal anatomy and must carry no
transitional flag.
"""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DATA, require

from mskseg.spine import levels as spine_levels
from mskseg.spine import transitional
from mskseg.spine.levels import VertebraLevels, count_warning, cross_check_level, numbering_offset, trim_levels
from mskseg.spine.rules import RuleLevels

#: Level centres (mm) 30 mm apart, T10 at the top: a normal spine as the detector names it.
NAMES = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
SPINE = {name: 300.0 - 30.0 * i for i, name in enumerate(NAMES)}


def _proj(z_lo: float = 50.0, z_hi: float = 320.0, step: float = 2.0):
    z = np.arange(z_lo, z_hi + step / 2, step)
    return SimpleNamespace(z_mm=z, k_of_row=np.arange(len(z)))


def _found(levels_mm=None, anchors=None, rules=None, network=True) -> VertebraLevels:
    levels_mm = dict(SPINE if levels_mm is None else levels_mm)
    return VertebraLevels(levels_mm, {n: 0.8 for n in levels_mm}, "network (test)", _proj(),
                          network=SimpleNamespace() if network else None, rules=rules,
                          transitional={"findings": [], "measurements": {}, "anchors": anchors or {}})


def _rules(levels: dict[str, float], last_rib: float | None = None, sacrum: float | None = None) -> RuleLevels:
    return RuleLevels(levels, [], [], sacrum, last_rib, None, None, None, [], 200.0)


def _anchors(rib_at=None, sacrum_at=None, sacrum_seen=None):
    return {"last_rib": {"seen": rib_at is not None, "at": rib_at, "from": "test"},
            "sacrum": {"seen": sacrum_at is not None if sacrum_seen is None else sacrum_seen, "at": sacrum_at,
                       "from": "test"}}


# ------------------------------------------------------------------------------------------- edges of the view
def test_a_vertebra_only_partly_in_view_is_left_unnamed():
    levels = dict(SPINE)
    conf = {n: 0.8 for n in levels}
    # the field of view ends 5 mm above T10's centre and 8 mm below L5's: both bodies are cut
    unnamed = trim_levels(levels, conf, SPINE["L5"] - 8.0, SPINE["T10"] + 5.0)
    assert set(unnamed) == {"T10", "L5"}
    assert "partly in the field of view" in unnamed["T10"] and "top" in unnamed["T10"]
    assert "bottom" in unnamed["L5"]
    assert set(levels) == set(NAMES) - {"T10", "L5"} and set(conf) == set(levels)


def test_a_level_placed_closer_than_a_vertebra_to_its_neighbour_is_left_unnamed():
    levels = {**SPINE, "T12": SPINE["L1"] + 5.0}  # "T12 two slices above L1"
    conf = {n: 0.8 for n in levels}
    conf["T12"] = 0.3
    unnamed = trim_levels(levels, conf, 0.0, 400.0)
    assert list(unnamed) == ["T12"] and "L1" in unnamed["T12"]
    assert "L1" in levels and "T12" not in levels


def test_whole_vertebrae_in_view_keep_their_names():
    levels = dict(SPINE)
    assert trim_levels(levels, {n: 0.8 for n in levels}, 0.0, 400.0) == {}
    assert levels == SPINE


# ------------------------------------------------------------------------------------------- anchors of the count
def test_no_sacrum_and_no_last_rib_in_view_says_the_names_may_be_one_off():
    sentence, factor = count_warning(_found(anchors=_anchors()))
    assert sentence is not None and factor < 1.0
    assert "no sacrum and no last rib" in sentence and "one off" in sentence
    assert "transitional" not in sentence  # not a transitional flag


@pytest.mark.parametrize("anchors", [_anchors(rib_at="T12"), _anchors(sacrum_at="S1"),
                                     _anchors(rib_at="T12", sacrum_at="S1")])
def test_an_anchor_that_confirms_the_names_gives_no_warning(anchors):
    assert count_warning(_found(anchors=anchors)) == (None, 1.0)


@pytest.mark.parametrize("anchors,words", [(_anchors(rib_at="L1"), ("named L1", "13 rib pairs", "one off")),
                                           (_anchors(rib_at="T11"), ("named T11", "11 rib pairs", "one off")),
                                           (_anchors(sacrum_at="L5"), ("sacralised L5", "one off")),
                                           (_anchors(sacrum_at="below S1"), ("sixth lumbar-type", "one off"))])
def test_one_anchor_off_by_a_level_with_the_other_out_of_view_is_an_ambiguity_not_a_flag(anchors, words):
    sentence, factor = count_warning(_found(anchors=anchors))
    assert sentence is not None and factor < 1.0
    assert all(w in sentence for w in words), sentence
    assert "transitional" not in sentence


def test_rule_based_last_rib_on_the_named_t12_anchors_the_count():
    anchors = transitional.count_anchors(SPINE, {}, last_rib_mm=SPINE["T12"] + 3.0)
    assert anchors["last_rib"] == {"seen": True, "at": "T12", "from": "rule-based last rib"}
    assert anchors["sacrum"]["seen"] is False


def test_a_rule_based_last_rib_far_from_t11_t12_l1_is_a_failed_rule_not_an_anchor():
    anchors = transitional.count_anchors(SPINE, {}, last_rib_mm=SPINE["L4"])
    assert anchors["last_rib"]["seen"] is False


def test_rib_reaches_anchor_only_when_clear():
    clear = {"rib_reach_T12_mm": [90.0, 85.0], "rib_reach_L1_mm": [30.0, 0.0]}
    assert transitional.count_anchors(SPINE, clear)["last_rib"]["at"] == "T12"
    # a long transverse process of L1 (40-46 mm) is neither a rib nor clearly none: no anchor from the reaches
    unclear = {"rib_reach_T12_mm": [90.0, 85.0], "rib_reach_L1_mm": [46.0, 41.0]}
    assert transitional.count_anchors(SPINE, unclear)["last_rib"]["seen"] is False


def test_sacral_alae_place_the_sacrum_on_the_named_levels():
    below = transitional.count_anchors(SPINE, {"ala_fraction_L5": 0.02, "ala_fraction_below_L5": 0.8})
    assert below["sacrum"]["at"] == "S1"
    fused = transitional.count_anchors(SPINE, {"ala_fraction_L5": 0.6, "ala_fraction_below_L5": 0.9})
    assert fused["sacrum"]["at"] == "L5"
    absent = transitional.count_anchors(SPINE, {"ala_fraction_L5": 0.02, "ala_fraction_below_L5": 0.05})
    assert absent["sacrum"]["seen"] is False  # no alae is not a sacrum seen
    rules = transitional.count_anchors(SPINE, {}, sacrum_top_mm=SPINE["L5"] - 15.0)
    assert rules["sacrum"]["at"] == "S1" and rules["sacrum"]["from"] == "rule-based sacrum"


# ------------------------------------------------------------------------------------------- transitional flags
def test_rib_findings_need_the_sacrum_below_l5_and_sacral_findings_the_last_rib_on_t12():
    ribs, sacral = ["13 rib pairs: L1 carries ribs"], ["six lumbar-type vertebrae: a mobile vertebra ..."]
    both = _anchors(rib_at="T12", sacrum_at="S1")
    assert transitional.confirmed_findings(ribs, sacral, both)[0] == ribs + sacral
    findings, unconfirmed = transitional.confirmed_findings(ribs, sacral, _anchors())
    assert findings == [] and len(unconfirmed) == 2
    assert "no sacrum" in unconfirmed[0] and "no last rib" in unconfirmed[1]
    # a rib-bearing "L1" with no sacrum in view: names one level off explain it as well as a 13th rib
    assert transitional.confirmed_findings(ribs, [], _anchors(rib_at="L1"))[0] == []
    # alae missing below "L5" with no last rib on T12: names one level off explain it as well
    assert transitional.confirmed_findings([], sacral, _anchors(sacrum_at="S1"))[0] == []


# ------------------------------------------------------------------------------------------- detector vs rules
def test_rules_that_number_the_vertebrae_differently_are_a_disagreement_even_without_the_level():
    # the rules call the detector's L4 "T12" (their last rib put low on the spine) and have no L3
    rules = _rules({"T12": SPINE["L4"] + 2.0, "T11": SPINE["L3"] + 2.0}, last_rib=SPINE["L4"])
    assert numbering_offset(SPINE, rules.levels)[0] == 4
    check, factor, warning = cross_check_level(_found(rules=rules), "L3")
    assert check["agreement"] is False and check["numbering_offset"] == 4
    assert warning is not None and factor < 1.0
    assert "numbers the vertebrae differently" in warning and "L4" in warning and "T12" in warning
    assert check["disagreement_warning"] == warning


def test_rules_that_agree_give_no_warning():
    rules = _rules({n: z + 1.0 for n, z in SPINE.items() if n != "T10"}, last_rib=SPINE["T12"])
    check, factor, warning = cross_check_level(_found(rules=rules), "L3")
    assert check["agreement"] is True and warning is None and factor == 1.0
    assert check["disagreement_warning"] is None


def test_rules_one_level_off_at_l3_warn():
    rules = _rules({n: z - 30.0 for n, z in SPINE.items()})
    check, factor, warning = cross_check_level(_found(rules=rules), "L3")
    assert check["agreement"] is False and warning is not None and "anatomical-rule count" in warning


# ------------------------------------------------------------------------------------------- every output
@pytest.fixture(scope="module")
def disagreeing_result(torso_ct):
    """The pipeline on a small torso with both cross-checks forced to disagree: the rule-based count one
    vertebra away from the detector, the tissue Dice threshold above any Dice."""
    from mskseg.sarcopenia import l3 as l3_module
    from mskseg.sarcopenia import tissue
    from mskseg.sarcopenia.pipeline import run_sarcopenia

    original = l3_module.cross_check_level

    def disagree(found, level):
        check, _, _ = original(found, level)
        warning = f"the anatomical-rule count puts {level} 31 mm lower (about 1.0 vertebra); check the level"
        check.update(agreement=False, difference_mm=-31.0, disagreement_warning=warning)
        return check, 0.5, warning

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(l3_module, "cross_check_level", disagree)
        mp.setattr(tissue, "DISAGREEMENT_DICE", 1.01)
        result = run_sarcopenia(torso_ct, method="rules", device="cpu")
    return result


def test_disagreements_are_in_the_warnings_and_in_metrics_json(disagreeing_result, tmp_path, torso_ct):
    from mskseg.sarcopenia.export import export_sarcopenia

    result = disagreeing_result
    assert any("anatomical-rule count puts L3" in w for w in result.warnings)
    assert any("network and the rule-based method disagree" in w for w in result.warnings)
    written = export_sarcopenia(tmp_path, torso_ct, result, overwrite=True)
    metrics = json.loads(next(p for p in written if p.name == "metrics.json").read_text())
    checks = {d["check"]: d["warning"] for d in metrics["disagreements"]}
    assert set(checks) == {"levels", "tissues"}
    assert all(text in metrics["warnings"] for text in checks.values())
    assert metrics["level"]["cross_check"]["disagreement_warning"] == checks["levels"]


def test_disagreements_are_printed_in_the_terminal(disagreeing_result, capsys):
    from mskseg.sarcopenia.cli import _print_result

    _print_result(dataclasses.replace(disagreeing_result, warnings=[]), [], 0.0, 0.0)
    out = capsys.readouterr().out
    assert "warning    the anatomical-rule count puts L3" in out
    assert "warning    the network and the rule-based method disagree" in out


def test_report_never_says_no_warnings_when_a_check_disagrees(disagreeing_result, tmp_path, torso_ct):
    from mskseg.sarcopenia import report

    # even a result whose warning list lost the sentences lists every disagreement
    bare = dataclasses.replace(disagreeing_result, warnings=[])
    notes = [text for heading, text in report._notes(bare) if heading == "Warnings"]
    assert "none" not in notes
    assert any("anatomical-rule count" in t for t in notes) and any("disagree on" in t for t in notes)
    # and a plain object with the checks but no helper methods (e.g. from another caller)
    plain = SimpleNamespace(**{f.name: getattr(bare, f.name) for f in dataclasses.fields(bare)})
    assert report.report_warnings(plain) == bare.all_warnings()
    assert report.write_sarcopenia_report(tmp_path / "report.png", torso_ct, bare).stat().st_size > 0


def test_report_says_none_only_without_warnings_or_disagreements(disagreeing_result):
    from mskseg.sarcopenia import report

    l3 = dataclasses.replace(disagreeing_result.l3, cross_check={"available": True, "disagreement_warning": None})
    calm = dataclasses.replace(disagreeing_result, warnings=[], l3=l3, tissue_cross_check={"disagreement": False})
    assert ("Warnings", "none") in report._notes(calm)


# ------------------------------------------------------------------------------------------- real normal anatomy
def _real(path):
    from mskseg.io import read_image
    from mskseg.orientation import to_canonical

    return to_canonical(read_image(require(path)))[0]


_REAL: dict = {}


def _detect_real(name: str):
    from mskseg.sarcopenia.l3 import detect_l3

    paths = {"ircad": DATA / "ircad-abdomen-ct17" / "dicom", "t12": DATA / "ct-dicom-t12" / "dicom",
             **{f"verse{n}": DATA / "verse-crops" / f"sub-verse{n}_ct.nii.gz" for n in ("006", "007", "008")}}
    if name not in _REAL:
        _REAL[name] = detect_l3(_real(paths[name]), device="cpu", allow_fallback=True)
    return _REAL[name]


@pytest.mark.parametrize("name", ["ircad", "t12", "verse006", "verse007", "verse008"])
def test_no_transitional_flag_on_normal_real_anatomy(name):
    result = _detect_real(name)
    assert result.cross_check["transitional"]["findings"] == [], result.cross_check["transitional"]
    assert not any("transitional" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize("name", ["t12", "verse006", "verse007"])
def test_real_fields_of_view_without_anchor_say_the_names_may_be_one_off(name):
    """ct-dicom-t12 (40 mm of T11/T12), the verse crops (no sacrum, ribs cut off by the crop): nothing anchors
    the count, and the detector is one level off on three of them."""
    result = _detect_real(name)
    assert result.cross_check["names_uncertain"] is True
    assert any("no sacrum and no last rib" in w for w in result.warnings), result.warnings


def test_ircad_is_anchored_by_its_last_rib_and_not_called_13_rib_pairs():
    result = _detect_real("ircad")
    assert result.cross_check["count_anchors"]["last_rib"]["at"] == "T12"
    assert result.cross_check["names_uncertain"] is False
    assert not any("13 rib pairs" in w for w in result.warnings)


def test_demo_ct_has_no_warning_about_its_levels():
    from mskseg.sarcopenia.l3 import detect_l3
    from mskseg.synth.torso import make_demo_ct

    result = detect_l3(make_demo_ct(0).image, device="cpu")
    assert result.cross_check["agreement"] is True
    assert result.cross_check["count_anchors"]["last_rib"]["at"] == "T12"
    assert result.cross_check["count_anchors"]["sacrum"]["at"] == "S1"
    assert result.warnings == []
