"""Training patches and their augmentation: cut or pad a sample to the patch size, pad to a multiple for
validation, random flips, rotations and intensity changes (numpy only; validation is never augmented).

Re-exported by :mod:`mskseg.train.data`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np


# ============================================================================================== patches
def crop_or_pad(image: np.ndarray, label: np.ndarray, patch: Sequence[int], rng: np.random.Generator | None = None,
                foreground_probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``image (C, *spatial)`` and ``label (*spatial)`` to ``patch`` (spatial sizes).

    Smaller axes are padded (centred; image with each channel's minimum, label with 0). Larger axes are
    cropped: centred when ``rng`` is None; otherwise at random, centred on a random labelled voxel with
    ``foreground_probability``.
    """
    patch = [int(p) for p in patch]
    image = np.asarray(image)
    label = np.asarray(label)
    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for p, s in zip(patch, label.shape)]
    if any(a or b for a, b in pads):
        fill = image.reshape(image.shape[0], -1).min(axis=1)
        image = np.stack([np.pad(c, pads, constant_values=f) for c, f in zip(image, fill)])
        label = np.pad(label, pads, constant_values=0)
    shape = label.shape
    if rng is None:
        starts = [(s - p) // 2 for s, p in zip(shape, patch)]
    else:
        centre = None
        if foreground_probability > 0 and rng.random() < foreground_probability:
            fg = np.flatnonzero(label)
            if fg.size:
                centre = np.unravel_index(fg[rng.integers(fg.size)], shape)
        if centre is None:
            starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch)]
        else:
            starts = [int(min(max(c - p // 2, 0), s - p)) for c, s, p in zip(centre, shape, patch)]
    box = tuple(slice(a, a + p) for a, p in zip(starts, patch))
    return image[(slice(None),) + box], label[box]


def pad_sample_to_multiple(image: np.ndarray, label: np.ndarray,
                           multiple: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Pad ``image (C, *spatial)`` (each channel with its minimum) and ``label`` (with 0) at the end of each
    axis up to a multiple of ``multiple`` (:func:`mskseg.pipeline.pad_to_multiple`, as inference pads).

    Returns ``(image, label, crop)`` where ``crop`` (a tuple of slices) cuts a padded prediction back.
    """
    from ..pipeline import pad_to_multiple

    spatial = label.shape
    fill = image.reshape(image.shape[0], -1).min(axis=1)
    image = np.stack([pad_to_multiple(c, multiple, f, axes=c.ndim)[0] for c, f in zip(image, fill)])
    label = pad_to_multiple(label, multiple, 0, axes=label.ndim)[0]
    return image, label, tuple(slice(0, s) for s in spatial)


# ============================================================================================== augmentation
#: An augmentation hook: ``hook(image (C, *spatial) float32, label (*spatial), rng) -> (image, label)``.
AugmentHook = Callable[[np.ndarray, np.ndarray, np.random.Generator], "tuple[np.ndarray, np.ndarray]"]


@dataclass
class Augmentation:
    """Random augmentation of training patches (numpy only; validation is never augmented).

    Attributes:
        flip_probability: probability of a mirror along each axis in ``flip_axes``. Left-right flips are
            switched off by the trainer when a class name says ``left`` or ``right``.
        flip_axes: spatial axes to mirror, counted from the end: ``(-1,)`` is i (left-right on axial CT).
        rotate_probability, rotate_degrees: in-plane rotation (axes j, i) by a uniform angle in
            ``[-rotate_degrees, rotate_degrees]`` (linear for the image, nearest for the label).
        intensity_scale, intensity_shift: multiply by ``1 + U(-scale, scale)`` and add ``U(-shift, shift)`` (in
            normalised units: a window maps to 0..1).
        noise_sd: add Gaussian noise with SD ``U(0, noise_sd)``.
        hooks: further augmentations, applied last in order.
    """

    flip_probability: float = 0.5
    flip_axes: tuple[int, ...] = (-1,)
    rotate_probability: float = 0.3
    rotate_degrees: float = 10.0
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_sd: float = 0.02
    hooks: list[AugmentHook] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The settings as plain data (for the model card)."""
        return {"flip_probability": self.flip_probability, "flip_axes": list(self.flip_axes),
                "rotate_probability": self.rotate_probability, "rotate_degrees": self.rotate_degrees,
                "intensity_scale": self.intensity_scale, "intensity_shift": self.intensity_shift,
                "noise_sd": self.noise_sd, "hooks": [getattr(h, "__name__", type(h).__name__) for h in self.hooks]}


NO_AUGMENTATION = Augmentation(0.0, (), 0.0, 0.0, 0.0, 0.0, 0.0)


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, probability: float,
                axes: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mirror along each spatial axis of ``axes`` (negative: from the end) with ``probability``."""
    for axis in axes:
        if probability > 0 and rng.random() < probability:
            image = np.flip(image, axis=axis)
            label = np.flip(label, axis=axis)
    return image, label


def random_rotate(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, probability: float,
                  degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate in the (j, i) plane by ``U(-degrees, degrees)`` with ``probability`` (shape kept)."""
    from scipy import ndimage

    if probability <= 0 or degrees <= 0 or rng.random() >= probability:
        return image, label
    angle = float(rng.uniform(-degrees, degrees))
    nd = label.ndim
    axes = (nd - 2, nd - 1)
    rotated = np.stack([ndimage.rotate(c, angle, axes=axes, reshape=False, order=1, mode="constant",
                                       cval=float(c.min())) for c in image])
    rotated_label = ndimage.rotate(label, angle, axes=axes, reshape=False, order=0, mode="constant", cval=0)
    return rotated.astype(np.float32), rotated_label


def random_intensity(image: np.ndarray, rng: np.random.Generator, scale: float, shift: float,
                     noise_sd: float) -> np.ndarray:
    """Random gain, offset and Gaussian noise, in normalised units."""
    if scale > 0:
        image = image * (1.0 + float(rng.uniform(-scale, scale)))
    if shift > 0:
        image = image + float(rng.uniform(-shift, shift))
    if noise_sd > 0:
        image = image + rng.normal(0.0, float(rng.uniform(0, noise_sd)), size=image.shape).astype(np.float32)
    return image.astype(np.float32, copy=False)


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
            augmentation: Augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``augmentation`` to one patch: flips, rotation, intensity, then the hooks.

    Args:
        image: ``(C, *spatial)`` float32; label: ``(*spatial)`` integer.

    Returns:
        Contiguous ``(image float32, label)`` of the same shapes.
    """
    image = np.asarray(image, np.float32)
    image, label = random_flip(image, label, rng, augmentation.flip_probability, augmentation.flip_axes)
    image, label = random_rotate(image, label, rng, augmentation.rotate_probability, augmentation.rotate_degrees)
    image = random_intensity(image, rng, augmentation.intensity_scale, augmentation.intensity_shift,
                             augmentation.noise_sd)
    for hook in augmentation.hooks:
        image, label = hook(image, label, rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label)
