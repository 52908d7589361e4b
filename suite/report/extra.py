"""The figures a study asks for in `report.figures`: curves grouped by settings, final metrics
against a setting, activation histograms and confusion matrices (a search's scatter is
`search_figures`').

Each function returns PNG bytes (None when there is nothing to draw) and draws only numbers
`aggregate` computed or the runs logged; grouping values come from `groups`.

Owns: how each kind of study figure looks (`curves_by`, `versus`, `activations`, `confusion`),
the per-run smoothing of curves (`smoothed`), and the metrics' labels (`metric_label`). Must not: read or write the tracking store or its artifacts (`write` hands
over the runs, curves and documents), compute intervals or differences (`aggregate`), or write
files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter, NullLocator

from suite.metrics import STEP_METRICS
from suite.report import groups, marks
from suite.report.aggregate import CellRow, Stat
from suite.report.colours import colours as qualitative
from suite.report.figure_spec import ConfusionFigure, CurvesFigure, VersusFigure
from suite.report.figures import BAND_ALPHA, BAND_LABEL, _legend, _png, _stops, _style

STYLES = ("-", "--", ":", "-.")
METRIC_LABELS = {
    "batch_loss": "minibatch loss",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "train_accuracy": "train accuracy",
    "test_accuracy": "test accuracy",
    "val_accuracy": "validation accuracy",
    "gap": "gap (train − test accuracy)",
    "weight_norm": "weight norm",
    "reg_loss": "regularisation penalty",
    "final_train_accuracy": "final train accuracy",
    "final_test_accuracy": "final test accuracy",
    "final_val_accuracy": "final validation accuracy",
    "best_val_accuracy": "best validation accuracy",
    "best_test_accuracy": "best test accuracy",
    "final_gap": "final gap (train − test)",
    "test_f1_macro": "test macro F1",
    "test_precision_macro": "test macro precision",
    "test_recall_macro": "test macro recall",
    "final_train_loss": "final train loss",
    "final_test_loss": "final test loss",
    "train_seconds": "training time (s)",
    "n_params": "trainable parameters",
    "best_epoch": "best epoch",
    "stopped_epoch": "epoch stopped at (early stopping)",
    "restored_epoch": "epoch whose weights were kept",
    "test_ece": "test calibration error (ECE)",
    "val_ece": "validation calibration error (ECE)",
    "temperature": "fitted temperature",
    "test_ece_scaled": "test ECE after temperature scaling",
    "test_loss_scaled": "test loss after temperature scaling",
}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def curves_by(
    spec: CurvesFigure,
    curves: pd.DataFrame,
    values: dict[str, dict[str, Any]],
    cells: Sequence[CellRow],
    study: str,
    failures: dict[str, str] | None = None,
    stops: pd.DataFrame | None = None,
) -> bytes | None:
    """Mean curves of `spec.metric`, one line per cell: colour by `hue`, line style by `style`,
    a facet per `facet` value; smoothed by a centred moving average of `spec.smooth` points;
    thinner, with the count, where fewer seeds reach an epoch (`marks`).

    Args:
        values: `groups.cell_values` for each key the figure uses, by key.
        failures: cell hash -> why its runs failed (`diverged at epoch 1`), written into the
            cell's facet, so a cell without a curve is not mistaken for a missing one.
        stops: `stopping.stop_points` of the (smoothed) curves: early stops to mark.
    """
    failures = failures or {}
    mine = curves[curves["metric"] == spec.metric]
    present = set(mine["cell_hash"])
    shown = [
        c
        for c in sorted(cells, key=lambda c: c.order)
        if c.cell_hash in present or (c.cell_hash in failures and c.cell_hash in values[spec.hue])
    ]
    if not shown or mine.empty:
        return None
    look = _curve_look(spec, values, shown)
    ncols = min(spec.columns, len(look.facets))
    nrows = math.ceil(len(look.facets) / ncols)
    size = (3.4 * ncols + 2.6, 2.6 * nrows + 1.0) if spec.facet else (9.5, 5.0)
    log = spec.log_y and bool((mine["mean"] > 0).all())
    with _style():
        figure = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(figure)
        share_x = _same_length(spec, mine, values)
        axes = figure.subplots(nrows, ncols, sharex=share_x, sharey=True, squeeze=False)
        notes: dict[int, list[str]] = {}
        for cell in shown:
            facet = values[spec.facet].get(cell.cell_hash) if spec.facet else None
            ax = axes.flat[look.facets.index(facet)]
            if cell.cell_hash in failures:
                who = groups.text(values[spec.hue].get(cell.cell_hash))
                notes.setdefault(look.facets.index(facet), []).append(
                    f"{who}: {cell.failed} failed ({failures[cell.cell_hash]})"
                )
            line = mine[mine["cell_hash"] == cell.cell_hash].sort_values("epoch")
            if not line.empty:
                colour, style = look.line_of(spec, values, cell.cell_hash)
                _mean_and_band(ax, spec, line, colour, style, log)
                _stops(ax, stops, cell.cell_hash, spec.metric, colour)
                marks.count_labels(ax, line, colour)
        _panels(axes, spec, look.facets, ncols, notes)
        _curve_axes(figure, axes, spec, log)
        title = spec.title or f"{metric_label(spec.metric)} by {spec.hue}"
        figure.suptitle(f"{study}: {title}", fontsize="large")
        marks.declutter(figure)
        _legend(figure, _curve_handles(spec, look) + marks.handles(figure))
        marks.place_counts(figure)
        return _png(figure)


@dataclass(frozen=True)
class _CurveLook:
    """How `curves_by` tells cells apart: a colour per hue value, a dash per style value, a
    panel per facet value (each list in `groups.ordered` order)."""

    hues: list[Any]
    colours: dict[Any, Any]
    styles: list[Any]
    dashes: dict[Any, str]
    facets: list[Any]

    def line_of(
        self, spec: CurvesFigure, values: dict[str, dict[str, Any]], cell: str
    ) -> tuple[Any, str]:
        """A cell's colour and line style."""
        colour = self.colours[values[spec.hue].get(cell)]
        style = self.dashes[values[spec.style].get(cell)] if spec.style else "-"
        return colour, style


def _curve_look(
    spec: CurvesFigure, values: dict[str, dict[str, Any]], shown: Sequence[CellRow]
) -> _CurveLook:
    hues = groups.ordered(values[spec.hue], shown)
    styles = groups.ordered(values[spec.style], shown) if spec.style else [None]
    return _CurveLook(
        hues=hues,
        colours=dict(zip(hues, _colours(len(hues)), strict=True)),
        styles=styles,
        dashes={v: STYLES[i % len(STYLES)] for i, v in enumerate(styles)},
        facets=groups.ordered(values[spec.facet], shown) if spec.facet else [None],
    )


def _same_length(spec: CurvesFigure, mine: pd.DataFrame, values: dict[str, dict[str, Any]]) -> bool:
    """Whether the panels share one x range: panels of different lengths (20 vs 200 epochs)
    each get their own."""
    ends = {
        values[spec.facet].get(h) if spec.facet else None: int(g["epoch"].max())
        for h, g in mine.groupby("cell_hash")
        if h in values[spec.hue]
    }
    return len(set(ends.values())) <= 1


def _mean_and_band(
    ax: Axes, spec: CurvesFigure, line: pd.DataFrame, colour: Any, style: str, log: bool
) -> None:
    """One cell's mean curve and its 95% band over seeds."""
    smooth = line[["mean", "low", "high"]]  # each run smoothed before (`smoothed`)
    marks.mean_line(ax, line, colour, style, 1.6)
    low, high = smooth["low"].to_numpy(float), smooth["high"].to_numpy(float)
    if "accuracy" in spec.metric:  # a band past 0 or 1 is an artefact of few seeds
        low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    if log:
        low = np.where(low > 0, low, smooth["mean"].to_numpy(float) / 10)
    ax.fill_between(line["epoch"], low, high, color=colour, alpha=BAND_ALPHA, lw=0)


def _panels(
    axes: np.ndarray,
    spec: CurvesFigure,
    facets: list[Any],
    ncols: int,
    notes: dict[int, list[str]],
) -> None:
    """Panels past the last facet hidden (the one above shows its x labels), a title per
    facet, and each panel's notes of failed cells."""
    for index, ax in enumerate(axes.flat):
        if index >= len(facets):
            ax.set_visible(False)
            axes.flat[index - ncols].tick_params(labelbottom=True)
        elif spec.facet:
            ax.set_title(groups.label(spec.facet, facets[index]), fontsize="medium")
        for line_no, note in enumerate(notes.get(index, [])):
            ax.text(
                0.03,
                0.5 - 0.1 * line_no,
                note,
                transform=ax.transAxes,
                fontsize="x-small",
                color="crimson",
            )


def _curve_axes(figure: Figure, axes: np.ndarray, spec: CurvesFigure, log: bool) -> None:
    """The y range and scale, and the axis labels (one per figure when faceted)."""
    if "accuracy" in spec.metric:
        axes.flat[0].set_ylim(0.0, 1.02)
    if log:
        axes.flat[0].set_yscale("log")
        axes.flat[0].yaxis.set_minor_formatter(NullFormatter())
    if spec.log_x:
        for ax in axes.flat:
            ax.set_xscale("log")
    step = spec.metric in STEP_METRICS
    xlabel = ("update" if step else "epoch") + (" (log scale)" if spec.log_x else "")
    ylabel = metric_label(spec.metric) + (" (log scale)" if log else "")
    if spec.facet:
        figure.supxlabel(xlabel)
        figure.supylabel(ylabel)
    else:
        axes.flat[0].set_xlabel(xlabel)
        axes.flat[0].set_ylabel(ylabel)


def _curve_handles(spec: CurvesFigure, look: _CurveLook) -> list[Artist]:
    """The legend: a colour per hue value, then a dash per style value (or, when hue and
    style are one key, a coloured dash per value), then the band."""
    colours, dashes = look.colours, look.dashes
    handles: list[Artist] = [
        Line2D([], [], color=colours[h], lw=2.2, label=groups.label(spec.hue, h)) for h in look.hues
    ]
    if spec.style and spec.style != spec.hue:
        handles += [
            Line2D([], [], color="0.3", ls=dashes[v], lw=1.6, label=groups.label(spec.style, v))
            for v in look.styles
        ]
    elif spec.style:
        handles = [
            Line2D([], [], color=colours[h], ls=dashes[h], lw=2.0, label=groups.label(spec.hue, h))
            for h in look.hues
        ]
    handles.append(Patch(color="0.25", alpha=BAND_ALPHA, label=BAND_LABEL))
    return handles


def smoothed(histories: pd.DataFrame, metric: str, window: int) -> pd.DataFrame:
    """`metric`'s points with each run's series smoothed by a centred moving average of
    `window` points, so the band over seeds is the spread of the smoothed curves (not of
    single noisy minibatches)."""
    mine = histories[histories["metric"] == metric].sort_values(["run_id", "epoch"])
    if window <= 1 or mine.empty:
        return mine
    rolled = mine.groupby("run_id")["value"].transform(
        lambda v: v.rolling(window, center=True, min_periods=1).mean()
    )
    return mine.assign(value=rolled)


def versus(
    spec: VersusFigure,
    cells: Sequence[CellRow],
    values: dict[str, dict[str, Any]],
    study: str,
) -> bytes | None:
    """Each `spec.y` metric (a facet each) against `spec.x`: per cell the mean over seeds
    with its 95% interval, cells of one hue joined in x order. A cell without an x value
    (a shared reference such as an unregularised cell) is a dashed horizontal line."""
    xs, hue = values[spec.x], values[spec.hue]
    shown = [c for c in cells if c.done and c.cell_hash in xs]
    if not shown or not any(m in c.stats for c in shown for m in spec.y):
        return None
    placed = [c for c in shown if xs[c.cell_hash] is not None]
    numeric = bool(placed) and all(isinstance(xs[c.cell_hash], float) for c in placed)
    categories = groups.ordered({c.cell_hash: xs[c.cell_hash] for c in placed}, placed)
    hues = groups.ordered({c.cell_hash: hue.get(c.cell_hash) for c in placed}, placed)
    colours = dict(zip(hues, _colours(len(hues)), strict=True))
    references = [c for c in shown if xs[c.cell_hash] is None]
    log = spec.log_x and numeric and all(xs[c.cell_hash] > 0 for c in placed)
    with _style():
        figure = Figure(figsize=(4.4 * len(spec.y) + 2.4, 4.4), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, len(spec.y), squeeze=False).flat
        for ax, metric in zip(axes, spec.y, strict=True):
            for offset, h in enumerate(hues):
                mine = [c for c in placed if hue.get(c.cell_hash) == h and metric in c.stats]
                if numeric:
                    mine.sort(key=lambda c: xs[c.cell_hash])
                    x = np.array([xs[c.cell_hash] for c in mine], dtype=float)
                else:
                    dodge = (offset - (len(hues) - 1) / 2) * 0.12
                    x = np.array([categories.index(xs[c.cell_hash]) + dodge for c in mine])
                stats = [c.stats[metric] for c in mine]
                _intervals(ax, x, stats, metric, colours[h], numeric)
            for index, cell in enumerate(references):
                if metric in cell.stats:
                    ax.axhline(
                        cell.stats[metric].mean, color="0.35", ls=STYLES[1 + index % 3], lw=1.2
                    )
            _x_axis(ax, categories, numeric, log)
            ax.set_title(metric_label(metric), fontsize="medium")
            ax.set_xlabel(_axis_label(spec.x))
        title = spec.title or f"final metrics against {spec.x}"
        figure.suptitle(f"{study}: {title}", fontsize="large")
        _legend(figure, _versus_handles(spec, hues, colours, references, cells))
        return _png(figure)


def _intervals(
    ax: Axes, x: np.ndarray, stats: list[Stat], metric: str, colour: Any, numeric: bool
) -> None:
    """Means at `x` with their 95% intervals, joined by a line when `x` is numeric."""
    mean = np.array([s.mean for s in stats])
    # an accuracy's interval past 0 or 1 is an artefact of few seeds: clip it
    lo, hi = (0.0, 1.0) if "accuracy" in metric else (-math.inf, math.inf)
    low = np.array([s.mean - max(s.low, lo) if not math.isnan(s.low) else 0 for s in stats])
    high = np.array([min(s.high, hi) - s.mean if not math.isnan(s.high) else 0 for s in stats])
    ax.errorbar(
        x,
        mean,
        yerr=[low, high],
        color=colour,
        marker="o",
        ms=5,
        lw=1.6,
        capsize=3,
        ls="-" if numeric else "none",
    )


def _x_axis(ax: Axes, categories: list[Any], numeric: bool, log: bool) -> None:
    """A log scale when asked; a labelled tick per value when the values are few or text."""
    if log:
        ax.set_xscale("log")
    if numeric and len(categories) <= 8:  # few values: tick each one, labelled
        ax.set_xticks(categories, [groups.text(v) for v in categories], minor=False)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelrotation=45, labelsize="small")
    if not numeric:
        ax.set_xticks(range(len(categories)), [groups.text(v) for v in categories])
        ax.tick_params(axis="x", labelrotation=30)


def _versus_handles(
    spec: VersusFigure,
    hues: list[Any],
    colours: dict[Any, Any],
    references: list[CellRow],
    cells: Sequence[CellRow],
) -> list[Artist]:
    """The legend: a colour per hue value, a dash per reference cell, the interval's marker,
    and the cells with no finished run (named, not just left out)."""
    handles: list[Artist] = [
        Line2D([], [], color=colours[h], marker="o", lw=1.6, label=groups.label(spec.hue, h))
        for h in hues
    ]
    handles += [
        Line2D([], [], color="0.35", ls=STYLES[1 + i % 3], lw=1.2, label=f"{c.label} (reference)")
        for i, c in enumerate(references)
    ]
    handles.append(
        Line2D([], [], color="0.3", marker="|", ls="none", ms=10, label="95% interval over seeds")
    )
    lost = [c.label for c in cells if c.failed and not c.done]
    if lost:
        text = "no finished run, not drawn:\n" + "\n".join(lost[:8])
        text += f"\n... and {len(lost) - 8} more" if len(lost) > 8 else ""
        handles.append(Patch(color="none", label=text))
    return handles


STAGES = {
    "probe": "the textbook's probe at initialisation: 1000 standard-normal inputs, 5 layers of 100",
    "network_init": "the MNIST network at initialisation: hidden layers on 1000 test images",
    "network_trained": "the MNIST network after training: hidden layers on 1000 test images",
}


def activations(
    documents: dict[str, list[dict[str, Any]]], cells: Sequence[CellRow], stage: str, study: str
) -> bytes | None:
    """One row per cell, one column per layer: the share of activations per bin, averaged
    over the cell's seeds (`documents`: cell hash -> the runs' `activations.json`)."""
    shown = [c for c in sorted(cells, key=lambda c: c.order) if documents.get(c.cell_hash)]
    if not shown:
        return None
    layers = max(len(d[stage]) for c in shown for d in documents[c.cell_hash])
    with _style():
        figure = Figure(figsize=(2.1 * layers + 2.2, 1.35 * len(shown) + 1.2), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(shown), layers, squeeze=False, sharex="row")
        for row, cell in enumerate(shown):
            runs = documents[cell.cell_hash]
            lo, hi = runs[0]["range"]
            edges = np.linspace(lo, hi, int(runs[0]["bins"]) + 1)
            for layer in range(layers):
                ax = axes[row, layer]
                hists = [d[stage][layer] for d in runs if layer < len(d[stage])]
                if not hists:
                    ax.set_visible(False)
                    continue
                fractions = np.mean([h["fractions"] for h in hists], axis=0)
                ax.stairs(fractions, edges, fill=True, color="#4c72b0", alpha=0.85)
                ax.set_yticks([])
                ax.tick_params(axis="x", labelsize="x-small")
                beyond = float(np.mean([h["beyond"] for h in hists]))
                if beyond >= 0.005:
                    ax.text(
                        0.98,
                        0.92,
                        f"{beyond:.0%} beyond",
                        transform=ax.transAxes,
                        ha="right",
                        va="top",
                        fontsize="x-small",
                        color="0.3",
                    )
                if row == 0:
                    ax.set_title(f"layer {layer + 1}", fontsize="small")
            axes[row, 0].set_ylabel(
                cell.label.replace(",", "\n"),
                fontsize="x-small",
                rotation=0,
                ha="right",
                va="center",
            )
        figure.suptitle(f"{study}: activation histograms, {STAGES[stage]}", fontsize="medium")
        return _png(figure)


def confusion(
    matrices: dict[str, np.ndarray], cells: Sequence[CellRow], spec: ConfusionFigure, study: str
) -> bytes | None:
    """Test-set confusion matrix per cell (rows normalised to recall, summed over seeds), in
    table order, with each cell's most frequent confusion in its title."""
    shown = [c for c in cells if c.cell_hash in matrices][: spec.top]
    if not shown:
        return None
    ncols = min(5, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    with _style():
        figure = Figure(figsize=(2.9 * ncols + 1.4, 3.0 * nrows + 0.9), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(nrows, ncols, squeeze=False)
        drawn = None
        for ax, cell in zip(axes.flat, shown, strict=False):
            counts = matrices[cell.cell_hash].astype(float)
            rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            drawn = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
            off = rates - np.diag(np.diag(rates))
            true, wrong = np.unravel_index(int(np.argmax(off)), off.shape)
            ax.set_title(
                f"{cell.label}\nmost confused: {true}→{wrong} ({off[true, wrong]:.0%})",
                fontsize="x-small",
            )
            ax.set_xticks(range(10))
            ax.set_yticks(range(10))
            ax.tick_params(labelsize="xx-small")
            ax.grid(False)
        for ax in list(axes.flat)[len(shown) :]:
            ax.set_visible(False)
        figure.supxlabel("predicted class")
        figure.supylabel("true class")
        if drawn is not None:
            figure.colorbar(drawn, ax=axes, shrink=0.6, label="share of the true class's images")
        figure.suptitle(
            f"{study}: test-set confusion matrices, summed over seeds", fontsize="large"
        )
        return _png(figure)


def _colours(n: int) -> list[Any]:
    return qualitative(n)  # the report's one palette (per-cell figures use it too)


def _axis_label(key: str) -> str:
    return {"n_train": "training images", "grid": "the cell's own grid value"}.get(key, key)


def _is_number(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)
