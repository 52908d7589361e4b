"""The cures' bench rows (`make bench`, section `cures`), measured in one invocation:

- augmentation's cost: experiments/cures.yaml's `augment` cell against its `baseline` (the same
  run without augmentation), seed 0, in this process, tries interleaved, best of each;
  target: at most 1.3x; beside them the same augmentation as Keras' RandomTranslation,
  RandomRotation and RandomZoom layers chained (what `suite.cures.RandomAffine` composes into
  one resampling);
- early stopping's saving: the `early_stopping` cell against `baseline` over the study's seeds,
  in this process: the epochs trained and the seconds, summed; and how many epochs the whole
  cures study trains against running every cell to its last epoch.

Usage: imported by bench/bench.py; `python bench/cures_bench.py` prints them alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRIES = 3


def _study(data_path: Path | None, epochs: int) -> Any:
    from suite.study import load_study

    overrides: dict[str, Any] = {"train.epochs": epochs}
    if data_path:
        overrides["data.path"] = str(data_path)
    return load_study(ROOT / "experiments" / "cures.yaml", overrides)


def _split(cell: Any, seed: int) -> Any:
    from suite import data

    return data.make_split(**cell.config.data.model_dump(), seed=seed)


def _keras_chain() -> type:
    """An `Augmenter` that chains Keras' own layers, one resampling each."""
    import keras

    from suite import cures

    class KerasChain(cures.Augmenter):
        def _layers(self, seed: int) -> list[Any]:
            spec = self.spec
            return [
                keras.layers.RandomTranslation(spec.translate, spec.translate, seed=seed + 1),
                keras.layers.RandomRotation(spec.rotate / 360.0, seed=seed + 2),
                keras.layers.RandomZoom(spec.zoom, seed=seed + 3),
            ]

    return KerasChain


def augmentation(data_path: Path | None, epochs: int) -> dict[str, Any]:
    """The augmented run's time against the same run without augmentation, and against the
    same augmentation by Keras' layers chained."""
    from suite import cures
    from suite import train as training

    study = _study(data_path, epochs)
    cells = {cell.name: cell for cell in study.cells}
    plain, augmented = cells["baseline"], cells["augment"]
    split = _split(plain, 0)

    def interleaved(cells: dict[str, Any], chain: bool = False) -> dict[str, list[float]]:
        """Each cell compiled, then timed `TRIES` times, tries interleaved; with `chain`, the
        augmentation is Keras' layers chained (programs of their own, dropped afterwards)."""
        composed = cures.Augmenter
        if chain:
            training._PROGRAMS.clear()
            cures.Augmenter = _keras_chain()  # type: ignore[misc]
        try:
            for cell in cells.values():
                training.train(cell.config, split, 0)
            times: dict[str, list[float]] = {name: [] for name in cells}
            for _ in range(TRIES):
                for name, cell in cells.items():
                    times[name].append(training.train(cell.config, split, 0).train_seconds)
            return times
        finally:
            if chain:
                cures.Augmenter = composed  # type: ignore[misc]
                training._PROGRAMS.clear()

    times = interleaved({"plain": plain, "augmented": augmented})
    against = interleaved({"plain": plain, "keras_chain": augmented}, chain=True)
    return {
        "plain_seconds": min(times["plain"]),
        "augmented_seconds": min(times["augmented"]),
        "keras_chain_seconds": min(against["keras_chain"]),
        "all_seconds": times,
        "keras_chain_all_seconds": against,
        "ratio": min(times["augmented"]) / min(times["plain"]),
        # against the plain run timed beside it
        "keras_chain_ratio": min(against["keras_chain"]) / min(against["plain"]),
        "augment": augmented.config.train.augment.model_dump(),
    }


def early_stopping(data_path: Path | None, epochs: int) -> dict[str, Any]:
    """The early-stopping cell against the baseline over the study's seeds; the study's epochs."""
    from suite.train import train

    study = _study(data_path, epochs)
    cells = {cell.name: cell for cell in study.cells}
    spent = {"baseline": [0, 0.0], "early_stopping": [0, 0.0]}
    for name in spent:  # compile both first
        train(cells[name].config, _split(cells[name], 0), 0)
    stops = []
    for seed in study.seeds:
        for name in spent:
            cell = cells[name]
            history = train(cell.config, _split(cell, seed), seed)
            spent[name][0] += history.epochs
            spent[name][1] += history.train_seconds
            if name == "early_stopping":
                stops.append(history.stopped_epoch)
    stopping = [c for c in study.cells if c.config.train.early_stopping is not None]
    full = len(study.cells) * len(study.seeds) * epochs
    saved = len(stopping) * len(study.seeds) * epochs - spent["early_stopping"][0] * len(stopping)
    return {
        "seeds": len(study.seeds),
        "baseline_epochs": spent["baseline"][0],
        "baseline_seconds": spent["baseline"][1],
        "stopping_epochs": spent["early_stopping"][0],
        "stopping_seconds": spent["early_stopping"][1],
        "stopped_epochs": stops,
        "seconds_ratio": spent["early_stopping"][1] / spent["baseline"][1],
        # the cell's saving carried to every early-stopping cell of the study (its pairs stop
        # at other epochs: an estimate)
        "study_epochs_full": full,
        "study_epochs_estimate": full - saved,
        "stopping_cells": len(stopping),
    }


def rows(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The bench table's rows for the cures."""
    out: list[tuple[str, str, str]] = []
    aug = record.get("augmentation")
    if aug:
        out.append(
            (
                "augmented canonical run (translate, rotate, zoom)",
                f"{aug['augmented_seconds']:.2f} s",
                f"{aug['ratio']:.2f}x the same run without (target <= 1.3x)",
            )
        )
        out.append(
            (
                "  the same by Keras' three layers chained",
                f"{aug['keras_chain_seconds']:.2f} s",
                f"{aug['keras_chain_ratio']:.2f}x the run without (one resampling each)",
            )
        )
    stop = record.get("early_stopping")
    if stop:
        n = stop["seeds"]
        out.append(
            (
                f"early-stopping cell, {n} seeds (cures study)",
                f"{stop['stopping_seconds']:.1f} s",
                f"{stop['stopping_epochs']} of {stop['baseline_epochs']} epochs; "
                f"{stop['seconds_ratio']:.2f}x the baseline cell's {stop['baseline_seconds']:.1f} s",
            )
        )
        out.append(
            (
                "  cures study, epochs trained (estimate)",
                f"{stop['study_epochs_estimate']}",
                f"of {stop['study_epochs_full']} without early stopping "
                f"({stop['stopping_cells']} of its cells use early stopping)",
            )
        )
    return out


def main() -> dict[str, Any]:
    import os

    epochs = int(os.environ.get("BENCH_EPOCHS", "200"))
    shared = ROOT.parent / "shared" / "data" / "mnist.npz"
    data_path = shared if shared.is_file() else None
    record = {
        "augmentation": augmentation(data_path, epochs),
        "early_stopping": early_stopping(data_path, epochs),
    }
    for name, value, note in rows(record):
        print(f"  {name:<52} {value:>10}  {note}")
    return record


if __name__ == "__main__":
    main()
