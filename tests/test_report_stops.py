"""Early stopping in the report, and the cures figure, from real sqlite MLflow stores.

The runs are logged through `suite.tracking.Tracker` as the runner logs them (tags, params,
per-epoch metrics, final metrics at step 0), with curves that end where each run stopped:
no training, so seconds. Numbers are checked against values read back with MLflow's own
client and recomputed here with scipy; figures are checked on the matplotlib objects the
report encodes (captured on their way to PNG), so a mark or a point in the wrong place fails.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from scipy import stats
from test_report import headline, mean_and_half

from suite.report import aggregate, cures, extra, figures, load, marks, write_report
from suite.report.figure_spec import CuresFigure
from suite.spec import SpecError
from suite.study import Study, build_study, load_study
from suite.tracking import Tracker

EPOCHS = 40
STOPS_STUDY = f"""\
# Early stopping in the report: 4 cells x 5 seeds of logged curves (nothing trains), seconds.
name: stops
description: Curves of unequal length, for the report's early-stopping views.
base:
  data: {{dataset: mnist, train_size: 300}}
  model: {{hidden: [8]}}
  train: {{epochs: {EPOCHS}}}
seeds: [0, 1, 2, 3, 4]
variants:
  baseline: {{}}
  patience_5: {{model: {{dropout: 0.1}}}}
  patience_10: {{model: {{dropout: 0.2}}}}
  patience_50: {{model: {{dropout: 0.3}}}}
report:
  figures:
    - {{kind: cures}}
    - {{kind: curves, metric: test_loss, smooth: 3}}
"""
# per cell: early stopping's patience (None: not set) and each seed's stopped epoch (None:
# ran all epochs); the weights kept are those of `patience` epochs before the stop
STOPS: dict[str, tuple[int | None, list[int | None]]] = {
    "baseline": (None, [None] * 5),
    "patience_5": (5, [18, 22, 25, 31, None]),
    "patience_10": (10, [28, None, 35, None, None]),
    "patience_50": (50, [None] * 5),
}


def history(cell: int, seed: int, epochs: int, overfit: float = 0.002) -> list[dict[str, float]]:
    """A plausible run: train accuracy rising to 1, test accuracy to ~0.76 then sagging,
    test loss falling then rising (what early stopping watches)."""
    rng = np.random.default_rng(100 * cell + seed)
    out = []
    for e in range(1, epochs + 1):
        lift = 1 - math.exp(-e / 6)
        train = min(1.0, 0.3 + 0.7 * lift + rng.normal(0, 0.01))
        test = 0.25 + (0.5 + 0.01 * cell) * lift - overfit * e + rng.normal(0, 0.01)
        losses = {
            "train_loss": 2.0 * math.exp(-e / 8) + 0.02 + abs(rng.normal(0, 0.01)),
            "test_loss": 1.6 * math.exp(-e / 5) + 0.5 + 0.012 * e + abs(rng.normal(0, 0.02)),
        }
        values = {"train_accuracy": train, "test_accuracy": test, "gap": train - test}
        out.append({**values, **losses, "weight_norm": 5.0 + 0.1 * e})
    return out


def log_run(
    tracker: Tracker,
    experiment_id: str,
    study: Study,
    cell_name: str,
    seed: int,
    curves: list[dict[str, float]],
    stop: tuple[int, int] | None = None,
    patience: int | None = None,
) -> str:
    """One finished run as the runner records it; `stop` = (stopped, restored epoch)."""
    cell = next(c for c in study.cells if c.name == cell_name)
    run_id = tracker.start_run(experiment_id, study.name, cell, seed, "bundled")
    tracker.set_tags(run_id, {"n_train": "300", "n_val": "0", "n_test": "2000"})
    if patience is not None:  # the flattened `train.early_stopping` params
        settings = {"monitor": "test_loss", "patience": str(patience), "restore_best": "true"}
        params = [Param(f"train.early_stopping.{k}", v) for k, v in settings.items()]
        tracker.client.log_batch(run_id, params=params)
    last = stop[0] if stop else len(curves)
    tracker.log_epochs(run_id, [(e, dict(curves[e - 1])) for e in range(1, last + 1)])
    kept = curves[(stop[1] if stop else last) - 1]  # final metrics: those of the kept weights
    best = max(range(last), key=lambda i: curves[i]["test_accuracy"])
    final = {
        "final_train_accuracy": kept["train_accuracy"],
        "final_test_accuracy": kept["test_accuracy"],
        "final_gap": kept["train_accuracy"] - kept["test_accuracy"],
        "best_test_accuracy": curves[best]["test_accuracy"],
        "best_epoch": best + 1,
        "train_seconds": 1.0,
    }
    if stop:
        final |= {"stopped_epoch": stop[0], "restored_epoch": stop[1]}
    tracker.finish(run_id, final)
    return run_id


@dataclass(frozen=True)
class Store:
    uri: str
    study: Study


def new_store(root: Path, template: Path, text: str) -> tuple[Store, Tracker, str]:
    path = root / "study.yaml"
    path.write_text(text)
    study = load_study(path, check_data=False)
    shutil.copyfile(template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    return Store(uri, study), tracker, experiment_id


@pytest.fixture(scope="module")
def stops_store(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> Store:
    store, tracker, experiment_id = new_store(
        tmp_path_factory.mktemp("stops"), _store_template, STOPS_STUDY
    )
    for index, (name, (patience, stopped)) in enumerate(STOPS.items()):
        for seed, epoch in enumerate(stopped):
            stop = (epoch, epoch - (patience or 0)) if epoch else None
            curves = history(index, seed, EPOCHS)
            log_run(tracker, experiment_id, store.study, name, seed, curves, stop, patience)
    return store


@dataclass(frozen=True)
class Report:
    folder: Path
    figures: dict[str, Figure]  # by title


def captured_report(store: Store, out: Path) -> Report:
    """The report, with every figure it encodes kept (by its title) for the tests to read."""
    kept: dict[str, Figure] = {}
    encode = figures._png

    def keep(figure: Figure) -> bytes:
        kept[figure.get_suptitle()] = figure
        return encode(figure)

    with pytest.MonkeyPatch.context() as patch:
        for module in (figures, extra, cures):
            patch.setattr(module, "_png", keep)
        write_report(store.study.name, Tracker(store.uri), out, store.study, False)
    return Report(out, kept)


@pytest.fixture(scope="module")
def stops_report(stops_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return captured_report(stops_store, tmp_path_factory.mktemp("stops-out"))


def client_values(store: Store) -> dict[str, list[dict[str, object]]]:
    """Per cell: each run's metrics and per-epoch histories, read with MLflow's client."""
    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name(store.study.name)
    out: dict[str, list[dict[str, object]]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        if "cell" not in run.data.tags:
            continue
        values: dict[str, object] = dict(run.data.metrics)
        for metric in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            points = client.get_metric_history(run.info.run_id, metric)
            values[metric] = {p.step: p.value for p in points}
        values["run_id"] = run.info.run_id
        out.setdefault(run.data.tags["cell"], []).append(values)
    return out


def half_width(values: list[float]) -> float:
    low, high = stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    return float(high - low) / 2


# -- unequal lengths ----------------------------------------------------------------------


def test_a_mean_at_an_epoch_is_over_the_seeds_that_reached_it(stops_store: Store) -> None:
    tracker = Tracker(stops_store.uri)
    runs = load.load_runs("stops", tracker).runs
    used = aggregate.finished_runs(runs)
    curves = aggregate.curves(load.load_histories(tracker, used, ["test_accuracy"], EPOCHS))
    runs_of = client_values(stops_store)["patience_5"]
    cell = next(c.hash for c in stops_store.study.cells if c.name == "patience_5")
    mine = curves[curves["cell_hash"] == cell].set_index("epoch")
    assert mine.index.max() == EPOCHS  # the line goes on to the longest run
    for epoch, reached in ((10, 5), (20, 4), (24, 3), (28, 2), (35, 1)):
        values = [r["test_accuracy"][epoch] for r in runs_of if epoch in r["test_accuracy"]]
        assert len(values) == reached
        row = mine.loc[epoch]
        assert (row["n"], row["runs"]) == (reached, 5)
        assert row["mean"] == pytest.approx(np.mean(values))
        if reached > 1:
            assert row["high"] - row["mean"] == pytest.approx(half_width(values))
        else:
            assert math.isnan(row["low"]) and math.isnan(row["high"])


def test_final_losses_are_those_of_the_weights_kept(
    stops_store: Store, stops_report: Report
) -> None:
    rows = {r["cell"]: r for r in headline((stops_report.folder / "report.md").read_text())}
    for name, runs in client_values(stops_store).items():
        for metric, label in (("train_loss", "train loss"), ("test_loss", "test loss")):
            kept = [r[metric][int(r.get("restored_epoch", max(r[metric])))] for r in runs]
            last = [r[metric][max(r[metric])] for r in runs]
            shown, half = mean_and_half(rows[name][label])
            assert shown == pytest.approx(np.mean(kept), abs=5e-4), (name, metric)
            assert half == pytest.approx(half_width(kept), abs=5e-4), (name, metric)
            if name == "patience_5":  # the last logged value would be another number
                assert abs(np.mean(last) - np.mean(kept)) > 0.01


def test_the_table_says_how_many_runs_stopped_and_when(
    stops_store: Store, stops_report: Report
) -> None:
    markdown = (stops_report.folder / "report.md").read_text()
    rows = {r["cell"]: r for r in headline(markdown)}
    stopped = {"baseline": "–", "patience_5": "4 of 5", "patience_10": "2 of 5"}
    assert {k: rows[k]["stopped early"] for k in stopped} == stopped
    assert rows["patience_50"]["stopped early"] == "0 of 5"  # set, never stopped
    assert rows["patience_50"]["stopped at epoch"] == "–"
    for name in ("patience_5", "patience_10"):
        patience, epochs = STOPS[name]
        at = [e for e in epochs if e]
        for label, values in (("stopped at epoch", at), ("kept epoch", [e - patience for e in at])):
            mean, half = mean_and_half(rows[name][label])
            assert mean == round(np.mean(values)) and half == round(half_width(values))
    assert "6 of 20 finished runs stopped early (train.early_stopping)" in markdown
    html = (stops_report.folder / "index.html").read_text()
    assert "<th>stopped early</th>" in html and "<td>4 of 5</td>" in html


def test_a_report_without_early_stopping_shows_none_of_it(report_dir: Path) -> None:
    markdown = (report_dir / "report.md").read_text()
    html = (report_dir / "index.html").read_text()
    for text in ("stopped early", "kept epoch", "n=", "stopped at epoch"):
        assert text not in markdown and text not in html


def facets(figure: Figure) -> dict[str, object]:
    return {ax.get_title().split("  (")[0]: ax for ax in figure.axes if ax.get_visible()}


def test_curves_mark_each_stop_and_the_seeds_left(stops_store: Store, stops_report: Report) -> None:
    (accuracy,) = [f for t, f in stops_report.figures.items() if "test (dashed) accuracy" in t]
    panels = facets(accuracy)
    values = client_values(stops_store)
    for name, (_, epochs) in STOPS.items():
        ax = panels[name]
        stops = [line for line in ax.lines if line.get_gid() == marks.STOP]
        fewer = [line for line in ax.lines if line.get_gid() == marks.FEWER]
        counts = [t for t in ax.texts if t.get_gid() == marks.COUNT and t.get_visible()]
        at = sorted(e for e in epochs if e)
        if not at:  # every seed ran to the end: the panel is drawn as before
            assert not stops and not fewer and not counts
            assert "stopped" not in ax.get_title()
            continue
        assert f"5 seeds, {len(at)} stopped" in ax.get_title()
        assert len(stops) == 2  # on the train and on the test curve
        for line, metric in zip(stops, ("train_accuracy", "test_accuracy"), strict=True):
            xs, ys = line.get_xdata(), line.get_ydata()
            assert sorted(xs) == at
            want = {r[metric][max(r[metric])] for r in values[name] if max(r[metric]) < EPOCHS}
            assert set(np.round(ys, 6)) == set(np.round(list(want), 6))
        # the full line stops where the first seed does; the thinner one goes on from there
        full = [x for x in ax.lines if x.get_gid() is None and x.get_linestyle() == "-"][0]
        x, y = full.get_xdata(), full.get_ydata()
        assert np.isfinite(y[x <= at[0]]).all() and np.isnan(y[x > at[0]]).all()
        thin_x = fewer[0].get_xdata()[np.isfinite(fewer[0].get_ydata())]
        assert thin_x.min() == at[0] and thin_x.max() == EPOCHS
        assert fewer[0].get_linewidth() < full.get_linewidth()
        shown = {t.get_text() for t in counts}
        assert f"n={5 - len(at)} of 5" in shown  # the fewest seeds, at the latest drop
        assert shown <= {f"n={5 - k} of 5" for k in range(1, len(at) + 1)}
    legend = [t.get_text() for t in accuracy.legends[0].get_texts()]
    assert any("a run stopped early" in t for t in legend)
    assert any("fewer seeds" in t for t in legend)


def test_one_axis_and_study_curves_mark_stops_in_the_cells_colour(stops_report: Report) -> None:
    (gap,) = [f for t, f in stops_report.figures.items() if "generalisation gap" in t]
    (ax,) = gap.axes
    stops = [line for line in ax.lines if line.get_gid() == marks.STOP]
    assert sorted(len(line.get_xdata()) for line in stops) == [2, 4]  # patience_10, patience_5
    means = {line.get_label(): line.get_color() for line in ax.lines if line.get_gid() is None}
    for line in stops:
        assert line.get_markeredgecolor() in means.values()
    (study,) = [f for t, f in stops_report.figures.items() if "test loss by cell" in t]
    stops = [line for ax in study.axes for line in ax.lines if line.get_gid() == marks.STOP]
    assert sorted(x for line in stops for x in line.get_xdata()) == [18, 22, 25, 28, 31, 35]


# -- the cures figure ---------------------------------------------------------------------


def cure_points(figure: Figure) -> dict[str, ErrorbarContainer]:
    (ax,) = figure.axes
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_the_cures_figure_has_a_point_per_cell_with_both_intervals(
    stops_store: Store, stops_report: Report
) -> None:
    (figure,) = [f for t, f in stops_report.figures.items() if "final gap against" in t]
    drawn = cure_points(figure)
    values = client_values(stops_store)
    assert set(drawn) == set(values)  # one point per cell
    for name, runs in values.items():
        gap = [float(r["final_gap"]) for r in runs]
        test = [float(r["final_test_accuracy"]) for r in runs]
        data, _, (x_bar, y_bar) = drawn[name].lines
        assert data.get_xdata()[0] == pytest.approx(np.mean(gap))
        assert data.get_ydata()[0] == pytest.approx(np.mean(test))
        (((x0, _), (x1, _)),) = x_bar.get_segments()
        (((_, y0), (_, y1)),) = y_bar.get_segments()
        assert (x1 - x0) / 2 == pytest.approx(half_width(gap))
        assert (y1 - y0) / 2 == pytest.approx(half_width(test))
    (ax,) = figure.axes
    base = drawn["baseline"].lines[0]
    (vertical,) = [x for x in ax.lines if x.get_gid() == "baseline-gap"]
    (horizontal,) = [x for x in ax.lines if x.get_gid() == "baseline-test"]
    assert vertical.get_xdata()[0] == pytest.approx(base.get_xdata()[0])
    assert horizontal.get_ydata()[0] == pytest.approx(base.get_ydata()[0])
    (area,) = [p for p in ax.patches if p.get_gid() == "cures"]
    assert area.get_x() + area.get_width() == pytest.approx(base.get_xdata()[0])
    assert area.get_y() == pytest.approx(base.get_ydata()[0])
    labels = {t.get_text() for t in ax.texts if t.get_gid() == "cell-label"}
    assert labels == {"baseline", "patience_5", "patience_10", "patience_50"}
    html = (stops_report.folder / "index.html").read_text()
    assert "Each cell at its mean final gap (x: train − test accuracy" in html


CROWD = [  # (name, final train accuracy, final test accuracy) per cell; a tight crowd
    ("baseline", 1.00, 0.755),
    *[(f"weight_decay_{w}", 1.0 - w, 0.745 + 0.05 * w) for w in (0.01, 0.02, 0.03, 0.05, 0.1)],
    *[(f"dropout_{d}", 1.0 - d / 2, 0.75 + d / 20) for d in (0.1, 0.15, 0.2, 0.3, 0.5)],
    ("batch_norm", 1.0, 0.72),
    ("batch_norm_dropout", 0.97, 0.74),
    ("xavier_init", 1.0, 0.752),
    ("init_small", 0.12, 0.11),  # does not learn
]


def test_fifteen_cells_keep_their_labels_apart(
    tmp_path: Path, _store_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variants = "".join(
        f"  {name}: {{model: {{hidden: [{8 + i}]}}}}\n" for i, (name, _, _) in enumerate(CROWD)
    )
    text = STOPS_STUDY.split("variants:")[0] + "variants:\n" + variants
    text += "report:\n  figures: [{kind: cures}]\n"
    store, tracker, experiment_id = new_store(tmp_path, _store_template, text)
    for i, (name, train, test) in enumerate(CROWD):
        for seed in range(3):
            rng = np.random.default_rng(10 * i + seed)
            a, b = train - abs(rng.normal(0, 0.01)), test + rng.normal(0, 0.008)
            curves = [{"train_accuracy": a, "test_accuracy": b, "gap": a - b}] * 3
            log_run(tracker, experiment_id, store.study, name, seed, curves)
    report = captured_report(store, tmp_path / "out")
    (figure,) = [f for t, f in report.figures.items() if "final gap against" in t]
    (ax,) = figure.axes
    assert len(cure_points(figure)) == len(CROWD) - 1  # init_small is listed, not drawn
    legend = " ".join(t.get_text() for t in figure.legends[0].get_texts())
    assert "not drawn:\ninit_small (does not learn)" in legend
    artifacts = os.environ.get("SUITE_TEST_ARTIFACTS")
    if artifacts:  # for a person to look at
        shutil.copyfile(tmp_path / "out" / "figure1-cures.png", Path(artifacts) / "cures-15.png")
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    labels = [t for t in ax.texts if isinstance(t, Annotation) and t.get_gid() == "cell-label"]
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the words, not the leader
    assert len(boxes) == len(CROWD) - 1
    for i, box in enumerate(boxes):
        assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1, labels[i].get_text()
        assert ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1, labels[i].get_text()
        for j in range(i):
            assert not box.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())


def test_top_keeps_the_best_cells_and_the_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    def row(name: str, order: int, test: list[float], gap: list[float]) -> aggregate.CellRow:
        stats = {
            "final_test_accuracy": aggregate.Stat.of(test),
            "final_gap": aggregate.Stat.of(gap),
        }
        return aggregate.CellRow(name, name, order, f"h{order}", True, False, 2, 2, 0, 0, stats)

    base = row("baseline", 0, [0.70, 0.72], [0.30, 0.28])
    table = [
        row("a", 1, [0.80, 0.82], [0.10, 0.12]),
        row("b", 2, [0.78, 0.76], [0.20, 0.22]),
        row("c", 3, [0.75, 0.74], [0.25, 0.21]),
        base,
    ]
    kept: list[Figure] = []
    monkeypatch.setattr(cures, "_png", lambda figure: kept.append(figure) or b"png")
    spec = CuresFigure(kind="cures", top=2)
    assert cures.figure(spec, table, base, figures.palette(table), "s") == b"png"
    assert sorted(cure_points(kept[0])) == ["a", "b", "baseline"]
    assert "Dashed lines go through the baseline;" in cures.caption(base)
    assert "through the baseline (c)" in cures.caption(table[2])


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("[{kind: cures, top: 0}]", r"s\.yaml: report\.figures\.0\.top: must be greater than 0"),
        ("[{kind: cures, colour: red}]", r"s\.yaml: report\.figures\.0\.colour: unknown key"),
    ],
)
def test_the_cures_figure_is_validated(block: str, message: str) -> None:
    import yaml

    variants = {"baseline": {}, "b": {"model": {"dropout": 0.1}}}
    raw = {"name": "s", "variants": variants, "report": {"figures": yaml.safe_load(block)}}
    with pytest.raises(SpecError, match=message):
        build_study(raw, Path("s.yaml"), {}, check_data=False)
    raw["report"] = {"figures": [{"kind": "cures", "top": 5, "title": "cures"}]}
    (spec,) = build_study(raw, Path("s.yaml"), {}, check_data=False).report.figures
    assert isinstance(spec, CuresFigure) and spec.top == 5


def test_the_docs_name_the_cures_figure() -> None:
    text = (REPO_ROOT / "docs" / "report.md").read_text()
    assert re.search(r"\{kind: cures", text) and "stopped early" in text


# -- in a browser -------------------------------------------------------------------------


@pytest.fixture
def artifacts() -> Iterator[Path]:
    folder = Path(os.environ.get("SUITE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


@pytest.mark.browser
def test_the_stops_report_renders_in_chromium(stops_report: Report, artifacts: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright: make setup (the dev extra)"
    )
    from test_browser import CHROMIUM_ARGS, chromium

    binary = chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            tab = page.new_page()
            tab.goto((stops_report.folder / "index.html").as_uri(), wait_until="load")
            images = tab.evaluate(
                "() => Array.from(document.images).map(i => [i.alt, i.naturalWidth])"
            )
            tab.screenshot(path=str(artifacts / "report-stops.png"), full_page=True)
        finally:
            browser.close()
    # the study's cures and test-loss figures, the four views and the final gap chart
    assert len(images) == 7 and all(width > 100 for _, width in images), images
    assert "cures" in [alt for alt, _ in images]
