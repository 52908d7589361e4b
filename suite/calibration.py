"""Calibration (Guo et al. 2017, arXiv:1706.04599): expected calibration error and temperature
scaling of a network's softmax outputs.

A run's confidence in an image is its top softmax probability, and the top label is the
prediction. The images are put into `BINS` equal-width confidence bins, ((m-1)/M, m/M], and
the expected calibration error is the share-weighted gap between each bin's accuracy and its
mean confidence: ECE = sum over bins of |B|/n * |accuracy(B) - confidence(B)|, which is
(1/n) * sum over bins of |correct(B) - confidence sum(B)|: one segment sum per evaluation.

Temperature scaling divides the logits by one T > 0, fitted to minimise the negative
log-likelihood of the validation split; the prediction (the arg max) is unchanged, only the
confidences move. A run's reliability bins (count, sum of confidences, sum of correct, per
bin) add up across seeds, so the report pools seeds exactly.

Calibration is measured for cross-entropy runs only (`train.loss: cross_entropy`,
`measured`): Guo et al. calibrate networks trained by log-likelihood, and the scaled loss is
a log-likelihood, which an MSE run's logged (squared-error) losses could not be set beside
(`mse` and `mse_logits` runs measure none of it).

Owns: the traced ECE of one evaluation (`expected_calibration_error`, TensorFlow imported
inside it, so that the report and `suite.history` can import this module without TensorFlow),
reliability bins and their ECE in NumPy, the temperature fit, and the run's end-of-training
record (`calibrate`: the `reliability.json` artifact, with the final metrics `temperature`,
`test_ece_scaled`, `test_loss_scaled`). Must not: import MLflow, train, or read a study.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

BINS = 15  # Guo et al.'s bin count
# the temperature is searched on log T within these bounds: T in [0.01, 100]
LOG_TEMPERATURE_BOUNDS = (math.log(0.01), math.log(100.0))


def measured(loss: str) -> bool:
    """Whether runs trained with `loss` (`train.loss`) measure their calibration."""
    return loss == "cross_entropy"


def expected_calibration_error(logits: tf.Tensor, hits: tf.Tensor, bins: int = BINS) -> tf.Tensor:
    """The ECE of one evaluation (traced): `hits` is 1.0 where the arg max of `logits` is the
    label. One softmax and one segment sum over the images."""
    import tensorflow as tf

    confidence = tf.reduce_max(tf.nn.softmax(logits), axis=1)
    index = tf.cast(tf.math.ceil(confidence * bins), tf.int32) - 1  # bin ((m-1)/M, m/M]
    index = tf.clip_by_value(index, 0, bins - 1)
    gaps = tf.math.unsorted_segment_sum(hits - confidence, index, bins)
    return tf.reduce_sum(tf.abs(gaps)) / tf.cast(tf.shape(hits)[0], tf.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of `logits / temperature`, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> dict[str, list[float]]:
    """Per confidence bin: the images' `count`, the sum of their top probabilities
    (`confidence`) and the number predicted right (`correct`)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return {
        "count": np.bincount(index, minlength=bins).astype(float).tolist(),
        "confidence": np.bincount(index, confidence, minlength=bins).tolist(),
        "correct": np.bincount(index, correct, minlength=bins).tolist(),
    }


def ece_of(bins: dict[str, Any]) -> float:
    """The ECE of reliability bins (a run's, or several runs' summed)."""
    count = float(np.sum(bins["count"]))
    gaps = np.abs(np.asarray(bins["correct"], float) - np.asarray(bins["confidence"], float))
    return float(gaps.sum() / count) if count else math.nan


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """The mean NLL of `labels` under softmax(`logits` / `temperature`), in float64."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64) / temperature
    picked = z[np.arange(len(z)), np.asarray(labels)]
    return float(np.mean(logsumexp(z, axis=1) - picked))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of `labels` under softmax(`logits` / T).

    Searched on log T by bounded Brent (`LOG_TEMPERATURE_BOUNDS`). The NLL is convex in 1/T,
    so it has one minimum on log T too; a split the network gets all right (the NLL falls as
    T falls) ends at the lower bound.
    """
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
        bounds=LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return math.exp(float(found.x))


def calibrate(
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    val_logits: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """A run's calibration at its end, from the logits of the weights it ends with: the test
    set's reliability bins (`unscaled`) and, with a validation split, the temperature fitted
    on it, the test set's bins at that temperature (`scaled`), and the final metrics
    `temperature`, `test_ece_scaled` and `test_loss_scaled` (the test NLL at logits / T).
    What the run logs as its `reliability.json` artifact."""
    unscaled = reliability_bins(softmax(test_logits), test_labels)
    record: dict[str, Any] = {
        "bins": BINS,
        "test_ece": ece_of(unscaled),
        "test_loss": negative_log_likelihood(test_logits, test_labels, 1.0),
        "unscaled": unscaled,
    }
    if val_logits is not None and val_labels is not None and len(val_labels):
        temperature = fit_temperature(val_logits, val_labels)
        scaled = reliability_bins(softmax(test_logits, temperature), test_labels)
        record.update(
            temperature=temperature,
            test_ece_scaled=ece_of(scaled),
            test_loss_scaled=negative_log_likelihood(test_logits, test_labels, temperature),
            val_loss=negative_log_likelihood(val_logits, val_labels, 1.0),
            val_loss_scaled=negative_log_likelihood(val_logits, val_labels, temperature),
            scaled=scaled,
        )
    return record
