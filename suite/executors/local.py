"""The local executor: runs train in this process, one after another, with every CPU.

Owns: the loop that claims a run, trains it (`suite.lifecycle.train_claimed`) and hands its
result to the invocation's `Claims`. Must not: start processes or hold any run's state
between runs (the compiled programs `suite.train` keeps per process are its business).
"""

from __future__ import annotations

from dataclasses import dataclass

from suite.executors.base import Claims, StopRequest
from suite.lifecycle import train_claimed


@dataclass
class LocalExecutor:
    """`--executor local` (or `--workers 1`)."""

    def run(self, claims: Claims, stop: StopRequest) -> None:
        while not claims.done():
            stop.check()
            taken = claims.take()
            if taken is None:
                claims.wait(stop)
                continue
            key, run_id = taken
            claims.started_here(key)
            claims.ended(train_claimed(key, run_id, claims.leases, claims.observer, stop))
