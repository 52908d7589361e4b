"""Several `overfit run` on a store that does not exist yet, started at the same moment, with
`overfit ui` and `overfit list` beside them: no traceback, every run trained once, the store
usable after. Slow: each invocation imports TensorFlow and MLflow (about a minute with four)."""

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
