"""Each fast path of `suite.mlflow_internals` against the public MLflow call it replaces, on
real stores: the same points and latest values; and when MLflow no longer has what a fast path
uses, one warning and the public API's answer."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from suite import mlflow_internals
from suite.study import load_study
from suite.tracking import Tracker


@pytest.fixture
def tracker(tracking_uri: str) -> Tracker:
    return Tracker(tracking_uri)


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """Each test sees a fast path's first warning."""
    mlflow_internals._warned.clear()
    yield
    mlflow_internals._warned.clear()


def _runs(
    tracker: Tracker, write_study: Callable[[str], Path], tiny_study: str, n: int
) -> list[str]:
    study = load_study(write_study(tiny_study))
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    return [tracker.start_run(experiment_id, "tiny", study.cells[0], s, "test") for s in range(n)]


def _public(tracker: Tracker, run_ids: list[str], metrics: list[str]) -> list[tuple]:
    client = MlflowClient(tracker.uri)
    return [
        (run_id, name, p.step, p.value)
        for run_id in run_ids
        for name in metrics
        for p in client.get_metric_history(run_id, name)
    ]


def _key(point: tuple) -> tuple:
    run_id, name, step, value = point
    return (run_id, name, step, "nan" if math.isnan(value) else value)


def test_bulk_epoch_logging_stores_what_log_batch_stores(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    """A database store takes per-epoch metrics as one insert; MLflow must read back the same
    histories and latest values as from its own `log_batch`, NaN and infinity included."""
    study = load_study(write_study(tiny_study))
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    cell = study.cells[0]
    bulk = tracker.start_run(experiment_id, "tiny", cell, 0, "test")
    plain = tracker.start_run(experiment_id, "tiny", cell, 1, "test")
    first = [(epoch, {"a": 0.5 * epoch, "b": -float(epoch)}) for epoch in (1, 2, 3)]
    later = [(epoch, {"a": 10.0 + epoch}) for epoch in (4, 5)]
    odd = [(6, {"a": float("nan"), "b": float("inf")})]
    for batch in (first, later, odd):
        tracker.log_epochs(bulk, batch)
        metrics = [
            Metric(name, value, 1000, epoch)
            for epoch, values in batch
            for name, value in values.items()
        ]
        tracker.client.log_batch(plain, metrics=metrics)
    client = MlflowClient(tracker.uri)

    def read(run_id: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
        histories = {
            name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
            for name in ("a", "b")
        }
        return histories, dict(client.get_run(run_id).data.metrics)

    (bulk_histories, bulk_latest), (plain_histories, plain_latest) = read(bulk), read(plain)
    assert str(bulk_histories) == str(plain_histories)  # str: nan == nan
    assert str(bulk_latest) == str(plain_latest)
    assert [step for step, _ in bulk_histories["a"]] == [1, 2, 3, 4, 5, 6]
    assert bulk_latest["b"] > 1e308  # MLflow stores infinity as the largest float


def test_bulk_reading_reads_what_get_metric_history_reads(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    run_ids = _runs(tracker, write_study, tiny_study, 3)
    for n, run_id in enumerate(run_ids):
        rows = [
            (epoch, {"a": epoch / 7 + n, "b": float("nan") if epoch == 2 else -n})
            for epoch in (1, 2, 3)
        ]
        tracker.log_epochs(run_id, rows)
    fast = mlflow_internals.read_histories(tracker.client, run_ids, ["a", "b"])
    assert fast is not None and len(fast) == 3 * 3 * 2
    assert sorted(map(_key, fast)) == sorted(map(_key, _public(tracker, run_ids, ["a", "b"])))


def test_server_bulk_reading_reads_what_get_metric_history_reads(
    write_study: Callable[[str], Path], mlflow_server: object, tiny_study: str
) -> None:
    tracker = Tracker(mlflow_server.uri)  # type: ignore[attr-defined]
    run_ids = _runs(tracker, write_study, tiny_study, 2)
    for n, run_id in enumerate(run_ids):
        tracker.log_epochs(run_id, [(epoch, {"a": epoch / 3 + n}) for epoch in range(1, 6)])
    fast = mlflow_internals.server_histories(tracker.client, run_ids, "a")
    assert fast is not None and len(fast) == 10
    assert sorted(fast) == sorted(_public(tracker, run_ids, ["a"]))
    assert sorted(tracker.histories(run_ids, ["a"])) == sorted(fast)


def test_a_changed_mlflow_falls_back_to_the_public_api_with_one_warning(
    write_study: Callable[[str], Path],
    tracker: Tracker,
    tiny_study: str,
    monkeypatch: pytest.MonkeyPatch,
    fresh_warnings: None,
) -> None:
    """As if MLflow renamed the methods the fast paths call: both paths say so once, and the
    store still gets and gives every point."""
    run_ids = _runs(tracker, write_study, tiny_study, 2)
    # names MLflow's store does not have, as after a rename
    monkeypatch.setattr(mlflow_internals, "LATEST_METHOD", "_update_latest_metrics_renamed")
    monkeypatch.setattr(mlflow_internals, "SESSION_METHOD", "SessionMakerRenamed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for run_id in run_ids:
            tracker.log_epochs(run_id, [(1, {"a": 0.25}), (2, {"a": 0.5})])
            tracker.log_epochs(run_id, [(3, {"a": 0.75})])
        read = tracker.histories(run_ids, ["a"])
        tracker.histories(run_ids, ["a"])
    said = [w for w in caught if issubclass(w.category, mlflow_internals.InternalsWarning)]
    assert len(said) == 2, [str(w.message) for w in said]  # one per fast path, not per call
    assert "logging metrics" in str(said[0].message)
    assert "reading metric histories" in str(said[1].message)
    assert sorted(read) == sorted(_public(tracker, run_ids, ["a"]))
    assert len(read) == 6
    latest = MlflowClient(tracker.uri).get_run(run_ids[0]).data.metrics
    assert latest == {"a": 0.75}
