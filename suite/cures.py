"""The everyday cures a compiled training step applies around the network: early stopping,
data augmentation, label smoothing and max-norm.

Each is a piece `suite.train`'s compiled program traces into its graph, and each is absent from
the graph when its setting is off, so a run without them computes exactly what it did before
they existed.

- `EarlyStop`: Keras' `EarlyStopping` rule (`keras.callbacks.EarlyStopping`, Keras 3), decided
  after every epoch inside the compiled epochs, with its state in variables that live across
  the program's calls: a run stops at the same epoch, with the same history, whatever number
  of epochs one call runs, and no epoch runs after the stop.
- `Augmenter`: random shifts, rotations, zooms and flips of each training minibatch, drawn as
  Keras' preprocessing layers (RandomTranslation, RandomRotation, RandomZoom, RandomFlip) draw
  them and applied as one affine resampling (`RandomAffine`), then Keras' GaussianNoise;
  reseeded per run.
- `objective`: the training loss with Keras' label smoothing.
- `MaxNorm`: Keras' `MaxNorm` constraint on every kernel, applied after each update.

Owns: these four pieces and their per-run reset. Must not: import MLflow, build the network,
choose a run's minibatches or log anything (`suite.train` runs the epochs and returns the
history; `suite.lifecycle` records it).
"""

from __future__ import annotations

import suite._tf  # noqa: F401  (quiet TensorFlow start-up, before keras)

# isort: split

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from suite.spec import AugmentSpec, EarlyStopping

Loss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class EarlyStop:
    """Keras' early-stopping rule, traced into the compiled epochs.

    After each evaluated epoch (`update`: every epoch, or every `train.eval_every`th) the
    monitored value improves when it beats the best so far by more than `min_delta`; an
    improvement saves the network's weights (with `restore_best`) and clears the wait, anything
    else adds one to it, and the evaluation that brings the wait to `patience` (never the
    first) is the stop: patience counts evaluations. Keras 3's `restore_best_weights` puts the
    best epoch's weights back at the end of training whether it stopped or not; so does
    `restore`. Epochs (`best_epoch`, `stopped`) are the evaluated epochs' own numbers.
    """

    def __init__(self, spec: EarlyStopping, weights: Sequence[Any]) -> None:
        self.spec = spec
        self.monitor = spec.monitor
        self.lower = spec.monitor.endswith("_loss")  # val_loss falls, val_accuracy rises
        self.weights = list(weights) if spec.restore_best else []  # what an improvement saves
        self.saved = [tf.Variable(tf.zeros_like(w.value), trainable=False) for w in self.weights]
        self.best = tf.Variable(0.0, trainable=False, name="stop_best")
        self.wait = tf.Variable(0, trainable=False, name="stop_wait")
        self.evaluations = tf.Variable(0, trainable=False, name="stop_evaluations")
        self.epoch = tf.Variable(0, trainable=False, name="stop_epoch")  # the last evaluated
        self.best_epoch = tf.Variable(0, trainable=False, name="stop_best_epoch")
        self.stopped = tf.Variable(0, trainable=False, name="stopped_epoch")
        self.reset()

    def reset(self) -> None:
        """A new run: no best yet, nothing waited, not stopped."""
        self.best.assign(math.inf if self.lower else -math.inf)
        for variable in (self.wait, self.evaluations, self.epoch, self.best_epoch, self.stopped):
            variable.assign(0)

    def update(self, current: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
        """An evaluated epoch's monitored value and its number, from 1 (traced); returns
        whether the run stops here."""
        self.epoch.assign(epoch)
        self.evaluations.assign_add(1)
        delta = self.spec.min_delta
        improved = current + delta < self.best if self.lower else current - delta > self.best

        def keep() -> tf.Tensor:
            self.best.assign(current)
            self.best_epoch.assign(epoch)
            for saved, weight in zip(self.saved, self.weights, strict=True):
                saved.assign(weight.value)
            return tf.constant(0)

        wait = tf.cond(improved, keep, lambda: self.wait + 1)
        self.wait.assign(wait)
        stop = tf.logical_and(
            tf.logical_not(improved),
            tf.logical_and(wait >= self.spec.patience, self.evaluations > 1),
        )
        self.stopped.assign(tf.where(stop, epoch, self.stopped))
        return stop

    def restore(self) -> int:
        """Put the best epoch's weights back (with `restore_best`); the epoch whose weights the
        network now holds."""
        if not self.spec.restore_best or int(self.best_epoch) == 0:
            return int(self.epoch)
        for saved, weight in zip(self.saved, self.weights, strict=True):
            weight.assign(tf.convert_to_tensor(saved))
        return int(self.best_epoch)


class RandomAffine(keras.layers.Layer):
    """Keras' RandomTranslation, RandomRotation, RandomZoom and RandomFlip as one transform:
    each image's shift, angle, zoom and flip are drawn as those layers draw them, composed
    about the image's centre into one affine map, and the image resampled once with
    `keras.ops.image.affine_transform` (bilinear, reflected fill: the layers' defaults).

    The four layers chained resample a batch four times, and resampling is what costs: on the
    headline run the chain made a run 1.4x slower, one composed transform about 1.1x. It also
    blurs and reflects once instead of up to four times.

    Draws, per image: angle ~ U(-1, 1) x rotate degrees; zoom factor 1 + U(-zoom, zoom), the
    same in height and width (above 1 zooms out, as in RandomZoom); shift ~ U(-1, 1) x
    translate of the height and of the width; a left-right flip with probability 1/2.
    """

    def __init__(self, spec: AugmentSpec, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n: Any, size: float) -> Any:
        return keras.random.uniform((n,), -size, size, seed=self.generator)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        spec, ops = self.spec, keras.ops
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        angle = self._uniform(n, math.radians(spec.rotate)) if spec.rotate else ops.zeros((n,))
        zoom = 1.0 + (self._uniform(n, spec.zoom) if spec.zoom else ops.zeros((n,)))
        shift_x = self._uniform(n, spec.translate * width) if spec.translate else ops.zeros((n,))
        shift_y = self._uniform(n, spec.translate * height) if spec.translate else ops.zeros((n,))
        flip = ops.ones((n,))
        if spec.flip:
            draw = keras.random.uniform((n,), seed=self.generator)
            flip = ops.where(draw < 0.5, -1.0, 1.0)
        # output pixel p -> input pixel c + F Z R (p - c) - shift, c the image's centre
        cos, sin = ops.cos(angle) * zoom, ops.sin(angle) * zoom
        a0, a1, b0, b1 = flip * cos, -flip * sin, sin, cos
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = cx - a0 * cx - a1 * cy - shift_x
        b2 = cy - b0 * cx - b1 * cy - shift_y
        zero = ops.zeros((n,))
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)
        return ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode="reflect"
        )


class Augmenter:
    """Random transforms of a training minibatch of flat inputs: the geometric ones
    (`RandomAffine`) on the batch viewed as images (H, W, C), then Keras' GaussianNoise."""

    def __init__(self, spec: AugmentSpec, image_shape: tuple[int, ...]) -> None:
        self.spec = spec
        self.image = (*image_shape, 1) if len(image_shape) == 2 else tuple(image_shape)
        self.layers = self._layers(0)

    def _layers(self, seed: int) -> list[keras.layers.Layer]:
        first, second = (int(s) >> 1 for s in np.random.SeedSequence([seed, 1]).generate_state(2))
        made: list[keras.layers.Layer] = []
        if self.spec.geometric:
            made.append(RandomAffine(self.spec, seed=first))
        if self.spec.noise:
            made.append(keras.layers.GaussianNoise(self.spec.noise, seed=second))
        return made

    def reset(self, seed: int) -> None:
        """Seed every layer's random stream for the run: as fresh layers built with the run's
        seed would hold it."""
        for mine, fresh in zip(self.layers, self._layers(seed), strict=True):
            for variable, value in zip(mine.variables, fresh.variables, strict=True):
                variable.assign(value)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """A training minibatch of flat inputs, transformed (traced)."""
        out = tf.reshape(x, (-1, *self.image)) if self.spec.geometric else x
        for layer in self.layers:
            out = layer(out, training=True)
        return tf.reshape(out, tf.shape(x)) if self.spec.geometric else out


def objective(loss: Loss, smoothing: float, num_classes: int) -> Loss:
    """The loss a run minimises: `loss` itself, or with label smoothing Keras' categorical
    cross-entropy on smoothed targets, y * (1 - smoothing) + smoothing / K."""
    if not smoothing:
        return loss
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)

    def smoothed_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return smoothed(tf.one_hot(labels, num_classes, dtype=logits.dtype), logits)

    return smoothed_loss


class MaxNorm:
    """Keras' `MaxNorm(max_value)` on every kernel, applied after each update: each output
    unit's incoming weights (a Dense column; a conv filter over its height, width and input
    channels) are scaled back to norm `max_value` when longer."""

    def __init__(self, max_value: float, kernels: Sequence[Any]) -> None:
        self.kernels = list(kernels)
        self.constraints = [
            keras.constraints.MaxNorm(max_value, axis=list(range(len(k.shape) - 1)))
            for k in self.kernels
        ]

    def apply(self) -> None:
        """Constrain every kernel (traced, after the optimizer's update)."""
        for kernel, constraint in zip(self.kernels, self.constraints, strict=True):
            kernel.assign(constraint(kernel.value))
