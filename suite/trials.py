"""A search's trials: the up-front draws of a random search, the slots of an adaptive one.

Owns: `sample` and `trial_points` (random search's draws, the same on every machine), `Slot`
(an adaptive search's numbered trial, whose cell hash is the search's id and its number, so
two invocations that ask a slot different points still claim one run), `search_id`, and
`fill` (a slot's frame made whole with the point asked for it). Must not: ask Optuna
(`suite.search`), expand a study (`suite.study`), train or touch the store.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from suite.names import (
    PRUNER_TAG,
    SAMPLER_TAG,
    SEARCH_FRAME_TAG,
    SEARCH_ID_TAG,
    SEARCH_POINT_TAG,
    TRIAL_TAG,
)
from suite.spec import Distribution, RunConfig, SearchSpec, SpecError, validate


def sample(distribution: Distribution, rng: Any) -> Any:
    """One draw from a search dimension with a numpy Generator (`integers`, `uniform`)."""
    if distribution.choice is not None:
        return copy.deepcopy(distribution.choice[int(rng.integers(len(distribution.choice)))])
    if distribution.log_uniform is not None:
        lo, hi = distribution.log_uniform
        return rounded(10 ** rng.uniform(math.log10(lo), math.log10(hi)), lo, hi)
    assert distribution.uniform is not None
    lo, hi = distribution.uniform
    return rounded(rng.uniform(lo, hi), lo, hi)


def rounded(value: float, lo: float, hi: float) -> float:
    """Four significant digits (readable params and names, far finer than a search needs),
    unless rounding would leave [lo, hi): a draw stays inside its range."""
    short = float(f"{value:.4g}")
    return short if lo <= short < hi else value


def trial_points(search: SearchSpec, count: int | None = None) -> list[dict[str, Any]]:
    """The first `count` (else `search.trials`) trials' settings of a random search, the same
    for the same block on every machine; trial N's point does not depend on `count`."""
    import numpy as np

    rng = np.random.default_rng(search.seed)
    return [
        {key: sample(dist, rng) for key, dist in search.space.items()}
        for _ in range(search.trials if count is None else count)
    ]


@dataclass(frozen=True)
class Known:
    """A trial of an adaptive search as the store holds it (`suite.search.known`): its slot,
    point, state (`complete`, `pruned` or `running`), objective, and its validation curve
    as (epoch, accuracy) pairs."""

    slot: int
    point: dict[str, Any] = field(compare=False)
    state: str
    value: float | None = None
    curve: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Slot:
    """Trial `number` of the adaptive search `search_id`; `point`, once asked, the settings
    its cell trains with ({dotted key: value})."""

    search_id: str
    number: int
    frame: str  # the variant and grid point it searches, as in the cell's name ("" for none)
    spec: SearchSpec = field(compare=False, repr=False)
    point: dict[str, Any] | None = field(default=None, compare=False)
    # once asked, with a pruner: the search's finished trials then, which the pruner of the
    # process that trains it compares this trial with (`suite.search.Pruning`)
    history: tuple[Known, ...] = field(default=(), compare=False, repr=False)

    @property
    def cell_hash(self) -> str:
        return hashlib.sha256(f"{self.search_id}/{self.number}".encode()).hexdigest()[:10]

    def tags(self) -> dict[str, str]:
        """The tags of a run of this slot (`suite.names`): the replay reads them back."""
        return {
            SEARCH_ID_TAG: self.search_id,
            SEARCH_FRAME_TAG: self.frame,
            TRIAL_TAG: str(self.number),
            SEARCH_POINT_TAG: json.dumps(self.point, sort_keys=True),
            SAMPLER_TAG: self.spec.sampler,
            PRUNER_TAG: self.spec.pruner,
        }


def search_id(spec: SearchSpec, frame: RunConfig, data_source: str = "") -> str:
    """An adaptive search's identity: the settings it searches around (its frame), the data,
    the space, sampler, pruner and seed; not `trials`, so raising it extends the search."""
    identity = {
        "frame": frame.identity(),
        "data_source": data_source,
        "space": {k: v.model_dump(exclude_none=True) for k, v in spec.space.items()},
        "sampler": spec.sampler,
        "pruner": spec.pruner,
        "seed": spec.seed,
    }
    canonical = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def fill(config: RunConfig, point: dict[str, Any], where: str = "search") -> RunConfig:
    """A slot's frame `config` with `point` ({dotted key: value}) set over it.

    Raises:
        SpecError: the point makes no valid configuration (named by its keys).
    """
    tree = config.model_dump(mode="python", exclude_unset=True)  # as the file set it
    for dotted, value in point.items():
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    filled: RunConfig = validate(RunConfig, tree, where, {k: "search.space." for k in point})
    return filled


# the median pruner is asked every this many epochs (a compiled call's worth, see suite.train)
MEDIAN_EVERY = 10
REDUCTION_FACTOR = 3  # Hyperband's: a rung keeps the best third of the trials that reach it


def check_epochs(spec: SearchSpec, config: RunConfig) -> list[int]:
    """The epochs at which a trial's pruner is asked (its training stops there, to hear the
    answer, see `suite.train.train`): Hyperband's rungs, min_resource x 3^k with
    min_resource the evaluation period; the median pruner's every `MEDIAN_EVERY` epochs
    (whole evaluation periods). None for the trial's last epoch, nor without a pruner."""
    epochs, every = config.train.epochs, config.train.eval_every
    if spec.pruner == "hyperband":
        rungs, step = [], every
        while step < epochs:
            rungs.append(step)
            step *= REDUCTION_FACTOR
        return rungs
    if spec.pruner == "median":
        period = every * math.ceil(MEDIAN_EVERY / every)
        return list(range(period, epochs, period))
    return []


def check_search(
    spec: SearchSpec, frames: list[tuple[str, RunConfig]], seeds: tuple[int, ...], where: str
) -> None:
    """An adaptive search's checks (one line each, naming the key): one seed, a validation
    split, a space with something to choose, and points that make valid configurations.

    Raises:
        SpecError: the first problem.
    """
    what = f"search.pruner: {spec.pruner}" if spec.pruner != "none" else "search.sampler: tpe"
    if len(seeds) != 1:
        raise SpecError(
            f"{where}: seeds: {what} trains each trial with one seed, got {len(seeds)} "
            f"({list(seeds)}); give one seed, or use search.sampler: random without a pruner"
        )
    if spec.sampler == "tpe" and all(
        d.choice is not None and len(d.choice) == 1 for d in spec.space.values()
    ):
        raise SpecError(
            f"{where}: search.space: tpe has a single point to choose from; widen the space "
            "or use a grid"
        )
    points = trial_points(spec) if spec.sampler == "random" else _corners(spec)
    for name, frame in frames:
        if not frame.data.val_size:
            raise SpecError(
                f"{where}: {what}: needs a validation split to rank trials by (set "
                f"data.val_size), as train.early_stopping does (cell {name})"
            )
        if spec.pruner != "none" and not check_epochs(spec, frame):
            raise SpecError(
                f"{where}: search.pruner: {spec.pruner}: train.epochs {frame.train.epochs} "
                "leaves no epoch to prune at (median asks every 10 epochs, hyperband at "
                "eval_every x 3^k, both before the last); raise train.epochs or set pruner: none"
            )
        for point in points:
            fill(frame, point, where)


def _corners(spec: SearchSpec) -> list[dict[str, Any]]:
    """The space's extremes: every dimension at its low end, at its high end, and each
    choice with the others low; a bad bound fails here, not at the trial that asks it."""
    low = {k: _end(d, 0) for k, d in spec.space.items()}
    points = [low, {k: _end(d, -1) for k, d in spec.space.items()}]
    for key, dist in spec.space.items():
        points += [{**low, key: value} for value in dist.choice or []]
    return points


def _end(dist: Distribution, index: int) -> Any:
    bounds = dist.log_uniform or dist.uniform or dist.choice
    assert bounds is not None
    return copy.deepcopy(bounds[index])
