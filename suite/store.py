"""Where the tracking store is, worked out without importing MLflow (seconds to import)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URI = "sqlite:///mlflow.db"

__all__ = ["DEFAULT_URI", "artifact_root", "resolve_uri", "sqlite_file"]


def resolve_uri(uri: str | None = None) -> str:
    """`--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the embedded sqlite default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local sqlite store (None for any other store)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """For a local sqlite store, artifacts live in `mlartifacts/` beside the database file."""
    db = sqlite_file(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()
