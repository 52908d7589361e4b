"""A run's trained network, read back from the store (`model(run_id)`), for notebooks.

Owns: `model`, which `suite.results` re-exports beside `runs`, `curves` and `summary`. A run
logs its network only when its study asks for it (`log_model: final | best`, see
docs/studies.md). Must not: import MLflow or Keras itself (`suite.tracking` reads the model;
`suite.models` registers the suite's own layers that Keras needs to rebuild it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["model"]


def model(run_id: str, *, uri: str | None = None) -> Any:
    """The `keras.Model` run `run_id` logged: its logits for a batch of flat images are
    `model.predict(x)` (argmax: the predicted class), as the run measured its accuracies.

    Args:
        run_id: the MLflow run's id (the UI shows it; `suite.results.runs` has a column).
        uri: the tracking store; None: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`.

    Raises:
        suite.tracking.TrackingError: the store or the run does not exist, or the run
            logged no model (its study had no `log_model`); one line.
    """
    import suite.models  # noqa: F401  registers the textbook's ClassicDropout with Keras
    from suite.tracking import Tracker, TrackingError

    tracker = Tracker(uri)
    if not tracker.exists():  # not made by asking
        raise TrackingError(f"run {run_id}: no tracking store at {tracker.uri}")
    return tracker.load_model(run_id)
