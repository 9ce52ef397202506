"""What the Slicer side of MSKSeg needs from the core, in plain Python: the run-time requirements and how to
check them, the input checks of the modules' Logic, the export formats that fit a volume, and where the
resources (terminology, bundled models) lie.

No ``slicer``, ``qt``, ``ctk`` or ``torch`` here, at import time or later: the Qt and Slicer-application code
(widget, logic and self-test mixins, dependency installation, the background runner) is in ``MSKSegLib``,
installed beside the three modules; ``MSKSegLib.dependencies`` installs what :func:`missing_python_packages`
finds missing, with :func:`protected_constraints`.

Why dependencies are installed the way they are:

* torch comes from Slicer's PyTorch extension (``PyTorchUtils``), which picks the wheel that fits the
  machine's CUDA driver. A plain ``pip install torch`` inside Slicer often fetches a CPU-only or mismatched
  CUDA build, the most common complaint about AI extensions.
* The other packages are installed with pip only after the user agrees, and with a constraints file that
  pins the numpy and torch already present: MONAI or highdicom must never upgrade the numpy that Slicer's
  own modules were built against, nor replace the torch build PyTorchUtils chose. SimpleITK and vtk come
  with Slicer (not from pip); none of our requirements asks for them, so pip never touches them.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MSKSegError

#: torch version range the networks and ``torch.load(weights_only=True)`` need.
TORCH_REQUIREMENT = ">=2.1"

#: (import name, pip requirement) of every run-time dependency that Slicer does not ship for sure.
#: Mirrors ``[project] dependencies`` of pyproject.toml, minus numpy, SimpleITK (Slicer's own) and torch
#: (PyTorch extension). A test keeps the two lists in step.
REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("pydicom", "pydicom>=2.4"),
    ("pylibjpeg", "pylibjpeg>=2.0"),
    ("openjpeg", "pylibjpeg-openjpeg>=2.0"),
    ("highdicom", "highdicom>=0.22"),
    ("nrrd", "pynrrd>=1.0"),
    ("nibabel", "nibabel>=5.0"),
    ("PIL", "pillow>=10"),
    ("matplotlib", "matplotlib>=3.7"),
    ("jsonschema", "jsonschema>=4.0"),
    ("safetensors", "safetensors>=0.4"),
    ("tqdm", "tqdm>=4.60"),
    ("scipy", "scipy>=1.10"),
    ("monai", "monai>=1.3"),
)

#: Distributions pip must leave exactly as they are (pinned through a constraints file when installed).
PROTECTED_DISTRIBUTIONS: tuple[str, ...] = ("numpy", "torch", "SimpleITK", "vtk")

def missing_python_packages(requirements: Sequence[tuple[str, str]] = REQUIREMENTS) -> list[str]:
    """The pip requirement strings of ``requirements`` whose import name cannot be found.

    Args:
        requirements: ``(import name, pip requirement)`` pairs; default :data:`REQUIREMENTS`.

    Only looks the modules up (``importlib.util.find_spec``), never imports them, so it is fast and safe
    at any time.
    """
    missing = []
    for import_name, requirement in requirements:
        try:
            found = importlib.util.find_spec(import_name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


def protected_constraints(distributions: Sequence[str] = PROTECTED_DISTRIBUTIONS) -> list[str]:
    """pip constraint lines (``name==version``) pinning each installed distribution of ``distributions``.

    Distributions without pip metadata (Slicer's own SimpleITK and vtk) are skipped: pip does not know them,
    and no MSKSeg requirement depends on them.
    """
    lines = []
    for name in distributions:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return lines


def require_volume(volume_node: Any) -> None:
    """Raise :class:`MSKSegError` when no input volume is selected (``volume_node`` is None)."""
    if volume_node is None:
        raise MSKSegError("No input volume is selected.", "choose a CT or radiograph in 'Input volume'")


def require_model_card(card_path: str) -> None:
    """Raise :class:`MSKSegError` when no model card is chosen or its file does not exist."""
    if not card_path:
        raise MSKSegError("No model is selected.",
                          "choose a model in 'Model'; bundled models are listed there, or add your own model card")
    if not Path(card_path).is_file():
        raise MSKSegError(f"The model card {card_path} does not exist.",
                          "choose a bundled model, or check the path of your own model card (.json)")


def require_inputs(volume_node: Any, card_path: str) -> None:
    """Check what every segmentation run needs before any work starts: a volume and an existing model card.

    Raises:
        MSKSegError: no input volume, no model card chosen, or the card file does not exist.
    """
    require_volume(volume_node)
    require_model_card(card_path)


def require_export_folder(folder: str | Path | None) -> Path:
    """The export folder as a :class:`~pathlib.Path`, or an error when none was chosen.

    An empty path (which Slicer's path widget gives as ``.``) means "not chosen", never the working folder.

    Raises:
        MSKSegError: no folder given, or the path is an existing file.
    """
    text = "" if folder is None else str(folder).strip()
    if text in ("", "."):
        raise MSKSegError("No export folder is chosen.", "choose a folder in 'Export folder'")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise MSKSegError(f"The export path {path} is a file, not a folder.", "choose a folder")
    return path


def default_export_formats(volume_node: Any) -> tuple[str, ...]:
    """The export formats that fit ``volume_node``: ``.seg.nrrd`` and CSV always, DICOM-SEG only when the
    volume was loaded from DICOM (Slicer's DICOM import sets its ``DICOM.instanceUIDs`` attribute; a
    DICOM-SEG must reference the source instances)."""
    formats: tuple[str, ...] = ("seg.nrrd", "csv")
    if volume_node is not None and volume_node.GetAttribute("DICOM.instanceUIDs"):
        formats += ("dicom-seg",)
    return formats


def resources_dir() -> Path:
    """``Resources/`` beside the ``mskseg`` package: the repository root in a clone, the scripted-modules
    folder in an installed extension (the top CMakeLists.txt installs both there)."""
    return Path(__file__).resolve().parent.parent / "Resources"


def terminology_file() -> Path:
    """Path of ``MSKSeg.term.json`` (the Slicer terminology context of every MSKSeg class)."""
    return resources_dir() / "MSKSeg.term.json"
