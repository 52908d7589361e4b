"""Datasets: resolve a dataset's source, load it once, cut the subsets a run trains and tests on.

`dataset: mnist` resolves in this order (design.md, data policy):

1. `data.path`, else the `SUITE_MNIST_PATH` environment variable: a local file in Keras'
   `mnist.npz` layout (`x_train`, `y_train`, `x_test`, `y_test`);
2. Keras' cache (`~/.keras/datasets/mnist.npz`), else Keras' download, unless
   `SUITE_OFFLINE=1`;
3. the bundled offline subset: the first 10,000 MNIST training digits shipped with the package.
   Its first 8,000 digits are the training pool and its last 2,000 (training indices
   8000-9999) stand in for the test set, so `x_train[:300]` is still the textbook's first 300
   images. A warning says so, and `data_source` records it.

`dataset: fashion_mnist` and `cifar10` resolve to `data.path` (a Keras-layout `.npz`, or a
folder holding the dataset's original files as Keras' loader reads them: Fashion-MNIST's four
`*-idx?-ubyte.gz` files; CIFAR-10's `cifar-10-batches-py` folder), else Keras' cache, else
(Fashion-MNIST) the folder Debian's `dataset-fashion-mnist` installs,
/usr/share/datasets/fashion-mnist, else Keras' download unless `SUITE_OFFLINE=1`. A folder of
Keras' cache counts only when it holds every file of the dataset: Keras makes it before it
downloads, and a failed download leaves it empty. Data that is not on the machine raises
`DataUnavailable`, whose message says what would make it available.

`dataset: npz` is `data.path`, any archive with `x_train`, `y_train`, `x_test`, `y_test`:
images (N, H, W) or (N, H, W, C), or flat feature vectors (N, D); integer labels 0..K-1,
K >= 2. Pixels stored as uint8 are divided by 255; floats are taken as they are.

This module imports numpy only; Keras is imported lazily for the download step alone, and
scikit-learn for a stratified draw (`subset: random`, a validation split).

Owns: the source of a dataset (`resolve_source`: `data.path`, `SUITE_MNIST_PATH`,
`SUITE_OFFLINE`) and its `data_source` label (`Source.label`), reading and checking a dataset
file once per process (`load_pool`), the bundled subset, the size checks (`check_sizes`), and
one run's data (`make_split`: training, validation and test images, flattened and scaled to
[0, 1]; training labels with `label_noise` drawn by `suite.corrupt`, inputs randomized by
`suite.randomize`). Must not: read the study schema (it takes plain values: a path, sizes, a
seed), talk to the tracking store (runs are tagged with the label by `suite.tracking`), or
import TensorFlow but for Keras' download.
"""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from suite.corrupt import LabelNoiseDraw, corrupt_labels
from suite.randomize import randomize_inputs as randomize

DATASETS = ("mnist", "fashion_mnist", "cifar10", "npz")
# what a named dataset holds: image shape and class count, checked when it is read
KNOWN_SHAPES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32, 3)}
KNOWN_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
# where Debian's `dataset-fashion-mnist` installs Fashion-MNIST's original files
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
# the files a folder of each dataset must hold to count as that dataset
DATASET_FILES = {"fashion_mnist": FASHION_FILES, "cifar10": CIFAR_FILES}
# Keras' cache of each: the folders its loader fills, today's Keras first (Keras 3 extracts
# CIFAR-10 inside `cifar-10-batches-py-target/`, older Keras beside it). A folder counts only
# when it holds every file: Keras makes the folder before it downloads, so a download that
# failed leaves it empty.
KERAS_HOME = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"
KERAS_CACHED: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (KERAS_HOME / "fashion-mnist",),
    "cifar10": (
        KERAS_HOME / "cifar-10-batches-py-target" / "cifar-10-batches-py",
        KERAS_HOME / "cifar-10-batches-py",
    ),
}
# what makes each dataset available on a machine that has no copy of it
AVAILABLE_BY = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist (Debian's copy of its four "
    "original files), or set data.path to a Keras-layout .npz or a folder of those files",
    "cifar10": "set data.path to a Keras-layout .npz or CIFAR-10's cifar-10-batches-py "
    "folder, or run once with the network so that Keras downloads it into "
    f"{KERAS_HOME}",
}
BUNDLED_FILE = "mnist-train-10k.npz"
BUNDLED_TRAIN_POOL = 8000  # the bundled file's first 8000 digits train, the last 2000 test
# Keras' own cache; KERAS_HOME moves it, as it does for Keras
KERAS_CACHE = KERAS_HOME / "mnist.npz"
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A dataset file is missing, unreadable or not in the expected layout."""


class DataUnavailable(DataError):
    """A dataset, or the file `data.path` names, is not on this machine and cannot be
    downloaded: a study that asks for it is still valid, its runs cannot train here. The
    message says what would make it available."""


class OfflineDataWarning(UserWarning):
    """The bundled offline subset stands in for full MNIST."""


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: `kind` is `file`, `folder`, `keras` or `bundled`."""

    kind: str
    path: str
    dataset: str = "mnist"

    @property
    def label(self) -> str:
        """The `data_source` tag: a readable name for the source (MNIST's as they always
        were, so that the runs a store holds keep their cells)."""
        if self.dataset == "mnist":
            names = {"file": f"file:{self.path}", "keras": "keras-mnist"}
            return names.get(self.kind, "bundled-subset")
        if self.kind == "keras":
            return f"keras-{self.dataset}"
        return f"{self.dataset}:{self.kind}:{self.path}"


@dataclass(frozen=True)
class Pool:
    """A whole dataset, as stored: images (uint8 pixels, or floats) and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Source

    @property
    def num_classes(self) -> int:
        """Labels are 0..K-1: K, from both parts (at least 2)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


@dataclass(frozen=True)
class Split:
    """What one run sees: flat float32 inputs (pixels in [0, 1] unless randomized), int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    source: Source
    num_classes: int
    image_shape: tuple[int, ...]  # of one input before flattening
    # with `data.label_noise`: the corruption `y_train` holds (`y_train` is what a run trains on)
    label_noise: LabelNoiseDraw | None = None

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


def resolve_source(path: str | None = None, dataset: str = "mnist") -> Source:
    """Pick a dataset's source by the data policy's resolution order (see the module's
    docstring).

    Args:
        path: the study's `data.path`, if any.
        dataset: the study's `data.dataset`.

    Returns:
        The source to load. A missing explicit path is an error, not a fallback.
    """
    if dataset != "mnist":
        return _resolve_other(path, dataset)
    explicit = path or os.environ.get("SUITE_MNIST_PATH")
    if explicit:
        resolved = Path(explicit).expanduser()
        if not resolved.is_file():
            key = "data.path" if path else "SUITE_MNIST_PATH"
            raise DataUnavailable(f"{key}: no such file {explicit}")
        return Source("file", str(resolved.resolve()))
    if KERAS_CACHE.is_file():
        return Source("keras", str(KERAS_CACHE))
    if not offline() and _keras_download():
        return Source("keras", str(KERAS_CACHE))
    return Source("bundled", str(bundled_path()))


def _resolve_other(path: str | None, dataset: str) -> Source:
    """`fashion_mnist`, `cifar10` or `npz`: `data.path`, else Keras' cache (a folder holding
    every file), else Debian's files (Fashion-MNIST), else Keras' download."""
    if dataset not in DATASETS:
        raise DataError(f"data.dataset: unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if path:
        resolved = Path(path).expanduser()
        if resolved.is_dir() and dataset != "npz":
            return Source("folder", str(resolved.resolve()), dataset)
        if not resolved.is_file():
            raise DataUnavailable(f"data.path: no such file {path}")
        return Source("file", str(resolved.resolve()), dataset)
    if dataset == "npz":
        raise DataError("data.path: dataset npz needs the path of an .npz file")
    cached = keras_cached(dataset)
    if cached is not None:
        return Source("keras", str(cached), dataset)
    if dataset == "fashion_mnist" and not missing_files(DEBIAN_FASHION, FASHION_FILES):
        return Source("folder", str(DEBIAN_FASHION), dataset)
    if not offline() and _keras_load(dataset):
        cached = keras_cached(dataset)
        if cached is not None:
            return Source("keras", str(cached), dataset)
    raise DataUnavailable(unavailable(dataset))


def offline() -> bool:
    """`SUITE_OFFLINE=1`: no download is tried."""
    return os.environ.get("SUITE_OFFLINE", "") in ("1", "true", "yes")


def missing_files(folder: Path, files: tuple[str, ...]) -> list[str]:
    """The files of `files` that `folder` lacks (all of them when it is not a folder)."""
    return [name for name in files if not (folder / name).is_file()]


def keras_cached(dataset: str) -> Path | None:
    """The first of Keras' cache folders for `dataset` that holds all its files."""
    files = DATASET_FILES[dataset]
    return next((f for f in KERAS_CACHED[dataset] if not missing_files(f, files)), None)


def unavailable(dataset: str) -> str:
    """Why `dataset` is not available here and what would make it so, naming a cache folder
    of Keras' that is there but incomplete (a download that failed leaves one)."""
    files = DATASET_FILES[dataset]
    partial = [
        f"Keras' cache {folder} holds {len(files) - len(missing)} of its {len(files)} files "
        "(a download that failed?): remove it, or complete it"
        for folder in KERAS_CACHED[dataset]
        if folder.is_dir() and (missing := missing_files(folder, files))
    ]
    how = "; ".join([AVAILABLE_BY[dataset], *partial])
    why = "SUITE_OFFLINE=1 forbids the download" if offline() else "Keras' download failed"
    return f"data.dataset {dataset}: not on this machine, and {why}; {how}"


@functools.cache
def _keras_load(dataset: str) -> bool:
    """Keras' own download of a dataset into its cache; False when it cannot."""
    try:
        import keras

        import suite._tf  # noqa: F401

        getattr(keras.datasets, dataset).load_data()
    except Exception:  # noqa: BLE001 - offline or refused: the caller says what to do
        return False
    return keras_cached(dataset) is not None


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
    if source.dataset != "mnist":
        return _load_other(source)
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


def _load_other(source: Source) -> Pool:
    """A dataset other than MNIST: its arrays read and checked (`_check_arrays`)."""
    where = f"data.path: {source.path}" if source.kind != "keras" else source.path
    if source.kind == "file":
        arrays = _read_arrays(source.path, where)
    elif source.dataset == "fashion_mnist":
        arrays = _read_fashion(Path(source.path), where)
    else:
        arrays = _read_cifar(Path(source.path), where)
    _check_arrays(arrays, where, source.dataset)
    return Pool(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], source)


def _read_arrays(path: str, where: str) -> dict[str, np.ndarray]:
    """The four arrays of an .npz archive in Keras' layout."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"{where}: not an .npz archive (expected x_train, y_train, x_test, y_test)"
            )
        with loaded as npz:
            missing = [k for k in MNIST_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{where}: has no {missing[0]} array (an .npz needs {', '.join(MNIST_KEYS)})"
                )
            return {k: npz[k] for k in MNIST_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError, TypeError) as err:
        raise DataError(f"{where}: unreadable ({type(err).__name__}: {err})") from None


def _read_fashion(folder: Path, where: str) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four original gzip files, read as Keras' loader reads them."""
    import gzip

    missing = missing_files(folder, FASHION_FILES)
    if missing:
        raise DataError(f"{where}: no {missing[0]} (Fashion-MNIST's original files)")
    try:
        raw = []
        for name in FASHION_FILES:
            with gzip.open(folder / name) as file:
                raw.append(file.read())
    except (OSError, EOFError) as err:
        raise DataError(f"{where}: unreadable ({type(err).__name__}: {err})") from None
    y_train, y_test = (np.frombuffer(raw[i], np.uint8, offset=8) for i in (0, 2))
    x_train = np.frombuffer(raw[1], np.uint8, offset=16).reshape(len(y_train), 28, 28)
    x_test = np.frombuffer(raw[3], np.uint8, offset=16).reshape(len(y_test), 28, 28)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _read_cifar(folder: Path, where: str) -> dict[str, np.ndarray]:
    """CIFAR-10's `cifar-10-batches-py` folder (five training batches and `test_batch`,
    Python pickles), read as Keras' loader reads it: images (N, 32, 32, 3)."""
    import pickle

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(folder / name, "rb") as file:
                content = pickle.load(file, encoding="bytes")
            images = np.asarray(content[b"data"], np.uint8).reshape(-1, 3, 32, 32)
            return images.transpose(0, 2, 3, 1), np.asarray(content[b"labels"], np.int64)
        except FileNotFoundError:
            raise DataError(f"{where}: no {name} (CIFAR-10's cifar-10-batches-py files)") from None
        except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
            raise DataError(f"{where}: {name} unreadable ({type(err).__name__})") from None

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _check_arrays(arrays: dict[str, np.ndarray], where: str, dataset: str) -> None:
    """Images (N, H, W), (N, H, W, C) or features (N, D); test inputs shaped as the training
    ones; integer labels 0..K-1 (K >= 2), one per input. Any problem is one `DataError` line."""
    x_train = arrays["x_train"]
    if x_train.ndim not in (2, 3, 4) or len(x_train) == 0:
        raise DataError(
            f"{where}: x_train has shape {x_train.shape}, expected (N, H, W), (N, H, W, C) or (N, D)"
        )
    if arrays["x_test"].shape[1:] != x_train.shape[1:] or len(arrays["x_test"]) == 0:
        raise DataError(
            f"{where}: x_test has shape {arrays['x_test'].shape}, expected (N, "
            f"{', '.join(map(str, x_train.shape[1:]))}) as x_train"
        )
    expected = KNOWN_SHAPES.get(dataset)
    if expected is not None and x_train.shape[1:] != expected:
        raise DataError(
            f"{where}: x_train has shape {x_train.shape}, expected (N, {', '.join(map(str, expected))}) for {dataset}"
        )
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if y.ndim == 2 and y.shape[1:] == (1,):  # CIFAR's labels as Keras stores them
            y = arrays[f"y_{part}"] = y.reshape(-1)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{where}: y_{part} has shape {y.shape}, expected ({len(x)},) as x_{part}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise DataError(f"{where}: y_{part} must hold integer labels 0..K-1")
    classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    if classes < 2 or len(np.unique(arrays["y_train"])) < 2:
        raise DataError(f"{where}: y_train must hold at least 2 classes, labels 0..K-1")
    known = KNOWN_CLASSES.get(dataset)
    if known is not None and classes > known:
        raise DataError(f"{where}: labels go up to {classes - 1}; {dataset} has {known} classes")


def check_sizes(
    path: str | None,
    train_size: int | None,
    val_size: int,
    test_size: int | None,
    source: Source | None = None,
    dataset: str = "mnist",
) -> Source:
    """Check that the data `path` resolves to holds the images asked for; return its source.

    Raises:
        DataError: naming the `data.*` key that asks for more than there is.
    """
    source = source or resolve_source(path, dataset)
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
    dataset: str = "mnist",
    val_from: str = "selection",
    label_noise: dict[str, Any] | None = None,
    randomize_inputs: str | None = None,
) -> Split:
    """Cut one run's data out of the pool.

    `subset: first` takes the first images of the pool (the textbook's `x_train[:N]`); `random`
    draws them stratified by class with `seed`. A validation split, when asked for, comes from
    `val_from`:

    - `selection`: `train_size + val_size` images are selected, and the validation images are
      held out of them, stratified and seeded;
    - `pool`: the `train_size` training images are the ones a run without validation trains
      on, and the validation images come from the rest of the pool: the next `val_size`
      images with `first`, a stratified seeded draw with `random`.

    `label_noise` (`{fraction, kind}`) corrupts training labels only, drawn from `seed` (see
    `suite.corrupt`); `randomize_inputs` randomizes every part's inputs (`suite.randomize`).
    `test_size` keeps the first N test images (all of them by default). `source`, when given,
    is used instead of resolving `path` again (a worker process uses its parent's source).

    Its parameters besides `seed` and `source` are named as the `data:` section's keys, so a
    caller passes a section whole, `make_split(**config.data.model_dump(), seed=seed)`, and a
    key added to the section must be taken here.
    """
    pool = load_pool(check_sizes(path, train_size, val_size, test_size, source, dataset))
    n_pool = len(pool.y_train)
    n_train = n_pool - val_size if train_size is None else train_size
    by_pool = val_from == "pool" and val_size > 0
    n_take = n_train if by_pool else n_train + val_size
    if subset == "first" or n_take == n_pool:
        idx = np.arange(n_take)
    else:
        idx, _ = _stratified_split(np.arange(n_pool), pool.y_train, seed, train_size=n_take)
        idx = np.sort(idx)
    x_val = y_val = None
    if val_size:
        if not by_pool:
            idx, val_idx = _stratified_split(idx, pool.y_train[idx], seed, test_size=val_size)
        elif subset == "first":
            val_idx = np.arange(n_train, n_train + val_size)
        else:
            rest = np.setdiff1d(np.arange(n_pool), idx)
            val_idx = rest
            if val_size < len(rest):
                val_idx, _ = _stratified_split(rest, pool.y_train[rest], seed, train_size=val_size)
        idx, val_idx = np.sort(idx), np.sort(val_idx)
        x_val, y_val = _prepare(pool.x_train[val_idx]), pool.y_train[val_idx].astype(np.int32)
    n_test = len(pool.y_test) if test_size is None else test_size
    y_train, noise = pool.y_train[idx].astype(np.int32), None
    if label_noise is not None:
        y_train, noise = corrupt_labels(y_train, pool.num_classes, **label_noise, seed=seed)
    inputs = _prepare(pool.x_train[idx]), x_val, _prepare(pool.x_test[:n_test])
    if randomize_inputs is not None:
        inputs = randomize(randomize_inputs, pool.x_train, *inputs, seed=seed)
    x_train, x_val, x_test = inputs
    return Split(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=pool.y_test[:n_test].astype(np.int32),
        x_val=x_val,
        y_val=y_val,
        source=pool.source,
        num_classes=pool.num_classes,
        image_shape=tuple(int(n) for n in pool.x_train.shape[1:]),
        label_noise=noise,
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
    """Inputs flattened, as float32: uint8 pixels / 255 (the textbook's `normalize=True`),
    other numbers as they are."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    return (flat / 255.0).astype(np.float32) if x.dtype == np.uint8 else flat
