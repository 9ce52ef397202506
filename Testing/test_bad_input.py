"""The bad-input corpus: damaged and unusual inputs, made on the spot from a small synthetic CT, each refused
with its true cause (one error line, exit status 2, no traceback) or read correctly.

Every case is a builder ``(folder, ct) -> (command, path)`` plus the expected result: a regex the error
message must match, or ``OK`` (exit status 0, optionally a regex on stdout). The cases run through the command
line (``mskseg info`` for the readers, ``mskseg sarcopenia`` for the CT checks of a task).
"""
from __future__ import annotations

import gzip
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.cli import main
from mskseg.demo import demo_ct
from mskseg.errors import InvalidImageError
from mskseg.image import Image
from mskseg.io import read_image
from mskseg.io.dicomwrite import write_dicom_series

OK = "OK"


@pytest.fixture(scope="module")
def ct() -> Image:
    """A small synthetic abdominal CT (8 slices of 64 x 64, 1.5 mm pixels, 3 mm slices), int16 HU."""
    return demo_ct(n_slices=8, size=64)[0]


# --------------------------------------------------------------------------------------------- helpers
def series(folder: Path, ct: Image, name: str = "dicom", **kw) -> tuple[Path, list[Path]]:
    d = folder / name
    return d, write_dicom_series(ct, d, **kw)


def edit(files, change) -> None:
    """``change(ds, k)`` on each DICOM file, saved in place."""
    import pydicom

    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(ds, k)
        ds.save_as(f)


def cut(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])


def sitk_file(folder: Path, image: Image | np.ndarray, name: str, spacing=None) -> Path:
    img = image.to_sitk() if isinstance(image, Image) else sitk.GetImageFromArray(image)
    if spacing is not None:
        img.SetSpacing(spacing)
    p = folder / name
    sitk.WriteImage(img, str(p))
    return p


def nifti(folder: Path, array: np.ndarray, affine: np.ndarray, name: str = "ct.nii.gz") -> Path:
    import nibabel as nib

    p = folder / name
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(p))
    return p


def affine(spacing=(1.5, 1.5, 3.0)) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def png(folder: Path, array: np.ndarray, name: str = "picture.png") -> Path:
    from PIL import Image as PILImage

    p = folder / name
    PILImage.fromarray(array).save(p)
    return p


def mask_array(ct: Image) -> np.ndarray:
    return np.ascontiguousarray(ct.array.T)  # nibabel order (i, j, k)


# --------------------------------------------------------------------------------------------- DICOM builders
def b_dicom_valid(d, ct):
    return series(d, ct)[0]


def b_dicom_truncated_last(d, ct):
    folder, files = series(d, ct)
    cut(files[-1], 0.5)
    return folder


def b_dicom_truncated_middle(d, ct):
    folder, files = series(d, ct)
    cut(files[3], -100)
    return folder


def b_dicom_truncated_in_header(d, ct):
    folder, files = series(d, ct)
    cut(files[-1], 300)
    return folder


def b_dicom_zero_byte_slice(d, ct):
    folder, files = series(d, ct)
    files[4].write_bytes(b"")
    return folder


def b_dicom_missing_slice(d, ct):
    folder, files = series(d, ct)
    files[3].unlink()
    return folder


def b_dicom_missing_two_slices(d, ct):
    folder, files = series(d, ct)
    files[2].unlink()
    files[5].unlink()
    return folder


def b_dicom_duplicate_position(d, ct):
    import pydicom
    from pydicom.uid import generate_uid

    folder, files = series(d, ct)
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "copy.dcm")
    return folder


def b_dicom_no_position(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: delattr(ds, "ImagePositionPatient"))
    return folder


def b_dicom_one_without_position(d, ct):
    folder, files = series(d, ct)
    edit(files[5:6], lambda ds, k: delattr(ds, "ImagePositionPatient"))
    return folder


def b_dicom_no_orientation(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: delattr(ds, "ImageOrientationPatient"))
    return folder


def b_dicom_no_pixel_spacing(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: delattr(ds, "PixelSpacing"))
    return folder


def b_dicom_zero_pixel_spacing(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "PixelSpacing", [0, 0]))
    return folder


def b_dicom_gantry_tilt(d, ct):
    folder, files = series(d, ct)

    def tilt(ds, k):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 3.0 * np.tan(np.radians(15)), z]
        ds.GantryDetectorTilt = 15
    edit(files, tilt)
    return folder


def b_dicom_sheared_orientation(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.3, 0.954, 0]))
    return folder


def b_dicom_mixed_orientation(d, ct):
    folder, files = series(d, ct)
    edit(files[-1:], lambda ds, k: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))
    return folder


def b_dicom_mixed_sizes(d, ct):
    folder, files = series(d, ct)

    def smaller(ds, k):
        ds.Rows = ds.Columns = 32
        ds.PixelData = np.zeros((32, 32), np.int16).tobytes()
    edit(files[-1:], smaller)
    return folder


def b_dicom_mixed_pixel_spacing(d, ct):
    folder, files = series(d, ct)
    edit(files[-2:], lambda ds, k: setattr(ds, "PixelSpacing", [0.7, 0.7]))
    return folder


def b_dicom_uneven_spacing(d, ct):
    folder, files = series(d, ct)

    def jitter(ds, k):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (1.3 if k == 4 else 0.0)]
    edit(files, jitter)
    return folder


def b_dicom_file_without_pixels(d, ct):
    folder, files = series(d, ct)
    edit(files[:1], lambda ds, k: delattr(ds, "PixelData"))
    return files[0]


def b_dicom_series_without_pixels(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: delattr(ds, "PixelData"))
    return folder


def b_dicom_zero_byte_file(d, ct):
    p = d / "slice.dcm"
    p.write_bytes(b"")
    return p


def b_dicom_single_truncated(d, ct):
    folder, files = series(d, ct)
    cut(files[0], 0.6)
    return files[0]


def b_dicom_single_header_cut(d, ct):
    folder, files = series(d, ct)
    cut(files[0], 250)
    return files[0]


def b_dicom_absurd_size(d, ct):
    folder, files = series(d, ct)
    edit(files[:1], lambda ds, k: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    return files[0]


def b_dicom_monochrome1_ct(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    return folder


def b_dicom_slope_zero(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "RescaleSlope", 0))
    return folder


def b_dicom_slope_absurd(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "RescaleSlope", 1e6))
    return folder


def b_dicom_intercept_absurd(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "RescaleIntercept", -1e7))
    return folder


def b_dicom_undecodable(d, ct):
    from pydicom.encaps import encapsulate

    folder, files = series(d, ct)

    def jpeg(ds, k):
        ds.PixelData = encapsulate([b"\xff\xd8 not really a JPEG stream " * 4])
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    edit(files, jpeg)
    return folder


def _non_image(folder: Path, modality: str, sop_class: str, series_uid: str | None = None) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    p = folder / f"{modality.lower()}.dcm"
    ds = FileDataset(str(p), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesDescription = f"a {modality} object"
    if modality == "SEG":  # one binary frame, as a real DICOM-SEG holds
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
        ds.NumberOfFrames = 1
        ds.PixelData = b"\x00" * 8
    ds.save_as(p, enforce_file_format=True)
    return p


def b_dicom_report_file(d, ct):
    return _non_image(d, "SR", "1.2.840.10008.5.1.4.1.1.88.22")


def b_dicom_ct_and_seg(d, ct):
    series(d / "study", ct, "ct")
    _non_image(d / "study" / "seg", "SEG", "1.2.840.10008.5.1.4.1.1.66.4")
    return d / "study"


def b_dicom_ct_and_seg_same_folder(d, ct):
    folder, _ = series(d, ct)
    _non_image(folder, "SEG", "1.2.840.10008.5.1.4.1.1.66.4")
    return folder


def b_dicom_ct_and_sr(d, ct):
    series(d / "study", ct, "ct")
    _non_image(d / "study" / "sr", "SR", "1.2.840.10008.5.1.4.1.1.88.22")
    return d / "study"


def b_dicom_only_seg(d, ct):
    _non_image(d / "segs", "SEG", "1.2.840.10008.5.1.4.1.1.66.4")
    return d / "segs"


def b_dicom_two_ct_series(d, ct):
    series(d / "study", ct, "a")
    series(d / "study", ct, "b")
    return d / "study"


def b_dicom_escape_codes(d, ct):
    folder, files = series(d, ct)

    def hostile(ds, k):
        ds.SeriesDescription = "\x1b[2J\x1b[31mRED\x1b]0;title\x07 text\x07"
        ds.Manufacturer = "ACME\x1b[5m\r\x08"
    edit(files, hostile)
    return folder


def _reoriented(ct: Image, direction) -> Image:
    return Image(ct.array, ct.spacing, ct.origin, np.asarray(direction, float), {"Modality": "CT"})


def b_dicom_sagittal(d, ct):
    return series(d, _reoriented(ct, [[0, 0, 1], [1, 0, 0], [0, -1, 0]]))[0]


def b_dicom_coronal(d, ct):
    return series(d, _reoriented(ct, [[1, 0, 0], [0, 0, 1], [0, -1, 0]]))[0]


def b_folder_of_text(d, ct):
    (d / "notes").mkdir()
    (d / "notes" / "readme.txt").write_text("not an image")
    (d / "notes" / "IM0001").write_text("not DICOM either")
    return d / "notes"


def b_empty_folder(d, ct):
    (d / "empty").mkdir()
    return d / "empty"


def b_missing_path(d, ct):
    return d / "no-such-file.nii.gz"


def b_dicom_mr_to_sarcopenia(d, ct):
    folder, files = series(d, ct)
    edit(files, lambda ds, k: setattr(ds, "Modality", "MR"))
    return folder


def b_dicom_rgb_secondary_capture(d, ct):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    p = d / "screenshot.dcm"
    ds = FileDataset(str(p), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[10:30, 10:40] = (200, 120, 40)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(p, enforce_file_format=True)
    return p


# --------------------------------------------------------------------------------------------- volume builders
def b_nii_valid(d, ct):
    return sitk_file(d, ct, "ct.nii.gz")


def b_nii_gz_truncated(d, ct):
    p = sitk_file(d, ct, "ct.nii.gz")
    cut(p, 0.6)
    return p


def b_nii_truncated(d, ct):
    p = sitk_file(d, ct, "ct.nii")
    cut(p, 0.6)
    return p


def b_nii_gz_not_gzip(d, ct):
    p = sitk_file(d, ct, "ct.nii")
    return p.rename(d / "ct.nii.gz")


def b_nii_gz_of_text(d, ct):
    p = d / "ct.nii.gz"
    p.write_bytes(gzip.compress(b"hello, this is not an image\n" * 40))
    return p


def b_nii_text(d, ct):
    p = d / "ct.nii"
    p.write_text("just some text\n" * 40)
    return p


def b_nii_header_only(d, ct):
    p = sitk_file(d, ct, "ct.nii")
    cut(p, 352)
    return p


def b_nii_4d(d, ct):
    return nifti(d, np.stack([mask_array(ct)] * 3, axis=-1), affine())


def b_nii_absurd_dims(d, ct):
    p = sitk_file(d, ct, "ct.nii")
    data = bytearray(p.read_bytes())
    data[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    p.write_bytes(bytes(data))
    return p


def b_nii_sheared(d, ct):
    a = affine()
    a[0, 1] = 0.6
    return nifti(d, mask_array(ct), a)


def b_nii_nan(d, ct):
    arr = mask_array(ct).astype(np.float32)
    arr[:5, :5, :] = np.nan
    return nifti(d, arr, affine())


def b_nii_inf(d, ct):
    arr = mask_array(ct).astype(np.float32)
    arr[30, 30, 3] = np.inf
    return nifti(d, arr, affine())


def b_nii_zero_spacing(d, ct):
    p = nifti(d, mask_array(ct), affine(), "ct.nii")
    data = bytearray(p.read_bytes())
    data[76:92] = struct.pack("<4f", 1.0, 1.5, 0.0, 3.0)
    p.write_bytes(bytes(data))
    return p


def b_nii_negative_spacing(d, ct):
    p = nifti(d, mask_array(ct), affine(), "ct.nii")
    data = bytearray(p.read_bytes())
    data[76:92] = struct.pack("<4f", 1.0, 1.5, -1.5, 3.0)
    p.write_bytes(bytes(data))
    return p


def b_nii_huge_spacing(d, ct):
    return nifti(d, mask_array(ct), affine((1e6, 1e6, 3.0)))


def b_nii_tiny_spacing(d, ct):
    return nifti(d, mask_array(ct), affine((1e-6, 1e-6, 3.0)))


def b_nii_sagittal(d, ct):
    return sitk_file(d, _reoriented(ct, [[0, 0, 1], [1, 0, 0], [0, -1, 0]]), "sag.nii.gz")


def b_nii_coronal(d, ct):
    return sitk_file(d, _reoriented(ct, [[1, 0, 0], [0, 0, 1], [0, -1, 0]]), "cor.nii.gz")


def b_nii_float64(d, ct):
    return nifti(d, mask_array(ct).astype(np.float64), affine())


def b_nrrd_truncated(d, ct):
    p = sitk_file(d, ct, "ct.nrrd")
    cut(p, 0.5)
    return p


def b_nrrd_gzip_truncated(d, ct):
    import nrrd

    p = d / "ct.nrrd"
    nrrd.write(str(p), mask_array(ct), {"encoding": "gzip", "space": "left-posterior-superior",
                                         "space directions": np.diag([1.5, 1.5, 3.0]), "space origin": [0, 0, 0]})
    cut(p, 0.6)
    return p


def b_nrrd_text(d, ct):
    p = d / "ct.nrrd"
    p.write_text("this is not NRRD\n")
    return p


def b_nhdr_missing_data(d, ct):
    import nrrd

    p = d / "ct.nhdr"
    nrrd.write(str(p), mask_array(ct), {"space directions": np.diag([1.5, 1.5, 3.0]), "space": "left-posterior-superior"},
               detached_header=True)
    for f in d.iterdir():
        if f != p:
            f.unlink()
    return p


def b_mha_truncated(d, ct):
    p = sitk_file(d, ct, "ct.mha")
    cut(p, 0.5)
    return p


def b_mha_compressed_truncated(d, ct):
    p = d / "ct.mha"
    sitk.WriteImage(ct.to_sitk(), str(p), True)
    cut(p, 0.7)
    return p


def b_mhd_missing_raw(d, ct):
    p = sitk_file(d, ct, "ct.mhd")
    (d / "ct.raw").unlink()
    return p


def b_mha_absurd_dims(d, ct):
    p = sitk_file(d, ct, "ct.mha")
    data = p.read_bytes().replace(b"DimSize = 64 64 8", b"DimSize = 100000 100000 1000")
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------------------------- pictures
def _grey(ct: Image) -> np.ndarray:
    return np.clip((ct.array[4].astype(np.float32) + 1000) / 8, 0, 255).astype(np.uint8)


def b_png_grey(d, ct):
    return png(d, _grey(ct))


def b_png_rgb(d, ct):
    return png(d, np.stack([_grey(ct)] * 3, axis=-1), "screenshot.png")


def b_png_zero_bytes(d, ct):
    p = d / "x.png"
    p.write_bytes(b"")
    return p


def b_png_text(d, ct):
    p = d / "x.png"
    p.write_text("<html>not a picture</html>")
    return p


def b_png_truncated(d, ct):
    p = png(d, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    cut(p, 0.4)
    return p


def b_jpg_holding_png(d, ct):
    p = png(d, _grey(ct))
    return p.rename(d / "x.jpg")


def b_jpeg_grey(d, ct):
    from PIL import Image as PILImage

    p = d / "slice.jpg"
    PILImage.fromarray(_grey(ct)).save(p)
    return p


# --------------------------------------------------------------------------------------------- voxel types
def b_uint8_volume(d, ct):
    return nifti(d, np.clip((mask_array(ct) + 1000) / 8, 0, 255).astype(np.uint8), affine())


def b_int8_volume(d, ct):
    return nifti(d, np.clip(mask_array(ct) / 10, -128, 127).astype(np.int8), affine())


def b_binary_mask(d, ct):
    return nifti(d, (mask_array(ct) > 0).astype(np.uint8), affine())


def b_labelmap_as_ct(d, ct):
    labels = demo_ct(n_slices=8, size=64)[1]
    return nifti(d, mask_array(labels).astype(np.uint16), affine())


def b_constant_volume(d, ct):
    return nifti(d, np.full((64, 64, 8), -1000, np.int16), affine())


def b_unscaled_ct(d, ct):
    return nifti(d, (mask_array(ct) + 1024).astype(np.uint16), affine())


def b_nii_2d(d, ct):
    return nifti(d, mask_array(ct)[:, :, 4], np.diag([1.5, 1.5, 1.0, 1.0]))


def b_nii_one_slice(d, ct):
    return nifti(d, mask_array(ct)[:, :, 4:5], affine())


def b_dicom_extreme_slice_spacing(d, ct):
    folder, files = series(d, ct)

    def far(ds, k):
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, k * 1e6]
    edit(files, far)
    return folder


def b_dicom_single_ct_slice_to_ct_task(d, ct):
    return series(d, ct)[1][4]


def b_nii_absurd_scaling(d, ct):
    p = nifti(d, mask_array(ct), affine(), "ct.nii")
    data = bytearray(p.read_bytes())
    data[112:120] = struct.pack("<2f", float("nan"), 0.0)
    p.write_bytes(bytes(data))
    return p


def b_png_16bit_to_ct_task(d, ct):
    p = d / "slice16.png"
    sitk.WriteImage(sitk.GetImageFromArray((ct.array[4].astype(np.int32) + 1024).astype(np.uint16)), str(p))
    return p


def b_tiff_multipage(d, ct):
    p = d / "stack.tif"
    sitk.WriteImage(sitk.GetImageFromArray(np.clip(ct.array + 1024, 0, 255).astype(np.uint8)), str(p))
    return p


def b_nrrd_nan(d, ct):
    arr = ct.array.astype(np.float32)
    arr[2, 10:20, 10:20] = np.nan
    return sitk_file(d, ct.with_array(arr), "ct.nrrd")


def b_mha_inf(d, ct):
    arr = ct.array.astype(np.float32)
    arr[2, 10, 10] = -np.inf
    return sitk_file(d, ct.with_array(arr), "ct.mha")


def b_bmp_text(d, ct):
    p = d / "x.bmp"
    p.write_bytes(b"%PDF-1.4 not a bitmap")
    return p


def b_dcm_holding_png(d, ct):
    p = png(d, _grey(ct))
    return p.rename(d / "slice.dcm")


def b_png_absurd_dims(d, ct):
    p = png(d, _grey(ct))
    data = bytearray(p.read_bytes())
    data[16:24] = struct.pack(">II", 100000, 100000)
    p.write_bytes(bytes(data))
    return p


def b_nii_zero_size(d, ct):
    p = sitk_file(d, ct, "ct.nii")
    data = bytearray(p.read_bytes())
    data[40:56] = struct.pack("<8h", 3, 0, 64, 8, 1, 1, 1, 1)
    p.write_bytes(bytes(data))
    return p


def b_escape_codes_in_file_name(d, ct):
    p = d / "\x1b[31mred\x1b[0m.nii.gz"
    p.write_bytes(b"")
    return p


def b_dicom_shifted_slice(d, ct):
    folder, files = series(d, ct)

    def shift(ds, k):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (6.0 if k == 3 else 0.0), y, z]
    edit(files, shift)
    return folder


def b_dicom_rounded_oblique(d, ct):
    a = np.radians(20)
    oblique = Image(ct.array, ct.spacing, ct.origin, [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]],
                    {"Modality": "CT"})
    folder, files = series(d, oblique)
    edit(files, lambda ds, k: setattr(ds, "ImagePositionPatient", [round(float(v), 2) + 0.004 * (-1) ** k
                                                                   for v in ds.ImagePositionPatient]))
    return folder


# (id, command, builder, expected: regex of the error message, or OK / (OK, regex on stdout))
CASES = [
    ("dicom-valid", "info", b_dicom_valid, (OK, r"64 x 64 x 8")),
    ("dicom-truncated-last-file", "info", b_dicom_truncated_last, r"damaged file.*IM0007\.dcm \(truncated"),
    ("dicom-truncated-middle-file", "info", b_dicom_truncated_middle, r"IM0003\.dcm \(truncated"),
    ("dicom-truncated-in-header", "info", b_dicom_truncated_in_header, r"damaged file.*IM0007\.dcm"),
    ("dicom-zero-byte-slice", "info", b_dicom_zero_byte_slice, r"damaged file.*IM0004\.dcm \(0 bytes\)"),
    ("dicom-missing-slice", "info", b_dicom_missing_slice, r"missing 1 slice"),
    ("dicom-missing-two-slices", "info", b_dicom_missing_two_slices, r"missing 2 slice"),
    ("dicom-duplicate-position", "info", b_dicom_duplicate_position, r"two slices at the same position"),
    ("dicom-no-image-position", "info", b_dicom_no_position, r"no ImagePositionPatient .*in 8 of its 8 files"),
    ("dicom-one-file-without-position", "info", b_dicom_one_without_position,
     r"no ImagePositionPatient .*in 1 of its 8 files"),
    ("dicom-no-orientation", "info", b_dicom_no_orientation, r"no ImageOrientationPatient"),
    ("dicom-no-pixel-spacing", "info", b_dicom_no_pixel_spacing, r"no PixelSpacing"),
    ("dicom-zero-pixel-spacing", "info", b_dicom_zero_pixel_spacing, r"PixelSpacing \[0\.0, 0\.0\] mm: zero"),
    ("dicom-gantry-tilt", "info", b_dicom_gantry_tilt, r"gantry tilt of about 15\.0 degrees"),
    ("dicom-one-slice-shifted-in-plane", "info", b_dicom_shifted_slice, r"shifted within their planes by up to"),
    ("dicom-oblique-rounded-positions", "info", b_dicom_rounded_oblique, (OK, r"64 x 64 x 8")),
    ("dicom-sheared-orientation", "info", b_dicom_sheared_orientation, r"not unit vectors at right angles"),
    ("dicom-mixed-orientation", "info", b_dicom_mixed_orientation, r"mixes slice orientations"),
    ("dicom-mixed-sizes", "info", b_dicom_mixed_sizes, r"different sizes \(32 x 32, 64 x 64\)"),
    ("dicom-mixed-pixel-spacing", "info", b_dicom_mixed_pixel_spacing, r"mixes pixel spacings"),
    ("dicom-uneven-spacing", "info", b_dicom_uneven_spacing, r"uneven slice spacing"),
    ("dicom-file-without-pixel-data", "info", b_dicom_file_without_pixels, r"ends \(\d+ bytes\) before its pixel data"),
    ("dicom-report-without-pixel-data", "info", b_dicom_report_file, r"without pixel data \(SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.88\.22\)"),
    ("dicom-series-without-pixel-data", "info", b_dicom_series_without_pixels, r"cut before its pixel data"),
    ("dicom-zero-byte-file", "info", b_dicom_zero_byte_file, r"empty \(0 bytes\)"),
    ("dicom-single-file-truncated", "info", b_dicom_single_truncated, r"truncated: it holds \d+ bytes of pixel data"),
    ("dicom-single-file-header-cut", "info", b_dicom_single_header_cut, r"damaged or truncated"),
    ("dicom-absurd-rows-columns", "info", b_dicom_absurd_size, r"declares 65535 x 65535 x 1 = 4\.29e\+09 voxels"),
    ("dicom-ct-monochrome1", "info", b_dicom_monochrome1_ct, r"CT stored as MONOCHROME1"),
    ("dicom-rescale-slope-zero", "info", b_dicom_slope_zero, r"RescaleSlope 0 is absurd"),
    ("dicom-rescale-slope-absurd", "info", b_dicom_slope_absurd, r"RescaleSlope 1e\+06 is absurd"),
    ("dicom-rescale-intercept-absurd", "info", b_dicom_intercept_absurd, r"RescaleIntercept -1e\+07 is absurd"),
    ("dicom-undecodable-transfer-syntax", "info", b_dicom_undecodable,
     r"cannot decode the DICOM series .*JPEG Baseline"),
    ("dicom-ct-and-seg-in-subfolders", "info", b_dicom_ct_and_seg, (OK, r"left out the non-image object SEG")),
    ("dicom-ct-and-seg-in-one-folder", "info", b_dicom_ct_and_seg_same_folder, (OK, r"64 x 64 x 8")),
    ("dicom-ct-and-sr", "info", b_dicom_ct_and_sr, (OK, r"64 x 64 x 8")),
    ("dicom-only-seg", "info", b_dicom_only_seg, r"no image series, only non-image DICOM objects"),
    ("dicom-two-ct-series", "info", b_dicom_two_ct_series, r"holds 2 DICOM series \(images\)"),
    ("dicom-escape-codes-in-header", "info", b_dicom_escape_codes, (OK, r"SeriesDescription RED text")),
    ("dicom-sagittal", "info", b_dicom_sagittal, (OK, r"64 x 64 x 8")),
    ("dicom-coronal", "info", b_dicom_coronal, (OK, r"64 x 64 x 8")),
    ("dicom-rgb-screenshot-to-ct-task", "sarcopenia", b_dicom_rgb_secondary_capture,
     r"is an RGB picture \(a screenshot or photo\) \(1 slice\(s\) of 50 x 40 pixels\).*not CT Hounsfield units"),
    ("dicom-mr-to-ct-task", "sarcopenia", b_dicom_mr_to_sarcopenia, r"an MR image"),
    ("folder-of-text-files", "info", b_folder_of_text, r"no DICOM series found"),
    ("empty-folder", "info", b_empty_folder, r"is empty"),
    ("missing-path", "info", b_missing_path, r"does not exist"),
    ("nifti-valid", "info", b_nii_valid, (OK, r"64 x 64 x 8")),
    ("nifti-gz-truncated", "info", b_nii_gz_truncated, r"truncated or damaged.*breaks off"),
    ("nifti-truncated", "info", b_nii_truncated, r"truncated: .*slices are missing"),
    ("nifti-header-only", "info", b_nii_header_only, r"truncated: it holds 0 bytes"),
    ("nifti-gz-not-gzip", "info", b_nii_gz_not_gzip, r"not gzip-compressed"),
    ("nifti-gz-of-text", "info", b_nii_gz_of_text, r"not a NIfTI file"),
    ("nifti-text", "info", b_nii_text, r"not a NIfTI file \(it holds plain text\)"),
    ("nifti-4d", "info", b_nii_4d, r"4D image"),
    ("nifti-absurd-dims", "info", b_nii_absurd_dims, r"declares 30000 x 30000 x 30000"),
    ("nifti-sheared-affine", "info", b_nii_sheared, r"sheared"),
    ("nifti-nan-voxels", "info", b_nii_nan, r"NaN"),
    ("nifti-inf-voxels", "info", b_nii_inf, r"1 voxels .* infinite"),
    ("nifti-zero-spacing", "info", b_nii_zero_spacing, r"zero or negative"),
    ("nifti-negative-spacing", "info", b_nii_negative_spacing, r"zero or negative"),
    ("nifti-spacing-1e6", "info", b_nii_huge_spacing, r"outside 0\.001\.\.1000 mm"),
    ("nifti-spacing-1e-6", "info", b_nii_tiny_spacing, r"outside 0\.001\.\.1000 mm"),
    ("nifti-sagittal", "info", b_nii_sagittal, (OK, r"64 x 64 x 8")),
    ("nifti-coronal", "info", b_nii_coronal, (OK, r"64 x 64 x 8")),
    ("nifti-float64", "info", b_nii_float64, (OK, r"float64")),
    ("nrrd-truncated", "info", b_nrrd_truncated, r"truncated: .*slices are missing"),
    ("nrrd-gzip-truncated", "info", b_nrrd_gzip_truncated, r"truncated or damaged"),
    ("nrrd-text", "info", b_nrrd_text, r"not a NRRD file"),
    ("nhdr-missing-data-file", "info", b_nhdr_missing_data, r"data file .* is missing"),
    ("mha-truncated", "info", b_mha_truncated, r"truncated: .*slices are missing"),
    ("mha-compressed-truncated", "info", b_mha_compressed_truncated, r"truncated"),
    ("mhd-missing-raw", "info", b_mhd_missing_raw, r"data file ct\.raw is missing"),
    ("mha-absurd-dims", "info", b_mha_absurd_dims, r"declares 100000 x 100000 x 1000"),
    ("nifti-zero-size", "info", b_nii_zero_size, r"declares an image of size \[0, 64, 8\]"),
    ("escape-codes-in-file-name", "info", b_escape_codes_in_file_name, r"in/red\.nii\.gz is empty"),
    ("png-absurd-dims", "info", b_png_absurd_dims, r"declares 100000 x 100000 = 1e\+10 voxels"),
    ("png-zero-bytes", "info", b_png_zero_bytes, r"empty \(0 bytes\)"),
    ("png-holding-text", "info", b_png_text, r"named \.png but is not a PNG picture \(it holds text"),
    ("png-truncated", "info", b_png_truncated, r"could not be read as a picture.*(damaged|cut short)"),
    ("jpg-holding-png", "info", b_jpg_holding_png, r"named \.jpg but is not a JPG picture \(it holds a PNG"),
    ("png-8bit-to-ct-task", "sarcopenia", b_png_grey, r"an 8-bit PNG picture \(2D, 64 x 64 pixels\).*not CT Hounsfield units"),
    ("jpeg-8bit-to-ct-task", "sarcopenia", b_jpeg_grey, r"8-bit JPG picture.*not CT Hounsfield units"),
    ("png-rgb-screenshot-to-ct-task", "sarcopenia", b_png_rgb, r"RGB picture \(a screenshot"),
    ("uint8-volume-to-ct-task", "sarcopenia", b_uint8_volume, r"8-bit voxels \(uint8"),
    ("int8-volume-to-ct-task", "sarcopenia", b_int8_volume, r"8-bit voxels \(int8"),
    ("binary-mask-to-ct-task", "sarcopenia", b_binary_mask, r"8-bit voxels \(uint8, values 0 \.\. 1\)"),
    ("labelmap-to-ct-task", "sarcopenia", b_labelmap_as_ct, r"looks like a label map \(5 distinct values"),
    ("constant-volume-to-ct-task", "sarcopenia", b_constant_volume, r"every voxel of the image has the value -1000"),
    ("unscaled-ct-to-ct-task", "sarcopenia", b_unscaled_ct, r"not CT Hounsfield units"),
    ("2d-nifti-to-ct-task", "sarcopenia", b_nii_2d, r"the image is 2D"),
    ("one-slice-to-ct-task", "sarcopenia", b_nii_one_slice, r"only one slice"),
    ("nan-volume-to-ct-task", "sarcopenia", b_nii_nan, r"NaN"),
    ("dicom-extreme-slice-spacing", "info", b_dicom_extreme_slice_spacing, r"outside 0\.001\.\.1000 mm"),
    ("dicom-single-ct-slice-to-ct-task", "sarcopenia", b_dicom_single_ct_slice_to_ct_task, r"only one slice"),
    ("nifti-absurd-scaling", "info", b_nii_absurd_scaling, r"absurd intensity scaling .*scl_slope nan"),
    ("png-16bit-to-ct-task", "sarcopenia", b_png_16bit_to_ct_task, r"16-bit PNG picture"),
    ("tiff-multipage", "info", b_tiff_multipage, r"picture with 8 pages"),
    ("nrrd-nan-voxels", "info", b_nrrd_nan, r"100 voxels .* NaN"),
    ("mha-inf-voxels", "info", b_mha_inf, r"1 voxels .* infinite"),
    ("bmp-holding-pdf", "info", b_bmp_text, r"not a BMP picture \(it holds a PDF"),
    ("dcm-named-file-holding-png", "info", b_dcm_holding_png, r"not an image MSKSeg can read \(it holds a PNG picture\)"),
]


@pytest.mark.parametrize("command, build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_corpus(tmp_path, capsys, ct, command, build, expected):
    work = tmp_path / "in"
    work.mkdir()
    path = build(work, ct)
    argv = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "sarcopenia" else [])
    status = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err
    assert not re.search(r"\.cxx|\.cpp|sitk::|itk::|ITK ERROR|0x[0-9a-f]{6,}", err), err
    if isinstance(expected, tuple):
        assert status == 0, err
        assert re.search(expected[1], out), out
        assert "\x1b" not in out and "\x07" not in out
        return
    assert status == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith(f"mskseg {command}: error: ")
    assert re.search(expected, err, re.S), err
    assert all(ln.startswith(("mskseg", "  hint:", "  ")) for ln in lines), err
    assert "\x1b" not in err and "\x07" not in err


# --------------------------------------------------------------------------------------------- correct results
def test_sagittal_and_coronal_dicom_keep_their_voxels(tmp_path, ct):
    for name, direction in (("sag", [[0, 0, 1], [1, 0, 0], [0, -1, 0]]), ("cor", [[1, 0, 0], [0, 0, 1], [0, -1, 0]])):
        source = _reoriented(ct, direction)
        write_dicom_series(source, tmp_path / name)
        back = read_image(tmp_path / name)
        k = np.array([0.0, 0.0, 7.0])
        # the same voxel at the same place, whichever way the reader stacked the slices
        p = source.index_to_physical(k)
        idx = np.rint(back.physical_to_index(p)).astype(int)
        assert back.array[idx[2], idx[1], idx[0]] == source.array[7, 0, 0]


def test_folder_with_ct_and_seg_reads_the_ct(tmp_path, ct):
    image = read_image(b_dicom_ct_and_seg(tmp_path, ct))
    assert image.size == (64, 64, 8) and image.metadata["Modality"] == "CT"
    assert any(s.startswith("SEG ") for s in image.metadata["ignored_series"])


def test_padding_is_mapped_to_air_and_said(ct):
    from mskseg.ctvalues import map_padding_to_air

    arr = ct.array.copy()
    yy, xx = np.mgrid[:64, :64]
    outside = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 > 31 ** 2
    arr[:, outside] = -3024
    mapped, warning = map_padding_to_air(ct.with_array(arr))
    assert mapped.array.min() >= -1024 and np.all(mapped.array[:, outside] == -1000)
    assert re.search(r"padding values \(-3024 HU.*mapped to air \(-1000 HU\)", warning)
    same, none = map_padding_to_air(ct)
    assert same is ct and none is None
    declared = ct.with_array(np.where(outside, -2000, ct.array).astype(np.int16))
    assert "-2000" in map_padding_to_air(declared)[1]


def test_sarcopenia_validate_step_maps_padding_and_warns(ct, monkeypatch):
    from mskseg.sarcopenia import pipeline

    arr = ct.array.copy()
    arr[:, :3, :] = -3024
    seen = {}

    def stop(image, *a, **k):
        seen["min"] = float(image.array.min())
        raise InvalidImageError("stop here")
    monkeypatch.setattr("mskseg.sarcopenia.l3.check_ct_for_l3", stop)
    with pytest.raises(InvalidImageError, match="stop here"):
        pipeline.run_sarcopenia(ct.with_array(arr))
    assert seen["min"] == -1024.0 or seen["min"] >= -1024


def test_fov_cut_warning():
    from mskseg.ctvalues import fov_cut_warning

    lab = np.zeros((2, 40, 40), np.uint8)
    lab[0, 5:35, 5:35] = 2
    lab[1, 5:35, 0:30] = 2  # body cut at the left edge
    assert fov_cut_warning(lab, 0) is None
    assert re.search(r"slice 1: the body is cut by the edge of the field of view.*SAT, VAT", fov_cut_warning(lab, 1))


def test_sheared_direction_with_unit_determinant_is_refused():
    shear = np.array([[1.0, 0.5, 0], [0, 1.0, 0], [0, 0, 1.0]])  # det 1
    with pytest.raises(InvalidImageError, match="not orthonormal"):
        Image(np.zeros((2, 3, 4), np.int16), (1, 1, 1), None, shear)


def test_generic_ct_card_refuses_a_picture(tmp_path, ct):
    from mskseg.models import find_model_cards
    from mskseg.pipeline import check_input

    from mskseg.models.networks import NOT_SEGMENTATION

    cards = [c for c in find_model_cards() if "CT" in c.modalities
             and str(c.architecture.get("name", "")) not in NOT_SEGMENTATION]  # the level detector segments nothing
    if not cards:
        pytest.skip("no CT model card installed")
    picture = read_image(b_png_grey(tmp_path, ct))
    with pytest.raises(InvalidImageError, match="8-bit PNG picture"):
        check_input(picture, cards[0])
    labels = ct.with_array((ct.array > 0).astype(np.uint8))
    with pytest.raises(InvalidImageError, match="8-bit voxels"):
        check_input(labels, cards[0])


def test_valid_ct_passes_the_ct_checks(ct):
    from mskseg.ctvalues import check_ct_values

    check_ct_values(ct)
    check_ct_values(ct.with_array(ct.array.astype(np.float64)))


def test_padding_and_a_cut_body_are_warned_about_in_the_sarcopenia_result():
    from conftest import small_torso
    from mskseg.sarcopenia.pipeline import run_sarcopenia

    sample = small_torso()
    image, k = sample.image, sample.l3_index
    plain = run_sarcopenia(image, level_index=k, method="rules", device="cpu")
    assert not any("padding" in w or "field of view" in w for w in plain.warnings)
    arr = image.array.copy()
    yy, xx = np.mgrid[:arr.shape[1], :arr.shape[2]]
    arr[:, (yy - 127.5) ** 2 + (xx - 127.5) ** 2 > 127 ** 2] = -3024  # outside the reconstruction circle
    padded = run_sarcopenia(image.with_array(arr), level_index=k, method="rules", device="cpu")
    assert any(re.search(r"padding values \(-3024 HU.*mapped to air", w) for w in padded.warnings)
    for key in ("SMA_cm2", "SAT_cm2", "VAT_cm2"):
        assert padded.headline_row()[key] == pytest.approx(plain.headline_row()[key], rel=0.02), key
    body = np.flatnonzero((image.array[k] > -500).any(axis=0))
    c0 = int(body.min()) + 25  # cut the body at the left edge of the field of view
    cut_image = Image(image.array[:, :, c0:], image.spacing, image.index_to_physical([c0, 0, 0]), image.direction,
                      dict(image.metadata))
    cut_result = run_sarcopenia(cut_image, level_index=k, method="rules", device="cpu")
    assert any(re.search(rf"slice {k}: the body is cut by the edge of the field of view.*SAT, VAT", w)
               for w in cut_result.warnings)


def test_dicom_pixel_padding_value_is_read_and_mapped_to_air(tmp_path, ct):
    from mskseg.ctvalues import map_padding_to_air

    arr = ct.array.copy()
    arr[:, :4, :] = -2000
    folder, files = series(tmp_path, ct.with_array(arr))
    edit(files, lambda ds, k: ds.add_new(0x00280120, "SS", -2000))
    image = read_image(folder)
    assert image.metadata["PixelPaddingValue"] == -2000
    mapped, warning = map_padding_to_air(image)
    assert np.all(mapped.array[:, :4, :] == -1000) and "-2000" in warning
