"""What the three Slicer module shells share: dependency set-up, input checks, progress relay, resources.

The modules (SarcopeniaSeg, BoneSeg, SpineSeg) stay thin by calling these functions. Nothing here imports
``slicer``, ``qt`` or ``torch`` at import time: Slicer imports every module at start-up, and a scene-less
pytest run must be able to import and test this file. Functions that need Slicer import it inside.

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
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import CancelledError, MSKSegError

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

#: Task name -> the package of ``mskseg`` that holds its pipeline, and the words users see for it.
TASK_PIPELINES: dict[str, tuple[str, str]] = {
    "sarcopenia": ("mskseg.sarcopenia", "body-composition pipeline"),
    "bone": ("mskseg.bone", "bone segmentation pipeline"),
    "spine": ("mskseg.spine", "spine segmentation pipeline"),
}


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


def task_package_available(task: str) -> bool:
    """Whether the pipeline package of ``task`` ("sarcopenia", "bone", "spine") is installed.

    Looks the package up without importing it (its imports may need torch).
    """
    package = TASK_PIPELINES[task][0] if task in TASK_PIPELINES else f"mskseg.{task}"
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def pipeline_unavailable_tooltip(task: str) -> str:
    """The tooltip of a button that stays disabled because the pipeline of ``task`` is not installed."""
    words = TASK_PIPELINES.get(task, ("", f"{task} pipeline"))[1]
    return f"available once the {words} is installed"


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


class ProgressRelay:
    """A progress callback for ``mskseg.app`` that drives a progress bar and honours a Cancel button.

    Called as ``relay(fraction, message="")`` with ``fraction`` in 0..1; returns False once :meth:`cancel`
    was called, which tells the running pipeline to stop (it then raises ``CancelledError``).

    Args:
        progress_bar: object with an integer ``value`` attribute (a ``QProgressBar``; 0..100).
        status_label: object with a ``text`` attribute (a ``QLabel``), or None.
        process_events: called after each update so the GUI repaints and the Cancel click is seen;
            default ``slicer.app.processEvents``.
    """

    def __init__(self, progress_bar: Any, status_label: Any = None,
                 process_events: Callable[[], None] | None = None):
        self.progress_bar = progress_bar
        self.status_label = status_label
        self._process_events = process_events
        self.cancelled = False

    def cancel(self) -> None:
        """Ask the running work to stop at its next progress report."""
        self.cancelled = True

    def __call__(self, fraction: float, message: str = "") -> bool:
        """Show ``fraction`` (0..1, clipped) and ``message``; return False when cancelled."""
        self.progress_bar.value = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        if self.status_label is not None and message:
            self.status_label.text = message
        if self._process_events is None:
            import slicer

            self._process_events = slicer.app.processEvents
        self._process_events()
        return not self.cancelled


def app_function(name: str) -> Callable[..., Any]:
    """The function ``name`` of :mod:`mskseg.app`, imported on first use (it pulls in torch and MONAI).

    Raises:
        MSKSegError: this installation of MSKSeg has no such function.
    """
    from . import app

    function = getattr(app, name, None)
    if function is None:
        raise MSKSegError(f"This version of MSKSeg has no '{name}'.", "update the MSKSeg extension")
    return function


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


def load_terminology() -> str | None:
    """Load :func:`terminology_file` into Slicer's Terminologies module; return the context name.

    Called at Slicer start-up so that segments tagged with MSKSeg codes show their names and colours in the
    Segment Editor's terminology selector. Each of the three modules asks for it; the file is read once.
    Returns None (and loads nothing) when the file or the Terminologies module is absent.
    """
    global _loaded_terminology
    if _loaded_terminology is None:
        import slicer

        path = terminology_file()
        terminologies = getattr(slicer.modules, "terminologies", None)
        if not path.is_file() or terminologies is None:
            return None
        _loaded_terminology = terminologies.logic().LoadTerminologyFromFile(str(path))
    return _loaded_terminology


_loaded_terminology: str | None = None


def ensure_dependencies(ask: bool = True) -> list[str]:
    """Make torch and every package of :data:`REQUIREMENTS` importable inside Slicer.

    torch comes through the PyTorch extension; the rest through ``slicer.util.pip_install``, after the user
    confirms (when ``ask``), with numpy and torch pinned. Call it on the first Apply, never at import time.

    Returns:
        the pip requirements that were installed (empty when everything was present).

    Raises:
        MSKSegError: the PyTorch extension is missing or could not install torch.
        CancelledError: the user declined an installation.
    """
    import slicer

    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ImportError as error:
            raise MSKSegError(
                "PyTorch is needed and the PyTorch extension is not installed.",
                "install the 'PyTorch' extension from the Extensions Manager, restart Slicer, press Apply again",
            ) from error
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=ask, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise MSKSegError("PyTorch was not installed.",
                              "install it from the PyTorch module (Utilities > PyTorch Utils), then press Apply again")
    missing = missing_python_packages()
    if not missing:
        return []
    if ask and not slicer.util.confirmOkCancelDisplay(
            "MSKSeg needs these Python packages, which will now be downloaded and installed "
            "(this takes a few minutes, once):\n\n  " + "\n  ".join(missing),
            "MSKSeg: install Python packages"):
        raise CancelledError("Installation of the required Python packages was declined.",
                             "press Apply again to install them; MSKSeg cannot run without them")
    constraints = Path(tempfile.mkdtemp(prefix="mskseg-pip-")) / "constraints.txt"
    constraints.write_text("\n".join(protected_constraints()) + "\n")
    slicer.util.pip_install(list(missing) + ["--constraint", str(constraints)])
    importlib.invalidate_caches()
    still_missing = missing_python_packages()
    if still_missing:
        raise MSKSegError("These Python packages could not be installed: " + ", ".join(still_missing),
                          "see the Python console for pip's message; a proxy may block downloads")
    return missing


def open_in_segment_editor(segmentation_node: Any, volume_node: Any) -> None:
    """Switch to the Segment Editor with ``segmentation_node`` and its source ``volume_node`` selected.

    Raises:
        MSKSegError: there is no segmentation to edit yet.
    """
    import slicer

    if segmentation_node is None:
        raise MSKSegError("There is no segmentation to edit yet.",
                          "press Apply first, or choose an output segmentation")
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
    editor.setSegmentationNode(segmentation_node)
    if volume_node is not None:
        # Slicer >= 5.2 says "source volume"; older releases "master volume".
        set_source = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
        set_source(volume_node)


def add_synthetic_case(class_names: Sequence[str], scene: Any = None,
                       name: str = "MSKSeg synthetic") -> tuple[Any, Any]:
    """A small CT-like volume and a segmentation of it with one box-shaped segment per class.

    Used by the modules' self-tests (Reload and Test), which must not depend on downloads. The volume is
    16 x 48 x 64 voxels (K, J, I) of int16 Hounsfield units, spacing 0.8 x 0.8 x 2.5 mm: air around a body
    with a fat layer, muscle and a bone block. Segment ``n`` (label ``n + 1``) is named after
    ``class_names[n]`` and carries its terminology (through :mod:`mskseg.mrml`).

    Args:
        class_names: class names (keys of ``mskseg.terminology.CLASSES`` or any name), at most 8.
        scene: the MRML scene; default ``slicer.mrmlScene``.

    Returns:
        ``(volume_node, segmentation_node)``; the segmentation refers to the volume and has its geometry.
    """
    import numpy as np

    from . import mrml
    from .image import Image

    if scene is None:
        import slicer

        scene = slicer.mrmlScene
    hu = np.full((16, 48, 64), -1000, np.int16)
    hu[:, 8:40, 8:56] = -100  # fat
    hu[:, 14:34, 14:50] = 40  # muscle and organs
    hu[:, 20:28, 28:36] = 400  # bone
    labels = np.zeros(hu.shape, np.uint8)
    for index in range(len(class_names)):
        labels[2:14, 16:30, 16 + 4 * index:19 + 4 * index] = index + 1
    volume = Image(hu, (0.8, 0.8, 2.5), (-25.6, -19.2, 100.0), np.eye(3), {"Modality": "CT"})
    volume_node = mrml.image_to_volume_node(volume, scene, name)
    segmentation_node = mrml.labelmap_to_segmentation_node(
        volume.with_array(labels), {n + 1: c for n, c in enumerate(class_names)}, scene, volume_node,
        name=f"{name} segmentation")
    return volume_node, segmentation_node


class TaskWidgetMixin:
    """Module-panel behaviour the three MSKSeg modules share, mixed into each ``<M>Widget``.

    The widget provides ``ui`` (holding the widgets of :data:`COMMON_WIDGETS`), ``logic`` (with
    ``modelCards()``, ``deviceReport()`` and ``export()``), ``_parameterNode`` (fields ``inputVolume``,
    ``modelCard``, ``device``, ``outputSegmentation``, ``exportFolder``, ``overwrite``), ``TASK`` and
    ``updateButtonStates()``. Slicer is imported inside the methods, which only run in Slicer.
    """

    #: objectNames every module's .ui defines for this mixin (a test checks the three .ui files).
    COMMON_WIDGETS = ("modelCardComboBox", "addModelCardButton", "cancelButton", "exportButton", "editButton",
                      "deviceReportButton", "deviceReportLabel", "progressBar", "statusLabel")
    TASK = ""
    _progress: ProgressRelay | None = None
    _dependenciesReady = False

    def connectCommonWidgets(self) -> None:
        """Connect the shared buttons and the Model box to their handlers."""
        self.ui.modelCardComboBox.connect("currentIndexChanged(int)", self.onModelCardChanged)
        self.ui.addModelCardButton.connect("clicked(bool)", self.onAddModelCard)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.deviceReportButton.connect("clicked(bool)", self.onDeviceReportButton)

    @property
    def running(self) -> bool:
        """Whether a long run (with progress bar and Cancel) is under way."""
        return self._progress is not None

    def refreshModelCards(self) -> None:
        """List the task's model cards in the Model box (listing needs the installed Python packages)."""
        combo = self.ui.modelCardComboBox
        was_blocked = combo.blockSignals(True)
        combo.clear()
        try:
            for card in self.logic.modelCards():
                combo.addItem(card.title, str(card.path))
            combo.toolTip = "The model to run; its model card says what it segments and what it was trained on"
        except (ImportError, MSKSegError) as error:
            combo.toolTip = "Models are listed once MSKSeg's Python packages are installed: press Apply."
            self.ui.statusLabel.text = str(error) if isinstance(error, MSKSegError) else ""
        combo.blockSignals(was_blocked)
        if self._parameterNode:
            self.syncModelCard()

    def syncModelCard(self) -> None:
        """Show the parameter node's model card in the Model box (adding a user's own card to the list)."""
        parameters, combo = self._parameterNode, self.ui.modelCardComboBox
        if parameters.modelCard and combo.currentData != parameters.modelCard:
            index = combo.findData(parameters.modelCard)
            if index < 0:
                combo.addItem(Path(parameters.modelCard).stem, parameters.modelCard)
                index = combo.count - 1
            combo.currentIndex = index
        elif not parameters.modelCard and combo.count:
            parameters.modelCard = combo.currentData or ""

    def onModelCardChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.modelCard = self.ui.modelCardComboBox.itemData(index) or ""

    def onAddModelCard(self) -> None:
        """Let the user pick a model card of their own (e.g. one written by ``mskseg train``)."""
        import qt

        path = qt.QFileDialog.getOpenFileName(self.parent, "Choose a model card", "", "Model card (*.json)")
        if path:
            self._parameterNode.modelCard = path

    def ensureDependencies(self) -> None:
        """Install what is missing, once per session (on the first button press that needs it)."""
        if not self._dependenciesReady:
            installed = ensure_dependencies(ask=True)
            self._dependenciesReady = True
            if installed or not self.ui.modelCardComboBox.count:
                self.refreshModelCards()

    def runWithProgress(self, work: Callable[[ProgressRelay], Any]) -> Any:
        """Run ``work(progress)`` with the progress bar and Cancel button live; None when cancelled."""
        self._progress = ProgressRelay(self.ui.progressBar, self.ui.statusLabel)
        self.updateButtonStates()
        try:
            return work(self._progress)
        except CancelledError:
            self.ui.statusLabel.text = "Cancelled."
            return None
        finally:
            self._progress = None
            self.ui.progressBar.value = 0
            self.updateButtonStates()

    def onCancelButton(self) -> None:
        if self._progress is not None:
            self._progress.cancel()

    def onExportButton(self) -> None:
        import slicer

        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            files = self.logic.export(p.outputSegmentation, p.inputVolume, p.exportFolder, overwrite=p.overwrite)
            self.ui.statusLabel.text = f"Wrote {len(files)} file(s) to {p.exportFolder}."

    def onEditButton(self) -> None:
        import slicer

        with slicer.util.tryWithErrorDisplay("Could not open the Segment Editor."):
            open_in_segment_editor(self._parameterNode.outputSegmentation, self._parameterNode.inputVolume)

    def onDeviceReportButton(self) -> None:
        import slicer

        with slicer.util.tryWithErrorDisplay("Could not check the device.", waitCursor=True):
            self.ensureDependencies()
            self.ui.deviceReportLabel.text = self.logic.deviceReport(self._parameterNode.device)
