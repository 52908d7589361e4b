"""The report's text: jinja2 templates for HTML (self-contained) and Markdown.

Both templates get the same `Context`; numbers are formatted here, once, so the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from suite.report.aggregate import CellRow, Column, Stat

TEMPLATES = Path(__file__).parent / "templates"
DIGITS = 3  # accuracies to 0.1 %: finer than seed-to-seed spread on a few hundred images


@dataclass(frozen=True)
class FailedRun:
    cell: str
    seed: int
    status: str
    reason: str
    run_id: str


@dataclass(frozen=True)
class Figure:
    file: str  # the PNG's name beside report.md
    data_uri: str  # the same PNG for the self-contained HTML
    alt: str


@dataclass(frozen=True)
class Context:
    """Everything a template shows."""

    study: str
    description: str
    cells: list[CellRow]
    columns: tuple[Column, ...]
    reference_columns: frozenset[str]  # metrics with a reference range for some cell
    figures: list[Figure]
    failed: list[FailedRun]
    provenance: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)


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
    env.filters["range"] = format_range
    env.filters["md"] = escape_markdown
    return env


def render(context: Context) -> tuple[str, str]:
    """The HTML page and the Markdown document."""
    env = environment()
    html = env.get_template("index.html.j2").render(c=context)
    markdown = env.get_template("report.md.j2").render(c=context)
    return html.rstrip() + "\n", markdown.rstrip() + "\n"


def format_stat(stat: Stat | None) -> str:
    """`0.912 ± 0.013`; the mean alone for one seed; `–` without a value."""
    if stat is None or math.isnan(stat.mean):
        return "–"
    if stat.n < 2 or math.isnan(stat.std):
        return f"{stat.mean:.{DIGITS}f}"
    return f"{stat.mean:.{DIGITS}f} ± {stat.std:.{DIGITS}f}"


def format_range(bounds: tuple[float, float] | None) -> str:
    """`0.74–0.77`, or `1.00` when the range is a point."""
    if bounds is None:
        return ""
    low, high = (f"{x:.2f}" if round(x, 2) == x else f"{x:g}" for x in bounds)
    return low if low == high else f"{low}–{high}"


def escape_markdown(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
