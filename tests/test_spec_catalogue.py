"""Spec features the study catalogue needs: search blocks, per-variant grids, late settings
that keep old hashes, report figure checks, and `--only` with names holding commas."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from suite.spec import LATE_SETTINGS, RunConfig, SpecError
from suite.study import load_study

SEARCH_STUDY = """\
name: search
base: {model: {hidden: [8]}, data: {train_size: 40, val_size: 10}}
seeds: [0]
search:
  trials: 30
  seed: 7
  space:
    model.weight_decay: {log_uniform: [1.0e-8, 1.0e-4]}
    train.optimizer.learning_rate: {uniform: [0.001, 0.01]}
    model.activation: {choice: [relu, tanh]}
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Data sizes are checked against the bundled subset on every machine."""


def test_search_draws_seeded_trials_within_their_ranges(write_study: Callable[..., Path]) -> None:
    study = load_study(write_study(SEARCH_STUDY))
    again = load_study(write_study(SEARCH_STUDY))
    assert [c.name for c in study.cells] == [f"trial_{i:03d}" for i in range(30)]
    assert [c.hash for c in study.cells] == [c.hash for c in again.cells]
    decays = [c.config.model.weight_decay for c in study.cells]
    rates = [c.config.train.optimizer.learning_rate for c in study.cells]
    assert all(1e-8 <= d <= 1e-4 for d in decays)
    assert all(0.001 <= r <= 0.01 for r in rates)
    # log-uniform: the exponents spread over the whole range, not bunched at the top
    exponents = [math.log10(d) for d in decays]
    assert min(exponents) < -7 and max(exponents) > -5
    assert {c.config.model.activation for c in study.cells} == {"relu", "tanh"}
    # the sampled values are the cells' grid point (the report's table columns)
    assert study.cells[0].grid_point["model.weight_decay"] == decays[0]


def test_search_seed_changes_the_trials(write_study: Callable[..., Path]) -> None:
    first = load_study(write_study(SEARCH_STUDY))
    other = load_study(write_study(SEARCH_STUDY.replace("seed: 7", "seed: 8")))
    assert [c.hash for c in first.cells] != [c.hash for c in other.cells]


def test_search_crosses_variants_with_the_same_trials(write_study: Callable[..., Path]) -> None:
    text = SEARCH_STUDY.replace("trials: 30", "trials: 3") + (
        "variants:\n  plain: {}\n  dropped: {model: {dropout: 0.2}}\n"
    )
    study = load_study(write_study(text))
    names = [c.name for c in study.cells]
    assert names[:3] == ["plain_trial_000", "plain_trial_001", "plain_trial_002"]
    assert names[3] == "dropped_trial_000"
    assert study.cells[0].grid_point == study.cells[3].grid_point


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("model.weight_decay: {log_uniform: [0.1, 0.01]}", "low < high"),
        ("model.weight_decay: {log_uniform: [0, 0.01]}", "positive bounds"),
        ("model.weight_decay: {uniform: [0, 1], choice: [1]}", "exactly one of"),
        ("model.weight_decy: {uniform: [0, 0.1]}", "search.space.model.weight_decy"),
    ],
)
def test_bad_search_space_is_one_line_naming_the_key(
    write_study: Callable[..., Path], space: str, message: str
) -> None:
    text = "name: s\nbase: {model: {hidden: [8]}, data: {train_size: 40}}\n"
    text += f"search:\n  trials: 2\n  space:\n    {space}\n"
    path = write_study(text)
    with pytest.raises(SpecError, match=message) as err:
        load_study(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_variant_grid_is_crossed_with_that_variant_only(write_study: Callable[..., Path]) -> None:
    study = load_study(
        write_study(
            "name: v\nbase: {model: {hidden: [8]}, data: {train_size: 40}}\n"
            "variants:\n  none: {}\n"
            "  l2: {grid: {model.weight_decay: [0.01, 0.1]}}\n"
            "  drop: {model: {dropout_style: inverted}, grid: {model.dropout: [0.1, 0.5]}}\n"
        )
    )
    names = [c.name for c in study.cells]
    assert names == [
        "none",
        "l2[weight_decay=0.01]",
        "l2[weight_decay=0.1]",
        "drop[dropout=0.1]",
        "drop[dropout=0.5]",
    ]
    dropped = study.cells[4].config.model
    assert (dropped.dropout, dropped.dropout_style, dropped.weight_decay) == (0.5, "inverted", 0.0)
    assert study.cells[4].grid_point == {"model.dropout": 0.5}


def test_empty_variant_grid_names_its_key(write_study: Callable[..., Path]) -> None:
    path = write_study(
        "name: v\nbase: {data: {train_size: 40}}\nvariants:\n  l2: {grid: {model.weight_decay: []}}\n"
    )
    with pytest.raises(SpecError, match=r"variants\.l2\.grid\.model\.weight_decay: expected"):
        load_study(path)


def test_settings_added_later_keep_the_hash_at_their_default() -> None:
    config = RunConfig()
    dumped = config.model_dump(mode="json")
    for dotted in LATE_SETTINGS:
        *sections, key = dotted.split(".")
        part = dumped
        for section in sections:
            part = part[section]
        del part[key]
    before = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:10]
    assert config.hash == before
    changed = RunConfig.model_validate({"train": {"loss": "mse"}})
    assert changed.hash != config.hash
    assert RunConfig.model_validate({"train": {"loss": "cross_entropy"}}).hash == config.hash


def test_plain_grid_without_variants_names_cells_by_their_values(
    write_study: Callable[..., Path],
) -> None:
    study = load_study(
        write_study(
            "name: g\nbase: {model: {hidden: [8]}, data: {train_size: 40}}\n"
            "grid:\n  model.activation: [relu, tanh]\n  train.loss: [cross_entropy, mse]\n"
        )
    )
    assert [c.name for c in study.cells][:2] == [
        "activation=relu,loss=cross_entropy",
        "activation=relu,loss=mse",
    ]
    # `--only` takes names holding commas
    picked = study.select(study.split_names("activation=tanh,loss=mse,activation=relu,loss=mse"))
    assert [c.name for c in picked.cells] == [
        "activation=tanh,loss=mse",
        "activation=relu,loss=mse",
    ]


@pytest.mark.parametrize(
    ("figure", "message"),
    [
        (
            "{kind: curves, metric: batch_los}",
            r"report.figures\[0\].metric: unknown metric 'batch_los' \(did you mean 'batch_loss'\?\)",
        ),
        (
            "{kind: curves, metric: gap, hue: model.activaton}",
            r"report.figures\[0\].hue: no setting 'model.activaton'",
        ),
        ("{kind: versus, x: grid, y: [final_gapp]}", r"report.figures\[0\].y: unknown metric"),
        (
            "{kind: scatter, x: model.init, y: model.weight_decay, color: val_acc}",
            r"\.color: unknown metric",
        ),
        ("{kind: histogram}", r"report.figures.0"),
        (
            "{kind: curves, metric: gap, hue: Model Init}",
            r"report.figures.0.hue: expected cell, variant, grid, n_train or a dotted setting",
        ),
    ],
)
def test_bad_report_figures_are_one_line(
    write_study: Callable[..., Path], figure: str, message: str
) -> None:
    path = write_study(
        f"name: f\nbase: {{model: {{hidden: [8]}}, data: {{train_size: 40}}}}\n"
        f"report:\n  figures:\n    - {figure}\n"
    )
    with pytest.raises(SpecError, match=message) as err:
        load_study(path)
    assert "\n" not in str(err.value)


def test_section_keys_group_the_settings_below_them(write_study: Callable[..., Path]) -> None:
    # `model.init` covers `model.init.std` of a {std: x} init
    study = load_study(
        write_study(
            "name: f\nbase: {model: {hidden: [8]}, data: {train_size: 40}}\n"
            "grid: {model.init: [{std: 0.01}, he]}\n"
            "report: {figures: [{kind: curves, metric: train_loss, hue: model.init, "
            "facet: model.init.std}]}\n"
        )
    )
    assert len(study.cells) == 2


def test_search_errors_that_name_the_cause(write_study: Callable[..., Path]) -> None:
    text = "name: s\nbase: {model: {hidden: [8]}, data: {train_size: 40}}\nsearch:\n"
    few = write_study(
        text + "  trials: 5\n  space:\n    model.activation: {choice: [relu, tanh]}\n"
    )
    with pytest.raises(SpecError, match="fewer distinct points than trials"):
        load_study(few)
    searched = write_study(
        text + "  trials: 3\n  space:\n    model.weight_decay: {uniform: [0.0, 0.1]}\n"
    )
    with pytest.raises(SpecError, match=r"--set model.weight_decay: the search draws"):
        load_study(searched, {"model.weight_decay": 0.1})


def test_rounded_draws_stay_inside_an_open_range() -> None:
    from suite.spec import Distribution
    from suite.trials import sample

    class Draw:
        """A generator whose uniform draw is fixed: 0.99996 rounds to 1.0 at 4 digits."""

        def uniform(self, low: float, high: float) -> float:
            return 0.99996

    # dropout must stay below 1: the rounded 1.0 would fail validation, the raw draw stays
    assert sample(Distribution(uniform=[0.9, 1.0]), Draw()) == 0.99996
    assert sample(Distribution(uniform=[0.0, 2.0]), Draw()) == 1.0  # inside: rounded


def test_a_variant_grid_key_must_be_a_setting(write_study: Callable[..., Path]) -> None:
    path = write_study(
        "name: v\nbase: {data: {train_size: 40}}\nvariants:\n  a: {grid: {1: [1]}}\n"
    )
    with pytest.raises(SpecError, match=r"variants\.a\.grid: 1 is not a dotted setting"):
        load_study(path)
