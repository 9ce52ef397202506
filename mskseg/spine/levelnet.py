"""The learned vertebral-level detector: the projection network, its model card, and decoding its output.

A small network (architecture ``mskseg.l3-projection-net``, built by :func:`build_projection_net`; the
builder lookup in :mod:`mskseg.models.networks` imports it from here when a card names it) reads the bone
projections of :mod:`mskseg.spine.geometry` resampled to 2 mm rows and gives, for every row, a continuous
vertebral-level coordinate in the numbering from the top (T1 = 1 ... L3 = 15 ... L5 = 17), the same counted
from the last rib and from the sacrum, and the logit of "this row is the centre of a vertebral body". The
level coordinate is decoded into level centres, refined to the peak of the centre logit
(:func:`decode_levels`). Which level each coordinate means is read from the detector's model card
(:func:`detector_levels`: its classes ``vertebrae_T1`` = 1 ... ``vertebrae_S1`` = 18); :data:`LEVEL_INDEX`
is the numbering of the bundled card, built from the vertebra table of :mod:`mskseg.anatomy`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy import ndimage

from ..anatomy import region_of, vertebra_from_name, vertebra_names
from .geometry import FRONTAL_COLUMNS, ROW_MM, SAGITTAL_COLUMNS, BoneProjections, resample_rows

if TYPE_CHECKING:
    import torch

    from ..models.cards import ModelCard


#: Name of the bundled detector's model card.
DETECTOR_CARD_NAME = "sarcopenia-l3-detector"
#: Architecture name of the projection network, as written in the detector's model card.
NETWORK_NAME = "mskseg.l3-projection-net"

#: Vertebral levels the bundled detector knows, in cranio-caudal order, and their level coordinate
#: (T1 = 1 ... S1 = 18; the classes of its model card).
LEVELS: tuple[str, ...] = tuple(vertebra_names("T1", "S1"))
LEVEL_INDEX: dict[str, int] = {name: i + 1 for i, name in enumerate(LEVELS)}
#: Level coordinate the network's level outputs are offsets from (a property of the trained weights).
L3_COORDINATE = float(LEVEL_INDEX["L3"])

#: Output channels of the network, per 2 mm row.
OUTPUTS: tuple[str, ...] = ("level", "level_from_ribs", "level_from_sacrum", "centre_logit")


def build_projection_net(frontal_columns: int = FRONTAL_COLUMNS, sagittal_columns: int = SAGITTAL_COLUMNS,
                         view_channels: Sequence[int] = (12, 24, 32, 48), width: int = 64,
                         dilations: Sequence[int] = (1, 2, 4, 8, 16, 32, 1, 2, 4, 8, 16, 32)) -> torch.nn.Module:
    """The L3 detector network (architecture ``mskseg.l3-projection-net``).

    Input: ``(B, 4, R, frontal_columns + sagittal_columns)`` float32: channels 0-1 the frontal projection
    (maximum, sum), channels 2-3 the sagittal one, the two views side by side along the last axis (the frontal
    view's columns first; the sagittal one's columns are read from the first ``sagittal_columns`` columns of
    its half). ``R`` rows of 2 mm, any number. Output: ``(B, 4, R)``: per row the level coordinate (T1 = 1 ...
    L3 = 15 ... S1 = 18; :data:`OUTPUTS`), the same counted from the last rib and from the sacrum, and the logit
    of "this row is the centre of a vertebral body".

    Each view goes through 2D convolutions that halve the width four times and keep every row, then its
    columns are pooled (mean and max); a stack of dilated 1D residual convolutions along the rows (receptive
    field about +-250 mm) reads the two views together.
    """
    import torch
    from torch import nn

    def view_encoder() -> nn.Sequential:
        layers: list[nn.Module] = []
        c_in = 2
        for i, c in enumerate(view_channels):
            stride = (1, 2)
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        return nn.Sequential(*layers)

    class Residual1d(nn.Module):
        def __init__(self, channels: int, dilation: int):
            super().__init__()
            self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
            self.norm = nn.BatchNorm1d(channels)
            self.mix = nn.Conv1d(channels, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.mix(torch.relu(self.norm(self.conv(x))))

    class ProjectionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frontal_columns = int(frontal_columns)
            self.sagittal_columns = int(sagittal_columns)
            self.frontal = view_encoder()
            self.sagittal = view_encoder()
            self.join = nn.Conv1d(4 * view_channels[-1], width, 1)
            self.rows = nn.Sequential(*[Residual1d(width, d) for d in dilations])
            self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Conv1d(width, width, 1), nn.ReLU(inplace=True),
                                      nn.Conv1d(width, len(OUTPUTS), 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.frontal(x[:, 0:2, :, : self.frontal_columns])
            s = self.sagittal(x[:, 2:4, :, self.frontal_columns: self.frontal_columns + self.sagittal_columns])
            feats = torch.cat([f.mean(dim=3), f.amax(dim=3), s.mean(dim=3), s.amax(dim=3)], dim=1)
            out = self.head(self.rows(self.join(feats)))
            # level coordinates around the lumbar spine: the head predicts offsets from L3
            return torch.cat([out[:, :3] + L3_COORDINATE, out[:, 3:]], dim=1)

    return ProjectionNet()


def network_input(proj: BoneProjections, start_mm: float | None = None,
                  rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The network's input from the projections: ``((4, R, FRONTAL_COLUMNS + SAGITTAL_COLUMNS), row z (R,))``."""
    frontal, z = resample_rows(proj.frontal, proj.z_mm, ROW_MM, start_mm, rows)
    sagittal, _ = resample_rows(proj.sagittal, proj.z_mm, ROW_MM, start_mm, rows)
    x = np.zeros((4, frontal.shape[1], FRONTAL_COLUMNS + SAGITTAL_COLUMNS), np.float32)
    x[0:2, :, :FRONTAL_COLUMNS] = frontal
    x[2:4, :, FRONTAL_COLUMNS:] = sagittal
    return x, z


@dataclass
class NetworkLevels:
    """What the learned detector found.

    Attributes:
        levels_mm: vertebra name -> z (mm) of its body centre, for every level whose centre is in the field of view.
        level_confidence: vertebra name -> 0..1 (sharpness and height of the centre peak, fit of the level ramp).
        present: names of all levels whose centre lies in the field of view.
        rib_minus_sacrum: the level counted from the last rib minus the one counted from the sacrum, around L3
            (about 0 in typical anatomy, about +-1 with a transitional vertebra).
        z_rows: (R,) z of the 2 mm rows; outputs: (4, R) the raw outputs (:data:`OUTPUTS`, the last as probability).
    """

    levels_mm: dict[str, float]
    level_confidence: dict[str, float]
    present: list[str]
    rib_minus_sacrum: float
    z_rows: np.ndarray
    outputs: np.ndarray


def _crossing(level: np.ndarray, z_rows: np.ndarray, target: float) -> tuple[float, float, float] | None:
    """Where the level coordinate passes ``target``: ``(z mm, slope mm per level, fit residual mm)`` or None.

    Rows within 0.6 level of the target are split into runs; a run counts when a straight line fits it with a
    plausible vertebral height (12-60 mm per level, coordinate falling towards the head). Outside the spine
    the coordinate is untrained and may pass the target again: the longest plausible run wins.
    """
    near = np.abs(level - target) < 0.6
    if near.sum() < 2:
        return None
    runs, n_runs = ndimage.label(near)
    best: tuple[int, tuple[float, float, float]] | None = None
    for r in range(1, n_runs + 1):
        idx = np.nonzero(runs == r)[0]
        if len(idx) < 2:
            continue
        zz, tt = z_rows[idx], level[idx]
        if np.ptp(tt) < 0.2:
            continue
        slope, intercept = np.polyfit(tt, zz, 1)
        if not -60.0 <= slope <= -12.0:
            continue
        z0 = float(intercept + slope * target)
        if not zz.min() - 0.3 * abs(slope) <= z0 <= zz.max() + 0.3 * abs(slope):
            continue
        residual = float(np.sqrt(np.mean((zz - (intercept + slope * tt)) ** 2)))
        if best is None or len(idx) > best[0]:
            best = (len(idx), (z0, float(slope), residual))
    return None if best is None else best[1]


def decode_levels(outputs: np.ndarray, z_rows: np.ndarray,
                  level_index: dict[str, int] | None = None) -> NetworkLevels:
    """Level centres from the network's per-row outputs.

    For each level ``L`` the rows whose level coordinate is within 0.6 of ``L`` give a first centre by a linear
    fit of z against the coordinate; the peak of the centre probability within a third of a vertebra of it
    refines it (parabolic sub-row peak). A level is present when its centre lies inside the field of view.

    Args:
        outputs: (4, R) raw network outputs for the rows (``centre_logit`` still a logit).
        z_rows: (R,) z (mm) of the rows, rising.
        level_index: vertebra name -> level coordinate (:func:`detector_levels` of the card; default
            :data:`LEVEL_INDEX`). Sacral levels are not decoded (the sacrum is the end of the count).

    Returns:
        :class:`NetworkLevels`.
    """
    level_index = LEVEL_INDEX if level_index is None else level_index
    level = outputs[0].astype(float)
    heat = 1.0 / (1.0 + np.exp(-outputs[3].astype(float)))
    rows = len(z_rows)
    levels: dict[str, float] = {}
    confidence: dict[str, float] = {}
    for name in sorted(level_index, key=level_index.__getitem__):  # T1..L5
        if region_of(name) == "sacral":
            continue
        target = float(level_index[name])
        fit = _crossing(level, z_rows, target)
        if fit is None:
            continue
        z0, slope, residual = fit
        if not z_rows[0] - ROW_MM < z0 < z_rows[-1] + ROW_MM:
            continue
        half = max(2, int(round(abs(slope) * 0.33 / ROW_MM)))
        r0 = int(round((z0 - z_rows[0]) / ROW_MM))
        lo, hi = max(0, r0 - half), min(rows, r0 + half + 1)
        peak_value = 0.0
        z_best = z0
        if hi - lo >= 3:
            r = lo + int(np.argmax(heat[lo:hi]))
            peak_value = float(heat[r])
            if peak_value > 0.25:
                offset = 0.0
                if 0 < r < rows - 1:
                    a, b, c = heat[r - 1], heat[r], heat[r + 1]
                    denom = a - 2 * b + c
                    offset = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5)) if denom < 0 else 0.0
                z_best = float(z_rows[0] + (r + offset) * ROW_MM)
        if not z_rows[0] <= z_best <= z_rows[-1]:
            continue
        levels[name] = z_best
        confidence[name] = float(np.clip(peak_value, 0.0, 1.0) * math.exp(-residual / 8.0))
    # transitional anatomy: the two shortcut counts around L3 (+-2 vertebrae)
    around = np.abs(level - level_index["L3"]) < 2.0
    diff = float(np.median(outputs[1][around] - outputs[2][around])) if around.any() else 0.0
    return NetworkLevels(levels, confidence, list(levels), diff, z_rows, np.stack([outputs[0], outputs[1],
                                                                                      outputs[2], heat]))


def find_detector_card() -> ModelCard | None:
    """The installed L3 detector's model card (``sarcopenia-l3-detector``), or None when none is installed."""
    from ..models import find_model_cards

    for card in find_model_cards(task="sarcopenia"):
        if card.name == DETECTOR_CARD_NAME or card.architecture.get("name") == NETWORK_NAME:
            return card
    return None


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def detector_levels(card: ModelCard | None) -> dict[str, int]:
    """Vertebra name -> level coordinate, from the card's classes (``vertebrae_L3`` = 15); :data:`LEVEL_INDEX`
    when there is no card or its classes name no vertebra."""
    if card is None:
        return dict(LEVEL_INDEX)
    found = {}
    for item in card.classes:
        name = vertebra_from_name(str(item["name"]))
        if name is not None:
            found[name] = int(item["label"])
    return found or dict(LEVEL_INDEX)


def load_detector(card: ModelCard, device: str) -> torch.nn.Module:
    """The detector network of ``card`` on ``device`` with its weights (the last one loaded is kept)."""
    from ..models import load_model

    key = (str(card.path), device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(card, device=device)
    return _MODEL_CACHE[key]


def network_levels(proj: BoneProjections, model: torch.nn.Module, device: str = "cpu",
                   level_index: dict[str, int] | None = None) -> NetworkLevels:
    """Run the projection network on the projections of one volume and decode the level centres.

    ``level_index``: the card's level numbering (:func:`detector_levels`; default :data:`LEVEL_INDEX`).
    """
    import torch

    x, z_rows = network_input(proj)
    # The network is tiny: on the CPU one thread is fastest (several threads spend more time waiting for each
    # other than computing, especially when other work shares the cores).
    threads = torch.get_num_threads()
    if str(device).startswith("cpu"):
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = model(torch.from_numpy(x[None]).to(device)).float().cpu().numpy()[0]
    finally:
        torch.set_num_threads(threads)
    return decode_levels(out, z_rows, level_index)
