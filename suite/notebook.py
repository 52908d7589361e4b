"""The suite from Python, as a notebook uses it: load a study, run it, report it.

    import suite
    study = suite.load("experiments/overfitting.yaml", set={"train.epochs": 20})
    result = suite.run(study, seeds=[0, 1], only=["baseline", "weight_decay"])
    paths = suite.report(study)
    suite.results.summary(study.name)    # the frames: see `suite.results`

`run` trains what `overfit run` would (finished runs are skipped; `rerun=True` trains them
again) and shows its progress where it runs: in a notebook, one bar per study that updates in
place in the cell's output (IPython's display, no widget library needed); in a terminal,
`overfit run`'s bars. Its defaults are the CLI's (worker processes, one per CPU, for two
runs or more; `workers=1` trains in the notebook's process). A worker process imports the
program's main module, so a script must keep its calls under `if __name__ == "__main__":`;
one without that guard trains in its own process, with a warning saying why. A run that fails is reported
in the returned result (`result.ok`, `result.count("failed")`), as the CLI's exit status.

Owns: the notebook-facing functions and the notebook progress display. Must not: hold logic
of the runner, the report or the frames (it calls `suite.runner`, `suite.report`,
`suite.results`).
"""

from __future__ import annotations

import html
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from suite.lifecycle import RunResult
from suite.names import FAILED
from suite.study import RunKey, Study, load_study

__all__ = ["load", "report", "run"]


def load(path: str | Path, set: Mapping[str, Any] | None = None) -> Study:  # noqa: A002
    """A study file loaded, validated and expanded, with `set` overrides (dotted keys, as
    `--set`) applied to every cell; a bare name is `experiments/<name>.yaml`.

    Raises:
        suite.spec.SpecError: one line naming the file and key of the first problem.
    """
    given = Path(path)
    if given.suffix not in (".yaml", ".yml") and not given.exists():
        given = Path("experiments") / f"{path}.yaml"
    return load_study(given, dict(set or {}))


def run(
    study: Study,
    seeds: Iterable[int] | None = None,
    uri: str | None = None,
    workers: int | None = None,
    only: Iterable[str] | None = None,
    rerun: bool = False,
    executor: str | None = None,
) -> Any:
    """Train every run of `study` (its `seeds`, or these; its cells, or those in `only`) not
    yet FINISHED in the store at `uri`, showing progress; returns the `StudyResult`."""
    import multiprocessing

    from suite import runner
    from suite.tracking import Tracker

    if multiprocessing.parent_process() is not None:
        raise RuntimeError(
            "suite.run was called in a worker process, which re-ran your script: put the "
            'script\'s calls under `if __name__ == "__main__":`, or pass workers=1'
        )
    if workers is None and executor in (None, "process") and _unguarded_script():
        warnings.warn(
            'your script\'s calls are not under `if __name__ == "__main__":`, which worker '
            "processes need (each would run the script again): training in this process",
            stacklevel=2,
        )
        workers = 1
    if only:
        study = study.select(list(only))
    chosen = tuple(seeds) if seeds is not None else None
    tracker = Tracker(uri)
    observer = NotebookProgress() if _in_notebook() else None
    if observer is None:
        from suite import display

        with display.progress() as bars:
            result = runner.run_study(
                study, tracker, chosen, rerun, display.RichObserver(bars), workers, executor
            )
    else:
        result = runner.run_study(study, tracker, chosen, rerun, observer, workers, executor)
        observer.close(result)
    return result


def report(study: Study | str, uri: str | None = None, out: str | Path | None = None) -> Any:
    """Write the study's report (as `overfit report`) and return its paths (`.html`,
    `.markdown`, `.folder`); a name finds its study file as `overfit report NAME` does."""
    from suite.report import locate, write_report
    from suite.tracking import Tracker

    tracker = Tracker(uri)
    spec = study if isinstance(study, Study) else None
    if spec is None:
        found = locate(str(study), tracker)
        spec = load_study(found.path, check_data=False) if found.path is not None else None
    name = spec.name if spec is not None else str(study)
    return write_report(name, tracker, Path(out) if out else None, spec)


def _unguarded_script() -> bool:
    """True when the program is a script file without an `if __name__ == "__main__":` guard,
    which worker processes (spawned: each imports the main module) would run again."""
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None or _in_notebook() or not Path(path).is_file():
        return False
    return re.search(r"""__name__\s*==\s*['"]__main__['"]""", Path(path).read_text()) is None


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), not in a terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class NotebookProgress:
    """The run display in a notebook cell: a bar of the study's epochs, the runs in progress
    with their latest accuracies, and a line per run ended; updated in place, at most 4
    times a second."""

    def __init__(self) -> None:
        from IPython.display import HTML, display

        self._html = HTML
        self.handle = display(HTML("<i>starting</i>"), display_id=True)
        self.name = ""
        self.total = 0
        self.done: dict[tuple[str, int], int] = {}
        self.live: dict[tuple[str, int], str] = {}
        self.ended: list[str] = []
        self.last = 0.0
        self.start = time.monotonic()

    def study_started(self, study: Study, todo: list[RunKey], skipped: int) -> None:
        self.name = study.name
        self.total = sum(k.cell.config.train.epochs for k in todo)
        if skipped:
            self.ended.append(f"{skipped} runs already finished in the store: skipped")
        self._show(force=True)

    def run_started(self, key: RunKey, index: int, total: int) -> None:
        self.live[(key.cell.hash, key.seed)] = f"{key.cell.name} seed {key.seed}"
        self._show()

    def epoch_done(self, key: RunKey, epoch: int, epochs: int, values: dict[str, float]) -> None:
        ident = (key.cell.hash, key.seed)
        self.done[ident] = epoch
        self.live[ident] = (
            f"{key.cell.name} seed {key.seed}: epoch {epoch}/{epochs}, train "
            f"{values['train_accuracy']:.3f}, test {values['test_accuracy']:.3f}"
        )
        self._show()

    def run_ended(self, result: RunResult) -> None:
        key = result.key
        ident = (key.cell.hash, key.seed)
        self.live.pop(ident, None)
        self.done[ident] = key.cell.config.train.epochs
        name = f"{key.cell.name} seed {key.seed}"
        if result.status == FAILED:
            self.ended.append(f"failed {name}: {result.reason}")
        else:
            final = result.final
            test = final.get("final_test_accuracy")
            self.ended.append(
                f"{result.status} {name}"
                + (
                    f": test {test:.3f}, gap {final.get('final_gap', 0):.3f}"
                    if test is not None
                    else ""
                )
            )
        self._show(force=True)

    def close(self, result: Any) -> None:
        self.live.clear()
        self.ended.append(
            f"{result.count('finished')} finished, {result.count('skipped')} skipped, "
            f"{result.count('failed')} failed"
            + (f", {result.count('pruned')} pruned" if result.count("pruned") else "")
            + f" in {time.monotonic() - self.start:.0f} s"
        )
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.25:
            return
        self.last = now
        done = sum(self.done.values())
        bar = f'<progress value="{done}" max="{max(self.total, 1)}" style="width: 24em"></progress>'
        lines = [f"<b>{html.escape(self.name)}</b> {bar} {done}/{self.total} epochs"]
        lines += [html.escape(text) for text in self.live.values()]
        lines += [html.escape(text) for text in self.ended[-20:]]
        self.handle.update(self._html("<br>".join(lines)))
