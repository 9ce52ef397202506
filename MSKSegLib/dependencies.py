"""Make MSKSeg's Python dependencies importable inside 3D Slicer, on the first Apply and never at import time.

What is required, and how missing packages are found, is plain Python in :mod:`mskseg.slicer_support` (tested
without Slicer); installing them needs Slicer (``PyTorchUtils``, ``slicer.util.pip_install`` and a dialog), so
it lives here. Why torch comes from the PyTorch extension and why numpy and torch are pinned is explained
in :mod:`mskseg.slicer_support`.
"""
from __future__ import annotations

import importlib
import importlib.util
import tempfile
from pathlib import Path

from mskseg.errors import CancelledError, MSKSegError
from mskseg.slicer_support import TORCH_REQUIREMENT, missing_python_packages, protected_constraints


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


