"""Label noise: the corrupted training labels of a run with `data.label_noise`.

Semantics (Zhang et al. 2017, arXiv:1611.03530; docs/studies.md): `round(fraction * n)` of
a run's `n` training images are chosen uniformly without replacement, and each gets a new
label: `other`, uniform over the K-1 classes besides its own (so always wrong); `any`, uniform
over all K classes (random labels: about 1/K of them land on the true class by chance).
Validation and test labels are never touched.

Every draw comes from the run's data seed (the `seed` `suite.data.make_split` gets), on a
stream of its own: every cell with the same seed and the same training images gets the same
corruption, so cells compare paired. The images are the first `round(fraction * n)` of one
seeded permutation, and each image's replacement label is drawn up front for every image, so
with the same seed and kind a smaller fraction corrupts a subset of a larger one's images,
each to the same label.

Owns: drawing the corruption (`corrupt_labels`), the class-count check (`check_classes`) and what a run records of it
(`LabelNoiseDraw.record`, the `label_noise.json` artifact). Must not: read the study schema
(it takes plain values), load data or train. It imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("other", "any")
# mixed into the data seed, so the corruption's draws are a stream of their own
STREAM = 0x1ABE1


class LabelNoiseError(ValueError):
    """Label noise cannot apply to this data (one class: no other label to give)."""


@dataclass(frozen=True)
class LabelNoiseDraw:
    """One run's corruption: which training images (indices into its training subset, sorted)
    and their clean and corrupted labels."""

    fraction: float
    kind: str
    indices: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    n_train: int

    def mask(self) -> np.ndarray:
        """A float32 per training image: 1.0 where its label was corrupted."""
        out = np.zeros(self.n_train, np.float32)
        out[self.indices] = 1.0
        return out

    def record(self) -> dict[str, Any]:
        """What a run logs as its `label_noise.json` artifact."""
        return {
            "fraction": self.fraction,
            "kind": self.kind,
            "n_train": self.n_train,
            "n_corrupted": len(self.indices),
            "indices": self.indices.tolist(),
            "clean": self.clean.tolist(),
            "corrupted": self.corrupted.tolist(),
        }


def check_classes(num_classes: int) -> None:
    """LabelNoiseError when the data has fewer than 2 classes: no other label to give."""
    if num_classes < 2:
        raise LabelNoiseError(
            f"data.label_noise: the data has {num_classes} class, label noise needs at least 2"
        )


def corrupt_labels(
    labels: np.ndarray, num_classes: int, fraction: float, kind: str = "other", *, seed: int
) -> tuple[np.ndarray, LabelNoiseDraw]:
    """The training labels with `round(fraction * len(labels))` of them corrupted, and the draw.

    Args:
        labels: the clean training labels, integers 0..num_classes-1.
        num_classes: K, the data's class count.
        fraction: the share of images to corrupt, in [0, 1].
        kind: `other` (a label drawn from the K-1 other classes) or `any` (from all K).
        seed: the run's data seed.

    Raises:
        LabelNoiseError: `num_classes` below 2.
        ValueError: a fraction outside [0, 1] or an unknown kind.
    """
    check_classes(num_classes)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.label_noise.fraction: must be in [0, 1], got {fraction!r}")
    if kind not in KINDS:
        raise ValueError(f"data.label_noise.kind: expected other or any, got {kind!r}")
    n = len(labels)
    rng = np.random.default_rng([STREAM, seed])
    order = rng.permutation(n)
    # both kinds' labels are drawn for every image, so neither depends on the fraction
    shift = rng.integers(1, num_classes, size=n)  # other: true + 1..K-1, modulo K
    anew = rng.integers(0, num_classes, size=n)  # any: uniform over all K
    indices = np.sort(order[: round(fraction * n)])
    clean = labels[indices].astype(np.int32)
    if kind == "other":
        corrupted = ((clean + shift[indices]) % num_classes).astype(np.int32)
    else:
        corrupted = anew[indices].astype(np.int32)
    noisy = labels.astype(np.int32).copy()
    noisy[indices] = corrupted
    draw = LabelNoiseDraw(float(fraction), kind, indices, clean, corrupted, n)
    return noisy, draw
