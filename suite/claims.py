"""Claims: each (cell, seed) trained exactly once, however many invocations share a store.

Owns: the lease a process holds on a run it trains (its `owner`, `owner_machine`, `heartbeat`
and `claim_timeout` tags, deleted when the run ends, and its `invocation` tag, kept: resume
and a Ray retry read it; `suite.names`), the `Heartbeat` thread that keeps them fresh, what makes a RUNNING run abandoned, and `Leases`: claim a run, then end it (finish,
fail, withdraw) as its holder, so the lease ends with it. Must not: train, decide how a run
ended (`suite.lifecycle`), or reach MLflow but through the plain `suite.tracking.Tracker`.

The protocol: a run is trained only by the process that claimed it. `Leases.claim` looks for
the key's runs, creates a RUNNING run tagged with its owner (`host:pid`), its invocation's
token and a heartbeat, then looks again: if another live RUNNING run or a FINISHED one of the
same key is there, the new run is withdrawn (KILLED, then deleted) and the key is left to the
other. Two claims racing on one key cannot both win: each looks after its own run exists, so
the later look sees the other; both may withdraw, and try again a moment later. A RUNNING run
whose owner is gone (a dead pid on this host, or no heartbeat for `claim_timeout()` seconds) is
ended KILLED and its key claimed again. The owner's `Heartbeat` thread refreshes the heartbeat
of every run it holds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from suite.names import (
    HEARTBEAT_TAG,
    LEASE_TAGS,
    MACHINE_TAG,
    OWNER_TAG,
    TIMEOUT_TAG,
    TOKEN_TAG,
    Stored,
)
from suite.study import RunKey
from suite.tracking import RunRecord, Tracker

CLAIM_TIMEOUT = 120.0  # seconds without a heartbeat after which a RUNNING run is abandoned


class ClaimLost(RuntimeError):
    """A run this process trained was ended by another, which took it as abandoned."""


@dataclass(frozen=True)
class Claim:
    """What `Leases.claim` got: `won` (its run is `run_id`, RUNNING, ours to train),
    `finished` (by someone else: `run_id` and its final `metrics`), or `held` (another
    live invocation trains it now: try again later)."""

    outcome: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    token: str | None = None  # of the invocation that finished it
    holder: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # of the run that finished it


def claim_timeout() -> float:
    """`SUITE_CLAIM_TIMEOUT` seconds, else `CLAIM_TIMEOUT`."""
    try:
        return float(os.environ.get("SUITE_CLAIM_TIMEOUT") or CLAIM_TIMEOUT)
    except ValueError:
        return CLAIM_TIMEOUT


def owner() -> str:
    """This process, as the `owner` tag names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@functools.cache
def machine() -> str:
    """This boot of this machine and this pid namespace: two processes that agree on it
    (and on the host name) see the same pids. Empty where Linux's /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def running(pid: int) -> bool:
    """True while process `pid` runs: the kernel knows it (someone else's process too, even
    where /proc hides it), and psutil does not see a zombie (dead, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # hidden from us, yet it exists
        return True


def abandoned(record: RunRecord, now: float | None = None) -> str | None:
    """Why this RUNNING run has nobody training it any more, or None while its owner lives:
    its pid is gone from this machine (same boot, same pid namespace), or no heartbeat for its
    owner's claim timeout, or no owner at all (a run logged before claims existed)."""
    tags = record.tags
    if OWNER_TAG not in tags:
        return "it has no owner tag (logged before claims existed)"
    host, _, pid = tags[OWNER_TAG].rpartition(":")
    here = tags.get(MACHINE_TAG, "") == machine() and host == socket.gethostname()
    if here and pid.isdigit() and not running(int(pid)):
        return f"its owner (pid {pid} on {host}) is gone"
    now = time.time() if now is None else now
    try:
        beat = float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        beat = record.start_time / 1000  # its first heartbeat is its creation
    try:  # the owner's timeout paces its beat: judge it by that, not by the reader's
        timeout = float(tags[TIMEOUT_TAG])
    except (KeyError, ValueError):
        timeout = claim_timeout()
    silent = now - beat
    if silent > timeout:
        return f"no heartbeat from its owner for {silent:.0f} s"
    return None


class Leases:
    """This process's claims on one store: it claims runs, keeps them alive, and ends them."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    @functools.cached_property
    def heartbeat(self) -> Heartbeat:
        """Keeps the runs this process claimed alive (its thread starts on the first claim)."""
        return Heartbeat(self.tracker)

    def claim(
        self, experiment_id: str, study: str, key: RunKey, token: str, rerun: bool = False
    ) -> Claim:
        """Claim one (cell, seed) for this process to train (see the module's docstring).

        A FINISHED run of the key leaves it `finished` (unless `rerun`); a live RUNNING run
        leaves it `held`; RUNNING runs nobody trains any more are ended KILLED on the way,
        and so is an earlier attempt of this same invocation (`token`): a retried task whose
        worker died. A won claim's run has its params and config logged, and is held alive
        by `heartbeat` until it ends.
        """
        cell, seed = key.cell, key.seed
        settled = self._settle(experiment_id, cell.hash, seed, token, rerun, mine=None)
        if settled is not None:
            return settled
        tags = {
            OWNER_TAG: owner(),
            MACHINE_TAG: machine(),
            TOKEN_TAG: token,
            HEARTBEAT_TAG: f"{time.time():.3f}",
            TIMEOUT_TAG: f"{claim_timeout():g}",
            **(cell.slot.tags() if cell.slot is not None else {}),
        }
        data_source = cell.data_source or "unknown"
        run_id = self.tracker.create_run(experiment_id, study, cell, seed, data_source, tags)
        settled = self._settle(experiment_id, cell.hash, seed, token, rerun, mine=run_id)
        if settled is not None:
            self.withdraw(run_id)  # a claim made at the same moment: at most one trains
            return settled
        self.heartbeat.hold(run_id)
        try:
            self.tracker.describe(run_id, cell, seed)
        except BaseException:
            self.heartbeat.release(run_id)  # `describe` ended it FAILED
            with contextlib.suppress(Exception):
                self.tracker.delete_tags(run_id, LEASE_TAGS)
            raise
        return Claim("won", run_id)

    def _settle(
        self,
        experiment_id: str,
        cell_hash: str,
        seed: int,
        token: str,
        rerun: bool,
        mine: str | None,
    ) -> Claim | None:
        """What the key's other runs leave to `claim`: None if nothing stops it. RUNNING
        runs nobody trains any more are ended on the way, whatever the outcome."""
        runs = self.tracker.key_runs(experiment_id, cell_hash, seed)
        others = [r for r in runs if r.run_id != mine]
        live = []
        for record in others:
            if record.status != Stored.RUNNING:
                continue
            why: str | None
            if record.tags.get(TOKEN_TAG) == token:
                why = "this invocation's earlier attempt, whose worker died"
            else:
                why = abandoned(record)
            if why is None:
                live.append(record)
            else:
                self.fail(record.run_id, f"abandoned: {why}", Stored.KILLED)
        finished = [r for r in others if r.status == Stored.FINISHED]
        if finished and not rerun:
            latest = max(finished, key=lambda r: r.start_time)
            made_by = latest.tags.get(TOKEN_TAG)
            tags = dict(latest.tags)
            return Claim("finished", latest.run_id, latest.metrics, made_by, tags=tags)
        if live:
            return Claim("held", live[0].run_id, holder=live[0].tags.get(OWNER_TAG))
        return None

    def release(self, run_id: str) -> None:
        """Stop keeping `run_id` alive (it ended, or this process gives up on it)."""
        self.heartbeat.release(run_id)

    def withdraw(self, run_id: str) -> None:
        """Give back a claimed run that never trained: ended KILLED and deleted."""
        self.release(run_id)
        self.tracker.withdraw(run_id)

    def finish(self, run_id: str, final: dict[str, float]) -> None:
        """Log the final metrics and end the run FINISHED; its lease tags go.

        Raises:
            ClaimLost: another process took the run as abandoned and ended it meanwhile
                (its owner was silent for longer than the claim timeout); it stays ended.
        """
        self.release(run_id)
        if not self.tracker.still_running(run_id):
            raise ClaimLost(f"run {run_id} was ended by another invocation while it trained")
        self.tracker.finish(run_id, final)
        self.tracker.delete_tags(run_id, LEASE_TAGS)

    def fail(self, run_id: str, reason: str, status: Stored = Stored.FAILED) -> None:
        """End a run FAILED (or KILLED) with its reason; its lease tags go (after it ended:
        a RUNNING run without an owner would look abandoned)."""
        self.release(run_id)
        self.tracker.fail(run_id, reason, status)
        self.tracker.delete_tags(run_id, LEASE_TAGS)


_LEASES: weakref.WeakKeyDictionary[Tracker, Leases] = weakref.WeakKeyDictionary()


def leases_of(tracker: Tracker) -> Leases:
    """This process's claims on `tracker`'s store: one `Leases`, and so one heartbeat
    thread, per tracker, however many studies it runs."""
    found = _LEASES.get(tracker)
    if found is None:
        found = _LEASES[tracker] = Leases(tracker)
    return found


class Heartbeat:
    """Refreshes the `heartbeat` tag of every run this process holds, from a daemon thread,
    every quarter of the claim timeout: a run stays claimed while its owner lives, however
    long a compile, an epoch or a worker's start-up takes."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def hold(self, run_id: str) -> None:
        with self.lock:
            self.held.add(run_id)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
                self.thread.start()

    def release(self, run_id: str) -> None:
        with self.lock:
            self.held.discard(run_id)

    def _beat(self) -> None:
        while True:
            time.sleep(claim_timeout() / 4)
            with self.lock:
                held = sorted(self.held)
            for run_id in held:
                # under the lock: a run released meanwhile has ended, and a beat written after
                # its end would bring back the tag its end deleted
                with self.lock:
                    if run_id not in self.held:
                        continue
                    # an unreachable store: the next beat tries again
                    with contextlib.suppress(Exception):
                        self.tracker.client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
