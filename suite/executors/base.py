"""What every executor shares: the `Executor` protocol, the invocation's `Claims`, the stop.

Owns: the queue of runs one invocation has yet to see end, claimed one at a time as an
executor frees up (`Claims`), the Ctrl-C / SIGTERM handling every executor checks
(`StopRequest`), and the names of the executors. Must not: train or log a run
(`suite.lifecycle` does), nor import MLflow at import time (the claims protocol is reached
through `Claims.leases`).
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from suite.lifecycle import Observer, RunResult, stored
from suite.names import FAILED, FINISHED, LOST, PRUNED, SKIPPED
from suite.study import RunKey

if TYPE_CHECKING:
    from suite.claims import Leases

EXECUTORS = ("local", "process", "ray")  # in this process; in worker processes; Ray tasks
POLL_SECONDS = 2.0  # how often a run another invocation trains is looked at again
ELSEWHERE = "finished by another invocation"


class Executor(Protocol):
    """Trains the runs of `claims` until every one has ended (`claims.done()`), each result
    going to `claims.ended`; after a stop request, ends what runs as KILLED and raises
    KeyboardInterrupt."""

    def run(self, claims: Claims, stop: StopRequest) -> None: ...


@dataclass
class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM, taken at the next epoch boundary.

    A signal raised at an arbitrary point can land in a finalizer or weakref callback, where
    Python only prints it and goes on; checking a flag after every epoch stops reliably. A
    second Ctrl-C stops at once.
    """

    requested: bool = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: object) -> None:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Asker(Protocol):
    """Fills an adaptive search's slot with its point (`suite.search.Coordinator`)."""

    def ask(self, key: RunKey) -> RunKey: ...

    def ended(self, key: RunKey) -> None: ...


class Claims:
    """The runs one invocation has yet to see end, claimed one at a time as an executor
    frees up (`take`), so that any number of invocations can share a store and a study.

    A run another live invocation trains is looked at again every `POLL_SECONDS` or so,
    until it is FINISHED there (a `skipped` result here, reason `ELSEWHERE`) or abandoned
    (then claimed here). So when an invocation returns, every one of its runs has ended.
    """

    def __init__(
        self,
        todo: list[RunKey],
        leases: Leases,
        experiment_id: str,
        study: str,
        rerun: bool,
        observer: Observer,
        search: Asker | None = None,
    ) -> None:
        self.order = [(k.cell.hash, k.seed) for k in todo]
        self.waiting: deque[RunKey] = deque(todo)
        self.held: dict[tuple[str, int], tuple[RunKey, float]] = {}  # key -> (key, look again)
        self.results: dict[tuple[str, int], RunResult] = {}
        self.leases, self.experiment_id, self.study = leases, experiment_id, study
        self.rerun, self.observer = rerun, observer
        self.token = uuid.uuid4().hex  # this invocation's claims
        self.started = 0  # runs started here so far
        self.search = search  # asks an adaptive search's slots (`suite.search.Coordinator`)

    def done(self) -> bool:
        return not self.waiting and not self.held

    def left(self) -> int:
        """Runs not yet ended: waiting to be tried, or held elsewhere."""
        return len(self.waiting) + len(self.held)

    def next_key(self) -> RunKey | None:
        """The next run to try to claim: a held run due to be looked at again, else the
        next never tried; None when there is none for now."""
        now = time.monotonic()
        for ident, (key, at) in list(self.held.items()):
            if at <= now:
                del self.held[ident]
                self.waiting.appendleft(key)
        while self.waiting:
            key = self.waiting.popleft()
            if key.cell.slot is None or self.search is None or key.cell.slot.point is not None:
                return key  # a slot asked already (held elsewhere, retried) keeps its point
            try:  # an adaptive search's slot: its point is asked now, just before its claim
                return self.search.ask(key)
            except Exception as err:  # noqa: BLE001 - that trial fails, the search goes on
                from suite.tracking import first_line

                self.ended(RunResult(key, FAILED, reason=f"could not ask: {first_line(err)}"))
        return None

    def take(self) -> tuple[RunKey, str] | None:
        """The next run this invocation owns now (claimed: its RUNNING run's id), or None
        when every run left is held elsewhere for the moment (see `wait`)."""
        from suite.tracking import first_line

        while (key := self.next_key()) is not None:
            try:
                claim = self.leases.claim(
                    self.experiment_id, self.study, key, self.token, self.rerun
                )
            except Exception as err:  # noqa: BLE001 - that run fails, the study goes on
                self.ended(RunResult(key, FAILED, reason=f"could not claim: {first_line(err)}"))
                continue
            if claim.outcome == "won":
                assert claim.run_id is not None
                return key, claim.run_id
            self.settled(key, claim.outcome, claim.run_id, claim.metrics, claim.token, claim.tags)
        return None

    def settled(
        self,
        key: RunKey,
        outcome: str,
        run_id: str | None,
        metrics: dict[str, float],
        token: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """A claim that was not won: `finished` (elsewhere, or by this invocation's own
        earlier attempt: a task whose worker died after finishing it), or `held` (look
        again later). A search's trial finished elsewhere ends with the point it was asked
        there and whether it was pruned, from its run's `tags`."""
        if outcome == "finished":
            mine = token == self.token
            status = FINISHED if mine else SKIPPED
            result = stored(key, run_id, metrics, tags or {}, status, None if mine else ELSEWHERE)
            if mine and result.pruned_epoch:
                result = replace(result, status=PRUNED)
            self.ended(result)
        else:
            at = time.monotonic() + POLL_SECONDS * random.uniform(0.5, 1.5)
            self.held[(key.cell.hash, key.seed)] = (key, at)

    def wait(self, stop: StopRequest) -> None:
        """Sleep until a held run is due to be looked at again (or a stop request)."""
        if not self.held:
            return
        until = min(at for _, at in self.held.values())
        while time.monotonic() < until:
            stop.check()
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def started_here(self, key: RunKey) -> None:
        """Tell the observer a run started training (numbered in start order)."""
        self.observer.run_started(key, self.started, len(self.order))
        self.started += 1

    def ended(self, result: RunResult) -> None:
        """Record how a run ended and show it; a lost claim is looked at again."""
        if self.search is not None:
            self.search.ended(result.key)
        if result.status == LOST:
            self.retry(result.key)
            return
        self.results[(result.key.cell.hash, result.key.seed)] = result
        self.observer.run_ended(result)

    def retry(self, key: RunKey) -> None:
        """Claim `key` again (its run was stopped, not ended for good)."""
        self.results.pop((key.cell.hash, key.seed), None)
        self.waiting.appendleft(key)

    def give_up(self, reason: str) -> None:
        """End every run not yet ended as FAILED with `reason`."""
        left = list(self.waiting) + [key for key, _ in self.held.values()]
        self.waiting.clear()
        self.held.clear()
        for key in left:
            self.ended(RunResult(key, FAILED, reason=reason))

    def in_order(self) -> list[RunResult]:
        return [self.results[ident] for ident in self.order if ident in self.results]
