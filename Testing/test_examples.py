"""Every example of the documentation runs: the example commands of `mskseg --help` and of every subcommand's
help (its description and epilog, ``mskseg batch --help`` included), and the code blocks of README.md.

The examples are collected from the texts themselves (a new example is run without touching this file, or
fails :func:`test_every_example_is_classified` until it is placed in one of the tables below), and run
in-process through :func:`mskseg.cli.main`, each in a fresh working folder, with small synthetic inputs in
place of the placeholder paths. What is substituted, what is shortened and what is not run is written down
here, in :data:`PLACEHOLDERS`, :data:`REDUCED`, :data:`SYNOPSIS` and :data:`NOT_RUN`:

* inputs: a 128 x 128 x 60 synthetic torso CT (3 mm pixels, 5 mm slices, T11..S1) as DICOM and NIfTI, its
  body-composition labels, a torso that ends at L2 (no L3), a cohort of two such CTs, a tiny CT for model
  cards, three labelled 5-slice cases and three PNG pairs for training, a tiny untrained "bone" card;
* ``mskseg sarcopenia --demo`` runs on that small torso instead of the 512 x 512 demo CT (the full-size demo is
  what ``scripts/make_screenshot.py`` runs);
* training examples run with one epoch of one or two steps and a synthetic pool of four samples;
* Dask scheduler addresses are replaced by a local in-process cluster's.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mskseg.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# ------------------------------------------------------------------------------------------ the tables
#: Placeholder path in an example -> key of the ``inputs`` fixture that replaces it (a word, or the start of
#: a word followed by ``/``). Output paths (``results/``, ``cohort/``, ``runs/...``) are left as they are: each
#: example runs in its own empty working folder.
PLACEHOLDERS: dict[str, str] = {
    "ct-folder/": "ct_dicom",
    "path/to/dicom-folder": "ct_dicom",
    "ct.nii.gz": "ct_nifti",
    "labels.nii.gz": "labels_nifti",  # values 1 and 2, as the example names them
    "~/muscle-cohort": "muscle_cohort",
    "chest-ct/": "chest_ct",
    "scan1/": "tiny_dicom",
    "scan2.nii.gz": "tiny_nifti",
    "studies/": "studies",
    "/shared/studies": "studies",
    "/shared/cohort": "cohort_out",
    "manifest.csv": "manifest",
    "my-bone-model.json": "bone_card",
    "~/l3-cohort": "l3_cohort",
    "~/png-pairs": "png_pairs",
    "runs/my-l3/predictions": "predictions",
    "out/": "predictions",
    "refs/": "references",
    "tcp://10.0.0.5:8786": "scheduler",
    "tcp://HOST:8786": "scheduler",
}

#: Options appended to examples that would run for minutes as written (argparse: the last value wins).
REDUCED: dict[str, list[str]] = {
    "mskseg train": ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--synthetic-val", "2",
                     "--synthetic-pool", "4", "--patience", "0", "--device", "cpu", "--threads", "1"],
    "mskseg synth preview": ["--n", "2"],
}

#: README's command-line synopsis (a ```text block): each line -> the commands that stand for it (every option
#: it names is used at least once). ``<...>``, ``DIR``, ``CARD`` and ``a|b`` choices are not commands.
SYNOPSIS: dict[str, list[str]] = {
    "mskseg sarcopenia <ct> --height 1.72 --weight 68 --sex F --out DIR": [
        'mskseg sarcopenia ct.nii.gz --height 1.72 --weight 68 --sex F --out DIR --cutoffs "Prado 2008" --slab 3 '
        "--method network --model sarcopenia-l3-tissue-2d --muscle-groups --vat-window=-190,-30 --allow-fallback",
        "mskseg sarcopenia ct-folder/ --levels 28 --method rules --vat-window -190,-30 --out DIR",
    ],
    "mskseg info <image>": ["mskseg info ct.nii.gz"],
    "mskseg demo --out DIR": ["mskseg demo --out DIR"],
    "mskseg export <image> <labelmap> --labels 1=skeletal_muscle,... --out DIR": [
        "mskseg export ct.nii.gz labels.nii.gz --labels 1=skeletal_muscle,2=subcutaneous_fat,3=visceral_fat,"
        "4=intermuscular_fat --out DIR"],
    "mskseg segment <image> [<image> ...] --model CARD --out DIR [--device auto|cpu|cuda|mps]": [
        "mskseg segment scan1/ scan2.nii.gz --model sarcopenia-l3-tissue-2d --out DIR --device cpu"],
    "mskseg batch <task> --input FOLDER|CSV --out DIR [--workers N | --scheduler ADDRESS] [-- TASK OPTIONS]": [
        "mskseg batch sarcopenia --input manifest.csv --out DIR --workers 1 -- --slab 3"],
    "mskseg models | mskseg device | mskseg terminology [--write FILE]": [
        "mskseg models", "mskseg device", "mskseg terminology", "mskseg terminology --write FILE"],
    "mskseg synth preview --out gallery.png": ["mskseg synth preview --out gallery.png"],
    # the train and evaluate examples of their --help run below
    "mskseg train ... | mskseg evaluate ...": [],
}

#: Examples not run, and why.
NOT_RUN: dict[str, str] = {
    "bash scripts/setup.sh && .venv/bin/mskseg sarcopenia --demo":
        "installs packages (scripts/setup.sh has its own checks); its `mskseg sarcopenia --demo` runs from the help",
    "bash .ci/run": "runs the whole test suite, this file included",
    "dask scheduler": "starts a server that runs until stopped; the --scheduler examples run on a local cluster",
    "dask worker tcp://HOST:8786 --nworkers 4 --nthreads 1": "as `dask scheduler`",
    "python: from dask_jobqueue import SLURMCluster":
        "needs a Slurm or PBS cluster and dask-jobqueue; test_python_api_names_of_the_jobqueue_example checks "
        "the MSKSeg names it uses",
}

#: The text of ``...same options...`` in the --resume example: the synthetic training example's options.
SAME_OPTIONS = "--synthetic l3-phantom --synthetic-pool 400 --epochs 20 --steps-per-epoch 200 --out runs/synth"


# ------------------------------------------------------------------------------------------ collecting
def _parsers(parser: argparse.ArgumentParser):
    """``parser`` and every subparser below it."""
    yield parser
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def _commands_in(text: str) -> list[str]:
    """Example commands in a help or shell text: lines starting with ``mskseg`` (or, in a shell block, any
    command), joined over ``\\`` continuations, without comments and the explanation after 2+ spaces."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        if line.startswith("mskseg "):
            out.append(re.split(r"\s{2,}", line)[0].strip())
    return out


def help_examples() -> list[tuple[str, str]]:
    """``(where, command)`` of every example in every help text."""
    found = []
    for parser in _parsers(build_parser()):
        for command in _commands_in(parser.format_help()):
            found.append((f"{parser.prog} --help", command))
    return found


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced code block of README.md."""
    return re.findall(r"```(\w*)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def readme_examples() -> list[tuple[str, str]]:
    """``(where, example)``: shell lines (comments dropped), synopsis lines, and python blocks (``python:`` and
    their first line)."""
    found = []
    for lang, text in readme_blocks():
        if lang == "python":
            first = next(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
            found.append(("README.md python", "python: " + first.split("#")[0].strip()))
        elif lang == "text":
            found += [("README.md synopsis", c) for c in _commands_in(text)]
        else:
            for raw in text.splitlines():
                line = raw.split(" #")[0].strip() if not raw.lstrip().startswith("#") else ""
                if line:
                    found.append((f"README.md {lang}", re.sub(r"\s{2,}", " ", line)))
    return found


def _collect() -> dict[str, list[str]]:
    """Every example -> where it appears (help texts and README), in first-seen order."""
    table: dict[str, list[str]] = {}
    for where, example in help_examples() + readme_examples():
        table.setdefault(example, []).append(where)
    return table


EXAMPLES = _collect()
#: The commands run by :func:`test_example_runs`: the examples themselves, and what the synopsis lines stand for.
RUNNABLE = sorted({e for e in EXAMPLES if e.startswith("mskseg ") and e not in SYNOPSIS and e not in NOT_RUN}
                  | {c for e in EXAMPLES if e in SYNOPSIS for c in SYNOPSIS[e]})


def test_every_example_is_classified():
    """Each example found runs, stands for runnable commands (synopsis) or is listed as not run with a reason;
    and every table entry is still in the documentation."""
    unknown = [e for e in EXAMPLES if not e.startswith("mskseg ") and e not in NOT_RUN
               and e != "python: from mskseg.io import read_image"]
    assert not unknown, f"examples in no table: {unknown}"
    synopsis = {e for e, where in EXAMPLES.items() if "README.md synopsis" in where}
    assert synopsis == set(SYNOPSIS), "README synopsis lines and SYNOPSIS differ"
    stale = [e for e in NOT_RUN if e not in EXAMPLES]
    assert not stale, f"NOT_RUN entries no longer in the docs: {stale}"
    assert len(RUNNABLE) > 30


# ------------------------------------------------------------------------------------------ inputs
def _torso(seed: int, z_range=("T11", "S1")):
    from mskseg.synth.torso import make_torso

    habitus = {"sex": "M", "age": 60.0, "height_m": 1.78, "weight_kg": 84.0, "bmi": 84.0 / 1.78 ** 2, "arms": "up"}
    return make_torso(np.random.default_rng(seed), z_range=z_range, spacing_mm=(3.0, 3.0, 5.0), variant="normal",
                      habitus=habitus, size=128, phase="portal")


def _small_demo_ct(seed: int = 0):
    """A small stand-in for :func:`mskseg.synth.torso.make_demo_ct` (same metadata, 128 x 128 pixels)."""
    sample = _torso(11 + seed)
    sample.image.metadata.update({"SeriesDescription": "Synthetic abdominal CT (MSKSeg demo)",
                                  "PatientID": "MSKSEG-DEMO", "BodyPartExamined": "ABDOMEN"})
    return sample


def _bone_card(folder: Path) -> Path:
    """A schema-valid bone card for a tiny untrained 2D U-Net."""
    from mskseg.models.networks import build_network_from_architecture
    from mskseg.models.weights import save_weights

    arch = {"name": "monai.UNet", "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                                            "channels": [4, 8], "strides": [2], "num_res_units": 0}}
    sha = save_weights(build_network_from_architecture(arch["name"], arch["args"]).state_dict(),
                       folder / "my-bone-model.safetensors")
    card = {"schema_version": "1.0", "name": "my-bone-model", "title": "Tiny bone U-Net", "task": "bone",
            "version": "0.0.1", "description": "untrained, for the examples test", "licence": "Apache-2.0",
            "modality": "CT", "dimensions": "2d",
            "input": {"spacing_mm": None, "window": [-200, 400], "channels": 1, "patch_size": [32, 32]},
            "classes": [{"label": 1, "name": "vertebrae_L3"}, {"label": 2, "name": "sacrum"}],
            "architecture": arch,
            "weights": {"file": "my-bone-model.safetensors", "sha256": sha, "format": "safetensors"},
            "training": {"data": "none"}, "validation": []}
    path = folder / "my-bone-model.json"
    path.write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The synthetic stand-ins of the placeholders (see the module docstring)."""
    from mskseg.image import Image
    from mskseg.io.dicomwrite import write_dicom_series
    from mskseg.io.writers import write_nifti_labelmap

    root = tmp_path_factory.mktemp("example-inputs")
    p: dict[str, Path] = {}
    ct = _torso(3)
    write_dicom_series(ct.image, root / "ct-folder")
    p["ct_dicom"] = root / "ct-folder"
    p["ct_nifti"] = root / "ct.nii.gz"
    sitk.WriteImage(ct.image.to_sitk(), str(p["ct_nifti"]))
    tissue = ct.tissue.array
    sitk.WriteImage(ct.tissue.with_array(np.where(tissue <= 2, tissue, 0).astype(np.uint8)).to_sitk(),
                    str(root / "labels.nii.gz"))
    p["labels_nifti"] = root / "labels.nii.gz"
    p["labels3_nifti"] = root / "labels3.nii.gz"  # README's Python API: muscle (with IMAT), SAT, VAT
    sitk.WriteImage(ct.tissue.with_array(np.where(tissue == 4, 1, tissue).astype(np.uint8)).to_sitk(),
                    str(p["labels3_nifti"]))
    chest = _torso(4, z_range=("T8", "L2"))
    write_dicom_series(chest.image, root / "chest-ct")
    p["chest_ct"] = root / "chest-ct"
    # a cohort of two studies (a DICOM series folder and a NIfTI file) and a manifest naming them
    studies = root / "studies"
    studies.mkdir()
    shutil.copytree(p["ct_dicom"], studies / "case01")
    shutil.copy(p["ct_nifti"], studies / "case02.nii.gz")
    p["studies"] = studies
    p["manifest"] = root / "manifest.csv"
    p["manifest"].write_text("case,path,height_m,weight_kg,sex\ncase01,studies/case01,1.72,68,F\n"
                             "case02,studies/case02.nii.gz,1.80,90,M\n")
    p["cohort_out"] = root / "cohort"  # the README's /shared/cohort
    # a tiny CT for the model cards
    rng = np.random.default_rng(0)
    tiny = rng.normal(40, 10, (4, 40, 48)).astype(np.int16)
    tiny[:, :4] = -1000
    tiny_ct = Image(tiny, (1.5, 1.5, 3.0), (-36.0, -30.0, 0.0), None, {"Modality": "CT"})
    write_dicom_series(tiny_ct, root / "scan1")
    p["tiny_dicom"] = root / "scan1"
    p["tiny_nifti"] = root / "scan2.nii.gz"
    sitk.WriteImage(tiny_ct.to_sitk(), str(p["tiny_nifti"]))
    p["bone_card"] = _bone_card(root)
    # labelled training data: DATA/images/<case>.nii.gz + DATA/labels/<case>.nii.gz (+ .labels.json)
    data = root / "l3-cohort"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    muscle = root / "muscle-cohort"  # label maps without names, muscle only
    (muscle / "images").mkdir(parents=True)
    (muscle / "labels").mkdir()
    for n, seed in enumerate((5, 6, 7, 8, 9)):  # five cases: the --folds 5 example
        sample = _torso(seed, z_range=(-12.0, 12.0))
        sitk.WriteImage(sample.image.to_sitk(), str(data / "images" / f"case{n}.nii.gz"))
        write_nifti_labelmap(data / "labels" / f"case{n}.nii.gz", sample.tissue, dict(sample.tissue_names))
        shutil.copy(data / "images" / f"case{n}.nii.gz", muscle / "images" / f"case{n}.nii.gz")
        only = (sample.tissue.array == 1).astype(np.uint8)
        sitk.WriteImage(sample.tissue.with_array(only).to_sitk(), str(muscle / "labels" / f"case{n}.nii.gz"))
    p["l3_cohort"] = data
    p["muscle_cohort"] = muscle
    p["predictions"] = root / "predictions"
    shutil.copytree(data / "labels", p["predictions"])
    p["references"] = data / "labels"
    # PNG pairs: grey pictures and masks holding label values 1..3
    from PIL import Image as Picture

    pairs = root / "png-pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "labels").mkdir()
    for n in range(3):
        mask = np.zeros((64, 64), np.uint8)
        mask[8:56, 8:56], mask[16:48, 16:48], mask[24:40, 24 + n:40] = 2, 1, 3
        grey = (np.array([0, 120, 200, 60], np.uint8)[mask] + rng.integers(0, 20, mask.shape)).astype(np.uint8)
        Picture.fromarray(grey).save(pairs / "images" / f"case{n}.png")
        Picture.fromarray(mask).save(pairs / "labels" / f"case{n}.png")
    p["png_pairs"] = pairs
    return p


@pytest.fixture(scope="module")
def scheduler():
    """The address of a local in-process Dask cluster (for the --scheduler examples)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c.scheduler_address


def _substitute(command: str, inputs: dict[str, Path], request) -> list[str]:
    """The example's words with placeholders replaced (see :data:`PLACEHOLDERS`) and reductions appended."""
    command = command.replace("...same options...", SAME_OPTIONS)
    words = shlex.split(command)
    assert words[0] == "mskseg"
    out = []
    for word in words[1:]:
        for placeholder, key in PLACEHOLDERS.items():
            if word == placeholder or word.startswith(placeholder.rstrip("/") + "/"):
                value = request.getfixturevalue("scheduler") if key == "scheduler" else str(inputs[key])
                word = value + word[len(placeholder.rstrip("/")):]
                break
        out.append(word)
    for prefix, extra in REDUCED.items():
        if command.startswith(prefix + " "):
            if "--" in out and prefix.startswith("mskseg batch"):
                out = out[:out.index("--")] + extra + out[out.index("--"):]
            else:
                out += extra
    return out


@pytest.mark.parametrize("command", RUNNABLE, ids=[re.sub(r"[^\w./=,-]+", "_", c)[:90] for c in RUNNABLE])
def test_example_runs(command, inputs, tmp_path, monkeypatch, request, capsys):
    """The example exits with status 0 (the status its help documents for success)."""
    import mskseg.synth.torso

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mskseg.synth.torso, "make_demo_ct", _small_demo_ct)
    argv = _substitute(command, inputs, request)
    if "--resume" in argv:  # first the run to continue, interrupted (Ctrl-C) after its first checkpoint
        import mskseg.train.loop as loop

        save = loop.save_checkpoint

        def save_then_interrupt(*args, **kwargs):
            save(*args, **kwargs)
            raise KeyboardInterrupt

        argv += ["--epochs", "2"]
        with monkeypatch.context() as patch:
            patch.setattr(loop, "save_checkpoint", save_then_interrupt)
            assert main([w for w in argv if w != "--resume"]) == 130  # "interrupted"
    status = main(argv)
    out = capsys.readouterr()
    assert status == 0, f"{command}\n-> mskseg {shlex.join(argv)}\n{out.out[-3000:]}\n{out.err[-3000:]}"


# ------------------------------------------------------------------------------------------ README python
def test_readme_python_api_block_runs(inputs, tmp_path, monkeypatch):
    """README's *Python API* block, with its placeholder paths replaced."""
    block = next(t for lang, t in readme_blocks() if lang == "python" and "from mskseg.io import read_image" in t)
    code = (block.replace('"patient01/CT"', repr(str(inputs["ct_dicom"])))
            .replace('"patient01/labels.nii.gz"', repr(str(inputs["labels3_nifti"])))
            .replace('"results/patient01"', repr(str(tmp_path / "results"))))
    assert code != block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documentation's own code
    assert (tmp_path / "results" / "segmentation.dcm").exists() and namespace["rows"]


def test_python_api_names_of_the_jobqueue_example():
    """The names the Slurm example imports from MSKSeg exist and take the arguments it passes."""
    import inspect

    from mskseg.batch import BatchReport, find_cases, run_batch

    block = next(t for lang, t in readme_blocks() if lang == "python" and "SLURMCluster" in t)
    assert "from mskseg.batch import find_cases, run_batch" in block and "report.counts" in block
    assert "scheduler" in inspect.signature(run_batch).parameters
    assert callable(find_cases) and "counts" in dir(BatchReport)


def test_cut_off_names_of_the_docs_exist():
    """Every cut-off set README and the help quote (--cutoffs "NAME") is one the code knows."""
    from mskseg.sarcopenia.cutoffs import get_cutoff_set

    text = README.read_text(encoding="utf-8") + "\n".join(p.format_help() for p in _parsers(build_parser()))
    names = set(re.findall(r'"((?:Prado|Martin|Derstine|Yoon|Kamo|Kobayashi)[^"]*)"', text))
    assert len(names) >= 5, names
    for name in names:
        assert get_cutoff_set(name)
