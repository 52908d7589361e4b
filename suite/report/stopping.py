"""Early stopping's numbers: which cells set it, and where each run that stopped ended.

A run with `train.early_stopping` may stop before `train.epochs`: its per-epoch histories end
at its `stopped_epoch`, and its final metrics are those of the weights it kept
(`restored_epoch`). Runs of one cell then have curves of different lengths; `aggregate.curves`
averages the seeds each epoch has, and the figures mark where each run stopped from
`stop_points`.

Owns: a cell's early-stopping settings as its runs' params hold them (`settings`), each
stopped run's last point on every curve (`stop_points`), and the report's note on how it
shows them (`note`). Must not: read or write the tracking
store (runs and histories arrive as `load`'s tables), draw, or import the other report modules
(`aggregate` imports this one).
"""

from __future__ import annotations

import pandas as pd

PREFIX = "train.early_stopping."  # the flattened params of a run that sets it
STOP_COLUMNS = ["cell_hash", "run_id", "metric", "epoch", "value"]


def settings(runs: pd.DataFrame) -> dict[str, str]:
    """The `train.early_stopping` settings of the runs' params (`{"patience": "10", ...}`),
    those of the first run that sets it; {} when none does."""
    for params in runs.get("params", ()):
        found = {k[len(PREFIX) :]: v for k, v in (params or {}).items() if k.startswith(PREFIX)}
        if found:
            return found
    return {}


def stop_points(histories: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Where each run that stopped early ended, on each of its curves: the run's value of
    every metric in `histories` at its `stopped_epoch`.

    Args:
        histories: per-epoch points (`load.load_histories`, or their smoothed values).
        runs: the runs the numbers use, with their `stopped_epoch` (NaN: did not stop).

    Returns:
        One row per (run, metric): `cell_hash`, `run_id`, `metric`, `epoch`, `value`; empty
        when no run stopped early.
    """
    if "stopped_epoch" not in runs or histories.empty:
        return pd.DataFrame(columns=STOP_COLUMNS)
    stopped = runs.loc[runs["stopped_epoch"].notna(), ["run_id", "stopped_epoch"]]
    at = histories.merge(stopped, on="run_id")
    at = at[at["epoch"] == at["stopped_epoch"]]
    return at[STOP_COLUMNS].reset_index(drop=True)


def note(runs: pd.DataFrame) -> str | None:
    """The note under the table when runs stopped early (None when none did)."""
    if "stopped_epoch" not in runs or not runs["stopped_epoch"].notna().any():
        return None
    stopped = int(runs["stopped_epoch"].notna().sum())
    return (
        f"{stopped} of {len(runs)} finished runs stopped early (train.early_stopping): their "
        "curves end at the epoch they stopped at (a hollow circle on the curves), a cell's "
        "mean goes on over the seeds still training (a thinner line, with the count where it "
        "drops: n=3 of 5), and their final metrics and losses are those of the epoch whose "
        "weights they kept (the table's kept epoch)."
    )
