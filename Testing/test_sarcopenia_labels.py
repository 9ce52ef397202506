"""One definition per concept: tissue and muscle-group labels, HU windows in the help texts."""
from __future__ import annotations

from mskseg.sarcopenia import labels, metrics, pipeline, tissue
from mskseg.sarcopenia.settings import (VAT_HU_WIDE, BodyCompSettings, describe_windows, windows_help_html,
                                        windows_help_text)


def test_tissue_and_group_labels_have_one_definition():
    assert metrics.TISSUE_LABELS is labels.TISSUE_LABELS
    assert pipeline.TISSUE_LABELS is labels.TISSUE_LABELS
    assert tissue.TISSUE_LABELS is labels.TISSUE_LABELS
    assert tissue.GROUP_LABELS is labels.GROUP_LABELS
    assert metrics.MUSCLE_GROUPS == tuple(labels.GROUP_LABELS.values()) == ("psoas", "paraspinal", "abdominal_wall")
    assert not set(labels.TISSUE_LABELS) & set(labels.GROUP_LABELS)  # groups overlap muscle: other values


def test_window_texts_are_generated_from_the_settings():
    s = BodyCompSettings()
    text = describe_windows()
    assert text == (f"skeletal muscle {s.muscle_hu[0]:g}..+{s.muscle_hu[1]:g}; IMAT and SAT "
                    f"{s.sat_hu[0]:g}..{s.sat_hu[1]:g}; VAT {s.vat_hu[0]:g}..{s.vat_hu[1]:g}")
    assert describe_windows(BodyCompSettings(vat_hu=VAT_HU_WIDE)).endswith("IMAT, SAT and VAT -190..-30")
    assert text in windows_help_text() and f"{VAT_HU_WIDE[0]:g},{VAT_HU_WIDE[1]:g}" in windows_help_text()
    html = windows_help_html()
    assert html.startswith("<p>") and html.endswith("</p>") and describe_windows(muscle_name="muscle") in html


def test_cli_help_shows_the_settings_windows():
    from mskseg.sarcopenia.cli import epilog

    assert windows_help_text() in epilog()
