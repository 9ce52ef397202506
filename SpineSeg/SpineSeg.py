"""Spine Segmentation: the vertebrae of the lumbar spine, labelled by level, in CT and radiographs, in 3D Slicer.

What is particular to the spine, in the classes of Slicer's scripted-module template: the help (with its
warning about transitional vertebrae), the parameter node, names, messages and the vertebrae of the self-test.
Everything the three MSKSeg modules do alike comes from the mixins of ``MSKSegLib``.
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

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest
from slicer.util import VTKObservationMixin

import MSKSegLib  # standard library and mskseg's light modules only: cheap at Slicer start-up


class SpineSeg(ScriptedLoadableModule):
    """The module's entry in Slicer: title, help and acknowledgement.

    Its help says how levels are counted and why a transitional lumbosacral vertebra can shift every label.
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Spine Segmentation"
        self.parent.helpText = """
Segments the vertebrae of the lumbar spine and labels each with its level (the model card lists the levels it
covers), in a CT or in a radiograph (a single-slice volume, as Slicer loads a DICOM radiograph or a PNG).
Levels are counted from the anatomy the image shows; transitional lumbosacral vertebrae (15-35 % of people)
are the main cause of a wrong level, so check the labels before using them. Each segment carries its SNOMED CT
code, name and colour.
""" + MSKSegLib.HELP_FOOTER
        self.parent.acknowledgementText = MSKSegLib.ACKNOWLEDGEMENT
        MSKSegLib.register_module(self.parent)


@parameterNodeWrapper
class SpineSegParameterNode(MSKSegLib.TaskParameters):
    """What the user chose in the Spine Segmentation panel, kept in the scene.

    Declares what SpineSeg.ui binds; ``modelCard``, filled from the Model box, is inherited.
    """

    inputVolume: vtkMRMLScalarVolumeNode  # a CT, or a radiograph loaded as a single-slice volume
    device: Annotated[str, Choice(MSKSegLib.DEVICE_CHOICES)] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: pathlib.Path
    overwrite: bool = False


class SpineSegWidget(MSKSegLib.TaskWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel of TaskWidgetMixin, with the spine's names and messages.

    After a run the status line asks for the level labels to be checked before Export.
    """

    OUTPUT_NAME_SUFFIX = "spine"
    APPLY_TOOLTIP = "Segment and label the vertebrae of the input volume with the chosen model"
    APPLY_FAILURE = "Spine segmentation failed."
    APPLY_DONE_HINT = "Check the level labels, then Export."


class SpineSegLogic(MSKSegLib.TaskLogicMixin, ScriptedLoadableModuleLogic):
    """TaskLogicMixin for the task "spine": models listed, run and exported through the task registry (``mskseg.tasks``).

    Works from the Python console too (nodes and values are arguments), for scripts over many images.
    """

    TASK = "spine"
    PARAMETER_NODE = SpineSegParameterNode


class SpineSegTest(MSKSegLib.TaskTestMixin, ScriptedLoadableModuleTest):
    """The tests of TaskTestMixin on three synthetic lumbar vertebrae.

    Slicer runs them on Reload and Test, and ctest through slicer_add_python_unittest.
    """

    LOGIC = SpineSegLogic
    SYNTHETIC_CLASSES = ("vertebrae_L3", "vertebrae_L4", "vertebrae_L5")
