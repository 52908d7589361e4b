"""Adaptive search (`search.sampler: tpe`, `search.pruner`): its checks, its slots claimed
once, a search resumed after Ctrl-C asking what an uninterrupted one asks, pruned trials
tagged and cut where their pruner ended them, and Hyperband's rungs replayed from curves
as the live pruner wrote them. Real training, a real sqlite store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_report import headline

from suite.lifecycle import Silent
from suite.names import FINISHED, PRUNED, SKIPPED
from suite.runner import OptionError, SearchChanged, run_study
from suite.spec import SpecError
from suite.study import RunKey, load_study
from suite.tracking import Tracker
from suite.trials import Known, check_epochs

# 8 slots of a 9-epoch trial on 100 images: Hyperband's rungs at epochs 1 and 3
SEARCH = """
name: tpe
base:
  data: {train_size: 100, val_size: 50, test_size: 100}
  model: {hidden: [16]}
  train: {batch_size: 20, epochs: 9, optimizer: {name: sgd}}
seeds: [0]
search:
  trials: TRIALS
  seed: 0
  sampler: SAMPLER
  pruner: PRUNER
  space:
    train.optimizer.learning_rate: {log_uniform: [1.0e-4, 1.0]}
    model.weight_decay: {log_uniform: [1.0e-6, 1.0e-2]}
"""


def search_text(trials: int = 8, sampler: str = "tpe", pruner: str = "hyperband") -> str:
    return (
        SEARCH.replace("TRIALS", str(trials)).replace("SAMPLER", sampler).replace("PRUNER", pruner)
    )


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset."""


def trials(tracker: Tracker, study: str = "tpe") -> dict[int, list[Any]]:
    """Every run of the study's slots: {slot: [(status, tags, final val accuracy, run id)]}."""
    experiment_id = tracker.experiment_id(study, create=False)
    assert experiment_id is not None
    out: dict[int, list[Any]] = {}
    for record in tracker.runs(experiment_id):
        out.setdefault(int(record.tags["trial"]), []).append(
            (
                record.status,
                record.tags,
                record.metrics.get("final_val_accuracy"),
                record.run_id,
            )
        )
    return out


def finished(tracker: Tracker) -> dict[int, tuple[dict[str, Any], str | None, float]]:
    """Each slot's one FINISHED run: (its point, its pruned epoch or None, its objective)."""
    out = {}
    for slot, found in trials(tracker).items():
        done = [f for f in found if f[0] == "FINISHED"]
        assert len(done) == 1, f"slot {slot}: {len(done)} FINISHED runs"
        status, tags, value, _ = done[0]
        out[slot] = (json.loads(tags["search_point"]), tags.get("pruned"), value)
    return out


def test_random_search_keeps_todays_cells() -> None:
    """`sampler: random` without a pruner draws today's trials: the same cells, hashes and
    names as before adaptive search existed (hashes recorded then)."""
    root = Path(__file__).parent.parent
    study = load_study(root / "experiments" / "hparam_search.yaml")
    assert len(study.cells) == 100
    assert all(cell.slot is None for cell in study.cells)
    assert (study.cells[0].name, study.cells[0].hash) == ("trial_000", "d16469ef9e")
    assert (study.cells[-1].name, study.cells[-1].hash) == ("trial_099", "33fc88f94b")
    assert study.cells[0].config.model.weight_decay != study.cells[1].config.model.weight_decay


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("sampler: tpe", "sampler: tpx", "search.sampler: expected 'random' or 'tpe', got 'tpx'"),
        ("pruner: hyperband", "pruner: hyperbnd", "search.pruner: expected 'none', 'median'"),
        ("val_size: 50", "val_size: 0", "search.pruner: hyperband: needs a validation split"),
        ("seeds: [0]", "seeds: [0, 1]", "seeds: search.pruner: hyperband trains each trial"),
        (
            "    model.weight_decay: {log_uniform: [1.0e-6, 1.0e-2]}",
            "    model.dropout: {uniform: [0.0, 1.0]}",
            "search.space.model.dropout: must be less than 1",
        ),
    ],
)
def test_a_bad_search_block_is_a_one_line_error(
    write_study: Callable[..., Path], old: str, new: str, says: str
) -> None:
    text = search_text()
    assert old in text
    path = write_study(text.replace(old, new))
    with pytest.raises(SpecError) as caught:
        load_study(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message
    assert "\n" not in message


def test_tpe_over_a_single_point_and_tpe_without_validation_are_refused(
    write_study: Callable[..., Path],
) -> None:
    single = search_text(pruner="none").replace(
        "    train.optimizer.learning_rate: {log_uniform: [1.0e-4, 1.0]}\n"
        "    model.weight_decay: {log_uniform: [1.0e-6, 1.0e-2]}",
        "    model.weight_decay: {choice: [0.001]}",
    )
    with pytest.raises(SpecError, match=r"search.space: tpe has a single point"):
        load_study(write_study(single))
    blind = search_text(pruner="none").replace("val_size: 50", "val_size: 0")
    with pytest.raises(SpecError, match=r"search.sampler: tpe: needs a validation split"):
        load_study(write_study(blind))
    # random search without a pruner keeps working without one, as it always did
    plain = search_text(sampler="random", pruner="none").replace("val_size: 50", "val_size: 0")
    assert all(cell.slot is None for cell in load_study(write_study(plain)).cells)


def test_slots_share_their_frame_until_asked_and_hash_by_search_and_number(
    write_study: Callable[..., Path],
) -> None:
    study = load_study(write_study(search_text()))
    slots = [cell.slot for cell in study.cells]
    assert [s.number for s in slots if s] == list(range(8))
    assert len({cell.hash for cell in study.cells}) == 8
    assert len({s.search_id for s in slots if s}) == 1
    # raising `trials` extends the search: the first slots keep their cells
    more = load_study(write_study(search_text(trials=12)))
    assert [c.hash for c in more.cells[:8]] == [c.hash for c in study.cells]
    # another space, sampler or pruner is another search
    median = search_text(pruner="median").replace("epochs: 9", "epochs: 20")
    for other in (median, search_text(sampler="random")):
        assert not {c.hash for c in load_study(write_study(other)).cells} & {
            c.hash for c in study.cells
        }


def test_hyperbands_rungs_are_whole_evaluations_and_the_median_every_ten(
    write_study: Callable[..., Path],
) -> None:
    cell = load_study(write_study(search_text())).cells[0]
    assert cell.slot is not None
    spec = cell.slot.spec
    assert check_epochs(spec, cell.config) == [1, 3]
    long = cell.config.model_copy(
        update={"train": cell.config.train.model_copy(update={"epochs": 50, "eval_every": 2})}
    )
    assert check_epochs(spec, long) == [2, 6, 18]
    median = spec.model_copy(update={"pruner": "median"})
    assert check_epochs(median, long) == [10, 20, 30, 40]


def test_replayed_rungs_equal_what_the_live_pruner_wrote(
    write_study: Callable[..., Path],
) -> None:
    """A trial's Hyperband rung values rebuilt from its stored curve (the replay) equal
    those Optuna's pruner wrote while the trial reported, for every bracket."""
    from suite.search import Pruning, SlotHyperband

    cell = load_study(write_study(search_text().replace("epochs: 9", "epochs: 40"))).cells[0]
    assert cell.slot is not None
    brackets = set()
    for number in range(12):
        slot = cell.slot.__class__(
            cell.slot.search_id, number, cell.slot.frame, cell.slot.spec, {}, ()
        )
        pruning = Pruning.of(slot, cell.config)
        curve = {epoch: round(0.1 + 0.02 * epoch, 4) for epoch in range(1, 41)}
        for epoch, value in curve.items():
            pruning.report(epoch, {"val_accuracy": value})  # alone in its bracket: never pruned
        live = {
            k: v
            for k, v in pruning.study.trials[-1].system_attrs.items()
            if k.startswith("completed_rung_")
        }
        hyperband = pruning.study.pruner
        assert isinstance(hyperband, SlotHyperband)
        replayed = hyperband.rung_attrs(
            slot.search_id, Known(number, {}, "complete", 0.9, tuple(curve.items()))
        )
        assert live and live == replayed
        brackets.add(hyperband.bracket(slot.search_id, number))
    assert len(brackets) > 1  # the slots fell in several brackets


class StopAfter(Silent):
    """Sends this process SIGINT (Ctrl-C) once `count` runs ended."""

    def __init__(self, count: int) -> None:
        self.count, self.ended = count, 0

    def run_ended(self, result: Any) -> None:
        self.ended += 1
        if self.ended == self.count:
            os.kill(os.getpid(), signal.SIGINT)

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        pass


def test_a_search_stopped_and_resumed_asks_what_an_uninterrupted_one_asks(
    write_study: Callable[..., Path], tmp_path: Path, _store_template: Path
) -> None:
    study = load_study(write_study(search_text()))
    stores = {}
    for name in ("whole", "resumed"):
        db = tmp_path / f"{name}.db"
        db.write_bytes(_store_template.read_bytes())
        stores[name] = Tracker(f"sqlite:///{db}")
    whole = run_study(study, stores["whole"], workers=1)
    assert whole.ok and whole.count(FINISHED) + whole.count(PRUNED) == 8
    assert whole.count(PRUNED) >= 1, "nothing pruned: the test shows no pruning"

    with pytest.raises(KeyboardInterrupt):
        run_study(study, stores["resumed"], workers=1, observer=StopAfter(3))
    resumed = run_study(study, stores["resumed"], workers=1)
    assert resumed.ok and resumed.count(SKIPPED) >= 3
    runs_of = trials(stores["resumed"])
    assert sorted(runs_of) == list(range(8))
    # each slot trained to its end once; the one Ctrl-C cut was killed, then trained again
    statuses = Counter(status for found in runs_of.values() for status, *_ in found)
    assert statuses["FINISHED"] == 8 and statuses["RUNNING"] == 0
    assert finished(stores["resumed"]) == finished(stores["whole"])


def test_pruned_trials_are_tagged_and_their_curves_stop_where_they_were_pruned(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    study = load_study(write_study(search_text(trials=10)))
    tracker = Tracker(tracking_uri)
    result = run_study(study, tracker, workers=1)
    pruned = [r for r in result.results if r.status == PRUNED]
    assert pruned and result.count(FINISHED) >= 1
    checks = check_epochs(study.cells[0].slot.spec, study.cells[0].config)  # type: ignore[union-attr]
    for slot, found in trials(tracker).items():
        status, tags, value, run_id = found[0]
        assert status == "FINISHED"
        steps = [s for _, _, s, _ in tracker.histories([run_id], ["val_accuracy"])]
        assert int(tags["epochs_trained"]) == max(steps)
        if "pruned" in tags:
            assert int(tags["pruned"]) in checks and max(steps) == int(tags["pruned"])
            assert result.results[slot].reason == f"pruned at epoch {tags['pruned']}"
        else:
            assert max(steps) == 9
    assert len(pruned) == sum("pruned" in f[0][1] for f in trials(tracker).values())


def test_a_changed_space_is_a_new_search_said_in_one_line(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    tracker = Tracker(tracking_uri)
    first = load_study(write_study(search_text(trials=2, pruner="none")))
    assert run_study(first, tracker, workers=1).ok
    changed = load_study(
        write_study(search_text(trials=2, pruner="none").replace("1.0e-6", "1.0e-5"))
    )
    with pytest.warns(SearchChanged, match=r"tpe: its search changed .* starts anew") as caught:
        again = run_study(changed, tracker, workers=1)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert again.count(FINISHED) + again.count(PRUNED) == 2  # new cells, none taken as done
    ids = {found[0][1]["search_id"] for found in trials(tracker).values()}
    assert len(ids) == 1  # the stored slots of each search are keyed by their own cells
    assert len(tracker.runs(tracker.experiment_id("tpe", create=False) or "")) == 4


def test_seeds_beyond_one_are_refused_at_run_time(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    study = load_study(write_study(search_text(trials=2)))
    with pytest.raises(OptionError, match=r"--seeds: an adaptive search trains each trial"):
        run_study(study, Tracker(tracking_uri), seeds=(0, 1))


def test_a_search_on_two_workers_stopped_and_resumed_trains_each_slot_once(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    """Worker processes prune too (their pruner is built from the trials replayed at the
    ask), and a parallel search stopped half-way and resumed ends with one FINISHED run per
    slot. Its points may differ from a one-worker search's: parallel asks see trials in
    flight (constant liar)."""
    study = load_study(write_study(search_text(trials=10)))
    tracker = Tracker(tracking_uri)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tracker, workers=2, observer=StopAfter(4))
    resumed = run_study(study, tracker, workers=2)
    assert resumed.ok
    done = finished(tracker)  # asserts one FINISHED run per slot
    assert sorted(done) == list(range(10))
    assert any(pruned for _, pruned, _ in done.values())
    statuses = Counter(status for found in trials(tracker).values() for status, *_ in found)
    assert statuses["FINISHED"] == 10 and statuses["RUNNING"] == 0


def test_the_end_of_a_search_shows_its_best_trials_with_their_asked_settings(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    from rich.console import Console

    from suite import display

    study = load_study(write_study(search_text(trials=6)))
    tracker = Tracker(tracking_uri)
    for _ in range(2):  # trained, then every trial found in the store (skipped)
        result = run_study(study, tracker, workers=1)
        console = Console(record=True, width=200)
        console.print(display.summary_table(result))
        text = console.export_text()
        done = finished(tracker)
        best = max((v, s) for s, (_, pruned, v) in done.items() if not pruned)[1]
        point = done[best][0]
        row = next(line for line in text.splitlines() if f"trial_{best:03d}" in line)
        assert f"{point['model.weight_decay']:.4g}" in row and f"{done[best][2]:.3f}" in row
        count = sum(bool(pruned) for _, pruned, _ in done.values())
        assert f"{6 - count} trials finished, {count} pruned" in text


def test_a_tie_with_a_stored_trial_is_a_tie_not_a_float32_loss(
    write_study: Callable[..., Path],
) -> None:
    """The trials a pruner compares with are replayed from the store, which holds 0.13 for
    float32's 0.12999999523; the running trial reports what the store will hold, so a tie
    at a rung is promoted, as Optuna's rule says, not pruned by a rounding."""
    import numpy as np

    from suite.search import Pruning, SlotHyperband

    cell = load_study(write_study(search_text().replace("epochs: 9", "epochs: 40"))).cells[0]
    assert cell.slot is not None
    probe = Pruning.of(cell.slot, cell.config).study.pruner
    assert isinstance(probe, SlotHyperband)
    ident = cell.slot.search_id
    # two slots in bracket 0 (rungs at epochs 1, 3, 9, 27): a stored one, then this one
    first, second = [n for n in range(200) if probe.bracket(ident, n) == 0][:2]
    curve = tuple((epoch, 0.13) for epoch in range(1, 41))
    stored = Known(
        first,
        {"train.optimizer.learning_rate": 0.01, "model.weight_decay": 1e-4},
        "complete",
        0.13,
        curve,
    )
    slot = cell.slot.__class__(ident, second, cell.slot.frame, cell.slot.spec, {}, (stored,))
    pruning = Pruning.of(slot, cell.config)
    for epoch in range(1, 10):
        pruning.report(epoch, {"val_accuracy": float(np.float32(0.13))})  # never pruned


def test_a_choice_of_mappings_is_found_again_in_the_stored_points(
    write_study: Callable[..., Path],
) -> None:
    """A stored point is JSON with sorted keys (`Slot.tags`); a choice of mappings written in
    another key order in the file is still recognised, so its trials are replayed."""
    from suite.search import encode

    text = (
        search_text(pruner="none")
        .replace(
            "    model.weight_decay: {log_uniform: [1.0e-6, 1.0e-2]}",
            "    train.optimizer: {choice: [{name: sgd, learning_rate: 0.1},"
            " {name: adam, learning_rate: 0.001}]}",
        )
        .replace("    train.optimizer.learning_rate: {log_uniform: [1.0e-4, 1.0]}\n", "")
    )
    slot = load_study(write_study(text)).cells[0].slot
    assert slot is not None
    for index, choice in enumerate(slot.spec.space["train.optimizer"].choice or []):
        filled = slot.__class__(slot.search_id, 0, "", slot.spec, {"train.optimizer": choice})
        stored = json.loads(filled.tags()["search_point"])
        assert encode(slot.spec, stored) == {"train.optimizer": index}


def test_a_trial_finished_elsewhere_ends_with_its_point_and_its_pruning(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    """An invocation that finds a slot finished by another one (its claim comes back
    `finished`) reports that trial with the point asked there and, when it was pruned, as
    pruned: never ranked as a trial trained to its end."""
    from suite.claims import leases_of
    from suite.executors.base import Claims
    from suite.search import Coordinator

    study = load_study(write_study(search_text()))
    tracker = Tracker(tracking_uri)
    assert run_study(study, tracker, workers=1).ok
    done = finished(tracker)
    experiment_id = tracker.experiment_id("tpe", create=False)
    assert experiment_id is not None
    claims = Claims(
        [RunKey(cell, 0) for cell in study.cells],
        leases_of(tracker),
        experiment_id,
        "tpe",
        False,
        Silent(),
        Coordinator(tracker, experiment_id),
    )
    assert claims.take() is None and claims.done()  # every slot finished elsewhere
    for slot, result in enumerate(claims.in_order()):
        point, pruned, value = done[slot]
        assert result.status == SKIPPED and result.key.cell.slot is not None
        assert result.key.cell.slot.point == point
        assert result.pruned_epoch == (int(pruned) if pruned else None)
        assert result.complete == (not pruned)


def test_rerun_and_a_pruner_that_never_asks_are_refused(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    study = load_study(write_study(search_text(trials=2)))
    with pytest.raises(OptionError, match=r"^--rerun: an adaptive search asks each trial"):
        run_study(study, Tracker(tracking_uri), rerun=True)
    short = search_text(pruner="median")  # 9 epochs: the median pruner asks every 10
    with pytest.raises(SpecError, match=r"search.pruner: median: train.epochs 9 leaves no epoch"):
        load_study(write_study(short))


def test_the_command_refuses_rerun_and_seeds_before_any_work(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    """One line on stderr, nothing on stdout, no store, no traceback (the workers started
    beside the checks are gone cleanly)."""
    study = write_study(search_text(trials=2))
    env = {**os.environ, "SUITE_OFFLINE": "1"}
    for option, said in (
        (["--rerun"], "error: --rerun: an adaptive search asks each trial"),
        (["--seeds", "0,1"], "error: --seeds: an adaptive search trains each trial with one"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "suite", "run", str(study), *option,
             "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--workers", "2"],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
        )  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1 and errors[0].startswith(said), done
        assert done.stdout == "" and "Traceback" not in done.stderr, done
        assert not (tmp_path / "m.db").exists()


def test_the_report_and_the_summary_keep_an_older_search_and_pruned_trials_apart(
    write_study: Callable[..., Path], tracking_uri: str, tmp_path: Path
) -> None:
    from suite import results
    from suite.report import write_report

    tracker = Tracker(tracking_uri)
    old = load_study(write_study(search_text(trials=3).replace("seed: 0", "seed: 5")))
    assert run_study(old, tracker, workers=1).ok
    study = load_study(write_study(search_text(trials=6)))
    assert run_study(study, tracker, workers=1).ok
    records = tracker.runs(tracker.experiment_id("tpe", create=False) or "")
    mine = {cell.hash for cell in study.cells}
    older = {r.cell_hash for r in records} - mine
    pruned = {r.run_id for r in records if "pruned" in r.tags}
    assert len(older) == 3 and pruned, "the test shows nothing"

    paths = write_report("tpe", tracker, tmp_path / "report", study, log_to_mlflow=False)
    text = paths.markdown.read_text()
    assert "6 trials trained" in text, text[text.find("## Search") :][:400]
    ranked = [row["cell"].split(" **")[0] for row in headline(text)]
    unpruned = {r.cell_hash for r in records if r.run_id not in pruned}
    assert len(ranked) == len(unpruned & mine), ranked
    assert "(not in the study file)" not in text
    assert "3 finished trials of an earlier search" in text
    assert text.count("FINISHED (an earlier search)") == 3  # the runs list still has them
    # named as the file names them: no hash told the two searches' trial_000s apart
    assert not [row for row in headline(text) if re.search(r"\([0-9a-f]{6}\)", row["cell"])]
    # the old search's report, from its own file, is the old search alone
    again = write_report("tpe", tracker, tmp_path / "old", old, log_to_mlflow=False).markdown
    ranked = [row["cell"].split(" **")[0] for row in headline(again.read_text())]
    assert len(ranked) == len(unpruned & older), ranked
    assert "finished trials of an earlier search" in again.read_text()

    summary = results.summary("tpe", uri=tracking_uri)
    assert set(summary["cell_hash"]) <= mine, set(summary["cell_hash"]) & older
    frame = results.runs("tpe", uri=tracking_uri)
    assert not frame[frame["run_id"].isin(pruned)]["counted"].any()
    assert not frame[frame["cell_hash"].isin(older)]["counted"].any()
    assert frame[frame["cell_hash"].isin(mine) & ~frame["run_id"].isin(pruned)]["counted"].all()
    # a study given as loaded decides which search is its own
    given = results.runs(old, uri=tracking_uri)
    assert set(given[given["counted"]]["cell_hash"]) <= {c.hash for c in old.cells}
