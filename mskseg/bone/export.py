"""Writing a bone result: segmentation (.seg.nrrd, DICOM-SEG), metrics (CSV, JSON) and the report PNG."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..image import Image
from ..io.common import flat_rows
from ..io.output import check_output, final_paths, output_transaction
from .pipeline import BoneResult

#: File names :func:`export_bone` writes.
OUTPUT_FILES = {"seg.nrrd": "segmentation.seg.nrrd", "dicom-seg": "segmentation.dcm", "csv": "metrics.csv",
                "json": "metrics.json", "png": "report.png"}


def export_bone(out_dir: str | Path, image: Image, result: BoneResult, *, overwrite: bool = False,
                extra: dict[str, Any] | None = None) -> list[Path]:
    """Write a result into ``out_dir``, whole or not at all (:func:`mskseg.io.output.output_transaction`), and
    return the files: ``segmentation.seg.nrrd`` (on the input's grid), ``segmentation.dcm`` (DICOM-SEG, only
    for DICOM input), ``metrics.csv`` (one row per class and per lumbar level, units in the header),
    ``metrics.json`` (rows, units and :meth:`BoneResult.describe`) and ``report.png``. Nothing is replaced
    unless ``overwrite``."""
    from ..io.segnrrd import write_seg_nrrd
    from ..io.writers import write_metrics_csv, write_metrics_json
    from .report import write_bone_report

    out = Path(out_dir)
    formats = ["seg.nrrd", "csv", "json"]
    sources = image.metadata.get("source_files") or ()
    if sources:
        formats.insert(1, "dicom-seg")
    names = [OUTPUT_FILES[f] for f in formats + ["png"]]
    check_output(out, names, overwrite=overwrite, inputs=sources)
    with output_transaction(out, names, overwrite=overwrite, inputs=sources) as staging:
        written = [write_seg_nrrd(staging / OUTPUT_FILES["seg.nrrd"], result.labelmap, result.labels, source=image)]
        if "dicom-seg" in formats and result.labels:
            from ..io.dicomseg import DicomSegWarning, write_dicom_seg

            try:
                with warnings.catch_warnings(record=True) as notes:
                    warnings.simplefilter("always", DicomSegWarning)
                    written.append(write_dicom_seg(staging / OUTPUT_FILES["dicom-seg"], result.labelmap,
                                                   result.labels, image, series_description="MSKSeg bones",
                                                   content_label="BONES",
                                                   content_description=f"bone segmentation ({result.method})"))
                for note in notes:
                    if issubclass(note.category, DicomSegWarning):
                        result.warnings.append(f"DICOM-SEG: {note.message}")
            except (OutputError, OSError):
                raise
            except Exception as error:  # source headers highdicom cannot use: keep the other files
                (staging / OUTPUT_FILES["dicom-seg"]).unlink(missing_ok=True)
                result.warnings.append(f"DICOM-SEG was not written ({type(error).__name__}: {error}); the "
                                       ".seg.nrrd holds the same segmentation")
        written.append(write_metrics_csv(staging / OUTPUT_FILES["csv"], flat_rows(result.rows), units=result.units))
        written.append(write_metrics_json(staging / OUTPUT_FILES["json"],
                                          {**(extra or {}), **result.describe(), "units": result.units,
                                           "rows": result.rows}))
        written.append(write_bone_report(staging / OUTPUT_FILES["png"], image, result))
    return final_paths(written, staging, out)
