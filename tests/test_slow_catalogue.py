"""The catalogue's textbook directions on real MNIST (`../shared/data/mnist.npz`), one seed of
the decisive cells of each study, trained with the library alone (no MLflow).

The full studies (all cells, all seeds) back the same directions in `experiments/README.md`;
these runs keep them checked in about a minute and a half.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from suite import data, train
from suite.cli import parse_overrides
from suite.study import Cell, load_study

pytestmark = pytest.mark.slow

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _train(study: str, names: list[str], shared: Path, seed: int = 0) -> dict[str, train.History]:
    spec = load_study(EXPERIMENTS / f"{study}.yaml", parse_overrides([f"data.path={shared}"]))
    out = {}
    for cell in spec.select(names).cells:
        out[cell.name] = train.train(cell.config, _split(cell, seed), seed)
        print(study, cell.name, {k: round(v, 4) for k, v in out[cell.name].final().items()})
    return out


def _split(cell: Cell, seed: int) -> data.Split:
    return data.make_split(**cell.config.data.model_dump(), seed=seed)


def _end_loss(history: train.History) -> float:
    """The minibatch loss over the last 100 updates (the textbook plots it smoothed)."""
    return float(np.mean(history.batch_loss[-100:]))


def test_batch_norm_learns_where_the_plain_net_cannot(shared_mnist: Path) -> None:
    runs = _train(
        "batch_norm", ["batch_norm[init=std:0.01359]", "plain[init=std:0.01359]"], shared_mnist
    )
    assert runs["batch_norm[init=std:0.01359]"].final()["final_train_accuracy"] >= 0.9
    assert runs["plain[init=std:0.01359]"].final()["final_train_accuracy"] <= 0.2


def test_small_init_never_learns_he_does(shared_mnist: Path) -> None:
    runs = _train(
        "weight_init", ["activation=relu,init=std:0.01", "activation=relu,init=he"], shared_mnist
    )
    assert len(runs["activation=relu,init=he"].batch_loss) == 2000
    assert _end_loss(runs["activation=relu,init=std:0.01"]) >= 2.2
    assert _end_loss(runs["activation=relu,init=he"]) < 0.5


def test_sgd_ends_with_a_higher_loss_than_adam_and_momentum(shared_mnist: Path) -> None:
    names = ["mnist_2000[name=sgd]", "mnist_2000[name=adam]", "mnist_2000[name=momentum]"]
    runs = _train("optimizers", names, shared_mnist)
    sgd = _end_loss(runs["mnist_2000[name=sgd]"])
    assert sgd > 3 * _end_loss(runs["mnist_2000[name=adam]"])
    assert sgd > 3 * _end_loss(runs["mnist_2000[name=momentum]"])


def test_the_gap_shrinks_with_more_data(shared_mnist: Path) -> None:
    names = ["plain[train_size=300]", "plain[train_size=3000]"]
    runs = _train("data_size", names, shared_mnist)
    small, large = (runs[n].final()["final_gap"] for n in names)
    assert small > large + 0.05


def test_search_region_of_the_best_trials_validates_above_0_75(shared_mnist: Path) -> None:
    # trial_038 draws learning rate 0.009558 (the region the full search ranks best)
    spec = load_study(EXPERIMENTS / "hparam_search.yaml")
    trial = next(c for c in spec.cells if c.name == "trial_038")
    assert trial.config.train.optimizer.learning_rate >= 1e-3
    runs = _train("hparam_search", ["trial_038"], shared_mnist)
    assert runs["trial_038"].final()["final_val_accuracy"] >= 0.75


def test_augmentation_narrows_the_gap_and_early_stopping_stops(shared_mnist: Path) -> None:
    runs = _train("cures", ["baseline", "augment", "early_stopping"], shared_mnist)
    base, augment, stopping = (runs[n] for n in ("baseline", "augment", "early_stopping"))
    # 5 seeds: gap -0.107 [-0.129, -0.084], test +0.011 [-0.022, +0.045] (experiments/README.md)
    assert augment.final()["final_gap"] < base.final()["final_gap"] - 0.05
    assert augment.final()["final_test_accuracy"] > base.final()["final_test_accuracy"] - 0.03
    # val_loss turns up before the 200th epoch: the run stops, its curves end there
    assert stopping.stopped_epoch is not None and stopping.stopped_epoch < 200
    assert stopping.epochs == stopping.stopped_epoch
    assert stopping.restored_epoch == stopping.stopped_epoch - 10  # patience 10
