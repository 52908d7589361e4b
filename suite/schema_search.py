"""The schema of a study's `search:` block: trials from a space, drawn up front or asked.

Owns: `Distribution` (one dimension: log-uniform, uniform or a choice, and its bounds' checks)
and `SearchSpec` (trials, seed, space, sampler, pruner). Must not: draw the trials (`suite.trials.trial_points`)
or expand a study. It imports pydantic and `suite.schema_base` only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from suite.schema_base import PositiveInt, Strict


class Distribution(Strict):
    """One search dimension: exactly one of `log_uniform: [lo, hi]` (10^U(log lo, log hi)),
    `uniform: [lo, hi]`, or `choice: [a, b, ...]`. Drawn by `suite.trials.sample`."""

    log_uniform: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    uniform: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    choice: Annotated[list[Any], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in ("log_uniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of log_uniform: [lo, hi], uniform: [lo, hi], choice: [...]"
            )
        bounds = self.log_uniform or self.uniform
        if bounds is not None:
            lo, hi = bounds
            if not lo < hi:
                raise ValueError(f"expected [low, high] with low < high, got {bounds}")
            if self.log_uniform is not None and lo <= 0:
                raise ValueError(f"log_uniform needs positive bounds, got {bounds}")
        return self


SAMPLERS = ("random", "tpe")
PRUNERS = ("none", "median", "hyperband")


class SearchSpec(Strict):
    """A study's `search:` block: `trials` configurations from `space`, crossed with the
    variants and the grid.

    `sampler: random` with `pruner: none` (the default) draws every trial up front with
    `seed` (`suite.trials.trial_points`), each trial a cell of its own. Any other choice is
    an adaptive search (`suite.search`): its trials are numbered slots, asked of Optuna one
    at a time as a worker frees up (`tpe`), or taken from the same up-front draws
    (`random`), and a pruner may end a trial early on its validation accuracy."""

    trials: PositiveInt
    seed: Annotated[int, Field(ge=0)] = 0
    space: dict[str, Distribution] = Field(min_length=1)
    sampler: Literal["random", "tpe"] = "random"
    pruner: Literal["none", "median", "hyperband"] = "none"

    @property
    def adaptive(self) -> bool:
        """Whether the trials are asked one at a time (`suite.search`), not drawn up front."""
        return self.sampler != "random" or self.pruner != "none"
