"""Run a task on a volume node in a background process, with a live progress bar and a Cancel that works.

The task runs in a child process (:class:`mskseg.worker.WorkerProcess`), not in Slicer's GUI thread: Slicer
stays responsive, and Cancel terminates the child even in the middle of a network call. A ``qt.QTimer`` polls
the child's events a few times a second and shows them; when the child is done, ``on_done`` receives the
output folder, which the module loads into the scene (the task's ``load_result`` Slicer function).

The volume goes to the child as a NRRD file (geometry kept) and its DICOM attributes (modality, patient sex,
height, weight) as a JSON file beside it, so that the child measures what an in-process run would.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Milliseconds between two looks at the child's events.
POLL_INTERVAL_MS = 200


def python_executable() -> str:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` (Slicer's own Python with its packages and
    environment; the Slicer application binary itself is no Python interpreter), else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


def write_worker_input(volume_node: Any, folder: str | Path) -> tuple[Path, Path]:
    """Write ``volume_node`` as ``input.nrrd`` and its metadata as ``input.metadata.json`` into ``folder``.

    Only JSON-representable metadata is written (DICOM attributes, ``source_files``); ``source_path`` and
    ``format`` describe the temporary file, not the volume, and are left out.

    Raises:
        InvalidImageError: the node holds no voxels (``mskseg.mrml.volume_node_to_image``).
    """
    from mskseg import mrml
    from mskseg.io.writers import write_image

    image = mrml.volume_node_to_image(volume_node)
    folder = Path(folder)
    image_path = write_image(folder / "input.nrrd", image, overwrite=True)
    metadata = {}
    for key, value in image.metadata.items():
        if key in ("source_path", "format"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        metadata[key] = value
    metadata_path = folder / "input.metadata.json"
    metadata_path.write_text(json.dumps(metadata))
    return image_path, metadata_path


class BackgroundRun:
    """One background run of task ``task`` on ``volume_node``, shown on a progress bar and a status label.

    Args:
        task: task name of the registry (``sarcopenia``, ``bone``, ``spine``).
        volume_node: the input ``vtkMRMLScalarVolumeNode``.
        options: the task's command-line options (what would follow ``mskseg <task>``).
        progress_bar: object with an integer ``value`` (a ``QProgressBar``, 0..100).
        status_label: object with a ``text`` (a ``QLabel``), or None.
        on_done: called with the output folder when the task has written its files.
        on_failed: called with ``(message, hint)`` when the task failed (not when cancelled).
        on_finished: called last, however the run ended (done, failed or cancelled).
        python: the worker's Python; default :func:`python_executable`.
        timer: object with ``start()`` and ``stop()`` that calls :meth:`poll` periodically; default a
            ``qt.QTimer`` made in :meth:`start` (tests pass a stand-in and call :meth:`poll` themselves).

    The working folder (a new temporary folder) holds the input files, removed when the run ends, and
    ``out/``, kept after a successful run (the files the task wrote) and removed after a failed or
    cancelled one (it is incomplete).
    """

    def __init__(self, task: str, volume_node: Any, options: Sequence[str], *, progress_bar: Any,
                 status_label: Any = None, on_done: Callable[[Path], None] | None = None,
                 on_failed: Callable[[str, str | None], None] | None = None,
                 on_finished: Callable[[], None] | None = None, python: str | None = None, timer: Any = None):
        self.task, self.volume_node, self.options = task, volume_node, list(options)
        self.progress_bar, self.status_label = progress_bar, status_label
        self.on_done, self.on_failed, self.on_finished = on_done, on_failed, on_finished
        self.python = python
        self.timer = timer
        self.worker: Any = None
        self.folder: Path | None = None
        self.finished = False

    @property
    def out_dir(self) -> Path:
        """Where the task writes its files."""
        assert self.folder is not None, "not started"
        return self.folder / "out"

    def start(self) -> "BackgroundRun":
        """Write the input, start the worker and the timer."""
        self.worker = self._make_worker()
        self.worker.start()
        self._show(0.0, "starting")
        if self.timer is None:
            import qt

            self.timer = qt.QTimer()
            self.timer.setInterval(POLL_INTERVAL_MS)
            self.timer.connect("timeout()", self.poll)
        self.timer.start()
        return self

    def _make_worker(self) -> Any:
        """A temporary folder with the volume written into it, and the worker that runs the task on it."""
        from mskseg.worker import WorkerProcess

        self.folder = Path(tempfile.mkdtemp(prefix=f"mskseg-{self.task}-"))
        try:
            image_path, metadata_path = write_worker_input(self.volume_node, self.folder)
        except Exception:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        return WorkerProcess(self.task, image_path, self.out_dir, self.options,
                             python=self.python or python_executable(), metadata_path=metadata_path)

    def _show(self, fraction: float, message: str) -> None:
        self.progress_bar.value = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        if self.status_label is not None and message:
            self.status_label.text = message

    def poll(self) -> None:
        """Show the events that arrived; at the end, call the callbacks (the timer calls this)."""
        if self.finished or self.worker is None:
            return
        for event in self.worker.poll():
            kind = event.get("event")
            if kind == "progress":
                self._show(event.get("fraction", 0.0), event.get("message", ""))
            elif kind == "done":
                self._finish(lambda: self.on_done and self.on_done(self.out_dir), keep_output=True)
            elif kind == "error" and not self.worker.cancelled:
                self._finish(lambda: self.on_failed and self.on_failed(event.get("message", ""), event.get("hint")))
        if self.worker.done and not self.finished:  # cancelled
            if self.status_label is not None:
                self.status_label.text = "Cancelled."
            self._finish(lambda: None)

    def cancel(self) -> None:
        """Stop the worker (its incomplete output is discarded) and end the run at once."""
        if self.worker is not None and not self.finished:
            self.worker.cancel()
            self.worker.wait(timeout=5)
            self.poll()

    def _finish(self, callback: Callable[[], Any], keep_output: bool = False) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.stop()
        self.progress_bar.value = 0
        try:
            callback()
        finally:
            self._clean_up(keep_output)
            if self.on_finished is not None:
                self.on_finished()

    def _clean_up(self, keep_output: bool) -> None:
        """Remove the input copy; the output too unless the run succeeded."""
        assert self.folder is not None
        for path in (self.folder / "input.nrrd", self.folder / "input.metadata.json"):
            path.unlink(missing_ok=True)
        if not keep_output:
            shutil.rmtree(self.folder, ignore_errors=True)


class CohortRun(BackgroundRun):
    """A task over a folder of studies (``mskseg batch``) in the background, on the same progress bar.

    Args:
        task: task name of the registry.
        source: folder of studies (one sub-folder or image file per study) or manifest CSV.
        out_dir: the cohort's output folder, chosen by the user: a rerun into it resumes (finished cases are
            skipped); nothing in it is removed when the run is cancelled or fails (each case folder is whole).
        options: the task's command-line options.
        workers: local worker processes.
        on_case: called with each ``case`` event as a case ends (the panel adds it to its table).

    The other arguments are those of :class:`BackgroundRun`; ``on_done`` gets ``out_dir``, also when some
    cases failed (their rows say why).
    """

    def __init__(self, task: str, source: str | Path, out_dir: str | Path, options: Sequence[str], *,
                 workers: int = 1, on_case: Callable[[dict], None] | None = None, **kwargs: Any):
        super().__init__(task, None, options, **kwargs)
        self.source, self.cohort_dir, self.workers, self.on_case = Path(source), Path(out_dir), workers, on_case

    @property
    def out_dir(self) -> Path:
        """The cohort's output folder."""
        return self.cohort_dir

    def _make_worker(self) -> Any:
        from mskseg.worker import BatchProcess

        return BatchProcess(self.task, self.source, self.cohort_dir, self.options, workers=self.workers,
                            python=self.python or python_executable())

    def poll(self) -> None:
        """As :meth:`BackgroundRun.poll`, and each finished case to ``on_case`` and the progress bar."""
        if self.finished or self.worker is None:
            return
        seen = len(self.worker.cases)
        super().poll()
        new = self.worker.cases[seen:]
        if self.on_case is not None:
            for event in new:
                self.on_case(event)
        if new and not self.finished:
            self._show(*self.worker.progress)

    def _clean_up(self, keep_output: bool) -> None:
        """Nothing to remove: the cohort folder belongs to the user and holds only whole cases."""
