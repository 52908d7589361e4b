"""The everyday cures: early stopping, augmentation, label smoothing and max-norm, trained for
real on the bundled MNIST subset, and the study files that ask for them wrongly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from suite import cures
from suite import train as training
from suite.data import make_split
from suite.spec import AugmentSpec, RunConfig, SpecError
from suite.study import load_study

pytestmark = pytest.mark.usefixtures("bundled_only")

# a small network that overfits 100 images within tens of epochs at this learning rate
FAST = {
    "data": {"train_size": 100, "val_size": 200, "val_from": "pool", "test_size": 500},
    "model": {"hidden": [32]},
    "train": {"batch_size": 20, "epochs": 150, "optimizer": {"learning_rate": 0.1}},
}


def config(**sections: dict[str, Any]) -> RunConfig:
    merged = {key: {**FAST.get(key, {}), **sections.get(key, {})} for key in FAST}
    return RunConfig.model_validate(merged)


def split_of(cfg: RunConfig, seed: int = 0) -> Any:
    return make_split(**cfg.data.model_dump(), seed=seed)


def keras_early_stopping(values: list[float], **settings: Any) -> tuple[int, int]:
    """Keras' own EarlyStopping fed a run's monitored values: (stopped epoch, best epoch), both
    counted from 1, stopped 0 when it never stops."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False
    callback = keras.callbacks.EarlyStopping(**settings)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {settings["monitor"]: value})
        if getattr(model, "stop_training", False):
            return epoch + 1, callback.best_epoch + 1
    return 0, callback.best_epoch + 1


@pytest.mark.parametrize(
    ("monitor", "patience", "min_delta"),
    [("val_loss", 5, 0.0), ("val_accuracy", 4, 0.005), ("val_loss", 0, 0.01)],
)
def test_early_stopping_stops_where_keras_would(
    monitor: str, patience: int, min_delta: float
) -> None:
    stopping = {"monitor": monitor, "patience": patience, "min_delta": min_delta}
    cfg = config(train={**FAST["train"], "early_stopping": stopping})
    history = training.train(cfg, split_of(cfg), seed=0)

    stopped, best = keras_early_stopping(
        history.metrics[monitor],
        monitor=monitor,
        patience=patience,
        min_delta=min_delta,
        mode="min" if monitor == "val_loss" else "max",
    )
    assert 0 < stopped < cfg.train.epochs  # it does stop, early
    assert history.stopped_epoch == stopped
    assert history.restored_epoch == best
    # the curves end at the stop: no epoch after it was trained or logged
    assert all(len(values) == stopped for values in history.metrics.values())
    final = history.final()
    assert final["stopped_epoch"] == stopped and final["restored_epoch"] == best


def test_a_stopped_history_does_not_depend_on_epochs_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(train={**FAST["train"], "early_stopping": {"patience": 3}})
    split = split_of(cfg)
    histories = []
    for per_call in (10, 3, 7):
        monkeypatch.setattr(training, "EPOCHS_PER_CALL", per_call)
        histories.append(training.train(cfg, split, seed=1))
    first = histories[0]
    assert first.stopped_epoch is not None and first.stopped_epoch < cfg.train.epochs
    for other in histories[1:]:  # one process, one program: to the bit
        assert other.metrics == first.metrics
        assert other.final() | {"train_seconds": 0} == first.final() | {"train_seconds": 0}


def test_restore_best_ends_with_the_best_epochs_weights_evaluated_again() -> None:
    cfg = config(train={**FAST["train"], "early_stopping": {"patience": 8}})
    history = training.train(cfg, split_of(cfg), seed=2)
    best = history.restored_epoch
    assert best is not None and history.stopped_epoch is not None and best < history.stopped_epoch
    final = history.final()
    at_best = {name: values[best - 1] for name, values in history.metrics.items()}
    # the weights the run ends with are the best epoch's: evaluated again, its metrics
    assert final["final_test_accuracy"] == pytest.approx(at_best["test_accuracy"], abs=1e-6)
    assert final["final_train_accuracy"] == pytest.approx(at_best["train_accuracy"], abs=1e-6)
    assert final["final_val_accuracy"] == pytest.approx(at_best["val_accuracy"], abs=1e-6)
    assert final["final_gap"] == pytest.approx(at_best["gap"], abs=1e-6)

    kept = config(train={**FAST["train"], "early_stopping": {"patience": 8, "restore_best": False}})
    last = training.train(kept, split_of(kept), seed=2)
    assert last.metrics == history.metrics  # the same training; only the end differs
    assert last.final()["final_test_accuracy"] == last.metrics["test_accuracy"][-1]
    assert last.final()["restored_epoch"] == last.stopped_epoch


def test_validation_from_the_pool_keeps_the_training_images() -> None:
    for subset in ("first", "random"):
        plain = make_split(None, 300, subset, 0, 200, seed=3)
        held = make_split(None, 300, subset, 100, 200, seed=3, val_from="pool")
        inside = make_split(None, 300, subset, 100, 200, seed=3)
        assert np.array_equal(held.x_train, plain.x_train)  # the same 300 images
        # selection: the 100 are held out of 400 selected, so the 300 left are other images
        assert len(inside.y_train) == 300 and not np.array_equal(inside.x_train, plain.x_train)
        train_rows = {row.tobytes() for row in held.x_train}
        assert held.x_val is not None and len(held.x_val) == 100
        assert not any(row.tobytes() in train_rows for row in held.x_val)
    first = make_split(None, 300, "first", 100, 200, seed=3, val_from="pool")
    pool = make_split(None, 400, "first", 0, 200, seed=3)
    assert np.array_equal(first.x_val, pool.x_train[300:])  # the next 100 images


def test_augmentation_is_seeded_per_run_and_changes_training() -> None:
    augment = {"translate": 0.1, "rotate": 10, "zoom": 0.1}
    train_spec = {**FAST["train"], "epochs": 6}
    cfg = config(train={**train_spec, "augment": augment})
    plain = config(train=train_spec)
    split = split_of(cfg)
    first, again = (training.train(cfg, split, seed=4) for _ in range(2))
    other = training.train(cfg, split, seed=5)
    unaugmented = training.train(plain, split, seed=4)
    assert first.metrics == again.metrics  # same seed, same history (one process)
    assert first.metrics["train_loss"] != other.metrics["train_loss"]
    assert first.metrics["train_loss"] != unaugmented.metrics["train_loss"]


def test_the_affine_transform_flips_and_shifts_about_the_centre() -> None:
    images = tf.constant(np.random.default_rng(0).uniform(size=(64, 9, 7, 1)).astype("float32"))
    flipped = cures.RandomAffine(AugmentSpec(flip=True), seed=1)(images).numpy()
    mirror = images.numpy()[:, :, ::-1]
    same = [np.allclose(f, i, atol=1e-5) for f, i in zip(flipped, images.numpy(), strict=True)]
    turned = [np.allclose(f, m, atol=1e-5) for f, m in zip(flipped, mirror, strict=True)]
    assert all(a or b for a, b in zip(same, turned, strict=True))
    assert 10 < sum(turned) < 54  # about half are mirrored
    rotated = cures.RandomAffine(AugmentSpec(rotate=30), seed=1)(images).numpy()
    # a rotation about the centre moves every image, and keeps its centre pixel
    assert not np.allclose(rotated, images.numpy(), atol=1e-3)
    assert np.allclose(rotated[:, 4, 3], images.numpy()[:, 4, 3], atol=1e-5)


def test_logged_losses_leave_label_smoothing_out() -> None:
    # a learning rate so small the weights stay at their start: the logged loss of a smoothed
    # run is then the plain cross-entropy of the initial network, as an unsmoothed run logs it
    still = {**FAST["train"], "epochs": 1, "optimizer": {"learning_rate": 1e-12}}
    smoothed = config(train={**still, "label_smoothing": 0.5, "log_batch_loss": True})
    plain = config(train={**still, "log_batch_loss": True})
    split = split_of(plain)
    a, b = training.train(smoothed, split, seed=6), training.train(plain, split, seed=6)
    assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-6)
    assert a.batch_loss == pytest.approx(b.batch_loss, rel=1e-6)
    # while the objective it minimises is the smoothed one
    loss = cures.objective(training.make_loss("cross_entropy"), 0.5, 10)
    logits, labels = tf.constant([[4.0] + [0.0] * 9]), tf.constant([0])
    expected = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.5)(
        tf.one_hot(labels, 10), logits
    )
    assert float(loss(labels, logits)) == pytest.approx(float(expected))
    assert float(loss(labels, logits)) > float(training.make_loss("cross_entropy")(labels, logits))
    moved = config(train={**FAST["train"], "epochs": 3, "label_smoothing": 0.5})
    assert (
        training.train(moved, split, 6).metrics
        != training.train(config(train={**FAST["train"], "epochs": 3}), split, 6).metrics
    )


def test_max_norm_bounds_every_units_incoming_weights() -> None:
    cfg = config(model={"hidden": [32, 32], "max_norm": 0.2}, train={**FAST["train"], "epochs": 3})
    free = config(model={"hidden": [32, 32]}, train={**FAST["train"], "epochs": 3})
    split = split_of(cfg)
    bounded = training.train(cfg, split, seed=7).metrics["weight_norm"]
    unbounded = training.train(free, split, seed=7).metrics["weight_norm"]
    columns = 32 + 32 + 10  # every unit's incoming weights are at most 0.2 long
    assert max(bounded) <= 0.2 * np.sqrt(columns) + 1e-5
    assert min(unbounded) > 3 * 0.2 * np.sqrt(columns)


BAD = {
    "stopping without validation": (
        "variants: {es: {train: {early_stopping: {patience: 3}}}}",
        "variants.es.train.early_stopping: needs a validation split",
    ),
    "stopping on the test set": (
        "base: {data: {val_size: 50}, train: {early_stopping: {monitor: test_accuracy}}}",
        "base.train.early_stopping.monitor: 'test_accuracy' is a test-set metric: stopping on "
        "it is tuning on the test set",
    ),
    "stopping on training loss": (
        "base: {data: {val_size: 50}, train: {early_stopping: {monitor: train_loss}}}",
        "base.train.early_stopping.monitor: 'train_loss' is a training metric",
    ),
    "negative patience": (
        "base: {data: {val_size: 50}, train: {early_stopping: {patience: -1}}}",
        "base.train.early_stopping.patience: must be greater than or equal to 0",
    ),
    "label smoothing 1": ("base: {train: {label_smoothing: 1.0}}", "base.train.label_smoothing"),
    "negative smoothing": ("base: {train: {label_smoothing: -0.1}}", "base.train.label_smoothing"),
    "smoothing on mse": (
        "base: {train: {loss: mse, label_smoothing: 0.1}}",
        "base.train: label_smoothing: applies to the cross_entropy loss only",
    ),
    "zero max-norm": (
        "base: {model: {max_norm: 0}}",
        "base.model.max_norm: must be greater than 0",
    ),
    "negative max-norm": ("base: {model: {max_norm: -3}}", "base.model.max_norm"),
    "rotation out of range": (
        "base: {train: {augment: {rotate: 270}}}",
        "base.train.augment.rotate: must be less than or equal to 180",
    ),
    "translation out of range": (
        "base: {train: {augment: {translate: 0.8}}}",
        "base.train.augment.translate: must be less than or equal to 0.5",
    ),
    "rotation as Keras' fraction of a turn": (
        "base: {train: {augment: {rotate: 0.1}}}",
        "base.train.augment.rotate: rotate is in degrees",
    ),
    "Keras' name for restore_best": (
        "base: {data: {val_size: 50}, train: {early_stopping: {restore_best_weights: true}}}",
        "early_stopping.restore_best_weights: unknown key (did you mean 'restore_best'?)",
    ),
    "a variant that drops the validation split": (
        "base: {data: {val_size: 50}, train: {early_stopping: {}}}\n"
        "variants: {a: {}, b: {data: {val_size: 0}}}",
        "base.train.early_stopping: needs a validation split to monitor: set data.val_size "
        "(with data.val_from: pool the training images stay the same) (in variant b)",
    ),
    "early stopping as a flag": (
        "base: {data: {val_size: 50}, train: {early_stopping: true}}",
        "base.train.early_stopping: expected a mapping of its settings ({} for every default)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_cures_are_one_line_errors_naming_the_key(
    case: str, write_study: Callable[[str], Path]
) -> None:
    body, message = BAD[case]
    path = write_study(f"name: bad\n{body}\n")
    with pytest.raises(SpecError) as raised:
        load_study(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_geometric_augmentation_is_refused_on_flat_features_and_noise_is_not(
    tmp_path: Path, write_study: Callable[[str], Path]
) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "features.npz"
    features = rng.normal(size=(60, 5)).astype(np.float32)
    labels = np.arange(60) % 2
    np.savez(path, x_train=features, y_train=labels, x_test=features[:20], y_test=labels[:20])
    head = f"name: flat\nbase: {{data: {{dataset: npz, path: {path}}}, model: {{hidden: [4]}}}}\n"
    rotating = write_study(head + "variants: {turn: {train: {augment: {rotate: 10}}}}\n")
    with pytest.raises(SpecError, match=r"cell turn: train\.augment\.rotate: needs images"):
        load_study(rotating)
    noisy = write_study(head + "variants: {noise: {train: {augment: {noise: 0.1}, epochs: 2}}}\n")
    (cell,) = load_study(noisy).cells
    split = make_split(str(path), None, "first", 0, None, 0, dataset="npz")
    history = training.train(cell.config, split, seed=0)
    assert history.epochs == 2


def test_the_acceptance_run_through_the_command_line(tmp_path: Path, tracking_uri: str) -> None:
    """`overfit run` with every cure at once finishes, logs where it stopped and what it kept,
    and its curves end at the stop; a bad cure exits non-zero and creates no run."""
    import os
    import subprocess
    import sys

    from suite.tracking import Tracker

    study = tmp_path / "acceptance.yaml"
    study.write_text(
        "name: acceptance\nbase:\n  data: {train_size: 300, test_size: 1000}\n"
        "  model: {hidden: [50, 50]}\n  train: {epochs: 300, optimizer: {learning_rate: 0.1}}\n"
    )
    cures_set = [
        "data.val_size=100",
        "train.early_stopping.monitor=val_loss",
        "train.early_stopping.patience=2",
        "train.augment.translate=0.1",
        "train.augment.rotate=10",
        "train.augment.zoom=0.1",
        "train.label_smoothing=0.1",
        "model.max_norm=3",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    def overfit(*sets: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "suite", "run", str(study), "--tracking-uri", tracking_uri]
        for item in sets:
            args += ["--set", item]
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)

    refused = overfit(*cures_set, "train.early_stopping.monitor=test_loss")
    assert refused.returncode != 0 and "tuning on the test set" in refused.stderr
    tracker = Tracker(tracking_uri)
    assert tracker.experiment_id("acceptance", create=False) is None  # nothing created

    done = overfit(*cures_set)
    assert done.returncode == 0, done.stderr
    assert "stopped at epoch" in done.stdout
    experiment = tracker.experiment_id("acceptance", create=False)
    assert experiment is not None
    (run,) = tracker.runs(experiment)
    metrics = tracker.client.get_run(run.run_id).data.metrics
    stopped = metrics["stopped_epoch"]
    assert 1 < stopped < 300 and 1 <= metrics["restored_epoch"] <= stopped
    for name in ("train_loss", "val_loss", "test_accuracy"):
        steps = [m.step for m in tracker.client.get_metric_history(run.run_id, name)]
        assert max(steps) == stopped and len(steps) == stopped


def test_a_sweep_has_its_no_augmentation_control_and_names_null_off(
    write_study: Callable[[str], Path],
) -> None:
    path = write_study(
        "name: sweep\nbase: {data: {train_size: 100, test_size: 500}, model: {hidden: [32]},"
        " train: {batch_size: 20, epochs: 3}}\n"
        "grid: {train.augment.rotate: [0, 10], model.max_norm: [null, 3.0]}\n"
    )
    cells = {cell.name: cell for cell in load_study(path).cells}
    assert "rotate=0,max_norm=off" in cells  # null is off, not "all"
    control = cells["rotate=0,max_norm=off"].config
    assert control.train.augment is not None and not control.train.augment.active
    plain = control.model_copy(update={"train": control.train.model_copy(update={"augment": None})})
    split = split_of(control)
    # all transforms at 0 is no augmentation: the same training as without the block
    assert training.train(control, split, 0).metrics == training.train(plain, split, 0).metrics
