"""MSKSegLib: the Slicer side of MSKSeg, installed beside the three modules (SarcopeniaSeg, BoneSeg, SpineSeg).

Everything that needs Qt or the Slicer application lives here, not in the core package ``mskseg`` (which
imports no ``qt``, ``ctk`` nor ``slicer.app``, so that the command line and pytest run it anywhere):

* :mod:`MSKSegLib.module`: the modules' shared description texts, device choices, start-up registration;
* :mod:`MSKSegLib.widgets`: the widget and logic mixins of the module classes;
* :mod:`MSKSegLib.background`: a task run in a worker process (:mod:`mskseg.worker`), polled by a ``QTimer``;
* :mod:`MSKSegLib.dependencies`: installing torch and the Python packages inside Slicer;
* :mod:`MSKSegLib.selftest`: the modules' shared self-test.

Standard library and ``mskseg``'s light modules only at import time (Slicer imports every module at
start-up); ``slicer``, ``qt`` and ``vtk`` are imported inside the functions that need them.
"""
from __future__ import annotations

from mskseg.slicer_support import require_volume

from .module import (ACKNOWLEDGEMENT, DEVICE_CHOICES, HELP_FOOTER, MODULE_CATEGORY, MODULE_CONTRIBUTORS,
                     NO_MODEL_CARD_TOOLTIP, load_terminology, register_module)
from .selftest import TaskTestMixin, add_synthetic_case
from .widgets import (ProgressRelay, TaskLogicMixin, TaskParameters, TaskWidgetMixin, open_in_segment_editor,
                      pipeline_unavailable_tooltip, task_function)

__all__ = ["ACKNOWLEDGEMENT", "DEVICE_CHOICES", "HELP_FOOTER", "MODULE_CATEGORY", "MODULE_CONTRIBUTORS",
           "NO_MODEL_CARD_TOOLTIP", "ProgressRelay", "TaskLogicMixin", "TaskParameters", "TaskTestMixin",
           "TaskWidgetMixin", "add_synthetic_case", "load_terminology", "open_in_segment_editor",
           "pipeline_unavailable_tooltip", "register_module", "require_volume", "task_function"]
