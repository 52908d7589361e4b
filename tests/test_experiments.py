"""Every study in `experiments/` loads, expands, runs for a couple of epochs on tiny data, and
its report renders with every figure the study asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite import runner
from suite.report import write_report
from suite.report.figure_spec import ActivationsFigure
from suite.spec import SpecError
from suite.study import Study, load_study
from suite.tracking import Tracker

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))
# evaluated every epoch: a long study evaluates every 100 of its 20,000
TINY = {"train.epochs": 2, "data.test_size": 200, "train.eval_every": 1}
# plain nets at weight std 1 overflow to NaN in the first epoch, as the textbook's own code
# does (its published 0.097 is the accuracy of NaN outputs); every other run must finish
MAY_DIVERGE = {("batch_norm", "plain[init=std:1]")}


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset here, whatever the machine has."""


def _load(path: Path, overrides: dict[str, object] | None = None) -> Study:
    """The study, or a skip when its data is not on this machine (Fashion-MNIST offline
    without Keras' cache or Debian's dataset-fashion-mnist)."""
    try:
        return load_study(path, overrides)
    except SpecError as err:
        if "not on this machine" in str(err):  # says what to install
            pytest.skip(f"{path.name}: {err}")
        raise


def test_the_catalogue_is_all_there() -> None:
    names = {p.stem for p in EXPERIMENTS}
    assert {
        "overfitting",
        "weight_init",
        "batch_norm",
        "optimizers",
        "hparam_search",
        "data_size",
        "regularization_strength",
        "activations_and_loss",
    } <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_study_file_loads_and_opens_with_its_comment(path: Path) -> None:
    study = _load(path)
    assert study.name == path.stem
    assert study.cells and study.seeds
    head = path.read_text().splitlines()[0]
    assert head.startswith("# "), f"{path.name} must open with a comment saying what it studies"
    assert "Runtime" in path.read_text().split("\nname:")[0]


def _sample(study: Study) -> Study:
    """The first cell of every variant and the study's last cell: every kind of cell, fast."""
    picked, variants = [], set()
    for cell in study.cells:
        if cell.variant not in variants:
            variants.add(cell.variant)
            picked.append(cell.name)
    if study.cells[-1].name not in picked:
        picked.append(study.cells[-1].name)
    return study.select(picked)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_study_runs_and_its_report_renders(path: Path, tmp_path: Path) -> None:
    study = _sample(_load(path, TINY))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = runner.run_study(study, tracker, seeds=(0,))
    for run in result.results:
        if (study.name, run.key.cell.name) in MAY_DIVERGE:
            assert run.status == "finished" or run.reason.startswith("diverged")
        elif run.key.cell.slot is not None and run.key.cell.slot.spec.pruner != "none":
            assert run.status in ("finished", "pruned"), f"{run.key.cell.name}: {run.reason}"
        else:
            assert run.status == "finished", f"{run.key.cell.name}: {run.reason}"

    paths = write_report(study.name, tracker, tmp_path / "report", study)
    html = paths.html.read_text()
    assert "Traceback" not in html and "nan ±" not in html
    pngs = {p.name for p in paths.folder.glob("*.png")}
    for index, figure in enumerate(study.report.figures, 1):
        stem = f"figure{index}-{figure.kind}"
        drawn = sorted(p for p in pngs if p.startswith(stem))
        expected = 3 if isinstance(figure, ActivationsFigure) else 1
        assert len(drawn) == expected, f"{study.name}: {stem} not drawn ({sorted(pngs)})"
        for name in drawn:
            assert 'alt="' in html and name in paths.markdown.read_text()
    for view in study.report.metrics:
        assert f"{view}.png" in pngs
    # a grid or search study lists its settings beside each cell
    if any(c.grid_point for c in study.cells):
        first_key = next(iter(next(c for c in study.cells if c.grid_point).grid_point))
        assert f"<th>{first_key}</th>" in html
