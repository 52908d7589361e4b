"""Temperature scaling on the headline's setting (slow, about 30 s on 2 cores): 300 MNIST
images, the textbook's 784-100x6-10 ReLU network trained by SGD until its test loss turns up
(about epoch 100 of 200), a validation split of 200 images from the rest of the pool. The
overfit network is over-confident; a temperature fitted on the validation split brings its
test ECE down (Guo et al. 2017).

Measured (3 seeds, official test set): test ECE 0.090-0.095 at epoch 200, 0.012-0.033 after
scaling, T 1.33-1.52, the test loss lowest at epochs 97-108."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from suite import data, train
from suite.spec import RunConfig

pytestmark = pytest.mark.slow

EPOCHS = 200
SEEDS = (0, 1, 2)


def test_temperature_scaling_lowers_the_test_ece_of_the_overfit_textbook_network(
    shared_mnist: Path,
) -> None:
    config = RunConfig.model_validate(
        {
            "data": {
                "path": str(shared_mnist),
                "train_size": 300,
                "val_size": 200,
                "val_from": "pool",
            },
            "model": {"hidden": [100] * 6, "activation": "relu", "init": "he"},
            "train": {
                "optimizer": {"name": "sgd", "learning_rate": 0.01},
                "batch_size": 100,
                "epochs": EPOCHS,
                "sampling": "with_replacement",
            },
        }
    )
    before, after, temperatures = [], [], []
    for seed in SEEDS:
        split = data.make_split(**config.data.model_dump(), seed=seed)
        history = train.train(config, split, seed)
        test_loss = np.asarray(history.metrics["test_loss"])
        # the setting overfits: the test loss turned up well before the end
        assert test_loss.argmin() + 1 < EPOCHS - 40 and test_loss[-1] > test_loss.min()
        final = history.final()
        before.append(history.metrics["test_ece"][-1])
        after.append(final["test_ece_scaled"])
        temperatures.append(final["temperature"])
        assert final["test_loss_scaled"] < test_loss[-1]
    assert np.mean(temperatures) > 1.0  # over-confident: the logits are shrunk
    assert np.mean(after) < 0.6 * np.mean(before), (before, after)
