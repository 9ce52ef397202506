"""Outputs whole or absent: the one place where MSKSeg puts a result into an output folder.

Every command and every export function writes its files through :func:`output_transaction`::

    with output_transaction(out, names, overwrite=overwrite, inputs=[ct]) as staging:
        write_seg_nrrd(staging / "segmentation.seg.nrrd", ...)   # the writers write into ``staging``
        ...
    # here every file is in ``out``, or (after an error or Ctrl-C) none is

How it works:

* The files are written into a hidden folder ``OUT/.mskseg-partial-<pid>-<random>`` (:data:`STAGING_PREFIX`)
  beside their targets, on the same file system. Only when the body of the ``with`` ends without an error are
  they renamed into ``OUT``; an error, Ctrl-C or SIGTERM (the command line turns it into Ctrl-C,
  :func:`mskseg.batch.terminate_on_sigterm`) removes the hidden folder, so no partial file is ever left.
* The move into place runs with SIGINT and SIGTERM held back (:func:`hold_signals`): a signal arriving then
  acts once every file is in place.
* The completion marker ``OUT/.mskseg-result.json`` (:data:`MARKER`) names the files of the result. It is
  written with ``"status": "incomplete"`` before the first file is moved and set to ``"complete"`` after the
  last, so a folder left by a crash in between (power loss, SIGKILL) is recognised by the next run: it says
  "the folder holds an incomplete earlier run: pass --overwrite to replace it". Hidden staging folders of
  processes that are gone (a crash while writing) are removed by the next run into the folder.
* Without ``overwrite`` nothing that exists is replaced: a target name that exists (a file, a folder, or a
  symbolic link, even a broken one), or an earlier result in the folder, is refused before any work is done.
  With ``overwrite`` the whole earlier result (the files its marker names) and the clashing names are
  replaced. Symbolic links at target names are replaced as links, never written through.
* Output places that cannot be written give one :class:`~mskseg.errors.OutputError` each, with a hint: a file
  given as the folder, a folder under a file, a read-only or full disk, missing permissions, and an output
  folder inside the input DICOM folder (the next run would find the DICOM-SEG as a second series there).

Transactions nest: an export function called inside a running transaction writes into that transaction's
staging folder directly (``mskseg demo`` writes the CT series and then exports into one transaction).
"""
from __future__ import annotations

import contextvars
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import OutputError, OutputExistsError

#: Completion marker of a result folder: ``{"status": "complete" | "incomplete", "files": [...], ...}``.
MARKER = ".mskseg-result.json"
#: Name prefix of the hidden folders results are written into before they are moved into place.
STAGING_PREFIX = ".mskseg-partial-"
#: File endings that make a single input file part of a DICOM series folder (or a file without an ending).
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

_active: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("mskseg_staging", default=())


# ------------------------------------------------------------------------------------------------ the transaction
@contextmanager
def output_transaction(out_dir: str | Path, names: Iterable[str] = (), *, overwrite: bool = False,
                       inputs: Iterable[str | Path] = (), marker: bool = True) -> Iterator[Path]:
    """Yield a hidden staging folder to write a result into; on success move its entries into ``out_dir``.

    Args:
        out_dir: the output folder (made when missing).
        names: the entries (files or folders) the result may hold, checked before any work: none may exist
            unless ``overwrite``. The entries actually written into the staging folder are what is moved.
        overwrite: replace the earlier result in ``out_dir`` (every file its marker names) and clashing names.
        inputs: the input images (paths, or the files of a DICOM series): ``out_dir`` must not lie in their
            DICOM folder.
        marker: write the completion marker :data:`MARKER` (off for a single-file result, whose one rename is
            already all or nothing).

    Raises:
        OutputExistsError: an entry or an earlier result exists and ``overwrite`` is False, or the folder
            holds an incomplete earlier run.
        OutputError: the output place cannot be written (see the module's description).
    """
    out = Path(out_dir)
    if _inside_active(out):  # a transaction is running around this one: write into its staging folder
        _mkdir(out)
        yield out
        return
    names = list(names)
    check_output(out, names, overwrite=overwrite, inputs=inputs)
    made = not os.path.lexists(out)
    with hold_signals():
        _mkdir(out)
        remove_stale_staging(out)
        staging = _make_staging(out)
    token = _active.set(_active.get() + (staging.resolve(),))
    try:
        try:
            yield staging
        finally:
            _active.reset(token)
        with hold_signals():
            _commit(staging, out, overwrite=overwrite, marker=marker)
    except BaseException as error:
        with hold_signals():
            shutil.rmtree(staging, ignore_errors=True)
            if made:
                _remove_empty(out)
        if isinstance(error, OSError):
            raise output_error(error, out) from None
        raise


def check_output(out_dir: str | Path, names: Iterable[str] = (), *, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> Path:
    """Check, before any work, that a result with entries ``names`` can be written into ``out_dir``.

    Commands call it first (so that a long run does not end in a refusal); :func:`output_transaction` calls it
    again. Returns ``out_dir`` as a Path.

    Raises:
        OutputExistsError, OutputError: as :func:`output_transaction`.
    """
    out = Path(out_dir)
    if _inside_active(out):
        return out
    _check_place(out)
    _check_inputs(out, inputs)
    if not os.path.isdir(out):
        return out
    state = read_marker(out)
    if overwrite:
        return out
    if state is not None and state.get("status") != "complete":
        raise OutputExistsError(f"{out} holds an incomplete earlier run (it was stopped while its files were moved "
                                "into place)", "pass --overwrite to replace it, or choose another output folder")
    clashes = [str(out / n) for n in names if os.path.lexists(out / n)]
    if clashes:
        raise OutputExistsError(f"output file{'s' if len(clashes) > 1 else ''} already exist"
                                f"{'' if len(clashes) > 1 else 's'}: {', '.join(clashes)}",
                                "choose another output folder or pass --overwrite")
    if state is not None:
        files = ", ".join(_safe_names(state.get("files")))
        raise OutputExistsError(f"{out} already holds the result of an earlier run ({files})",
                                "choose another output folder or pass --overwrite to replace that result")
    return out


def child_folder(out_dir: str | Path, name: str) -> Path:
    """``out_dir / name`` for a result of its own (a case of ``mskseg segment``), refused when it is a link.

    Raises:
        OutputError: ``out_dir / name`` is a symbolic link (it would lead the files out of ``out_dir``).
    """
    if not _plain_name(name):
        raise OutputError(f"'{name}' cannot name a folder inside {out_dir}", "use letters, digits, '-' and '_'")
    path = Path(out_dir) / name
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; MSKSeg never writes through links out of the output folder",
                          "remove the link or choose another output folder")
    return path


def final_paths(paths: Iterable[str | Path], staging: Path, out_dir: str | Path) -> list[Path]:
    """Where files written into ``staging`` are once the transaction is done (paths outside it unchanged)."""
    result = []
    for p in paths:
        p = Path(p)
        try:
            result.append(Path(out_dir) / p.relative_to(staging))
        except ValueError:
            result.append(p)
    return result


def read_result_folder(folder: str | Path, output_files: dict[str, str], again: str) -> tuple[Path, dict[str, Any]]:
    """A task's result folder for loading: ``(path of its .seg.nrrd, its metrics.json as a dict)``.

    ``output_files`` is the task's ``OUTPUT_FILES`` (keys ``"seg.nrrd"`` and ``"json"``); ``again`` is the hint.

    Raises:
        MSKSegError: either file is missing (an incomplete run).
    """
    from ..errors import MSKSegError

    folder = Path(folder)
    seg_path, json_path = folder / output_files["seg.nrrd"], folder / output_files["json"]
    if not seg_path.is_file() or not json_path.is_file():
        raise MSKSegError(f"the result folder {folder} is incomplete (no {seg_path.name} or {json_path.name})", again)
    return seg_path, json.loads(json_path.read_text(encoding="utf-8"))


def read_marker(out_dir: str | Path) -> dict[str, Any] | None:
    """The completion marker of a result folder, or None when there is none. A marker that cannot be read
    (cut short by a crash) counts as an incomplete result."""
    path = Path(out_dir) / MARKER
    if not os.path.lexists(path):
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {"status": "incomplete"}
    except (OSError, ValueError):
        return {"status": "incomplete"}


def remove_stale_staging(out_dir: str | Path) -> list[Path]:
    """Remove the hidden staging folders in ``out_dir`` whose process is gone (a crash while writing)."""
    removed = []
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(STAGING_PREFIX):].split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


# ------------------------------------------------------------------------------------------------ signals
@contextmanager
def hold_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the body runs (moving files into place, cleaning up); a signal
    that arrived meanwhile is acted on afterwards, by the handler that was installed before.

    Only the main thread can change signal handlers; elsewhere the body simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        except (ValueError, OSError):  # pragma: no cover - an embedding that forbids it
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            _deliver(caught[0], previous.get(caught[0]))


def _deliver(signum: int, handler: Any) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)


# ------------------------------------------------------------------------------------------------ errors
def output_error(error: OSError, out: Path) -> OutputError:
    """One clear :class:`OutputError` for an operating-system error met while writing into ``out``."""
    code = error.errno
    where = f" ({error.filename})" if error.filename else ""
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return OutputError(f"the disk of the output folder {out} is full{where}; nothing was written",
                           "free some space, or choose an output folder on another disk")
    if code == errno.EROFS:
        return OutputError(f"the output folder {out} is on a read-only file system; nothing was written",
                           "choose an output folder on a writable disk")
    if code in (errno.EACCES, errno.EPERM):
        return OutputError(f"no permission to write into the output folder {out}{where}; nothing was written",
                           "choose a folder you can write to, or change its permissions")
    if code == errno.ENOTDIR:
        return OutputError(f"the output folder {out} lies under a file, not a folder{where}",
                           "choose a folder (a path whose parents are all folders)")
    if code in (errno.EEXIST, errno.EISDIR):
        return OutputError(f"the output folder {out} cannot be made: {error.strerror}{where}",
                           "choose another output folder")
    if code == errno.ENOENT:
        return OutputError(f"the output folder {out} cannot be made: a folder above it is missing{where}",
                           "check the path, or make the folder above it first")
    return OutputError(f"cannot write into the output folder {out}: {error.strerror or error}{where}; nothing was "
                       "written", "check the output folder and its disk, or choose another one")


# ------------------------------------------------------------------------------------------------ helpers
def _inside_active(out: Path) -> bool:
    active = _active.get()
    if not active:
        return False
    resolved = out.resolve()
    return any(resolved == s or s in resolved.parents for s in active)


def _check_place(out: Path) -> None:
    """The output folder is (or can become) a folder we may write into."""
    if os.path.lexists(out) and not out.is_dir():
        what = "a broken symbolic link" if out.is_symlink() else "a file"
        raise OutputError(f"the output folder {out} is {what}, not a folder", "choose a folder")
    existing = out.absolute()
    while not os.path.lexists(existing):
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != out.absolute() and not existing.is_dir():
        raise OutputError(f"the output folder {out} lies under {existing}, which is a file, not a folder",
                          "choose a folder (a path whose parents are all folders)")
    if not existing.is_dir():
        raise OutputError(f"the output folder {out} cannot be made: {existing} is not a folder", "choose a folder")
    if _read_only(existing):
        raise output_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), out)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise output_error(OSError(errno.EACCES, os.strerror(errno.EACCES), str(existing)), out)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        return False


def _check_inputs(out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output folder inside the DICOM folder of an input: the next run would see a second series."""
    paths = [Path(p) for p in inputs if p]
    folders: set[Path] = set()
    dicom_files = [p for p in paths if p.is_file() and (p.suffix.lower() in _DICOM_SUFFIXES or not p.suffix)]
    for p in paths:
        if p.is_dir():
            folders.add(p.resolve())
    if len(dicom_files) > 1:  # the files of one series: their folder
        folders.update(p.resolve().parent for p in dicom_files)
    target = out.resolve()
    for folder in sorted(folders):
        if target == folder or folder in target.parents:
            raise OutputError(f"the output folder {out} is inside the input DICOM folder {folder}; the next run "
                              "would find the results there as a second series",
                              "choose an output folder outside the input folder")


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, out) from None


def _make_staging(out: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    except OSError as error:
        raise output_error(error, out) from None


def _commit(staging: Path, out: Path, *, overwrite: bool, marker: bool) -> None:
    """Move every entry of ``staging`` into ``out`` (the caller holds the signals back)."""
    entries = sorted(e for e in os.listdir(staging) if e != MARKER)
    earlier = read_marker(out)
    if not overwrite:
        clashes = [str(out / e) for e in entries if os.path.lexists(out / e)]
        if clashes or (marker and earlier is not None):
            raise OutputExistsError(f"output files appeared while the result was made: "
                                    f"{', '.join(clashes) or str(out / MARKER)}",
                                    "choose another output folder or pass --overwrite")
    old = set(_safe_names((earlier or {}).get("files"))) - set(entries) if overwrite else set()
    if marker:
        _write_marker(staging, out, "incomplete", sorted(set(entries) | old))
    for name in sorted(old):
        _remove(out / name)
    for name in entries:
        source, target = staging / name, out / name
        if os.path.lexists(target) and (target.is_symlink() or source.is_dir() or target.is_dir()):
            _remove(target)
        os.replace(source, target)
    if marker:
        _write_marker(staging, out, "complete", entries)
    os.rmdir(staging)


def _write_marker(staging: Path, out: Path, status: str, files: list[str]) -> None:
    from .. import __version__

    tmp = staging / MARKER
    payload = {"status": status, "files": files, "mskseg_version": __version__,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(payload, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / MARKER)


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder."""
    if path.is_symlink() or not path.is_dir():
        if os.path.lexists(path):
            path.unlink()
    else:
        shutil.rmtree(path)


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _safe_names(files: Any) -> list[str]:
    """Names from a marker that are plain entries of its folder (a marker is never trusted with paths)."""
    return [f for f in files if isinstance(f, str) and _plain_name(f)] if isinstance(files, list) else []


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..", MARKER) and "/" not in name and "\\" not in name \
        and "\0" not in name and not name.startswith(STAGING_PREFIX)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


__all__ = ["MARKER", "STAGING_PREFIX", "check_output", "child_folder", "final_paths", "hold_signals",
           "output_error", "output_transaction", "read_marker", "remove_stale_staging"]
