"""Input randomizations (`data.randomize_inputs`, Zhang et al. 2017): shuffled pixels, random
pixels and gaussian inputs on real splits, seeded by the data seed and paired across cells,
combined with label noise, kept out of the hash when unset, and refused in one line when
misspelt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from suite import data
from suite.randomize import pixel_stats
from suite.spec import RunConfig, SpecError
from suite.study import load_study


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Path-less data resolves to the bundled subset here, whatever the machine has."""


def _mnist(kind: str | None, seed: int = 0, **more: Any) -> data.Split:
    """60 training, 20 validation and 30 test images of the bundled MNIST subset."""
    return data.make_split(None, 60, "first", 20, 30, seed=seed, randomize_inputs=kind, **more)


def _distinct_npz(path: Path, shape: tuple[int, ...]) -> Path:
    """An npz of float images whose values are all distinct within each image, so a
    permutation of an image's pixels can be read back from the image."""
    rng = np.random.default_rng(7)
    x_train, x_test = rng.random((40, *shape)), rng.random((15, *shape))
    labels = np.arange(40) % 3
    np.savez(path, x_train=x_train, y_train=labels, x_test=x_test, y_test=np.arange(15) % 3)
    return path


def _permutations(plain: np.ndarray, moved: np.ndarray, channels: int = 1) -> np.ndarray:
    """Per image, the pixel positions `moved` took its pixels from: moved[j] == plain[p[j]]."""
    n = len(plain)
    plain3, moved3 = plain.reshape(n, -1, channels), moved.reshape(n, -1, channels)
    out = []
    for a, b in zip(plain3, moved3, strict=True):
        where = {float(v): i for i, v in enumerate(a[:, 0])}
        perm = np.array([where[float(v)] for v in b[:, 0]])
        assert np.array_equal(b, a[perm]), "each pixel moves with its channels"
        out.append(perm)
    return np.array(out)


def _split(path: Path, kind: str | None, seed: int = 0) -> data.Split:
    return data.make_split(
        str(path), 30, "first", 10, None, seed=seed, dataset="npz", randomize_inputs=kind
    )


# --- the randomizations ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 4), (4, 4, 3)], ids=["grey", "colour"])
def test_shuffled_pixels_are_one_permutation_for_every_image_of_every_part(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    path = _distinct_npz(tmp_path / "distinct.npz", shape)
    plain, shuffled = _split(path, None), _split(path, "shuffled_pixels")
    channels = shape[2] if len(shape) == 3 else 1
    perms = [
        _permutations(a, b, channels)
        for a, b in [
            (plain.x_train, shuffled.x_train),
            (plain.x_val, shuffled.x_val),
            (plain.x_test, shuffled.x_test),
        ]
    ]
    every = np.concatenate(perms)
    assert len(every) == 30 + 10 + 15
    assert (every == every[0]).all(), "one permutation, train, validation and test alike"
    assert not np.array_equal(every[0], np.arange(len(every[0])))
    assert shuffled.image_shape == plain.image_shape == shape
    assert np.array_equal(shuffled.y_train, plain.y_train)
    assert np.array_equal(shuffled.y_test, plain.y_test)


def test_random_pixels_permute_each_image_on_its_own(tmp_path: Path) -> None:
    path = _distinct_npz(tmp_path / "distinct.npz", (5, 4))
    plain, scrambled = _split(path, None), _split(path, "random_pixels")
    assert scrambled.x_val is not None and plain.x_val is not None
    perms = np.concatenate(
        [
            _permutations(plain.x_train, scrambled.x_train),
            _permutations(plain.x_val, scrambled.x_val),
            _permutations(plain.x_test, scrambled.x_test),
        ]
    )
    # 55 permutations of 20 pixels: all different (a repeat has odds of about 1e-15)
    assert len({tuple(p) for p in perms}) == len(perms)


def test_random_and_shuffled_pixels_keep_each_mnist_images_pixel_values() -> None:
    plain = _mnist(None)
    for kind in ("shuffled_pixels", "random_pixels"):
        moved = _mnist(kind)
        for a, b in [(plain.x_train, moved.x_train), (plain.x_test, moved.x_test)]:
            assert b.dtype == np.float32 and b.shape == a.shape
            assert np.array_equal(np.sort(a, axis=1), np.sort(b, axis=1)), kind
            assert not np.array_equal(a, b), kind
    shuffled, scrambled = _mnist("shuffled_pixels"), _mnist("random_pixels")
    # the shared permutation moves every image's ink the same way; one per image does not
    assert not np.array_equal(shuffled.x_train, scrambled.x_train)


def test_gaussian_inputs_match_the_training_pools_mean_and_std() -> None:
    pool = data.load_pool(data.resolve_source(None))
    scaled = pool.x_train.astype(np.float64) / 255.0
    mean, std = scaled.mean(), scaled.std()
    assert pixel_stats(pool.x_train) == pytest.approx((mean, std), rel=1e-9)
    noise = _mnist("gaussian")
    assert noise.x_val is not None
    for x in (noise.x_train, noise.x_val, noise.x_test):
        # 20-60 images of 784 values: the sample mean's sd is about 0.3 / 125 = 0.0025
        assert x.dtype == np.float32 and x.shape[1] == 784
        assert abs(float(x.mean()) - mean) < 0.012
        assert abs(float(x.std()) - std) < 0.012
    # nothing of the images is left, and no two images are the same noise
    assert abs(np.corrcoef(noise.x_train.ravel(), _mnist(None).x_train.ravel())[0, 1]) < 0.02
    assert not np.array_equal(noise.x_train[0], noise.x_train[1])


@pytest.mark.parametrize("kind", ["shuffled_pixels", "random_pixels", "gaussian"])
def test_the_randomization_is_seeded_and_shared_by_every_cell_with_the_seed(kind: str) -> None:
    a, again, other = _mnist(kind, seed=3), _mnist(kind, seed=3), _mnist(kind, seed=4)
    assert np.array_equal(a.x_train, again.x_train) and np.array_equal(a.x_test, again.x_test)
    assert not np.array_equal(a.x_train, other.x_train)
    # two cells that differ elsewhere (the network, the optimizer) see the same inputs
    cells = [
        RunConfig.model_validate(
            {
                "data": {"train_size": 60, "test_size": 30, "randomize_inputs": kind},
                "model": model,
            }
        )
        for model in ({"hidden": [8]}, {"hidden": [32, 32], "dropout": 0.5})
    ]
    one, two = (data.make_split(**c.data.model_dump(), seed=3) for c in cells)
    assert np.array_equal(one.x_train, two.x_train) and np.array_equal(one.x_test, two.x_test)


def test_randomized_inputs_combine_with_label_noise() -> None:
    noise = {"fraction": 0.5, "kind": "other"}
    both = _mnist("random_pixels", seed=1, label_noise=noise)
    inputs_only, labels_only = (
        _mnist("random_pixels", seed=1),
        _mnist(None, seed=1, label_noise=noise),
    )
    assert np.array_equal(both.x_train, inputs_only.x_train)
    assert np.array_equal(both.y_train, labels_only.y_train)
    assert both.label_noise is not None and len(both.label_noise.indices) == 30
    assert np.array_equal(both.y_test, inputs_only.y_test), "test labels stay clean"


def test_a_randomized_study_trains_an_mlp_and_a_cnn(
    write_study: Callable[..., Path], tracking_uri: str
) -> None:
    import suite

    study = suite.load(
        write_study(
            """
name: randomized
base:
  data: {train_size: 40, test_size: 50, randomize_inputs: shuffled_pixels,
         label_noise: {fraction: 0.5, kind: any}}
  model: {hidden: [8]}
  train: {batch_size: 20, epochs: 2}
variants:
  mlp: {}
  cnn: {model: {kind: cnn, conv: [{filters: 2, kernel: 3, pool: 2}], hidden: [8]}}
  gaussian: {data: {randomize_inputs: gaussian}}
"""
        )
    )
    result = suite.run(study, uri=tracking_uri)
    assert result.ok and len(result.results) == 3
    runs = suite.results.runs("randomized", uri=tracking_uri).set_index("cell")
    assert runs.loc["mlp", "data.randomize_inputs"] == "shuffled_pixels"
    assert runs.loc["gaussian", "data.randomize_inputs"] == "gaussian"


# --- the schema, its errors and the hash ----------------------------------------------------


def test_a_cell_without_randomized_inputs_keeps_its_hash() -> None:
    plain = RunConfig()
    for off in (None, "off", False):
        config = RunConfig.model_validate({"data": {"randomize_inputs": off}})
        assert config.data.randomize_inputs is None
        assert config.hash == plain.hash
        assert "randomize_inputs" not in config.identity()["data"]
    for path in sorted(Path(__file__).parents[1].glob("experiments/*.yaml")):
        for cell in load_study(path, check_data=False).cells:
            assert "randomize_inputs" not in cell.config.identity()["data"], path.name
    hashes = {
        RunConfig.model_validate({"data": {"randomize_inputs": kind}}).hash
        for kind in ("shuffled_pixels", "random_pixels", "gaussian")
    }
    assert len(hashes) == 3 and plain.hash not in hashes


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("shuffle_pixels", "got 'shuffle_pixels' (did you mean 'shuffled_pixels'?)"),
        ("gauss", "expected shuffled_pixels, random_pixels, gaussian or off, got 'gauss'"),
        ("1", "expected shuffled_pixels, random_pixels, gaussian or off, got 1"),
        ("{kind: gaussian}", "got {'kind': 'gaussian'}"),
    ],
)
def test_an_unknown_randomization_is_one_line_naming_file_and_key(
    write_study: Callable[..., Path], setting: str, words: str
) -> None:
    path = write_study(
        f"name: bad\nbase:\n  data: {{train_size: 20, randomize_inputs: {setting}}}\n"
    )
    with pytest.raises(SpecError) as err:
        load_study(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: base.data.randomize_inputs: "), message
    assert words in message
