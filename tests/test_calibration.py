"""Calibration (`suite.calibration`): the ECE against a hand count, the compiled `test_ece` and
`val_ece` against NumPy on the same network's predictions, temperature scaling at a run's end,
its `reliability.json` and final metrics in the store, the reliability figure and the
calibration view of a real tiny study, and the errors of a reliability figure that can have
nothing to draw."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from suite import calibration, data, train
from suite.names import RELIABILITY_ARTIFACT
from suite.report import reliability, write_report
from suite.report.figure_spec import ReliabilityFigure
from suite.spec import RunConfig, SpecError
from suite.study import load_study
from suite.tracking import Tracker


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset here, whatever the machine has."""


def _config(**sections: dict[str, Any]) -> RunConfig:
    base: dict[str, dict[str, Any]] = {
        "data": {"train_size": 60, "val_size": 60, "test_size": 200},
        "model": {"hidden": [32]},
        "train": {"batch_size": 20, "epochs": 4},
    }
    for name, patch in sections.items():
        base[name] = {**base[name], **patch}
    return RunConfig.model_validate(base)


def _trained(config: RunConfig, seed: int = 0, **kwargs: Any) -> tuple[Any, data.Split]:
    split = data.make_split(**config.data.model_dump(), seed=seed)
    return train.train(config, split, seed, **kwargs), split


def guo_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s ECE as their code computes it: a loop over the bins (lower, upper]."""
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    correct = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lower, upper in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lower) & (confidence <= upper)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


# --- the measure ------------------------------------------------------------------------------

# three classes; confidences 0.9, 0.9 and 0.92 share the bin (13/15, 14/15] (index 13), 0.62
# is alone in (9/15, 10/15] (index 9), 0.5 in (7/15, 8/15] (index 7)
HAND_PROBABILITIES = np.array(
    [
        [0.9, 0.05, 0.05],  # right
        [0.9, 0.05, 0.05],  # wrong (label 1)
        [0.92, 0.04, 0.04],  # right
        [0.62, 0.28, 0.10],  # right
        [0.2, 0.5, 0.3],  # right
    ]
)
HAND_LABELS = np.array([0, 1, 0, 0, 1])
# by hand: (|2 - 2.72| + |1 - 0.62| + |1 - 0.5|) / 5 = (0.72 + 0.38 + 0.5) / 5
HAND_ECE = 0.32


def test_the_ece_of_a_hand_made_set_is_the_hand_counted_one() -> None:
    import tensorflow as tf

    bins = calibration.reliability_bins(HAND_PROBABILITIES, HAND_LABELS)
    assert bins["count"][13] == 3 and bins["count"][9] == 1 and bins["count"][7] == 1
    assert sum(bins["count"]) == 5
    assert bins["confidence"][13] == pytest.approx(2.72)
    assert bins["correct"][13] == 2.0
    assert calibration.ece_of(bins) == pytest.approx(HAND_ECE, abs=1e-12)
    assert guo_ece(HAND_PROBABILITIES, HAND_LABELS) == pytest.approx(HAND_ECE, abs=1e-12)
    # the traced measure, on logits whose softmax is the same probabilities
    logits = tf.constant(np.log(HAND_PROBABILITIES), tf.float32)
    hits = tf.constant((HAND_PROBABILITIES.argmax(1) == HAND_LABELS).astype(np.float32))
    traced = float(calibration.expected_calibration_error(logits, hits))
    assert traced == pytest.approx(HAND_ECE, abs=1e-6)
    # a perfectly calibrated set: each bin's accuracy is its confidence
    even = np.array([[0.5, 0.5, 0.0]] * 4)  # arg max 0; right half of the time
    assert calibration.ece_of(calibration.reliability_bins(even, np.array([0, 1, 0, 1]))) == 0.0


def test_the_compiled_ece_is_numpys_ece_of_the_same_networks_predictions() -> None:
    config = _config()
    history, split = _trained(config, log_model="final")
    assert {"test_ece", "val_ece"} <= set(history.metrics)
    assert len(history.metrics["test_ece"]) == config.train.epochs
    assert history.network is not None
    network = history.network.load()
    try:
        for part, x, y in (("test", split.x_test, split.y_test), ("val", split.x_val, split.y_val)):
            logits = network(x, training=False).numpy()
            expected = guo_ece(calibration.softmax(logits), y)
            assert 0.0 < expected < 1.0
            assert history.metrics[f"{part}_ece"][-1] == pytest.approx(expected, abs=2e-5)
    finally:
        history.network.discard()
    # the end-of-run record describes the same weights
    assert history.calibration is not None
    assert history.calibration["test_ece"] == pytest.approx(
        history.metrics["test_ece"][-1], abs=2e-5
    )


@pytest.mark.parametrize("loss", ["mse", "mse_logits"])
def test_mse_runs_measure_no_calibration(loss: str) -> None:
    history, _ = _trained(_config(train={"loss": loss}))
    assert not {"test_ece", "val_ece"} & set(history.metrics)
    assert history.calibration is None
    assert "temperature" not in history.final()


def test_a_run_without_a_validation_split_has_test_ece_and_no_temperature() -> None:
    history, _ = _trained(_config(data={"val_size": 0}))
    assert "test_ece" in history.metrics and "val_ece" not in history.metrics
    assert history.calibration is not None and "scaled" not in history.calibration
    assert not {"temperature", "test_ece_scaled", "test_loss_scaled"} & set(history.final())


# --- temperature scaling --------------------------------------------------------------------


def test_the_temperature_of_an_over_confident_run_exceeds_1_and_minimises_the_val_nll() -> None:
    # 60 images memorised for 150 epochs: the network is sure of the test images it gets wrong
    config = _config(
        model={"hidden": [64]},
        train={"epochs": 150, "optimizer": {"name": "sgd", "learning_rate": 0.2}},
    )
    history, split = _trained(config, log_model="final")
    record, final = history.calibration, history.final()
    assert record is not None and history.network is not None
    network = history.network.load()
    history.network.discard()
    val = network(split.x_val, training=False).numpy()
    test = network(split.x_test, training=False).numpy()
    t = final["temperature"]
    assert t == record["temperature"]
    assert t > 1.0
    assert nll(val, split.y_val, t) < nll(val, split.y_val, 1.0) - 0.01
    # a minimum: a step either way raises the validation NLL
    assert nll(val, split.y_val, t) <= min(nll(val, split.y_val, t * f) for f in (0.97, 1.03))
    assert final["test_loss_scaled"] == pytest.approx(nll(test, split.y_test, t), rel=1e-4)
    assert final["test_loss_scaled"] < history.metrics["test_loss"][-1]
    scaled = guo_ece(calibration.softmax(test, t), split.y_test)
    assert final["test_ece_scaled"] == pytest.approx(scaled, abs=1e-6)


def test_an_early_stopped_run_is_calibrated_with_the_weights_it_restored() -> None:
    config = _config(
        train={
            "epochs": 60,
            "optimizer": {"name": "sgd", "learning_rate": 0.2},
            "early_stopping": {"monitor": "val_loss", "patience": 3, "restore_best": True},
        }
    )
    history, _ = _trained(config)
    restored = history.restored_epoch
    assert restored is not None and restored < history.epochs  # it kept an earlier epoch
    assert history.calibration is not None
    at_restored = history.metrics["test_loss"][restored - 1]
    assert history.calibration["test_loss"] == pytest.approx(at_restored, rel=1e-4)
    assert history.calibration["test_loss"] != pytest.approx(
        history.metrics["test_loss"][-1], rel=1e-4
    )


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 10))
    true_t = 2.5
    labels = np.array([rng.choice(10, p=p) for p in calibration.softmax(logits, true_t)])
    assert calibration.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


# --- in the store and in the report -----------------------------------------------------------

CALIBRATED_STUDY = """
name: calibrated
base:
  data: {train_size: 60, val_size: 40, test_size: 150}
  model: {hidden: [16]}
  train: {batch_size: 20, epochs: 4, optimizer: {name: sgd, learning_rate: 0.1}}
seeds: [0, 1]
variants:
  baseline: {}
  no_val: {data: {val_size: 0}}
  mse: {train: {loss: mse}}
report:
  metrics: [accuracy, calibration]
  figures:
    - {kind: reliability}
"""


def _artifact_file(tracker: Tracker, run_id: str) -> Path:
    root = tracker.client.get_run(run_id).info.artifact_uri
    return Path(urlparse(root).path) / RELIABILITY_ARTIFACT


def test_a_study_logs_calibration_and_its_report_draws_the_reliability_figure(
    write_study: Callable[..., Path], tracking_uri: str, tmp_path: Path
) -> None:
    from suite.report import documents
    from suite.report.load import load_runs
    from suite.runner import run_study

    study = load_study(write_study(CALIBRATED_STUDY))
    tracker = Tracker(tracking_uri)
    assert run_study(study, tracker).ok
    runs = load_runs(study.name, tracker).runs
    names = {c.hash: c.name for c in study.cells}
    by_cell = {name: runs[runs["cell_hash"].map(names) == name] for name in names.values()}
    for _, run in by_cell["baseline"].iterrows():
        metrics = tracker.client.get_run(run["run_id"]).data.metrics
        document = json.loads(_artifact_file(tracker, run["run_id"]).read_text())
        assert metrics["temperature"] == pytest.approx(document["temperature"])
        assert sum(document["scaled"]["count"]) == sum(document["unscaled"]["count"]) == 150
        assert metrics["test_ece"] == pytest.approx(document["test_ece"], abs=2e-5)
        assert run["test_ece_scaled"] == pytest.approx(document["test_ece_scaled"])
    for _, run in by_cell["no_val"].iterrows():
        metrics = tracker.client.get_run(run["run_id"]).data.metrics
        assert "test_ece" in metrics and "temperature" not in metrics
    for _, run in by_cell["mse"].iterrows():
        assert "test_ece" not in tracker.client.get_run(run["run_id"]).data.metrics
        assert not _artifact_file(tracker, run["run_id"]).exists()

    out = tmp_path / "report"
    write_report(study.name, tracker, out, study)
    assert (out / "figure1-reliability.png").stat().st_size > 10_000
    assert (out / "calibration.png").is_file()
    markdown = (out / "report.md").read_text()
    assert "2 of 6 finished runs have no reliability bins" in markdown

    # one panel per cell with bins (mse has none); seeds pooled exactly: the bins' sums
    used = runs[runs["status"] == "FINISHED"]
    pooled = reliability.pool(documents.reliability(tracker, used))
    assert {names[h] for h in pooled} == {"baseline", "no_val"}
    baseline = next(h for h in pooled if names[h] == "baseline")
    assert pooled[baseline].runs == 2 and pooled[baseline].unscaled["count"].sum() == 300
    assert pooled[baseline].scaled is not None
    from suite.report.aggregate import cell_rows

    figure = reliability.figure(
        pooled, cell_rows(runs, study), ReliabilityFigure(kind="reliability"), study.name
    )
    assert figure is not None
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 2
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert any("→" in t and "(T " in t for t in titles)  # the scaled cell: before -> after
    assert any("→" not in t for t in titles)  # the cell without a validation split

    # runs logged before the suite measured calibration: no artifact, a note, no failure
    for run_id in used["run_id"]:
        _artifact_file(tracker, run_id).unlink(missing_ok=True)
    again = tmp_path / "older"
    write_report(study.name, tracker, again, study, log_to_mlflow=False)
    assert not (again / "figure1-reliability.png").exists()
    notes = [
        line
        for line in (again / "report.md").read_text().splitlines()
        if "Study figure 1 (reliability) has nothing to draw" in line
    ]
    assert len(notes) == 1 and RELIABILITY_ARTIFACT in notes[0]


# --- bad input ----------------------------------------------------------------------------------

MSE_ONLY = """
name: mse-only
base:
  data: {train_size: 60, test_size: 100}
  model: {hidden: [8]}
  train: {batch_size: 20, epochs: 2, loss: mse}
variants:
  plain: {}
  wd: {model: {weight_decay: 0.1}}
  logits: {train: {loss: mse_logits}}
report:
  figures:
    - {kind: confusion}
    - {kind: reliability}
"""


def test_a_reliability_figure_on_mse_cells_only_is_an_error_naming_file_and_key(
    write_study: Callable[..., Path],
) -> None:
    path = write_study(MSE_ONLY)
    with pytest.raises(SpecError) as caught:
        load_study(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and "report.figures[1].kind" in message
    assert "cross_entropy" in message
    # a study with one cross-entropy cell among mse ones draws that cell: no error
    load_study(
        write_study(MSE_ONLY.replace("wd: {model:", "ce: {train: {loss: cross_entropy}, model:"))
    )


@pytest.mark.parametrize(
    ("figure", "key"),
    [
        ("{kind: reliability, bins: 10}", "report.figures.0.bins"),
        ("{kind: reliabilty}", "report.figures.0"),
        ("{kind: reliability, top: 0}", "report.figures.0.top"),
    ],
)
def test_a_misspelt_reliability_figure_is_an_error_at_load(
    write_study: Callable[..., Path], figure: str, key: str
) -> None:
    path = write_study(CALIBRATED_STUDY.split("  figures:")[0] + f"  figures: [{figure}]\n")
    with pytest.raises(SpecError) as caught:
        load_study(path)
    assert str(path) in str(caught.value) and key in str(caught.value), str(caught.value)


def test_overfit_validate_refuses_it_in_one_line_and_creates_no_run(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_study(MSE_ONLY)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for command in ("validate", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "suite", command, str(path)],
            cwd=tmp_path,
            env={**env, "SUITE_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode != 0
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "report.figures[1].kind" in errors[0], done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_ece_of_empty_bins_is_nan() -> None:
    assert math.isnan(
        calibration.ece_of({"count": [0.0] * 15, "confidence": [0.0] * 15, "correct": [0.0] * 15})
    )


def test_with_eval_every_the_ece_is_measured_at_the_evaluated_epochs_only() -> None:
    history, _ = _trained(_config(train={"epochs": 5, "eval_every": 2}))
    evaluated = len(history.metrics["test_loss"])
    assert evaluated < 5
    assert len(history.metrics["test_ece"]) == len(history.metrics["val_ece"]) == evaluated
