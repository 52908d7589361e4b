"""The runs' JSON artifacts that study figures draw, read back and gathered by cell.

Owns: which artifact each such figure reads and how a cell's runs are put together: confusion
matrices summed (`confusions`), activation histograms listed (`activations`), reliability
bins listed (`reliability`, pooled by `suite.report.reliability`). Must not: draw, derive
numbers beyond these sums, or write to the store (it reads through `load.load_documents`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from suite.names import ACTIVATIONS_ARTIFACT, CONFUSION_ARTIFACT, RELIABILITY_ARTIFACT
from suite.report import load
from suite.tracking import Tracker


def confusions(tracker: Tracker, used: pd.DataFrame) -> dict[str, np.ndarray]:
    """Cell hash -> its runs' test-set confusion matrices, summed."""
    out: dict[str, np.ndarray] = {}
    for cell_hash, document in _by_cell(tracker, used, CONFUSION_ARTIFACT + ".json"):
        matrix = np.asarray(document["matrix"], dtype=float)
        out[cell_hash] = out.get(cell_hash, 0) + matrix
    return out


def activations(tracker: Tracker, used: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Cell hash -> its runs' `activations.json` documents."""
    return _listed(_by_cell(tracker, used, ACTIVATIONS_ARTIFACT))


def reliability(tracker: Tracker, used: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Cell hash -> its runs' `reliability.json` documents (cross-entropy runs logged since
    the suite measures calibration have one)."""
    return _listed(_by_cell(tracker, used, RELIABILITY_ARTIFACT))


def _by_cell(tracker: Tracker, used: pd.DataFrame, name: str) -> list[tuple[str, dict[str, Any]]]:
    documents = load.load_documents(tracker, used, name)
    return [
        (cell_hash, documents[run_id])
        for run_id, cell_hash in zip(used["run_id"], used["cell_hash"], strict=True)
        if run_id in documents
    ]


def _listed(pairs: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for cell_hash, document in pairs:
        out.setdefault(cell_hash, []).append(document)
    return out
