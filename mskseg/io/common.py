"""Helpers every writer uses: refuse to overwrite, check label maps against their image, make values JSON-ready."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidImageError, OutputExistsError
from ..image import Image

#: ``labels`` everywhere in MSKSeg: label value in the label map -> class name (a key of terminology.CLASSES
#: or any user name). Label 0 is background and never listed.
Labels = dict[int, str]


def prepare_output(path: str | Path, overwrite: bool = False) -> Path:
    """Return ``path`` ready to write: parent folders made, and an existing file refused unless ``overwrite``.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; MSKSeg does not overwrite files silently",
            "choose another output path, remove the file, or pass overwrite=True (command line: --overwrite)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_sitk(image: Any, path: str | Path, compress: bool) -> None:
    """``SimpleITK.WriteImage`` whose failures are OSErrors (SimpleITK raises a RuntimeError with ITK's text):
    ENOSPC when the disk is full, EACCES when the folder is not writable, EIO otherwise, so that
    :func:`mskseg.io.output.output_error` can name the cause."""
    import errno
    import os
    import shutil

    import SimpleITK as sitk

    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as error:
        folder = Path(path).parent
        code = errno.EIO
        try:
            if shutil.disk_usage(folder).free < 1 << 20:
                code = errno.ENOSPC
            elif not os.access(folder, os.W_OK):
                code = errno.EACCES
        except OSError:
            pass
        text = str(error).strip().splitlines()
        raise OSError(code, f"{os.strerror(code)} ({text[-1] if text else 'SimpleITK could not write'})",
                      str(path)) from None


def check_labelmap(labelmap: Image, labels: Labels, source: Image | None = None) -> np.ndarray:
    """Validate a label map and return its voxels as an unsigned integer array.

    Checks that the map holds integers, that ``labels`` names valid values (1..65535), and, when ``source`` is
    given, that the map lies exactly on the source grid. Values present in the map but absent from ``labels``
    are an error (they would be lost silently).

    Raises:
        InvalidImageError, GeometryMismatchError
    """
    arr = np.asarray(labelmap.array)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        if not np.all(np.mod(arr, 1) == 0):
            raise InvalidImageError(f"label map has non-integer values (dtype {arr.dtype}); expected integer labels")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise InvalidImageError(f"label map has negative values (min {arr.min()}); labels must be 0..65535")
    for value in labels:
        if not 1 <= int(value) <= 65535:
            raise InvalidImageError(f"label value {value} ({labels[value]}) is outside 1..65535")
    present = set(_present_values(arr)) - {0}
    unnamed = sorted(present - {int(v) for v in labels})
    if unnamed:
        raise InvalidImageError(
            f"label map holds values {unnamed} that have no name in labels {dict(labels)}",
            "name every label value (e.g. {1: 'skeletal_muscle', ...}) so that no segment is lost",
        )
    if source is not None:
        source.check_same_grid(labelmap, "label map")
    dtype = np.uint8 if (not arr.size or arr.max() < 256) else np.uint16
    return arr.astype(dtype, copy=False)


def _present_values(arr: np.ndarray) -> list[int]:
    """Distinct values of an integer array; ``bincount`` for small unsigned types (far faster than ``unique``)."""
    if arr.dtype in (np.uint8, np.uint16):
        # Label maps are mostly background: count only the labelled voxels (a single-slice map of a large
        # volume is 99 % zeros).
        labelled = arr[arr != 0]
        return [0, *np.flatnonzero(np.bincount(labelled, minlength=1)).tolist()][int(labelled.size == arr.size):]
    return np.unique(arr).tolist()


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON-ready Python: the one converter every JSON writer and MRML attribute uses.

    Dataclass instances become dicts (``dataclasses.asdict``), dict keys strings, tuples and numpy arrays
    lists, numpy scalars Python numbers and booleans, paths strings; NaN and infinite floats become None
    (JSON has no NaN). Anything else is returned as it is.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(x) for x in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def flat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with nested values flattened for a CSV: a dict cell ``{"a": 1}`` under ``flags`` becomes the
    column ``flags.a``; a list becomes one ``"; "``-joined cell."""
    flat = []
    for row in rows:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = "; ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
            elif isinstance(value, (list, tuple)):
                out[key] = "; ".join(map(str, value))
            else:
                out[key] = value
        flat.append(out)
    return flat
