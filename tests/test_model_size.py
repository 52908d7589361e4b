"""Model size: every run's `n_params` (an mlp's, a cnn's, a builder's, as Keras counts them),
the `size` report figure (final metrics against n_params, with the interpolation threshold)
drawn from a real tiny study's store, and the figures' errors at load."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import suite
from suite.models import build_model, parameter_count
from suite.report import aggregate, groups, load, size
from suite.report.figure_spec import SizeFigure
from suite.spec import SpecError
from suite.study import load_study
from suite.tracking import Tracker

BUILDER = """
import keras

def build(input_shape, num_classes, seed):
    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(12, kernel_initializer=init),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("relu"),
        keras.layers.Dense(num_classes, kernel_initializer=init),
    ])
"""

SIZES = """
name: sizes
base:
  data: {train_size: 40, test_size: 50}
  train: {batch_size: 20, epochs: 1}
variants:
  mlp: {model: {hidden: [8, 6], batch_norm: true}}
  cnn: {model: {kind: cnn, conv: [{filters: 2, kernel: 3, pool: 2}], hidden: [8]}}
  own: {model: {builder: "mine:build"}}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset here, whatever the machine has."""


def keras_trainable(model: object) -> int:
    """The trainable parameter count Keras' own summary prints."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))  # type: ignore[attr-defined]
    found = re.search(r"Trainable params: ([\d,]+)", "\n".join(lines))
    assert found, lines
    return int(found[1].replace(",", ""))


def test_every_run_logs_its_trainable_parameters_as_keras_counts_them(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    path = write_study(SIZES)
    (path.parent / "mine.py").write_text(BUILDER)
    study = load_study(path)
    result = suite.run(study, uri=tracking_uri)
    assert result.ok
    logged = {r.key.cell.name: r.final["n_params"] for r in result.results}
    runs = suite.results.runs("sizes", uri=tracking_uri).set_index("cell")
    for cell in study.cells:
        model = build_model(cell.config.model, 0, 784, 10, (28, 28), cell.builder_file or None)
        expected = keras_trainable(model)
        assert logged[cell.name] == expected == runs.loc[cell.name, "n_params"], cell.name
        # batch norm's moving statistics are parameters, but not trainable ones
        if cell.name in ("mlp", "own"):
            assert model.count_params() > expected
    mlp = study.cells[0].config.model
    assert logged["mlp"] == parameter_count(mlp) == 784 * 8 + 8 + 8 * 6 + 6 + 6 * 10 + 10 + 2 * 14
    # the conv layer's 2*(3*3+1) and the dense 13*13*2 -> 8 -> 10
    assert logged["cnn"] == 2 * 10 + 338 * 8 + 8 + 8 * 10 + 10
    assert logged["own"] == 784 * 12 + 12 + 2 * 12 + 12 * 10 + 10


# --- the size figure ------------------------------------------------------------------------

# 4x4 images of 3 classes and 45 training images: n·K = 135 falls between the networks,
# 16*2+2+2*3+3 = 43 and 16*24+24+24*3+3 = 483 parameters
SIZE_STUDY = """
name: double-descent
base:
  data: {dataset: npz, path: small.npz, train_size: 45}
  model: {hidden: [2]}
  train: {batch_size: 15, epochs: 1, optimizer: {name: adam}}
seeds: [0, 1]
variants:
  clean: {}
  noisy: {data: {label_noise: {fraction: 0.4}}}
grid:
  model.hidden: [[2], [24]]
report:
  figures:
    - {kind: size, y: [final_test_accuracy, final_test_loss], hue: data.label_noise.fraction}
"""


def _small_npz(path: Path) -> None:
    rng = np.random.default_rng(0)
    labels, test = np.arange(60) % 3, np.arange(30) % 3
    images = rng.random((60, 4, 4)) + labels[:, None, None] * 0.3
    np.savez(path, x_train=images, y_train=labels, x_test=rng.random((30, 4, 4)), y_test=test)


@pytest.fixture
def sized(write_study: Callable[..., Path], tracking_uri: str, tmp_path: Path) -> tuple[Path, str]:
    """The double-descent study above, run into a fresh store: (study file, tracking URI)."""
    _small_npz(tmp_path / "small.npz")
    path = write_study(SIZE_STUDY.replace("small.npz", str(tmp_path / "small.npz")))
    assert suite.run(suite.load(path), uri=tracking_uri).ok
    return path, tracking_uri


def test_the_size_figure_draws_metrics_against_n_params_with_the_threshold(
    sized: tuple[Path, str], tmp_path: Path
) -> None:
    path, uri = sized
    study = load_study(path)
    runs = load.load_runs("double-descent", Tracker(uri)).runs
    used = aggregate.finished_runs(runs)
    cells = aggregate.cell_rows(runs, study)
    assert size.thresholds(used) == {c.cell_hash: 45 * 3 for c in cells}
    spec = study.report.figures[0]
    assert isinstance(spec, SizeFigure)
    values = {spec.hue: groups.cell_values(used, cells, spec.hue, study)}
    drawn = size.draw(spec, cells, values, used, "double-descent")
    assert drawn is not None
    axes = [ax for ax in drawn.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["final test accuracy", "final test loss"]
    for ax in axes:
        assert ax.get_xscale() == "log"
        vertical = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
        assert [line.get_xdata()[0] for line in vertical] == [135]
        assert any("n·K = 135" in text.get_text() for text in ax.texts)
        # a line per hue (clean, 0.4 noise), through the sizes in order
        joined = [line for line in ax.lines if line.get_linestyle() == "-"]
        assert len(joined) == 2
        for line in joined:
            assert list(line.get_xdata()) == [43, 483]
    legend = [t.get_text() for t in drawn.legends[0].get_texts()]
    assert "label_noise.fraction = off" in legend and "label_noise.fraction = 0.4" in legend
    assert any("interpolation threshold" in t for t in legend)

    out = suite.report(study, uri=uri, out=tmp_path / "report")
    page = Path(out.markdown).read_text()
    assert "interpolation threshold" in page
    pngs = list((tmp_path / "report").glob("figure1-size*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000


def test_the_size_figure_of_runs_without_n_params_draws_nothing() -> None:
    spec = SizeFigure(kind="size", y=["final_test_accuracy"])
    cell = aggregate.CellRow("a", "a", 0, "h", True, False, 1, 1, 0, 0)
    assert size.draw(spec, [cell], {"variant": {"h": "a"}}, load.pd.DataFrame(), "s") is None


@pytest.mark.parametrize(
    ("figure", "key", "words"),
    [
        ("{kind: size, y: [final_test_acc]}", "y", "did you mean 'final_test_accuracy'"),
        ("{kind: size, y: [n_params]}", "y", "unknown metric 'n_params'"),
        (
            "{kind: size, y: [final_val_accuracy]}",
            "y",
            "no cell logs final_val_accuracy: it needs data.val_size",
        ),
        ("{kind: size, y: [stopped_epoch]}", "y", "it needs train.early_stopping"),
        ("{kind: size, y: []}", "y", "needs at least one entry"),
        ("{kind: size, y: [final_gap], hue: model.hiden}", "hue", "did you mean 'model.hidden'"),
        ("{kind: size, y: [final_gap], x: n_params}", "x", "unknown key"),
        ("{kind: curves, metric: memorized}", "metric", "it needs data.label_noise"),
        ("{kind: versus, x: grid, y: [best_val_accuracy]}", "y", "it needs data.val_size"),
        ("{kind: versus, x: grid, y: [temperature]}", "y", "it needs data.val_size"),
        ("{kind: curves, metric: val_ece}", "metric", "it needs data.val_size"),
    ],
)
def test_a_figure_naming_a_metric_the_runs_do_not_log_is_one_line(
    write_study: Callable[..., Path], tracking_uri: str, figure: str, key: str, words: str
) -> None:
    path = write_study(
        f"name: bad\nbase:\n  data: {{train_size: 20}}\nreport:\n  figures:\n    - {figure}\n"
    )
    with pytest.raises(SpecError) as err:
        load_study(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: report.figures"), message
    assert f"{key}" in message.split(": ")[1] and words in message, message
    # nothing was run: the store holds no such study
    assert Tracker(tracking_uri).experiment_id("bad", create=False) is None


def test_calibration_metrics_need_a_cross_entropy_cell(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    path = write_study(
        "name: squared\nbase:\n  data: {train_size: 20, val_size: 10}\n  train: {loss: mse}\n"
        "report:\n  figures:\n    - {kind: curves, metric: test_ece}\n"
    )
    with pytest.raises(SpecError) as err:
        load_study(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: report.figures[0].metric")
    assert "no cell logs test_ece" in message and "cross_entropy" in message
    assert Tracker(tracking_uri).experiment_id("squared", create=False) is None
