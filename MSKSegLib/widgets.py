"""The behaviour the three MSKSeg modules share: their widget, logic and parameter-node base classes.

The modules (SarcopeniaSeg, BoneSeg, SpineSeg) stay thin: each ``<M>.py`` holds its description texts, its
parameter node and the classes Slicer's template asks for, which take their shared behaviour from
:class:`TaskWidgetMixin` and :class:`TaskLogicMixin` (and ``MSKSegLib.selftest.TaskTestMixin``) and add the
module's own. The Logic calls the task's Slicer functions through the registry (:func:`task_function`);
Apply runs the task in a background process (``MSKSegLib.background``) and loads its result folder.

Nothing here imports ``slicer``, ``qt`` or ``torch`` at import time: Slicer imports every module at start-up,
and a scene-less pytest run must be able to import and test this file. Methods that need Slicer import it
inside.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mskseg.errors import CancelledError, MSKSegError
from mskseg.slicer_support import default_export_formats, require_export_folder, require_inputs, require_volume

from mskseg.tasks import get_task, package_available, task_entry

from .dependencies import ensure_dependencies
from .module import NO_MODEL_CARD_TOOLTIP


def task_function(task: str, name: str) -> Callable[..., Any]:
    """The Slicer function ``name`` of task ``task`` (``get_task(task).slicer_function(name)``); the task's
    module is imported on first use (it may pull in torch and MONAI).

    Raises:
        MSKSegError: no such task, or the task has no such function.
    """
    return get_task(task).slicer_function(name)


def pipeline_unavailable_tooltip(task: str) -> str:
    """The tooltip of a button that stays disabled because the code of ``task`` is not installed."""
    return f"available once MSKSeg's '{task}' task ({task_entry(task).summary}) is installed"


class ProgressRelay:
    """A progress callback for work run in Slicer's own process (Find L3) that drives a progress bar and honours a Cancel button.

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
    _backgroundRun: Any = None  # the MSKSegLib.background.BackgroundRun under way
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
        from .cohort import CohortPanel

        self.cohortPanel = CohortPanel(self)
        self.layout.addWidget(self.cohortPanel.widget)
        self.pipelineReady = package_available(self.logic.TASK)
        self.refreshModelCards()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed: stop a background run."""
        self.onCancelButton()
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
        self.onCancelButton()  # the input volume is about to go
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
        # a task whose pipeline runs without a model (BoneSeg's rules) needs no card once it is installed
        ready = bool(parameters.modelCard) or (self.pipelineReady and bool(getattr(self.logic, "MODEL_CARD_OPTIONAL", False)))
        self.ui.applyButton.enabled = bool(parameters.inputVolume and ready and idle)
        self.ui.applyButton.toolTip = self.APPLY_TOOLTIP if ready else NO_MODEL_CARD_TOOLTIP
        self.ui.cancelButton.enabled = self.running
        self.ui.exportButton.enabled = bool(parameters.outputSegmentation) and idle
        self.ui.editButton.enabled = bool(parameters.outputSegmentation) and idle
        if getattr(self, "cohortPanel", None) is not None:
            self.cohortPanel.updateButtons(idle)
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
        """Whether a long run (with progress bar and Cancel) is under way, here or in the background."""
        return self._progress is not None or self._backgroundRun is not None

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
        """Run the task on the input volume in a background process, with the options ``<M>Logic.workerOptions``
        reads from the parameter node; its result is loaded as a new segmentation when it is done."""
        import slicer

        with slicer.util.tryWithErrorDisplay(self.APPLY_FAILURE, waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            self.runInBackground(p.inputVolume, self.logic.workerOptions(p))

    def runInBackground(self, volumeNode: Any, options: Sequence[str]) -> None:
        """Start the task on ``volumeNode`` with command-line ``options`` in a worker process; the progress bar,
        status line and Cancel follow it, and :meth:`onBackgroundDone` loads its result."""
        from . import background

        self.startBackgroundRun(background.BackgroundRun(
            self.logic.TASK, volumeNode, options, progress_bar=self.ui.progressBar, status_label=self.ui.statusLabel,
            on_done=lambda folder: self.onBackgroundDone(volumeNode, folder), on_failed=self.onBackgroundFailed,
            on_finished=self.onBackgroundFinished))

    def startBackgroundRun(self, run: Any) -> None:
        """Start ``run`` (a ``BackgroundRun`` or ``CohortRun``) as the panel's one run under way: Cancel stops
        it, the other buttons wait for it."""
        self._backgroundRun = run
        try:
            run.start()
        except BaseException:
            self._backgroundRun = None
            raise
        finally:
            self.updateButtonStates()

    def onBackgroundDone(self, volumeNode: Any, folder: Path) -> None:
        """Load the result folder of a finished run as a new segmentation of ``volumeNode`` and select it."""
        import slicer

        with slicer.util.tryWithErrorDisplay("Loading the result failed."):
            segmentation = self.logic.loadResult(volumeNode, folder)
            self._parameterNode.outputSegmentation = segmentation
            self.ui.statusLabel.text = f"Done: '{segmentation.GetName()}'. {self.APPLY_DONE_HINT}"

    def onBackgroundFailed(self, message: str, hint: str | None) -> None:
        """Show why the background run failed (the previous segmentation stays as it was)."""
        import slicer

        self.ui.statusLabel.text = self.APPLY_FAILURE
        slicer.util.errorDisplay(f"{self.APPLY_FAILURE}\n\n{message}", detailedText=f"hint: {hint}" if hint else "")

    def onBackgroundFinished(self) -> None:
        """The background run ended (done, failed or cancelled): make the buttons usable again."""
        self._backgroundRun = None
        self.updateButtonStates()

    def onCancelButton(self) -> None:
        """Stop the work under way: terminate the background worker (a single run or a cohort), or stop the
        work in this process at its next progress report."""
        if self._backgroundRun is not None:
            self._backgroundRun.cancel()
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

    Calls the task's Slicer functions through the registry (:func:`task_function`), so it works from Python
    without the widget (nodes and values are arguments). The ``<M>Logic`` sets :attr:`TASK` and
    :attr:`PARAMETER_NODE` (its ``@parameterNodeWrapper`` class).
    """

    TASK = ""
    PARAMETER_NODE: Any = None
    #: the task's Slicer function that :meth:`process` calls (the registry names it per task).
    PROCESS_FUNCTION = "run_segmentation"
    #: whether the task runs without a model card (its own rule-based method); the card is then optional.
    MODEL_CARD_OPTIONAL = False

    def getParameterNode(self) -> Any:
        """The scene's parameter node of this module, wrapped in :attr:`PARAMETER_NODE`."""
        return self.PARAMETER_NODE(super().getParameterNode())

    def modelCards(self) -> list:
        """The model cards of this task (objects with ``path``, ``title``, ``name``)."""
        return task_function(self.TASK, "list_model_cards")(self.TASK)

    def deviceReport(self, preference: str = "auto") -> str:
        """Which device a run would use for ``preference`` (one of :data:`DEVICE_CHOICES`) and why."""
        return task_function(self.TASK, "device_report")(preference)

    def process(self, inputVolume: Any, modelCard: str, device: str = "auto", outputSegmentation: Any = None,
                progress: Callable[..., bool] | None = None) -> Any:
        """Segment ``inputVolume`` with the model card ``modelCard``; returns the segmentation node.

        A given ``outputSegmentation`` that already holds segments is left as it is (it may hold
        corrections) and a new node is made.

        Raises:
            MSKSegError: no input volume, no model card, or the card file does not exist (checked first).
        """
        import slicer

        self._require(inputVolume, modelCard)
        return task_function(self.TASK, self.PROCESS_FUNCTION)(
            slicer.mrmlScene, inputVolume, modelCard, device=device, progress=progress,
            segmentation_node=outputSegmentation)

    def workerOptions(self, parameters: Any) -> list[str]:
        """The task's command-line options for a background run with the choices of ``parameters`` (the
        parameter node): the model card and the device. A module whose task has its own command line
        overrides this.

        Raises:
            MSKSegError: no input volume, no model card, or the card file does not exist (checked first).
        """
        self._require(parameters.inputVolume, parameters.modelCard)
        return self._cardOptions(parameters)

    def _require(self, inputVolume: Any, modelCard: str) -> None:
        """Refuse a missing input volume, and a missing or absent card unless the card is optional."""
        if self.MODEL_CARD_OPTIONAL and not modelCard:
            require_volume(inputVolume)
        else:
            require_inputs(inputVolume, modelCard)

    def _cardOptions(self, parameters: Any) -> list[str]:
        card = ["--model", str(parameters.modelCard)] if parameters.modelCard else []
        return card + ["--device", str(parameters.device)]

    def cohortOptions(self, parameters: Any) -> list[str]:
        """The task's command-line options for a cohort run with the choices of ``parameters``: the model card
        and the device (a module whose task has its own command line overrides this).

        Raises:
            MSKSegError: no model card chosen, or its file does not exist.
        """
        if not parameters.modelCard and not self.MODEL_CARD_OPTIONAL:
            raise MSKSegError("No model card is chosen.", "choose one in the Model list, or add one with '...'")
        if parameters.modelCard and not Path(str(parameters.modelCard)).is_file():
            raise MSKSegError(f"The model card {parameters.modelCard} does not exist.", "choose another model card")
        return self._cardOptions(parameters)

    def cohortRows(self, outRoot: str | Path) -> list:
        """The rows of the cohort table in ``outRoot`` (empty before the first case finishes)."""
        return task_function(self.TASK, "cohort_rows")(outRoot)

    def loadCohortCase(self, outRoot: str | Path, case: str) -> tuple:
        """Load case ``case`` of the cohort in ``outRoot``: its CT as a new volume and its result (a new
        segmentation, never over one the user corrected); returns ``(volumeNode, segmentationNode)``."""
        import slicer

        return task_function(self.TASK, "load_cohort_case")(slicer.mrmlScene, self.TASK, outRoot, case)

    def loadResult(self, volumeNode: Any, folder: str | Path) -> Any:
        """Load the result folder of a background run of the task on ``volumeNode`` into the scene (always as
        a new segmentation node, so a corrected one is never overwritten); returns the segmentation node."""
        import slicer

        return task_function(self.TASK, "load_result")(slicer.mrmlScene, volumeNode, Path(folder))

    def export(self, segmentationNode: Any, volumeNode: Any, folder: str | Path | None,
               formats: Sequence[str] | None = None, overwrite: bool = False) -> list:
        """Write the segmentation (.seg.nrrd, DICOM-SEG for DICOM inputs) and metrics CSV; returns the paths.

        Raises:
            MSKSegError: no segmentation, or no export folder chosen.
        """
        import slicer

        if segmentationNode is None:
            raise MSKSegError("There is no segmentation to export.", "press Apply first")
        return task_function(self.TASK, "export_results")(
            slicer.mrmlScene, segmentationNode, volumeNode, str(require_export_folder(folder)),
            formats=formats or default_export_formats(volumeNode), overwrite=overwrite)


