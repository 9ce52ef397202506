"""The self-test the three MSKSeg modules share (Reload and Test, and ctest), on synthetic data only.

Standard library only at import time; the test methods import Slicer, numpy and ``mskseg.mrml`` inside.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mskseg.errors import MSKSegError

from . import dependencies


def add_synthetic_case(class_names: Sequence[str], scene: Any = None,
                       name: str = "MSKSeg synthetic") -> tuple[Any, Any]:
    """A small CT-like volume and a segmentation of it with one box-shaped segment per class.

    Used by the modules' self-tests (Reload and Test), which must not depend on downloads. The volume is
    16 x 48 x 64 voxels (K, J, I) of int16 Hounsfield units, spacing 0.8 x 0.8 x 2.5 mm: air around a body
    with a fat layer, muscle and a bone block. Segment ``n`` (label ``n + 1``) is named after
    ``class_names[n]`` and carries its terminology (through :mod:`mskseg.mrml`).

    Args:
        class_names: class names (keys of ``mskseg.terminology.CLASSES`` or any name), at most 8.
        scene: the MRML scene; default ``slicer.mrmlScene``.

    Returns:
        ``(volume_node, segmentation_node)``; the segmentation refers to the volume and has its geometry.
    """
    from mskseg import mrml
    from mskseg.demo import box_case

    if scene is None:
        import slicer

        scene = slicer.mrmlScene
    volume, labelmap = box_case(class_names)
    volume_node = mrml.image_to_volume_node(volume, scene, name)
    segmentation_node = mrml.labelmap_to_segmentation_node(
        labelmap, {n + 1: c for n, c in enumerate(class_names)}, scene, volume_node,
        name=f"{name} segmentation")
    return volume_node, segmentation_node


class TaskTestMixin:
    """Self-test the three MSKSeg modules share (Reload and Test, and ctest): synthetic data only, no download.

    Mixed into each ``<M>Test`` before ``ScriptedLoadableModuleTest``, which sets :attr:`LOGIC` (its
    ``<M>Logic`` class) and :attr:`SYNTHETIC_CLASSES` (class names of its task for the synthetic case).
    """

    LOGIC: Any = None
    SYNTHETIC_CLASSES: tuple[str, ...] = ()

    def setUp(self) -> None:
        import slicer

        slicer.mrmlScene.Clear(0)

    def runTest(self) -> None:
        """Run every test of the module on a cleared scene."""
        dependencies.ensure_dependencies(ask=False)
        for test in (self.test_process_refuses_missing_input, self.test_device_report_names_device,
                     self.test_export_writes_files_and_refuses_overwrite, self.test_rerun_keeps_corrected_segmentation):
            self.setUp()
            test()

    def test_process_refuses_missing_input(self) -> None:
        with self.assertRaises(MSKSegError):
            self.LOGIC().process(None, "")

    def test_device_report_names_device(self) -> None:
        self.assertIn("cpu", self.LOGIC().deviceReport("cpu").lower())

    def test_export_writes_files_and_refuses_overwrite(self) -> None:
        from mskseg.errors import OutputExistsError

        volume, segmentation = add_synthetic_case(self.SYNTHETIC_CLASSES)
        folder = tempfile.mkdtemp(prefix="mskseg-selftest-")
        logic = self.LOGIC()
        files = logic.export(segmentation, volume, folder)
        self.assertTrue(files and all(Path(f).is_file() for f in files), files)
        with self.assertRaises(OutputExistsError):
            logic.export(segmentation, volume, folder)
        self.assertEqual(sorted(logic.export(segmentation, volume, folder, overwrite=True)), sorted(files))

    def test_rerun_keeps_corrected_segmentation(self) -> None:
        cards = self.LOGIC().modelCards()
        if not cards:
            self.delayDisplay(f"No bundled {self.LOGIC.TASK} model: run test skipped")
            return
        volume, corrected = add_synthetic_case(self.SYNTHETIC_CLASSES[:1])
        try:
            result = self.LOGIC().process(volume, str(cards[0].path), "cpu", corrected)
            self.assertNotEqual(result.GetID(), corrected.GetID())
        except MSKSegError as error:  # a pipeline may rightly refuse a phantom (e.g. one without an L3)
            self.delayDisplay(f"Synthetic volume refused: {error}")
        self.assertEqual(corrected.GetSegmentation().GetNumberOfSegments(), 1)
