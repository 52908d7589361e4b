"""Results as data (`suite.results`), `overfit export` and studies side by side in a report,
on a real sqlite store that the real runner wrote (`conftest.report_store`: 2 cells x 2 seeds
x 3 epochs, and a FAILED run)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPORT_FAILURE, REPORT_STUDY, ReportStore
from mlflow.tracking import MlflowClient
from pandas.testing import assert_frame_equal

from suite import results
from suite.report.aggregate import TABLE_COLUMNS
from suite.results import ResultsError, settings_of

OTHER_STUDY = REPORT_STUDY.replace("name: tiny-report", "name: tiny-adam").replace(
    "train: {batch_size: 20, epochs: 3}",
    "train: {batch_size: 20, epochs: 3, optimizer: {name: adam, learning_rate: 0.001}}",
)


@pytest.fixture(scope="module")
def two_studies(report_store: ReportStore, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the report store with a second study beside the first (Adam instead of SGD)."""
    from suite.runner import run_study
    from suite.study import load_study
    from suite.tracking import Tracker

    root = tmp_path_factory.mktemp("two")
    shutil.copyfile(report_store.uri.removeprefix("sqlite:///"), root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "adam.yaml").write_text(OTHER_STUDY)
    assert run_study(load_study(root / "adam.yaml"), Tracker(uri)).ok
    return uri


def test_runs_has_a_row_per_run_with_typed_settings(report_store: ReportStore) -> None:
    runs = results.runs("tiny-report", uri=report_store.uri)
    assert list(runs.columns[:7]) == [
        "run_id",
        "study",
        "cell",
        "seed",
        "status",
        "dataset",
        "counted",
    ]
    assert len(runs) == 5 and set(runs["study"]) == {"tiny-report"}
    assert sorted(runs["status"]) == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "FINISHED"]
    assert runs["model.weight_decay"].dtype == np.float64
    assert sorted(runs["model.weight_decay"].unique()) == [0.0, 0.1]
    assert all(h == [16, 16] for h in runs["model.hidden"])
    assert runs["data.train_size"].dtype == np.int64 and set(runs["data.train_size"]) == {60}
    assert set(runs["model.init"]) == {"he"}
    assert runs["seed"].dtype == "Int64" and runs["n_test"].dtype == "Int64"
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert failed["failure"] == REPORT_FAILURE and not failed["counted"]
    finished = runs[runs["status"] == "FINISHED"]
    assert finished["counted"].all()
    assert finished["final_test_accuracy"].between(0, 1).all()
    assert (
        finished["final_gap"] - (finished["final_train_accuracy"] - finished["final_test_accuracy"])
    ).abs().max() < 1e-6


def test_curves_are_long_and_equal_mlflows_own_histories(report_store: ReportStore) -> None:
    runs = results.runs("tiny-report", uri=report_store.uri)
    curves = results.curves("tiny-report", ["test_accuracy", "train_loss"], uri=report_store.uri)
    assert list(curves.columns) == ["run_id", "study", "cell", "seed", "epoch", "metric", "value"]
    assert len(curves) == 4 * 3 * 2  # finished runs x epochs x metrics; the failed run has none
    assert sorted(curves["epoch"].unique()) == [1, 2, 3]
    client = MlflowClient(report_store.uri)
    for run_id in runs.loc[runs["counted"], "run_id"]:
        history = client.get_metric_history(run_id, "test_accuracy")
        mine = curves[(curves["run_id"] == run_id) & (curves["metric"] == "test_accuracy")]
        assert sorted(zip(mine["epoch"], mine["value"], strict=True)) == sorted(
            (m.step, m.value) for m in history
        )
    joined = curves.merge(runs[["run_id", "model.weight_decay"]], on="run_id")
    assert len(joined) == len(curves)
    every = results.curves("tiny-report", uri=report_store.uri)
    assert {"train_accuracy", "test_loss", "gap", "weight_norm", "reg_loss"} <= set(every["metric"])
    assert not {"final_test_accuracy", "best_epoch", "train_seconds"} & set(every["metric"])


def test_summary_is_the_report_table_digit_for_digit(
    report_store: ReportStore, report_dir: Path
) -> None:
    summary = results.summary("tiny-report", uri=report_store.uri)
    assert list(summary.columns) == [
        "study",
        "cell",
        "cell_hash",
        "metric",
        "n",
        "mean",
        "std",
        "ci95_low",
        "ci95_high",
    ]
    table = _markdown_table((report_dir / "report.md").read_text(), "## Headline")
    checked = 0
    for row in table:
        cell = row["cell"].split(" **")[0]
        for column in TABLE_COLUMNS:
            if column.label not in row:
                continue
            found = summary[(summary["cell"] == cell) & (summary["metric"] == column.metric)]
            assert len(found) == 1, (cell, column.metric)
            stat = found.iloc[0]
            half = (stat["ci95_high"] - stat["ci95_low"]) / 2
            expected = f"{stat['mean']:.{column.digits}f} ± {half:.{column.digits}f}"
            assert row[column.label].rstrip(" ★") == expected, (cell, column.metric)
            checked += 1
    assert checked == 2 * len(TABLE_COLUMNS)
    tiny = summary[summary["metric"] == "final_test_accuracy"]
    assert list(tiny["n"]) == [2, 2]
    runs = results.runs("tiny-report", uri=report_store.uri)
    for cell, group in runs[runs["counted"]].groupby("cell"):
        mean = tiny.loc[tiny["cell"] == cell, "mean"].iloc[0]
        assert mean == pytest.approx(group["final_test_accuracy"].mean(), abs=1e-12)


def test_a_list_of_studies_is_one_frame_with_a_study_column(two_studies: str) -> None:
    runs = results.runs(["tiny-report", "tiny-adam"], uri=two_studies)
    assert runs.groupby("study").size().to_dict() == {"tiny-adam": 4, "tiny-report": 5}
    assert set(runs.loc[runs["study"] == "tiny-adam", "train.optimizer.name"]) == {"adam"}
    curves = results.curves(["tiny-report", "tiny-adam"], ["gap"], uri=two_studies)
    assert curves.groupby("study").size().to_dict() == {"tiny-adam": 12, "tiny-report": 12}
    summary = results.summary(["tiny-report", "tiny-adam"], uri=two_studies)
    assert set(summary["study"]) == {"tiny-report", "tiny-adam"}


def test_bad_input_is_one_line(report_store: ReportStore, tmp_path: Path) -> None:
    uri = report_store.uri
    cases = [
        (lambda: results.runs("tiny-reprot", uri=uri), "no study 'tiny-reprot'"),
        (lambda: results.runs([], uri=uri), "no study named"),
        (
            lambda: results.curves("tiny-report", ["test_acuracy"], uri=uri),
            "no run of study 'tiny-report' logged 'test_acuracy' (did you mean 'test_accuracy'?)",
        ),
        (lambda: results.summary("x", uri=f"sqlite:///{tmp_path / 'none.db'}"), "no studies in"),
    ]
    for call, message in cases:
        with pytest.raises(ResultsError) as caught:
            call()
        assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "none.db").exists()  # asking did not create a store
    # an empty study, in a copy: the module's store is shared with other tests
    copy = tmp_path / "copy.db"
    shutil.copyfile(uri.removeprefix("sqlite:///"), copy)
    MlflowClient(f"sqlite:///{copy}").create_experiment("empty-study")
    with pytest.raises(ResultsError, match="study 'empty-study' has no runs"):
        results.runs("empty-study", uri=f"sqlite:///{copy}")


def test_settings_are_typed_back_from_logged_params() -> None:
    params = {
        "model.hidden": "[100, 100]",
        "model.init.std": "0.01",
        "model.weight_decay": "0",
        "model.bn_epsilon": "1e-06",
        "model.max_norm": "null",
        "model.batch_norm": "true",
        "train.optimizer.name": "sgd",
        "seed": "3",
    }
    typed = settings_of(params)
    assert typed["model.hidden"] == [100, 100] and typed["model.init"] == "std:0.01"
    assert typed["model.weight_decay"] == 0.0 and isinstance(typed["model.weight_decay"], float)
    assert typed["model.bn_epsilon"] == 1e-6 and typed["model.max_norm"] is None
    assert typed["model.batch_norm"] is True and "seed" not in typed
    assert typed["train.epochs"] == 200  # a setting not logged takes its default
    # a param this suite does not know: parsed as YAML, kept
    assert settings_of({"model.future": "0.5"}) == {"model.future": 0.5}


# --- overfit export --------------------------------------------------------------------------


def overfit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "suite", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_export_round_trips_through_pandas(report_store: ReportStore, tmp_path: Path) -> None:
    uri = report_store.uri
    frames = {
        "runs": results.runs("tiny-report", uri=uri),
        "curves": results.curves("tiny-report", uri=uri),
        "summary": results.summary("tiny-report", uri=uri),
    }
    for fmt in ("parquet", "csv", "json"):
        out = tmp_path / fmt
        done = overfit(
            "export",
            "tiny-report",
            "--format",
            fmt,
            "--out",
            str(out),
            "--tracking-uri",
            uri,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            f"{n}.{fmt}" for n in ("curves", "runs", "summary")
        ]
        for name, frame in frames.items():
            path = out / f"{name}.{fmt}"
            if fmt == "parquet":
                assert_frame_equal(pd.read_parquet(path), frame)  # every dtype, lists as lists
                continue
            if fmt == "csv":
                back = pd.read_csv(
                    path, parse_dates=["start_time", "end_time"] if name == "runs" else None
                )
                expected = frame.map(lambda v: json.dumps(v) if isinstance(v, list) else v)
            else:
                # Python's json reads every float to the bit (pandas' read_json to 1 ulp)
                back = pd.DataFrame(json.loads(path.read_text()))
                if name == "runs":
                    for column in ("start_time", "end_time"):
                        back[column] = pd.to_datetime(back[column])
                expected = frame
            assert list(back.columns) == list(frame.columns)
            for column in frame.columns:
                got, want = back[column].tolist(), expected[column].tolist()
                assert [_plain(v) for v in got] == [_plain(v) for v in want], (fmt, name, column)


def test_export_bad_input_is_one_line_and_writes_nothing(
    report_store: ReportStore, tmp_path: Path
) -> None:
    uri = report_store.uri
    out = tmp_path / "out"
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would go")
    for args, message in [
        (["tiny-report", "--format", "xlsx"], "--format: expected csv, parquet, json, got 'xlsx'"),
        (["tiny-reprot"], "no study 'tiny-reprot'"),
        (["tiny-report", "--out", str(blocked / "sub")], f"--out {blocked / 'sub'}: cannot write"),
    ]:
        target = ["--out", str(out)] if "--out" not in args else []
        done = overfit("export", *args, *target, "--tracking-uri", uri, cwd=tmp_path)
        assert done.returncode != 0
        errors = done.stderr.strip().splitlines()
        assert len(errors) == 1 and message in errors[0], done.stderr
        assert not out.exists() or not list(out.iterdir())


# --- studies side by side --------------------------------------------------------------------


def test_report_of_two_studies_puts_their_cells_side_by_side(
    two_studies: str, tmp_path: Path
) -> None:
    done = overfit(
        "report", "tiny-report", "tiny-adam", "--tracking-uri", two_studies, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "reports" / "tiny-report+tiny-adam" / "report.md").read_text()
    rows = _markdown_table(markdown, "## Headline")
    cells = sorted(r["cell"].split(" **")[0] for r in rows)
    assert cells == [
        "tiny-adam: baseline",
        "tiny-adam: weight_decay",
        "tiny-report: baseline",
        "tiny-report: weight_decay",
    ]
    for row in rows:  # the settings that differ are columns, each cell with its own
        expected = "adam" if row["cell"].startswith("tiny-adam") else "sgd"
        assert row["train.optimizer.name"] == expected
        assert row["train.optimizer.learning_rate"] == ("0.001" if expected == "adam" else "0.01")
        assert row["model.weight_decay"] in ("0", "0.1")
        assert row["seeds done"] == "2 / 2"  # each study's own seeds
    # what sizes the training first; Adam's own settings go without saying beside its name
    assert (
        "The settings that differ between the cells shown: train.optimizer.name, "
        "train.optimizer.learning_rate, model.weight_decay." in markdown
    )
    assert "beta_1" not in markdown and "## Versus baseline" not in markdown
    assert "- MLflow experiments: " in markdown and "(tiny-adam)" in markdown

    only = overfit(
        "report", "tiny-report", "tiny-adam", "--only", "baseline", "--out", str(tmp_path / "b"),
        "--tracking-uri", two_studies, cwd=tmp_path,
    )  # fmt: skip
    assert only.returncode == 0, only.stderr
    rows = _markdown_table((tmp_path / "b" / "report.md").read_text(), "## Headline")
    assert sorted(r["cell"].split(" **")[0] for r in rows) == [
        "tiny-adam: baseline",
        "tiny-report: baseline",
    ]
    bad = overfit(
        "report", "tiny-report", "tiny-adam", "--only", "basline", "--out", str(tmp_path / "c"),
        "--tracking-uri", two_studies, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode != 0 and not (tmp_path / "c").exists()
    assert bad.stderr.strip().splitlines() == [
        "error: --only: no study has a cell 'basline' (did you mean 'baseline'?)"
    ]


def _markdown_table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first table after `heading`, as a list of {column: text}."""
    lines = markdown[markdown.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| #"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        values = [c.strip() for c in line.strip("|").split("|")]
        rows.append(dict(zip(header, values, strict=True)))
    return rows


def _plain(value: object) -> object:
    """A value as CSV and JSON hold it: missing as None, numbers as floats, times as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", value):
        return value
    return value
