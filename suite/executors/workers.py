"""The worker processes of the `process` executor: how many, how they start, what one does.

Owns: the CPUs shared out (`cpu_count`, `default_workers`, `threads_per_worker`), a spawned
pool of workers with its event queue and stop event (`Workers`), starting them early
(`warm_up`, so their TensorFlow import overlaps the parent's MLflow import and planning),
and the worker side of a run (`work`): it trains through `suite.lifecycle.train_run` and
reports what happens on the event queue. Must not: import MLflow, here or in a worker (the
parent logs every run, see `suite.executors.process`).

Each worker is spawned (not forked: TensorFlow's thread pools do not survive a fork), imports
TensorFlow once, pins its thread count, and then trains run after run: the data file is loaded
once per worker and each compiled program is reused by every later run of its shape (see
`suite.train`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from suite.data import Source
from suite.lifecycle import train_run
from suite.study import RunKey


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


TERM_GRACE_SECONDS = 30.0  # a SIGTERM's run has this long to stop before its worker exits
CLOSE_SECONDS = TERM_GRACE_SECONDS + 15.0  # the parent's wait for a closing pool's workers


def _exit_now() -> None:
    os._exit(1)


def _init_worker(threads: int, events: Any, stop: Any) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent decides what it means
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shared = _SharedStop(stop)

    def terminate(signum: int, frame: object) -> None:
        # the run stops at its next epoch boundary and reports it; but a pool breaks by a
        # worker's death (SIGKILL, out of memory), and a worker killed while it wrote to the
        # shared event queue leaves the queue's lock taken: then this worker's queue thread
        # waits for it forever, and so would its exit, and the pool's join of it. So a
        # SIGTERM ends this process in TERM_GRACE_SECONDS at most.
        if not shared.terminated:
            timer = threading.Timer(TERM_GRACE_SECONDS, _exit_now)
            timer.daemon = True
            timer.start()
        shared.terminated = True

    signal.signal(signal.SIGTERM, terminate)
    from suite.data import OfflineDataWarning
    from suite.train import pin_threads

    warnings.simplefilter("ignore", OfflineDataWarning)  # the parent said it already
    pin_threads(threads)
    _worker.update(events=events, stop=shared)


def work(key: RunKey, source: Source) -> bool:
    """Train one run, reporting it on the event queue; its last event is `done`, with the
    run's outcome (a network it saved for `log_model` travels as a file's path, which the
    parent logs and removes). False if it never started (a stop request came first): then it
    reported nothing."""
    events, stop = _worker["events"], _worker["stop"]
    if stop.event.is_set():
        return False  # queued before a stop request, too late to cancel: never started
    ident = (key.cell.hash, key.seed)
    events.put(("started", *ident, os.getpid()))

    def on_epoch(epoch: int, values: dict[str, float]) -> None:
        events.put(("epoch", *ident, epoch, values))
        stop.check()

    def on_sizes(sizes: dict[str, int]) -> None:
        events.put(("sizes", *ident, sizes))

    events.put(("done", *ident, train_run(key, on_epoch, on_sizes, source)))
    return True


# --- in the parent ------------------------------------------------------------------------


class Workers:
    """A spawned pool, its event queue and its stop event."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self.events, self.stop_event = context.Queue(), context.Event()
        # this process's children from before: the pool's are those that come after
        self.others = set(multiprocessing.active_children())
        self.executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(threads_per_worker(workers), self.events, self.stop_event),
        )

    def start(self) -> None:
        """Start every worker now (the pool starts them on demand otherwise)."""
        for _ in range(self.workers):
            self.executor.submit(os.getpid)

    def processes(self) -> list[multiprocessing.process.BaseProcess]:
        """The pool's live worker processes."""
        return [p for p in multiprocessing.active_children() if p not in self.others]

    def terminate(self) -> None:
        """End the workers now, mid-import or idle: waiting would take seconds, for nothing.
        No run is in progress: nothing to mark KILLED."""
        mine = self.processes()
        manager = getattr(self.executor, "_executor_manager_thread", None)
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in mine:
            process.kill()
        for process in mine:
            process.join(timeout=5)
        _unwatched(manager)
        if manager is not None:
            manager.join(timeout=5)

    def close(self, wait: bool) -> None:
        """Shut the pool down; with `wait`, until its workers have exited, within
        CLOSE_SECONDS: a worker still alive then is killed.

        The pool's own `shutdown(wait=True)` joins its workers without a limit; after a
        worker's death it could wait forever for one stuck on a lock the dead worker held.
        """
        mine = self.processes()
        manager = getattr(self.executor, "_executor_manager_thread", None)
        self.executor.shutdown(wait=False, cancel_futures=True)
        _unwatched(manager)
        if not wait:
            return
        deadline = time.monotonic() + CLOSE_SECONDS
        for process in mine:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in mine:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if manager is not None:
            manager.join(timeout=5)


def _unwatched(manager: threading.Thread | None) -> None:
    """A shut-down pool's manager thread, taken off the interpreter's exit hook: the thread
    closes its wake-up pipe as it ends, and the hook (`concurrent.futures.process`'s
    `_python_exit`) writes to that pipe unlocked, so an exit while the thread ends printed
    an ignored `OSError: Bad file descriptor` traceback. The thread still ends on its own
    (shutdown woke it), and the interpreter still joins it."""
    from concurrent.futures import process

    watched = getattr(process, "_threads_wakeups", None)
    if manager is not None and watched is not None:
        watched.pop(manager, None)


_warm: Workers | None = None


def warm_up(workers: int) -> None:
    """Start `workers` workers now, so that their start-up (importing TensorFlow, seconds)
    runs while this process imports MLflow, opens the store and plans; `take_workers` hands
    them over when it wants as many."""
    global _warm
    discard_warm()
    _warm = Workers(workers)
    _warm.start()


def discard_warm() -> None:
    """Stop workers `warm_up` started that nobody took (nothing left to run)."""
    global _warm
    if _warm is not None:
        _warm.terminate()
        _warm = None


def take_workers(workers: int) -> Workers:
    """`workers` workers: those `warm_up` started when as many, else new ones."""
    global _warm
    warm, _warm = _warm, None
    if warm is not None and warm.workers == workers:
        return warm
    if warm is not None:
        warm.terminate()
    return Workers(workers)
