"""What a run's updates minimise and how they move the weights: the data losses and the
optimizers, as the textbook defines them (its defaults are `suite.schema_optimizer`'s).

Owns: `make_optimizer` (a Keras optimizer configured to the textbook's update rules, and AdamW's
decoupled weight decay) and `make_loss` (the data loss on logits). Must not: train, build the
network or log anything (`suite.train` uses both inside its compiled program).
"""

from __future__ import annotations

import suite._tf  # noqa: F401  (quiet TensorFlow start-up, before keras)

# isort: split

from collections.abc import Callable

import keras
import tensorflow as tf

from suite.spec import OptimizerSpec


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
        case "adamw":
            # Adam's update after w -= learning_rate * weight_decay * w on every trainable
            # variable, biases included (PyTorch's AdamW on all of a model's parameters, as
            # Omnigrok uses it); decoupled from the loss, unlike model.weight_decay's penalty
            return keras.optimizers.AdamW(
                learning_rate=lr,
                weight_decay=spec.weight_decay,
                beta_1=spec.beta_1,
                beta_2=spec.beta_2,
                epsilon=spec.epsilon,
            )
    raise ValueError(f"unknown optimizer {spec.name}")


def make_loss(name: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The data loss on logits: softmax cross-entropy; the textbook's mean squared error on
    the softmax outputs, 0.5 * sum over classes of (p - one_hot)^2, averaged over the batch;
    or (`mse_logits`) the squared error of the raw outputs against the one-hot labels,
    averaged over batch and classes (PyTorch's `MSELoss`, as Omnigrok's grokking code uses
    it)."""
    if name == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "mse_logits":

        def mse_logits(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
            target = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
            return tf.reduce_mean(tf.square(logits - target))

        return mse_logits

    def mse(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        target = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
        return tf.reduce_mean(0.5 * tf.reduce_sum(tf.square(tf.nn.softmax(logits) - target), 1))

    return mse
