"""Shared fixtures. Tests run offline: nothing downloads, and TensorFlow stays quiet.

The environment is set at import, before any test module imports TensorFlow or `suite.data`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile

os.environ["SUITE_OFFLINE"] = "1"  # never try Keras' download; fall back to the bundled subset
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
# a developer's own MNIST must not change what the offline tests see: no SUITE_MNIST_PATH, and
# Keras' cache moved to an empty folder (subprocesses of the tests inherit both)
os.environ.pop("SUITE_MNIST_PATH", None)
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="keras-home-")
atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], ignore_errors=True)

from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from suite.study import Study

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """`../shared/data/mnist.npz` (10k train + the official test set); skips when absent."""
    path = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found (only the development machines have ../shared)")
    return path


@pytest.fixture
def bundled_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `dataset: mnist` without a path resolve to the bundled subset on any machine.

    Hides a Keras cache the developer may have in `~/.keras/datasets`.
    """
    from suite import data

    monkeypatch.setattr(data, "KERAS_CACHE", Path("/nonexistent/keras/datasets/mnist.npz"))


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[[str], Path]:
    """A function that writes YAML text to a fresh study file and returns its path."""
    counter = iter(range(1_000_000))

    def write(text: str, name: str | None = None) -> Path:
        path = tmp_path / (name or f"study_{next(counter)}.yaml")
        path.write_text(text)
        return path

    return write


TINY_STUDY = """
name: tiny
base:
  data: {train_size: 40, test_size: 100}
  model: {hidden: [8]}
  train: {batch_size: 20, epochs: 3}
seeds: [0, 1]
variants:
  baseline: {}
  weight_decay: {model: {weight_decay: 0.1}}
"""


@pytest.fixture
def tiny_study() -> str:
    """A study of 2 cells x 2 seeds x 3 epochs on 40 images: seconds end to end."""
    return TINY_STUDY


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated sqlite MLflow store, built once per session.

    Creating a store runs MLflow's schema migrations (seconds); copying the file does not.
    """
    from suite.tracking import Tracker

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    Tracker(f"sqlite:///{path}").client.search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, _store_template: Path) -> str:
    """A fresh, real sqlite MLflow store in this test's temporary folder."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(_store_template, path)
    return f"sqlite:///{path}"


# weight_decay comes first: study order differs from name order and from the ranking
REPORT_STUDY = """\
# A tiny study for the report tests: 2 cells x 2 seeds x 3 epochs, seconds.
name: tiny-report
description: Tiny baseline against weight decay, for the report tests.
base:
  data: {dataset: mnist, train_size: 60, test_size: 200}
  model: {hidden: [16, 16]}
  train: {batch_size: 20, epochs: 3}
seeds: [0, 1]
variants:
  weight_decay: {model: {weight_decay: 0.1}}
  baseline: {}
reference:
  baseline: {final_test_accuracy: [0.74, 0.77]}
"""
REPORT_FAILURE = "diverged at epoch 2: train_loss is nan"


@dataclass(frozen=True)
class ReportStore:
    uri: str
    study_path: Path
    study: Study


@pytest.fixture(scope="session")
def report_store(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> ReportStore:
    """`REPORT_STUDY` run through the real runner, plus one FAILED run (baseline, seed 2)."""
    from suite.runner import run_study
    from suite.study import load_study
    from suite.tracking import Tracker

    root = tmp_path_factory.mktemp("report")
    path = root / "tiny.yaml"
    path.write_text(REPORT_STUDY)
    study = load_study(path)
    shutil.copyfile(_store_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri)
    assert run_study(study, tracker).ok
    experiment_id = tracker.experiment_id(study.name, create=False)
    assert experiment_id is not None
    baseline = next(c for c in study.cells if c.name == "baseline")
    run_id = tracker.start_run(experiment_id, study.name, baseline, 2, "test")
    tracker.fail(run_id, REPORT_FAILURE)
    return ReportStore(uri, path, study)


@pytest.fixture(scope="session")
def report_dir(report_store: ReportStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of `report_store`, written once per session."""
    from suite.report import write_report
    from suite.tracking import Tracker

    out = tmp_path_factory.mktemp("out") / "tiny"
    paths = write_report(
        report_store.study.name, Tracker(report_store.uri), out, report_store.study
    )
    assert paths.folder == out
    return out


class MlflowServer:
    """A real `mlflow server` (started with `overfit server`) on a free loopback port, over a
    sqlite store and an artifact folder in `root`; it can be killed and started again on the
    same port and store."""

    def __init__(self, root: Path, template: Path) -> None:
        import socket

        self.root = root
        self.db = root / "server.db"
        shutil.copyfile(template, self.db)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> None:
        import sys
        import time
        import urllib.request

        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - the server's
        command = [sys.executable, "-m", "suite", "server", "--port", str(self.port)]
        command += ["--backend-store-uri", f"sqlite:///{self.db}"]
        command += ["--artifacts-destination", str(self.root / "artifacts")]
        # its own process group: kill() ends the server's workers with it
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: see {log.name}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server not up after {timeout} s: see {log.name}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash: nothing is flushed or closed)."""
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def killer() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started: killed (whole groups) if the test ends early."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def mlflow_server(tmp_path: Path, _store_template: Path) -> Iterator[MlflowServer]:
    """A running tracking server for this test, killed at its end."""
    server = MlflowServer(tmp_path, _store_template)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- the same runs trained twice: what must match, and how closely --------------------------

# A matmul's sums run in an order set by TensorFlow's thread count and by the CPU's kernels
# (their blocking, their vector width). The same run with another thread count (1 worker or
# N: `--workers 1` trains in the calling process with every CPU, each of N workers with its
# share; a Ray task with `--cpus-per-run`) or on another CPU may round differently in the last
# bits, and training carries that on. Measured on the tests' 12-epoch studies, 1 against 2
# threads (TensorFlow's Eigen kernels) and AVX2 against AVX-512 kernels (oneDNN): losses,
# penalties and weight norms within 3.3e-7 relative, accuracies equal. (A batch-norm net
# trained with Adam is the exception: see `tests/test_pool.py`.) The same thread count running
# the same program on the same CPU gives the same bits: tests of that compare with `==`.
FLOAT_REL = 1e-5  # 30x the largest difference measured
FLOAT_ABS = 1e-6  # for values at or near 0 (a penalty of 0.0)
WALL_CLOCK = ("train_seconds",)  # never the same twice: not compared


def counted(metric: str) -> bool:
    """A metric computed from counts over whole sets (accuracies, gaps, the best epoch, the
    confusion matrix's macro scores): equal whenever the predictions are."""
    return "accuracy" in metric or "gap" in metric or metric.endswith(("_epoch", "_macro"))


def _points(value: Any) -> list[tuple[Any, float]]:
    values = value if isinstance(value, list) else [value]
    return [v if isinstance(v, tuple) else (None, v) for v in values]


def assert_same_metrics(
    expected: Mapping[Any, Any], actual: Mapping[Any, Any], ignore: tuple[str, ...] = WALL_CLOCK
) -> float:
    """The metrics of the same runs trained again with another thread count, in other
    processes, by another executor or logged to another store: the same keys and steps,
    `counted` metrics equal, every other one (losses, `reg_loss`, `weight_norm`) within
    `FLOAT_REL` relative or `FLOAT_ABS`. Returns the largest relative difference seen.

    Keys are metric names or tuples ending with one; values a number, or a list of numbers
    or of (step, value) points.
    """
    import math

    def name(key: Any) -> str:
        return key[-1] if isinstance(key, tuple) else key

    expected = {k: v for k, v in expected.items() if name(k) not in ignore}
    actual = {k: v for k, v in actual.items() if name(k) not in ignore}
    only = sorted(map(str, set(expected) ^ set(actual)))
    assert not only, f"logged by one side only: {only[:10]}"
    bad, worst = [], 0.0
    for key, value in expected.items():
        want, got = _points(value), _points(actual[key])
        assert [s for s, _ in want] == [s for s, _ in got], f"{key}: other steps"
        for (step, a), (_, b) in zip(want, got, strict=True):
            if math.isnan(a) and math.isnan(b):
                continue
            if counted(name(key)):
                same = a == b
            else:
                same = math.isclose(a, b, rel_tol=FLOAT_REL, abs_tol=FLOAT_ABS)
                worst = max(worst, abs(a - b) / max(abs(a), abs(b), FLOAT_ABS))
            if not same:
                bad.append(f"{key} step {step}: {a!r} against {b!r}")
    assert not bad, (
        f"{len(bad)} points differ (counted metrics must be equal, the others within "
        f"rel {FLOAT_REL} or abs {FLOAT_ABS}):\n  " + "\n  ".join(bad[:10])
    )
    return worst


def run_in_workers(
    study: Study, tmp_path: Path, template: Path, workers: tuple[int, ...] = (1, 2)
) -> dict[int, tuple[Any, Any]]:
    """`study` run with each worker count into a store of its own (a copy of `template`):
    {workers: (its Tracker, the StudyResult)}."""
    from suite.runner import run_study
    from suite.tracking import Tracker

    out = {}
    for n in workers:
        db = tmp_path / f"workers{n}.db"
        db.write_bytes(template.read_bytes())
        tracker = Tracker(f"sqlite:///{db}")
        out[n] = (tracker, run_study(study, tracker, workers=n))
    return out


def histories(tracker: Any, study: str) -> dict[tuple[str, int, str], list[tuple[int, float]]]:
    """Every metric of every FINISHED run of `study`, by (cell hash, seed, metric): its
    (step, value) points."""
    experiment_id = tracker.experiment_id(study, create=False)
    assert experiment_id is not None
    out = {}
    for record in tracker.runs(experiment_id):
        if record.status != "FINISHED":
            continue
        for name in tracker.client.get_run(record.run_id).data.metrics:
            points = tracker.client.get_metric_history(record.run_id, name)
            out[(record.cell_hash, record.seed, name)] = sorted((p.step, p.value) for p in points)
    return out
