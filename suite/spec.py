"""Study files: the run schema, reading a study YAML, and one-line errors for every mistake.

A study is `base` (a full run configuration with defaults), `variants` (named patches on base),
an optional `grid` (dotted keys crossed with the variants), an optional `search` and `seeds`,
and settings of the study as a whole (`report`, `log_model`).
Every cell is a frozen, fully resolved `RunConfig`; its identity is a short hash of that
configuration, so the same configuration is the same cell wherever it appears. Every user
mistake becomes a `SpecError` whose one-line message names the file and the key path.

Owns: the pydantic schema of a run (`RunConfig` and its sections) and of a study file
(`StudyFile`; its `search:` block's schema is `suite.schema_search`, a run's `data:`
section's `suite.schema_data`, its `train.optimizer`'s `suite.schema_optimizer`), reading
YAML the way study files are written (`parse_yaml`, `read_study_file`), turning pydantic's errors into `SpecError` (`validate`), and
the small helpers the schema's users share (`flatten`, `short_value`, `describe_init`,
`steps_per_epoch`, `did_you_mean`). The `report:` block's schema is `suite.report.figure_spec`.
Must not touch: expanding a study into cells, search draws and data (`suite.study`), the
command line (`suite.cli`), training or the tracking store. It imports pydantic, PyYAML and the
schema modules only: `overfit validate` stays light.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from suite.report.figure_spec import FIGURE_KINDS, ReportSpec
from suite.schema_base import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
    did_you_mean,
    off_or_choice,
)
from suite.schema_cures import AugmentSpec, EarlyStopping
from suite.schema_data import DataSpec, LabelNoise
from suite.schema_optimizer import OPTIMIZER_DEFAULTS, OptimizerSpec
from suite.schema_search import Distribution, SearchSpec

__all__ = [
    "KERAS_INITIALIZERS",
    "LATE_SETTINGS",
    "LOG_MODEL",
    "OPTIMIZER_DEFAULTS",
    "DataSpec",
    "Distribution",
    "AugmentSpec",
    "ConvLayer",
    "EarlyStopping",
    "LabelNoise",
    "ModelSpec",
    "OptimizerSpec",
    "RunConfig",
    "SearchSpec",
    "SpecError",
    "StdInit",
    "Strict",
    "StudyFile",
    "TrainSpec",
    "describe_init",
    "did_you_mean",
    "flatten",
    "parse_yaml",
    "read_study_file",
    "short_value",
    "steps_per_epoch",
    "validate",
]

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


def read_study_file(path: Path) -> Any:
    """A study file's parsed YAML; a missing file or invalid YAML is a one-line SpecError."""
    if not path.is_file():
        raise SpecError(f"{path}: no such study file")
    try:
        return parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None


class StdInit(Strict):
    """A plain normal initialisation with a fixed standard deviation."""

    std: PositiveFloat


InitSpec = StdInit | str


class ConvLayer(Strict):
    """One convolution of a `cnn`: `filters` maps of `kernel` x `kernel`, `stride`, no padding,
    then (after its activation) a `pool` x `pool` max pool of stride `pool` (1: none)."""

    filters: PositiveInt
    kernel: PositiveInt
    stride: PositiveInt = 1
    pool: PositiveInt = 1


# what a builder decides itself: given beside `model.builder`, they are an error
BUILDER_OWNS = ("kind", "conv", "hidden", "batch_norm", "dropout", "dropout_style", "init")
# the textbook's chapter-7 SimpleConvNet: conv 30 x 5x5 stride 1, ReLU, 2x2 max pool, dense 100
SIMPLE_CONV = [{"filters": 30, "kernel": 5, "stride": 1, "pool": 2}]
SIMPLE_CONV_HIDDEN = [100]


class ModelSpec(Strict):
    """The network: `mlp`, Dense -> [BatchNorm] -> activation -> [Dropout] per hidden layer,
    logits out; `cnn`, the same after a stack of Conv -> [BatchNorm] -> activation -> [MaxPool]
    -> [Dropout] (`conv`; without one, the textbook's SimpleConvNet and its dense 100)."""

    kind: Literal["mlp", "cnn"] = "mlp"
    conv: list[ConvLayer] = Field(default_factory=list)  # cnn only
    # "module:function", a Keras model of one's own (see suite.builders): the module is found
    # beside the study file, then on sys.path; the architecture keys below are then its own
    builder: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = None
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
    # Keras' MaxNorm(max_norm) on every kernel after each update: each unit's incoming weight
    # vector (a conv filter's whole kernel) is scaled back to this L2 norm when longer
    max_norm: PositiveFloat | None = None
    # every kernel and bias times this after its initializer (Omnigrok's `init_scale`, which
    # multiplies all parameters; batch norm's own are left as they are); null: off
    init_scale: PositiveFloat | None = None

    @model_validator(mode="before")
    @classmethod
    def _simple_conv(cls, value: Any) -> Any:
        """A `cnn` given no `conv` (and no `hidden`) is the textbook's SimpleConvNet."""
        if isinstance(value, dict) and value.get("kind") == "cnn":
            value = dict(value)
            if not value.get("conv"):
                value["conv"] = SIMPLE_CONV
                value.setdefault("hidden", SIMPLE_CONV_HIDDEN)
        return value

    @model_validator(mode="after")
    def _conv_for_cnn(self) -> ModelSpec:
        if self.builder is not None:
            given = [key for key in BUILDER_OWNS if key in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{given[0]}: an architecture key beside model.builder, which builds the "
                    "whole network; remove it (weight_decay and l1 still apply)"
                )
        if self.conv and self.kind != "cnn":
            raise ValueError("conv: only with kind: cnn (the mlp has no convolutions)")
        return self

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
        if isinstance(value, str) and value not in ("he", "xavier", "pytorch", *KERAS_INITIALIZERS):
            hint = did_you_mean(value, ("he", "xavier", "pytorch", *KERAS_INITIALIZERS))
            raise ValueError(f"unknown init {value!r}{hint}; or give {{std: 0.01}}")
        return value


def conv_input_shape(image_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(H, W, C) of an image input; ValueError for flat feature vectors."""
    if image_shape is None or len(image_shape) not in (2, 3):
        raise ValueError(
            f"kind: a cnn needs images, (H, W) or (H, W, C); the data's inputs have shape "
            f"{tuple(image_shape or ())}: flat feature vectors"
        )
    return (*image_shape, 1) if len(image_shape) == 2 else image_shape  # type: ignore[return-value]


def conv_output_sizes(spec: ModelSpec, image_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Each conv layer's output height and width (after its pool); ValueError when the stack
    shrinks the image below 1x1, naming the layer."""
    height, width, _ = conv_input_shape(image_shape)
    out = []
    for i, layer in enumerate(spec.conv):
        height = (height - layer.kernel) // layer.stride + 1
        width = (width - layer.kernel) // layer.stride + 1
        height, width = height // layer.pool, width // layer.pool
        if height < 1 or width < 1:
            raise ValueError(
                f"conv[{i}]: the stack shrinks the {image_shape[0]}x{image_shape[1]} image below 1x1"
            )
        out.append((height, width))
    return out


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
    # cross_entropy: softmax cross-entropy; mse: 0.5 * sum((softmax - one_hot)^2), batch mean;
    # mse_logits: mean over batch and classes of (output - one_hot)^2, no softmax (Omnigrok's)
    loss: Literal["cross_entropy", "mse", "mse_logits"] = "cross_entropy"
    # also log every update's minibatch loss (`batch_loss`, step = update from 1)
    log_batch_loss: bool = False
    # also log per-layer activation histograms (`activations.json`): the textbook's probe
    # (1000 standard-normal inputs through 5 layers of 100) and the MNIST network's hidden
    # layers on 1000 test images, at initialisation and after training
    log_activations: bool = False
    early_stopping: EarlyStopping | None = None
    augment: AugmentSpec | None = None
    # Keras' categorical cross-entropy with smoothed targets, y * (1 - s) + s / K, as the training
    # objective; the logged losses stay the plain cross-entropy (see suite.metrics)
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # evaluate (and log, and early-stop on) every Nth epoch and the last one only: the updates
    # of a long run cost far less than evaluating the whole batch after each of its epochs
    eval_every: PositiveInt = 1

    @model_validator(mode="after")
    def _smoothing_needs_cross_entropy(self) -> TrainSpec:
        if self.label_smoothing and self.loss != "cross_entropy":
            raise ValueError("label_smoothing: applies to the cross_entropy loss only")
        return self


class RunConfig(Strict):
    """One fully resolved configuration: what a cell is."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @model_validator(mode="after")
    def _stopping_needs_validation(self) -> RunConfig:
        if self.train.early_stopping is not None and not self.data.val_size:
            raise ValueError(
                "train.early_stopping: needs a validation split to monitor: set data.val_size "
                "(with data.val_from: pool the training images stay the same)"
            )
        return self

    @model_validator(mode="after")
    def _evaluations_fit(self) -> RunConfig:
        train = self.train
        every, stopping = train.eval_every, train.early_stopping
        if every > train.epochs:
            raise ValueError(
                f"train.eval_every: {every} is more than train.epochs ({train.epochs}); set "
                f"it to {train.epochs} or fewer (a shorter run: --set train.eval_every too)"
            )
        # patience counts evaluations; a stop needs max(patience, 1) + 1 of them (never at the
        # first): refused when the run has fewer, as patience given in epochs would be
        evaluations = math.ceil(train.epochs / every)
        if every > 1 and stopping is not None and evaluations < max(stopping.patience, 1) + 1:
            raise ValueError(
                f"train.early_stopping.patience: counts evaluations, one every {every} epochs: "
                f"{stopping.patience} of them wait {stopping.patience * every} epochs, and "
                f"train.epochs {train.epochs} has {evaluations} evaluations, too few to ever "
                "stop; patience is not in epochs"
            )
        return self

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
            *sections, key = dotted.split(".")
            section = dumped
            for name in sections:  # train.optimizer.weight_decay sits two levels down
                section = section[name]
            if section.get(key, default) == default:
                section.pop(key, None)
        return dumped

    @property
    def hash(self) -> str:
        """A stable short hash of the resolved configuration: the cell's identity."""
        canonical = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]


# settings added after runs were first stored, with their defaults (see RunConfig.identity)
LATE_SETTINGS: dict[str, Any] = {
    "model.kind": "mlp",
    "model.conv": [],
    "model.builder": None,
    "train.steps_per_epoch": None,
    "train.loss": "cross_entropy",
    "train.log_batch_loss": False,
    "train.log_activations": False,
    "data.val_from": "selection",
    "model.max_norm": None,
    "train.early_stopping": None,
    "train.augment": None,
    "train.label_smoothing": 0.0,
    "data.label_noise": None,
    "model.init_scale": None,
    "train.eval_every": 1,
    "train.optimizer.weight_decay": None,
    "data.randomize_inputs": None,
}


Range = Annotated[list[float], Field(min_length=2, max_length=2)]


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
    # log each run's network as an MLflow Keras model: `final`, the weights it ends with (its
    # final_* metrics'), or `best`, those of its `best_epoch` (chosen on the test set); off
    # by default. A setting of the study, not of its cells: it changes no cell's hash
    log_model: Literal["final", "best"] | None = None

    @field_validator("log_model", mode="before")
    @classmethod
    def _log_model(cls, value: Any) -> Any:
        return off_or_choice(value, LOG_MODEL)


LOG_MODEL = ("final", "best")  # `log_model:` besides off


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


def short_value(value: Any, key: str = "") -> str:
    """A setting's value in a cell name or table: `0.01`, `std:0.01`; null is `all` for a size
    (`data.train_size: null`, the whole pool), else `off` (`model.max_norm: null`)."""
    if value is None:
        return "all" if key.endswith("_size") or not key else "off"
    if isinstance(value, dict):
        return ",".join(f"{k}:{short_value(v, k)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def validate(model: type[Any], raw: Any, where: str, origin: str | dict[str, str]) -> Any:
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
        message = _explain(first, model, loc)
        # a check across sections names its key first: "train.early_stopping: needs ..."
        named = re.fullmatch(r"([a-z_]+(?:\.[a-z_]+)+): (.*)", message) if not loc else None
        if named:
            loc, message = named[1].split("."), named[2]
        dotted = ".".join(loc)
        if isinstance(origin, str):
            prefix = origin
        else:
            # the part of the file that set this key, a key below it, or a key above it
            section = dotted.rpartition(".")[0]
            prefix = next(
                (
                    origin[k]
                    for k in origin
                    if dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".")
                ),
                # a key missing beside one that was set: `--set data.label_noise.kind=any`
                # on a study without noise lacks the fraction
                next(
                    (
                        origin[k]
                        for k in origin
                        if first["type"] == "missing" and section and k.startswith(section + ".")
                    ),
                    "base.",
                ),
            )
        key = (prefix if not prefix.startswith("--set") else "") + dotted
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
        return f"unknown key{did_you_mean(loc[-1], options)}" + (
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
    if kind == "model_type":  # a section given as something else than a mapping
        return f"expected a mapping of its settings ({{}} for every default), got {value!r}"
    msg = msg.replace("Input should be", "must be")
    bound = kind in ("less_than", "less_than_equal", "greater_than", "greater_than_equal")
    if (
        not isinstance(value, dict | list)
        and "got" not in msg
        and (bound or repr(value) not in msg)
    ):
        msg += f" (got {value!r})"
    return msg


def _model_at(model: type[Any], loc: list[str]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        section = _section(current)
        info = section.model_fields.get(part) if section is not None else None
        if info is None:
            return None
        current = info.annotation
    return _section(current)


def _section(annotation: Any) -> type[BaseModel] | None:
    """The schema a field holds: itself, or the model inside `X | None`, `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for inner in typing.get_args(annotation):
        found = _section(inner)
        if found is not None:
            return found
    return None


def describe_init(init: InitSpec) -> str:
    """A short text for tables: `he`, `std=0.01`, `glorot_uniform`."""
    return f"std={init.std:g}" if isinstance(init, StdInit) else str(init)
