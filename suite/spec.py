"""Study specs: load a study YAML, validate it strictly, expand it into cells and runs.

A study is `base` (a full run configuration with defaults), `variants` (named patches on base),
an optional `grid` (dotted keys crossed with the variants) and `seeds`. Every cell is a frozen,
fully resolved `RunConfig`; its identity is a short hash of that configuration, so the same
configuration is the same cell wherever it appears. Every user mistake becomes a `SpecError`
whose one-line message names the file and the key path.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from suite.metrics import CURVE_METRICS, REFERENCE_METRICS, RUN_METRICS

KERAS_INITIALIZERS = (
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "variance_scaling",
    "zeros",
    "ones",
)

# The textbook's optimizer defaults (reference/book-ch06.md); Keras' own defaults differ.
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 0.01},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9},
    "nesterov": {"learning_rate": 0.01, "momentum": 0.9},
    "adagrad": {"learning_rate": 0.01, "epsilon": 1e-7},
    "rmsprop": {"learning_rate": 0.01, "rho": 0.99, "epsilon": 1e-7},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
}


# `--only` accepts a cell hash prefix of at least this many characters.
MIN_HASH_PREFIX = 4


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` is a string; studies are written in YAML 1.2 style,
    where it is a number (learning rates and weight decays are written this way)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML the way study files are read (YAML 1.2 numbers)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class SpecError(ValueError):
    """A study file or override is invalid; the message is one line naming file and key."""


class Strict(BaseModel):
    """Frozen, no unknown keys, no coercion: "0.1" is not a number and 1.5 is not an int."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class DataSpec(Strict):
    """Which images a run trains and tests on."""

    dataset: Literal["mnist"] = "mnist"
    path: str | None = None  # a Keras mnist.npz; else SUITE_MNIST_PATH, Keras' cache, bundled
    train_size: PositiveInt | None = None  # None: the whole training pool
    subset: Literal["first", "random"] = "first"  # first N (textbook) or stratified seeded draw
    val_size: Annotated[int, Field(ge=0)] = 0  # held out of the selected training images
    test_size: PositiveInt | None = None  # first N test images; None: the whole test set


class StdInit(Strict):
    """A plain normal initialisation with a fixed standard deviation."""

    std: PositiveFloat


InitSpec = StdInit | str


class ModelSpec(Strict):
    """The MLP: Dense -> [BatchNorm] -> activation -> [Dropout] per hidden layer, logits out."""

    hidden: list[PositiveInt] = Field(default_factory=lambda: [100] * 6, min_length=1)
    activation: Literal["relu", "leaky_relu", "elu", "sigmoid", "tanh"] = "relu"
    init: InitSpec = "he"  # he/xavier: the textbook's untruncated N(0,1)*sqrt(2|1 / fan_in)
    weight_decay: NonNegativeFloat = 0.0  # textbook: loss += 0.5*lambda*sum(W^2), every kernel
    l1: NonNegativeFloat = 0.0  # loss += l1*sum(|W|), every kernel
    dropout: Probability = 0.0
    dropout_style: Literal["classic", "inverted"] = "classic"  # classic: textbook; inverted: Keras
    batch_norm: bool = False
    bn_momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9  # textbook; Keras uses 0.99
    bn_epsilon: PositiveFloat = 1e-6  # textbook; Keras uses 1e-3

    @field_validator("init", mode="before")
    @classmethod
    def _known_init(cls, value: Any) -> Any:
        if isinstance(value, dict):
            std = value.get("std")
            if set(value) != {"std"} or isinstance(std, bool) or not isinstance(std, int | float):
                raise ValueError(f"expected {{std: <number>}}, got {value!r}")
            if not std > 0:
                raise ValueError(f"std must be greater than 0, got {std!r}")
            return StdInit(std=float(std))
        if not isinstance(value, str | StdInit):
            raise ValueError(
                f"expected he, xavier, a Keras initializer name or {{std: x}}, got {value!r}"
            )
        if isinstance(value, str) and value not in ("he", "xavier", *KERAS_INITIALIZERS):
            hint = _did_you_mean(value, ("he", "xavier", *KERAS_INITIALIZERS))
            raise ValueError(f"unknown init {value!r}{hint}; or give {{std: 0.01}}")
        return value


class OptimizerSpec(Strict):
    """An optimizer by name; unset hyperparameters take the textbook's defaults."""

    name: Literal["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"] = "sgd"
    learning_rate: PositiveFloat | None = None
    momentum: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    rho: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    beta_1: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    beta_2: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    epsilon: PositiveFloat | None = None

    @model_validator(mode="after")
    def _fill_defaults(self) -> OptimizerSpec:
        defaults = OPTIMIZER_DEFAULTS[self.name]
        for key in ("momentum", "rho", "beta_1", "beta_2", "epsilon"):
            if getattr(self, key) is not None and key not in defaults:
                raise ValueError(f"{key}: not a setting of the {self.name} optimizer")
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        return self


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Updates per epoch when `train.steps_per_epoch` is unset: the textbook's
    max(n / batch, 1), rounded up for uneven sizes."""
    return max(math.ceil(n / batch_size), 1)


class TrainSpec(Strict):
    """How a run trains: optimizer, minibatches, length."""

    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: PositiveInt = 100
    epochs: PositiveInt = 200
    # with_replacement: the textbook's np.random.choice draws; shuffle: Keras-style epoch passes
    sampling: Literal["with_replacement", "shuffle"] = "with_replacement"
    # updates between two evaluations; None: the textbook's epoch, ceil(train_size / batch_size).
    # Iteration-based studies (2000 updates on the whole pool) evaluate every N updates instead.
    steps_per_epoch: PositiveInt | None = None
    # cross_entropy: softmax cross-entropy; mse: 0.5 * sum((softmax - one_hot)^2), batch mean
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    # also log every update's minibatch loss (`batch_loss`, step = update from 1)
    log_batch_loss: bool = False
    # also log per-layer activation histograms (`activations.json`): the textbook's probe
    # (1000 standard-normal inputs through 5 layers of 100) and the MNIST network's hidden
    # layers on 1000 test images, at initialisation and after training
    log_activations: bool = False


class RunConfig(Strict):
    """One fully resolved configuration: what a cell is."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    def flat(self) -> dict[str, Any]:
        """Dotted-key params, as logged to MLflow."""
        return flatten(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def identity(self) -> dict[str, Any]:
        """What the hash covers: every setting, except settings added since the first release
        while they keep their default, so adding a setting never re-keys the runs a store
        already holds."""
        dumped = self.model_dump(mode="json")
        for dotted, default in LATE_SETTINGS.items():
            section, key = dotted.split(".")
            if dumped[section].get(key, default) == default:
                dumped[section].pop(key, None)
        return dumped

    @property
    def hash(self) -> str:
        """A stable short hash of the resolved configuration: the cell's identity."""
        canonical = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]


# settings added after runs were first stored, with their defaults (see RunConfig.identity)
LATE_SETTINGS: dict[str, Any] = {
    "train.steps_per_epoch": None,
    "train.loss": "cross_entropy",
    "train.log_batch_loss": False,
    "train.log_activations": False,
}


Range = Annotated[list[float], Field(min_length=2, max_length=2)]

# the per-epoch views a report can draw (`report.metrics`; see suite.report.figures.VIEWS)
ReportView = Literal["accuracy", "loss", "gap", "weight_norm", "reg_loss", "validation"]
# what a report may rank cells by (`report.sort`); final_gap ranks the smallest first
SortMetric = Literal[
    "final_test_accuracy",
    "final_train_accuracy",
    "final_val_accuracy",
    "best_test_accuracy",
    "best_val_accuracy",
    "final_gap",
    "test_f1_macro",
]
# a figure's grouping keys: `cell`, `variant`, `n_train` (the images a run trained on), `grid`
# (the cell's own grid value) or a dotted setting such as `model.init`
GROUP_NAMES = ("cell", "variant", "grid", "n_train")
GROUP_FIELDS = ("hue", "style", "facet", "x", "y")  # the figure fields that hold one


def _group_key(value: str) -> str:
    if value in GROUP_NAMES or re.fullmatch(r"[a-z_0-9]+(\.[a-z_0-9]+)+", value):
        return value
    raise ValueError(
        f"expected cell, variant, grid, n_train or a dotted setting like model.init, got {value!r}"
    )


GroupKey = Annotated[str, AfterValidator(_group_key)]


def _default_views() -> list[ReportView]:
    return ["accuracy", "loss", "gap", "weight_norm"]


class CurvesFigure(Strict):
    """Mean curves of one per-epoch metric (or `batch_loss`, per update) for every cell, one
    line per cell: colour by `hue`, line style by `style`, one facet per value of `facet`."""

    kind: Literal["curves"]
    metric: str
    hue: GroupKey = "cell"
    style: GroupKey | None = None
    facet: GroupKey | None = None
    smooth: PositiveInt = 1  # centred moving average over this many points
    log_y: bool = False
    columns: Annotated[int, Field(ge=1, le=8)] = 4
    title: str | None = None


class VersusFigure(Strict):
    """Final metrics (one facet each) against a setting: mean and 95% interval per cell,
    cells of one `hue` joined by a line. `x: grid` is the cell's own grid value; cells
    without one (a shared reference) are drawn as a horizontal line."""

    kind: Literal["versus"]
    x: GroupKey
    y: list[str] = Field(min_length=1)
    hue: GroupKey = "variant"
    log_x: bool = False
    title: str | None = None


class ScatterFigure(Strict):
    """One point per run at two settings, coloured by a final metric (a search's map)."""

    kind: Literal["scatter"]
    x: GroupKey
    y: GroupKey
    color: str
    log_x: bool = False
    log_y: bool = False
    title: str | None = None


class ActivationsFigure(Strict):
    """Per-layer activation histograms (runs with `train.log_activations`): the textbook's
    probe, and the MNIST network at initialisation and after training."""

    kind: Literal["activations"]


class ConfusionFigure(Strict):
    """Test-set confusion matrices per cell, summed over seeds, rows normalised."""

    kind: Literal["confusion"]
    top: PositiveInt | None = None  # the best N cells by `report.sort`; None: every cell


FIGURE_KINDS = ("curves", "versus", "scatter", "activations", "confusion")
FigureSpec = Annotated[
    CurvesFigure | VersusFigure | ScatterFigure | ActivationsFigure | ConfusionFigure,
    Field(discriminator="kind"),
]


class ReportSpec(Strict):
    """A study's `report:` block: what its report compares and shows."""

    baseline: str | None = None  # the cell (or variant) others are compared with
    versus_baseline: bool = True  # the versus-baseline section (off for a search)
    metrics: list[ReportView] = Field(default_factory=_default_views)
    columns: Annotated[int, Field(ge=1, le=8)] = 4  # facets per row in the per-cell figures
    sort: SortMetric = "final_test_accuracy"  # the table's order, best first
    top: PositiveInt | None = None  # per-cell figures show the best N cells only
    figures: list[FigureSpec] = Field(default_factory=list)


class Distribution(Strict):
    """One search dimension: exactly one of `log_uniform: [lo, hi]` (10^U(log lo, log hi)),
    `uniform: [lo, hi]`, or `choice: [a, b, ...]`."""

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

    def sample(self, rng: Any) -> Any:
        if self.choice is not None:
            return copy.deepcopy(self.choice[int(rng.integers(len(self.choice)))])
        if self.log_uniform is not None:
            lo, hi = self.log_uniform
            return _round(10 ** rng.uniform(math.log10(lo), math.log10(hi)), lo, hi)
        assert self.uniform is not None
        lo, hi = self.uniform
        return _round(rng.uniform(lo, hi), lo, hi)


def _round(value: float, lo: float, hi: float) -> float:
    """Four significant digits (readable params and names, far finer than a search needs),
    unless rounding would leave [lo, hi): a draw stays inside its range."""
    rounded = float(f"{value:.4g}")
    return rounded if lo <= rounded < hi else value


class SearchSpec(Strict):
    """A study's `search:` block: `trials` random configurations drawn from `space` with
    `seed`; each trial is a cell (crossed with the variants and the grid)."""

    trials: PositiveInt
    seed: Annotated[int, Field(ge=0)] = 0
    space: dict[str, Distribution] = Field(min_length=1)

    def points(self) -> list[dict[str, Any]]:
        """The trials' settings, the same for the same block on every machine."""
        import numpy as np

        rng = np.random.default_rng(self.seed)
        return [
            {key: dist.sample(rng) for key, dist in self.space.items()} for _ in range(self.trials)
        ]


def _single_variant() -> dict[str, dict[str, Any] | None]:
    """A study without `variants:` has one cell, its base."""
    return {"base": {}}


class StudyFile(Strict):
    """The top level of a study YAML."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any] | None] = Field(
        default_factory=_single_variant, min_length=1
    )
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[Annotated[int, Field(ge=0)]] | PositiveInt = Field(default_factory=lambda: [0])
    reference: dict[str, dict[str, Range]] = Field(default_factory=dict)
    report: ReportSpec = Field(default_factory=ReportSpec)
    search: SearchSpec | None = None


@dataclass(frozen=True)
class Cell:
    """A resolved configuration with its name (variant plus grid point) and hash."""

    name: str
    variant: str
    config: RunConfig
    grid_point: dict[str, Any] = field(default_factory=dict)
    data_source: str = ""  # which data `dataset: mnist` resolved to (see suite.data)

    @functools.cached_property
    def hash(self) -> str:
        """The cell's identity: its resolved configuration and the data it resolved to, so
        runs on the bundled subset never count as done once full MNIST is found."""
        if not self.data_source:
            return self.config.hash
        canonical = json.dumps(
            {"config": self.config.identity(), "data_source": self.data_source},
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class RunKey:
    """One run: a cell trained with one seed."""

    cell: Cell
    seed: int


@dataclass(frozen=True)
class Study:
    """A validated, expanded study."""

    name: str
    description: str
    path: Path | None
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    reference: dict[str, dict[str, tuple[float, float]]]
    report: ReportSpec = field(default_factory=ReportSpec)

    def runs(self, seeds: tuple[int, ...] | None = None) -> list[RunKey]:
        """Every (cell, seed), cells in order, seeds inner."""
        return [RunKey(c, s) for c in self.cells for s in (seeds or self.seeds)]

    def split_names(self, text: str) -> list[str]:
        """`--only a,b`: comma-separated cells, where a cell name may itself hold commas
        (`dropped[init=he,learning_rate=0.1]`): the longest run of parts that names a cell
        or variant is one token."""
        known = {c.name for c in self.cells} | {c.variant for c in self.cells}
        parts = [p.strip() for p in text.split(",")]
        tokens, i = [], 0
        while i < len(parts):
            j = next((j for j in range(len(parts), i, -1) if ",".join(parts[i:j]) in known), i + 1)
            tokens.append(",".join(parts[i:j]))
            i = j
        return [t for t in tokens if t]

    def select(self, only: list[str]) -> Study:
        """Keep the cells named (by name, variant, or a hash prefix of 4+ characters)."""
        wanted: list[Cell] = []
        for token in only:
            hits = [c for c in self.cells if token in (c.name, c.variant)]
            if not hits and len(token) >= MIN_HASH_PREFIX:
                # a name wins over a hash prefix, and a short token ("a", "b") is never a hash
                hits = [c for c in self.cells if c.hash.startswith(token)]
            if not hits:
                names = [c.name for c in self.cells]
                raise SpecError(f"--only: no cell {token!r}{_did_you_mean(token, names)}")
            wanted.extend(h for h in hits if h not in wanted)
        return dataclasses.replace(self, cells=tuple(wanted))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and leaves stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds 0` (seed 0), `--seeds 0,1,2` (a list), `--seeds 0-4` (a range, both ends
    included); ranges and single seeds mix: `0-2,7`. Order kept, repeats dropped."""
    usage = f"--seeds: expected a seed, a list or a range (0 | 0,1,2 | 0-4), got {text!r}"
    seeds: dict[int, None] = {}  # ordered, no repeats
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise SpecError(usage)
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise SpecError(f"--seeds: the range {part!r} ends before it starts")
        if last - first >= 10_000:
            raise SpecError(f"--seeds: the range {part!r} holds over 10,000 seeds")
        seeds.update(dict.fromkeys(range(first, last + 1)))
    if not seeds:
        raise SpecError(usage)
    return tuple(seeds)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set train.epochs=3` -> {"train.epochs": 3}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            out[key.strip()] = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError(f"--set {key}: value {raw!r} is not a YAML scalar") from None
    return out


def load_study(
    path: str | Path, overrides: dict[str, Any] | None = None, check_data: bool = True
) -> Study:
    """Load, validate and expand a study file.

    Args:
        path: the study YAML.
        overrides: dotted keys applied to every resolved cell (`--set`).
        check_data: check sizes against the data the cells would use (loads it); the report,
            which reads runs instead of data, turns this off.

    Raises:
        SpecError: one line naming the file and key path of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such study file")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    return build_study(raw, path, overrides or {}, check_data)


def build_study(
    raw: Any, path: Path | None, overrides: dict[str, Any], check_data: bool = True
) -> Study:
    """Validate a parsed study document and expand it into cells (see `load_study`)."""
    where = str(path) if path else "<study>"
    if raw is None:
        raise SpecError(f"{where}: the file is empty; a study needs at least `name:`")
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a study is a mapping of keys (name, base, variants, ...)")
    top = _validate(StudyFile, raw, where, "")
    if not top.grid and "grid" in raw:
        raise SpecError(f"{where}: grid: is empty; remove it or give it keys")
    for key, values in top.grid.items():
        if not values:
            raise SpecError(f"{where}: grid.{key}: has no values")
    _validate(RunConfig, top.base, where, "base.")

    cells: list[Cell] = []
    grid_points = _product(top.grid)
    trials: list[dict[str, Any] | None] = list(top.search.points()) if top.search else [None]
    searched = set(top.search.space) if top.search else set()
    for key in overrides:
        if key in searched:
            raise SpecError(
                f"{where}: --set {key}: the search draws this setting; remove it from "
                "search.space or from --set"
            )
    implicit = "variants" not in raw  # a search without variants names its cells trial_NNN
    for variant, patch in top.variants.items():
        patch = dict(patch or {})
        own_grid = patch.pop("grid", None)
        own_points = _variant_grid(own_grid, where, variant)
        for point, own, (number, trial) in itertools.product(
            grid_points, own_points, enumerate(trials)
        ):
            merged = _merge(top.base, patch)
            origin = {k: f"variants.{variant}." for k in flatten(patch)}
            settings = {**point, **own}
            for key, value in point.items():
                _set_dotted(merged, key, value, where, f"grid.{key}")
                origin[key] = "grid."
            for key, value in own.items():
                _set_dotted(merged, key, value, where, f"variants.{variant}.grid.{key}")
                origin[key] = f"variants.{variant}.grid."
            for key, value in (trial or {}).items():
                _set_dotted(merged, key, value, where, f"search.space.{key}")
                origin[key] = "search.space."
            for key, value in overrides.items():
                _set_dotted(merged, key, value, where, f"--set {key}")
                origin[key] = "--set "
            config = _validate(RunConfig, merged, where, origin)
            name = variant + _grid_label(settings)
            if trial is not None:
                name = f"trial_{number:03d}" if implicit else f"{variant}_trial_{number:03d}"
                name += _grid_label(settings)
            elif implicit and settings:
                name = _grid_label(settings)[1:-1]  # a plain grid: `activation=relu,init=he`
            source = _data_source(name, config.data, where, check_data)
            cells.append(
                Cell(name, variant, config, {**settings, **(trial or {})}, data_source=source)
            )
    seen: dict[str, str] = {}
    for cell in cells:
        if cell.hash in seen and searched:
            raise SpecError(
                f"{where}: search: {cell.name} repeats {seen[cell.hash]}; the space has fewer "
                "distinct points than trials (lower search.trials or widen search.space)"
            )
        if cell.hash in seen:
            raise SpecError(
                f"{where}: cells {seen[cell.hash]} and {cell.name} resolve to the same "
                "configuration; remove one"
            )
        seen[cell.hash] = cell.name

    names = [c.name for c in cells]
    for cell_name, metrics in top.reference.items():
        if cell_name not in names and cell_name not in top.variants:
            raise SpecError(
                f"{where}: reference.{cell_name}: no such cell{_did_you_mean(cell_name, names)}"
            )
        for metric, (lo, hi) in metrics.items():
            if metric not in REFERENCE_METRICS:
                hint = _did_you_mean(metric, REFERENCE_METRICS)
                raise SpecError(f"{where}: reference.{cell_name}.{metric}: unknown metric{hint}")
            if lo > hi:
                raise SpecError(f"{where}: reference.{cell_name}.{metric}: range [{lo}, {hi}]")

    seeds = tuple(range(top.seeds)) if isinstance(top.seeds, int) else tuple(top.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpecError(f"{where}: seeds: expected distinct seeds, got {list(seeds)}")
    reference = {
        cell: {m: (float(r[0]), float(r[1])) for m, r in metrics.items()}
        for cell, metrics in top.reference.items()
    }
    baseline = top.report.baseline
    if baseline is not None and baseline not in names and baseline not in top.variants:
        raise SpecError(
            f"{where}: report.baseline: no such cell {baseline!r}{_did_you_mean(baseline, names)}"
        )
    _check_figures(top.report, cells, where)
    return Study(top.name, top.description, path, tuple(cells), seeds, reference, top.report)


def _check_figures(report: ReportSpec, cells: list[Cell], where: str) -> None:
    """Every figure names metrics that exist and settings the cells have."""
    settings = {key for cell in cells for key in cell.config.flat()}
    # a section key groups by what is below it: `model.init` covers `model.init.std`
    settings |= {key.rsplit(".", n)[0] for key in settings for n in range(1, key.count("."))}
    for index, figure in enumerate(report.figures):
        label = f"{where}: report.figures[{index}]"
        metrics: list[tuple[str, str, tuple[str, ...]]] = []
        if isinstance(figure, CurvesFigure):
            metrics.append(("metric", figure.metric, CURVE_METRICS))
        if isinstance(figure, VersusFigure):
            metrics += [("y", m, RUN_METRICS) for m in figure.y]
        if isinstance(figure, ScatterFigure):
            metrics.append(("color", figure.color, RUN_METRICS))
        for key, metric, known in metrics:
            if metric not in known:
                raise SpecError(
                    f"{label}.{key}: unknown metric {metric!r}{_did_you_mean(metric, known)}"
                )
        for key in GROUP_FIELDS:
            value = getattr(figure, key, None)
            if not isinstance(value, str) or value in GROUP_NAMES:
                continue
            if value not in settings:
                raise SpecError(
                    f"{label}.{key}: no setting {value!r}{_did_you_mean(value, settings)}"
                )


def _product(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values, as dotted-key settings ([{}] for no grid)."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _variant_grid(grid: Any, where: str, variant: str) -> list[dict[str, Any]]:
    """A variant's own `grid:` (crossed with the study's), checked like the study's."""
    if grid is None:
        return [{}]
    label = f"variants.{variant}.grid"
    if not isinstance(grid, dict) or not grid:
        raise SpecError(f"{where}: {label}: expected a mapping of dotted keys to value lists")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise SpecError(f"{where}: {label}: {key!r} is not a dotted setting like model.dropout")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: {label}.{key}: expected a non-empty list of values")
    return _product(grid)


def _data_source(name: str, spec: DataSpec, where: str, check_data: bool) -> str:
    """The `data_source` label a cell's runs use; with `check_data`, its sizes are checked too.

    Without `check_data` (the report) a source that cannot be resolved here is left unknown.
    """
    from suite import data

    try:
        if check_data:
            return data.check_sizes(spec.path, spec.train_size, spec.val_size, spec.test_size).label
        return data.resolve_source(spec.path).label
    except data.DataError as err:
        if check_data:
            raise SpecError(f"{where}: cell {name}: {err}") from None
        return ""


def _grid_label(point: dict[str, Any]) -> str:
    if not point:
        return ""
    parts = [f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in point.items()]
    return "[" + ",".join(parts) + "]"


def short_value(value: Any) -> str:
    """A setting's value in a cell name or table: `0.01`, `std:0.01`, `all` for null."""
    if value is None:
        return "all"  # a grid value of null: the setting's default, e.g. the whole pool
    if isinstance(value, dict):
        return ",".join(f"{k}:{short_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `patch` over `base` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, where: str, label: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"{where}: {label}: {part} is not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _validate(model: type[Any], raw: Any, where: str, origin: str | dict[str, str]) -> Any:
    """Validate `raw` against `model`; turn the first error into a one-line SpecError.

    `origin` says where a key came from: a fixed prefix (`base.`) or, for a merged cell, a map
    from dotted key to the prefix of the part of the file that set it.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = [str(p) for p in first["loc"] if not _is_union_tag(p)]
        # a figure's kind is the union's tag: `report.figures.0.hue`, not `figures.0.curves.hue`
        loc = [
            p for i, p in enumerate(loc) if not (i and loc[i - 1].isdigit() and p in FIGURE_KINDS)
        ]
        dotted = ".".join(loc)
        if isinstance(origin, str):
            prefix = origin
        else:
            # the part of the file that set this key, a key below it, or a key above it
            prefix = next(
                (
                    origin[k]
                    for k in origin
                    if dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".")
                ),
                "base.",
            )
        key = (prefix if not prefix.startswith("--set") else "") + dotted
        message = _explain(first, model, loc)
        label = f"--set {dotted}" if prefix.startswith("--set") else key
        raise SpecError(f"{where}: {label or '(top level)'}: {message}") from None


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member's name to the location: "init.StdInit.std", "str"
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none")
        or part[:1].isupper()
        or part.startswith(("literal[", "constrained-", "function-", "list["))
    )


def _explain(error: Any, model: type[Any], loc: list[str]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        options = list(parent.model_fields) if parent else []
        return f"unknown key{_did_you_mean(loc[-1], options)}" + (
            f" (valid: {', '.join(options)})" if options else ""
        )
    if loc == ["seeds"]:
        return f"expected a list of seeds like [0, 1, 2] or a count N >= 1, got {value!r}"
    if kind == "too_short":
        return "needs at least one entry"
    msg = str(error["msg"])
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {value!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {value!r}"
    if kind == "literal_error":
        return msg.replace("Input should be", "expected") + f", got {value!r}"
    msg = msg.replace("Input should be", "must be")
    if not isinstance(value, dict | list) and "got" not in msg and repr(value) not in msg:
        msg += f" (got {value!r})"
    return msg


def _model_at(model: type[Any], loc: list[str]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = info.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_init(init: InitSpec) -> str:
    """A short text for tables: `he`, `std=0.01`, `glorot_uniform`."""
    return f"std={init.std:g}" if isinstance(init, StdInit) else str(init)
