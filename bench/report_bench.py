"""Report speed on a large store: 200 runs x 200 epochs, written through MLflow's own API.

A synthetic study (10 cells x 20 seeds) is logged exactly as `overfit run` logs it (the suite's
`Tracker`: tags, params, config artifact, per-epoch metrics in batches, final metrics), with
made-up learning curves; then `write_report` is timed over it. Used by `bench/bench.py`;
runs alone as `python bench/report_bench.py`.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from suite.metrics import EPOCH_METRICS  # noqa: E402
from suite.study import build_study  # noqa: E402
from suite.tracking import Tracker  # noqa: E402

CELLS, SEEDS, EPOCHS = 10, 20, 200


def synthetic_store(folder: Path) -> tuple[Tracker, float]:
    """Log the synthetic study into a new sqlite store; returns it and the seconds it took."""
    raw = {
        "name": "synthetic",
        "base": {"data": {"train_size": 300}, "train": {"epochs": EPOCHS}},
        "seeds": SEEDS,
        "variants": {f"wd_{i}": {"model": {"weight_decay": i / 100}} for i in range(CELLS)},
    }
    study = build_study(raw, None, {}, check_data=False)
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}")
    start = time.perf_counter()
    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    rng = np.random.default_rng(0)
    epochs = np.arange(1, EPOCHS + 1)
    for key in study.runs():
        i = int(key.cell.variant.split("_")[1])
        train = 1 - 0.9 * np.exp(-epochs / (20 + 5 * i)) + rng.normal(0, 0.005, EPOCHS)
        test = (0.75 - 0.01 * i) * (1 - np.exp(-epochs / 25)) + rng.normal(0, 0.01, EPOCHS)
        train, test = np.clip(train, 0.05, 0.9999), np.clip(test, 0.05, 0.9999)
        rows = []
        for e in range(EPOCHS):
            values = dict.fromkeys(EPOCH_METRICS, 0.0)
            values.update(
                train_accuracy=float(train[e]),
                test_accuracy=float(test[e]),
                gap=float(train[e] - test[e]),
                train_loss=float(-math.log(max(train[e], 1e-3))),
                test_loss=float(-math.log(max(test[e], 1e-3))),
                weight_norm=float(30 - i),
            )
            rows.append((e + 1, values))
        run_id = tracker.start_run(experiment_id, study.name, key.cell, key.seed, "synthetic")
        tracker.log_epochs(run_id, rows)
        best = int(np.argmax(test))
        tracker.finish(
            run_id,
            {
                "final_train_accuracy": float(train[-1]),
                "final_test_accuracy": float(test[-1]),
                "final_gap": float(train[-1] - test[-1]),
                "best_test_accuracy": float(test[best]),
                "best_epoch": float(best + 1),
                "train_seconds": 1.0,
            },
        )
    return tracker, time.perf_counter() - start


def main() -> dict[str, float]:
    from suite.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tracker, build_seconds = synthetic_store(folder)
        start = time.perf_counter()
        write_report("synthetic", tracker, folder / "report")
        report_seconds = time.perf_counter() - start

        # every per-epoch metric of every run: in bulk, and one request per run and metric
        experiment_id = tracker.experiment_id("synthetic", create=False)
        assert experiment_id is not None
        run_ids = [r.run_id for r in tracker.runs(experiment_id)]
        start = time.perf_counter()
        bulk = tracker.histories(run_ids, EPOCH_METRICS, EPOCHS)
        bulk_seconds = time.perf_counter() - start
        start = time.perf_counter()
        single = [
            point
            for run_id in run_ids
            for metric in EPOCH_METRICS
            for point in tracker.client.get_metric_history(run_id, metric)
        ]
        single_seconds = time.perf_counter() - start
        assert len(bulk) == len(single)

        # suite.results over the same store, each frame in its own call as a notebook makes it
        from suite import results

        uri = tracker.uri
        start = time.perf_counter()
        curves = results.curves("synthetic", uri=uri)
        curves_seconds = time.perf_counter() - start
        start = time.perf_counter()
        results.runs("synthetic", uri=uri)
        runs_seconds = time.perf_counter() - start
        start = time.perf_counter()
        results.summary("synthetic", uri=uri)
        summary_seconds = time.perf_counter() - start
        assert len(curves) == len(bulk), (len(curves), len(bulk))
    runs = CELLS * SEEDS
    print(
        f"report over {runs} runs x {EPOCHS} epochs: {report_seconds:.1f} s "
        f"(store written in {build_seconds:.0f} s)"
    )
    print(
        f"all {len(EPOCH_METRICS)} per-epoch metrics of those runs ({len(bulk)} points): "
        f"bulk {bulk_seconds:.1f} s, one request per run and metric {single_seconds:.1f} s"
    )
    print(
        f"suite.results over those runs: curves ({len(curves)} rows) {curves_seconds:.1f} s "
        f"(target < 5 s), runs {runs_seconds:.1f} s, summary {summary_seconds:.1f} s"
    )
    return {
        "results_curves_seconds": curves_seconds,
        "results_curves_rows": len(curves),
        "results_runs_seconds": runs_seconds,
        "results_summary_seconds": summary_seconds,
        "report_seconds": report_seconds,
        "store_seconds": build_seconds,
        "history_bulk_seconds": bulk_seconds,
        "history_per_run_seconds": single_seconds,
        "runs": runs,
    }


if __name__ == "__main__":
    main()
