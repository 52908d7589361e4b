"""`make bench`: the canonical run through `overfit run`, against naive Keras `fit`.

The canonical run is the headline study's `baseline` cell, seed 0: 300 training images,
784-100x6-10 ReLU, SGD, 200 epochs, the whole test set evaluated after every epoch. Both sides
run as fresh processes in this one invocation, so the ratio compares like with like (start-up,
TensorFlow import and data loading included). The naive side is `bench/naive_fit.py`: Keras
`fit(validation_data=...)` plus a per-epoch `evaluate` of the training subset, the same work.

Data: `../shared/data/mnist.npz` when it is there (the official 10,000-image test set), else
the bundled subset (2,000 held-out test images), so absolute times differ between the two.
Results print as a table and are written to `bench/results/bench-<time>.json`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import report_bench  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "mnist.npz"


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(command[:3])} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def main() -> None:
    epochs = int(os.environ.get("BENCH_EPOCHS", "200"))
    data_path = SHARED if SHARED.is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # both sides read the same data: the shared file, else the bundled subset (no Keras
        # cache or SUITE_MNIST_PATH of this machine in between)
        env = {**os.environ, "SUITE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("SUITE_MNIST_PATH", None)
        env["KERAS_HOME"] = str(work / "keras-home")
        overfit = [sys.executable, "-m", "suite", "run", str(ROOT / "experiments/overfitting.yaml")]
        overfit += ["--only", "baseline", "--seeds", "1", "--set", f"train.epochs={epochs}"]
        if data_path:
            overfit += ["--set", f"data.path={data_path}"]
        suite_seconds, _ = timed(overfit, env, work)
        train_seconds = read_train_seconds(work)

        naive = [sys.executable, str(ROOT / "bench/naive_fit.py")]
        naive += [str(data_path) if data_path else "--bundled", str(epochs)]
        naive_seconds, naive_out = timed(naive, {**env, "PYTHONPATH": str(ROOT)}, work)

    rows = {
        "overfit run (process start to exit)": suite_seconds,
        "  of which training (in process)": train_seconds,
        "naive Keras fit (process start to exit)": naive_seconds,
    }
    ratio = naive_seconds / suite_seconds
    print(
        f"canonical run: baseline, seed 0, {epochs} epochs, data: "
        f"{data_path or 'bundled subset (offline)'}"
    )
    for name, seconds in rows.items():
        print(f"  {name:<42} {seconds:8.1f} s")
    print(f"  {'speed-up of overfit run over naive fit':<42} {ratio:8.1f} x")
    print(f"  naive: {naive_out.strip()}")
    report = report_bench.main()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "epochs": epochs,
        "data": str(data_path) if data_path else "bundled",
        "seconds": {
            "overfit_run": suite_seconds,
            "train_in_process": train_seconds,
            "naive_fit": naive_seconds,
        },
        "speedup_vs_naive": ratio,
        "report": report,
    }
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"written: {path.relative_to(ROOT)}")


def read_train_seconds(work: Path) -> float:
    """The run's own `train_seconds`, read back from the bench's MLflow store."""
    sys.path.insert(0, str(ROOT))
    from suite.tracking import Tracker

    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}")
    experiment_id = tracker.experiment_id("overfitting", create=False)
    assert experiment_id is not None
    (record,) = tracker.runs(experiment_id)
    return record.metrics["train_seconds"]


if __name__ == "__main__":
    main()
