"""The model-size figure (`{kind: size}`): final metrics against the network's size.

Double descent (Belkin et al. 2019, arXiv:1812.11118; Nakkiran et al. 2019,
arXiv:1912.02292) is read off a final metric against the number of parameters: x is each
cell's `n_params` (the trainable parameters its runs logged) on a log scale, y its mean over
seeds with the 95% interval, cells of one `hue` joined in size order. The interpolation
threshold, where a network has about as many parameters as the training set has values to
fit, training images x classes (n·K, Belkin et al.'s figure 3), is a labelled vertical line;
cells trained on different numbers of images get a line each.

Owns: how the size figure looks (`draw`, `figure`), its caption (`CAPTION`) and the threshold of each
cell (`thresholds`, from its runs' `n_train` and `n_classes` tags). Must not: read or write
the tracking store (`write` hands over the runs), compute seed statistics (`aggregate`), or
write files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from suite.report import groups
from suite.report.aggregate import CellRow
from suite.report.extra import _colours, _intervals, metric_label
from suite.report.figure_spec import SizeFigure
from suite.report.figures import _legend, _png, _style

THRESHOLD_COLOUR = "0.35"
CAPTION = (
    "Mean over seeds against the network's trainable parameters (n_params, log scale) with "
    "95% intervals, one line per {hue}; the dashed vertical line is the interpolation "
    "threshold, training images × classes (n·K)."
)


def thresholds(runs: pd.DataFrame) -> dict[str, int]:
    """Each cell's interpolation threshold, n_train x n_classes, by cell hash, from the
    size tags of its runs (cells whose runs lack them have none)."""
    if runs.empty or not {"n_train", "n_classes"} <= set(runs.columns):
        return {}
    sized = runs.assign(
        n=pd.to_numeric(runs["n_train"], errors="coerce"),
        k=pd.to_numeric(runs["n_classes"], errors="coerce"),
    ).dropna(subset=["n", "k"])
    first = sized.drop_duplicates("cell_hash").set_index("cell_hash")
    return {str(h): int(row.n * row.k) for h, row in first.iterrows()}


def figure(
    spec: SizeFigure,
    cells: Sequence[CellRow],
    values: dict[str, dict[str, Any]],
    runs: pd.DataFrame,
    study: str,
) -> bytes | None:
    """The size figure as PNG bytes (see `draw`); None when there is nothing to draw."""
    with _style():
        drawn = draw(spec, cells, values, runs, study)
        return _png(drawn) if drawn is not None else None


def draw(
    spec: SizeFigure,
    cells: Sequence[CellRow],
    values: dict[str, dict[str, Any]],
    runs: pd.DataFrame,
    study: str,
) -> Figure | None:
    """Each `spec.y` metric (a facet each) against `n_params`, with the interpolation
    threshold; None when no finished cell logged `n_params` and one of the metrics.

    Args:
        spec: the figure as the study asks for it.
        cells: the report's cells, with their seed statistics.
        values: each cell's value of `spec.hue`, by grouping key and cell hash.
        runs: the finished runs (their `n_train` and `n_classes` tags give the threshold).
        study: the study's name, for the title.
    """
    hue = values[spec.hue]
    shown = [
        c for c in cells if c.done and "n_params" in c.stats and any(m in c.stats for m in spec.y)
    ]
    if not shown:
        return None
    size = {c.cell_hash: c.stats["n_params"].mean for c in shown}
    hues = groups.ordered({c.cell_hash: hue.get(c.cell_hash) for c in shown}, shown)
    colours = dict(zip(hues, _colours(len(hues)), strict=True))
    by_cell = thresholds(runs)
    lines = sorted({by_cell[c.cell_hash] for c in shown if c.cell_hash in by_cell})
    drawn = Figure(figsize=(4.4 * len(spec.y) + 2.4, 4.4), layout="constrained")
    FigureCanvasAgg(drawn)
    axes = drawn.subplots(1, len(spec.y), squeeze=False).flat
    for ax, metric in zip(axes, spec.y, strict=True):
        for h in hues:
            mine = [c for c in shown if hue.get(c.cell_hash) == h and metric in c.stats]
            mine.sort(key=lambda c: size[c.cell_hash])
            x = np.array([size[c.cell_hash] for c in mine], dtype=float)
            _intervals(ax, x, [c.stats[metric] for c in mine], metric, colours[h], True)
        ax.set_xscale("log")
        for threshold in lines:
            ax.axvline(threshold, color=THRESHOLD_COLOUR, ls="--", lw=1.2)
            # placed in axes coordinates vertically: inside the panel whatever its y range
            ax.text(
                threshold,
                0.98,
                f" n·K = {threshold:,}",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize="small",
                color=THRESHOLD_COLOUR,
            )
        _x_limits(ax, [*size.values(), *lines])
        ax.set_title(metric_label(metric), fontsize="medium")
        ax.set_xlabel("trainable parameters (n_params)")
    title = spec.title or "final metrics against model size"
    drawn.suptitle(f"{study}: {title}", fontsize="large")
    _legend(drawn, _handles(spec, hues, colours, bool(lines)))
    return drawn


def _x_limits(ax: Any, xs: list[float]) -> None:
    """Room around the sizes and thresholds on the log axis (a factor of 1.5 either way),
    so a threshold beyond every network is still drawn."""
    positive = [x for x in xs if x > 0 and math.isfinite(x)]
    if positive:
        ax.set_xlim(min(positive) / 1.5, max(positive) * 1.5)


def _handles(
    spec: SizeFigure, hues: list[Any], colours: dict[Any, Any], threshold: bool
) -> list[Artist]:
    """The legend: a colour per hue value, the threshold's dash, the interval's marker."""
    handles: list[Artist] = [
        Line2D([], [], color=colours[h], marker="o", lw=1.6, label=groups.label(spec.hue, h))
        for h in hues
    ]
    if threshold:
        handles.append(
            Line2D(
                [],
                [],
                color=THRESHOLD_COLOUR,
                ls="--",
                lw=1.2,
                label="interpolation threshold\n(training images × classes)",
            )
        )
    handles.append(
        Line2D([], [], color="0.3", marker="|", ls="none", ms=10, label="95% interval over seeds")
    )
    return handles
