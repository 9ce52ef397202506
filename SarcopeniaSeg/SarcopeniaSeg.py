"""Sarcopenia Segmentation: body composition at the third lumbar vertebra (L3) of a CT, in 3D Slicer.

Beside the Apply, Export and Edit of every MSKSeg module (``MSKSegLib`` mixins), this module has its
own tools: Find L3 and Measure, with the measurement choices (height, weight, sex, cut-off set, slab, muscle
groups) in its parameter node. Finding L3, measuring and writing files are done by the ``mskseg`` package,
which imports torch and MONAI inside functions, after the dependency check.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Annotated

if importlib.util.find_spec("MSKSegLib") is None:
    # Developer mode: this module folder was added to Slicer's additional module paths, and the packages
    # mskseg (the core) and MSKSegLib (the Slicer side) sit in the repository root one level up. An installed
    # extension has both beside this file.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest
from slicer.util import VTKObservationMixin

import mskseg
import MSKSegLib  # standard library and mskseg's light modules only: cheap at Slicer start-up

CUTOFF_SETS = ["Prado 2008", "Martin 2013", "Derstine 2018", "Yoon 2021", "Kamo 2019"]
SEX_CHOICES = ["from DICOM", "female", "male"]
TISSUE_METHODS = ["auto", "network", "rules"]


class SarcopeniaSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section.

    The help states the tissue windows and every cut-off set, so that a reader can check a result by hand.
    """

    def __init__(self, parent):
        from mskseg.sarcopenia.settings import windows_help_html  # light: the default windows, no numpy

        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Sarcopenia Segmentation"
        self.parent.helpText = """
Finds the third lumbar vertebra (L3) in an abdominal CT, segments skeletal muscle (SM), intermuscular
(IMAT), subcutaneous (SAT) and visceral adipose tissue (VAT) there, and measures body composition: area of each tissue
(cm<sup>2</sup>), mean and SD of HU (muscle radiodensity, SMD), skeletal muscle index SMI = SMA / height<sup>2</sup>
(cm<sup>2</sup>/m<sup>2</sup>), VAT/SAT ratio, per slice or as the mean over a slab of slices.
""" + windows_help_html() + """
<p>Low-muscle cut-offs (SMI in cm<sup>2</sup>/m<sup>2</sup>, men / women), chosen by name, never hard-wired:
<b>Prado 2008</b> (SMI &lt; 52.4 / 38.5);
<b>Martin 2013</b> (men SMI &lt; 43 if BMI &lt; 25, &lt; 53 if BMI &ge; 25; women SMI &lt; 41; both: SMD &lt; 41 HU
if BMI &lt; 25, &lt; 33 HU if BMI &ge; 25);
<b>Derstine 2018</b> (SMI &lt; 45.4 / 34.4, SMD &lt; 38.5 / 34.3 HU; fall-back levels L2, L4, L5, L1, T12, T11,
T10 when L3 is outside the field of view);
<b>Yoon 2021</b> (Korea, SMI &lt; 39.33 / 27.77);
<b>Kamo 2019</b> (Japan, SMI &lt; 40.31 / 30.88).
Height, weight and sex come from DICOM (PatientSize, PatientWeight, PatientSex) unless given here.</p>
""" + MSKSegLib.HELP_FOOTER
        self.parent.acknowledgementText = """
Body-composition definitions and cut-offs: Prado et al. 2008 (Lancet Oncol), Martin et al. 2013 (J Clin Oncol),
Derstine et al. 2018 (Sci Rep), Yoon et al. 2021 (Korean reference values), Kamo et al. 2019 (Japanese cut-offs).
""" + MSKSegLib.ACKNOWLEDGEMENT
        MSKSegLib.register_module(self.parent)


@parameterNodeWrapper
class SarcopeniaSegParameterNode(MSKSegLib.TaskParameters):
    """Every choice of the module, saved with the scene: those of segmentation and export, then of Measure.

    ``modelCard`` (the chosen body-composition model) comes from TaskParameters.
    """

    inputVolume: vtkMRMLScalarVolumeNode  # an abdominal CT
    device: Annotated[str, Choice(MSKSegLib.DEVICE_CHOICES)] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: pathlib.Path
    overwrite: bool = False
    height_m: Annotated[float, WithinRange(0.0, 2.5)] = 0.0  # 0: from DICOM PatientSize
    weight_kg: Annotated[float, WithinRange(0.0, 400.0)] = 0.0  # 0: from DICOM PatientWeight
    sex: Annotated[str, Choice(SEX_CHOICES)] = "from DICOM"
    cutoffSet: Annotated[str, Choice(CUTOFF_SETS)] = "Martin 2013"
    slabSlices: Annotated[int, WithinRange(1, 15)] = 1
    muscleGroups: bool = False
    tissueMethod: Annotated[str, Choice(TISSUE_METHODS)] = "auto"
    levelNames: str = ""  # empty: the slice the views show; else level names or "all"


class SarcopeniaSegWidget(MSKSegLib.TaskWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel of TaskWidgetMixin plus Find L3 and Measure.

    Apply runs the body-composition task in a background process on the slice the views show
    (``SarcopeniaSegLogic.workerOptions``); Find L3 and Measure need the body-composition pipeline package
    and say so in their tooltip while it is absent.
    """

    OUTPUT_NAME_SUFFIX = "body composition"
    APPLY_TOOLTIP = "Segment the tissues on the axial slice shown (Find L3 puts the views on L3), with the chosen model"
    APPLY_FAILURE = "Body-composition segmentation failed."
    APPLY_DONE_HINT = "Check it, then Measure or Export."

    def setup(self) -> None:
        super().setup()
        self.ui.findL3Button.connect("clicked(bool)", self.onFindL3Button)
        self.ui.measureButton.connect("clicked(bool)", self.onMeasureButton)

    def updateTaskButtons(self, parameters: SarcopeniaSegParameterNode) -> None:
        """Enable Find L3 and Measure when their inputs are chosen and the pipeline package is installed."""
        for button, ready, tip in (
            (self.ui.findL3Button, parameters.inputVolume, "Find the L3 slice and show it"),
            (self.ui.measureButton, parameters.inputVolume and parameters.outputSegmentation,
             "Measure areas, HU, SMI and VAT/SAT of the (corrected) segmentation into a table"),
        ):
            button.enabled = bool(self.pipelineReady and ready and not self.running)
            button.toolTip = tip if self.pipelineReady else MSKSegLib.pipeline_unavailable_tooltip(self.logic.TASK)
        if self.pipelineReady:
            # The body-composition pipeline needs no model card: its default tissue method is the HU rules.
            self.ui.applyButton.enabled = bool(parameters.inputVolume and not self.running)
            self.ui.applyButton.toolTip = self.APPLY_TOOLTIP

    def onFindL3Button(self) -> None:
        with slicer.util.tryWithErrorDisplay("Finding L3 failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            index = self.runWithProgress(lambda progress: self.logic.findL3(p.inputVolume, p.device, progress))
            if index is not None:
                self.logic.showSlice(p.inputVolume, index)
                self.ui.statusLabel.text = self.logic.levelReport(p.inputVolume) + \
                    " Move the slice views to correct it, then Apply."

    def onMeasureButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Body-composition measurement failed.", waitCursor=True):
            self.ensureDependencies()
            p = self._parameterNode
            table = self.logic.measure(p.outputSegmentation, p.inputVolume, p.height_m, p.weight_kg, p.sex,
                                       p.cutoffSet, p.slabSlices, p.muscleGroups)
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


class SarcopeniaSegLogic(MSKSegLib.TaskLogicMixin, ScriptedLoadableModuleLogic):
    """TaskLogicMixin for the task "sarcopenia", plus finding L3 and measuring body composition.

    Usable from Python without the widget: nodes and values are arguments.
    """

    TASK = "sarcopenia"
    PARAMETER_NODE = SarcopeniaSegParameterNode

    def process(self, inputVolume, modelCard: str = "", device: str = "auto", outputSegmentation=None,
                progress=None):
        """The whole run in this process (find L3, segment, measure), as ``mskseg sarcopenia`` does it;
        returns the segmentation node (its measurements table: attribute ``MSKSeg.MeasurementsTableID``)."""
        MSKSegLib.require_volume(inputVolume)
        segmentation, table = MSKSegLib.task_function(self.TASK, "process")(
            slicer.mrmlScene, inputVolume, segmentation_node=outputSegmentation, progress=progress, device=device,
            model=modelCard or None)
        segmentation.SetAttribute("MSKSeg.MeasurementsTableID", table.GetID())
        return segmentation

    def findL3(self, inputVolume, device: str = "auto", progress=None) -> int:
        """Index of the slice through the middle of L3, counted along the volume's axial (head-feet) axis.

        What was found (level, confidence, every vertebra level, warnings) is kept on the volume node.
        """
        MSKSegLib.require_volume(inputVolume)
        found = MSKSegLib.task_function(self.TASK, "find_l3")(slicer.mrmlScene, inputVolume, device=device, progress=progress)
        return int(getattr(found, "index", found))

    def workerOptions(self, parameters: SarcopeniaSegParameterNode) -> list[str]:
        """Options of ``mskseg sarcopenia`` for Apply's background run: the level names typed in Levels, else the
        slice the views show (Find L3 puts them on L3; the user may move them), else the one Find L3 found, else
        "auto" (find L3 first)."""
        MSKSegLib.require_volume(parameters.inputVolume)
        if parameters.levelNames.strip():
            levels = parameters.levelNames.strip()
        else:
            index = self.shownSliceIndex(parameters.inputVolume)
            if index is None:
                index = parameters.inputVolume.GetAttribute("MSKSeg.L3.Index")
            levels = "auto" if index is None else str(int(index))
        options = ["--levels", levels, "--slab", str(parameters.slabSlices),
                   "--method", parameters.tissueMethod, "--device", parameters.device]
        if parameters.modelCard:
            options += ["--model", str(parameters.modelCard)]
        return options + (["--muscle-groups"] if parameters.muscleGroups else [])

    def cohortOptions(self, parameters: SarcopeniaSegParameterNode) -> list[str]:
        """Options of ``mskseg sarcopenia`` for a cohort: L3 found in every study, the panel's slab, tissue
        method, model, muscle groups, cut-off set and device (height, weight and sex from each study's DICOM
        header or the cohort's manifest)."""
        options = ["--levels", parameters.levelNames.strip() or "auto", "--slab", str(parameters.slabSlices),
                   "--method", parameters.tissueMethod,
                   "--cutoffs", parameters.cutoffSet, "--device", parameters.device]
        if parameters.modelCard:
            options += ["--model", str(parameters.modelCard)]
        return options + (["--muscle-groups"] if parameters.muscleGroups else [])

    def levelReport(self, inputVolume) -> str:
        """One line on the level found: slice, confidence, levels and warnings (from the volume node)."""
        return MSKSegLib.task_function(self.TASK, "describe_l3")(inputVolume)

    def segmentAtLevel(self, inputVolume, sliceIndex, modelCard: str = "", device: str = "auto",
                       outputSegmentation=None, slabSlices: int = 1, muscleGroups: bool = False,
                       tissueMethod: str = "auto", progress=None):
        """Segment the body-composition tissues on ``slabSlices`` slices centred on ``sliceIndex``.

        ``sliceIndex`` None: the L3 slice Find L3 found, found now if needed. A non-empty ``outputSegmentation``
        is never overwritten (a new node is made).
        """
        MSKSegLib.require_volume(inputVolume)
        if sliceIndex is None:
            found = inputVolume.GetAttribute("MSKSeg.L3.Index")
            sliceIndex = int(found) if found is not None else self.findL3(inputVolume, device, progress)
        return MSKSegLib.task_function(self.TASK, "segment_body_composition")(
            slicer.mrmlScene, inputVolume, int(sliceIndex), slab=slabSlices, method=tissueMethod,
            muscle_groups=muscleGroups, device=device, progress=progress, segmentation_node=outputSegmentation,
            model_card=modelCard or None)

    @staticmethod
    def axialAxis(volumeNode) -> int:
        """The IJK axis of ``volumeNode`` closest to head-feet: slice indices count along it (any storage)."""
        from mskseg.orientation import axial_index_axis

        directions = [[0.0] * 3 for _ in range(3)]
        volumeNode.GetIJKToRASDirections(directions)
        return axial_index_axis(directions)

    def shownSliceIndex(self, volumeNode):
        """Slice index of ``volumeNode`` (along its axial axis) that the Red (axial) view shows, None when the
        view is not on the volume."""
        layoutManager = slicer.app.layoutManager()
        sliceWidget = layoutManager.sliceWidget("Red") if layoutManager else None
        if sliceWidget is None or volumeNode is None or volumeNode.GetImageData() is None:
            return None
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        sliceToRas = sliceWidget.mrmlSliceNode().GetSliceToRAS()
        centre = [sliceToRas.GetElement(row, 3) for row in range(3)] + [1.0]
        axis = self.axialAxis(volumeNode)
        k = int(round(rasToIjk.MultiplyPoint(centre)[axis]))
        return k if 0 <= k < volumeNode.GetImageData().GetDimensions()[axis] else None

    def showSlice(self, volumeNode, index: int) -> None:
        """Centre the slice views on slice ``index`` (along the axial axis) of ``volumeNode``."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        dims = volumeNode.GetImageData().GetDimensions()
        point = [(dims[c] - 1) / 2 for c in range(3)] + [1]
        point[self.axialAxis(volumeNode)] = index
        ras = ijkToRas.MultiplyPoint(point)
        slicer.modules.markups.logic().JumpSlicesToLocation(ras[0], ras[1], ras[2], True)

    def measure(self, segmentationNode, volumeNode, height_m: float = 0.0, weight_kg: float = 0.0,
                sex: str = "from DICOM", cutoffSet: str = "Martin 2013", slabSlices: int = 1,
                muscleGroups: bool = False):
        """Body-composition measurements of ``segmentationNode`` into a table node (0 or "from DICOM": use DICOM)."""
        if segmentationNode is None:
            raise mskseg.MSKSegError("There is no segmentation to measure.", "press Apply first")
        return MSKSegLib.task_function(self.TASK, "measure_body_composition")(
            slicer.mrmlScene, segmentationNode, volumeNode, height_m=height_m or None, weight_kg=weight_kg or None,
            sex={"female": "F", "male": "M"}.get(sex), cutoff_set=cutoffSet, slab_slices=slabSlices,
            muscle_groups=muscleGroups)


class SarcopeniaSegTest(MSKSegLib.TaskTestMixin, ScriptedLoadableModuleTest):
    """Self-test run by Slicer (Reload and Test, and ctest): TaskTestMixin's tests on synthetic tissues.

    The run test may see its phantom refused (it has no L3); that is reported, not failed.
    """

    LOGIC = SarcopeniaSegLogic
    SYNTHETIC_CLASSES = ("skeletal_muscle", "subcutaneous_fat", "visceral_fat")
