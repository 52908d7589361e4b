"""The compiled training loop: one run -> a per-epoch history. Knows nothing of MLflow.

One `tf.function` call does a whole epoch: its minibatch updates, then the loss and accuracy of
the whole training subset, the whole test set (and the validation split, if any) in inference
mode. The host sees the model once per epoch, for a handful of scalars, instead of Keras'
per-batch callbacks and per-epoch `evaluate()` machinery.

An epoch is `ceil(train_size / batch_size)` updates, or `train.steps_per_epoch` of them. With
`sampling: with_replacement` each update draws `batch_size` indices with replacement (the
textbook's `np.random.choice`); with `shuffle` an epoch is one pass over a fresh permutation
(Keras' `fit`), or with `steps_per_epoch` its share of a stream of such passes. The index
sequence is drawn up front from `numpy.random.default_rng(seed)`, so the same spec and seed give
the same batches, and, on the same machine, the same history.
"""

from __future__ import annotations

import suite._tf  # noqa: F401  (quiet TensorFlow start-up, before keras)

# isort: split


import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from suite.data import Split
from suite.metrics import EPOCH_METRICS, FINAL_METRICS, VAL_METRICS
from suite.models import (
    HISTOGRAM_BINS,
    HISTOGRAM_RANGE,
    activation_probe,
    build_model,
    histogram,
)
from suite.spec import OptimizerSpec, RunConfig, describe_init, steps_per_epoch

__all__ = ["EPOCH_METRICS", "FINAL_METRICS", "VAL_METRICS", "Diverged", "History", "train"]

EpochCallback = Callable[[int, dict[str, float]], None]
PROBE_IMAGES = 1000  # test images the activation histograms of the MNIST network use


class Diverged(RuntimeError):
    """Training produced NaN or infinity; `history` holds the epochs before it."""

    def __init__(self, reason: str, history: History) -> None:
        super().__init__(reason)
        self.reason = reason
        self.history = history


@dataclass
class History:
    """Per-epoch metrics of one run; index 0 is epoch 1."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    train_seconds: float = 0.0
    # test-set confusion matrix at the end: rows are true digits, columns predicted ones
    confusion: np.ndarray | None = None
    # every update's minibatch data loss, in order (`train.log_batch_loss`)
    batch_loss: list[float] = field(default_factory=list)
    # per-layer activation histograms (`train.log_activations`): the textbook's probe and the
    # network's hidden layers before and after training (see `layer_histograms`)
    activations: dict[str, Any] | None = None

    @property
    def epochs(self) -> int:
        return len(self.metrics.get("train_loss", []))

    def append(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)

    def final(self) -> dict[str, float]:
        """The end-of-run summary metrics (design.md): final values, best test epoch, time;
        the final and best validation accuracy when the run has a validation split."""
        test = self.metrics["test_accuracy"]
        best = int(np.argmax(test))
        val = self.metrics.get("val_accuracy")
        return {
            "final_train_accuracy": self.metrics["train_accuracy"][-1],
            "final_test_accuracy": test[-1],
            "final_gap": self.metrics["gap"][-1],
            "best_test_accuracy": test[best],
            "best_epoch": float(best + 1),
            "train_seconds": self.train_seconds,
            **({"final_val_accuracy": val[-1], "best_val_accuracy": max(val)} if val else {}),
            **(per_class(self.confusion) if self.confusion is not None else {}),
        }


def per_class(confusion: np.ndarray) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 from a confusion matrix (rows: true class).

    Every class of the matrix counts equally; a class never predicted (or absent from the
    labels) scores 0 for the undefined ratio, as scikit-learn's `zero_division=0`.
    """
    matrix = confusion.astype(float)
    hits = np.diag(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(actual > 0, hits / actual, 0.0)
        both = precision + recall
        f1 = np.where(both > 0, 2 * precision * recall / both, 0.0)
    return {
        "test_precision_macro": float(precision.mean()),
        "test_recall_macro": float(recall.mean()),
        "test_f1_macro": float(f1.mean()),
    }


def make_optimizer(spec: OptimizerSpec) -> keras.optimizers.Optimizer:
    """Keras optimizers configured to the textbook's update rules and defaults."""
    lr = spec.learning_rate
    match spec.name:
        case "sgd":
            return keras.optimizers.SGD(learning_rate=lr)
        case "momentum" | "nesterov":
            return keras.optimizers.SGD(
                learning_rate=lr, momentum=spec.momentum, nesterov=spec.name == "nesterov"
            )
        case "adagrad":
            # the textbook's accumulator starts at 0 (Keras: 0.1)
            return keras.optimizers.Adagrad(
                learning_rate=lr, initial_accumulator_value=0.0, epsilon=spec.epsilon
            )
        case "rmsprop":
            return keras.optimizers.RMSprop(learning_rate=lr, rho=spec.rho, epsilon=spec.epsilon)
        case "adam":
            return keras.optimizers.Adam(
                learning_rate=lr, beta_1=spec.beta_1, beta_2=spec.beta_2, epsilon=spec.epsilon
            )
    raise ValueError(f"unknown optimizer {spec.name}")


def batch_order(
    n: int, batch_size: int, epochs: int, sampling: str, seed: int, steps: int | None = None
) -> np.ndarray:
    """Training indices for every epoch: shape (epochs, steps * batch_size) or (epochs, n).

    With `steps` (updates between evaluations, `train.steps_per_epoch`) and `shuffle`, the
    epochs cut one continuous stream of passes, each a fresh permutation of the data.
    """
    rng = np.random.default_rng(seed)
    per_epoch = (steps or steps_per_epoch(n, batch_size)) * batch_size
    if sampling == "with_replacement":
        return rng.integers(0, n, size=(epochs, per_epoch), dtype=np.int32)
    if steps is None:
        return np.stack([rng.permutation(n).astype(np.int32) for _ in range(epochs)])
    passes = math.ceil(epochs * per_epoch / n)
    stream = np.concatenate([rng.permutation(n).astype(np.int32) for _ in range(passes)])
    return stream[: epochs * per_epoch].reshape(epochs, per_epoch)


def train(
    config: RunConfig, split: Split, seed: int, on_epoch: EpochCallback | None = None
) -> History:
    """Train one run and return its per-epoch history.

    Args:
        config: the resolved run configuration.
        split: the run's data (see `suite.data.make_split`).
        seed: seeds the weights, dropout masks and minibatch draws.
        on_epoch: called after every epoch with (epoch starting at 1, that epoch's metrics).

    Raises:
        Diverged: a loss or accuracy became NaN or infinite; carries the history so far.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    spec = config.train
    model = build_model(config.model, seed=seed, input_dim=split.x_train.shape[1])
    optimizer = make_optimizer(spec.optimizer)
    optimizer.build(model.trainable_variables)
    loss_fn = make_loss(spec.loss)

    x_train, y_train = tf.constant(split.x_train), tf.constant(split.y_train)
    x_test, y_test = tf.constant(split.x_test), tf.constant(split.y_test)
    has_val = split.x_val is not None
    x_val = tf.constant(split.x_val) if has_val else None
    y_val = tf.constant(split.y_val) if has_val else None
    n = len(split.y_train)
    batch = spec.batch_size
    steps = spec.steps_per_epoch or steps_per_epoch(n, batch)
    log_batch = spec.log_batch_loss
    probe_x = split.x_test[:PROBE_IMAGES]
    at_init = (
        layer_histograms(model, probe_x, config.model.activation) if spec.log_activations else None
    )
    kernels = [layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    def evaluate(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        logits = model(x, training=False)
        accuracy = tf.reduce_mean(
            tf.cast(tf.argmax(logits, axis=1, output_type=tf.int32) == y, tf.float32)
        )
        return loss_fn(y, logits), accuracy

    def penalty() -> tf.Tensor:
        return tf.add_n(model.losses) if model.losses else tf.constant(0.0)

    @tf.function(reduce_retracing=True)
    def run_epoch(order: tf.Tensor) -> dict[str, tf.Tensor]:
        losses = tf.TensorArray(tf.float32, size=steps if log_batch else 0)
        for step in tf.range(steps):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = tf.gather(x_train, idx), tf.gather(y_train, idx)
            with tf.GradientTape() as tape:
                logits = model(xb, training=True)
                data_loss = loss_fn(yb, logits)
                loss = data_loss + penalty()
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            if log_batch:
                losses = losses.write(step, data_loss)
        train_loss, train_acc = evaluate(x_train, y_train)
        test_loss, test_acc = evaluate(x_test, y_test)
        out = {
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "reg_loss": penalty(),
            "weight_norm": tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])),
        }
        if has_val:
            out["val_loss"], out["val_accuracy"] = evaluate(x_val, y_val)
        if log_batch:
            out["batch_loss"] = losses.stack()
        return out

    orders = batch_order(n, batch, spec.epochs, spec.sampling, seed, spec.steps_per_epoch)
    history = History()
    start = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        result = run_epoch(tf.constant(orders[epoch - 1]))
        if log_batch:
            history.batch_loss.extend(result.pop("batch_loss").numpy().tolist())
        values = {k: float(v) for k, v in result.items()}
        values["gap"] = values["train_accuracy"] - values["test_accuracy"]
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            history.train_seconds = time.perf_counter() - start
            raise Diverged(f"diverged at epoch {epoch}: {bad[0]} is {values[bad[0]]}", history)
        history.append(values)
        if on_epoch is not None:
            on_epoch(epoch, values)
    history.train_seconds = time.perf_counter() - start
    predicted = np.argmax(model(x_test, training=False).numpy(), axis=1)
    history.confusion = confusion_matrix(split.y_test, predicted)
    if at_init is not None:
        activation = config.model.activation
        history.activations = {
            "activation": activation,
            "init": describe_init(config.model.init),
            "range": list(HISTOGRAM_RANGE.get(activation, (0.0, 1.0))),
            "bins": HISTOGRAM_BINS,
            "probe": activation_probe(config.model.init, activation, seed),
            "network_init": at_init,
            "network_trained": layer_histograms(model, probe_x, activation),
            "probe_images": len(probe_x),
        }
    return history


def make_loss(name: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The data loss on logits: softmax cross-entropy, or the textbook's mean squared error
    on the softmax outputs, 0.5 * sum over classes of (p - one_hot)^2, averaged over the batch."""
    if name == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def mse(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        target = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
        return tf.reduce_mean(0.5 * tf.reduce_sum(tf.square(tf.nn.softmax(logits) - target), 1))

    return mse


def layer_histograms(model: keras.Model, x: np.ndarray, activation: str) -> list[dict[str, Any]]:
    """Each hidden layer's activations on `x` (inference mode) as a histogram (see `histogram`)."""
    out, current = [], tf.constant(x)
    for layer in model.layers:
        current = layer(current, training=False)
        if isinstance(layer, keras.layers.Activation):
            out.append(histogram(current.numpy(), activation))
    return out


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """Counts of (true class, predicted class) pairs: a `classes` x `classes` int matrix."""
    flat = np.asarray(labels, dtype=np.int64) * classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)
