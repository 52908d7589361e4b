"""The schema of `train.optimizer`: an optimizer by name, with its hyperparameters' defaults.

Owns: `OptimizerSpec` (which settings each optimizer has; unset ones take `OPTIMIZER_DEFAULTS`,
the textbook's values, which differ from Keras' own). Must not: build an optimizer
(`suite.train.make_optimizer` does) or know the rest of a run. It imports pydantic and
`suite.schema_base` only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from suite.schema_base import NonNegativeFloat, PositiveFloat, Strict

# The textbook's optimizer defaults (reference/book-ch06.md); Keras' own defaults differ.
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 0.01},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9},
    "nesterov": {"learning_rate": 0.01, "momentum": 0.9},
    "adagrad": {"learning_rate": 0.01, "epsilon": 1e-7},
    "rmsprop": {"learning_rate": 0.01, "rho": 0.99, "epsilon": 1e-7},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    # decoupled weight decay (Loshchilov & Hutter); 0.01 is PyTorch's default and Omnigrok's
    "adamw": {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "weight_decay": 0.01,
    },
}


class OptimizerSpec(Strict):
    """An optimizer by name; unset hyperparameters take the textbook's defaults."""

    name: Literal["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"] = "sgd"
    learning_rate: PositiveFloat | None = None
    momentum: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    rho: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    beta_1: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    beta_2: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    epsilon: PositiveFloat | None = None
    # adamw: Keras' decoupled decay, w -= learning_rate * weight_decay * w on every trainable
    # variable before each update; not model.weight_decay, the textbook's penalty in the loss
    weight_decay: NonNegativeFloat | None = None

    @model_validator(mode="after")
    def _fill_defaults(self) -> OptimizerSpec:
        defaults = OPTIMIZER_DEFAULTS[self.name]
        for key in ("momentum", "rho", "beta_1", "beta_2", "epsilon", "weight_decay"):
            if getattr(self, key) is not None and key not in defaults:
                hint = (
                    " (decoupled weight decay is adamw's; the L2 penalty of any optimizer is "
                    "model.weight_decay)"
                    if key == "weight_decay"
                    else ""
                )
                raise ValueError(f"{key}: not a setting of the {self.name} optimizer{hint}")
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        return self
