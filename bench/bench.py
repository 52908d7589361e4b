"""`make bench`: the project's performance record, measured in one invocation.

Rows (each a fresh measurement on this machine, now):

- matmul peak: TensorFlow's float32 matmul at the evaluation's shape (the training subset and
  the test set, 784 inputs, times the first layer's 784 x 100 kernel), best of several tries,
  with TensorFlow's default thread count; the *floor* of a run is its arithmetic at that peak.
- canonical run in process: the headline study's `baseline` cell, seed 0 (300 training
  images, 784-100x6-10 ReLU, SGD, 200 epochs, the whole test set evaluated after every epoch),
  trained by `suite.train` in this process. First call (compiling) and best of the rest.
- CNN canonical run: experiments/cnn.yaml's `cnn` cell (the textbook's SimpleConvNet on the same
  300 images, 200 epochs), seed 0, in process; its floor is its convolutions at the measured
  convolution peak plus its dense layers at the matmul peak; beside it naive Keras `fit` of the
  same network doing the same work (`bench/naive_fit.py --cnn`), in process, in one invocation.
- cures (`bench/cures_bench.py`): an augmented run against the same run without augmentation,
  and what early stopping saves on experiments/cures.yaml.
- logging: the same run through the runner with MLflow logging to a sqlite store (params,
  config artifact, per-epoch metrics, confusion matrix), against training alone.
- model (`bench/model_bench.py`): the same run through the runner with `log_model: final` and
  `best` against without, each into a new sqlite store: what logging the network costs.
- canonical run through the CLI, and naive Keras `fit(validation_data=...)` doing the same
  work (`bench/naive_fit.py`): process start to exit, each.
- the CLI's start-up (`bench/startup_bench.py`): one run through `overfit run` minus the same
  run in process minus a bare `import tensorflow`, for a 1-epoch run and a full one.
- the headline study (7 cells x 3 seeds) end to end through `overfit run`, then `overfit
  report`: with the default worker count and with one worker; each worker's peak memory.
- the same study as Ray tasks (`--executor ray`, a Ray started here; skipped without the
  `ray` extra) and in the process pool against a real tracking server (`overfit server` on a
  loopback port); their per-epoch metrics, and the 1-worker run's, are compared with the
  default run's, point by point: accuracies that differ, and the largest absolute and relative
  difference of the losses, penalty and weight norm (the same thread count gives the same
  bits; another thread count may round differently, and training carries that on).
- the report over a synthetic 200-run x 200-epoch store (`bench/report_bench.py`), and
  `suite.results`' three frames over it (the curves of every per-epoch metric: target < 5 s).
- search (`bench/search_bench.py`): does a search that learns pay? experiments/hparam_search's
  question by random search and by TPE with Hyperband pruning (experiments/hparam_tpe.yaml),
  60 trials each, search seeds 0, 1 and 2, one worker, bundled data as the study files have
  it: best validation accuracy, epochs trained, and the epochs TPE + Hyperband needs to come
  within 0.01 of random search's best (gate: a third of random's epochs). Also written to
  `bench/results/search.json`.

Data: `../shared/data/mnist.npz` when it is there (the official 10,000-image test set), else
the bundled subset (2,000 held-out test images), so absolute times differ between the two.
Timings on a shared machine drift by tens of percent from minute to minute: compare the
ratios, which are measured side by side. The table prints and is written with everything else
to `bench/results/bench-<time>.json`.

Usage: python bench/bench.py [--skip study1,ray,server,naive,report,...] (BENCH_EPOCHS=N for short runs)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import cures_bench  # noqa: E402
import model_bench  # noqa: E402
import report_bench  # noqa: E402
import search_bench  # noqa: E402
import startup_bench  # noqa: E402

from suite.tracking import git_commit  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "mnist.npz"
SECTIONS = (
    "inprocess",
    "cnn",
    "cures",
    "logging",
    "model",
    "cli",
    "startup",
    "naive",
    "study",
    "study1",
    "ray",
    "server",
    "report",
    "search",
)
TRIES = 3
HEADLINE_RUNS = 21  # the headline study: 7 cells x 3 seeds


def forward_flops(sizes: list[int]) -> int:
    """Multiply-adds x 2 of one image through the dense layers (biases and activations,
    a few percent, left out)."""
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def run_flops(config: Any, n_train: int, n_eval: int) -> float:
    """A run's arithmetic: every update's forward and backward pass (about 3 forward passes)
    over its minibatch, and every epoch's forward pass over the evaluation rows."""
    from suite.spec import steps_per_epoch

    spec = config.train
    per_image = forward_flops([784, *config.model.hidden, 10])
    steps = spec.steps_per_epoch or steps_per_epoch(n_train, spec.batch_size)
    training = spec.epochs * steps * spec.batch_size * 3 * per_image
    evaluation = spec.epochs * n_eval * per_image
    return float(training + evaluation)


def best_gflops(compiled: Any, flops: float, tries: int, calls: int) -> float:
    """Best GFLOP/s of a compiled function doing `flops` per call: `calls` calls timed
    together, `tries` times (after one call that compiles it)."""
    compiled()
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        for _ in range(calls):
            compiled()
        best = max(best, flops / ((time.perf_counter() - start) / calls) / 1e9)
    return best


def matmul_peak(rows: int, tries: int = 5) -> float:
    """Best GFLOP/s of a float32 (rows x 784) @ (784 x 100) matmul in a compiled function."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((rows, 784), dtype=np.float32))
    w = tf.constant(rng.normal(0, 0.05, (784, 100)).astype(np.float32))
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(x, w)))
    return best_gflops(product, 2 * rows * 784 * 100, tries, 20)


def cnn_flops(
    config: Any, image: tuple[int, int], n_train: int, n_eval: int
) -> tuple[float, float]:
    """A CNN run's arithmetic, (in its convolutions, in its dense layers), counted as
    `run_flops` counts an MLP's: 3 forward passes per trained image, 1 per evaluated one."""
    from suite.spec import conv_output_sizes, steps_per_epoch

    model, spec = config.model, config.train
    conv, channels, (height, width) = 0, 1, image
    for layer, (out_h, out_w) in zip(model.conv, conv_output_sizes(model, image), strict=True):
        before_pool = (out_h * layer.pool, out_w * layer.pool)
        conv += 2 * before_pool[0] * before_pool[1] * layer.filters * layer.kernel**2 * channels
        channels, (height, width) = layer.filters, (out_h, out_w)
    dense = forward_flops([height * width * channels, *model.hidden, 10])
    steps = spec.steps_per_epoch or steps_per_epoch(n_train, spec.batch_size)
    images = spec.epochs * (steps * spec.batch_size * 3 + n_eval)
    return float(images * conv), float(images * dense)


def conv_peak(rows: int, tries: int = 5) -> float:
    """Best GFLOP/s of the SimpleConvNet's convolution (30 filters of 5x5 over 28x28 images)
    on `rows` images in a compiled function."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((rows, 28, 28, 1), dtype=np.float32))
    w = tf.constant(rng.normal(0, 0.05, (5, 5, 1, 30)).astype(np.float32))
    convolve = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "VALID")))
    return best_gflops(convolve, 2 * rows * 24 * 24 * 30 * 25, tries, 5)


def bench_cnn(data_path: Path | None, epochs: int) -> dict[str, Any]:
    """The CNN canonical run: experiments/cnn.yaml's `cnn` cell, seed 0, in this process,
    against its floor (its convolutions at the convolution's peak, its dense layers at the
    matmul's) and against naive Keras `fit` of the same network doing the same work."""
    from suite.train import train

    _, cell, split = canonical(data_path, epochs, "cnn", "cnn")
    n_train, n_eval = len(split.y_train), len(split.y_train) + len(split.y_test)
    conv_flops, dense_flops = cnn_flops(cell.config, (28, 28), n_train, n_eval)
    first = train(cell.config, split, 0)
    runs, conv_peaks, matmul_peaks = [], [], []
    for _ in range(TRIES):
        conv_peaks.append(conv_peak(n_eval))
        matmul_peaks.append(matmul_peak(n_eval))
        runs.append(train(cell.config, split, 0).train_seconds)
    floor = conv_flops / (max(conv_peaks) * 1e9) + dense_flops / (max(matmul_peaks) * 1e9)
    return {
        "conv_flops": conv_flops,
        "dense_flops": dense_flops,
        "conv_peak_gflops": max(conv_peaks),
        "conv_peaks_gflops": conv_peaks,
        **against_floor(first, runs, floor),
    }


def against_floor(first: Any, runs: list[float], floor: float) -> dict[str, Any]:
    """A canonical run's timings beside its floor: the first run (`first`, a History, compiling
    included), the best of the rest (`runs`, seconds) and its ratio to the floor."""
    return {
        "floor_seconds": floor,
        "first_seconds": first.train_seconds,
        "seconds": min(runs),
        "all_seconds": runs,
        "vs_floor": min(runs) / floor,
        "final_test_accuracy": first.metrics["test_accuracy"][-1],
    }


def canonical(
    data_path: Path | None,
    epochs: int,
    study_name: str = "overfitting",
    cell_name: str = "baseline",
) -> tuple[Any, Any, Any]:
    """A study cut down to its canonical run's cell (the headline's `baseline` unless told),
    that cell, and its data."""
    from suite import data
    from suite.study import load_study

    overrides: dict[str, Any] = {"train.epochs": epochs}
    if data_path:
        overrides["data.path"] = str(data_path)
    study = load_study(ROOT / "experiments" / f"{study_name}.yaml", overrides).select([cell_name])
    (cell,) = study.cells
    split = data.make_split(**cell.config.data.model_dump(), seed=0)
    return study, cell, split


def bench_inprocess(data_path: Path | None, epochs: int) -> dict[str, Any]:
    """Canonical run in this process, each try next to a matmul peak measurement."""
    from suite.train import train

    _, cell, split = canonical(data_path, epochs)
    n_train, n_eval = len(split.y_train), len(split.y_train) + len(split.y_test)
    flops = run_flops(cell.config, n_train, n_eval)
    first = train(cell.config, split, 0)
    runs, peaks = [], []
    for _ in range(TRIES):
        peaks.append(matmul_peak(n_eval))
        runs.append(train(cell.config, split, 0).train_seconds)
    peak = max(peaks)
    floor = flops / (peak * 1e9)
    return {
        "flops": flops,
        "matmul_peak_gflops": peak,
        "matmul_peaks_gflops": peaks,
        **against_floor(first, runs, floor),
    }


def timed_tracker(uri: str) -> Any:
    """A Tracker that adds up the time spent in its calls (the outermost call only)."""
    from suite.tracking import Tracker

    class TimedTracker(Tracker):
        seconds = 0.0
        depth = 0

    def timing(name: str) -> Any:
        base = getattr(Tracker, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            start = time.perf_counter()
            try:
                return base(self, *args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - start

        return call

    for name in (
        "experiment_id",
        "runs",
        "start_run",
        "set_tags",
        "log_epochs",
        "log_confusion",
        "log_dict",
        "finish",
        "fail",
    ):
        setattr(TimedTracker, name, timing(name))
    return TimedTracker(uri)


def bench_logging(data_path: Path | None, epochs: int) -> dict[str, Any]:
    """The canonical run through the runner, logging to a sqlite store: the time spent in
    MLflow calls (planning, the run's creation, params, config, epochs, confusion matrix,
    final metrics), against the whole run; also the run with and without the runner,
    alternated (a difference of two noisy times, for reference)."""
    from suite.runner import run_study
    from suite.train import train

    study, cell, split = canonical(data_path, epochs)
    logged, alone, in_mlflow = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tracker = timed_tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        run_study(study, tracker, seeds=(0,), workers=1)  # store made, program compiled
        for _ in range(TRIES):
            start = time.perf_counter()
            train(cell.config, split, 0)
            alone.append(time.perf_counter() - start)
            tracker.seconds = 0.0
            start = time.perf_counter()
            assert run_study(study, tracker, seeds=(0,), rerun=True, workers=1).ok
            logged.append(time.perf_counter() - start)
            in_mlflow.append(tracker.seconds)
    fractions = [m / total for m, total in zip(in_mlflow, logged, strict=True)]
    return {
        "mlflow_seconds": in_mlflow,
        "run_seconds": logged,
        "overhead_seconds": statistics.median(in_mlflow),
        "overhead_fraction": statistics.median(fractions),
        "alone_seconds": alone,
        "difference_seconds": statistics.median(logged) - statistics.median(alone),
    }


def timed(
    command: list[str], env: dict[str, str], cwd: Path
) -> tuple[float, str, dict[int, float]]:
    """Run a command; its wall time, stdout, and the peak memory (MB) of each process it
    started (Linux: read from /proc while it runs)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peaks: dict[int, float] = {}
    while process.poll() is None:
        for pid in _children(process.pid):
            peaks[pid] = max(peaks.get(pid, 0.0), _peak_mb(pid))
        time.sleep(0.5)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode not in (0,):
        sys.exit(f"bench: {' '.join(command[:4])} failed:\n{stdout}\n{stderr}")
    return seconds, stdout, peaks


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.parent.name))
    return out


def _peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


STARTED = time.perf_counter()


def study_args(epochs: int, data_set: list[str]) -> list[str]:
    return ["--set", f"train.epochs={epochs}", *data_set]


def scale_out(
    record: dict[str, Any], skip: set[str], work: Path, env: dict[str, str], run: list[str]
) -> None:
    """The headline study as Ray tasks and against a tracking server; each run's per-epoch
    metrics, and the 1-worker run's, against the default run's (`work/study/mlflow.db`)."""
    import importlib.util

    from suite.metrics import EPOCH_METRICS

    stores: dict[str, str] = {}
    if (work / "study1" / "mlflow.db").is_file():  # 1 worker: every CPU's threads in one run
        stores["study1"] = f"sqlite:///{work / 'study1' / 'mlflow.db'}"
    if "ray" not in skip and importlib.util.find_spec("ray") is None:
        print("bench: ray is not installed (make setup-ray): the Ray row is skipped")
        skip = skip | {"ray"}
    if "ray" not in skip:
        step("headline study as Ray tasks (a Ray started here), run only")
        folder = work / "ray"
        folder.mkdir()
        seconds, output, _ = timed([*run, "--executor", "ray"], env, folder)
        record["ray"] = {"run_seconds": seconds, "summary": _summary(output)}
        stores["ray"] = f"sqlite:///{folder / 'mlflow.db'}"
    if "server" not in skip:
        step("headline study, default workers, against a tracking server, run only")
        folder = work / "server"
        folder.mkdir()
        with _server(folder, env) as uri:
            seconds, output, _ = timed([*run, "--tracking-uri", uri], env, folder)
            record["server"] = {"run_seconds": seconds, "summary": _summary(output)}
            stores["server"] = uri
            if (work / "study" / "mlflow.db").is_file():
                stores["study"] = f"sqlite:///{work / 'study' / 'mlflow.db'}"
                record["agreement"] = _compare(stores, list(EPOCH_METRICS))
    if "server" in skip and stores and (work / "study" / "mlflow.db").is_file():
        stores["study"] = f"sqlite:///{work / 'study' / 'mlflow.db'}"
        record["agreement"] = _compare(stores, list(EPOCH_METRICS))


def _summary(output: str) -> str:
    return next((x for x in output.splitlines() if " finished, " in x), "")


class _server:
    """`overfit server` on a free loopback port over a fresh store in `folder`."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env

    def __enter__(self) -> str:
        import socket
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "suite", "server", "--port", str(port)]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - the server's, until exit
        self.process = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        uri = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    return uri
            except OSError:
                time.sleep(0.2)
        sys.exit(f"bench: the tracking server did not start: {self.folder / 'server.log'}")

    def __exit__(self, *exc: object) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def _compare(stores: dict[str, str], metrics: list[str]) -> dict[str, Any]:
    """Every store's per-epoch metrics against the default run's, point by point: bit for bit
    the same?, how many accuracy points (counts / n) differ, and the largest absolute and
    relative difference of the other metrics (losses, penalty, weight norm)."""
    from suite.tracking import Tracker

    def points(uri: str) -> dict[tuple[str, int, str], list[tuple[int, float]]]:
        tracker = Tracker(uri)
        experiment_id = tracker.experiment_id("overfitting", create=False)
        assert experiment_id is not None
        records = {r.run_id: r for r in tracker.runs(experiment_id) if r.status == "FINISHED"}
        out: dict[tuple[str, int, str], list[tuple[int, float]]] = {}
        for run_id, metric, step_, value in tracker.histories(list(records), metrics, 200):
            record = records[run_id]
            out.setdefault((record.cell_hash, record.seed, metric), []).append((step_, value))
        return {k: sorted(v) for k, v in out.items()}

    reference = points(stores.pop("study"))
    found: dict[str, Any] = {"points": sum(len(v) for v in reference.values())}
    for name, uri in stores.items():
        other = points(uri)
        counts = {"accuracy_points": 0, "accuracies_differ": 0, "max_abs": 0.0, "max_rel": 0.0}
        counts["missing"] = 0
        for key, want in reference.items():
            got = dict(other.get(key, []))
            counted = "accuracy" in key[2] or key[2] == "gap"
            for step_, a in want:
                b = got.get(step_, math.nan)
                if math.isnan(b) and not math.isnan(a):
                    counts["missing"] += 1
                elif counted:
                    counts["accuracy_points"] += 1
                    counts["accuracies_differ"] += a != b
                else:
                    counts["max_abs"] = max(counts["max_abs"], abs(a - b))
                    counts["max_rel"] = max(counts["max_rel"], abs(a - b) / max(abs(a), 1e-12))
        found[name] = {"identical": other == reference, **counts}
    return found


def step(what: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {what}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help=f"sections to leave out: {','.join(SECTIONS)}")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        sys.exit(f"bench: --skip: unknown section(s) {', '.join(sorted(unknown))}")
    epochs = int(os.environ.get("BENCH_EPOCHS", "200"))
    data_path = SHARED if SHARED.is_file() else None
    env = {**os.environ, "SUITE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("SUITE_MNIST_PATH", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    data_set = ["--set", f"data.path={data_path}"] if data_path else []
    overfit = [sys.executable, "-m", "suite"]
    record: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "epochs": epochs,
        "data": str(data_path) if data_path else "bundled",
    }
    print(f"bench: {epochs} epochs, data {record['data']}; this takes several minutes")

    if "inprocess" not in skip:
        step("canonical run in process, against the matmul peak")
        record["inprocess"] = bench_inprocess(data_path, epochs)
    if "cnn" not in skip:
        step("CNN canonical run in process, against its floor and naive Keras fit")
        record["cnn"] = bench_cnn(data_path, epochs)
        command = [sys.executable, str(ROOT / "bench/naive_fit.py")]
        command += [str(data_path) if data_path else "--bundled", str(epochs), "--cnn"]
        seconds, output, _ = timed(command, {**env, "PYTHONPATH": str(ROOT)}, ROOT)
        found = re.search(r"([0-9.]+) s in process", output)
        record["cnn"]["naive_seconds"] = seconds
        record["cnn"]["naive_in_process_seconds"] = float(found.group(1)) if found else None
    if "cures" not in skip:
        step("cures: augmentation's cost and early stopping's saving (cures study)")
        record["cures"] = {
            "augmentation": cures_bench.augmentation(data_path, epochs),
            "early_stopping": cures_bench.early_stopping(data_path, epochs),
        }
    if "logging" not in skip:
        step("logging cost: the run with and without MLflow")
        record["logging"] = bench_logging(data_path, epochs)
    if "model" not in skip:
        step("log_model's cost: the run with and without logging its network")
        record["model"] = model_bench.measure(data_path, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env["KERAS_HOME"] = str(work / "keras-home")
        study = str(ROOT / "experiments" / "overfitting.yaml")
        if "cli" not in skip:
            step("canonical run through the CLI")
            command = [*overfit, "run", study, "--only", "baseline", "--seeds", "0"]
            command += ["--set", f"train.epochs={epochs}", *data_set]
            (work / "cli").mkdir()
            record["cli_seconds"] = timed(command, env, work / "cli")[0]
        if "startup" not in skip:
            step("the CLI's start-up: one run through the CLI, in process, and the import")
            record["startup"] = startup_bench.main(epochs, data_path, env, work)
        if "naive" not in skip:
            step("naive Keras fit, same work")
            command = [sys.executable, str(ROOT / "bench/naive_fit.py")]
            command += [str(data_path) if data_path else "--bundled", str(epochs)]
            seconds, output, _ = timed(command, {**env, "PYTHONPATH": str(ROOT)}, work)
            found = re.search(r"([0-9.]+) s in process", output)
            record["naive"] = {
                "seconds": seconds,
                "in_process_seconds": float(found.group(1)) if found else None,
                "output": output.strip(),
            }
        for section, workers in (("study", None), ("study1", 1)):
            if section in skip:
                continue
            step(f"headline study, {'1 worker' if workers else 'default workers'}, run + report")
            folder = work / section
            folder.mkdir()
            command = [*overfit, "run", study, *study_args(epochs, data_set)]
            command += ["--workers", str(workers)] if workers else []
            run_seconds, output, peaks = timed(command, env, folder)
            report = [*overfit, "report", study, "--set", f"train.epochs={epochs}", *data_set]
            report_seconds = timed(report, env, folder)[0]
            record[section] = {
                "workers": workers or "default",
                "run_seconds": run_seconds,
                "report_seconds": report_seconds,
                "total_seconds": run_seconds + report_seconds,
                "summary": next((x for x in output.splitlines() if " finished, " in x), ""),
                # the worker processes (the small helper processes multiprocessing starts aside)
                "worker_peak_mb": sorted((p for p in peaks.values() if p > 100), reverse=True),
            }
        scale_out(record, skip, work, env, [*overfit, "run", study, *study_args(epochs, data_set)])
    if "report" not in skip:
        step("report over a synthetic 200-run store")
        record["report"] = report_bench.main()
    if "search" not in skip:
        step("search: random against TPE + Hyperband, 60 trials x 3 search seeds, 1 worker")
        record["search"] = search_bench.measure()
        search_bench.save(record["search"])

    rows = table(record)
    record["table"] = rows
    print()
    for name, value, note in rows:
        print(f"  {name:<52} {value:>10}  {note}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"written: {path.relative_to(ROOT)}")


def table(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The printed table: (what, value, note) rows of what was measured."""
    rows: list[tuple[str, str, str]] = []
    inproc = record.get("inprocess")
    if inproc:
        rows.append(
            (
                "matmul peak at the evaluation's shape",
                f"{inproc['matmul_peak_gflops']:.0f} GFLOP/s",
                f"best of {len(inproc['matmul_peaks_gflops'])}",
            )
        )
        rows.append(
            (
                "floor of a canonical run",
                f"{inproc['floor_seconds']:.2f} s",
                f"{inproc['flops'] / 1e12:.3f} TFLOP at that peak",
            )
        )
        rows.append(
            (
                "canonical run in process (compiled before)",
                f"{inproc['seconds']:.2f} s",
                f"{inproc['vs_floor']:.2f}x the floor (target <= 1.5x)",
            )
        )
        rows.append(
            (
                "  first run in a process (compiling included)",
                f"{inproc['first_seconds']:.2f} s",
                "",
            )
        )
    cnn = record.get("cnn")
    if cnn:
        rows.append(
            (
                "conv peak (30 x 5x5 over the evaluation's images)",
                f"{cnn['conv_peak_gflops']:.0f} GFLOP/s",
                f"best of {len(cnn['conv_peaks_gflops'])}",
            )
        )
        total = (cnn["conv_flops"] + cnn["dense_flops"]) / 1e12
        rows.append(
            (
                "floor of a CNN canonical run (SimpleConvNet)",
                f"{cnn['floor_seconds']:.2f} s",
                f"{total:.3f} TFLOP, {cnn['conv_flops'] / 1e12:.3f} in convolutions",
            )
        )
        rows.append(
            (
                "CNN canonical run in process (compiled before)",
                f"{cnn['seconds']:.2f} s",
                f"{cnn['vs_floor']:.2f}x the floor",
            )
        )
        rows.append(
            (
                "  first CNN run in a process (compiling included)",
                f"{cnn['first_seconds']:.2f} s",
                "",
            )
        )
        if cnn.get("naive_in_process_seconds"):
            ratio = cnn["naive_in_process_seconds"] / cnn["first_seconds"]
            rows.append(
                (
                    "naive Keras fit of the CNN, same work (in process)",
                    f"{cnn['naive_in_process_seconds']:.1f} s",
                    f"{ratio:.1f}x the first in-process CNN run",
                )
            )
    rows += cures_bench.rows(record.get("cures") or {})
    logging = record.get("logging")
    if logging:
        rows.append(
            (
                "MLflow logging in a run (sqlite, time in its calls)",
                f"{logging['overhead_seconds']:.2f} s",
                f"{100 * logging['overhead_fraction']:.1f}% of the run (target < 5%)",
            )
        )
    rows += model_bench.rows(record.get("model") or {})
    naive = record.get("naive")
    cli = record.get("cli_seconds")
    if cli:
        rows.append(("canonical run through the CLI (start to exit)", f"{cli:.1f} s", ""))
    rows += startup_bench.rows(record.get("startup") or [])
    if naive:
        note = f"{naive['seconds'] / cli:.1f}x the CLI run (target >= 10x)" if cli else ""
        rows.append(
            ("naive Keras fit, same work (start to exit)", f"{naive['seconds']:.1f} s", note)
        )
        if naive.get("in_process_seconds") and inproc:
            ratio = naive["in_process_seconds"] / inproc["first_seconds"]
            rows.append(
                (
                    "  of which in process (TensorFlow imported)",
                    f"{naive['in_process_seconds']:.1f} s",
                    f"{ratio:.1f}x the first in-process run",
                )
            )
    for section in ("study", "study1"):
        study = record.get(section)
        if not study:
            continue
        label = "default workers" if study["workers"] == "default" else "1 worker"
        memory = study["worker_peak_mb"]
        note = f"run {study['run_seconds']:.1f} s + report {study['report_seconds']:.1f} s"
        if section == "study":
            note += " (target <= 90 s)"
        rows.append(
            (f"headline study 7x3, {label}, run + report", f"{study['total_seconds']:.1f} s", note)
        )
        if section == "study" and memory:
            rows.append(
                (
                    "  peak memory per worker process",
                    f"{memory[0]:.0f} MB",
                    f"{len(memory)} processes",
                )
            )
        if section == "study" and inproc:
            # every run's arithmetic at the peak of the whole machine (the peak above uses
            # every CPU): no worker count finishes the study's runs sooner
            floor = HEADLINE_RUNS * inproc["floor_seconds"]
            rows.append(
                (
                    "  floor of the study's 21 runs",
                    f"{floor:.1f} s",
                    f"the runs took {study['run_seconds'] / floor:.2f}x that",
                )
            )
    if record.get("study") and record.get("study1"):
        ratio = record["study1"]["run_seconds"] / record["study"]["run_seconds"]
        rows.append(("  default workers vs 1 worker (run)", f"{ratio:.2f}x", "faster"))
    pool = record.get("study")
    if record.get("ray"):
        seconds = record["ray"]["run_seconds"]
        note = f"{seconds / pool['run_seconds']:.2f}x the process pool's run" if pool else ""
        rows.append(("headline study as Ray tasks (local Ray), run", f"{seconds:.1f} s", note))
    if record.get("server"):
        seconds = record["server"]["run_seconds"]
        note = f"{seconds / pool['run_seconds']:.2f}x the run into sqlite" if pool else ""
        rows.append(
            ("headline study, workers, into a tracking server, run", f"{seconds:.1f} s", note)
        )
    agreement = record.get("agreement") or {}
    labels = {"study1": "1 worker", "ray": "Ray tasks", "server": "server"}
    for name, label in labels.items():
        found = agreement.get(name)
        if not found:
            continue
        value = "bit-equal" if found["identical"] else f"rel {found['max_rel']:.1g}"
        if found["missing"]:
            value = f"{found['missing']} missing"
        note = (
            f"{found['accuracies_differ']} of {found['accuracy_points']} accuracy points differ; "
            f"other metrics: max abs {found['max_abs']:.2g}, max rel {found['max_rel']:.2g}"
        )
        rows.append((f"  per-epoch metrics, {label} vs the process pool", value, note))
    report = record.get("report")
    if report:
        rows.append(
            (
                f"report over {report['runs']} runs x 200 epochs",
                f"{report['report_seconds']:.1f} s",
                f"store written in {report['store_seconds']:.0f} s",
            )
        )
        if "results_curves_seconds" in report:
            rows.append(
                (
                    f"suite.results.curves, {report['runs']} runs x 200 epochs, every metric",
                    f"{report['results_curves_seconds']:.1f} s",
                    f"{report['results_curves_rows']:,} rows (target < 5 s); runs "
                    f"{report['results_runs_seconds']:.1f} s, summary "
                    f"{report['results_summary_seconds']:.1f} s",
                )
            )
    rows += search_bench.rows(record.get("search") or {})
    return rows


if __name__ == "__main__":
    main()
