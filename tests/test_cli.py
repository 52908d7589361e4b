"""The `overfit` command as a user runs it: a real process, a real store in a temp folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from suite.metrics import EPOCH_METRICS
from suite.tracking import Tracker

BROKEN = {
    "unknown key": ("base: {model: {weight_decya: 0.1}}", "base.model.weight_decya"),
    "negative learning rate": (
        "base: {train: {optimizer: {name: sgd, learning_rate: -0.01}}}",
        "base.train.optimizer.learning_rate",
    ),
    "dropout 1.0": ("variants: {d: {model: {dropout: 1.0}}}", "variants.d.model.dropout"),
    "train_size beyond the data": ("base: {data: {train_size: 60000}}", "data.train_size"),
    "string for a number": ("base: {model: {weight_decay: '0.1'}}", "base.model.weight_decay"),
    "invalid YAML": ("base: {model: [", "invalid YAML"),
    "empty file": (None, "empty"),
}


def overfit(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUITE_OFFLINE": "1", "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    return subprocess.run(
        [sys.executable, "-m", "suite", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_study_is_one_line_error_and_creates_nothing(
    case: str, command: str, tmp_path: Path
) -> None:
    body, key = BROKEN[case]
    path = tmp_path / "broken.yaml"
    path.write_text("" if body is None else f"name: broken\n{body}\n")

    done = overfit(command, str(path), cwd=tmp_path)

    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert str(path) in errors[0] and key in errors[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_bad_options_are_one_line_errors(
    write_study: Callable[[str], Path], tmp_path: Path, tiny_study: str
) -> None:
    study = write_study(tiny_study)
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        silent = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for args, expected in [
        (["--tracking-uri", silent], f"no tracking server answers at {silent}"),
        (["--set", "train.epoch=3"], "--set train.epoch: unknown key (did you mean 'epochs'?)"),
        (["--only", "basline"], "--only: no cell 'basline' (did you mean 'baseline'?)"),
        (["--seeds", "x"], "--seeds"),
        (["--executor", "dask"], "--executor: expected local, process, ray, got 'dask'"),
        (["--ray-address", "auto"], "--ray-address: only with --executor ray"),
        (
            ["--executor", "ray", "--ray-address", "10.0.0.5:6379"],
            "the cluster's workers cannot reach",
        ),
        (["--executor", "local", "--workers", "2"], "--workers 2: the local executor trains"),
        (["--workers", "0"], "--workers"),
    ]:
        done = overfit("run", str(study), *args, cwd=tmp_path)
        assert done.returncode != 0 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_ray_executor_without_ray_says_how_to_install_it(
    write_study: Callable[[str], Path], tmp_path: Path, tiny_study: str
) -> None:
    # Ray hidden from the subprocess, as on a default install
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(hide), "SUITE_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "suite", "run", str(write_study(tiny_study)), "--executor", "ray"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --executor ray needs Ray, an optional extra: pip install '.[ray]' "
        "(in a clone: pip install -e '.[ray]')"
    ]
    assert not (tmp_path / "mlflow.db").exists()


def test_validate_prints_the_cells(tmp_path: Path) -> None:
    headline = Path(__file__).resolve().parents[1] / "experiments" / "overfitting.yaml"
    done = overfit("validate", str(headline), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for cell in ("baseline", "weight_decay", "dropout", "batch_norm", "init_small", "wd_dropout"):
        assert cell in done.stdout
    assert "runs: 21" in done.stdout


def test_validate_shows_the_research_settings(tmp_path: Path) -> None:
    # a bare study name finds the suite's own catalogue from any folder
    done = overfit("validate", "grokking", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pytorch x8" in done.stdout and "adamw 0.001 wd 0.01" in done.stdout
    assert "20000 (eval /100)" in done.stdout and "mse_logits" in done.stdout


def test_validate_checks_a_study_without_its_data_and_run_refuses_it(
    write_study: Callable[[str], Path], tmp_path: Path
) -> None:
    """Data not on this machine: `validate` checks the rest and warns in one line naming the
    cells and what would make the data available; `run` stops in one line, storing nothing."""
    study = write_study(
        "name: elsewhere\nbase: {model: {hidden: [8]}, train: {epochs: 1}}\nseeds: [0]\n"
        "variants:\n  here: {}\n  there: {data: {dataset: npz, path: /data/elsewhere.npz}}\n"
    )
    checked = overfit("validate", str(study), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    warned = [line for line in checked.stderr.splitlines() if line.startswith("warning:")]
    assert any(
        "1 cell (there) cannot train here: data.path: no such file /data/elsewhere.npz" in line
        for line in warned
    ), checked.stderr
    assert "here" in checked.stdout and "no data" in checked.stdout and "runs: 2" in checked.stdout
    # a mistake is still an error when the data is missing
    typo = write_study(study.read_text().replace("hidden: [8]", "hiden: [8]"))
    assert overfit("validate", str(typo), cwd=tmp_path).returncode != 0

    ran = overfit("run", str(study), cwd=tmp_path)
    assert ran.returncode != 0 and "Traceback" not in ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {study}: cell there: data.path: no such file /data/elsewhere.npz"], (
        ran.stderr
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_run_list_and_dry_run(
    write_study: Callable[[str], Path], tmp_path: Path, tiny_study: str
) -> None:
    study = write_study(tiny_study)
    dry = overfit("run", str(study), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "4 of 4 runs to train" in dry.stdout
    assert not (tmp_path / "mlflow.db").exists()

    done = overfit("run", str(study), "--only", "baseline", "--seeds", "0,1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 finished, 0 skipped, 0 failed" in done.stdout
    assert (tmp_path / "mlflow.db").exists()

    dry = overfit("run", str(study), "--dry-run", cwd=tmp_path)
    assert "2 of 4 runs to train, 2 already finished" in dry.stdout
    # --seeds names seed numbers: the plan counts those
    one = overfit("run", str(study), "--dry-run", "--seeds", "3", cwd=tmp_path)
    assert "2 cells x 1 seeds" in one.stdout and "seeds: [3]" in one.stdout
    assert "2 of 2 runs to train" in one.stdout
    listed = overfit("list", cwd=tmp_path)
    assert listed.returncode == 0 and "tiny" in listed.stdout


def test_sigint_then_rerun_completes_with_one_finished_run_each(
    write_study: Callable[[str], Path], tmp_path: Path, tiny_study: str, tracking_uri: str
) -> None:
    study = write_study(tiny_study.replace("epochs: 3", "epochs: 40"))
    env = {**os.environ, "SUITE_OFFLINE": "1", "MLFLOW_TRACKING_URI": tracking_uri}
    process = subprocess.Popen(
        [sys.executable, "-m", "suite", "run", str(study)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tracker = Tracker(tracking_uri)  # already migrated: reading it races with nothing
    deadline = time.monotonic() + 240
    finished = 0
    while time.monotonic() < deadline and finished == 0 and process.poll() is None:
        time.sleep(0.5)
        experiment_id = tracker.experiment_id("tiny", create=False)
        runs = tracker.runs(experiment_id) if experiment_id else []
        finished = sum(r.status == "FINISHED" for r in runs)
    assert finished >= 1 and process.poll() is None, "the study ended before it could be stopped"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "resume" in stderr and "Traceback" not in stderr

    experiment_id = tracker.experiment_id("tiny", create=False)
    assert experiment_id is not None
    before = tracker.runs(experiment_id)
    assert "RUNNING" not in {r.status for r in before}

    done = overfit("run", str(study), "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the commands it prints name the store it was given: they work as printed, anywhere
    said = " ".join(done.stdout.split())
    assert f"report: overfit report tiny --tracking-uri {tracking_uri}" in said, done.stdout
    assert f"browse: overfit ui --tracking-uri {tracking_uri}" in said
    after = tracker.runs(experiment_id)
    finished_keys = [(r.cell_hash, r.seed) for r in after if r.status == "FINISHED"]
    assert len(finished_keys) == len(set(finished_keys)) == 4


def test_same_spec_and_seed_give_identical_histories_across_processes(
    write_study: Callable[[str], Path], tmp_path: Path, tiny_study: str, tracking_uri: str
) -> None:
    study = write_study(tiny_study + "  dropout: {model: {dropout: 0.2}}\n")
    args = ["run", str(study), "--only", "dropout", "--seeds", "0", "--tracking-uri", tracking_uri]
    assert overfit(*args, cwd=tmp_path).returncode == 0
    assert overfit(*args, "--rerun", cwd=tmp_path).returncode == 0

    # both invocations train it the same way (one worker with every CPU's threads), so to the
    # bit; another thread count may round differently (see conftest.assert_same_metrics)
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment_id("tiny", create=False)
    assert experiment_id is not None
    first, second = (r.run_id for r in tracker.runs(experiment_id))
    for metric in EPOCH_METRICS:
        a, b = (
            [
                (m.step, m.value)
                for m in sorted(
                    tracker.client.get_metric_history(run, metric), key=lambda m: m.step
                )
            ]
            for run in (first, second)
        )
        assert len(a) == 3 and a == b, metric


def test_list_and_report_on_an_empty_folder_create_nothing(tmp_path: Path) -> None:
    listed = overfit("list", cwd=tmp_path)
    assert listed.returncode == 0 and "no studies" in listed.stdout
    missing = overfit("report", "nowhere.yaml", cwd=tmp_path)
    assert missing.returncode != 0 and "nowhere.yaml: no such study file" in missing.stderr
    unknown = overfit("report", "nothing", cwd=tmp_path)
    assert unknown.returncode != 0 and "no studies in" in unknown.stderr
    assert "Traceback" not in listed.stderr + missing.stderr + unknown.stderr
    assert not (tmp_path / "mlflow.db").exists()


# -- overfit report: the study file found from the store, --ui-url ------------------------------

UI_STUDY = """\
name: cures
description: Weight decay against a baseline, written far from the report.
base:
  data: {train_size: 300}
  model: {hidden: [8]}
  train: {epochs: 2}
seeds: [0, 1]
variants:
  baseline: {}
  weight_decay: {model: {weight_decay: 0.1}}
"""


def _finished_store(uri: str, study_file: Path, tag: bool) -> None:
    """`UI_STUDY`'s 4 runs, FINISHED without training; with `tag`, the store records the
    study file as `overfit run` does."""
    from suite.study import load_study

    study = load_study(study_file, check_data=False)
    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id(study.name)
    assert experiment_id is not None
    if tag:  # as `overfit run` does
        tracker.note_study_file(experiment_id, study_file)
    for cell, (train, test) in zip(study.cells, [(1.0, 0.75), (0.92, 0.74)], strict=True):
        for seed in study.seeds:
            run_id = tracker.start_run(experiment_id, study.name, cell, seed, "bundled")
            values = {"train_accuracy": train, "test_accuracy": test, "gap": train - test}
            tracker.log_epochs(run_id, [(1, values), (2, values)])
            final = {"final_train_accuracy": train, "final_test_accuracy": test + seed / 100}
            tracker.finish(run_id, {**final, "final_gap": train - test - seed / 100})


def test_report_by_name_finds_the_study_file_from_the_store_anywhere(
    tmp_path: Path, tracking_uri: str
) -> None:
    import re

    study_file = tmp_path / "lab" / "cures.yaml"
    study_file.parent.mkdir()
    study_file.write_text(UI_STUDY)
    _finished_store(tracking_uri, study_file, tag=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = overfit(
        "report", "cures", "--tracking-uri", tracking_uri, "--ui-url", "http://ui.lab:8080",
        cwd=elsewhere,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    markdown = (elsewhere / "reports" / "cures" / "report.md").read_text()
    assert "Weight decay against a baseline, written far from the report." in markdown
    assert f"study file: {study_file.resolve()}" in markdown
    assert "[baseline/seed0](http://ui.lab:8080/#/experiments/" in markdown
    assert re.search(
        r"<http://ui\.lab:8080/#/experiments/\d+/runs\?\S*workflowType=machine_learning>", markdown
    )


def test_report_without_a_study_file_warns_in_one_line(tmp_path: Path, tracking_uri: str) -> None:
    study_file = tmp_path / "lab" / "cures.yaml"
    study_file.parent.mkdir()
    study_file.write_text(UI_STUDY)
    _finished_store(tracking_uri, study_file, tag=False)  # runs made before the tag existed

    done = overfit("report", "cures", "--tracking-uri", tracking_uri, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert "no study file for 'cures'" in warnings[0] and "experiments/cures.yaml" in warnings[0]
    markdown = (tmp_path / "reports" / "cures" / "report.md").read_text()
    assert "> No study file for 'cures'" in markdown
    assert "Weight decay against a baseline" not in markdown


@pytest.mark.parametrize("url", ["localhost:5000", "http://ui.lab:99999"])
def test_report_with_a_bad_ui_url_is_a_one_line_error(
    url: str, tmp_path: Path, tracking_uri: str
) -> None:
    done = overfit("report", "cures", "--tracking-uri", tracking_uri, "--ui-url", url, cwd=tmp_path)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: --ui-url:") and url in line
    assert not (tmp_path / "reports").exists()
