"""Datasets: the bundled offline subset, subsets and splits, local files and broken ones."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from suite import data
from suite.data import DataError, OfflineDataWarning, Source, load_pool, make_split

BUNDLED = Source("bundled", str(data.bundled_path()))


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """A path-less `mnist` resolves to the bundled subset here, whatever the machine has."""


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def _tiny_mnist(n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }


# --- the bundled subset ---------------------------------------------------------------------


def test_offline_resolves_to_the_bundled_subset() -> None:
    source = data.resolve_source(None)
    assert source == BUNDLED
    assert source.label == "bundled-subset"
    assert Path(source.path).is_file()


def test_bundled_pool_is_the_first_8000_digits_and_warns() -> None:
    load_pool.cache_clear()
    with pytest.warns(OfflineDataWarning, match="bundled subset"):
        pool = load_pool(BUNDLED)
    assert pool.x_train.shape == (8000, 28, 28) and pool.x_train.dtype == np.uint8
    assert pool.y_train.shape == (8000,)
    assert pool.x_test.shape == (2000, 28, 28) and pool.y_test.shape == (2000,)
    # MNIST's first training digit: a 5 whose pixels sum to 27525
    assert pool.y_train[0] == 5
    assert int(pool.x_train[0].astype(np.int64).sum()) == 27525
    assert pool.source == BUNDLED


def test_bundled_pool_is_loaded_once() -> None:
    load_pool.cache_clear()
    with pytest.warns(OfflineDataWarning):
        first = load_pool(BUNDLED)
    assert load_pool(BUNDLED) is first


def pool_sizes(path: str | None) -> tuple[int, int, Source]:
    pool = load_pool(data.resolve_source(path))
    return len(pool.y_train), len(pool.y_test), pool.source


def test_pool_sizes_without_a_path() -> None:
    n_pool, n_test, source = pool_sizes(None)
    assert (n_pool, n_test) == (8000, 2000)
    assert source.kind == "bundled"


# --- make_split -----------------------------------------------------------------------------


def test_first_subset_is_the_first_n_in_order() -> None:
    pool = load_pool(BUNDLED)
    split = make_split(None, 300, "first", 0, None, seed=0)
    assert split.x_train.shape == (300, 784)
    assert split.x_train.dtype == np.float32
    assert split.y_train.dtype == np.int32
    assert split.x_train.min() >= 0.0 and split.x_train.max() <= 1.0
    assert split.x_train.max() == 1.0  # 255 -> 1 exactly
    np.testing.assert_array_equal(split.y_train, pool.y_train[:300])
    np.testing.assert_allclose(split.x_train * 255.0, pool.x_train[:300].reshape(300, 784))
    assert split.x_val is None and split.y_val is None
    assert split.sizes == {"train": 300, "val": 0, "test": 2000}
    assert split.source == BUNDLED


def test_first_subset_ignores_the_seed() -> None:
    a = make_split(None, 50, "first", 0, 10, seed=0)
    b = make_split(None, 50, "first", 0, 10, seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_random_subset_is_stratified() -> None:
    pool = load_pool(BUNDLED)
    n = 500
    split = make_split(None, n, "random", 0, None, seed=3)
    assert split.x_train.shape == (n, 784)
    counts = np.bincount(split.y_train, minlength=10)
    proportional = n * np.bincount(pool.y_train, minlength=10) / len(pool.y_train)
    assert np.all(np.abs(counts - proportional) <= 1.0 + 1e-9), (counts, proportional)
    # drawn from the pool, not the first n
    assert _rows(split.x_train) <= _rows(pool.x_train.reshape(-1, 784).astype(np.float32) / 255.0)
    assert not np.array_equal(split.y_train, pool.y_train[:n])


def test_random_subset_is_seeded() -> None:
    a = make_split(None, 200, "random", 0, None, seed=1)
    b = make_split(None, 200, "random", 0, None, seed=1)
    c = make_split(None, 200, "random", 0, None, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("subset", ["first", "random"])
def test_val_split_is_disjoint_from_train(subset: str) -> None:
    split = make_split(None, 300, subset, 60, None, seed=0)
    assert split.sizes == {"train": 300, "val": 60, "test": 2000}
    assert split.x_val is not None and split.y_val is not None
    assert split.x_val.shape == (60, 784) and split.x_val.dtype == np.float32
    assert split.y_val.dtype == np.int32
    train_rows, val_rows = _rows(split.x_train), _rows(split.x_val)
    assert len(train_rows) == 300 and len(val_rows) == 60
    assert not train_rows & val_rows
    if subset == "first":
        # together they are exactly the first 360 images
        pool = load_pool(BUNDLED)
        first = _rows(pool.x_train[:360].reshape(360, 784).astype(np.float32) / 255.0)
        assert train_rows | val_rows == first
    # the held-out part covers every class
    assert set(np.unique(split.y_val)) == set(range(10))


@pytest.mark.parametrize(
    ("train_size", "subset", "val_size"),
    [(5, "random", 0), (300, "first", 5), (10, "first", 5), (8, "random", 3)],
    ids=["tiny-random", "val-smaller-than-classes", "one-per-class", "tiny-random-val"],
)
def test_draws_too_small_to_stratify_still_split(
    train_size: int, subset: str, val_size: int
) -> None:
    """Fewer images than classes cannot be stratified: a plain seeded draw, not a crash."""
    split = make_split(None, train_size, subset, val_size, None, seed=4)
    again = make_split(None, train_size, subset, val_size, None, seed=4)
    assert split.sizes["train"] == train_size and split.sizes["val"] == val_size
    np.testing.assert_array_equal(split.x_train, again.x_train)
    if val_size:
        assert not _rows(split.x_train) & _rows(split.x_val)


def test_whole_pool_with_val() -> None:
    split = make_split(None, None, "first", 100, 5, seed=0)
    assert split.sizes == {"train": 7900, "val": 100, "test": 5}


def test_test_size_keeps_the_first_test_images() -> None:
    pool = load_pool(BUNDLED)
    split = make_split(None, 10, "first", 0, 150, seed=0)
    assert split.x_test.shape == (150, 784)
    np.testing.assert_array_equal(split.y_test, pool.y_test[:150])
    np.testing.assert_allclose(split.x_test * 255.0, pool.x_test[:150].reshape(150, 784))


def test_split_larger_than_the_pool_is_an_error() -> None:
    with pytest.raises(DataError, match=r"data.train_size: 7990 \+ val_size 20 .* 8000"):
        make_split(None, 7990, "first", 20, None, seed=0)


# --- local files ----------------------------------------------------------------------------


def test_shared_mnist_has_the_official_test_set(shared_mnist: Path) -> None:
    split = make_split(str(shared_mnist), 300, "first", 0, None, seed=0)
    assert split.sizes == {"train": 300, "val": 0, "test": 10000}
    assert split.source.kind == "file"
    assert split.source.label == f"file:{shared_mnist.resolve()}"
    # the official test set's class counts (../shared/data/README.md)
    counts = np.bincount(split.y_test, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # its training digits are the same first digits the bundled subset has
    bundled = make_split(None, 300, "first", 0, 1, seed=0)
    np.testing.assert_array_equal(split.x_train, bundled.x_train)
    assert pool_sizes(str(shared_mnist))[:2] == (10000, 10000)


def test_environment_variable_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save_npz(tmp_path / "env.npz", **_tiny_mnist(30, 12))
    monkeypatch.setenv("SUITE_MNIST_PATH", str(path))
    source = data.resolve_source(None)
    assert source == Source("file", str(path.resolve()))
    assert pool_sizes(None)[:2] == (30, 12)
    # an explicit data.path still wins over the environment
    other = _save_npz(tmp_path / "other.npz", **_tiny_mnist(40, 5))
    assert data.resolve_source(str(other)).path == str(other.resolve())


def test_local_file_split(tmp_path: Path) -> None:
    arrays = _tiny_mnist(20, 10)
    path = _save_npz(tmp_path / "tiny.npz", **arrays)
    split = make_split(str(path), 8, "first", 2, 4, seed=0)
    assert split.sizes == {"train": 8, "val": 2, "test": 4}
    np.testing.assert_array_equal(split.y_test, arrays["y_test"][:4])


def test_missing_path_names_data_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="data.path") as err:
        make_split(str(missing), 10, "first", 0, None, seed=0)
    assert str(missing) in str(err.value)


def test_missing_env_path_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUITE_MNIST_PATH", str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="SUITE_MNIST_PATH"):
        data.resolve_source(None)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match="unreadable") as err:
        make_split(str(path), 10, "first", 0, None, seed=0)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_npz(tmp_path: Path) -> None:
    whole = _save_npz(tmp_path / "whole.npz", **_tiny_mnist())
    path = tmp_path / "truncated.npz"
    path.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(DataError, match="unreadable"):
        make_split(str(path), 10, "first", 0, None, seed=0)


def test_npz_missing_a_key(tmp_path: Path) -> None:
    arrays = _tiny_mnist()
    del arrays["x_test"]
    path = _save_npz(tmp_path / "partial.npz", **arrays)
    with pytest.raises(DataError, match=r"mnist\.npz layout \(missing x_test\)") as err:
        make_split(str(path), 10, "first", 0, None, seed=0)
    assert str(path) in str(err.value)


def test_npz_with_flat_images_is_rejected(tmp_path: Path) -> None:
    arrays = _tiny_mnist()
    arrays["x_train"] = arrays["x_train"].reshape(len(arrays["x_train"]), -1)
    path = _save_npz(tmp_path / "flat.npz", **arrays)
    with pytest.raises(DataError, match=r"x_train has shape \(20, 784\)"):
        load_pool(data.resolve_source(str(path)))


def test_files_that_are_not_mnist_archives_are_one_line_errors(tmp_path: Path) -> None:
    def npz(name: str, **arrays: np.ndarray) -> str:
        path = tmp_path / name
        np.savez(path, **arrays)
        return str(path)

    images, labels = np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8)
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros(3))
    cases = {
        str(npy): "not an .npz archive",
        npz("empty.npz", x_train=images[:0], y_train=labels[:0], x_test=images, y_test=labels): (
            "x_train is empty"
        ),
        npz("short.npz", x_train=images, y_train=labels[:4], x_test=images, y_test=labels): (
            "y_train has shape (4,)"
        ),
        npz("labels.npz", x_train=images, y_train=labels + 10, x_test=images, y_test=labels): (
            "integer labels 0-9"
        ),
        npz(
            "shape.npz", x_train=np.zeros((5, 784)), y_train=labels, x_test=images, y_test=labels
        ): ("expected (N, 28, 28)"),
    }
    for path, expected in cases.items():
        with pytest.raises(DataError, match=re.escape(expected)) as caught:
            make_split(path, 2, "first", 0, None, 0)
        assert "\n" not in str(caught.value) and path in str(caught.value)
