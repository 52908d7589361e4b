"""The process executor (`overfit run --workers N`): runs in long-lived worker processes.

Owns: the parent's side of the worker pool (`suite.executors.workers`): it claims a run when
a worker is free for it, hands it over, streams the epochs the worker reports to the store,
and ends the run through `suite.lifecycle.conclude`. One process writes the store, so a
sqlite store sees no competing writers. Must not: train (the workers do; a finished run's
history unpickles without TensorFlow, `suite.history`, which is imported here only to read
back the network a run saved with `log_model`: the worker saves it to a file in a temporary
folder and sends its path; this process logs it and removes the folder).

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
import queue
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from suite.claims import Leases, running
from suite.data import resolve_source
from suite.executors.base import Claims, StopRequest
from suite.executors.workers import take_workers, work
from suite.lifecycle import RunResult, Trained, conclude, discard_network, fail, size_tags
from suite.names import FAILED, KILLED
from suite.study import RunKey
from suite.tracking import EpochLogger, first_line

WORKER_DIED = "a worker process died (killed, or out of memory?) and the pool stopped"
DRAIN_SECONDS = 120.0  # how long runs a broken pool stopped get to say they stopped
SETTLE_SECONDS = 5.0  # how long a dead worker's last events may take to arrive


@dataclass
class _Flight:
    """What the parent knows of one submitted run."""

    key: RunKey
    run_id: str  # claimed before it went to a worker
    logger: EpochLogger
    started: bool = False
    pid: int | None = None  # of the worker that started it
    result: RunResult | None = None  # once it ended
    withdrawn: bool = False  # claimed, never started, given back


class _Round:
    """One pool's life: hand claimed runs to free workers, log what the workers report."""

    def __init__(self, workers: int, claims: Claims, stop: StopRequest) -> None:
        own = self.own = take_workers(workers)
        self.stop = stop
        self.workers = workers
        self.executor, self.events, self.stop_event = own.executor, own.events, own.stop_event
        self.claims = claims
        self.leases: Leases = claims.leases
        self.futures: dict[Future[bool], _Flight] = {}
        self.flights: dict[tuple[str, int], _Flight] = {}
        self.broken = False
        self.cancelled = False  # after a stop request: queued runs cancelled

    def submit(self, key: RunKey, run_id: str) -> None:
        """Give a claimed run (its RUNNING run exists) to a worker."""
        logger = EpochLogger(self.leases.tracker, run_id)
        flight = _Flight(key, run_id, logger)
        self.flights[(key.cell.hash, key.seed)] = flight
        try:
            # the data each run reads is resolved here, once: workers read the same file
            data = key.cell.config.data
            future = self.executor.submit(work, key, resolve_source(data.path, data.dataset))
        except (BrokenProcessPool, RuntimeError):  # it broke while idle: withdrawn, retried
            self.broken = True
            return
        self.futures[future] = flight

    def busy(self) -> int:
        """Runs handed to workers and not ended."""
        return sum(f.result is None for f in self.flights.values())

    def relay(self, block: float = 0.0) -> bool:
        """Log and show what the workers reported since the last call; False if nothing came
        (waiting up to `block` seconds for the first event)."""
        got = False
        while True:
            try:
                event = (
                    self.events.get(timeout=block)
                    if block and not got
                    else self.events.get_nowait()
                )
            except queue.Empty:
                return got
            got = True
            if self.stop.requested:
                # at once, not after the events queued up: a run that far ahead would finish
                self.stop_event.set()
            kind, flight = event[0], self.flights[(event[1], event[2])]
            if flight.result is not None:
                if kind == "done":  # ended already (the store failed it): nothing to log
                    discard_network(event[3])
                continue
            if kind == "started":
                flight.started, flight.pid = True, event[3]
                self.claims.started_here(flight.key)
                continue
            try:
                self._logged(flight, kind, event)
            except Exception as err:  # noqa: BLE001 - the store failed this run: the rest go on
                reason = f"tracking store: {type(err).__name__}: {first_line(err)}"
                self.end(flight, _failed_quietly(self.leases, flight, reason))

    def _logged(self, flight: _Flight, kind: str, event: tuple[Any, ...]) -> None:
        """Log one event of a started run."""
        key = flight.key
        if kind == "sizes":
            self.leases.tracker.set_tags(flight.run_id, size_tags(event[3]))
        elif kind == "epoch":
            flight.logger(event[3], event[4])
            self.claims.observer.epoch_done(key, event[3], key.cell.config.train.epochs, event[4])
        else:
            trained: Trained = event[3]
            try:
                flight.logger.flush()
            except BaseException:
                discard_network(trained)  # conclude, which would, is not reached
                raise
            self.end(flight, conclude(self.leases, key, flight.run_id, trained))

    def end(self, flight: _Flight, result: RunResult) -> None:
        flight.result = result
        self.claims.ended(result)

    def close(self, stopping: bool) -> None:
        if stopping:
            self.stop_event.set()  # also after a second Ctrl-C, which does not wait for them
        self.own.close(wait=not stopping)
        self.events.close()


def _failed_quietly(leases: Leases, flight: _Flight, reason: str) -> RunResult:
    """End a run FAILED with `reason`; a store that cannot take even that leaves it RUNNING,
    for a later claim to take as abandoned (its heartbeat stops)."""
    try:
        return fail(leases, flight.key, flight.run_id, reason)
    except Exception:  # noqa: BLE001
        leases.release(flight.run_id)
        return RunResult(flight.key, FAILED, flight.run_id, reason=reason)


@dataclass
class ProcessExecutor:
    """`--executor process`: `workers` spawned worker processes, this process logging."""

    workers: int

    def run(self, claims: Claims, stop: StopRequest) -> None:
        """Train the runs of `claims` in the workers: a run is claimed when a worker is free
        for it, and its result goes to `claims`.

        Raises:
            KeyboardInterrupt: after a stop request, once the runs in progress are KILLED.
        """
        while not claims.done():
            round_ = _Round(min(self.workers, max(1, claims.left())), claims, stop)
            try:
                _serve(round_, claims, stop)
                _drain(round_)
            except BaseException:
                # a store error, a second Ctrl-C: stop the workers' runs, do not wait for
                # them; their runs stop beating, so another invocation takes them back in time
                round_.close(stopping=True)
                for flight in round_.flights.values():
                    claims.leases.release(flight.run_id)
                _withdraw_unstarted(round_, requeue=False)
                raise
            round_.close(stopping=stop.requested)
            _withdraw_unstarted(round_, requeue=not stop.requested)
            if stop.requested:
                raise KeyboardInterrupt
            _after_round(round_, claims)


def _serve(round_: _Round, claims: Claims, stop: StopRequest) -> None:
    """Keep the round's workers busy until a stop, a broken pool, or no run left."""
    while True:
        if stop.requested and not round_.cancelled:
            round_.stop_event.set()
            for future in round_.futures:
                future.cancel()
            round_.cancelled = True
        while not (stop.requested or round_.broken) and round_.busy() < round_.workers:
            taken = claims.take()
            if taken is None:
                break
            round_.submit(*taken)
        pending = {f for f in round_.futures if not f.done()}
        if not pending:
            round_.relay(block=0.05)  # events of returned workers, on their way
            if stop.requested or round_.broken or claims.done():
                return
            if not claims.waiting:  # only runs held elsewhere: look again later
                claims.wait(stop)
            continue
        done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
        round_.relay()
        for future in done:
            if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
                round_.broken = True


def _after_round(round_: _Round, claims: Claims) -> None:
    """Runs a broken pool's shutdown stopped (KILLED) train again in the next round."""
    ended = [f for f in round_.flights.values() if f.result is not None]
    for flight in ended:
        assert flight.result is not None
        if flight.result.status == KILLED:
            claims.retry(flight.key)
    stopped = all(f.result is not None and f.result.status == KILLED for f in ended)
    if round_.broken and not claims.done() and stopped:
        # a pool that broke before any run ended for good (a worker failing at start-up)
        # would break again: stop here; otherwise every round ends some runs, so this ends
        claims.give_up(WORKER_DIED)


def _drain(round_: _Round) -> None:
    """Every future has returned: take what the workers reported (it travels apart from the
    futures' results, and may come after them), then end what no worker can report."""
    outcome: dict[int, Any] = {}
    for future, flight in round_.futures.items():
        if future.cancelled():
            outcome[id(flight)] = "cancelled"
        elif future.exception() is None:
            outcome[id(flight)] = "started" if future.result() else "not started"
        else:
            outcome[id(flight)] = future.exception()

    def reporting(flight: _Flight) -> bool:
        """Its `done` event may still come: its worker lives on, or said it would and what
        it wrote may still be on its way (a worker that died right after its run ended
        loses the events it had not yet written)."""
        if flight.result is not None or flight.withdrawn:
            return False
        alive = flight.pid is not None and running(flight.pid)
        if outcome.get(id(flight)) == "started":
            return alive or flight.pid is None or time.monotonic() < settled
        return flight.started and alive

    settled = time.monotonic() + SETTLE_SECONDS
    deadline = time.monotonic() + DRAIN_SECONDS
    while any(reporting(f) for f in round_.flights.values()) and time.monotonic() < deadline:
        round_.relay(block=1.0)
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
        round_.end(flight, _failed_quietly(round_.leases, flight, reason))


def _withdraw_unstarted(round_: _Round, requeue: bool) -> None:
    """Claimed runs no worker started (a stop, a broken pool) go back: their runs are
    withdrawn (deleted), and with `requeue` their keys claimed again later."""
    for flight in round_.flights.values():
        if flight.started or flight.result is not None or flight.withdrawn:
            continue
        flight.withdrawn = True
        # a store error leaves the run RUNNING, for a later claim to take as abandoned
        with contextlib.suppress(Exception):
            round_.leases.withdraw(flight.run_id)
        if requeue:
            round_.claims.retry(flight.key)
