"""Figures as PNG bytes, drawn with seaborn's styles on matplotlib's Agg canvas.

Figures are built on `matplotlib.figure.Figure` rather than through pyplot, so writing a report
never changes the caller's backend or global figure state (a notebook keeps working).

Every figure gives a cell the same colour (`palette`, in study order), titles its axes with
units, and draws the 95% intervals `aggregate` computed: nothing is re-derived here.

Owns: the per-cell figures (the views of `report.metrics`, `VIEWS`, and the final gap chart),
each cell's colour (`palette`), and what every figure of the report shares: the seaborn style,
the legend right of the axes, the band's look, early stops' marks on a cell's curves (`_stops`,
drawn by `marks`) and the PNG encoding (`extra` and `cures` use them too).
Must not: read or write the tracking store, compute intervals (`aggregate`), or write files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter
from matplotlib.typing import ColorType, LineStyleType

from suite.report import marks
from suite.report.aggregate import CellRow
from suite.report.colours import colours as qualitative

DPI = 150
BAND_ALPHA = 0.18
BAND_LABEL = "95% interval over seeds"


@dataclass(frozen=True)
class View:
    """A per-epoch view of the report (`report.metrics` names them).

    `lines` maps the metrics drawn to their line style and legend label. A view with several
    lines is drawn as one facet per cell; a view with one line puts all cells on one axis.
    """

    name: str
    title: str
    ylabel: str
    lines: dict[str, tuple[LineStyleType, str]]
    caption: str
    limits: tuple[float, float] | None = None
    log: bool = False
    zero_line: bool = False

    @property
    def faceted(self) -> bool:
        return len(self.lines) > 1


VIEWS = {
    v.name: v
    for v in (
        View(
            "accuracy",
            "train (solid) and test (dashed) accuracy",
            "accuracy (fraction correct)",
            {
                "train_accuracy": ("-", "train"),
                "test_accuracy": ("--", "test"),
                "val_accuracy": (":", "validation"),
            },
            "Accuracy per cell over epochs: train solid, test dashed (validation dotted when "
            "the study has a validation split); line: mean over seeds, band: 95% interval.",
            limits=(0.0, 1.02),
        ),
        View(
            "loss",
            "train (solid) and test (dashed) loss",
            "data loss (log scale)",
            {
                "train_loss": ("-", "train"),
                "test_loss": ("--", "test"),
                "val_loss": (":", "validation"),
            },
            "Data loss (without the regularisation penalty) per cell over epochs, log scale: "
            "train solid, test dashed; a test loss rising while the train loss falls is "
            "overfitting. Line: mean over seeds, band: 95% interval.",
            log=True,
        ),
        View(
            "gap",
            "generalisation gap (train − test accuracy)",
            "gap (accuracy points, fraction)",
            {"gap": ("-", "gap")},
            "Train minus test accuracy over epochs, all cells on one axis; line: mean over "
            "seeds, band: 95% interval. Lower is less overfitting.",
            zero_line=True,
        ),
        View(
            "weight_norm",
            "weight norm (L2 of all kernels)",
            "‖W‖₂ over all kernels",
            {"weight_norm": ("-", "weight norm")},
            "L2 norm of all kernel weights over epochs: weight decay's mechanism is to keep "
            "it small. Line: mean over seeds, band: 95% interval.",
        ),
        View(
            "validation",
            "validation (solid) and train (dashed) accuracy",
            "accuracy (fraction correct)",
            {"val_accuracy": ("-", "validation"), "train_accuracy": ("--", "train")},
            "Accuracy per cell over epochs: validation solid, train dashed (the textbook's "
            "search figure); line: mean over seeds, band: 95% interval.",
            limits=(0.0, 1.02),
        ),
        View(
            "reg_loss",
            "regularisation penalty",
            "penalty added to the loss",
            {"reg_loss": ("-", "penalty")},
            "The regularisation term (weight decay, L1) added to the training loss over "
            "epochs; line: mean over seeds, band: 95% interval.",
        ),
        View(
            "label_noise",
            "clean train accuracy (solid) and memorized noise (dashed)",
            "fraction of the training images",
            {
                "train_clean_accuracy": ("-", "clean images"),
                "memorized": ("--", "corrupted images"),
            },
            "With label noise: accuracy on the training images whose labels are clean "
            "(solid), and the share of corrupted ones predicted as their corrupted label "
            "(dashed): a network fits the clean labels first and memorizes the noise later. "
            "Line: mean over seeds, band: 95% interval.",
            limits=(0.0, 1.02),
        ),
        View(
            "calibration",
            "test (dashed) and validation (dotted) calibration error",
            "expected calibration error",
            {"test_ece": ("--", "test"), "val_ece": (":", "validation")},
            "Expected calibration error per cell over epochs (cross-entropy runs): the "
            "gap between confidence and accuracy over 15 equal-width confidence bins of "
            "the top label, weighted by the bins' shares; 0 is calibrated. Test dashed, "
            "validation dotted; line: mean over seeds, band: 95% interval.",
        ),
    )
}


def palette(cells: Sequence[CellRow]) -> dict[str, ColorType]:
    """One colour per cell, by study order, the same in every figure of a report
    (`colours.PALETTE`: distinct hues for up to 12 cells)."""
    ordered = sorted(cells, key=lambda c: c.order)
    return dict(zip([c.cell_hash for c in ordered], qualitative(len(ordered)), strict=True))


def curves_figure(
    view: View,
    curves: pd.DataFrame,
    cells: Sequence[CellRow],
    colours: dict[str, ColorType],
    study: str,
    columns: int = 4,
    stops: pd.DataFrame | None = None,
) -> bytes | None:
    """One per-epoch view as PNG bytes; None when no cell has any of its metrics.

    Args:
        view: what to draw (`VIEWS`).
        curves: `aggregate.curves` output: mean and interval per cell, metric and epoch,
            over the seeds each epoch has (thinner, with the count, where fewer do).
        cells: the cells in figure order; those without the view's metrics are left out.
        colours: `palette` output.
        study: the study's name, for the title.
        columns: facets per row, for a faceted view.
        stops: `stopping.stop_points`: where runs stopped early, marked on their curves.
    """
    mine = curves[curves["metric"].isin(list(view.lines))]
    present = set(mine["cell_hash"])
    shown = [c for c in cells if c.cell_hash in present]
    if not shown:
        return None
    lines = {m: s for m, s in view.lines.items() if m in set(mine["metric"])}
    if view.faceted:
        nrows = math.ceil(len(shown) / columns)
        ncols = math.ceil(len(shown) / nrows)  # 5 cells in rows of 4: 3 + 2 facets, not 4 + 1
        size = (3.6 * ncols + 2.2, 2.8 * nrows + 1.0)
    else:
        nrows = ncols = 1
        size = (9.5, 4.8)
    with _style():
        figure = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        alpha = BAND_ALPHA if view.faceted else BAND_ALPHA * min(1.0, 4 / len(shown))
        for index, cell in enumerate(shown):
            ax = axes.flat[index] if view.faceted else axes.flat[0]
            cell_curves = mine[mine["cell_hash"] == cell.cell_hash]
            _cell_lines(ax, view, cell, cell_curves, lines, colours[cell.cell_hash], alpha, stops)
        first = axes.flat[0]
        first.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        if view.limits is not None:
            first.set_ylim(*view.limits)  # shared: the whole range, comparable at sight
        if view.log and (mine["mean"] > 0).all():
            first.set_yscale("log")
            # unlabelled minor ticks: labels on every minor tick of every facet crowd the axis
            # and cost seconds of layout
            first.yaxis.set_minor_formatter(NullFormatter())
        if view.zero_line:
            for ax in axes.flat:
                ax.axhline(0.0, color="0.4", lw=0.8, zorder=0)
        if view.faceted:
            for index, ax in enumerate(axes.flat):
                if index >= len(shown):
                    ax.set_visible(False)
                    # the facet above an empty slot is the bottom of its column: label its x axis
                    axes.flat[index - ncols].tick_params(labelbottom=True)
            figure.supxlabel("epoch")
            figure.supylabel(view.ylabel)
            handles: list[Artist] = [
                Line2D([], [], color="0.25", linestyle=style, lw=1.8, label=label)
                for style, label in lines.values()
            ]
        else:
            first.set_xlabel("epoch")
            first.set_ylabel(view.ylabel)
            handles = list(first.get_legend_handles_labels()[0])
        handles.append(Patch(color="0.25", alpha=BAND_ALPHA, label=BAND_LABEL))
        marks.declutter(figure)
        handles += marks.handles(figure)
        figure.suptitle(f"{study}: {view.title}, mean over seeds", fontsize="large")
        _legend(figure, handles)
        marks.place_counts(figure)
        return _png(figure)


def final_gap_figure(
    done: pd.DataFrame,
    cells: Sequence[CellRow],
    colours: dict[str, ColorType],
    study: str,
) -> bytes | None:
    """Final gap per cell: every seed's value as a point, the mean with its 95% interval.

    Args:
        done: the runs the numbers use (`aggregate.finished_runs`).
        cells: the cells, top to bottom; their `final_gap` stats give mean and interval.
    """
    shown = [c for c in cells if "final_gap" in c.stats]
    if not shown:
        return None
    points = done[done["cell_hash"].isin([c.cell_hash for c in shown])].dropna(subset=["final_gap"])
    order = [c.cell_hash for c in shown]
    labels = [c.figure_label for c in shown]
    with _style():
        figure = Figure(figsize=(8.5, 1.0 + 0.55 * len(shown)), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        sns.stripplot(
            data=points,
            x="final_gap",
            y="cell_hash",
            hue="cell_hash",
            order=order,
            hue_order=order,
            palette={h: colours[h] for h in order},
            jitter=0.12,
            size=6,
            alpha=0.75,
            legend=False,
            ax=ax,
        )
        for y, cell in enumerate(shown):
            stat = cell.stats["final_gap"]
            if not math.isnan(stat.low):
                ax.errorbar(
                    stat.mean,
                    y,
                    xerr=[[stat.mean - stat.low], [stat.high - stat.mean]],
                    fmt="none",
                    ecolor="0.15",
                    elinewidth=1.6,
                    capsize=5,
                    zorder=3,
                )
            ax.plot(stat.mean, y, marker="D", color="0.15", ms=7, zorder=4, ls="none")
        ax.axvline(0.0, color="0.4", lw=0.8, zorder=0)
        ax.set_yticks(range(len(shown)), labels)
        ax.set_ylabel("")
        ax.set_xlabel("final gap: train − test accuracy (fraction)")
        handles: list[Artist] = [
            Line2D([], [], color="0.5", marker="o", ls="none", label="one seed"),
            Line2D([], [], color="0.15", marker="D", ls="-", label="mean, 95% interval"),
        ]
        figure.suptitle(f"{study}: final gap per cell", fontsize="large")
        _legend(figure, handles)
        return _png(figure)


def _cell_lines(
    ax: Axes,
    view: View,
    cell: CellRow,
    cell_curves: pd.DataFrame,
    lines: dict[str, tuple[LineStyleType, str]],
    colour: ColorType,
    alpha: float,
    stops: pd.DataFrame | None,
) -> None:
    """A cell's lines of a view with their bands, seed counts and stops; a facet's title."""
    for number, (metric, (style, _)) in enumerate(lines.items()):
        line = cell_curves[cell_curves["metric"] == metric].sort_values("epoch")
        label = cell.figure_label if not view.faceted else None
        _line_with_band(ax, line, colour, style, label, view, alpha)
        _stops(ax, stops, cell.cell_hash, metric, colour)
        if number == 0:  # the count is the same for every line of a cell
            marks.count_labels(ax, line, colour)
    if view.faceted:
        seeds = f"{cell.done} seed" + ("s" if cell.done != 1 else "")
        stopped = cell.stats.get("stopped_epoch")
        seeds += f", {stopped.n} stopped" if stopped is not None else ""
        # a long name and its counts would run into the next facet's title: two lines
        joint = "\n" if len(cell.figure_label) + len(seeds) > 34 else "  "
        ax.set_title(f"{cell.figure_label}{joint}({seeds})", fontsize="medium")


def _line_with_band(
    ax: Axes,
    line: pd.DataFrame,
    colour: ColorType,
    style: LineStyleType,
    label: str | None,
    view: View,
    alpha: float,
) -> None:
    marks.mean_line(ax, line, colour, style, 1.8, label)
    low, high = line["low"].to_numpy(float), line["high"].to_numpy(float)
    if view.limits is not None:
        low, high = np.clip(low, *view.limits), np.clip(high, *view.limits)
    if view.log and (line["mean"] > 0).all():
        # a band reaching zero or below cannot be drawn on a log axis: floor it at the mean's scale
        low = np.where(low > 0, low, line["mean"].to_numpy(float) / 10)
    # where a single seed has the epoch the bounds are NaN and nothing is drawn
    ax.fill_between(line["epoch"], low, high, color=colour, alpha=alpha, lw=0)


def _stops(ax: Axes, stops: pd.DataFrame | None, cell: str, metric: str, colour: ColorType) -> None:
    """The marks of a cell's runs that stopped early, on their `metric` curves."""
    if stops is not None and not stops.empty:
        marks.stop_marks(
            ax, stops[(stops["cell_hash"] == cell) & (stops["metric"] == metric)], colour
        )


def _legend(figure: Figure, handles: list[Artist]) -> None:
    """One legend for the whole figure, in a column right of the axes, vertically centred:
    clear of the title above and the axis label below, never over the data."""
    figure.legend(handles=handles, loc="outside right center", frameon=False)


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        yield


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
