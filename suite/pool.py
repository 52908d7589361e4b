"""Runs in long-lived worker processes (`overfit run --workers N`).

Each worker is spawned (not forked: TensorFlow's thread pools do not survive a fork), imports
TensorFlow once, pins its thread count, and then trains run after run: the data file is loaded
once per worker and each compiled program is reused by every later run of its shape (see
`suite.train`). Workers never import MLflow: they send what a run does (started, data sizes,
each epoch's metrics, the end with its history) over one queue, in order, and the parent logs
it: it claims each run (`suite.tracking.Tracker.claim`) when a worker is free for it, then
hands it over, streams its epochs to the store and ends it. One process writes the store, so
a sqlite store sees no competing writers; the workers' start-up (importing TensorFlow) runs
while the parent imports MLflow and plans.

A run's history does not depend on the worker that trains it nor on the runs it trained
before. It may depend, in the last bits, on the worker's thread count (`--workers 1` trains in
the calling process with every CPU, each of N workers with its share): a matmul's sums may be
rounded in another order (see `suite.train.pin_threads`). The same seeds then give the same
accuracies and losses equal to rounding in short runs, drifting apart slowly over long ones;
with the same thread count, the same bits.

Ctrl-C (or SIGTERM) in the parent: the workers stop their runs at the next epoch boundary, the
parent marks them KILLED, claimed runs no worker started are withdrawn, and the parent raises
KeyboardInterrupt; a second Ctrl-C stops at once (a later invocation takes what was left
RUNNING back: its owner is gone). A worker that dies (killed, out of memory) breaks the pool:
its run is FAILED with that reason; the pool's shutdown stops the other workers' runs
(KILLED), and those are claimed again in a new pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import resource
import signal
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from suite.data import Source, resolve_source
from suite.spec import RunKey

EXECUTORS = ("local", "process", "ray")  # in this process; in worker processes; Ray tasks
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


def _work(key: RunKey, source: Source) -> bool:
    """Train one run, reporting it on the event queue; its last event is `done`. False if
    it never started (a stop request came first): then it reported nothing."""
    from suite import data
    from suite.train import Diverged, train

    events, stop = _worker["events"], _worker["stop"]
    if stop.event.is_set():
        return False  # queued before a stop request, too late to cancel: never started
    ident = (key.cell.hash, key.seed)
    events.put(("started", *ident, os.getpid()))
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
    return True


# --- in the parent ------------------------------------------------------------------------


@dataclass
class _Flight:
    """What the parent knows of one submitted run."""

    key: RunKey
    run_id: str  # claimed before it went to a worker
    started: bool = False
    pid: int | None = None  # of the worker that started it
    logger: Any = None  # the run's EpochLogger
    result: Any = None  # its RunResult, once it ended
    withdrawn: bool = False  # claimed, never started, given back


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
    """One pool's life: hand claimed runs to free workers, log what the workers report."""

    def __init__(self, workers: int, study: str, tracker: Any) -> None:
        own = _workers(workers)
        self.workers = workers
        self.pool, self.events, self.stop_event = own.pool, own.events, own.stop_event
        self.study, self.tracker = study, tracker
        self.futures: dict[Any, _Flight] = {}
        self.flights: dict[tuple[str, int], _Flight] = {}
        self.broken = False

    def submit(self, key: RunKey, run_id: str) -> None:
        """Give a claimed run (its RUNNING run exists) to a worker."""
        from suite.tracking import EpochLogger

        flight = _Flight(key, run_id=run_id, logger=EpochLogger(self.tracker, run_id))
        self.flights[(key.cell.hash, key.seed)] = flight
        try:
            # the data each run reads is resolved here, once: workers read the same file
            future = self.pool.submit(_work, key, resolve_source(key.cell.config.data.path))
        except (BrokenProcessPool, RuntimeError):  # it broke while idle: withdrawn, retried
            self.broken = True
            return
        self.futures[future] = flight

    def busy(self) -> int:
        """Runs handed to workers and not ended."""
        return sum(f.result is None for f in self.flights.values())

    def open(self) -> list[_Flight]:
        """Runs started and not ended."""
        return [f for f in self.flights.values() if f.started and f.result is None]

    def relay(self, claims: Any, block: float = 0.0) -> bool:
        """Log and show what the workers reported since the last call; False if nothing came
        (waiting up to `block` seconds for the first event)."""
        from suite.runner import FAILED, RunResult
        from suite.tracking import first_line

        observer = claims.observer
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
            if flight.result is not None:
                continue
            if kind == "started":
                flight.started, flight.pid = True, event[3]
                observer.run_started(flight.key, claims.started, len(claims.order))
                claims.started += 1
                continue
            try:
                self._logged(claims, flight, kind, event)
            except Exception as err:  # noqa: BLE001 - the store failed this run: the rest go on
                reason = f"tracking store: {type(err).__name__}: {first_line(err)}"
                with contextlib.suppress(Exception):
                    self.tracker.fail(flight.run_id, reason)
                self.tracker.heartbeat.release(flight.run_id)
                self._end(
                    claims, flight, RunResult(flight.key, FAILED, flight.run_id, reason=reason)
                )

    def _logged(self, claims: Any, flight: _Flight, kind: str, event: tuple[Any, ...]) -> None:
        """Log one event of a started run."""
        from suite.runner import FINISHED, KILLED, LOST, RunResult, _failed, _record
        from suite.tracking import ClaimLost

        observer, key = claims.observer, flight.key
        if kind == "sizes":
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
                try:
                    final = _record(self.tracker, flight.run_id, outcome["history"])
                    result = RunResult(key, FINISHED, flight.run_id, final, peak_memory_mb=memory)
                except ClaimLost as err:
                    result = RunResult(key, LOST, flight.run_id, reason=str(err))
            elif outcome["status"] == "killed":
                self.tracker.fail(flight.run_id, "interrupted", "KILLED")
                result = RunResult(
                    key, KILLED, flight.run_id, reason="interrupted", peak_memory_mb=memory
                )
            else:
                failed = _failed(self.tracker, key, flight.run_id, outcome["reason"])
                result = replace(failed, peak_memory_mb=memory)
            self._end(claims, flight, result)

    def _end(self, claims: Any, flight: _Flight, result: Any) -> None:
        flight.result = result
        claims.ended(result)

    def close(self, stopping: bool) -> None:
        if stopping:
            self.stop_event.set()  # also after a second Ctrl-C, which does not wait for them
        self.pool.shutdown(wait=not stopping, cancel_futures=True)
        self.events.close()


def run_in_pool(
    claims: Any, study: str, tracker: Any, observer: Any, workers: int, stop: Any
) -> None:
    """Train the runs of `claims` in `workers` spawned processes, logging each run here:
    a run is claimed when a worker is free for it, and its result goes to `claims`.

    Raises:
        KeyboardInterrupt: after a stop request, once the runs in progress are marked KILLED.
    """
    from suite.runner import KILLED

    while not claims.done():
        left = len(claims.waiting) + len(claims.held)
        round_ = _Round(min(workers, max(1, left)), study, tracker)
        try:
            while True:
                if stop.requested and not round_.stop_event.is_set():
                    round_.stop_event.set()
                    for future in round_.futures:
                        future.cancel()
                while not (stop.requested or round_.broken) and round_.busy() < round_.workers:
                    taken = claims.take()
                    if taken is None:
                        break
                    round_.submit(*taken)
                pending = {f for f in round_.futures if not f.done()}
                if not pending:
                    round_.relay(claims, block=0.05)  # events of returned workers, on their way
                    if stop.requested or round_.broken or claims.done():
                        break
                    if not claims.waiting:  # only runs held elsewhere: look again later
                        claims.wait(stop)
                    continue
                done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                round_.relay(claims)
                for future in done:
                    if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
                        round_.broken = True
            _drain(round_, claims, tracker)
        except BaseException:
            # a store error, a second Ctrl-C: stop the workers' runs, do not wait for them;
            # their runs stop beating, so another invocation takes them back in time
            round_.close(stopping=True)
            for flight in round_.flights.values():
                tracker.heartbeat.release(flight.run_id)
            _withdraw_unstarted(round_, tracker, claims, requeue=False)
            raise
        round_.close(stopping=stop.requested)
        _withdraw_unstarted(round_, tracker, claims, requeue=not stop.requested)
        if stop.requested:
            raise KeyboardInterrupt
        ended = [f for f in round_.flights.values() if f.result is not None]
        # a run stopped by a broken pool's shutdown (KILLED) trains again in the next round
        for flight in ended:
            if flight.result.status == KILLED:
                claims.retry(flight.key)
        if round_.broken and not claims.done() and all(f.result.status == KILLED for f in ended):
            # a pool that broke before any run ended for good (a worker failing at start-up)
            # would break again: stop here; otherwise every round ends some runs, so this ends
            claims.give_up(WORKER_DIED)


DRAIN_SECONDS = 120.0  # how long runs a broken pool stopped get to say they stopped


def _drain(round_: _Round, claims: Any, tracker: Any) -> None:
    """Every future has returned: take what the workers reported (it travels apart from the
    futures' results, and may come after them), then end what no worker can report."""
    from suite.runner import FAILED, RunResult
    from suite.tracking import first_line

    outcome = {}
    for future, flight in round_.futures.items():
        if future.cancelled():
            outcome[id(flight)] = "cancelled"
        elif future.exception() is None:
            outcome[id(flight)] = "started" if future.result() else "not started"
        else:
            outcome[id(flight)] = future.exception()

    def reporting(flight: _Flight) -> bool:
        """Its `done` event may still come: its worker said it would, or lives on."""
        if flight.result is not None or flight.withdrawn:
            return False
        if outcome.get(id(flight)) == "started":
            return True
        return flight.started and flight.pid is not None and _running(flight.pid)

    deadline = time.monotonic() + DRAIN_SECONDS
    while any(reporting(f) for f in round_.flights.values()) and time.monotonic() < deadline:
        round_.relay(claims, block=1.0)
    for flight in round_.flights.values():
        if flight.result is not None or flight.withdrawn:
            continue
        failure = outcome.get(id(flight))
        if flight.started or failure == "started":  # its worker died mid-run
            reason = WORKER_DIED
        elif isinstance(failure, BaseException) and not isinstance(failure, BrokenProcessPool):
            reason = f"{type(failure).__name__}: {first_line(failure)}"  # could not be sent
        else:
            continue  # never started: withdrawn and claimed again
        with contextlib.suppress(Exception):
            tracker.fail(flight.run_id, reason)
        tracker.heartbeat.release(flight.run_id)
        round_._end(claims, flight, RunResult(flight.key, FAILED, flight.run_id, reason=reason))


def _running(pid: int) -> bool:
    """True while process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _withdraw_unstarted(round_: _Round, tracker: Any, claims: Any, requeue: bool) -> None:
    """Claimed runs no worker started (a stop, a broken pool) go back: their runs are
    withdrawn (deleted), and with `requeue` their keys claimed again later."""
    for flight in round_.flights.values():
        if flight.started or flight.result is not None or flight.withdrawn:
            continue
        flight.withdrawn = True
        # a store error leaves the run RUNNING, for a later claim to take as abandoned
        with contextlib.suppress(Exception):
            tracker.withdraw(flight.run_id)
        if requeue:
            claims.retry(flight.key)
