"""An adaptive search (TPE with Hyperband pruning) beyond one process: on Ray, stopped with
Ctrl-C half-way and run again; and two `overfit run` invocations sharing one search through
a real `mlflow server`. Either way every slot ends with exactly one FINISHED run (pruned or
not), `trials` in all, and none is trained twice. `slow`: each invocation pays TensorFlow's
import, Ray's start-up or a server's."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MlflowServer
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TRIALS = 12
SEARCH = f"""
name: searched
base:
  data: {{train_size: 200, val_size: 100, test_size: 200}}
  model: {{hidden: [64, 64]}}
  train: {{batch_size: 20, epochs: 27, optimizer: {{name: sgd}}}}
seeds: [0]
search:
  trials: {TRIALS}
  sampler: tpe
  pruner: hyperband
  space:
    train.optimizer.learning_rate: {{log_uniform: [1.0e-4, 1.0]}}
    model.weight_decay: {{log_uniform: [1.0e-6, 1.0e-2]}}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset (subprocesses run offline)."""


def overfit(study: Path, uri: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "suite", "run", str(study), "--tracking-uri", uri, *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def slot_runs(uri: str) -> list[tuple[int, str, str]]:
    """(slot, status, pruned tag) of every run of the search, deleted ones too."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("searched")
    if experiment is None:
        return []
    found = client.search_runs(
        [experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000
    )
    return [
        (int(r.data.tags["trial"]), r.info.status, r.data.tags.get("pruned", ""))
        for r in found
        if "trial" in r.data.tags
    ]


def assert_each_slot_once(uri: str) -> list[tuple[int, str, str]]:
    every = slot_runs(uri)
    finished = Counter(slot for slot, status, _ in every if status == "FINISHED")
    assert sorted(finished) == list(range(TRIALS)), f"slots: {sorted(finished)}"
    assert set(finished.values()) == {1}, f"a slot trained twice: {finished}"
    assert not [r for r in every if r[1] == "RUNNING"], "a run left RUNNING"
    return every


def counts(output: str) -> tuple[int, int, int]:
    """(finished, skipped, pruned) from an invocation's summary line."""
    found = re.search(r"(\d+) finished, (\d+) skipped, 0 failed(?:, (\d+) pruned)?", output)
    assert found, output
    return int(found[1]), int(found[2]), int(found[3] or 0)


def wait_for_finished(uri: str, process: subprocess.Popen[str], at_least: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if sum(status == "FINISHED" for _, status, _ in slot_runs(uri)) >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError(f"the search ended or stalled before {at_least} trials finished")


def test_a_search_on_ray_stopped_half_way_and_run_again_trains_each_slot_once(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, killer: list
) -> None:
    pytest.importorskip(
        "ray", reason="needs the optional Ray extra: make setup-ray (pip install '.[ray]')"
    )
    study = write_study(SEARCH, "searched.yaml")
    first = overfit(study, mlflow_server.uri, "--executor", "ray")
    killer.append(first)
    wait_for_finished(mlflow_server.uri, first, TRIALS // 3)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=180)
    assert first.returncode == 130, output
    before = Counter(status for _, status, _ in slot_runs(mlflow_server.uri))
    assert before["FINISHED"] < TRIALS and before["RUNNING"] == 0, before

    second = overfit(study, mlflow_server.uri, "--executor", "ray")
    killer.append(second)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    finished, skipped, pruned = counts(output)
    assert skipped == before["FINISHED"] and finished + pruned == TRIALS - skipped
    every = assert_each_slot_once(mlflow_server.uri)
    assert any(tag for _, status, tag in every if status == "FINISHED"), "nothing was pruned"


def test_two_invocations_share_one_search_through_a_server(
    write_study: Callable[..., Path], mlflow_server: MlflowServer, killer: list
) -> None:
    study = write_study(SEARCH, "searched.yaml")
    both = [overfit(study, mlflow_server.uri, "--workers", "1") for _ in range(2)]
    killer.extend(both)
    outputs = [process.communicate(timeout=600)[0] for process in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    trained = [counts(out) for out in outputs]
    # every slot trained by one of them; the other saw it end there (or never took it)
    assert sum(f + p for f, _, p in trained) == TRIALS, outputs
    assert all(f + p > 0 for f, _, p in trained), "one invocation trained everything"
    assert_each_slot_once(mlflow_server.uri)


def test_tpe_with_hyperband_finds_at_least_random_searchs_best_in_half_its_epochs(
    write_study: Callable[..., Path], tmp_path: Path, _store_template: Path
) -> None:
    """`make bench`'s question (docs/performance.md), reduced to 30 trials and search seed
    0: `hparam_tpe` against `hparam_search`, as the catalogue has them. Measured here: random
    0.79 in 1,500 epochs, TPE + Hyperband 0.81 in 674 (18 pruned)."""
    from suite.names import PRUNED
    from suite.runner import run_study
    from suite.study import load_study
    from suite.tracking import Tracker

    root = Path(__file__).parent.parent / "experiments"
    found = {}
    for name in ("hparam_search", "hparam_tpe"):
        text = (root / f"{name}.yaml").read_text()
        assert "  trials: 100\n" in text
        study = load_study(write_study(text.replace("  trials: 100\n", "  trials: 30\n")))
        db = tmp_path / f"{name}.db"
        db.write_bytes(_store_template.read_bytes())
        result = run_study(study, Tracker(f"sqlite:///{db}"), workers=1)
        assert result.ok and len(result.results) == 30
        ended = [r for r in result.results if r.status in ("finished", PRUNED)]
        best = max(r.final["final_val_accuracy"] for r in ended if r.status == "finished")
        epochs = sum(
            int((r.reason or "").rsplit(" ", 1)[-1]) if r.status == PRUNED else 50 for r in ended
        )
        found[name] = (best, epochs, result.count(PRUNED))
    (random_best, random_epochs, _), (best, epochs, pruned) = found.values()
    assert random_epochs == 1500
    assert pruned > 0 and epochs <= random_epochs / 2, found
    assert best >= random_best, found
