"""The comparison report: MLflow -> pandas -> aggregates -> seaborn figure -> HTML + Markdown.

`write_report` reads a study's runs back from the tracking store and writes, into one folder
(default `reports/<study>/`):

- `index.html`: self-contained (inline CSS, the figure as a data URI), to open or mail as is;
- `report.md`: the same content for a repository or a pull request, beside
- `accuracy.png`: train and test accuracy per cell over epochs, mean over seeds.

The stages are separate modules so a later report can add tables and figures without touching
the others: `load` (MLflow -> DataFrames), `aggregate` (every derived number), `figures`
(PNG bytes), `render` (jinja2 templates in `templates/`).
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from suite.report import aggregate, figures, load, render
from suite.report.load import ReportError
from suite.spec import Study
from suite.tracking import Tracker

__all__ = ["ReportError", "ReportPaths", "write_report"]

HTML, MARKDOWN, ACCURACY_PNG = "index.html", "report.md", "accuracy.png"


@dataclass(frozen=True)
class ReportPaths:
    """Where a report was written."""

    html: Path
    markdown: Path
    folder: Path


def write_report(
    study: str, tracker: Tracker, out: Path | None = None, spec: Study | None = None
) -> ReportPaths:
    """Write a study's comparison report from what the tracking store holds.

    Args:
        study: the study (MLflow experiment) name.
        tracker: the store to read.
        out: the output folder; default `reports/<study>/` under the current directory.
        spec: the study file, when at hand: it orders the cells, says how many seeds make a
            cell complete, and brings the description and `reference:` ranges.

    Returns:
        The paths of the HTML page, the Markdown document and their folder.

    Raises:
        ReportError: the store is empty, has no such study, or the study has no FINISHED run.
    """
    runs = load.load_runs(study, tracker)
    cells = aggregate.cell_rows(runs.runs, spec)
    used = aggregate.finished_runs(runs.runs)
    histories = load.load_histories(tracker, used)
    notes = _metric_notes(used, histories)
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

    folder = Path(out) if out is not None else Path("reports") / study
    folder.mkdir(parents=True, exist_ok=True)
    shown: list[render.Figure] = []
    if not histories.empty:
        png = figures.accuracy_curves(
            aggregate.curves(histories),
            cells,
            f"{study}: train (solid) and test (dashed) accuracy, mean over seeds",
        )
        (folder / ACCURACY_PNG).write_bytes(png)
        shown.append(
            render.Figure(
                ACCURACY_PNG,
                "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                "Train (solid) and test (dashed) accuracy per cell over epochs; "
                "mean over seeds, band: ± 1 standard deviation.",
            )
        )

    labels = {c.cell_hash: c.label for c in cells}
    failed = [
        render.FailedRun(
            labels.get(r.cell_hash, r.cell), int(r.seed), r.status, r.failure_reason or "", r.run_id
        )
        for r in aggregate.failed_runs(runs.runs).sort_values(["cell", "seed"]).itertuples()
    ]
    context = render.Context(
        study=study,
        description=(spec.description.strip() if spec else ""),
        cells=cells,
        columns=aggregate.TABLE_COLUMNS,
        reference_columns=frozenset(m for c in cells for m in c.reference),
        figures=shown,
        failed=failed,
        provenance=_provenance(runs, used, spec),
        notes=notes,
    )
    html, markdown = render.render(context)
    paths = ReportPaths(folder / HTML, folder / MARKDOWN, folder)
    paths.html.write_text(html, encoding="utf-8")
    paths.markdown.write_text(markdown, encoding="utf-8")
    return paths


def _metric_notes(used: pd.DataFrame, histories: pd.DataFrame) -> list[str]:
    """Say which declared metrics some finished runs lack (older or foreign runs)."""
    notes = []
    for metric in (c.metric for c in aggregate.TABLE_COLUMNS):
        missing = int(used[metric].isna().sum())
        if missing:
            notes.append(
                f"{missing} finished runs have no {metric}; their cells show fewer values."
            )
    for metric in load.CURVE_METRICS:
        have = set(histories.loc[histories["metric"] == metric, "run_id"])
        missing = len(set(used["run_id"]) - have)
        if missing:
            notes.append(f"{missing} finished runs have no per-epoch {metric}; curves omit them.")
    return notes


def _provenance(
    runs: load.StudyRuns, used: pd.DataFrame, spec: Study | None
) -> list[tuple[str, str]]:
    status = runs.runs["status"].str.lower().value_counts()
    counts = ", ".join(f"{n} {s}" for s, n in status.items())
    items = [("tracking URI", runs.uri), ("MLflow experiment", runs.experiment_id)]
    if spec is not None and spec.path is not None:
        items.append(("study file", str(spec.path)))
    items += [
        ("data source", _values(used["data_source"])),
        ("runs", f"{len(runs.runs)} in the store ({counts}); {len(used)} used for the numbers"),
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
