"""The reliability figure (`report.figures: [{kind: reliability}]`, Guo et al. 2017): the test
set's accuracy against confidence per cell, before and after temperature scaling.

A run logs its test set's reliability bins (count, sum of confidences, sum of correct, per
confidence bin: `suite.calibration`); a cell's seeds are pooled exactly by summing them, and
the pooled bins give the points (a bin's accuracy against its mean confidence) and the ECE in
the panel's title. A diagonal is perfect calibration: points below it are over-confident.

Owns: pooling a cell's runs (`pool`), the figure (`figure`, `draw`) and its caption. Must not:
read or write the tracking store (`suite.report.documents` reads the runs' bins), or write
files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from suite.calibration import BINS, ece_of
from suite.report.aggregate import CellRow
from suite.report.figure_spec import ReliabilityFigure
from suite.report.figures import _legend, _png, _style

BEFORE, AFTER = "#c44e52", "#4c72b0"  # unscaled, temperature-scaled
SIDES = ("count", "confidence", "correct")


@dataclass(frozen=True)
class Pooled:
    """A cell's test-set reliability bins, summed over its runs."""

    runs: int  # runs pooled
    unscaled: dict[str, np.ndarray]
    scaled: dict[str, np.ndarray] | None  # runs with a validation split only
    temperature: float  # the runs' fitted temperatures' mean (nan without scaling)

    @property
    def ece(self) -> float:
        return ece_of(self.unscaled)

    @property
    def ece_scaled(self) -> float:
        return ece_of(self.scaled) if self.scaled is not None else math.nan


def pool(documents: dict[str, list[dict[str, Any]]]) -> dict[str, Pooled]:
    """Cell hash -> its runs' `reliability.json` documents pooled (bins summed)."""
    out = {}
    for cell_hash, runs in documents.items():
        scaled = [d["scaled"] for d in runs if "scaled" in d]
        temperatures = [float(d["temperature"]) for d in runs if "temperature" in d]
        out[cell_hash] = Pooled(
            runs=len(runs),
            unscaled=_summed([d["unscaled"] for d in runs]),
            scaled=_summed(scaled) if scaled else None,
            temperature=float(np.mean(temperatures)) if temperatures else math.nan,
        )
    return out


def _summed(bins: list[dict[str, list[float]]]) -> dict[str, np.ndarray]:
    return {side: np.sum([np.asarray(b[side], float) for b in bins], axis=0) for side in SIDES}


def figure(
    pooled: dict[str, Pooled], cells: Sequence[CellRow], spec: ReliabilityFigure, study: str
) -> Figure | None:
    """One panel per cell with pooled bins, in table order (the best `spec.top` of them):
    the points before scaling and, for cells with a validation split, after it."""
    shown = [c for c in cells if c.cell_hash in pooled][: spec.top]
    if not shown:
        return None
    ncols = min(spec.columns, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    with _style():
        drawn = Figure(figsize=(3.3 * ncols + 2.6, 3.3 * nrows + 0.9), layout="constrained")
        FigureCanvasAgg(drawn)
        axes = drawn.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
        for ax, cell in zip(axes.flat, shown, strict=False):
            _panel(ax, cell, pooled[cell.cell_hash])
        for ax in list(axes.flat)[len(shown) :]:
            ax.set_visible(False)
        drawn.supxlabel("confidence (top softmax probability)")
        drawn.supylabel("accuracy")
        title = spec.title or "test-set reliability, seeds pooled"
        drawn.suptitle(f"{study}: {title}", fontsize="large")
        _legend(drawn, _handles(any(pooled[c.cell_hash].scaled is not None for c in shown)))
    return drawn


def draw(
    pooled: dict[str, Pooled], cells: Sequence[CellRow], spec: ReliabilityFigure, study: str
) -> bytes | None:
    """`figure` as PNG bytes; None when no cell has bins."""
    drawn = figure(pooled, cells, spec, study)
    return _png(drawn) if drawn is not None else None


def _panel(ax: Axes, cell: CellRow, pooled: Pooled) -> None:
    ax.plot([0, 1], [0, 1], color="0.45", ls="--", lw=1.0, zorder=1)
    _points(ax, pooled.unscaled, BEFORE)
    title = f"ECE {pooled.ece:.3f}"
    if pooled.scaled is not None:
        _points(ax, pooled.scaled, AFTER)
        title += f" → {pooled.ece_scaled:.3f} (T {pooled.temperature:.2f})"
    runs = f"{pooled.runs} seed" + ("s" if pooled.runs != 1 else "")
    ax.set_title(f"{cell.figure_label} ({runs})\n{title}", fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")


def _points(ax: Axes, bins: dict[str, np.ndarray], colour: str) -> None:
    """A bin's accuracy at its mean confidence, the marker's area its share of the images."""
    count = bins["count"]
    kept = count > 0
    confidence = bins["confidence"][kept] / count[kept]
    accuracy = bins["correct"][kept] / count[kept]
    share = count[kept] / count.sum()
    ax.plot(confidence, accuracy, color=colour, lw=1.4, zorder=2)
    ax.scatter(confidence, accuracy, s=12 + 240 * share, color=colour, alpha=0.8, zorder=3)


def _handles(scaled: bool) -> list[Artist]:
    handles: list[Artist] = [
        Line2D([], [], color=BEFORE, marker="o", lw=1.4, label="before scaling")
    ]
    if scaled:
        handles.append(
            Line2D([], [], color=AFTER, marker="o", lw=1.4, label="after temperature scaling")
        )
    handles += [
        Line2D([], [], color="0.45", ls="--", lw=1.0, label="perfect calibration"),
        Line2D([], [], color="0.3", marker="o", ls="none", label="area: share of images"),
    ]
    return handles


def caption(pooled: dict[str, Pooled], finished: int) -> str:
    """What the figure shows, and how many of the `finished` runs it could not pool."""
    text = (
        f"Test-set reliability per cell, seeds pooled by summing their bins ({BINS} "
        "equal-width bins of the top label's confidence): each point is a bin's accuracy "
        "against its mean confidence, its area the bin's share of the images; below the "
        "diagonal is over-confident. Red: the network's softmax; blue: after temperature "
        "scaling (T fitted per run on the validation split; the title's T is the seeds' "
        "mean). The titles' ECE is the pooled bins'."
    )
    missing = finished - sum(p.runs for p in pooled.values())
    if missing > 0:
        text += (
            f" {missing} of {finished} finished runs {'has' if missing == 1 else 'have'} no "
            "reliability bins (mse-loss runs, or runs logged before the suite measured "
            f"calibration) and {'is' if missing == 1 else 'are'} left out."
        )
    return text
