"""Beyond one process: a real `mlflow server` on a loopback port, `overfit run` invocations
against it (two at once, one killed, the server killed and restarted), and the Ray executor
(its histories, a Ray worker killed mid-task). Each test is bounded in time; all are `slow`
(each `overfit run` pays TensorFlow's import and worker start-up)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MlflowServer, assert_same_metrics
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from suite.metrics import EPOCH_METRICS
from suite.names import OWNER_TAG
from suite.runner import run_study
from suite.study import load_study
from suite.tracking import Tracker

pytestmark = pytest.mark.slow

# 2 cells x 3 seeds; runs of a few seconds, so that a kill lands mid-run
STUDY = """
name: scale
base:
  data: {train_size: 200, test_size: 1000}
  model: {hidden: [64, 64, 64]}
  train: {batch_size: 20, epochs: EPOCHS}
seeds: [0, 1, 2]
variants:
  baseline: {}
  weight_decay: {model: {weight_decay: 0.05}}
"""
KEYS = 6


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset (workers and subprocesses: offline)."""


def study_file(write_study: Callable[..., Path], epochs: int) -> Path:
    return write_study(STUDY.replace("EPOCHS", str(epochs)), "scale.yaml")


def overfit(study: Path, uri: str, *args: str) -> subprocess.Popen[str]:
    """`overfit run` in a process group of its own (so a test can kill it whole)."""
    command = [sys.executable, "-m", "suite", "run", str(study), "--tracking-uri", uri, *args]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def runs(uri: str, deleted: bool = False) -> list[tuple[str, int, str, str]]:
    """(cell hash, seed, status, run id) of every suite run of the study."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("scale")
    if experiment is None:
        return []
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    found = client.search_runs([experiment.experiment_id], run_view_type=view, max_results=1000)
    return [
        (r.data.tags["cell_hash"], int(r.data.tags["seed"]), r.info.status, r.info.run_id)
        for r in found
        if "cell_hash" in r.data.tags
    ]


def assert_exactly_once(uri: str) -> None:
    """Every (cell, seed) FINISHED exactly once, nothing left RUNNING (deleted runs too)."""
    every = runs(uri, deleted=True)
    finished = Counter((h, s) for h, s, status, _ in runs(uri) if status == "FINISHED")
    assert len(finished) == KEYS, f"lost runs: {sorted(finished)}"
    assert set(finished.values()) == {1}, f"duplicates: {finished}"
    assert not [r for r in every if r[2] == "RUNNING"], "a run left RUNNING"


def summary(output: str) -> tuple[int, int]:
    """(finished, skipped) from an invocation's summary line."""
    found = re.search(r"(\d+) finished, (\d+) skipped, 0 failed", output)
    assert found, output
    return int(found[1]), int(found[2])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def histories(uri: str) -> dict[tuple[str, int, str], list[tuple[int, float]]]:
    client = MlflowClient(uri)
    out = {}
    for cell_hash, seed, status, run_id in runs(uri):
        if status == "FINISHED":
            for name in EPOCH_METRICS:
                points = client.get_metric_history(run_id, name)
                out[(cell_hash, seed, name)] = sorted((p.step, p.value) for p in points)
    return out


def test_two_invocations_at_once_train_each_run_once(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, killer: list
) -> None:
    study = study_file(write_study, 40)
    first = overfit(study, mlflow_server.uri, "--workers", "1", "--executor", "process")
    second = overfit(study, mlflow_server.uri, "--workers", "1", "--executor", "process")
    killer += [first, second]
    (code1, out1), (code2, out2) = finish(first), finish(second)
    assert (code1, code2) == (0, 0), out1 + out2
    assert_exactly_once(mlflow_server.uri)
    # each saw every run end: trained by itself, or by the other (skipped)
    counts = [summary(out) for out in (out1, out2)]
    assert all(finished + skipped == KEYS for finished, skipped in counts), counts
    assert counts[0][0] + counts[1][0] == KEYS, counts


def test_a_killed_invocation_leaves_nothing_running_and_a_rerun_completes(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, killer: list
) -> None:
    study = study_file(write_study, 300)
    victim = overfit(study, mlflow_server.uri, "--workers", "2")
    killer.append(victim)
    training: set[str] = set()

    def started_after_a_finish() -> bool:
        # a run claimed after the first run ended is seconds from its own end: the two workers'
        # first runs start together and end together, so one of those may end before the kill
        client = MlflowClient(mlflow_server.uri)
        experiment = client.get_experiment_by_name("scale")
        found = client.search_runs([experiment.experiment_id]) if experiment else []
        ends = [r.info.end_time for r in found if r.info.status == "FINISHED"]
        fresh = {
            r.info.run_id
            for r in found
            if ends and r.info.status == "RUNNING" and r.info.start_time > min(ends)
        }
        training.update(fresh)
        return bool(fresh)

    wait_for(started_after_a_finish, 240, "a run started after a finished one")
    os.killpg(victim.pid, signal.SIGKILL)  # the parent and its workers, mid-run
    victim.wait()
    done = {run_id for _, _, status, run_id in runs(mlflow_server.uri) if status == "FINISHED"}

    code, out = finish(overfit(study, mlflow_server.uri, "--workers", "2"))
    assert code == 0, out
    assert_exactly_once(mlflow_server.uri)
    after = {run_id: status for _, _, status, run_id in runs(mlflow_server.uri)}
    # what was training when the kill landed was taken back at once (its owner is gone), or
    # had finished in the moment before it
    assert {after[r] for r in training} <= {"KILLED", "FINISHED"}
    assert "KILLED" in {after[r] for r in training}
    assert {after[r] for r in done} == {"FINISHED"}  # finished runs kept, not trained again
    assert summary(out) == (KEYS - len(done), len(done))


def test_a_server_restarted_mid_study_loses_no_finished_run(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, killer: list
) -> None:
    study = study_file(write_study, 150)
    invocation = overfit(study, mlflow_server.uri, "--workers", "2")
    killer.append(invocation)
    wait_for(
        lambda: sum(status == "FINISHED" for _, _, status, _ in runs(mlflow_server.uri)) >= 2,
        240,
        "two finished runs",
    )
    finished_before = {r for _, _, s, r in runs(mlflow_server.uri) if s == "FINISHED"}
    mlflow_server.kill()  # a crash, mid-study
    time.sleep(3)
    mlflow_server.start()  # the same store, the same port
    code, out = finish(invocation)  # its calls waited out the outage, or it failed some runs
    assert code in (0, 1), out
    print(f"\nthe invocation the server's crash hit: exit {code}, {out.strip().splitlines()[-2]}")

    rerun_code, rerun_out = finish(overfit(study, mlflow_server.uri, "--workers", "2"))
    assert rerun_code == 0, rerun_out
    print(f"its rerun: {rerun_out.strip().splitlines()[-2]}")
    assert_exactly_once(mlflow_server.uri)
    after = {run_id: status for _, _, status, run_id in runs(mlflow_server.uri)}
    assert {after[r] for r in finished_before} == {"FINISHED"}


def test_the_process_pool_logs_to_a_server_what_it_logs_to_sqlite(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, tracking_uri: str
) -> None:
    study = load_study(study_file(write_study, 12))
    assert run_study(study, Tracker(tracking_uri), workers=1).ok
    assert run_study(study, Tracker(mlflow_server.uri), workers=2, executor="process").ok
    local, served = histories(tracking_uri), histories(mlflow_server.uri)
    assert len(local) == KEYS * len(EPOCH_METRICS)
    # one worker in this process with every CPU, two with one thread each: the same
    # accuracies, losses within rounding
    assert_same_metrics(local, served)
    # artifacts went through the server (proxied), into its artifact folder
    assert list((mlflow_server.root / "artifacts").rglob("config.yaml"))


# --- Ray -----------------------------------------------------------------------------------


def test_ray_tasks_log_to_a_server_what_the_local_executor_logs(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, tracking_uri: str
) -> None:
    pytest.importorskip(
        "ray", reason="needs the optional Ray extra: make setup-ray (pip install '.[ray]')"
    )
    study = study_file(write_study, 12)
    assert run_study(load_study(study), Tracker(tracking_uri), workers=1).ok
    code, out = finish(overfit(study, mlflow_server.uri, "--executor", "ray"))
    assert code == 0, out
    assert f"{KEYS} finished" in out
    assert_exactly_once(mlflow_server.uri)
    # a Ray task has one thread (`--cpus-per-run 1`), the local run every CPU
    assert_same_metrics(histories(tracking_uri), histories(mlflow_server.uri))


def test_a_ray_worker_killed_mid_task_is_retried(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, killer: list
) -> None:
    pytest.importorskip(
        "ray", reason="needs the optional Ray extra: make setup-ray (pip install '.[ray]')"
    )
    study = study_file(write_study, 300)
    invocation = overfit(study, mlflow_server.uri, "--executor", "ray")
    killer.append(invocation)
    client = MlflowClient(mlflow_server.uri)
    victims: list[tuple[str, int]] = []

    def a_task_in_progress() -> bool:
        for _, _, status, run_id in runs(mlflow_server.uri):
            if status == "RUNNING":
                owner = client.get_run(run_id).data.tags[OWNER_TAG]
                victims.append((run_id, int(owner.rpartition(":")[2])))
                return True
        return False

    wait_for(a_task_in_progress, 240, "a Ray task training a run")
    run_id, pid = victims[0]
    assert pid != invocation.pid  # a Ray worker, not the driver
    os.kill(pid, signal.SIGKILL)
    code, out = finish(invocation)
    assert code == 0, out
    assert f"{KEYS} finished" in out
    assert_exactly_once(mlflow_server.uri)
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert "earlier attempt" in killed.data.tags["failure_reason"]
