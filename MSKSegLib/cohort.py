"""The Cohort section every MSKSeg module shows: run the task over a folder of studies in the background
(``mskseg batch``, resumable), follow it case by case, and load any case's result for review and correction.

:class:`CohortPanel` builds its widgets with Qt and only runs in Slicer; what it decides is in plain functions
(:func:`check_cohort_places`, :func:`case_table_rows`) that pytest reaches, and the run itself is
``MSKSegLib.background.CohortRun`` over ``mskseg.worker.BatchProcess``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mskseg.errors import MSKSegError

#: Columns of the case table.
COLUMNS = ("Case", "Status", "Result or reason")
#: Headline metrics shown in the table's third column when present (in this order).
HEADLINE = (("level", "{}"), ("SMA_cm2", "SMA {:.1f} cm²"), ("SMI_cm2_m2", "SMI {:.1f}"), ("SAT_cm2", "SAT {:.1f}"),
            ("VAT_cm2", "VAT {:.1f}"))


def check_cohort_places(source: str | Path | None, out_dir: str | Path | None) -> tuple[Path, Path]:
    """The study folder (or manifest) and the output folder of a cohort run, checked before anything starts.

    Raises:
        MSKSegError: either is not chosen, the studies do not exist, or the output folder lies inside the
            study folder (its results would become studies of the next run).
    """
    if not source or not str(source).strip():
        raise MSKSegError("No folder of studies is chosen.",
                          "choose a folder holding one sub-folder (DICOM series) or image file per study, "
                          "or a manifest .csv")
    if not out_dir or not str(out_dir).strip():
        raise MSKSegError("No output folder is chosen for the cohort.",
                          "choose an empty folder, or the folder of an earlier run to finish it")
    source, out = Path(source).expanduser().absolute(), Path(out_dir).expanduser().absolute()
    if not source.exists():
        raise MSKSegError(f"The folder of studies {source} does not exist.", "choose an existing folder")
    if source.is_dir() and (out == source or source in out.parents):
        raise MSKSegError(f"The output folder {out} lies inside the folder of studies.",
                          "choose an output folder outside it, or the results would be read as studies")
    return source, out


def case_table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(case, status, result or reason)`` for the case table, from cohort-table rows or ``case`` events."""
    out = []
    for row in rows:
        status = str(row.get("status", ""))
        if status == "done":
            parts = [fmt.format(row[key]) for key, fmt in HEADLINE if isinstance(row.get(key), (int, float, str))
                     and row.get(key) != ""]
            text = ", ".join(parts) or "done"
        else:
            text = str(row.get("reason", ""))
        out.append((str(row.get("case", "")), status, text))
    return out


class CohortPanel:
    """The collapsible Cohort section of a module panel (Qt; Slicer only). ``owner`` is the module's widget
    (:class:`MSKSegLib.widgets.TaskWidgetMixin`): its logic, parameter node, progress bar, status line and
    Cancel button are shared with Apply."""

    def __init__(self, owner: Any):
        import ctk
        import qt

        self.owner = owner
        self.widget = ctk.ctkCollapsibleButton()
        self.widget.text = "Cohort: a folder of studies"
        self.widget.collapsed = True
        form = qt.QFormLayout(self.widget)
        self.sourceEdit = ctk.ctkPathLineEdit()
        self.sourceEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.sourceEdit.toolTip = "One sub-folder (DICOM series) or image file per study"
        form.addRow("Studies:", self.sourceEdit)
        self.outEdit = ctk.ctkPathLineEdit()
        self.outEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.outEdit.toolTip = "Results, one folder per case, and the cohort table; an earlier run's folder resumes it"
        form.addRow("Output folder:", self.outEdit)
        self.workersBox = qt.QSpinBox()
        self.workersBox.minimum, self.workersBox.maximum = 1, max(1, os.cpu_count() or 1)
        self.workersBox.toolTip = "Studies processed at the same time (each in its own process)"
        form.addRow("Workers:", self.workersBox)
        self.runButton = qt.QPushButton("Run on all studies")
        self.runButton.toolTip = ("Run the task with the choices above on every study in the background; "
                                  "finished cases are skipped when you run the same folders again")
        form.addRow(self.runButton)
        self.table = qt.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        form.addRow(self.table)
        self.loadButton = qt.QPushButton("Load selected case")
        self.loadButton.toolTip = "Load the case's CT and result as new nodes, to review and correct them"
        form.addRow(self.loadButton)
        self.runButton.connect("clicked(bool)", self.onRun)
        self.loadButton.connect("clicked(bool)", self.onLoad)
        self.outEdit.connect("currentPathChanged(QString)", lambda path: self.showTable(path))
        self.table.connect("cellDoubleClicked(int,int)", lambda row, column: self.onLoad())

    def updateButtons(self, idle: bool) -> None:
        """Run only when nothing else runs; Load whenever a case is listed."""
        self.runButton.enabled = idle
        self.loadButton.enabled = self.table.rowCount > 0

    def onRun(self) -> None:
        import slicer

        from .background import CohortRun

        owner = self.owner
        with slicer.util.tryWithErrorDisplay("The cohort run could not start."):
            source, out = check_cohort_places(self.sourceEdit.currentPath, self.outEdit.currentPath)
            owner.ensureDependencies()
            options = owner.logic.cohortOptions(owner._parameterNode)
            self.showTable(out)
            owner.startBackgroundRun(CohortRun(
                owner.logic.TASK, source, out, options, workers=int(self.workersBox.value),
                progress_bar=owner.ui.progressBar, status_label=owner.ui.statusLabel, on_case=self.onCase,
                on_done=self.onDone, on_failed=owner.onBackgroundFailed, on_finished=owner.onBackgroundFinished))

    def onCase(self, event: dict) -> None:
        """A case ended: put it in the table (replacing its earlier row)."""
        self._setRow(case_table_rows([event])[0])

    def onDone(self, out: Path) -> None:
        rows = self.showTable(out)
        failed = sum(1 for row in rows if row.get("status") == "failed")
        self.owner.ui.statusLabel.text = (f"Cohort done: {len(rows) - failed} of {len(rows)} cases"
                                          + (f", {failed} failed (see their reason)" if failed else "")
                                          + f". Table: {Path(out) / 'cohort.csv'}")

    def showTable(self, out: str | Path) -> list[dict]:
        """Show the cohort table of ``out`` (an earlier run's folder shows its cases at once)."""
        rows = self.owner.logic.cohortRows(out) if out else []
        self.table.setRowCount(0)
        for values in case_table_rows(rows):
            self._setRow(values)
        self.updateButtons(not self.owner.running)
        return rows

    def _setRow(self, values: tuple[str, str, str]) -> None:
        import qt

        row = next((r for r in range(self.table.rowCount) if self.table.item(r, 0).text() == values[0]),
                   self.table.rowCount)
        if row == self.table.rowCount:
            self.table.insertRow(row)
        for column, text in enumerate(values):
            self.table.setItem(row, column, qt.QTableWidgetItem(text))
        self.loadButton.enabled = True

    def onLoad(self) -> None:
        import slicer

        with slicer.util.tryWithErrorDisplay("Loading the case failed.", waitCursor=True):
            row = self.table.currentRow()
            if row < 0:
                raise MSKSegError("No case is selected.", "click a case in the table first")
            case = self.table.item(row, 0).text()
            volume, segmentation = self.owner.logic.loadCohortCase(self.outEdit.currentPath, case)
            parameters = self.owner._parameterNode
            parameters.inputVolume = volume
            parameters.outputSegmentation = segmentation
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            self.owner.ui.statusLabel.text = f"Loaded case '{case}'. Check it, correct it, then Measure or Export."
