"""Writing a study's report: runs read back, numbers aggregated, figures drawn, pages written.

`write_report` reads a study's runs back from the tracking store and writes, into one folder
(default `reports/<study>/`), `index.html` (self-contained) and `report.md` beside its PNGs,
then logs the folder as the `report/` artifacts of the study's report run.

Owns: the order of the report's work, the study's own figures (`report.figures`), each kind
drawn by its entry in `DRAW` and explained by `NEEDS` when it has nothing to draw, and a
search's section (its pruned trials kept out of the numbers, `search.split_pruned`). Must not
touch: the numbers (`aggregate`, `search`), the notes' wording (`notes`), the pictures' pixels
(`figures`, `extra`, `search_figures`), the page layout (`render`), or the study file's schema
(`figure_spec`).

It is the report's one writer to the tracking store: the study's report run and its `report/`
artifacts (`Tracker.report_run`, `Tracker.log_report`); it never writes to a (cell, seed) run.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from suite.metrics import STEP_METRICS
from suite.report import (
    aggregate,
    colours,
    cures,
    documents,
    extra,
    figures,
    finding,
    groups,
    links,
    load,
    reliability,
    render,
    search,
    search_figures,
    size,
    stopping,
)
from suite.report.compare import SideBySide
from suite.report.figure_spec import (
    GROUP_FIELDS,
    ActivationsFigure,
    ConfusionFigure,
    CuresFigure,
    CurvesFigure,
    ReliabilityFigure,
    ReportSpec,
    ScatterFigure,
    SizeFigure,
    VersusFigure,
)
from suite.report.links import UI_DEFAULT, check_ui_url
from suite.report.notes import failure_notes, provenance, table_notes
from suite.report.source import missing_notice, recorded
from suite.spec import steps_per_epoch
from suite.study import Study
from suite.tracking import Tracker

__all__ = ["DRAW", "NEEDS", "ReportPaths", "write_report"]

HTML, MARKDOWN, FINAL_GAP_PNG = "index.html", "report.md", "final_gap.png"


@dataclass(frozen=True)
class ReportPaths:
    """Where a report was written, and the MLflow run that holds a copy."""

    html: Path
    markdown: Path
    folder: Path
    run_id: str | None = None


def write_report(
    study: str,
    tracker: Tracker,
    out: Path | None = None,
    spec: Study | None = None,
    log_to_mlflow: bool = True,
    ui_url: str | None = None,
    side: SideBySide | None = None,
) -> ReportPaths:
    """Write a study's comparison report from what the tracking store holds.

    Args:
        study: the study (MLflow experiment) name.
        tracker: the store to read.
        out: the output folder; default `reports/<study>/` under the current directory.
        spec: the study file, when at hand: it orders the cells, says how many seeds make a
            cell complete, names the baseline and the views (`report:`), and brings the
            description and `reference:` ranges.
        log_to_mlflow: also attach the report to the study's report run in the store.
        ui_url: the MLflow UI the run links point at (`http(s)://host[:port]`); default: the
            tracking server when the store is one, else `overfit ui`'s http://127.0.0.1:5000.
        side: several studies' runs side by side (`compare.side_by_side`), reported as one
            study named `study`; nothing is logged to the store.

    Returns:
        The paths of the HTML page, the Markdown document, their folder and the report run.

    Raises:
        ReportError: the store is empty, has no such study, or the study has no FINISHED run;
            or `ui_url` is not an http(s) address.
    """
    # side by side, each study's baseline is its own: cells are compared in the table and figures
    settings = spec.report if spec else ReportSpec(versus_baseline=side is None)
    if ui_url is not None:
        check_ui_url(ui_url)  # before any work
    runs = side.runs if side is not None else load.load_runs(study, tracker)
    # an adaptive search since changed: another search, whose trials are never mixed in
    is_older = search.older_searches(spec, runs.runs)
    older, current = runs.runs[is_older], runs.runs[~is_older]
    gone = set(older["cell_hash"])
    every = aggregate.cell_rows(current, spec)  # named without the older search's cells
    counted = aggregate.finished_runs(current)
    # a search's pruned trials stopped at an early epoch: reported apart, never ranked
    used, pruned = search.split_pruned(counted)
    apart = set(pruned["cell_hash"]) - set(used["cell_hash"])
    cells = [c for c in every if c.cell_hash not in apart]
    table = aggregate.ranked(cells, settings.sort)
    views = [figures.VIEWS[name] for name in settings.metrics]
    custom = [f for f in settings.figures if isinstance(f, CurvesFigure)]
    wanted = [m for view in views for m in view.lines] + [f.metric for f in custom]
    histories = _histories(tracker, used, wanted)
    notes = [
        *(side.notes if side else []),
        *table_notes(cells, used, histories, views, spec, settings.sort),
    ]
    if side is not None and len(pruned):
        notes.append(_pruned_apart(pruned))
    if gone:
        notes.append(_older_apart(older))
    baseline, comparisons = _compared(cells, used, table, settings, spec, notes)
    searched = search.section(spec, every, counted) if side is None else None
    kept_apart = [c for c in every if c.cell_hash in apart]
    numbers = _Numbers(
        runs, cells, table, used, baseline, comparisons, pruned, kept_apart, is_older
    )

    folder = Path(out) if out is not None else Path("reports") / study
    folder.mkdir(parents=True, exist_ok=True)
    if len(cells) > len(colours.PALETTE):
        notes.append(
            f"{len(cells)} cells: beyond {len(colours.PALETTE)} the figures' colours are hues "
            "evenly spaced around the wheel, and neighbours are close; read names, not colours."
        )
    shown = _study_figures(folder, settings, tracker, numbers, histories, spec, study, notes)
    shown += _cell_figures(folder, settings, views, histories, numbers, study, notes)
    shown += _search_figures(folder, searched, study)

    ui = links.ui_address(ui_url, runs.uri)
    run_id = tracker.report_run(runs.experiment_id, study) if log_to_mlflow and not side else None
    tagged = recorded(tracker, runs.experiment_id, runs.runs) if spec is None and not side else None
    context = _context(study, spec, settings, numbers, shown, notes, ui, run_id, tagged, side)
    context = replace(context, search=searched)
    html, markdown = render.render(context)
    paths = ReportPaths(folder / HTML, folder / MARKDOWN, folder, run_id)
    paths.html.write_text(html, encoding="utf-8")
    paths.markdown.write_text(markdown, encoding="utf-8")
    if run_id is not None:
        tracker.log_report(run_id, folder, _summary(study, context))
    return paths


@dataclass(frozen=True)
class _Numbers:
    """A study's runs as read back, and what `aggregate` made of them."""

    runs: load.StudyRuns
    cells: list[aggregate.CellRow]  # study order
    table: list[aggregate.CellRow]  # ranked by `report.sort`, best first
    used: pd.DataFrame  # the finished runs the numbers use
    baseline: aggregate.CellRow | None
    comparisons: list[aggregate.Comparison]  # each cell against the baseline
    pruned: pd.DataFrame  # a search's pruned trials' runs, kept out of `used`
    pruned_cells: list[aggregate.CellRow]  # their cells, kept out of `cells`
    older: pd.Series  # per run of `runs`: a trial of an adaptive search since changed


def _compared(
    cells: list[aggregate.CellRow],
    used: pd.DataFrame,
    table: list[aggregate.CellRow],
    settings: ReportSpec,
    spec: Study | None,
    notes: list[str],
) -> tuple[aggregate.CellRow | None, list[aggregate.Comparison]]:
    """The baseline (none when `report.versus_baseline` is off) and every cell against it;
    a note when the study's baseline has no finished runs and another cell stands in."""
    baseline = aggregate.baseline_cell(cells, spec) if settings.versus_baseline else None
    variants = {c.hash: c.variant for c in spec.cells} if spec is not None else {}
    named = (baseline.name, variants.get(baseline.cell_hash)) if baseline else ()
    if settings.baseline and baseline is not None and settings.baseline not in named:
        notes.append(
            f"The study's baseline {settings.baseline!r} has no finished runs: cells are "
            f"compared with {baseline.label} instead."
        )
    comparisons = aggregate.versus_baseline(used, table, baseline) if baseline else []
    return baseline, comparisons


def _cell_figures(
    folder: Path,
    settings: ReportSpec,
    views: list[figures.View],
    histories: pd.DataFrame,
    numbers: _Numbers,
    study: str,
    notes: list[str],
) -> list[render.Figure]:
    """The per-cell views (`report.metrics`) and the final gap chart, of every cell or of the
    best `report.top` of the table (a note says so)."""
    cells = numbers.cells
    drawn = [m for view in views for m in view.lines]
    curves = aggregate.curves(histories[histories["metric"].isin(drawn)])
    stops = stopping.stop_points(histories, numbers.used)
    palette = figures.palette(cells)
    view_cells = numbers.table[: settings.top] if settings.top else cells
    if settings.top and len(cells) > settings.top:
        notes.append(
            f"Per-cell curves show the best {settings.top} of {len(cells)} cells by "
            f"{extra.metric_label(settings.sort)}."
        )
    out: list[render.Figure] = []
    for view in views:
        png = figures.curves_figure(
            view, curves, view_cells, palette, study, settings.columns, stops
        )
        if png is not None:
            out.append(_figure(folder, f"{view.name}.png", png, view.title, view.caption, "curves"))
    png = figures.final_gap_figure(numbers.used, view_cells, palette, study)
    if png is not None:
        caption = (
            "Final gap per cell: each point is one seed's final train − test accuracy; "
            "the diamond is their mean with its 95% interval."
        )
        out.append(_figure(folder, FINAL_GAP_PNG, png, "final gap per cell", caption, "final"))
    return out


def _search_figures(
    folder: Path, searched: search.SearchSection | None, study: str
) -> list[render.Figure]:
    """A search's best-so-far figure (none without a finished trial's objective)."""
    if searched is None:
        return []
    progress = search.best_so_far(searched.trials)
    order = "slot order" if searched.adaptive else "the study's order"
    png = search_figures.best_so_far(progress, study, search.OBJECTIVE, order)
    if png is None:
        return []
    caption = (
        f"Left: the best {search.OBJECTIVE_LABEL} among the finished trials so far (step line) "
        f"against the trial number, in {order}; right: the same against the epochs all "
        "trials up to it trained. Dots: each finished trial"
        + (
            "; hollow circles: pruned trials at the value they had when pruned, which add "
            "their epochs but never a best."
            if progress["pruned"].any()
            else "."
        )
    )
    return [_figure(folder, "best_so_far.png", png, "best so far", caption, "search")]


def _context(
    study: str,
    spec: Study | None,
    settings: ReportSpec,
    numbers: _Numbers,
    shown: list[render.Figure],
    notes: list[str],
    ui: str,
    run_id: str | None,
    tagged: str | None,
    side: SideBySide | None = None,
) -> render.Context:
    """What the templates show: the numbers, the finding, the figures and notes, links to the
    UI at `ui` (and to the report run, `run_id`), provenance and the study file's settings;
    `tagged` is the study file the store records, for the notice of a report without one."""
    runs, cells, table = numbers.runs, numbers.cells, numbers.table
    baseline, comparisons = numbers.baseline, numbers.comparisons
    labels = {c.cell_hash: c.label for c in [*cells, *numbers.pruned_cells]}
    eid = runs.experiment_id
    # a search trial's asked point: its counted run's first
    known = pd.concat([numbers.used, numbers.pruned, runs.runs], ignore_index=True)
    # the runs list has every run; an earlier search's say so (their trials share names)
    older = numbers.older
    listed = runs.runs.assign(
        status=runs.runs["status"].where(~older, runs.runs["status"] + " (an earlier search)")
    )
    return render.Context(
        study=study,
        description=(spec.description.strip() if spec else ""),
        cells=table,
        columns=aggregate.table_columns(
            cells, any(isinstance(f, ConfusionFigure) for f in settings.figures)
        ),
        # a cell that learns has the best test accuracy, unless none does
        best_test=aggregate.best(cells, "final_test_accuracy", learning=False),
        least_gap=aggregate.least_gap(cells),
        baseline=baseline,
        comparisons=comparisons,
        references=aggregate.reference_checks(table),
        figures=shown,
        failed=links.run_links(
            aggregate.failed_runs(listed[~older]).sort_values(["cell", "seed"]), labels, ui, eid
        ),
        runs=links.run_links(listed.sort_values(["cell", "seed", "start_time"]), labels, ui, eid),
        provenance=side.provenance
        if side
        else provenance(runs, numbers.used, spec, len(numbers.pruned)),
        notes=notes,
        finding=finding.summarise(table, baseline, comparisons, settings.sort),
        study_notice=(
            None if spec is not None or side else _capitalised(missing_notice(study, tagged))
        ),
        ui=ui,
        ui_is_local=ui == UI_DEFAULT,
        experiment_url=links.experiment_url(ui, eid),
        report_run_url=links.run_url(ui, eid, run_id) if run_id else None,
        sort=settings.sort,
        sort_label=extra.metric_label(settings.sort),
        best_sorted=(
            aggregate.best(cells, settings.sort, lowest=settings.sort in aggregate.LOWER_IS_BETTER)
            if settings.sort not in ("final_test_accuracy", "final_gap")
            else None
        ),
        setting_columns=side.setting_columns if side else groups.grid_keys(spec, known),
        settings=side.settings if side else groups.grid_values(spec, cells, known),
    )


def _histories(tracker: Tracker, used: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per-epoch metrics, and per-update ones (`batch_loss`), of the runs the numbers use."""
    epochs = int(used["epochs"].max()) if used["epochs"].notna().any() else 1000
    per_epoch = [m for m in dict.fromkeys(metrics) if m not in STEP_METRICS]
    per_step = [m for m in dict.fromkeys(metrics) if m in STEP_METRICS]
    parts = [load.load_histories(tracker, used, per_epoch, epochs)]
    if per_step:
        parts.append(load.load_histories(tracker, used, per_step, _updates(used)))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _updates(used: pd.DataFrame) -> int:
    """The most updates any run made (to size per-update history requests)."""
    most = 1
    for params, n_train in zip(used["params"], used["n_train"], strict=True):
        params = params or {}
        epochs = int(params.get("train.epochs", 1))
        steps = params.get("train.steps_per_epoch", "null")
        if steps in ("null", "None", None):
            batch = int(params.get("train.batch_size", 100))
            steps = steps_per_epoch(int(n_train or batch), batch)
        most = max(most, epochs * int(steps))
    return most


def _study_figures(
    folder: Path,
    settings: ReportSpec,
    tracker: Tracker,
    numbers: _Numbers,
    histories: pd.DataFrame,
    spec: Study | None,
    study: str,
    notes: list[str],
) -> list[render.Figure]:
    """The figures the study's `report.figures` asks for, in its order; a figure with nothing
    to draw (no run logged what it needs) gets a note instead."""
    out: list[render.Figure] = []
    runs, table, used = numbers.runs.runs, numbers.table, numbers.used
    failures = failure_notes(runs, numbers.cells)
    # the cures figure draws its reference lines through the baseline even without the
    # versus-baseline section
    base = numbers.baseline or aggregate.baseline_cell(numbers.cells, spec)
    inputs = _Inputs(tracker, used, table, histories, study, failures, base, numbers.pruned)
    # settings of every cell with runs, a finished run's first (a failed run may lack n_train)
    known = pd.concat([used, runs], ignore_index=True)
    placed = [*table, *numbers.pruned_cells]  # a search's pruned trials have points too
    for index, fig in enumerate(settings.figures, 1):
        keys = [k for k in GROUP_FIELDS if isinstance(getattr(fig, k, None), str)]
        values = {
            getattr(fig, k): groups.cell_values(known, placed, getattr(fig, k), spec) for k in keys
        }
        pngs = DRAW[fig.kind](fig, f"figure{index}-{fig.kind}", inputs, values)
        drawn = [(f, png, alt, cap) for f, png, alt, cap in pngs if png is not None]
        for file, png, alt, caption in drawn:
            out.append(_figure(folder, f"{file}.png", png, alt, caption, "study"))
        if not drawn:
            notes.append(
                f"Study figure {index} ({fig.kind}) has nothing to draw: no finished run logged "
                f"what it needs ({NEEDS[fig.kind](fig)})."
            )
    return out


@dataclass(frozen=True)
class _Inputs:
    """What the study's figures are drawn from."""

    tracker: Tracker
    used: pd.DataFrame  # the finished runs the numbers use
    table: list[aggregate.CellRow]  # the cells, best first
    histories: pd.DataFrame
    study: str
    failures: dict[str, str]  # cell hash -> the first failure's reason
    baseline: aggregate.CellRow | None
    pruned: pd.DataFrame  # a search's pruned trials' runs (the scatter draws them apart)


# the images one study figure makes: (file name without .png, PNG or None, alt text, caption)
Images = list[tuple[str, bytes | None, str, str]]
# a figure's grouping values: grouping key -> cell hash -> that cell's value
Values = dict[str, dict[str, Any]]


def _curves(fig: CurvesFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    smoothed = extra.smoothed(inputs.histories, fig.metric, fig.smooth)
    curves = aggregate.curves(smoothed)
    # a run stops at an epoch: marked on per-epoch curves, not on per-update ones
    stops = None if fig.metric in STEP_METRICS else stopping.stop_points(smoothed, inputs.used)
    table, failures = inputs.table, inputs.failures
    png = extra.curves_by(fig, curves, values, table, inputs.study, failures, stops)
    caption = (
        f"{extra.metric_label(fig.metric).capitalize()} per cell: colour by {fig.hue}"
        + (f", line style by {fig.style}" if fig.style else "")
        + (f", one panel per {fig.facet}" if fig.facet else "")
        + "; line: mean over seeds"
        + (
            f", smoothed by a centred moving average of {fig.smooth} points"
            if fig.smooth > 1
            else ""
        )
        + "; band: 95% interval over seeds."
    )
    return [(name, png, fig.title or extra.metric_label(fig.metric), caption)]


def _versus(fig: VersusFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    png = extra.versus(fig, inputs.table, values, inputs.study)
    caption = (
        f"Mean over seeds against {fig.x} with 95% intervals, one line per {fig.hue}; "
        "dashed horizontal lines are cells without a value of it (references)."
    )
    return [(name, png, fig.title or f"final metrics against {fig.x}", caption)]


def _size(fig: SizeFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    png = size.figure(fig, inputs.table, values, inputs.used, inputs.study)
    caption = size.CAPTION.format(hue=fig.hue)
    return [(name, png, fig.title or "final metrics against model size", caption)]


def _scatter(fig: ScatterFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    png = search_figures.scatter(fig, inputs.used, values, inputs.study, inputs.pruned)
    caption = (
        f"Every run at its {fig.x} and {fig.y}, coloured by "
        f"{extra.metric_label(fig.color)}; the star marks the best run"
        + (
            "; hollow grey circles: pruned trials at their points, not coloured (their "
            "metrics are those of the epoch they were pruned at)."
            if len(inputs.pruned)
            else "."
        )
    )
    return [(name, png, fig.title or f"{fig.color} map", caption)]


def _confusion(fig: ConfusionFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    matrices = documents.confusions(inputs.tracker, inputs.used)
    png = extra.confusion(matrices, inputs.table, fig, inputs.study)
    caption = (
        "Test-set confusion matrix per cell, counts summed over seeds and each row "
        "divided by its total (the diagonal is each digit's recall), best cell first."
    )
    return [(name, png, "confusion matrices", caption)]


def _cures(fig: CuresFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    palette = figures.palette(inputs.table)  # by study order: each cell's colour everywhere
    png = cures.figure(fig, inputs.table, inputs.baseline, palette, inputs.study)
    return [(name, png, fig.title or "cures", cures.caption(inputs.baseline))]


def _histograms(fig: ActivationsFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    histograms = documents.activations(inputs.tracker, inputs.used)
    return [
        (
            f"{name}-{stage}",
            extra.activations(histograms, inputs.table, stage, inputs.study),
            f"activation histograms: {stage.replace('_', ' ')}",
            f"Share of activations per bin ({extra.STAGES[stage]}), one row per cell, "
            "one column per layer, averaged over seeds; values beyond the range count in "
            "the end bins.",
        )
        for stage in extra.STAGES
    ]


def _reliability(fig: ReliabilityFigure, name: str, inputs: _Inputs, values: Values) -> Images:
    pooled = reliability.pool(documents.reliability(inputs.tracker, inputs.used))
    png = reliability.draw(pooled, inputs.table, fig, inputs.study)
    caption = reliability.caption(pooled, len(inputs.used))
    return [(name, png, fig.title or "reliability diagrams", caption)]


def _curves_need(fig: CurvesFigure) -> str:
    return f"per-epoch {fig.metric}" + (
        "; set train.log_batch_loss" if fig.metric in STEP_METRICS else ""
    )


# each kind of study figure (`figure_spec.FIGURE_KINDS`): how it is drawn ...
DRAW: dict[str, Callable[[Any, str, _Inputs, Values], Images]] = {
    "curves": _curves,
    "versus": _versus,
    "scatter": _scatter,
    "activations": _histograms,
    "confusion": _confusion,
    "cures": _cures,
    "reliability": _reliability,
    "size": _size,
}
# ... and what a run must have logged for it to draw anything
NEEDS: dict[str, Callable[[Any], str]] = {
    "curves": _curves_need,
    "versus": lambda fig: f"{', '.join(fig.y)} against {fig.x}",
    "scatter": lambda fig: f"{fig.color} and numeric {fig.x} and {fig.y}",
    "activations": lambda fig: "activations.json; set train.log_activations",
    "confusion": lambda fig: "confusion_matrix.json",
    "cures": lambda fig: "final_gap and final_test_accuracy",
    "reliability": lambda fig: "reliability.json, logged by cross-entropy runs",
    "size": lambda fig: f"n_params and {', '.join(fig.y)}",
}


def _figure(
    folder: Path, name: str, png: bytes, alt: str, caption: str, section: str
) -> render.Figure:
    (folder / name).write_bytes(png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return render.Figure(name, uri, alt, caption, section)


def _pruned_apart(pruned: pd.DataFrame) -> str:
    """Side by side: the searches' pruned trials, left out of every cell and figure."""
    per = pruned.groupby("study", sort=False).size()
    counts = ", ".join(f"{n} of {study}" for study, n in per.items())
    return (
        f"Pruned search trials are left out ({counts}): their final metrics are those of the "
        "epoch the pruner ended them at. The report of each study alone lists them."
    )


def _older_apart(older: pd.DataFrame) -> str:
    """The runs of a search since changed, left out of everything but the runs list."""
    finished = older[older["status"] == "FINISHED"]
    return (
        f"{len(finished)} finished trial{'s' if len(finished) != 1 else ''} of an earlier "
        "search (its space, sampler, pruner, seed or data since changed) "
        f"{'are' if len(finished) != 1 else 'is'} left out: another search is never mixed "
        "with this one. They are still in the store and in the runs list below."
    )


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _summary(study: str, context: render.Context) -> str:
    """The report run's description in the MLflow UI (Markdown)."""
    lines = [f"Report of study `{study}`: open `report/index.html` in the artifacts."]
    lines += [f"- {line}" for line in context.finding.lines]
    return "\n".join(lines)
