"""Run a study: plan it, pick the executor, train what is not done, isolate failures.

Owns: the plan (which runs are FINISHED in the store already, `plan`), the checks of the
executor options (`check_executor`: the CLI calls it before anything slow), the choice of
executor and its worker count, and the `StudyResult` the CLI and tests read. The runner is
display-agnostic: it reports progress to an `Observer` (the CLI's rich display, or nothing in
tests). Must not: train or log a run itself (`suite.lifecycle`, through an executor of
`suite.executors`), nor draw anything.

Runs train in this process (`local`), in worker processes (`process`), which this process
logs, or as Ray tasks (`ray`), which log themselves. Whichever trains a run claims it in the
store first (`suite.claims`), so invocations sharing a store train each run once.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from suite.executors import workers as worker_processes
from suite.executors.base import EXECUTORS, Claims, Executor, StopRequest
from suite.executors.local import LocalExecutor
from suite.lifecycle import Observer, RunResult, Silent, stored
from suite.names import (
    FAILED,
    SEARCH_ID_TAG,
    Stored,
)
from suite.store import resolve_uri
from suite.study import RunKey, Study

if TYPE_CHECKING:  # MLflow is imported once the store is opened: `overfit run` starts its
    from suite.tracking import RunRecord, Tracker  # workers before that (`start_workers`)


class OptionError(ValueError):
    """Executor options that do not go together; the message is one line naming the option."""


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
        return [self._cell(cell.name, cell.hash) for cell in self.study.cells]

    def _cell(self, name: str, cell_hash: str) -> CellSummary:
        mine = [r for r in self.results if r.key.cell.hash == cell_hash]
        done = [r.final for r in mine if r.complete]  # a pruned trial's are an early epoch's

        def mean(metric: str) -> float | None:
            values = [d[metric] for d in done if metric in d]
            return statistics.fmean(values) if values else None

        return CellSummary(
            cell=name,
            cell_hash=cell_hash,
            done=len(done),
            failed=sum(r.status == FAILED for r in mine),
            train_accuracy=mean("final_train_accuracy"),
            test_accuracy=mean("final_test_accuracy"),
            gap=mean("final_gap"),
        )


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
    finished = {(r.cell_hash, r.seed): r for r in ordered if r.status == Stored.FINISHED}
    _notice_changed_search(study, records)
    keys = study.runs(seeds)
    todo = keys if rerun else [k for k in keys if (k.cell.hash, k.seed) not in finished]
    return todo, finished


class SearchChanged(UserWarning):
    """A search's stored trials were made with other search settings: a new search starts."""


def _notice_changed_search(study: Study, records: list[RunRecord]) -> None:
    """One line when stored trials of the study's trial cells belong to another search (its
    space, sampler, pruner, seed or frame changed): the new search's trials are new cells,
    never mixed with the old ones, which stay in the store."""
    cells = {cell.name: cell for cell in study.cells}
    stale = {
        r.tags.get(SEARCH_ID_TAG, "random")
        for r in records
        if r.cell in cells
        and r.cell_hash != cells[r.cell].hash
        and (SEARCH_ID_TAG in r.tags or cells[r.cell].slot is not None)
    }
    if not stale:
        return
    ids = ", ".join(sorted({c.slot.search_id for c in cells.values() if c.slot} or {"random"}))
    hashes = {cell.hash for cell in cells.values()}
    old = ", ".join(sorted(stale))
    if any(r.cell_hash in hashes for r in records):  # this search has trials stored already
        message = f"the store also holds trials of another search ({old}), kept apart"
    else:
        message = (
            "its search changed (search.space, sampler, pruner, seed, the settings it "
            f"searches around, or the data or builder it trains on): search {ids} starts anew, its trials new cells; the stored "
            f"trials of search {old} are kept apart"
        )
    warnings.warn(f"{study.name}: {message}", SearchChanged, stacklevel=3)


def check_executor(
    executor: str | None,
    workers: int | None,
    tracking_uri: str | None,
    ray_address: str | None = None,
    cpus_per_run: float = 1.0,
) -> None:
    """Raise OptionError when the executor options do not go together, or Ray is needed and
    missing, or a Ray cluster could not reach the store. Cheap: nothing heavy is imported."""
    if executor is not None and executor not in EXECUTORS:
        raise OptionError(f"--executor: expected {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and workers not in (None, 1):
        raise OptionError(
            f"--workers {workers}: the local executor trains one run at a time; use --executor process"
        )
    if executor != "ray" and (ray_address is not None or cpus_per_run != 1.0):
        option = "--ray-address" if ray_address is not None else "--cpus-per-run"
        raise OptionError(f"{option}: only with --executor ray")
    if executor == "ray":
        from suite.executors import ray_tasks

        try:
            ray_tasks.check_store(resolve_uri(tracking_uri), ray_tasks.address(ray_address))
        except ValueError as err:
            raise OptionError(str(err)) from None
        if not ray_tasks.available():
            raise OptionError(ray_tasks.MISSING)


def start_workers(
    study: Study, seeds: tuple[int, ...] | None, workers: int | None, executor: str | None
) -> None:
    """Start the worker processes `run_study` will want, now: they import TensorFlow while
    this process imports MLflow and plans. `stop_unused_workers` stops them if nothing takes them."""
    if executor in (None, "process") and workers != 1:
        runs = len(study.runs(seeds))
        if workers is None and executor is None and runs <= 1:
            return  # a single run trains in this process (see `choose_executor`)
        wanted = min(workers or worker_processes.default_workers(runs), runs)
        if wanted >= 1:
            worker_processes.warm_up(wanted)


stop_unused_workers = worker_processes.discard_warm


def choose_executor(
    executor: str | None,
    workers: int | None,
    runs: int,
    ray_address: str | None = None,
    cpus_per_run: float = 1.0,
) -> Executor:
    """The executor for `runs` runs to train. `workers=None` (`overfit run`'s default) takes
    worker processes, one per CPU and at most one per run, for two runs or more; a single run
    trains in this process, since a worker costs more than it saves there: its TensorFlow
    import overlaps this process' MLflow import, but spawning it, its second start-up and
    the hand-over of the run cost more (`make bench`, row "CLI start-up"). Otherwise the
    executor defaults to `process` for more than one worker, else `local`."""
    if executor == "ray":
        from suite.executors.ray_tasks import RayExecutor, address

        return RayExecutor(address(ray_address), cpus_per_run, workers)
    if workers is None:
        executor = executor or ("process" if runs > 1 else "local")
        workers = 1 if executor == "local" else worker_processes.default_workers(runs)
    if (executor or ("process" if workers > 1 else "local")) == "process":
        from suite.executors.process import ProcessExecutor

        return ProcessExecutor(workers)
    return LocalExecutor()


def check_search_options(study: Study, seeds: tuple[int, ...] | None, rerun: bool) -> None:
    """`--rerun` and `--seeds` against an adaptive search (`OptionError`), before any work."""
    searched = any(cell.slot is not None for cell in study.cells)
    if searched and rerun:
        raise OptionError(
            "--rerun: an adaptive search asks each trial from the ones before it, so its "
            "trials cannot be trained again alone; change search.seed for a new search"
        )
    if searched and seeds is not None and len(seeds) != 1:
        raise OptionError(
            f"--seeds: an adaptive search trains each trial with one seed, got {len(seeds)}"
        )


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
    `workers` spawned worker processes (`suite.executors.process`); `"ray"` as Ray tasks of
    `cpus_per_run` CPUs on the cluster at `ray_address` (else `RAY_ADDRESS`, else a Ray
    started here), at most `workers` at once if given (`suite.executors.ray_tasks`); see
    `choose_executor` for the defaults. Either way, the same seeds give the same accuracies,
    and losses equal to within float32 rounding (bit-identical when the runs have the same
    thread count).

    Raises:
        OptionError: executor options that do not go together (see `check_executor`).
    """
    check_executor(executor, workers, tracker.uri, ray_address, cpus_per_run)
    check_search_options(study, seeds, rerun)
    searched = any(cell.slot is not None for cell in study.cells)
    observer = observer or Silent()
    todo, finished = plan(study, tracker, seeds, rerun)
    chosen = choose_executor(executor, workers, len(todo), ray_address, cpus_per_run)
    # what `plan` left out of `todo` is FINISHED in the store already
    todo_ids = {(k.cell.hash, k.seed) for k in todo}
    results: list[RunResult] = []
    for key in study.runs(seeds):
        if (key.cell.hash, key.seed) not in todo_ids:
            record = finished[(key.cell.hash, key.seed)]
            results.append(stored(key, record.run_id, record.metrics, record.tags))
    if todo and isinstance(chosen, LocalExecutor):
        import suite.train  # noqa: F401  TensorFlow's import takes seconds: before the clock starts
    observer.study_started(study, todo, len(results))
    if not todo:
        return StudyResult(study, results)

    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    if study.path is not None:  # so `overfit report` finds the file from any folder
        tracker.note_study_file(experiment_id, study.path)
    from suite.claims import leases_of

    coordinator = None
    if searched:
        from suite.search import Coordinator

        coordinator = Coordinator(tracker, experiment_id)
    leases = leases_of(tracker)
    claims = Claims(todo, leases, experiment_id, study.name, rerun, observer, coordinator)
    stop = StopRequest()
    with stop.installed():
        chosen.run(claims, stop)
    return StudyResult(study, results + claims.in_order())
