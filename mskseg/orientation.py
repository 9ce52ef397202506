"""Any storage orientation in, one canonical orientation inside, results back on the source grid.

A CT may be stored with its slices along any patient axis: axial DICOM (LPS, slices foot to head or head to
foot), RAS NIfTI, a sagittal research file (axes P, I, R, as VerSe stores them), a coronal reformat. The task
pipelines work on ONE canonical layout and map their label maps back:

* canonical array ``(K, J, I)`` with index axis ``i`` towards the patient's left (LPS +x), ``j`` towards
  posterior (+y) and ``k`` towards superior (+z): the direction matrix is the identity for an axis-aligned scan;
* an axial slice ``canonical[k]`` shown as an image (row 0 at the top) is in radiological convention: anterior
  up, the patient's right on the image's left.

Bringing a volume to the canonical layout is a transpose and flips of the voxel array (no resampling, no
interpolation: the same voxels in another order), so results are invariant to the storage orientation and map
back exactly. An oblique grid is taken by its dominant axes; its remaining rotation stays in the direction.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import InvalidImageError
from .image import Image


@dataclass(frozen=True)
class Reorientation:
    """How a stored volume's voxel array maps onto the canonical array.

    Attributes:
        source_axes: for each canonical numpy axis ``a`` (0 = k, 1 = j, 2 = i), the numpy axis of the stored
            array that it takes.
        flips: whether canonical numpy axis ``a`` runs opposite to that stored axis.
        source_shape: shape of the stored array ``(K, J, I)``.
    """

    source_axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    source_shape: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        """True when the stored array is already canonical (the common axial DICOM case)."""
        return self.source_axes == (0, 1, 2) and not any(self.flips)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical array ``(K, J, I)``."""
        return tuple(self.source_shape[a] for a in self.source_axes)  # type: ignore[return-value]

    @property
    def axial_axis(self) -> int:
        """The numpy axis of the stored array that runs foot to head (or head to foot): its slices are axial."""
        return self.source_axes[0]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """The stored array ``(K, J, I)`` (or any array of that shape) in canonical order: a view, no copy."""
        array = np.asarray(array)
        if array.shape != self.source_shape:
            raise InvalidImageError(f"array of shape {array.shape} given where the stored shape is {self.source_shape}")
        out = np.transpose(array, self.source_axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """A canonical array (e.g. a label map) back in the stored order, contiguous, ready for the writers."""
        array = np.asarray(array)
        if array.shape != self.canonical_shape:
            raise InvalidImageError(f"array of shape {array.shape} given where the canonical shape is "
                                    f"{self.canonical_shape}")
        unflipped = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.ascontiguousarray(np.transpose(unflipped, np.argsort(self.source_axes)))

    def canonical_slice(self, source_index: int) -> int:
        """Canonical axial slice ``k`` of the stored slice ``source_index`` counted along :attr:`axial_axis`."""
        n = self.source_shape[self.axial_axis]
        return n - 1 - int(source_index) if self.flips[0] else int(source_index)

    def source_slice(self, canonical_index: int) -> int:
        """Index along the stored :attr:`axial_axis` of canonical axial slice ``canonical_index``."""
        return self.canonical_slice(canonical_index)  # the map is its own inverse


def patient_axes(direction) -> tuple[int, int, int]:
    """For each index axis ``c`` (0 = i, 1 = j, 2 = k), the patient axis (0 = x, 1 = y, 2 = z) it is assigned.

    ``direction`` is the 3 x 3 matrix whose columns are the index axes in patient space, LPS or RAS (signs do
    not matter). The assignment is one to one: of the six, the one with the largest sum of direction cosines.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    return max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[c], c]) for c in range(3)))


def axial_index_axis(direction) -> int:
    """The index axis (0 = i, 1 = j, 2 = k) that runs head to feet under :func:`patient_axes`: the axis slice
    indices count along in results, for any storage (Slicer passes its IJK-to-RAS directions)."""
    return patient_axes(direction).index(2)


def reorientation_of(image: Image) -> Reorientation:
    """The :class:`Reorientation` that brings ``image`` (3D) to the canonical layout.

    Each index axis is assigned the patient axis it is closest to, one to one (of the six assignments, the one
    with the largest sum of direction cosines: a grid rotated by exactly 45 degrees still gets one).

    Raises:
        InvalidImageError: for a 2D image.
    """
    if image.ndim != 3:
        raise InvalidImageError(f"a volume is needed; this image is {image.ndim}D with shape {image.array.shape}")
    d = np.asarray(image.direction, float)
    patient_axis = patient_axes(d)
    index_axis_of = {patient_axis[c]: c for c in range(3)}  # LPS axis -> index axis
    # canonical numpy axis a holds LPS axis 2 - a (k = z, j = y, i = x); index axis c is numpy axis 2 - c
    source_axes = tuple(2 - index_axis_of[2 - a] for a in range(3))
    flips = tuple(bool(d[2 - a, index_axis_of[2 - a]] < 0) for a in range(3))
    return Reorientation(source_axes, flips, tuple(image.array.shape))  # type: ignore[arg-type]


def to_canonical(image: Image) -> tuple[Image, Reorientation]:
    """``image`` (3D) in the canonical layout, and the :class:`Reorientation` that maps results back.

    The canonical image holds the same voxels (a view of the stored array) with the geometry that keeps every
    voxel at its physical place: its origin is the centre of the voxel that comes first in canonical order.
    Metadata are kept.
    """
    how = reorientation_of(image)
    if how.is_identity:
        return image, how
    d = np.asarray(image.direction, float)
    spacing = np.asarray(image.spacing, float)
    first = np.zeros(3)
    direction = np.zeros((3, 3))
    new_spacing = np.zeros(3)
    for a in range(3):
        c = 2 - how.source_axes[a]  # stored index axis taken by canonical numpy axis a
        c_new = 2 - a  # canonical index axis
        sign = -1.0 if how.flips[a] else 1.0
        direction[:, c_new] = sign * d[:, c]
        new_spacing[c_new] = spacing[c]
        if how.flips[a]:
            first[c] = image.array.shape[2 - c] - 1
    origin = image.index_to_physical(first)
    return Image(how.to_canonical(image.array), tuple(new_spacing), tuple(origin), direction,
                 dict(image.metadata)), how


def labelmap_to_source(canonical_labelmap: Image, source: Image, how: Reorientation) -> Image:
    """A label map on the canonical grid, on exactly ``source``'s grid (same voxels, stored order), no metadata."""
    return source.with_array(how.to_source(canonical_labelmap.array), keep_metadata=False)
