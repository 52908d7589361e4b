"""Long runs made affordable: `train.eval_every`, `model.init_scale` and AdamW's decoupled
weight decay, trained for real on the bundled MNIST subset, logged to a real MLflow store, and
the study files that ask for them wrongly."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from suite import models, results
from suite import train as training
from suite.data import make_split
from suite.report import aggregate, load, write_report
from suite.runner import run_study
from suite.spec import RunConfig, SpecError
from suite.study import load_study
from suite.tracking import Tracker

pytestmark = pytest.mark.usefixtures("bundled_only")

TINY = {
    "data": {"train_size": 60, "test_size": 100},
    "model": {"hidden": [16]},
    "train": {"batch_size": 20, "epochs": 10},
}
# early stopping's: a small network that overfits 100 images within tens of epochs
STOPPING = {
    "data": {"train_size": 100, "val_size": 200, "val_from": "pool", "test_size": 500},
    "model": {"hidden": [32]},
    "train": {"batch_size": 20, "epochs": 150, "optimizer": {"learning_rate": 0.1}},
}


def config(base: dict[str, Any] = TINY, **sections: dict[str, Any]) -> RunConfig:
    merged = {key: {**base.get(key, {}), **sections.get(key, {})} for key in base}
    return RunConfig.model_validate(merged)


def split_of(cfg: RunConfig, seed: int = 0) -> Any:
    return make_split(**cfg.data.model_dump(), seed=seed)


# --- eval_every ---------------------------------------------------------------------------

SPARSE_STUDY = """
name: sparse
base:
  data: {train_size: 60, test_size: 100}
  model: {hidden: [16]}
  train: {batch_size: 20, epochs: 10, eval_every: 4}
seeds: [0, 1]
"""


def test_eval_every_logs_points_at_n_2n_and_the_last_epoch(
    write_study: Callable[[str], Path], tracking_uri: str
) -> None:
    study = load_study(write_study(SPARSE_STUDY))
    tracker = Tracker(tracking_uri)
    assert run_study(study, tracker).ok
    experiment_id = tracker.experiment_id("sparse", create=False)
    assert experiment_id is not None
    records = tracker.runs(experiment_id)
    assert len(records) == 2
    per_epoch = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "gap")
    for record in records:
        for metric in (*per_epoch, "reg_loss", "weight_norm"):
            points = tracker.client.get_metric_history(record.run_id, metric)
            assert sorted(p.step for p in points) == [4, 8, 10], metric
        assert record.metrics["best_epoch"] in (4, 8, 10)

    curves = results.curves("sparse", list(per_epoch), uri=tracking_uri)
    assert set(curves.groupby(["run_id", "metric"])["epoch"].apply(tuple)) == {(4, 8, 10)}
    # the report's curves: the mean over both seeds at each epoch that exists
    runs = load.load_runs("sparse", tracker).runs
    mean = aggregate.curves(load.load_histories(tracker, runs, ["test_accuracy"], 10))
    assert list(mean["epoch"]) == [4, 8, 10] and set(mean["n"]) == {2}


def test_the_report_draws_sparse_curves(
    write_study: Callable[[str], Path], tracking_uri: str, tmp_path: Path
) -> None:
    study = load_study(write_study(SPARSE_STUDY))
    tracker = Tracker(tracking_uri)
    assert run_study(study, tracker).ok
    paths = write_report("sparse", tracker, tmp_path / "report", study, log_to_mlflow=False)
    written = sorted(p.name for p in paths.folder.iterdir())
    assert any(name.endswith(".png") for name in written), written
    assert "not drawn" not in paths.markdown.read_text()


def test_eval_every_evaluates_what_every_epoch_would_at_those_epochs() -> None:
    dense_config = config()
    split = split_of(dense_config)
    seen: list[int] = []
    sparse = training.train(
        config(train={**TINY["train"], "eval_every": 3}), split, 0, lambda e, _: seen.append(e)
    )
    dense = training.train(dense_config, split, 0)
    assert seen == sparse.evaluated == [3, 6, 9, 10]
    assert dense.evaluated == list(range(1, 11))
    # evaluating changes no weight: the sparse run's points are the dense run's at those epochs
    for metric, values in sparse.metrics.items():
        at = [dense.metrics[metric][e - 1] for e in sparse.evaluated]
        if "accuracy" in metric or metric == "gap":
            assert values == at, metric
        else:
            assert values == pytest.approx(at, rel=1e-6, abs=1e-7), metric
    best = sparse.final()["best_epoch"]
    assert best in sparse.evaluated
    assert sparse.final()["final_test_accuracy"] == dense.final()["final_test_accuracy"]


def test_eval_every_one_is_the_default_its_program_and_its_bits() -> None:
    unset, one = config(), config(train={**TINY["train"], "eval_every": 1})
    assert unset.hash == one.hash
    split = split_of(unset)
    sizes = {"train": 60, "test": 100}
    shape = (784, 10, (28, 28), None)
    assert training._program(unset, sizes, shape) is training._program(one, sizes, shape)
    first, second = training.train(unset, split, 0), training.train(one, split, 0)
    assert first.metrics == second.metrics  # one process, one program: to the bit
    assert first.evaluated == list(range(1, 11))


def test_early_stopping_counts_patience_in_evaluations() -> None:
    stopping = {"monitor": "val_loss", "patience": 2}
    cfg = config(STOPPING, train={**STOPPING["train"], "eval_every": 3, "early_stopping": stopping})
    history = training.train(cfg, split_of(cfg), seed=0)
    values = history.metrics["val_loss"]
    # Keras' rule on the evaluations: the stop is the one that makes 2 without improvement
    best = int(np.argmin(values))
    assert history.stopped_epoch is not None and history.stopped_epoch < cfg.train.epochs
    assert history.evaluated[-1] == history.stopped_epoch  # the curves end at the stop
    assert history.stopped_epoch % 3 == 0
    assert len(values) == best + 1 + 2  # 2 evaluations, 6 epochs, after the best
    assert all(later >= values[best] for later in values[best + 1 :])
    assert history.restored_epoch == history.evaluated[best] == history.stopped_epoch - 6
    final = history.final()
    assert final["stopped_epoch"] == history.stopped_epoch
    assert final["restored_epoch"] == history.restored_epoch


# --- init_scale ---------------------------------------------------------------------------


def test_init_scale_multiplies_the_initial_kernels_and_biases() -> None:
    plain = config(model={"hidden": [64, 32], "init": "glorot_uniform"})
    scaled = config(model={"hidden": [64, 32], "init": "glorot_uniform", "init_scale": 8.0})
    one, eight = models.build_model(plain.model, 3), models.build_model(scaled.model, 3)
    for a, b in zip(one.trainable_variables, eight.trainable_variables, strict=True):
        assert np.array_equal(8.0 * keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # a program compiled for scale 1 starts a scale-8 run from the scaled weights
    sizes, shape = {"train": 60, "test": 100}, (784, 10, (28, 28), None)
    program = training._program(plain, sizes, shape)
    assert training._program(scaled, sizes, shape) is program
    program.reset(scaled, 3)
    for mine, built in zip(program.model.weights, eight.weights, strict=True):
        assert np.array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(built))
    # the initialisation check: he's promise, times the scale
    he = config(model={"hidden": [400], "init_scale": 8.0})
    stds = models.kernel_stds(models.build_model(he.model, 0))
    assert stds[0] == pytest.approx(models.expected_std("he", 784, 8.0), rel=0.02)
    assert models.expected_std("he", 784, 8.0) == pytest.approx(8 * math.sqrt(2 / 784))


def test_init_scale_trains_from_larger_weights() -> None:
    cfg = config(model={"hidden": [16], "init_scale": 4.0}, train={**TINY["train"], "epochs": 2})
    history = training.train(cfg, split_of(cfg), 0)
    plain = training.train(config(train={**TINY["train"], "epochs": 2}), split_of(cfg), 0)
    assert history.metrics["weight_norm"][0] > 3 * plain.metrics["weight_norm"][0]


# --- adamw --------------------------------------------------------------------------------


def _optimizer_run(optimizer: dict[str, Any]) -> Any:
    cfg = config(train={**TINY["train"], "epochs": 30, "optimizer": optimizer})
    return training.train(cfg, split_of(cfg), 0)


def test_adamw_trains_and_its_decay_shrinks_the_weights() -> None:
    decayed = _optimizer_run({"name": "adamw", "learning_rate": 0.01, "weight_decay": 1.0})
    adam = _optimizer_run({"name": "adam", "learning_rate": 0.01})
    assert decayed.metrics["train_accuracy"][-1] > 0.8  # it learns
    assert decayed.metrics["weight_norm"][-1] < 0.8 * adam.metrics["weight_norm"][-1]
    # without decay AdamW is Adam: a program compiled for the decay above is not reused
    undecayed = _optimizer_run({"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.0})
    for metric in ("train_loss", "weight_norm"):
        assert undecayed.metrics[metric] == pytest.approx(adam.metrics[metric], rel=1e-5)


def test_adamw_defaults_and_keras_optimizer() -> None:
    spec = config(train={**TINY["train"], "optimizer": {"name": "adamw"}}).train.optimizer
    assert (spec.learning_rate, spec.weight_decay, spec.beta_1, spec.beta_2) == (
        0.001,
        0.01,
        0.9,
        0.999,
    )
    optimizer = training.make_optimizer(spec)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(0.01)


# --- hashes and bad input -----------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "experiments").glob("*.yaml")), ids=str)
def test_cells_without_the_new_settings_keep_their_hashes(path: Path) -> None:
    for cell in load_study(path, check_data=False).cells:
        model, train = cell.config.model, cell.config.train
        if model.init_scale is not None or train.eval_every > 1 or train.optimizer.name == "adamw":
            continue  # a study of the new settings (grokking, double_descent)
        identity = cell.config.identity()
        assert "init_scale" not in identity["model"]
        assert "eval_every" not in identity["train"]
        assert "weight_decay" not in identity["train"]["optimizer"]
    off = RunConfig.model_validate({"model": {"init_scale": None}, "train": {"eval_every": 1}})
    assert off.hash == RunConfig().hash
    for changed in (
        {"model": {"init_scale": 8.0}},
        {"train": {"eval_every": 2}},
        {"train": {"optimizer": {"name": "adamw"}}},
    ):
        assert RunConfig.model_validate(changed).hash != RunConfig().hash
    adamw = {"train": {"optimizer": {"name": "adamw", "weight_decay": 0.1}}}
    assert (
        RunConfig.model_validate(adamw).hash
        != RunConfig.model_validate({"train": {"optimizer": {"name": "adamw"}}}).hash
    )


BAD = {
    "eval_every 0": (
        "base: {train: {epochs: 10, eval_every: 0}}",
        "base.train.eval_every: must be greater than 0",
    ),
    "eval_every beyond the run": (
        "base: {train: {epochs: 10}}\nvariants: {a: {train: {eval_every: 20}}}",
        "variants.a.train.eval_every: 20 is more than train.epochs (10)",
    ),
    "eval_every as a fraction": (
        "base: {train: {eval_every: 2.5}}",
        "base.train.eval_every: expected a whole number",
    ),
    "patience that could never pass": (
        "base: {data: {val_size: 50}, train: {epochs: 100, eval_every: 10, "
        "early_stopping: {patience: 10}}}",
        "base.train.early_stopping.patience: counts evaluations, one every 10 epochs: 10 of "
        "them wait 100 epochs, and train.epochs 100 has 10 evaluations, too few to ever stop",
    ),
    "init_scale 0": ("base: {model: {init_scale: 0}}", "base.model.init_scale: must be greater"),
    "negative init_scale": ("base: {model: {init_scale: -2.0}}", "base.model.init_scale"),
    "weight_decay of adam": (
        "base: {train: {optimizer: {name: adam, weight_decay: 0.01}}}",
        "base.train.optimizer: weight_decay: not a setting of the adam optimizer (decoupled weight decay is adamw's; the L2 penalty of any optimizer is model.weight_decay)",
    ),
    "negative adamw decay": (
        "base: {train: {optimizer: {name: adamw, weight_decay: -0.1}}}",
        "base.train.optimizer.weight_decay: must be greater than or equal to 0",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_are_one_line_errors_naming_the_key(
    case: str, write_study: Callable[[str], Path]
) -> None:
    body, message = BAD[case]
    path = write_study(f"name: bad\n{body}\n")
    with pytest.raises(SpecError) as err:
        load_study(path, check_data=False)
    text = str(err.value)
    assert "\n" not in text and str(path) in text, text
    assert message in text, text


def test_patience_that_can_stop_is_accepted(write_study: Callable[[str], Path]) -> None:
    body = "base: {data: {val_size: 50}, train: {epochs: 100, eval_every: 10,"
    # 10 evaluations: a best, then 9 without improvement
    study = load_study(
        write_study(f"name: ok\n{body} early_stopping: {{patience: 9}}}}}}\n"), check_data=False
    )
    stopping = study.cells[0].config.train.early_stopping
    assert stopping is not None and stopping.patience == 9
