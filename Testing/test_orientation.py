"""Any storage orientation: the same CT stored in eight ways gives the same level, the same labels on the same
physical voxels and the same measurements, for the HU rules and for the tissue network; results come back on
the grid the CT was stored on; the report is drawn in radiological convention."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.errors import InvalidImageError
from mskseg.image import Image
from mskseg.orientation import axial_index_axis, labelmap_to_source, reorientation_of, to_canonical
from mskseg.sarcopenia.pipeline import run_sarcopenia

#: DICOM orientation codes of the storages tested (SimpleITK's DICOMOrient: LPS = identity direction):
#: axial LPS (DICOM), RAS and LAS (NIfTI), flipped slice order, sagittal P-I-R (VerSe), coronal, permutations.
STORAGES = ("LPS", "RAS", "LAS", "LPI", "PIR", "LSA", "PLS", "SRA")
METRICS = ("SMA_cm2", "SAT_cm2", "VAT_cm2", "IMAT_cm2", "SMD_HU")


def stored_as(image: Image, code: str) -> Image:
    """``image`` with its voxels stored in the orientation ``code`` (same voxels, same physical places)."""
    out = Image.from_sitk(sitk.DICOMOrient(image.to_sitk(), code), dict(image.metadata))
    return out


def physical_labels(result, stored: Image) -> np.ndarray:
    """The result's label map in canonical voxel order: equal arrays = labels on the same physical voxels."""
    assert result.labelmap.same_grid(stored) and result.labelmap.array.shape == stored.array.shape
    return np.asarray(to_canonical(result.labelmap)[0].array)


# ------------------------------------------------------------------------------------------------ the mapping
@pytest.mark.parametrize("code", STORAGES)
def test_canonical_orientation_is_the_same_voxels_whatever_the_storage(oblique_ct, code):
    reference, _ = to_canonical(oblique_ct)
    stored = stored_as(oblique_ct, code)
    canon, how = to_canonical(stored)
    assert np.array_equal(canon.array, reference.array)
    assert np.allclose(canon.spacing, reference.spacing) and np.allclose(canon.origin, reference.origin, atol=1e-4)
    assert np.allclose(canon.direction, reference.direction, atol=1e-6)
    # every voxel keeps its physical place: the centre of canonical voxel (i, j, k) is the same point
    for ijk in ([0, 0, 0], [3, 7, 2], [23, 19, 5]):
        point = canon.index_to_physical(np.asarray(ijk, float))
        back = stored.physical_to_index(point)
        assert np.allclose(back, np.round(back), atol=1e-4)
        i, j, k = np.round(back).astype(int)
        assert stored.array[k, j, i] == canon.array[ijk[2], ijk[1], ijk[0]]
    assert np.array_equal(how.to_source(canon.array), stored.array)
    labels = labelmap_to_source(canon.with_array(canon.array > 40), stored, how)
    assert labels.same_grid(stored) and np.array_equal(labels.array, stored.array > 40)


def test_canonical_axes_point_left_posterior_superior(oblique_ct):
    canon, _ = to_canonical(stored_as(oblique_ct, "PIR"))
    d = canon.direction
    assert d[0, 0] > 0.7 and d[1, 1] > 0.7 and d[2, 2] > 0.7  # i -> left, j -> posterior, k -> superior


def test_slice_indices_map_along_the_stored_axial_axis(oblique_ct):
    stored = stored_as(oblique_ct, "PIR")  # axes P, I, R: the axial axis is numpy axis 1, stored head to foot
    how = reorientation_of(stored)
    assert how.axial_axis == 1
    n = stored.array.shape[1]
    assert [how.canonical_slice(k) for k in range(n)] == list(range(n))[::-1]
    assert all(how.source_slice(how.canonical_slice(k)) == k for k in range(n))


@pytest.mark.parametrize("code", STORAGES)
def test_slicer_views_and_results_count_slices_along_the_same_axis(oblique_ct, code):
    """SarcopeniaSeg's slice views use axial_index_axis on Slicer's IJK-to-RAS directions; the results count
    slice indices along reorientation_of's axial axis: they must be the same axis (RAS flips signs only)."""
    stored = stored_as(oblique_ct, code)
    ras_directions = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(stored.direction)
    assert axial_index_axis(ras_directions) == 2 - reorientation_of(stored).axial_axis


def test_a_grid_rotated_by_45_degrees_gets_one_axis_each():
    c = np.sqrt(0.5)
    direction = np.array([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]])  # i and j equally close to x and y
    image = Image(np.arange(60.0).reshape(3, 4, 5), (1, 1, 1), direction=direction)
    canon, how = to_canonical(image)
    assert sorted(how.source_axes) == [0, 1, 2]
    assert np.array_equal(how.to_source(canon.array), image.array)


# ------------------------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def reference_rules(torso_ct):
    """The run on the CT as made (stored LPS: the canonical orientation)."""
    assert reorientation_of(torso_ct).is_identity
    return run_sarcopenia(torso_ct, method="rules", device="cpu")


@pytest.mark.parametrize("code", STORAGES)
def test_rules_give_the_same_level_labels_and_metrics_in_every_storage(torso_ct, reference_rules, code):
    stored = stored_as(torso_ct, code)
    result = run_sarcopenia(stored, method="rules", device="cpu")
    reference = reference_rules
    assert result.l3.level == reference.l3.level
    assert abs(result.l3.position_mm - reference.l3.position_mm) < 1e-3
    how = reorientation_of(stored)
    assert [how.canonical_slice(k) for k in result.slices] == reference.slices  # reference is canonical (LPS)
    assert np.array_equal(physical_labels(result, stored), reference.labelmap.array)
    for key in METRICS:
        a, b = result.headline_row()[key], reference.headline_row()[key]
        assert a == pytest.approx(b, rel=0.005, abs=1e-6), (code, key)


@pytest.fixture(scope="module")
def tissue_card():
    from mskseg.sarcopenia.tissue import find_tissue_card

    card = find_tissue_card()
    if card is None:
        pytest.skip("no tissue network card is installed")
    return card


@pytest.mark.parametrize("code", ("LPS", "RAS", "LAS", "LPI", "PIR", "PLS"))
def test_network_gives_the_same_labels_and_metrics_in_every_storage(torso_sample, tissue_card, code):
    ct = torso_sample.image
    reference = run_sarcopenia(ct, level_index=torso_sample.l3_index, method="network", device="cpu")
    stored = stored_as(ct, code)
    how = reorientation_of(stored)
    result = run_sarcopenia(stored, level_index=how.source_slice(torso_sample.l3_index), method="network",
                            device="cpu")
    assert result.tissue_method == reference.tissue_method == "network"
    assert np.array_equal(physical_labels(result, stored), reference.labelmap.array)
    for key in METRICS:
        a, b = result.headline_row()[key], reference.headline_row()[key]
        assert a == pytest.approx(b, rel=0.005, abs=1e-6), (code, key)


def test_a_sagittally_stored_ct_is_a_volume_not_an_error(torso_ct, reference_rules):
    stored = stored_as(torso_ct, "PIR")
    result = run_sarcopenia(stored, method="rules", device="cpu")
    assert result.l3.level == "L3"
    # the measured slice lies across the stored axis 1 (inferior -> superior is axis 1 of a P, I, R storage)
    labelled_axis1 = np.flatnonzero(np.asarray(result.labelmap.array).any(axis=(0, 2)))
    assert list(labelled_axis1) == result.slices


def test_report_is_radiological_whatever_the_storage(torso_ct, tmp_path):
    """The axial panel of a RAS-stored CT is the same picture as that of the LPS-stored CT."""
    from PIL import Image as PILImage

    from mskseg.sarcopenia.report import write_sarcopenia_report

    pictures = []
    for code in ("LPS", "RAS"):
        stored = stored_as(torso_ct, code)
        result = run_sarcopenia(stored, method="rules", device="cpu")
        path = write_sarcopenia_report(tmp_path / f"{code}.png", stored, result)
        pictures.append(np.asarray(PILImage.open(path).convert("L"), np.float32))
    assert pictures[0].shape == pictures[1].shape
    # the pictures differ only in text (the slice number as stored may differ); the images are the same
    assert np.mean(np.abs(pictures[0] - pictures[1]) > 8) < 0.01
