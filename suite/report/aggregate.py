"""Derived numbers, computed once: which runs count, per-cell seed statistics, mean curves.

A cell is identified by its hash (its resolved configuration), as in the store. For each
(cell, seed) the latest FINISHED run counts (a `--rerun` leaves older ones behind); a seed
without one is failed (its latest run FAILED or was KILLED), running, or missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from suite.spec import Study

DONE, FAILED, RUNNING = "FINISHED", ("FAILED", "KILLED"), ("RUNNING", "SCHEDULED")


@dataclass(frozen=True)
class Column:
    """A final metric the cell table shows, and the names a study's `reference:` may use."""

    metric: str
    label: str
    aliases: tuple[str, ...] = ()


TABLE_COLUMNS = (
    Column("final_train_accuracy", "train accuracy", ("train_accuracy",)),
    Column("final_test_accuracy", "test accuracy", ("test_accuracy",)),
    Column("final_gap", "gap (train - test)", ("gap",)),
    Column("best_test_accuracy", "best test accuracy"),
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over a cell's seeds (std is NaN for one seed)."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class CellRow:
    """One row of the cell table."""

    label: str  # the cell name; with its hash when two configurations share a name
    name: str
    cell_hash: str
    in_study: bool  # False: runs of a configuration the given study file no longer has
    adopted: bool  # a study cell shown with runs of its name whose settings differ (--set)
    expected: int  # seeds a complete cell has
    done: int
    failed: int
    running: int
    stats: dict[str, Stat] = field(default_factory=dict)
    reference: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return max(self.expected - self.done - self.failed - self.running, 0)

    @property
    def partial(self) -> bool:
        return self.done < self.expected or self.failed > 0 or self.running > 0

    @property
    def status(self) -> str:
        """`complete`, `not run`, or what keeps the cell partial."""
        if not self.partial:
            return "complete"
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.failed, "failed"),
                (self.running, "running"),
                (self.missing, "missing"),
            )
            if n
        ]
        if not self.done and not self.failed and not self.running:
            return "not run"
        return "partial: " + ", ".join(parts) if parts else "partial"


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the numbers use: the latest FINISHED run of every (cell, seed)."""
    done = runs[runs["status"] == DONE].sort_values("start_time")
    return done.drop_duplicates(["cell_hash", "seed"], keep="last").reset_index(drop=True)


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest run of every (cell, seed) that has no FINISHED run and FAILED or was KILLED."""
    return _open_seeds(runs, FAILED)


def cell_rows(runs: pd.DataFrame, study: Study | None = None) -> list[CellRow]:
    """The per-cell table: seeds done / failed and mean +- std of `TABLE_COLUMNS`.

    With `study`, its cells come first in study order (also those not run yet), then any other
    configuration found in the store; without, cells are sorted by name. A cell is complete
    when it has as many finished seeds as the study asks for (or, without a study, as the
    most complete cell has) and nothing failed or running.
    """
    done = finished_runs(runs)
    failed = failed_runs(runs)
    running = _open_seeds(runs, RUNNING)

    stored = runs.sort_values("start_time").drop_duplicates("cell_hash", keep="last")
    adopted = _adopted(stored, study)
    # cell hash -> name, in table order; the study's names win over stored tags
    names = {adopted.get(c.hash, c.hash): c.name for c in study.cells} if study else {}
    in_study = set(names) if study else set(runs["cell_hash"])
    position = {c.name: i for i, c in enumerate(study.cells)} if study else {}
    others = [
        (h, n) for h, n in zip(stored["cell_hash"], stored["cell"], strict=True) if h not in names
    ]
    others.sort(key=lambda hn: (position.get(hn[1], math.inf), hn[1] or "", hn[0]))
    names.update((h, n or h) for h, n in others)

    seeds_done = done.groupby("cell_hash")["seed"].nunique()
    expected = len(study.seeds) if study else 0
    expected = max([expected, *seeds_done.tolist()])
    name_counts = pd.Series(list(names.values())).value_counts()
    variants = _variants(runs, study)

    rows = []
    for cell_hash, name in names.items():
        mine = done[done["cell_hash"] == cell_hash]
        stats = {}
        for column in TABLE_COLUMNS:
            values = mine[column.metric].dropna()
            if len(values):
                stats[column.metric] = Stat(
                    float(values.mean()), float(values.std(ddof=1)), len(values)
                )
        rows.append(
            CellRow(
                label=name if name_counts[name] == 1 else f"{name} ({cell_hash[:6]})",
                name=name,
                cell_hash=cell_hash,
                in_study=cell_hash in in_study,
                adopted=cell_hash in adopted.values(),
                expected=expected,
                done=int(seeds_done.get(cell_hash, 0)),
                failed=int((failed["cell_hash"] == cell_hash).sum()),
                running=int((running["cell_hash"] == cell_hash).sum()),
                stats=stats,
                reference=(
                    _reference(study, name, variants.get(cell_hash))
                    if cell_hash in in_study
                    else {}
                ),
            )
        )
    return rows


def curves(histories: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each cell's per-epoch metrics.

    Returns:
        One row per (cell hash, metric, epoch): columns `mean`, `std` (NaN for one seed), `n`.
    """
    grouped = histories.groupby(["cell_hash", "metric", "epoch"])["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    return out.astype({"n": int})


def _adopted(stored: pd.DataFrame, study: Study | None) -> dict[str, str]:
    """Study cells to show with runs of the same name under another hash.

    A run's hash covers its whole resolved configuration, so `overfit run STUDY --set
    data.path=...` stores every cell under a hash the study file alone does not give. When a
    study cell has no runs under its own hash, it takes the most recent hash stored under its
    name, unless that hash belongs to another cell of the study.

    Returns:
        study cell hash -> the stored hash shown for it.
    """
    if study is None:
        return {}
    present = set(stored["cell_hash"])
    own = {c.hash for c in study.cells}
    out = {}
    for cell in study.cells:
        if cell.hash in present:
            continue
        same_name = stored[(stored["cell"] == cell.name) & ~stored["cell_hash"].isin(own)]
        if len(same_name):
            out[cell.hash] = str(same_name["cell_hash"].iloc[-1])  # sorted by start time
    return out


def _open_seeds(runs: pd.DataFrame, statuses: tuple[str, ...]) -> pd.DataFrame:
    """The latest run of each (cell, seed) without a FINISHED run, if its status is one of these."""
    keys = ["cell_hash", "seed"]
    finished = runs.loc[runs["status"] == DONE, keys].drop_duplicates()
    latest = runs.sort_values("start_time").drop_duplicates(keys, keep="last")
    latest = latest.merge(finished, on=keys, how="left", indicator=True)
    keep = (latest["_merge"] == "left_only") & latest["status"].isin(statuses)
    return latest[keep].drop(columns="_merge").reset_index(drop=True)


def _variants(runs: pd.DataFrame, study: Study | None) -> dict[str, str]:
    out = {c.hash: c.variant for c in study.cells} if study else {}
    for cell_hash, variant in zip(runs["cell_hash"], runs["variant"], strict=True):
        if variant:
            out.setdefault(cell_hash, variant)
    return out


def _reference(
    study: Study | None, name: str, variant: str | None
) -> dict[str, tuple[float, float]]:
    """The study's `reference:` ranges for a cell (by cell name, else by variant), by metric."""
    if study is None:
        return {}
    given = study.reference.get(name) or (study.reference.get(variant) if variant else None) or {}
    out = {}
    for column in TABLE_COLUMNS:
        for key in (column.metric, *column.aliases):
            if key in given:
                out[column.metric] = given[key]
                break
    return out
