"""DICOM-SEG export and import: voxels and geometry survive, codes are written, bad input is refused.

Real data: the dcmqi 3-slice CT with its label maps and reference SEG objects (../shared/data/dcmqi-ct3slice).
Independent checks: dcmqi's ``segimage2itkimage`` reads our files, and dciodvfy (dicom3tools) finds no errors.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from mskseg.errors import GeometryMismatchError, ImageReadError, InvalidImageError, OutputExistsError
from mskseg.image import Image
from mskseg.io.dicomseg import read_dicom_seg, write_dicom_seg
from mskseg.terminology import get_class

CT3 = "dcmqi-ct3slice"


# ----------------------------------------------------------------------------------------------- helpers
def read_ct_series(folder: Path) -> Image:
    """The CT series in ``folder`` with ``metadata["source_files"]`` in slice order.

    Uses ``mskseg.io.read_image`` when it exists; otherwise SimpleITK's series reader, whose file order is the
    slice order of the volume it returns.
    """
    try:
        from mskseg.io import read_image  # type: ignore[attr-defined]
    except ImportError:
        read_image = None
    if read_image is not None:
        image = read_image(folder)
        if image.metadata.get("source_files"):
            return image
    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetFileNames(files)
    return Image.from_sitk(reader.Execute(), {"Modality": "CT", "source_files": files})


def read_nrrd_labelmap(path: Path) -> Image:
    """A label map file read with SimpleITK."""
    return Image.from_sitk(sitk.ReadImage(str(path)))


def write_ct_series(image: Image, folder: Path) -> Image:
    """Write ``image`` (int16 HU, any direction) as a single-frame CT DICOM series; return it with source_files.

    File k holds slice k of the array, so a direction whose k column points against the slice normal gives
    a series stored "upside down" relative to the order SimpleITK and dcmqi would sort it in.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rows, columns = image.array.shape[1:]
    orientation = [f"{v:.6f}" for v in (*image.direction[:, 0], *image.direction[:, 1])]
    files = []
    for k in range(image.array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PHANTOM1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, k + 1
        ds.Manufacturer = "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.index_to_physical(np.array([0.0, 0.0, k]))]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = [f"{image.spacing[1]:.6f}", f"{image.spacing[0]:.6f}"]
        ds.SliceThickness = f"{image.spacing[2]:.6f}"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = np.ascontiguousarray(image.array[k], dtype=np.int16).tobytes()
        path = folder / f"slice{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
    return Image(
        image.array.astype(np.int16), image.spacing, image.origin, image.direction.copy(),
        {"Modality": "CT", "source_files": files, "SeriesInstanceUID": series},
    )


def _segimage2itkimage() -> str | None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("segimage2itkimage", path=search)


def read_with_dcmqi(seg_path: Path, out_dir: Path) -> dict[int, Image]:
    """Segment number -> mask image, as dcmqi's segimage2itkimage writes them (one NRRD per segment)."""
    tool = _segimage2itkimage()
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi)")
    out_dir.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return {int(p.stem): read_nrrd_labelmap(p) for p in sorted(out_dir.glob("*.nrrd"))}


def dciodvfy_errors(seg_path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for ``seg_path`` (skips when dicom3tools is not installed)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is not on PATH (Debian package dicom3tools)")
    run = subprocess.run([tool, str(seg_path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def ct3(shared_data: Path) -> Image:
    return read_ct_series(shared_data / CT3 / "ct-3slice")


@pytest.fixture
def liver_map(shared_data: Path, ct3: Image) -> Image:
    labelmap = read_nrrd_labelmap(shared_data / CT3 / "segs" / "liver_seg.nrrd")
    ct3.check_same_grid(labelmap)
    return labelmap


@pytest.fixture
def liver_spine_map(shared_data: Path, ct3: Image) -> Image:
    labelmap = read_nrrd_labelmap(shared_data / CT3 / "segs" / "liver_spine_seg.nrrd")
    ct3.check_same_grid(labelmap)
    return labelmap


# ----------------------------------------------------------------------------------------------- round trips
def test_dicom_seg_round_trip_is_voxel_identical_for_our_reader_and_dcmqi(tmp_path, ct3, liver_map):
    assert ct3.metadata["source_files"], "the CT must carry its files in slice order"
    seg_path = write_dicom_seg(tmp_path / "liver.dcm", liver_map, {1: "liver"}, ct3)

    back, labels = read_dicom_seg(seg_path, ct3)
    assert labels == {1: "liver"}
    assert back.same_grid(ct3)
    np.testing.assert_array_equal(back.array, liver_map.array)

    # Without the source, the grid comes from the SEG frames alone and still equals the CT grid.
    alone, _ = read_dicom_seg(seg_path)
    assert alone.same_grid(ct3)
    np.testing.assert_array_equal(alone.array, liver_map.array)

    masks = read_with_dcmqi(seg_path, tmp_path / "dcmqi")
    assert sorted(masks) == [1]
    assert masks[1].same_grid(ct3), masks[1].describe()
    np.testing.assert_array_equal(masks[1].array != 0, liver_map.array == 1)


def test_reference_liver_seg_from_dcmqi_reads_as_its_label_map(shared_data, ct3, liver_map):
    reference = shared_data / CT3 / "segs" / "liver.dcm"
    on_source, labels = read_dicom_seg(reference, ct3)
    assert labels == {1: "liver"}  # SegmentLabel "Liver" maps back to the terminology class
    assert on_source.same_grid(ct3)
    np.testing.assert_array_equal(on_source.array, liver_map.array)

    alone, _ = read_dicom_seg(reference)
    assert alone.same_grid(ct3)
    np.testing.assert_array_equal(alone.array, liver_map.array)


def test_seg_without_frames_in_middle_slice_reads_back_on_full_slice_spacing(tmp_path, ct3, liver_map):
    gapped = liver_map.array.copy()
    gapped[1] = 0  # no frame for the middle slice: frames are 2 mm apart, the slices 1 mm
    labelmap = liver_map.with_array(gapped)
    seg_path = write_dicom_seg(tmp_path / "gapped.dcm", labelmap, {1: "liver"}, ct3)
    alone, _ = read_dicom_seg(seg_path)
    assert alone.same_grid(ct3), alone.describe()
    np.testing.assert_array_equal(alone.array, gapped)


def test_shared_nrrd_label_maps_lie_on_the_ct_series_grid(shared_data, ct3):
    nrrds = sorted((shared_data / CT3 / "segs").glob("*.nrrd"))
    assert nrrds
    for path in nrrds:
        ct3.check_same_grid(read_nrrd_labelmap(path), f"label map {path.name}")


def test_named_but_empty_segment_is_kept_and_label_values_become_segment_numbers(tmp_path, ct3, liver_spine_map):
    labelmap = liver_spine_map.with_array(np.where(liver_spine_map.array == 2, 5, liver_spine_map.array))
    labels = {1: "liver", 3: "skeletal_muscle", 5: "vertebrae_T10"}  # 3 is named but absent
    seg_path = write_dicom_seg(tmp_path / "multi.dcm", labelmap, labels, ct3)

    back, back_labels = read_dicom_seg(seg_path, ct3)
    assert back_labels == {1: "liver", 2: "skeletal_muscle", 3: "vertebrae_T10"}
    expected = np.select([labelmap.array == 1, labelmap.array == 5], [1, 3], 0)
    np.testing.assert_array_equal(back.array, expected)
    assert not (back.array == 2).any()

    masks = read_with_dcmqi(seg_path, tmp_path / "dcmqi")
    assert sorted(masks) == [1, 2, 3]
    assert not masks[2].array.any()  # the empty segment reads as an empty volume
    np.testing.assert_array_equal(masks[3].array != 0, labelmap.array == 5)
    assert all(m.same_grid(ct3) for m in masks.values())


def test_series_stored_against_slice_normal_maps_back_onto_exact_grid(tmp_path, oblique_ct, oblique_labels):
    # oblique_ct: rotated in-plane and its k axis runs against the slice normal (det(direction) = -1).
    assert np.linalg.det(oblique_ct.direction) < 0
    ct = write_ct_series(oblique_ct, tmp_path / "series")
    labelmap, labels = oblique_labels
    seg_path = write_dicom_seg(tmp_path / "oblique.dcm", labelmap, labels, ct)

    back, back_labels = read_dicom_seg(seg_path, ct)
    assert back_labels == labels
    assert back.same_grid(ct)
    np.testing.assert_array_equal(back.array, labelmap.array)

    # Without the source: the right-handed grid (k along the normal), i.e. the same voxels with k reversed.
    alone, _ = read_dicom_seg(seg_path)
    np.testing.assert_allclose(alone.origin, ct.index_to_physical(np.array([0, 0, ct.array.shape[0] - 1])),
                               atol=1e-3)
    np.testing.assert_allclose(alone.direction[:, 2], -ct.direction[:, 2], atol=1e-6)
    np.testing.assert_array_equal(alone.array, labelmap.array[::-1])

    masks = read_with_dcmqi(seg_path, tmp_path / "dcmqi")
    for number in labels:
        assert masks[number].same_grid(alone), masks[number].describe()
        np.testing.assert_array_equal(masks[number].array != 0, labelmap.array[::-1] == number)


def test_segments_carry_terminology_codes_modifier_colour_and_algorithm(tmp_path, ct3, liver_spine_map):
    labels = {1: "hip_left", 2: "skeletal_muscle"}
    seg_path = write_dicom_seg(tmp_path / "codes.dcm", liver_spine_map, labels, ct3, algorithm_version="9.9")
    ds = pydicom.dcmread(seg_path)
    assert ds.SegmentationType == "BINARY"
    assert ds.SeriesDescription == "MSKSeg segmentation"
    assert ds.StudyInstanceUID == pydicom.dcmread(ct3.metadata["source_files"][0]).StudyInstanceUID
    for item, name in zip(ds.SegmentSequence, labels.values()):
        cls = get_class(name)
        assert item.SegmentLabel == cls.display_name
        category, type_item = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue, category.CodeMeaning) == cls.category
        assert (type_item.CodingSchemeDesignator, type_item.CodeValue, type_item.CodeMeaning) == cls.type
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "9.9"
        assert len(item.RecommendedDisplayCIELabValue) == 3
    modifier = ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodingSchemeDesignator, modifier.CodeValue) == get_class("hip_left").type_modifier[:2]
    assert "SegmentedPropertyTypeModifierCodeSequence" not in ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]


@pytest.mark.parametrize("labels", [{1: "liver"}, {1: "liver", 2: "vertebrae_T10", 3: "visceral_fat"}],
                         ids=["one_class", "multi_class_with_empty_segment"])
def test_dciodvfy_finds_no_errors_in_written_seg(tmp_path, ct3, liver_spine_map, labels):
    labelmap = liver_spine_map.with_array(np.where(liver_spine_map.array <= max(labels), liver_spine_map.array, 0))
    seg_path = write_dicom_seg(tmp_path / "seg.dcm", labelmap, labels, ct3)
    assert dciodvfy_errors(seg_path) == []


def test_labelmap_segmentation_type_round_trips_with_our_reader(tmp_path, ct3, liver_spine_map):
    seg_path = write_dicom_seg(tmp_path / "labelmap.dcm", liver_spine_map, {1: "liver", 2: "vertebrae_T10"}, ct3,
                               segment_type="LABELMAP")
    assert pydicom.dcmread(seg_path, stop_before_pixels=True).SegmentationType == "LABELMAP"
    back, labels = read_dicom_seg(seg_path, ct3)
    assert labels == {1: "liver", 2: "vertebrae_T10"}
    np.testing.assert_array_equal(back.array, liver_spine_map.array)


def test_overlapping_segments_raise_unless_later_wins_is_chosen(shared_data, ct3):
    overlapping = shared_data / CT3 / "segs" / "partial_overlaps.dcm"
    with pytest.raises(InvalidImageError, match="overlap"):
        read_dicom_seg(overlapping, ct3)

    labelmap, labels = read_dicom_seg(overlapping, ct3, overlap="later_wins")
    assert len(labels) == len(pydicom.dcmread(overlapping, stop_before_pixels=True).SegmentSequence)
    # Every voxel of the highest segment is kept: nothing later can take it.
    last = max(labels)
    segment_maps = [read_nrrd_labelmap(p) for p in sorted((shared_data / CT3 / "segs").glob("partial_overlaps-*.nrrd"))]
    last_mask = np.any([m.array == last for m in segment_maps], axis=0)
    np.testing.assert_array_equal(labelmap.array == last, last_mask)


# ----------------------------------------------------------------------------------------------- bad input
def test_source_not_read_from_dicom_is_refused(tmp_path, oblique_ct, oblique_labels):
    labelmap, labels = oblique_labels
    with pytest.raises(InvalidImageError, match="DICOM-SEG needs a CT read from DICOM"):
        write_dicom_seg(tmp_path / "x.dcm", labelmap, labels, oblique_ct)
    assert not (tmp_path / "x.dcm").exists()


def test_labelmap_on_another_grid_is_refused(tmp_path, ct3, liver_map):
    shifted = Image(liver_map.array, liver_map.spacing, np.add(liver_map.origin, (5.0, 0, 0)), liver_map.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        write_dicom_seg(tmp_path / "x.dcm", shifted, {1: "liver"}, ct3)


def test_existing_output_is_not_overwritten_without_overwrite(tmp_path, ct3, liver_map):
    target = tmp_path / "liver.dcm"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        write_dicom_seg(target, liver_map, {1: "liver"}, ct3)
    assert target.read_bytes() == b"keep me"
    write_dicom_seg(target, liver_map, {1: "liver"}, ct3, overwrite=True)
    assert pydicom.dcmread(target).Modality == "SEG"


def test_source_files_out_of_slice_order_are_refused(tmp_path, ct3, liver_map):
    shuffled = ct3.with_array(ct3.array)
    shuffled.metadata["source_files"] = list(reversed(ct3.metadata["source_files"]))
    with pytest.raises(InvalidImageError, match="slice order"):
        write_dicom_seg(tmp_path / "x.dcm", liver_map, {1: "liver"}, shuffled)


def test_reading_onto_a_source_of_another_grid_is_refused(shared_data, oblique_ct):
    with pytest.raises(GeometryMismatchError):
        read_dicom_seg(shared_data / CT3 / "segs" / "liver.dcm", oblique_ct)


def test_empty_labels_are_refused(tmp_path, ct3, liver_map):
    with pytest.raises(InvalidImageError, match="at least one named segment"):
        write_dicom_seg(tmp_path / "x.dcm", liver_map.with_array(np.zeros_like(liver_map.array)), {}, ct3)


def test_reading_a_ct_slice_as_seg_is_refused(shared_data):
    with pytest.raises(ImageReadError, match="not a DICOM Segmentation"):
        read_dicom_seg(shared_data / CT3 / "ct-3slice" / "01.dcm")


def test_option_value_dicom_does_not_allow_is_refused_with_its_name(tmp_path, ct3, liver_map):
    with pytest.raises(InvalidImageError, match="could not be built"):
        write_dicom_seg(tmp_path / "x.dcm", liver_map, {1: "liver"}, ct3, content_label="lower case label!")


def test_seg_on_the_real_jpeg2000_series_with_blank_sop_class_in_its_datasets(tmp_path, shared_data):
    """The anonymised real series keeps SOP Class/Instance UIDs only in its file meta header."""
    from mskseg.io import read_image

    ct = read_image(shared_data / "ct-dicom-t12" / "dicom")
    first = pydicom.dcmread(ct.metadata["source_files"][0], stop_before_pixels=True)
    assert not first.get("SOPClassUID")  # what makes this case special
    lab = np.zeros(ct.array.shape, np.uint8)
    lab[10, 200:300, 150:260] = 1
    lab[11, 220:260, 300:330] = 2
    path = write_dicom_seg(tmp_path / "t12.dcm", ct.with_array(lab), {1: "skeletal_muscle", 2: "visceral_fat"}, ct)
    back, labels = read_dicom_seg(path, ct)
    assert labels == {1: "skeletal_muscle", 2: "visceral_fat"} and np.array_equal(back.array, lab)
    ref = pydicom.dcmread(path).ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPClassUID == first.file_meta.MediaStorageSOPClassUID
    assert dciodvfy_errors(path) == [] if shutil.which("dciodvfy") else True


def test_seg_on_the_real_ircad_series_without_frame_of_reference_uid(tmp_path, shared_data):
    """3D-IRCADb 17 is anonymised without (0020,0052): the SEG names a new Frame of Reference (the same for
    every export of the series), says so in a warning, reads back onto the CT and passes dciodvfy."""
    from mskseg.io import read_image
    from mskseg.io.dicomseg import DicomSegWarning

    ct = read_image(shared_data / "ircad-abdomen-ct17" / "dicom")
    first = pydicom.dcmread(ct.metadata["source_files"][0], stop_before_pixels=True)
    assert not first.get("FrameOfReferenceUID")  # what makes this case special
    lab = np.zeros(ct.array.shape, np.uint8)
    k = ct.array.shape[0] // 2
    lab[k - 2:k + 3][ct.array[k - 2:k + 3] > 200] = 1
    lab[k, 100:200, 150:300] = 2
    labels = {1: "vertebrae_L3", 2: "skeletal_muscle"}
    uids = []
    for name in ("a.dcm", "b.dcm"):
        with pytest.warns(DicomSegWarning, match="no Frame of Reference UID"):
            path = write_dicom_seg(tmp_path / name, ct.with_array(lab), labels, ct)
        seg = pydicom.dcmread(path)
        uids.append(str(seg.FrameOfReferenceUID))
    assert uids[0] == uids[1] and uids[0]
    back, names = read_dicom_seg(path, ct)
    assert names == labels and np.array_equal(back.array, lab)
    assert not pydicom.dcmread(ct.metadata["source_files"][0], stop_before_pixels=True).get("FrameOfReferenceUID")
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(path) == []


def test_source_slices_with_mixed_frames_of_reference_are_refused(tmp_path, ct3, liver_map):
    from mskseg.io import dicomseg

    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct3.metadata["source_files"]]
    datasets[-1].FrameOfReferenceUID = "1.2.3.4"
    with pytest.raises(InvalidImageError, match="different Frames of Reference"):
        dicomseg._fill_missing_frame_of_reference(datasets, ct3.metadata["source_files"])
    del datasets[-1].FrameOfReferenceUID
    with pytest.raises(InvalidImageError, match="have none"):
        dicomseg._fill_missing_frame_of_reference(datasets, ct3.metadata["source_files"])
