"""A user's own Keras model: `model.builder: "module:function"`, found, checked and built.

Owns: finding a builder's module (beside the study file first, then on `sys.path`), the
fingerprint of its source (it enters the cell's hash, so an edited builder is a new cell),
loading its function once per process, and checking what it returns (a `keras.Model` with
(batch, num_classes) logits out) with one-line errors. Must not: train, nor decide the
penalty (`suite.train` applies `weight_decay` and `l1` to every kernel of the model).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any


class BuilderError(ValueError):
    """A builder cannot be found, fails, or returns something unusable; one line."""


def locate(builder: str, folder: Path | None) -> Path:
    """The file of a builder's module: `<folder>/<module>.py` (the study's folder), else the
    module found on `sys.path`."""
    module = builder.partition(":")[0]
    if folder is not None:
        beside = folder / (module.replace(".", "/") + ".py")
        if beside.is_file():
            return beside.resolve()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        where = f" beside the study ({folder}) or" if folder is not None else ""
        raise BuilderError(f"model.builder: no module {module!r}{where} on sys.path")
    return Path(found.origin).resolve()


def fingerprint(path: str | Path) -> str:
    """A short hash of a builder's source."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


@functools.cache
def load(builder: str, path: str) -> Callable[..., Any]:
    """The builder's function, its module loaded from `path` once per process."""
    module, _, function = builder.partition(":")
    spec = importlib.util.spec_from_file_location(
        f"suite_builder_{fingerprint(path)}_{module}", path
    )
    if spec is None or spec.loader is None:
        raise BuilderError(f"model.builder: cannot load {path}")
    loaded = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(loaded)
    except Exception as err:  # noqa: BLE001 - the user's module: say what it raised
        raise BuilderError(
            f"model.builder: importing {path} raised {type(err).__name__}: {err}"
        ) from None
    found = getattr(loaded, function, None)
    if not callable(found):
        raise BuilderError(f"model.builder: {path} has no function {function!r}")
    return found


def build(
    builder: str, path: str, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> Any:
    """The user's model for these inputs and classes, checked: a `keras.Model` whose output
    is (batch, num_classes)."""
    import suite._tf  # noqa: F401  (quiet TensorFlow start-up, before keras)

    # isort: split

    import keras

    try:
        model = load(builder, path)(tuple(input_shape), num_classes, seed)
    except BuilderError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's function: say what it raised
        raise BuilderError(
            f"model.builder: {builder}{tuple(input_shape), num_classes, seed} raised {type(err).__name__}: {err}"
        ) from None
    if not isinstance(model, keras.Model):
        raise BuilderError(
            f"model.builder: {builder} returned a {type(model).__name__}, not a keras.Model"
        )
    try:
        out = model(keras.ops.zeros((2, *input_shape)), training=False)
        shape = tuple(out.shape)
    except Exception as err:  # noqa: BLE001
        raise BuilderError(
            f"model.builder: {builder}'s model fails on inputs of shape {(2, *input_shape)}: {type(err).__name__}: {err}"
        ) from None
    if shape != (2, num_classes):
        raise BuilderError(
            f"model.builder: {builder}'s output has shape {('batch', *shape[1:])}, expected (batch, {num_classes}) logits"
        )
    return model
