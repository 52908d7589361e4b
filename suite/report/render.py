"""The report's text: jinja2 templates for HTML (self-contained) and Markdown.

Both templates get the same `Context`; numbers are formatted here, once, so the two agree.

Owns: what a page shows (`Context`, `Figure`, `RunLink`), the number formats (`format_stat`,
`format_value`, `format_number`, `format_difference`, `format_p`, `format_range`), Markdown
escaping, and the templates in `templates/`. Must not: compute numbers (`aggregate`), read or
write the tracking store, or write files: `render` returns the two texts and `write` saves
them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from suite.report.aggregate import (
    CHANCE_MARGIN,
    CellRow,
    Column,
    Comparison,
    Difference,
    ReferenceCheck,
    Stat,
)
from suite.report.finding import Finding
from suite.report.search import SearchSection

TEMPLATES = Path(__file__).parent / "templates"
VERDICTS = {
    "within": "✓ within",
    "outside": "✗ outside",
    "overlaps": "✗ outside; our 95% interval overlaps",
    "no runs": "no runs",
}
DIGITS = 3  # accuracies to 0.1 %: finer than seed-to-seed spread on a few hundred images


@dataclass(frozen=True)
class RunLink:
    """A run as the report lists it, linked to the MLflow UI."""

    cell: str
    seed: int | None
    status: str
    reason: str
    run_id: str
    url: str
    name: str = ""  # the run's name in MLflow: `<cell>/seed<seed>`


@dataclass(frozen=True)
class Figure:
    file: str  # the PNG's name beside report.md
    data_uri: str  # the same PNG for the self-contained HTML
    alt: str  # a short title
    caption: str
    section: str  # "study", "search", "curves" or "final"


@dataclass(frozen=True)
class Context:
    """Everything a template shows."""

    study: str
    description: str
    cells: list[CellRow]  # table order: best first
    columns: Sequence[Column]
    best_test: CellRow | None  # the highest mean final test accuracy
    least_gap: CellRow | None  # the smallest mean final gap
    baseline: CellRow | None
    comparisons: list[Comparison]
    references: list[ReferenceCheck]
    figures: list[Figure]
    failed: list[RunLink]
    runs: list[RunLink]
    provenance: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    finding: Finding = field(default_factory=lambda: Finding(""))  # the first lines
    study_notice: str | None = None  # why the report has no study file, when it has none
    ui: str = ""
    ui_is_local: bool = True  # links assume `overfit ui` at its default address
    experiment_url: str = ""
    report_run_url: str | None = None
    sort: str = "final_test_accuracy"  # what the table is ranked by
    sort_label: str = "final test accuracy"
    best_sorted: CellRow | None = None  # the best cell by `sort`, when that is not test accuracy
    setting_columns: list[str] = field(default_factory=list)  # grid / search keys shown
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # cell hash -> key -> value
    chance_margin: float = CHANCE_MARGIN  # "does not learn": test accuracy below chance + this
    search: SearchSection | None = None  # a search's trials apart from the table, its figures


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["stat"] = format_stat
    env.filters["value"] = format_value
    env.filters["diff"] = format_difference
    env.filters["p"] = format_p
    env.filters["range"] = format_range
    env.filters["verdict"] = VERDICTS.get
    env.filters["md"] = escape_markdown
    env.filters["num"] = format_number
    return env


def render(context: Context) -> tuple[str, str]:
    """The HTML page and the Markdown document."""
    env = environment()
    html = env.get_template("index.html.j2").render(c=context)
    markdown = env.get_template("report.md.j2").render(c=context)
    return html.rstrip() + "\n", markdown.rstrip() + "\n"


def format_stat(stat: Stat | None, digits: int = DIGITS) -> str:
    """`0.912 ± 0.013` (mean ± half-width of its 95% interval); the mean alone for one seed;
    `–` without a value."""
    if stat is None or math.isnan(stat.mean):
        return "–"
    if math.isnan(stat.low):
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.half_width:.{digits}f}"


def format_value(row: CellRow, column: Column) -> str:
    """A table cell: the column's statistic (`format_stat`), or for a count column how many
    of the cell's finished runs have the metric (`3 of 5` stopped early; `–` when the cell
    does not set early stopping and none stopped)."""
    stat = row.stats.get(column.metric)
    if not column.count:
        return format_stat(stat, column.digits)
    if stat is None and not row.early_stopping:
        return "–"
    return f"{stat.n if stat is not None else 0} of {row.done}"


def format_number(value: float | None, digits: int = DIGITS) -> str:
    """`0.620`; `–` without a value."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def format_difference(d: Difference | None) -> str:
    """`-0.055 (-0.081 to -0.029)`: mean difference and its 95% interval."""
    if d is None:
        return "–"
    if math.isnan(d.low):
        return f"{d.mean:+.{DIGITS}f}"
    return f"{d.mean:+.{DIGITS}f} ({d.low:+.{DIGITS}f} to {d.high:+.{DIGITS}f})"


def format_p(d: Difference | None) -> str:
    """Welch's p-value, `<0.001` below that; `–` without two seeds on both sides."""
    if d is None or math.isnan(d.p):
        return "–"
    return "<0.001" if d.p < 0.001 else f"{d.p:.3f}"


def format_range(bounds: tuple[float, float] | None) -> str:
    """`0.74–0.77`, or `1.00` when the range is a point."""
    if bounds is None:
        return ""
    low, high = (f"{x:.2f}" if round(x, 2) == x else f"{x:g}" for x in bounds)
    return low if low == high else f"{low}–{high}"


def escape_markdown(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
