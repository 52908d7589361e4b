"""The report's notes to the reader and its provenance list.

Owns: the notes under the headline table on what the numbers leave out (missing values,
curves without runs, runs stopped early, cells outside the study file, a `report.sort` no
cell has), the short failure reason per cell the study figures show, and the provenance
(store, study file, data, runs counted, versions). Must not: compute the numbers
(`aggregate`), read the store, or lay out the page (`render`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from suite.report import aggregate, extra, figures, load, stopping
from suite.study import Study


def finished_runs(count: int) -> str:
    """`1 finished run has` / `3 finished runs have`: the start of a note's sentence."""
    return f"{count} finished run has" if count == 1 else f"{count} finished runs have"


def failure_notes(runs: pd.DataFrame, cells: list[aggregate.CellRow]) -> dict[str, str]:
    """Cells with failed seeds -> the first failure's reason, shortened."""
    failed = aggregate.failed_runs(runs)
    out = {}
    for row in cells:
        reasons = failed.loc[failed["cell_hash"] == row.cell_hash, load.FAILURE_TAG].dropna()
        if row.failed and len(reasons):
            out[row.cell_hash] = str(reasons.iloc[0]).split(":")[0][:40]
    return out


def table_notes(
    cells: list[aggregate.CellRow],
    used: pd.DataFrame,
    histories: pd.DataFrame,
    views: list[figures.View],
    spec: Study | None,
    sort: str,
) -> list[str]:
    """What the reader should know about missing values (and a `report.sort` no cell has)
    and cells outside the study file."""
    notes = []
    for column in aggregate.TABLE_COLUMNS:
        missing = int(used[column.metric].isna().sum())
        if missing:
            notes.append(
                f"{finished_runs(missing)} no {column.metric}; their cells show fewer values."
            )
    logged = set(histories["metric"].unique())
    for view in views:
        if not logged & set(view.lines):
            notes.append(f"No run has the per-epoch metrics of the {view.name} view; not drawn.")
            continue
        main = next(m for m in view.lines if m in logged)
        have = set(histories.loc[histories["metric"] == main, "run_id"].unique())
        missing = len(set(used["run_id"]) - have)
        if missing:
            notes.append(f"{finished_runs(missing)} no per-epoch {main}; curves omit them.")
    stopped = stopping.note(used)
    notes += [stopped] if stopped else []
    if spec is not None and any(not c.in_study for c in cells):
        notes.append(
            "Cells marked 'not in the study file' are configurations found in the store that "
            "the current study file no longer has (edited since, or run with --set)."
        )
    if any(c.adopted for c in cells):
        notes.append(
            "Cells marked 'settings differ from the study file' show the latest runs stored "
            "under their name, whose configuration is not the file's as written (run with "
            "--set, or the file edited since); the hash column is the runs'."
        )
    if not any(sort in c.stats for c in cells):
        notes.append(
            f"No cell has {extra.metric_label(sort)} (report.sort): the table keeps the "
            "study's order."
        )
    return notes


def provenance(
    runs: load.StudyRuns, used: pd.DataFrame, spec: Study | None, pruned: int = 0
) -> list[tuple[str, str]]:
    """Where the numbers come from; `pruned`: a search's pruned trials, counted apart."""
    status = runs.runs["status"].str.lower().value_counts()
    counts = ", ".join(f"{n} {s}" for s, n in status.items())
    items = [("tracking URI", runs.uri), ("MLflow experiment", runs.experiment_id)]
    if spec is not None and spec.path is not None:
        items.append(("study file", str(Path(spec.path).resolve())))
    elif spec is None:
        items.append(("study file", "not found (see the top of the report)"))
    sizes = used["n_train"].fillna("?") + " / " + used["n_val"].fillna("?")
    sizes = sizes + " / " + used["n_test"].fillna("?")
    items += [
        ("data source", _values(used["data_source"])),
        ("images: train / validation / test", _values(sizes.where(used["n_train"].notna()))),
        (
            "runs",
            f"{len(runs.runs)} in the store ({counts}); {len(used)} used for the numbers"
            + (f", {pruned} pruned trials reported apart" if pruned else ""),
        ),
        ("suite version", _values(used["suite_version"])),
        ("git commit", _values(used["git_commit"])),
        ("generated at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
    ]
    return items


def _values(column: pd.Series) -> str:
    """`a` when every run agrees, else `a (3 runs), b (1 run)`; `unknown` when untagged."""
    counts = column.fillna("unknown").value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in counts.items())
