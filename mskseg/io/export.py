"""Write one result (image + label map + measurements) in every format a user asked for, into one folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..image import Image
from .common import Labels, check_labelmap
from .output import check_output, final_paths, output_transaction

#: Formats :func:`export_result` knows, in the order they are written.
FORMATS = ("seg.nrrd", "dicom-seg", "nifti", "csv", "json", "png")
FILE_NAMES = {"seg.nrrd": "segmentation.seg.nrrd", "dicom-seg": "segmentation.dcm", "nifti": "segmentation.nii.gz",
              "csv": "metrics.csv", "json": "metrics.json", "png": "report.png"}


def export_result(out_dir: str | Path, image: Image, labelmap: Image, labels: Labels, *,
                  formats: Sequence[str] = FORMATS, rows: Sequence[dict[str, Any]] | None = None,
                  summary: dict[str, Any] | None = None, units: dict[str, str] | None = None,
                  title: str | None = None, overwrite: bool = False, window: tuple[float, float] = (-160, 240)
                  ) -> list[Path]:
    """Write the requested formats into ``out_dir`` (names in ``FILE_NAMES``) and return the files written.

    ``dicom-seg`` is written only when ``image`` was read from DICOM (it must reference the source series);
    it is skipped silently otherwise only if it was part of the default format list, and is an error when asked
    for explicitly. ``rows`` are the measurement rows (default: :func:`mskseg.measure.segment_statistics`);
    ``summary`` is merged into ``metrics.json`` beside the rows.

    The files are written whole or not at all (:func:`mskseg.io.output.output_transaction`): into a hidden
    folder first, moved into ``out_dir`` when all are written, with the completion marker ``.mskseg-result.json``.
    Nothing is written when a target or an earlier result exists and ``overwrite`` is False (checked before the
    first file is written); ``overwrite`` replaces the whole earlier result.

    Raises:
        InvalidImageError: an unknown format, DICOM-SEG asked for a non-DICOM image, a bad label map.
        OutputExistsError, OutputError: see :func:`mskseg.io.output.output_transaction`.
    """
    from ..errors import InvalidImageError
    from ..measure import UNITS, segment_statistics
    from .segnrrd import write_seg_nrrd
    from .writers import write_metrics_csv, write_metrics_json, write_nifti_labelmap, write_overlay_png

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidImageError(f"unknown export format(s) {unknown}", f"choose from {', '.join(FORMATS)}")
    check_labelmap(labelmap, labels, image)
    out = Path(out_dir)
    fmts = list(formats)
    if "dicom-seg" in fmts and not image.metadata.get("source_files"):
        if tuple(formats) == FORMATS:
            fmts.remove("dicom-seg")
        else:
            raise InvalidImageError("DICOM-SEG needs an image read from a DICOM series",
                                    "export .seg.nrrd or NIfTI instead, or load the CT from its DICOM files")
    names = [FILE_NAMES[f] for f in fmts] + (["segmentation.labels.json"] if "nifti" in fmts else [])
    sources = image.metadata.get("source_files") or ()
    check_output(out, names, overwrite=overwrite, inputs=sources)
    rows = list(rows) if rows is not None else segment_statistics(image, labelmap, labels)
    units = {**UNITS, **(units or {})}
    written = []
    with output_transaction(out, names, overwrite=overwrite, inputs=sources) as staging:
        for f in fmts:
            p = staging / FILE_NAMES[f]
            if f == "seg.nrrd":
                written.append(write_seg_nrrd(p, labelmap, labels, source=image))
            elif f == "dicom-seg":
                from .dicomseg import write_dicom_seg

                written.append(write_dicom_seg(p, labelmap, labels, image))
            elif f == "nifti":
                written.append(write_nifti_labelmap(p, labelmap, labels, source=image))
            elif f == "csv":
                written.append(write_metrics_csv(p, rows, units=units))
            elif f == "json":
                written.append(write_metrics_json(p, {**(summary or {}), "units": units, "rows": rows}))
            elif f == "png":
                short = [{k: r[k] for k in r if k in ("Segment", "volume_cm3", "area_cm2", "mean", "stdev")}
                         for r in rows]
                written.append(write_overlay_png(p, image, labelmap, labels, title=title, table=short, window=window))
    return final_paths(written, staging, out)
