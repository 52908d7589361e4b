"""Runs in long-lived worker processes (`overfit run --workers N`).

Each worker is spawned (not forked: TensorFlow's thread pools do not survive a fork), imports
TensorFlow once, pins its thread count, and then trains run after run: the data file is loaded
once per worker and each compiled program is reused by every later run of its shape (see
`suite.train`). Workers log their runs to the tracking store themselves, as the serial runner
does; the parent plans, creates the study's experiment up front, shows progress from the
workers' events and collects their results.

A run's history does not depend on the worker that trains it nor on its thread count: the
same seeds give the same per-epoch metrics with 1 worker or N.

Ctrl-C (or SIGTERM) in the parent: the workers stop their runs at the next epoch boundary and
mark them KILLED, queued runs are dropped, and the parent raises KeyboardInterrupt; a second
Ctrl-C stops at once (a later invocation marks what was left RUNNING as KILLED). A worker
that dies (killed, out of memory) fails the runs it had started with that reason; the runs it
had not started go to a new pool.
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


class _Forward:
    """An observer that sends what a run does to the parent, which shows it."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def study_started(self, *args: Any) -> None:
        pass

    def run_started(self, key: RunKey, index: int, total: int) -> None:
        self.events.put(("started", key.cell.hash, key.seed))

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        self.events.put(("epoch", key.cell.hash, key.seed, epoch, values))

    def run_ended(self, result: Any) -> None:
        pass


def _init_worker(uri: str, threads: int, events: Any, stop: Any) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent decides what it means
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shared = _SharedStop(stop)

    def terminate(signum: int, frame: object) -> None:
        shared.terminated = True

    signal.signal(signal.SIGTERM, terminate)
    from suite.data import OfflineDataWarning
    from suite.tracking import Tracker
    from suite.train import pin_threads

    warnings.simplefilter("ignore", OfflineDataWarning)  # the parent said it already
    pin_threads(threads)

    _worker.update(tracker=Tracker(uri), events=_Forward(events), stop=shared)


def _work(key: RunKey, study: str, experiment_id: str, source: Source) -> Any:
    from suite.runner import KILLED, RunResult, _run_one

    tracker, events, stop = _worker["tracker"], _worker["events"], _worker["stop"]
    try:
        result = _run_one(key, 0, 0, study, tracker, experiment_id, events, stop, source)
    except KeyboardInterrupt:
        result = RunResult(key, KILLED, reason="interrupted")
    return replace(result, peak_memory_mb=peak_memory_mb())


# --- in the parent ------------------------------------------------------------------------


@dataclass
class _Flight:
    """What the parent knows of one submitted run."""

    key: RunKey
    started: bool = False


class _Workers:
    """A spawned pool, its event queue and its stop event."""

    def __init__(self, workers: int, uri: str) -> None:
        self.workers, self.uri = workers, uri
        context = multiprocessing.get_context("spawn")
        self.events, self.stop_event = context.Queue(), context.Event()
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(uri, threads_per_worker(workers), self.events, self.stop_event),
        )

    def start(self) -> None:
        """Start every worker now (the pool starts them on demand otherwise)."""
        for _ in range(self.workers):
            self.pool.submit(os.getpid)


_warm: _Workers | None = None


def warm_up(workers: int, uri: str) -> None:
    """Start `workers` workers now, so that their start-up (importing TensorFlow, seconds)
    runs while this process imports MLflow, opens the store and plans; `run_in_pool` takes
    them over when it wants as many workers on the same store."""
    global _warm
    discard_warm()
    _warm = _Workers(workers, uri)
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


def _workers(workers: int, uri: str) -> _Workers:
    global _warm
    warm, _warm = _warm, None
    if warm is not None and (warm.workers, warm.uri) == (workers, uri):
        return warm
    if warm is not None:
        _terminate(warm.pool)
    return _Workers(workers, uri)


class _Round:
    """One pool's life: submit runs, relay their events, collect their results."""

    def __init__(self, keys: list[RunKey], workers: int, args: tuple[str, str], uri: str) -> None:
        own = _workers(workers, uri)
        self.pool, self.events, self.stop_event = own.pool, own.events, own.stop_event
        # the data each run reads is resolved here, once: workers read the same file
        self.flights = {
            self.pool.submit(_work, key, *args, resolve_source(key.cell.config.data.path)): _Flight(
                key
            )
            for key in keys
        }
        self.by_key = {(f.key.cell.hash, f.key.seed): f for f in self.flights.values()}

    def relay(self, observer: Any, counter: list[int], total: int) -> None:
        """Show what the workers reported since the last call."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            flight = self.by_key[(event[1], event[2])]
            if event[0] == "started":
                flight.started = True
                observer.run_started(flight.key, counter[0], total)
                counter[0] += 1
            else:
                epochs = flight.key.cell.config.train.epochs
                observer.epoch_done(flight.key, event[3], epochs, event[4])

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
    """Train `todo` in `workers` spawned processes; return their results in `todo` order.

    Raises:
        KeyboardInterrupt: after a stop request, once the runs in progress are marked KILLED.
    """
    from suite.runner import FAILED, KILLED, RunResult

    results: dict[tuple[str, int], Any] = {}
    remaining = list(todo)
    counter = [0]  # runs started so far, over every round
    while remaining:
        round_ = _Round(
            remaining, min(workers, len(remaining)), (study, experiment_id), tracker.uri
        )
        pending = set(round_.flights)
        broken, finished_here = False, 0
        try:
            while pending:
                if stop.requested and not round_.stop_event.is_set():
                    round_.stop_event.set()
                    for future in pending:
                        future.cancel()
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                round_.relay(observer, counter, len(todo))
                for future in done:
                    flight = round_.flights[future]
                    if future.cancelled():
                        continue
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        if not flight.started:
                            continue  # never began: the next round takes it
                        result = RunResult(flight.key, FAILED, reason=WORKER_DIED)
                    if result.status != KILLED:
                        finished_here += 1
                        observer.run_ended(result)
                    results[(flight.key.cell.hash, flight.key.seed)] = result
        finally:
            round_.close(stopping=stop.requested)
        if broken:
            # runs of this round a dead worker left RUNNING, whether the parent heard them start
            unfinished = [
                k
                for k in remaining
                if getattr(results.get((k.cell.hash, k.seed)), "reason", WORKER_DIED) == WORKER_DIED
            ]
            _fail_left_running(tracker, experiment_id, unfinished)
        if stop.requested:
            raise KeyboardInterrupt
        remaining = [k for k in remaining if (k.cell.hash, k.seed) not in results]
        if broken and remaining and finished_here == 0:
            # a pool that broke before finishing anything would break again: stop here
            for key in remaining:
                result = RunResult(key, FAILED, reason=WORKER_DIED)
                observer.run_ended(result)
                results[(key.cell.hash, key.seed)] = result
            remaining = []
    return [results[(k.cell.hash, k.seed)] for k in todo]


def _fail_left_running(tracker: Any, experiment_id: str, keys: list[RunKey]) -> None:
    """Mark the RUNNING runs of `keys` FAILED: their worker died mid-run."""
    wanted = {(k.cell.hash, k.seed) for k in keys}
    for record in tracker.runs(experiment_id):
        if record.status == "RUNNING" and (record.cell_hash, record.seed) in wanted:
            tracker.fail(record.run_id, WORKER_DIED)
