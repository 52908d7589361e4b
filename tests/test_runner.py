"""The runner against a real sqlite MLflow store: logging layout, resume, failures, interrupts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from suite import mlflow_internals
from suite.lifecycle import Silent
from suite.metrics import EPOCH_METRICS, FINAL_METRICS
from suite.names import FAILED, FINISHED, SKIPPED
from suite.runner import run_study
from suite.study import RunKey, load_study
from suite.tracking import Tracker

# weight decay 1000 at learning rate 10 multiplies the weights by about -1e4 every update, so
# the squared weights overflow float32 within 3 epochs of 2 updates, whatever the seed
EXPLODING = (
    "  exploding: {model: {weight_decay: 1000.0}, train: {optimizer: {learning_rate: 10.0}}}\n"
)


@pytest.fixture
def tracker(tracking_uri: str) -> Tracker:
    return Tracker(tracking_uri)


def finished_keys(tracker: Tracker, study: str) -> list[tuple[str, int]]:
    experiment_id = tracker.experiment_id(study, create=False)
    assert experiment_id is not None
    return sorted(
        (r.cell_hash, r.seed) for r in tracker.runs(experiment_id) if r.status == FINISHED.upper()
    )


def test_every_run_logged_with_its_config_and_history(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    study = load_study(write_study(tiny_study))
    result = run_study(study, tracker)

    assert result.ok and result.count(FINISHED) == 4
    client = MlflowClient(tracker.uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    for run in runs:
        tags, params = run.data.tags, run.data.params
        cell = next(c for c in study.cells if c.hash == tags["cell_hash"])
        assert tags["study"] == "tiny" and tags["cell"] == cell.name
        assert tags["data_source"] == "bundled-subset"
        assert run.info.run_name == f"{cell.name}/seed{tags['seed']}"
        # params are the flattened resolved config, defaults included
        assert params["model.weight_decay"] == str(cell.config.model.weight_decay)
        assert params["train.optimizer.learning_rate"] == "0.01"
        assert params["model.dropout_style"] == "classic"
        assert len(params) == len(cell.config.flat()) + 1  # + seed
        for name in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, name)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
        assert set(FINAL_METRICS) <= set(run.data.metrics)
        assert run.data.metrics["final_gap"] == pytest.approx(
            run.data.metrics["final_train_accuracy"] - run.data.metrics["final_test_accuracy"]
        )
        config_file = client.download_artifacts(run.info.run_id, "config.yaml")
        assert yaml.safe_load(Path(config_file).read_text()) == cell.config.model_dump(mode="json")
        # the test-set confusion matrix: its diagonal share is the final test accuracy
        confusion = client.download_artifacts(run.info.run_id, "confusion_matrix.json")
        matrix = np.array(json.loads(Path(confusion).read_text())["matrix"])
        assert matrix.shape == (10, 10)
        assert np.trace(matrix) / matrix.sum() == pytest.approx(
            run.data.metrics["final_test_accuracy"], abs=1e-6
        )
        # and the same matrix as a picture: a PNG of the expected size
        picture = Path(client.download_artifacts(run.info.run_id, "confusion_matrix.png"))
        with Image.open(picture) as image:
            assert image.format == "PNG" and min(image.size) > 300
    # artifacts of the default-style sqlite store live beside the database
    assert (Path(tracker.uri[len("sqlite:///") :]).parent / "mlartifacts").is_dir()


def test_second_invocation_skips_finished_runs(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    study = load_study(write_study(tiny_study))
    first = run_study(study, tracker)
    again = run_study(study, tracker)

    assert again.count(SKIPPED) == 4 and again.count(FINISHED) == 0
    assert [{k: r.final[k] for k in FINAL_METRICS} for r in again.results] == [
        r.final for r in first.results
    ]
    assert len(finished_keys(tracker, "tiny")) == 4
    rerun = run_study(study, tracker, seeds=(0,), rerun=True)
    assert rerun.count(FINISHED) == 2
    assert len(finished_keys(tracker, "tiny")) == 6


def test_a_diverging_cell_fails_alone(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    study = load_study(write_study(tiny_study + EXPLODING))
    result = run_study(study, tracker)

    failed = [r for r in result.results if r.status == FAILED]
    assert [r.key.cell.name for r in failed] == ["exploding", "exploding"]
    assert all("diverged at epoch" in (r.reason or "") for r in failed)
    assert result.count(FINISHED) == 4 and not result.ok
    summary = {c.cell: c for c in result.cells()}
    assert summary["exploding"].failed == 2 and summary["exploding"].test_accuracy is None
    assert summary["baseline"].done == 2 and summary["baseline"].test_accuracy is not None

    client = MlflowClient(tracker.uri)
    for r in failed:
        assert r.run_id is not None
        run = client.get_run(r.run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["failure_reason"].startswith("diverged at epoch")
    # the failed runs are trained again next time; the finished ones are not
    again = run_study(study, tracker)
    assert again.count(SKIPPED) == 4 and again.count(FAILED) == 2


class InterruptAt(Silent):
    """Raises KeyboardInterrupt (as Ctrl-C would) in the given run's second epoch."""

    def __init__(self, run_index: int) -> None:
        self.run_index = run_index
        self.current = -1

    def run_started(self, key: RunKey, index: int, total: int) -> None:
        self.current = index

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        if self.current == self.run_index and epoch == 2:
            raise KeyboardInterrupt


def test_interrupted_study_resumes_without_duplicates(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    study = load_study(write_study(tiny_study))
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tracker, observer=InterruptAt(run_index=2))

    experiment_id = tracker.experiment_id("tiny", create=False)
    assert experiment_id is not None
    statuses = sorted(r.status for r in tracker.runs(experiment_id))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]

    resumed = run_study(study, tracker)
    assert resumed.count(SKIPPED) == 2 and resumed.count(FINISHED) == 2
    keys = finished_keys(tracker, "tiny")
    assert len(keys) == len(set(keys)) == 4


def test_a_run_left_running_by_a_dead_process_is_closed(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    study = load_study(write_study(tiny_study))
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    cell = study.cells[0]
    orphan = tracker.start_run(experiment_id, "tiny", cell, 0, "bundled-subset")  # never ended

    run_study(study, tracker)
    client = MlflowClient(tracker.uri)
    assert client.get_run(orphan).info.status == "KILLED"
    assert len(finished_keys(tracker, "tiny")) == 4


def test_latest_finished_run_counts_and_data_failures_are_recorded(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str, tmp_path: Path
) -> None:
    study = load_study(write_study(tiny_study))
    run_study(study, tracker, seeds=(0,))
    rerun = run_study(study, tracker, seeds=(0,), rerun=True)
    skipped = run_study(study, tracker, seeds=(0,))
    assert [r.run_id for r in skipped.results] == [r.run_id for r in rerun.results]

    # a data file that vanishes between loading the study and training it
    data_file = tmp_path / "mnist.npz"
    images, labels = np.zeros((100, 28, 28), np.uint8), np.arange(100, dtype=np.uint8) % 10
    np.savez(data_file, x_train=images, y_train=labels, x_test=images, y_test=labels)
    vanishing = load_study(
        write_study(tiny_study.replace("name: tiny", "name: vanishing")),
        {"data.path": str(data_file)},
    )
    data_file.unlink()
    result = run_study(vanishing, tracker, seeds=(0,))
    assert result.count(FAILED) == 2
    client = MlflowClient(tracker.uri)
    for r in result.results:
        assert r.run_id is not None and "no such file" in (r.reason or "")
        run = client.get_run(r.run_id)
        assert run.info.status == "FAILED" and "no such file" in run.data.tags["failure_reason"]


def test_bulk_histories_equal_run_by_run_reads(
    write_study: Callable[[str], Path],
    tracker: Tracker,
    tiny_study: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_study(load_study(write_study(tiny_study)), tracker)
    experiment_id = tracker.experiment_id("tiny", create=False)
    assert experiment_id is not None
    run_ids = [r.run_id for r in tracker.runs(experiment_id)]

    # one run per query: chunking gives the same points
    for per_query in (500, 1):
        monkeypatch.setattr(mlflow_internals, "DATABASE_RUNS_PER_QUERY", per_query)
        bulk = sorted(tracker.histories(run_ids, EPOCH_METRICS))
        one_by_one = sorted(
            (run_id, metric, p.step, p.value)
            for run_id in run_ids
            for metric in EPOCH_METRICS
            for p in tracker.client.get_metric_history(run_id, metric)
        )
        assert bulk == one_by_one and len(bulk) == 4 * len(EPOCH_METRICS) * 3


def test_bulk_histories_keep_nan_and_repeated_steps(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    """A NaN is stored as a flag beside 0.0: it reads back as NaN, not 0; a step logged twice
    (a resumed flush) comes back in logging order, so the last value is the latest."""
    study = load_study(write_study(tiny_study))
    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    run_id = tracker.start_run(experiment_id, study.name, study.cells[0], 0, "test")
    tracker.log_epochs(run_id, [(1, {"train_loss": 2.0}), (2, {"train_loss": float("nan")})])
    time.sleep(0.01)  # a later millisecond: logging order is timestamp order
    tracker.log_epochs(run_id, [(1, {"train_loss": 1.5})])
    points = tracker.histories([run_id], ["train_loss", "test_loss"])
    assert [p[:3] for p in points][:1] == [(run_id, "train_loss", 1)]
    by_step: dict[int, list[float]] = {}
    for _, _, step, value in points:
        by_step.setdefault(step, []).append(value)
    assert by_step[1] == [2.0, 1.5] and np.isnan(by_step[2]).all()


def test_a_run_that_cannot_be_recorded_fails_and_the_study_goes_on(
    write_study: Callable[[str], Path],
    tracker: Tracker,
    tiny_study: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error while a trained run is recorded (its confusion matrix, here a full disk) ends
    that run FAILED with the reason, its lease gone; the other runs train and finish."""
    real = Tracker.log_confusion
    calls: list[str] = []

    def full_disk_once(self: Tracker, run_id: str, matrix: object) -> None:
        calls.append(run_id)
        if len(calls) == 1:
            raise OSError("No space left on device")
        real(self, run_id, matrix)

    monkeypatch.setattr(Tracker, "log_confusion", full_disk_once)
    study = load_study(write_study(tiny_study))
    result = run_study(study, tracker, workers=1)
    [failed] = [r for r in result.results if r.status == FAILED]
    assert failed.reason == "OSError: No space left on device"
    assert failed.run_id == calls[0] and result.count(FINISHED) == 3
    run = MlflowClient(tracker.uri).get_run(calls[0])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == failed.reason
    assert "owner" not in run.data.tags and "heartbeat" not in run.data.tags


def test_the_default_executor_trains_a_single_run_in_this_process(
    write_study: Callable[[str], Path], tiny_study: str
) -> None:
    """A worker process costs more than it saves for one run: `overfit run`'s defaults train
    it here, and start no worker for it; two runs or more go to workers."""
    from suite import runner
    from suite.executors import workers as worker_processes
    from suite.executors.local import LocalExecutor
    from suite.executors.process import ProcessExecutor

    assert isinstance(runner.choose_executor(None, None, 1), LocalExecutor)
    assert isinstance(runner.choose_executor(None, None, 0), LocalExecutor)
    pooled = runner.choose_executor(None, None, 2)
    assert isinstance(pooled, ProcessExecutor)
    assert pooled.workers == min(2, worker_processes.cpu_count())
    forced = runner.choose_executor("process", None, 1)  # asked for: a worker all the same
    assert isinstance(forced, ProcessExecutor) and forced.workers == 1

    study = load_study(write_study(tiny_study))
    runner.start_workers(study.select([study.cells[0].name]), (0,), None, None)
    assert worker_processes._warm is None  # one run: nothing spawned
    runner.start_workers(study, (0,), 2, "process")
    try:
        assert worker_processes._warm is not None
    finally:
        runner.stop_unused_workers()
    assert worker_processes._warm is None
