"""Bone Segmentation: vertebrae, ribs, sacrum, hips, femora and shoulder-girdle bones of a CT, in 3D Slicer.

Slicer's scripted-module template classes with what is particular to bones: texts, parameter node, names and
the synthetic bones of the self-test. Panel, logic and self-test behave as in every MSKSeg module and come
from ``MSKSegLib``; torch and MONAI are imported by ``mskseg`` only when a model runs.
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


class BoneSeg(ScriptedLoadableModule):
    """Bone Segmentation in Slicer's module list, help and acknowledgement.

    The help names the bones a model may cover; the model card of each model lists the ones it does.
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Bone Segmentation"
        self.parent.helpText = """
Segments the bones of a CT. Without a model, anatomical rules find all bone with its marrow (table and
contrast-filled vessels left out) and name what rules can tell: vertebrae per level (where the vertebral
levels are found), sacrum, hip bones, femora, ribs left and right, and "other bone". A bone model card, when
chosen, runs its network instead (its card lists the classes). The measurements table holds each class's
volume and HU, the trabecular HU of L1-L4 and the opportunistic osteoporosis screening flag at L1 (a
screening flag, not a diagnosis). Each segment carries its SNOMED CT code, name and colour.
""" + MSKSegLib.HELP_FOOTER
        self.parent.acknowledgementText = MSKSegLib.ACKNOWLEDGEMENT
        MSKSegLib.register_module(self.parent)


@parameterNodeWrapper
class BoneSegParameterNode(MSKSegLib.TaskParameters):
    """Every choice of the module, saved with the scene.

    The fields bound in BoneSeg.ui; the bone model (``modelCard``) comes from TaskParameters.
    """

    inputVolume: vtkMRMLScalarVolumeNode  # a CT
    device: Annotated[str, Choice(MSKSegLib.DEVICE_CHOICES)] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: pathlib.Path
    overwrite: bool = False


class BoneSegWidget(MSKSegLib.TaskWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel, as TaskWidgetMixin builds it.

    Bones have no tool beside Apply, Export and Edit, so only names and messages are set here.
    """

    OUTPUT_NAME_SUFFIX = "bones"
    APPLY_TOOLTIP = "Segment the bones of the input volume (anatomical rules, or the chosen model) and measure them"
    APPLY_FAILURE = "Bone segmentation failed."


class BoneSegLogic(MSKSegLib.TaskLogicMixin, ScriptedLoadableModuleLogic):
    """Runs bone models through the task registry (``mskseg.tasks``), usable from Python without the widget.

    Listing, device report, segmentation and export are those of TaskLogicMixin, for the task "bone"; a model
    card is optional (without one the rules run).
    """

    TASK = "bone"
    PARAMETER_NODE = BoneSegParameterNode
    MODEL_CARD_OPTIONAL = True  # the rule-based method runs without a model


class BoneSegTest(MSKSegLib.TaskTestMixin, ScriptedLoadableModuleTest):
    """Self-test run by Slicer (Reload and Test, and ctest).

    TaskTestMixin's tests, on a synthetic CT with a vertebra, a femur and a rib.
    """

    LOGIC = BoneSegLogic
    SYNTHETIC_CLASSES = ("vertebrae_L1", "femur_left", "ribs_left")
