"""A run's network, logged when its study asks (`log_model: final | best`), against a real
sqlite MLflow store and real Keras training: read back with MLflow's Keras flavour, it
predicts the run's own test images as the run measured them, whichever executor trained it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import mlflow.keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from suite import data
from suite.names import FINISHED
from suite.results_model import model
from suite.runner import StudyResult, run_study
from suite.tracking import Tracker, TrackingError

# 3 cells, 12 epochs at a rate high enough that test accuracy goes up and down: the baseline's
# best epoch is not its last, so `best` and `final` are different weights; `regularized` has
# the textbook's dropout (a layer of the suite's own, which Keras must find to load it) and
# batch norm (running statistics are weights too); `stopped` ends with its best validation
# epoch's weights (early stopping, restore_best), not its last epoch's
STUDY = """
name: logged
base:
  data: {train_size: 40, test_size: 100}
  model: {hidden: [8]}
  train: {batch_size: 20, epochs: 12, optimizer: {name: sgd, learning_rate: 0.5}}
seeds: [0]
log_model: LOG_MODEL
variants:
  baseline: {}
  regularized: {model: {dropout: 0.2, batch_norm: true}}
  stopped:
    data: {val_size: 20, val_from: pool}
    train: {early_stopping: {monitor: val_accuracy, patience: 2}}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset; workers get the source resolved here."""


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of this test's own, for this process and the workers it spawns:
    what a run leaves in it is seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def runs_uri(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`tracking_uri` as MLflow's own, for `runs:/` URIs, through the environment, which is
    restored afterwards (`mlflow.set_tracking_uri` would leave MLFLOW_TRACKING_URI set for
    every later test and the processes they start)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    assert mlflow.get_tracking_uri() == tracking_uri
    yield tracking_uri


def run(write_study: Callable[..., Path], uri: str, log_model: str, workers: int) -> StudyResult:
    from suite.study import load_study

    study = load_study(write_study(STUDY.replace("LOG_MODEL", log_model)))
    assert study.log_model == log_model
    result = run_study(study, Tracker(uri), workers=workers)
    assert result.ok and result.count(FINISHED) == 3, [r.reason for r in result.results]
    return result


def accuracy(network: object, result: StudyResult, index: int) -> float:
    """The share of the run's own test images `network` classifies right (argmax of logits)."""
    key = result.results[index].key
    split = data.make_split(**key.cell.config.data.model_dump(), seed=key.seed)
    logits = network.predict(split.x_test, verbose=0)  # type: ignore[attr-defined]
    assert logits.shape == (len(split.y_test), split.num_classes)
    return float(np.mean(np.argmax(logits, axis=1) == split.y_test))


def by_cell(result: StudyResult) -> dict[str, tuple[int, str, dict[str, float]]]:
    out = {}
    for i, r in enumerate(result.results):
        assert r.run_id is not None
        out[r.key.cell.name] = (i, r.run_id, r.final)
    return out


def check_final(result: StudyResult, uri: str, load: Callable[[str], object]) -> None:
    """Each run's network predicts its final_test_accuracy; and that tells `final` apart from
    the best epoch's weights and, with early stopping, from the last epoch's."""
    runs = by_cell(result)
    for index, run_id, final in runs.values():
        network = load(run_id)
        assert accuracy(network, result, index) == pytest.approx(
            final["final_test_accuracy"], abs=1e-6
        )
    _, _, baseline = runs["baseline"]
    assert baseline["best_test_accuracy"] != baseline["final_test_accuracy"]
    _, stopped_id, stopped = runs["stopped"]
    last = MlflowClient(uri).get_metric_history(stopped_id, "test_accuracy")
    assert stopped["restored_epoch"] < max(p.step for p in last)
    assert max(last, key=lambda p: p.step).value != stopped["final_test_accuracy"]


def test_a_run_logs_its_final_network_in_process(
    write_study: Callable[..., Path], runs_uri: str, temporary: Path
) -> None:
    result = run(write_study, runs_uri, "final", workers=1)
    check_final(result, runs_uri, lambda run_id: mlflow.keras.load_model(f"runs:/{run_id}/model"))
    client = MlflowClient(runs_uri)
    run_id = result.results[0].run_id
    assert run_id is not None
    files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/MLmodel", "model/input_example.json", "model/requirements.txt"} <= files
    assert not list(temporary.glob("suite-network-*"))  # each saved network removed once logged


def test_a_worker_hands_its_network_to_the_parent(
    write_study: Callable[..., Path], tracking_uri: str, temporary: Path
) -> None:
    """`--workers 2`: the workers never touch the store; the parent logs what they saved."""
    result = run(write_study, tracking_uri, "final", workers=2)
    check_final(result, tracking_uri, lambda run_id: model(run_id, uri=tracking_uri))
    assert not list(temporary.glob("suite-network-*"))


def test_best_logs_the_weights_of_the_best_test_epoch(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    result = run(write_study, tracking_uri, "best", workers=1)
    runs = by_cell(result)
    for index, run_id, final in runs.values():
        network = model(run_id, uri=tracking_uri)
        assert accuracy(network, result, index) == pytest.approx(
            final["best_test_accuracy"], abs=1e-6
        )
    _, _, baseline = runs["baseline"]
    assert baseline["best_test_accuracy"] != baseline["final_test_accuracy"]


def test_without_log_model_a_run_logs_no_network(
    write_study: Callable[..., Path], tracking_uri: str, tiny_study: str, tmp_path: Path
) -> None:
    from suite.study import load_study

    study = load_study(write_study(tiny_study))
    assert study.log_model is None
    result = run_study(study, Tracker(tracking_uri), seeds=(0,))
    run_id = result.results[0].run_id
    assert result.ok and run_id is not None
    assert not MlflowClient(tracking_uri).list_artifacts(run_id, "model")
    with pytest.raises(TrackingError) as err:
        model(run_id, uri=tracking_uri)
    assert str(err.value) == (
        f"run {run_id} logged no model; set log_model: final in its study and run it again"
    )
    with pytest.raises(TrackingError, match="^run 0123456789abcdef: ") as err:
        model("0123456789abcdef", uri=tracking_uri)
    assert "\n" not in str(err.value)
    nowhere = tmp_path / "none.db"
    with pytest.raises(TrackingError, match="no tracking store at"):
        model(run_id, uri=f"sqlite:///{nowhere}")
    assert not nowhere.exists()
