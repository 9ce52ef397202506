"""Bone Segmentation: vertebrae, ribs, sacrum, hips, femora and shoulder-girdle bones of a CT, in 3D Slicer.

A shell in Slicer's scripted-module template style: widgets, parameter node, progress and error display.
The work is done by the ``mskseg`` package, which pytest tests outside Slicer; heavy packages (torch, MONAI)
are imported inside functions, after the dependency check.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Annotated, Optional

if importlib.util.find_spec("mskseg") is None:
    # Developer mode: this module folder was added to Slicer's additional module paths, and the mskseg
    # package sits in the repository root one level up. An installed extension has mskseg beside this file.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import mskseg
from mskseg import slicer_setup  # standard library only: cheap at Slicer start-up

TASK = "bone"


class BoneSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Bone Segmentation"
        self.parent.categories = ["Segmentation.MSKSeg"]
        self.parent.dependencies = []
        self.parent.contributors = ["MSKSeg contributors"]
        self.parent.helpText = """
Segments the bones of a CT: vertebrae (C1 to L5, each labelled), ribs, sternum, costal cartilage, sacrum,
hip bones, femora, humeri, scapulae and clavicles, as far as the chosen model covers them (its model card lists
the classes). Each segment carries its SNOMED CT code, name and colour, so that DICOM-SEG exports are read
correctly by other viewers.
<p>The bundled models run offline on CPU or GPU: nothing is downloaded. <i>Advanced &gt; Check device</i> says
which device will be used and why. Correct the result with <i>Edit in Segment Editor</i> (a new run never
overwrites a corrected segmentation), then <i>Export</i> .seg.nrrd, DICOM-SEG (for DICOM inputs) and a CSV table
of segment volumes.</p>
<p>See the <a href="https://github.com/MSKSeg/MSKSeg#readme">MSKSeg documentation</a>.</p>
"""
        self.parent.acknowledgementText = """
The models were trained on synthetic CT generated from anatomy label maps of the TotalSegmentator dataset
(Wasserthal et al. 2023, CC BY 4.0) and VerSe (Sekuboyina et al. 2021, CC BY-SA 4.0).
Built with <a href="https://monai.io">MONAI</a> (Apache-2.0); DICOM-SEG written with
<a href="https://github.com/ImagingDataCommons/highdicom">highdicom</a> (MIT) and read with
<a href="https://github.com/QIICR/dcmqi">dcmqi</a> (BSD-3-Clause).
"""
        slicer.app.connect("startupCompleted()", slicer_setup.load_terminology)


@parameterNodeWrapper
class BoneSegParameterNode:
    """Every choice of the module, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    modelCard: str = ""  # path of the model card JSON (the Model box is filled in code, not bound)
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: pathlib.Path
    overwrite: bool = False


class BoneSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, slicer_setup.TaskWidgetMixin):
    """The module panel: binds the .ui to the parameter node and runs the logic with progress and cancel.

    Model box, Cancel, Export, Edit and device report behave alike in the three MSKSeg modules and come from
    ``slicer_setup.TaskWidgetMixin``.
    """

    TASK = TASK

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BoneSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BoneSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.connectCommonWidgets()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.refreshModelCards()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[BoneSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.syncModelCard()
        if self._parameterNode.inputVolume:
            self.ui.outputSegmentationSelector.baseName = f"{self._parameterNode.inputVolume.GetName()} bones"
        self.updateButtonStates()

    def updateButtonStates(self) -> None:
        """Enable what can run now; say why Apply is off when the bone pipeline is absent."""
        p = self._parameterNode
        if p is None:
            return
        self.ui.applyButton.enabled = bool(p.inputVolume and p.modelCard and not self.running)
        self.ui.applyButton.toolTip = ("Segment the bones of the input volume with the chosen model" if p.modelCard
                                       else "No model card for this task is installed: add one with 'Add model card'")
        self.ui.cancelButton.enabled = self.running
        self.ui.exportButton.enabled = bool(p.outputSegmentation) and not self.running
        self.ui.editButton.enabled = bool(p.outputSegmentation) and not self.running

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Bone segmentation failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            segmentation = self.runWithProgress(lambda progress: self.logic.process(
                p.inputVolume, p.modelCard, p.device, p.outputSegmentation, progress=progress))
            if segmentation is not None:
                p.outputSegmentation = segmentation
                self.ui.statusLabel.text = f"Done: '{segmentation.GetName()}'. Check it, then Export."


class BoneSegLogic(ScriptedLoadableModuleLogic):
    """Calls ``mskseg.app``; usable from Python without the widget (nodes and values are arguments)."""

    def getParameterNode(self):
        return BoneSegParameterNode(super().getParameterNode())

    def modelCards(self) -> list:
        """The model cards of this task (objects with ``path``, ``title``, ``name``)."""
        return slicer_setup.app_function("list_model_cards")(TASK)

    def deviceReport(self, preference: str = "auto") -> str:
        """Which device a run would use for ``preference`` ("auto", "cpu", "cuda", "mps") and why."""
        return slicer_setup.app_function("device_report")(preference)

    def process(self, inputVolume, modelCard: str, device: str = "auto", outputSegmentation=None, progress=None):
        """Segment the bones of ``inputVolume``; returns the segmentation node.

        A given ``outputSegmentation`` that already holds segments is left as it is (it may hold
        corrections) and a new node is made.
        """
        slicer_setup.require_inputs(inputVolume, modelCard)
        return slicer_setup.app_function("run_segmentation")(
            slicer.mrmlScene, inputVolume, modelCard, device=device, progress=progress,
            segmentation_node=outputSegmentation)

    def export(self, segmentationNode, volumeNode, folder, formats=None, overwrite: bool = False) -> list:
        """Write the segmentation (.seg.nrrd, DICOM-SEG for DICOM inputs) and metrics CSV; returns the paths."""
        if segmentationNode is None:
            raise mskseg.MSKSegError("There is no segmentation to export.", "press Apply first")
        return slicer_setup.app_function("export_results")(
            slicer.mrmlScene, segmentationNode, volumeNode, str(slicer_setup.require_export_folder(folder)),
            formats=formats or slicer_setup.default_export_formats(volumeNode), overwrite=overwrite)


class BoneSegTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer (Reload and Test, and ctest): synthetic data only, no download."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        slicer_setup.ensure_dependencies(ask=False)
        for test in (self.test_process_refuses_missing_input, self.test_device_report_names_device,
                     self.test_export_writes_files_and_refuses_overwrite, self.test_rerun_keeps_corrected_segmentation):
            self.setUp()
            test()

    def test_process_refuses_missing_input(self):
        with self.assertRaises(mskseg.MSKSegError):
            BoneSegLogic().process(None, "")

    def test_device_report_names_device(self):
        self.assertIn("cpu", BoneSegLogic().deviceReport("cpu").lower())

    def test_export_writes_files_and_refuses_overwrite(self):
        import tempfile

        volume, segmentation = slicer_setup.add_synthetic_case(["vertebrae_L1", "femur_left", "rib_left_3"])
        folder = tempfile.mkdtemp()
        logic = BoneSegLogic()
        files = logic.export(segmentation, volume, folder)
        self.assertTrue(files and all(os.path.isfile(f) for f in files), files)
        with self.assertRaises(mskseg.errors.OutputExistsError):
            logic.export(segmentation, volume, folder)
        self.assertEqual(sorted(logic.export(segmentation, volume, folder, overwrite=True)), sorted(files))

    def test_rerun_keeps_corrected_segmentation(self):
        cards = BoneSegLogic().modelCards()
        if not cards:
            self.delayDisplay("No bundled bone model: run test skipped")
            return
        volume, corrected = slicer_setup.add_synthetic_case(["vertebrae_L1"])
        try:
            result = BoneSegLogic().process(volume, str(cards[0].path), "cpu", corrected)
            self.assertNotEqual(result.GetID(), corrected.GetID())
        except mskseg.MSKSegError as error:  # a pipeline may rightly refuse a phantom
            self.delayDisplay(f"Synthetic volume refused: {error}")
        self.assertEqual(corrected.GetSegmentation().GetNumberOfSegments(), 1)
