"""Run a study: expand it, skip finished runs, train the rest, isolate failures.

The runner is display-agnostic: it reports progress to an `Observer` (the CLI's rich display,
or nothing in tests) and returns a `StudyResult` that tests and the CLI read. Runs train in
this process (`local`), in worker processes (`process`, see `suite.pool`), which this process
logs, or as Ray tasks (`ray`, see `suite.ray_executor`), which log themselves. Whichever trains
a run claims it in the store first (`Claims`), so invocations sharing a store train each run
once.
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from suite.pool import EXECUTORS, default_workers, peak_memory_mb, run_in_pool
from suite.spec import RunKey, Study
from suite.tracking import (
    ACTIVATIONS_ARTIFACT,
    ClaimLost,
    EpochLogger,
    RunRecord,
    Tracker,
    first_line,
)

if TYPE_CHECKING:
    from suite.train import History

FINISHED, SKIPPED, FAILED, KILLED = "finished", "skipped", "failed", "killed"
LOST = "lost"  # another invocation took the run as abandoned while it trained: look again
POLL_SECONDS = 2.0  # how often a run another invocation trains is looked at again
ELSEWHERE = "finished by another invocation"


class Observer(Protocol):
    """What the runner tells a display. Every method is optional in spirit: see `Silent`."""

    def study_started(self, study: Study, todo: list[RunKey], skipped: int) -> None: ...
    def run_started(self, key: RunKey, index: int, total: int) -> None: ...
    def epoch_done(
        self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]
    ) -> None: ...
    def run_ended(self, result: RunResult) -> None: ...


class Stoppable(Protocol):
    """A stop request, checked at every epoch boundary: raises KeyboardInterrupt when made."""

    def check(self) -> None: ...


class Silent:
    """An observer that shows nothing."""

    def study_started(self, study: Study, todo: list[RunKey], skipped: int) -> None:
        pass

    def run_started(self, key: RunKey, index: int, total: int) -> None:
        pass

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        pass

    def run_ended(self, result: RunResult) -> None:
        pass


@dataclass(frozen=True)
class RunResult:
    """How one (cell, seed) ended in this invocation."""

    key: RunKey
    status: str  # finished | skipped | failed | killed (stopped by Ctrl-C, in a worker)
    run_id: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    peak_memory_mb: float | None = None  # of the process that trained it, when it did


@dataclass(frozen=True)
class CellSummary:
    """Seed means of one cell's final metrics (finished and previously finished runs)."""

    cell: str
    cell_hash: str
    done: int
    failed: int
    train_accuracy: float | None
    test_accuracy: float | None
    gap: float | None


@dataclass
class StudyResult:
    """Everything `run_study` did, in run order."""

    study: Study
    results: list[RunResult]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.count(FAILED) == 0

    def cells(self) -> list[CellSummary]:
        """Per cell: mean final train/test accuracy and gap over its done seeds, failures."""
        out = []
        for cell in self.study.cells:
            mine = [r for r in self.results if r.key.cell.hash == cell.hash]
            done = [r.final for r in mine if r.status in (FINISHED, SKIPPED) and r.final]

            def mean(name: str, done: list[dict[str, float]] = done) -> float | None:
                values = [d[name] for d in done if name in d]
                return statistics.fmean(values) if values else None

            out.append(
                CellSummary(
                    cell=cell.name,
                    cell_hash=cell.hash,
                    done=len(done),
                    failed=sum(r.status == FAILED for r in mine),
                    train_accuracy=mean("final_train_accuracy"),
                    test_accuracy=mean("final_test_accuracy"),
                    gap=mean("final_gap"),
                )
            )
        return out


def plan(
    study: Study, tracker: Tracker, seeds: tuple[int, ...] | None = None, rerun: bool = False
) -> tuple[list[RunKey], dict[tuple[str, int], RunRecord]]:
    """Split a study's runs into those to train and those already FINISHED in the store.

    Returns:
        (runs to train, finished records by (cell hash, seed)).
    """
    experiment_id = tracker.experiment_id(study.name, create=False) if tracker.exists() else None
    records = tracker.runs(experiment_id) if experiment_id else []
    # by start time, so that of several FINISHED runs of a key (--rerun) the latest is kept
    ordered = sorted(records, key=lambda r: r.start_time)
    finished = {(r.cell_hash, r.seed): r for r in ordered if r.status == "FINISHED"}
    keys = study.runs(seeds)
    todo = keys if rerun else [k for k in keys if (k.cell.hash, k.seed) not in finished]
    return todo, finished


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
        tracker: Tracker,
        experiment_id: str,
        study: str,
        rerun: bool,
        observer: Observer,
    ) -> None:
        self.order = [(k.cell.hash, k.seed) for k in todo]
        self.waiting: deque[RunKey] = deque(todo)
        self.held: dict[tuple[str, int], tuple[RunKey, float]] = {}  # key -> (key, look again)
        self.results: dict[tuple[str, int], RunResult] = {}
        self.tracker, self.experiment_id, self.study = tracker, experiment_id, study
        self.rerun, self.observer = rerun, observer
        self.token = uuid.uuid4().hex  # this invocation's claims
        self.started = 0  # runs started here so far

    def done(self) -> bool:
        return not self.waiting and not self.held

    def next_key(self) -> RunKey | None:
        """The next run to try to claim: a held run due to be looked at again, else the
        next never tried; None when there is none for now."""
        now = time.monotonic()
        for ident, (key, at) in list(self.held.items()):
            if at <= now:
                del self.held[ident]
                self.waiting.appendleft(key)
        return self.waiting.popleft() if self.waiting else None

    def take(self) -> tuple[RunKey, str] | None:
        """The next run this invocation owns now (claimed: its RUNNING run's id), or None
        when every run left is held elsewhere for the moment (see `wait`)."""
        while (key := self.next_key()) is not None:
            try:
                claim = self.tracker.claim(
                    self.experiment_id,
                    self.study,
                    key.cell,
                    key.seed,
                    key.cell.data_source or "unknown",
                    self.token,
                    self.rerun,
                )
            except Exception as err:  # noqa: BLE001 - that run fails, the study goes on
                self.ended(RunResult(key, FAILED, reason=f"could not claim: {first_line(err)}"))
                continue
            if claim.outcome == "won":
                assert claim.run_id is not None
                return key, claim.run_id
            self.settled(key, claim.outcome, claim.run_id, claim.metrics, claim.token)
        return None

    def settled(
        self,
        key: RunKey,
        outcome: str,
        run_id: str | None,
        metrics: dict[str, float],
        token: str | None = None,
    ) -> None:
        """A claim that was not won: `finished` (elsewhere, or by this invocation's own
        earlier attempt: a task whose worker died after finishing it), or `held` (look
        again later)."""
        if outcome == "finished" and token == self.token:
            self.ended(RunResult(key, FINISHED, run_id, metrics))
        elif outcome == "finished":
            self.ended(RunResult(key, SKIPPED, run_id, metrics, ELSEWHERE))
        else:
            at = time.monotonic() + POLL_SECONDS * random.uniform(0.5, 1.5)
            self.held[(key.cell.hash, key.seed)] = (key, at)

    def wait(self, stop: _StopRequest) -> None:
        """Sleep until a held run is due to be looked at again (or a stop request)."""
        if not self.held:
            return
        until = min(at for _, at in self.held.values())
        while time.monotonic() < until:
            stop.check()
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def ended(self, result: RunResult) -> None:
        """Record how a run ended and show it; a lost claim is looked at again."""
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


@dataclass
class _StopRequest:
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


def run_study(
    study: Study,
    tracker: Tracker,
    seeds: tuple[int, ...] | None = None,
    rerun: bool = False,
    observer: Observer | None = None,
    workers: int | None = 1,
    executor: str | None = None,
    ray_address: str | None = None,
    cpus_per_run: float = 1.0,
) -> StudyResult:
    """Train every run of `study` that is not FINISHED in the store yet.

    One failing run (divergence, a bad data file, any exception) is marked FAILED with its
    reason and the study goes on. Ctrl-C or SIGTERM stops at the next epoch boundary, marks
    the current run KILLED and raises KeyboardInterrupt, so a later invocation resumes exactly
    where this one stopped.

    `executor="local"` trains in this process, one run after another; `"process"` in
    `workers` spawned worker processes (see `suite.pool`); `"ray"` as Ray tasks of
    `cpus_per_run` CPUs on the cluster at `ray_address` (else `RAY_ADDRESS`, else a Ray
    started here), at most `workers` at once if given (see `suite.ray_executor`). `workers=None` (`overfit run`'s
    default) takes worker processes, one per CPU and at most one per run: even a single
    worker pays, since it imports TensorFlow while this process imports MLflow and opens the
    store. Otherwise the executor defaults to `process` for more than one worker, else
    `local`. Either way, the same seeds give the same accuracies, and losses equal to within
    float32 rounding (bit-identical when the runs have the same thread count).
    """
    observer = observer or Silent()
    todo, finished = plan(study, tracker, seeds, rerun)
    if executor not in (None, *EXECUTORS):
        raise ValueError(f"unknown executor {executor!r}")
    cluster = None
    if executor == "ray":
        from suite import ray_executor

        if not ray_executor.available():
            raise ValueError(ray_executor.MISSING)
        cluster = ray_executor.address(ray_address)
        ray_executor.check_store(tracker.uri, cluster)
    elif workers is None:  # the default: worker processes, even one (see the docstring)
        executor = executor or "process"
        workers = 1 if executor == "local" else default_workers(len(todo))
    executor = executor or ("process" if (workers or 1) > 1 else "local")
    # what `plan` left out of `todo` is FINISHED in the store already
    todo_ids = {(k.cell.hash, k.seed) for k in todo}
    results: list[RunResult] = []
    for key in study.runs(seeds):
        if (key.cell.hash, key.seed) not in todo_ids:
            record = finished[(key.cell.hash, key.seed)]
            results.append(RunResult(key, SKIPPED, record.run_id, record.metrics))
    if todo and executor == "local":
        import suite.train  # noqa: F401  TensorFlow's import takes seconds: before the clock starts
    observer.study_started(study, todo, len(results))
    if not todo:
        return StudyResult(study, results)

    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    if study.path is not None:  # so `overfit report` finds the file from any folder
        tracker.note_study_file(experiment_id, study.path)
    claims = Claims(todo, tracker, experiment_id, study.name, rerun, observer)
    stop = _StopRequest()
    with stop.installed():
        if executor == "ray":
            from suite.ray_executor import run_on_ray

            run_on_ray(claims, study.name, tracker, observer, stop, cluster, cpus_per_run, workers)
        elif executor == "process":
            assert workers is not None
            run_in_pool(claims, study.name, tracker, observer, workers, stop)
        else:
            while not claims.done():
                stop.check()
                taken = claims.take()
                if taken is None:
                    claims.wait(stop)
                    continue
                key, run_id = taken
                observer.run_started(key, claims.started, len(claims.order))
                claims.started += 1
                result = train_claimed(key, run_id, tracker, observer, stop)
                claims.ended(replace(result, peak_memory_mb=peak_memory_mb()))
    return StudyResult(study, results + claims.in_order())


def train_claimed(
    key: RunKey, run_id: str, tracker: Tracker, observer: Observer, stop: Stoppable
) -> RunResult:
    """Train and log one claimed run; any failure but an interrupt becomes a FAILED result
    (a lost claim, `LOST`)."""
    from suite import data
    from suite.train import Diverged, train

    cfg = key.cell.config
    try:
        # the run exists before its data is cut, so a data failure is recorded too
        split = data.make_split(
            cfg.data.path,
            cfg.data.train_size,
            cfg.data.subset,
            cfg.data.val_size,
            cfg.data.test_size,
            key.seed,
        )
        tracker.set_tags(run_id, {f"n_{part}": str(n) for part, n in split.sizes.items()})
        logger = EpochLogger(tracker, run_id)

        def on_epoch(epoch: int, values: dict[str, float]) -> None:
            logger(epoch, values)
            observer.epoch_done(key, epoch, key.cell.config.train.epochs, values)
            stop.check()

        try:
            history = train(cfg, split, key.seed, on_epoch=on_epoch)
        finally:
            logger.flush()
        final = _record(tracker, run_id, history)
        return RunResult(key, FINISHED, run_id, final)
    except KeyboardInterrupt:
        tracker.fail(run_id, "interrupted", "KILLED")
        raise
    except ClaimLost as err:
        return RunResult(key, LOST, run_id, reason=str(err))
    except Diverged as err:
        return _failed(tracker, key, run_id, err.reason)
    except Exception as err:  # noqa: BLE001 - one failing run never stops the study
        return _failed(tracker, key, run_id, f"{type(err).__name__}: {err}")


def _record(tracker: Tracker, run_id: str, history: History) -> dict[str, float]:
    """Log what a trained run holds beyond its epochs (confusion matrix, per-update losses,
    activation histograms, final metrics) and end it FINISHED; returns its final metrics."""
    final = history.final()
    if history.confusion is not None:
        tracker.log_confusion(run_id, history.confusion)
    if history.batch_loss:
        tracker.log_epochs(
            run_id, ((i, {"batch_loss": v}) for i, v in enumerate(history.batch_loss, 1))
        )
    if history.activations is not None:
        tracker.log_dict(run_id, history.activations, ACTIVATIONS_ARTIFACT)
    tracker.finish(run_id, final)
    return final


def _failed(tracker: Tracker, key: RunKey, run_id: str | None, reason: str) -> RunResult:
    reason = reason.strip().splitlines()[0] if reason.strip() else "failed"
    if run_id is not None:
        tracker.fail(run_id, reason)
    return RunResult(key, FAILED, run_id, {}, reason)
