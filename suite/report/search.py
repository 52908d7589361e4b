"""A search's report: its trials in order, the pruned ones apart, the best so far, and how much
each searched setting matters for the objective.

A study with a `search:` block is a search (without the study file, its runs' `search_id` tags
say so). Its trials are read two ways:

- random search (`sampler: random`, `pruner: none`): each trial is a cell drawn up front; its
  number is its place among the cells of its frame (the study's order), its point the cell's
  drawn values, its epochs those its runs trained (`stopped_epoch`, else `train.epochs`);
- adaptive search (`suite.search`): each trial is a slot; its number is the run's `trial` tag,
  its point the `search_point` tag (the cell's own settings are the frame's), its epochs the
  `epochs_trained` tag and, when its pruner ended it, the `pruned` tag holds that epoch.

A pruned trial is FINISHED in the store, but its final metrics are those of an early epoch:
it is never ranked with the finished trials (`split_pruned` takes it out of the numbers) and
never a best, and it adds its epochs to the search's cost.

Owns: which counted runs are pruned (`split_pruned`), a search's trials (`Trial`), the best
objective so far against trials and epochs (`best_so_far`), the fANOVA importance of each
searched setting (`Importance`, over a study replayed with `suite.search.replayed_study`), and
the section's note (`SearchSection`, `section`). Must not: read the store (runs arrive as
`load`'s tables), draw (`search_figures`), or lay out the page (`render`). Optuna is imported
(through `suite.search`) only for a study that is a search.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from suite.metrics import SEARCH_OBJECTIVE as OBJECTIVE
from suite.names import (
    EPOCHS_TRAINED_TAG,
    PRUNED_TAG,
    PRUNER_TAG,
    SAMPLER_TAG,
    SEARCH_FRAME_TAG,
    SEARCH_ID_TAG,
    SEARCH_POINT_TAG,
    TRIAL_TAG,
)
from suite.report.aggregate import CellRow
from suite.spec import SearchSpec, short_value
from suite.study import Study

OBJECTIVE_LABEL = "final validation accuracy"
IMPORTANCE_SEED = 0  # fANOVA's forest is random: seeded, the same runs give the same report


@dataclass(frozen=True)
class Trial:
    """One trial of a search, as its counted runs tell it."""

    cell_hash: str
    label: str  # the cell's name in the table (`trial_007`)
    frame: str  # the variant and grid point it searches ("" for a study of one search)
    number: int  # its slot (adaptive), or its place among its frame's cells (random)
    point: dict[str, Any]  # the searched settings it trained with, {dotted key: value}
    value: float  # its objective (NaN: not logged); a pruned trial's at the pruned epoch
    epochs: int  # the epochs its runs trained
    pruned: int | None = None  # the epoch its pruner ended it at

    def setting(self, key: str) -> str:
        """A searched setting as the table writes it (`0.005499`)."""
        return short_value(self.point[key], key) if key in self.point else ""


@dataclass(frozen=True)
class Importance:
    """The fANOVA importance of each searched setting in one frame, highest first."""

    frame: str
    settings: list[tuple[str, float]]
    trials: int  # the finished trials it was fitted on


@dataclass(frozen=True)
class SearchSection:
    """What the report says of a search: its trials, the note on how it ran, the importance."""

    sampler: str
    pruner: str
    adaptive: bool  # trials asked one at a time as slots (`suite.search`), not drawn up front
    keys: list[str]  # the searched settings
    trials: list[Trial]  # by frame, then number
    note: str  # sampler, pruner, how many trials were pruned, what is reproducible
    importance: list[Importance] = field(default_factory=list)
    importance_note: str = ""  # why there is no importance (or none for some frame)

    @property
    def pruned(self) -> list[Trial]:
        return [t for t in self.trials if t.pruned is not None]

    @property
    def frames(self) -> list[str]:
        return list(dict.fromkeys(t.frame for t in self.trials))


def split_pruned(used: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The counted runs a search's pruner did not end, and those it did (`pruned` tagged)."""
    pruned = used[PRUNED_TAG].notna() if PRUNED_TAG in used else pd.Series(False, used.index)
    return used[~pruned].reset_index(drop=True), used[pruned].reset_index(drop=True)


def is_search(spec: Study | None, runs: pd.DataFrame) -> bool:
    """Whether the study is a search: its file has a `search:` block, or, without the file,
    its runs are an adaptive search's trials."""
    if spec is not None:
        return spec.search is not None
    return SEARCH_ID_TAG in runs and bool(runs[SEARCH_ID_TAG].notna().any())


def section(
    spec: Study | None, cells: Sequence[CellRow], counted: pd.DataFrame
) -> SearchSection | None:
    """The search section of a study (None when it is no search): `cells` are every cell
    with its label, `counted` the runs the report counts, pruned ones included."""
    if not is_search(spec, counted):
        return None
    search = spec.search if spec is not None else None
    adaptive = search.adaptive if search is not None else True
    if adaptive:
        counted = _current(spec, counted)
    found = (
        _adaptive_trials(cells, counted)
        if adaptive
        else _random_trials(spec, search, cells, counted)
    )
    keys = list(search.space) if search is not None else []
    for trial in found:
        keys += [k for k in trial.point if k not in keys]
    sampler = search.sampler if search is not None else _tag(counted, SAMPLER_TAG, "tpe")
    pruner = search.pruner if search is not None else _tag(counted, PRUNER_TAG, "none")
    note = _note(found, sampler, pruner, adaptive, counted, search)
    importance, why = importances(search, found)
    return SearchSection(sampler, pruner, adaptive, keys, found, note, importance, why)


def best_so_far(trials: Sequence[Trial]) -> pd.DataFrame:
    """Per frame, the trials in number order with the epochs trained up to each and the best
    objective of the finished trials so far (NaN before the first; a pruned trial adds its
    epochs, never a best). Columns: `frame, number, label, value, pruned, epochs, cumulative,
    best`."""
    rows = [
        {
            "frame": t.frame,
            "number": t.number,
            "label": t.label,
            "value": t.value,
            "pruned": t.pruned is not None,
            "epochs": t.epochs,
        }
        for t in trials
    ]
    columns = ["frame", "number", "label", "value", "pruned", "epochs", "cumulative", "best"]
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows).sort_values(["frame", "number"], kind="stable")
    out["cumulative"] = out.groupby("frame")["epochs"].cumsum()
    counts = out["value"].where(~out["pruned"])
    out["best"] = counts.groupby(out["frame"]).cummax()
    out["best"] = out.groupby("frame")["best"].ffill()
    return out.reset_index(drop=True)[columns]


def importances(search: SearchSpec | None, trials: Sequence[Trial]) -> tuple[list[Importance], str]:
    """Per frame, Optuna's fANOVA importance of each searched setting for the objective, over
    the frame's finished trials replayed into an Optuna study (`FanovaImportanceEvaluator`,
    seeded); and a note for what could not be computed."""
    if search is None:
        return [], "Importance needs the study file's search.space; not computed."
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from suite.search import encode, replayed_study
    from suite.trials import Known

    out, notes = [], []
    frames = list(dict.fromkeys(t.frame for t in trials))
    for frame in frames:
        done = [
            Known(t.number, t.point, "complete", t.value)
            for t in trials
            if t.frame == frame
            and t.pruned is None
            and math.isfinite(t.value)
            and encode(search, t.point) is not None
        ]
        where = f" ({frame})" if len(frames) > 1 else ""
        if len(done) < 2:
            notes.append(
                f"Importance{where} needs at least 2 finished trials with "
                f"{OBJECTIVE_LABEL}, {len(done)} here; not computed."
            )
            continue
        study = replayed_study(search, done, frame or "search")
        evaluator = FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
        try:
            found = get_param_importances(study, evaluator=evaluator)
        except RuntimeError:  # every trial has the same objective: nothing to explain
            notes.append(
                f"Importance{where}: all {len(done)} finished trials have the same "
                f"{OBJECTIVE_LABEL}; no setting explains a difference."
            )
            continue
        ranked = sorted(found.items(), key=lambda kv: -kv[1])
        out.append(Importance(frame, [(k, float(v)) for k, v in ranked], len(done)))
    return out, " ".join(notes)


def _current(spec: Study | None, counted: pd.DataFrame) -> pd.DataFrame:
    """The runs of the study's own searches (see `older_searches`)."""
    return counted[~older_searches(spec, counted)]


def older_searches(spec: Study | None, runs: pd.DataFrame) -> pd.Series:
    """Which of `runs` are trials of an adaptive search since changed (another space,
    sampler, pruner, seed or data: another search id), as `overfit run` says; they are kept
    out of the numbers. The study's own searches are those of its slots' search ids, or,
    without the study file (or none of its runs stored), each frame's latest search. A run
    that is no adaptive search's trial is never older."""
    if SEARCH_ID_TAG not in runs or runs.empty:
        return pd.Series(False, runs.index)
    tagged = runs[SEARCH_ID_TAG].notna()
    ids = {c.slot.search_id for c in spec.cells if c.slot} if spec is not None else set()
    if not runs[SEARCH_ID_TAG].isin(ids).any():
        found = runs[tagged]
        frames = found[SEARCH_FRAME_TAG].fillna("") if SEARCH_FRAME_TAG in found else ""
        if "study" in found:  # studies side by side: each its own
            frames = found["study"].astype(str) + "/" + frames
        latest = found.assign(_frame=frames).sort_values("start_time").groupby("_frame").tail(1)
        ids = set(latest[SEARCH_ID_TAG])
    return tagged & ~runs[SEARCH_ID_TAG].isin(ids)


def _adaptive_trials(cells: Sequence[CellRow], counted: pd.DataFrame) -> list[Trial]:
    """An adaptive search's trials from its runs' tags."""
    labels = {c.cell_hash: c.label for c in cells}
    out = []
    tagged = counted[counted[TRIAL_TAG].notna()] if TRIAL_TAG in counted else counted.iloc[:0]
    for cell_hash, runs in tagged.groupby("cell_hash", sort=False):
        first = runs.iloc[0]
        point = json.loads(first[SEARCH_POINT_TAG] or "null") or {}
        frame = first[SEARCH_FRAME_TAG] if isinstance(first[SEARCH_FRAME_TAG], str) else ""
        out.append(_trial(str(cell_hash), labels, frame, int(first[TRIAL_TAG]), point, runs))
    return sorted(out, key=lambda t: (t.frame, t.number))


def _random_trials(
    spec: Study | None, search: SearchSpec | None, cells: Sequence[CellRow], counted: pd.DataFrame
) -> list[Trial]:
    """A random search's trials: its cells in study order, numbered within each frame."""
    assert spec is not None and search is not None
    by_name = {c.name: c for c in cells}
    labels = {c.cell_hash: c.label for c in cells}
    numbers: dict[str, int] = {}
    out = []
    for cell in spec.cells:
        frame = _frame(cell.name)
        number = numbers[frame] = numbers.get(frame, -1) + 1
        row = by_name.get(cell.name)
        if row is None:
            continue
        runs = counted[counted["cell_hash"] == row.cell_hash]
        if runs.empty:
            continue
        point = {k: cell.grid_point[k] for k in search.space if k in cell.grid_point}
        out.append(_trial(row.cell_hash, labels, frame, number, point, runs))
    return out


def _trial(
    cell_hash: str,
    labels: dict[str, str],
    frame: str,
    number: int,
    point: dict[str, Any],
    runs: pd.DataFrame,
) -> Trial:
    """A trial from its counted runs: the mean objective over them, the epochs they trained."""
    values = runs[OBJECTIVE].dropna() if OBJECTIVE in runs else pd.Series(dtype=float)
    pruned = runs[PRUNED_TAG].dropna() if PRUNED_TAG in runs else pd.Series(dtype=float)
    return Trial(
        cell_hash=cell_hash,
        label=labels.get(cell_hash, str(runs["cell"].iloc[0])),
        frame=frame,
        number=number,
        point=point,
        value=float(values.mean()) if len(values) else math.nan,
        epochs=int(sum(_epochs(run) for run in runs.to_dict("records"))),
        pruned=int(pruned.iloc[0]) if len(pruned) else None,
    )


def _epochs(run: dict[str, Any]) -> int:
    """The epochs a run trained: its `epochs_trained` tag, else where early stopping stopped
    it, else `train.epochs`."""
    for key in (EPOCHS_TRAINED_TAG, "stopped_epoch", "epochs"):
        value = run.get(key)
        if value is not None and not pd.isna(value):
            return int(value)
    return 0


def _frame(name: str) -> str:
    """A random search's cell's frame, as an adaptive search names it: its name without
    `trial_NNN` (`sgd_trial_003[x=1]` -> `sgd[x=1]`, `trial_003[x=1]` -> `x=1`)."""
    frame = re.sub(r"(^|_)trial_\d+", "", name)
    return frame[1:-1] if frame.startswith("[") and frame.endswith("]") else frame


def _tag(runs: pd.DataFrame, tag: str, default: str) -> str:
    """The first value of a tag among `runs`, else `default`."""
    values = runs[tag].dropna() if tag in runs else pd.Series(dtype=object)
    return str(values.iloc[0]) if len(values) else default


def _note(
    trials: Sequence[Trial],
    sampler: str,
    pruner: str,
    adaptive: bool,
    counted: pd.DataFrame,
    search: SearchSpec | None,
) -> str:
    """One line: how the search chose its points, how many trials were pruned, and what a
    rerun reproduces."""
    pruned = sum(t.pruned is not None for t in trials)
    counts = f"{len(trials)} trials trained, {len(trials) - pruned} finished, {pruned} pruned"
    if not adaptive:
        seed = f" {search.seed}" if search is not None else ""
        return (
            f"Sampler random, pruner none: {len(trials)} trials trained. Every point is drawn up front from "
            f"search.seed{seed}: a rerun trains the same trials, whatever the workers."
        )
    at_once = _most_at_once(counted)
    ran = (
        f"The trials ran up to {at_once} at a time"
        if at_once > 1
        else "The trials ran one at a time, so this search is reproducible (run again one at "
        "a time on a new store, it trains the same trials)"
    )
    each = "while each trial is (the same point and seed train the same run)"
    if sampler == "random":
        what = (
            "its points are drawn up front (the same whatever the workers), but which trials "
            "the pruner ends depends on the trials finished before"
        )
        rest = f"with more than one worker that is not reproducible, {each}"
    else:
        what = f"each point is asked of the {sampler} sampler, given the trials before it"
        rest = (
            "with more than one worker the order of trials, and so the points asked, is not "
            f"reproducible, {each}"
        )
    return f"Sampler {sampler}, pruner {pruner}: {counts}; {what}. {ran}: {rest}."


def _most_at_once(runs: pd.DataFrame) -> int:
    """The most runs that trained at the same time (by their start and end times)."""
    times = runs[["start_time", "end_time"]].dropna()
    if times.empty:
        return 1
    starts = np.sort(times["start_time"].to_numpy())
    ends = np.sort(times["end_time"].to_numpy())
    # at each start, the runs started so far minus those ended strictly before it
    running = np.arange(1, len(starts) + 1) - np.searchsorted(ends, starts, side="left")
    return int(running.max())
