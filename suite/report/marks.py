"""How a mean curve shows the seeds behind it: thinner where fewer seeds reach an epoch, the
count where it drops, and a mark where each early-stopped run ended.

Runs of one cell can end at different epochs (`train.early_stopping`). `aggregate.curves`
averages the seeds each epoch has (`n` of the cell's `runs`); a mean of fewer seeds than the
rest of the line must not pass for the same thing, so from the first such epoch on the line
is drawn thinner and lighter, and each drop in the count is labelled (`n=3 of 5`). Each run
that stopped early gets a hollow circle in its cell's colour at its last epoch, on its own
curve. A cell whose runs all run to the end is drawn exactly as before.

Owns: the mean line's look by seed count (`mean_line`), the count labels, their placement
clear of one another and their omission where more than three cells share an axes
(`count_labels`, `place_counts`, `declutter`), the stop marks (`stop_marks`), and their
legend entries (`handles`). Must not: compute numbers (`aggregate`, `stopping`), read or
write the tracking store, or encode or write figures (`figures` does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation

FEWER, COUNT, STOP = "fewer-seeds", "seed-count", "stop-marks"  # artists' gids
FEWER_WIDTH, FEWER_ALPHA = 0.45, 0.75  # of the full line's width; opacity
CROWD = 3  # the most cells whose counts one axes labels
STOP_LOOK: dict[str, Any] = {"marker": "o", "mfc": "white", "ms": 5.0, "mew": 1.4, "ls": "none"}


def full(line: pd.DataFrame) -> np.ndarray:
    """Per epoch of `line` (one cell's curve, by epoch): whether every run of the cell has it."""
    if "runs" not in line:
        return np.ones(len(line), dtype=bool)
    return (line["n"] >= line["runs"]).to_numpy()


def mean_line(
    ax: Axes,
    line: pd.DataFrame,
    colour: Any,
    style: Any,
    width: float,
    label: str | None = None,
) -> None:
    """One cell's mean curve (`aggregate.curves` rows, sorted by epoch): full width while
    every seed contributes, thinner and lighter (joined to it) where fewer do."""
    x, y = line["epoch"].to_numpy(float), line["mean"].to_numpy(float)
    whole = full(line)
    ax.plot(x, np.where(whole, y, np.nan), color=colour, linestyle=style, lw=width, label=label)
    if whole.all():
        return
    fewer = ~whole
    joined = fewer | np.r_[fewer[1:], False] | np.r_[False, fewer[:-1]]
    ax.plot(
        x,
        np.where(joined, y, np.nan),
        color=colour,
        linestyle=style,
        lw=width * FEWER_WIDTH,
        alpha=FEWER_ALPHA,
        gid=FEWER,
    )


def count_labels(ax: Axes, line: pd.DataFrame, colour: Any) -> None:
    """`n=3 of 5` on the line at each epoch where the count of seeds drops (placed, and
    thinned out where they would collide, by `place_counts` once the axes are final)."""
    n, runs = line["n"].to_numpy(), line["runs"].to_numpy() if "runs" in line else None
    if runs is None:
        return
    previous = runs[0] if len(runs) else 0
    for epoch, mean, count, total in zip(line["epoch"], line["mean"], n, runs, strict=True):
        if count < previous and count < total:
            text = ax.annotate(
                f"n={count} of {total}",
                (epoch, mean),
                xytext=(0, 5),
                textcoords="offset points",
                rotation=90,
                ha="center",
                fontsize="small",
                color=colour,
                gid=COUNT,
                annotation_clip=True,
            )
            text.set_in_layout(False)
        previous = count


def stop_marks(ax: Axes, points: pd.DataFrame, colour: Any) -> None:
    """A hollow circle at each stopped run's last epoch, on its own curve (`points`:
    `stopping.stop_points` rows of one cell and metric)."""
    if points.empty:
        return
    ax.plot(
        points["epoch"], points["value"], color=colour, mec=colour, zorder=4, gid=STOP, **STOP_LOOK
    )


def declutter(figure: Figure, most: int = CROWD) -> None:
    """Counts off on an axes where more than `most` cells' counts would crowd it (one axis
    for every cell): their thinner lines and stop marks still say where fewer seeds remain."""
    for ax in figure.axes:
        labels = [t for t in ax.texts if t.get_gid() == COUNT]
        if len({to_hex(t.get_color()) for t in labels}) > most:
            for label in labels:
                label.remove()


def place_counts(figure: Figure) -> None:
    """Count labels placed once the layout is final: upright, centred on their epoch, below
    the line in an axes' upper half and above it in the lower half; where a label already
    placed is in the way, on the line's other side, then past the first label's length
    (the latest drop, the fewest seeds, is placed first); hidden where no place is clear."""
    if not any(t.get_gid() == COUNT for ax in figure.axes for t in ax.texts):
        return  # no layout pass: a figure without counts is drawn exactly as before
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    points = 72 / figure.dpi
    for ax in figure.axes:
        labels = [t for t in ax.texts if isinstance(t, Annotation) and t.get_gid() == COUNT]
        labels.sort(key=lambda t: -float(t.xy[0]))
        kept: list[Any] = []
        inside = ax.bbox.padded(1)
        for label in labels:
            _, fraction = ax.transAxes.inverted().transform(ax.transData.transform(label.xy))
            side = -1 if fraction > 0.5 else 1
            length = label.get_window_extent(renderer).height * points
            for dy in [s * (5 + (length + 8) * far) for far in (0, 1) for s in (side, -side)]:
                label.xyann = (0, dy)
                label.set_verticalalignment("bottom" if dy > 0 else "top")
                box = label.get_window_extent(renderer).padded(4)
                clear = not any(box.overlaps(other) for other in kept)
                if clear and inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1):
                    kept.append(box)
                    break
            else:
                label.set_visible(False)


def handles(figure: Figure) -> list[Artist]:
    """Legend entries for what the figure has: thinner stretches (with their counts), stops."""
    lines = [line for ax in figure.axes for line in ax.lines]
    fewer = any(x.get_gid() == FEWER for x in lines)
    stops = any(x.get_gid() == STOP for x in lines)
    counts = any(t.get_gid() == COUNT for ax in figure.axes for t in ax.texts)
    out: list[Artist] = []
    if fewer:
        label = "thinner: mean of fewer seeds" + ("\n(n=3 of 5 where it drops)" if counts else "")
        out.append(
            Line2D([], [], color="0.25", lw=1.8 * FEWER_WIDTH, alpha=FEWER_ALPHA, label=label)
        )
    if stops:
        label = "a run stopped early\n(its last epoch)"
        out.append(Line2D([], [], color="0.25", mec="0.25", label=label, **STOP_LOOK))
    return out
