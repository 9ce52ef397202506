"""Training: data from every on-disk format, synthetic sources, reproducibility, resume, k-fold, fine-tuning,
model cards that load, and the command line."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mskseg import terminology
from mskseg.errors import (
    CancelledError,
    ChecksumError,
    GeometryMismatchError,
    ModelCardError,
    MSKSegError,
    OutputExistsError,
)
from mskseg.image import Image
from mskseg.models import load_model, load_model_card, read_state_dict
from mskseg.train import data as D
from mskseg.train.cli import add_evaluate_parser, add_train_parser, run_evaluate, run_train
from mskseg.train.evaluate import evaluate_folders
from mskseg.train.trainer import TrainConfig, encoder_parameter_names, train

TINY = {"name": "monai.UNet", "args": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}
CLASSES = {1: "skeletal_muscle", 2: "subcutaneous_fat"}


# ============================================================================================ synthetic source
def disk_source(input_spec, seed):
    """Two classes of random disks on noise: muscle-like (+60 HU) and bone-like (+400 HU) on fat (-100 HU)."""
    def sample(index: int):
        rng = np.random.default_rng([seed, index])
        yy, xx = np.mgrid[:32, :32]
        label = np.zeros((32, 32), np.uint8)
        image = rng.normal(-100, 15, (32, 32)).astype(np.float32)
        for value, hu in ((1, 60.0), (2, 400.0)):
            cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(4, 8)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            label[disk] = value
            image[disk] = hu + rng.normal(0, 15, int(disk.sum()))
        return image, label
    return sample


D.register_synthetic_source("test-disks", disk_source, labels={1: "skeletal_muscle", 2: "vertebrae_L3"},
                            version="disks-1.0", description="random disks (tests)")


def synthetic_config(out: Path, **changes) -> TrainConfig:
    settings = dict(out_dir=out, name="disks", synthetic="test-disks", architecture=TINY, epochs=3,
                    steps_per_epoch=10, batch_size=4, learning_rate=1e-2, synthetic_validation_samples=4,
                    window=[-200.0, 500.0], patience=None, seed=3)
    settings.update(changes)
    return TrainConfig(**settings)


def weights_of(result) -> dict[str, torch.Tensor]:
    return read_state_dict(result.weights_path, "safetensors")


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ============================================================================================ synthetic training
def test_thirty_steps_on_synthetic_data_lower_the_loss_and_write_a_loadable_card(tmp_path):
    result = train(synthetic_config(tmp_path / "run"))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    card = load_model_card(result.card_path)  # schema-valid
    model = load_model(card)                  # sha256 checked, weights fit the architecture
    assert card.labels == {1: "skeletal_muscle", 2: "vertebrae_L3"}
    assert card.training["generator_version"] == "disks-1.0" and card.training["seed"] == 3
    assert card.training["epochs"] == 3 and card.training["steps"] == 30
    synthetic = card.training["sources"][0]
    assert synthetic["generator"] == "test-disks" and synthetic["samples_drawn"] == 120
    assert card.training["loss"]["dice_weight"] == 1.0 and card.training["loss"]["ce_weight"] == 1.0
    kinds = {(v["kind"], v.get("class")) for v in card.validation}
    assert ("synthetic-held-out", "skeletal_muscle") in kinds and ("synthetic-held-out", None) in kinds
    assert all(v["n"] == 4 for v in card.validation)
    assert card.timing["cpu_seconds"] >= 0
    with open(result.log_path, newline="") as f:
        log = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in log] == [1, 2, 3] and "synthetic_val_dice_mean" in log[0]
    with torch.inference_mode():
        out = model(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 3, 32, 32)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path):
    a = train(synthetic_config(tmp_path / "a", epochs=1, steps_per_epoch=5))
    b = train(synthetic_config(tmp_path / "b", epochs=1, steps_per_epoch=5))
    c = train(synthetic_config(tmp_path / "c", epochs=1, steps_per_epoch=5, seed=4))
    assert same_weights(weights_of(a), weights_of(b))
    assert a.card.weights["sha256"] == b.card.weights["sha256"]
    assert not same_weights(weights_of(a), weights_of(c))


def test_resume_after_an_interruption_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    settings = dict(epochs=4, steps_per_epoch=4, patience=None)
    whole = train(synthetic_config(tmp_path / "whole", **settings))

    def stop_in_epoch_three(fraction: float, message: str) -> bool:
        return not message.startswith("epoch 3/4 step 2")

    with pytest.raises(CancelledError, match="epoch 3"):
        train(synthetic_config(tmp_path / "parts", **settings), progress=stop_in_epoch_three)
    assert (tmp_path / "parts" / "checkpoint.pt").is_file()
    assert not (tmp_path / "parts" / "disks.card.json").exists()
    resumed = train(synthetic_config(tmp_path / "parts", resume=True, **settings))
    assert same_weights(weights_of(whole), weights_of(resumed))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"], abs=0)


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path):
    def stop(fraction: float, message: str) -> bool:
        return not message.startswith("epoch 2/")

    with pytest.raises(CancelledError):
        train(synthetic_config(tmp_path / "run", epochs=2, steps_per_epoch=2), progress=stop)
    with pytest.raises(MSKSegError, match="settings differ.*learning_rate"):
        train(synthetic_config(tmp_path / "run", epochs=2, steps_per_epoch=2, learning_rate=0.5, resume=True))
    with pytest.raises(MSKSegError, match="nothing to resume"):
        train(synthetic_config(tmp_path / "empty", resume=True))


def test_synthetic_pool_reuses_a_fixed_set_of_samples(tmp_path):
    calls: list[int] = []

    def counting_source(input_spec, seed):
        inner = disk_source(input_spec, seed)

        def sample(index: int):
            calls.append(index)
            return inner(index)
        return sample

    D.register_synthetic_source("test-counting", counting_source, labels={1: "skeletal_muscle", 2: "vertebrae_L3"},
                                version="1")
    result = train(synthetic_config(tmp_path / "pool", synthetic="test-counting", synthetic_pool=5, epochs=1,
                                    steps_per_epoch=10, synthetic_validation_samples=2))
    training_draws = [i for i in calls if i < 1_000_000_000]
    assert set(training_draws) <= set(range(5)) and len(training_draws) == len(set(training_draws))
    assert result.card.training["sources"][0]["pool"] == 5
    assert "a pool of 5 samples" in result.card.training["data"]


def test_l3_phantom_is_registered_when_the_generator_exists():
    pytest.importorskip("mskseg.synth.phantom")
    info = D.get_synthetic_source("l3-phantom")
    data = D.build_synthetic("l3-phantom", {"spacing_mm": [1.5, 1.5], "window": [-250, 250], "channels": 1}, 0)
    assert "skeletal_muscle" in data.labels.values() and data.version
    image, label = data.source(0)
    assert image.shape == label.shape and image.ndim == 2 and 150 < image.shape[0] < 400
    assert info.description


def test_kfold_split_is_disjoint_and_covering():
    cases = [f"case{i:02d}" for i in range(11)]
    validations = []
    for fold in range(3):
        train_cases, val_cases = D.kfold_split(cases, 3, fold, seed=7)
        assert not set(train_cases) & set(val_cases)
        assert sorted(train_cases + val_cases) == cases
        validations.append(val_cases)
    assert sorted(c for v in validations for c in v) == cases
    assert sorted(len(v) for v in validations) == [3, 4, 4]
    assert D.kfold_split(cases, 3, 1, seed=7) == D.kfold_split(cases, 3, 1, seed=7)
    with pytest.raises(MSKSegError, match="outside"):
        D.kfold_split(cases, 3, 3)
    with pytest.raises(MSKSegError, match="cannot be split"):
        D.kfold_split(cases[:2], 3, 0)


def test_fine_tune_loads_the_cards_weights_and_can_freeze_the_encoder(tmp_path):
    base = train(synthetic_config(tmp_path / "base", epochs=1, steps_per_epoch=3))
    copy = train(synthetic_config(tmp_path / "copy", name="copy", epochs=0, architecture=None,
                                  fine_tune_from=str(base.card_path)))
    assert same_weights(weights_of(base), weights_of(copy))
    assert copy.card.training["fine_tuned_from"]["sha256"] == base.card.weights["sha256"]
    assert copy.card.architecture == base.card.architecture

    tuned = train(synthetic_config(tmp_path / "tuned", name="tuned", epochs=1, steps_per_epoch=3, architecture=None,
                                   fine_tune_from=base.card_path, freeze_encoder=True))
    before, after = weights_of(base), weights_of(tuned)
    model = load_model(tuned.card)
    encoder = set(encoder_parameter_names(model, "monai.UNet"))
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    decoder = [k for k, _ in model.named_parameters() if k not in encoder]
    assert any(not torch.equal(before[k], after[k]) for k in decoder)

    with open(base.weights_path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match="does not match"):
        train(synthetic_config(tmp_path / "bad", name="bad", epochs=0, architecture=None,
                               fine_tune_from=base.card_path))


def test_bad_runs_are_refused_before_training(tmp_path):
    done = train(synthetic_config(tmp_path / "run", epochs=1, steps_per_epoch=1))
    with pytest.raises(OutputExistsError, match="already holds results"):
        train(synthetic_config(tmp_path / "run", epochs=1, steps_per_epoch=1))
    train(synthetic_config(tmp_path / "run", epochs=1, steps_per_epoch=1, overwrite=True))
    assert done.card_path.is_file()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(MSKSegError, match="cannot write"):
        train(synthetic_config(blocker / "out"))
    with pytest.raises(ModelCardError, match="unknown"):
        train(synthetic_config(tmp_path / "arch", architecture="unet-enormous"))
    with pytest.raises(MSKSegError, match="no training data"):
        train(TrainConfig(out_dir=tmp_path / "none"))
    with pytest.raises(MSKSegError, match="not registered"):
        train(synthetic_config(tmp_path / "gen", synthetic="no-such-generator"))
    with pytest.raises(MSKSegError, match="no training data found"):
        train(TrainConfig(out_dir=tmp_path / "empty-data", data=tmp_path))


# ============================================================================================ on-disk formats
def ct_and_labels() -> tuple[Image, np.ndarray]:
    """A 4-slice CT (HU) with muscle and fat blocks on slices 1 and 2; identity direction, 0.8 x 0.8 x 2.5 mm."""
    rng = np.random.default_rng(0)
    hu = rng.normal(-900, 10, (4, 24, 24)).astype(np.float32)
    labels = np.zeros((4, 24, 24), np.uint8)
    labels[1:3, 4:12, 4:20] = 1
    labels[1:3, 14:20, 6:18] = 2
    hu[labels == 1] = 50
    hu[labels == 2] = -100
    return Image(np.rint(hu).astype(np.int16), (0.8, 0.8, 2.5), (-10.0, 20.0, 100.0)), labels


def write_volume(image: Image, path: Path) -> None:
    sitk.WriteImage(image.to_sitk(), str(path))


@pytest.fixture(scope="module")
def formats_dir(tmp_path_factory) -> Path:
    """DATA/images + DATA/labels with one case per format: NIfTI, NRRD, .seg.nrrd, DICOM + DICOM-SEG, PNG, RGB PNG."""
    from PIL import Image as PILImage

    from mskseg.io import read_image
    from mskseg.io.dicomseg import write_dicom_seg
    from mskseg.io.dicomwrite import write_dicom_series
    from mskseg.io.segnrrd import write_seg_nrrd

    root = tmp_path_factory.mktemp("formats")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    ct, lab = ct_and_labels()
    write_volume(ct, images / "nifti.nii.gz")
    write_volume(ct.with_array(lab), labels / "nifti.nii.gz")
    write_volume(ct, images / "nrrd.nrrd")
    write_volume(ct.with_array(lab), labels / "nrrd.nrrd")
    write_volume(ct, images / "segnrrd.nii.gz")
    write_seg_nrrd(labels / "segnrrd.seg.nrrd", ct.with_array(lab), CLASSES)
    write_dicom_series(ct, images / "dicom")
    source = read_image(images / "dicom")
    write_dicom_seg(labels / "dicom.dcm", source.with_array(lab), CLASSES, source)
    grey = np.clip((ct.array[1].astype(np.float32) + 250) / 500 * 255, 0, 255).astype(np.uint8)
    PILImage.fromarray(grey).save(images / "png.png")
    PILImage.fromarray(lab[1]).save(labels / "png.png")
    PILImage.fromarray(grey).save(images / "rgb.png")
    rgb = np.zeros((24, 24, 3), np.uint8)
    for value, name in CLASSES.items():
        rgb[lab[1] == value] = terminology.get_class(name).color
    PILImage.fromarray(rgb).save(labels / "rgb.png")
    return root


def test_every_format_reads_with_labels_on_the_image_grid(formats_dir):
    _, lab = ct_and_labels()
    cases = {c.case: c for c in D.discover_cases(formats_dir)}
    assert sorted(cases) == ["dicom", "nifti", "nrrd", "png", "rgb", "segnrrd"]
    for name, paths in cases.items():
        case = D.read_case(paths, CLASSES)
        assert case.image.same_grid(case.labelmap), name
        expected = lab[1] if name in ("png", "rgb") else lab
        assert np.array_equal(case.labelmap.array, expected), name
        assert case.labels == CLASSES, name


def test_labels_off_the_image_grid_are_refused_and_cropped_seg_nrrd_is_placed(tmp_path):
    from mskseg.io.segnrrd import write_seg_nrrd

    ct, lab = ct_and_labels()
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    write_volume(ct, tmp_path / "images" / "a.nii.gz")
    shifted = Image(lab, (0.9, 0.8, 2.5), ct.origin)
    write_volume(shifted, tmp_path / "labels" / "a.nii.gz")
    with pytest.raises(GeometryMismatchError, match="spacing"):
        D.read_case(D.discover_cases(tmp_path)[0], CLASSES)
    with pytest.raises(GeometryMismatchError):
        train(TrainConfig(out_dir=tmp_path / "out", data=tmp_path, labels=CLASSES, architecture=TINY))

    crop = Image(lab[1:3, 4:20, 4:20], ct.spacing, ct.index_to_physical([4.0, 4.0, 1.0]))  # Slicer-style extent
    write_seg_nrrd(tmp_path / "cropped.seg.nrrd", crop, CLASSES)
    placed, names = D.read_labelmap(tmp_path / "cropped.seg.nrrd", source=ct)
    assert np.array_equal(placed.array, lab) and names == CLASSES


def test_manifest_and_missing_labels(tmp_path, formats_dir):
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"image,label,case\n{formats_dir}/images/nifti.nii.gz,{formats_dir}/labels/nifti.nii.gz,p1\n"
                        f"{formats_dir}/images/png.png,{formats_dir}/labels/png.png,p2\n")
    cases = D.discover_cases(manifest)
    assert [c.case for c in cases] == ["p1", "p2"]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "lonely.nii.gz").write_bytes(b"")
    with pytest.raises(MSKSegError, match="without a label map: lonely"):
        D.discover_cases(tmp_path)


def test_training_reads_every_format_and_records_them_in_the_card(formats_dir, tmp_path):
    result = train(TrainConfig(out_dir=tmp_path / "out", name="formats", data=formats_dir, labels=CLASSES,
                               architecture=TINY, epochs=1, steps_per_epoch=2, batch_size=2, folds=3, fold=0,
                               patch_size=[16, 16]))
    files = result.card.training["sources"][0]
    assert files["label_formats"] == ["DICOM-SEG", "NIfTI", "NRRD", "PNG mask", "seg.nrrd"]
    assert files["cases"] == 6 and files["validation_cases"] == 2
    # labelled slices: 2 per volume, 1 per PNG
    assert files["training_samples"] + files["validation_samples"] == 4 * 2 + 2
    assert {v["kind"] for v in result.card.validation} == {"real-development"}
    assert len(result.card.training["validation_cases"]) == 2


def test_evaluate_reads_every_format(formats_dir):
    rows, labels = evaluate_folders(formats_dir / "labels", formats_dir / "labels", labels=CLASSES,
                                    images_dir=formats_dir / "images")
    assert labels == CLASSES
    assert len(rows) == 6 * 2
    assert all(r["dice"] == 1.0 and r["hausdorff95_mm"] == 0.0 for r in rows)


def test_two_and_a_half_d_samples_stack_neighbouring_slices(formats_dir):
    from mskseg.engine import normalise

    case = D.read_case(D.CasePaths("nifti", formats_dir / "images" / "nifti.nii.gz",
                                   formats_dir / "labels" / "nifti.nii.gz"), CLASSES)
    spec = {"window": [-250, 250], "channels": 3, "context_slices": 1, "spacing_mm": None}
    samples = D.prepare_case(case, spec, "2.5d", {"skeletal_muscle": 1, "subcutaneous_fat": 2})
    assert [s.slice_index for s in samples] == [1, 2]
    volume = normalise(case.image.array, spec)
    for s in samples:
        k = s.slice_index
        assert np.allclose(s.image.astype(np.float32), volume[[k - 1, k, k + 1]], atol=1e-3)
    resampled = D.prepare_case(case, dict(spec, spacing_mm=[1.6, 1.6]), "2.5d",
                               {"skeletal_muscle": 1, "subcutaneous_fat": 2})
    assert resampled[0].image.shape == (3, 12, 12) and resampled[0].label.shape == (12, 12)


def test_three_d_training_runs_on_volumes(formats_dir, tmp_path):
    # 3D needs volumes only: a manifest of the volume cases
    manifest = tmp_path / "volumes.csv"
    manifest.write_text("image,label\n" + "".join(
        f"{formats_dir}/images/{n},{formats_dir}/labels/{m}\n"
        for n, m in (("nifti.nii.gz", "nifti.nii.gz"), ("nrrd.nrrd", "nrrd.nrrd"),
                     ("segnrrd.nii.gz", "segnrrd.seg.nrrd"))))
    result = train(TrainConfig(out_dir=tmp_path / "out", name="vol", data=manifest, labels=CLASSES,
                               architecture=TINY, dimensions="3d", patch_size=[4, 16, 16], epochs=1,
                               steps_per_epoch=2, batch_size=2, validation_fraction=0.34))
    card = load_model_card(result.card_path)
    assert card.dimensions == "3d" and card.architecture["args"]["spatial_dims"] == 3
    assert card.validation and card.validation[0]["n"] == 1


def test_real_dicom_seg_and_nrrd_labels_of_one_ct_read_alike(shared_data, tmp_path):
    """The dcmqi three-slice CT with its liver as DICOM-SEG and as NRRD: the same voxels on the CT grid."""
    ct3 = shared_data / "dcmqi-ct3slice"
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for case in ("seg", "nrrd"):
        (tmp_path / "images" / case).symlink_to(ct3 / "ct-3slice")
    (tmp_path / "labels" / "seg.dcm").symlink_to(ct3 / "segs" / "liver.dcm")
    (tmp_path / "labels" / "nrrd.nrrd").symlink_to(ct3 / "segs" / "liver_seg.nrrd")
    read = {c.case: D.read_case(c, {1: "liver"}) for c in D.discover_cases(tmp_path)}
    assert read["seg"].labels == read["nrrd"].labels == {1: "liver"}
    assert read["seg"].labelmap.array.shape == (3, 512, 512)
    assert np.array_equal(read["seg"].labelmap.array, read["nrrd"].labelmap.array)
    assert read["seg"].labelmap.array.sum() > 10000


# ============================================================================================ command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mskseg")
    sub = p.add_subparsers(dest="command")
    add_train_parser(sub)
    add_evaluate_parser(sub)
    return p


def test_train_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--fine-tune" in text and "DATA/images/<case>" in text


def test_train_command_writes_card_and_evaluate_command_writes_csv(tmp_path, capsys, formats_dir):
    args = parser().parse_args(["train", "--synthetic", "test-disks", "--architecture", json.dumps(TINY),
                                "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--synthetic-val",
                                "2", "--window=-200,500", "--out", str(tmp_path / "run"), "--name", "cli-model"])
    assert run_train(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "cli-model.card.json" in out
    load_model(load_model_card(tmp_path / "run" / "cli-model.card.json"))
    args = parser().parse_args(["train", "--list-synthetic"])
    assert run_train(args) == 0 and "test-disks" in capsys.readouterr().out

    csv_path = tmp_path / "results.csv"
    args = parser().parse_args(["evaluate", "--pred", str(formats_dir / "labels"), "--ref",
                                str(formats_dir / "labels"), "--labels", "1=skeletal_muscle,2=subcutaneous_fat",
                                "--images", str(formats_dir / "images"), "--out", str(csv_path)])
    assert run_evaluate(args) == 0
    printed = capsys.readouterr().out
    assert "6 cases" in printed and "skeletal_muscle" in printed
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and rows[0]["dice"] == "1"
    with pytest.raises(OutputExistsError):
        run_evaluate(args)
