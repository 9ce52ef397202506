"""Errors that MSKSeg raises for bad input.

Every error a user can cause derives from :class:`MSKSegError`. Its message says what was wrong and, where
there is one, what to do about it. The command line prints these messages (never a traceback) and exits
with status 2; the Slicer modules show them in an error box.
"""
from __future__ import annotations


class MSKSegError(Exception):
    """Base class of all errors caused by the user's input.

    Args:
        message: what was wrong, naming the offending file, attribute or value.
        hint: what the user can do about it (optional).
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class ImageReadError(MSKSegError):
    """A path could not be read as an image (missing, empty folder, not an image, unsupported)."""


class SeriesSelectionError(MSKSegError):
    """A DICOM folder holds several series and none was chosen, or the chosen one is absent."""


class InvalidImageError(MSKSegError):
    """An image was read but is unusable: 4D, zero or negative spacing, wrong modality, ..."""


class GeometryMismatchError(MSKSegError):
    """A label map or second image is not on the grid of the image it belongs to."""


class ChecksumError(MSKSegError):
    """A weights file does not match the sha256 its model card states."""


class ModelCardError(MSKSegError):
    """A model card is missing, is not valid JSON, or does not follow the model-card schema."""


class OutputError(MSKSegError):
    """The results cannot be written where asked: the output place is a file, lies under a file, is read-only,
    full, inside the input DICOM folder, or holds an earlier result (:class:`OutputExistsError`)."""


class OutputExistsError(OutputError):
    """A writer was asked to write a file that exists, without overwrite=True (``--overwrite``)."""


class CancelledError(MSKSegError):
    """Long work was cancelled by the user through the progress callback."""
