"""Datasets: resolve the MNIST source, load it once, cut the subsets a run trains and tests on.

`dataset: mnist` resolves in this order (design.md, data policy):

1. `data.path`, else the `SUITE_MNIST_PATH` environment variable: a local file in Keras'
   `mnist.npz` layout (`x_train`, `y_train`, `x_test`, `y_test`);
2. Keras' cache (`~/.keras/datasets/mnist.npz`), else Keras' download, unless
   `SUITE_OFFLINE=1`;
3. the bundled offline subset: the first 10,000 MNIST training digits shipped with the package.
   Its first 8,000 digits are the training pool and its last 2,000 (training indices
   8000-9999) stand in for the test set, so `x_train[:300]` is still the textbook's first 300
   images. A warning says so, and `data_source` records it.

This module imports numpy only; Keras is imported lazily for the download step alone, and
scikit-learn for a stratified draw (`subset: random`, a validation split).

Owns: the source of a dataset (`resolve_source`: `data.path`, `SUITE_MNIST_PATH`,
`SUITE_OFFLINE`) and its `data_source` label (`Source.label`), reading and checking a dataset
file once per process (`load_pool`), the bundled subset, the size checks (`check_sizes`), and
one run's data (`make_split`: training, validation and test images, flattened and scaled to
[0, 1]). Must not: read the study schema (it takes plain values: a path, sizes, a seed), talk to
the tracking store (runs are tagged with the label by `suite.tracking`), or import TensorFlow
but for Keras' download.
"""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

BUNDLED_FILE = "mnist-train-10k.npz"
BUNDLED_TRAIN_POOL = 8000  # the bundled file's first 8000 digits train, the last 2000 test
# Keras' own cache; KERAS_HOME moves it, as it does for Keras
KERAS_CACHE = (
    Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets" / "mnist.npz"
)
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A dataset file is missing, unreadable or not in the expected layout."""


class OfflineDataWarning(UserWarning):
    """The bundled offline subset stands in for full MNIST."""


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: `kind` is `file`, `keras` or `bundled`."""

    kind: str
    path: str

    @property
    def label(self) -> str:
        """The `data_source` tag: a readable name for the source."""
        return {"file": f"file:{self.path}", "keras": "keras-mnist", "bundled": "bundled-subset"}[
            self.kind
        ]


@dataclass(frozen=True)
class Pool:
    """A whole dataset, as stored: uint8 images and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Source


@dataclass(frozen=True)
class Split:
    """What one run sees: float32 inputs in [0, 1], flattened, and int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    source: Source

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.y_train),
            "val": 0 if self.y_val is None else len(self.y_val),
            "test": len(self.y_test),
        }


def bundled_path() -> Path:
    """The offline subset shipped inside the package."""
    return Path(str(resources.files("suite.assets").joinpath(BUNDLED_FILE)))


def resolve_source(path: str | None = None) -> Source:
    """Pick the MNIST source by the data policy's resolution order.

    Args:
        path: the study's `data.path`, if any.

    Returns:
        The source to load. A missing explicit path is an error, not a fallback.
    """
    explicit = path or os.environ.get("SUITE_MNIST_PATH")
    if explicit:
        resolved = Path(explicit).expanduser()
        if not resolved.is_file():
            key = "data.path" if path else "SUITE_MNIST_PATH"
            raise DataError(f"{key}: no such file {explicit}")
        return Source("file", str(resolved.resolve()))
    if KERAS_CACHE.is_file():
        return Source("keras", str(KERAS_CACHE))
    if os.environ.get("SUITE_OFFLINE", "") not in ("1", "true", "yes") and _keras_download():
        return Source("keras", str(KERAS_CACHE))
    return Source("bundled", str(bundled_path()))


KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"


@functools.cache
def _keras_download() -> bool:
    """Try Keras' own download, once per process; False when the network is not there.

    A quick probe of Keras' origin comes first, so an offline machine does not pay for
    importing TensorFlow just to learn that the download cannot happen.
    """
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(KERAS_ORIGIN, method="HEAD"), timeout=5)
    except Exception:  # noqa: BLE001 - offline, DNS failure, proxy refusal: all mean "no"
        return False
    try:
        import keras

        import suite._tf  # noqa: F401

        keras.datasets.mnist.load_data()
    except Exception:  # noqa: BLE001 - any failure means: fall back to the bundled subset
        return False
    return KERAS_CACHE.is_file()


@functools.lru_cache(maxsize=4)
def load_pool(source: Source) -> Pool:
    """Load a source once per process (cached), checking its layout."""
    if source.kind == "bundled":
        arrays = _read_npz(source.path, ("x", "y"), "bundled subset")
        x, y = arrays["x"], arrays["y"]
        warnings.warn(
            "full MNIST not found: using the bundled subset (first 10,000 training digits; "
            f"digits 0-{BUNDLED_TRAIN_POOL - 1} train, {BUNDLED_TRAIN_POOL}-9999 are the test set). "
            "Set data.path or SUITE_MNIST_PATH to a Keras mnist.npz for the official test set.",
            OfflineDataWarning,
            stacklevel=2,
        )
        n = BUNDLED_TRAIN_POOL
        return Pool(x[:n], y[:n], x[n:], y[n:], source)
    arrays = _read_npz(source.path, MNIST_KEYS, "data.path" if source.kind == "file" else "")
    return Pool(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], source)


def _read_npz(path: str, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """Read and check an image/label archive: every key there, images (N, 28, 28) matching
    N integer labels in 0-9, no empty array. Any problem is one `DataError` line."""
    where = f"{what}: {path}" if what else path
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{where}: not an .npz archive (expected Keras' mnist.npz layout)")
        with loaded as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{where}: not in Keras' mnist.npz layout (missing {missing[0]})")
            arrays = {k: npz[k] for k in keys}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError, TypeError) as err:
        raise DataError(f"{where}: unreadable ({type(err).__name__}: {err})") from None
    for x_key, y_key in zip(keys[0::2], keys[1::2], strict=True):
        x, y = arrays[x_key], arrays[y_key]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{where}: {x_key} has shape {x.shape}, expected (N, 28, 28)")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{where}: {y_key} has shape {y.shape}, expected ({len(x)},)")
        if len(x) == 0:
            raise DataError(f"{where}: {x_key} is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise DataError(f"{where}: {y_key} must hold integer labels 0-9")
    return arrays


def check_sizes(
    path: str | None,
    train_size: int | None,
    val_size: int,
    test_size: int | None,
    source: Source | None = None,
) -> Source:
    """Check that the data `path` resolves to holds the images asked for; return its source.

    Raises:
        DataError: naming the `data.*` key that asks for more than there is.
    """
    source = source or resolve_source(path)
    pool = load_pool(source)
    n_pool, n_test = len(pool.y_train), len(pool.y_test)
    n_train = n_pool - val_size if train_size is None else train_size
    if n_train + val_size > n_pool:
        plus = f" + val_size {val_size}" if val_size else ""
        raise DataError(
            f"data.train_size: {n_train}{plus} is more than the {n_pool} training images "
            f"of {source.label}"
        )
    if n_train <= 0:
        raise DataError(f"data.val_size: {val_size} leaves no training images of {n_pool}")
    if test_size is not None and test_size > n_test:
        raise DataError(
            f"data.test_size: {test_size} is more than the {n_test} test images of {source.label}"
        )
    return source


def make_split(
    path: str | None,
    train_size: int | None,
    subset: str,
    val_size: int,
    test_size: int | None,
    seed: int,
    source: Source | None = None,
) -> Split:
    """Cut one run's data out of the pool.

    `subset: first` takes the first `train_size + val_size` images of the pool (the textbook's
    `x_train[:N]`); `random` draws them stratified by class with `seed`. A validation split, when
    asked for, is then held out of that selection, stratified and seeded. `test_size` keeps the
    first N test images (all of them by default). `source`, when given, is used instead of
    resolving `path` again (a worker process uses the source its parent resolved).
    """
    pool = load_pool(check_sizes(path, train_size, val_size, test_size, source))
    n_pool = len(pool.y_train)
    n_train = n_pool - val_size if train_size is None else train_size
    n_take = n_train + val_size
    if subset == "first" or n_take == n_pool:
        idx = np.arange(n_take)
    else:
        idx, _ = _stratified_split(np.arange(n_pool), pool.y_train, seed, train_size=n_take)
        idx = np.sort(idx)
    x_val = y_val = None
    if val_size:
        idx, val_idx = _stratified_split(idx, pool.y_train[idx], seed, test_size=val_size)
        idx, val_idx = np.sort(idx), np.sort(val_idx)
        x_val, y_val = _prepare(pool.x_train[val_idx]), pool.y_train[val_idx].astype(np.int32)
    n_test = len(pool.y_test) if test_size is None else test_size
    return Split(
        x_train=_prepare(pool.x_train[idx]),
        y_train=pool.y_train[idx].astype(np.int32),
        x_test=_prepare(pool.x_test[:n_test]),
        y_test=pool.y_test[:n_test].astype(np.int32),
        x_val=x_val,
        y_val=y_val,
        source=pool.source,
    )


def _stratified_split(
    idx: np.ndarray, labels: np.ndarray, seed: int, **size: int
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's `train_test_split` of `idx`, stratified by `labels` where that is possible.

    Stratifying needs at least one image per class on each side and two per class overall;
    small draws (`val_size: 5`, or `train_size: 8` with `subset: random`) cannot have that and
    fall back to a plain seeded draw instead of failing.
    """
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(idx, stratify=labels, random_state=seed, **size)
    except ValueError:
        train, test = train_test_split(idx, random_state=seed, **size)
    return train, test


def _prepare(x: np.ndarray) -> np.ndarray:
    """Pixels / 255 as float32, flattened to 784, as the textbook's `normalize=True`."""
    return (x.reshape(len(x), -1).astype(np.float32) / 255.0).astype(np.float32)
