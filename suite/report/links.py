"""Links from the report to the MLflow UI: its address (`--ui-url`), and URLs of the runs
table, of each run and of the report run.

Links are absolute and open in a new tab (`target="_blank"`), so they work wherever the page is
opened. Inside the MLflow UI's artifact viewer (MLflow 3.17 shows HTML in an iframe sandboxed
to `allow-scripts`) a plain click on them is blocked, and a link without a target would load
the UI inside that iframe, where it stays blank; a middle-click or Ctrl/Cmd-click opens them
in a tab (checked in headless Chromium). The runs-table link is `suite.ui_views.runs_url`'s
(`...runs?...workflowType=machine_learning`): MLflow 3 otherwise opens an experiment on its
GenAI overview page.

Owns: the UI's address (`check_ui_url`, `ui_address`), every URL the report holds (the runs
table, each run, the report run) and the rows of its run lists (`run_links`; a search's
pruned trial's status says so). Must not: reach
the tracking store, the tracking server or the UI (links are built, never fetched), or lay out
the page (`render`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from suite.names import PRUNED_TAG
from suite.report import load, render
from suite.report.load import ReportError
from suite.ui_views import runs_url

UI_DEFAULT = "http://127.0.0.1:5000"  # where `overfit ui` serves a local store
# a host name or IPv4 address, or an IPv6 address (urlsplit drops its brackets)
_HOST = re.compile(r"^([0-9a-f:.]*:[0-9a-f:.]*|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)$")


def check_ui_url(url: str) -> str:
    """`url` without a trailing slash, when it is `http(s)://host[:port]` (a path prefix, as
    behind a proxy, is kept).

    Raises:
        ReportError: one line naming `--ui-url`, for anything else.
    """
    problem = _problem(url.strip())
    if problem:
        raise ReportError(
            f"--ui-url: {url!r} is not the MLflow UI's address ({problem}); "
            "expected http(s)://host[:port], e.g. http://127.0.0.1:5000"
        )
    return url.strip().rstrip("/")


def _problem(url: str) -> str | None:
    if not url or any(c.isspace() for c in url):
        return "empty or with spaces"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if parts.query or parts.fragment or parts.username is not None:
        return "no query, fragment or user name"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        return "the port must be a number from 1 to 65535"
    if not parts.hostname or not _HOST.match(parts.hostname):
        return "no valid host"
    return None


def ui_address(ui_url: str | None, tracking_uri: str) -> str:
    """The UI the links point at: `ui_url` when given, else the tracking server when the store
    is one (its address serves the UI too), else `UI_DEFAULT`."""
    if ui_url is not None:
        return check_ui_url(ui_url)
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return UI_DEFAULT


def experiment_url(ui: str, experiment_id: str) -> str:
    """The study's runs table, in the saved view `overfit ui` opens too."""
    return runs_url(ui, experiment_id)


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def run_links(
    rows: pd.DataFrame, labels: dict[str, str], ui: str, experiment_id: str
) -> list[render.RunLink]:
    """The runs as the report lists them: cell, seed, status, name (`baseline/seed0`), URL."""
    return [
        render.RunLink(
            cell=labels.get(r["cell_hash"], r["cell"]),
            seed=None if pd.isna(r["seed"]) else int(r["seed"]),
            status=r["status"] + _pruned(r.get(PRUNED_TAG)),
            reason=r[load.FAILURE_TAG] or "",
            run_id=r["run_id"],
            url=run_url(ui, r.get("experiment_id") or experiment_id, r["run_id"]),
            name=r["run_name"] or r["run_id"],
        )
        for r in rows.to_dict("records")
    ]


def _pruned(epoch: Any) -> str:
    """` (pruned at epoch 9)` for a search's trial its pruner ended, else nothing."""
    return "" if epoch is None or pd.isna(epoch) else f" (pruned at epoch {int(epoch)})"
