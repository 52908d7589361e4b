"""How the report groups cells for a study's figures, and ranks them by `report.sort`."""

from __future__ import annotations

import pandas as pd

from suite.report import aggregate, groups
from suite.report.aggregate import CellRow, Stat


def _row(name: str, order: int, **means: float) -> CellRow:
    return CellRow(
        label=name,
        name=name,
        order=order,
        cell_hash=f"h{order}",
        in_study=True,
        adopted=False,
        expected=1,
        done=1,
        failed=0,
        running=0,
        stats={k: Stat.of([v]) for k, v in means.items()},
    )


ROWS = [
    _row("a", 0, final_test_accuracy=0.7, final_gap=0.30, final_val_accuracy=0.6),
    _row("b", 1, final_test_accuracy=0.8, final_gap=0.05, final_val_accuracy=0.9),
    _row("c", 2, final_test_accuracy=0.9, final_gap=0.10),
]
RUNS = pd.DataFrame(
    {
        "cell_hash": ["h0", "h1", "h2"],
        "variant": ["plain", "plain", "bn"],
        "n_train": ["300", "1000", "300"],
        "params": [
            {"model.init.std": "0.01", "model.activation": "relu", "data.train_size": "300"},
            {"model.init": "he", "model.activation": "tanh", "data.train_size": "null"},
            {"model.init.std": "1.0", "model.activation": "relu", "data.train_size": "300"},
        ],
    }
)


def test_ranking_follows_report_sort() -> None:
    assert [r.name for r in aggregate.ranked(ROWS)] == ["c", "b", "a"]
    # a gap ranks smallest first; a cell without the metric goes last
    assert [r.name for r in aggregate.ranked(ROWS, "final_gap")] == ["b", "c", "a"]
    assert [r.name for r in aggregate.ranked(ROWS, "final_val_accuracy")] == ["b", "a", "c"]


def test_table_shows_validation_columns_only_when_cells_have_them() -> None:
    shown = [c.metric for c in aggregate.table_columns(ROWS)]
    assert "final_val_accuracy" in shown and "test_f1_macro" not in shown
    assert "test_f1_macro" not in [c.metric for c in aggregate.table_columns(ROWS, True)]
    with_f1 = [*ROWS, _row("d", 3, test_f1_macro=0.5)]
    assert "test_f1_macro" in [c.metric for c in aggregate.table_columns(with_f1, True)]
    no_val = [_row("e", 0, final_test_accuracy=0.5)]
    assert "final_val_accuracy" not in [c.metric for c in aggregate.table_columns(no_val)]


def test_cell_values_read_settings_from_params() -> None:
    assert groups.cell_values(RUNS, ROWS, "model.activation", None) == {
        "h0": "relu",
        "h1": "tanh",
        "h2": "relu",
    }
    # numbers become floats; null is no value
    assert groups.cell_values(RUNS, ROWS, "data.train_size", None) == {
        "h0": 300.0,
        "h1": None,
        "h2": 300.0,
    }
    # a section joins what is below it; a plain value stays as it is
    assert groups.cell_values(RUNS, ROWS, "model.init", None) == {
        "h0": "std=0.01",
        "h1": "he",
        "h2": "std=1.0",
    }
    assert groups.cell_values(RUNS, ROWS, "n_train", None) == {
        "h0": 300.0,
        "h1": 1000.0,
        "h2": 300.0,
    }
    assert groups.cell_values(RUNS, ROWS, "variant", None)["h2"] == "bn"


def test_ordered_sorts_numbers_and_keeps_text_in_study_order() -> None:
    numbers = groups.cell_values(RUNS, ROWS, "n_train", None)
    assert groups.ordered(numbers, ROWS) == [300.0, 1000.0]
    text = groups.cell_values(RUNS, ROWS, "model.activation", None)
    assert groups.ordered(text, ROWS) == ["relu", "tanh"]
    assert groups.label("model.init.std", 0.01) == "init.std = 0.01"
    assert groups.label("variant", "bn") == "bn"
