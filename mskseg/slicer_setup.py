"""What the three Slicer module shells share: dependency set-up, input checks, progress relay, resources,
and the behaviour of their widget, logic and self-test classes.

The modules (SarcopeniaSeg, BoneSeg, SpineSeg) stay thin: each ``<M>.py`` holds its description texts, its
parameter node and the classes Slicer's template asks for, which take their shared behaviour from
:class:`TaskWidgetMixin`, :class:`TaskLogicMixin` and :class:`TaskTestMixin` and add the module's own.

Nothing here imports ``slicer``, ``qt`` or ``torch`` at import time: Slicer imports every module at start-up,
and a scene-less pytest run must be able to import and test this file. Functions and methods that need Slicer
import it inside.

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


#: Slicer module-panel category and contributors of the three modules.
MODULE_CATEGORY = "Segmentation.MSKSeg"
MODULE_CONTRIBUTORS: tuple[str, ...] = ("MSKSeg contributors",)

#: Device preferences of every module's Advanced > Device box (``mskseg.engine.choose_device`` takes them).
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

#: The end of every module's help text: offline models, device check, correction, export, documentation.
HELP_FOOTER = """
<p>The bundled models run offline on CPU or GPU: nothing is downloaded. <i>Advanced &gt; Check device</i> says
which device will be used and why. Check the result and correct it with <i>Edit in Segment Editor</i> (a new run
never overwrites a corrected segmentation), then <i>Export</i> .seg.nrrd, DICOM-SEG (for DICOM inputs) and a CSV
table of segment statistics.</p>
<p>See the <a href="https://github.com/MSKSeg/MSKSeg#readme">MSKSeg documentation</a>.</p>
"""

#: The end of every module's acknowledgement text: training data and the libraries the results depend on.
ACKNOWLEDGEMENT = """
The models were trained on synthetic CT generated from anatomy label maps of the TotalSegmentator dataset
(Wasserthal et al. 2023, CC BY 4.0) and VerSe (Sekuboyina et al. 2021, CC BY-SA 4.0).
Built with <a href="https://monai.io">MONAI</a> (Apache-2.0); DICOM-SEG written with
<a href="https://github.com/ImagingDataCommons/highdicom">highdicom</a> (MIT) and read with
<a href="https://github.com/QIICR/dcmqi">dcmqi</a> (BSD-3-Clause).
"""

#: Apply's tooltip while no model card is chosen (none installed for the task, none added).
NO_MODEL_CARD_TOOLTIP = "No model card for this task is installed: add one with 'Add model card'"


def register_module(parent: Any) -> None:
    """Set what the three modules share in their Slicer description, and load MSKSeg's terminology at start-up.

    Called from each ``<M>.__init__`` after it set its own ``title``, ``helpText`` and ``acknowledgementText``.

    Args:
        parent: the module's ``qSlicerScriptedLoadableModule`` (``ScriptedLoadableModule.parent``).
    """
    import slicer

    parent.categories = [MODULE_CATEGORY]
    parent.dependencies = []
    parent.contributors = list(MODULE_CONTRIBUTORS)
    slicer.app.connect("startupCompleted()", load_terminology)


class TaskParameters:
    """Base of each module's ``@parameterNodeWrapper`` class: the field that the shared widget code fills itself.

    ``modelCard`` (path of the chosen model card JSON) has run-time choices, so no .ui widget binds it:
    :class:`TaskWidgetMixin` keeps it in step with the Model box. The fields the .ui binds (``inputVolume``,
    ``device``, ``outputSegmentation``, ``exportFolder``, ``overwrite`` and any of the module's own) are
    declared in the module, beside the .ui that binds them. Plain class, not itself a parameter node wrapper:
    Slicer's wrapper reads inherited annotations and defaults of the subclass it decorates.
    """

    modelCard: str = ""


class TaskWidgetMixin:
    """Module-panel behaviour the three MSKSeg modules share, mixed into each ``<M>Widget``.

    Listed first in the bases, before ``ScriptedLoadableModuleWidget`` and ``VTKObservationMixin``, so that its
    ``setup``, ``enter``, ``exit`` and ``cleanup`` are the ones Slicer calls. The ``<M>Widget`` sets the class
    attributes below, and its Python module defines ``<M>Logic`` (with :class:`TaskLogicMixin`); the .ui
    holds the widgets of :data:`COMMON_WIDGETS`, and the parameter node has the fields of :class:`TaskParameters`
    plus ``inputVolume``, ``device``, ``outputSegmentation``, ``exportFolder`` and ``overwrite``. A module adds
    its own buttons by extending :meth:`setup` and :meth:`updateTaskButtons`. Slicer is imported inside the
    methods, which only run in Slicer.
    """

    #: objectNames every module's .ui defines for this mixin (a test checks the three .ui files).
    COMMON_WIDGETS = ("applyButton", "outputSegmentationSelector", "modelCardComboBox", "addModelCardButton",
                      "cancelButton", "exportButton", "editButton", "deviceReportButton", "deviceReportLabel",
                      "progressBar", "statusLabel")
    #: words after the input volume's name in the name of a new output segmentation.
    OUTPUT_NAME_SUFFIX = "segmentation"
    #: Apply's tooltip once a model card is chosen.
    APPLY_TOOLTIP = "Segment the input volume with the chosen model"
    #: first line of the error window when Apply fails.
    APPLY_FAILURE = "Segmentation failed."
    #: status line after a run, following "Done: '<segmentation name>'."
    APPLY_DONE_HINT = "Check it, then Export."

    _progress: ProgressRelay | None = None
    _dependenciesReady = False
    #: whether the task's pipeline package is installed; gates the module's own tools, never Apply.
    pipelineReady = False

    def __init__(self, parent: Any = None) -> None:
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
        from slicer.util import VTKObservationMixin

        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        # Both bases explicitly, as in Slicer's module template; observations first, because a widget made
        # without a parent runs setup() inside ScriptedLoadableModuleWidget.__init__.
        VTKObservationMixin.__init__(self)
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def createLogic(self) -> Any:
        """A new ``<M>Logic()``: the class named so in the widget's own Python module.

        The lookup follows Slicer's naming convention, by which ``ScriptedLoadableModule.runTest`` finds
        ``<M>Test`` and ``ScriptedLoadableModuleLogic`` names its parameter node. Override to use another logic.
        """
        import sys

        module_name = type(self).__name__.removesuffix("Widget")
        return getattr(sys.modules[type(self).__module__], f"{module_name}Logic")()

    def setup(self) -> None:
        """Load ``Resources/UI/<M>.ui``, create the logic, connect the shared widgets, show the parameter node."""
        import slicer

        super().setup()
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.connectCommonWidgets()
        self.pipelineReady = task_package_available(self.logic.TASK)
        self.refreshModelCards()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens another module: stop updating the GUI from the parameter node."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node of this module; choose the first volume when none is chosen."""
        import slicer

        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Any) -> None:
        """Bind the .ui to ``inputParameterNode`` (a ``<M>ParameterNode`` or None) and observe its changes."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller: Any = None, event: Any = None) -> None:
        self.syncModelCard()
        volume = self._parameterNode.inputVolume
        if volume:
            self.ui.outputSegmentationSelector.baseName = f"{volume.GetName()} {self.OUTPUT_NAME_SUFFIX}"
        self.updateButtonStates()

    def updateButtonStates(self) -> None:
        """Enable what can run now. Apply needs an input volume and a model card, never the task package."""
        parameters = self._parameterNode
        if parameters is None:
            return
        idle = not self.running
        self.ui.applyButton.enabled = bool(parameters.inputVolume and parameters.modelCard and idle)
        self.ui.applyButton.toolTip = self.APPLY_TOOLTIP if parameters.modelCard else NO_MODEL_CARD_TOOLTIP
        self.ui.cancelButton.enabled = self.running
        self.ui.exportButton.enabled = bool(parameters.outputSegmentation) and idle
        self.ui.editButton.enabled = bool(parameters.outputSegmentation) and idle
        self.updateTaskButtons(parameters)

    def updateTaskButtons(self, parameters: Any) -> None:
        """Enable the module's own buttons for ``parameters`` (the parameter node); none by default."""

    def connectCommonWidgets(self) -> None:
        """Connect Apply, the shared buttons and the Model box to their handlers."""
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
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

    def onApplyButton(self) -> None:
        """Run the chosen model card on the input volume (``<M>Logic.process``) with progress and Cancel."""
        import slicer

        with slicer.util.tryWithErrorDisplay(self.APPLY_FAILURE, waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            segmentation = self.runWithProgress(lambda progress: self.logic.process(
                p.inputVolume, p.modelCard, p.device, p.outputSegmentation, progress=progress))
            if segmentation is not None:
                p.outputSegmentation = segmentation
                self.ui.statusLabel.text = f"Done: '{segmentation.GetName()}'. {self.APPLY_DONE_HINT}"

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


class TaskLogicMixin:
    """Logic the three MSKSeg modules share, mixed into each ``<M>Logic`` before ``ScriptedLoadableModuleLogic``.

    Calls :mod:`mskseg.app`, so it works from Python without the widget (nodes and values are arguments).
    The ``<M>Logic`` sets :attr:`TASK` and :attr:`PARAMETER_NODE` (its ``@parameterNodeWrapper`` class).
    """

    TASK = ""
    PARAMETER_NODE: Any = None

    def getParameterNode(self) -> Any:
        """The scene's parameter node of this module, wrapped in :attr:`PARAMETER_NODE`."""
        return self.PARAMETER_NODE(super().getParameterNode())

    def modelCards(self) -> list:
        """The model cards of this task (objects with ``path``, ``title``, ``name``)."""
        return app_function("list_model_cards")(self.TASK)

    def deviceReport(self, preference: str = "auto") -> str:
        """Which device a run would use for ``preference`` (one of :data:`DEVICE_CHOICES`) and why."""
        return app_function("device_report")(preference)

    def process(self, inputVolume: Any, modelCard: str, device: str = "auto", outputSegmentation: Any = None,
                progress: Callable[..., bool] | None = None) -> Any:
        """Segment ``inputVolume`` with the model card ``modelCard``; returns the segmentation node.

        A given ``outputSegmentation`` that already holds segments is left as it is (it may hold
        corrections) and a new node is made.

        Raises:
            MSKSegError: no input volume, no model card, or the card file does not exist (checked first).
        """
        import slicer

        require_inputs(inputVolume, modelCard)
        return app_function("run_segmentation")(
            slicer.mrmlScene, inputVolume, modelCard, device=device, progress=progress,
            segmentation_node=outputSegmentation)

    def export(self, segmentationNode: Any, volumeNode: Any, folder: str | Path | None,
               formats: Sequence[str] | None = None, overwrite: bool = False) -> list:
        """Write the segmentation (.seg.nrrd, DICOM-SEG for DICOM inputs) and metrics CSV; returns the paths.

        Raises:
            MSKSegError: no segmentation, or no export folder chosen.
        """
        import slicer

        if segmentationNode is None:
            raise MSKSegError("There is no segmentation to export.", "press Apply first")
        return app_function("export_results")(
            slicer.mrmlScene, segmentationNode, volumeNode, str(require_export_folder(folder)),
            formats=formats or default_export_formats(volumeNode), overwrite=overwrite)


class TaskTestMixin:
    """Self-test the three MSKSeg modules share (Reload and Test, and ctest): synthetic data only, no download.

    Mixed into each ``<M>Test`` before ``ScriptedLoadableModuleTest``, which sets :attr:`LOGIC` (its
    ``<M>Logic`` class) and :attr:`SYNTHETIC_CLASSES` (class names of its task for the synthetic case).
    """

    LOGIC: Any = None
    SYNTHETIC_CLASSES: tuple[str, ...] = ()

    def setUp(self) -> None:
        import slicer

        slicer.mrmlScene.Clear(0)

    def runTest(self) -> None:
        """Run every test of the module on a cleared scene."""
        ensure_dependencies(ask=False)
        for test in (self.test_process_refuses_missing_input, self.test_device_report_names_device,
                     self.test_export_writes_files_and_refuses_overwrite, self.test_rerun_keeps_corrected_segmentation):
            self.setUp()
            test()

    def test_process_refuses_missing_input(self) -> None:
        with self.assertRaises(MSKSegError):
            self.LOGIC().process(None, "")

    def test_device_report_names_device(self) -> None:
        self.assertIn("cpu", self.LOGIC().deviceReport("cpu").lower())

    def test_export_writes_files_and_refuses_overwrite(self) -> None:
        from .errors import OutputExistsError

        volume, segmentation = add_synthetic_case(self.SYNTHETIC_CLASSES)
        folder = tempfile.mkdtemp(prefix="mskseg-selftest-")
        logic = self.LOGIC()
        files = logic.export(segmentation, volume, folder)
        self.assertTrue(files and all(Path(f).is_file() for f in files), files)
        with self.assertRaises(OutputExistsError):
            logic.export(segmentation, volume, folder)
        self.assertEqual(sorted(logic.export(segmentation, volume, folder, overwrite=True)), sorted(files))

    def test_rerun_keeps_corrected_segmentation(self) -> None:
        cards = self.LOGIC().modelCards()
        if not cards:
            self.delayDisplay(f"No bundled {self.LOGIC.TASK} model: run test skipped")
            return
        volume, corrected = add_synthetic_case(self.SYNTHETIC_CLASSES[:1])
        try:
            result = self.LOGIC().process(volume, str(cards[0].path), "cpu", corrected)
            self.assertNotEqual(result.GetID(), corrected.GetID())
        except MSKSegError as error:  # a pipeline may rightly refuse a phantom (e.g. one without an L3)
            self.delayDisplay(f"Synthetic volume refused: {error}")
        self.assertEqual(corrected.GetSegmentation().GetNumberOfSegments(), 1)
