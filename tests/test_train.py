"""The compiled training loop on tiny networks and the bundled data: history, seeds, failure."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from suite import data, models, train
from suite.metrics import ECE_METRICS
from suite.spec import RunConfig

EPOCHS = 3
TRAIN_SIZE = 60
TEST_SIZE = 200


def _config(**sections: dict[str, Any]) -> RunConfig:
    """The tiny run every test starts from, with sections patched in."""
    raw: dict[str, dict[str, Any]] = {
        "data": {"train_size": TRAIN_SIZE, "test_size": TEST_SIZE},
        "model": {"hidden": [16, 16]},
        "train": {"batch_size": 20, "epochs": EPOCHS},
    }
    for key, patch in sections.items():
        raw[key] = {**raw[key], **patch}
    return RunConfig.model_validate(raw)


def _split(config: RunConfig, seed: int = 0) -> data.Split:
    return data.make_split(**config.data.model_dump(), seed=seed)


def _run(config: RunConfig, seed: int = 0, **kwargs: Any) -> train.History:
    return train.train(config, _split(config, seed), seed, **kwargs)


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset here, whatever the machine has."""


@pytest.fixture(scope="module")
def tiny_run() -> tuple[train.History, list[tuple[int, dict[str, float]]]]:
    """One tiny run (seed 0) and what its `on_epoch` hook saw."""
    calls: list[tuple[int, dict[str, float]]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "KERAS_CACHE", Path("/nonexistent/keras/datasets/mnist.npz"))
        history = _run(_config(), on_epoch=lambda epoch, values: calls.append((epoch, values)))
    return history, calls


# --- the history ----------------------------------------------------------------------------


def test_history_has_every_metric_for_every_epoch(tiny_run) -> None:
    history, _ = tiny_run
    assert history.epochs == EPOCHS
    # a cross-entropy run without a validation split measures the test set's calibration
    assert set(history.metrics) == {*train.EPOCH_METRICS, "test_ece"}
    for name in history.metrics:
        values = history.metrics[name]
        assert len(values) == EPOCHS, name
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), name
    assert "val_loss" not in history.metrics and "val_accuracy" not in history.metrics
    assert history.train_seconds > 0


def test_gap_is_train_minus_test_accuracy(tiny_run) -> None:
    history, _ = tiny_run
    m = history.metrics
    for train_acc, test_acc, gap in zip(
        m["train_accuracy"], m["test_accuracy"], m["gap"], strict=True
    ):
        assert gap == pytest.approx(train_acc - test_acc, abs=1e-12)


def test_accuracies_are_over_the_whole_sets(tiny_run) -> None:
    """Train accuracy counts all 60 training images, test accuracy all 200 test images."""
    history, _ = tiny_run
    for name, n in (("train_accuracy", TRAIN_SIZE), ("test_accuracy", TEST_SIZE)):
        for value in history.metrics[name]:
            assert 0.0 <= value <= 1.0
            assert value * n == pytest.approx(round(value * n), abs=1e-3), (name, value)


def test_no_penalty_without_regularisation(tiny_run) -> None:
    history, _ = tiny_run
    assert history.metrics["reg_loss"] == [0.0] * EPOCHS
    assert all(w > 0 for w in history.metrics["weight_norm"])


def test_on_epoch_sees_every_epoch_in_order(tiny_run) -> None:
    history, calls = tiny_run
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    for epoch, values in calls:
        assert set(values) == {*train.EPOCH_METRICS, "test_ece"}
        for name, value in values.items():
            assert history.metrics[name][epoch - 1] == value


def test_final_summary(tiny_run) -> None:
    history, _ = tiny_run
    final = history.final()
    assert set(final) == set(train.FINAL_METRICS)
    test = history.metrics["test_accuracy"]
    assert final["final_train_accuracy"] == history.metrics["train_accuracy"][-1]
    assert final["final_test_accuracy"] == test[-1]
    assert final["final_gap"] == history.metrics["gap"][-1]
    assert final["best_test_accuracy"] == max(test)
    assert test[int(final["best_epoch"]) - 1] == max(test)
    assert final["train_seconds"] == history.train_seconds


def test_confusion_matrix_and_macro_scores(tiny_run) -> None:
    history, _ = tiny_run
    matrix = history.confusion
    assert matrix is not None and matrix.shape == (10, 10)
    # every test image counted once; the diagonal is the final test accuracy
    assert matrix.sum() == TEST_SIZE
    assert np.trace(matrix) / matrix.sum() == pytest.approx(
        history.metrics["test_accuracy"][-1], abs=1e-6
    )
    final = history.final()
    precision, recall, f1 = [], [], []
    for c in range(10):
        tp, predicted, actual = matrix[c, c], matrix[:, c].sum(), matrix[c, :].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    assert final["test_precision_macro"] == pytest.approx(np.mean(precision))
    assert final["test_recall_macro"] == pytest.approx(np.mean(recall))
    assert final["test_f1_macro"] == pytest.approx(np.mean(f1))


def test_per_class_scores_of_a_perfect_and_a_constant_classifier() -> None:
    labels = np.array([0, 1, 2, 2])
    perfect = train.per_class(train.confusion_matrix(labels, labels, classes=3))
    assert perfect == {"test_precision_macro": 1.0, "test_recall_macro": 1.0, "test_f1_macro": 1.0}
    constant = train.per_class(train.confusion_matrix(labels, np.full(4, 2), classes=3))
    # class 2: precision 2/4, recall 1; classes 0 and 1 never predicted: 0
    assert constant["test_precision_macro"] == pytest.approx(0.5 / 3)
    assert constant["test_recall_macro"] == pytest.approx(1 / 3)
    assert constant["test_f1_macro"] == pytest.approx((2 * 0.5 / 1.5) / 3)


def test_first_epoch_starts_from_the_built_model(tiny_run) -> None:
    """The run's weights are `build_model(spec, seed)`'s: one epoch of SGD moves the loss a bit."""
    history, _ = tiny_run
    config = _config()
    split = _split(config)
    model = models.build_model(config.model, seed=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    initial = float(loss(split.y_train, model(split.x_train)))
    assert history.metrics["train_loss"][0] < initial
    assert history.metrics["train_loss"][0] == pytest.approx(initial, abs=0.5)


def test_validation_metrics_iff_val_split() -> None:
    history = _run(_config(data={"val_size": 20}))
    assert set(history.metrics) == {*train.EPOCH_METRICS, *train.VAL_METRICS, *ECE_METRICS}
    for name in train.VAL_METRICS:
        assert len(history.metrics[name]) == EPOCHS
    for value in history.metrics["val_accuracy"]:
        assert value * 20 == pytest.approx(round(value * 20), abs=1e-3)


# --- seeds ----------------------------------------------------------------------------------


def test_same_seed_same_history_other_seed_other_history(tiny_run) -> None:
    history, _ = tiny_run
    again = _run(_config(), seed=0)
    assert again.metrics == history.metrics
    other = _run(_config(), seed=1)
    assert other.metrics["train_loss"] != history.metrics["train_loss"]
    assert other.metrics["weight_norm"] != history.metrics["weight_norm"]


def test_dropout_runs_are_reproducible() -> None:
    config = _config(model={"dropout": 0.3, "batch_norm": True}, train={"epochs": 2})
    assert _run(config, seed=4).metrics == _run(config, seed=4).metrics


def test_a_reused_program_gives_what_a_fresh_one_gives() -> None:
    """Runs of one shape share a compiled program; it must not carry anything from one run
    to the next: weights, optimizer slots, dropout noise, learning rate and penalties are the
    run's own, so the history equals that of a program compiled for it alone."""
    first = _config(
        model={"dropout": 0.2},
        train={"optimizer": {"name": "momentum", "learning_rate": 0.05}, "epochs": 4},
    )
    second = _config(
        model={"dropout": 0.2, "init": "xavier", "weight_decay": 0.05, "l1": 0.001},
        train={"optimizer": {"name": "momentum", "learning_rate": 0.02}, "epochs": 4},
    )
    train._PROGRAMS.clear()
    _run(first, seed=0)
    reused = _run(second, seed=1)
    assert len(train._PROGRAMS) == 1, "the second run should have reused the first one's program"
    train._PROGRAMS.clear()
    fresh = _run(second, seed=1)
    assert reused.metrics == fresh.metrics
    assert reused.metrics["reg_loss"][0] > 0
    # a different shape compiles a program of its own
    _run(_config(model={"hidden": [8]}, train={"epochs": 1}))
    assert len(train._PROGRAMS) == 2


def test_runs_longer_than_one_compiled_call() -> None:
    """Epochs run `EPOCHS_PER_CALL` at a time; a run of any length sees each epoch once."""
    epochs = train.EPOCHS_PER_CALL * 2 + 3
    config = _config(train={"epochs": epochs, "log_batch_loss": True, "steps_per_epoch": 2})
    seen: list[int] = []
    history = _run(config, on_epoch=lambda epoch, values: seen.append(epoch))
    assert seen == list(range(1, epochs + 1))
    assert history.epochs == epochs
    assert len(history.batch_loss) == epochs * 2


# --- divergence -----------------------------------------------------------------------------


def test_divergence_raises_with_the_history_before_it() -> None:
    # weight decay with lr * lambda >> 2 multiplies every kernel by (1 - lr * lambda) = -99 per
    # update, whatever the data does: the weights overflow within a few epochs on any seed
    config = _config(
        model={"weight_decay": 100.0},
        train={"optimizer": {"name": "sgd", "learning_rate": 1.0}, "epochs": 10},
    )
    seen: list[int] = []
    with pytest.raises(train.Diverged) as err:
        _run(config, on_epoch=lambda epoch, values: seen.append(epoch))
    reason = err.value.reason
    match = re.search(r"diverged at epoch (\d+): (\w+) is (nan|inf|-inf)", reason)
    assert match, reason
    epoch = int(match.group(1))
    assert match.group(2) in (*train.EPOCH_METRICS, *train.VAL_METRICS, *ECE_METRICS)
    assert str(err.value) == reason
    before = err.value.history
    assert epoch >= 2, "the test wants a few finite epochs first"
    assert before.epochs == epoch - 1
    assert seen == list(range(1, epoch))
    assert all(math.isfinite(v) for values in before.metrics.values() for v in values)
    # the weights were blowing up before they overflowed
    norms = before.metrics["weight_norm"]
    assert norms[-1] > 1e3


# --- minibatches ----------------------------------------------------------------------------


def test_steps_per_epoch() -> None:
    assert train.steps_per_epoch(300, 100) == 3
    assert train.steps_per_epoch(301, 100) == 4
    assert train.steps_per_epoch(5, 100) == 1


def test_with_replacement_draws_indices() -> None:
    order = train.batch_order(65, 20, epochs=4, sampling="with_replacement", seed=0)
    assert order.shape == (4, 4 * 20)  # ceil(65/20) updates of a full batch each
    assert order.dtype == np.int32
    assert order.min() >= 0 and order.max() < 65
    # draws with replacement repeat indices within an epoch
    assert any(len(np.unique(row)) < len(row) for row in order)


def test_shuffle_epochs_are_permutations() -> None:
    order = train.batch_order(65, 20, epochs=4, sampling="shuffle", seed=0)
    assert order.shape == (4, 65)
    for row in order:
        np.testing.assert_array_equal(np.sort(row), np.arange(65))
    assert not np.array_equal(order[0], order[1])


@pytest.mark.parametrize("sampling", ["with_replacement", "shuffle"])
def test_batch_order_is_seeded(sampling: str) -> None:
    a = train.batch_order(50, 10, 3, sampling, seed=1)
    np.testing.assert_array_equal(a, train.batch_order(50, 10, 3, sampling, seed=1))
    assert not np.array_equal(a, train.batch_order(50, 10, 3, sampling, seed=2))


def test_shuffle_with_an_uneven_last_batch_trains() -> None:
    # 50 images in batches of 20: the last update of each epoch sees 10
    history = _run(_config(data={"train_size": 50}, train={"sampling": "shuffle"}))
    assert history.epochs == EPOCHS
    assert history.metrics["train_loss"][-1] < history.metrics["train_loss"][0]


# --- optimizers and the penalty -------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_every_optimizer_trains(name: str) -> None:
    config = _config(train={"optimizer": {"name": name}, "epochs": 1})
    split = _split(config)
    model = models.build_model(config.model, seed=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    initial = float(loss(split.y_train, model(split.x_train)))
    after = train.train(config, split, 0).metrics["train_loss"][0]
    assert math.isfinite(after)
    assert abs(after - initial) > 1e-3
    if name != "rmsprop":
        # rmsprop's first steps are lr / sqrt(1 - rho) = 10 lr per weight (its average of
        # squared gradients starts at 0), so one epoch may overshoot; the rest must descend
        assert after < initial


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_optimizer_settings_reach_keras(name: str) -> None:
    config = _config(train={"optimizer": {"name": name}})
    spec = config.train.optimizer
    optimizer = train.make_optimizer(spec)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(
        spec.learning_rate
    )
    if name in ("momentum", "nesterov"):
        assert optimizer.momentum == pytest.approx(0.9)
        assert optimizer.nesterov is (name == "nesterov")
    if name == "sgd":
        assert optimizer.momentum == 0
    if name == "adam":
        assert (optimizer.beta_1, optimizer.beta_2) == (0.9, 0.999)
    if name == "rmsprop":
        assert optimizer.rho == pytest.approx(0.99)
    if name == "adagrad":
        assert optimizer.initial_accumulator_value == 0.0


def test_weight_decay_reg_loss_is_half_lambda_sum_of_squares() -> None:
    lam = 0.05
    history = _run(_config(model={"weight_decay": lam}))
    for reg, norm in zip(history.metrics["reg_loss"], history.metrics["weight_norm"], strict=True):
        assert reg > 0
        # weight_norm is the L2 norm of every kernel, so 0.5 * lambda * norm^2 is the penalty
        assert reg == pytest.approx(0.5 * lam * norm**2, rel=1e-4)


# --- iteration-based runs, loss choice, batch losses, activation histograms -------------------


def test_steps_per_epoch_sets_updates_between_evaluations() -> None:
    config = _config(train={"epochs": 2, "steps_per_epoch": 7, "log_batch_loss": True})
    history = _run(config)
    assert history.epochs == 2
    assert len(history.batch_loss) == 14  # one minibatch loss per update
    assert all(math.isfinite(v) and v > 0 for v in history.batch_loss)


def test_shuffle_with_steps_cuts_one_stream_of_passes() -> None:
    order = train.batch_order(10, 4, epochs=3, sampling="shuffle", seed=0, steps=5)
    assert order.shape == (3, 20)
    stream = order.ravel()
    # each block of 10 draws is one pass: every index exactly once
    for start in range(0, 60, 10):
        assert sorted(stream[start : start + 10]) == list(range(10))


def test_batch_loss_falls_while_training() -> None:
    config = _config(
        data={"train_size": 200},
        train={"epochs": 4, "steps_per_epoch": 25, "log_batch_loss": True, "batch_size": 32},
        model={"hidden": [32]},
    )
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"optimizer": _optimizer("adam")})}
    )
    losses = _run(config).batch_loss
    assert np.mean(losses[:10]) > 1.5 * np.mean(losses[-10:])


def _optimizer(name: str) -> Any:
    from suite.spec import OptimizerSpec

    return OptimizerSpec(name=name)


def test_mse_loss_is_half_squared_error_on_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32)
    labels = np.array([0, 3, 9, 1, 1, 5], dtype=np.int32)
    got = float(train.make_loss("mse")(labels, logits))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = np.mean(0.5 * ((p - np.eye(10)[labels]) ** 2).sum(axis=1))
    assert got == pytest.approx(want, rel=1e-5)
    ce = float(train.make_loss("cross_entropy")(labels, logits))
    assert ce == pytest.approx(np.mean(-np.log(p[np.arange(6), labels])), rel=1e-5)


def test_mse_logits_is_squared_error_of_the_raw_outputs() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(5, 10)).astype(np.float32)
    labels = np.array([2, 2, 7, 0, 9], dtype=np.int32)
    got = float(train.make_loss("mse_logits")(labels, logits))
    # PyTorch's MSELoss: the mean over every element, batch and classes
    assert got == pytest.approx(np.mean((logits - np.eye(10)[labels]) ** 2), rel=1e-5)
    assert got != pytest.approx(float(train.make_loss("mse")(labels, logits)), rel=1e-2)


def test_mse_run_logs_losses_in_its_own_scale() -> None:
    history = _run(_config(train={"loss": "mse"}))
    # 0.5 * sum of squared softmax errors is at most 1 per image
    assert all(0 <= v <= 1 for v in history.metrics["train_loss"] + history.metrics["test_loss"])


def test_activation_histograms_at_init_and_after_training() -> None:
    config = _config(model={"hidden": [16, 16, 16]}, train={"log_activations": True})
    found = _run(config).activations
    assert found is not None
    assert (found["activation"], found["init"], found["bins"]) == ("relu", "he", 30)
    assert len(found["probe"]) == 5  # the textbook's 5 layers of 100
    assert len(found["network_init"]) == len(found["network_trained"]) == 3  # hidden layers
    for layer in found["probe"] + found["network_init"] + found["network_trained"]:
        assert len(layer["fractions"]) == 30
        assert sum(layer["fractions"]) == pytest.approx(1.0, abs=1e-4)
    assert found["network_init"] != found["network_trained"]  # training moved the weights


def test_activation_probe_shows_the_textbook_collapse_and_spread() -> None:
    from suite.spec import StdInit

    small = models.activation_probe(StdInit(std=0.01), "sigmoid")
    xavier = models.activation_probe("xavier", "sigmoid")
    # std 0.01: the sigmoid outputs bunch at 0.5 by the last layer; xavier keeps a spread
    assert small[-1]["std"] < 0.03
    assert xavier[-1]["std"] > 3 * small[-1]["std"]
    assert abs(small[-1]["mean"] - 0.5) < 0.02
    # std 1 saturates sigmoid at 0 and 1: the two end bins hold most activations
    wide = models.activation_probe(StdInit(std=1.0), "sigmoid")[-1]["fractions"]
    assert wide[0] + wide[-1] > 0.5


def test_validation_runs_report_final_and_best_val_accuracy() -> None:
    history = _run(_config(data={"val_size": 20}))
    final = history.final()
    assert final["final_val_accuracy"] == history.metrics["val_accuracy"][-1]
    assert final["best_val_accuracy"] == max(history.metrics["val_accuracy"])
    assert "final_val_accuracy" not in _run(_config()).final()


def test_fit_epoch_is_the_first_epoch_at_099_train_accuracy() -> None:
    from suite.history import History

    history = History()
    for train_accuracy in (0.5, 0.98, 0.99, 0.97, 1.0):
        history.append({"train_accuracy": train_accuracy, "test_accuracy": 0.5})
    assert history.final()["fit_epoch"] == 3.0
    never = History()
    never.append({"train_accuracy": 0.989, "test_accuracy": 0.5})
    assert "fit_epoch" not in never.final()


def test_fit_epoch_counts_epochs_not_evaluations() -> None:
    from suite.history import History

    history = History()
    for epoch, train_accuracy in ((20, 0.5), (40, 0.995), (60, 1.0)):
        history.append({"train_accuracy": train_accuracy, "test_accuracy": 0.5}, epoch)
    assert history.final()["fit_epoch"] == 40.0
