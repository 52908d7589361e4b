"""Runs in long-lived worker processes (`overfit run --workers N`).

Each worker is spawned (not forked: TensorFlow's thread pools do not survive a fork), imports
TensorFlow once, pins its thread count, and then trains run after run: the data file is loaded
once per worker and each compiled program is reused by every later run of its shape (see
`suite.train`). Workers never import MLflow: they send what a run does (started, data sizes,
each epoch's metrics, the end with its history) over one queue, in order, and the parent logs
it: it creates each run when its worker starts it, streams its epochs to the store, and ends
it. One process writes the store, so a sqlite store sees no competing writers; the workers'
start-up (importing TensorFlow) runs while the parent imports MLflow and plans.

A run's history does not depend on the worker that trains it nor on its thread count: the
same seeds give the same per-epoch metrics with 1 worker or N.

Ctrl-C (or SIGTERM) in the parent: the workers stop their runs at the next epoch boundary, the
parent marks them KILLED, queued runs are dropped, and the parent raises KeyboardInterrupt; a
second Ctrl-C stops at once (a later invocation marks what was left RUNNING as KILLED). A
worker that dies (killed, out of memory) breaks the pool: its run is FAILED with that reason;
the pool's shutdown stops the other workers' runs (KILLED), and those, with the runs not yet
started, go to a new pool.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import resource
import signal
import sys
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any

from suite.data import Source, resolve_source
from suite.spec import RunKey

EXECUTORS = ("local", "process")  # in this process; in worker processes
WORKER_DIED = "a worker process died (killed, or out of memory?) and the pool stopped"


def cpu_count() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(runs: int) -> int:
    """Workers for `runs` runs: one per CPU, at most one per run.

    Measured on 2 cores (`make bench`): two 1-thread workers train the headline study faster
    than one 2-thread process, since each run's small training steps leave a second thread
    mostly idle.
    """
    return max(1, min(cpu_count(), runs))


def threads_per_worker(workers: int) -> int:
    """The CPUs shared out evenly: each worker's TensorFlow thread count."""
    return max(1, cpu_count() // workers)


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS


# --- in the worker ------------------------------------------------------------------------

_worker: dict[str, Any] = {}


class _SharedStop:
    """The parent's stop request, checked at every epoch boundary; a SIGTERM sent to this
    worker alone stops its run the same way."""

    def __init__(self, event: Any) -> None:
        self.event = event
        self.terminated = False

    def check(self) -> None:
        if self.terminated or self.event.is_set():
            raise KeyboardInterrupt


def _init_worker(threads: int, events: Any, stop: Any) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent decides what it means
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shared = _SharedStop(stop)

    def terminate(signum: int, frame: object) -> None:
        shared.terminated = True

    signal.signal(signal.SIGTERM, terminate)
    from suite.data import OfflineDataWarning
    from suite.train import pin_threads

    warnings.simplefilter("ignore", OfflineDataWarning)  # the parent said it already
    pin_threads(threads)
    _worker.update(events=events, stop=shared)


def _work(key: RunKey, source: Source) -> None:
    """Train one run, reporting it on the event queue; its last event is `done`."""
    from suite import data
    from suite.train import Diverged, train

    events, stop = _worker["events"], _worker["stop"]
    if stop.event.is_set():
        return  # queued before a stop request, too late to cancel: never started
    ident = (key.cell.hash, key.seed)
    events.put(("started", *ident))
    cfg = key.cell.config
    outcome: dict[str, Any]
    try:
        d = cfg.data
        split = data.make_split(
            d.path, d.train_size, d.subset, d.val_size, d.test_size, key.seed, source
        )
        events.put(("sizes", *ident, split.sizes))

        def on_epoch(epoch: int, values: dict[str, float]) -> None:
            events.put(("epoch", *ident, epoch, values))
            stop.check()

        outcome = {"status": "finished", "history": train(cfg, split, key.seed, on_epoch)}
    except KeyboardInterrupt:
        outcome = {"status": "killed", "reason": "interrupted"}
    except Diverged as err:
        outcome = {"status": "failed", "reason": err.reason}
    except Exception as err:  # noqa: BLE001 - one failing run never stops the study
        outcome = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    outcome["peak_memory_mb"] = peak_memory_mb()
    events.put(("done", *ident, outcome))


# --- in the parent ------------------------------------------------------------------------


@dataclass
class _Flight:
    """What the parent knows of one submitted run."""

    key: RunKey
    started: bool = False
    run_id: str | None = None
    logger: Any = None  # the run's EpochLogger
    result: Any = None  # its RunResult, once it ended


class _Workers:
    """A spawned pool, its event queue and its stop event."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self.events, self.stop_event = context.Queue(), context.Event()
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(threads_per_worker(workers), self.events, self.stop_event),
        )

    def start(self) -> None:
        """Start every worker now (the pool starts them on demand otherwise)."""
        for _ in range(self.workers):
            self.pool.submit(os.getpid)


_warm: _Workers | None = None


def warm_up(workers: int) -> None:
    """Start `workers` workers now, so that their start-up (importing TensorFlow, seconds)
    runs while this process imports MLflow, opens the store and plans; `run_in_pool` takes
    them over when it wants as many workers."""
    global _warm
    discard_warm()
    _warm = _Workers(workers)
    _warm.start()


def discard_warm() -> None:
    """Stop workers `warm_up` started that no `run_in_pool` took (nothing left to run)."""
    global _warm
    if _warm is not None:
        _terminate(_warm.pool)
        _warm = None


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now, mid-import or idle: waiting would take seconds, for nothing."""
    # Python 3.14 has `terminate_workers`; before it, the pool's own process table
    processes = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes.values():
        process.kill()  # no run is in progress: nothing to mark KILLED
    for process in processes.values():
        process.join(timeout=5)


def _workers(workers: int) -> _Workers:
    global _warm
    warm, _warm = _warm, None
    if warm is not None and warm.workers == workers:
        return warm
    if warm is not None:
        _terminate(warm.pool)
    return _Workers(workers)


class _Round:
    """One pool's life: submit runs, log what their workers report, collect the results."""

    def __init__(
        self, keys: list[RunKey], workers: int, study: str, experiment_id: str, tracker: Any
    ) -> None:
        own = _workers(workers)
        self.pool, self.events, self.stop_event = own.pool, own.events, own.stop_event
        self.study, self.experiment_id, self.tracker = study, experiment_id, tracker
        # the data each run reads is resolved here, once: workers read the same file
        self.futures = {
            self.pool.submit(_work, key, resolve_source(key.cell.config.data.path)): key
            for key in keys
        }
        self.flights = {(k.cell.hash, k.seed): _Flight(k) for k in keys}

    def open(self) -> list[_Flight]:
        """Runs started and not ended."""
        return [f for f in self.flights.values() if f.started and f.result is None]

    def relay(self, observer: Any, counter: list[int], total: int, block: float = 0.0) -> bool:
        """Log and show what the workers reported since the last call; False if nothing came
        (waiting up to `block` seconds for the first event)."""
        from suite.runner import FAILED, FINISHED, KILLED, RunResult, _failed, _record
        from suite.tracking import EpochLogger

        got = False
        while True:
            try:
                event = (
                    self.events.get(timeout=block)
                    if block and not got
                    else (self.events.get_nowait())
                )
            except queue.Empty:
                return got
            got = True
            kind, flight = event[0], self.flights[(event[1], event[2])]
            key = flight.key
            if kind == "started":
                flight.started = True
                observer.run_started(key, counter[0], total)
                counter[0] += 1
                try:
                    flight.run_id = self.tracker.start_run(
                        self.experiment_id,
                        self.study,
                        key.cell,
                        key.seed,
                        key.cell.data_source or "unknown",
                    )
                    flight.logger = EpochLogger(self.tracker, flight.run_id)
                except Exception as err:  # noqa: BLE001 - the run fails, the study goes on
                    self._end(
                        observer, flight, RunResult(key, FAILED, reason=f"could not start: {err}")
                    )
            elif flight.result is not None or flight.run_id is None:
                continue  # a run that could not start: what its worker says goes nowhere
            elif kind == "sizes":
                self.tracker.set_tags(
                    flight.run_id, {f"n_{part}": str(n) for part, n in event[3].items()}
                )
            elif kind == "epoch":
                flight.logger(event[3], event[4])
                observer.epoch_done(key, event[3], key.cell.config.train.epochs, event[4])
            else:
                outcome = event[3]
                flight.logger.flush()
                memory = outcome["peak_memory_mb"]
                if outcome["status"] == "finished":
                    final = _record(self.tracker, flight.run_id, outcome["history"])
                    result = RunResult(key, FINISHED, flight.run_id, final, peak_memory_mb=memory)
                elif outcome["status"] == "killed":
                    self.tracker.fail(flight.run_id, "interrupted", "KILLED")
                    result = RunResult(
                        key, KILLED, flight.run_id, reason="interrupted", peak_memory_mb=memory
                    )
                else:
                    failed = _failed(self.tracker, key, flight.run_id, outcome["reason"])
                    result = replace(failed, peak_memory_mb=memory)
                self._end(observer, flight, result)

    def _end(self, observer: Any, flight: _Flight, result: Any) -> None:
        flight.result = result
        observer.run_ended(result)

    def close(self, stopping: bool) -> None:
        if stopping:
            self.stop_event.set()  # also after a second Ctrl-C, which does not wait for them
        self.pool.shutdown(wait=not stopping, cancel_futures=True)
        self.events.close()


def run_in_pool(
    todo: list[RunKey],
    study: str,
    experiment_id: str,
    tracker: Any,
    observer: Any,
    workers: int,
    stop: Any,
) -> list[Any]:
    """Train `todo` in `workers` spawned processes, logging each run here; return the
    results in `todo` order.

    Raises:
        KeyboardInterrupt: after a stop request, once the runs in progress are marked KILLED.
    """
    from suite.runner import FAILED, RunResult

    results: dict[tuple[str, int], Any] = {}
    remaining = list(todo)
    counter = [0]  # runs started so far, over every round
    while remaining:
        round_ = _Round(remaining, min(workers, len(remaining)), study, experiment_id, tracker)
        pending = set(round_.futures)
        broken = False
        try:
            while pending:
                if stop.requested and not round_.stop_event.is_set():
                    round_.stop_event.set()
                    for future in pending:
                        future.cancel()
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                round_.relay(observer, counter, len(todo))
                for future in done:
                    if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
                        broken = True
            # every worker has returned: what they reported is on its way; take it all
            while round_.open() and round_.relay(observer, counter, len(todo), block=5.0):
                pass
            for flight in round_.open():  # its worker died before it could say how it ended
                if flight.run_id is not None:
                    tracker.fail(flight.run_id, WORKER_DIED)
                round_._end(
                    observer,
                    flight,
                    RunResult(flight.key, FAILED, flight.run_id, reason=WORKER_DIED),
                )
        except BaseException:
            # a store error, a second Ctrl-C: stop the workers' runs, do not wait for them
            round_.close(stopping=True)
            raise
        round_.close(stopping=stop.requested)
        ended = [f for f in round_.flights.values() if f.result is not None]
        if stop.requested:
            raise KeyboardInterrupt
        # a run stopped by a broken pool's shutdown (KILLED) trains again in the next round
        results.update(
            {(f.key.cell.hash, f.key.seed): f.result for f in ended if f.result.status != "killed"}
        )
        remaining = [k for k in remaining if (k.cell.hash, k.seed) not in results]
        if broken and remaining and all(f.result.status == "killed" for f in ended):
            # a pool that broke before any run ended for good (a worker failing at start-up)
            # would break again: stop here; otherwise every round ends some runs, so this ends
            for key in remaining:
                result = RunResult(key, FAILED, reason=WORKER_DIED)
                observer.run_ended(result)
                results[(key.cell.hash, key.seed)] = result
            remaining = []
    return [results[(k.cell.hash, k.seed)] for k in todo]
