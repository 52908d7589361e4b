"""Datasets beyond MNIST: any npz, Fashion-MNIST's and CIFAR-10's original files, and what a
run of them logs. Real files on disk; Fashion-MNIST from Debian's `dataset-fashion-mnist`
when it is installed."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from suite import data
from suite.data import DataError, load_pool, make_split, resolve_source
from suite.report.aggregate import chance_level
from suite.runner import run_study
from suite.spec import SpecError
from suite.study import MissingDataWarning, load_study
from suite.tracking import Tracker

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def colour_npz(path: Path, n_train: int = 60, n_test: int = 30, **override: np.ndarray) -> Path:
    """8x8 colour images of 3 classes, each class bright in its own channel."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 8, 8, 3)).astype(np.uint8)
        for k in range(3):
            x[y == k, :, :, k] += 150
        return x, y

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    np.savez(path, **{**arrays, **override})
    return path


def test_a_generic_npz_of_colour_images_and_three_classes(tmp_path: Path) -> None:
    path = colour_npz(tmp_path / "colour.npz")
    split = make_split(str(path), 30, "first", 6, None, 0, dataset="npz")
    assert split.num_classes == 3 and split.image_shape == (8, 8, 3)
    assert split.x_train.shape == (30, 8 * 8 * 3) and split.sizes == {
        "train": 30,
        "val": 6,
        "test": 30,
    }
    assert split.x_train.min() >= 0.0 and split.x_train.max() <= 1.0  # uint8 / 255
    assert split.source.label == f"npz:file:{path.resolve()}"


def test_floats_are_taken_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 5)).astype(np.float32) * 7
    path = tmp_path / "features.npz"
    np.savez(
        path,
        x_train=features,
        y_train=np.arange(40) % 2,
        x_test=features[:10],
        y_test=np.arange(10) % 2,
    )
    split = make_split(str(path), None, "first", 0, None, 0, dataset="npz")
    assert split.num_classes == 2 and split.image_shape == (5,)
    assert np.array_equal(split.x_train, features)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"y_test": None}, "has no y_test array"),
        ({"y_train": np.arange(59) % 3}, r"y_train has shape \(59,\), expected \(60,\) as x_train"),
        ({"y_train": (np.arange(60) % 3) - 1}, "y_train must hold integer labels 0..K-1"),
        ({"y_train": (np.arange(60) % 3).astype(float)}, "y_train must hold integer labels 0..K-1"),
        (
            {"x_test": np.zeros((30, 9, 9, 3), np.uint8)},
            r"x_test has shape \(30, 9, 9, 3\), expected \(N, 8, 8, 3\)",
        ),
        ({"y_train": np.zeros(60, int)}, "at least 2 classes"),
    ],
)
def test_a_broken_npz_is_one_line_naming_the_file(
    tmp_path: Path, override: dict[str, np.ndarray | None], message: str
) -> None:
    path = tmp_path / "broken.npz"
    arrays = {k: v for k, v in override.items() if v is not None}
    colour_npz(path, **arrays)
    if any(v is None for v in override.values()):  # an array left out
        with np.load(path) as npz:
            kept = {k: npz[k] for k in npz.files if k not in override}
        np.savez(path, **kept)
    with pytest.raises(DataError, match=message) as caught:
        load_pool(resolve_source(str(path), "npz"))
    assert str(path.resolve()) in str(caught.value) and "\n" not in str(caught.value)


def test_npz_without_a_path_and_unknown_datasets_are_refused(
    write_study: Callable[[str], Path],
) -> None:
    with pytest.raises(
        SpecError, match=r"base\.data\.path: dataset npz needs the path of an \.npz file"
    ):
        load_study(write_study("name: n\nbase: {data: {dataset: npz}}\n"))
    with pytest.raises(SpecError, match=r"base\.data\.dataset: expected 'mnist', 'fashion_mnist'"):
        load_study(write_study("name: n\nbase: {data: {dataset: svhn}}\n"))
    with pytest.raises(SpecError, match=r"data\.path: no such file"):
        load_study(write_study("name: n\nbase: {data: {dataset: npz, path: /nowhere.npz}}\n"))


def fashion_files(folder: Path, n_train: int = 12, n_test: int = 4) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four gzip files in their original layout, with random pixels; returns
    the arrays written."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for part, key in (("train", "train"), ("t10k", "test")):
        with gzip.open(folder / f"{part}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\0" * 16 + arrays[f"x_{key}"].tobytes())
        with gzip.open(folder / f"{part}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\0" * 8 + arrays[f"y_{key}"].tobytes())
    return arrays


def test_fashion_mnist_offline_without_files_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SUITE_OFFLINE", "1")
    monkeypatch.setitem(data.KERAS_CACHED, "fashion_mnist", (tmp_path / "no-cache",))
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "no-debian")
    with pytest.raises(data.DataUnavailable) as caught:
        resolve_source(None, "fashion_mnist")
    message = str(caught.value)
    assert message.startswith("data.dataset fashion_mnist: not on this machine")
    assert "apt-get install dataset-fashion-mnist" in message and "data.path" in message
    assert "no-cache" not in message and "\n" not in message  # no folder is in the way


def test_an_empty_keras_cache_folder_falls_through_to_debians_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A failed Keras download leaves `~/.keras/datasets/fashion-mnist/` empty; Debian's files
    installed afterwards are found all the same."""
    monkeypatch.setenv("SUITE_OFFLINE", "1")
    empty = tmp_path / "keras" / "fashion-mnist"
    empty.mkdir(parents=True)
    monkeypatch.setitem(data.KERAS_CACHED, "fashion_mnist", (empty,))
    debian = tmp_path / "debian"
    monkeypatch.setattr(data, "DEBIAN_FASHION", debian)
    with pytest.raises(data.DataUnavailable, match=f"Keras' cache {empty} holds 0 of its 4"):
        resolve_source(None, "fashion_mnist")  # before Debian's files: the empty folder named
    written = fashion_files(debian)
    source = resolve_source(None, "fashion_mnist")
    assert source == data.Source("folder", str(debian), "fashion_mnist")
    assert np.array_equal(load_pool(source).x_train, written["x_train"])
    # a partial folder (one file of four) does not count either; a complete one comes first
    fashion_files(tmp_path / "scratch")
    (tmp_path / "scratch" / data.FASHION_FILES[0]).rename(empty / data.FASHION_FILES[0])
    assert resolve_source(None, "fashion_mnist").path == str(debian)
    fashion_files(empty)
    assert resolve_source(None, "fashion_mnist") == data.Source(
        "keras", str(empty), "fashion_mnist"
    )


def test_the_datasets_study_validates_without_fashion_mnist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a machine without Fashion-MNIST: validating warns once, naming its three cells and
    the package; running is refused before anything, naming the first such cell."""
    monkeypatch.setenv("SUITE_OFFLINE", "1")
    monkeypatch.setitem(data.KERAS_CACHED, "fashion_mnist", (tmp_path / "no-cache",))
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "no-debian")
    path = Path(__file__).resolve().parents[1] / "experiments" / "datasets.yaml"
    with pytest.warns(MissingDataWarning) as caught:
        study = load_study(path, missing_data="warn")
    [warning] = [w for w in caught if w.category is MissingDataWarning]
    assert "3 cells (baseline[dataset=fashion_mnist], weight_decay[dataset=fashion_mnist]" in str(
        warning.message
    )
    assert "apt-get install dataset-fashion-mnist" in str(warning.message)
    missing = [c.name for c in study.cells if c.data_missing]
    assert len(missing) == 3 and len(study.cells) == 6
    with pytest.raises(SpecError, match=r"cell baseline\[dataset=fashion_mnist\]: data.dataset"):
        load_study(path)


def test_cifar10_in_keras_caches_old_and_new(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Keras 3 extracts CIFAR-10 inside `cifar-10-batches-py-target/`, older Keras beside it;
    either counts once it holds the six batches, and an empty one is named in the message."""
    monkeypatch.setenv("SUITE_OFFLINE", "1")
    new = tmp_path / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    old = tmp_path / "cifar-10-batches-py"
    monkeypatch.setitem(data.KERAS_CACHED, "cifar10", (new, old))
    new.mkdir(parents=True)
    with pytest.raises(data.DataUnavailable, match=f"{new} holds 0 of its 6 files"):
        resolve_source(None, "cifar10")
    old.mkdir()
    for name in data.CIFAR_FILES:
        (old / name).write_bytes(b"")
    assert resolve_source(None, "cifar10") == data.Source("keras", str(old), "cifar10")
    for name in data.CIFAR_FILES:
        (new / name).write_bytes(b"")
    assert resolve_source(None, "cifar10") == data.Source("keras", str(new), "cifar10")


def test_a_folder_missing_fashion_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no train-labels-idx1-ubyte.gz"):
        load_pool(resolve_source(str(tmp_path), "fashion_mnist"))


def test_fashion_mnist_from_its_original_files(tmp_path: Path) -> None:
    """The four gzip files as Keras reads them (written here in their original layout)."""
    written = fashion_files(tmp_path)
    pool = load_pool(resolve_source(str(tmp_path), "fashion_mnist"))
    assert np.array_equal(pool.x_train, written["x_train"])
    assert np.array_equal(pool.y_test, written["y_test"])
    assert pool.source.label == f"fashion_mnist:folder:{tmp_path.resolve()}"


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason="needs Debian's Fashion-MNIST: apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_from_debians_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "fashion-mnist"
    empty.mkdir()  # a failed download's leftover is not in the way
    monkeypatch.setitem(data.KERAS_CACHED, "fashion_mnist", (empty,))
    source = resolve_source(None, "fashion_mnist")  # found where Debian installs it
    assert source == data.Source("folder", str(DEBIAN_FASHION), "fashion_mnist")
    pool = load_pool(source)
    assert pool.x_train.shape == (60000, 28, 28) and pool.x_test.shape == (10000, 28, 28)
    assert pool.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the dataset's own
    assert pool.num_classes == 10


def test_cifar10_from_its_original_batches(tmp_path: Path) -> None:
    """`cifar-10-batches-py`: pickles of rows of 3072 bytes (red, green, blue planes)."""
    rng = np.random.default_rng(3)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        rows = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batches[name] = rows
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": list(range(4))}, f)
    pool = load_pool(resolve_source(str(tmp_path), "cifar10"))
    assert pool.x_train.shape == (20, 32, 32, 3) and pool.x_test.shape == (4, 32, 32, 3)
    first = batches["data_batch_1"][0]
    assert pool.x_train[0, 0, 0].tolist() == [first[0], first[1024], first[2048]]  # one pixel's RGB
    assert pool.x_train[0, 0, 1, 0] == first[1]


def test_a_study_on_an_npz_runs_and_logs_its_dataset(
    tmp_path: Path, write_study: Callable[[str], Path], tracking_uri: str
) -> None:
    path = colour_npz(tmp_path / "colour.npz")
    study = load_study(
        write_study(
            f"name: colour\nbase:\n  data: {{dataset: npz, path: {path}, train_size: 30}}\n"
            "  model: {hidden: [8]}\n  train: {epochs: 3, batch_size: 10}\nseeds: [0]\n"
        )
    )
    tracker = Tracker(tracking_uri)
    result = run_study(study, tracker, workers=1)
    assert result.ok
    [run] = tracker.runs(str(tracker.experiment_id("colour", create=False)))
    assert run.tags["dataset"] == "npz" and run.tags["n_classes"] == "3"
    import pandas as pd

    assert chance_level(pd.DataFrame({"params": [{}], "n_classes": ["3"]})) == pytest.approx(1 / 3)


def test_label_noise_on_data_of_one_class_is_one_line_at_load(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    ones = np.zeros(60, dtype=np.int64)
    path = colour_npz(tmp_path / "one.npz", y_train=ones, y_test=ones[:30])
    study = write_study(
        f"""
name: one_class
base:
  data: {{dataset: npz, path: {path}, train_size: 30, label_noise: {{fraction: 0.2}}}}
  model: {{hidden: [8]}}
  train: {{epochs: 1}}
seeds: [0]
"""
    )
    with pytest.raises(SpecError) as err:
        load_study(study)
    message = str(err.value)
    assert "\n" not in message and study.name in message
    # one class is no classification problem: the data itself is refused, before the noise
    assert "data.path" in message and "at least 2 classes" in message
