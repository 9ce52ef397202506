"""MSKSeg core: AI segmentation of musculoskeletal CT and radiographs.

The package has no Qt, CTK or Slicer application dependency. MRML (scene and node) code lives in
:mod:`mskseg.mrml` only; the Qt and Slicer-application code (widget mixins, dependency installation, the
background runner) is in ``MSKSegLib``, beside the modules, which runs tasks through :mod:`mskseg.worker` in
a child process. Heavy dependencies (torch, MONAI, SimpleITK) are imported lazily by the submodules that need
them, so ``import mskseg`` is cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import MSKSegError  # noqa: E402
from .image import Image  # noqa: E402

__all__ = ["Image", "MSKSegError", "__version__"]
