"""The tracking store through MLflow's client: experiments, runs, params, metrics, artifacts.

Owns: a study's experiment (with the UI's saved views, `suite.ui_views`), creating a run of a
(cell, seed) with its tags, params and `config.yaml`, ending it, logging its epochs and
artifacts (the network as an MLflow Keras model, `log_model`), and reading runs, histories and
networks back (the runner's resume, `list`, the report, `suite.results_model`). Its client's
calls wait out a locked sqlite store (`suite.patience`).

Must not: decide who trains a run (`suite.claims` claims runs, holds their leases and ends
them), nor how a run ends (`suite.lifecycle`); the MLflow internals it uses for speed are all
in `suite.mlflow_internals`.

Layout (design.md): one experiment per study; one flat run per (cell, seed), named
`<cell>/seed<seed>` and tagged `study`, `cell`, `cell_hash`, `variant`, `seed`, `data_source`,
`suite_version` and `git_commit` (and, once its data is cut, `n_train`, `n_val`, `n_test`);
tag names are declared in `suite.names`. The UI compares cells by grouping the runs on the
`cell` tag. Flat runs (rather than a parent run per cell) keep resuming simple: a run is done
when a FINISHED run with its cell hash and seed exists.

Per-epoch metrics are buffered (`EpochLogger`) and sent in as few requests as the store allows,
so a 200-epoch run costs a few requests, not one per value.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import suite
from suite import mlflow_internals
from suite.history import shortest
from suite.images import confusion_png
from suite.names import (
    CELL_HASH_TAG,
    CELL_TAG,
    CONFUSION_ARTIFACT,
    DATA_SOURCE_TAG,
    DATASET_TAG,
    FAILURE_TAG,
    GIT_COMMIT_TAG,
    MODEL_ARTIFACT,
    REPORT_ARTIFACT_PATH,
    RUN_KIND_TAG,
    SEED_TAG,
    STUDY_FILE_TAG,
    STUDY_TAG,
    SUITE_VERSION_TAG,
    VARIANT_TAG,
    Stored,
)
from suite.patience import Patient, patiently
from suite.store import StoreError, artifact_root, open_settled, prepare, resolve_uri, sqlite_file
from suite.study import Cell
from suite.ui_views import UI_EXPERIMENT_TAGS, UI_VIEW_TAG

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_RUNS_PER_BULK = 100  # a tracking server's bulk history endpoint takes at most 100 runs
# gaps and the accuracies they are the difference of (train - test), logged consistently
GAP_METRICS = {
    "gap": ("train_accuracy", "test_accuracy"),
    "final_gap": ("final_train_accuracy", "final_test_accuracy"),
}
T = TypeVar("T")

# no "View run ... at: URL" lines on stdout each time a run on a tracking server ends
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines on every start
logging.getLogger("alembic").setLevel(logging.WARNING)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line."""


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
        a database another process holds locked (see `patiently`). A tracking server that
        does not answer is a one-line error here, not minutes of MLflow's retries."""
        if self.uri.startswith(("http://", "https://")):
            _check_answers(self.uri)
        client = prepare_store(self.uri, lambda: MlflowClient(tracking_uri=self.uri))
        return cast(MlflowClient, Patient(client))

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
            yield from (run for run in page if CELL_HASH_TAG in run.data.tags)
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
            filter_string=f"tags.{CELL_HASH_TAG} = '{cell_hash}' and tags.{SEED_TAG} = '{seed}'",
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
        25,000-point limit (both in `suite.mlflow_internals`); any other store, run by run. `points_per_run` (about a run's
        epochs) sizes the server requests; an answer cut short anyway is read again run by run.
        Points of one run and metric come in logging order, so a step logged twice ends with
        its latest value.
        """
        fast = mlflow_internals.read_histories(self.client, run_ids, metrics)
        if fast is not None:
            return fast
        limit = mlflow_internals.BULK_POINTS_LIMIT
        per_request = max(1, min(MAX_RUNS_PER_BULK, limit // (points_per_run + 1)))
        server = self.uri.startswith(("http://", "https://"))
        out: list[tuple[str, str, int, float]] = []
        for metric in metrics:
            for chunk in _chunks(list(run_ids), per_request):
                bulk = (
                    mlflow_internals.server_histories(self.client, chunk, metric)
                    if server
                    else None
                )
                out += self._one_by_one(chunk, metric) if bulk is None else bulk
        return out

    def _one_by_one(self, run_ids: list[str], metric: str) -> list[tuple[str, str, int, float]]:
        """The public API's reading: a request per run and metric."""
        return [
            (run_id, metric, p.step, p.value)
            for run_id in run_ids
            for p in self.client.get_metric_history(run_id, metric)
        ]

    # runs --------------------------------------------------------------------------------

    def start_run(
        self, experiment_id: str, study: str, cell: Cell, seed: int, data_source: str
    ) -> str:
        """Create a RUNNING run with its tags, flattened params and `config.yaml` artifact
        (unclaimed: `suite.claims` is how the runner starts runs)."""
        run_id = self.create_run(experiment_id, study, cell, seed, data_source)
        self.describe(run_id, cell, seed)
        return run_id

    def create_run(
        self,
        experiment_id: str,
        study: str,
        cell: Cell,
        seed: int,
        data_source: str,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        """Create a RUNNING run of (cell, seed) with its tags (and `extra_tags`), without its
        params: `describe` logs those once the run is known to be wanted (`suite.claims`)."""
        tags = {
            STUDY_TAG: study,
            CELL_TAG: cell.name,
            CELL_HASH_TAG: cell.hash,
            VARIANT_TAG: cell.variant,
            SEED_TAG: str(seed),
            DATA_SOURCE_TAG: data_source,
            DATASET_TAG: cell.config.data.dataset,
            SUITE_VERSION_TAG: suite.__version__,
            **(extra_tags or {}),
        }
        commit = git_commit()
        if commit:
            tags[GIT_COMMIT_TAG] = commit
            tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(experiment_id, tags=tags, run_name=f"{cell.name}/seed{seed}")
        return str(run.info.run_id)

    def describe(self, run_id: str, cell: Cell, seed: int) -> None:
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

    def still_running(self, run_id: str) -> bool:
        """False when someone ended this run (a claim that took it as abandoned)."""
        return str(self.client.get_run(run_id).info.status) == Stored.RUNNING

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
            tags = {STUDY_TAG: study, RUN_KIND_TAG: "report", "mlflow.runName": "report"}
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

        Values are logged as the shortest decimals of their float32 (`suite.history.shortest`), and a
        gap as the difference of the two accuracies so logged (0.07, not 0.06999999 as the
        float32 difference would show). Each row's dict is updated to the values logged, so
        its holder has what the store has.

        A database store takes finite values as one bulk insert (`suite.mlflow_internals`); a
        tracking server, or a batch holding NaN or infinity, goes through `log_batch`.
        """
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
        if patiently(mlflow_internals.log_metrics, self.client, run_id, metrics):
            return
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def log_confusion(self, run_id: str, matrix: Any) -> None:
        """The run's test-set confusion matrix as the artifacts `confusion_matrix.json` and
        `confusion_matrix.png` (a heatmap with counts, drawn in ~30 ms with Pillow)."""
        rows = [[int(v) for v in row] for row in matrix]
        document = {"rows": "true class", "columns": "predicted class", "matrix": rows}
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

    def log_model(self, run_id: str, model: Any, example: Any, outputs: Any) -> None:
        """The run's network (a `keras.Model`) as an MLflow Keras model under `model/`, with
        `example` (a few inputs, giving `outputs`) as input example and signature. Its
        requirements are the installed Keras and TensorFlow: MLflow's inference of them
        would load the model again in a new process."""
        from importlib.metadata import version

        import mlflow.keras
        from mlflow.models import infer_signature

        requirements = [f"{name}=={version(name)}" for name in ("keras", "tensorflow")]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / MODEL_ARTIFACT
            path.mkdir()  # the Keras flavour writes the example before making its folder
            mlflow.keras.save_model(
                model,
                str(path),
                signature=infer_signature(example, outputs),
                input_example=example,
                pip_requirements=requirements,
            )
            self.client.log_artifacts(run_id, str(path), MODEL_ARTIFACT)

    def load_model(self, run_id: str) -> Any:
        """The network a run logged (`log_model`), as a `keras.Model`.

        Raises:
            TrackingError: no such run, or it logged no network (one line saying what to do).
        """
        import mlflow.keras

        try:  # a run that does not exist has no artifact location: an error
            logged = [a.path for a in self.client.list_artifacts(run_id, MODEL_ARTIFACT)]
        except MlflowException as err:
            raise TrackingError(f"run {run_id}: {first_line(err)} ({self.uri})") from None
        if f"{MODEL_ARTIFACT}/MLmodel" not in logged:
            raise TrackingError(
                f"run {run_id} logged no model; set log_model: final in its study and run it again"
            )
        with tempfile.TemporaryDirectory() as folder:
            local = self.client.download_artifacts(run_id, MODEL_ARTIFACT, folder)
            return mlflow.keras.load_model(local)

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
        """Log the final metrics (step 0) and end the run FINISHED."""
        self.log_epochs(run_id, [(0, final)])
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, run_id: str, reason: str, status: str = Stored.FAILED) -> None:
        """End a run as FAILED (or KILLED) with its reason as a tag."""
        self.client.log_batch(run_id, tags=[RunTag(FAILURE_TAG, reason[:5000])])
        self.client.set_terminated(run_id, status)

    def withdraw(self, run_id: str) -> None:
        """End a run that never trained KILLED and delete it (the UI and the report do not
        show deleted runs; `mlflow gc` purges them)."""
        self.client.set_terminated(run_id, Stored.KILLED)
        self.client.delete_run(run_id)

    def delete_tags(self, run_id: str, names: Sequence[str]) -> None:
        """Delete those of `names` the run has. Only tidiness: a tag a failed call leaves
        is harmless."""
        tags = self.client.get_run(run_id).data.tags
        for name in names:
            if name in tags:
                with contextlib.suppress(MlflowException):
                    self.client.delete_tag(run_id, name)


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


def prepare_store(uri: str, open_client: Callable[[], T] | None = None) -> T | None:
    """Make a local sqlite store ready before MLflow opens it (`suite.store.prepare`: built
    under a lock and moved into place whole); other stores are left to MLflow. Then, if
    given, `open_client()` (an `MlflowClient` opens its store as it is made), waiting out
    another client's migration of the same new file (`suite.store.open_settled`).

    Raises:
        TrackingError: the store cannot be made ready (the message says how to repair it).
    """
    try:
        prepare(uri)
        return None if open_client is None else open_settled(uri, open_client)
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
        cell=run.data.tags.get(CELL_TAG, ""),
        cell_hash=run.data.tags[CELL_HASH_TAG],
        seed=int(run.data.tags.get(SEED_TAG, -1)),
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
