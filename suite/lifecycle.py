"""One run's life, written once: trained, then recorded, finished or failed.

Owns: how a run ended (`RunResult`, statuses from `suite.names.Ended`), what the runner tells
a display (`Observer`, `Silent`), the stop check every epoch makes (`Stoppable`), and the one
mapping from what happened in training to a status: `train_run` cuts a run's data and trains
it (anywhere: this process, a worker, a Ray task) and turns every exception into a `Trained`
outcome; `conclude` records that outcome in the store as its holder (`suite.claims.Leases`);
`train_claimed` does both in one process. Every executor goes through these.

Must not: choose which runs to train or where (`suite.runner`, `suite.executors`), nor talk to
MLflow but through `suite.tracking` and `suite.claims`, imported where a run is logged: a
worker process imports this module to train, and never imports MLflow.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from suite.names import (
    ACTIVATIONS_ARTIFACT,
    EPOCHS_TRAINED_TAG,
    FAILED,
    FINISHED,
    KILLED,
    LABEL_NOISE_ARTIFACT,
    LOST,
    PRUNED,
    PRUNED_TAG,
    RELIABILITY_ARTIFACT,
    SEARCH_POINT_TAG,
    SKIPPED,
    Ended,
    Stored,
)
from suite.study import RunKey, Study

if TYPE_CHECKING:  # MLflow and TensorFlow are imported where a run is logged or trained
    from suite.claims import Leases
    from suite.data import Source
    from suite.train import History

INTERRUPTED = "interrupted"


class Observer(Protocol):
    """What the runner tells a display. Every method is optional in spirit: see `Silent`."""

    def study_started(self, study: Study, todo: list[RunKey], skipped: int) -> None: ...
    def run_started(self, key: RunKey, index: int, total: int) -> None: ...
    def epoch_done(
        self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]
    ) -> None: ...
    def run_ended(self, result: RunResult) -> None: ...


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


class Stoppable(Protocol):
    """A stop request, checked at every epoch boundary: raises KeyboardInterrupt when made."""

    def check(self) -> None: ...


@dataclass(frozen=True)
class RunResult:
    """How one (cell, seed) ended in this invocation."""

    key: RunKey
    status: Ended
    run_id: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    peak_memory_mb: float | None = None  # of the process that trained it, when it did
    pruned_epoch: int | None = None  # a search's trial its pruner ended: at this epoch

    @property
    def complete(self) -> bool:
        """Trained to its end (here or before): finished or skipped, and not pruned."""
        return self.status in (FINISHED, SKIPPED) and not self.pruned_epoch and bool(self.final)


def stored(
    key: RunKey,
    run_id: str | None,
    metrics: dict[str, float],
    tags: Mapping[str, str],
    status: Ended = SKIPPED,
    reason: str | None = None,
) -> RunResult:
    """A run FINISHED in the store already (by an earlier or another invocation) as a result
    of `status`; a search's trial with the point it was asked (its `search_point` tag) and
    the epoch its pruner ended it at. A point that no longer makes a valid configuration
    leaves the key as it is: it is shown, not trained."""
    pruned = tags.get(PRUNED_TAG)
    if key.cell.slot is not None and SEARCH_POINT_TAG in tags:
        with contextlib.suppress(Exception):  # the point is for display only
            key = replace(key, cell=key.cell.asked(json.loads(tags[SEARCH_POINT_TAG])))
    epoch = int(pruned) if pruned and pruned.isdigit() else None
    if epoch is not None and reason is None:
        reason = f"pruned at epoch {epoch}"
    return RunResult(key, status, run_id, metrics, reason, pruned_epoch=epoch)


@dataclass(frozen=True)
class Trained:
    """What training one run came to, before the store hears of it: `finished` with its
    history, `killed` (a stop request) or `failed` with a reason."""

    status: Ended
    history: History | None = None
    reason: str | None = None
    peak_memory_mb: float | None = None


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS


def size_tags(sizes: dict[str, int]) -> dict[str, str]:
    """A run's data sizes as its `n_train`, `n_val`, `n_test` and `n_classes` tags."""
    return {f"n_{part}": str(n) for part, n in sizes.items()}


def train_run(
    key: RunKey,
    on_epoch: Callable[[int, dict[str, float]], None],
    on_sizes: Callable[[dict[str, int]], None],
    source: Source | None = None,
    flush: Callable[[], None] | None = None,
) -> Trained:
    """Cut one run's data (from `source`, else what its config resolves to) and train it.

    `on_sizes` hears the data sizes once cut, `on_epoch` every epoch (a stop request raises
    KeyboardInterrupt from it), `flush` is called once training ends however it ends. Every
    exception becomes the outcome: a stop `killed`, a divergence or any error `failed` with
    its reason; nothing is raised.
    """
    from suite import data
    from suite.train import Diverged, train

    cfg = key.cell.config
    try:
        stops, heard = _pruned(key, on_epoch)
        split = data.make_split(**cfg.data.model_dump(), seed=key.seed, source=source)
        on_sizes({**split.sizes, "classes": split.num_classes})
        try:
            builder = key.cell.builder_file or None
            history = train(cfg, split, key.seed, heard, builder, key.log_model, stops)
        finally:
            if flush is not None:
                flush()
        trained = Trained(FINISHED, history)
    except KeyboardInterrupt:
        trained = Trained(KILLED, reason=INTERRUPTED)
    except Diverged as err:
        trained = Trained(FAILED, reason=err.reason)
    except Exception as err:  # noqa: BLE001 - one failing run never stops the study
        trained = Trained(FAILED, reason=f"{type(err).__name__}: {err}")
    return replace(trained, peak_memory_mb=peak_memory_mb())


def _pruned(
    key: RunKey, on_epoch: Callable[[int, dict[str, float]], None]
) -> tuple[list[int], Callable[[int, dict[str, float]], None]]:
    """A search trial's pruner around `on_epoch` (`suite.search.Pruning`): the epochs its
    training stops at to ask it, and the callback that asks it once an epoch is heard."""
    slot = key.cell.slot
    if slot is None or slot.spec.pruner == "none":
        return [], on_epoch
    from suite.search import Pruning

    pruning = Pruning.of(slot, key.cell.config)

    def heard(epoch: int, values: dict[str, float]) -> None:
        on_epoch(epoch, values)
        pruning.report(epoch, values)

    return pruning.checks, heard


def conclude(leases: Leases, key: RunKey, run_id: str, trained: Trained) -> RunResult:
    """Record a trained run's outcome in the store and end it: the one place a trained run
    is finished, failed or marked killed (a claim ends abandoned runs, `suite.claims`). A run
    another invocation ended meanwhile (it took the run as abandoned) comes back `lost`, to be
    looked at again. An error of the store is raised. A network the run saved (`log_model`) is
    removed from its temporary folder, logged or not."""
    try:
        return _conclude(leases, key, run_id, trained)
    finally:
        discard_network(trained)


def discard_network(trained: Trained) -> None:
    """Remove the temporary file of the network a trained run saved, if any."""
    if trained.history is not None and trained.history.network is not None:
        trained.history.network.discard()


def _conclude(leases: Leases, key: RunKey, run_id: str, trained: Trained) -> RunResult:
    from suite.claims import ClaimLost

    memory = trained.peak_memory_mb
    if trained.status == KILLED:
        leases.fail(run_id, trained.reason or INTERRUPTED, Stored.KILLED)
        return RunResult(key, KILLED, run_id, reason=trained.reason, peak_memory_mb=memory)
    if trained.status != FINISHED or trained.history is None:
        return replace(fail(leases, key, run_id, trained.reason or ""), peak_memory_mb=memory)
    history = trained.history
    if key.cell.slot is not None:  # a search's trial: how far it trained, where it was pruned
        tags = {EPOCHS_TRAINED_TAG: str(history.epochs)}
        if history.pruned_epoch:
            tags[PRUNED_TAG] = str(history.pruned_epoch)
        leases.tracker.set_tags(run_id, tags)
    try:
        final = _record(leases, run_id, history)
    except ClaimLost as err:
        return RunResult(key, LOST, run_id, reason=str(err))
    if history.pruned_epoch:
        why = f"pruned at epoch {history.pruned_epoch}"
        return RunResult(key, PRUNED, run_id, final, why, memory, history.pruned_epoch)
    return RunResult(key, FINISHED, run_id, final, peak_memory_mb=memory)


def fail(
    leases: Leases, key: RunKey, run_id: str | None, reason: str, status: Ended = FAILED
) -> RunResult:
    """End a run FAILED (or KILLED) with the first line of `reason`, when it has a run."""
    reason = reason.strip().splitlines()[0] if reason.strip() else "failed"
    if run_id is not None:
        leases.fail(run_id, reason, Stored.KILLED if status == KILLED else Stored.FAILED)
    return RunResult(key, status, run_id, {}, reason)


def train_claimed(
    key: RunKey, run_id: str, leases: Leases, observer: Observer, stop: Stoppable
) -> RunResult:
    """Train and log one claimed run in this process, its epochs streamed to the store. Any
    failure, recording included, ends the run FAILED with its reason and is returned.

    Raises:
        KeyboardInterrupt: after a stop request, once the run is marked KILLED.
    """
    from suite.tracking import EpochLogger

    tracker = leases.tracker
    logger = EpochLogger(tracker, run_id)
    epochs = key.cell.config.train.epochs

    def on_epoch(epoch: int, values: dict[str, float]) -> None:
        logger(epoch, values)
        observer.epoch_done(key, epoch, epochs, values)
        stop.check()

    def on_sizes(sizes: dict[str, int]) -> None:
        # the run exists before its data is cut, so a data failure is recorded too
        tracker.set_tags(run_id, size_tags(sizes))

    trained = train_run(key, on_epoch, on_sizes, flush=logger.flush)
    try:
        result = conclude(leases, key, run_id, trained)
    except KeyboardInterrupt:  # a second Ctrl-C while the run is recorded
        if leases.tracker.still_running(run_id):
            leases.fail(run_id, INTERRUPTED, Stored.KILLED)
        raise
    except Exception as err:  # noqa: BLE001 - one failing run never stops the study
        result = fail(leases, key, run_id, f"{type(err).__name__}: {err}")
    if trained.status == KILLED:
        raise KeyboardInterrupt
    # measured once the run is recorded: its figures and artifacts count too
    return replace(result, peak_memory_mb=peak_memory_mb())


def _record(leases: Leases, run_id: str, history: History) -> dict[str, float]:
    """Log what a trained run holds beyond its epochs (confusion matrix, per-update losses,
    activation histograms, the label noise it trained with, its reliability bins, its network,
    final metrics) and
    end it FINISHED; returns its final metrics. The network is logged before the run is
    FINISHED: a finished run that asked for one has it."""
    tracker = leases.tracker
    final = history.final()
    if history.network is not None:
        saved = history.network
        tracker.log_model(run_id, saved.load(), saved.example, saved.outputs)
    if history.confusion is not None:
        tracker.log_confusion(run_id, history.confusion)
    if history.batch_loss:
        tracker.log_epochs(
            run_id, ((i, {"batch_loss": v}) for i, v in enumerate(history.batch_loss, 1))
        )
    if history.activations is not None:
        tracker.log_dict(run_id, history.activations, ACTIVATIONS_ARTIFACT)
    if history.label_noise is not None:
        tracker.log_dict(run_id, history.label_noise, LABEL_NOISE_ARTIFACT)
    if history.calibration is not None:
        tracker.log_dict(run_id, history.calibration, RELIABILITY_ARTIFACT)
    leases.finish(run_id, final)
    return final


def as_dict(result: RunResult) -> dict[str, Any]:
    """A result without its key, to send between processes (`from_dict` makes it again)."""
    return {
        "status": str(result.status),
        "run_id": result.run_id,
        "final": result.final,
        "reason": result.reason,
        "peak_memory_mb": result.peak_memory_mb,
        "pruned_epoch": result.pruned_epoch,
    }


def from_dict(key: RunKey, sent: dict[str, Any]) -> RunResult:
    return RunResult(
        key,
        Ended(sent["status"]),
        sent.get("run_id"),
        sent.get("final") or {},
        sent.get("reason"),
        sent.get("peak_memory_mb"),
        sent.get("pruned_epoch"),
    )
