"""Label noise (`data.label_noise`): the seeded corruption of training labels, its metrics
(`train_clean_accuracy`, `memorized`) from the compiled evaluation, its `label_noise.json`
artifact, in one process and in workers, and the errors of a wrong setting."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_metrics, histories, run_in_workers

from suite import data, results, train
from suite.corrupt import LabelNoiseError, corrupt_labels
from suite.metrics import CURVE_METRICS, NOISE_METRICS
from suite.names import FINISHED, LABEL_NOISE_ARTIFACT
from suite.spec import LATE_SETTINGS, RunConfig, SpecError
from suite.study import load_study
from suite.tracking import Tracker

NOISY_STUDY = """
name: noisy
base:
  data: {train_size: 60, test_size: 100, val_size: 20, label_noise: {fraction: 0.4}}
  model: {hidden: [16]}
  train: {batch_size: 20, epochs: 4}
seeds: [0, 1]
variants:
  noisy: {}
  random_labels: {data: {label_noise: {fraction: 1.0, kind: any}}}
  clean: {data: {label_noise: null}}
report:
  metrics: [accuracy, label_noise]
  figures:
    - {kind: curves, metric: memorized}
    - {kind: curves, metric: train_clean_accuracy}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset here, whatever the machine has."""


def _split(seed: int, **noise: Any) -> data.Split:
    return data.make_split(None, 300, "first", 0, 100, seed=seed, label_noise=noise or None)


# --- the corruption -------------------------------------------------------------------------


def test_the_corruption_is_seeded_and_shared_by_every_cell_with_the_seed() -> None:
    a, again = _split(3, fraction=0.4, kind="other"), _split(3, fraction=0.4, kind="other")
    assert a.label_noise is not None and again.label_noise is not None
    assert np.array_equal(a.y_train, again.y_train)
    assert np.array_equal(a.label_noise.indices, again.label_noise.indices)
    # two cells that differ elsewhere (the network, the optimizer) cut the same data
    cells = [
        RunConfig.model_validate(
            {"data": {"train_size": 300, "label_noise": {"fraction": 0.4}}, "model": model}
        )
        for model in ({"hidden": [8]}, {"hidden": [32, 32], "dropout": 0.5})
    ]
    one, two = (data.make_split(**c.data.model_dump(), seed=3) for c in cells)
    assert np.array_equal(one.y_train, two.y_train)
    other = _split(4, fraction=0.4, kind="other")
    assert other.label_noise is not None
    assert not np.array_equal(a.label_noise.indices, other.label_noise.indices)
    assert not np.array_equal(a.y_train, other.y_train)
    # the same training images: only their labels change
    assert np.array_equal(a.x_train, other.x_train)


def test_a_smaller_fraction_corrupts_a_subset_of_a_larger_ones_images_to_the_same_labels() -> None:
    small, large = _split(0, fraction=0.2), _split(0, fraction=0.6)
    assert small.label_noise is not None and large.label_noise is not None
    assert set(small.label_noise.indices) <= set(large.label_noise.indices)
    assert np.array_equal(
        small.y_train[small.label_noise.indices], large.y_train[small.label_noise.indices]
    )


@pytest.mark.parametrize(
    ("fraction", "n", "count"),
    [
        (0.0, 300, 0),
        (0.4, 300, 120),
        (1.0, 300, 300),
        (1 / 3, 100, 33),
        (0.25, 7, 2),
        (0.001, 60, 0),
    ],
)
def test_round_fraction_times_n_labels_are_corrupted(fraction: float, n: int, count: int) -> None:
    labels = np.arange(n) % 10
    noisy, draw = corrupt_labels(labels, 10, fraction, "other", seed=0)
    assert count == round(fraction * n)
    assert len(draw.indices) == count == int((noisy != labels).sum())
    assert len(set(draw.indices.tolist())) == count, "without replacement"
    assert np.array_equal(draw.clean, labels[draw.indices])
    assert np.array_equal(draw.corrupted, noisy[draw.indices])


def test_other_never_keeps_the_true_label_and_is_uniform_over_the_other_classes() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    noisy, draw = corrupt_labels(labels, 10, 1.0, "other", seed=1)
    assert not np.any(noisy == labels)
    shifts = np.bincount((noisy - labels) % 10, minlength=10)
    assert shifts[0] == 0
    # 5000 draws over 9 classes: 556 each, sd 22; 6 sd either way
    assert np.all(np.abs(shifts[1:] - 5000 / 9) < 6 * 22)


def test_any_keeps_the_true_label_about_one_time_in_k() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    noisy, _ = corrupt_labels(labels, 10, 1.0, "any", seed=1)
    kept = float(np.mean(noisy == labels))
    # binomial(5000, 0.1): sd 0.0042; 0.02 is 4.7 sd
    assert abs(kept - 0.1) < 0.02
    assert np.all(np.abs(np.bincount(noisy, minlength=10) / 5000 - 0.1) < 0.02)


def test_validation_and_test_labels_stay_clean() -> None:
    plain = data.make_split(None, 200, "random", 50, 100, seed=2)
    noisy = data.make_split(
        None, 200, "random", 50, 100, seed=2, label_noise={"fraction": 1.0, "kind": "other"}
    )
    assert noisy.y_val is not None and plain.y_val is not None
    assert np.array_equal(noisy.y_val, plain.y_val)
    assert np.array_equal(noisy.y_test, plain.y_test)
    assert np.array_equal(noisy.x_train, plain.x_train)
    assert not np.any(noisy.y_train == plain.y_train)
    assert plain.label_noise is None


# --- the schema and its errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "key", "words"),
    [
        ("{fraction: 1.5}", "base.data.label_noise.fraction", "less than or equal to 1"),
        ("{fraction: -0.1}", "base.data.label_noise.fraction", "greater than or equal to 0"),
        ("{fraction: 0.2, kind: some}", "base.data.label_noise.kind", "'other' or 'any'"),
        ("{kind: any}", "base.data.label_noise.fraction", "required"),
        ("{fraction: 0.2, knd: any}", "base.data.label_noise.knd", "did you mean 'kind'"),
    ],
)
def test_a_wrong_label_noise_is_one_line_naming_file_and_key(
    write_study: Callable[..., Path], setting: str, key: str, words: str
) -> None:
    path = write_study(f"name: bad\nbase:\n  data: {{train_size: 20, label_noise: {setting}}}\n")
    with pytest.raises(SpecError) as err:
        load_study(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message


def test_label_noise_on_data_of_one_class_is_refused_before_any_run(
    write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LabelNoiseError, match=r"^data\.label_noise: the data has 1 class"):
        corrupt_labels(np.zeros(10, np.int64), 1, 0.5, "other", seed=0)
    images = np.zeros((50, 28, 28), np.uint8)
    labels = np.zeros(50, np.int64)
    one_class = data.Pool(images, labels, images, labels, data.Source("file", "/one-class.npz"))
    monkeypatch.setattr(data, "load_pool", lambda source: one_class)
    text = (
        "name: one\nbase:\n  data: {train_size: 20, test_size: 10, label_noise: {fraction: 0.5}}\n"
    )
    with pytest.raises(SpecError) as err:
        load_study(write_study(text))
    assert "\n" not in str(err.value)
    assert "study_" in str(err.value) and "data.label_noise: the data has 1 class" in str(err.value)
    # without label noise the same data is no error of this kind
    load_study(write_study(text.replace(", label_noise: {fraction: 0.5}", "")))


def test_a_cell_without_label_noise_keeps_its_hash() -> None:
    checked = 0
    for path in sorted(Path(__file__).parents[1].glob("experiments/*.yaml")):
        for cell in load_study(path, check_data=False).cells:
            if cell.config.data.label_noise is not None:  # the studies of noisy labels
                continue
            checked += 1
            identity = cell.config.identity()
            assert "label_noise" not in identity["data"], f"{path.name}: {cell.name}"
            # the hash as it was before the setting existed: of the dump without the key
            before = cell.config.model_dump(mode="json")
            del before["data"]["label_noise"]
            assert _hash(before, cell.config) == cell.config.hash
    assert checked > 100  # the textbook's studies, every cell
    off = RunConfig.model_validate({"data": {"label_noise": None}})
    on = RunConfig.model_validate({"data": {"label_noise": {"fraction": 0.2}}})
    assert off.hash == RunConfig().hash != on.hash
    assert (
        on.hash
        != RunConfig.model_validate(
            {"data": {"label_noise": {"fraction": 0.2, "kind": "any"}}}
        ).hash
    )


# the headline study's cells as they were hashed before label noise existed
HEADLINE_HASHES = [
    "17183c85ef",
    "8cb402aef4",
    "a62882b7e3",
    "a7153892ef",
    "b78a774f5b",
    "ce56a918c8",
    "d095cb22d7",
]


def test_the_headline_study_keeps_the_hashes_it_had() -> None:
    study = load_study(Path(__file__).parents[1] / "experiments/overfitting.yaml", check_data=False)
    assert sorted(cell.config.hash for cell in study.cells) == HEADLINE_HASHES


def _hash(dumped: dict[str, Any], config: RunConfig) -> str:
    """`RunConfig.hash` of a dump, the other late settings left out as `identity` does."""
    for dotted, default in LATE_SETTINGS.items():
        *sections, key = dotted.split(".")  # train.optimizer.weight_decay: two levels down
        keys = dumped
        for section in sections:
            keys = keys[section]
        if key in keys and keys[key] == default:
            del keys[key]
    assert dumped == {k: v for k, v in config.identity().items()}
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:10]


# --- the metrics, from the compiled evaluation ----------------------------------------------


def _config(**noise: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"train_size": 100, "test_size": 100, "label_noise": noise or None},
            "model": {"hidden": [32]},
            "train": {"batch_size": 20, "epochs": 6, "optimizer": {"name": "adam"}},
        }
    )


def test_the_metrics_match_the_predictions_of_the_trained_network() -> None:
    config = _config(fraction=0.4, kind="other")
    split = data.make_split(**config.data.model_dump(), seed=0)
    history = train.train(config, split, 0, log_model="final")
    assert history.network is not None and split.label_noise is not None
    try:
        network = history.network.load()
    finally:
        history.network.discard()
    predicted = np.argmax(network.predict(split.x_train, verbose=0), axis=1)
    noisy = split.label_noise.mask().astype(bool)
    clean_labels = split.y_train.copy()
    clean_labels[split.label_noise.indices] = split.label_noise.clean
    # recomputed here: clean images against their own labels, corrupted ones against the
    # corrupted label; train_accuracy against the labels the run trained on
    expected = {
        "train_clean_accuracy": float(np.mean(predicted[~noisy] == clean_labels[~noisy])),
        "memorized": float(np.mean(predicted[noisy] == split.label_noise.corrupted)),
        "train_accuracy": float(np.mean(predicted == split.y_train)),
    }
    last = {name: history.metrics[name][-1] for name in expected}
    assert last == pytest.approx(expected, abs=1e-6)
    assert len(history.metrics["memorized"]) == len(history.metrics["train_clean_accuracy"]) == 6
    assert history.label_noise is not None and history.label_noise["n_corrupted"] == 40


def test_with_every_label_corrupted_memorized_is_the_train_accuracy() -> None:
    everything = train.train(*_args(_config(fraction=1.0, kind="any")))
    assert "train_clean_accuracy" not in everything.metrics
    assert everything.metrics["memorized"] == everything.metrics["train_accuracy"]
    nothing = train.train(*_args(_config(fraction=0.0)))
    assert "memorized" not in nothing.metrics
    assert nothing.metrics["train_clean_accuracy"] == nothing.metrics["train_accuracy"]
    off = train.train(*_args(_config()))
    assert not set(NOISE_METRICS) & set(off.metrics) and off.label_noise is None


def _args(config: RunConfig) -> tuple[RunConfig, data.Split, int]:
    return config, data.make_split(**config.data.model_dump(), seed=0), 0


# --- runs in the store ----------------------------------------------------------------------


def _artifact(tracker: Tracker, run_id: str) -> dict[str, Any] | None:
    names = [f.path for f in tracker.client.list_artifacts(run_id)]
    if LABEL_NOISE_ARTIFACT not in names:
        return None
    return json.loads(
        Path(tracker.client.download_artifacts(run_id, LABEL_NOISE_ARTIFACT)).read_text()
    )


def test_runs_log_the_metrics_and_what_was_corrupted_in_one_process_and_in_workers(
    write_study: Callable[..., Path], tmp_path: Path, _store_template: Path
) -> None:
    path = write_study(NOISY_STUDY)
    study = load_study(path)
    cells = {cell.name: cell for cell in study.cells}
    ran = run_in_workers(study, tmp_path, _store_template)
    stores = {workers: tracker for workers, (tracker, _) in ran.items()}
    for _, result in ran.values():
        assert result.ok and result.count(FINISHED) == 6
    one, two = histories(stores[1], "noisy"), histories(stores[2], "noisy")
    assert_same_metrics(one, two)
    logged = {(cell, name) for cell, _, name in one}
    noisy, random, clean = (cells[n].hash for n in ("noisy", "random_labels", "clean"))
    assert {(noisy, "train_clean_accuracy"), (noisy, "memorized"), (random, "memorized")} <= logged
    assert (random, "train_clean_accuracy") not in logged
    assert not {(clean, m) for m in NOISE_METRICS} & logged
    assert all(len(one[(noisy, s, "memorized")]) == 4 for s in (0, 1))
    for tracker in stores.values():
        experiment_id = tracker.experiment_id("noisy", create=False)
        assert experiment_id is not None
        for record in tracker.runs(experiment_id):
            record_noise = _artifact(tracker, record.run_id)
            if record.cell_hash == clean:
                assert record_noise is None
                continue
            assert record_noise is not None
            cell = next(c for c in study.cells if c.hash == record.cell_hash)
            split = data.make_split(**cell.config.data.model_dump(), seed=record.seed)
            assert split.label_noise is not None
            assert record_noise == json.loads(json.dumps(split.label_noise.record()))
            assert record_noise["n_corrupted"] == round(cell.config.data.label_noise.fraction * 60)
    # suite.results reads them back as curves
    frame = results.curves("noisy", ["memorized", "train_clean_accuracy"], uri=stores[1].uri)
    assert set(frame["metric"]) == {"memorized", "train_clean_accuracy"}
    assert set(frame["cell"]) == {"noisy", "random_labels"}
    assert {"memorized", "train_clean_accuracy"} <= set(CURVE_METRICS)


def test_the_report_draws_the_label_noise_curves(
    write_study: Callable[..., Path], tracking_uri: str, tmp_path: Path
) -> None:
    import suite

    path = write_study(
        NOISY_STUDY.replace("seeds: [0, 1]", "seeds: [0]").replace("epochs: 4", "epochs: 2")
    )
    study = suite.load(path)
    assert [f.metric for f in study.report.figures] == ["memorized", "train_clean_accuracy"]
    assert suite.run(study, uri=tracking_uri).ok
    out = suite.report(study, uri=tracking_uri, out=tmp_path / "report")
    page = Path(out.markdown).read_text()
    assert "memorized" in page and "clean train accuracy" in page


def test_the_cells_table_shows_each_cells_label_noise(write_study: Callable[..., Path]) -> None:
    import io

    from rich.console import Console

    from suite.display import cells_table

    console = Console(file=io.StringIO(), width=240)
    console.print(cells_table(load_study(write_study(NOISY_STUDY))))
    rows = {line.split()[1]: line for line in console.file.getvalue().splitlines() if "│" in line}
    assert "0.4 other" in rows["noisy"] and "1 any" in rows["random_labels"]
    assert "label noise" in console.file.getvalue() and "other" not in rows["clean"]
