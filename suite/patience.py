"""Waiting out a locked sqlite store: every call the tracker makes is made `patiently`.

Several processes (`--workers`, other invocations) write to one sqlite file; sqlite lets one
write at a time, and a writer that waits longer than its busy timeout (MLflow sets 20 s) gets
`database is locked`, its transaction rolled back. The call is then made again after a
growing, jittered pause, until it succeeds or `LOCKED_RETRY_SECONDS` have passed; any other
error is raised at once.

Owns: that retry (tenacity), for one call (`patiently`) or every call of a client (`Patient`).
Must not: import MLflow (`suite.tracking` wraps its client in `Patient`) or know what a call does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import tenacity

LOCKED_RETRY_SECONDS = 120.0  # how long a call waits out a locked sqlite database in all
T = TypeVar("T")


def _locked(err: BaseException | None) -> bool:
    """True for sqlite's `database is locked`, however MLflow wrapped it."""
    while err is not None:
        if "database is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


_retry_locked = tenacity.retry(
    retry=tenacity.retry_if_exception(lambda err: isinstance(err, Exception) and _locked(err)),
    # a random pause up to 0.05 s, 0.1 s, ... 2 s: writers that collided do not meet again
    wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
    stop=tenacity.stop_after_delay(LOCKED_RETRY_SECONDS),
    reraise=True,
)


def patiently(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, made again while sqlite says `database is locked`."""
    return cast(T, _retry_locked(call)(*args, **kwargs))


class Patient:
    """A client (an `MlflowClient`) whose calls are made `patiently`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patient_call(*args: Any, **kwargs: Any) -> Any:
            return patiently(attribute, *args, **kwargs)

        return patient_call
