"""Derived numbers, computed once: which runs count, per-cell seed statistics with 95%
intervals, mean curves with bands, differences from the baseline, reference checks.

A cell is identified by its hash (its resolved configuration), as in the store. For each
(cell, seed) the latest FINISHED run counts (a `--rerun` leaves older ones behind); a seed
without one is failed (its latest run FAILED or was KILLED), running, or missing.

Intervals are Student-t intervals over seeds (few seeds: a normal interval would be too
narrow); differences between cells use Welch's t-test, which does not assume equal spread.

Owns: every number the report derives: which runs count (`finished_runs`, `failed_runs`), the
cells (`CellRow`, `cell_rows`) and their ranking (`ranked`), seed statistics (`Stat`), mean
curves with bands over the seeds each epoch has, chance level and "does not learn", the
baseline and each cell's difference from it (`Comparison`, with its one sentence), reference
checks, and the table's columns (early stopping's own numbers are `stopping`'s).
Must not: read or write the tracking store (runs arrive as `load`'s tables), draw, or lay out
the page (`render` formats the numbers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as st

from suite.metrics import RUN_METRICS
from suite.names import Stored
from suite.report import stopping
from suite.study import Study

DONE, FAILED, RUNNING = (
    Stored.FINISHED,
    (Stored.FAILED, Stored.KILLED),
    (Stored.RUNNING, Stored.SCHEDULED),
)
LEVEL = 0.95  # every interval in the report


@dataclass(frozen=True)
class Column:
    """A final metric the cell table shows, and the names a study's `reference:` may use."""

    metric: str
    label: str
    aliases: tuple[str, ...] = ()
    digits: int = 3
    count: bool = False  # show how many of the cell's finished runs have the metric, not its mean


# final_train_loss / final_test_loss are the runs' last logged train_loss / test_loss
TABLE_COLUMNS = (
    Column("final_train_accuracy", "train accuracy", ("train_accuracy",)),
    Column("final_test_accuracy", "test accuracy", ("test_accuracy",)),
    Column("final_gap", "gap (train − test)", ("gap",)),
    Column("best_test_accuracy", "best test accuracy"),
    Column("best_epoch", "best epoch", digits=0),
    Column("final_train_loss", "train loss"),
    Column("final_test_loss", "test loss"),
)
# shown when the runs have them: validation (a study with `val_size`), and the per-class
# scores when a study asks for per-class views (`report.figures: [{kind: confusion}]`)
VAL_COLUMNS = (
    Column("final_val_accuracy", "validation accuracy"),
    Column("best_val_accuracy", "best validation accuracy"),
)
PER_CLASS_COLUMNS = (
    Column("test_precision_macro", "test macro precision"),
    Column("test_recall_macro", "test macro recall"),
    Column("test_f1_macro", "test macro F1"),
)
# shown when a cell sets `train.early_stopping` or a run stopped early: how many runs stopped,
# the epoch they stopped at and the epoch whose weights they kept (their final metrics')
EARLY_STOP_COLUMNS = (
    Column("stopped_epoch", "stopped early", count=True),
    Column("stopped_epoch", "stopped at epoch", digits=0),
    Column("restored_epoch", "kept epoch", digits=0),
)
RANK_BY = "final_test_accuracy"  # the table lists the best cell first
LOWER_IS_BETTER = ("final_gap",)  # ranked smallest first
# A cell "does not learn" when its mean final test accuracy is below chance (1 / classes) plus
# this margin: 0.15 for MNIST's 10 digits. Its small gap is no cure (train and test are both at
# chance), so it is flagged, ranked last and never named or starred for its gap.
CHANCE_MARGIN = 0.05
# ... unless it fits at least this share of its training labels: then it learns them, even if
# nothing of it generalises (random labels, `data.label_noise: {fraction: 1.0}`)
FITS_TRAINING = 0.5
# the gap star goes to a cell that keeps its test accuracy: within this of the best cell's
# (a cell that barely learns has a small gap too, and is no cure)
GAP_STAR_TEST_MARGIN = 0.05
DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
DEFAULT_CLASSES = 10  # a dataset not listed above (classes are not logged): digits


@dataclass(frozen=True)
class Stat:
    """Mean over a cell's seeds with its 95% t-interval (NaN bounds for one seed)."""

    mean: float
    std: float
    n: int
    low: float = math.nan
    high: float = math.nan

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        data = np.asarray(values, dtype=float)
        n = len(data)
        mean = float(data.mean()) if n else math.nan
        if n < 2:
            return cls(mean, math.nan, n)
        std = float(data.std(ddof=1))
        half = float(st.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)
        return cls(mean, std, n, mean - half, mean + half)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Difference:
    """Cell minus baseline in one final metric: mean, 95% Welch interval, p-value."""

    mean: float
    low: float
    high: float
    p: float

    @property
    def clear(self) -> bool:
        """The interval excludes zero: the difference is larger than seed-to-seed noise."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Comparison:
    """One cell against the baseline."""

    cell: CellRow
    test: Difference | None  # final test accuracy
    gap: Difference | None  # final gap
    sentence: str


@dataclass(frozen=True)
class ReferenceCheck:
    """One published range beside our mean."""

    cell: str
    metric: str
    label: str
    low: float
    high: float
    ours: Stat | None

    @property
    def verdict(self) -> str:
        """`within` (the mean, to 3 decimals, is in the range), `outside`, `overlaps` (outside,
        but our 95% interval reaches the range: seed noise could explain it), or `no runs`."""
        if self.ours is None or math.isnan(self.ours.mean):
            return "no runs"
        if self.low <= round(self.ours.mean, 3) <= self.high:
            return "within"
        if (
            not math.isnan(self.ours.low)
            and self.ours.low <= self.high
            and self.ours.high >= self.low
        ):
            return "overlaps"
        return "outside"


@dataclass(frozen=True)
class CellRow:
    """One row of the cell table."""

    label: str  # the cell name; with its hash when two configurations share a name
    name: str
    order: int  # position in the study (then store) order: figures and colours follow it
    cell_hash: str
    in_study: bool  # False: runs of a configuration the given study file no longer has
    adopted: bool  # a study cell shown with runs of its name whose settings differ (--set)
    expected: int  # seeds a complete cell has
    done: int
    failed: int
    running: int
    stats: dict[str, Stat] = field(default_factory=dict)
    reference: dict[str, tuple[float, float]] = field(default_factory=dict)
    chance: float = math.nan  # 1 / number of classes of the cell's data (NaN: unknown)
    early_stopping: dict[str, str] = field(default_factory=dict)  # its settings; {}: not set

    @property
    def learns(self) -> bool:
        """False when the mean final test accuracy is below chance + `CHANCE_MARGIN` and the
        training labels are not fitted either (`FITS_TRAINING`); a cell without test accuracy,
        or of unknown chance, is given the benefit of the doubt."""
        stat = self.stats.get("final_test_accuracy")
        if stat is None or math.isnan(stat.mean) or math.isnan(self.chance):
            return True
        train = self.stats.get("final_train_accuracy")
        if train is not None and train.mean >= FITS_TRAINING:
            return True
        return stat.mean >= self.chance + CHANCE_MARGIN

    @property
    def figure_label(self) -> str:
        """The label in figures: flagged when the cell does not learn."""
        return self.label if self.learns else f"{self.label} (does not learn)"

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
    # studies side by side: each cell is complete at its own study's seeds
    own = runs.groupby("cell_hash")["expected_seeds"].max() if "expected_seeds" in runs else {}
    name_counts = pd.Series(list(names.values())).value_counts()
    variants = _variants(runs, study)

    rows: list[CellRow] = []
    for cell_hash, name in names.items():
        mine = done[done["cell_hash"] == cell_hash]
        stats = {}
        for metric in RUN_METRICS:
            values = mine[metric].dropna() if metric in mine else ()
            if len(values):
                stats[metric] = Stat.of(list(values))
        rows.append(
            CellRow(
                label=name if name_counts[name] == 1 else f"{name} ({cell_hash[:6]})",
                name=name,
                order=len(rows),
                cell_hash=cell_hash,
                in_study=cell_hash in in_study,
                adopted=cell_hash in adopted.values(),
                expected=int(own.get(cell_hash, expected)),
                done=int(seeds_done.get(cell_hash, 0)),
                failed=int((failed["cell_hash"] == cell_hash).sum()),
                running=int((running["cell_hash"] == cell_hash).sum()),
                stats=stats,
                chance=chance_level(mine),
                early_stopping=stopping.settings(mine),
                reference=(
                    _reference(study, name, variants.get(cell_hash))
                    if cell_hash in in_study
                    else {}
                ),
            )
        )
    return rows


def chance_level(runs: pd.DataFrame) -> float:
    """1 / number of classes of the runs' data: their `n_classes` tag, else their
    `data.dataset` param (runs logged before the tag; a dataset missing from
    `DATASET_CLASSES` counts 10). NaN without runs."""
    if "params" not in runs or not len(runs):
        return math.nan
    if "n_classes" in runs:
        logged = pd.to_numeric(runs["n_classes"], errors="coerce").dropna()
        if len(logged):
            return 1.0 / float(logged.max())
    datasets = {(p or {}).get("data.dataset") for p in runs["params"]}
    classes = max(DATASET_CLASSES.get(str(d), DEFAULT_CLASSES) for d in datasets)
    return 1.0 / classes


def ranked(rows: Sequence[CellRow], by: str = RANK_BY) -> list[CellRow]:
    """Table order: best mean `by` first (highest; smallest for a gap); cells that do not
    learn after those that do (a gap at chance is no result), cells without `by` last."""
    sign = 1.0 if by in LOWER_IS_BETTER else -1.0

    def key(row: CellRow) -> tuple[bool, bool, float, int]:
        stat = row.stats.get(by)
        mean = stat.mean if stat is not None else math.nan
        value = sign * mean if not math.isnan(mean) else 0.0
        return (math.isnan(mean), not row.learns, value, row.order)

    return sorted(rows, key=key)


def table_columns(rows: Sequence[CellRow], per_class: bool = False) -> list[Column]:
    """The table's metric columns: the standard ones, validation when any cell has it, the
    per-class scores when asked for, and early stopping's when any cell sets it or stopped."""
    extra = [c for c in VAL_COLUMNS if any(c.metric in r.stats for r in rows)]
    if per_class:
        extra += [c for c in PER_CLASS_COLUMNS if any(c.metric in r.stats for r in rows)]
    stopped = any(r.early_stopping or "stopped_epoch" in r.stats for r in rows)
    # early stopping's beside the best epoch, before the losses: in view on a narrow page
    stops = list(EARLY_STOP_COLUMNS) if stopped else []
    return [*TABLE_COLUMNS[:3], *extra, *TABLE_COLUMNS[3:5], *stops, *TABLE_COLUMNS[5:]]


def best(
    rows: Sequence[CellRow], metric: str, lowest: bool = False, learning: bool = True
) -> CellRow | None:
    """The cell with the best mean `metric`, the first in `rows` on a tie (None: no values);
    with `learning`, among the cells that learn only (a gap at chance is never the best)."""
    have = [
        r
        for r in rows
        if (r.learns or not learning) and metric in r.stats and not math.isnan(r.stats[metric].mean)
    ]
    if not have:
        return None
    sign = 1.0 if lowest else -1.0
    return min(have, key=lambda r: sign * r.stats[metric].mean)


def least_gap(rows: Sequence[CellRow]) -> CellRow | None:
    """The cell with the smallest mean final gap among those that learn and whose mean final
    test accuracy is within `GAP_STAR_TEST_MARGIN` of the best cell's."""
    top = best(rows, "final_test_accuracy")
    if top is None:
        return None
    floor = top.stats["final_test_accuracy"].mean - GAP_STAR_TEST_MARGIN
    keeping = [
        r
        for r in rows
        if "final_test_accuracy" in r.stats and r.stats["final_test_accuracy"].mean >= floor
    ]
    return best(keeping, "final_gap", lowest=True)


def curves(histories: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each cell's per-epoch metrics, with a 95% t-interval band.

    Runs of one cell may end at different epochs (early stopping): at each epoch the mean and
    band are over the runs that reached it (`n`), out of the cell's runs with the metric
    (`runs`), so a curve goes on to the longest run and says where fewer seeds make it.

    Returns:
        One row per (cell hash, metric, epoch): columns `mean`, `std`, `n`, `runs`, `low`,
        `high` (`low`/`high` NaN where only one seed has the epoch).
    """
    grouped = histories.groupby(["cell_hash", "metric", "epoch"])["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    runs = histories.groupby(["cell_hash", "metric"])["run_id"].nunique().rename("runs")
    out = out.merge(runs.reset_index(), on=["cell_hash", "metric"], how="left")
    out = out.astype({"n": int, "runs": int})
    t = st.t.ppf(0.5 + LEVEL / 2, np.maximum(out["n"] - 1, 1))
    half = np.where(out["n"] >= 2, t * out["std"] / np.sqrt(out["n"]), np.nan)
    out["low"] = out["mean"] - half
    out["high"] = out["mean"] + half
    # a band stays where its metric can be: losses and norms at 0 and above, accuracies in
    # [0, 1]; only the gap can be negative
    bounded = out["metric"] != "gap"
    out.loc[bounded, "low"] = out.loc[bounded, "low"].clip(lower=0.0)
    accuracy = out["metric"].str.endswith("_accuracy")
    out.loc[accuracy, "high"] = out.loc[accuracy, "high"].clip(upper=1.0)
    return out


def baseline_cell(rows: Sequence[CellRow], study: Study | None) -> CellRow | None:
    """The cell others are compared with: the study's `report.baseline` (a cell or variant
    name), else a cell or variant named `baseline`, else the first cell with runs."""
    wanted = study.report.baseline if study is not None else None
    variants = {c.hash: c.variant for c in study.cells} if study is not None else {}
    for name in (wanted, "baseline") if wanted else ("baseline",):
        for row in rows:
            if row.in_study and name in (row.name, variants.get(row.cell_hash)) and row.done:
                return row
    return next((r for r in sorted(rows, key=lambda r: r.order) if r.done), None)


def versus_baseline(
    done: pd.DataFrame, rows: Sequence[CellRow], baseline: CellRow
) -> list[Comparison]:
    """Each cell with finished runs against `baseline`, in `rows` order.

    Differences are cell minus baseline over the seeds each has (the latest FINISHED run
    per seed); the interval and p-value are Welch's (unequal variances), so they need two
    seeds on both sides.
    """
    base = done[done["cell_hash"] == baseline.cell_hash]
    out = []
    for row in rows:
        if row.cell_hash == baseline.cell_hash or not row.done:
            continue
        mine = done[done["cell_hash"] == row.cell_hash]
        test = _difference(mine["final_test_accuracy"], base["final_test_accuracy"])
        gap = _difference(mine["final_gap"], base["final_gap"])
        sentence = _sentence(row.label, test, gap) if row.learns else not_learning(row)
        out.append(Comparison(row, test, gap, sentence))
    return out


def not_learning(row: CellRow) -> str:
    """The versus-baseline sentence of a cell that does not learn: `init_small does not learn:
    final test accuracy 0.113, chance 0.100 (below chance + 0.05); its small gap is no cure.`"""
    test = row.stats["final_test_accuracy"].mean
    return (
        f"{row.label} does not learn: final test accuracy {test:.3f}, chance {row.chance:.3f} "
        f"(below chance + {CHANCE_MARGIN:.2f}); its small gap is no cure."
    )


def reference_checks(rows: Sequence[CellRow]) -> list[ReferenceCheck]:
    """Every `reference:` range of the study beside our mean for it, in `rows` order."""
    labels = {c.metric: c.label for c in TABLE_COLUMNS}
    return [
        ReferenceCheck(row.label, metric, labels[metric], low, high, row.stats.get(metric))
        for row in rows
        for metric, (low, high) in row.reference.items()
    ]


def _difference(cell: pd.Series, base: pd.Series) -> Difference | None:
    a, b = cell.dropna().to_numpy(float), base.dropna().to_numpy(float)
    if not len(a) or not len(b):
        return None
    mean = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, math.nan, math.nan, math.nan)
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        # no spread on either side (e.g. both collapsed to one class): the difference is exact
        return Difference(mean, mean, mean, 0.0 if mean else 1.0)
    with warnings.catch_warnings():
        # nearly equal seeds (a cell stuck at chance) trip scipy's precision warning; the
        # numbers are still right to the digits shown
        warnings.simplefilter("ignore", RuntimeWarning)
        result = st.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(LEVEL)
    return Difference(mean, float(interval.low), float(interval.high), float(result.pvalue))


def _sentence(label: str, test: Difference | None, gap: Difference | None) -> str:
    """One plain sentence: what the cell does to the gap and to test accuracy, e.g.
    `weight_decay narrows the gap by 0.06 (0.04–0.08) and costs 0.05 test accuracy (...)`."""
    parts = []
    if gap is not None:
        parts.append(_phrase(gap, "narrows the gap by", "widens the gap by", "the gap"))
    if test is not None:
        parts.append(_phrase(test, "costs", "gains", "test accuracy", " test accuracy"))
    if not parts:
        return f"{label}: no finished runs to compare."
    return f"{label} " + " and ".join(parts) + "."


def _phrase(d: Difference, down: str, up: str, what: str, suffix: str = "") -> str:
    """`narrows the gap by 0.06 (0.04–0.08)`; `changes the gap by +0.01, within seed noise
    (interval -0.02 to +0.04)` when the 95% interval holds zero: no claim either way."""
    verb = down if d.mean < 0 else up
    if math.isnan(d.low):
        return f"{verb} {abs(d.mean):.2f}{suffix} (one seed: no interval)"
    if not d.clear:
        return (
            f"changes {what} by {d.mean:+.2f}, within seed noise "
            f"(interval {d.low:+.2f} to {d.high:+.2f})"
        )
    low, high = sorted((abs(d.low), abs(d.high)))
    return f"{verb} {abs(d.mean):.2f}{suffix} ({low:.2f}–{high:.2f})"


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
