"""`model.builder: "module:function"`: a user's own Keras model, found beside the study file,
trained by the suite's loop with its penalty, and refused in one line when it cannot serve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from suite.runner import run_study
from suite.spec import SpecError
from suite.study import load_study
from suite.tracking import Tracker

GOOD = """
import keras

def build(input_shape, num_classes, seed):
    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", kernel_initializer=init),
        keras.layers.Dense(num_classes, kernel_initializer=init),
    ])
"""

STUDY = """
name: own
base:
  data: {train_size: 40, test_size: 100}
  train: {epochs: 2, batch_size: 20}
seeds: [0]
variants:
  plain: {model: {builder: "mine:build"}}
  decayed: {model: {builder: "mine:build", weight_decay: 0.1}}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less MNIST is the bundled subset here."""


@pytest.fixture
def beside(write_study: Callable[[str], Path]) -> Callable[[str, str], Path]:
    """A study file with a module `mine.py` beside it."""

    def write(module: str, study: str = STUDY) -> Path:
        path = write_study(study)
        (path.parent / "mine.py").write_text(module)
        return path

    return write


def test_a_builder_beside_the_study_trains_with_the_suites_penalty(
    beside: Callable[[str, str], Path], tracking_uri: str
) -> None:
    study = load_study(beside(GOOD, STUDY))
    tracker = Tracker(tracking_uri)
    result = run_study(study, tracker, workers=1)
    assert result.ok
    runs = {r.key.cell.name: r.run_id for r in result.results}
    last = {run: value for run, _, _, value in tracker.histories(list(runs.values()), ["reg_loss"])}
    assert last[runs["plain"]] == 0.0 and last[runs["decayed"]] > 0.0


def test_an_edited_builder_is_a_new_cell(beside: Callable[[str, str], Path]) -> None:
    before = load_study(beside(GOOD, STUDY)).cells[0].hash
    after = load_study(beside(GOOD.replace("Dense(16", "Dense(17"), STUDY)).cells[0].hash
    assert before != after


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("x = 1\n", r"mine\.py has no function 'build'"),
        (
            "def build(s, n, seed):\n    raise RuntimeError('no GPU')\n",
            r"raised RuntimeError: no GPU",
        ),
        ("def build(s, n, seed):\n    return 42\n", r"returned a int, not a keras\.Model"),
        (
            GOOD.replace("Dense(num_classes", "Dense(3"),
            r"output has shape \('batch', 3\), expected \(batch, 10\)",
        ),
        ("import not_a_module_anywhere\n", r"importing .*mine\.py raised ModuleNotFoundError"),
    ],
)
def test_a_builder_that_cannot_serve_is_one_line_and_no_run(
    beside: Callable[[str, str], Path], module: str, message: str, tracking_uri: str
) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        load_study(beside(module, STUDY))
    assert "cell plain" in str(caught.value) and "\n" not in str(caught.value)
    assert not Tracker(tracking_uri).exists() or not Tracker(tracking_uri).studies()


def test_a_missing_module_and_architecture_keys_are_refused(
    write_study: Callable[[str], Path], beside: Callable[[str, str], Path]
) -> None:
    with pytest.raises(SpecError, match=r"model\.builder: no module 'mine'"):
        load_study(write_study(STUDY))
    bad = STUDY.replace('{builder: "mine:build"}', '{builder: "mine:build", hidden: [8]}')
    with pytest.raises(SpecError, match=r"hidden: an architecture key beside model\.builder"):
        load_study(beside(GOOD, bad))
