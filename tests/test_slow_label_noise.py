"""Label noise on real digits (slow, about 30 s on 2 cores): an MLP of 512 units memorizes
random labels (Zhang et al. 2017) without learning anything that generalises, and with 40%
wrong labels it fits the clean images first and the corrupted ones later."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from suite import data, train
from suite.spec import RunConfig

pytestmark = pytest.mark.slow

EPOCHS = 60  # measured: random labels fit (>= 0.95) by epoch ~20, fully by ~35


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """The bundled subset: 500 training digits, 1000 of its held-out digits as the test set."""


def _train(noise: dict[str, Any], seed: int) -> dict[str, list[float]]:
    config = RunConfig.model_validate(
        {
            "data": {"train_size": 500, "test_size": 1000, "label_noise": noise},
            "model": {"hidden": [512], "init": "he_normal"},
            "train": {
                "batch_size": 50,
                "epochs": EPOCHS,
                "sampling": "shuffle",
                "optimizer": {"name": "adam", "learning_rate": 0.001},
            },
        }
    )
    split = data.make_split(**config.data.model_dump(), seed=seed)
    return train.train(config, split, seed).metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_random_labels_are_memorized_and_test_accuracy_stays_at_chance(seed: int) -> None:
    metrics = _train({"fraction": 1.0, "kind": "any"}, seed)
    assert metrics["train_accuracy"][-1] >= 0.95
    assert metrics["memorized"] == metrics["train_accuracy"]
    # 1000 test digits: chance is 0.1 with a standard deviation of 0.0095
    assert abs(metrics["test_accuracy"][-1] - 0.1) <= 0.05
    # and not by luck of the last epoch: the last ten epochs' mean too
    assert abs(np.mean(metrics["test_accuracy"][-10:]) - 0.1) <= 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_labels_are_fit_first_and_the_noise_later(seed: int) -> None:
    metrics = _train({"fraction": 0.4, "kind": "other"}, seed)

    def first_above(name: str, level: float) -> int:
        above = np.flatnonzero(np.asarray(metrics[name]) > level)
        assert above.size, f"{name} never above {level}"
        return int(above[0]) + 1

    clean, noise = first_above("train_clean_accuracy", 0.5), first_above("memorized", 0.5)
    assert clean < noise, f"clean images fit at epoch {clean}, the noise at {noise}"
    # measured: clean above 0.5 at epoch 1, the noise at ~8; the test accuracy is best
    # before the noise is memorized, and falls as it is
    best = int(np.argmax(metrics["test_accuracy"])) + 1
    assert best <= first_above("memorized", 0.9)
    assert metrics["test_accuracy"][-1] < max(metrics["test_accuracy"])
    assert metrics["memorized"][-1] >= 0.95
