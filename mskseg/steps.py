"""The one step runner every task pipeline uses: named steps, each timed, progress mapped onto the whole run,
cancellation checked between and inside steps.

A task's run function is a short list of named steps::

    runner = StepRunner({"validate": 0.02, "locate": 0.43, "segment": 0.5, "measure": 0.05}, progress, cancel,
                        what="body-composition analysis")
    with runner.step("locate", "finding L3") as report:
        l3 = detect_l3(image, progress=report)       # report(fraction_of_this_step, message) -> bool
    runner.timings                                   # {"validate": 0.01, "locate": 3.2, ...} seconds

The CLI shows the progress as a bar, the Slicer modules as a progress bar in the panel (through the background
worker of ``MSKSegLib``), and the batch runner records the timings per case.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

from .engine import CancelToken, Progress
from .errors import CancelledError

#: A step's progress callback: ``report(fraction of this step in [0, 1], message)``; False means "stop".
StepProgress = Callable[..., bool]


class StepRunner:
    """Runs named steps in order, each with a share of the progress bar.

    Args:
        weights: step name -> relative share of the whole run (normalised; the order is the run's order).
        progress: ``progress(fraction, message)`` of the whole run; returning False cancels.
        cancel_token: a :class:`~mskseg.engine.CancelToken` another thread may set.
        what: what the run is, for the :class:`~mskseg.errors.CancelledError` message.
    """

    def __init__(self, weights: Mapping[str, float], progress: Progress | None = None,
                 cancel_token: CancelToken | None = None, what: str = "the run"):
        total = float(sum(weights.values())) or 1.0
        self.spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name, weight in weights.items():
            stop = start + float(weight) / total
            self.spans[name] = (start, min(stop, 1.0))
            start = stop
        self.progress, self.cancel_token, self.what = progress, cancel_token, what
        self.timings: dict[str, float] = {}

    @property
    def steps(self) -> tuple[str, ...]:
        """The step names in run order."""
        return tuple(self.spans)

    def report(self, fraction: float, message: str) -> bool:
        """Pass ``fraction`` of the whole run on; False when the run is to stop (cancelled)."""
        if self.cancel_token is not None and self.cancel_token.cancelled:
            return False
        if self.progress is not None and self.progress(fraction, message) is False:
            return False
        return True

    def step(self, name: str, message: str) -> "Step":
        """The context manager of step ``name`` (one of the weights' keys); yields the step's progress callback.

        Raises:
            KeyError: ``name`` is not a step of this runner.
        """
        if name not in self.spans:
            raise KeyError(f"'{name}' is not a step of this run ({', '.join(self.spans)})")
        return Step(self, name, message)


class Step:
    """One running step of a :class:`StepRunner` (use ``with runner.step(name, message) as report``)."""

    def __init__(self, runner: StepRunner, name: str, message: str):
        self.runner, self.name, self.message = runner, name, message
        self.start, self.stop = runner.spans[name]
        self.t0 = 0.0

    def __enter__(self) -> StepProgress:
        if not self.runner.report(self.start, self.message):
            raise CancelledError(f"{self.runner.what} was cancelled before '{self.name}'")
        self.t0 = time.perf_counter()
        return self.report

    def report(self, fraction: float, message: str = "") -> bool:
        """Progress inside the step: ``fraction`` of this step in [0, 1]; False when cancelled."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        return self.runner.report(self.start + (self.stop - self.start) * fraction, message or self.message)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.runner.timings[self.name] = time.perf_counter() - self.t0
        if exc_type is None:
            self.runner.report(self.stop, self.message)
