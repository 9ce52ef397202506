"""Write a CT volume as an uncompressed DICOM series (CT Image Storage), one file per slice.

Used to hand a synthetic or resampled CT to DICOM tools (and to build DICOM test data on the spot). The
geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) reproduces the image's LPS grid
exactly. Readers stack DICOM slices along the slice normal (row x column direction), so a volume whose k
axis runs against that normal reads back with k reversed: the same voxels at the same places.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidImageError, OutputExistsError
from ..image import Image

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(image: Image, folder: str | Path, *, overwrite: bool = False,
                       attributes: dict[str, Any] | None = None, study_uid: str | None = None,
                       series_uid: str | None = None) -> list[Path]:
    """Write a 3D image (HU) as ``folder/IM{k:04d}.dcm``; returns the files in slice order.

    Args:
        image: 3D volume ``(K, J, I)`` in HU; values are stored as int16 with RescaleIntercept 0.
        folder: output folder; must be empty or absent unless ``overwrite``.
        attributes: extra DICOM attributes (e.g. ``PatientSex``, ``PatientSize``, ``PatientWeight``,
            ``SeriesDescription``, ``ContrastBolusAgent``); by default taken from ``image.metadata``.
        study_uid, series_uid: UIDs to use (new ones by default).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if image.ndim != 3:
        raise InvalidImageError("write_dicom_series needs a 3D volume")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(f"{folder} is not empty; MSKSeg does not overwrite files silently",
                                "choose an empty folder or pass overwrite=True (command line: --overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    attrs = {k: v for k, v in image.metadata.items() if k[:1].isupper() and k not in ("SeriesInstanceUID",
                                                                                    "StudyInstanceUID")}
    attrs.update(attributes or {})
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = _dt.datetime.now()
    arr = np.clip(np.rint(image.array), -32768, 32767).astype(np.int16)
    d = image.direction
    iop = [*d[:, 0].tolist(), *d[:, 1].tolist()]
    files = []
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.PatientName = str(attrs.pop("PatientName", "MSKSEG^SYNTHETIC")) if k == 0 else ds.get("PatientName", "")
        ds.PatientName = "MSKSEG^SYNTHETIC" if not ds.PatientName else ds.PatientName
        ds.PatientID = str(attrs.get("PatientID", "MSKSEG-0001"))
        ds.PatientBirthDate = ""
        ds.PatientSex = str(attrs.get("PatientSex", ""))
        for key in ("PatientAge", "SeriesDescription", "ContrastBolusAgent", "BodyPartExamined"):
            if attrs.get(key):
                setattr(ds, key, str(attrs[key]))
        for key in ("PatientSize", "PatientWeight"):
            if attrs.get(key):
                setattr(ds, key, f"{float(attrs[key]):.4g}")
        ds.StudyDate = str(attrs.get("StudyDate", now.strftime("%Y%m%d")))
        ds.StudyTime = ds.SeriesDate = ds.ContentDate = None
        ds.StudyTime = now.strftime("%H%M%S")
        ds.SeriesDate = ds.ContentDate = ds.StudyDate
        ds.SeriesTime = ds.ContentTime = ds.StudyTime
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.Manufacturer = str(attrs.get("Manufacturer", "MSKSeg"))
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.index_to_physical([0.0, 0.0, float(k)])]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{image.spacing[1]:.6f}", f"{image.spacing[0]:.6f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{image.spacing[2]:.6f}"
        ds.SliceLocation = f"{float(image.index_to_physical([0.0, 0.0, float(k)])[2]):.6f}"
        ds.KVP = "120"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = arr[k].tobytes()
        ds.save_as(path, enforce_file_format=True) if _pydicom3(pydicom) else ds.save_as(path, write_like_original=False)
        files.append(path)
    return files


def _pydicom3(pydicom) -> bool:
    return int(pydicom.__version__.split(".")[0]) >= 3
