"""The textbook's overfitting scenario on real MNIST: the directions the headline study promises.

Trains the headline study's baseline, weight_decay and init_small cells for seeds 0, 1, 2 on
`../shared/data/mnist.npz` (300 training images, the official 10k test set, 200 epochs) with
the library alone: no MLflow. About 10 s per run, 9 runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from suite import data, train
from suite.cli import parse_overrides
from suite.study import load_study

pytestmark = pytest.mark.slow

HEADLINE_STUDY = Path(__file__).resolve().parents[1] / "experiments" / "overfitting.yaml"
CELLS = ("baseline", "weight_decay", "init_small")
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def seed_means(shared_mnist: Path) -> dict[str, dict[str, float]]:
    """Per cell, the seed means of the final metrics."""
    study = load_study(HEADLINE_STUDY, parse_overrides([f"data.path={shared_mnist}"]))
    means: dict[str, dict[str, float]] = {}
    for cell in study.select(list(CELLS)).cells:
        finals = []
        for seed in SEEDS:
            split = data.make_split(**cell.config.data.model_dump(), seed=seed)
            assert split.sizes == {"train": 300, "val": 0, "test": 10000}
            finals.append(train.train(cell.config, split, seed).final())
        means[cell.name] = {k: float(np.mean([f[k] for f in finals])) for k in finals[0]}
        # shown with the captured output when an assertion fails (or with `pytest -rA`)
        print(cell.name, {k: round(v, 4) for k, v in means[cell.name].items()})
    assert set(means) == set(CELLS)
    return means


def test_baseline_overfits(seed_means: dict[str, dict[str, float]]) -> None:
    baseline = seed_means["baseline"]
    assert baseline["final_train_accuracy"] >= 0.99, baseline
    assert 0.72 <= baseline["final_test_accuracy"] <= 0.80, baseline


def test_weight_decay_narrows_the_gap(seed_means: dict[str, dict[str, float]]) -> None:
    baseline, decayed = seed_means["baseline"], seed_means["weight_decay"]
    assert decayed["final_train_accuracy"] <= 0.95, decayed
    assert decayed["final_gap"] <= baseline["final_gap"] - 0.03, (baseline, decayed)


def test_small_init_does_not_learn(seed_means: dict[str, dict[str, float]]) -> None:
    small = seed_means["init_small"]
    assert small["final_test_accuracy"] < 0.2, small
