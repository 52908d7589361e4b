"""Everything MLflow: the store, experiments, runs, params, metrics, artifacts, resume look-ups.

Layout (design.md): one experiment per study; one flat run per (cell, seed), named
`<cell>/seed<seed>` and tagged `study`, `cell`, `cell_hash`, `variant`, `seed`, `data_source`,
`suite_version` and `git_commit` (and, once its data is cut, `n_train`, `n_val`, `n_test`).
The UI compares cells by grouping the runs on the `cell` tag
(experiment page -> "Group by" -> tag `cell`), which shows every cell's seeds together with
their mean. Flat runs (rather than a parent run per cell) keep resuming simple: a run is done
when a FINISHED run with its cell hash and seed exists.

Per-epoch metrics are buffered and sent with `log_batch` (up to 1000 values a request), so a
200-epoch run costs a few requests, not one per value.

Claims (exactly once, however many invocations share a store): a run is trained only by the
process that claimed it. `Tracker.claim` looks for the key's runs, creates a RUNNING run
tagged with its owner (`host:pid`), its invocation's token and a heartbeat, then looks again:
if another live RUNNING run or a FINISHED one of the same key is there, the new run is
withdrawn (KILLED, then deleted) and the key is left to the other. Two claims racing on one
key cannot both win: each looks after its own run exists, so the later look sees the other;
both may withdraw, and try again a moment later. A RUNNING run whose owner is gone (a dead
pid on this host, or no heartbeat for `claim_timeout()` seconds) is ended KILLED and its key
claimed again. The owner's `Heartbeat` thread refreshes the heartbeat of every run it holds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import suite
from suite.images import confusion_png
from suite.spec import Cell
from suite.store import StoreError, artifact_root, prepare, resolve_uri, sqlite_file

FAILURE_TAG = "failure_reason"
OWNER_TAG = "owner"  # host:pid of the process that logs the run
TOKEN_TAG = "invocation"  # the token of the `overfit run` that claimed (and trained) it
HEARTBEAT_TAG = "heartbeat"  # unix time of its owner's latest sign of life
MACHINE_TAG = "owner_machine"  # boot id and pid namespace: where the owner's pid means something
TIMEOUT_TAG = "claim_timeout"  # the owner's claim timeout, which paces its heartbeat
# what only a RUNNING run needs: deleted when it ends, so a finished run's tags, the UI's
# columns and its Group-by menu show what the run is, not how it was held
LEASE_TAGS = (OWNER_TAG, MACHINE_TAG, HEARTBEAT_TAG, TIMEOUT_TAG)
CLAIM_TIMEOUT = 120.0  # seconds without a heartbeat after which a RUNNING run is abandoned
RUN_KIND_TAG = "run_kind"
STUDY_FILE_TAG = "study_file"  # experiment tag: the absolute path of the study's YAML
REPORT_ARTIFACT_PATH = "report"
CONFUSION_ARTIFACT = "confusion_matrix"
ACTIVATIONS_ARTIFACT = "activations.json"  # with train.log_activations
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_RUNS_PER_BULK = 100  # a tracking server's bulk history endpoint takes at most 100 runs
BULK_POINTS_LIMIT = 25_000  # ... and answers at most this many points
DATABASE_RUNS_PER_QUERY = 500  # run ids bound per query: well under sqlite's variable limit
# gaps and the accuracies they are the difference of (train - test), logged consistently
GAP_METRICS = {
    "gap": ("train_accuracy", "test_accuracy"),
    "final_gap": ("final_train_accuracy", "final_test_accuracy"),
}

# The MLflow UI over a study's experiment (checked against MLflow 3.17's UI bundle).
# `mlflow.experimentKind` is MLflow's own tag for what an experiment is for; the UI's kind
# selector writes it. MLflow 3.17 no longer opens an experiment on it: its page follows the
# sidebar's GenAI / Model training switch (kept per browser, GenAI at first), or the address's
# `workflowType=machine_learning`. Set all the same, so the experiment says what it is.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning"; else genai_development
# A saved view of the runs page is an experiment tag `mlflow.sharedViewState.<id>` (the UI's
# "Views" menu lists them; `viewStateShareKey=<id>` in the address opens one). Each study
# gets two: its runs with their final accuracies, best test accuracy first, and the same
# grouped by cell (each cell's row: the mean over its seeds).
UI_VIEW_TAG = "mlflow.sharedViewState."
UI_RUNS_VIEW = "overfit-runs"
UI_CELLS_VIEW = "overfit-cells"
UI_COLUMNS = ("final_train_accuracy", "final_test_accuracy", "final_gap")
_UI_COLUMN_KEYS = [f"metrics.`{name}`" for name in UI_COLUMNS]
_UI_STATE: dict[str, Any] = {
    "selectedColumns": _UI_COLUMN_KEYS,
    "columnOrder": _UI_COLUMN_KEYS,
    "columnWidths": dict(zip(_UI_COLUMN_KEYS, (155, 165, 100), strict=True)),  # names whole
    "orderByKey": "metrics.`final_test_accuracy`",
    "orderByAsc": False,
}
UI_EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
    **{
        UI_VIEW_TAG + view: json.dumps(
            # fixed times: the tag's value changes only when the view does (the menu lists
            # the newest first: the runs view above the cells view)
            {"name": name, "createdAt": created, "updatedAt": created, "state": json.dumps(state)}
        )
        for view, name, created, state in (
            (UI_RUNS_VIEW, "runs: final accuracies", 1_767_225_660_000, _UI_STATE),
            (
                UI_CELLS_VIEW,
                "cells: mean over seeds",
                1_767_225_600_000,
                {
                    **_UI_STATE,
                    # its column first, wide enough for "Group: <cell name>"
                    "columnOrder": ["attributes.`Run Name`", *_UI_COLUMN_KEYS],
                    "columnWidths": {"attributes.`Run Name`": 240, **_UI_STATE["columnWidths"]},
                    "groupBy": {
                        "aggregateFunction": "average",
                        "groupByKeys": [{"mode": "tag", "groupByData": "cell"}],
                    },
                    "runsHiddenMode": "SHOW_ALL",  # the charts draw every cell's mean
                },
            ),
        )
    },
}


def runs_url(ui_base: str, experiment_id: str, view: str = UI_RUNS_VIEW) -> str:
    """The address of a study's runs table in the MLflow UI at `ui_base` (http://host:port),
    showing the saved view `view` (`UI_RUNS_VIEW` or `UI_CELLS_VIEW`): the experiment's
    page would open on MLflow's GenAI overview in a browser that has not switched to Model
    training. The view exists once `Tracker.experiment_id` has seen the study."""
    return (
        f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?viewStateShareKey={view}&workflowType=machine_learning"
    )


# no "View run ... at: URL" lines on stdout each time a run on a tracking server ends
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines on every start
logging.getLogger("alembic").setLevel(logging.WARNING)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line."""


class ClaimLost(RuntimeError):
    """A run this process trained was ended by another, which took it as abandoned."""


@functools.cache
def git_commit() -> str | None:
    """The commit of the suite's source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass(frozen=True)
class RunRecord:
    """A run as the store holds it (the fields the runner and `list` need)."""

    run_id: str
    cell: str
    cell_hash: str
    seed: int
    status: str
    metrics: dict[str, float]
    start_time: int  # milliseconds since the epoch
    tags: Mapping[str, str] = field(default_factory=dict)

    def abandoned(self, now: float | None = None) -> str | None:
        """Why this RUNNING run has nobody training it any more, or None while its owner
        lives: its pid is gone from this machine (same boot, same pid namespace), or no
        heartbeat for its owner's claim timeout, or no owner at all (a run logged before
        claims existed)."""
        if OWNER_TAG not in self.tags:
            return "it has no owner tag (logged before claims existed)"
        host, _, pid = self.tags[OWNER_TAG].rpartition(":")
        here = self.tags.get(MACHINE_TAG, "") == machine() and host == socket.gethostname()
        if here and pid.isdigit() and not _alive(int(pid)):
            return f"its owner (pid {pid} on {host}) is gone"
        now = time.time() if now is None else now
        try:
            beat = float(self.tags[HEARTBEAT_TAG])
        except (KeyError, ValueError):
            beat = self.start_time / 1000  # its first heartbeat is its creation
        try:  # the owner's timeout paces its beat: judge it by that, not by the reader's
            timeout = float(self.tags[TIMEOUT_TAG])
        except (KeyError, ValueError):
            timeout = claim_timeout()
        silent = now - beat
        if silent > timeout:
            return f"no heartbeat from its owner for {silent:.0f} s"
        return None


@dataclass(frozen=True)
class Claim:
    """What `Tracker.claim` got: `won` (its run is `run_id`, RUNNING, ours to train),
    `finished` (by someone else: `run_id` and its final `metrics`), or `held` (another
    live invocation trains it now: try again later)."""

    outcome: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    token: str | None = None  # of the invocation that finished it
    holder: str | None = None


def claim_timeout() -> float:
    """`SUITE_CLAIM_TIMEOUT` seconds, else `CLAIM_TIMEOUT`."""
    try:
        return float(os.environ.get("SUITE_CLAIM_TIMEOUT") or CLAIM_TIMEOUT)
    except ValueError:
        return CLAIM_TIMEOUT


def owner() -> str:
    """This process, as the `owner` tag names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@functools.cache
def machine() -> str:
    """This boot of this machine and this pid namespace: two processes that agree on it
    (and on the host name) see the same pids. Empty where Linux's /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class Tracker:
    """A study's view of one MLflow store."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = resolve_uri(uri)
        scheme = urlparse(self.uri).scheme.partition("+")[0]  # postgresql+psycopg2://...
        if scheme not in ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks"):
            raise TrackingError(
                f"--tracking-uri: unsupported URI {self.uri!r}; use sqlite:///path/to/mlflow.db, "
                "http(s)://host:port (a tracking server) or a database URI"
            )

    @functools.cached_property
    def client(self) -> MlflowClient:
        """Made on first use: for sqlite, that creates the database file. Its calls wait out
        a database another process holds locked (see `_Patient`). A tracking server that
        does not answer is a one-line error here, not minutes of MLflow's retries."""
        if self.uri.startswith(("http://", "https://")):
            _check_answers(self.uri)
        prepare_store(self.uri)
        return cast(MlflowClient, _Patient(MlflowClient(tracking_uri=self.uri)))

    @functools.cached_property
    def heartbeat(self) -> Heartbeat:
        """Keeps the runs this process claimed alive (its thread starts on the first claim)."""
        return Heartbeat(self)

    def exists(self) -> bool:
        """False for a local sqlite store whose file is not there yet (nothing to read)."""
        db = sqlite_file(self.uri)
        return db is None or db.is_file()

    # experiments -------------------------------------------------------------------------

    def experiment_id(self, study: str, create: bool = True) -> str | None:
        """The study's experiment, created (with the local artifact root) when asked."""
        try:
            experiment = self.client.get_experiment_by_name(study)
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"experiment {study!r} is deleted in {self.uri}; restore or purge it "
                        "(mlflow experiments restore / mlflow gc)"
                    )
                # the UI's tags (see UI_EXPERIMENT_TAGS) on experiments made before them, or
                # with older views; a kind someone chose in the UI stays
                for key, value in UI_EXPERIMENT_TAGS.items():
                    have = experiment.tags.get(key)
                    if have is None or (key.startswith(UI_VIEW_TAG) and have != value):
                        # a store that refuses (permissions) leaves the UI less handy, no more
                        with contextlib.suppress(MlflowException):
                            self.client.set_experiment_tag(experiment.experiment_id, key, value)
                return str(experiment.experiment_id)
            if not create:
                return None
            try:
                return str(
                    self.client.create_experiment(
                        study, artifact_location=artifact_root(self.uri), tags=UI_EXPERIMENT_TAGS
                    )
                )
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # another invocation created it a moment ago
                return self.experiment_id(study, create=False)
        except MlflowException as err:
            raise TrackingError(f"tracking store {self.uri}: {first_line(err)}") from None

    def note_study_file(self, experiment_id: str, path: Path) -> None:
        """Record where the study's YAML is (experiment tag `STUDY_FILE_TAG`, the latest
        invocation's): the report reads the file from there when it is not in experiments/."""
        self.client.set_experiment_tag(experiment_id, STUDY_FILE_TAG, str(path.resolve()))

    def study_file(self, experiment_id: str) -> Path | None:
        """The study's YAML as its latest `overfit run` recorded it (None if never)."""
        recorded = self.client.get_experiment(experiment_id).tags.get(STUDY_FILE_TAG)
        return Path(recorded) if recorded else None

    def studies(self) -> list[tuple[str, str]]:
        """(experiment id, name) of every active experiment but MLflow's `Default`."""
        return [
            (str(e.experiment_id), e.name)
            for e in self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
            if e.name != "Default"
        ]

    def iter_runs(self, experiment_id: str) -> Iterator[Run]:
        """Every active run of a study that the suite logged (it has a `cell_hash` tag)."""
        page_token = None
        while True:
            page = self.client.search_runs(
                [experiment_id],
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=page_token,
            )
            yield from (run for run in page if "cell_hash" in run.data.tags)
            page_token = page.token
            if not page_token:
                return

    def runs(self, experiment_id: str) -> list[RunRecord]:
        """Every suite run of a study, as records."""
        return [_record(run) for run in self.iter_runs(experiment_id)]

    def key_runs(self, experiment_id: str, cell_hash: str, seed: int) -> list[RunRecord]:
        """The active runs of one (cell, seed)."""
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.cell_hash = '{cell_hash}' and tags.seed = '{seed}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
        )
        return [_record(run) for run in found]

    def histories(
        self, run_ids: Sequence[str], metrics: Sequence[str], points_per_run: int = 1000
    ) -> list[tuple[str, str, int, float]]:
        """Every logged point of `metrics` in `run_ids`: (run id, metric, step, value).

        Read in bulk, not one request per run and metric: a database store answers a few
        column queries on its metrics table (no entity objects per point); a tracking server
        its bulk endpoint (the one its UI uses), sized so no answer is cut at its
        25,000-point limit; any other store, run by run. `points_per_run` (about a run's
        epochs) sizes the server requests; an answer cut short anyway is read again run by run.
        Points of one run and metric come in logging order, so a step logged twice ends with
        its latest value.
        """
        store = self.client._tracking_client.store  # bulk reads are not on MlflowClient
        if hasattr(store, "ManagedSessionMaker"):
            return self._database_bulk(store, list(run_ids), metrics)
        per_request = max(1, min(MAX_RUNS_PER_BULK, BULK_POINTS_LIMIT // (points_per_run + 1)))
        out: list[tuple[str, str, int, float]] = []
        for metric in metrics:
            for chunk in _chunks(list(run_ids), per_request):
                if self.uri.startswith(("http://", "https://")):
                    out += self._server_bulk(store, chunk, metric)
                else:
                    out += self._one_by_one(chunk, metric)
        return out

    @staticmethod
    def _database_bulk(
        store: Any, run_ids: list[str], metrics: Sequence[str]
    ) -> list[tuple[str, str, int, float]]:
        """MLflow's own `metrics` table model, queried for columns: ~10x faster than
        `get_metric_history_bulk`, which builds two objects per point."""
        from mlflow.store.tracking.dbmodels.models import SqlMetric

        out: list[tuple[str, str, int, float]] = []
        with store.ManagedSessionMaker() as session:
            for chunk in _chunks(run_ids, DATABASE_RUNS_PER_QUERY):
                rows = (
                    session.query(
                        SqlMetric.run_uuid,
                        SqlMetric.key,
                        SqlMetric.step,
                        SqlMetric.value,
                        SqlMetric.is_nan,
                    )
                    .filter(SqlMetric.key.in_(list(metrics)), SqlMetric.run_uuid.in_(chunk))
                    .order_by(
                        SqlMetric.run_uuid, SqlMetric.key, SqlMetric.timestamp, SqlMetric.step
                    )
                    .all()
                )
                out += [
                    (run, key, int(step), math.nan if is_nan else float(value))
                    for run, key, step, value, is_nan in rows
                ]
        return out

    def _one_by_one(self, run_ids: list[str], metric: str) -> list[tuple[str, str, int, float]]:
        return [
            (run_id, metric, p.step, p.value)
            for run_id in run_ids
            for p in self.client.get_metric_history(run_id, metric)
        ]

    def _server_bulk(
        self, store: Any, run_ids: list[str], metric: str
    ) -> list[tuple[str, str, int, float]]:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
        params = {"run_id": run_ids, "metric_key": metric, "max_results": BULK_POINTS_LIMIT}
        response = http_request(store.get_host_creds(), endpoint, "GET", params=params)
        points = verify_rest_response(response, endpoint).json().get("metrics", [])
        if len(points) >= BULK_POINTS_LIMIT:  # cut at the server's limit: ask run by run
            return self._one_by_one(run_ids, metric)
        return [(p["run_id"], metric, int(p["step"]), float(p["value"])) for p in points]

    # runs --------------------------------------------------------------------------------

    def start_run(
        self,
        experiment_id: str,
        study: str,
        cell: Cell,
        seed: int,
        data_source: str,
    ) -> str:
        """Create a RUNNING run with its tags, flattened params and `config.yaml` artifact
        (unclaimed: `claim` is how the runner starts runs)."""
        run_id = self._create(experiment_id, study, cell, seed, data_source)
        self._describe(run_id, cell, seed)
        return run_id

    def _create(
        self,
        experiment_id: str,
        study: str,
        cell: Cell,
        seed: int,
        data_source: str,
        claim_tags: dict[str, str] | None = None,
    ) -> str:
        tags = {
            "study": study,
            "cell": cell.name,
            "cell_hash": cell.hash,
            "variant": cell.variant,
            "seed": str(seed),
            "data_source": data_source,
            "suite_version": suite.__version__,
            **(claim_tags or {}),
        }
        commit = git_commit()
        if commit:
            tags["git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(experiment_id, tags=tags, run_name=f"{cell.name}/seed{seed}")
        return str(run.info.run_id)

    def _describe(self, run_id: str, cell: Cell, seed: int) -> None:
        """Log a new run's params and `config.yaml`; on failure, end it FAILED and raise."""
        params = [Param(k, _param_value(v)) for k, v in cell.config.flat().items()]
        params.append(Param("seed", str(seed)))
        try:
            for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=chunk)
            self.client.log_text(run_id, cell.config.to_yaml(), "config.yaml")
        except BaseException as err:
            # never leave a half-made run RUNNING: it would look like work in progress
            self.fail(run_id, f"could not start: {type(err).__name__}: {first_line(err)}")
            raise

    def claim(
        self,
        experiment_id: str,
        study: str,
        cell: Cell,
        seed: int,
        data_source: str,
        token: str,
        rerun: bool = False,
    ) -> Claim:
        """Claim one (cell, seed) for this process to train (see the module's docstring).

        A FINISHED run of the key leaves it `finished` (unless `rerun`); a live RUNNING run
        leaves it `held`; RUNNING runs nobody trains any more are ended KILLED on the way,
        and so is an earlier attempt of this same invocation (`token`): a retried task whose
        worker died. A won claim's run has its params and config logged, and is held alive
        by `heartbeat` until it ends.
        """
        settled = self._settle(experiment_id, cell.hash, seed, token, rerun, mine=None)
        if settled is not None:
            return settled
        tags = {
            OWNER_TAG: owner(),
            MACHINE_TAG: machine(),
            TOKEN_TAG: token,
            HEARTBEAT_TAG: f"{time.time():.3f}",
            TIMEOUT_TAG: f"{claim_timeout():g}",
        }
        run_id = self._create(experiment_id, study, cell, seed, data_source, tags)
        settled = self._settle(experiment_id, cell.hash, seed, token, rerun, mine=run_id)
        if settled is not None:
            self.withdraw(run_id)  # a claim made at the same moment: at most one trains
            return settled
        self.heartbeat.hold(run_id)
        try:
            self._describe(run_id, cell, seed)
        except BaseException:
            self.heartbeat.release(run_id)
            raise
        return Claim("won", run_id)

    def _settle(
        self,
        experiment_id: str,
        cell_hash: str,
        seed: int,
        token: str,
        rerun: bool,
        mine: str | None,
    ) -> Claim | None:
        """What the key's other runs leave to `claim`: None if nothing stops it. RUNNING
        runs nobody trains any more are ended on the way, whatever the outcome."""
        others = [r for r in self.key_runs(experiment_id, cell_hash, seed) if r.run_id != mine]
        live = []
        for record in others:
            if record.status != "RUNNING":
                continue
            why: str | None
            if record.tags.get(TOKEN_TAG) == token:
                why = "this invocation's earlier attempt, whose worker died"
            else:
                why = record.abandoned()
            if why is None:
                live.append(record)
            else:
                self.fail(record.run_id, f"abandoned: {why}", "KILLED")
        finished = [r for r in others if r.status == "FINISHED"]
        if finished and not rerun:
            latest = max(finished, key=lambda r: r.start_time)
            return Claim("finished", latest.run_id, latest.metrics, latest.tags.get(TOKEN_TAG))
        if live:
            return Claim("held", live[0].run_id, holder=live[0].tags.get(OWNER_TAG))
        return None

    def withdraw(self, run_id: str) -> None:
        """Give back a claimed run that never trained: ended KILLED and deleted (the UI and
        the report do not show deleted runs; `mlflow gc` purges them)."""
        self.heartbeat.release(run_id)
        self.client.set_terminated(run_id, "KILLED")
        self.client.delete_run(run_id)

    def still_running(self, run_id: str) -> bool:
        """False when someone ended this run (a claim that took it as abandoned)."""
        return str(self.client.get_run(run_id).info.status) == "RUNNING"

    def report_run(self, experiment_id: str, study: str) -> str:
        """The study's report run, made on first use.

        One study-level run per study (tag `run_kind=report`, no `cell_hash`, so it never
        counts as a (cell, seed) run) holds the latest report under its `report/` artifacts,
        so the UI offers it beside the runs.
        """
        try:
            found = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.{RUN_KIND_TAG} = 'report'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1,
            )
            if found:
                return str(found[0].info.run_id)
            tags = {"study": study, RUN_KIND_TAG: "report", "mlflow.runName": "report"}
            run_id = str(self.client.create_run(experiment_id, tags=tags).info.run_id)
            # ended at once: a failed upload never leaves a run that looks in progress
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except MlflowException as err:
            raise TrackingError(f"tracking store {self.uri}: {first_line(err)}") from None
        return run_id

    def log_report(self, run_id: str, folder: Path, summary: str) -> None:
        """Replace the report run's `report/` artifacts with `folder`; `summary` becomes the
        run's description in the UI."""
        tags = {
            "report_generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mlflow.note.content": summary,
        }
        try:
            self.set_tags(run_id, tags)
            self.client.log_artifacts(run_id, str(folder), REPORT_ARTIFACT_PATH)
        except MlflowException as err:
            raise TrackingError(f"tracking store {self.uri}: {first_line(err)}") from None

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_epochs(self, run_id: str, rows: Iterable[tuple[int, dict[str, float]]]) -> None:
        """Send per-epoch metrics (step = epoch, from 1) in as few requests as the API allows.

        Values are logged as the shortest decimals of their float32 (see `shortest`), and a
        gap as the difference of the two accuracies so logged (0.07, not 0.06999999 as the
        float32 difference would show). Each row's dict is updated to the values logged, so
        its holder has what the store has.

        A database store takes finite values as one bulk insert (see `_database_log`); a
        tracking server, or a batch holding NaN or infinity, goes through `log_batch`.
        """
        import numpy

        tiny = float(numpy.finfo(numpy.float32).tiny)  # the smallest normal float32

        def shortest(value: float) -> float:
            """The shortest decimal that reads back as the value's float32, which is what the
            UI shows: 0.1135, not 0.11349999904632568. Lossless for Keras' metrics (float32);
            the few computed in float64 (the gap of two of them, seconds, macro F1) keep the
            7 significant digits of float32. Values beyond float32's normal range stay."""
            with numpy.errstate(over="ignore", under="ignore"):
                single = numpy.float32(value)
            if value == 0 or (math.isfinite(single) and abs(single) >= tiny):
                return float(str(single))
            return float(value)

        rows = list(rows)
        for _, values in rows:
            for name, value in values.items():
                values[name] = shortest(value)
            for gap, (train, test) in GAP_METRICS.items():
                if gap in values and train in values and test in values:
                    values[gap] = shortest(values[train] - values[test])
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, epoch)
            for epoch, values in rows
            for name, value in values.items()
        ]
        store = self.client._tracking_client.store
        if (
            metrics
            and hasattr(store, "_update_latest_metrics_if_necessary")
            and all(math.isfinite(m.value) for m in metrics)
        ):
            _patiently(self._database_log, store, run_id, metrics)
            return
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    @staticmethod
    def _database_log(store: Any, run_id: str, metrics: list[Metric]) -> None:
        """Insert metric rows into MLflow's own `metrics` table in one statement, and update
        its `latest_metrics` with MLflow's own code. `log_batch` builds an ORM object per
        value, which costs about 5% of a headline run; this costs a few milliseconds. One
        transaction: all the rows, or none."""
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from sqlalchemy import insert

        rows = [
            {
                "run_uuid": run_id,
                "key": m.key,
                "value": m.value,
                "timestamp": m.timestamp,
                "step": m.step,
                "is_nan": False,
            }
            for m in metrics
        ]
        latest: dict[str, Metric] = {}
        for m in metrics:
            if m.key not in latest or (m.step, m.timestamp, m.value) > (
                latest[m.key].step,
                latest[m.key].timestamp,
                latest[m.key].value,
            ):
                latest[m.key] = m
        with store.ManagedSessionMaker(read_only=False) as session:
            store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
            session.execute(insert(SqlMetric.__table__), rows)
            newest = [
                SqlMetric(
                    run_uuid=run_id,
                    key=m.key,
                    value=m.value,
                    timestamp=m.timestamp,
                    step=m.step,
                    is_nan=False,
                )
                for m in latest.values()
            ]
            store._update_latest_metrics_if_necessary(newest, session)

    def log_confusion(self, run_id: str, matrix: Any) -> None:
        """The run's test-set confusion matrix as the artifacts `confusion_matrix.json` and
        `confusion_matrix.png` (a heatmap with counts, drawn in ~30 ms with Pillow)."""
        rows = [[int(v) for v in row] for row in matrix]
        document = {"rows": "true digit", "columns": "predicted digit", "matrix": rows}
        self.client.log_dict(run_id, document, CONFUSION_ARTIFACT + ".json")
        total = sum(map(sum, rows))
        png = confusion_png(matrix, f"test-set confusion matrix, {total} images")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / (CONFUSION_ARTIFACT + ".png")
            path.write_bytes(png)
            self.client.log_artifact(run_id, str(path))

    def log_dict(self, run_id: str, document: dict[str, Any], name: str) -> None:
        """A JSON artifact at the run's top level."""
        self.client.log_dict(run_id, document, name)

    def load_dict(self, run_id: str, name: str) -> dict[str, Any] | None:
        """A run's JSON artifact, or None when the run has none of that name."""
        with tempfile.TemporaryDirectory() as folder:
            try:
                local = self.client.download_artifacts(run_id, name, folder)
                document = json.loads(Path(local).read_text())
            except (MlflowException, OSError, ValueError):
                return None
        return document if isinstance(document, dict) else None

    def finish(self, run_id: str, final: dict[str, float]) -> None:
        """Log the final metrics and end the run FINISHED.

        Raises:
            ClaimLost: another process took the run as abandoned and ended it meanwhile
                (its owner was silent for longer than the claim timeout); it stays ended.
        """
        self.heartbeat.release(run_id)
        if not self.still_running(run_id):
            raise ClaimLost(f"run {run_id} was ended by another invocation while it trained")
        self.log_epochs(run_id, [(0, final)])
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        self._drop_lease(run_id)

    def fail(self, run_id: str, reason: str, status: str = "FAILED") -> None:
        """End a run as FAILED (or KILLED) with its reason as a tag."""
        self.heartbeat.release(run_id)
        self.client.log_batch(run_id, tags=[RunTag(FAILURE_TAG, reason[:5000])])
        self.client.set_terminated(run_id, status)
        self._drop_lease(run_id)

    def _drop_lease(self, run_id: str) -> None:
        """Delete an ended run's `LEASE_TAGS` (after it ended: a RUNNING run without an owner
        would look abandoned). Only tidiness: a tag left by a failed call is harmless."""
        tags = self.client.get_run(run_id).data.tags
        for name in LEASE_TAGS:
            if name in tags:
                with contextlib.suppress(MlflowException):
                    self.client.delete_tag(run_id, name)


LOCKED_RETRY_SECONDS = 120.0  # how long a call waits out a locked sqlite database in all


class _Patient:
    """An `MlflowClient` whose calls retry while a sqlite database is locked.

    Several processes (`--workers`) write to one sqlite file; sqlite lets one write at a
    time, and a writer that waits longer than its busy timeout (MLflow sets 20 s) gets
    `database is locked`, its transaction rolled back. The call is then made again, after a growing,
    jittered pause, until it succeeds or `LOCKED_RETRY_SECONDS` have passed. Any other error
    is raised at once.
    """

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patiently(*args: Any, **kwargs: Any) -> Any:
            return _patiently(attribute, *args, **kwargs)

        return patiently


def _patiently(call: Any, *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`, made again while sqlite says `database is locked`."""
    deadline = time.monotonic() + LOCKED_RETRY_SECONDS
    pause = 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if not _locked(err) or time.monotonic() > deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 2.0)


def _locked(err: BaseException | None) -> bool:
    """True for sqlite's `database is locked`, however MLflow wrapped it."""
    while err is not None:
        if "database is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


class Heartbeat:
    """Refreshes the `heartbeat` tag of every run this process holds, from a daemon thread,
    every quarter of the claim timeout: a run stays claimed while its owner lives, however
    long a compile, an epoch or a worker's start-up takes."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def hold(self, run_id: str) -> None:
        with self.lock:
            self.held.add(run_id)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
                self.thread.start()

    def release(self, run_id: str) -> None:
        with self.lock:
            self.held.discard(run_id)

    def _beat(self) -> None:
        while True:
            time.sleep(claim_timeout() / 4)
            with self.lock:
                held = sorted(self.held)
            for run_id in held:
                # under the lock: a run released meanwhile has ended, and a beat written after
                # its end would bring back the tag its end deleted
                with self.lock:
                    if run_id not in self.held:
                        continue
                    # an unreachable store: the next beat tries again
                    with contextlib.suppress(Exception):
                        self.tracker.client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")


class EpochLogger:
    """Buffers a run's per-epoch metrics and flushes them every `every` epochs or `seconds`.

    Used as the training loop's `on_epoch` hook, so the UI shows a running run's curves
    while the number of requests stays small.
    """

    def __init__(self, tracker: Tracker, run_id: str, every: int = 100, seconds: float = 15.0):
        self.tracker = tracker
        self.run_id = run_id
        self.every = every
        self.seconds = seconds
        self.buffer: list[tuple[int, dict[str, float]]] = []
        self.last_flush = time.monotonic()

    def __call__(self, epoch: int, values: dict[str, float]) -> None:
        self.buffer.append((epoch, values))
        if len(self.buffer) >= self.every or time.monotonic() - self.last_flush > self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.tracker.log_epochs(self.run_id, self.buffer)
            self.buffer = []
        self.last_flush = time.monotonic()


def prepare_store(uri: str) -> None:
    """Make a local sqlite store ready before MLflow opens it (`suite.store.prepare`: built
    under a lock and moved into place whole); other stores are left to MLflow.

    Raises:
        TrackingError: the store cannot be made ready (the message says how to repair it).
    """
    try:
        prepare(uri)
    except StoreError as err:
        raise TrackingError(str(err)) from None


def _check_answers(uri: str, timeout: float = 10.0) -> None:
    """Raise TrackingError when nothing answers HTTP at `uri` (any HTTP answer will do)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # something answered: MLflow's own calls tell the rest
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"no tracking server answers at {uri} ({reason}); start one (overfit server) or "
            "check --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


def _record(run: Run) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        cell=run.data.tags.get("cell", ""),
        cell_hash=run.data.tags["cell_hash"],
        seed=int(run.data.tags.get("seed", -1)),
        status=run.info.status,
        metrics=dict(run.data.metrics),
        start_time=int(run.info.start_time or 0),
        tags=dict(run.data.tags),
    )


def _param_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def first_line(err: BaseException) -> str:
    """An error's message, first line only (its class name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
