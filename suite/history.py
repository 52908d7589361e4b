"""A run's per-epoch history and the summary it ends with. Knows nothing of MLflow or Keras.

Owns: `History` (what `suite.train.train` returns and `suite.lifecycle` records: per-epoch
metrics, the confusion matrix, per-update losses, activation histograms, early stopping's
epochs, a saved network, the label noise the run trained with) and the end-of-run summary
(`History.final`, with the per-class scores of `per_class` and `confusion_matrix`), a search
pruner's verdict (`Pruned`, which ends the history at its epoch), and `shortest` (a value as
the store holds it). Must not:
train, import TensorFlow (a parent process unpickles a worker's history) or log anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from suite.metrics import SCALING_METRICS

if TYPE_CHECKING:  # a saved network is only carried here
    from suite.models import SavedNetwork


def shortest(value: float) -> float:
    """The shortest decimal that reads back as the value's float32, which is what the store
    holds and the UI shows (`suite.tracking.Tracker.log_epochs`): 0.1135, not
    0.11349999904632568. Lossless for Keras' metrics (float32); the few computed in float64
    (the gap of two of them, seconds, macro F1) keep the 7 significant digits of float32.
    Values beyond float32's normal range stay."""
    with np.errstate(over="ignore", under="ignore"):
        single = np.float32(value)
    if value == 0 or (np.isfinite(single) and abs(single) >= TINY):
        return float(str(single))
    return float(value)


TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


class Pruned(Exception):  # noqa: N818 - a verdict, not an error
    """Raised by a run's epoch callback: its search's pruner ends the trial at this epoch."""


@dataclass
class History:
    """Per-epoch metrics of one run, at the epochs it evaluated (`evaluated`)."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    # the epoch (from 1) of each point of `metrics`: every epoch, or with `train.eval_every`
    # every Nth and the last
    evaluated: list[int] = field(default_factory=list)
    train_seconds: float = 0.0
    # test-set confusion matrix at the end: rows are true digits, columns predicted ones
    confusion: np.ndarray | None = None
    # every update's minibatch data loss, in order (`train.log_batch_loss`)
    batch_loss: list[float] = field(default_factory=list)
    # per-layer activation histograms (`train.log_activations`): the textbook's probe and the
    # network's hidden layers before and after training (see `layer_histograms`)
    activations: dict[str, Any] | None = None
    # with `train.early_stopping`: the epoch it stopped at (None: it ran every epoch), the
    # epoch whose weights the run ended with, and their metrics, evaluated once more
    stopped_epoch: int | None = None
    restored_epoch: int | None = None
    restored: dict[str, float] | None = None
    # with `log_model`: the network the run logs, saved to a file (see `train`)
    network: SavedNetwork | None = None
    # with `data.label_noise`: which training images were corrupted, to which label
    # (`suite.corrupt.LabelNoiseDraw.record`), logged as the `label_noise.json` artifact
    label_noise: dict[str, Any] | None = None
    # in a cross-entropy run: its calibration at the end (`suite.calibration.calibrate`), the
    # `reliability.json` artifact, with the temperature scaling's final metrics
    calibration: dict[str, Any] | None = None
    # the network's trainable parameters, counted on the built Keras model (a builder's too)
    n_params: int | None = None
    # a search's trial its pruner ended (`suite.search`): the epoch it stopped at
    pruned_epoch: int | None = None

    @property
    def epochs(self) -> int:
        """The last epoch evaluated: the last one trained (the last evaluation is the run's)."""
        return self.evaluated[-1] if self.evaluated else 0

    def append(self, values: dict[str, float], epoch: int | None = None) -> None:
        """One evaluated epoch's metrics; `epoch` (from 1) defaults to the next one."""
        self.evaluated.append(epoch if epoch is not None else self.epochs + 1)
        for name, value in values.items():
            self.metrics.setdefault(name, []).append(value)

    def final(self) -> dict[str, float]:
        """The end-of-run summary metrics (design.md): final values, best test epoch, time;
        the final and best validation accuracy when the run has a validation split. With early
        stopping the final values are those of the weights the run ended with (`restored`),
        and `stopped_epoch` (when it stopped) and `restored_epoch` are added; a calibrated run
        with a validation split adds its temperature scaling's metrics (`SCALING_METRICS`);
        `n_params` when the network was counted."""
        test = self.metrics["test_accuracy"]
        best = int(np.argmax(test))
        val = self.metrics.get("val_accuracy")
        last = {name: values[-1] for name, values in self.metrics.items()}
        end = self.restored or last
        stop = {
            **({"stopped_epoch": float(self.stopped_epoch)} if self.stopped_epoch else {}),
            **({"restored_epoch": float(self.restored_epoch)} if self.restored_epoch else {}),
        }
        return {
            "final_train_accuracy": end["train_accuracy"],
            "final_test_accuracy": end["test_accuracy"],
            "final_gap": end["train_accuracy"] - end["test_accuracy"],
            "best_test_accuracy": test[best],
            "best_epoch": float(self.evaluated[best]),
            "train_seconds": self.train_seconds,
            **(
                {"final_val_accuracy": end["val_accuracy"], "best_val_accuracy": max(val)}
                if val
                else {}
            ),
            **stop,
            **fitted(self.metrics["train_accuracy"], self.evaluated),
            **{k: float(v) for k, v in (self.calibration or {}).items() if k in SCALING_METRICS},
            **({"n_params": float(self.n_params)} if self.n_params is not None else {}),
            **(per_class(self.confusion) if self.confusion is not None else {}),
        }


FIT_ACCURACY = 0.99  # a run has fitted its training labels once its train accuracy reaches it


def fitted(train_accuracy: list[float], epochs: list[int]) -> dict[str, float]:
    """`fit_epoch`: the first evaluated epoch (of `epochs`, one per accuracy) whose train
    accuracy (against the labels the run trains on, corrupted ones included) reached
    FIT_ACCURACY; nothing when none did. Zhang et al.'s measure of how much slower noisier
    labels are fitted."""
    reached = np.flatnonzero(np.asarray(train_accuracy) >= FIT_ACCURACY)
    return {"fit_epoch": float(epochs[reached[0]])} if len(reached) else {}


def per_class(confusion: np.ndarray) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 from a confusion matrix (rows: true class),
    by scikit-learn. Every class of the matrix counts equally; a class never predicted (or
    absent from the labels) scores 0 for the undefined ratio (`zero_division=0`)."""
    from sklearn.metrics import precision_recall_fscore_support

    rows, columns = np.indices(confusion.shape)
    counts = np.asarray(confusion, dtype=np.int64).ravel()
    truth, predicted = np.repeat(rows.ravel(), counts), np.repeat(columns.ravel(), counts)
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, labels=np.arange(len(confusion)), average="macro", zero_division=0
    )
    return {
        "test_precision_macro": float(precision),
        "test_recall_macro": float(recall),
        "test_f1_macro": float(f1),
    }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs: a `classes` x `classes` int matrix."""
    from sklearn.metrics import confusion_matrix as counts

    return counts(labels, predicted, labels=np.arange(classes)).astype(np.int64)
