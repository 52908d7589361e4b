"""Adaptive search: Optuna's TPE sampler and its pruners behind `search:`, with the MLflow
store as the search's only memory.

An adaptive search's trials are numbered slots (`suite.trials.Slot`): a slot's cell hash is
its search's id and its number, so claims (`suite.claims`) keep each slot to one run across
invocations, whatever point each asked. A slot is asked for its point just before it is
claimed (`Coordinator.ask`): the search's runs in the store are replayed into a new
in-memory Optuna study (finished ones COMPLETE with their final validation accuracy, pruned
ones PRUNED with their curve, live RUNNING ones RUNNING, so that TPE's constant liar keeps
parallel asks apart), then its sampler, seeded by the search's seed and the slot, is asked.
A search asked one slot at a time, stopped with Ctrl-C and run again, asks the points an
uninterrupted one asks (a slot asked again after a failure sees the trials after it too); a
parallel search's order, and so its points, depend on timing, while each trial trains the
same from its point and seed.

A trial's pruner runs in the process that trains it (`Pruning`), from the finished trials
replayed when its slot was asked: the trial reports its validation accuracy at every
evaluation, and at the pruner's check epochs (`suite.trials.check_epochs`) the pruner may end
it, which `suite.train.train` takes as a `Pruned` verdict.

Owns: the replay (`known`, `frozen`), the ask, the pruners (`pruner`, `SlotHyperband`) and
`Pruning`, and `replayed_study` for the report's importance. Must not: claim, train or log
runs (the executors ask, claim and train; `suite.lifecycle` logs a pruned run).
Imports Optuna, so it is imported only for an adaptive search.
"""

from __future__ import annotations

import binascii
import json
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from suite.history import Pruned, shortest
from suite.metrics import SEARCH_OBJECTIVE as OBJECTIVE
from suite.names import (
    PRUNED_TAG,
    SEARCH_ID_TAG,
    SEARCH_POINT_TAG,
    TRIAL_TAG,
    Stored,
)
from suite.trials import REDUCTION_FACTOR, Known, Slot, check_epochs, rounded, trial_points

if TYPE_CHECKING:
    from suite.spec import Distribution, RunConfig, SearchSpec
    from suite.study import RunKey
    from suite.tracking import RunRecord, Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)

CURVE = "val_accuracy"  # what a trial reports to its pruner at every evaluation
MEDIAN_STARTUP = 5  # the median pruner prunes nothing before this many trials completed


# --- the space in Optuna's terms -------------------------------------------------------------


def distributions(spec: SearchSpec) -> dict[str, BaseDistribution]:
    """The space as Optuna distributions; a choice is asked by its index, so any value
    (a list, a mapping) can be a choice."""
    return {key: _distribution(dist) for key, dist in spec.space.items()}


def _distribution(dist: Distribution) -> BaseDistribution:
    if dist.choice is not None:
        return CategoricalDistribution(list(range(len(dist.choice))))
    if dist.log_uniform is not None:
        low, high = dist.log_uniform
        return FloatDistribution(low, high, log=True)
    assert dist.uniform is not None
    low, high = dist.uniform
    return FloatDistribution(low, high)


def encode(spec: SearchSpec, point: dict[str, Any]) -> dict[str, Any] | None:
    """A stored point as Optuna params; None when it is not in this space."""
    params: dict[str, Any] = {}
    for key, dist in spec.space.items():
        if key not in point:
            return None
        value = point[key]
        if dist.choice is not None:
            stored = json.dumps(value, sort_keys=True)  # as `Slot.tags` wrote it
            same = [i for i, c in enumerate(dist.choice) if json.dumps(c, sort_keys=True) == stored]
            if not same:
                return None
            params[key] = same[0]
        else:
            params[key] = float(value)
    return params


def decode(spec: SearchSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's params as the point a cell trains with (floats to four significant digits,
    as random search's draws)."""
    point: dict[str, Any] = {}
    for key, dist in spec.space.items():
        value = params[key]
        if dist.choice is not None:
            point[key] = dist.choice[int(value)]
        else:
            bounds = dist.log_uniform or dist.uniform
            assert bounds is not None
            point[key] = rounded(float(value), *bounds)
    return point


# --- the replay --------------------------------------------------------------------------------


def known(
    records: list[RunRecord], slot: Slot, seed: int, curves: dict[str, dict[int, float]]
) -> list[Known]:
    """The trials of `slot`'s search (and seed) the store holds, by slot number: finished
    (complete or pruned, with their curves from `curves`, by run id) and live RUNNING ones;
    the latest run of a slot counts. Runs of a point outside the space are left out."""
    from suite.claims import abandoned

    latest: dict[int, RunRecord] = {}
    for record in sorted(records, key=lambda r: r.start_time):
        tags = record.tags
        if tags.get(SEARCH_ID_TAG) != slot.search_id or record.seed != seed:
            continue
        if record.status == Stored.FINISHED or (
            record.status == Stored.RUNNING and abandoned(record) is None
        ):
            number = int(tags[TRIAL_TAG])
            if record.status == Stored.FINISHED or number not in latest:
                latest[number] = record
    out = []
    for number, record in sorted(latest.items()):
        point = json.loads(record.tags.get(SEARCH_POINT_TAG, "null")) or {}
        if encode(slot.spec, point) is None:
            continue
        if record.status == Stored.RUNNING:
            out.append(Known(number, point, "running"))
            continue
        curve = curves.get(record.run_id, {})
        if PRUNED_TAG in record.tags:
            out.append(Known(number, point, "pruned", None, tuple(sorted(curve.items()))))
            continue
        value = record.metrics.get(OBJECTIVE)
        if value is None or not math.isfinite(value):
            continue
        out.append(Known(number, point, "complete", value, tuple(sorted(curve.items()))))
    return out


def frozen(
    spec: SearchSpec, trial: Known, attrs: dict[str, Any] | None = None
) -> FrozenTrial | None:
    """A stored trial as Optuna's, its slot a user attribute; None if it cannot be one (a
    pruned trial without a curve)."""
    params = encode(spec, trial.point)
    assert params is not None
    values = dict(trial.curve)
    if trial.state == "pruned" and not values:
        return None
    state = {
        "complete": TrialState.COMPLETE,
        "pruned": TrialState.PRUNED,
        "running": TrialState.RUNNING,
    }[trial.state]
    return create_trial(
        state=state,
        value=trial.value if trial.state == "complete" else None,
        params=params,
        distributions=distributions(spec),
        intermediate_values=values,
        user_attrs={"slot": trial.slot},
        system_attrs=attrs or {},
    )


def replayed_study(spec: SearchSpec, trials: list[Known], name: str, **options: Any) -> Any:
    """A new in-memory Optuna study holding `trials`, in slot order."""
    study = optuna.create_study(direction="maximize", study_name=name, **options)
    for trial in sorted(trials, key=lambda t: t.slot):
        made = frozen(spec, trial)
        if made is not None:
            study.add_trial(made)
    return study


# --- asking ------------------------------------------------------------------------------------


def slot_seed(seed: int, number: int) -> int:
    """The sampler's seed for one slot: the same ask after a resume, another per slot."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class Coordinator:
    """Asks the slots of one invocation's adaptive searches, from the store they log to."""

    def __init__(self, tracker: Tracker, experiment_id: str) -> None:
        self.tracker, self.experiment_id = tracker, experiment_id
        self.curves: dict[str, dict[int, float]] = {}  # finished runs' curves, by run id
        # asked here, not yet seen in the store: lies for the next asks
        self.pending: dict[tuple[str, int], dict[str, Any]] = {}
        self.draws: dict[str, list[dict[str, Any]]] = {}  # a random search's draws

    def ask(self, key: RunKey) -> RunKey:
        """`key` with its slot's point asked (its cell filled, see `suite.trials.fill`)."""
        cell = key.cell
        slot = cell.slot
        assert slot is not None
        spec = slot.spec
        trials = self._known(slot, key.seed)
        mine = [t for t in trials if t.slot != slot.number]
        point = self._draw(spec, slot) if spec.sampler == "random" else self._tpe(spec, slot, mine)
        finished = tuple(t for t in mine if t.state != "running")
        self.pending[(slot.search_id, slot.number)] = point
        filled = cell.asked(point)
        assert filled.slot is not None
        with_history = replace(filled.slot, history=finished if spec.pruner != "none" else ())
        return replace(key, cell=replace(filled, slot=with_history))

    def ended(self, key: RunKey) -> None:
        slot = key.cell.slot
        if slot is not None:
            self.pending.pop((slot.search_id, slot.number), None)

    def _known(self, slot: Slot, seed: int) -> list[Known]:
        records = self.tracker.runs(self.experiment_id)
        if slot.spec.pruner != "none":
            wanted = [
                r.run_id
                for r in records
                if r.tags.get(SEARCH_ID_TAG) == slot.search_id
                and r.status == Stored.FINISHED
                and r.run_id not in self.curves
            ]
            for run_id in wanted:
                self.curves[run_id] = {}
            for run_id, _, step, value in self.tracker.histories(wanted, [CURVE]):
                self.curves[run_id][int(step)] = float(value)
        trials = known(records, slot, seed, self.curves)
        seen = {t.slot for t in trials}
        for (search, number), point in self.pending.items():
            if search == slot.search_id and number not in seen:
                trials.append(Known(number, point, "running"))
        return trials

    def _draw(self, spec: SearchSpec, slot: Slot) -> dict[str, Any]:
        draws = self.draws.get(slot.search_id, [])
        if len(draws) <= slot.number:
            draws = self.draws[slot.search_id] = trial_points(
                spec, max(spec.trials, slot.number + 1)
            )
        return draws[slot.number]

    def _tpe(self, spec: SearchSpec, slot: Slot, trials: list[Known]) -> dict[str, Any]:
        sampler = optuna.samplers.TPESampler(
            seed=slot_seed(spec.seed, slot.number), constant_liar=True
        )
        study = replayed_study(spec, trials, slot.search_id, sampler=sampler)
        asked = study.ask(distributions(spec))
        return decode(spec, asked.params)


# --- pruning -----------------------------------------------------------------------------------


class SlotHyperband(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband with each trial's bracket drawn from its slot, not from its number
    in the study: a trial replayed out of order keeps its bracket."""

    def _get_bracket_id(self, study: Any, trial: FrozenTrial) -> int:
        return self.bracket(study.study_name, int(trial.user_attrs.get("slot", trial.number)))

    def bracket(self, name: str, slot: int) -> int:
        """The bracket of `slot` in the search `name` (as Optuna draws it from a number)."""
        if not self._pruners:
            self._try_initialization(None)  # type: ignore[arg-type]  # max_resource is known
        n = binascii.crc32(f"{name}_{slot}".encode()) % self._total_trial_allocation_budget
        for bracket, budget in enumerate(self._trial_allocation_budgets):
            n -= budget
            if n < 0:
                return bracket
        raise AssertionError("unreachable: the budgets sum to the total")

    def rung_attrs(self, name: str, trial: Known) -> dict[str, float]:
        """The `completed_rung_<r>` attributes the pruner wrote on `trial` as it reached
        each rung of its bracket (the values at the rungs' epochs)."""
        values, rung = dict(trial.curve), 0
        attrs: dict[str, float] = {}
        bracket = self.bracket(name, trial.slot)
        while True:
            step = self._min_resource * REDUCTION_FACTOR ** (bracket + rung)
            if step not in values:
                return attrs
            attrs[f"completed_rung_{rung}"] = values[step]
            rung += 1


def pruner(spec: SearchSpec, config: RunConfig) -> Any:
    """The search's pruner for a trial of `config`: Hyperband over the run's epochs from one
    evaluation period, or the median rule once `MEDIAN_STARTUP` trials completed."""
    if spec.pruner == "hyperband":
        return SlotHyperband(
            min_resource=config.train.eval_every,
            max_resource=config.train.epochs,
            reduction_factor=REDUCTION_FACTOR,
        )
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP)
    return optuna.pruners.NopPruner()


@dataclass
class Pruning:
    """A trial's pruner, in the process that trains it: `report` each evaluation."""

    checks: list[int]
    study: Any
    trial: Any

    @classmethod
    def of(cls, slot: Slot, config: RunConfig) -> Pruning:
        spec = slot.spec
        chosen = pruner(spec, config)
        study = optuna.create_study(direction="maximize", study_name=slot.search_id, pruner=chosen)
        for trial in slot.history:
            attrs = chosen.rung_attrs(slot.search_id, trial) if spec.pruner == "hyperband" else {}
            made = frozen(spec, trial, attrs)
            if made is not None:
                study.add_trial(made)
        own = study.ask()
        own.set_user_attr("slot", slot.number)
        return cls(check_epochs(spec, config), study, own)

    def report(self, epoch: int, values: dict[str, float]) -> None:
        """Report the trial's validation accuracy at `epoch`.

        Raises:
            Pruned: at a check epoch, when the pruner ends the trial.
        """
        value = values.get(CURVE)
        if value is None:
            return
        # as the store holds it, which is what the trials it is compared with were replayed
        # from: 0.13, not float32's 0.12999999523, which would lose every tie at 0.13
        self.trial.report(shortest(value), epoch)
        if epoch in self.checks and self.trial.should_prune():
            raise Pruned(f"pruned at epoch {epoch}")
