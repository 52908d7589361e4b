"""The `overfit` command: parse (`--seeds` and `--set` included), call the library, print.

Heavy imports (TensorFlow, MLflow) happen inside the commands that need them, so `overfit
--help` and `overfit validate` do not pay for them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
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

from suite.spec import SpecError, describe_init, parse_yaml
from suite.store import DEFAULT_URI
from suite.study import RunKey, Study, load_study

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" and ".[ray]" as written
    help="Declarative Keras overfitting studies, tracked in MLflow, compared in reports.",
)
# piped output is not cut to 80 columns: tables go to logs and files whole
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 400)

EXPERIMENTS = Path("experiments")

StudyArg = Annotated[str, typer.Argument(help="A study YAML, or a study name in experiments/.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override every cell: dotted KEY=VALUE (YAML scalar). Repeatable."),
]
UriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's user-facing errors into one line and a non-zero exit."""
    from suite.data import DataError

    try:
        yield
    except (SpecError, DataError) as e:
        fail(str(e))
    except Exception as e:
        # classes of modules too heavy to import up front; any of them is loaded if it raised
        loaded = [
            sys.modules.get(m) for m in ("suite.tracking", "suite.report.load", "mlflow.exceptions")
        ]
        known = tuple(
            getattr(module, name)
            for module in loaded
            if module is not None
            for name in ("TrackingError", "ReportError", "MlflowException")
            if hasattr(module, name)
        )
        if isinstance(e, known):
            text = str(e).strip()
            fail(text.splitlines()[0] if text else type(e).__name__)
        raise


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


warnings.showwarning = _show_warning


def study_path(study: str) -> Path:
    """A YAML path as given, or `experiments/<name>.yaml` for a bare name."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return EXPERIMENTS / f"{study}.yaml"


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


def load(study: str, sets: list[str] | None) -> Study:
    return load_study(study_path(study), parse_overrides(sets or []))


def cells_table(study: Study) -> Table:
    table = Table(title=f"{study.name}: {len(study.cells)} cells x {len(study.seeds)} seeds")
    widest = max((len(c.name) for c in study.cells), default=4)
    table.add_column("cell", no_wrap=True, min_width=min(widest, 48))
    table.add_column("hash", no_wrap=True, min_width=10)
    for column in ("hidden", "init", "wd", "dropout", "bn", "optimizer", "epochs"):
        table.add_column(column)
    for cell in study.cells:
        m, t = cell.config.model, cell.config.train
        table.add_row(
            escape(cell.name),
            cell.hash,
            "x".join(str(h) for h in m.hidden),
            describe_init(m.init),
            f"{m.weight_decay:g}",
            f"{m.dropout:g} {m.dropout_style}" if m.dropout else "-",
            "yes" if m.batch_norm else "-",
            f"{t.optimizer.name} {t.optimizer.learning_rate:g}",
            str(t.epochs),
        )
    return table


@app.command()
def validate(study: StudyArg, set_: SetOpt = None) -> None:
    """Load and expand a study, print its cells; run nothing."""
    with user_errors():
        spec = load(study, set_)
    out.print(cells_table(spec))
    out.print(f"seeds: {list(spec.seeds)}  runs: {len(spec.runs())}")


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

    def run_ended(self, result: Any) -> None:
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
        if result.status == "killed":
            self.progress.console.print(f"[yellow]stopped[/]  {name}")
            return
        if result.status == "failed":
            self.progress.console.print(f"[red]failed[/]   {name}: {result.reason}")
            return
        if result.status == "skipped":  # trained meanwhile by another invocation
            self.progress.console.print(f"elsewhere {name}: {result.reason}", highlight=False)
            return
        final = result.final
        self.progress.console.print(
            f"finished {name}: train {final['final_train_accuracy']:.3f}  "
            f"test {final['final_test_accuracy']:.3f}  gap {final['final_gap']:.3f}  "
            f"({final['train_seconds']:.1f} s)",
            highlight=False,
        )


def summary_table(result: Any) -> Table:
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


@app.command()
def run(
    study: StudyArg,
    set_: SetOpt = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Seeds to run: one (0), a list (0,1,2) or a range (0-4) [default: the study's]."
        ),
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="Cells to run: names, variants or hash prefixes, a,b.")
    ] = None,
    tracking_uri: UriOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; run nothing.")] = False,
    rerun: Annotated[bool, typer.Option("--rerun", help="Train finished runs again.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Runs trained at once, each in a worker process [default: one per CPU, "
            "at most one per run]; 1: in this process.",
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local: in this process, one run at a time; process: in --workers worker "
            "processes; ray: as Ray tasks, here or on a cluster (pip install '.[ray]') "
            "[default: process, unless --workers 1].",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --executor ray: the cluster to join [default: $RAY_ADDRESS, else a "
            "Ray started on this machine]. A cluster needs a tracking server (overfit server).",
        ),
    ] = None,
    cpus_per_run: Annotated[
        float,
        typer.Option(min=0.01, help="With --executor ray: CPUs each run's task takes."),
    ] = 1.0,
) -> None:
    """Train every run of a study not yet FINISHED in the store; log each to MLflow."""
    from suite.pool import EXECUTORS

    if executor is not None and executor not in EXECUTORS:
        fail(f"--executor: expected {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and workers not in (None, 1):
        fail(
            f"--workers {workers}: the local executor trains one run at a time; use --executor process"
        )
    if executor != "ray" and (ray_address is not None or cpus_per_run != 1.0):
        option = "--ray-address" if ray_address is not None else "--cpus-per-run"
        fail(f"{option}: only with --executor ray")
    if executor == "ray":
        from suite import ray_executor
        from suite.store import resolve_uri

        try:
            ray_executor.check_store(resolve_uri(tracking_uri), ray_executor.address(ray_address))
        except ValueError as e:
            fail(str(e))
        if not ray_executor.available():
            fail(ray_executor.MISSING)
    with user_errors():
        spec = load(study, set_)
        if only:
            spec = spec.select(spec.split_names(only))
        seed_list = parse_seeds(seeds) if seeds else None
        from suite import pool

        if not dry_run and executor in (None, "process") and workers != 1:
            # workers import TensorFlow while this process imports MLflow and plans
            runs = len(spec.runs(seed_list))
            wanted = min(workers or pool.default_workers(runs), runs)
            if wanted >= 1:
                pool.warm_up(wanted)
        try:
            from suite.runner import plan, run_study
            from suite.tracking import Tracker

            tracker = Tracker(tracking_uri)
            if dry_run:
                todo = plan(spec, tracker, seed_list, rerun)[0]
                out.print(cells_table(spec))
                n = len(spec.runs(seed_list))
                out.print(
                    f"dry run: {len(todo)} of {n} runs to train, {n - len(todo)} already finished"
                )
                return
            with _progress() as progress:
                result = run_study(
                    spec,
                    tracker,
                    seed_list,
                    rerun,
                    RichObserver(progress),
                    workers,
                    executor,
                    ray_address,
                    cpus_per_run,
                )
        finally:
            pool.discard_warm()
    out.print(summary_table(result))
    line = (
        f"{result.count('finished')} finished, {result.count('skipped')} skipped, "
        f"{result.count('failed')} failed"
    )
    out.print(line if result.ok else f"[red]{line}[/]")
    out.print(
        f"tracking: {tracker.uri}   browse: overfit ui   report: overfit report {spec.name}",
        soft_wrap=True,
        highlight=False,
    )
    if not result.ok:
        raise typer.Exit(1)


@contextmanager
def _progress() -> Iterator[Progress]:
    progress = Progress(
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
    try:
        with progress:
            yield progress
    except KeyboardInterrupt:
        err.print("interrupted: finished runs are kept; run the same command again to resume")
        raise typer.Exit(130) from None


UiUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--ui-url",
        help="The MLflow UI the report's run links point at, http(s)://host[:port] "
        "[default: the tracking server when the store is one, else http://127.0.0.1:5000, "
        "where `overfit ui` serves].",
    ),
]


@app.command()
def report(
    study: StudyArg,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder [default: reports/<study>].")
    ] = None,
    tracking_uri: UriOpt = None,
    set_: SetOpt = None,
    ui_url: UiUrlOpt = None,
) -> None:
    """Write the study's comparison report (HTML + Markdown) from what MLflow holds.

    A study name finds its file where the store records it, else in experiments/.
    Give the same --set overrides the study ran with, so its cells match the stored runs.
    """
    notice = None
    with user_errors():
        from suite.report import check_ui_url, locate, write_report
        from suite.tracking import Tracker

        if ui_url is not None:
            ui_url = check_ui_url(ui_url)
        tracker = Tracker(tracking_uri)
        name = study
        spec = None
        given = Path(study)
        path: Path | None = given
        if given.suffix in (".yaml", ".yml") or given.is_file():
            if not given.is_file():
                raise SpecError(f"{study}: no such study file")
        else:  # a study name: the file the store records, else experiments/<name>.yaml
            found = locate(study, tracker)
            path, notice = found.path, found.notice
        if path is not None:
            spec = load_study(path, parse_overrides(set_ or []), check_data=False)
            name = spec.name
        with err.status(f"writing the report of {name}: reading MLflow, drawing figures"):
            paths = write_report(name, tracker, out_dir, spec, ui_url=ui_url)
    if notice:
        err.print(f"[yellow]warning:[/] {escape(notice)}", highlight=False, soft_wrap=True)
    out.print(f"report: {paths.html}", soft_wrap=True, highlight=False)
    out.print(f"        {paths.markdown}", soft_wrap=True, highlight=False)
    if paths.run_id:
        out.print(
            f"        stored in MLflow: run {paths.run_id} (artifacts under report/)",
            soft_wrap=True,
            highlight=False,
        )


@app.command()
def ui(
    tracking_uri: UriOpt = None,
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI over the same store `run` writes to, and print the address of each
    study's runs table (their final accuracies shown, best test accuracy first)."""
    from suite.store import resolve_uri, sqlite_file

    uri = resolve_uri(tracking_uri)
    if not uri.startswith(("http://", "https://")):
        _check_port(host, port)  # before seconds of imports
    with user_errors():
        from suite.tracking import Tracker, prepare_store

        if uri.startswith(("http://", "https://")):
            out.print(f"the store is a tracking server, whose UI is {uri}", highlight=False)
            _print_studies(Tracker(uri), uri)
            return
        if sqlite_file(uri) is not None:
            prepare_store(uri)  # made or migrated under a lock, not by MLflow's server
        tracker = Tracker(uri)
        base = f"http://{_address(host)}:{port}"
        command, env = mlflow_command("ui", uri, host, port, 1, "--uvicorn-opts", "--no-access-log")
        out.print(f"starting the MLflow UI for {uri} at {base}", soft_wrap=True, highlight=False)
        studies: list[tuple[str, str]] = []

        def starting() -> None:  # while the server imports MLflow
            studies.extend(tracker.studies())
            for _, name in studies:
                tracker.experiment_id(name, create=False)  # gives older studies the saved views

        def ready(seconds: float) -> None:
            out.print(f"MLflow UI ready at {base} after {seconds:.0f} s  (Ctrl-C stops it)")
            _print_studies(tracker, base, studies)

        _serve(command, env, host, port, ready, starting)


def _print_studies(tracker: Any, base: str, studies: list[tuple[str, str]] | None = None) -> None:
    """Each study's runs-table address in the UI at `base`, and how to see cells side by side."""
    from suite.tracking import runs_url

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


def mlflow_command(
    kind: str, store: str, host: str, port: int, workers: int, *options: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `mlflow ui` or `mlflow server` (`kind`), lean:
    `workers` server processes and MLflow's job runner off. The runner (GenAI scorers, trace
    roll-ups: none of them used here) is 8 more processes of ~240 MB each, and its start
    doubles the wait for the first answer; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true has it."""
    command = [sys.executable, "-m", "mlflow", kind, "--backend-store-uri", store]
    command += ["--host", host, "--port", str(port), "--workers", str(workers), *options]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # each server process warns of a deprecation inside MLflow, which no user can act on
    quiet = "ignore:starlette.middleware.wsgi is deprecated"
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), quiet]))
    return command, env


def _address(host: str) -> str:
    """Where this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _check_port(host: str, port: int) -> None:
    """A port already taken (or an address not of this machine) is a one-line error."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                fail(
                    f"port {port} on {host} is in use (another MLflow UI or server?): stop "
                    "it, or choose another port with --port N"
                )
            fail(f"cannot listen on {host}:{port}: {e.strerror or e}")


def _serve(
    command: list[str],
    env: dict[str, str],
    host: str,
    port: int,
    ready: Callable[[float], None],
    starting: Callable[[], None] | None = None,
) -> NoReturn:
    """Run an MLflow server until it ends or Ctrl-C: `starting()` as it starts, `ready(seconds)`
    once it answers."""
    import urllib.error
    import urllib.request

    _check_port(host, port)  # again: it may have been taken meanwhile
    health = f"http://{_address(host)}:{port}/health"
    started = time.monotonic()
    process = subprocess.Popen(command, env=env)
    try:
        if starting is not None:
            try:
                starting()
            except BaseException:
                process.terminate()
                process.wait()
                raise
        while process.poll() is None:
            try:
                with urllib.request.urlopen(health, timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                time.sleep(0.5)
        if process.poll() is None:
            ready(time.monotonic() - started)
        code = process.wait()
    except KeyboardInterrupt:  # the server had the terminal's Ctrl-C too
        try:
            process.wait(timeout=15)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.terminate()
            process.wait()
        code = 0
    raise typer.Exit(code)


@app.command()
def server(
    backend_store_uri: Annotated[
        str,
        typer.Option(
            help="Where runs are stored: sqlite:///path.db, or postgresql://user:pass@host/db "
            "(needs pip install '.[postgres]').",
        ),
    ] = DEFAULT_URI,
    artifacts_destination: Annotated[
        str,
        typer.Option(help="Where the server keeps the artifacts it proxies (a folder or URI)."),
    ] = "mlartifacts",
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 serves other machines too.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host headers the server accepts, comma-separated [default: MLflow's: "
            "localhost and private addresses]; give the DNS name clients use."
        ),
    ] = None,
    server_workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes [default: 1 for sqlite, which takes one writer at a "
            "time; 4 otherwise].",
        ),
    ] = None,
) -> None:
    """Serve a tracking server (mlflow server, artifacts proxied) for runs from many
    machines or invocations: point them at it with MLFLOW_TRACKING_URI=http://HOST:PORT."""
    scheme = backend_store_uri.partition(":")[0].partition("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql"):
        fail(
            f"--backend-store-uri: expected sqlite:///path.db or postgresql://user:pass@host/db, "
            f"got {backend_store_uri!r}"
        )
    driver = backend_store_uri.partition(":")[0].partition("+")[2] or "psycopg"
    if scheme == "postgresql" and not _importable(driver):
        fail(
            f"--backend-store-uri {scheme}: its driver ({driver}) is not installed: "
            "pip install '.[postgres]'"
        )
    _check_port(host, port)
    if scheme == "sqlite":
        with user_errors():
            from suite.tracking import prepare_store

            prepare_store(backend_store_uri)  # made or migrated under a lock, not by MLflow
    destination = artifacts_destination
    if "://" not in destination:
        destination = str(Path(destination).resolve())
    options = ["--serve-artifacts", "--artifacts-destination", destination]
    if allowed_hosts:
        options += ["--allowed-hosts", allowed_hosts]
    workers_ = server_workers or (1 if scheme == "sqlite" else 4)
    command, env = mlflow_command("server", backend_store_uri, host, port, workers_, *options)
    address = _address(host)
    out.print(
        f"tracking server for {backend_store_uri} (artifacts in {destination}) at "
        f"http://{address}:{port}  (Ctrl-C stops it)",
        soft_wrap=True,
        highlight=False,
    )
    out.print(
        f"log to it:  MLFLOW_TRACKING_URI=http://{address}:{port} overfit run ...",
        soft_wrap=True,
        highlight=False,
    )

    def ready(seconds: float) -> None:
        out.print(f"ready after {seconds:.0f} s", highlight=False)

    _serve(command, env, host, port, ready)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@app.command("list")
def list_(tracking_uri: UriOpt = None) -> None:
    """Studies in the store, with runs finished / failed / running per study."""
    with user_errors():
        from suite.tracking import Tracker

        tracker = Tracker(tracking_uri)
        # a local store that is not there has no studies; asking would create it
        studies = tracker.studies() if tracker.exists() else []
        if not studies:
            out.print(f"no studies in {tracker.uri}", soft_wrap=True, highlight=False)
            return
        table = Table(title=f"studies in {tracker.uri}")
        for column in ("study", "cells", "finished", "failed", "running", "other"):
            table.add_column(column, justify="left" if column == "study" else "right")
        for experiment_id, name in studies:
            records = tracker.runs(experiment_id)
            status = [r.status for r in records]
            known = ("FINISHED", "FAILED", "RUNNING")
            table.add_row(
                name,
                str(len({r.cell_hash for r in records})),
                str(status.count("FINISHED")),
                str(status.count("FAILED")),
                str(status.count("RUNNING")),
                str(sum(s not in known for s in status)),
            )
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="overfit")
