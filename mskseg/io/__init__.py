"""Reading images and writing results. Readers return :class:`mskseg.image.Image`; writers never overwrite."""
from __future__ import annotations

from .common import Labels, check_labelmap, prepare_output
from .readers import SeriesInfo, list_dicom_series, read_image

__all__ = ["Labels", "SeriesInfo", "check_labelmap", "list_dicom_series", "prepare_output", "read_image"]
