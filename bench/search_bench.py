"""Does a search that learns pay? (`make bench`, section `search`), measured in one invocation.

`experiments/hparam_search.yaml`'s question (textbook section 6.5: 400 training and 100
validation images, 784-100x6-10 ReLU, SGD, 50 epochs; weight decay 10^U(-8,-4) and learning
rate 10^U(-6,-2), ranked by final validation accuracy) searched twice for each search seed,
with the same number of trials: by random search as the study file has it, and by
`experiments/hparam_tpe.yaml` (TPE with Hyperband pruning) as built, both with their
`search.trials` and `search.seed` replaced. Each search runs through
`suite.runner.run_study`, one worker (in this process), into a new sqlite store; then its
runs are read back from the store: the trials in the order they were asked (`trial` tag; a
random search's cell name `trial_NNN`), each trial's epochs trained and whether it was
pruned, and the best validation accuracy so far against the epochs trained so far (a pruned
trial adds its epochs and never a best).

The gate, as means over the seeds: TPE + Hyperband comes within 0.01 of the random search's
final best (same seed) in at most a third of the random search's epochs, ends with a best at
least as good, and trains fewer epochs in all. `--extra median` adds TPE with the median
pruner, labelled apart, to explain a result; the gate is TPE + Hyperband's alone.

Usage: imported by bench/bench.py; `python bench/search_bench.py [--seeds 0 1 2]
[--trials 60] [--extra median]` prints the table and writes `bench/results/search.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS = (0, 1, 2)
TRIALS = 60
TOLERANCE = 0.01  # "within 0.01 of random search's final best": one validation image of 100
SHARE = 1 / 3  # the gate: within TOLERANCE in at most this share of random search's epochs
CURVE_AT = (250, 500, 750, 1000, 1500, 2000, 3000)  # cumulative epochs for the curve table
# a search: (label, study file, what replaces its file's search settings besides trials/seed)
SEARCHES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "random": ("random", "hparam_search.yaml", {}),
    "tpe_hyperband": ("TPE + Hyperband", "hparam_tpe.yaml", {}),
    "tpe_median": ("TPE + median (extra)", "hparam_tpe.yaml", {"pruner": "median"}),
}
HEADLINE = ("random", "tpe_hyperband")
# accuracies are counts over 100 images: compare with room for float rounding
EPS = 1e-9
STARTED = time.perf_counter()


def step(what: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {what}", flush=True)


def load(name: str, seed: int, trials: int) -> Any:
    """The search's study file with its `search` block's trials and seed (and the search's own
    replacements) set: `--set` reaches the cells' settings, not the search's."""
    from suite.spec import read_study_file
    from suite.study import build_study

    _, filename, replaced = SEARCHES[name]
    path = ROOT / "experiments" / filename
    raw = read_study_file(path)
    raw["search"] = {**raw["search"], "trials": trials, "seed": seed, **replaced}
    return build_study(raw, path, {})


class _Progress:
    """The runner's observer: a progress line every 10 trials (pruned so far, best so far)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.ended = label, total, 0
        self.pruned, self.best = 0, float("nan")

    def study_started(self, study: Any, todo: list[Any], skipped: int) -> None:
        pass

    def run_started(self, key: Any, index: int, total: int) -> None:
        pass

    def epoch_done(self, key: Any, epoch: int, epochs: int, values: dict[str, float]) -> None:
        pass

    def run_ended(self, result: Any) -> None:
        self.ended += 1
        if result.status == "pruned":
            self.pruned += 1
        else:
            value = result.final.get("final_val_accuracy", float("nan"))
            if not value <= self.best:  # the first value, or a better one
                self.best = value
        if self.ended % 10 == 0 or self.ended == self.total:
            step(
                f"  {self.label}: {self.ended}/{self.total} trials, {self.pruned} pruned, "
                f"best so far {self.best:.2f}"
            )


class _AskClock:
    """Seconds spent asking each adaptive slot its point (`Coordinator.ask`: the replay of
    the store's trials and the sampler's ask)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __enter__(self) -> _AskClock:
        from suite import search

        self.original = search.Coordinator.ask
        original, seconds = self.original, self.seconds

        def ask(coordinator: Any, key: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(coordinator, key)
            finally:
                seconds.append(time.perf_counter() - start)

        search.Coordinator.ask = ask  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from suite import search

        search.Coordinator.ask = self.original  # type: ignore[method-assign]


def run_search(name: str, seed: int, trials: int, folder: Path) -> dict[str, Any]:
    """One search into a new sqlite store in `folder`: its trials read back, and its time."""
    from suite.runner import run_study
    from suite.tracking import Tracker

    label = SEARCHES[name][0]
    study = load(name, seed, trials)
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}")
    tracker.client.search_experiments()  # the store made before the clock
    step(f"{label}, search seed {seed}: {trials} trials, 1 worker")
    progress = _Progress(label, len(study.cells))
    with _AskClock() as asks:
        start = time.perf_counter()
        result = run_study(study, tracker, seeds=study.seeds, observer=progress, workers=1)
        seconds = time.perf_counter() - start
    experiment_id = tracker.experiment_id(study.name, create=False)
    assert experiment_id is not None
    points = {cell.name: cell.grid_point for cell in study.cells}  # a random search's draws
    found = trials_of(tracker.runs(experiment_id), study.cells[0].config.train.epochs, points)
    statuses: dict[str, int] = {}
    for ended in result.results:
        statuses[str(ended.status)] = statuses.get(str(ended.status), 0) + 1
    return {
        "search": name,
        "label": label,
        "seed": seed,
        "trials_asked": trials,
        "seconds": seconds,
        "ask_seconds": asks.seconds,
        "statuses": statuses,
        **summarise(found["trials"]),
        "odd": found["odd"],
        "trials": found["trials"],
    }


def trials_of(records: list[Any], epochs: int, points: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A search's trials from its runs in the store, in the order they were asked: the
    `trial` tag of an adaptive search's run (its point the `search_point` tag), a random
    search's cell name `trial_NNN` (its point from `points`, by cell name); and what looked
    odd (a slot trained twice, a run not FINISHED, a trial without a value)."""
    odd: list[str] = []
    by_trial: dict[int, list[Any]] = {}
    for record in records:
        number = record.tags.get("trial")
        if number is None:
            number = record.cell.rsplit("_", 1)[-1]
        by_trial.setdefault(int(number), []).append(record)
    out = []
    for number, runs in sorted(by_trial.items()):
        if len(runs) > 1:
            odd.append(f"trial {number}: {len(runs)} runs ({[r.status for r in runs]})")
        finished = [r for r in runs if r.status == "FINISHED"] or runs
        record = max(finished, key=lambda r: r.start_time)
        if record.status != "FINISHED":
            odd.append(f"trial {number}: {record.status}")
        trained = int(record.tags.get("epochs_trained", epochs))
        pruned = record.tags.get("pruned")
        if pruned is not None and int(pruned) != trained:
            odd.append(f"trial {number}: pruned at {pruned} but trained {trained} epochs")
        value = record.metrics.get("final_val_accuracy")
        if value is None:
            odd.append(f"trial {number}: no final_val_accuracy")
        point = json.loads(record.tags.get("search_point", "null")) or points.get(record.cell, {})
        out.append(
            {
                "trial": number,
                "epochs": trained,
                "pruned": int(pruned) if pruned is not None else None,
                "final_val_accuracy": value,
                "status": record.status,
                "learning_rate": point.get("train.optimizer.learning_rate"),
                "weight_decay": point.get("model.weight_decay"),
            }
        )
    return {"trials": out, "odd": odd}


def curve(trials: list[dict[str, Any]]) -> list[tuple[int, float | None]]:
    """(epochs trained so far, best validation accuracy so far) after each trial; a pruned
    trial adds its epochs but never a best."""
    spent, best, out = 0, None, []
    for trial in trials:
        spent += trial["epochs"]
        value = trial["final_val_accuracy"]
        if trial["pruned"] is None and trial["status"] == "FINISHED" and value is not None:
            best = value if best is None else max(best, value)
        out.append((spent, best))
    return out


def epochs_to(points: list[tuple[int, float | None]], target: float) -> int | None:
    """The epochs trained when the best so far first reached `target`; None if never."""
    for spent, best in points:
        if best is not None and best >= target - EPS:
            return spent
    return None


def best_at(points: list[tuple[int, float | None]], epochs: int) -> float | None:
    """The best so far once `epochs` epochs were trained (trials ended by then)."""
    best = None
    for spent, value in points:
        if spent > epochs:
            break
        best = value
    return best


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    points = curve(trials)
    return {
        "final_best": points[-1][1] if points else None,
        "total_epochs": points[-1][0] if points else 0,
        "pruned": sum(t["pruned"] is not None for t in trials),
        "curve": points,
        "best_at": {str(e): best_at(points, e) for e in CURVE_AT},
    }


def measure(
    seeds: tuple[int, ...] = SEEDS, trials: int = TRIALS, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Every search for every seed, one after another; the epochs to reach the random
    search's final best - TOLERANCE (same seed), and the gate."""
    from suite.tracking import git_commit

    names = [*HEADLINE, *(f"tpe_{e}" for e in extra)]
    searches: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name in names:
                folder = Path(tmp) / f"{name}-{seed}"
                folder.mkdir()
                searches.append(run_search(name, seed, trials, folder))
    for found in searches:
        random = next(s for s in searches if s["search"] == "random" and s["seed"] == found["seed"])
        target = random["final_best"] - TOLERANCE
        found["target"] = target
        found["epochs_to_target"] = epochs_to(found["curve"], target)
    record: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": git_commit(),
        "seeds": list(seeds),
        "trials": trials,
        "tolerance": TOLERANCE,
        "searches": searches,
    }
    record["means"] = {name: means([s for s in searches if s["search"] == name]) for name in names}
    record["gate"] = gate(record["means"]["random"], record["means"]["tpe_hyperband"])
    return record


def means(searches: list[dict[str, Any]]) -> dict[str, Any]:
    """A search's numbers averaged over its seeds (epochs to the target: None if a seed never
    reached it)."""
    reached = [s["epochs_to_target"] for s in searches]
    return {
        "final_best": statistics.mean(s["final_best"] for s in searches),
        "total_epochs": statistics.mean(s["total_epochs"] for s in searches),
        "pruned": statistics.mean(s["pruned"] for s in searches),
        "epochs_to_target": None if None in reached else statistics.mean(reached),
        "epochs_to_target_each": reached,
        "seconds": statistics.mean(s["seconds"] for s in searches),
        "best_at": {
            str(e): statistics.mean(s["best_at"][str(e)] or 0.0 for s in searches) for e in CURVE_AT
        },
    }


def gate(random: dict[str, Any], tpe: dict[str, Any]) -> dict[str, Any]:
    """TPE + Hyperband against random search, means over seeds: within TOLERANCE of random's
    final best in at most SHARE of random's epochs; a best at least as good; fewer epochs."""
    budget = SHARE * random["total_epochs"]
    reached = tpe["epochs_to_target"]
    checks = {
        "reaches_in_a_third": reached is not None and reached <= budget,
        "best_at_least_as_good": tpe["final_best"] >= random["final_best"] - EPS,
        "fewer_epochs": tpe["total_epochs"] < random["total_epochs"],
    }
    return {"budget_epochs": budget, **checks, "held": all(checks.values())}


def _epochs(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f}"


def _reached(means: dict[str, Any]) -> str:
    """The mean epochs to the target, or each seed's when one never reached it."""
    if means["epochs_to_target"] is not None:
        return _epochs(means["epochs_to_target"])
    return "/".join(_epochs(e) for e in means["epochs_to_target_each"])


def rows(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The bench table's rows: each search's means over the seeds, and the gate."""
    if not record:
        return []
    out = []
    n = len(record["seeds"])
    for name, found in record["means"].items():
        label = SEARCHES[name][0]
        out.append(
            (
                f"{label}, {record['trials']} trials, mean of {n} seeds",
                f"{found['final_best']:.3f}",
                f"best val acc; {found['total_epochs']:,.0f} epochs, {found['pruned']:.1f} pruned, "
                f"{_reached(found)} to random's best - {TOLERANCE}, "
                f"{found['seconds']:.0f} s a search",
            )
        )
    held = record["gate"]
    out.append(
        (
            "  TPE + Hyperband pays (gate)",
            "held" if held["held"] else "failed",
            f"reach in <= {held['budget_epochs']:,.0f} epochs: {held['reaches_in_a_third']}; "
            f"best >= random's: {held['best_at_least_as_good']}; "
            f"fewer epochs: {held['fewer_epochs']}",
        )
    )
    return out


def table(record: dict[str, Any]) -> list[str]:
    """The per-seed table and the best-so-far curves, as printed lines."""
    lines = [
        f"{'search':<22} {'seed':>4} {'best':>6} {'epochs':>7} {'pruned':>6} "
        f"{'to target':>9} {'target':>6} {'seconds':>8} {'ask s':>6}"
    ]
    for s in record["searches"]:
        asks = f"{sum(s['ask_seconds']):.1f}" if s["ask_seconds"] else "-"
        lines.append(
            f"{s['label']:<22} {s['seed']:>4} {s['final_best']:>6.3f} {s['total_epochs']:>7,} "
            f"{s['pruned']:>6} {_epochs(s['epochs_to_target']):>9} {s['target']:>6.2f} "
            f"{s['seconds']:>8.0f} {asks:>6}"
        )
    for name, m in record["means"].items():
        lines.append(
            f"{SEARCHES[name][0]:<22} {'mean':>4} {m['final_best']:>6.3f} "
            f"{m['total_epochs']:>7,.0f} {m['pruned']:>6.1f} {_epochs(m['epochs_to_target']):>9} "
            f"{'':>6} {m['seconds']:>8.0f}"
        )
    lines.append("")
    lines.append(f"best so far at epochs trained: {' '.join(f'{e:>5}' for e in CURVE_AT)}")
    for s in record["searches"]:
        values = " ".join(
            f"{v:>5.2f}" if v is not None else f"{'-':>5}" for v in s["best_at"].values()
        )
        lines.append(f"  {s['label'] + ' seed ' + str(s['seed']):<28} {values}")
    for s in record["searches"]:
        for note in s["odd"]:
            lines.append(f"odd: {s['label']} seed {s['seed']}: {note}")
    return lines


def save(record: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "search.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument(
        "--extra", nargs="*", default=[], choices=["median"], help="also TPE with this pruner"
    )
    args = parser.parse_args()
    os.environ.setdefault("SUITE_OFFLINE", "1")  # the bench never downloads
    record = measure(tuple(args.seeds), args.trials, tuple(args.extra))
    print()
    for line in table(record):
        print(line)
    print()
    for name, value, note in rows(record):
        print(f"  {name:<52} {value:>10}  {note}")
    print(f"written: {save(record).relative_to(ROOT)}")
    return record


if __name__ == "__main__":
    main()
