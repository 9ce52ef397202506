"""The task registry: every task MSKSeg runs, declared in one place.

A task (body composition at L3, bone segmentation, spine segmentation) declares, in a :class:`Task`:

* its command-line subcommand (``add_arguments`` and ``cli``), which ``mskseg`` adds for every registered task;
* its run function (``run(image, *, progress=None, cancel_token=None, **options) -> result``), a short list of
  named steps through :class:`mskseg.steps.StepRunner` with timings, progress and cancel;
* its export (``export(out_dir, image, result, *, overwrite=False, extra=None) -> [paths]``);
* its Slicer logic entry points (``slicer``: entry name -> function over an MRML scene), which the module's
  Logic calls; the CLI and the Slicer Logic run the SAME ``run`` function.

The wiring is explicit: :data:`TASKS` names each task's module, which is imported only when the task is used
(Slicer imports every module at start-up; a task's module may import torch). Nothing registers itself on
import. A new task: write ``mskseg/<task>/task.py`` with a module-level ``TASK = Task(...)`` and add one
:class:`TaskEntry` line here.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import MSKSegError


@dataclass(frozen=True)
class Task:
    """What a task is and how it is run (see the module docstring).

    Attributes:
        name: registry key and subcommand, e.g. ``"sarcopenia"``.
        title: a few words for menus and reports.
        summary: one line for ``mskseg --help``.
        steps: the run function's named steps, in order (keys of its timings).
        run: ``run(image, *, progress=None, cancel_token=None, **options) -> result``.
        export: ``export(out_dir, image, result, *, overwrite=False, extra=None) -> list[Path]``.
        output_files: format -> file name that ``export`` writes (the batch runner and the CLI check them).
        add_arguments: adds the task's options to its ``argparse`` subparser (None: no subcommand).
        cli: runs the subcommand for parsed arguments, returns the exit status.
        options_from_args: parsed arguments -> keyword options of ``run`` (for the batch runner and the worker).
        slicer: Slicer Logic entry points: name -> ``function(scene, ...)`` over MRML nodes.
        slicer_module: name of the Slicer module that shows the task.
        model_task: the ``task`` field of the model cards that belong to this task.
        summarise: ``summarise(result) -> {column: value}``, the result's row of a cohort table (headline
            metrics, level, method, warnings); None: the cohort table gets only the run's own columns.
    """

    name: str
    title: str
    summary: str
    steps: tuple[str, ...]
    run: Callable[..., Any]
    export: Callable[..., list[Path]]
    output_files: Mapping[str, str] = field(default_factory=dict)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    cli: Callable[[argparse.Namespace], int] | None = None
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    slicer: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    slicer_module: str = ""
    model_task: str = ""
    summarise: Callable[[Any], Mapping[str, Any]] | None = None
    description: str = ""
    epilog: str = ""

    def slicer_function(self, name: str) -> Callable[..., Any]:
        """The Slicer Logic entry point ``name`` of this task.

        Raises:
            MSKSegError: the task has no such entry point.
        """
        try:
            return self.slicer[name]
        except KeyError:
            raise MSKSegError(f"task '{self.name}' has no Slicer function '{name}'",
                              f"its functions: {', '.join(self.slicer) or 'none'}") from None


@dataclass(frozen=True)
class TaskEntry:
    """One line of the registry: the task's name, where its :class:`Task` lives, its Slicer module."""

    name: str
    module: str  # a module with a module-level ``TASK``; imported on first use
    slicer_module: str
    summary: str  # shown without importing the task module


#: Every task, in the order the CLI and the modules list them.
TASKS: tuple[TaskEntry, ...] = (
    TaskEntry("sarcopenia", "mskseg.sarcopenia.task", "SarcopeniaSeg",
              "body composition at L3 of a CT: muscle, fat, SMI, flags, report"),
    TaskEntry("bone", "mskseg.bone.task", "BoneSeg",
              "bone segmentation of a CT (rules or a bone model), classes, volumes, L1-L4 trabecular HU, flag"),
    TaskEntry("spine", "mskseg.cardtask", "SpineSeg", "vertebra segmentation with a spine model card"),
)


def task_names() -> list[str]:
    """Names of the registered tasks."""
    return [entry.name for entry in TASKS]


def task_entry(name: str) -> TaskEntry:
    """The registry line of task ``name``.

    Raises:
        MSKSegError: no task has that name.
    """
    for entry in TASKS:
        if entry.name == name:
            return entry
    raise MSKSegError(f"no task named '{name}'", f"tasks: {', '.join(task_names())}")


def get_task(name: str) -> Task:
    """The :class:`Task` ``name``, its module imported on first use.

    Raises:
        MSKSegError: no task has that name.
    """
    entry = task_entry(name)
    module = importlib.import_module(entry.module)
    maker = getattr(module, "make_task", None)
    task = maker(entry) if maker is not None else getattr(module, "TASK")
    if task.name != name:
        raise MSKSegError(f"module {entry.module} declares task '{task.name}', the registry expects '{name}'")
    return task


def package_available(name: str) -> bool:
    """Whether task ``name``'s module can be found, without importing it (its imports may need torch)."""
    import importlib.util

    try:
        return importlib.util.find_spec(task_entry(name).module) is not None
    except (ImportError, ValueError, MSKSegError):
        return False


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """A function that imports ``module`` and calls its ``name`` on first call (Slicer functions import MRML,
    model code imports torch: neither is imported when the registry or the CLI is loaded)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported on first call."
    return call
