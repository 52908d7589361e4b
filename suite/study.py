"""Studies: a validated study file expanded into cells and runs, each cell with its data.

`load_study` reads a study file (`suite.spec`) and runs two steps in order:

1. `expand`: variants x grid (the study's and a variant's own) x search trials, `--set` applied
   to every cell; every cell is validated, named and checked to be distinct, and the file's
   `reference:`, `seeds:`, `report.baseline` and `report.figures` are checked against the
   cells. No data is read: every cell's `data_source` is still empty.
2. `resolve_data`: each cell's `data_source` set to the data its `data:` section resolves to
   (part of the cell's hash), and, when asked, its sizes checked against that data.

Owns: `Cell`, `RunKey`, `Study` (with `runs`, `split_names`, `select`), the expansion and its
checks, and `resolve_data`. A search's draws and slots are `suite.trials`'.
Must not touch: the schema and its error messages (`suite.spec`), how data is found or loaded
(`suite.data`, imported only inside `resolve_data`), training or the tracking store.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.calibration import measured
from suite.metrics import ECE_METRICS, LOGGED_WITH, REFERENCE_METRICS, SCALING_METRICS
from suite.report.figure_spec import FIGURE_METRICS, GROUP_FIELDS, GROUP_NAMES, ReportSpec
from suite.spec import (
    DataSpec,
    RunConfig,
    SearchSpec,
    SpecError,
    StudyFile,
    conv_output_sizes,
    did_you_mean,
    flatten,
    read_study_file,
    short_value,
    validate,
)
from suite.trials import Slot, check_search, fill, search_id, trial_points

# `--only` accepts a cell hash prefix of at least this many characters.
MIN_HASH_PREFIX = 4


@dataclass(frozen=True)
class Cell:
    """A resolved configuration with its name (variant plus grid point) and hash."""

    name: str
    variant: str
    config: RunConfig
    grid_point: dict[str, Any] = field(default_factory=dict)
    data_source: str = ""  # which data `dataset: mnist` resolved to (see suite.data)
    builder_file: str = ""  # the module file `model.builder` resolved to (see suite.builders)
    builder_source: str = ""  # a fingerprint of that file's source
    data_missing: str = ""  # why its data is not on this machine (a study validated without it)
    # an adaptive search's trial: its config is the search's frame until a point is asked
    # (`suite.trials.fill`), and its hash the slot's, whatever the point
    slot: Slot | None = field(default=None, compare=False)

    def asked(self, point: dict[str, Any]) -> Cell:
        """A slot's cell with the point its search asked set over its frame (its hash, the
        slot's, unchanged; see `suite.trials.fill`)."""
        assert self.slot is not None
        slot = dataclasses.replace(self.slot, point=dict(point))
        config, settings = fill(self.config, point), {**self.grid_point, **point}
        return dataclasses.replace(self, config=config, grid_point=settings, slot=slot)

    @functools.cached_property
    def hash(self) -> str:
        """The cell's identity: its resolved configuration and the data it resolved to, so
        runs on the bundled subset never count as done once full MNIST is found; with a
        builder, its source too, so an edited builder is a new cell. A slot's: its search's
        id (which holds all of that) and its number."""
        if self.slot is not None:
            return self.slot.cell_hash
        if not self.data_source and not self.builder_source:
            return self.config.hash
        identity = {"config": self.config.identity(), "data_source": self.data_source}
        if self.builder_source:
            identity["builder_source"] = self.builder_source
        canonical = json.dumps(identity, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class RunKey:
    """One run: a cell trained with one seed; `log_model`, the study's: whether the run logs
    its network, `final` or `best` (see `suite.spec.StudyFile`), or None."""

    cell: Cell
    seed: int
    log_model: str | None = None


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
    log_model: str | None = None  # `final`, `best` or None: what each run logs of its network
    search: SearchSpec | None = None  # the `search:` block: its space, sampler and pruner

    def runs(self, seeds: tuple[int, ...] | None = None) -> list[RunKey]:
        """Every (cell, seed), cells in order, seeds inner."""
        return [RunKey(c, s, self.log_model) for c in self.cells for s in (seeds or self.seeds)]

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
                raise SpecError(f"--only: no cell {token!r}{did_you_mean(token, names)}")
            wanted.extend(h for h in hits if h not in wanted)
        return dataclasses.replace(self, cells=tuple(wanted))


def load_study(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    check_data: bool = True,
    missing_data: str = "error",
) -> Study:
    """Load, validate and expand a study file.

    Args:
        path: the study YAML.
        overrides: dotted keys applied to every resolved cell (`--set`).
        check_data: check sizes against the data the cells would use (loads it); the report,
            which reads runs instead of data, turns this off.
        missing_data: what data that is not on this machine is (`suite.data.DataUnavailable`):
            `error` (a run's default: nothing can train), or `warn` (`overfit validate`: the
            study is still checked, those cells' data unchecked, one `MissingDataWarning`
            per cause naming its cells and what would make the data available).

    Raises:
        SpecError: one line naming the file and key path of the first problem.
    """
    path = Path(path)
    raw = read_study_file(path)
    return build_study(raw, path, overrides or {}, check_data, missing_data)


def build_study(
    raw: Any,
    path: Path | None,
    overrides: dict[str, Any],
    check_data: bool = True,
    missing_data: str = "error",
) -> Study:
    """Validate a parsed study document, expand it into cells and resolve their data (see
    `load_study`): `expand`, then `resolve_data`."""
    study = expand(raw, path, overrides)
    return resolve_data(study, _where(path), check_data, missing_data)


def expand(raw: Any, path: Path | None, overrides: dict[str, Any]) -> Study:
    """Validate a parsed study document and expand it into cells; no data is read, so every
    cell's `data_source` is empty until `resolve_data`.

    Raises:
        SpecError: one line naming the file and key path of the first problem.
    """
    where = _where(path)
    top = _study_file(raw, where)
    implicit = "variants" not in raw  # a search without variants names its cells trial_NNN
    cells = _expand_cells(top, where, overrides, implicit)
    names = [c.name for c in cells]
    reference = _reference(top, names, where)
    seeds = _seeds(top, where)
    baseline = top.report.baseline
    if baseline is not None and baseline not in names and baseline not in top.variants:
        raise SpecError(
            f"{where}: report.baseline: no such cell {baseline!r}{did_you_mean(baseline, names)}"
        )
    _check_figures(top.report, cells, where)
    return Study(
        top.name,
        top.description,
        path,
        tuple(cells),
        seeds,
        reference,
        top.report,
        top.log_model,
        top.search,
    )


class MissingDataWarning(UserWarning):
    """Cells whose data is not on this machine: the study is valid, they cannot train here."""


def resolve_data(study: Study, where: str, check_sizes: bool, missing_data: str = "error") -> Study:
    """The study with each cell's `data_source` set: the label of the data its `data:` section
    resolves to (see `suite.data`), part of the cell's hash.

    Args:
        study: an expanded study (`expand`).
        where: the file the cells came from, for error messages.
        check_sizes: also check each cell's sizes against that data (loads it). Without it
            (the report, which reads runs instead of data) a source that cannot be resolved
            here is left unknown.
        missing_data: `error` or `warn`, for data not on this machine (see `load_study`).

    Raises:
        SpecError: with `check_sizes`, the first cell whose data cannot serve its sizes.
    """
    folder = study.path.parent if study.path is not None else None
    strict = check_sizes and missing_data == "error"
    cells = []
    for cell in study.cells:
        source, missing = _data_source(cell, where, check_sizes, strict)
        found = dataclasses.replace(cell, data_source=source, data_missing=missing)
        found = _with_builder(found, folder, where, check_sizes and not missing)
        if found.slot is not None:  # a search on other data is another search
            data = found.data_source + found.builder_source
            ident = search_id(found.slot.spec, found.config, data)
            found = dataclasses.replace(
                found, slot=dataclasses.replace(found.slot, search_id=ident)
            )
        cells.append(found)
    if check_sizes and not strict:
        _warn_missing(cells, where)
    return dataclasses.replace(study, cells=tuple(cells))


def _warn_missing(cells: list[Cell], where: str) -> None:
    """One `MissingDataWarning` per cause of missing data, naming its cells."""
    causes: dict[str, list[str]] = {}
    for cell in cells:
        if cell.data_missing:
            causes.setdefault(cell.data_missing, []).append(cell.name)
    for cause, names in causes.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        warnings.warn(
            f"{where}: {len(names)} cell{'s' if len(names) > 1 else ''} ({shown}) cannot "
            f"train here: {cause}",
            MissingDataWarning,
            stacklevel=4,
        )


def _with_builder(cell: Cell, folder: Path | None, where: str, check: bool) -> Cell:
    """A cell whose `model.builder` is found (its file and source fingerprint set); with
    `check`, the builder is called once on the cell's data shape (imports TensorFlow)."""
    builder = cell.config.model.builder
    if builder is None:
        return cell
    from suite import builders, data

    try:
        path = builders.locate(builder, folder)
        found = dataclasses.replace(
            cell, builder_file=str(path), builder_source=builders.fingerprint(path)
        )
        if check:
            d = cell.config.data
            pool = data.load_pool(data.resolve_source(d.path, d.dataset))
            shape = tuple(int(n) for n in pool.x_train.shape[1:])
            builders.build(builder, str(path), shape, pool.num_classes, 0)
        return found
    except builders.BuilderError as err:
        if check:
            raise SpecError(f"{where}: cell {cell.name}: {err}") from None
        return cell


def _data_source(cell: Cell, where: str, check_sizes: bool, strict: bool) -> tuple[str, str]:
    """The `data_source` label a cell's runs use, and why its data is missing ("" when it is
    there); with `check_sizes`, its sizes are checked; with `strict`, missing data is a
    SpecError."""
    from suite import corrupt, data

    spec: DataSpec = cell.config.data
    try:
        if check_sizes:
            sizes = (spec.train_size, spec.val_size, spec.test_size)
            source = data.check_sizes(spec.path, *sizes, dataset=spec.dataset)
            # a cnn's stack must fit the images; geometric augmentation needs images
            pool = data.load_pool(source)
            check_inputs(cell.config, pool.x_train.shape[1:])
            if spec.label_noise is not None:  # a new label needs another class to come from
                corrupt.check_classes(pool.num_classes)
            return source.label, ""
        return data.resolve_source(spec.path, spec.dataset).label, ""
    except data.DataUnavailable as err:
        if strict:
            raise SpecError(f"{where}: cell {cell.name}: {err}") from None
        return "", str(err) if check_sizes else ""
    except data.DataError as err:
        if check_sizes:
            raise SpecError(f"{where}: cell {cell.name}: {err}") from None
        return "", ""
    except ValueError as err:  # a cnn or augmentation on flat features, a stack too deep
        raise SpecError(f"{where}: cell {cell.name}: {err}") from None


def check_inputs(config: RunConfig, image_shape: tuple[int, ...]) -> None:
    """What a run asks of its data's inputs, checked against one input's shape (`(D,)` for flat
    feature vectors); ValueError naming the key: a cnn's stack must fit the images, and
    geometric augmentation needs images."""
    if config.model.kind == "cnn":
        try:
            conv_output_sizes(config.model, image_shape)
        except ValueError as err:
            raise ValueError(f"model.{err}") from None
    augment = config.train.augment
    if augment is not None and augment.geometric and len(image_shape) not in (2, 3):
        raise ValueError(
            f"train.augment.{augment.geometric[0]}: needs images, and the data's inputs are flat "
            f"feature vectors of shape {tuple(image_shape)}; only noise applies to them"
        )


def _where(path: Path | None) -> str:
    return str(path) if path else "<study>"


def _study_file(raw: Any, where: str) -> StudyFile:
    """The document's top level, validated, with its grid and base checked."""
    if raw is None:
        raise SpecError(f"{where}: the file is empty; a study needs at least `name:`")
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a study is a mapping of keys (name, base, variants, ...)")
    top: StudyFile = validate(StudyFile, raw, where, "")
    if not top.grid and "grid" in raw:
        raise SpecError(f"{where}: grid: is empty; remove it or give it keys")
    for key, values in top.grid.items():
        if not values:
            raise SpecError(f"{where}: grid.{key}: has no values")
    validate(RunConfig, top.base, where, "base.")
    return top


def _expand_cells(
    top: StudyFile, where: str, overrides: dict[str, Any], implicit: bool
) -> list[Cell]:
    """Each variant crossed with the study's grid, its own grid and the search's trials, with
    `--set` applied last; no two cells may resolve to the same configuration. An adaptive
    search's trials are slots (`suite.trials.Slot`), their points asked when they train."""
    grid_points = _product(top.grid)
    search = top.search
    adaptive = search is not None and search.adaptive
    trials: list[dict[str, Any] | None] = [None]
    if search is not None:
        trials = [{} for _ in range(search.trials)] if adaptive else [*trial_points(search)]
    searched = set(search.space) if search else set()
    for key in overrides:
        if key in searched:
            raise SpecError(
                f"{where}: --set {key}: the search draws this setting; remove it from "
                "search.space or from --set"
            )
    cells: list[Cell] = []
    for variant, patch in top.variants.items():
        patch = dict(patch or {})
        own_points = _variant_grid(patch.pop("grid", None), where, variant)
        for point, own, (number, trial) in itertools.product(
            grid_points, own_points, enumerate(trials)
        ):
            layers = [
                ("grid.", point),
                (f"variants.{variant}.grid.", own),
                ("search.space.", trial or {}),
                ("--set ", overrides),
            ]
            config = _cell_config(top.base, variant, patch, layers, where)
            settings = {**point, **own}
            name = _cell_name(variant, settings, number, trial, implicit)
            slot = None
            if adaptive and search is not None:
                frame = _cell_name(variant, settings, 0, None, implicit)
                slot = Slot(search_id(search, config), number, frame, search)
            cells.append(Cell(name, variant, config, {**settings, **(trial or {})}, slot=slot))
    if search is not None and adaptive:
        frames = [(c.name, c.config) for c in cells if c.slot is not None and c.slot.number == 0]
        check_search(search, frames, _seeds(top, where), where)
    _check_distinct([c for c in cells if c.slot is None], where, bool(searched))
    return cells


def _cell_config(
    base: dict[str, Any],
    variant: str,
    patch: dict[str, Any],
    layers: list[tuple[str, dict[str, Any]]],
    where: str,
) -> RunConfig:
    """A variant's patch merged over base, then each layer's dotted settings in order, then
    validated; an error names the part of the file (the layer's prefix) that set the key."""
    merged = _merge(base, patch)
    origin = {k: f"variants.{variant}." for k in flatten(patch)}
    for prefix, settings in layers:
        for key, value in settings.items():
            _set_dotted(merged, key, value, where, f"{prefix}{key}")
            origin[key] = prefix
    try:
        config: RunConfig = validate(RunConfig, merged, where, origin)
    except SpecError as err:
        # base alone was valid: a key of base is wrong only with what this variant sets
        if f"{where}: base." in str(err):
            raise SpecError(f"{err} (in variant {variant})") from None
        raise
    return config


def _cell_name(
    variant: str, settings: dict[str, Any], number: int, trial: Any, implicit: bool
) -> str:
    """`variant[grid]`, `variant_trial_NNN[grid]`, or without variants `trial_NNN[grid]` and,
    for a plain grid, `activation=relu,init=he`."""
    if trial is not None:
        name = f"trial_{number:03d}" if implicit else f"{variant}_trial_{number:03d}"
        return name + _grid_label(settings)
    if implicit and settings:
        return _grid_label(settings)[1:-1]
    return variant + _grid_label(settings)


def _check_distinct(cells: list[Cell], where: str, searched: bool) -> None:
    """No two cells resolve to the same configuration (the same data follows from it)."""
    seen: dict[str, str] = {}
    for cell in cells:
        key = cell.config.hash
        if key in seen and searched:
            raise SpecError(
                f"{where}: search: {cell.name} repeats {seen[key]}; the space has fewer "
                "distinct points than trials (lower search.trials or widen search.space)"
            )
        if key in seen:
            raise SpecError(
                f"{where}: cells {seen[key]} and {cell.name} resolve to the same "
                "configuration; remove one"
            )
        seen[key] = cell.name


def _reference(
    top: StudyFile, names: list[str], where: str
) -> dict[str, dict[str, tuple[float, float]]]:
    """The `reference:` ranges, each naming a cell (or variant) and a known metric."""
    for cell_name, metrics in top.reference.items():
        if cell_name not in names and cell_name not in top.variants:
            raise SpecError(
                f"{where}: reference.{cell_name}: no such cell{did_you_mean(cell_name, names)}"
            )
        for metric, (lo, hi) in metrics.items():
            if metric not in REFERENCE_METRICS:
                hint = did_you_mean(metric, REFERENCE_METRICS)
                raise SpecError(f"{where}: reference.{cell_name}.{metric}: unknown metric{hint}")
            if lo > hi:
                raise SpecError(f"{where}: reference.{cell_name}.{metric}: range [{lo}, {hi}]")
    return {
        cell: {m: (float(r[0]), float(r[1])) for m, r in metrics.items()}
        for cell, metrics in top.reference.items()
    }


def _seeds(top: StudyFile, where: str) -> tuple[int, ...]:
    """`seeds: N` is 0..N-1; a list is kept as given, and must not repeat."""
    seeds = tuple(range(top.seeds)) if isinstance(top.seeds, int) else tuple(top.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpecError(f"{where}: seeds: expected distinct seeds, got {list(seeds)}")
    return seeds


def _check_figures(report: ReportSpec, cells: list[Cell], where: str) -> None:
    """Every figure names metrics that exist and settings the cells have; a reliability
    figure needs a cell whose runs measure their calibration (a cross-entropy one)."""
    settings = {key for cell in cells for key in cell.config.flat()}
    # a section key groups by what is below it: `model.init` covers `model.init.std`
    settings |= {key.rsplit(".", n)[0] for key in settings for n in range(1, key.count("."))}
    calibrated = any(measured(c.config.train.loss) for c in cells)  # some cell measures ECE
    for index, figure in enumerate(report.figures):
        label = f"{where}: report.figures[{index}]"
        for key, metric, known in FIGURE_METRICS[figure.kind](figure):
            if metric not in known:
                raise SpecError(
                    f"{label}.{key}: unknown metric {metric!r}{did_you_mean(metric, known)}"
                )
            setting = LOGGED_WITH.get(metric)
            if setting and not any(_sets(cell, setting) for cell in cells):
                raise SpecError(f"{label}.{key}: no cell logs {metric}: it needs {setting}")
            if metric in (*ECE_METRICS, *SCALING_METRICS) and not calibrated:
                raise SpecError(
                    f"{label}.{key}: no cell logs {metric}: calibration is measured in "
                    "train.loss: cross_entropy runs only"
                )
        if figure.kind == "reliability" and not calibrated:
            raise SpecError(
                f"{label}.kind: reliability needs cells trained with train.loss: cross_entropy "
                "(calibration is measured in cross-entropy runs only); no cell does"
            )
        for key in GROUP_FIELDS:
            value = getattr(figure, key, None)
            if not isinstance(value, str) or value in GROUP_NAMES:
                continue
            if value not in settings:
                raise SpecError(
                    f"{label}.{key}: no setting {value!r}{did_you_mean(value, settings)}"
                )


def _sets(cell: Cell, dotted: str) -> bool:
    """Whether a cell sets `dotted` to something besides off (a value, or keys below it)."""
    flat = cell.config.flat()
    return bool(flat.get(dotted)) or any(key.startswith(dotted + ".") for key in flat)


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


def _grid_label(point: dict[str, Any]) -> str:
    if not point:
        return ""
    parts = [f"{k.rsplit('.', 1)[-1]}={short_value(v, k)}" for k, v in point.items()]
    return "[" + ",".join(parts) + "]"


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
