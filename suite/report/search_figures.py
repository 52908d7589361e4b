"""A search's figures: every run on the map of two settings (`{kind: scatter}`) and the best
objective so far against trials and against epochs trained.

Each function returns PNG bytes (None when there is nothing to draw) and draws only what the
runs logged or `search` derived.

Owns: how the scatter looks (finished runs coloured by a metric, the best starred, a search's
pruned trials hollow and uncoloured: their metrics are an early epoch's) and how the
best-so-far figure looks (`best_so_far`). Must not: read the store, derive a number
(`search`, `aggregate`), or write files.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from suite.report.aggregate import LOWER_IS_BETTER
from suite.report.colours import colours
from suite.report.extra import _axis_label, _is_number, metric_label
from suite.report.figure_spec import ScatterFigure
from suite.report.figures import _legend, _png, _style

PRUNED_EDGE = "0.35"  # a pruned trial's hollow marker: grey, outside the colour scale


def scatter(
    spec: ScatterFigure,
    used: pd.DataFrame,
    values: dict[str, dict[str, Any]],
    study: str,
    pruned: pd.DataFrame | None = None,
) -> bytes | None:
    """One point per run at (`x`, `y`) coloured by its `color` metric, the best run starred;
    a search's `pruned` runs hollow at their points, apart from the colour scale."""
    points = _placed(used, values, spec).dropna(subset=[spec.color])
    hollow = _placed(pruned, values, spec) if pruned is not None else points.iloc[:0]
    if points.empty and hollow.empty:
        return None
    with _style():
        figure = Figure(figsize=(8.6 if len(hollow) else 8.0, 6.0), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        if len(hollow):
            ax.scatter(
                hollow["x"].astype(float),
                hollow["y"].astype(float),
                s=46,
                facecolors="none",
                edgecolors=PRUNED_EDGE,
                linewidths=1.0,
            )
        handles = _coloured(figure, ax, points, spec) if len(points) else []
        if spec.log_x:
            ax.set_xscale("log")
        if spec.log_y:
            ax.set_yscale("log")
        ax.set_xlabel(_axis_label(spec.x) + (" (log scale)" if spec.log_x else ""))
        ax.set_ylabel(_axis_label(spec.y) + (" (log scale)" if spec.log_y else ""))
        if len(hollow):
            handles += [
                _marker(f"finished ({len(points)})", face="0.55"),
                _marker(f"pruned ({len(hollow)}): hollow, not coloured", face="none"),
            ]
        # below the axes: a legend inside would hide runs
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles),
            frameon=False,
            fontsize="small",
        )
        title = spec.title or f"{metric_label(spec.color)} by {spec.x} and {spec.y}"
        count = f"{len(points)} finished, {len(hollow)} pruned" if len(hollow) else ""
        count = count or f"{len(points)} runs"
        figure.suptitle(f"{study}: {title} ({count})", fontsize="large")
        return _png(figure)


def _placed(runs: pd.DataFrame, values: dict[str, dict[str, Any]], spec: ScatterFigure) -> Any:
    """The runs with numeric `x` and `y` columns from their cells' values."""
    placed = runs.assign(
        x=runs["cell_hash"].map(values[spec.x]), y=runs["cell_hash"].map(values[spec.y])
    ).dropna(subset=["x", "y"])
    if placed.empty:  # an empty column maps to text, which cannot be combined
        return placed
    numeric = placed["x"].map(_is_number).astype(bool) & placed["y"].map(_is_number).astype(bool)
    return placed[numeric]


def _coloured(figure: Figure, ax: Axes, points: pd.DataFrame, spec: ScatterFigure) -> list[Line2D]:
    """The finished runs coloured by their metric, with a colour bar, the best one starred;
    returns the star's legend entry, which names it."""
    colour = points[spec.color].astype(float)
    norm = Normalize(float(colour.min()), float(colour.max()))
    drawn = ax.scatter(
        points["x"].astype(float),
        points["y"].astype(float),
        c=colour,
        cmap="viridis",
        norm=norm,
        s=46,
        edgecolors="0.2",
        linewidths=0.4,
    )
    lower = spec.color in LOWER_IS_BETTER or spec.color.endswith(("_loss", "_seconds"))
    best = points.loc[colour.idxmin() if lower else colour.idxmax()]
    ax.scatter(
        [best["x"]],
        [best["y"]],
        marker="*",
        s=320,
        facecolors="none",
        edgecolors="crimson",
        linewidths=1.6,
        zorder=5,
    )
    figure.colorbar(drawn, ax=ax, label=metric_label(spec.color))
    name = f"best: {best['cell']} ({best[spec.color]:.3f})"
    star = Line2D([], [], linestyle="none", marker="*", markersize=15, label=name)
    star.set_markerfacecolor("none")
    star.set_markeredgecolor("crimson")
    return [star]


def best_so_far(
    progress: pd.DataFrame, study: str, objective: str, order: str = "slot order"
) -> bytes | None:
    """Two panels: the best `objective` of the finished trials so far against the trial
    number, and against the epochs trained by every trial up to it (`search.best_so_far`'s
    frame); each trial's own value as a dot, a pruned one's hollow. `order`: what orders
    the trials, for the axis label."""
    if progress.empty or progress["best"].isna().all():
        return None
    frames = list(dict.fromkeys(progress["frame"]))
    palette = colours(len(frames)) if len(frames) > 1 else ["#1f4e9c"]
    label = metric_label(objective)
    with _style():
        figure = Figure(figsize=(12.0, 4.6), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, 2, sharey=True)
        for frame, colour in zip(frames, palette, strict=True):
            mine = progress[progress["frame"] == frame]
            for ax, x in zip(axes, ("number", "cumulative"), strict=True):
                _progress(ax, mine, x, colour)
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole
        axes[0].set_xlabel(f"trial ({order})")
        axes[1].set_xlabel("epochs trained by all trials so far")
        axes[0].set_ylabel(label)
        axes[0].set_title("against trials", fontsize="medium")
        axes[1].set_title("against epochs trained", fontsize="medium")
        handles: list[Artist] = [
            Line2D(
                [], [], color=c, lw=2, label="best so far" + (f": {f}" if len(frames) > 1 else "")
            )
            for f, c in zip(frames, palette, strict=True)
        ]
        handles += [_marker("finished trial", face="0.55")]
        if progress["pruned"].any():
            handles += [_marker("pruned trial, at the\nepoch it was pruned", face="none")]
        _legend(figure, handles)
        figure.suptitle(f"{study}: best {label} so far", fontsize="large")
        return _png(figure)


def _progress(ax: Axes, mine: pd.DataFrame, x: str, colour: Any) -> None:
    """One frame's best-so-far step line and its trials' dots on one panel."""
    finished, pruned = mine[~mine["pruned"]], mine[mine["pruned"]]
    ax.step(mine[x], mine["best"], where="post", color=colour, lw=2, zorder=3)
    ax.scatter(finished[x], finished["value"], s=22, color="0.55", zorder=2)
    ax.scatter(
        pruned[x], pruned["value"], s=22, facecolors="none", edgecolors=PRUNED_EDGE, zorder=2
    )


def _marker(label: str, face: str) -> Line2D:
    """A legend entry for a round marker, filled (`face` a colour) or hollow (`none`)."""
    return Line2D(
        [],
        [],
        linestyle="none",
        marker="o",
        markersize=7,
        markerfacecolor=face,
        markeredgecolor=PRUNED_EDGE if face == "none" else "0.2",
        label=label,
    )
