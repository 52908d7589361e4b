"""The `overfit` command: parse the command line, call the library, print. No logic of its own.

Owns: the commands and their options, turning `--set`, `--seeds` and a study argument into
the library's terms, and turning the library's user-facing errors into one line on stderr and
a non-zero exit. Must not: decide anything a library module decides (executor checks are the
runner's, server command lines `suite.servers`', what is printed and how `suite.display`'s).

Heavy imports (TensorFlow, MLflow) happen inside the commands that need them, so `overfit
--help` and `overfit validate` do not pay for them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import re
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml

from suite import display, servers
from suite.display import out
from suite.spec import SpecError, parse_yaml
from suite.store import DEFAULT_URI
from suite.study import Study, load_study

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" and ".[ray]" as written
    help="Declarative Keras overfitting studies, tracked in MLflow, compared in reports.",
)

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


def exit_with_error(message: str, code: int = 2) -> NoReturn:
    display.error(message)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's user-facing errors into one line and a non-zero exit."""
    from suite.data import DataError

    try:
        yield
    except (SpecError, DataError, servers.ServerError) as e:
        exit_with_error(str(e))
    except Exception as e:
        # classes of modules too heavy to import up front; any of them is loaded if it raised
        loaded = [
            (sys.modules.get(module), name)
            for module, name in (
                ("suite.runner", "OptionError"),
                ("suite.tracking", "TrackingError"),
                ("suite.report.load", "ReportError"),
                ("suite.results", "ResultsError"),
                ("suite.export", "ExportError"),
                ("mlflow.exceptions", "MlflowException"),
            )
        ]
        known = tuple(getattr(m, name) for m, name in loaded if m is not None and hasattr(m, name))
        if isinstance(e, known):
            text = str(e).strip()
            exit_with_error(text.splitlines()[0] if text else type(e).__name__)
        raise


warnings.showwarning = display.warning


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


# the suite's own catalogue, beside the package in a clone (an editable install)
CATALOGUE = Path(__file__).resolve().parents[1] / "experiments"


def study_path(study: str) -> Path:
    """A YAML path as given, or for a bare name `experiments/<name>.yaml` here, else in the
    suite's own catalogue (so `overfit run grokking` works from any folder)."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    here, shipped = EXPERIMENTS / f"{study}.yaml", CATALOGUE / f"{study}.yaml"
    return shipped if not here.is_file() and shipped.is_file() else here


def load(study: str, sets: list[str] | None, missing_data: str = "error") -> Study:
    return load_study(study_path(study), parse_overrides(sets or []), missing_data=missing_data)


@app.command()
def validate(study: StudyArg, set_: SetOpt = None) -> None:
    """Load and expand a study, print its cells; run nothing. Data that is not on this
    machine is a warning saying what would make it available (its cells show no hash: the
    data is part of it)."""
    with user_errors():
        spec = load(study, set_, missing_data="warn")
    out.print(display.cells_table(spec))
    out.print(f"seeds: {list(spec.seeds)}  runs: {len(spec.runs())}")


SeedsOpt = Annotated[
    str | None,
    typer.Option(
        help="Seed numbers to run, not a count (3 is seed 3): one (0), a list (0,1,2) or a "
        "range (0-4) [default: the study's]."
    ),
]
OnlyOpt = Annotated[
    str | None, typer.Option(help="Cells to run: names, variants or hash prefixes, a,b.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the plan; run nothing.")]
RerunOpt = Annotated[bool, typer.Option("--rerun", help="Train finished runs again.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Runs trained at once, each in a worker process [default: one per CPU, "
        "at most one per run; a single run in this process]; 1: in this process.",
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        help="local: in this process, one run at a time; process: in --workers worker "
        "processes; ray: as Ray tasks, here or on a cluster (pip install '.[ray]') "
        "[default: process, unless --workers 1 or a single run to train].",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="With --executor ray: the cluster to join [default: $RAY_ADDRESS, else a "
        "Ray started on this machine]. A cluster needs a tracking server (overfit server).",
    ),
]
CpusOpt = Annotated[
    float, typer.Option(min=0.01, help="With --executor ray: CPUs each run's task takes.")
]


@app.command()
def run(
    study: StudyArg,
    set_: SetOpt = None,
    seeds: SeedsOpt = None,
    only: OnlyOpt = None,
    tracking_uri: UriOpt = None,
    dry_run: DryRunOpt = False,
    rerun: RerunOpt = False,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    cpus_per_run: CpusOpt = 1.0,
) -> None:
    """Train every run of a study not yet FINISHED in the store; log each to MLflow."""
    with user_errors():
        from suite import runner

        runner.check_executor(executor, workers, tracking_uri, ray_address, cpus_per_run)
        spec = load(study, set_)
        if only:
            spec = spec.select(spec.split_names(only))
        seed_list = parse_seeds(seeds) if seeds else None
        runner.check_search_options(spec, seed_list, rerun)
        if not dry_run:
            runner.start_workers(spec, seed_list, workers, executor)
        try:
            from suite.tracking import Tracker

            tracker = Tracker(tracking_uri)
            if dry_run:
                todo = runner.plan(spec, tracker, seed_list, rerun)[0]
                out.print(display.cells_table(spec, seed_list))
                out.print(f"seeds: {list(seed_list or spec.seeds)}")
                n = len(spec.runs(seed_list))
                out.print(
                    f"dry run: {len(todo)} of {n} runs to train, {n - len(todo)} already finished"
                )
                return
            with _interruptible(display.progress()) as progress:
                result = runner.run_study(
                    spec,
                    tracker,
                    seed_list,
                    rerun,
                    display.RichObserver(progress),
                    workers,
                    executor,
                    ray_address,
                    cpus_per_run,
                )
        finally:
            runner.stop_unused_workers()
    out.print(display.summary_table(result))
    line = (
        f"{result.count('finished')} finished, {result.count('skipped')} skipped, "
        f"{result.count('failed')} failed"
        + (f", {result.count('pruned')} pruned" if result.count("pruned") else "")
    )
    out.print(line if result.ok else f"[red]{line}[/]")
    # the store named again when it was given here: the commands work as printed
    store = f" --tracking-uri {shlex.quote(tracker.uri)}" if tracking_uri else ""
    display.plain(
        f"tracking: {tracker.uri}   browse: overfit ui{store}   "
        f"report: overfit report {shlex.quote(spec.name)}{store}"
    )
    if not result.ok:
        raise typer.Exit(1)


@contextmanager
def _interruptible(progress: Any) -> Iterator[Any]:
    """The run display, live; Ctrl-C ends the command with exit code 130."""
    try:
        with progress:
            yield progress
    except KeyboardInterrupt:
        display.err.print(
            "interrupted: finished runs are kept; run the same command again to resume"
        )
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
    studies: Annotated[
        list[str],
        typer.Argument(
            help="A study YAML, or a study name in experiments/; several: side by side."
        ),
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder [default: reports/<study>].")
    ] = None,
    tracking_uri: UriOpt = None,
    set_: SetOpt = None,
    ui_url: UiUrlOpt = None,
    only: Annotated[
        str | None,
        typer.Option(help="With several studies: the cells to show, by name or variant, a,b."),
    ] = None,
) -> None:
    """Write the study's comparison report (HTML + Markdown) from what MLflow holds.

    A study name finds its file where the store records it, else in experiments/.
    Give the same --set overrides the study ran with, so its cells match the stored runs.
    Several studies: their cells side by side in one report (reports/<a+b>), the settings
    that differ between them named.
    """
    notice = None
    with user_errors():
        from suite.report import check_ui_url, locate, write_report
        from suite.tracking import Tracker

        if ui_url is not None:
            ui_url = check_ui_url(ui_url)
        tracker = Tracker(tracking_uri)
        studies = list(dict.fromkeys(studies))
        if only and len(studies) == 1:
            raise SpecError(
                "--only: picks cells of several studies side by side; one study's report "
                "shows every cell it has runs of"
            )
        if len(studies) > 1:
            paths = _side_by_side(studies, tracker, out_dir, ui_url, only)
            display.plain(f"report: {paths.html}")
            display.plain(f"        {paths.markdown}")
            return
        (study,) = studies
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
        with display.err.status(f"writing the report of {name}: reading MLflow, drawing figures"):
            paths = write_report(name, tracker, out_dir, spec, ui_url=ui_url)
    if notice:
        display.warning(notice)
    display.plain(f"report: {paths.html}")
    display.plain(f"        {paths.markdown}")
    if paths.run_id:
        display.plain(f"        stored in MLflow: run {paths.run_id} (artifacts under report/)")


def _study_name(study: str) -> str:
    """A study's name: as given, or read from a study file given by its path."""
    if Path(study).suffix in (".yaml", ".yml"):
        return load_study(study, check_data=False).name
    return study


def _side_by_side(
    studies: list[str], tracker: Any, out_dir: Path | None, ui_url: str | None, only: str | None
) -> Any:
    """`overfit report A B`: the studies' cells in one report (`suite.report.compare`)."""
    from suite.report import write_report
    from suite.report.compare import side_by_side

    names = [_study_name(s) for s in studies]
    cells = [c.strip() for c in (only or "").split(",") if c.strip()]
    side = side_by_side(list(dict.fromkeys(names)), tracker, cells)
    out = out_dir or Path("reports") / "+".join(dict.fromkeys(names))
    with display.err.status(f"writing the report of {side.runs.study}: reading, drawing"):
        return write_report(side.runs.study, tracker, out, None, False, ui_url, side)


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
    with user_errors():
        if not uri.startswith(("http://", "https://")):
            servers.check_port(host, port)  # before seconds of imports
        import suite.tracking
        from suite.tracking import Tracker

        if uri.startswith(("http://", "https://")):
            display.plain(f"the store is a tracking server, whose UI is {uri}")
            display.print_studies(Tracker(uri), uri)
            return
        if sqlite_file(uri) is not None:
            suite.tracking.prepare_store(uri)  # made or migrated under a lock, not by MLflow
        tracker = Tracker(uri)
        base = f"http://{servers.address(host)}:{port}"
        command, env = servers.ui_command(uri, host, port)
        display.plain(f"starting the MLflow UI for {uri} at {base}")
        studies: list[tuple[str, str]] = []

        def starting() -> None:  # while the server imports MLflow
            studies.extend(tracker.studies())
            for _, name in studies:
                tracker.experiment_id(name, create=False)  # gives older studies the saved views

        def ready(seconds: float) -> None:
            out.print(f"MLflow UI ready at {base} after {seconds:.0f} s  (Ctrl-C stops it)")
            display.print_studies(tracker, base, studies)

        code = servers.serve(command, env, host, port, ready, starting)
    raise typer.Exit(code or 0)


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
    with user_errors():
        command, env, destination = servers.server_command(
            backend_store_uri, artifacts_destination, host, port, allowed_hosts, server_workers
        )
        servers.check_port(host, port)
        if servers.server_scheme(backend_store_uri) == "sqlite":
            import suite.tracking

            suite.tracking.prepare_store(backend_store_uri)  # made or migrated under a lock
        where = f"http://{servers.address(host)}:{port}"
        display.plain(
            f"tracking server for {backend_store_uri} (artifacts in {destination}) at "
            f"{where}  (Ctrl-C stops it)"
        )
        display.plain(f"log to it:  MLFLOW_TRACKING_URI={where} overfit run ...")

        def ready(seconds: float) -> None:
            out.print(f"ready after {seconds:.0f} s", highlight=False)

        code = servers.serve(command, env, host, port, ready)
    raise typer.Exit(code or 0)


@app.command()
def export(
    studies: Annotated[
        list[str], typer.Argument(help="Study names (as in the store), or their study YAMLs.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="csv, parquet or json (records).")] = "csv",
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder [default: reports/<study>/data]."),
    ] = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Write the studies' runs, curves and summary (suite.results) as files, one each."""
    with user_errors():
        from suite.export import check_format
        from suite.export import export as write

        names = [_study_name(s) for s in studies]
        paths = write(list(dict.fromkeys(names)), check_format(fmt), out_dir, tracking_uri)
    for path in paths:
        display.plain(f"written: {path}")


@app.command("list")
def list_(tracking_uri: UriOpt = None) -> None:
    """Studies in the store, with runs finished / failed / running per study."""
    with user_errors():
        from suite.tracking import Tracker

        tracker = Tracker(tracking_uri)
        # a local store that is not there has no studies; asking would create it
        studies = tracker.studies() if tracker.exists() else []
        if not studies:
            display.plain(f"no studies in {tracker.uri}")
            return
        table = display.studies_table(tracker, studies)
    out.print(table)


def main() -> None:
    """Console-script entry point (and `python -m suite`)."""
    try:
        app(prog_name="overfit")
        code = 0
    except SystemExit as end:
        if isinstance(end.code, str):
            display.err.print(end.code, markup=False, highlight=False)
        code = end.code if isinstance(end.code, int) else int(end.code is not None)
    _end(code)


def _end(code: int) -> NoReturn:
    """End the process with `code`. Once TensorFlow is loaded, the interpreter's teardown of
    its and MLflow's modules takes about 0.9 s (measured on 2 cores), a quarter of a
    one-epoch run: it is skipped when nothing is left to finish (every run is logged and its
    store committed before a command returns; output and logs flushed here; no worker
    process, no Ray)."""
    if "tensorflow" in sys.modules and "ray" not in sys.modules:
        import logging
        import multiprocessing

        if not multiprocessing.active_children():
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)
