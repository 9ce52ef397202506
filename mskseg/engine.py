"""Running networks: device choice, batched 2D/2.5D slice inference, 3D sliding window, progress, cancel.

Everything here runs under :func:`torch.inference_mode`, and uses mixed precision (``torch.autocast``,
float16) only on CUDA. The number of CPU threads torch uses is left to the caller
(``torch.set_num_threads(n)``; torch's default is one per physical core). On a shared workstation or when
several cases run in parallel processes, set it lower, e.g. ``torch.set_num_threads(4)``.

Progress and cancellation: long functions take ``progress``, a callable ``progress(fraction, message)``
with ``fraction`` rising from 0.0 to 1.0. If it returns ``False`` the work stops and :class:`CancelledError`
is raised before the next batch; a :class:`CancelToken` passed as ``cancel_token`` does the same from
another thread (a Slicer Cancel button).

torch is imported when a function runs, not when this module is imported.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from .errors import CancelledError, InvalidImageError, MSKSegError

if TYPE_CHECKING:
    import torch

#: Environment variable that overrides the automatic device choice ("cpu", "cuda", "cuda:1", "mps").
DEVICE_ENV = "MSKSEG_DEVICE"


# ----------------------------------------------------------------------------------------------------------
# Device choice
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceChoice:
    """The device inference runs on, and why.

    Attributes:
        device: torch device string: ``"cpu"``, ``"cuda:0"``, ``"mps"``.
        reason: what was chosen and why, for the log and the GUI ("CUDA not available: torch built
            without CUDA; using CPU").
        name: the hardware, e.g. ``"NVIDIA RTX 4090 (24.0 GB)"`` or ``"CPU (16 cores)"``.
    """

    device: str
    reason: str
    name: str

    def __str__(self) -> str:
        return f"{self.device} ({self.name}): {self.reason}"


def _cuda_unavailable_reason() -> str | None:
    import torch

    if torch.version.cuda is None:
        return "CUDA not available: torch built without CUDA (a CPU-only torch)"
    if not torch.cuda.is_available():
        return (f"CUDA not available: torch built for CUDA {torch.version.cuda} but no usable GPU or driver was "
                "found")
    return None


def _mps_unavailable_reason() -> str | None:
    import torch

    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():
        return "MPS not available: torch built without MPS (Apple GPU) support"
    if not mps.is_available():
        return "MPS not available: needs an Apple-silicon Mac with macOS 12.3 or later"
    return None


def _cpu_name() -> str:
    import torch

    return f"CPU ({os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads)"


def _cuda_name(index: int) -> str:
    import torch

    props = torch.cuda.get_device_properties(index)
    return f"{props.name} ({props.total_memory / 1e9:.1f} GB)"


def available_devices() -> list[str]:
    """Device strings usable here: always ``"cpu"``, then ``"cuda:0"``... and ``"mps"`` when present."""
    import torch

    devices = ["cpu"]
    if _cuda_unavailable_reason() is None:
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_unavailable_reason() is None:
        devices.append("mps")
    return devices


def choose_device(preference: str | None = None) -> DeviceChoice:
    """Pick the torch device for inference.

    Args:
        preference: ``"auto"`` (or None): CUDA, then MPS, then CPU; the environment variable
            ``MSKSEG_DEVICE`` replaces ``"auto"``/None when set. ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and
            ``"mps"`` are honoured when available.

    Raises:
        MSKSegError: the requested device is unknown or unavailable; the message says why and lists the
            devices that are available.
    """
    import torch

    requested = (preference or "auto").strip().lower()
    origin = "requested"
    if requested == "auto" and os.environ.get(DEVICE_ENV, "").strip():
        requested = os.environ[DEVICE_ENV].strip().lower()
        origin = f"set by {DEVICE_ENV}"
    if requested == "auto":
        cuda_reason = _cuda_unavailable_reason()
        if cuda_reason is None:
            return DeviceChoice("cuda:0", "CUDA GPU available: using it (mixed precision on)", _cuda_name(0))
        mps_reason = _mps_unavailable_reason()
        if mps_reason is None:
            return DeviceChoice("mps", f"{cuda_reason}; Apple GPU (MPS) available: using it", "Apple GPU (MPS)")
        return DeviceChoice("cpu", f"{cuda_reason}; {mps_reason}; using CPU", _cpu_name())

    available = ", ".join(available_devices())
    if requested == "cpu":
        return DeviceChoice("cpu", f"CPU {origin}", _cpu_name())
    if requested == "cuda" or requested.startswith("cuda:"):
        reason = _cuda_unavailable_reason()
        if reason is not None:
            raise MSKSegError(f"device '{requested}' ({origin}) cannot be used: {reason}",
                              f"available here: {available}; use 'auto' to take the best of them")
        index_text = requested.partition(":")[2] or "0"
        if not index_text.isdigit() or int(index_text) >= torch.cuda.device_count():
            raise MSKSegError(f"device '{requested}' ({origin}) does not exist: {torch.cuda.device_count()} CUDA "
                              "GPU(s) found", f"available here: {available}")
        index = int(index_text)
        return DeviceChoice(f"cuda:{index}", f"CUDA GPU {origin}", _cuda_name(index))
    if requested == "mps":
        reason = _mps_unavailable_reason()
        if reason is not None:
            raise MSKSegError(f"device 'mps' ({origin}) cannot be used: {reason}", f"available here: {available}")
        return DeviceChoice("mps", f"Apple GPU (MPS) {origin}", "Apple GPU (MPS)")
    raise MSKSegError(f"device '{requested}' ({origin}) is not a device MSKSeg knows",
                      f"use auto, cpu, cuda, cuda:N or mps; available here: {available}")


def _as_device(device: Any) -> torch.device:
    import torch

    if device is None:
        return torch.device(choose_device().device)
    if isinstance(device, DeviceChoice):
        return torch.device(device.device)
    return torch.device(device)


# ----------------------------------------------------------------------------------------------------------
# Progress and cancellation
# ----------------------------------------------------------------------------------------------------------
class Progress(Protocol):
    """``progress(fraction, message)``: ``fraction`` in [0, 1], rising; return ``False`` to cancel."""

    def __call__(self, fraction: float, message: str) -> bool | None: ...


class CancelToken:
    """A flag another thread (a GUI Cancel button) sets to stop long work before its next batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop; it raises :class:`CancelledError` before its next batch."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()

    def raise_if_cancelled(self, what: str = "the work") -> None:
        """Raise :class:`CancelledError` if :meth:`cancel` was called."""
        if self.cancelled:
            raise CancelledError(f"{what} was cancelled")


def sub_progress(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A progress callback mapping 0..1 onto ``start..stop`` of ``progress`` (for one step of a pipeline).

    The returned callback passes ``progress``'s return value through, so cancelling still works.
    """
    if progress is None:
        return None

    def scaled(fraction: float, message: str) -> bool | None:
        return progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)

    return scaled


class ProgressReporter:
    """Calls ``progress`` with rising fractions and raises CancelledError on False or a cancelled token.

    Args:
        progress: ``progress(fraction, message)``; returning False cancels. None: no reports.
        cancel_token: checked at every report and :meth:`check`.
        what: the work's name for the CancelledError message (``"slice inference"``).
    """

    def __init__(self, progress: Progress | None, cancel_token: CancelToken | None, what: str):
        self.progress, self.cancel_token, self.what, self.last = progress, cancel_token, what, 0.0

    def check(self) -> None:
        """Raise CancelledError when the token was cancelled."""
        if self.cancel_token is not None:
            self.cancel_token.raise_if_cancelled(self.what)

    def report(self, fraction: float, message: str) -> None:
        """Report ``fraction`` (never less than the last one, at most 1); raise CancelledError if cancelled."""
        self.last = max(self.last, min(fraction, 1.0))
        if self.progress is not None and self.progress(self.last, message) is False:
            raise CancelledError(f"{self.what} was cancelled")
        self.check()


# ----------------------------------------------------------------------------------------------------------
# Input normalisation
# ----------------------------------------------------------------------------------------------------------
def normalise(volume: np.ndarray, input_spec: Mapping[str, Any]) -> np.ndarray:
    """Intensity normalisation a model card's ``input`` asks for; pure numpy, any shape.

    - ``normalisation: "window"`` (the default) with ``window: [lo, hi]``: clip to the window, scale to [0, 1].
    - ``"zscore"``: ``(x - mean) / std`` with the card's ``zscore.mean/std``, else the volume's own
      (std 0 is taken as 1).
    - ``"none"``: values unchanged.

    Returns:
        float32 array of ``volume``'s shape.

    Raises:
        MSKSegError: unknown normalisation, or "window" without a window.
    """
    kind = input_spec.get("normalisation", "window")
    data = np.asarray(volume, dtype=np.float32)
    if kind == "window":
        if "window" not in input_spec:
            raise MSKSegError("input normalisation 'window' needs 'window': [low, high]",
                              "add input.window to the model card")
        lo, hi = (float(v) for v in input_spec["window"])
        if hi <= lo:
            raise MSKSegError(f"input window {[lo, hi]} must have low < high", "fix input.window in the model card")
        return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32, copy=False)
    if kind == "zscore":
        stats = input_spec.get("zscore")
        mean = float(stats["mean"]) if stats else float(data.mean())
        std = float(stats["std"]) if stats else float(data.std())
        return ((data - mean) / (std if std > 0 else 1.0)).astype(np.float32, copy=False)
    if kind == "none":
        return data
    raise MSKSegError(f"input normalisation '{kind}' is unknown", "use window, zscore or none")


# ----------------------------------------------------------------------------------------------------------
# Inference helpers
# ----------------------------------------------------------------------------------------------------------
def _prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model.eval()
    try:
        first = next(model.parameters())
    except StopIteration:
        return model
    if first.device != device:
        model.to(device)
    return model


def forward_logits(model: torch.nn.Module, batch: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    """Logits as float32; autocast to float16 only on CUDA. Deep-supervision outputs: the first is used."""
    import torch

    if amp and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            out = model(batch)
    else:
        out = model(batch)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if out.ndim == batch.ndim + 1:  # DynUNet with deep supervision stacks heads in dim 1
        out = out[:, 0]
    return out.float()


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """softmax over channels; a single output channel is a sigmoid foreground probability."""
    import torch

    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _labels(logits: torch.Tensor) -> torch.Tensor:
    import torch

    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(torch.uint8)
    return torch.argmax(logits, dim=1).to(torch.uint8)


def _check_output(output: str) -> None:
    if output not in ("labels", "probabilities"):
        raise MSKSegError(f"output '{output}' is unknown", "use 'labels' or 'probabilities'")


def predict_slices(model: torch.nn.Module, volume: np.ndarray, *, context: int = 0, batch_size: int = 8,
                   device: Any = None, amp: bool = True, progress: Progress | None = None,
                   cancel_token: CancelToken | None = None, slice_indices: Sequence[int] | None = None,
                   output: str = "labels") -> np.ndarray:
    """Run a 2D (``context=0``) or 2.5D network slice by slice over a volume, in batches.

    For slice ``k`` the network sees ``2 * context + 1`` channels: slices ``k - context .. k + context`` in
    that order, slice indices clamped to the volume (edge replication), so channel ``context`` is slice
    ``k`` itself.

    Args:
        model: maps (B, 2*context+1, J, I) float32 to logits (B, C, J, I). Put in eval mode and moved to
            ``device``. With C == 1 the output is a sigmoid foreground logit.
        volume: (K, J, I) float32, already normalised (see :func:`normalise`); a (J, I) image is one slice.
        context: neighbouring slices on each side (the card's ``input.context_slices``).
        batch_size: slices per forward pass.
        device: "cpu", "cuda:0", a torch.device or a :class:`DeviceChoice`; None: :func:`choose_device`.
        amp: float16 autocast, used only on CUDA.
        progress: ``progress(fraction, message)`` after each batch; returning False cancels.
        cancel_token: cancels from another thread.
        slice_indices: run only these slices (output in this order); default all.
        output: ``"labels"`` or ``"probabilities"``.

    Returns:
        labels: (K', J, I) uint8 (argmax; with C == 1, logit > 0), K' = number of slices run;
        probabilities: (C, K', J, I) float16 (softmax; with C == 1 the sigmoid). A (J, I) input gives
        (J, I) / (C, J, I). Memory: only the chosen output is kept, one batch of float32 logits at a time.

    Raises:
        InvalidImageError: ``volume`` is not 2D/3D or a slice index is outside it.
        CancelledError: cancelled through ``progress`` or ``cancel_token`` (checked between batches).
    """
    import torch

    _check_output(output)
    vol = np.asarray(volume)
    single = vol.ndim == 2
    if single:
        vol = vol[None]
    if vol.ndim != 3:
        raise InvalidImageError(f"slice inference needs a (K, J, I) volume or a (J, I) image, got shape "
                                f"{vol.shape}", "pass a single-channel volume")
    if context < 0 or batch_size < 1:
        raise MSKSegError(f"context ({context}) must be >= 0 and batch_size ({batch_size}) >= 1")
    num_slices = vol.shape[0]
    indices = list(range(num_slices)) if slice_indices is None else [int(k) for k in slice_indices]
    bad = [k for k in indices if not 0 <= k < num_slices]
    if bad:
        raise InvalidImageError(f"slice indices {bad[:5]} are outside the volume's {num_slices} slices",
                                f"use indices 0..{num_slices - 1}")
    dev = _as_device(device)
    model = _prepare_model(model, dev)
    reporter = ProgressReporter(progress, cancel_token, "slice inference")
    total = len(indices)
    reporter.report(0.0, f"slice inference: 0/{total} slices on {dev}")
    offsets = np.arange(-context, context + 1)
    result: np.ndarray | None = None
    if output == "labels":
        result = np.zeros((total,) + vol.shape[1:], dtype=np.uint8)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            reporter.check()
            batch_indices = np.asarray(indices[start:start + batch_size])
            neighbours = np.clip(batch_indices[:, None] + offsets[None, :], 0, num_slices - 1)  # (B, 2c+1)
            batch = torch.from_numpy(np.ascontiguousarray(vol[neighbours], dtype=np.float32)).to(dev)
            logits = forward_logits(model, batch, dev, amp)
            stop = start + len(batch_indices)
            if output == "labels":
                result[start:stop] = _labels(logits).cpu().numpy()  # type: ignore[index]
            else:
                probs = _probabilities(logits).to(torch.float16).cpu().numpy()  # (B, C, J, I)
                if result is None:
                    result = np.zeros((probs.shape[1], total) + vol.shape[1:], dtype=np.float16)
                result[:, start:stop] = probs.transpose(1, 0, 2, 3)
            reporter.report(stop / total, f"slice inference: {stop}/{total} slices")
    if result is None:  # no slices asked for
        result = np.zeros((0, 0) + vol.shape[1:], dtype=np.float16)
    if single:
        return result[0] if output == "labels" else result[:, 0]
    return result


def _window_starts(size: int, roi: int, interval: int) -> list[int]:
    """Window start positions along one axis, as monai.data.utils.dense_patch_slices places them."""
    if size <= roi:
        return [0]
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return sorted({min(d * interval, size - roi) for d in range(count)})


def predict_volume(model: torch.nn.Module, volume: np.ndarray, *, roi_size: Sequence[int], overlap: float = 0.25,
                   sw_batch_size: int = 4, device: Any = None, amp: bool = True, progress: Progress | None = None,
                   cancel_token: CancelToken | None = None, output: str = "labels", blend: str = "gaussian",
                   pad_value: float = 0.0) -> np.ndarray:
    """Run a 3D network over a volume with overlapping sliding windows, in bounded memory.

    Windows are placed as MONAI's ``sliding_window_inference`` places them (interval
    ``int(roi * (1 - overlap))``, last window flush with the edge; a volume smaller than ``roi_size`` is padded
    with ``pad_value``, half on each side) and blended with the same importance map (``"gaussian"``,
    sigma 0.125 * roi, or ``"constant"``), so results match MONAI's. Unlike MONAI, the blended probabilities
    are not kept for the whole volume: windows are run slab by slab along K and every slab of slices that no
    later window touches is finished and dropped.

    Memory (CPU RAM, besides the input and the result): about ``4 * (C + 1) * 2 * roi_k * J * I`` bytes for
    the running slab (C output channels), plus one batch of windows on ``device``. Example: J = I = 512,
    roi_k = 96, C = 10: about 2.2 GB, against 4 * 11 * K * 512 * 512 bytes (5.8 GB for K = 500) for a
    whole-volume accumulator. The result is (K, J, I) uint8, or (C, K, J, I) float16 for probabilities.

    Args:
        model: maps (B, C_in, rk, rj, ri) float32 to logits (B, C, rk, rj, ri). Put in eval mode and moved to
            ``device``.
        volume: (K, J, I) or (C_in, K, J, I) float32, already normalised.
        roi_size: window size (rk, rj, ri) (the card's ``input.patch_size``).
        overlap: fraction of a window shared with its neighbour, 0 <= overlap < 1.
        sw_batch_size: windows per forward pass.
        device: "cpu", "cuda:0", a torch.device or a :class:`DeviceChoice`; None: :func:`choose_device`.
        amp: float16 autocast, used only on CUDA.
        progress: ``progress(fraction, message)`` after each batch of windows; returning False cancels.
        cancel_token: cancels from another thread.
        output: ``"labels"`` or ``"probabilities"``.
        blend: ``"gaussian"`` or ``"constant"`` window weighting.
        pad_value: value used to pad a volume smaller than ``roi_size``.

    Returns:
        labels (K, J, I) uint8 (argmax; with C == 1, probability > 0.5) or probabilities (C, K, J, I) float16.

    Raises:
        InvalidImageError: ``volume`` is not 3D/4D or ``roi_size`` is not three positive sizes.
        CancelledError: cancelled through ``progress`` or ``cancel_token`` (checked between batches).
    """
    import torch

    vol, roi = _check_volume_request(volume, roi_size, overlap, blend, output)
    dev = _as_device(device)
    model = _prepare_model(model, dev)
    plan = _plan_windows(vol.shape[1:], roi, overlap, sw_batch_size)

    from monai.data.utils import compute_importance_map

    importance = compute_importance_map(roi, mode=blend, sigma_scale=0.125, device="cpu")  # (rk, rj, ri)
    weight_roi = importance.to(dev)
    source = _padded_source(vol, plan.pads, pad_value)
    slab = _Slab(plan, output)

    reporter = ProgressReporter(progress, cancel_token, "3D inference")
    reporter.report(0.0, f"3D inference: 0/{plan.total_batches} window batches on {dev}")
    done = 0
    with torch.inference_mode():
        for k in plan.starts[0]:
            slab.finish(k)  # slices before k get no further windows
            needed = slab.reserve(k + roi[0])
            for b in range(0, len(plan.plane_windows), sw_batch_size):
                reporter.check()
                chunk = plan.plane_windows[b:b + sw_batch_size]
                batch = torch.stack([source[:, k:k + roi[0], j:j + roi[1], i:i + roi[2]] for j, i in chunk]).to(dev)
                probs = _probabilities(forward_logits(model, batch, dev, amp)) * weight_roi  # (B, C, rk, rj, ri)
                probs = probs.cpu()
                slab.add(k, needed, chunk, probs, importance)
                done += 1
                reporter.report(done / plan.total_batches, f"3D inference: {done}/{plan.total_batches} window batches")
        slab.finish(plan.size[0])
    return slab.result  # type: ignore[return-value]


def _check_volume_request(volume: np.ndarray, roi_size: Sequence[int], overlap: float, blend: str,
                          output: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(volume as (C, K, J, I), roi as three ints)`` for :func:`predict_volume`, or its errors."""
    _check_output(output)
    vol = np.asarray(volume)
    if vol.ndim == 3:
        vol = vol[None]
    if vol.ndim != 4:
        raise InvalidImageError(f"3D inference needs a (K, J, I) or (C, K, J, I) volume, got shape {vol.shape}")
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise InvalidImageError(f"roi_size must be three positive sizes (k, j, i), got {tuple(roi_size)}")
    if not 0 <= overlap < 1:
        raise MSKSegError(f"overlap must be >= 0 and < 1, got {overlap}")
    if blend not in ("gaussian", "constant"):
        raise MSKSegError(f"blend '{blend}' is unknown", "use 'gaussian' or 'constant'")
    return vol, roi


@dataclass
class _WindowPlan:
    """Where :func:`predict_volume` puts its windows.

    Attributes:
        original: (K, J, I) of the volume.
        roi: window size (rk, rj, ri).
        pads: ``(before, after)`` padding per axis (a volume smaller than the window is padded to it).
        size: (K, J, I) after padding.
        starts: window start positions per axis (padded indices).
        plane_windows: ``(j, i)`` starts of the windows of one slab.
        total_batches: batches of windows over the whole volume.
    """

    original: tuple[int, ...]
    roi: tuple[int, ...]
    pads: list[tuple[int, int]]
    size: tuple[int, ...]
    starts: list[list[int]]
    plane_windows: list[tuple[int, int]]
    total_batches: int


def _plan_windows(original: tuple[int, ...], roi: tuple[int, ...], overlap: float,
                  sw_batch_size: int) -> _WindowPlan:
    """Padding and window positions as MONAI's ``sliding_window_inference`` places them."""
    pads = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for r, s in zip(roi, original)]
    size = tuple(s + a + b for s, (a, b) in zip(original, pads))
    intervals = [r if r == s else max(int(r * (1 - overlap)), 1) for r, s in zip(roi, size)]
    starts = [_window_starts(s, r, i) for s, r, i in zip(size, roi, intervals)]
    plane_windows = [(j, i) for j in starts[1] for i in starts[2]]
    total_batches = sum(math.ceil(len(plane_windows) / sw_batch_size) for _ in starts[0])
    return _WindowPlan(original, roi, pads, size, starts, plane_windows, total_batches)


def _padded_source(vol: np.ndarray, pads: Sequence[tuple[int, int]], pad_value: float) -> torch.Tensor:
    """``vol`` (C, K, J, I) as a float32 tensor, padded with ``pad_value`` by ``pads``."""
    import torch
    import torch.nn.functional as F

    source = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))
    if any(a or b for a, b in pads):
        flat_pads = [p for pair in reversed(pads) for p in pair]
        source = F.pad(source, flat_pads, mode="constant", value=pad_value)
    return source


class _Slab:
    """The running slab of :func:`predict_volume`: the weighted sum of window probabilities and of their
    importance over the slices that windows still touch; finished slices go into ``result`` and are dropped."""

    def __init__(self, plan: _WindowPlan, output: str):
        import torch

        self.plan, self.output = plan, output
        self.result: np.ndarray | None = None
        if output == "labels":
            self.result = np.zeros(plan.original, dtype=np.uint8)
        self.slab_start = 0  # first slice (padded index) held in the accumulator
        self.acc: torch.Tensor | None = None  # (C, slab, J, I) weighted sum of probabilities
        self.weights = torch.zeros((0,) + plan.size[1:])  # (slab, J, I) summed importance

    def finish(self, upto: int) -> None:
        """Write slices [slab_start, upto) of the accumulator into the result and drop them."""
        import torch

        acc, weights, slab_start = self.acc, self.weights, self.slab_start
        pads, original = self.plan.pads, self.plan.original
        if acc is None or upto <= slab_start:
            return
        n = upto - slab_start
        probs = acc[:, :n] / weights[:n].clamp_min(1e-12)
        k0, k1 = slab_start - pads[0][0], upto - pads[0][0]  # crop padding along K
        j0, i0 = pads[1][0], pads[2][0]
        lo, hi = max(k0, 0), min(k1, original[0])
        if hi > lo:
            part = probs[:, lo - k0:hi - k0, j0:j0 + original[1], i0:i0 + original[2]]
            if self.output == "labels":
                labels = (part[0] > 0.5) if part.shape[0] == 1 else torch.argmax(part, dim=0)
                self.result[lo:hi] = labels.to(torch.uint8).numpy()  # type: ignore[index]
            else:
                if self.result is None:
                    self.result = np.zeros((part.shape[0],) + tuple(original), dtype=np.float16)
                self.result[:, lo:hi] = part.to(torch.float16).numpy()
        self.acc, self.weights = acc[:, n:], weights[n:]
        self.slab_start = upto

    def reserve(self, upto: int) -> int:
        """Grow the slab to reach slice ``upto`` (padded index, exclusive); returns its needed depth."""
        import torch

        size = self.plan.size
        needed = upto - self.slab_start
        if self.acc is not None and self.acc.shape[1] < needed:
            grow = needed - self.acc.shape[1]
            self.acc = torch.cat([self.acc, self.acc.new_zeros((self.acc.shape[0], grow) + size[1:])], dim=1)
            self.weights = torch.cat([self.weights, self.weights.new_zeros((grow,) + size[1:])], dim=0)
        elif self.acc is None:
            self.weights = torch.zeros((needed,) + size[1:])
        return needed

    def add(self, k: int, needed: int, chunk: Sequence[tuple[int, int]], probs: torch.Tensor,
            importance: torch.Tensor) -> None:
        """Add a batch of weighted window probabilities ``probs`` (B, C, rk, rj, ri) at slab ``k`` and window
        starts ``chunk``; the accumulator is created ``needed`` slices deep on the first batch."""
        import torch

        roi, size = self.plan.roi, self.plan.size
        if self.acc is None:
            self.acc = torch.zeros((probs.shape[1], needed) + size[1:])
        acc, weights = self.acc, self.weights
        kk = k - self.slab_start
        for (j, i), window_probs in zip(chunk, probs):
            acc[:, kk:kk + roi[0], j:j + roi[1], i:i + roi[2]] += window_probs
            weights[kk:kk + roi[0], j:j + roi[1], i:i + roi[2]] += importance
