"""The CLI's start-up bench row (`make bench`, section `startup`), measured in one invocation:
what one run through `overfit run` costs beyond the TensorFlow import and the run itself.

- `import tensorflow` alone: a bare `python -c "import tensorflow"`, process start to exit;
- the run in process: the headline's `baseline` cell, seed 0, through `suite.runner.run_study`
  into a new sqlite store, in a process that has imported everything before the clock starts
  (compiling and the store's creation included, as the CLI pays them);
- the run through the CLI: `overfit run experiments/overfitting.yaml --only baseline --seeds 0`
  into a new store, process start to exit, with its defaults (a single run trains in the
  `overfit` process);
- start-up = CLI - in process - import: Python's and the CLI's own start, MLflow's import, the
  study's loading and what the executor adds. Target: at most 1.5 s.

Each is measured for a 1-epoch run (the first thing a new user tries) and for the bench's
epochs. Each is one process, so a row carries a few tenths of a second of noise.

Usage: imported by bench/bench.py; `python bench/startup_bench.py [EPOCHS]` prints them alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "overfitting.yaml"
TARGET_SECONDS = 1.5

# the run in a process that imported everything first; prints its seconds
IN_PROCESS = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import suite.train  # noqa: F401  TensorFlow, as the CLI imports it before its clock
from suite.runner import run_study
from suite.study import load_study
from suite.tracking import Tracker

study = load_study(sys.argv[2], json.loads(sys.argv[3])).select(["baseline"])
tracker = Tracker("sqlite:///mlflow.db")
start = time.perf_counter()
result = run_study(study, tracker, seeds=(0,), workers=1)
seconds = time.perf_counter() - start
assert result.ok and result.count("finished") == 1, "the run did not finish"
print(f"{seconds:.4f}")
"""


def _wall(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(command[:4])} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def measure(epochs: int, data_path: Path | None, env: dict[str, str], work: Path) -> dict[str, Any]:
    """The three times, and the start-up they leave, for a run of `epochs` epochs."""
    overrides: dict[str, Any] = {"train.epochs": epochs}
    sets = ["--set", f"train.epochs={epochs}"]
    if data_path:
        overrides["data.path"] = str(data_path)
        sets += ["--set", f"data.path={data_path}"]
    folders = {name: work / f"startup-{epochs}-{name}" for name in ("import", "inproc", "cli")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    imported, _ = _wall([sys.executable, "-c", "import tensorflow"], env, folders["import"])
    _, printed = _wall(
        [sys.executable, "-c", IN_PROCESS, str(ROOT), str(STUDY), json.dumps(overrides)],
        env,
        folders["inproc"],
    )
    in_process = float(printed.strip().splitlines()[-1])
    command = [sys.executable, "-m", "suite", "run", str(STUDY), "--only", "baseline"]
    cli, _ = _wall([*command, "--seeds", "0", *sets], env, folders["cli"])
    return {
        "epochs": epochs,
        "import_tensorflow_seconds": imported,
        "in_process_seconds": in_process,
        "cli_seconds": cli,
        "startup_seconds": cli - in_process - imported,
    }


def main(
    epochs: int, data_path: Path | None, env: dict[str, str], work: Path
) -> list[dict[str, Any]]:
    """The start-up measured for a 1-epoch run and a run of `epochs` epochs."""
    return [measure(n, data_path, env, work) for n in sorted({1, epochs})]


def rows(record: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The bench table's rows for the start-up."""
    out: list[tuple[str, str, str]] = []
    for m in record:
        out.append(
            (
                f"CLI start-up, a {m['epochs']}-epoch run (CLI - in process - import)",
                f"{m['startup_seconds']:.2f} s",
                f"CLI {m['cli_seconds']:.1f} s = import {m['import_tensorflow_seconds']:.1f} s "
                f"+ run {m['in_process_seconds']:.1f} s + the rest "
                f"(target <= {TARGET_SECONDS} s)",
            )
        )
    return out


if __name__ == "__main__":
    shared = ROOT.parent / "shared" / "data" / "mnist.npz"
    run_env = {**os.environ, "SUITE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run_env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory() as tmp:
        run_env["KERAS_HOME"] = str(Path(tmp) / "keras-home")
        measured = main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 200,
            shared if shared.is_file() else None,
            run_env,
            Path(tmp),
        )
    for name, value, note in rows(measured):
        print(f"  {name:<60} {value:>8}  {note}")
