"""Run one task in a separate process and follow it: the protocol between a GUI and its background worker.

Slicer must stay responsive while a task runs (minutes on a CPU), and Cancel must stop it at once, also inside
a long network call that checks no cancel flag. As in SlicerMONAIAuto3DSeg and SlicerTotalSegmentator, the work
therefore runs in a child process that the GUI polls and may terminate. This module is both sides, without Qt:

* the child, ``python -m mskseg.worker --task NAME --input IMAGE --out DIR [--metadata JSON] [-- OPTIONS...]``,
  reads the image, parses ``OPTIONS`` with the task's own command-line parser (so an option means exactly what
  it means after ``mskseg NAME``), runs the task and exports its files into ``DIR``. Tasks without command-line
  options (``bone``, ``spine``) take ``--model CARD`` and ``--device DEVICE``.
* the parent, :class:`WorkerProcess`, starts the child and hands its events to whoever polls (a ``QTimer`` in
  ``MSKSegLib.background``).

The child writes one JSON object per line on its standard output and nothing else (stray prints, also those
of C libraries, go to standard error)::

    {"event": "progress", "fraction": 0.42, "message": "finding L3"}      (fractions never decrease)
    {"event": "done", "files": ["/out/segmentation.seg.nrrd", ...], "seconds": 12.3}     exit status 0
    {"event": "error", "message": "...", "hint": "..."}     an MSKSegError (bad input)     exit status 2
    {"event": "error", "message": "internal error: ..."}   anything else (a bug)          exit status 1

A cancelled run is terminated by the parent: its output folder may hold some files and must not be loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .errors import MSKSegError

#: Seconds :meth:`WorkerProcess.cancel` waits after asking the child to stop before killing it.
CANCEL_GRACE_S = 3.0
#: Lines of the child's standard error kept to explain a crash.
STDERR_TAIL_LINES = 20


# --------------------------------------------------------------------------------------------- the child
class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`MSKSegError` instead of printing usage and exiting (the worker reports
    every failure as an event)."""

    def error(self, message: str):  # type: ignore[override]
        raise MSKSegError(f"{self.prog}: {message}", "check the options passed after '--'")


def _split_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` cut at the first ``--``: the worker's own arguments, then the task's options."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def task_options(task: Any, options: Sequence[str]) -> dict[str, Any]:
    """The keyword options of ``task.run`` for command-line ``options`` (the words after ``--``).

    Tasks with a command line (``add_arguments``) parse them with their own parser and ``options_from_args``;
    the others accept ``--model CARD`` and ``--device DEVICE`` (``model_card=``, ``device=``).

    Raises:
        MSKSegError: an unknown option or a bad value.
    """
    parser = _ArgumentParser(prog=f"mskseg {task.name}")
    if task.add_arguments is None or task.options_from_args is None:
        parser.add_argument("--model", metavar="CARD", help="model card (path or name)")
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        args = parser.parse_args(list(options))
        return {"model_card": args.model, "device": args.device}
    task.add_arguments(parser)
    return task.options_from_args(parser.parse_args(list(options)))


class _EventWriter:
    """Writes protocol events, one JSON line each; progress only when it moved (fractions never decrease)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.fraction = -1.0
        self.message = ""

    def emit(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def progress(self, fraction: float, message: str = "") -> bool:
        """The task's progress callback: report ``fraction`` (0..1) and ``message``; never cancels (the
        parent terminates the process instead)."""
        fraction = max(self.fraction, min(max(float(fraction), 0.0), 1.0))
        if fraction - self.fraction >= 0.005 or (message and message != self.message):
            self.fraction, self.message = fraction, message or self.message
            self.emit({"event": "progress", "fraction": round(fraction, 4), "message": self.message})
        return True


def _protocol_stream() -> IO[str]:
    """A text stream on the real standard output, which from now on only carries events: file descriptor 1
    (and ``sys.stdout``) are pointed at standard error, so that prints of Python code and of C libraries
    cannot break the protocol."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def run_worker(argv: Sequence[str] | None = None, stream: IO[str] | None = None) -> int:
    """The child's main: run the task of ``argv`` and report on ``stream`` (default: standard output, made
    protocol-only); returns the exit status (0 done, 2 bad input, 1 internal error)."""
    if argv is None:  # the child process itself: a cancel (SIGTERM) removes the files being written, like Ctrl-C
        from .batch import terminate_on_sigterm

        terminate_on_sigterm()
    own, options = _split_options(sys.argv[1:] if argv is None else argv)
    events = _EventWriter(stream if stream is not None else _protocol_stream())
    start = time.perf_counter()
    try:
        parser = _ArgumentParser(prog="python -m mskseg.worker", description=__doc__.split("\n\n")[0])
        parser.add_argument("--task", required=True, help="task name (mskseg.tasks)")
        parser.add_argument("--input", required=True, help="the image: file or DICOM folder")
        parser.add_argument("--out", required=True, help="output folder (files are replaced)")
        parser.add_argument("--metadata", help="JSON file of metadata (DICOM attributes) to add to the image's")
        args = parser.parse_args(own)

        from .io import read_image
        from .tasks import get_task

        task = get_task(args.task)
        run_options = task_options(task, options)
        image = read_image(args.input)
        if args.metadata:
            image.metadata.update(json.loads(Path(args.metadata).read_text()))
        result = task.run(image, progress=events.progress, **run_options)
        files = task.export(args.out, image, result, overwrite=True, extra={"input": str(args.input)})
        events.emit({"event": "done", "files": [str(f) for f in files],
                     "seconds": round(time.perf_counter() - start, 3)})
        return 0
    except MSKSegError as error:
        events.emit({"event": "error", "message": error.message, "hint": error.hint})
        return 2
    except Exception as error:  # a bug: say so in one line, the traceback goes to standard error
        import traceback

        traceback.print_exc(file=sys.stderr)
        events.emit({"event": "error", "message": f"internal error: {type(error).__name__}: {error}"})
        return 1


# --------------------------------------------------------------------------------------------- the parent
class WorkerProcess:
    """One task run in a child process (``python -m mskseg.worker``), followed without blocking.

    Args:
        task: task name of the registry (``sarcopenia``, ``bone``, ``spine``).
        input_path: the image file or DICOM folder.
        out_dir: folder for the task's files (existing files are replaced).
        options: the task's command-line options, e.g. ``["--method", "rules", "--device", "cpu"]``.
        python: the Python executable of the child (inside Slicer: ``PythonSlicer``); default ``sys.executable``.
        metadata_path: JSON file of metadata for the image (DICOM attributes lost by a NRRD file).

    Use: :meth:`start`, then :meth:`poll` now and then (a GUI timer) until :attr:`done`; :meth:`cancel` to stop.
    A reader thread queues the child's lines, so :meth:`poll` never blocks.
    """

    def __init__(self, task: str, input_path: str | Path, out_dir: str | Path, options: Sequence[str] = (),
                 python: str | None = None, metadata_path: str | Path | None = None):
        self.task, self.input_path, self.out_dir = task, Path(input_path), Path(out_dir)
        self.options, self.python, self.metadata_path = list(options), python or sys.executable, metadata_path
        self.process: subprocess.Popen | None = None
        self.progress: tuple[float, str] = (0.0, "")  # the last progress event: fraction, message
        self.files: list[str] = []  # the files of the "done" event
        self.error: dict[str, Any] | None = None  # the "error" event
        self.cancelled = False
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._finished = False

    def command(self) -> list[str]:
        """The child's command line."""
        command = [self.python, "-m", "mskseg.worker", "--task", self.task, "--input", str(self.input_path),
                   "--out", str(self.out_dir)]
        if self.metadata_path:
            command += ["--metadata", str(self.metadata_path)]
        return command + ["--", *self.options]

    def start(self) -> "WorkerProcess":
        """Start the child. The folder holding the ``mskseg`` package goes first on its ``PYTHONPATH`` (Slicer's
        Python does not put the scripted-modules folder on the path of a child by itself)."""
        if self.process is not None:
            raise RuntimeError("this worker was started already")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        # CREATE_NO_WINDOW: on Windows a console child of a GUI application would open a console window.
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                        env=env, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self._readers = [threading.Thread(target=self._read_events, args=(self.process.stdout,), daemon=True),
                         threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True)]
        for reader in self._readers:
            reader.start()
        return self

    def _read_events(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of the child's output

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr_tail.append(line.rstrip("\n"))

    def poll(self) -> list[dict[str, Any]]:
        """The events that arrived since the last call (never blocks). Once the child has ended, a child that
        ended without a "done" or "error" event (a crash, or :meth:`cancel`) gives one "error" event."""
        events: list[dict[str, Any]] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._finish(events)
                break
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.stderr_tail.append(line.rstrip("\n"))
                continue
            self._record(event)
            events.append(event)
        return events

    def _record(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.progress = (float(event.get("fraction", 0.0)), str(event.get("message", "")))
        elif kind == "done":
            self.files = list(event.get("files", []))
        elif kind == "error":
            self.error = event

    def _finish(self, events: list[dict[str, Any]]) -> None:
        assert self.process is not None
        self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        self._finished = True
        if self.error is None and not self.files:
            if self.cancelled:
                event = {"event": "error", "message": "cancelled", "cancelled": True}
            else:
                tail = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
                event = {"event": "error", "message": f"internal error: the worker stopped with exit status "
                         f"{self.process.returncode}" + (f": {tail}" if tail else "")}
            self._record(event)
            events.append(event)

    @property
    def returncode(self) -> int | None:
        """The child's exit status; None while it runs (negative: ended by a signal, on POSIX)."""
        return None if self.process is None else self.process.poll()

    @property
    def done(self) -> bool:
        """Whether the child has ended and :meth:`poll` has handed out all of its events."""
        return self._finished

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Stop the child: terminate it, and kill it when it is still running ``grace_s`` seconds later.
        Its output folder is then incomplete: do not load it."""
        self.cancelled = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until the child ends (or ``timeout`` seconds pass); the events that arrived meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        while not self.done:
            events += self.poll()
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return events


class BatchProcess(WorkerProcess):
    """A cohort run (``mskseg batch TASK --events``) in a child process, followed like a single run.

    Args:
        task: task name of the registry.
        source: folder of studies or manifest CSV (``mskseg batch --input``).
        out_dir: the cohort's output folder (``--out``); a rerun into it resumes.
        options: the task's command-line options (after ``--``).
        workers: local worker processes of the batch.
        python: the child's Python (inside Slicer: ``PythonSlicer``).

    Events as they arrive: ``start`` (``total``, ``already_done``), ``case`` per finished case (``done``,
    ``total``, ``fraction``, ``case``, ``status``, ``reason``, ``folder``), ``done`` (``table``, ``counts``).
    :attr:`progress` follows the cases. :meth:`cancel` sends SIGTERM: the case under way is discarded whole,
    the finished ones stay and a rerun skips them.
    """

    def __init__(self, task: str, source: str | Path, out_dir: str | Path, options: Sequence[str] = (),
                 workers: int = 1, python: str | None = None):
        super().__init__(task, source, out_dir, options, python=python)
        self.workers = int(workers)
        self.cases: list[dict[str, Any]] = []  # the "case" events
        self.counts: dict[str, int] = {}

    def command(self) -> list[str]:
        """The child's command line."""
        return [self.python, "-m", "mskseg", "batch", self.task, "--input", str(self.input_path), "--out",
                str(self.out_dir), "--workers", str(self.workers), "--events", "--", *self.options]

    def _record(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            total, done = int(event.get("total", 0)), int(event.get("already_done", 0))
            self.progress = (done / max(total, 1), f"{done} of {total} cases already done")
        elif kind == "case":
            self.cases.append(event)
            self.progress = (float(event.get("fraction", 0.0)),
                             f"{event.get('done')}/{event.get('total')} {event.get('case')}: {event.get('status')}")
        elif kind == "done":
            self.files = [str(event.get("table", ""))]
            self.counts = dict(event.get("counts", {}))
        else:
            super()._record(event)

    def _finish(self, events: list[dict[str, Any]]) -> None:
        if self.error is None and not self.files and self.stderr_tail and not self.cancelled:
            # `mskseg batch` refused before any case (bad option, no study): its message is on standard error
            lines = [line.strip() for line in self.stderr_tail if line.strip()]
            message = next((line.split("error: ", 1)[1] for line in lines if "error: " in line), "")
            hint = next((line.split("hint: ", 1)[1] for line in lines if line.startswith("hint: ")), None)
            if message:
                self._record({"event": "error", "message": message, "hint": hint})
                events.append(self.error)  # type: ignore[arg-type]
        super()._finish(events)


if __name__ == "__main__":
    sys.exit(run_worker())
