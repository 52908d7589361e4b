"""Claims against a real sqlite MLflow store: a run is trained by one claimant only, an
abandoned run is taken back, and a run finished meanwhile is not trained again."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from suite import claims as leasing
from suite.claims import Claim, ClaimLost, Leases
from suite.executors.base import ELSEWHERE, Claims
from suite.lifecycle import Silent
from suite.names import (
    FINISHED,
    HEARTBEAT_TAG,
    LEASE_TAGS,
    MACHINE_TAG,
    OWNER_TAG,
    SKIPPED,
    TIMEOUT_TAG,
    TOKEN_TAG,
)
from suite.runner import run_study
from suite.study import Cell, RunKey, load_study
from suite.tracking import Tracker


@pytest.fixture
def tracker(tracking_uri: str) -> Tracker:
    return Tracker(tracking_uri)


@pytest.fixture
def cell(write_study: Callable[[str], Path], tiny_study: str) -> Cell:
    return load_study(write_study(tiny_study)).cells[0]


@functools.cache
def of(tracker: Tracker) -> Leases:
    """The claims of the process `tracker` stands for (one heartbeat per tracker)."""
    return Leases(tracker)


def claim(tracker: Tracker, experiment_id: str, cell: Cell, token: str, seed: int = 0) -> Claim:
    return of(tracker).claim(experiment_id, "tiny", RunKey(cell, seed), token)


def test_a_finished_run_is_not_claimed_again_unless_rerun(tracker: Tracker, cell: Cell) -> None:
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    won = claim(tracker, experiment_id, cell, "a")
    assert won.outcome == "won" and won.run_id
    of(tracker).finish(won.run_id, {"final_test_accuracy": 0.5})

    again = claim(tracker, experiment_id, cell, "b")
    assert (again.outcome, again.run_id) == ("finished", won.run_id)
    assert again.metrics["final_test_accuracy"] == 0.5
    forced = of(tracker).claim(experiment_id, "tiny", RunKey(cell, 0), "b", rerun=True)
    assert forced.outcome == "won" and forced.run_id != won.run_id


def test_a_live_claim_holds_and_an_abandoned_one_is_taken_back(
    tracker: Tracker, cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    client = MlflowClient(tracker.uri)
    first = claim(tracker, experiment_id, cell, "a")
    assert first.outcome == "won" and first.run_id

    held = claim(tracker, experiment_id, cell, "b")  # the owner (this process) lives
    assert (held.outcome, held.run_id) == ("held", first.run_id)

    # its owner, a process that has exited
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = leasing.owner().rpartition(":")[0]
    client.set_tag(first.run_id, OWNER_TAG, f"{host}:{int(dead.stdout)}")
    second = claim(tracker, experiment_id, cell, "b")
    assert second.outcome == "won" and second.run_id
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert "is gone" in client.get_run(first.run_id).data.tags["failure_reason"]
    with pytest.raises(ClaimLost):  # the first owner, had it lived, could not finish it
        of(tracker).finish(first.run_id, {"final_test_accuracy": 0.1})
    assert client.get_run(first.run_id).info.status == "KILLED"

    # an owner on another machine, silent for longer than its claim timeout (judged by the
    # owner's timeout, which paced its heartbeat, not by the reader's)
    monkeypatch.setenv("SUITE_CLAIM_TIMEOUT", "5")
    client.set_tag(second.run_id, TIMEOUT_TAG, "30")
    client.set_tag(second.run_id, OWNER_TAG, "elsewhere:1")
    client.set_tag(second.run_id, HEARTBEAT_TAG, f"{time.time() - 20:.3f}")
    assert claim(tracker, experiment_id, cell, "c").outcome == "held"
    client.set_tag(second.run_id, HEARTBEAT_TAG, f"{time.time() - 40:.3f}")
    third = claim(tracker, experiment_id, cell, "c")
    assert third.outcome == "won"
    reason = client.get_run(second.run_id).data.tags["failure_reason"]
    assert reason.startswith("abandoned: no heartbeat from its owner for 4")

    # an earlier attempt of the same invocation (a retried task) is taken back at once
    fourth = claim(tracker, experiment_id, cell, "c")
    assert fourth.outcome == "won"
    assert client.get_run(str(third.run_id)).info.status == "KILLED"


def test_a_pid_means_something_only_on_the_same_machine(tracker: Tracker, cell: Cell) -> None:
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    client = MlflowClient(tracker.uri)
    first = claim(tracker, experiment_id, cell, "a")
    assert first.run_id
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = leasing.owner().rpartition(":")[0]
    client.set_tag(first.run_id, OWNER_TAG, f"{host}:{int(dead.stdout)}")
    # the same host name, another pid namespace (a container): that pid is not ours to check
    client.set_tag(first.run_id, MACHINE_TAG, "another-boot/pid:[4026531836]")
    assert claim(tracker, experiment_id, cell, "b").outcome == "held"
    client.set_tag(first.run_id, MACHINE_TAG, leasing.machine())
    assert claim(tracker, experiment_id, cell, "b").outcome == "won"


def test_an_abandoned_run_of_a_finished_key_is_ended_too(tracker: Tracker, cell: Cell) -> None:
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    orphan = tracker.start_run(experiment_id, "tiny", cell, 0, "test")  # no owner: abandoned
    done = claim(tracker, experiment_id, cell, "a")
    assert done.run_id
    of(tracker).finish(done.run_id, {"final_test_accuracy": 0.5})
    assert claim(tracker, experiment_id, cell, "b").outcome == "finished"
    assert MlflowClient(tracker.uri).get_run(orphan).info.status == "KILLED"


def test_a_run_this_invocation_finished_counts_as_finished_not_skipped(
    tracker: Tracker, write_study: Callable[[str], Path], tiny_study: str
) -> None:
    # a Ray task whose worker died after finishing its run: the retry finds it FINISHED
    study = load_study(write_study(tiny_study))
    key = study.runs()[0]
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    claims = Claims([key], of(tracker), experiment_id, "tiny", False, Silent())
    won = claim(tracker, experiment_id, key.cell, claims.token, seed=key.seed)
    assert won.run_id
    of(tracker).finish(won.run_id, {"final_test_accuracy": 0.5})
    assert claims.take() is None and claims.done()
    [result] = claims.in_order()
    assert (result.status, result.run_id) == (FINISHED, won.run_id)


def test_the_heartbeat_keeps_a_claim_alive(
    tracker: Tracker, cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a beat every 0.5 s: on a loaded machine a beat may come late, by less than 1.5 s
    monkeypatch.setenv("SUITE_CLAIM_TIMEOUT", "2")
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    won = claim(tracker, experiment_id, cell, "a")
    assert won.run_id
    client = MlflowClient(tracker.uri)
    client.set_tag(won.run_id, OWNER_TAG, "elsewhere:1")  # only the heartbeat says it lives
    beats = set()
    start = time.monotonic()
    while time.monotonic() - start < 3.0:  # held for 1.5 times its timeout, by its beats
        time.sleep(0.25)
        beats.add(client.get_run(won.run_id).data.tags[HEARTBEAT_TAG])
        assert claim(tracker, experiment_id, cell, "b").outcome == "held"
    assert len(beats) >= 3
    of(tracker).fail(won.run_id, "test over")  # ends the beat, and the lease tags go
    for _ in range(5):  # no later beat brings its tag back
        time.sleep(0.2)
        tags = client.get_run(won.run_id).data.tags
        assert not set(LEASE_TAGS) & set(tags), tags
        assert tags[TOKEN_TAG] == "a"  # who trained it stays


def test_an_ended_run_keeps_what_it_is_not_how_it_was_held(tracker: Tracker, cell: Cell) -> None:
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    won = claim(tracker, experiment_id, cell, "a")
    assert won.run_id
    running = tracker.client.get_run(won.run_id).data.tags
    assert set(LEASE_TAGS) <= set(running)
    of(tracker).finish(won.run_id, {"final_test_accuracy": 0.5})
    tags = tracker.client.get_run(won.run_id).data.tags
    assert not set(LEASE_TAGS) & set(tags)
    assert {"study", "cell", "cell_hash", "seed", TOKEN_TAG} <= set(tags)
    # resume still sees it: a new invocation skips it, finished by another
    again = claim(tracker, experiment_id, cell, "b")
    assert (again.outcome, again.run_id, again.token) == ("finished", won.run_id, "a")


def test_racing_claims_win_at_most_once(tracker: Tracker, cell: Cell, tracking_uri: str) -> None:
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    seeds = range(6)
    wins: list[tuple[int, str]] = []
    start = threading.Barrier(4)

    def claimant(token: str) -> None:
        mine = Tracker(tracking_uri)  # a client of its own, as another invocation has
        mine.client.search_experiments()
        start.wait()
        for seed in seeds:
            got = of(mine).claim(experiment_id, "tiny", RunKey(cell, seed), token)
            if got.outcome == "won":
                wins.append((seed, token))

    threads = [threading.Thread(target=claimant, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    won_seeds = [seed for seed, _ in wins]
    assert len(won_seeds) == len(set(won_seeds)), f"a key won twice: {wins}"
    running = [r for r in tracker.runs(experiment_id) if r.status == "RUNNING"]
    assert sorted((r.seed, r.tags[TOKEN_TAG]) for r in running) == sorted(wins)


def test_a_run_finished_by_another_invocation_is_skipped(
    write_study: Callable[[str], Path], tracker: Tracker, tiny_study: str
) -> None:
    study = load_study(write_study(tiny_study))
    experiment_id = tracker.experiment_id("tiny")
    assert experiment_id is not None
    cell = study.cells[1]
    # another invocation holds (cell 1, seed 1) when this one plans, and finishes it later
    other = claim(tracker, experiment_id, cell, "other", seed=1)
    assert other.run_id

    def finish_later() -> None:
        time.sleep(3)
        Leases(Tracker(tracker.uri)).finish(str(other.run_id), {"final_train_accuracy": 1.0})

    thread = threading.Thread(target=finish_later)

    class FinishLater(Silent):
        """Starts the other invocation's clock once this one has planned (however long that
        took on a loaded machine): at planning the run is held, not finished."""

        def study_started(self, *args: object) -> None:
            thread.start()

    result = run_study(study, tracker, observer=FinishLater())
    thread.join()
    assert result.ok and result.count("finished") == 3
    [elsewhere] = [r for r in result.results if r.status == SKIPPED]
    assert (elsewhere.key.cell.hash, elsewhere.key.seed, elsewhere.run_id) == (
        cell.hash,
        1,
        other.run_id,
    )
    assert elsewhere.reason == ELSEWHERE
    statuses = sorted(r.status for r in tracker.runs(experiment_id))
    assert statuses == ["FINISHED"] * 4
