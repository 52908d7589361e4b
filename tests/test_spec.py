"""Study specs: the headline study, expansion, hashes, overrides, and every user mistake."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from suite import spec
from suite.cli import parse_overrides, parse_seeds
from suite.spec import SpecError
from suite.study import MissingDataWarning, Study, load_study

HEADLINE_STUDY = Path(__file__).resolve().parents[1] / "experiments" / "overfitting.yaml"
HEADLINE_CELLS = [
    "baseline",
    "weight_decay",
    "dropout",
    "batch_norm",
    "init_small",
    "init_xavier",
    "wd_dropout",
]

# A small valid study: 2 variants x (3 inits x 2 learning rates) = 12 cells.
GRID_STUDY = """\
name: grid
base: {model: {hidden: [8]}, data: {train_size: 50}}
variants:
  plain: {}
  dropped: {model: {dropout: 0.1}}
grid:
  model.init: [he, xavier, {std: 0.01}]
  train.optimizer.learning_rate: [0.1, 0.01]
seeds: 2
"""


@pytest.fixture(autouse=True)
def _bundled(bundled_only: None) -> None:
    """Every study here resolves its data to the bundled 8000-image pool."""


@pytest.fixture(scope="module")
def headline() -> Study:
    return load_study(HEADLINE_STUDY)


# --- the headline study ---------------------------------------------------------------------


def test_headline_study_expands_into_seven_named_cells(headline: Study) -> None:
    assert [c.name for c in headline.cells] == HEADLINE_CELLS
    assert [c.variant for c in headline.cells] == HEADLINE_CELLS
    assert headline.seeds == (0, 1, 2)
    assert headline.name == "overfitting"
    assert len(headline.runs()) == 21
    assert len({c.hash for c in headline.cells}) == 7


def test_headline_cells_carry_their_patches(headline: Study) -> None:
    cells = {c.name: c.config for c in headline.cells}
    base = cells["baseline"]
    assert base.data.train_size == 300 and base.data.subset == "first"
    assert base.model.hidden == [100] * 6 and base.model.init == "he"
    assert base.model.weight_decay == 0 and base.model.dropout == 0
    assert base.train.optimizer.name == "sgd" and base.train.optimizer.learning_rate == 0.01
    assert base.train.batch_size == 100 and base.train.epochs == 200
    assert cells["weight_decay"].model.weight_decay == 0.1
    assert cells["dropout"].model.dropout == 0.15
    assert cells["dropout"].model.dropout_style == "classic"
    assert cells["batch_norm"].model.batch_norm is True
    assert cells["init_small"].model.init == spec.StdInit(std=0.01)
    assert cells["init_xavier"].model.init == "xavier"
    wd_dropout = cells["wd_dropout"].model
    assert (wd_dropout.weight_decay, wd_dropout.dropout) == (0.1, 0.15)
    # a patch changes only what it names
    assert cells["weight_decay"].train == base.train and cells["weight_decay"].data == base.data


def test_headline_reference_ranges(headline: Study) -> None:
    assert headline.reference["baseline"]["final_test_accuracy"] == (0.74, 0.77)
    assert headline.reference["weight_decay"]["final_train_accuracy"] == (0.89, 0.93)


def test_hash_is_stable_across_loads(headline: Study) -> None:
    again = load_study(HEADLINE_STUDY)
    assert [c.hash for c in again.cells] == [c.hash for c in headline.cells]
    assert all(re.fullmatch(r"[0-9a-f]{10}", c.hash) for c in headline.cells)


def test_hash_depends_on_values_not_on_spelling(write_study) -> None:
    explicit = load_study(
        write_study("name: a\nbase: {train: {optimizer: {name: sgd, learning_rate: 0.01}}}\n")
    )
    defaulted = load_study(write_study("name: b\nbase: {train: {optimizer: {name: sgd}}}\n"))
    changed = load_study(
        write_study("name: c\nbase: {train: {optimizer: {name: sgd, learning_rate: 0.02}}}\n")
    )
    assert explicit.cells[0].hash == defaulted.cells[0].hash
    assert explicit.cells[0].hash != changed.cells[0].hash


# --- expansion ------------------------------------------------------------------------------


def test_variants_cross_grid(write_study) -> None:
    study = load_study(write_study(GRID_STUDY))
    assert len(study.cells) == 12
    assert study.seeds == (0, 1)
    assert len(study.runs()) == 24
    names = [c.name for c in study.cells]
    assert names[0] == "plain[init=he,learning_rate=0.1]"
    assert "dropped[init=std:0.01,learning_rate=0.01]" in names
    assert len(set(names)) == 12
    assert len({c.hash for c in study.cells}) == 12
    cell = next(c for c in study.cells if c.name == "dropped[init=xavier,learning_rate=0.1]")
    assert cell.variant == "dropped"
    assert cell.grid_point == {"model.init": "xavier", "train.optimizer.learning_rate": 0.1}
    assert cell.config.model.init == "xavier"
    assert cell.config.model.dropout == 0.1
    assert cell.config.train.optimizer.learning_rate == 0.1


def test_runs_order_cells_outer_seeds_inner(write_study) -> None:
    study = load_study(write_study(GRID_STUDY))
    runs = study.runs((5, 7))
    assert [(r.cell.name, r.seed) for r in runs[:3]] == [
        (study.cells[0].name, 5),
        (study.cells[0].name, 7),
        (study.cells[1].name, 5),
    ]


def test_study_without_variants_has_one_base_cell(write_study) -> None:
    study = load_study(write_study("name: tiny\nbase: {model: {hidden: [4]}}\n"))
    assert [c.name for c in study.cells] == ["base"]
    assert study.seeds == (0,)


def test_duplicate_cells_are_an_error(write_study) -> None:
    path = write_study("name: d\nvariants: {a: {}, b: {model: {init: he}}}\n")
    with pytest.raises(SpecError, match="same configuration"):
        load_study(path)


# --- overrides and seeds --------------------------------------------------------------------


def test_overrides_apply_to_every_cell_and_change_the_hash(headline: Study) -> None:
    overrides = parse_overrides(["train.epochs=3", "model.hidden=[10, 10]"])
    assert overrides == {"train.epochs": 3, "model.hidden": [10, 10]}
    short = load_study(HEADLINE_STUDY, overrides)
    assert [c.name for c in short.cells] == HEADLINE_CELLS
    assert all(c.config.train.epochs == 3 for c in short.cells)
    assert all(c.config.model.hidden == [10, 10] for c in short.cells)
    # the variants' own patches survive the override
    assert short.cells[1].config.model.weight_decay == 0.1
    before = {c.name: c.hash for c in headline.cells}
    assert all(c.hash != before[c.name] for c in short.cells)


def test_override_beats_a_variant() -> None:
    study = load_study(HEADLINE_STUDY, parse_overrides(["model.bn_momentum=0.5"]))
    # batch_norm's own patch says 0.9; --set has the last word
    assert {c.config.model.bn_momentum for c in study.cells} == {0.5}


def test_override_that_merges_cells_is_an_error() -> None:
    # with weight decay everywhere, baseline and weight_decay are the same configuration
    with pytest.raises(SpecError, match="baseline and weight_decay .*same configuration"):
        load_study(HEADLINE_STUDY, parse_overrides(["model.weight_decay=0.1"]))


def test_parse_overrides_reads_yaml_scalars() -> None:
    assert parse_overrides(["a.b=0.5", "c=true", "d={std: 0.01}", "e=he", "f="]) == {
        "a.b": 0.5,
        "c": True,
        "d": {"std": 0.01},
        "e": "he",
        "f": None,
    }
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_bad_override_names_the_set_key(write_study) -> None:
    path = write_study(GRID_STUDY)
    with pytest.raises(SpecError) as err:
        load_study(path, parse_overrides(["train.epoch=3"]))
    _assert_one_line(err, path, "--set train.epoch")
    assert "'epochs'" in str(err.value)
    with pytest.raises(SpecError, match="--set train.epochs: expected a whole number"):
        load_study(path, parse_overrides(["train.epochs=three"]))
    # a key missing beside the one set: the section came from --set, and so does the error
    with pytest.raises(SpecError, match=r"--set data\.label_noise\.fraction: Field required"):
        load_study(path, parse_overrides(["data.label_noise.kind=any"]))


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("0", (0,)),
        ("3", (3,)),
        ("0,4", (0, 4)),
        ("7,", (7,)),
        (" 2 , 5 ", (2, 5)),
        ("0-4", (0, 1, 2, 3, 4)),
        ("2 - 3", (2, 3)),
        ("5,0-2,1", (5, 0, 1, 2)),
        ("4-4", (4,)),
    ],
)
def test_parse_seeds(text: str, seeds: tuple[int, ...]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text", ["", ",", "x", "1,x", "-1", "1,-2", "1.5", "4-2", "0-", "0-2-4", "0-99999"]
)
def test_parse_seeds_rejects(text: str) -> None:
    with pytest.raises(SpecError, match="--seeds"):
        parse_seeds(text)


# --- select ---------------------------------------------------------------------------------


def test_select_by_name_and_hash_prefix(headline: Study) -> None:
    picked = headline.select(["dropout", "baseline"])
    assert [c.name for c in picked.cells] == ["dropout", "baseline"]
    assert picked.seeds == headline.seeds and picked.name == headline.name
    target = headline.cells[3]
    by_hash = headline.select([target.hash[:6]])
    assert [c.name for c in by_hash.cells] == [target.name]
    # duplicates collapse
    assert len(headline.select(["dropout", "dropout", target.hash]).cells) == 2


def test_select_by_variant_picks_its_grid_points(write_study) -> None:
    study = load_study(write_study(GRID_STUDY))
    picked = study.select(["dropped"])
    assert len(picked.cells) == 6
    assert all(c.variant == "dropped" for c in picked.cells)


def test_select_unknown_name_suggests(headline: Study) -> None:
    with pytest.raises(SpecError, match=r"no cell 'dropuot'.*did you mean 'dropout'"):
        headline.select(["dropuot"])


def test_select_short_token_is_not_a_hash_prefix(write_study) -> None:
    """`--only a` means the cell named a, never also whatever cell's hash starts with `a`."""
    names = "0123456789abcdef"
    text = "name: s\nvariants:\n" + "".join(
        f"  '{name}': {{model: {{hidden: [{i + 2}]}}}}\n" for i, name in enumerate(names)
    )
    study = load_study(write_study(text))
    # the case this guards against: some cell's name is the first character of another's hash
    assert any(c.hash[0] == n for c in study.cells for n in names if n != c.name)
    for cell in study.cells:
        assert [c.name for c in study.select([cell.name]).cells] == [cell.name]
    with pytest.raises(SpecError, match="no cell"):
        study.select(["g"])


# --- broken studies: one line naming the file and the key -----------------------------------


def _assert_one_line(err: pytest.ExceptionInfo[SpecError], path: Path, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        pytest.param(
            "name: t\nbase: {model: {weight_decya: 0.1}}\n",
            ["base.model.weight_decya", "unknown key", "did you mean 'weight_decay'"],
            id="unknown-key-in-base",
        ),
        pytest.param(
            "name: t\nvariants: {wd: {model: {weight_decya: 0.1}}}\n",
            ["variants.wd.model.weight_decya", "did you mean 'weight_decay'"],
            id="unknown-key-in-variant",
        ),
        pytest.param(
            "name: t\nvariant: {a: {}}\n",
            ["variant", "unknown key", "did you mean 'variants'"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            "name: t\nbase: {train: {optimizer: {name: sgd, learning_rate: -0.1}}}\n",
            ["base.train.optimizer.learning_rate", "greater than 0", "-0.1"],
            id="negative-learning-rate",
        ),
        pytest.param(
            "name: t\nvariants: {d: {model: {dropout: 1.0}}}\n",
            ["variants.d.model.dropout", "less than 1"],
            id="dropout-one",
        ),
        pytest.param(
            "name: t\nbase: {data: {train_size: 9000}}\n",
            ["data.train_size", "9000", "8000"],
            id="train-size-beyond-data",
        ),
        pytest.param(
            "name: t\nbase: {data: {train_size: 7990, val_size: 20}}\n",
            ["data.train_size", "val_size 20", "8000"],
            id="train-plus-val-beyond-data",
        ),
        pytest.param(
            "name: t\nbase: {data: {test_size: 2001}}\n",
            ["data.test_size", "2001", "2000"],
            id="test-size-beyond-data",
        ),
        pytest.param(
            "name: t\nbase: {model: {weight_decay: '0.1'}}\n",
            ["base.model.weight_decay", "expected a number", "'0.1'"],
            id="quoted-number",
        ),
        pytest.param(
            "name: t\nbase: {train: {epochs: 2.5}}\n",
            ["base.train.epochs", "whole number"],
            id="float-for-int",
        ),
        pytest.param(
            "name: t\nbase: {model: {batch_norm: 'yes'}}\n",
            ["base.model.batch_norm", "true or false"],
            id="string-for-bool",
        ),
        pytest.param(
            "name: t\nbase: {train: {optimizer: {name: sgd, momentum: 0.9}}}\n",
            ["base.train.optimizer", "momentum", "sgd"],
            id="momentum-with-sgd",
        ),
        pytest.param(
            "name: t\nbase: {train: {optimizer: {name: adamax}}}\n",
            ["base.train.optimizer.name", "adamax"],
            id="unknown-optimizer",
        ),
        pytest.param(
            "name: t\nvariants: {baseline: {}}\n"
            "reference: {baseline: {final_test_acuracy: [0.7, 0.8]}}\n",
            ["reference.baseline.final_test_acuracy", "did you mean 'final_test_accuracy'"],
            id="unknown-metric",
        ),
        pytest.param(
            "name: t\nvariants: {baseline: {}}\nreference: {baselin: {test_accuracy: [0.7, 0.8]}}\n",
            ["reference.baselin", "did you mean 'baseline'"],
            id="reference-to-unknown-cell",
        ),
        pytest.param(
            "name: t\nbase: {model: {init: {std: -1}}}\n",
            ["base.model.init", "std", "-1"],
            id="negative-std",
        ),
        pytest.param(
            "name: t\ngrid: {model.init: [he, {std: -1}]}\n",
            ["grid.model.init", "std", "-1"],
            id="negative-std-in-grid",
        ),
        pytest.param(
            "name: t\nbase: {model: {init: hee}}\n",
            ["base.model.init", "'hee'", "did you mean 'he'"],
            id="unknown-init",
        ),
        pytest.param(
            "name: t\ngrid: {model.dropout: []}\n",
            ["grid.model.dropout", "no values"],
            id="empty-grid-axis",
        ),
        pytest.param("name: t\ngrid: {}\n", ["grid", "empty"], id="empty-grid"),
        pytest.param(
            "name: t\nlog_model: fnal\n",
            ["log_model", "final, best or off", "'fnal'", "did you mean 'final'"],
            id="unknown-log-model",
        ),
        pytest.param(
            "name: t\nlog_model: true\n", ["log_model", "final, best or off"], id="log-model-true"
        ),
        pytest.param("name: t\nseeds: [1, 1]\n", ["seeds", "distinct"], id="repeated-seeds"),
        pytest.param(
            "name: t\nbase: {model: [1, 2\n", ["invalid YAML", "line 3"], id="invalid-yaml"
        ),
        pytest.param("", ["empty"], id="empty-file"),
        pytest.param("- a\n- b\n", ["mapping"], id="not-a-mapping"),
    ],
)
def test_broken_study(write_study, text: str, needles: list[str]) -> None:
    path = write_study(text)
    with pytest.raises(SpecError) as err:
        load_study(path)
    _assert_one_line(err, path, *needles)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("final", "final"), ("best", "best"), ("off", None), ("'off'", None), ("null", None)],
)
def test_log_model_is_a_study_setting_that_changes_no_hash(
    write_study: Callable[..., Path], value: str, expected: str | None
) -> None:
    plain = load_study(HEADLINE_STUDY)
    text = HEADLINE_STUDY.read_text() + f"log_model: {value}\n"
    logged = load_study(write_study(text, "overfitting.yaml"))
    assert plain.log_model is None and logged.log_model == expected
    assert [c.hash for c in logged.cells] == [c.hash for c in plain.cells]
    assert {k.log_model for k in logged.runs()} == {expected}


def test_missing_study_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as err:
        load_study(path)
    _assert_one_line(err, path, "no such study file")


def test_missing_data_path_is_a_spec_error(write_study, tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    path = write_study(f"name: t\nbase: {{data: {{path: '{missing}'}}}}\n")
    with pytest.raises(SpecError) as err:
        load_study(path)
    _assert_one_line(err, path, "data.path", str(missing))


# --- defaults -------------------------------------------------------------------------------


def test_textbook_optimizer_defaults_are_filled(write_study) -> None:
    text = "name: t\nvariants:\n" + "".join(
        f"  {name}: {{train: {{optimizer: {{name: {name}}}}}}}\n"
        for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
    )
    study = load_study(write_study(text))
    opts = {c.name: c.config.train.optimizer for c in study.cells}
    adam = opts["adam"]
    assert (adam.learning_rate, adam.beta_1, adam.beta_2) == (0.001, 0.9, 0.999)
    assert adam.epsilon == pytest.approx(1e-7)
    assert adam.momentum is None and adam.rho is None
    assert (opts["sgd"].learning_rate, opts["sgd"].momentum) == (0.01, None)
    assert (opts["momentum"].learning_rate, opts["momentum"].momentum) == (0.01, 0.9)
    assert opts["nesterov"].momentum == 0.9
    assert (opts["rmsprop"].learning_rate, opts["rmsprop"].rho) == (0.01, 0.99)
    assert opts["adagrad"].learning_rate == 0.01 and opts["adagrad"].epsilon is not None


def test_explicit_optimizer_setting_beats_default(write_study) -> None:
    study = load_study(
        write_study("name: t\nbase: {train: {optimizer: {name: adam, beta_1: 0.5}}}\n")
    )
    adam = study.cells[0].config.train.optimizer
    assert adam.beta_1 == 0.5 and adam.beta_2 == 0.999


def test_model_defaults_are_the_textbook_ones() -> None:
    model = spec.RunConfig().model
    assert model.dropout_style == "classic"
    assert (model.bn_momentum, model.bn_epsilon) == (0.9, 1e-6)
    assert model.init == "he"
    assert spec.RunConfig().train.sampling == "with_replacement"


def test_resolved_config_is_frozen(headline: Study) -> None:
    config = headline.cells[0].config
    with pytest.raises(Exception, match="frozen"):
        config.model.dropout = 0.5  # type: ignore[misc]
    flat = config.flat()
    assert flat["model.weight_decay"] == 0.0
    assert flat["train.optimizer.learning_rate"] == 0.01
    assert flat["model.hidden"] == [100] * 6


@pytest.mark.parametrize("path", sorted(HEADLINE_STUDY.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_in_experiments_loads(path: Path) -> None:
    """Everything but the data: a dataset not on this machine (Fashion-MNIST without Debian's
    package) is a warning that names the package, not a failure."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = load_study(path, missing_data="warn")
    for warning in caught:
        if issubclass(warning.category, MissingDataWarning):
            assert "fashion_mnist" in str(warning.message), warning.message
            assert "apt-get install dataset-fashion-mnist" in str(warning.message)
    assert study.cells
    assert path.read_text().startswith("#"), "a study opens with a comment saying what it studies"


def test_yaml_1_2_numbers_and_error_keys_of_overrides(write_study: Callable[..., Path]) -> None:
    study = load_study(
        write_study(
            "name: t\nbase: {train: {optimizer: {name: adam, learning_rate: 1e-3}}}\n"
            "variants: {a: {model: {weight_decay: 5e-4}}}\n"
        )
    )
    assert study.cells[0].config.train.optimizer.learning_rate == 0.001
    assert study.cells[0].config.model.weight_decay == 0.0005
    assert parse_overrides(["train.optimizer.learning_rate=1e-2"]) == {
        "train.optimizer.learning_rate": 0.01
    }
    # a key set below the one that fails is blamed on the part of the file that set it
    path = write_study("name: t\nvariants: {a: {train: {optimizer: {momentum: 0.9}}}}\n")
    with pytest.raises(SpecError, match=r"variants\.a\.train\.optimizer: momentum"):
        load_study(path)
    with pytest.raises(SpecError, match=r"--set train\.optimizer: momentum"):
        load_study(write_study("name: t\n"), parse_overrides(["train.optimizer.momentum=0.9"]))
    with pytest.raises(SpecError, match="variants: needs at least one entry"):
        load_study(write_study("name: t\nvariants: {}\n"))


def test_the_data_a_cell_resolves_to_is_part_of_its_identity(
    write_study: Callable[..., Path], shared_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same study file, once offline and once with full MNIST found: different cells, so
    runs on the bundled subset never count as done for full MNIST."""
    path = write_study("name: t\nbase: {data: {train_size: 10}}\n")
    offline = load_study(path).cells[0]
    monkeypatch.setenv("SUITE_MNIST_PATH", str(shared_mnist))
    full = load_study(path).cells[0]

    assert offline.config == full.config
    assert offline.data_source == "bundled-subset"
    assert full.data_source == f"file:{shared_mnist.resolve()}"
    assert offline.hash != full.hash
    assert full.hash == load_study(path).cells[0].hash  # stable
