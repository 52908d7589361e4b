"""Studies side by side: the cells of several studies as one report's cells.

`overfit report A B [--only CELLS]` puts the cells of studies A and B (all of them, or those
named: a cell name or a variant, `baseline,weight_decay`) in one table and one set of figures.
Each cell is named `<study>: <cell>` and keeps its study in its key (`<hash>@<study>`, its
hash first, as a label that needs it shows its first characters), so a configuration two
studies share stays two cells, each with its own runs. The settings that
differ between the cells shown, read from each cell's logged params (and the data its runs
resolved to, `data_source`), become the table's setting columns; a note lists them all.

Owns: combining the studies' runs (`side_by_side`) and finding the settings that differ.
Must not: compute a statistic or draw (the report's stages do, on the combined runs).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from suite.report import load
from suite.spec import did_you_mean, short_value
from suite.tracking import Tracker

# at most this many differing settings become table columns; the note lists every one
MAX_COLUMNS = 6


@dataclass(frozen=True)
class SideBySide:
    """Several studies' runs as one study's, with what tells their cells apart."""

    runs: load.StudyRuns
    setting_columns: list[str]
    settings: dict[str, dict[str, str]]  # cell key -> setting -> value
    notes: list[str] = field(default_factory=list)
    provenance: list[tuple[str, str]] = field(default_factory=list)


def name_of(studies: Sequence[str]) -> str:
    """The report's name: `a + b`; its folder is `reports/a+b`."""
    return " + ".join(studies)


def side_by_side(studies: Sequence[str], tracker: Tracker, only: Sequence[str] = ()) -> SideBySide:
    """The studies' runs combined (see the module's docstring); `only`: cell names or variants.

    Raises:
        load.ReportError: a study that is not in the store, or has no FINISHED run; a cell
            in `only` that no study has.
    """
    parts = []
    for study in studies:
        read = load.load_runs(study, tracker)
        frame = read.runs.assign(
            experiment_id=read.experiment_id,
            study=study,
            expected_seeds=_seeds(study, read, tracker),
        )
        frame["cell"] = study + ": " + frame["cell"].fillna(frame["cell_hash"])
        frame["cell_hash"] = frame["cell_hash"] + "@" + study
        parts.append((read, frame, frame["cell"].str.split(": ", n=1).str[1]))
    combined = pd.concat([frame for _, frame, _ in parts], ignore_index=True)
    if only:
        names = pd.concat([short for _, _, short in parts], ignore_index=True)
        known = set(names) | set(combined["variant"].dropna())
        for token in only:
            if token not in known:
                raise load.ReportError(
                    f"--only: no study has a cell {token!r}{did_you_mean(token, sorted(known))}"
                )
        combined = combined[names.isin(only) | combined["variant"].isin(only)]
    first = parts[0][0]
    runs = load.StudyRuns(name_of(studies), first.uri, first.experiment_id, combined)
    provenance = [
        ("tracking URI", first.uri),
        ("MLflow experiments", ", ".join(f"{r.experiment_id} ({r.study})" for r, _, _ in parts)),
        ("study files", "not used: the cells are named and ordered as the store has them"),
        (
            "runs",
            f"{len(combined)} in the store; the latest finished run of each cell and seed counts",
        ),
        ("generated at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
    ]
    columns, values = differing(combined)
    notes = []
    if columns:
        shown = ", ".join(columns[:MAX_COLUMNS])
        notes.append(
            f"Studies side by side: {', '.join(studies)}. The settings that differ between "
            f"the cells shown: {', '.join(columns)}"
            + (f" (the table shows {shown})." if len(columns) > MAX_COLUMNS else ".")
        )
    else:
        notes.append(
            f"Studies side by side: {', '.join(studies)}. Their cells share every setting."
        )
    return SideBySide(runs, columns[:MAX_COLUMNS], values, notes, provenance)


def _seeds(study: str, read: load.StudyRuns, tracker: Tracker) -> int:
    """How many seeds make a cell of `study` complete: its study file's, when the store
    records one that loads, else its most complete cell's."""
    from suite.results import study_file

    spec = study_file(study, tracker)
    finished = read.runs[read.runs["status"] == "FINISHED"]
    done = int(finished.groupby("cell_hash")["seed"].nunique().max() or 0) if len(finished) else 0
    return max(len(spec.seeds), done) if spec is not None else done


def differing(runs: pd.DataFrame) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The settings whose values differ between the cells of `runs`, those that size the
    data, the network and the training first (`FIRST`), and each cell's values of them as
    short text. A setting that some cells leave unset and that a setting before it decides
    (Adam's `beta_1` beside `optimizer.name`, `conv` beside `model.kind`) is left out."""
    from suite.results import settings_of

    # each cell's latest finished run (its latest run, when none finished) tells its settings
    finished = runs.assign(finished=runs["status"] == "FINISHED")
    latest = finished.sort_values(["finished", "start_time"]).drop_duplicates(
        "cell_hash", keep="last"
    )
    by_cell = {  # the data each cell's runs resolved to, then its settings
        key: {"data_source": source, **settings_of(params or {})}
        for key, source, params in zip(
            latest["cell_hash"], latest["data_source"], latest["params"], strict=True
        )
    }
    texts = {
        cell: {k: _text(v, k) for k, v in settings.items()} for cell, settings in by_cell.items()
    }
    keys: list[str] = []
    for settings in texts.values():
        keys += [k for k in settings if k not in keys]
    keys.sort(key=lambda k: FIRST.index(k) if k in FIRST else len(FIRST))
    columns: list[str] = []
    for key in keys:
        seen = [t.get(key, "") for t in texts.values()]
        if len(set(seen)) < 2:
            continue
        unset = any(v in UNSET for v in seen)
        if unset and any(_decides(texts, chosen, key) for chosen in columns):
            continue
        columns.append(key)
    return columns, {cell: {k: t.get(k, "") for k in columns} for cell, t in texts.items()}


# shown first when they differ: what the data, the network and the training are
FIRST = (
    "data_source",
    "data.dataset",
    "data.train_size",
    "data.val_size",
    "model.kind",
    "model.builder",
    "model.hidden",
    "model.conv",
    "train.epochs",
    "train.batch_size",
    "train.optimizer.name",
    "train.optimizer.learning_rate",
)
UNSET = ("off", "-", "", "all")


def _decides(texts: dict[str, dict[str, str]], chosen: str, key: str) -> bool:
    """True when each value of `chosen` goes with one value of `key` across the cells."""
    seen: dict[str, str] = {}
    for t in texts.values():
        if seen.setdefault(t.get(chosen, ""), t.get(key, "")) != t.get(key, ""):
            return False
    return True


def _text(value: Any, key: str) -> str:
    """A setting as the table shows it: `100x100` for layers, `30:5/2` for a conv stack."""
    if isinstance(value, list):
        if not value:
            return "-"
        if all(isinstance(v, int) for v in value):
            return "x".join(map(str, value))
        if all(isinstance(v, dict) and "filters" in v for v in value):
            return ",".join(
                f"{c['filters']}:{c.get('kernel', '?')}"
                + (f"s{c['stride']}" if c.get("stride", 1) > 1 else "")
                + (f"/{c['pool']}" if c.get("pool", 1) > 1 else "")
                for c in value
            )
        return str(value)
    return short_value(value, key)
