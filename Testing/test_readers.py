"""Readers: every supported format gives the geometry of its header; bad input gives a clear error."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import require
from mskseg.errors import ImageReadError, InvalidImageError, SeriesSelectionError
from mskseg.io import list_dicom_series, read_image
from mskseg.io.dicomwrite import write_dicom_series


def test_jpeg2000_series_loads_with_the_geometry_of_its_headers(shared_data):
    import pydicom

    folder = shared_data / "ct-dicom-t12" / "dicom"
    img = read_image(folder)
    headers = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in folder.iterdir()),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    assert headers[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert img.size == (512, 512, 20)
    assert np.allclose(img.origin, [float(v) for v in headers[0].ImagePositionPatient])
    row, col = (float(v) for v in headers[0].PixelSpacing)
    dz = float(headers[1].ImagePositionPatient[2]) - float(headers[0].ImagePositionPatient[2])
    assert np.allclose(img.spacing, (col, row, dz))
    assert np.allclose(img.direction, np.eye(3))
    # Rescale applied: air is about -1000 HU, and contrast CT has bone above 1000 HU.
    assert img.array.min() <= -1000 and img.array.max() > 1000
    assert img.metadata["Modality"] == "CT"
    assert img.metadata["ContrastBolusAgent"] == "APPLIED"
    assert img.metadata["PatientWeight"] == 79.0
    assert len(img.metadata["source_files"]) == 20
    # source_files[k] is the file of slice k
    first = pydicom.dcmread(img.metadata["source_files"][5], stop_before_pixels=True)
    assert np.allclose([float(v) for v in first.ImagePositionPatient], img.index_to_physical([0, 0, 5]))


def test_single_dicom_slice_and_uncompressed_series(shared_data):
    folder = shared_data / "dcmqi-ct3slice" / "ct-3slice"
    vol = read_image(folder)
    one = read_image(folder / "01.dcm")
    assert vol.size == (512, 512, 3) and one.ndim == 3 and one.size == (512, 512, 1)
    k = [i for i, f in enumerate(vol.metadata["source_files"]) if f.endswith("01.dcm")][0]
    assert np.array_equal(one.array[0], vol.array[k])
    assert np.allclose(one.origin, vol.index_to_physical([0, 0, k]))


def test_nifti_labelmap_is_read_in_lps(shared_data):
    import nibabel as nib

    path = shared_data / "totalseg-labelmaps" / "s0328" / "s0328_combined_total_v2.nii.gz"
    img = read_image(path)
    nii = nib.load(str(path))
    ras_origin = nii.affine[:3, 3]
    assert np.allclose(img.origin, ras_origin * [-1, -1, 1], atol=1e-3)
    assert img.size == nii.shape


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_formats_round_trip_geometry(tmp_path, oblique_ct, suffix):
    p = tmp_path / f"ct{suffix}"
    sitk.WriteImage(oblique_ct.to_sitk(), str(p))
    back = read_image(p)
    assert back.same_grid(oblique_ct)
    assert np.array_equal(back.array, oblique_ct.array)


def test_png_radiograph_becomes_2d_greyscale(tmp_path):
    from PIL import Image as PILImage

    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[10:20, 5:25] = (200, 100, 50)
    PILImage.fromarray(rgb).save(tmp_path / "xray.png")
    img = read_image(tmp_path / "xray.png")
    assert img.ndim == 2 and img.array.shape == (40, 30)
    assert abs(float(img.array[15, 10]) - (200 * 0.299 + 100 * 0.587 + 50 * 0.114)) < 1


def test_dicom_radiograph_is_2d_with_imager_spacing_and_monochrome1_inverted(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "dx.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientSex = "DX", "F"
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    arr = np.zeros((50, 40), np.uint16)
    arr[20:30, :] = 3000  # bright band stored as MONOCHROME1 means it displays dark
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagerPixelSpacing = ["0.15", "0.14"]
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "dx.dcm", enforce_file_format=True)
    img = read_image(tmp_path / "dx.dcm")
    assert img.ndim == 2 and img.array.shape == (50, 40)
    assert np.allclose(img.spacing, (0.14, 0.15))
    assert img.array[25, 5] < img.array[5, 5]  # inverted to MONOCHROME2
    assert img.metadata["Modality"] == "DX" and img.metadata["PatientSex"] == "F"


def test_synthetic_dicom_series_round_trips_with_patient_attributes(tmp_path, oblique_ct):
    ct = oblique_ct.with_array(oblique_ct.array)
    ct.metadata.update(PatientSex="F", PatientSize=1.64, PatientWeight=58.5, PatientAge="071Y")
    write_dicom_series(ct, tmp_path / "s")
    back = read_image(tmp_path / "s")
    # oblique_ct's k axis runs against the slice normal: the reader stacks along the normal
    assert np.array_equal(back.array, ct.array[::-1])
    assert np.allclose(back.index_to_physical([0, 0, 0]), ct.index_to_physical([0, 0, ct.size[2] - 1]), atol=1e-4)
    assert back.metadata["PatientSize"] == 1.64 and back.metadata["PatientAge"] == "071Y"


def _two_series(tmp_path, oblique_ct):
    write_dicom_series(oblique_ct, tmp_path / "a", series_uid="1.2.3.4.1")
    write_dicom_series(oblique_ct, tmp_path / "b", series_uid="1.2.3.4.2")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            f.rename(mixed / f"{sub}_{f.name}")
    return mixed


def test_folder_with_two_series_lists_them_and_series_uid_chooses(tmp_path, oblique_ct):
    mixed = _two_series(tmp_path, oblique_ct)
    with pytest.raises(SeriesSelectionError) as e:
        read_image(mixed)
    assert "1.2.3.4.1" in e.value.message and "1.2.3.4.2" in e.value.message and "--series" in e.value.hint
    img = read_image(mixed, series_uid="1.2.3.4.2")
    assert img.metadata["SeriesInstanceUID"] == "1.2.3.4.2" and img.size == oblique_ct.size
    assert len(list_dicom_series(mixed)) == 2
    with pytest.raises(SeriesSelectionError, match="not in"):
        read_image(mixed, series_uid="9.9.9")


def test_missing_path_empty_folder_and_non_image_are_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ImageReadError, match="could not be read"):
        read_image(tmp_path / "broken.nii.gz")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path / "docs")


def test_4d_image_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16), isVector=False)
    sitk.WriteImage(img, str(tmp_path / "t.nii.gz"))
    with pytest.raises(InvalidImageError, match="4D"):
        read_image(tmp_path / "t.nii.gz")


def test_zero_spacing_in_header_is_refused(tmp_path):
    p = tmp_path / "zero.nrrd"
    data = np.zeros((4, 5, 6), np.int16).tobytes()
    p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 6 5 4\n"
                  b"space directions: (1,0,0) (0,0,0) (0,0,1)\nkinds: domain domain domain\n"
                  b"endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n" + data)
    with pytest.raises((InvalidImageError, ImageReadError), match="spacing|direction|orthonormal"):
        read_image(p)


def test_dicom_seg_given_as_image_says_what_it_is(shared_data):
    with pytest.raises(ImageReadError, match="Segmentation object"):
        read_image(require(shared_data / "dcmqi-ct3slice" / "segs" / "liver.dcm"))


def _nifti_with_pixdim(path, pixdim):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.eye(4))
    img.header["pixdim"][1:4] = pixdim
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("kind", ["mha-negative", "nifti-negative", "nifti-zero", "nrrd-negative"])
def test_negative_or_zero_spacing_in_a_header_is_refused_not_silently_flipped(tmp_path, kind):
    if kind == "mha-negative":
        p = tmp_path / "neg.mha"
        p.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementSpacing = 1 -0.5 1\n"
                      b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + bytes(48))
    elif kind == "nifti-negative":
        p = _nifti_with_pixdim(tmp_path / "neg.nii.gz", [1, -0.5, 1])
    elif kind == "nifti-zero":
        p = _nifti_with_pixdim(tmp_path / "zero.nii", [1, 0, 1])
    else:
        p = tmp_path / "neg.nrrd"
        p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nspacings: 1 -0.5 1\n"
                      b"endian: little\nencoding: raw\n\n" + bytes(48))
    with pytest.raises(InvalidImageError, match="zero or negative"):
        read_image(p)
