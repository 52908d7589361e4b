"""`overfit ui` serves the runs of the store `overfit run` wrote: a real MLflow server on loopback."""

from __future__ import annotations

import json
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

from suite.metrics import EPOCH_METRICS
from suite.runner import run_study
from suite.spec import load_study
from suite.tracking import Tracker

TINY = """
name: tiny-ui
base:
  data: {train_size: 40, test_size: 100}
  model: {hidden: [8]}
  train: {batch_size: 20, epochs: 2}
seeds: [0]
variants:
  baseline: {}
  weight_decay: {model: {weight_decay: 0.1}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(port: int, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


@pytest.mark.slow  # the MLflow server takes half a minute to come up on 2 cores
def test_ui_serves_the_study_runs(
    write_study: Callable[[str], Path], tracking_uri: str, tmp_path: Path
) -> None:
    assert run_study(load_study(write_study(TINY)), Tracker(tracking_uri)).ok
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "suite", "ui", "--tracking-uri", tracking_uri, "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the server's workers go down with the group
    )
    try:
        deadline = time.monotonic() + 120
        experiment = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                experiment = api(port, "experiments/get-by-name?experiment_name=tiny-ui")
                break
            except OSError:
                time.sleep(1)
        assert experiment is not None, "the UI did not come up"
        experiment_id = experiment["experiment"]["experiment_id"]  # type: ignore[index]
        runs = api(port, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
        cells = sorted(
            tag["value"]
            for run in runs  # type: ignore[attr-defined]
            for tag in run["data"]["tags"]
            if tag["key"] == "cell"
        )
        assert cells == ["baseline", "weight_decay"]
        run_id = runs[0]["info"]["run_id"]  # type: ignore[index]
        url = f"http://127.0.0.1:{port}/get-artifact?path=config.yaml&run_uuid={run_id}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"hidden:" in response.read()

        # the server's bulk history endpoint gives what the database holds
        run_ids = [run["info"]["run_id"] for run in runs]  # type: ignore[attr-defined]
        served = Tracker(f"http://127.0.0.1:{port}").histories(run_ids, EPOCH_METRICS)
        assert sorted(served) == sorted(Tracker(tracking_uri).histories(run_ids, EPOCH_METRICS))
        assert len(served) == len(run_ids) * len(EPOCH_METRICS) * 2
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
