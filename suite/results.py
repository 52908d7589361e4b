"""Results as data: a study's runs, learning curves and seed statistics as pandas frames.

For a notebook, a script or a paper: the numbers the report shows, without MLflow's client.

    from suite import results
    runs = results.runs("overfitting")        # one row per run, settings typed
    curves = results.curves("overfitting", ["test_accuracy"])   # long: one row per point
    summary = results.summary("overfitting")  # per cell and metric: the report's numbers
    curves.merge(runs, on="run_id")           # any setting beside every point

Each takes a study name, a study `suite.load` returned, or a list of either (one frame,
studies side by side, told apart by its `study` column) and `uri`, the tracking store (default: `MLFLOW_TRACKING_URI`, else
`sqlite:///mlflow.db` in the current folder; a tracking server works the same).

- `runs`: `run_id, study, cell, seed, status, dataset`, then `counted` (True for the run the
  numbers use: the latest FINISHED run of its cell and seed, unless a search's pruner ended
  it or it is a trial of an adaptive search since changed: the report keeps both apart),
  `cell_hash`, `variant`,
  `data_source`, `start_time`, `end_time`, `failure`, the run's final and best metrics
  (`final_test_accuracy`, `best_epoch`, `final_test_loss`, ...), and every setting of its
  configuration as its own column, typed as the study file types it (`model.weight_decay` a
  float, `model.hidden` a list, `model.init` `he` or `std:0.01`); for an adaptive search's
  trials also `trial` (its slot), `pruned` (the epoch its pruner ended it at, NaN when it
  finished) and `epochs_trained`.
- `curves`: `run_id, study, cell, seed, epoch, metric, value`, every run's per-epoch metrics
  (epochs from 1; all the runs logged, or the ones asked for), read in bulk.
- `summary`: `study, cell, cell_hash, metric, n, mean, std, ci95_low, ci95_high`: per cell (in
  the report's order, named as its table names them) and final metric, the mean over the
  counted runs' seeds with its Student-t 95% interval: the numbers of the report's table, from
  the same code (`suite.report.aggregate.cell_rows`).
- `model(run_id)`: the run's trained network (a `keras.Model`), when its study logged it
  (`log_model: final | best`); `suite.results_model` has it.

Bad input is one line: `ResultsError` (a `LookupError`) names the study, metric or store.

Owns: the public frames and their column contracts, typing a run's logged params back into
its settings (`settings_of`). Must not: write to the store, or compute a statistic of its own
(the report's `aggregate` computes them; this module lays them out).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pandas as pd

from suite.metrics import STEP_METRICS
from suite.names import EPOCHS_TRAINED_TAG, PRUNED_TAG, TRIAL_TAG
from suite.report import aggregate, load
from suite.report.search import older_searches
from suite.results_model import model
from suite.spec import RunConfig, did_you_mean, flatten, parse_yaml, short_value
from suite.tracking import Tracker

__all__ = ["ResultsError", "curves", "model", "runs", "settings_of", "summary"]

Studies = Any  # a study name, a loaded `Study`, or a list of either

# the columns every frame opens with, in this order
RUN_KEYS = ["run_id", "study", "cell", "seed", "status", "dataset"]
CURVE_COLUMNS = ["run_id", "study", "cell", "seed", "epoch", "metric", "value"]
SUMMARY_COLUMNS = [
    "study",
    "cell",
    "cell_hash",
    "metric",
    "n",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
]
# tags and metrics that count things: integers (missing where a run has none)
INTEGER_TAGS = ("n_train", "n_val", "n_test", "n_classes")
INTEGER_METRICS = ("best_epoch", "stopped_epoch", "restored_epoch", "fit_epoch", "n_params")
# what `load` reads that a user has no use for, or that `runs` renames (a search trial's
# point is its settings' columns)
HIDDEN = (
    "run_name",
    "study_file",
    "params",
    "logged",
    "epochs",
    "suite_version",
    "git_commit",
    *(t for t in load.SEARCH_TAGS if t not in (TRIAL_TAG, PRUNED_TAG, EPOCHS_TRAINED_TAG)),
)
# an adaptive search's trials: the slot, the epoch its pruner ended it at (NaN: not pruned)
# and the epochs it trained; columns only when some run of the study has them
TRIAL_COLUMNS = (TRIAL_TAG, PRUNED_TAG, EPOCHS_TRAINED_TAG)


class ResultsError(LookupError):
    """A study, metric or store that is not there; the message is one line."""


def runs(study: Studies, *, uri: str | None = None) -> pd.DataFrame:
    """One row per run of the study (or studies), settings typed (see the module's docstring).

    Raises:
        ResultsError: no such study in the store, or a study without runs.
    """
    tracker = Tracker(uri)
    return pd.concat(
        [_runs(name, tracker, _spec(study, name, tracker)) for name in _names(study)],
        ignore_index=True,
    )


def curves(
    study: Studies, metrics: Sequence[str] | None = None, *, uri: str | None = None
) -> pd.DataFrame:
    """Every run's per-epoch `metrics` (default: all it logged), long (see the module's
    docstring); joins to `runs` on `run_id`.

    Raises:
        ResultsError: no such study, a study without runs, or a metric no run logged.
    """
    tracker = Tracker(uri)
    parts = []
    for name in _names(study):
        read = _read(name, tracker)
        frame = read.runs
        logged = sorted({m for names in frame["logged"] for m in names} - set(STEP_METRICS))
        asked = [metrics] if isinstance(metrics, str) else metrics
        wanted = list(dict.fromkeys(asked)) if asked is not None else _per_epoch(logged)
        for metric in wanted:
            if metric in logged and metric not in _per_epoch(logged):
                raise ResultsError(
                    f"curves: {metric} is logged once per run, at its end: it is a column of "
                    f"runs({name!r})"
                )
            if metric in STEP_METRICS:
                raise ResultsError(
                    f"curves: {metric} is logged per update, not per epoch; read it with "
                    "MLflow's MlflowClient.get_metric_history(run_id, metric)"
                )
            if metric not in logged:
                raise ResultsError(
                    f"curves: no run of study {name!r} logged {metric!r}"
                    f"{did_you_mean(metric, logged)} (logged: {', '.join(_per_epoch(logged))})"
                )
        epochs = int(frame["epochs"].max()) if frame["epochs"].notna().any() else 1000
        history = load.load_histories(tracker, frame, wanted, epochs)
        parts.append(history.assign(study=name)[CURVE_COLUMNS])
    out = pd.concat(parts, ignore_index=True)
    return out.astype({"seed": "Int64", "epoch": int, "value": float})


def summary(study: Studies, *, uri: str | None = None) -> pd.DataFrame:
    """Per cell and final metric, the seed statistics of the study's report table.

    Raises:
        ResultsError: no such study, or a study without runs.
    """
    tracker = Tracker(uri)
    parts = [
        summary_of(name, _read(name, tracker).runs, _spec(study, name, tracker))
        for name in _names(study)
    ]
    return pd.concat(parts, ignore_index=True)


def summary_of(study: str, frame: pd.DataFrame, spec: Any = None) -> pd.DataFrame:
    """The summary frame of one study's runs as `load` reads them (`spec`: its study file,
    which orders and names the cells as the report does)."""
    rows = [
        {
            "study": study,
            "cell": row.label,
            "cell_hash": row.cell_hash,
            "metric": metric,
            "n": stat.n,
            "mean": stat.mean,
            "std": stat.std,
            "ci95_low": stat.low,
            "ci95_high": stat.high,
        }
        for row in aggregate.cell_rows(_numbered(frame, spec), spec)
        for metric, stat in row.stats.items()
    ]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"n": int})


def _numbered(frame: pd.DataFrame, spec: Any) -> pd.DataFrame:
    """The runs the report's numbers may use: none a search's pruner ended (a pruned trial's
    final metrics are an early epoch's, `suite.report.search.split_pruned`), none of an
    adaptive search since changed (`suite.report.search.older_searches`)."""
    keep = ~older_searches(spec, frame)
    if PRUNED_TAG in frame:
        keep &= frame[PRUNED_TAG].isna()
    return frame[keep].reset_index(drop=True)


def _spec(study: Studies, name: str, tracker: Tracker) -> Any:
    """The study file of `name`: the one given (`suite.load`), else the report's."""
    given = [study] if isinstance(study, str) or hasattr(study, "cells") else list(study)
    for item in given:
        if getattr(item, "name", None) == name and hasattr(item, "cells"):
            return item
    return study_file(name, tracker)


def settings_of(params: dict[str, str]) -> dict[str, Any]:
    """A run's logged params typed back into its settings: the configuration validated as a
    study file's would be (floats as floats, lists as lists), flattened to dotted keys, with
    `model.init` as one value (`he`, `std:0.01`). Params a newer or older suite logged that
    this one does not know are parsed as YAML values instead."""
    return dict(_settings(tuple(sorted(params.items()))))


@functools.lru_cache(maxsize=256)
def _settings(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, Any], ...]:
    parsed = {key: _value(text) for key, text in items if key != "seed"}
    nested: dict[str, Any] = {}
    for dotted, value in parsed.items():
        *path, last = dotted.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        typed = RunConfig.model_validate(nested).model_dump(mode="json")
    except ValueError:
        return tuple(parsed.items())
    typed["model"]["init"] = short_value(typed["model"]["init"])  # one value, in its place
    return tuple(flatten(typed).items())


def _value(text: str) -> Any:
    try:
        return parse_yaml(text)
    except Exception:  # noqa: BLE001 - not YAML: the text as it was logged
        return text


def _runs(name: str, tracker: Tracker, spec: Any) -> pd.DataFrame:
    frame = _read(name, tracker).runs
    counted = aggregate.finished_runs(_numbered(frame, spec))["run_id"]
    settings = pd.DataFrame([settings_of(p or {}) for p in frame["params"]], index=frame.index)
    out = frame.drop(columns=[c for c in HIDDEN if c in frame]).rename(
        columns={"failure_reason": "failure"}
    )
    out.insert(0, "study", name)
    out["counted"] = out["run_id"].isin(counted)
    if out[TRIAL_TAG].isna().all():
        out = out.drop(columns=list(TRIAL_COLUMNS))
    for column in (*INTEGER_TAGS, *INTEGER_METRICS):
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce").round().astype("Int64")
    first = [*RUN_KEYS, "counted"]
    out = out[first + [c for c in out.columns if c not in first]]
    out = pd.concat([out, settings.drop(columns=[c for c in settings if c in out])], axis=1)
    return out.sort_values("start_time", kind="stable").reset_index(drop=True)


def _read(name: str, tracker: Tracker) -> load.StudyRuns:
    try:
        read = load.read_runs(name, tracker)
    except load.ReportError as err:
        raise ResultsError(str(err)) from None
    if read.runs.empty:
        raise ResultsError(f"study {name!r} has no runs in {read.uri}; run it: overfit run {name}")
    return read


def study_file(name: str, tracker: Tracker) -> Any:
    """The study the report would use, loaded (its file found as `overfit report NAME` finds
    it), or None."""
    from suite.report.source import locate
    from suite.study import load_study

    found = locate(name, tracker)
    if found.path is None:
        return None
    try:
        return load_study(found.path, check_data=False)
    except ValueError:
        return None


def _per_epoch(logged: list[str]) -> list[str]:
    """The per-epoch metrics among `logged`: those a run logs at every epoch, not at its end."""
    ends = set(load.RUN_END_METRICS)
    return [m for m in logged if m not in ends and not m.startswith("final_")]


def _names(study: Studies) -> list[str]:
    """Study names from a name, a loaded study (`suite.load`), or a list of either."""
    given = [study] if isinstance(study, str) or hasattr(study, "cells") else list(study)
    names = [getattr(s, "name", s) for s in given]
    if not names:
        raise ResultsError("no study named: give a study name or a list of them")
    return list(dict.fromkeys(names))
