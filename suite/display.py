"""What `overfit` shows: the consoles, tables, the live run display, the studies' addresses.

Owns: every rich object the CLI prints (`out`, `err`, `cells_table`, `summary_table`,
`RichObserver`, `progress`, `print_studies`). Must not: load studies, run, or reach a store
but through what it is handed; no exit codes (the CLI decides those).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from suite.names import FAILED, KILLED, PRUNED, SKIPPED, Stored
from suite.spec import ModelSpec, RunConfig, describe_init, short_value
from suite.study import RunKey, Study

if TYPE_CHECKING:
    from collections.abc import Sequence

    from suite.lifecycle import RunResult
    from suite.runner import StudyResult
    from suite.tracking import Tracker

# piped output is not cut to 80 columns: tables go to logs and files whole
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 400)


def error(message: str) -> None:
    """An error, one line on stderr."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warning(message: Any, *args: Any, **kwargs: Any) -> None:
    """A warning, one line on stderr (also Python's `warnings.showwarning`)."""
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def plain(text: str) -> None:
    """A line as written: no wrapping, no highlighting, no markup."""
    out.print(text, soft_wrap=True, highlight=False, markup=False)


def _layers(model: ModelSpec) -> str:
    """`100x100` for an mlp; `conv 30:5/2 > 100` for a cnn (filters:kernel, /pool)."""
    if model.builder is not None:
        return f"builder {model.builder}"
    dense = "x".join(str(h) for h in model.hidden)
    if model.kind != "cnn":
        return dense
    convs = ",".join(
        f"{c.filters}:{c.kernel}"
        + (f"s{c.stride}" if c.stride > 1 else "")
        + (f"/{c.pool}" if c.pool > 1 else "")
        for c in model.conv
    )
    return f"conv {convs} > {dense}"


def cells_table(study: Study, seeds: Sequence[int] | None = None) -> Table:
    """The study's cells, one row each; the title counts `seeds` (default: the study's)."""
    count = len(seeds if seeds is not None else study.seeds)
    table = Table(title=f"{study.name}: {len(study.cells)} cells x {count} seeds")
    widest = max((len(c.name) for c in study.cells), default=4)
    table.add_column("cell", no_wrap=True, min_width=min(widest, 48))
    table.add_column("hash", no_wrap=True, min_width=10)
    for column in ("hidden", "init", "wd", "dropout", "bn", "optimizer", "epochs"):
        table.add_column(column)
    cured = any(_cures(cell.config) for cell in study.cells)
    if cured:  # only studies that use them get the column
        table.add_column("cures")
    noisy = any(cell.config.data.label_noise for cell in study.cells)
    if noisy:
        table.add_column("label noise")
    randomized = any(cell.config.data.randomize_inputs for cell in study.cells)
    if randomized:
        table.add_column("inputs")
    losses = any(cell.config.train.loss != "cross_entropy" for cell in study.cells)
    if losses:
        table.add_column("loss")
    for cell in study.cells:
        m, t = cell.config.model, cell.config.train
        # an adaptive search's slot shows its frame: what its search asks is not known yet
        asked = set(cell.slot.spec.space) if cell.slot and cell.slot.point is None else set()
        table.add_row(
            escape(cell.name),
            "[yellow]no data[/]" if cell.data_missing else cell.hash,
            _layers(m),
            "-" if m.builder else describe_init(m.init) + _times(m.init_scale),
            "asked" if "model.weight_decay" in asked else f"{m.weight_decay:g}",
            "asked"
            if "model.dropout" in asked
            else (f"{m.dropout:g} {m.dropout_style}" if m.dropout else "-"),
            "yes" if m.batch_norm else "-",
            f"{t.optimizer.name} "
            + (
                "asked"
                if "train.optimizer.learning_rate" in asked
                else f"{t.optimizer.learning_rate:g}"
            )
            + (f" wd {t.optimizer.weight_decay:g}" if t.optimizer.weight_decay else ""),
            str(t.epochs) + (f" (eval /{t.eval_every})" if t.eval_every > 1 else ""),
            *([_cures(cell.config) or "-"] if cured else []),
            *([_label_noise(cell.config)] if noisy else []),
            *([cell.config.data.randomize_inputs or "-"] if randomized else []),
            *([t.loss] if losses else []),
        )
    slots = [cell.slot for cell in study.cells if cell.slot is not None]
    if slots:
        spec = slots[0].spec
        table.caption = (
            f"trial_NNN: slots of a {spec.sampler} search (pruner: {spec.pruner}); each asks "
            f"{', '.join(spec.space)} just before it trains"
        )
    return table


def _times(scale: float | None) -> str:
    """`model.init_scale`, short: ` x8`, or nothing when off."""
    return f" x{scale:g}" if scale is not None and scale != 1.0 else ""


def _label_noise(config: RunConfig) -> str:
    """A cell's `data.label_noise`, short: `0.4 other`, or `-` when off."""
    noise = config.data.label_noise
    return f"{noise.fraction:g} {noise.kind}" if noise is not None else "-"


def _cures(config: RunConfig) -> str:
    """The everyday cures a cell uses, short: `stop val_loss/10 (val 300 pool), aug t0.1 r10`."""
    t, d, parts = config.train, config.data, []
    stop = t.early_stopping
    if stop is not None:
        parts.append(
            f"stop {stop.monitor}/{stop.patience}"
            + (f" d{stop.min_delta:g}" if stop.min_delta else "")
            + ("" if stop.restore_best else " keep-last")
            + f" (val {d.val_size} {d.val_from})"
        )
    if t.augment is not None:
        a = t.augment
        given = [("t", a.translate), ("r", a.rotate), ("z", a.zoom), ("noise", a.noise)]
        words = [f"{k}{v:g}" for k, v in given if v] + (["flip"] if a.flip else [])
        parts.append("aug " + (" ".join(words) if words else "off"))
    if t.label_smoothing:
        parts.append(f"smooth {t.label_smoothing:g}")
    if config.model.max_norm:
        parts.append(f"max-norm {config.model.max_norm:g}")
    return ", ".join(parts)


class RichObserver:
    """The run display: a study bar with ETA, and one bar per run in progress with its epochs
    and metrics (several at once with --workers)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.study_task: TaskID | None = None
        self.runs: dict[tuple[str, int], TaskID] = {}  # (cell hash, seed) -> its bar
        self.done_epochs: dict[tuple[str, int], int] = {}  # epochs so far, of every run
        self.name = ""
        self.started = 0
        self.total = 0
        self.last_update = 0.0

    def study_started(self, study: Study, todo: list[RunKey], skipped: int) -> None:
        if skipped:
            out.print(f"{skipped} runs already finished in the store: skipped")
        self.name = study.name
        self.total = len(todo)
        if todo:
            # counted in epochs, so the ETA moves within a run and weighs long runs right
            epochs = sum(k.cell.config.train.epochs for k in todo)
            self.study_task = self.progress.add_task(f"[bold]{study.name}", total=epochs)

    def run_started(self, key: RunKey, index: int, total: int) -> None:
        self.started += 1
        if self.study_task is not None:
            self.progress.update(
                self.study_task,
                description=f"[bold]{self.name}[/] run {self.started}/{total}",
            )
        self.runs[(key.cell.hash, key.seed)] = self.progress.add_task(
            f"{escape(key.cell.name)} seed {key.seed}", total=key.cell.config.train.epochs
        )

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        self.done_epochs[(key.cell.hash, key.seed)] = epoch
        now = time.monotonic()
        task = self.runs.get((key.cell.hash, key.seed))
        if task is None or (epoch != epochs and now - self.last_update < 0.2):
            return
        self.last_update = now
        if self.study_task is not None:
            self.progress.update(self.study_task, completed=sum(self.done_epochs.values()))
        self.progress.update(
            task,
            completed=epoch,
            description=f"{escape(key.cell.name)} seed {key.seed}  train {values['train_accuracy']:.3f}"
            f"  test {values['test_accuracy']:.3f}",
        )

    def run_ended(self, result: RunResult) -> None:
        """One line per run, kept above the bars (and the only output when piped to a log)."""
        key = (result.key.cell.hash, result.key.seed)
        task = self.runs.pop(key, None)
        if task is not None:
            self.progress.remove_task(task)
        # a run counts whole once ended, failed or not, so the bar reaches its end
        self.done_epochs[key] = result.key.cell.config.train.epochs
        if self.study_task is not None:
            self.progress.update(self.study_task, completed=sum(self.done_epochs.values()))
        # cell names hold brackets (`plain[init=std:0.01]`), which rich would read as markup
        name = f"{escape(result.key.cell.name)} seed {result.key.seed}"
        if result.status == KILLED:
            self.progress.console.print(f"[yellow]stopped[/]  {name}")
            return
        if result.status == FAILED:
            self.progress.console.print(f"[red]failed[/]   {name}: {result.reason}")
            return
        if result.status == PRUNED:  # a search's trial its pruner ended early
            value = result.final.get("final_val_accuracy", float("nan"))
            self.progress.console.print(
                f"pruned   {name}: {result.reason}, validation {value:.3f}", highlight=False
            )
            return
        if result.status == SKIPPED:  # trained meanwhile by another invocation
            self.progress.console.print(f"elsewhere {name}: {result.reason}", highlight=False)
            return
        final = result.final
        # early stopping: where it stopped, and the epoch kept when not the last one trained
        last = final.get("stopped_epoch", result.key.cell.config.train.epochs)
        stop = f"  stopped at epoch {last:.0f}" if "stopped_epoch" in final else ""
        if final.get("restored_epoch", last) != last:
            stop += f"{',' if stop else ' '} kept epoch {final['restored_epoch']:.0f}"
        self.progress.console.print(
            f"finished {name}: train {final['final_train_accuracy']:.3f}  "
            f"test {final['final_test_accuracy']:.3f}  gap {final['final_gap']:.3f}{stop}  "
            f"({final['train_seconds']:.1f} s)",
            highlight=False,
        )


def summary_table(result: StudyResult) -> Table:
    """The study's cells with their means over seeds; a search's best trials, for a search
    whose trials are asked (`search_table`)."""
    if any(cell.slot is not None for cell in result.study.cells):
        return search_table(result)
    table = Table(title=f"{result.study.name}: final values, mean over seeds")
    table.add_column("cell", no_wrap=True)
    for column in ("seeds", "failed", "train acc", "test acc", "gap"):
        table.add_column(column, justify="right")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for cell in result.cells():
        table.add_row(
            escape(cell.cell),
            str(cell.done),
            f"[red]{cell.failed}[/]" if cell.failed else "0",
            fmt(cell.train_accuracy),
            fmt(cell.test_accuracy),
            fmt(cell.gap),
        )
    return table


SEARCH_TOP = 10  # the trials the end of `overfit run` shows of an adaptive search


def search_table(result: StudyResult) -> Table:
    """An adaptive search's best trials by final validation accuracy, with the settings each
    was asked and the epochs it trained; pruned trials are counted in the caption, not
    ranked."""
    pruned = [r for r in result.results if r.pruned_epoch]
    ranked = sorted(
        (r for r in result.results if r.complete),
        key=lambda r: -r.final.get("final_val_accuracy", float("-inf")),
    )
    slot = next(c.slot for c in result.study.cells if c.slot is not None)
    table = Table(title=f"{result.study.name}: best trials by final validation accuracy")
    table.add_column("trial", no_wrap=True)
    for key in slot.spec.space:
        table.add_column(key.rsplit(".", 1)[-1], justify="right")
    for column in ("val acc", "test acc", "epochs"):
        table.add_column(column, justify="right")
    for run in ranked[:SEARCH_TOP]:
        point = run.key.cell.slot.point if run.key.cell.slot else None
        final = run.final
        table.add_row(
            escape(run.key.cell.name),
            *(short_value((point or {}).get(k), k) for k in slot.spec.space),
            f"{final.get('final_val_accuracy', float('nan')):.3f}",
            f"{final.get('final_test_accuracy', float('nan')):.3f}",
            f"{final.get('stopped_epoch', run.key.cell.config.train.epochs):.0f}",
        )
    table.caption = (
        f"{len(ranked)} trial{'s' if len(ranked) != 1 else ''} finished, {len(pruned)} pruned "
        f"({slot.spec.sampler}, pruner {slot.spec.pruner}); all: the report"
    )
    return table


def progress() -> Progress:
    """The run display's bars: the study's, with its ETA, and one per run in progress."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=out,
        speed_estimate_period=3600,  # the mean pace of the whole study, not the last 30 s
        transient=False,
    )


def print_studies(
    tracker: Tracker, base: str, studies: list[tuple[str, str]] | None = None
) -> None:
    """Each study's runs-table address in the UI at `base`, and how to see cells side by side."""
    from suite.ui_views import runs_url

    if studies is None:
        studies = tracker.studies()
        for _, name in studies:
            tracker.experiment_id(name, create=False)  # gives older studies the saved views
    if not studies:
        out.print(f"no studies in {tracker.uri} yet: overfit run STUDY, then open {base}")
        return
    out.print("the runs of each study, with their final accuracies:")
    width = max(len(name) for _, name in studies)
    for experiment_id, name in studies:
        out.print(
            f"  {name:<{width}}  {runs_url(base, experiment_id)}", soft_wrap=True, highlight=False
        )
    out.print(
        "cells side by side (mean over seeds): menu Views, top right -> cells: mean over seeds",
        soft_wrap=True,
        highlight=False,
    )


def studies_table(tracker: Tracker, studies: list[tuple[str, str]]) -> Table:
    """Each study with its cells and its runs by status."""
    table = Table(title=f"studies in {tracker.uri}")
    for column in ("study", "cells", "finished", "failed", "running", "other"):
        table.add_column(column, justify="left" if column == "study" else "right")
    known = (Stored.FINISHED, Stored.FAILED, Stored.RUNNING)
    for experiment_id, name in studies:
        records = tracker.runs(experiment_id)
        status = [r.status for r in records]
        table.add_row(
            name,
            str(len({r.cell_hash for r in records})),
            str(status.count(Stored.FINISHED)),
            str(status.count(Stored.FAILED)),
            str(status.count(Stored.RUNNING)),
            str(sum(s not in known for s in status)),
        )
    return table
