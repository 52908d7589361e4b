"""Runs in spawned worker processes (`--workers N`), against a real sqlite MLflow store:
the same histories as one process, Ctrl-C, a worker killed mid-run, a locked database."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_same_metrics, histories, run_in_workers

from suite import tracking
from suite.executors import process
from suite.executors import workers as worker_processes
from suite.lifecycle import Silent
from suite.metrics import EPOCH_METRICS, FINAL_METRICS, VAL_METRICS
from suite.names import FAILED, FAILURE_TAG, FINISHED, SKIPPED
from suite.runner import run_study
from suite.study import RunKey, load_study
from suite.tracking import Tracker

# 3 cells x 2 seeds; dropout and batch norm so that noise and running statistics are covered,
# Adam and momentum so that optimizer slots are. Not batch norm with Adam: the bias of a Dense
# layer before batch norm has no effect in training, so its gradient is rounding noise (1e-8),
# which Adam scales up to steps of about lr/5; the bias moves the running means, and so the
# logged losses, by up to 1e-4 relative when another thread count or CPU rounds differently
# (7e-5 measured, AVX2 against AVX-512 kernels, 12 epochs): beyond `conftest.FLOAT_REL`
STUDY = """
name: pooled
base:
  data: {train_size: 60, test_size: 200, val_size: 20, subset: random}
  model: {hidden: [16, 16]}
  train: {batch_size: 20, epochs: EPOCHS, sampling: shuffle}
seeds: [0, 1]
variants:
  baseline: {}
  dropout: {model: {dropout: 0.2, weight_decay: 0.01}, train: {optimizer: {name: adam}}}
  batch_norm: {model: {batch_norm: true}, train: {optimizer: {name: momentum}}}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset; workers get the source resolved here."""


def statuses(tracker: Tracker, study: str) -> list[str]:
    experiment_id = tracker.experiment_id(study, create=False)
    assert experiment_id is not None
    return sorted(r.status for r in tracker.runs(experiment_id))


def test_workers_log_the_histories_one_process_logs(
    write_study: Callable[..., Path], tmp_path: Path, _store_template: Path
) -> None:
    study = load_study(write_study(STUDY.replace("EPOCHS", "12")))
    ran = run_in_workers(study, tmp_path, _store_template)
    stores = {workers: tracker for workers, (tracker, _) in ran.items()}
    for _, result in ran.values():
        assert result.ok and result.count(FINISHED) == 6
        assert [r.key for r in result.results] == study.runs(), "results come in run order"
        assert all(r.peak_memory_mb and r.peak_memory_mb > 50 for r in result.results)
    one, two = histories(stores[1], "pooled"), histories(stores[2], "pooled")
    assert {name for _, _, name in one} >= {*EPOCH_METRICS, *VAL_METRICS, *FINAL_METRICS}
    assert len({(cell, seed) for cell, seed, _ in one}) == 6
    assert all(len(v) == 12 for k, v in one.items() if k[2] in EPOCH_METRICS)
    # one worker trains in this process with every CPU, two with one thread each: the same
    # accuracies, losses within rounding (train_seconds, a wall-clock time, aside)
    assert_same_metrics(one, two)


class InterruptOnce(Silent):
    """Sends this process SIGINT (Ctrl-C) at the first epoch a worker reports."""

    def __init__(self) -> None:
        self.sent = False

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_the_workers_and_the_study_resumes(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    # long enough that a run in progress cannot finish while a loaded machine delivers the
    # stop request (80 epochs of this tiny net took under a second, and finished meanwhile)
    study = load_study(write_study(STUDY.replace("EPOCHS", "400")))
    tracker = Tracker(tracking_uri)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tracker, observer=InterruptOnce(), workers=2)
    left = statuses(tracker, "pooled")
    assert "RUNNING" not in left
    assert "KILLED" in left and len(left) <= 4  # the runs in progress; the queue was dropped
    resumed = run_study(study, tracker)  # in this process
    assert resumed.ok
    assert resumed.count(FINISHED) + resumed.count(SKIPPED) == 6
    assert statuses(tracker, "pooled").count("FINISHED") == 6


# A network that SIGKILLs the worker process training it at its 30th minibatch (epoch 10 of
# 3 updates each): the worker dies mid-run, at a known point of a known run, whatever the load.
# Loading the study and training in the calling process never trigger it.
DOOMED = """
import multiprocessing
import os
import signal

import keras
import tensorflow as tf


class Doom(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.updates = 0

    def _count(self, x):
        self.updates += 1
        if self.updates >= 30 and multiprocessing.current_process().name != "MainProcess":
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def call(self, inputs, training=False):
        if not training:
            return inputs
        out = tf.py_function(self._count, [inputs], inputs.dtype)
        out.set_shape(inputs.shape)
        return out


def build(input_shape, num_classes, seed):
    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            Doom(),
            keras.layers.Dense(16, activation="relu", kernel_initializer=init),
            keras.layers.Dense(num_classes, kernel_initializer=init),
        ]
    )
"""


@pytest.mark.slow
def test_a_killed_worker_fails_its_runs_and_the_others_go_on(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    path = write_study(
        """
name: pooled
base:
  data: {train_size: 60, test_size: 200, subset: random}
  train: {batch_size: 20, epochs: 40, sampling: shuffle}
seeds: [0, 1]
variants:
  one: {model: {hidden: [16]}}
  two: {model: {hidden: [16, 16]}}
  three: {model: {hidden: [8]}}
  doomed: {model: {builder: "doomed:build"}}
"""
    )
    (path.parent / "doomed.py").write_text(DOOMED)
    study = load_study(path)
    tracker = Tracker(tracking_uri)
    result = run_study(study, tracker, workers=2)
    failed = [r for r in result.results if r.status == FAILED]
    # each doomed run kills its worker: FAILED with that reason; the others finish, those the
    # broken pool's shutdown stopped (KILLED) trained again in a new pool
    assert sorted(r.key.cell.name for r in failed) == ["doomed", "doomed"]
    assert all(r.reason == process.WORKER_DIED for r in failed)
    assert result.count(FINISHED) == 6
    left = statuses(tracker, "pooled")
    assert "RUNNING" not in left
    assert left.count("FINISHED") == 6 and left.count("FAILED") == 2
    again = run_study(study, tracker)  # in this process the network does not kill
    assert again.ok and again.count(FINISHED) == 2
    assert statuses(tracker, "pooled").count("FINISHED") == 8


def test_a_broken_pool_closes_even_with_a_worker_that_does_not_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed while writing to the event queue leaves its lock taken: a surviving
    worker then cannot stop, and the pool's own shutdown would join it forever. Here the
    survivor sleeps through the pool's SIGTERM, like one stuck on that lock."""
    monkeypatch.setattr(worker_processes, "CLOSE_SECONDS", 2.0)
    pool = worker_processes.Workers(2)
    stuck = pool.executor.submit(time.sleep, 3600)
    pid = pool.executor.submit(os.getpid).result(timeout=120)
    time.sleep(0.5)  # both tasks taken: one worker sleeps, the other is idle
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception, match="terminated abruptly"):
        stuck.result(timeout=60)
    survivors = pool.processes()
    assert survivors, "the sleeping worker outlives the pool's break"
    start = time.monotonic()
    pool.close(wait=True)
    assert time.monotonic() - start < 15
    assert not any(p.is_alive() for p in survivors)
    pool.events.close()


def test_default_workers_follow_the_cpus_and_the_runs() -> None:
    cpus = worker_processes.cpu_count()
    assert worker_processes.default_workers(1) == 1
    assert worker_processes.default_workers(100) == cpus
    assert worker_processes.threads_per_worker(1) == cpus
    assert worker_processes.threads_per_worker(cpus) == 1
    assert worker_processes.threads_per_worker(cpus * 4) == 1


def test_a_locked_sqlite_database_is_waited_out(tracking_uri: str) -> None:
    """A writer holding the database: MLflow's calls wait for it (sqlite's busy timeout)."""
    tracker = Tracker(tracking_uri)
    db = tracking.sqlite_file(tracking_uri)
    assert db is not None
    tracker.client.search_experiments()  # the store is open before the lock is taken
    holder = sqlite3.connect(db, check_same_thread=False)  # released by a timer thread
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    start = time.monotonic()
    try:
        experiment_id = tracker.experiment_id("locked")
    finally:
        release.join()
        holder.close()
    assert experiment_id is not None
    assert time.monotonic() - start > 1.4
    assert tracker.experiment_id("locked", create=False) == experiment_id


def test_database_is_locked_is_retried_until_the_lock_is_gone(tmp_path: Path) -> None:
    """Past its busy timeout a write fails with `database is locked`; the tracker's retry
    makes it again until it goes through. Any other error is raised at once."""
    db = tmp_path / "locked.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    holder = sqlite3.connect(db, check_same_thread=False)  # released by a timer thread
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, holder.rollback)
    attempts = []

    def write() -> None:
        attempts.append(time.monotonic())
        with sqlite3.connect(db, timeout=0.05) as connection:
            connection.execute("INSERT INTO t VALUES (1)")

    release.start()
    try:
        tracking.patiently(write)
    finally:
        release.join()
        holder.close()
    assert len(attempts) > 2 and attempts[-1] - attempts[0] > 1.3
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        tracking.patiently(lambda: sqlite3.connect(db).execute("SELECT * FROM missing"))


def test_a_diverging_run_in_a_worker_fails_with_its_reason(
    write_study: Callable[..., Path], tracking_uri: str, tiny_study: str
) -> None:
    # weight decay 1000 at learning rate 10 overflows the weights within 3 epochs
    exploding = (
        "  exploding: {model: {weight_decay: 1000.0}, train: {optimizer: {learning_rate: 10.0}}}\n"
    )
    study = load_study(write_study(tiny_study + exploding))
    tracker = Tracker(tracking_uri)
    result = run_study(study, tracker, seeds=(0,), workers=2)
    failed = [r for r in result.results if r.status == FAILED]
    assert [r.key.cell.name for r in failed] == ["exploding"]
    assert failed[0].reason and failed[0].reason.startswith("diverged at epoch")
    assert result.count(FINISHED) == 2
    run = tracker.client.get_run(failed[0].run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG] == failed[0].reason
