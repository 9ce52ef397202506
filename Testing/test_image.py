"""The Image type: geometry conventions, validation of bad geometry, SimpleITK round trip."""
from __future__ import annotations

import numpy as np
import pytest

from mskseg.errors import GeometryMismatchError, InvalidImageError
from mskseg.image import Image


def test_ijk_to_lps_maps_index_to_physical_point(oblique_ct):
    m = oblique_ct.ijk_to_lps()
    ijk = np.array([3.0, 7.0, 2.0])
    assert np.allclose((m @ np.r_[ijk, 1])[:3], oblique_ct.index_to_physical(ijk))
    assert np.allclose(oblique_ct.physical_to_index(oblique_ct.index_to_physical(ijk)), ijk)


def test_ijk_to_ras_flips_first_two_axes(oblique_ct):
    lps, ras = oblique_ct.ijk_to_lps(), oblique_ct.ijk_to_ras()
    assert np.allclose(ras[:2], -lps[:2]) and np.allclose(ras[2:], lps[2:])


def test_sitk_round_trip_keeps_voxels_and_geometry(oblique_ct):
    back = Image.from_sitk(oblique_ct.to_sitk())
    assert back.same_grid(oblique_ct)
    assert np.array_equal(back.array, oblique_ct.array)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -0.5, 1.0), (1.0, 1.0, float("nan"))])
def test_zero_negative_or_nan_spacing_is_refused(spacing):
    with pytest.raises(InvalidImageError, match="spacing"):
        Image(np.zeros((2, 3, 4)), spacing)


def test_4d_array_is_refused_with_advice():
    with pytest.raises(InvalidImageError, match="4 dimensions") as e:
        Image(np.zeros((2, 2, 3, 4)), (1, 1, 1))
    assert "extract" in e.value.hint


def test_non_orthonormal_direction_is_refused():
    with pytest.raises(InvalidImageError, match="orthonormal"):
        Image(np.zeros((2, 3, 4)), (1, 1, 1), direction=np.diag([1, 2, 1.0]))


def test_check_same_grid_names_the_difference(oblique_ct):
    other = Image(oblique_ct.array, oblique_ct.spacing, (0, 0, 0), oblique_ct.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        oblique_ct.check_same_grid(other)
    oblique_ct.check_same_grid(oblique_ct.with_array(np.zeros_like(oblique_ct.array)))


def test_axial_slice_keeps_in_plane_geometry():
    img = Image(np.arange(2 * 3 * 4).reshape(2, 3, 4), (0.5, 0.7, 2.0), (10, 20, 30))
    s = img.axial_slice(1)
    assert s.ndim == 2 and np.array_equal(s.array, img.array[1])
    assert s.spacing == (0.5, 0.7) and s.origin == (10, 20)
