"""The MLflow internals the suite uses for speed, in one place, each beside its public fallback.

Owns: the three fast paths that reach below `MlflowClient` (checked against MLflow 3.17; the
`mlflow` pin in pyproject.toml stops before its next major version):

- `log_metrics`: a run's per-epoch metrics inserted into a database store's `metrics` table in
  one statement, its `latest_metrics` updated by MLflow's own code. `log_batch` builds an ORM
  object per value, about 5% of a headline run; this costs milliseconds.
- `read_histories`: a database store's metric points read as columns, ~10x faster than
  `get_metric_history_bulk`, which builds two objects per point.
- `server_histories`: a tracking server's bulk history endpoint, the one its UI uses, one
  request for up to 100 runs instead of one per run and metric.

Each returns None (the caller then takes the public API) when its store is another kind, and
also when MLflow no longer has what it uses: then it warns once (`InternalsWarning`) and the
suite goes on through the public API, slower but the same. `tests/test_mlflow_internals.py`
compares each fast path with the public call it replaces on a real store.

Must not: hold any of the suite's own logic (retries, claims, tags); nothing else in the suite
touches these internals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from mlflow.entities import Metric

BULK_POINTS_LIMIT = 25_000  # a tracking server's bulk history endpoint answers at most this many
DATABASE_RUNS_PER_QUERY = 500  # run ids bound per query: well under sqlite's variable limit
# what the fast paths call on MLflow's SQLAlchemy store, checked before each use
SESSION_METHOD = "ManagedSessionMaker"
RUN_METHODS = ("_get_run", "_check_run_is_active")
LATEST_METHOD = "_update_latest_metrics_if_necessary"

Point = tuple[str, str, int, float]  # (run id, metric, step, value)


class InternalsWarning(UserWarning):
    """MLflow changed what a fast path uses: the public API serves instead."""


_warned: set[str] = set()


def _fall_back(path: str, why: str) -> None:
    """Warn once per fast path that it is off."""
    if path not in _warned:
        _warned.add(path)
        warnings.warn(
            f"MLflow's internals changed ({why}): {path} goes through MLflow's public API, "
            "slower but the same",
            InternalsWarning,
            stacklevel=3,
        )


def database_store(client: Any, path: str, needs: Sequence[str]) -> Any | None:
    """The SQLAlchemy store behind `client` when it is one and still has `needs`, else None."""
    try:
        store = client._tracking_client.store
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except (AttributeError, ImportError) as err:
        _fall_back(path, f"{type(err).__name__}: {err}")
        return None
    if not isinstance(store, SqlAlchemyStore):
        return None  # a tracking server or a file store: not a fast path of this kind
    missing = [name for name in needs if not hasattr(store, name)]
    if missing:
        _fall_back(path, f"its SQL store has no {', '.join(missing)}")
        return None
    return store


def _sql_metric(path: str) -> Any | None:
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
    except ImportError as err:
        _fall_back(path, f"ImportError: {err}")
        return None
    return SqlMetric


def log_metrics(client: Any, run_id: str, metrics: list[Metric]) -> bool:
    """Insert finite metric rows in one statement (all or none); False when this fast path
    does not apply (another store, a NaN or infinity, MLflow changed): use `log_batch`."""
    if not metrics or not all(math.isfinite(m.value) for m in metrics):
        return False
    path = "logging metrics"
    store = database_store(client, path, (SESSION_METHOD, *RUN_METHODS, LATEST_METHOD))
    table = _sql_metric(path) if store is not None else None
    if store is None or table is None:
        return False
    from sqlalchemy import insert

    rows = [
        {
            "run_uuid": run_id,
            "key": m.key,
            "value": m.value,
            "timestamp": m.timestamp,
            "step": m.step,
            "is_nan": False,
        }
        for m in metrics
    ]
    latest: dict[str, Metric] = {}
    for m in metrics:
        have = latest.get(m.key)
        if have is None or (m.step, m.timestamp, m.value) > (have.step, have.timestamp, have.value):
            latest[m.key] = m
    with store.ManagedSessionMaker(read_only=False) as session:
        store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
        session.execute(insert(table.__table__), rows)
        newest = [
            table(
                run_uuid=run_id,
                key=m.key,
                value=m.value,
                timestamp=m.timestamp,
                step=m.step,
                is_nan=False,
            )
            for m in latest.values()
        ]
        getattr(store, LATEST_METHOD)(newest, session)
    return True


def read_histories(
    client: Any, run_ids: Sequence[str], metrics: Sequence[str]
) -> list[Point] | None:
    """Every point of `metrics` in `run_ids` from a database store, in logging order per run
    and metric; None when this fast path does not apply."""
    path = "reading metric histories"
    store = database_store(client, path, (SESSION_METHOD,))
    table = _sql_metric(path) if store is not None else None
    if store is None or table is None:
        return None
    out: list[Point] = []
    ids = list(run_ids)
    with store.ManagedSessionMaker() as session:
        for start in range(0, len(ids), DATABASE_RUNS_PER_QUERY):
            chunk = ids[start : start + DATABASE_RUNS_PER_QUERY]
            rows = (
                session.query(table.run_uuid, table.key, table.step, table.value, table.is_nan)
                .filter(table.key.in_(list(metrics)), table.run_uuid.in_(chunk))
                .order_by(table.run_uuid, table.key, table.timestamp, table.step)
                .all()
            )
            out += [
                (run, key, int(step), math.nan if is_nan else float(value))
                for run, key, step, value, is_nan in rows
            ]
    return out


def server_histories(client: Any, run_ids: Sequence[str], metric: str) -> list[Point] | None:
    """Every point of `metric` in up to 100 `run_ids` from a tracking server's bulk endpoint;
    None when the answer is cut at the server's limit or the endpoint is gone (ask run by run)."""
    path = "reading metric histories from a tracking server"
    try:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        store = client._tracking_client.store
        creds = store.get_host_creds()
    except (AttributeError, ImportError) as err:
        _fall_back(path, f"{type(err).__name__}: {err}")
        return None
    endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
    params = {"run_id": list(run_ids), "metric_key": metric, "max_results": BULK_POINTS_LIMIT}
    response = http_request(creds, endpoint, "GET", params=params)
    if response.status_code == 404:
        _fall_back(path, f"the server has no {endpoint}")
        return None
    points = verify_rest_response(response, endpoint).json().get("metrics", [])
    if len(points) >= BULK_POINTS_LIMIT:
        return None
    return [(p["run_id"], metric, int(p["step"]), float(p["value"])) for p in points]
