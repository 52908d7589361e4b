"""The report of a search: trials ranked by validation accuracy with the values each trained
with, pruned trials in their own table and nowhere in the ranking, the best so far against
trials and epochs, the fANOVA importance of each searched setting, pruned trials hollow on the
scatter, and `results.runs`' trial columns. Real training (a TPE search with Hyperband
pruning, and a random search), a real sqlite store, each trained once per module."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ReportStore
from test_report import PNG_SIGNATURE, headline, md_table

from suite import results
from suite.report import search as report_search
from suite.report import write_report
from suite.runner import run_study
from suite.spec import short_value
from suite.study import Study, load_study
from suite.tracking import Tracker

LR, WD = "train.optimizer.learning_rate", "model.weight_decay"
# 12 slots of a 9-epoch trial on 100 images: Hyperband's rungs at epochs 1 and 3 end some
STUDY = """
name: NAME
base:
  data: {train_size: 100, val_size: 50, test_size: 100}
  model: {hidden: [16]}
  train: {batch_size: 20, epochs: EPOCHS, optimizer: {name: sgd}}
seeds: [0]
search:
  trials: TRIALS
  seed: 0
  sampler: SAMPLER
  pruner: PRUNER
  space:
    train.optimizer.learning_rate: {log_uniform: [1.0e-4, 1.0]}
    model.weight_decay: {log_uniform: [1.0e-6, 1.0e-2]}
report:
  versus_baseline: false
  sort: final_val_accuracy
  metrics: [validation]
  figures:
    - kind: scatter
      x: train.optimizer.learning_rate
      y: model.weight_decay
      color: final_val_accuracy
      log_x: true
      log_y: true
"""


@dataclass(frozen=True)
class Searched:
    """A search trained into a store and its report."""

    uri: str
    study: Study
    folder: Path
    markdown: str
    tags: dict[str, dict[str, str]]  # cell name -> its run's tags
    metrics: dict[str, dict[str, float]]  # cell name -> its run's metrics


def _searched(
    root: Path, template: Path, name: str, sampler: str, pruner: str, trials: int, epochs: int
) -> Searched:
    text = (
        STUDY.replace("NAME", name)
        .replace("SAMPLER", sampler)
        .replace("PRUNER", pruner)
        .replace("TRIALS", str(trials))
        .replace("EPOCHS", str(epochs))
    )
    path = root / f"{name}.yaml"
    path.write_text(text)
    shutil.copyfile(template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri)
    with pytest.MonkeyPatch.context() as patch:  # path-less data: the bundled subset
        from suite import data

        patch.setattr(data, "KERAS_CACHE", Path("/nonexistent/keras/datasets/mnist.npz"))
        study = load_study(path)
        run_study(study, tracker)
    out = root / "report"
    write_report(name, tracker, out, study, log_to_mlflow=False)
    experiment_id = tracker.experiment_id(name, create=False)
    assert experiment_id is not None
    records = [r for r in tracker.runs(experiment_id) if r.status == "FINISHED"]
    return Searched(
        uri,
        study,
        out,
        (out / "report.md").read_text(),
        {r.tags["cell"]: r.tags for r in records},
        {r.tags["cell"]: r.metrics for r in records},
    )


@pytest.fixture(scope="module")
def tpe(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> Iterator[Searched]:
    root = tmp_path_factory.mktemp("tpe")
    found = _searched(root, _store_template, "tpe-report", "tpe", "hyperband", 12, 9)
    pruned = [c for c, tags in found.tags.items() if "pruned" in tags]
    # the tests below mean something only with trials of both kinds
    assert 0 < len(pruned) < len(found.tags), pruned
    yield found


@pytest.fixture(scope="module")
def random_search(
    tmp_path_factory: pytest.TempPathFactory, _store_template: Path
) -> Iterator[Searched]:
    root = tmp_path_factory.mktemp("random")
    yield _searched(root, _store_template, "random-report", "random", "none", 4, 3)


def pruned_names(searched: Searched) -> list[str]:
    """The pruned trials, by slot."""
    tagged = [(int(t["trial"]), c) for c, t in searched.tags.items() if "pruned" in t]
    return [c for _, c in sorted(tagged)]


def test_pruned_trials_have_their_own_table_and_are_not_ranked(tpe: Searched) -> None:
    ranked = [row["cell"] for row in headline(tpe.markdown)]
    pruned = pruned_names(tpe)
    assert set(ranked) == set(tpe.tags) - set(pruned)
    table = md_table(tpe.markdown, "| trial |")
    assert [row["trial"] for row in table] == pruned  # by slot
    for row in table:
        tags, metrics = tpe.tags[row["trial"]], tpe.metrics[row["trial"]]
        assert row["pruned at epoch"] == tags["pruned"]
        assert float(row["validation accuracy there"]) == pytest.approx(
            metrics["final_val_accuracy"], abs=5e-4
        )
        point = json.loads(tags["search_point"])
        assert row[LR] == short_value(point[LR], LR)
    # the ranking is by final validation accuracy: descending
    values = [float(row["validation accuracy"]) for row in headline(tpe.markdown)]
    assert values == sorted(values, reverse=True)
    assert f"{len(pruned)} pruned trials are not ranked here" in tpe.markdown


def test_the_ranking_shows_each_trials_asked_values(tpe: Searched) -> None:
    rows = headline(tpe.markdown)
    for row in rows:
        point = json.loads(tpe.tags[row["cell"]]["search_point"])
        assert (row[LR], row[WD]) == (short_value(point[LR], LR), short_value(point[WD], WD))
    # asked values, not the frame's one learning rate
    assert len({row[LR] for row in rows}) == len(rows)


def test_the_headline_never_names_a_pruned_trial(tpe: Searched) -> None:
    top = tpe.markdown.split("## Headline")[0]
    for name in pruned_names(tpe):
        assert not re.search(rf"\b{name}\b", top), name
    finished = {c: m["final_val_accuracy"] for c, m in tpe.metrics.items() if c in tpe.tags}
    best = max((v, c) for c, v in finished.items() if "pruned" not in tpe.tags[c])[1]
    assert f"Best by final validation accuracy: **{best}**" in top


def test_the_search_note_says_sampler_pruner_and_how_many_were_pruned(tpe: Searched) -> None:
    section = tpe.markdown.split("## Search")[1].split("###")[0]
    pruned = len(pruned_names(tpe))
    finished = len(tpe.tags) - pruned
    assert f"Sampler tpe, pruner hyperband: {len(tpe.tags)} trials trained, " in section
    assert f"{finished} finished, {pruned} pruned" in section
    assert "The trials ran one at a time" in section  # this module trains with one worker
    assert "is not reproducible, while each trial is" in section


def test_best_so_far_adds_pruned_epochs_but_never_a_best(tpe: Searched) -> None:
    assert (tpe.folder / "best_so_far.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "![best so far](best_so_far.png)" in tpe.markdown
    section = _section(tpe)
    progress = report_search.best_so_far(section.trials)
    slots = sorted(int(t["trial"]) for t in tpe.tags.values())
    assert list(progress["number"]) == slots
    epochs = sorted((int(t["trial"]), int(t["epochs_trained"])) for t in tpe.tags.values())
    assert list(progress["cumulative"]) == list(_running_sum([e for _, e in epochs]))
    best = -math.inf
    for row in progress.to_dict("records"):
        if not row["pruned"]:
            best = max(best, row["value"])
        assert row["best"] == best or (math.isnan(row["best"]) and best == -math.inf)
    # a finished trial trained every epoch
    assert max(e for _, e in epochs) == tpe.study.cells[0].config.train.epochs


def test_importance_names_both_settings_over_the_finished_trials(tpe: Searched) -> None:
    finished = len(tpe.tags) - len(pruned_names(tpe))
    assert f"over the {finished} finished trials" in tpe.markdown
    rows = md_table(tpe.markdown, "| setting | importance |")
    assert {row["setting"] for row in rows} == {LR, WD}
    assert sum(float(row["importance"]) for row in rows) == pytest.approx(1.0, abs=2e-3)
    # seeded: the same runs give the same numbers
    section = _section(tpe)
    again = report_search.importances(tpe.study.search, section.trials)[0]
    assert again == section.importance
    # fewer than two finished trials: a note, no numbers
    one = [t for t in section.trials if t.pruned is None][:1]
    none, why = report_search.importances(tpe.study.search, one)
    assert none == [] and "needs at least 2 finished trials" in why


def test_the_scatter_places_every_trial_at_its_asked_point(tpe: Searched) -> None:
    from suite.report import aggregate, groups, load

    png = (tpe.folder / "figure1-scatter.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    pruned = len(pruned_names(tpe))
    assert "hollow grey circles: pruned trials at their points" in tpe.markdown
    # what the scatter places: each cell's values from its runs, pruned trials' too
    runs = load.load_runs(tpe.study.name, Tracker(tpe.uri)).runs
    cells = aggregate.cell_rows(runs, tpe.study)
    placed = groups.cell_values(runs, cells, LR, tpe.study)
    by_name = {c.name: c.cell_hash for c in cells}
    for name, tags in tpe.tags.items():
        assert placed[by_name[name]] == pytest.approx(json.loads(tags["search_point"])[LR])
    assert 0 < pruned < len(placed)


def test_results_runs_carry_trial_pruned_and_epochs(
    tpe: Searched, report_store: ReportStore
) -> None:
    frame = results.runs("tpe-report", uri=tpe.uri).set_index("cell")
    for cell, tags in tpe.tags.items():
        assert frame.loc[cell, "trial"] == int(tags["trial"])
        assert frame.loc[cell, "epochs_trained"] == int(tags["epochs_trained"])
        pruned = frame.loc[cell, "pruned"]
        assert (math.isnan(pruned) and "pruned" not in tags) or pruned == int(tags["pruned"])
    assert frame.loc[list(tpe.tags), LR].map(lambda v: isinstance(v, float)).all()
    plain = results.runs(report_store.study.name, uri=report_store.uri)
    assert not {"trial", "pruned", "epochs_trained", "search_point"} & set(plain.columns)


def test_a_random_search_reports_as_before_with_best_so_far_and_importance(
    random_search: Searched,
) -> None:
    markdown = random_search.markdown
    rows = headline(markdown)
    drawn = {c.name: c.grid_point for c in random_search.study.cells}
    assert len(rows) == 4
    for row in rows:
        assert row[LR] == short_value(drawn[row["cell"]][LR], LR)
    assert "Sampler random, pruner none: 4 trials trained." in markdown
    assert "### Pruned trials" not in markdown and "not ranked here" not in markdown
    assert (random_search.folder / "best_so_far.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "in the study's order" in markdown
    rows = md_table(markdown, "| setting | importance |")
    assert {row["setting"] for row in rows} == {LR, WD}
    assert "over the 4 finished trials" in markdown
    assert (random_search.folder / "figure1-scatter.png").exists()
    assert "hollow" not in markdown


def _section(searched: Searched) -> Any:
    from suite.report import aggregate, load

    runs = load.load_runs(searched.study.name, Tracker(searched.uri)).runs
    cells = aggregate.cell_rows(runs, searched.study)
    section = report_search.section(searched.study, cells, aggregate.finished_runs(runs))
    assert section is not None
    return section


def _running_sum(values: list[int]) -> Iterator[int]:
    total = 0
    for value in values:
        total += value
        yield total


def test_side_by_side_leaves_pruned_trials_out_and_says_so(
    tpe: Searched, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suite import data
    from suite.report.compare import side_by_side

    db = tmp_path / "mlflow.db"
    shutil.copyfile(tpe.uri.removeprefix("sqlite:///"), db)
    tracker = Tracker(f"sqlite:///{db}")
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "name: plain\nbase:\n  data: {train_size: 100, val_size: 50, test_size: 100}\n"
        "  model: {hidden: [16]}\n  train: {batch_size: 20, epochs: 2}\nseeds: [0]\n"
    )
    monkeypatch.setattr(data, "KERAS_CACHE", Path("/nonexistent/keras/datasets/mnist.npz"))
    assert run_study(load_study(plain), tracker).ok
    side = side_by_side(["tpe-report", "plain"], tracker)
    write_report(side.runs.study, tracker, tmp_path / "side", None, False, None, side)
    markdown = (tmp_path / "side" / "report.md").read_text()
    ranked = [row["cell"].split(" **")[0] for row in headline(markdown)]
    pruned = pruned_names(tpe)
    assert sorted(ranked) == sorted(
        [f"tpe-report: {c}" for c in set(tpe.tags) - set(pruned)] + ["plain: base"]
    )
    assert f"Pruned search trials are left out ({len(pruned)} of tpe-report)" in markdown
