"""`model.kind: cnn`: the textbook's SimpleConvNet by default, a conv stack of one's own, the
suite's cures on conv layers, and the one-line refusals (flat features, a stack too deep)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from suite import models
from suite.runner import run_study
from suite.spec import ModelSpec, SpecError
from suite.study import load_study
from suite.tracking import Tracker


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less MNIST is the bundled subset here."""


def test_a_cnn_without_conv_is_the_textbooks_simple_conv_net() -> None:
    spec = ModelSpec.model_validate({"kind": "cnn"})
    assert [c.model_dump() for c in spec.conv] == [
        {"filters": 30, "kernel": 5, "stride": 1, "pool": 2}
    ]
    assert spec.hidden == [100]
    model = models.build_model(spec, seed=0, input_dim=784, num_classes=10, image_shape=(28, 28))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Reshape",
        "Conv2D",
        "Activation",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Activation",
        "Dense",
    ]
    # conv 30*(5*5+1), dense 30*12*12*100+100, out 100*10+10: chapter 7's parameter count
    assert model.count_params() == 30 * 26 + (4320 * 100 + 100) + (100 * 10 + 10)
    assert model(np.zeros((2, 784), np.float32)).shape == (2, 10)


def test_the_cures_reach_conv_layers() -> None:
    spec = ModelSpec.model_validate(
        {
            "kind": "cnn",
            "conv": [
                {"filters": 4, "kernel": 3},
                {"filters": 6, "kernel": 3, "stride": 2, "pool": 2},
            ],
            "hidden": [16],
            "weight_decay": 0.1,
            "batch_norm": True,
            "dropout": 0.3,
            "dropout_style": "inverted",
        }
    )
    model = models.build_model(
        spec, seed=1, input_dim=8 * 8 * 3, num_classes=3, image_shape=(8, 8, 3)
    )
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 2 and all(c.kernel_regularizer is not None for c in convs)
    names = [layer.name for layer in model.layers]
    assert {"conv_bn_1", "conv_bn_2", "conv_drop_1", "conv_drop_2", "pool_2"} <= set(names)
    assert "pool_1" not in names  # pool 1: none


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            "{kind: cnn, conv: [{filters: 8, kernel: 5, pool: 2}, {filters: 8, kernel: 5, pool: 2}, {filters: 8, kernel: 5}]}",
            r"model\.conv\[2\]: the stack shrinks the 28x28 image below 1x1",
        ),
        ("{conv: [{filters: 8, kernel: 3}]}", r"conv: only with kind: cnn"),
    ],
)
def test_a_conv_stack_that_cannot_be_is_refused_before_any_run(
    write_study: Callable[[str], Path], model: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        load_study(write_study(f"name: c\nbase:\n  data: {{train_size: 40}}\n  model: {model}\n"))


def test_a_cnn_on_flat_features_is_refused(
    write_study: Callable[[str], Path], tmp_path: Path
) -> None:
    features = tmp_path / "features.npz"
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    np.savez(features, x_train=x, y_train=np.arange(20) % 2, x_test=x, y_test=np.arange(20) % 2)
    study = f"name: c\nbase:\n  data: {{dataset: npz, path: {features}}}\n  model: {{kind: cnn}}\n"
    with pytest.raises(
        SpecError, match=r"model\.kind: a cnn needs images.*\(6,\): flat feature vectors"
    ):
        load_study(write_study(study))


def test_a_cnn_study_runs_with_its_penalty(
    write_study: Callable[[str], Path], tracking_uri: str
) -> None:
    study = load_study(
        write_study(
            "name: cnn\nbase:\n  data: {train_size: 40, test_size: 100}\n"
            "  model: {kind: cnn, conv: [{filters: 4, kernel: 5, pool: 2}], hidden: [8]}\n"
            "  train: {epochs: 2, batch_size: 20}\nseeds: [0]\n"
            "variants:\n  plain: {}\n  decayed: {model: {weight_decay: 0.1}}\n"
        )
    )
    tracker = Tracker(tracking_uri)
    result = run_study(study, tracker, workers=1)
    assert result.ok
    runs = {r.key.cell.name: r.run_id for r in result.results}
    last = {
        run_id: value
        for run_id, _, _, value in tracker.histories(list(runs.values()), ["reg_loss"])
    }
    assert last[runs["plain"]] == 0.0
    assert last[runs["decayed"]] > 0.0  # 0.5 * 0.1 * sum(W^2) over every kernel


def test_the_penalty_covers_the_conv_kernels() -> None:
    """With a learning rate too small to move a weight, the logged penalty is the initial
    weights': 0.5 * lambda * sum(W^2) over the conv kernel and the dense ones."""
    from suite import data, train
    from suite.spec import RunConfig

    config = RunConfig.model_validate(
        {
            "data": {"train_size": 20, "test_size": 20},
            "model": {
                "kind": "cnn",
                "conv": [{"filters": 8, "kernel": 3}],
                "hidden": [4],
                "weight_decay": 0.1,
            },
            "train": {
                "epochs": 1,
                "batch_size": 10,
                "optimizer": {"name": "sgd", "learning_rate": 1e-12},
            },
        }
    )
    split = data.make_split(None, 20, "first", 0, 20, 0)
    logged = train.train(config, split, seed=0).metrics["reg_loss"][-1]
    model = models.build_model(config.model, 0, 784, 10, (28, 28))
    squares = {
        type(layer).__name__: float(np.square(keras.ops.convert_to_numpy(layer.kernel)).sum())
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
        and layer.name in ("conv_1", "dense_1")
    }
    total = sum(
        float(np.square(keras.ops.convert_to_numpy(layer.kernel)).sum())
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    )
    assert squares["Conv2D"] > 0
    assert logged == pytest.approx(0.5 * 0.1 * total, rel=1e-4)
    assert logged > 0.5 * 0.1 * (total - squares["Conv2D"]) * (1 + 1e-3)  # the conv kernel counts
