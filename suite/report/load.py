"""MLflow -> pandas: a study's runs (tags and final metrics) and their per-epoch histories.

Everything the report shows is read back from the tracking store (design.md: no side files).
Of the report's modules this one reads the runs, their histories and artifacts; `source` reads
the study-file tag and `write` stores the report run. All three go through
`suite.tracking.Tracker`: no report module imports MLflow.

Owns: reading a study back for the report (`load_runs`: one row per active run with its tags
(a search trial's too, `SEARCH_TAGS`), params, status, failure reason, final metrics and early
stopping's epochs, and its last losses, those of the weights it kept when it stopped early;
`load_histories`; `load_documents`, a run's JSON artifacts), the `ReportError` a report stops
with, and the tracking URI as printed (`display_uri`, without credentials). Must not: write to
the store, or derive numbers from what it reads (`aggregate` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from suite.metrics import (
    EARLY_STOP_METRICS,
    FINAL_METRICS,
    FINAL_VAL_METRICS,
    FIT_METRICS,
    SCALING_METRICS,
)
from suite.names import (
    CELL_HASH_TAG,
    CELL_TAG,
    DATA_SOURCE_TAG,
    DATASET_TAG,
    EPOCHS_TRAINED_TAG,
    FAILURE_TAG,
    GIT_COMMIT_TAG,
    PRUNED_TAG,
    PRUNER_TAG,
    SAMPLER_TAG,
    SEARCH_FRAME_TAG,
    SEARCH_ID_TAG,
    SEARCH_POINT_TAG,
    SEED_TAG,
    SIZE_TAGS,
    STUDY_FILE_TAG,
    SUITE_VERSION_TAG,
    TRIAL_TAG,
    VARIANT_TAG,
    Stored,
)
from suite.spec import did_you_mean
from suite.tracking import Tracker

TAGS = (
    CELL_TAG,
    CELL_HASH_TAG,
    VARIANT_TAG,
    SEED_TAG,
    DATA_SOURCE_TAG,
    DATASET_TAG,
    SUITE_VERSION_TAG,
    GIT_COMMIT_TAG,
    *SIZE_TAGS,
    STUDY_FILE_TAG,  # the study YAML the run was made from (absolute path)
)
# an adaptive search's trial (`suite.search`): its search, slot, asked point, sampler and
# pruner, the epochs it trained and, when its pruner ended it, that epoch (None elsewhere)
SEARCH_TAGS = (
    SEARCH_ID_TAG,
    SEARCH_FRAME_TAG,
    TRIAL_TAG,
    SEARCH_POINT_TAG,
    SAMPLER_TAG,
    PRUNER_TAG,
    PRUNED_TAG,
    EPOCHS_TRAINED_TAG,
)
# a run's last logged per-epoch value, under the name the report gives it (for a run stopped
# early, its value at `restored_epoch`: the weights its other final metrics describe)
LAST_VALUES = {"train_loss": "final_train_loss", "test_loss": "final_test_loss"}
# what a run logs once at its end: the final metrics, early stopping's epochs, the fit epoch,
# temperature scaling
RUN_END_METRICS = (
    *FINAL_METRICS,
    *FINAL_VAL_METRICS,
    *EARLY_STOP_METRICS,
    *FIT_METRICS,
    *SCALING_METRICS,
)

RUN_COLUMNS = (
    "run_id",
    "run_name",
    "status",
    "start_time",
    "end_time",
    *TAGS,
    *SEARCH_TAGS,
    FAILURE_TAG,
    "epochs",
    *RUN_END_METRICS,
    *LAST_VALUES.values(),
    "params",  # the run's params: {dotted setting: value as logged}
    "logged",  # the names of the metrics the run logged
)
HISTORY_COLUMNS = ("run_id", "cell_hash", "cell", "seed", "epoch", "metric", "value")


class ReportError(RuntimeError):
    """The report cannot be written; the message is one line meant for the user."""


@dataclass(frozen=True)
class StudyRuns:
    """Every active run of one study, one row each (see `RUN_COLUMNS`)."""

    study: str
    uri: str  # the tracking URI, without credentials: safe to print in a report
    experiment_id: str
    runs: pd.DataFrame


def load_runs(study: str, tracker: Tracker) -> StudyRuns:
    """Read a study's runs: tags, status, failure reason and final metrics.

    Raises:
        ReportError: the store is empty, has no such study, or the study has no FINISHED run.
    """
    read = read_runs(study, tracker)
    runs, uri = read.runs, read.uri
    if not (runs["status"] == Stored.FINISHED).any():
        counts = runs["status"].str.lower().value_counts()
        what = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"
        raise ReportError(
            f"study {study!r} has no FINISHED runs in {uri} ({what}); run it: overfit run {study}"
        )
    return read


def read_runs(study: str, tracker: Tracker) -> StudyRuns:
    """A study's runs as `load_runs` reads them, whatever their status (none at all too).

    Raises:
        ReportError: the store is empty or has no such study.
    """
    uri = display_uri(tracker.uri)
    # a missing sqlite file would be created by the first query: say so instead
    studies = [name for _, name in tracker.studies()] if tracker.exists() else []
    if not studies:
        raise ReportError(f"no studies in {uri}; run one first: overfit run STUDY.yaml")
    experiment_id = tracker.experiment_id(study, create=False)
    if experiment_id is None:
        raise ReportError(
            f"no study {study!r} in {uri}{did_you_mean(study, studies)}; "
            f"studies: {', '.join(sorted(studies))}"
        )

    runs = pd.DataFrame(list(_run_rows(tracker, experiment_id)), columns=list(RUN_COLUMNS))
    for column in ("seed", "epochs", TRIAL_TAG, EPOCHS_TRAINED_TAG):
        runs[column] = pd.to_numeric(runs[column], errors="coerce").astype("Int64")
    for column in ("start_time", "end_time"):
        runs[column] = pd.to_datetime(runs[column], unit="ms", utc=True)
    runs[PRUNED_TAG] = pd.to_numeric(runs[PRUNED_TAG], errors="coerce").astype(float)
    for metric in (*RUN_END_METRICS, *LAST_VALUES.values()):
        runs[metric] = runs[metric].astype(float)
    _restored_losses(tracker, runs)
    return StudyRuns(study, uri, experiment_id, runs)


def load_histories(
    tracker: Tracker, runs: pd.DataFrame, metrics: Sequence[str], epochs: int = 1000
) -> pd.DataFrame:
    """The per-epoch `metrics` of `runs`, long: one row per (run, metric, epoch).

    Read in bulk (`Tracker.histories`): a few requests for a whole study, however many runs.
    Epochs are MLflow steps, counted from 1; `epochs` (the longest run's) sizes the requests.
    """
    points = tracker.histories(list(runs["run_id"]), metrics, epochs)
    values = pd.DataFrame(points, columns=["run_id", "metric", "epoch", "value"])
    values = values[values["epoch"] >= 1]
    keys = runs[["run_id", "cell_hash", "cell", "seed"]]
    history = keys.merge(values, on="run_id")[list(HISTORY_COLUMNS)]
    # a metric re-logged at the same step (a resumed flush) counts once: keep the last value
    history = history.drop_duplicates(["run_id", "metric", "epoch"], keep="last")
    return history.astype({"epoch": int, "value": float}).reset_index(drop=True)


def load_documents(tracker: Tracker, runs: pd.DataFrame, name: str) -> dict[str, dict[str, Any]]:
    """A JSON artifact (`name`) of each run that has it, by run id."""
    out = {}
    for run_id in runs["run_id"]:
        document = tracker.load_dict(run_id, name)
        if document is not None:
            out[run_id] = document
    return out


def display_uri(uri: str) -> str:
    """The tracking URI without a user name or password, for printing."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _run_rows(tracker: Tracker, experiment_id: str) -> Iterable[dict[str, object]]:
    for run in tracker.iter_runs(experiment_id):
        tags = run.data.tags
        row: dict[str, object] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            FAILURE_TAG: tags.get(FAILURE_TAG),
            "epochs": run.data.params.get("train.epochs"),
            "params": dict(run.data.params),
            "logged": tuple(run.data.metrics),
        }
        row.update({tag: tags.get(tag) for tag in (*TAGS, *SEARCH_TAGS)})
        row.update({m: run.data.metrics.get(m) for m in RUN_END_METRICS})
        # MLflow keeps each metric's value at its highest step: the last epoch's
        row.update({name: run.data.metrics.get(m) for m, name in LAST_VALUES.items()})
        yield row


def _restored_losses(tracker: Tracker, runs: pd.DataFrame) -> None:
    """The last losses of runs that stopped early and kept an earlier epoch's weights
    (`restored_epoch` before `stopped_epoch`): their values at that epoch, in place, so the
    table's losses describe the same weights as the run's final accuracies."""
    restored = runs["restored_epoch"]
    earlier = runs[restored.notna() & (restored != runs["stopped_epoch"])]
    if earlier.empty:
        return
    epochs = int(earlier[["stopped_epoch", "restored_epoch"]].max().max())
    points = tracker.histories(list(earlier["run_id"]), list(LAST_VALUES), epochs)
    at = dict(zip(earlier["run_id"], earlier["restored_epoch"], strict=True))
    for run_id, metric, step, value in points:
        if step == at[run_id]:
            runs.loc[runs["run_id"] == run_id, LAST_VALUES[metric]] = float(value)
