"""Input randomizations: the inputs of a run with `data.randomize_inputs`.

Zhang et al. 2017 (arXiv:1611.03530, section 2) train on images whose structure is destroyed
while the labels stay, and a network still fits them. Semantics (docs/studies.md):

- `shuffled_pixels`: one random permutation of the pixel positions, the same for every image
  of the run, training, validation and test alike (a network can still generalize: the
  images keep all their information, in another order);
- `random_pixels`: an independent random permutation of each image's pixel positions (each
  image keeps its pixel values, as a multiset; nothing is shared from image to image);
- `gaussian`: every image replaced by independent gaussian noise whose mean and standard
  deviation are those of the dataset's training pool (all its training images, pixels scaled
  as a run sees them): one global mean and one global standard deviation, as Zhang et al.
  matched "the mean and variance of the original image dataset". Values are not clipped.

Every part of a run's data is transformed, training, validation and test: the network is
always tested on inputs like those it trained on (with shuffled pixels its test accuracy
measures what survives the permutation; with random pixels or noise it is chance).
A colour pixel moves with its channels; flat feature vectors permute their features.

Every draw comes from the run's data seed, on a stream of its own (label noise has another):
every cell with the same seed and the same images gets the same inputs, so cells compare
paired. Each part (train, val, test) draws on its own sub-stream, in image order, so a part's
draws do not depend on the size of another part.

Owns: the randomizations (`randomize_inputs`) and the statistics gaussian inputs match
(`pixel_stats`). Must not: read the study schema (it takes plain values), load data or
train. It imports numpy only.
"""

from __future__ import annotations

import numpy as np

KINDS = ("shuffled_pixels", "random_pixels", "gaussian")
# mixed into the data seed, so the randomization's draws are a stream of their own
STREAM = 0x1A9B7
PARTS = ("train", "val", "test")  # each part's sub-stream, by its index here


def pixel_layout(image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(pixel positions, values per position) of one input: (H*W, C) for colour images,
    (H*W, 1) for grey ones, (D, 1) for flat feature vectors."""
    if len(image_shape) == 3:
        return image_shape[0] * image_shape[1], image_shape[2]
    return int(np.prod(image_shape)), 1


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of every pixel value of `images`, scaled as a run sees
    them (uint8 / 255, floats as they are), in float64."""
    if images.dtype == np.uint8:
        # from a histogram: exact, and no float copy of the whole pool
        counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
        levels = np.arange(256) / 255.0
        mean = float(counts @ levels / counts.sum())
        return mean, float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum()))
    values = images.astype(np.float64)
    return float(values.mean()), float(values.std())


def randomize_inputs(
    kind: str,
    pool_images: np.ndarray,
    train: np.ndarray,
    val: np.ndarray | None,
    test: np.ndarray,
    *,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A run's training, validation (None without one) and test inputs, randomized.

    Args:
        kind: `shuffled_pixels`, `random_pixels` or `gaussian`.
        pool_images: the dataset's training pool, as stored: the shape of one input before
            flattening, and the statistics `gaussian` matches.
        train, val, test: the run's inputs, flattened (N, H*W*C) in the image's (H, W, C)
            order, float32, as `suite.data` prepares them.
        seed: the run's data seed.

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"data.randomize_inputs: expected one of {', '.join(KINDS)}, got {kind!r}")
    pixels, channels = pixel_layout(tuple(int(n) for n in pool_images.shape[1:]))
    mean, std = pixel_stats(pool_images) if kind == "gaussian" else (0.0, 1.0)
    shared = np.random.default_rng([STREAM, seed]).permutation(pixels)

    def randomized(x: np.ndarray, part: str) -> np.ndarray:
        rng = np.random.default_rng([STREAM, seed, PARTS.index(part)])
        grid = x.reshape(len(x), pixels, channels)
        if kind == "shuffled_pixels":
            moved = grid[:, shared, :]
        elif kind == "random_pixels":
            # the argsort of uniform keys is a uniform permutation, independent per row
            order = np.argsort(rng.random((len(x), pixels)), axis=1)
            moved = np.take_along_axis(grid, order[:, :, None], axis=1)
        else:
            moved = rng.normal(mean, std, size=grid.shape)
        return moved.reshape(len(x), -1).astype(np.float32)

    return (
        randomized(train, "train"),
        None if val is None else randomized(val, "val"),
        randomized(test, "test"),
    )
