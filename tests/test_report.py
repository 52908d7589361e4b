"""The comparison report, end to end: a tiny study trained into a temporary MLflow store."""

from __future__ import annotations

import base64
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from suite.report import ReportError, write_report
from suite.report.aggregate import cell_rows, failed_runs, finished_runs
from suite.spec import Study, load_study
from suite.tracking import Tracker

# weight_decay comes first: study order differs from name order
TINY_STUDY = """\
# A tiny study for the report tests: 2 cells x 2 seeds x 3 epochs, seconds.
name: tiny-report
description: Tiny baseline against weight decay, for the report tests.
base:
  data: {dataset: mnist, train_size: 60, test_size: 200}
  model: {hidden: [16, 16]}
  train: {batch_size: 20, epochs: 3}
seeds: [0, 1]
variants:
  weight_decay: {model: {weight_decay: 0.1}}
  baseline: {}
reference:
  baseline: {final_test_accuracy: [0.74, 0.77]}
"""
FAILURE = "diverged at epoch 2: train_loss is nan"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Store:
    uri: str
    study_path: Path
    study: Study


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> Store:
    """The tiny study run through the real runner, plus one FAILED run (baseline, seed 2)."""
    from suite.runner import run_study

    root = tmp_path_factory.mktemp("report")
    path = root / "tiny.yaml"
    path.write_text(TINY_STUDY)
    study = load_study(path)
    shutil.copyfile(_store_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri)
    assert run_study(study, tracker).ok
    experiment_id = tracker.experiment_id(study.name, create=False)
    assert experiment_id is not None
    baseline = next(c for c in study.cells if c.name == "baseline")
    run_id = tracker.start_run(experiment_id, study.name, baseline, 2, "test")
    tracker.fail(run_id, FAILURE)
    return Store(uri, path, study)


@pytest.fixture(scope="module")
def report(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "tiny"
    paths = write_report(store.study.name, Tracker(store.uri), out, store.study)
    assert paths.folder == out
    return out


def table(markdown: str) -> list[dict[str, str]]:
    """The cell table of report.md as rows of {column: text}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| cell | hash |"))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (v.strip() for v in line.strip("|").split("|")), strict=True)))
    return rows


def test_report_files_and_self_contained_html(report: Path) -> None:
    html = (report / "index.html").read_text()
    markdown = (report / "report.md").read_text()
    assert (report / "accuracy.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "](accuracy.png)" in markdown
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    images = re.findall(r"<img\b[^>]*>", html)
    assert images
    for tag in images:
        src = re.search(r'src="([^"]+)"', tag)
        assert src and src.group(1).startswith("data:image/png;base64,")
        assert base64.b64decode(src.group(1).split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "Tiny baseline against weight decay" in html
    for word in ("tracking URI", "data source", "generated at"):
        assert word in html and word in markdown


def test_table_numbers_match_the_store(store: Store, report: Path) -> None:
    tracker = Tracker(store.uri)
    experiment_id = tracker.experiment_id(store.study.name, create=False)
    assert experiment_id is not None
    records = [r for r in tracker.runs(experiment_id) if r.status == "FINISHED"]
    rows = table((report / "report.md").read_text())
    assert [r["cell"] for r in rows] == ["weight_decay", "baseline"]  # study order
    columns = {
        "train accuracy": "final_train_accuracy",
        "test accuracy": "final_test_accuracy",
        "gap (train - test)": "final_gap",
        "best test accuracy": "best_test_accuracy",
    }
    for row in rows:
        mine = [r.metrics for r in records if r.cell == row["cell"]]
        assert row["seeds done"] == f"{len(mine)} / 2"
        for label, metric in columns.items():
            values = [m[metric] for m in mine]
            mean, std = (float(x) for x in row[label].split(" ± "))
            assert mean == pytest.approx(statistics.fmean(values), abs=5e-4 + 1e-9)
            assert std == pytest.approx(statistics.stdev(values), abs=5e-4 + 1e-9)


def test_failed_run_is_counted_and_reference_shown(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    rows = {r["cell"]: r for r in table(markdown)}
    assert rows["baseline"]["failed"] == "1"
    assert "partial" in rows["baseline"]["status"]
    assert rows["weight_decay"]["status"] == "complete"
    assert rows["baseline"]["reference"] == "0.74–0.77"
    assert rows["weight_decay"]["reference"] == ""
    assert "## Failed runs" in markdown and FAILURE in markdown
    html = (report / "index.html").read_text()
    assert html.count('class="partial"') == 1 and FAILURE in html


def test_without_the_study_file_cells_sort_by_name(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = write_report(store.study.name, Tracker(store.uri))
    assert paths.folder == Path("reports") / store.study.name  # the default, under the cwd
    assert (tmp_path / "reports" / store.study.name / "index.html").is_file()
    rows = table(paths.markdown.read_text())
    assert [r["cell"] for r in rows] == ["baseline", "weight_decay"]
    assert "reference" not in rows[0]


def test_user_errors(store: Store, tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no study 'nope' in .*; studies: tiny-report$"):
        write_report("nope", Tracker(store.uri), tmp_path)

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
    run_id = tracker.start_run(experiment_id, "broken", store.study.cells[0], 0, "test")
    tracker.fail(run_id, FAILURE)
    with pytest.raises(ReportError, match=r"'broken' has no FINISHED runs .*\(1 failed\)"):
        write_report("broken", tracker, tmp_path)
    assert not list(tmp_path.glob("*.html"))


def test_cli_report(store: Store, tmp_path: Path) -> None:
    from suite.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["report", str(store.study_path), "--tracking-uri", store.uri, "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in "".join(result.stdout.split())  # rich may fold a long path
    assert (out / "report.md").is_file()

    result = runner.invoke(app, ["report", "nope", "--tracking-uri", store.uri])
    assert result.exit_code != 0
    assert "no study 'nope'" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_latest_finished_run_counts_and_rerun_clears_failure() -> None:
    """A seed rerun after a failure is done, not failed; of two FINISHED runs the latest counts."""
    t = pd.Timestamp("2025-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d", "e"],
            "cell": ["x"] * 5,
            "cell_hash": ["h"] * 5,
            "variant": ["x"] * 5,
            "seed": pd.array([0, 0, 1, 1, 2], dtype="Int64"),
            "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED", "KILLED"],
            "start_time": [t, t + pd.Timedelta(1, "h"), t, t + pd.Timedelta(1, "h"), t],
            "final_train_accuracy": [0.1, 0.9, None, 0.7, None],
            "final_test_accuracy": [0.1, 0.5, None, 0.3, None],
            "final_gap": [0.0, 0.4, None, 0.4, None],
            "best_test_accuracy": [0.1, 0.5, None, 0.3, None],
        }
    )
    assert sorted(finished_runs(runs)["run_id"]) == ["b", "d"]
    assert list(failed_runs(runs)["run_id"]) == ["e"]
    (row,) = cell_rows(runs)
    assert (row.done, row.failed, row.expected) == (2, 1, 2)
    assert row.stats["final_train_accuracy"].mean == pytest.approx(0.8)
    assert row.partial and row.status == "partial: 1 failed"


def test_study_cells_run_with_overrides_are_shown_under_their_names(store: Store) -> None:
    """`overfit run STUDY --set data.path=...` stores every cell under another hash; the
    report still shows the study's cells, with those runs, and says the settings differ."""
    study = store.study
    baseline = next(c for c in study.cells if c.name == "baseline")
    weight_decay = next(c for c in study.cells if c.name == "weight_decay")
    t = pd.Timestamp("2025-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "cell": ["baseline", "baseline", "weight_decay", "weight_decay"],
            # baseline: an old and a newer override hash; weight_decay: its own hash plus one
            "cell_hash": ["old-set", "new-set", weight_decay.hash, "other-set"],
            "variant": ["baseline", "baseline", "weight_decay", "weight_decay"],
            "seed": pd.array([0, 0, 0, 0], dtype="Int64"),
            "status": ["FINISHED"] * 4,
            "start_time": [t, t + pd.Timedelta(1, "h"), t, t],
            "final_train_accuracy": [0.1, 0.9, 0.8, 0.7],
            "final_test_accuracy": [0.1, 0.6, 0.5, 0.4],
            "final_gap": [0.0, 0.3, 0.3, 0.3],
            "best_test_accuracy": [0.1, 0.6, 0.5, 0.4],
        }
    )
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
