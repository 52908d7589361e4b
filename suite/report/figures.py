"""Figures as PNG bytes, drawn with seaborn's styles on matplotlib's Agg canvas.

Figures are built on `matplotlib.figure.Figure` rather than through pyplot, so writing a report
never changes the caller's backend or global figure state (a notebook keeps working).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.typing import LineStyleType

from suite.report.aggregate import CellRow

MAX_COLUMNS = 4
DPI = 150
LINES: dict[str, tuple[LineStyleType, str]] = {
    "train_accuracy": ("-", "train"),
    "test_accuracy": ("--", "test"),
}


def accuracy_curves(curves: pd.DataFrame, cells: Sequence[CellRow], title: str) -> bytes:
    """Train (solid) and test (dashed) accuracy over epochs, one facet per cell.

    Args:
        curves: `aggregate.curves` output (mean and std over seeds per cell, metric, epoch).
        cells: the cells in table order; those without curves are left out.
        title: the figure's title.

    Returns:
        The figure as PNG bytes.
    """
    shown = [c for c in cells if c.cell_hash in set(curves["cell_hash"])]
    if not shown:
        raise ValueError("no curves to draw")
    nrows = math.ceil(len(shown) / MAX_COLUMNS)
    ncols = math.ceil(len(shown) / nrows)  # 5 cells: 3 + 2 facets, not 4 + 1
    palette = sns.color_palette("colorblind" if len(shown) <= 10 else "husl", len(shown))

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        figure = Figure(figsize=(3.6 * ncols + 2.2, 2.8 * nrows + 1.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for ax, cell, colour in zip(axes.flat, shown, palette, strict=False):
            mine = curves[curves["cell_hash"] == cell.cell_hash]
            for metric, (style, _) in LINES.items():
                line = mine[mine["metric"] == metric].sort_values("epoch")
                ax.plot(line["epoch"], line["mean"], linestyle=style, color=colour, lw=1.8)
                # one standard deviation over seeds; nothing is drawn for a single seed
                low = (line["mean"] - line["std"]).clip(lower=0.0)
                high = (line["mean"] + line["std"]).clip(upper=1.0)
                ax.fill_between(line["epoch"], low, high, color=colour, alpha=0.15, lw=0)
            seeds = f"{cell.done} seed" + ("s" if cell.done != 1 else "")
            ax.set_title(f"{cell.label}  ({seeds})", fontsize="medium")
        axes.flat[0].set_ylim(0.0, 1.02)  # shared: the whole accuracy range, comparable at sight
        axes.flat[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        for index, ax in enumerate(axes.flat):
            if index >= len(shown):
                ax.set_visible(False)
                # the facet above an empty slot is the bottom of its column: label its x axis
                axes.flat[index - ncols].tick_params(labelbottom=True)

        figure.supxlabel("epoch")
        figure.supylabel("accuracy")
        figure.suptitle(title, fontsize="large")
        handles: list[Artist] = [
            Line2D([], [], color="0.25", linestyle=style, lw=1.8, label=label)
            for style, label in LINES.values()
        ]
        handles.append(Patch(color="0.25", alpha=0.15, label="± 1 std over seeds"))
        figure.legend(handles=handles, loc="outside right upper", frameon=False)

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
