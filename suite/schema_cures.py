"""The schema of the everyday cures a run's training applies: `train.early_stopping` and
`train.augment` (`label_smoothing` and `max_norm` are single numbers in `suite.spec`).

Owns: `EarlyStopping` (what it may monitor, and why not the others), `AugmentSpec` (each
transform's range). Must not: train (`suite.cures` applies them) or know the data (whether the
inputs are images is checked by `suite.study.check_inputs`). It imports pydantic and
`suite.schema_base` only.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from suite.schema_base import NonNegativeFloat, Strict, did_you_mean

MONITORS = ("val_loss", "val_accuracy")


class EarlyStopping(Strict):
    """`train.early_stopping`: Keras' `EarlyStopping` semantics, on the validation split.

    After each epoch the monitored metric improves when it beats the best so far by more than
    `min_delta` (lower for `val_loss`, higher for `val_accuracy`); the run stops at the end of
    the epoch that makes `patience` epochs in a row without improvement (never after the
    first). With `train.eval_every` it decides at the evaluated epochs only, and `patience`
    counts evaluations (`suite.spec.RunConfig` refuses one the run could never reach). With `restore_best` the run ends with the weights of its best epoch, stopped or
    not (Keras 3), and its final metrics are theirs.
    """

    monitor: str = "val_loss"
    patience: Annotated[int, Field(ge=0)] = 10
    min_delta: NonNegativeFloat = 0.0
    restore_best: bool = True

    @field_validator("monitor")
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        if value in MONITORS:
            return value
        if value.startswith("test_"):
            raise ValueError(
                f"{value!r} is a test-set metric: stopping on it is tuning on the test set, "
                "and the test accuracy would no longer measure generalisation; monitor "
                "val_loss or val_accuracy (with data.val_size)"
            )
        if value.startswith("train_"):
            raise ValueError(
                f"{value!r} is a training metric: it keeps improving while the network "
                "overfits; monitor val_loss or val_accuracy (with data.val_size)"
            )
        raise ValueError(
            f"unknown metric {value!r}{did_you_mean(value, MONITORS)}; expected val_loss or val_accuracy"
        )


class AugmentSpec(Strict):
    """`train.augment`: random transforms of each training minibatch, inside the compiled step
    (drawn as Keras' preprocessing layers draw them, seeded per run); evaluation sees the images
    as they are. Each is off at 0 (all at 0: no augmentation); images only, except `noise`."""

    translate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0  # up to this fraction of H and W
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0  # up to this many degrees
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # in or out by up to this fraction
    flip: bool = False  # left-right only (Keras' RandomFlip default also flips up-down)
    noise: NonNegativeFloat = 0.0  # Gaussian noise of this standard deviation on the inputs

    @field_validator("rotate")
    @classmethod
    def _degrees(cls, value: float) -> float:
        if 0.0 < value < 1.0:
            raise ValueError(
                f"rotate is in degrees, and {value:g} is less than one; Keras' "
                f"RandomRotation({value:g}) is a fraction of a turn: rotate: {value * 360:g}"
            )
        return value

    @property
    def active(self) -> bool:
        """Whether any transform is on: all at 0 is no augmentation (a sweep's control)."""
        return bool(self.geometric or self.noise)

    @property
    def geometric(self) -> list[str]:
        """The transforms given that need images."""
        return [k for k in ("translate", "rotate", "zoom", "flip") if getattr(self, k)]
