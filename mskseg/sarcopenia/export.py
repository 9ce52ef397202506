"""Writing a body-composition result: segmentation (.seg.nrrd, DICOM-SEG), metrics (CSV, JSON) and the report."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..image import Image
from ..io.common import flat_rows
from ..io.output import check_output, final_paths, output_transaction
from .pipeline import SarcopeniaResult

#: File names :func:`export_sarcopenia` writes (muscle groups, when measured, are segments of the segmentation).
OUTPUT_FILES = {"seg.nrrd": "segmentation.seg.nrrd", "dicom-seg": "segmentation.dcm", "csv": "metrics.csv",
                "json": "metrics.json", "png": "report.png"}


def export_sarcopenia(out_dir: str | Path, image: Image, result: SarcopeniaResult, *, overwrite: bool = False,
                      extra: dict[str, Any] | None = None) -> list[Path]:
    """Write a result into ``out_dir`` and return the files written.

    Files (:data:`OUTPUT_FILES`): ``segmentation.seg.nrrd`` (Slicer; muscle groups, when measured, are its
    segments 5-7), ``segmentation.dcm`` (DICOM-SEG, only when ``image`` was read from DICOM: it references the
    CT's instances), ``metrics.csv`` (one row per slice plus the mean row, units in the header),
    ``metrics.json`` (rows, units, and :meth:`SarcopeniaResult.describe` with ``extra`` merged in),
    ``report.png`` (:func:`mskseg.sarcopenia.report.write_sarcopenia_report`, in radiological convention).
    The files are written whole or not at all, with the completion marker ``.mskseg-result.json``
    (:func:`mskseg.io.output.output_transaction`). Nothing is written when any of these files or an earlier
    result exists and ``overwrite`` is False (checked before the first is written); ``overwrite`` replaces the
    whole earlier result.
    """
    from ..io.segnrrd import write_seg_nrrd
    from ..io.writers import write_metrics_csv, write_metrics_json
    from .report import write_sarcopenia_report

    out = Path(out_dir)
    formats = ["seg.nrrd", "csv", "json"]
    if image.metadata.get("source_files"):
        formats.insert(1, "dicom-seg")
    names = [OUTPUT_FILES[f] for f in formats + ["png"]]
    sources = image.metadata.get("source_files") or ()
    check_output(out, names, overwrite=overwrite, inputs=sources)
    # The writers one by one (not export_result): each check of a full-size label map costs about a second
    # on a 512 x 512 x 300 CT, and export_result would check it once more.
    with output_transaction(out, names, overwrite=overwrite, inputs=sources) as staging:
        written = [write_seg_nrrd(staging / OUTPUT_FILES["seg.nrrd"], result.labelmap, result.labels, source=image)]
        if "dicom-seg" in formats:
            from ..io.dicomseg import DicomSegWarning, write_dicom_seg

            try:
                with warnings.catch_warnings(record=True) as notes:  # e.g. a Frame of Reference UID made for the SEG
                    warnings.simplefilter("always", DicomSegWarning)
                    written.append(write_dicom_seg(staging / OUTPUT_FILES["dicom-seg"], result.labelmap,
                                                   result.labels, image,
                                                   series_description="MSKSeg body composition",
                                                   content_label="BODYCOMP",
                                                   content_description=f"body composition at {result.l3.level}"))
                for note in notes:
                    if issubclass(note.category, DicomSegWarning):
                        result.warnings.append(f"DICOM-SEG: {note.message}")
                    else:
                        warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
            except (OutputError, OSError):
                raise
            except Exception as error:  # e.g. source files whose headers highdicom cannot use: keep the others
                (staging / OUTPUT_FILES["dicom-seg"]).unlink(missing_ok=True)
                result.warnings.append(f"DICOM-SEG was not written ({type(error).__name__}: {error}); the "
                                       ".seg.nrrd holds the same segmentation")
        rows = flat_rows(result.rows)
        written.append(write_metrics_csv(staging / OUTPUT_FILES["csv"], rows, units=result.units))
        written.append(write_metrics_json(staging / OUTPUT_FILES["json"],
                                          {**(extra or {}), **result.describe(), "units": result.units,
                                           "rows": result.rows}))
        written.append(write_sarcopenia_report(staging / OUTPUT_FILES["png"], image, result))
    return final_paths(written, staging, out)
