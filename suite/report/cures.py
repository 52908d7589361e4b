"""The cures figure (`report.figures: [{kind: cures}]`): every cell at its mean final gap (x)
and mean final test accuracy (y), with 95% intervals over seeds on both axes.

A cure should move a cell left of the baseline (a smaller gap) without moving it down (no
loss of test accuracy). Dashed lines through the baseline's point split the plane, and the
quadrant up and to the left of it (narrower gap, test accuracy not lower) is shaded, so the
cells in it stand out; intervals crossing a line mean seed noise could put the cell on the
other side. A cell that does not learn (`CellRow.learns`) has a small gap for no good reason
and squeezes the others into a corner: it is named in the legend, not drawn.

Every point is labelled with its cell's name. Labels are placed after the layout is fixed,
each at the spot nearest its point (sixteen directions, seven distances) that overlaps the
fewest labels, points and error bars, with a leader line when it sits away from its point:
a dozen or fifteen cells stay readable. adjustText (1.4) was tried instead and read worse: its
forces never settle in a crowd (the result is wherever it is stopped), it left labels on other
cells' points and on the baseline's marker, and nearer another cell's point than their own.

Owns: the figure (`figure`), which cells it draws (`points`), its caption (`caption`) and its
label placement. Must not: compute numbers (the intervals are `aggregate`'s `Stat`s), read or
write the tracking store, or write files.
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
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox
from matplotlib.typing import ColorType

from suite.report.aggregate import CellRow, Stat
from suite.report.figure_spec import CuresFigure
from suite.report.figures import _legend, _png, _style

GAP, TEST = "final_gap", "final_test_accuracy"
CURE_COLOUR = "#1a7f37"  # the shaded quadrant and its words
QUADRANT = "narrower gap, test accuracy not lower than the baseline's"
RINGS = (5.0, 10.0, 18.0, 28.0, 40.0, 54.0, 70.0)  # a label's distances from its point (pt)
# its directions (degrees), the usual sides first: right, left, above, below, then between
ANGLES = (0, 180, 90, 270, 30, 150, 330, 210, 60, 120, 300, 240, 15, 165, 345, 195)


@dataclass(frozen=True)
class Point:
    """One cell as the figure draws it."""

    cell: CellRow
    gap: Stat  # final gap over seeds: x
    test: Stat  # final test accuracy over seeds: y
    baseline: bool


def points(cells: Sequence[CellRow], baseline: CellRow | None) -> list[Point]:
    """The cells drawn, in `cells` order: those with finished runs, both final metrics, and
    that learn (the baseline always)."""
    base = baseline.cell_hash if baseline is not None else None
    return [
        Point(c, c.stats[GAP], c.stats[TEST], c.cell_hash == base)
        for c in cells
        if c.done and GAP in c.stats and TEST in c.stats and (c.learns or c.cell_hash == base)
    ]


def caption(baseline: CellRow | None) -> str:
    """What the figure shows, in the words of its axes."""
    name = "" if baseline is None or baseline.label == "baseline" else f" ({baseline.label})"
    lines = (
        f"Dashed lines go through the baseline{name}; the shaded quadrant, up "
        "and to the left of it, holds the cells whose means have a narrower gap without "
        "losing test accuracy: cures. An interval crossing a line means seed noise could "
        "put the cell on the other side."
        if baseline is not None
        else "No baseline: no reference lines."
    )
    return (
        "Each cell at its mean final gap (x: train − test accuracy, left is less "
        "overfitting) and mean final test accuracy (y: up is better), with 95% intervals "
        f"over seeds on both axes. {lines} Cells that do not learn are listed, not drawn."
    )


def figure(
    spec: CuresFigure,
    cells: Sequence[CellRow],
    baseline: CellRow | None,
    colours: dict[str, ColorType],
    study: str,
) -> bytes | None:
    """The cures figure as PNG bytes; None when no cell has both final metrics.

    Args:
        cells: the cells in table order (`spec.top` keeps the first N, and the baseline).
        baseline: the cell others are compared with; None: no reference lines.
        colours: `figures.palette` output: a cell's colour in every figure.
    """
    kept = list(cells[: spec.top]) if spec.top else list(cells)
    if baseline is not None and baseline not in kept:
        kept.append(baseline)
    drawn = points(kept, baseline)
    if not drawn:
        return None
    with _style():
        canvas = Figure(figsize=(12.0, 8.0), layout="constrained")
        FigureCanvasAgg(canvas)
        ax = canvas.subplots()
        for point in drawn:
            _point(ax, point, colours[point.cell.cell_hash])
        _limits(ax, drawn)
        base = next((p for p in drawn if p.baseline), None)
        if base is not None:
            _quadrant(ax, base)
        ax.set_xlabel("final gap: train − test accuracy (mean over seeds; left: less overfitting)")
        ax.set_ylabel("final test accuracy (mean over seeds)")
        title = spec.title or "final gap against final test accuracy, per cell"
        canvas.suptitle(f"{study}: {title}", fontsize="large")
        _legend(canvas, _handles(base is not None, kept, drawn))
        labels = [_label(ax, p, colours[p.cell.cell_hash]) for p in drawn]
        _place(canvas, ax, drawn, labels)
        return _png(canvas)


def _bounds(stat: Stat, clip: tuple[float, float]) -> tuple[float, float]:
    """The interval (clipped: an accuracy's interval past 0 or 1 is an artefact of few
    seeds), or the mean twice for one seed."""
    if math.isnan(stat.low):
        return stat.mean, stat.mean
    return max(stat.low, clip[0]), min(stat.high, clip[1])


def _point(ax: Axes, point: Point, colour: ColorType) -> None:
    x0, x1 = _bounds(point.gap, (-math.inf, math.inf))
    y0, y1 = _bounds(point.test, (0.0, 1.0))
    x, y = point.gap.mean, point.test.mean
    look: dict[str, Any] = {"marker": "o", "ms": 7, "mec": "white", "mew": 0.8}
    if point.baseline:
        look = {"marker": "D", "ms": 10, "mec": "black", "mew": 1.6}
    ax.errorbar(
        [x],
        [y],
        xerr=[[x - x0], [x1 - x]],
        yerr=[[y - y0], [y1 - y]],
        color=colour,
        ecolor=colour,
        elinewidth=1.4,
        capsize=3,
        ls="none",
        zorder=5 if point.baseline else 4,
        label=point.cell.label,
        **look,
    )


def _limits(ax: Axes, drawn: list[Point]) -> None:
    """Every interval in view with a margin (labels need room too), but the means decide: an
    interval reaches at most half the means' spread past them (with two or three seeds the
    t-intervals are wide enough to squeeze every point into a corner; such a bar runs off the
    axes instead); no y past 0 or 1."""
    for stats, clip, setter, lowest, highest in (
        ([p.gap for p in drawn], (-math.inf, math.inf), ax.set_xlim, -1.0, 1.0),
        ([p.test for p in drawn], (0.0, 1.0), ax.set_ylim, -0.02, 1.02),
    ):
        means = [stat.mean for stat in stats]
        reach = max(max(means) - min(means), 0.05) / 2
        ends = [v for stat in stats for v in _bounds(stat, clip)]
        low = max(min(ends), min(means) - reach)
        high = min(max(ends), max(means) + reach)
        pad = max(high - low, 0.01) * 0.12
        setter(max(low - pad, lowest), min(high + pad, highest))


def _quadrant(ax: Axes, base: Point) -> None:
    """The baseline's reference lines and the shaded quadrant of cures."""
    x, y = base.gap.mean, base.test.mean
    (left, _), (_, top) = ax.get_xlim(), ax.get_ylim()
    look: dict[str, Any] = {"color": "0.3", "ls": "--", "lw": 1.0, "zorder": 1}
    ax.axvline(x, gid="baseline-gap", **look)
    ax.axhline(y, gid="baseline-test", **look)
    if left < x and y < top:
        area = Rectangle((left, y), x - left, top - y, color=CURE_COLOUR, alpha=0.09, lw=0)
        area.set_gid("cures")
        ax.add_patch(area)
        ax.text(
            0.01,
            0.985,
            QUADRANT,
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize="small",
            fontstyle="italic",
            color=CURE_COLOUR,
            gid="cures-text",
        )


def _label(ax: Axes, point: Point, colour: ColorType) -> Annotation:
    """A point's name in its cell's colour, darkened to read as text (yellow-green on white
    would not)."""
    ink = tuple(0.7 * v for v in to_rgb(colour))
    name = point.cell.label
    if point.baseline and name != "baseline":
        name += " (baseline)"
    label = ax.annotate(
        name,
        (point.gap.mean, point.test.mean),
        xytext=(RINGS[0], 0),
        textcoords="offset points",
        fontsize="small",
        fontweight="bold" if point.baseline else "normal",
        color=ink,
        bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none", "alpha": 0.75},
        arrowprops={"arrowstyle": "-", "color": ink, "lw": 0.8, "shrinkA": 0, "shrinkB": 5},
        zorder=6,
        gid="cell-label",
    )
    label.set_in_layout(False)
    return label


def _place(canvas: Figure, ax: Axes, drawn: list[Point], labels: list[Annotation]) -> None:
    """Each label at its cheapest spot (`_cost`): the baseline's first, then the most crowded
    points' (they have the fewest good spots)."""
    canvas.draw_without_rendering()
    renderer = canvas.canvas.get_renderer()  # type: ignore[attr-defined]
    centres = ax.transData.transform([(p.gap.mean, p.test.mean) for p in drawn])
    markers = [Bbox.from_extents(x - 7, y - 7, x + 7, y + 7) for x, y in centres]
    bars = [bar for p in drawn for bar in _bars(ax, p)]
    kept = [t.get_window_extent(renderer) for t in ax.texts if t.get_gid() == "cures-text"]
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    crowd = (distances < 80).sum(axis=1)
    order = sorted(range(len(drawn)), key=lambda i: (not drawn[i].baseline, -crowd[i]))
    leaders: list[tuple[np.ndarray, np.ndarray]] = []
    for i in order:
        label, best = labels[i], (math.inf, 0.0, 0.0)
        others = markers[:i] + markers[i + 1 :]
        for ring, radius in enumerate(RINGS):
            for turn, angle in enumerate(ANGLES):
                _aim(label, radius, angle)
                box = _box(label, renderer)
                cost = _cost(box, centres[i], ax.bbox, kept, others, bars)
                if ring > 1:  # it will have a leader line: better not across another one
                    leader = (centres[i], _nearest(centres[i], box))
                    cost += 20.0 * sum(_cross(*leader, *other) for other in leaders)
                cost += ring * 4 + turn * 0.1  # nearer first, then the usual sides
                if cost < best[0]:
                    best = (cost, radius, angle)
            if best[0] < (ring + 1) * 4:  # nothing in the way this close: look no further
                break
        _, radius, towards = best
        _aim(label, radius, towards)
        if label.arrow_patch is not None:  # a leader line only for a label set apart
            label.arrow_patch.set_visible(radius > RINGS[1])
        kept.append(_box(label, renderer))
        if radius > RINGS[1]:
            leaders.append((centres[i], _nearest(centres[i], kept[-1])))


def _bars(ax: Axes, point: Point) -> list[Bbox]:
    """A point's two error bars, as thin boxes in pixels."""
    (x0, x1), (y0, y1) = _bounds(point.gap, (-1, 1)), _bounds(point.test, (0, 1))
    to_px = ax.transData.transform
    (a, b), (c, d) = to_px([(x0, point.test.mean), (x1, point.test.mean)])
    (e, f), (g, h) = to_px([(point.gap.mean, y0), (point.gap.mean, y1)])
    return [Bbox.from_extents(a, b - 1, c, d + 1), Bbox.from_extents(e - 1, f, g + 1, h)]


def _box(label: Annotation, renderer: Any) -> Bbox:
    """Where a label's words are, with a margin (its leader line left out)."""
    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer).padded(3)


def _aim(label: Annotation, radius: float, angle: float) -> None:
    """The label `radius` points from its point towards `angle` (degrees), anchored on the
    side facing the point."""
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    label.xyann = (radius * dx, radius * dy)
    label.set_horizontalalignment("left" if dx > 0.3 else "right" if dx < -0.3 else "center")
    label.set_verticalalignment("bottom" if dy > 0.3 else "top" if dy < -0.3 else "center")


def _cost(
    box: Bbox,
    centre: np.ndarray,
    frame: Bbox,
    kept: list[Bbox],
    markers: list[Bbox],
    bars: list[Bbox],
) -> float:
    """How bad a spot is: outside the axes worst, then over another label, then a leader line
    across another label, then over a point, then across an error bar."""
    outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
    # the leader runs from the point to the nearest point of the box: sample it
    near = _nearest(centre, box)
    leader = [centre + (near - centre) * t for t in np.linspace(0.15, 1.0, 8)]
    crossed = sum(any(b.contains(*p) for p in leader) for b in kept)
    return (
        1000.0 * outside
        + 100.0 * sum(box.overlaps(b) for b in kept)
        + 40.0 * crossed
        + 30.0 * sum(box.overlaps(b) for b in markers)
        + 3.0 * sum(box.overlaps(b) for b in bars)
    )


def _nearest(centre: np.ndarray, box: Bbox) -> np.ndarray:
    """The point of `box` nearest `centre` (where a leader line from it ends)."""
    return np.clip(centre, [box.x0, box.y0], [box.x1, box.y1])


def _cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    """Whether segments a-b and c-d cross (strictly: touching ends do not count)."""

    def side(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        return float((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def _handles(base: bool, kept: list[CellRow], drawn: list[Point]) -> list[Artist]:
    """The legend: the baseline and its lines, the interval, the quadrant, and the cells not
    drawn (no finished run, or they do not learn)."""
    handles: list[Artist] = [
        Line2D([], [], color="0.3", marker="o", ls="none", label="a cell: mean over seeds"),
        Line2D([], [], color="0.3", marker="+", ms=12, ls="none", label="95% interval over seeds"),
    ]
    if base:
        handles += [
            Line2D([], [], color="0.3", marker="D", mec="black", ls="--", label="baseline"),
            Patch(
                color=CURE_COLOUR, alpha=0.2, label="cures: narrower gap,\ntest accuracy not lower"
            ),
        ]
    shown = {p.cell.cell_hash for p in drawn}
    lost = [
        c.figure_label if c.done else f"{c.label} (no finished run)"
        for c in kept
        if c.cell_hash not in shown
    ]
    if lost:
        text = "not drawn:\n" + "\n".join(lost[:8])
        text += f"\n... and {len(lost) - 8} more" if len(lost) > 8 else ""
        handles.append(Patch(color="none", label=text))
    return handles
