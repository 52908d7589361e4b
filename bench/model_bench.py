"""What logging a run's network costs (`make bench`, section `model`), measured in one invocation.

The canonical run (experiments/overfitting.yaml, cell `baseline`, seed 0) through
`suite.runner.run_study` in this process, each time into a new sqlite store (made before the
clock starts), as the study is and with `log_model: final` and `log_model: best`; each once
first (compiling: `best` has a program of its own), then timed `TRIES` times, tries
interleaved, best of each, in wall and in CPU seconds (this process's, every thread: less
moved by other processes on the machine). The difference to the run without is what the
setting costs a run: saving the network to a file after training, reading it back, writing
the MLflow model and copying it into the store (each timed apart), and for `best` the copies
of the weights at each new best test accuracy inside the compiled epochs.

Usage: imported by bench/bench.py; `python bench/model_bench.py [EPOCHS [TRIES]]` prints them
alone, with every try's seconds.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRIES = 5
SETTINGS = (None, "final", "best")  # log_model


class _Clock:
    """Seconds spent in the calls that logging a network adds, added up per try: saving it
    after training (`suite.models.save_network`, where the run trains), reading it back
    (`SavedNetwork.load`, where it is logged) and `Tracker.log_model`."""

    PARTS = ("save", "load", "log_model")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    def wrap(self, part: str, call: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed


def measure(data_path: Path | None, epochs: int, tries: int = TRIES) -> dict[str, Any]:
    """The canonical run without `log_model`, with `final` and with `best`: wall and CPU
    seconds (this process's, every thread) per try, the best of each, and the seconds in the
    calls logging a network adds (see `_Clock`)."""
    from suite import models, train
    from suite.runner import run_study
    from suite.study import load_study
    from suite.tracking import Tracker

    overrides: dict[str, Any] = {"train.epochs": epochs}
    if data_path:
        overrides["data.path"] = str(data_path)
    plain = load_study(ROOT / "experiments" / "overfitting.yaml", overrides).select(["baseline"])
    clock = _Clock()
    originals = (train.save_network, models.SavedNetwork.load, Tracker.log_model)
    train.save_network = clock.wrap("save", originals[0])  # type: ignore[assignment]
    models.SavedNetwork.load = clock.wrap("load", originals[1])  # type: ignore[method-assign]
    Tracker.log_model = clock.wrap("log_model", originals[2])  # type: ignore[method-assign]
    tries_of: dict[str, list[dict[str, float]]] = {str(s): [] for s in SETTINGS}
    size = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for attempt in range(tries + 1):  # the first compiles each program: not counted
                for setting in SETTINGS:
                    study = dataclasses.replace(plain, log_model=setting)
                    store = Path(tmp) / f"{setting}-{attempt}"
                    store.mkdir()
                    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}")
                    tracker.client.search_experiments()  # the store made before the clock
                    clock.seconds = dict.fromkeys(clock.PARTS, 0.0)
                    wall, cpu = time.perf_counter(), time.process_time()
                    result = run_study(study, tracker, seeds=(0,), workers=1)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    assert result.ok and result.count("finished") == 1, "the run did not finish"
                    if attempt:
                        tries_of[str(setting)].append({"wall": wall, "cpu": cpu, **clock.seconds})
                    if setting == "final":
                        logged = (store / "mlartifacts").glob("**/artifacts/model")
                        files = [f for m in logged for f in m.rglob("*") if f.is_file()]
                        size = sum(f.stat().st_size for f in files)
    finally:
        train.save_network = originals[0]  # type: ignore[assignment]
        models.SavedNetwork.load = originals[1]  # type: ignore[method-assign]
        Tracker.log_model = originals[2]  # type: ignore[method-assign]
    best = {
        name: {key: min(t[key] for t in found) for key in ("wall", "cpu", *clock.PARTS)}
        for name, found in tries_of.items()
    }
    return {
        "epochs": epochs,
        "tries": tries_of,
        "best": best,
        "extra_wall_seconds": {
            s: best[s]["wall"] - best["None"]["wall"] for s in ("final", "best")
        },
        "extra_cpu_seconds": {s: best[s]["cpu"] - best["None"]["cpu"] for s in ("final", "best")},
        "model_bytes": size,
    }


def rows(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The bench table's rows for logging a run's network."""
    if not record:
        return []
    plain = record["best"]["None"]
    out = [
        (
            "canonical run through run_study, no log_model",
            f"{plain['wall']:.2f} s",
            f"best of {len(record['tries']['None'])}; CPU {plain['cpu']:.2f} s",
        )
    ]
    for setting in ("final", "best"):
        found = record["best"][setting]
        wall, cpu = record["extra_wall_seconds"][setting], record["extra_cpu_seconds"][setting]
        out.append(
            (
                f"  the same with log_model: {setting}",
                f"{found['wall']:.2f} s",
                f"{wall:+.2f} s ({100 * wall / plain['wall']:+.0f}%), CPU {cpu:+.2f} s; "
                f"save {found['save']:.2f} + load {found['load']:.2f} "
                f"+ log_model {found['log_model']:.2f} s",
            )
        )
    out.append(("  the logged model's artifacts", f"{record['model_bytes'] / 1e6:.2f} MB", ""))
    return out


if __name__ == "__main__":
    import os

    os.environ.setdefault("SUITE_OFFLINE", "1")
    shared = ROOT.parent / "shared" / "data" / "mnist.npz"
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_EPOCHS", "200"))
    tries = int(sys.argv[2]) if len(sys.argv) > 2 else TRIES
    measured = measure(shared if shared.is_file() else None, epochs, tries)
    for name, value, note in rows(measured):
        print(f"  {name:<52} {value:>10}  {note}")
    for setting, found in measured["tries"].items():
        wall = ", ".join(f"{t['wall']:.2f}" for t in found)
        cpu = ", ".join(f"{t['cpu']:.2f}" for t in found)
        print(f"  log_model {setting}: wall {wall} s; CPU {cpu} s")
