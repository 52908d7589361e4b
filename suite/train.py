"""The compiled training loop: one run -> a per-epoch history. Knows nothing of MLflow.

One `tf.function` call runs `EPOCHS_PER_CALL` epochs: each epoch's minibatch updates, then one
inference-mode pass over the training subset, the test set and the validation split together
(one batch of rows, so one matmul per layer), reduced to the epoch's losses and accuracies. The
host reads the model's metrics once per call, instead of Keras' per-batch callbacks and
per-epoch `evaluate()` machinery. The evaluation is most of a run's arithmetic: this loop runs
close to the machine's matmul speed (`make bench` measures how close).

With `train.eval_every: N` only every Nth epoch and the last are evaluated (a call then runs
whole periods of N epochs): the history, the epoch hook, the best test epoch and early stopping
(its patience counted in evaluations) see those epochs only, each under its own number. A long
run (Omnigrok's 100k updates) then costs its updates and a few hundred evaluations.

The compiled program (model, optimizer, traced function) is kept per process and reused by
every later run of the same shape, reset to that run's initial weights, optimizer state,
learning rate and penalty coefficients (see `_Program`); a history does not depend on which
runs a process trained before it. The optimizers and losses are `suite.optimizers`'.

An epoch is `ceil(train_size / batch_size)` updates, or `train.steps_per_epoch` of them. With
`sampling: with_replacement` each update draws `batch_size` indices with replacement (the
textbook's `np.random.choice`); with `shuffle` an epoch is one pass over a fresh permutation
(Keras' `fit`), or with `steps_per_epoch` its share of a stream of such passes. The index
sequence is drawn up front from `numpy.random.default_rng(seed)`, so the same spec and seed give
the same batches and, with the same TensorFlow thread count on the same CPU, the same history to
the bit. With another thread count or CPU the sums inside a matmul may be rounded differently
(see `pin_threads`): accuracies then match in short runs and losses agree to rounding, and over
hundreds of epochs training carries the difference on.

Owns: one run's training (`train`): the compiled programs a process keeps, the minibatch order
(`batch_order`), which epochs are evaluated (`evaluated_epochs`), the per-epoch metrics
(with label noise, `train_clean_accuracy` and `memorized`; in cross-entropy runs `test_ece` and
`val_ece`, from the same evaluation), the test-set confusion matrix and the calibration at the
end (`suite.calibration.calibrate`: temperature scaling, with a validation split), kept in
a `suite.history.History` (which sums a run up at its end), divergence (`Diverged`), the
activation histograms before and after training, the weights a run's network is saved with
(`log_model`: its last, or its best test epoch's, `_BestTest`), and TensorFlow's thread count
(`pin_threads`). Must not: import MLflow or log anything (`suite.lifecycle` records the
`History` a run returns), resolve or load a dataset (a run is handed its `suite.data.Split`),
or choose which runs to train.
"""

from __future__ import annotations

import suite._tf  # noqa: F401  (quiet TensorFlow start-up, before keras)

# isort: split


import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from suite import builders, calibration, cures
from suite.data import Split
from suite.history import History, Pruned, confusion_matrix, per_class
from suite.metrics import EPOCH_METRICS, FINAL_METRICS, VAL_METRICS
from suite.models import (
    activations_record,
    build_model,
    layer_histograms,
    save_network,
    trainable_count,
)
from suite.optimizers import make_loss, make_optimizer
from suite.spec import ModelSpec, RunConfig, steps_per_epoch

__all__ = [
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "VAL_METRICS",
    "Diverged",
    "History",
    "confusion_matrix",
    "per_class",
    "train",
]

EpochCallback = Callable[[int, dict[str, float]], None]
PROBE_IMAGES = 1000  # test images the activation histograms of the MNIST network use
EXAMPLE_IMAGES = 5  # test images a logged network carries as its input example


class Diverged(RuntimeError):
    """Training produced NaN or infinity; `history` holds the epochs before it."""

    def __init__(self, reason: str, history: History) -> None:
        super().__init__(reason)
        self.reason = reason
        self.history = history


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


def pin_threads(threads: int) -> None:
    """Use `threads` CPU threads for TensorFlow's ops; call before the first op runs.

    The order in which a matmul sums its products may depend on the thread count (and on the
    CPU: its cache sizes and vector width choose the kernels' blocking), so a run's history
    is bit-for-bit reproducible only with the same thread count on the same kind of CPU. With
    another one the last bits of the losses may differ; `tests/test_pool.py` (1 against 2
    workers, 12 epochs) allows 1e-5 relative and wants the accuracies equal. Over a long run
    the difference grows as training carries it on: on the headline study's 200 epochs, 1
    against 2 threads with TensorFlow's Eigen kernels, the logged losses drifted apart by up to
    1% (relative, late, where they are small) and single epochs' test accuracies by up to
    0.0075, far less than the spread between seeds. (With oneDNN on the development machine's
    AVX-512 CPU, 1 and 2 threads gave the same bits.)
    """
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# what a network needs besides its spec: flat input size, class count, one input's image shape,
# and the file of its `model.builder`, if any
DataShape = tuple[int, int, tuple[int, ...], str | None]
EPOCHS_PER_CALL = 10  # epochs one compiled call runs before the host reads their metrics


def train(
    config: RunConfig,
    split: Split,
    seed: int,
    on_epoch: EpochCallback | None = None,
    builder_file: str | None = None,
    log_model: str | None = None,
    stops: Sequence[int] = (),
) -> History:
    """Train one run and return its per-epoch history.

    Args:
        config: the resolved run configuration.
        split: the run's data (see `suite.data.make_split`).
        seed: seeds the weights, dropout masks and minibatch draws.
        on_epoch: called after every evaluated epoch (every epoch, or every
            `train.eval_every`th and the last) with (epoch starting at 1, its metrics), in
            bursts of up to `EPOCHS_PER_CALL` epochs (or one evaluation period).
        builder_file: with `model.builder`, the file its module was found in.
        log_model: `final` or `best`: the history's `network` holds the weights the run ends
            with, or those of its `best_epoch` (kept by the compiled epochs, see `_BestTest`).
        stops: epochs a compiled call ends at besides its usual ones, so `on_epoch` hears
            them before more is trained (a search's pruner, which may raise `Pruned` there:
            the history then ends at that epoch, `pruned_epoch` set).

    With `train.early_stopping` the history ends at the stop; the run's final metrics are
    those of the weights it ends with (see `History.final`).

    Raises:
        Diverged: a loss or accuracy became NaN or infinite; carries the history so far.
    """
    # every random draw is seeded explicitly (initializers, dropout layers, the minibatch
    # order): no global seed is set, which would also drop TensorFlow's compiled kernels
    spec = config.train
    parts = {"train": split.y_train, "test": split.y_test}
    if split.x_val is not None and split.y_val is not None:
        parts["val"] = split.y_val
    sizes = {name: len(labels) for name, labels in parts.items()}
    shape = (split.x_train.shape[1], split.num_classes, split.image_shape, builder_file)
    noise = split.label_noise
    measures = noise_metrics(sizes["train"], len(noise.indices)) if noise is not None else ()
    program = _program(config, sizes, shape, best=log_model == "best", noise=measures)
    program.reset(config, seed)
    if noise is not None and program.noisy is not None:
        program.noisy.assign(noise.mask())
    model = program.model

    # one evaluation batch: the training subset first (minibatches gather from it), then the
    # test set and the validation split
    x_eval = np.concatenate(
        [split.x_train, split.x_test, *([split.x_val] if "val" in parts else [])]
    )
    y_eval = np.concatenate(list(parts.values())).astype(np.int32)
    x_eval_t, y_eval_t = tf.constant(x_eval), tf.constant(y_eval)
    n = sizes["train"]
    probe_x = split.x_test[:PROBE_IMAGES]
    at_init = (
        layer_histograms(model, probe_x, config.model.activation) if spec.log_activations else None
    )
    orders = batch_order(n, spec.batch_size, spec.epochs, spec.sampling, seed, spec.steps_per_epoch)
    numbers = evaluated_epochs(spec.epochs, spec.eval_every)
    # whole evaluation periods per call, so that each call evaluates at least once
    per_call = spec.eval_every * math.ceil(EPOCHS_PER_CALL / spec.eval_every)
    history = History(
        label_noise=noise.record() if noise is not None else None,
        n_params=trainable_count(model),
    )
    start = time.perf_counter()
    ends = sorted({*range(per_call, spec.epochs, per_call), *stops, spec.epochs} - {0})
    for first, end in zip([0, *ends[:-1]], ends, strict=True):
        chunk, chunk_numbers = orders[first:end], numbers[first:end]
        ran = program.run(chunk, chunk_numbers, x_eval_t, y_eval_t)
        result = {k: v.numpy() for k, v in ran.items()}
        if spec.log_batch_loss:
            batch_losses = result.pop("batch_loss").reshape(-1).tolist()
        accounted = 0  # epochs of the chunk whose updates' losses are in the history
        at = chunk_numbers[chunk_numbers > 0]
        for i in range(len(result["train_loss"])):  # fewer than the chunk after a stop
            epoch = int(at[i])
            values = {k: float(v[i]) for k, v in result.items()}
            values["gap"] = values["train_accuracy"] - values["test_accuracy"]
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                history.train_seconds = time.perf_counter() - start
                raise Diverged(f"diverged at epoch {epoch}: {bad[0]} is {values[bad[0]]}", history)
            if spec.log_batch_loss:
                steps = program.steps
                history.batch_loss.extend(batch_losses[accounted * steps : (epoch - first) * steps])
                accounted = epoch - first
            history.append(values, epoch)
            if on_epoch is not None:
                try:
                    on_epoch(epoch, values)
                except Pruned:
                    history.pruned_epoch = epoch
                    break
        if history.pruned_epoch or (program.stop is not None and int(program.stop.stopped)):
            break
    if program.stop is not None:
        _conclude_stopping(program, history, x_eval_t, y_eval_t)
    history.train_seconds = time.perf_counter() - start
    test_logits = model(x_eval_t[n : n + sizes["test"]], training=False).numpy()
    history.confusion = confusion_matrix(split.y_test, test_logits.argmax(1), split.num_classes)
    if program.calibrated:  # the weights the run ends with (restored ones after a stop)
        val = model(split.x_val, training=False).numpy() if "val" in parts else None
        history.calibration = calibration.calibrate(test_logits, split.y_test, val, split.y_val)
    if at_init is not None:
        history.activations = activations_record(config, model, probe_x, at_init, seed)
    if log_model is not None:
        weights = program.best.values() if program.best is not None else model.get_weights()
        example = split.x_test[:EXAMPLE_IMAGES]
        history.network = save_network(config.model, weights, seed, shape, example)
    return history


def _conclude_stopping(program: _Program, history: History, x: tf.Tensor, y: tf.Tensor) -> None:
    """An early-stopping run's end: the stop, the weights it keeps (the best epoch's with
    `restore_best`) and their metrics, evaluated once more."""
    assert program.stop is not None
    history.stopped_epoch = int(program.stop.stopped) or None
    history.restored_epoch = program.stop.restore()
    if history.restored_epoch != history.epochs:
        measured = program.evaluate(x, y)
        history.restored = {k: v for k, v in measured.items() if k.endswith("_accuracy")}
    else:
        history.restored = None


def evaluated_epochs(epochs: int, every: int) -> np.ndarray:
    """Per epoch, its number (from 1) when it is evaluated, else 0: every `every`th epoch and
    the last one (`train.eval_every`)."""
    number = np.arange(1, epochs + 1, dtype=np.int32)
    return np.where((number % every == 0) | (number == epochs), number, 0).astype(np.int32)


def noise_metrics(n_train: int, n_corrupted: int) -> tuple[str, ...]:
    """The label-noise metrics a run with `n_corrupted` of `n_train` labels corrupted logs:
    each needs images to measure (`fraction: 1.0` leaves no clean image, a small fraction of
    a small subset may corrupt none)."""
    return (
        *(("train_clean_accuracy",) if n_corrupted < n_train else ()),
        *(("memorized",) if n_corrupted else ()),
    )


class _Program:
    """A model, its optimizer and the compiled epochs that train and evaluate them.

    Compiling (tracing the epochs' function and optimising its graph) takes 2-3 s, some 60
    epochs of the headline run, so a program is kept and reused by every run of the same
    shape: `reset` gives it the initial weights and optimizer state a freshly built model and
    optimizer for the run's spec and seed would have, and its learning rate and penalty
    coefficients are variables, so runs that differ only in those (a search, a weight-decay
    sweep, an initialisation grid or init scale) share one compiled program, with the results
    a fresh model would give, to the bit. The optimizer's other hyperparameters (momentum,
    betas, AdamW's weight_decay) are Python constants of its traced update: runs that differ
    in one get programs of their own (`_program`'s key).

    The cures of `suite.cures` a run asks for (early stopping, augmentation, label smoothing,
    max-norm) are traced into the same program; each is absent from the graph when off.
    """

    def __init__(
        self,
        config: RunConfig,
        sizes: dict[str, int],
        shape: DataShape,
        best: bool = False,
        noise: tuple[str, ...] = (),
    ) -> None:
        """Build the model and optimizer of runs shaped like `config`, and the `tf.function`s
        that train and evaluate their epochs (traced on their first call); with `best`, the
        epochs keep the weights of the best test accuracy (`_BestTest`); `noise` names the
        label-noise metrics to measure (`noise_metrics`), from the corrupted images' mask
        `noisy` (1.0 where the label a run trains on was corrupted), set per run."""
        spec = config.train
        self.shape = shape
        self.model = build_model(_shape_of(config.model), 0, *shape)
        self.optimizer = make_optimizer(spec.optimizer)
        self.optimizer.build(self.model.trainable_variables)
        self.l1 = tf.Variable(0.0, trainable=False, name="l1")
        self.l2 = tf.Variable(0.0, trainable=False, name="l2")
        n, self.batch = sizes["train"], spec.batch_size
        self.steps = spec.steps_per_epoch or steps_per_epoch(n, self.batch)
        per_epoch = (
            self.steps * self.batch
            if spec.sampling == "with_replacement" or spec.steps_per_epoch
            else n
        )
        self.log_batch = spec.log_batch_loss
        self.loss_fn = make_loss(spec.loss)
        self.calibrated = calibration.measured(spec.loss)  # test_ece and val_ece, per epoch
        self.objective = cures.objective(self.loss_fn, spec.label_smoothing, shape[1])
        # every Dense and Conv2D kernel (a user's model: every kernel, nested or not): the
        # penalty, the weight norm and max-norm cover them
        self.kernels = [
            layer.kernel
            for layer in self.model.layers
            if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)
        ]
        if config.model.builder is not None:
            self.kernels = [
                v for v in self.model.trainable_variables if v.path.split("/")[-1] == "kernel"
            ]
        self.max_norm = (
            cures.MaxNorm(config.model.max_norm, self.kernels) if config.model.max_norm else None
        )
        self.augment = (
            cures.Augmenter(spec.augment, shape[2])
            if spec.augment is not None and spec.augment.active
            else None
        )
        self.stop = (
            cures.EarlyStop(spec.early_stopping, self.model.weights)
            if spec.early_stopping
            else None
        )
        self.best = _BestTest(self.model.weights) if best else None
        self.bounds: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in sizes.items():
            self.bounds[name] = (offset, offset + size)
            offset += size
        self.names = [f"{p}_{m}" for p in sizes for m in ("loss", "accuracy")] + [
            "reg_loss",
            "weight_norm",
            *noise,
            *(f"{p}_ece" for p in sizes if p != "train" and self.calibrated),
        ]
        self.noise = noise
        self.noisy = tf.Variable(tf.zeros([n]), trainable=False, name="noisy") if noise else None
        # with eval_every 1 every epoch is evaluated: no condition in the graph
        self.sparse = spec.eval_every > 1
        x_spec = tf.TensorSpec([offset, shape[0]], tf.float32)
        y_spec = tf.TensorSpec([offset], tf.int32)
        orders_spec = tf.TensorSpec([None, per_epoch], tf.int32)
        self._run = tf.function(
            self._epochs,
            input_signature=[orders_spec, tf.TensorSpec([None], tf.int32), x_spec, y_spec],
        )
        self._evaluate = tf.function(self._measure, input_signature=[x_spec, y_spec])

    def _penalty(self) -> tf.Tensor:
        # Keras' L1L2 regulariser, with variable coefficients: l1*sum|W| + l2*sum(W^2)
        # per kernel, summed; a zero coefficient adds an exact zero
        return tf.add_n(
            [
                0.0 + self.l1 * tf.reduce_sum(tf.abs(k)) + self.l2 * tf.reduce_sum(tf.square(k))
                for k in self.kernels
            ]
        )

    def _update(self, xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        """One minibatch update (traced); the minibatch's data loss before it, as logged."""
        model = self.model
        if self.augment is not None:
            xb = self.augment(xb)
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            data_loss = self.objective(yb, logits)
            loss = data_loss + self._penalty()
        grads = tape.gradient(loss, model.trainable_variables)
        self.optimizer.apply(grads, model.trainable_variables)
        if self.max_norm is not None:
            self.max_norm.apply()
        if self.log_batch and self.objective is not self.loss_fn:
            data_loss = self.loss_fn(yb, logits)  # logged losses leave the smoothing out
        return data_loss

    def _epoch_updates(self, order: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """One epoch's updates (traced); their minibatch losses with `log_batch_loss`."""
        batch, steps = self.batch, self.steps
        losses = tf.TensorArray(tf.float32, size=steps, element_shape=[])
        for step in tf.range(steps):
            idx = order[step * batch : (step + 1) * batch]
            data_loss = self._update(tf.gather(x, idx), tf.gather(y, idx))
            if self.log_batch:
                losses = losses.write(step, data_loss)
        return losses.stack() if self.log_batch else tf.zeros([0])

    def _measure(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """Every part's loss and accuracy in inference mode (and the test set's and validation
        split's calibration error), the penalty and the weight norm, from one pass over the
        evaluation batch (traced)."""
        logits = self.model(x, training=False)
        out = {}
        for name, (lo, hi) in self.bounds.items():
            part, labels = logits[lo:hi], y[lo:hi]
            out[f"{name}_loss"] = self.loss_fn(labels, part)
            hits = tf.cast(tf.argmax(part, axis=1, output_type=tf.int32) == labels, tf.float32)
            out[f"{name}_accuracy"] = tf.reduce_mean(hits)
            if name != "train" and self.calibrated:
                out[f"{name}_ece"] = calibration.expected_calibration_error(part, hits)
            if name == "train" and self.noisy is not None:
                # the labels trained on: a clean image's own, a corrupted one's corrupted label
                noisy = self.noisy
                shares = {
                    "train_clean_accuracy": tf.reduce_sum(hits * (1.0 - noisy))
                    / tf.reduce_sum(1.0 - noisy),
                    "memorized": tf.reduce_sum(hits * noisy) / tf.reduce_sum(noisy),
                }
                out.update({k: shares[k] for k in self.noise})
        out["reg_loss"] = self._penalty()
        out["weight_norm"] = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(k)) for k in self.kernels]))
        return out

    def _epochs(
        self, orders: tf.Tensor, numbers: tf.Tensor, x: tf.Tensor, y: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """`len(orders)` epochs (traced), each evaluated when its `numbers` entry (its epoch
        number, from 1) is not 0; with early stopping, up to the stop: per-metric arrays of
        the evaluations made, per-update losses of every epoch run."""
        names, log_batch, stop, sparse = self.names, self.log_batch, self.stop, self.sparse
        count = tf.shape(orders)[0]
        size = {"size": 0, "dynamic_size": True} if stop is not None else {"size": count}
        evaluations = {"size": 0, "dynamic_size": True} if sparse else size
        arrays = {name: tf.TensorArray(tf.float32, **evaluations) for name in names}
        batch_losses = tf.TensorArray(
            tf.float32, element_shape=[self.steps if log_batch else 0], **size
        )
        made = tf.constant(0)  # evaluations so far
        for e in tf.range(count):
            batch_losses = batch_losses.write(e, self._epoch_updates(orders[e], x, y))
            # a Python `True` without eval_every, so no condition is traced
            if not sparse or numbers[e] > 0:
                values = self._measure(x, y)
                arrays = {name: arrays[name].write(made, values[name]) for name in names}
                made += 1
                if self.best is not None:
                    self.best.update(values["test_accuracy"])
                if stop is not None and stop.update(values[stop.monitor], numbers[e]):
                    break
        out = {name: array.stack() for name, array in arrays.items()}
        if log_batch:
            out["batch_loss"] = batch_losses.stack()
        return out

    def run(
        self, orders: np.ndarray, numbers: np.ndarray, x: tf.Tensor, y: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Train up to `len(orders)` epochs (fewer when early stopping stops the run),
        evaluating those whose `numbers` (`evaluated_epochs`) are not 0; per-metric arrays,
        one value per evaluation made."""
        return self._run(tf.constant(orders), tf.constant(numbers), x, y)

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, float]:
        """The metrics of the network as it is now, on the evaluation batch."""
        return {k: float(v) for k, v in self._evaluate(x, y).items()}

    def reset(self, config: RunConfig, seed: int) -> None:
        """Start a run: every variable as a freshly built model and optimizer would hold it."""
        fresh = build_model(config.model, seed, *self.shape)
        optimizer = make_optimizer(config.train.optimizer)
        optimizer.build(fresh.trainable_variables)
        for target, source in (
            (self.model.variables, fresh.variables),
            (self.optimizer.variables, optimizer.variables),
        ):
            if len(target) != len(source):
                raise AssertionError("a program's variables differ from a fresh model's")
            for mine, theirs in zip(target, source, strict=True):
                mine.assign(theirs)
        self.l1.assign(config.model.l1)
        self.l2.assign(0.5 * config.model.weight_decay)
        if self.augment is not None:
            self.augment.reset(seed)
        if self.stop is not None:
            self.stop.reset()
        if self.best is not None:
            self.best.reset()


class _BestTest:
    """The weights of the epoch with the best test accuracy so far (`log_model: best`), kept
    inside the compiled epochs: the first epoch of the highest accuracy, as `best_epoch`
    counts it. Each improvement copies the weights (batch norm's statistics too) into
    variables of their own; a program without it has none of this in its graph."""

    def __init__(self, weights: list[Any]) -> None:
        self.weights = list(weights)
        self.saved = [tf.Variable(tf.zeros_like(w.value), trainable=False) for w in self.weights]
        self.best = tf.Variable(-math.inf, trainable=False, name="best_test_accuracy")

    def reset(self) -> None:
        self.best.assign(-math.inf)

    def update(self, accuracy: tf.Tensor) -> None:
        """One epoch's test accuracy (traced): its weights are kept when it beats the best."""

        def keep() -> tf.Tensor:
            self.best.assign(accuracy)
            for saved, weight in zip(self.saved, self.weights, strict=True):
                saved.assign(weight.value)
            return tf.constant(True)

        tf.cond(accuracy > self.best, keep, lambda: tf.constant(False))

    def values(self) -> list[np.ndarray]:
        return [saved.numpy() for saved in self.saved]


_PROGRAMS: dict[str, _Program] = {}
MAX_PROGRAMS = 4  # compiled programs a process keeps (least recently used dropped)


def _shape_of(model: ModelSpec) -> ModelSpec:
    """What a compiled program depends on: the model without its initialisation and penalty
    coefficients (the program sets those per run)."""
    return model.model_copy(
        update={"init": "he", "weight_decay": 0.0, "l1": 0.0, "init_scale": None}
    )


def _program(
    config: RunConfig,
    sizes: dict[str, int],
    shape: DataShape,
    best: bool = False,
    noise: tuple[str, ...] = (),
) -> _Program:
    """The compiled program for runs shaped like `config` (keeping the best test epoch's
    weights with `best`, measuring the label-noise metrics `noise`), made on first use."""
    spec = config.train
    key = json.dumps(
        [
            _shape_of(config.model).model_dump(mode="json"),
            spec.optimizer.model_copy(update={"learning_rate": None}).model_dump(mode="json"),
            # a sparse program takes the epochs to evaluate as an input: one for every N
            spec.model_dump(
                mode="json", exclude={"optimizer", "epochs", "log_activations", "eval_every"}
            ),
            spec.eval_every > 1,
            sizes,
            [shape[0], shape[1], list(shape[2]), shape[3]],
            builders.fingerprint(shape[3]) if shape[3] else None,
            best,
            noise,
        ],
        sort_keys=True,
    )
    program = _PROGRAMS.pop(key, None)
    if program is None:
        if len(_PROGRAMS) >= MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        program = _Program(config, sizes, shape, best, noise)
    _PROGRAMS[key] = program  # most recently used last
    return program
