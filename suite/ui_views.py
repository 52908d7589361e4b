"""The MLflow UI's view of a study: its experiment's kind and saved views, and their address.

Owns: the experiment tags that make MLflow 3.17's UI open a study's runs as a table of final
accuracies (`UI_EXPERIMENT_TAGS`), and `runs_url`. `suite.tracking` sets the tags when it
opens an experiment; the CLI and the report print the address. Must not: talk to a store.
"""

from __future__ import annotations

import json
from typing import Any

# The MLflow UI over a study's experiment (checked against MLflow 3.17's UI bundle).
# `mlflow.experimentKind` is MLflow's own tag for what an experiment is for; the UI's kind
# selector writes it. MLflow 3.17 no longer opens an experiment on it: its page follows the
# sidebar's GenAI / Model training switch (kept per browser, GenAI at first), or the address's
# `workflowType=machine_learning`. Set all the same, so the experiment says what it is.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning"; else genai_development
# A saved view of the runs page is an experiment tag `mlflow.sharedViewState.<id>` (the UI's
# "Views" menu lists them; `viewStateShareKey=<id>` in the address opens one). Each study
# gets two: its runs with their final accuracies, best test accuracy first, and the same
# grouped by cell (each cell's row: the mean over its seeds).
UI_VIEW_TAG = "mlflow.sharedViewState."
UI_RUNS_VIEW = "overfit-runs"
UI_CELLS_VIEW = "overfit-cells"
UI_COLUMNS = ("final_train_accuracy", "final_test_accuracy", "final_gap")
_UI_COLUMN_KEYS = [f"metrics.`{name}`" for name in UI_COLUMNS]
_UI_STATE: dict[str, Any] = {
    "selectedColumns": _UI_COLUMN_KEYS,
    "columnOrder": _UI_COLUMN_KEYS,
    "columnWidths": dict(zip(_UI_COLUMN_KEYS, (155, 165, 100), strict=True)),  # names whole
    "orderByKey": "metrics.`final_test_accuracy`",
    "orderByAsc": False,
}
UI_EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
    **{
        UI_VIEW_TAG + view: json.dumps(
            # fixed times: the tag's value changes only when the view does (the menu lists
            # the newest first: the runs view above the cells view)
            {"name": name, "createdAt": created, "updatedAt": created, "state": json.dumps(state)}
        )
        for view, name, created, state in (
            (UI_RUNS_VIEW, "runs: final accuracies", 1_767_225_660_000, _UI_STATE),
            (
                UI_CELLS_VIEW,
                "cells: mean over seeds",
                1_767_225_600_000,
                {
                    **_UI_STATE,
                    # its column first, wide enough for "Group: <cell name>"
                    "columnOrder": ["attributes.`Run Name`", *_UI_COLUMN_KEYS],
                    "columnWidths": {"attributes.`Run Name`": 240, **_UI_STATE["columnWidths"]},
                    "groupBy": {
                        "aggregateFunction": "average",
                        "groupByKeys": [{"mode": "tag", "groupByData": "cell"}],
                    },
                    "runsHiddenMode": "SHOW_ALL",  # the charts draw every cell's mean
                },
            ),
        )
    },
}


def runs_url(ui_base: str, experiment_id: str, view: str = UI_RUNS_VIEW) -> str:
    """The address of a study's runs table in the MLflow UI at `ui_base` (http://host:port),
    showing the saved view `view` (`UI_RUNS_VIEW` or `UI_CELLS_VIEW`): the experiment's
    page would open on MLflow's GenAI overview in a browser that has not switched to Model
    training. The view exists once `Tracker.experiment_id` has seen the study."""
    return (
        f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?viewStateShareKey={view}&workflowType=machine_learning"
    )
