"""Sarcopenia Segmentation: body composition at the third lumbar vertebra (L3) of a CT, in 3D Slicer.

A shell in Slicer's scripted-module template style: widgets, parameter node, progress and error display.
The work (finding L3, segmenting, measuring, writing files) is done by the ``mskseg`` package, which pytest
tests outside Slicer; heavy packages (torch, MONAI) are imported inside functions, after the dependency check.
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
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import mskseg
from mskseg import slicer_setup  # standard library only: cheap at Slicer start-up

TASK = "sarcopenia"
CUTOFF_SETS = ["Prado 2008", "Martin 2013", "Derstine 2018", "Yoon 2021", "Kamo 2019"]
SEX_CHOICES = ["from DICOM", "female", "male"]


class SarcopeniaSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Sarcopenia Segmentation"
        self.parent.categories = ["Segmentation.MSKSeg"]
        self.parent.dependencies = []
        self.parent.contributors = ["MSKSeg contributors"]
        self.parent.helpText = """
Finds the third lumbar vertebra (L3) in an abdominal CT, segments skeletal muscle (SM), intermuscular
(IMAT), subcutaneous (SAT) and visceral adipose tissue (VAT) there, and measures body composition: area of each tissue
(cm<sup>2</sup>), mean and SD of HU (muscle radiodensity, SMD), skeletal muscle index SMI = SMA / height<sup>2</sup>
(cm<sup>2</sup>/m<sup>2</sup>), VAT/SAT ratio, per slice or as the mean over a slab of slices.
<p>Tissue windows (HU, the Slice-O-Matic / Comp2Comp convention, settings reported with every result): muscle
-29..+150; IMAT and SAT -190..-30; VAT -150..-50 (or -190..-30).</p>
<p>Low-muscle cut-offs (SMI in cm<sup>2</sup>/m<sup>2</sup>, men / women), chosen by name, never hard-wired:
<b>Prado 2008</b> (SMI &lt; 52.4 / 38.5);
<b>Martin 2013</b> (men SMI &lt; 43 if BMI &lt; 25, &lt; 53 if BMI &ge; 25; women SMI &lt; 41; both: SMD &lt; 41 HU
if BMI &lt; 25, &lt; 33 HU if BMI &ge; 25);
<b>Derstine 2018</b> (SMI &lt; 45.4 / 34.4, SMD &lt; 38.5 / 34.3 HU; fall-back levels L2, L4, L5, L1, T12, T11,
T10 when L3 is outside the field of view);
<b>Yoon 2021</b> (Korea, SMI &lt; 39.33 / 27.77);
<b>Kamo 2019</b> (Japan, SMI &lt; 40.31 / 30.88).
Height, weight and sex come from DICOM (PatientSize, PatientWeight, PatientSex) unless given here.</p>
<p>The bundled models run offline on CPU or GPU: nothing is downloaded. Check the result, correct it with
<i>Edit in Segment Editor</i> (a new run never overwrites a corrected segmentation), then <i>Export</i>
.seg.nrrd, DICOM-SEG and a CSV table.</p>
<p>See the <a href="https://github.com/MSKSeg/MSKSeg#readme">MSKSeg documentation</a>.</p>
"""
        self.parent.acknowledgementText = """
Body-composition definitions and cut-offs: Prado et al. 2008 (Lancet Oncol), Martin et al. 2013 (J Clin Oncol),
Derstine et al. 2018 (Sci Rep), Yoon et al. 2021 (Korean reference values), Kamo et al. 2019 (Japanese cut-offs).
The models were trained on synthetic CT generated from anatomy label maps of the TotalSegmentator dataset
(Wasserthal et al. 2023, CC BY 4.0) and VerSe (Sekuboyina et al. 2021, CC BY-SA 4.0).
Built with <a href="https://monai.io">MONAI</a> (Apache-2.0); DICOM-SEG written with
<a href="https://github.com/ImagingDataCommons/highdicom">highdicom</a> (MIT) and read with
<a href="https://github.com/QIICR/dcmqi">dcmqi</a> (BSD-3-Clause).
"""
        slicer.app.connect("startupCompleted()", slicer_setup.load_terminology)


@parameterNodeWrapper
class SarcopeniaSegParameterNode:
    """Every choice of the module, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    modelCard: str = ""  # path of the model card JSON (the Model box is filled in code, not bound)
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: pathlib.Path
    overwrite: bool = False
    height_m: Annotated[float, WithinRange(0.0, 2.5)] = 0.0  # 0: from DICOM PatientSize
    weight_kg: Annotated[float, WithinRange(0.0, 400.0)] = 0.0  # 0: from DICOM PatientWeight
    sex: Annotated[str, Choice(SEX_CHOICES)] = "from DICOM"
    cutoffSet: Annotated[str, Choice(CUTOFF_SETS)] = "Martin 2013"
    slabSlices: Annotated[int, WithinRange(1, 15)] = 1
    muscleGroups: bool = False


class SarcopeniaSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, slicer_setup.TaskWidgetMixin):
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
        self._pipelineReady = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SarcopeniaSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SarcopeniaSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.connectCommonWidgets()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.findL3Button.connect("clicked(bool)", self.onFindL3Button)
        self.ui.measureButton.connect("clicked(bool)", self.onMeasureButton)

        self._pipelineReady = slicer_setup.task_package_available(TASK)
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

    def setParameterNode(self, inputParameterNode: Optional[SarcopeniaSegParameterNode]) -> None:
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
        volume = self._parameterNode.inputVolume
        if volume:
            self.ui.outputSegmentationSelector.baseName = f"{volume.GetName()} body composition"
        self.updateButtonStates()

    def updateButtonStates(self) -> None:
        """Enable what can run now; say why a button is off when the body-composition pipeline is absent."""
        p = self._parameterNode
        if p is None:
            return
        # Apply runs the chosen model card (any installed body-composition model); Find L3 and Measure need
        # the body-composition pipeline package.
        self.ui.applyButton.enabled = bool(p.inputVolume and p.modelCard and not self.running)
        self.ui.applyButton.toolTip = ("Segment the body-composition tissues with the chosen model" if p.modelCard
                                       else "No body-composition model card is installed: add one with 'Add model card'")
        for button, ready, tip in (
            (self.ui.findL3Button, p.inputVolume, "Find the L3 slice and show it"),
            (self.ui.measureButton, p.inputVolume and p.outputSegmentation,
             "Measure areas, HU, SMI and VAT/SAT of the (corrected) segmentation into a table"),
        ):
            button.enabled = bool(self._pipelineReady and ready and not self.running)
            button.toolTip = tip if self._pipelineReady else slicer_setup.pipeline_unavailable_tooltip(TASK)
        self.ui.cancelButton.enabled = self.running
        self.ui.exportButton.enabled = bool(p.outputSegmentation) and not self.running
        self.ui.editButton.enabled = bool(p.outputSegmentation) and not self.running

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Body-composition segmentation failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            segmentation = self.runWithProgress(lambda progress: self.logic.process(
                p.inputVolume, p.modelCard, p.device, p.outputSegmentation, progress=progress))
            if segmentation is not None:
                p.outputSegmentation = segmentation
                self.ui.statusLabel.text = f"Done: '{segmentation.GetName()}'. Check it, then Measure or Export."

    def onFindL3Button(self) -> None:
        with slicer.util.tryWithErrorDisplay("Finding L3 failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            index = self.runWithProgress(lambda progress: self.logic.findL3(p.inputVolume, p.device, progress))
            if index is not None:
                self.logic.showSlice(p.inputVolume, index)
                self.ui.statusLabel.text = f"L3 found at slice {index}."

    def onMeasureButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Body-composition measurement failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            table = self.logic.measure(p.outputSegmentation, p.inputVolume, p.height_m, p.weight_kg, p.sex,
                                       p.cutoffSet, p.slabSlices, p.muscleGroups)
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


class SarcopeniaSegLogic(ScriptedLoadableModuleLogic):
    """Calls ``mskseg.app``; usable from Python without the widget (nodes and values are arguments)."""

    def getParameterNode(self):
        return SarcopeniaSegParameterNode(super().getParameterNode())

    def modelCards(self) -> list:
        """The model cards of this task (objects with ``path``, ``title``, ``name``)."""
        return slicer_setup.app_function("list_model_cards")(TASK)

    def deviceReport(self, preference: str = "auto") -> str:
        """Which device a run would use for ``preference`` ("auto", "cpu", "cuda", "mps") and why."""
        return slicer_setup.app_function("device_report")(preference)

    def process(self, inputVolume, modelCard: str, device: str = "auto", outputSegmentation=None, progress=None):
        """Segment the body-composition tissues of ``inputVolume``; returns the segmentation node.

        A given ``outputSegmentation`` that already holds segments is left as it is (it may hold
        corrections) and a new node is made.
        """
        slicer_setup.require_inputs(inputVolume, modelCard)
        return slicer_setup.app_function("run_segmentation")(
            slicer.mrmlScene, inputVolume, modelCard, device=device, progress=progress,
            segmentation_node=outputSegmentation)

    def findL3(self, inputVolume, device: str = "auto", progress=None) -> int:
        """Index ``k`` (numpy axis 0 of the volume's voxel array) of the slice through the middle of L3."""
        slicer_setup.require_volume(inputVolume)
        found = slicer_setup.app_function("find_l3")(slicer.mrmlScene, inputVolume, device=device, progress=progress)
        return int(getattr(found, "index", found))

    def showSlice(self, volumeNode, index: int) -> None:
        """Centre the slice views on slice ``index`` of ``volumeNode``."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        dims = volumeNode.GetImageData().GetDimensions()
        ras = ijkToRas.MultiplyPoint([(dims[0] - 1) / 2, (dims[1] - 1) / 2, index, 1])
        slicer.modules.markups.logic().JumpSlicesToLocation(ras[0], ras[1], ras[2], True)

    def measure(self, segmentationNode, volumeNode, height_m: float = 0.0, weight_kg: float = 0.0,
                sex: str = "from DICOM", cutoffSet: str = "Martin 2013", slabSlices: int = 1,
                muscleGroups: bool = False):
        """Body-composition measurements of ``segmentationNode`` into a table node (0 or "from DICOM": use DICOM)."""
        if segmentationNode is None:
            raise mskseg.MSKSegError("There is no segmentation to measure.", "press Apply first")
        return slicer_setup.app_function("measure_body_composition")(
            slicer.mrmlScene, segmentationNode, volumeNode, height_m=height_m or None, weight_kg=weight_kg or None,
            sex={"female": "F", "male": "M"}.get(sex), cutoff_set=cutoffSet, slab_slices=slabSlices,
            muscle_groups=muscleGroups)

    def export(self, segmentationNode, volumeNode, folder, formats=None, overwrite: bool = False) -> list:
        """Write the segmentation (.seg.nrrd, DICOM-SEG for DICOM inputs) and metrics CSV; returns the paths."""
        if segmentationNode is None:
            raise mskseg.MSKSegError("There is no segmentation to export.", "press Apply first")
        return slicer_setup.app_function("export_results")(
            slicer.mrmlScene, segmentationNode, volumeNode, str(slicer_setup.require_export_folder(folder)),
            formats=formats or slicer_setup.default_export_formats(volumeNode), overwrite=overwrite)


class SarcopeniaSegTest(ScriptedLoadableModuleTest):
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
            SarcopeniaSegLogic().process(None, "")

    def test_device_report_names_device(self):
        self.assertIn("cpu", SarcopeniaSegLogic().deviceReport("cpu").lower())

    def test_export_writes_files_and_refuses_overwrite(self):
        import tempfile

        volume, segmentation = slicer_setup.add_synthetic_case(["skeletal_muscle", "subcutaneous_fat", "visceral_fat"])
        folder = tempfile.mkdtemp()
        logic = SarcopeniaSegLogic()
        files = logic.export(segmentation, volume, folder)
        self.assertTrue(files and all(os.path.isfile(f) for f in files), files)
        with self.assertRaises(mskseg.errors.OutputExistsError):
            logic.export(segmentation, volume, folder)
        self.assertEqual(sorted(logic.export(segmentation, volume, folder, overwrite=True)), sorted(files))

    def test_rerun_keeps_corrected_segmentation(self):
        cards = SarcopeniaSegLogic().modelCards()
        if not cards:
            self.delayDisplay("No bundled sarcopenia model: run test skipped")
            return
        volume, corrected = slicer_setup.add_synthetic_case(["skeletal_muscle"])
        try:
            result = SarcopeniaSegLogic().process(volume, str(cards[0].path), "cpu", corrected)
            self.assertNotEqual(result.GetID(), corrected.GetID())
        except mskseg.MSKSegError as error:  # a pipeline may rightly refuse a phantom without an L3
            self.delayDisplay(f"Synthetic volume refused: {error}")
        self.assertEqual(corrected.GetSegmentation().GetNumberOfSegments(), 1)
