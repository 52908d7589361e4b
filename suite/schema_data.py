"""The schema of a run's data: `data:` (`DataSpec`), its `label_noise:` (`LabelNoise`) and
`randomize_inputs:`.

Owns: which images a run trains and tests on, as the study file says it (dataset, path, sizes,
subset, validation split), the label noise its training labels get and the randomization of
its inputs. Must not: load or cut data (`suite.data`), corrupt labels (`suite.corrupt`),
randomize inputs (`suite.randomize`), or check sizes against a dataset (`suite.study`). It
imports pydantic and `suite.schema_base` only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from suite.schema_base import PositiveInt, Strict, off_or_choice

# `data.randomize_inputs` besides off (Zhang et al. 2017; semantics in `suite.randomize`)
RANDOMIZE_INPUTS = ("shuffled_pixels", "random_pixels", "gaussian")


class LabelNoise(Strict):
    """`data.label_noise`: corrupted training labels (Zhang et al. 2017, arXiv:1611.03530).

    `round(fraction * n_train)` training images, chosen uniformly without replacement from the
    run's data seed, get a new label: `other`, uniform over the K-1 other classes (always
    wrong); `any`, uniform over all K (some land on the true class by chance). `fraction: 1.0`
    with `any` is Zhang et al.'s random labels. Validation and test labels stay clean (see
    `suite.corrupt`).
    """

    fraction: Annotated[float, Field(ge=0.0, le=1.0)]
    kind: Literal["other", "any"] = "other"


class DataSpec(Strict):
    """Which images a run trains and tests on."""

    dataset: Literal["mnist", "fashion_mnist", "cifar10", "npz"] = "mnist"
    # mnist: a Keras mnist.npz, else SUITE_MNIST_PATH, Keras' cache, the bundled subset;
    # fashion_mnist, cifar10: a Keras-layout .npz or a folder of the original files, else
    # Keras' cache; npz: the archive (x_train, y_train, x_test, y_test), required
    path: str | None = Field(default=None, validate_default=True)
    train_size: PositiveInt | None = None  # None: the whole training pool
    subset: Literal["first", "random"] = "first"  # first N (textbook) or stratified seeded draw
    val_size: Annotated[int, Field(ge=0)] = 0  # validation images (see val_from)
    # selection: held out of the train_size + val_size images selected; pool: taken from the
    # pool's images beyond the train_size training images, which stay the same as without one
    val_from: Literal["selection", "pool"] = "selection"
    test_size: PositiveInt | None = None  # first N test images; None: the whole test set
    # corrupted training labels, seeded by the run's data seed; None: off
    label_noise: LabelNoise | None = None
    # inputs with their structure destroyed, in every part (train, val, test), seeded by the
    # run's data seed: one pixel permutation for all images, one per image, or gaussian noise
    # of the training pool's mean and std; None: off
    randomize_inputs: Literal["shuffled_pixels", "random_pixels", "gaussian"] | None = None

    @field_validator("randomize_inputs", mode="before")
    @classmethod
    def _randomize_inputs(cls, value: Any) -> Any:
        return off_or_choice(value, RANDOMIZE_INPUTS)

    @field_validator("path")
    @classmethod
    def _npz_has_a_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("dataset") == "npz":
            raise ValueError("dataset npz needs the path of an .npz file")
        return value
