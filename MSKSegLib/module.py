"""What the three MSKSeg modules share in their Slicer description: category, contributors, help and
acknowledgement texts, device choices, and loading MSKSeg's terminology at Slicer start-up.

Standard library only at import time: each module imports this when Slicer starts.
"""
from __future__ import annotations

from typing import Any

from mskseg.slicer_support import terminology_file

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
