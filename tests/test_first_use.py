"""Several `overfit run` on a store that does not exist yet, started at the same moment, with
`overfit ui` and `overfit list` beside them: no traceback, every run trained once, the store
usable after; and `overfit run` beside a plain MLflow client that creates or migrates the same
new store without the suite's lock. Slow: each invocation imports TensorFlow and MLflow (about
a minute with four)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from suite.tracking import Tracker

pytestmark = pytest.mark.slow

# how often each delay of the plain-client race is tried (SUITE_RACE_REPEAT=6: 30 tries)
RACE_REPEAT = int(os.environ.get("SUITE_RACE_REPEAT", "1"))
# a plain client, as a notebook or a script has it: no lock, MLflow makes the store itself
PLAIN_CLIENT = """
import sys, time
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
calls = 0
while time.monotonic() < deadline:
    mlflow.search_runs(search_all_experiments=True)
    calls += 1
    time.sleep(0.2)
print(calls, "calls")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("invocations", [2, 4])
def test_invocations_at_once_on_a_new_store(
    invocations: int, write_study: Callable[[str], Path], tiny_study: str, tmp_path: Path
) -> None:
    study = write_study(tiny_study)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overfit = [sys.executable, "-m", "suite"]
    port = _free_port()
    commands = [[*overfit, "run", str(study), "--tracking-uri", uri]] * invocations
    commands += [
        [*overfit, "ui", "--tracking-uri", uri, "--port", str(port)],
        [*overfit, "list", "--tracking-uri", uri],
    ]
    processes = [  # each in its own session: the UI's server stops with its group
        subprocess.Popen(
            c, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        for c in commands
    ]
    *runs, ui, listing = processes
    try:
        outputs = [p.communicate(timeout=600) for p in [*runs, listing]]
        deadline = time.monotonic() + 120
        answered = False
        while time.monotonic() < deadline and ui.poll() is None and not answered:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    answered = True
            except OSError:
                time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui_out, ui_err = ui.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui_out, ui_err = ui.communicate(timeout=30)
    for process, (stdout, stderr) in zip([*runs, listing], outputs, strict=True):
        text = stdout.decode() + stderr.decode()
        assert process.returncode == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    assert answered, (ui_out + ui_err).decode()[-3000:]
    assert b"Traceback" not in ui_err, ui_err.decode()[-3000:]

    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id("tiny", create=False)
    assert experiment_id is not None
    records = tracker.runs(experiment_id)
    finished = [(r.cell_hash, r.seed) for r in records if r.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 4  # 2 cells x 2 seeds, each once
    assert not [r for r in records if r.status == "RUNNING"]
    after = subprocess.run(
        [*overfit, "list", "--tracking-uri", uri], capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0 and "tiny" in after.stdout, after.stderr


@pytest.mark.parametrize("repeat", range(RACE_REPEAT))
@pytest.mark.parametrize("delay", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_run_beside_a_plain_mlflow_client_on_a_new_store(
    delay: float, repeat: int, write_study: Callable[[str], Path], tiny_study: str, tmp_path: Path
) -> None:
    """A plain `mlflow.search_runs()` loop started `delay` seconds after `overfit run`, on a
    store neither has made: the run trains and `overfit` prints no traceback, whichever of
    the two makes the store."""
    study = write_study(tiny_study.replace("epochs: 3", "epochs: 1"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = subprocess.Popen(
        [sys.executable, "-m", "suite", "run", str(study), "--seeds", "0", "--only", "baseline"]
        + ["--tracking-uri", uri],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(delay)
    client = subprocess.Popen(
        [sys.executable, "-c", PLAIN_CLIENT, uri, "20"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = run.communicate(timeout=300)
    client.communicate(timeout=120)  # its own fate is MLflow's; the store must outlive it
    text = stdout.decode() + stderr.decode()
    assert run.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "1 finished, 0 skipped, 0 failed" in text, text[-3000:]
    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id("tiny", create=False)
    assert experiment_id is not None
    assert [r.status for r in tracker.runs(experiment_id)] == ["FINISHED"]
