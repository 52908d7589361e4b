"""`overfit ui` serves the runs of the store `overfit run` wrote: a real MLflow server on loopback,
started lean, each study's experiment tagged for the UI, metrics logged as the UI shows them.
(The UI itself, in Chromium: tests/test_browser.py.)"""

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
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import suite.tracking
from suite import cli, servers
from suite.metrics import EPOCH_METRICS
from suite.runner import run_study
from suite.study import load_study
from suite.tracking import Tracker
from suite.ui_views import (
    EXPERIMENT_KIND_TAG,
    UI_CELLS_VIEW,
    UI_EXPERIMENT_TAGS,
    UI_RUNS_VIEW,
    UI_VIEW_TAG,
    runs_url,
)

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


def test_ui_and_server_start_mlflow_lean_over_a_prepared_store(
    monkeypatch: pytest.MonkeyPatch, tracking_uri: str, tmp_path: Path
) -> None:
    """One helper makes both command lines: one server process (`ui` always, `server` for
    sqlite), MLflow's job runner off; the sqlite store is prepared first; `ui` prints each
    study's runs address once the server answers."""
    experiment_id = Tracker(tracking_uri).experiment_id("tiny-ui")
    assert experiment_id is not None
    started: list[tuple[list[str], dict[str, str]]] = []
    events: list[str] = []  # prepare and serve, in order

    def serve(
        command: list[str],
        env: dict[str, str],
        host: str,
        port: int,
        ready: Callable[[float], None],
        starting: Callable[[], None] | None = None,
    ) -> None:
        started.append((command, env))
        events.append(f"serve {command[3]}")
        if starting is not None:
            starting()
        ready(9.0)

    prepare = suite.tracking.prepare_store

    def prepare_and_note(uri: str, open_client: Callable[[], Any] | None = None) -> Any:
        events.append("prepare" if uri == tracking_uri else uri)
        return prepare(uri, open_client)

    monkeypatch.setattr(servers, "serve", serve)
    monkeypatch.setattr(suite.tracking, "prepare_store", prepare_and_note)
    runner = CliRunner()
    port = free_port()
    ui = runner.invoke(cli.app, ["ui", "--tracking-uri", tracking_uri, "--port", str(port)])
    assert ui.exit_code == 0, ui.output
    server = runner.invoke(
        cli.app,
        ["server", "--backend-store-uri", tracking_uri, "--port", str(free_port())]
        + ["--artifacts-destination", str(tmp_path / "artifacts")],
    )
    assert server.exit_code == 0, server.output

    # the store made ready (Tracker does it too) before each server starts
    assert events.index("prepare") < events.index("serve ui")
    assert events[events.index("serve ui") :][-2:] == ["prepare", "serve server"]
    (ui_command, ui_env), (server_command, server_env) = started
    assert ui_command[1:5] == ["-m", "mlflow", "ui", "--backend-store-uri"]
    assert server_command[1:5] == ["-m", "mlflow", "server", "--backend-store-uri"]
    for command, env in started:
        assert command[command.index("--workers") + 1] == "1"
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "--no-access-log" in ui_command  # the addresses stay on screen as pages load
    assert f"tiny-ui  {runs_url(f'http://127.0.0.1:{port}', experiment_id)}" in ui.output
    assert f"ready at http://127.0.0.1:{port} after 9 s" in ui.output


def test_ui_on_a_port_in_use_is_one_line(tracking_uri: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "suite", "ui", "--tracking-uri", tracking_uri]
            + ["--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is in use (another MLflow UI or server?): stop it, "
        "or choose another port with --port N"
    )
    assert not result.stdout


def test_study_experiments_carry_the_ui_tags(tracking_uri: str) -> None:
    """A new study's experiment gets MLflow's experiment kind and the two saved views of the
    runs page; an older one gets them when opened, with a kind someone chose kept and a stale
    view replaced."""
    tracker = Tracker(tracking_uri)
    new = tracker.experiment_id("new-study")
    assert new is not None
    tags = tracker.client.get_experiment(new).tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    views = {
        key[len(UI_VIEW_TAG) :]: json.loads(value)
        for key, value in tags.items()
        if key.startswith(UI_VIEW_TAG)
    }
    assert sorted(views) == sorted([UI_RUNS_VIEW, UI_CELLS_VIEW])
    columns = ["metrics.`final_train_accuracy`", "metrics.`final_test_accuracy`"]
    columns += ["metrics.`final_gap`"]
    for view in views.values():  # the envelope MLflow's "Views" menu reads
        assert isinstance(view["name"], str) and isinstance(view["createdAt"], int)
        state = json.loads(view["state"])
        assert state["selectedColumns"] == columns
        assert (state["orderByKey"], state["orderByAsc"]) == (columns[1], False)
    cells = json.loads(views[UI_CELLS_VIEW]["state"])["groupBy"]
    assert cells["groupByKeys"] == [{"mode": "tag", "groupByData": "cell"}]

    old = tracker.client.create_experiment(
        "old-study",
        tags={EXPERIMENT_KIND_TAG: "genai_development", UI_VIEW_TAG + UI_RUNS_VIEW: "{}"},
    )
    assert tracker.experiment_id("old-study") == old
    tags = tracker.client.get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == "genai_development"
    for key, value in UI_EXPERIMENT_TAGS.items():
        if key.startswith(UI_VIEW_TAG):
            assert tags[key] == value

    assert runs_url("http://host:5000/", new) == (
        f"http://host:5000/#/experiments/{new}/runs"
        "?viewStateShareKey=overfit-runs&workflowType=machine_learning"
    )


def test_metrics_are_logged_as_the_short_decimals_of_their_float32(tracking_uri: str) -> None:
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment_id("short")
    assert experiment_id is not None
    run_id = tracker.client.create_run(experiment_id).info.run_id

    def f32(value: float) -> float:
        return float(np.float32(value))

    row = {
        "train_accuracy": f32(0.25),  # 0.25 exactly
        "test_accuracy": f32(0.18),  # 0.18000000715255737
        "gap": f32(0.25) - f32(0.18),  # 0.06999999284744263
        "test_loss": f32(0.1135),  # 0.11349999904632568
        "weight_norm": f32(12.3456789),
        "train_seconds": 1.2345678912,  # float64
        "reg_loss": 0.0,
    }
    keras = dict(row)
    tracker.log_epochs(run_id, [(1, row)])
    logged = tracker.client.get_run(run_id).data.metrics
    assert logged == {
        "train_accuracy": 0.25,
        "test_accuracy": 0.18,
        "gap": 0.07,  # the difference of the two accuracies logged
        "test_loss": 0.1135,
        "weight_norm": 12.345679,
        "train_seconds": 1.2345679,
        "reg_loss": 0.0,
    }
    assert row == logged  # the caller holds what the store holds
    for name in ("train_accuracy", "test_accuracy", "test_loss", "weight_norm"):
        assert np.float32(logged[name]) == np.float32(keras[name])  # lossless for float32
