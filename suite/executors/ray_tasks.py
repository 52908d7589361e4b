"""The Ray executor (`overfit run --executor ray [--ray-address ADDRESS]`): runs as Ray tasks.

Owns: the driver's loop (submit no more tasks than the cluster has CPUs for, show their
progress, collect how each ended) and the task itself (`_task`: claim, train and log one run
through `suite.lifecycle.train_claimed`). Must not: import Ray before a study asks for this
executor, nor end a trained run but through `suite.lifecycle` (a cancelled task marks its
run KILLED itself, since nothing else will).

Each (cell, seed) is one task, one CPU by default (`--cpus-per-run`). A task claims its run in
the store, trains it and logs it there itself, exactly as an invocation in this process
would (`suite.lifecycle.train_claimed`); a Ray worker imports TensorFlow and MLflow once and
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
from dataclasses import dataclass
from typing import Any

from suite.claims import Leases
from suite.executors.base import Claims, StopRequest
from suite.lifecycle import INTERRUPTED, RunResult, Silent, as_dict, fail, from_dict
from suite.names import FAILED, KILLED, TOKEN_TAG, Stored
from suite.store import sqlite_file
from suite.study import RunKey

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


def _leases(uri: str) -> Leases:
    """This worker process's claims on the store at `uri`, kept for its later tasks."""
    from suite.tracking import Tracker

    leases = _process.setdefault("leases", {})
    if uri not in leases:
        leases[uri] = Leases(Tracker(uri))
    return leases[uri]


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
    from suite.lifecycle import train_claimed

    if "threads" not in _process:
        from suite.train import pin_threads

        pin_threads(threads)  # before this process's first TensorFlow op
        _process["threads"] = threads
    leases = _leases(uri)
    claim = leases.claim(experiment_id, study, key, token, rerun)
    if claim.outcome != "won":  # finished or held elsewhere
        return {
            "claim": claim.outcome,
            "run_id": claim.run_id,
            "final": claim.metrics,
            "token": claim.token,
            "tags": claim.tags,
        }
    assert claim.run_id is not None
    ident = (key.cell.hash, key.seed)
    try:
        _send(events, ("started", *ident))
        result = train_claimed(key, claim.run_id, leases, _Relay(events, ident), _NoStop())
    except BaseException:
        # cancelled (ray.cancel raises KeyboardInterrupt anywhere in here): this worker
        # lives on, and so would the run's heartbeat, holding the run for good
        with contextlib.suppress(Exception):
            if leases.tracker.still_running(claim.run_id):
                leases.fail(claim.run_id, INTERRUPTED, Stored.KILLED)
        leases.release(claim.run_id)
        raise
    return {"claim": "won", **as_dict(result)}


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


@dataclass
class RayExecutor:
    """`--executor ray`: a task of `cpus_per_run` CPUs per run on the cluster at `cluster`
    (None: a Ray started here), at most `workers` at once if given."""

    cluster: str | None = None
    cpus_per_run: float = 1.0
    workers: int | None = None

    def run(self, claims: Claims, stop: StopRequest) -> None:
        """Train the runs of `claims` as Ray tasks; each result goes to `claims`.

        Raises:
            KeyboardInterrupt: after a stop request, once the running tasks marked their runs.
        """
        import ray

        from suite.tracking import TrackingError

        uri = claims.leases.tracker.uri
        check_store(uri, self.cluster)
        connect(self.cluster)
        # ray.init() without an address joins a cluster `ray start` began on this machine
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if len(nodes) > 1:
            try:
                check_store(uri, f"this machine's Ray ({len(nodes)} nodes)")
            except ValueError as err:
                raise TrackingError(str(err)) from None
        _Driver(self, claims, stop).run()


class _Driver:
    """One study's tasks: submitted, watched, collected."""

    def __init__(self, settings: RayExecutor, claims: Claims, stop: StopRequest) -> None:
        import ray
        from ray.util.queue import Queue

        self.settings, self.claims, self.stop = settings, claims, stop
        self.task = ray.remote(num_cpus=settings.cpus_per_run, max_retries=MAX_RETRIES)(_task)
        self.events = Queue(actor_options={"num_cpus": 0})
        self.uri = _worker_uri(claims.leases.tracker.uri)
        self.threads = max(1, int(settings.cpus_per_run))
        self.flights: dict[Any, RunKey] = {}
        self.by_ident: dict[tuple[str, int], RunKey] = {}

    def room(self) -> int:
        """Tasks at once: the cluster's CPUs now (an autoscaler may add some), or fewer."""
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1))
        fits = max(1, int(cpus // self.settings.cpus_per_run))
        return min(fits, self.settings.workers) if self.settings.workers else fits

    def submit(self, key: RunKey) -> None:
        claims = self.claims
        self.by_ident[(key.cell.hash, key.seed)] = key
        ref = self.task.remote(
            key,
            self.uri,
            claims.experiment_id,
            claims.study,
            claims.token,
            claims.rerun,
            self.threads,
            self.events,
        )
        self.flights[ref] = key

    def relay(self) -> None:
        """Show the progress the tasks sent."""
        while True:
            try:
                kind, cell_hash, seed, *rest = self.events.get_nowait()
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty: nothing more for now
                return
            key = self.by_ident.get((cell_hash, seed))
            if key is None:
                continue
            if kind == "started":
                self.claims.started_here(key)
            else:
                epochs = key.cell.config.train.epochs
                self.claims.observer.epoch_done(key, rest[0], epochs, rest[1])

    def collect(self, ref: Any, key: RunKey) -> None:
        """How one task ended, to `claims`."""
        import ray
        from ray.exceptions import NodeDiedError, RayError, TaskCancelledError, WorkerCrashedError

        from suite.tracking import first_line

        try:
            out = ray.get(ref)
        except TaskCancelledError:  # Ctrl-C: the task marked its run, unless cut short
            self.end_orphans(key, INTERRUPTED, KILLED)
            return
        except (WorkerCrashedError, NodeDiedError):  # on every attempt Ray made
            self.end_orphans(key, WORKER_DIED)
            self.claims.ended(RunResult(key, FAILED, reason=WORKER_DIED))
            return
        except RayError as err:  # the task raised (a store it could not reach, say)
            cause = getattr(err, "cause", None) or err
            reason = f"{type(cause).__name__}: {first_line(cause)}"
            self.end_orphans(key, reason)
            self.claims.ended(RunResult(key, FAILED, reason=reason))
            return
        if out["claim"] != "won":
            claims = self.claims
            claims.settled(
                key, out["claim"], out["run_id"], out["final"], out["token"], out["tags"]
            )
            return
        self.claims.ended(from_dict(key, out))

    def run(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        claims, stop = self.claims, self.stop
        try:
            capacity, looked = self.room(), time.monotonic()
            while not claims.done() or self.flights:
                if time.monotonic() - looked > 10:
                    capacity, looked = self.room(), time.monotonic()
                while not stop.requested and len(self.flights) < capacity:
                    key = claims.next_key()
                    if key is None:
                        break
                    self.submit(key)
                if stop.requested:
                    break
                if not self.flights:
                    claims.wait(stop)
                    continue
                ready, _ = ray.wait(list(self.flights), num_returns=1, timeout=0.2)
                self.relay()
                for ref in ready:
                    self.collect(ref, self.flights.pop(ref))
            if stop.requested:
                for ref in self.flights:
                    ray.cancel(ref)
                deadline = time.monotonic() + 30
                for ref in list(self.flights):
                    with contextlib.suppress(GetTimeoutError, RayError):
                        ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                    self.end_orphans(self.flights.pop(ref), INTERRUPTED, KILLED)
                raise KeyboardInterrupt
        finally:
            self.relay()
            for ref in self.flights:  # an error in this process: stop what runs
                ray.cancel(ref)
            # the ignore is needed where Ray is installed, unused where it is not
            ray.kill(self.events.actor)  # type: ignore[arg-type,unused-ignore]

    def end_orphans(self, key: RunKey, reason: str, status: Any = FAILED) -> None:
        """End the RUNNING runs this invocation's tasks left of `key` (their worker died, or
        a cancel cut one short)."""
        claims = self.claims
        try:
            for record in claims.leases.tracker.key_runs(
                claims.experiment_id, key.cell.hash, key.seed
            ):
                if record.status == Stored.RUNNING and record.tags.get(TOKEN_TAG) == claims.token:
                    fail(claims.leases, key, record.run_id, reason, status)
        except Exception:  # noqa: BLE001 - a later claim takes them as abandoned
            pass
