"""What a cell is, in the terms a study's figures group by: a setting, its variant, its size.

A figure names a grouping key (`report.figures`): `cell`, `variant`, `n_train` (the images the
runs trained on), `grid` (the cell's own grid value) or a dotted setting such as `model.init`.
Settings are read from the runs' MLflow params, so a report without its study file still
groups correctly; a section key joins the settings below it (`model.init` of an
`{std: 0.01}` init is `std=0.01`).

Owns: a cell's value of a grouping key (`cell_values`), the order of those values (`ordered`),
how a value reads in titles and legends (`label`, `text`), and the grid and search values the
table lists beside each cell's name (`grid_keys`, `grid_values`; an adaptive search's trials'
from the points they were asked, `asked_points`). Must not: read or write the
tracking store (the params arrive in `load`'s table), or draw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from suite.names import SEARCH_POINT_TAG
from suite.report.aggregate import CellRow
from suite.spec import short_value
from suite.study import Study


def cell_values(
    runs: pd.DataFrame, cells: Sequence[CellRow], key: str, spec: Study | None
) -> dict[str, Any]:
    """Each cell's value of `key`, by cell hash: a number where the value is one, else text;
    None where the cell has no such value (a cell outside a grid, for `grid`)."""
    # by name: a cell shown with runs of other settings (`--set`) keeps its grid point
    grid = {c.name: c.grid_point for c in spec.cells} if spec is not None else {}
    first = runs.drop_duplicates("cell_hash").set_index("cell_hash")
    out: dict[str, Any] = {}
    for cell in cells:
        if cell.cell_hash not in first.index:
            continue
        run = first.loc[cell.cell_hash]
        if key == "cell":
            value: Any = cell.label
        elif key == "variant":
            value = run["variant"] or cell.name
        elif key == "n_train":
            value = run["n_train"]
        elif key == "grid":
            point = grid.get(cell.name, {})
            value = next(iter(point.values())) if len(point) == 1 else None
        else:
            value = _setting(run["params"] or {}, key)
        out[cell.cell_hash] = _number(value)
    return out


def ordered(values: dict[str, Any], cells: Sequence[CellRow]) -> list[Any]:
    """The distinct values, numbers ascending, text in the cells' study order."""
    seen: list[Any] = []
    for cell in sorted(cells, key=lambda c: c.order):
        value = values.get(cell.cell_hash)
        if cell.cell_hash in values and value not in seen:
            seen.append(value)
    if seen and all(isinstance(v, float) for v in seen):
        return sorted(seen)
    return seen


def label(key: str, value: Any) -> str:
    """`init.std = 0.01`: the setting's last two parts and its value, for titles and legends."""
    name = ".".join(key.split(".")[-2:]) if "." in key else key
    if key in ("cell", "variant", "grid"):
        return text(value)
    return f"{name} = {text(value, key)}"


def text(value: Any, key: str = "") -> str:
    """A value as cell names and the table write it (null: `all` for a size, else `off`)."""
    return short_value(value, key)


def grid_keys(spec: Study | None, runs: pd.DataFrame | None = None) -> list[str]:
    """The grid and search keys, as table columns (none for a study of plain variants): the
    cells' own, then the search's space (an adaptive search's cells hold only their frame's
    settings); without a study file, the keys of the points the runs were asked."""
    keys: list[str] = []
    for cell in spec.cells if spec is not None else ():
        keys += [k for k in cell.grid_point if k not in keys]
    if spec is not None and spec.search is not None:
        keys += [k for k in spec.search.space if k not in keys]
    if spec is None and runs is not None:
        for point in asked_points(runs).values():
            keys += [k for k in point if k not in keys]
    return keys


def grid_values(
    spec: Study | None, cells: Sequence[CellRow], runs: pd.DataFrame | None = None
) -> dict[str, dict[str, str]]:
    """Each table row's grid and search values, by cell hash: the study file's (found by the
    cell's name, so a cell shown with runs of other settings keeps them), with an adaptive
    search's trial's asked point over them (from `runs`, see `asked_points`)."""
    points = {c.name: c.grid_point for c in spec.cells} if spec is not None else {}
    asked = asked_points(runs) if runs is not None else {}
    return {
        row.cell_hash: {
            k: short_value(v, k)
            for k, v in {**points.get(row.name, {}), **asked.get(row.cell_hash, {})}.items()
        }
        for row in cells
        if row.name in points or row.cell_hash in asked
    }


def asked_points(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The points an adaptive search's trials were asked ({dotted key: value}, their
    `search_point` tag), by cell hash: the first run in `runs` with one (the counted run,
    when `runs` lists those first). A cell of no adaptive search has none."""
    if SEARCH_POINT_TAG not in runs:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for cell_hash, text in zip(runs["cell_hash"], runs[SEARCH_POINT_TAG], strict=True):
        if isinstance(text, str) and cell_hash not in out:
            point = json.loads(text)
            if isinstance(point, dict):
                out[cell_hash] = point
    return out


def _setting(params: dict[str, str], key: str) -> Any:
    if key in params:
        return None if params[key] == "null" else params[key]
    below = {k[len(key) + 1 :]: v for k, v in params.items() if k.startswith(key + ".")}
    if not below:
        return None
    return ",".join(f"{k}={v}" for k, v in sorted(below.items()))


def _number(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    return number if math.isfinite(number) else str(value)
