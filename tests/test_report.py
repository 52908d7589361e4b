"""The comparison report, end to end: a tiny study trained into a temporary MLflow store.

The numbers in the report are checked against values read straight from MLflow (the client's
own per-run reads) and recomputed here with scipy, so a wrong aggregate cannot pass.
"""

from __future__ import annotations

import base64
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPORT_FAILURE, ReportStore
from mlflow.tracking import MlflowClient
from scipy import stats
from typer.testing import CliRunner

from suite.report import ReportError, write_report
from suite.report.aggregate import (
    Difference,
    ReferenceCheck,
    Stat,
    _sentence,
    baseline_cell,
    cell_rows,
    failed_runs,
    finished_runs,
    ranked,
)
from suite.spec import SpecError
from suite.study import Study, build_study
from suite.tracking import Tracker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("accuracy.png", "loss.png", "gap.png", "weight_norm.png", "final_gap.png")
FLAG = " **does not learn**"  # after a cell's name in the Markdown tables


def md_table(markdown: str, header_start: str) -> list[dict[str, str]]:
    """The Markdown table whose header line starts with `header_start`, as {column: text}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [v.strip() for v in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        row = dict(zip(header, cells, strict=True))
        if row.get("cell", "").endswith(FLAG):  # the name, and the flag apart
            row["cell"], row["flag"] = row["cell"][: -len(FLAG)], "does not learn"
        rows.append(row)
    return rows


def headline(markdown: str) -> list[dict[str, str]]:
    return md_table(markdown, "| # | cell |")


def mean_and_half(text: str) -> tuple[float, float]:
    value = text.replace("★", "").strip()
    mean, _, half = value.partition(" ± ")
    return float(mean), float(half) if half else math.nan


def store_values(store: ReportStore) -> dict[str, list[dict[str, float]]]:
    """Per cell name: each FINISHED run's final metrics and last train/test loss, read with
    MLflow's own client (one request per run and metric: the slow, obvious way)."""
    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name(store.study.name)
    out: dict[str, list[dict[str, float]]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        if run.info.status != "FINISHED" or "cell" not in run.data.tags:
            continue
        values = dict(run.data.metrics)
        for metric in ("train_loss", "test_loss"):
            history = client.get_metric_history(run.info.run_id, metric)
            values[f"final_{metric}"] = max(history, key=lambda m: m.step).value
        out.setdefault(run.data.tags["cell"], []).append(values)
    return out


def t_interval(values: list[float]) -> tuple[float, float]:
    if np.std(values) == 0:
        return float(values[0]), 0.0
    low, high = stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    return float(np.mean(values)), float((high - low) / 2)


def test_report_files_and_self_contained_html(report_dir: Path) -> None:
    html = (report_dir / "index.html").read_text()
    markdown = (report_dir / "report.md").read_text()
    for name in FIGURES:
        assert (report_dir / name).read_bytes().startswith(PNG_SIGNATURE), name
        assert f"]({name})" in markdown
    # nothing the page needs comes from elsewhere: every image is inline, no scripts, no links
    assert not re.search(r"""<(script|link|iframe)\b""", html)
    assert not re.search(r"""\bsrc\s*=\s*["']?\s*(https?:)?//""", html)
    images = re.findall(r"<img\b[^>]*>", html)
    assert len(images) == len(FIGURES)
    for tag in images:
        src = re.search(r'src="([^"]+)"', tag)
        assert src and src.group(1).startswith("data:image/png;base64,")
        assert base64.b64decode(src.group(1).split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "Tiny baseline against weight decay" in html
    for section in ("Headline", "Versus baseline", "Learning curves", "Final gap", "Provenance"):
        assert section in html and f"## {section}" in markdown
    for word in ("tracking URI", "data source", "images: train / validation / test"):
        assert word in html and word in markdown
    assert "images: train / validation / test: 60 / 0 / 200" in markdown


def test_headline_numbers_match_the_store(report_store: ReportStore, report_dir: Path) -> None:
    values = store_values(report_store)
    rows = headline((report_dir / "report.md").read_text())
    assert {r["cell"] for r in rows} == {"weight_decay", "baseline"}
    columns = {
        "train accuracy": "final_train_accuracy",
        "test accuracy": "final_test_accuracy",
        "gap (train − test)": "final_gap",
        "best test accuracy": "best_test_accuracy",
        "best epoch": "best_epoch",
        "train loss": "final_train_loss",
        "test loss": "final_test_loss",
    }
    for row in rows:
        runs = values[row["cell"]]
        assert row["seeds done"] == f"{len(runs)} / 2"
        for label, metric in columns.items():
            mean, half = t_interval([r[metric] for r in runs])
            shown_mean, shown_half = mean_and_half(row[label])
            digits = 0 if metric == "best_epoch" else 3
            tolerance = 0.5 * 10**-digits + 1e-9
            assert shown_mean == pytest.approx(mean, abs=tolerance), (row["cell"], label)
            if half == 0:  # all seeds agree: ± 0
                assert shown_half == 0
            else:
                assert shown_half == pytest.approx(half, abs=tolerance), (row["cell"], label)
    # best first, by mean final test accuracy, and the star on the best
    means = [mean_and_half(r["test accuracy"])[0] for r in rows]
    assert means == sorted(means, reverse=True)
    assert "★" in rows[0]["test accuracy"] and "★" not in rows[1]["test accuracy"]


def test_versus_baseline_matches_welch(report_store: ReportStore, report_dir: Path) -> None:
    values = store_values(report_store)
    markdown = (report_dir / "report.md").read_text()
    (row,) = md_table(markdown, "| cell | seeds | Δ test accuracy")
    assert row["cell"] == "weight_decay" and row["seeds"] == "2 vs 2"
    # two columns are named p: read them by position
    (line,) = [
        x
        for x in markdown.splitlines()
        if re.match(r"\| weight_decay( \*\*does not learn\*\*)? \| 2 vs 2 \|", x)
    ]
    cells = [v.strip() for v in line.strip().strip("|").split("|")]
    for label, p_text, metric in (
        ("Δ test accuracy (95% interval)", cells[3], "final_test_accuracy"),
        ("Δ gap (95% interval)", cells[5], "final_gap"),
    ):
        a = [r[metric] for r in values["weight_decay"]]
        b = [r[metric] for r in values["baseline"]]
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(0.95)
        numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", row[label])]
        assert numbers == pytest.approx(
            [np.mean(a) - np.mean(b), interval.low, interval.high], abs=5e-4 + 1e-9
        )
        assert p_text == ("<0.001" if result.pvalue < 0.001 else f"{result.pvalue:.3f}")
    # the plain sentence is there, above the table; the report opens with the finding
    assert markdown.count("- weight_decay ") == 1
    assert markdown.splitlines()[2].startswith("**") and "Versus" not in markdown.split("##")[0]


def test_failed_run_is_counted_and_reference_checked(report_dir: Path) -> None:
    markdown = (report_dir / "report.md").read_text()
    rows = {r["cell"]: r for r in headline(markdown)}
    assert rows["baseline"]["failed"] == "1"
    assert "partial" in rows["baseline"]["status"]
    assert rows["weight_decay"]["status"] == "complete"
    assert "## Failed runs" in markdown and REPORT_FAILURE in markdown
    (check,) = md_table(markdown, "| cell | metric | published |")
    assert check["cell"] == "baseline" and check["published"] == "0.74–0.77"
    mean, half = mean_and_half(check["ours"])
    if 0.74 <= mean <= 0.77:
        assert check["verdict"] == "✓ within"
    elif mean - half <= 0.77 and mean + half >= 0.74:
        assert check["verdict"] == "✗ outside; our 95% interval overlaps"
    else:
        assert check["verdict"] == "✗ outside"
    html = (report_dir / "index.html").read_text()
    assert html.count('class="partial') == 1 and REPORT_FAILURE in html


def test_runs_are_linked_to_the_ui_and_the_report_is_an_artifact(
    report_store: ReportStore, report_dir: Path
) -> None:
    client = MlflowClient(report_store.uri)
    experiment = client.get_experiment_by_name(report_store.study.name)
    runs = client.search_runs([experiment.experiment_id])
    (report_run,) = [r for r in runs if r.data.tags.get("run_kind") == "report"]
    assert report_run.info.status == "FINISHED"
    stored = {Path(a.path).name for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert {"index.html", "report.md", *FIGURES} <= stored
    markdown = (report_dir / "report.md").read_text()
    for run in runs:
        if run is not report_run:
            url = f"/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
            assert f"(http://127.0.0.1:5000{url})" in markdown
    # the report run is no (cell, seed) run: the study's runs do not count it
    tracker = Tracker(report_store.uri)
    assert report_run.info.run_id not in {r.run_id for r in tracker.runs(experiment.experiment_id)}


def test_a_second_report_reuses_the_report_run(report_store: ReportStore, tmp_path: Path) -> None:
    tracker = Tracker(report_store.uri)
    first = write_report(report_store.study.name, tracker, tmp_path / "a", report_store.study)
    second = write_report(report_store.study.name, tracker, tmp_path / "b", report_store.study)
    assert first.run_id is not None and first.run_id == second.run_id


def test_report_block_picks_baseline_views_and_layout(
    report_store: ReportStore, tmp_path: Path
) -> None:
    text = report_store.study_path.read_text() + (
        "report: {baseline: weight_decay, metrics: [accuracy, reg_loss], columns: 1}\n"
    )
    path = tmp_path / "with-report.yaml"
    path.write_text(text)
    from suite.study import load_study

    study = load_study(path)
    paths = write_report(study.name, Tracker(report_store.uri), tmp_path / "out", study, False)
    assert paths.run_id is None
    names = sorted(p.name for p in paths.folder.glob("*.png"))
    assert names == ["accuracy.png", "final_gap.png", "reg_loss.png"]
    markdown = paths.markdown.read_text()
    assert "## Versus baseline: `weight_decay`" in markdown
    (row,) = md_table(markdown, "| cell | seeds | Δ test accuracy")
    assert row["cell"] == "baseline"


def test_a_baseline_without_runs_falls_back_with_a_note(
    report_store: ReportStore, tmp_path: Path
) -> None:
    from suite.study import load_study

    text = report_store.study_path.read_text().replace(
        "  baseline: {}\n", "  baseline: {}\n  fresh: {model: {hidden: [4]}}\n"
    )
    path = tmp_path / "fresh.yaml"
    path.write_text(text + "report: {baseline: fresh}\n")
    study = load_study(path)
    paths = write_report(study.name, Tracker(report_store.uri), tmp_path / "out", study, False)
    markdown = paths.markdown.read_text()
    assert "The study's baseline 'fresh' has no finished runs" in markdown
    assert "## Versus baseline: `baseline`" in markdown
    rows = {r["cell"]: r for r in headline(markdown)}
    assert rows["fresh"]["status"] == "**not run**" and rows["fresh"]["#"] == "3"  # last


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{baseline: basline}", r"report\.baseline: no such cell 'basline'.*did you mean"),
        ("{metrics: [acuracy]}", r"report\.metrics\.0: .*accuracy"),
        ("{columns: 0}", r"report\.columns: "),
        ("{colums: 2}", r"report\.colums: unknown key.*columns"),
    ],
)
def test_report_block_errors(block: str, message: str) -> None:
    import yaml

    variants = {"baseline": {}, "b": {"model": {"dropout": 0.1}}}
    raw = {"name": "s", "variants": variants, "report": yaml.safe_load(block)}
    with pytest.raises(SpecError, match=message):
        build_study(raw, Path("s.yaml"), {}, check_data=False)


def test_without_the_study_file(
    report_store: ReportStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = write_report(report_store.study.name, Tracker(report_store.uri))
    assert paths.folder == Path("reports") / report_store.study.name  # under the cwd
    assert (tmp_path / "reports" / report_store.study.name / "index.html").is_file()
    markdown = paths.markdown.read_text()
    assert {r["cell"] for r in headline(markdown)} == {"baseline", "weight_decay"}
    assert "## Reference check" not in markdown  # the ranges live in the study file
    assert "## Versus baseline: `baseline`" in markdown  # found by name


def test_user_errors(report_store: ReportStore, tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no study 'nope' in .*; studies: tiny-report$"):
        write_report("nope", Tracker(report_store.uri), tmp_path)

    missing = tmp_path / "missing.db"
    with pytest.raises(ReportError, match="no studies in"):
        write_report("tiny-report", Tracker(f"sqlite:///{missing}"), tmp_path)
    assert not missing.exists()  # a report never creates a store

    # a fresh store: first empty, then with a study whose only run failed
    tracker = Tracker(tracking_uri)
    with pytest.raises(ReportError, match="no studies in"):
        write_report("tiny-report", tracker, tmp_path)
    experiment_id = tracker.experiment_id("broken")
    assert experiment_id is not None
    run_id = tracker.start_run(experiment_id, "broken", report_store.study.cells[0], 0, "test")
    tracker.fail(run_id, REPORT_FAILURE)
    with pytest.raises(ReportError, match=r"'broken' has no FINISHED runs .*\(1 failed\)"):
        write_report("broken", tracker, tmp_path)
    assert not list(tmp_path.glob("*.html"))


def test_cli_report(report_store: ReportStore, tmp_path: Path) -> None:
    from suite.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["report", str(report_store.study_path), "--tracking-uri", report_store.uri]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in "".join(result.stdout.split())  # rich may fold a long path
    assert (out / "report.md").is_file()

    result = runner.invoke(app, ["report", "nope", "--tracking-uri", report_store.uri])
    assert result.exit_code != 0
    assert "no study 'nope'" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def frame(**columns: list[object]) -> pd.DataFrame:
    """A runs table as `load.load_runs` makes it, for the aggregate tests."""
    t = pd.Timestamp("2025-01-01", tz="UTC")
    n = len(columns["run_id"])
    out = pd.DataFrame(
        {
            "cell": ["x"] * n,
            "cell_hash": ["h"] * n,
            "variant": ["x"] * n,
            "start_time": [t] * n,
            **columns,
        }
    )
    out["seed"] = pd.array(out["seed"], dtype="Int64")
    if "hours" in out:
        out["start_time"] = out["start_time"] + pd.to_timedelta(out.pop("hours"), unit="h")
    for metric in ("final_train_accuracy", "final_test_accuracy", "final_gap"):
        if metric not in out:
            out[metric] = np.nan
    out["best_test_accuracy"] = out["final_test_accuracy"]
    for metric in ("best_epoch", "final_train_loss", "final_test_loss"):
        out[metric] = np.nan
    return out


def test_latest_finished_run_counts_and_rerun_clears_failure() -> None:
    """A seed rerun after a failure is done, not failed; of two FINISHED runs the latest counts."""
    runs = frame(
        run_id=["a", "b", "c", "d", "e"],
        seed=[0, 0, 1, 1, 2],
        status=["FINISHED", "FINISHED", "FAILED", "FINISHED", "KILLED"],
        hours=[0, 1, 0, 1, 0],
        final_train_accuracy=[0.1, 0.9, None, 0.7, None],
        final_test_accuracy=[0.1, 0.5, None, 0.3, None],
    )
    assert sorted(finished_runs(runs)["run_id"]) == ["b", "d"]
    assert list(failed_runs(runs)["run_id"]) == ["e"]
    (row,) = cell_rows(runs)
    assert (row.done, row.failed, row.expected) == (2, 1, 2)
    assert row.stats["final_train_accuracy"].mean == pytest.approx(0.8)
    assert row.partial and row.status == "partial: 1 failed"


def test_a_study_still_running_is_flagged() -> None:
    runs = frame(
        run_id=["a", "b", "c"],
        seed=[0, 1, 2],
        status=["FINISHED", "RUNNING", "RUNNING"],
        final_test_accuracy=[0.5, None, None],
    )
    (row,) = cell_rows(runs)
    assert (row.done, row.running) == (1, 2)
    assert row.status == "partial: 2 running"


def test_ranking_and_baseline_choice() -> None:
    runs = frame(
        run_id=["a", "b", "c", "d"],
        seed=[0, 1, 0, 0],
        status=["FINISHED"] * 4,
        final_test_accuracy=[0.5, 0.7, 0.8, None],
    )
    runs["cell"] = ["baseline", "baseline", "dropout", "empty"]
    runs["cell_hash"] = ["hb", "hb", "hd", "he"]
    rows = cell_rows(runs)
    assert [r.name for r in ranked(rows)] == ["dropout", "baseline", "empty"]
    chosen = baseline_cell(rows, None)
    assert chosen is not None and chosen.name == "baseline"


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ([0.75, 0.76], "within"),
        ([0.800, 0.801, 0.802], "outside"),
        ([0.76, 0.78, 0.80], "overlaps"),
        ([], "no runs"),
    ],
)
def test_reference_verdicts(values: list[float], verdict: str) -> None:
    ours = Stat.of(values) if values else None
    check = ReferenceCheck("c", "final_test_accuracy", "test accuracy", 0.74, 0.77, ours)
    assert check.verdict == verdict


def test_stat_is_a_student_t_interval() -> None:
    values = [0.71, 0.74, 0.78, 0.73]
    stat = Stat.of(values)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (stat.mean, stat.low, stat.high) == pytest.approx((np.mean(values), low, high))
    one = Stat.of([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and one.n == 1


@pytest.mark.parametrize(
    ("test", "gap", "sentence"),
    [
        (
            Difference(-0.05, -0.07, -0.03, 0.001),
            Difference(-0.06, -0.08, -0.04, 0.001),
            "wd narrows the gap by 0.06 (0.04–0.08) and costs 0.05 test accuracy (0.03–0.07).",
        ),
        (
            Difference(0.02, 0.01, 0.03, 0.01),
            Difference(0.1, 0.05, 0.15, 0.01),
            "wd widens the gap by 0.10 (0.05–0.15) and gains 0.02 test accuracy (0.01–0.03).",
        ),
        (
            Difference(0.01, -0.02, 0.04, 0.4),
            Difference(-0.2, math.nan, math.nan, math.nan),
            "wd narrows the gap by 0.20 (one seed: no interval) and changes test accuracy "
            "by +0.01, within seed noise (interval -0.02 to +0.04).",
        ),
    ],
)
def test_versus_baseline_sentence(test: Difference, gap: Difference, sentence: str) -> None:
    assert _sentence("wd", test, gap) == sentence


def test_study_cells_run_with_overrides_are_shown_under_their_names(
    report_store: ReportStore,
) -> None:
    """`overfit run STUDY --set data.path=...` stores every cell under another hash; the
    report still shows the study's cells, with those runs, and says the settings differ."""
    study = report_store.study
    baseline = next(c for c in study.cells if c.name == "baseline")
    weight_decay = next(c for c in study.cells if c.name == "weight_decay")
    runs = frame(
        run_id=["a", "b", "c", "d"],
        seed=[0, 0, 0, 0],
        status=["FINISHED"] * 4,
        hours=[0, 1, 0, 0],
        final_train_accuracy=[0.1, 0.9, 0.8, 0.7],
        final_test_accuracy=[0.1, 0.6, 0.5, 0.4],
    )
    runs["cell"] = ["baseline", "baseline", "weight_decay", "weight_decay"]
    runs["variant"] = runs["cell"]
    # baseline: an old and a newer override hash; weight_decay: its own hash plus one
    runs["cell_hash"] = ["old-set", "new-set", weight_decay.hash, "other-set"]
    rows = {r.cell_hash: r for r in cell_rows(runs, study)}

    shown = rows["new-set"]
    assert shown.name == "baseline" and shown.adopted and shown.in_study
    assert shown.stats["final_test_accuracy"].mean == pytest.approx(0.6)
    assert shown.reference == {"final_test_accuracy": (0.74, 0.77)}
    own = rows[weight_decay.hash]
    assert not own.adopted and own.in_study
    # a cell with runs under its own hash adopts nothing; the others stay separate rows
    assert {r.cell_hash for r in rows.values() if not r.in_study} == {"old-set", "other-set"}
    assert baseline.hash not in rows


# -- the finding, cells that do not learn, the palette, links, the study file -----------------

CURES_STUDY = """\
name: cures
description: A constructed store for the finding.
base:
  data: {dataset: mnist, train_size: 300}
  model: {hidden: [8]}
  train: {epochs: 3}
seeds: [0, 1, 2]
variants:
  baseline: {}
  weight_decay: {model: {weight_decay: 0.1}}
  dropout: {model: {dropout: 0.15}}
  batch_norm: {model: {batch_norm: true}}
  init_small: {model: {init: {std: 0.01}}}
"""
# final (train, test) accuracy of seeds 0, 1, 2: weight_decay narrows the gap (0.19 against
# 0.25) with test accuracy within seed noise; dropout narrows it more at a cost of 0.15;
# batch_norm widens it; init_small stays at chance (0.11), with the smallest gap of all (0.013)
CURES = {
    "baseline": [(1.0, 0.75), (1.0, 0.76), (1.0, 0.74)],
    "weight_decay": [(0.93, 0.74), (0.92, 0.75), (0.94, 0.74)],
    "dropout": [(0.76, 0.60), (0.75, 0.61), (0.77, 0.59)],
    "batch_norm": [(1.0, 0.58), (1.0, 0.60), (1.0, 0.57)],
    "init_small": [(0.13, 0.11), (0.12, 0.11), (0.13, 0.12)],
}


@dataclass(frozen=True)
class CuresStore:
    uri: str
    study_path: Path
    study: Study


def make_cures_store(root: Path, template: Path, tag: bool = True) -> CuresStore:
    """`CURES` as finished runs of `CURES_STUDY` (3 epochs each), tagged with the study file."""
    from suite.study import load_study

    path = root / "study" / "cures.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(CURES_STUDY)
    study = load_study(path, check_data=False)
    shutil.copyfile(template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    for cell in study.cells:
        for seed, (train, test) in enumerate(CURES[cell.name]):
            run_id = tracker.start_run(experiment_id, study.name, cell, seed, "bundled")
            tags = {"n_train": "300", "n_val": "0", "n_test": "100"}
            tracker.set_tags(run_id, {**tags, **({"study_file": str(path)} if tag else {})})
            epochs = []
            for e in (1, 2, 3):
                a, b = train * e / 3, test * e / 3
                losses = {"train_loss": 2.0 / e, "test_loss": 2.2 / e, "weight_norm": 5.0 + e}
                epochs.append(
                    (e, {"train_accuracy": a, "test_accuracy": b, "gap": a - b, **losses})
                )
            tracker.log_epochs(run_id, epochs)
            final = {"final_train_accuracy": train, "final_test_accuracy": test}
            final |= {"final_gap": train - test, "best_test_accuracy": test, "best_epoch": 3}
            tracker.finish(run_id, final)
    return CuresStore(uri, path, study)


@pytest.fixture(scope="module")
def cures_store(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> CuresStore:
    return make_cures_store(tmp_path_factory.mktemp("cures"), _store_template)


@pytest.fixture(scope="module")
def cures_report(cures_store: CuresStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cures-out")
    write_report(
        "cures", Tracker(cures_store.uri), out, cures_store.study, ui_url="http://mlflow.lab:8080/"
    )
    return out


def test_the_report_opens_with_the_finding(cures_report: Path) -> None:
    markdown = (cures_report / "report.md").read_text()
    lines = markdown.splitlines()
    assert lines[0] == "# Study `cures`"
    answer = lines[2]
    assert answer.startswith("**weight_decay narrows the gap at no clear cost in test accuracy")
    assert "from baseline's 0.250" in answer and "within seed noise" in answer
    top = markdown.split("\n## ")[0]  # everything before the first section
    assert re.search(r"^- At a cost in test accuracy: dropout narrows it by 0\.09", top, re.M)
    assert re.search(r"^- Wider gap than baseline: batch_norm by 0\.17", top, re.M)
    assert re.search(r"^- Does not learn .*: init_small \(0\.113\)", top, re.M)
    # the same numbers as the versus-baseline section: computed once
    (wd,) = [
        r
        for r in md_table(markdown, "| cell | seeds | Δ test accuracy")
        if r["cell"] == "weight_decay"
    ]
    assert wd["Δ gap (95% interval)"].startswith("-0.063")
    html = (cures_report / "index.html").read_text()
    body = html.split("<body>", 1)[1]
    assert body.index('<p class="answer">weight_decay narrows the gap') < body.index("<nav>")
    assert body.index("<nav>") < body.index('id="headline"')


def test_a_cell_at_chance_is_flagged_and_never_starred_for_its_gap(cures_report: Path) -> None:
    markdown = (cures_report / "report.md").read_text()
    rows = {r["cell"]: r for r in headline(markdown)}
    assert rows["init_small"].get("flag") == "does not learn"
    assert [r.get("flag") for r in rows.values()].count("does not learn") == 1
    assert "★" not in rows["init_small"]["gap (train − test)"]
    # dropout's gap is smaller, but it costs 0.15 test accuracy: the star goes to a cell
    # within 0.05 of the best test accuracy
    assert "★" not in rows["dropout"]["gap (train − test)"]
    assert "★" in rows["weight_decay"]["gap (train − test)"]
    assert list(rows)[-1] == "init_small"  # ranked last
    assert (
        "Smallest gap among cells within 0.05 of the best test accuracy: **weight_decay**"
        in markdown
    )
    assert "init_small does not learn: final test accuracy 0.113, chance 0.100" in markdown
    (versus,) = [
        r for r in md_table(markdown, "| cell | seeds | Δ test") if r["cell"] == "init_small"
    ]
    assert versus["flag"] == "does not learn"
    html = (cures_report / "index.html").read_text()
    assert re.search(r'init_small <span class="flag">does not learn</span></td>', html)
    assert re.search(
        r"Smallest gap among cells within 0.05 of the best test accuracy: <strong>weight_decay</strong>",
        html,
    )


def test_chance_comes_from_the_dataset() -> None:
    from suite.report.aggregate import CHANCE_MARGIN, chance_level

    runs = pd.DataFrame({"params": [{"data.dataset": "mnist"}, {"data.dataset": "mnist"}]})
    assert chance_level(runs) == pytest.approx(0.1)
    assert math.isnan(chance_level(runs[:0]))
    assert CHANCE_MARGIN == 0.05
    row = cell_rows(
        frame(run_id=["a"], seed=[0], status=["FINISHED"], final_test_accuracy=[0.149]).assign(
            params=[{"data.dataset": "mnist"}]
        )
    )[0]
    assert row.chance == pytest.approx(0.1) and not row.learns
    assert cell_rows(
        frame(run_id=["a"], seed=[0], status=["FINISHED"], final_test_accuracy=[0.149])
    )[0].learns  # unknown chance


def test_the_finding_without_a_clear_cure_or_a_baseline() -> None:
    from suite.report.aggregate import CellRow, Comparison
    from suite.report.finding import summarise

    def row(name: str, test: float, gap: float) -> CellRow:
        stats = {"final_test_accuracy": Stat.of([test]), "final_gap": Stat.of([gap])}
        return CellRow(name, name, 0, name, True, False, 1, 1, 0, 0, stats, chance=0.1)

    a, b, dead = row("a", 0.8, 0.2), row("b", 0.76, 0.1), row("dead", 0.11, 0.01)
    finding = summarise([a, b, dead], None, [])
    assert finding.answer == (
        "a has the highest final test accuracy (0.800) and b the smallest gap among cells "
        "within 0.05 of it (0.100, test accuracy 0.760)."
    )
    far = row("far", 0.7, 0.05)  # a smaller gap, at a cost: not the one named
    assert summarise([a, far], None, []).answer == (
        "a has the highest final test accuracy (0.800) and the smallest gap among cells "
        "within 0.05 of it (0.200)."
    )
    assert finding.details[0].startswith("Does not learn")
    noise = Difference(0.01, -0.02, 0.04, 0.4)
    costly = Comparison(
        b, Difference(-0.1, -0.15, -0.05, 0.01), Difference(-0.1, -0.15, -0.05, 0.01), ""
    )
    answer = summarise([a, b], a, [costly]).answer
    assert answer.startswith(
        "Every cell that narrows the gap costs test accuracy; b costs the least"
    )
    flat = Comparison(b, noise, noise, "")
    assert summarise([a, b], a, [flat]).answer.startswith(
        "No cell narrows the gap beyond seed noise"
    )
    assert summarise([dead], dead, []).answer.startswith("No cell learns")


def test_a_study_ranked_by_validation_accuracy_leads_with_the_cell_it_chooses() -> None:
    from suite.report.aggregate import CellRow
    from suite.report.finding import CHOSEN_BY, summarise

    def row(name: str, val: float, test: float, gap: float) -> CellRow:
        stats = {
            CHOSEN_BY: Stat.of([val]),
            "final_test_accuracy": Stat.of([test]),
            "final_gap": Stat.of([gap]),
        }
        return CellRow(name, name, 0, name, True, False, 1, 1, 0, 0, stats, chance=0.1)

    # the validation set chooses b; a is better on the test set, which must not choose
    a, b = row("a", 0.78, 0.81, 0.2), row("b", 0.82, 0.79, 0.18)
    assert summarise([b, a], None, [], CHOSEN_BY).answer == (
        "Chosen by validation accuracy: b (0.820), final test accuracy 0.790. By the test "
        "set, which chooses nothing here: a has the highest final test accuracy (0.810) and "
        "b the smallest gap among cells within 0.05 of it (0.180, test accuracy 0.790)."
    )
    # ranked by the test set, or without validation accuracies: as before
    assert summarise([b, a], None, []).answer.startswith("a has the highest final test")
    plain = row("p", math.nan, 0.8, 0.1)
    assert summarise([plain], None, [], CHOSEN_BY).answer.startswith("p has the highest")


def ciede2000(rgb1: tuple[float, ...], rgb2: tuple[float, ...]) -> float:
    """CIEDE2000 colour difference of two sRGB colours (0-1), D65 white."""

    def lab(rgb: tuple[float, ...]) -> tuple[float, float, float]:
        c = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in rgb]
        m = (
            (0.4124564, 0.3575761, 0.1804375),
            (0.2126729, 0.7151522, 0.0721750),
            (0.0193339, 0.1191920, 0.9503041),
        )
        xyz = [sum(a * b for a, b in zip(r, c, strict=True)) for r in m]
        f = [
            t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116
            for t in (xyz[0] / 0.95047, xyz[1], xyz[2] / 1.08883)
        ]
        return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])

    (l1, a1, b1), (l2, a2, b2) = lab(rgb1), lab(rgb2)
    cbar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(cbar**7 / (cbar**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = math.hypot(a1, b1), math.hypot(a2, b2)
    h1, h2 = math.degrees(math.atan2(b1, a1)) % 360, math.degrees(math.atan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    dl, dc, dhh = l2 - l1, c2 - c1, 2 * math.sqrt(c1 * c2) * math.sin(math.radians(dh) / 2)
    lbar, cbar2 = (l1 + l2) / 2, (c1 + c2) / 2
    if c1 * c2 == 0:
        hbar = h1 + h2
    elif abs(h1 - h2) <= 180:
        hbar = (h1 + h2) / 2
    else:
        hbar = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(hbar - 30))
        + 0.24 * math.cos(math.radians(2 * hbar))
        + 0.32 * math.cos(math.radians(3 * hbar + 6))
        - 0.20 * math.cos(math.radians(4 * hbar - 63))
    )
    rt = (
        -math.sin(math.radians(60 * math.exp(-(((hbar - 275) / 25) ** 2))))
        * 2
        * math.sqrt(cbar2**7 / (cbar2**7 + 25**7))
    )
    sl = 1 + 0.015 * (lbar - 50) ** 2 / math.sqrt(20 + (lbar - 50) ** 2)
    sc, sh = 1 + 0.045 * cbar2, 1 + 0.015 * cbar2 * t
    return math.sqrt(
        (dl / sl) ** 2 + (dc / sc) ** 2 + (dhh / sh) ** 2 + rt * (dc / sc) * (dhh / sh)
    )


def test_twelve_cells_get_twelve_clearly_different_colours() -> None:
    from matplotlib.colors import to_rgb

    from suite.report import extra, figures
    from suite.report.aggregate import CellRow

    # the formula against published CIEDE2000 values (Sharma et al. 2005, pair 1 via sRGB)
    assert ciede2000((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)) == 0
    assert ciede2000((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) == pytest.approx(100, abs=0.1)
    cells = [CellRow(f"c{i}", f"c{i}", i, f"h{i}", True, False, 1, 1, 0, 0) for i in range(12)]
    colours = [to_rgb(c) for c in figures.palette(cells).values()]
    assert len(set(colours)) == 12
    distances = [ciede2000(a, b) for i, a in enumerate(colours) for b in colours[i + 1 :]]
    assert min(distances) > 15  # no two are shades of one another
    # the study figures' colours by setting are the same palette
    assert [to_rgb(c) for c in extra._colours(12)] == colours
    many = [to_rgb(c) for c in figures.palette([*cells, *cells[:3]]).values()]
    assert (
        len(set(many)) == 12
    )  # beyond 12: distinct hues all the same (15 cells, 3 repeated hashes)


def test_run_links_use_the_ui_url_and_run_names(
    cures_store: CuresStore, cures_report: Path
) -> None:
    client = MlflowClient(cures_store.uri)
    experiment = client.get_experiment_by_name("cures")
    markdown = (cures_report / "report.md").read_text()
    html = (cures_report / "index.html").read_text()
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "cell" in r.data.tags]
    assert len(runs) == 15
    for run in runs:
        url = f"http://mlflow.lab:8080/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        name = run.info.run_name
        assert re.fullmatch(r"\w+/seed\d", name)
        assert f"[{name}]({url})" in markdown
        assert (
            f'<a href="{url}" target="_blank" rel="noopener" title="run {run.info.run_id}">{name}</a>'
            in html
        )
    eid = experiment.experiment_id
    (runs_table,) = set(
        re.findall(r"<(http://mlflow\.lab:8080/#/experiments/\d+/runs\?[^>]+)>", markdown)
    )
    assert runs_table.startswith(f"http://mlflow.lab:8080/#/experiments/{eid}/runs?")
    assert runs_table.endswith("workflowType=machine_learning")  # the runs, not GenAI's overview
    assert f'href="{runs_table}" target="_blank"' in html.replace("&amp;", "&")
    assert "127.0.0.1:5000" not in markdown + html
    # every link to the UI opens the runs table or a run, in a new tab
    for tag in re.findall(r"<a [^>]*>", html):
        if "http" in tag:
            assert 'target="_blank"' in tag and "/#/experiments/" in tag


@pytest.mark.parametrize(
    "url",
    [
        "localhost:5000",
        "127.0.0.1:5000",
        "ftp://host",
        "http://",
        "http://h:99999",
        "http://h/#/x",
        "http://a b",
    ],
)
def test_a_bad_ui_url_is_one_line_naming_the_option(url: str, tmp_path: Path) -> None:
    from suite.report import check_ui_url

    with pytest.raises(
        ReportError, match=r"^--ui-url: .*expected http\(s\)://host\[:port\]"
    ) as err:
        check_ui_url(url)
    assert "\n" not in str(err.value)
    with pytest.raises(ReportError, match="--ui-url"):  # before anything is read or written
        write_report("cures", Tracker(f"sqlite:///{tmp_path / 'none.db'}"), tmp_path, ui_url=url)
    assert check_ui_url("https://mlflow.example.com:8443/") == "https://mlflow.example.com:8443"


def test_the_study_file_is_found_from_the_store_in_another_folder(
    cures_store: CuresStore,
    report_store: ReportStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from suite.report import locate

    monkeypatch.chdir(tmp_path)  # no experiments/ here
    found = locate("cures", Tracker(cures_store.uri))
    assert found.path == cures_store.study_path and found.notice is None
    # the tag names a file that is gone: experiments/<name>.yaml under the cwd
    (tmp_path / "experiments").mkdir()
    local = tmp_path / "experiments" / "cures.yaml"
    local.write_text(CURES_STUDY)
    moved = cures_store.study_path.with_suffix(".moved")
    cures_store.study_path.rename(moved)
    try:
        found = locate("cures", Tracker(cures_store.uri))
        assert found.path == Path("experiments/cures.yaml")
        local.unlink()
        found = locate("cures", Tracker(cures_store.uri))
        assert found.path is None and found.notice is not None
        assert "\n" not in found.notice
        assert str(cures_store.study_path) in found.notice and "does not exist" in found.notice
    finally:
        moved.rename(cures_store.study_path)
    assert locate("nope", Tracker(cures_store.uri)).path is None
    # `overfit run` records the file on the study's experiment
    assert locate("tiny-report", Tracker(report_store.uri)).path == report_store.study_path
    missing = tmp_path / "missing.db"
    assert locate("cures", Tracker(f"sqlite:///{missing}")).path is None
    assert not missing.exists()  # never creates a store


def test_a_report_without_its_study_file_says_so_in_one_line(
    tmp_path: Path, _store_template: Path
) -> None:
    store = make_cures_store(tmp_path, _store_template, tag=False)
    paths = write_report("cures", Tracker(store.uri), tmp_path / "out", log_to_mlflow=False)
    markdown = paths.markdown.read_text()
    (line,) = [x for x in markdown.splitlines() if "no study file" in x.lower()]
    assert line.startswith("> No study file for 'cures': the store records none (tag study_file)")
    assert "description, reference check" in line
    assert "study file: not found" in markdown
    html = paths.html.read_text()
    assert html.count("No study file for &#39;cures&#39;") == 1


def test_a_cell_that_memorizes_random_labels_learns_them() -> None:
    from suite.report.aggregate import CellRow, Stat

    def cell(train: float, test: float) -> CellRow:
        stats = {
            "final_train_accuracy": Stat(train, 0.0, 3),
            "final_test_accuracy": Stat(test, 0.0, 3),
        }
        return CellRow("c", "c", 0, "h", True, False, 3, 3, 0, 0, stats=stats, chance=0.1)

    assert not cell(train=0.13, test=0.11).learns  # nothing fitted: train and test at chance
    assert cell(train=1.0, test=0.105).learns  # random labels: fitted, nothing generalises
    assert cell(train=0.3, test=0.4).learns
