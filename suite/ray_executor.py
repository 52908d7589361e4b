"""Runs as Ray tasks (`overfit run --executor ray [--ray-address ADDRESS]`).

Each (cell, seed) is one task, one CPU by default (`--cpus-per-run`). A task claims its run in
the store, trains it and logs it there itself, exactly as an invocation in this process
would (`suite.runner.train_claimed`); a Ray worker imports TensorFlow and MLflow once and
keeps its compiled programs for the tasks it runs later. The driver (this process) creates
the experiment, submits no more tasks than the cluster has CPUs for (a queued task holds no
claim), shows their progress (the tasks send it over a Ray queue) and collects how each
ended.

Faults: a task whose worker dies is retried by Ray (`MAX_RETRIES`); the retry finds its dead
attempt's run RUNNING under the same claim token, ends it KILLED and claims the key anew. A
run another invocation holds comes back `held` and is submitted again later. Ctrl-C cancels
the tasks: those running mark their runs KILLED, as in process.

Without an address Ray starts on this machine (`ray.init()`); `RAY_ADDRESS` is honoured as
Ray honours it. The workers log to the driver's tracking URI, so with a cluster that must be
a tracking server (or a database server), never a sqlite file on this machine.

Ray is an optional extra (`pip install '.[ray]'`): nothing here imports it before a study
asks for this executor.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from typing import Any

from suite.runner import Silent
from suite.spec import RunKey
from suite.store import sqlite_file

MISSING = "--executor ray needs Ray, an optional extra: pip install '.[ray]' (in a clone: pip install -e '.[ray]')"
MAX_RETRIES = 3  # attempts after a task's worker died
WORKER_DIED = f"its Ray worker died, {MAX_RETRIES + 1} times"
# what the workers need of the driver's environment (a cluster's workers do not inherit it)
PASSED_ENV = (
    "SUITE_OFFLINE",
    "SUITE_MNIST_PATH",
    "SUITE_CLAIM_TIMEOUT",
    "KERAS_HOME",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
)


def available() -> bool:
    """True when Ray is installed."""
    return importlib.util.find_spec("ray") is not None


def address(ray_address: str | None = None) -> str | None:
    """The cluster to use: `--ray-address`, else `RAY_ADDRESS`, else None (start Ray here)."""
    return ray_address or os.environ.get("RAY_ADDRESS") or None


def check_store(uri: str, cluster: str | None) -> None:
    """Raise ValueError when a cluster's workers could not reach the tracking store."""
    if cluster in (None, "local"):
        return
    scheme = uri.partition(":")[0] if "://" in uri else ""
    if scheme in ("", "file", "sqlite"):
        raise ValueError(
            f"--executor ray with the cluster at {cluster}: the tracking store {uri} is a file "
            "on this machine, which the cluster's workers cannot reach; start a tracking "
            "server (overfit server --host 0.0.0.0) and pass --tracking-uri http://HOST:5000"
        )


def _worker_uri(uri: str) -> str:
    """A relative sqlite path made absolute, so that a worker in any folder finds it."""
    db = sqlite_file(uri)
    return uri if db is None else f"sqlite:///{db.resolve()}"


def connect(cluster: str | None) -> None:
    """Join the cluster (or start Ray here) unless this process already has."""
    import ray

    if ray.is_initialized():
        return
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")
    ray.init(
        address=cluster,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # the tasks' progress comes over the queue; errors come back
        runtime_env={"env_vars": env},
    )


# --- in the worker ------------------------------------------------------------------------

_process: dict[str, Any] = {}


def _task(
    key: RunKey,
    uri: str,
    experiment_id: str,
    study: str,
    token: str,
    rerun: bool,
    threads: int,
    events: Any,
) -> dict[str, Any]:
    """Claim, train and log one run in a Ray worker; what happened, for the driver."""
    from suite import pool
    from suite.runner import train_claimed
    from suite.tracking import Tracker

    if "threads" not in _process:
        from suite.train import pin_threads

        pin_threads(threads)  # before this process's first TensorFlow op
        _process["threads"] = threads
    trackers = _process.setdefault("trackers", {})
    tracker = trackers.get(uri) or trackers.setdefault(uri, Tracker(uri))
    data_source = key.cell.data_source or "unknown"
    claim = tracker.claim(experiment_id, study, key.cell, key.seed, data_source, token, rerun)
    if claim.outcome != "won":  # finished or held elsewhere
        return {
            "claim": claim.outcome,
            "run_id": claim.run_id,
            "final": claim.metrics,
            "token": claim.token,
        }
    assert claim.run_id is not None
    ident = (key.cell.hash, key.seed)
    try:
        _send(events, ("started", *ident))
        result = train_claimed(key, claim.run_id, tracker, _Relay(events, ident), _NoStop())
    except BaseException:
        # cancelled (ray.cancel raises KeyboardInterrupt anywhere in here): this worker
        # lives on, and so would the run's heartbeat, holding the run for good
        with contextlib.suppress(Exception):
            if tracker.still_running(claim.run_id):
                tracker.fail(claim.run_id, "interrupted", "KILLED")
        tracker.heartbeat.release(claim.run_id)
        raise
    return {
        "claim": "won",
        "status": result.status,
        "run_id": result.run_id,
        "final": result.final,
        "reason": result.reason,
        "peak_memory_mb": pool.peak_memory_mb(),
    }


def _send(events: Any, event: tuple[Any, ...]) -> None:
    with contextlib.suppress(Exception):  # progress is for show: a lost event changes no run
        events.put_nowait(event)


class _Relay(Silent):
    """The task's observer: sends its epochs to the driver, a few a second at most."""

    def __init__(self, events: Any, ident: tuple[str, int]) -> None:
        self.events, self.ident, self.last = events, ident, 0.0

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        now = time.monotonic()
        if epoch == epochs or now - self.last >= 0.25:
            self.last = now
            _send(self.events, ("epoch", *self.ident, epoch, values))


class _NoStop:
    """Ray stops a task itself: `ray.cancel` raises KeyboardInterrupt in it."""

    def check(self) -> None:
        pass


# --- in the driver ------------------------------------------------------------------------


def run_on_ray(
    claims: Any,
    study: str,
    tracker: Any,
    observer: Any,
    stop: Any,
    cluster: str | None = None,
    cpus_per_run: float = 1.0,
    workers: int | None = None,
) -> None:
    """Train the runs of `claims` as Ray tasks; each result goes to `claims`.

    Raises:
        KeyboardInterrupt: after a stop request, once the running tasks marked their runs.
    """
    import ray
    from ray.exceptions import (
        GetTimeoutError,
        NodeDiedError,
        RayError,
        TaskCancelledError,
        WorkerCrashedError,
    )
    from ray.util.queue import Queue

    from suite.runner import FAILED, RunResult
    from suite.tracking import TrackingError, first_line

    check_store(tracker.uri, cluster)
    connect(cluster)
    # ray.init() without an address joins a cluster `ray start` began on this machine
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1:
        try:
            check_store(tracker.uri, f"this machine's Ray ({len(nodes)} nodes)")
        except ValueError as err:
            raise TrackingError(str(err)) from None

    def room() -> int:
        """Tasks at once: the cluster's CPUs now (an autoscaler may add some), or fewer."""
        cpus = float(ray.cluster_resources().get("CPU", 1))
        fits = max(1, int(cpus // cpus_per_run))
        return min(fits, workers) if workers else fits

    threads = max(1, int(cpus_per_run))
    task = ray.remote(num_cpus=cpus_per_run, max_retries=MAX_RETRIES)(_task)
    events = Queue(actor_options={"num_cpus": 0})
    uri = _worker_uri(tracker.uri)
    flights: dict[Any, RunKey] = {}
    by_ident: dict[tuple[str, int], RunKey] = {}

    def relay() -> None:
        while True:
            try:
                kind, cell_hash, seed, *rest = events.get_nowait()
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty: nothing more for now
                return
            key = by_ident.get((cell_hash, seed))
            if key is None:
                continue
            if kind == "started":
                observer.run_started(key, claims.started, len(claims.order))
                claims.started += 1
            else:
                observer.epoch_done(key, rest[0], key.cell.config.train.epochs, rest[1])

    def collect(ref: Any, key: RunKey) -> None:
        try:
            out = ray.get(ref)
        except TaskCancelledError:  # Ctrl-C: the task marked its run, unless cut short
            _end_orphans(tracker, claims, key, "interrupted", "KILLED")
            return
        except (WorkerCrashedError, NodeDiedError):  # on every attempt Ray made
            reason = WORKER_DIED
            _end_orphans(tracker, claims, key, reason)
            claims.ended(RunResult(key, FAILED, reason=reason))
            return
        except RayError as err:  # the task raised (a store it could not reach, say)
            cause = getattr(err, "cause", None) or err
            reason = f"{type(cause).__name__}: {first_line(cause)}"
            _end_orphans(tracker, claims, key, reason)
            claims.ended(RunResult(key, FAILED, reason=reason))
            return
        if out["claim"] != "won":
            claims.settled(key, out["claim"], out["run_id"], out["final"], out["token"])
            return
        claims.ended(
            RunResult(
                key,
                out["status"],
                out["run_id"],
                out["final"],
                out.get("reason"),
                out.get("peak_memory_mb"),
            )
        )

    try:
        capacity, looked = room(), time.monotonic()
        while not claims.done() or flights:
            if time.monotonic() - looked > 10:
                capacity, looked = room(), time.monotonic()
            while not stop.requested and len(flights) < capacity:
                key = claims.next_key()
                if key is None:
                    break
                by_ident[(key.cell.hash, key.seed)] = key
                ref = task.remote(
                    key,
                    uri,
                    claims.experiment_id,
                    study,
                    claims.token,
                    claims.rerun,
                    threads,
                    events,
                )
                flights[ref] = key
            if stop.requested:
                break
            if not flights:
                claims.wait(stop)
                continue
            ready, _ = ray.wait(list(flights), num_returns=1, timeout=0.2)
            relay()
            for ref in ready:
                collect(ref, flights.pop(ref))
        if stop.requested:
            for ref in flights:
                ray.cancel(ref)
            deadline = time.monotonic() + 30
            for ref in list(flights):
                with contextlib.suppress(GetTimeoutError, RayError):
                    ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                _end_orphans(tracker, claims, flights.pop(ref), "interrupted", "KILLED")
            raise KeyboardInterrupt
    finally:
        relay()
        for ref in flights:  # an error in this process: stop what runs
            ray.cancel(ref)
        ray.kill(events.actor)  # type: ignore[arg-type]


def _end_orphans(
    tracker: Any, claims: Any, key: RunKey, reason: str, status: str = "FAILED"
) -> None:
    """End the RUNNING runs this invocation's tasks left of `key` (their worker died, or
    a cancel cut one short)."""
    from suite.tracking import TOKEN_TAG

    try:
        for record in tracker.key_runs(claims.experiment_id, key.cell.hash, key.seed):
            if record.status == "RUNNING" and record.tags.get(TOKEN_TAG) == claims.token:
                tracker.fail(record.run_id, reason, status)
    except Exception:  # noqa: BLE001 - a later claim takes them as abandoned
        pass
