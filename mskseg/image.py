"""One image type for all of MSKSeg: voxels plus geometry in LPS physical space.

Conventions (the same as SimpleITK's, so converting costs nothing and loses nothing):

* ``array`` is in numpy order: shape ``(K, J, I)`` = ``(slices, rows, columns)`` for a volume,
  ``(J, I)`` for a 2D image such as a radiograph.
* ``spacing``, ``origin`` and the columns of ``direction`` are in index order ``(i, j[, k])``.
* ``origin`` is the LPS position in mm of the centre of voxel ``(0, 0, 0)``; the direction column ``c`` is the
  LPS unit vector along index axis ``c``. Physical point = origin + direction @ (spacing * index).
* Slicer (RAS) differs only by the sign of the first two physical axes: see :meth:`Image.ijk_to_ras`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import GeometryMismatchError, InvalidImageError

#: DICOM attributes that readers carry into ``Image.metadata`` when present.
DICOM_METADATA_KEYS = (
    "Modality", "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "StudyDate",
    "SeriesDescription", "ContrastBolusAgent", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
    "Manufacturer", "BodyPartExamined",
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(eq=False)
class Image:
    """Voxels with their place in the patient.

    Args:
        array: voxel values, shape ``(K, J, I)`` (3D) or ``(J, I)`` (2D).
        spacing: voxel size in mm per index axis ``(i, j[, k])``; every value must be > 0.
        origin: LPS position (mm) of the centre of the first voxel, length = ndim.
        direction: ``ndim x ndim`` matrix whose columns are the LPS directions of the index axes.
        metadata: free-form attributes (DICOM attributes of ``DICOM_METADATA_KEYS``, ``source_path``,
            ``source_files`` for DICOM series, ...).

    Raises:
        InvalidImageError: for a 4D (or 1D) array, non-positive spacing, or inconsistent geometry.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...] = None  # type: ignore[assignment]
    direction: np.ndarray = None  # type: ignore[assignment]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        nd = self.array.ndim
        if nd not in (2, 3):
            raise InvalidImageError(
                f"image has {nd} dimensions (shape {self.array.shape}); MSKSeg works on 2D images and 3D volumes",
                "for a 4D or multi-component image (time series, RGB volume) extract one 3D volume first",
            )
        self.spacing = tuple(float(s) for s in np.ravel(self.spacing))
        if len(self.spacing) != nd:
            raise InvalidImageError(f"spacing {self.spacing} has {len(self.spacing)} values for a {nd}D image")
        if not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise InvalidImageError(
                f"voxel spacing {self.spacing} mm has a zero, negative or non-finite value",
                "fix the file's header (NRRD 'space directions', NIfTI pixdim, DICOM PixelSpacing/slice positions)",
            )
        self.origin = tuple(float(o) for o in np.ravel(self.origin)) if self.origin is not None else (0.0,) * nd
        if len(self.origin) != nd:
            raise InvalidImageError(f"origin {self.origin} has {len(self.origin)} values for a {nd}D image")
        d = np.eye(nd) if self.direction is None else np.asarray(self.direction, dtype=float).reshape(nd, nd)
        if not np.all(np.isfinite(d)):
            raise InvalidImageError(f"direction matrix {d.tolist()} holds a non-finite value")
        # Every pair of index axes at right angles and every axis of unit length (|det| = 1 alone lets a shear
        # pass: a sheared matrix can have determinant 1).
        gram_error = float(np.max(np.abs(d.T @ d - np.eye(nd))))
        if gram_error > 1e-3:
            raise InvalidImageError(
                f"direction matrix {np.round(d, 4).tolist()} is not orthonormal (sheared or scaled index axes, "
                f"error {gram_error:.3g}): the voxels are not on a rectangular grid",
                "resample the image onto an orthogonal grid (e.g. correct the gantry tilt) before using it")
        self.direction = d

    # ----------------------------------------------------------------- shape
    @property
    def ndim(self) -> int:
        """2 for a radiograph or single slice, 3 for a volume."""
        return self.array.ndim

    @property
    def size(self) -> tuple[int, ...]:
        """Number of voxels per index axis, in ``(i, j[, k])`` order (the reverse of ``array.shape``)."""
        return tuple(int(s) for s in self.array.shape[::-1])

    @property
    def modality(self) -> str | None:
        """DICOM Modality (``CT``, ``MR``, ``DX``, ...) when known."""
        return self.metadata.get("Modality")

    # ----------------------------------------------------------------- geometry
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix from homogeneous index ``(i, j, k, 1)`` to LPS mm. A 2D image is embedded at k = 0."""
        m = np.eye(4)
        nd = self.ndim
        m[:nd, :nd] = self.direction * np.asarray(self.spacing)[None, :]
        m[:nd, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix from homogeneous index to RAS mm, as Slicer's ``GetIJKToRASMatrix`` gives it."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """LPS mm of continuous indices ``(..., ndim)`` given in ``(i, j[, k])`` order."""
        index = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, point: np.ndarray) -> np.ndarray:
        """Continuous ``(i, j[, k])`` indices of LPS points ``(..., ndim)``."""
        point = np.asarray(point, dtype=float) - np.asarray(self.origin)
        return (point @ self.direction) / np.asarray(self.spacing)

    def same_grid(self, other: "Image", tol: float = 1e-3) -> bool:
        """True when ``other`` has the same size, spacing, origin and direction (within ``tol`` mm/ratio)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol * max(self.spacing), rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol * 10, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def check_same_grid(self, other: "Image", what: str = "label map") -> None:
        """Raise :class:`GeometryMismatchError` naming the difference when ``other`` is on another grid."""
        if self.same_grid(other):
            return
        diffs = []
        if self.size != other.size:
            diffs.append(f"size {other.size} vs {self.size}")
        if not np.allclose(self.spacing, other.spacing, atol=1e-3 * max(self.spacing)):
            diffs.append(f"spacing {_fmt(other.spacing)} vs {_fmt(self.spacing)} mm")
        if not np.allclose(self.origin, other.origin, atol=1e-2):
            diffs.append(f"origin {_fmt(other.origin)} vs {_fmt(self.origin)} mm")
        if not np.allclose(self.direction, other.direction, atol=1e-3):
            diffs.append("direction matrices differ")
        raise GeometryMismatchError(
            f"the {what} is not on the image's grid: " + "; ".join(diffs),
            f"resample the {what} onto the image (e.g. Slicer's 'Resample Image (BRAINS)' or "
            "sitk.Resample with nearest-neighbour interpolation) before using them together",
        )

    def with_array(self, array: np.ndarray, keep_metadata: bool = True) -> "Image":
        """A new image with ``array`` on exactly this image's grid (``array.shape`` must equal ``self.array.shape``)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise GeometryMismatchError(f"array shape {array.shape} does not match the image shape {self.array.shape}")
        return Image(array, self.spacing, self.origin, self.direction.copy(), dict(self.metadata) if keep_metadata else {})

    def axial_slice(self, k: int) -> "Image":
        """The 2D image of slice ``k`` of a volume, with its in-plane geometry (origin at that slice)."""
        if self.ndim != 3:
            raise InvalidImageError("axial_slice needs a 3D volume")
        if not 0 <= k < self.array.shape[0]:
            raise InvalidImageError(f"slice index {k} is outside the volume (0..{self.array.shape[0] - 1})")
        origin3 = self.index_to_physical(np.array([0.0, 0.0, float(k)]))
        return Image(self.array[k], self.spacing[:2], origin3[:2], self.direction[:2, :2] if
                     abs(abs(np.linalg.det(self.direction[:2, :2])) - 1) < 1e-3 else np.eye(2), dict(self.metadata))

    # ----------------------------------------------------------------- SimpleITK
    def to_sitk(self):
        """This image as a ``SimpleITK.Image`` (copies the voxels)."""
        import SimpleITK as sitk

        arr = self.array
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, metadata: dict[str, Any] | None = None) -> "Image":
        """An :class:`Image` from a scalar ``SimpleITK.Image`` (2D or 3D)."""
        import SimpleITK as sitk

        if img.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidImageError(
                f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel; MSKSeg needs a scalar image"
            )
        nd = img.GetDimension()
        return cls(
            sitk.GetArrayFromImage(img),
            img.GetSpacing(),
            img.GetOrigin(),
            np.asarray(img.GetDirection()).reshape(nd, nd),
            dict(metadata or {}),
        )

    def describe(self) -> str:
        """A few lines a person can read: size, spacing, origin, direction, value range."""
        lines = [
            f"dimensions  {self.ndim}D, size {' x '.join(map(str, self.size))} voxels",
            f"spacing     {_fmt(self.spacing)} mm",
            f"origin      {_fmt(self.origin)} mm (LPS)",
            "direction   " + "  ".join(_fmt(c) for c in self.direction.T),
            f"extent      {_fmt(tuple(n * s for n, s in zip(self.size, self.spacing)))} mm",
            f"values      {self.array.dtype}, min {self.array.min():g}, max {self.array.max():g}",
        ]
        return "\n".join(lines)


def axial_plane(image: Image, k: int) -> Image:
    """The 2D image itself (``k`` must then be 0), or axial slice ``k`` of a volume with its in-plane geometry."""
    if image.ndim == 2:
        if k != 0:
            raise InvalidImageError(f"slice index {k} given for a 2D image; use 0")
        return image
    return image.axial_slice(k)


def labels_on_grid(labelmap: Image, reference: Image) -> np.ndarray:
    """The voxels of a label map resampled onto ``reference``'s grid (nearest neighbour, 0 outside).

    Both grids are physical (LPS), so any size, spacing, origin or direction works; when the grids are the
    same the label voxels are returned unchanged. Returns an array of ``reference.array.shape``.
    """
    import SimpleITK as sitk

    if labelmap.same_grid(reference):
        return np.asarray(labelmap.array)
    moving = labelmap.to_sitk()
    out = sitk.Resample(moving, reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        moving.GetPixelID())
    return sitk.GetArrayFromImage(out)


def values_on_grid(image: Image, reference: Image, outside: float = 0.0) -> np.ndarray:
    """The voxels of a float image (probabilities, a distance map) resampled onto ``reference``'s grid with
    linear interpolation, ``outside`` beyond the image; unchanged when the grids are the same. Returns a
    float32 array of ``reference.array.shape``.
    """
    import SimpleITK as sitk

    if image.same_grid(reference):
        return np.asarray(image.array, np.float32)
    moving = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    out = sitk.Resample(moving, reference.to_sitk(), sitk.Transform(), sitk.sitkLinear, float(outside),
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


#: Interpolation names of :func:`resample_to_spacing`.
INTERPOLATIONS = ("linear", "nearest")


def spacing_grid(image: Image, spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(size, origin)`` of the grid :func:`resample_to_spacing` puts ``image`` on at ``spacing`` (mm).

    The convention (the one the networks were trained with): the output keeps the direction, its first
    voxel's outer corner lies exactly on the input's first voxel's outer corner, and each axis gets
    ``max(1, round(n * s / t))`` voxels, so the field of view ``n * s`` is kept to within half an output voxel
    at the far end. In index terms: output voxel ``m`` is centred on input index ``(m + 0.5) * t / s - 0.5``,
    i.e. the origin moves by ``(t - s) / 2`` along each index axis.
    """
    target = np.asarray([float(t) for t in spacing])
    source = np.asarray(image.spacing)
    if target.size != image.ndim or not np.all(target > 0):
        raise InvalidImageError(f"spacing {tuple(target)} does not suit a {image.ndim}D image (one value > 0 per "
                                "index axis, in (i, j[, k]) order)")
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(image.size, source, target))
    origin = np.asarray(image.origin) + image.direction @ ((target - source) / 2.0)
    return size, tuple(float(o) for o in origin)


def resample_to_spacing(image: Image, spacing: Sequence[float], *, interpolation: str = "linear",
                        default: float | None = None) -> Image:
    """``image`` resampled to voxel size ``spacing`` (mm, ``(i, j[, k])`` order) on the grid of :func:`spacing_grid`.

    The one resampler of MSKSeg: training (:func:`mskseg.train.data.resample_array`) and inference
    (:func:`mskseg.pipeline.resample_to_model`) both go through it, so a network sees the same voxel centres
    in both.

    Args:
        image: 2D ``(J, I)`` or 3D ``(K, J, I)`` image.
        spacing: target voxel size per index axis.
        interpolation: ``"linear"`` (float32 result, for intensities) or ``"nearest"`` (the input's integer
            type kept, for label maps).
        default: value outside the input; None: the image minimum (linear) or 0 (nearest).

    Returns:
        The resampled image (metadata kept), or ``image`` itself when ``spacing`` equals its spacing
        (within 0.1 %).
    """
    import SimpleITK as sitk

    if interpolation not in INTERPOLATIONS:
        raise InvalidImageError(f"interpolation '{interpolation}' is unknown; use one of {INTERPOLATIONS}")
    target = tuple(float(t) for t in spacing)
    if len(target) == image.ndim and np.allclose(target, image.spacing, rtol=1e-3):
        return image
    size, origin = spacing_grid(image, target)
    linear = interpolation == "linear"
    if default is None:
        default = (float(np.min(image.array)) if image.array.size else 0.0) if linear else 0.0
    src = image.to_sitk()
    if linear:
        src = sitk.Cast(src, sitk.sitkFloat32)
    out = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                        origin, target, src.GetDirection(), float(default), src.GetPixelID())
    return Image.from_sitk(out, image.metadata)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
