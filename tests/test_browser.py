"""The report and the MLflow UI in a real browser: headless Chromium, no network.

Needs Debian's `chromium` (or `SUITE_CHROMIUM` pointing at a Chromium binary) and the
`playwright` package (a dev dependency; its own browser downloads are not used). Skips
without them. The screenshots are kept in `test-artifacts/` (or `$SUITE_TEST_ARTIFACTS`)
for a human to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, ReportStore

pytestmark = pytest.mark.browser

# no first-run pages, no background fetches: the page gets only what the test serves it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    found = os.environ.get("SUITE_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if not found:
        pytest.skip("no chromium: install Debian's (apt-get install chromium) to run this test")
    return found


def test_report_renders_offline_with_every_image(report_dir: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright: make setup (the dev extra)"
    )
    binary = chromium()
    artifacts = Path(os.environ.get("SUITE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            requested: list[str] = []
            failed: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto((report_dir / "index.html").as_uri(), wait_until="load")
            images = page.evaluate(
                """() => Array.from(document.images).map(img => ({
                    alt: img.alt, complete: img.complete,
                    width: img.naturalWidth, height: img.naturalHeight,
                    shown: img.getBoundingClientRect().width }))"""
            )
            title = page.title()
            page.screenshot(path=str(artifacts / "report-tiny.png"), full_page=True)
        finally:
            browser.close()

    assert title.startswith("tiny-report")
    assert len(images) == 5
    for image in images:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
        assert image["shown"] > 100, image  # laid out, not collapsed
    # the page asked for nothing but itself and its inline images
    assert not failed
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert (artifacts / "report-tiny.png").stat().st_size > 10_000


def test_ui_opens_each_study_on_its_runs(report_store: ReportStore, tmp_path: Path) -> None:
    """`overfit ui` starts lean and prints each study's address; that address shows the
    study's runs with their final accuracies, readable; the cells view groups them."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright: make setup (the dev extra)"
    )
    binary = chromium()
    from suite.tracking import Tracker
    from suite.ui_views import UI_CELLS_VIEW, runs_url

    artifacts = Path(os.environ.get("SUITE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(report_store.uri)
    experiment_id = tracker.experiment_id(report_store.study.name, create=False)
    assert experiment_id is not None
    finished = [r for r in tracker.runs(experiment_id) if r.status == "FINISHED"]
    names = sorted(f"{r.cell}/seed{r.seed}" for r in finished)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "suite", "ui", "--tracking-uri", report_store.uri]
            + ["--port", str(port)],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server's processes go down with the group
        )
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"^  tiny-report +(\S+)$", log.read_text(), re.MULTILINE)
            address = found.group(1) if found else None
            time.sleep(0.3)
        assert address == runs_url(base, experiment_id), log.read_text()[-3000:]
        # lean: `overfit ui`, MLflow's command and one server process; no job runner
        group = [
            pid for pid in filter(str.isdigit, os.listdir("/proc")) if _group_of(pid) == process.pid
        ]
        assert len(group) <= 3, group

        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 800})
                elsewhere: list[str] = []

                def local_only(route: object) -> None:
                    url = route.request.url  # type: ignore[attr-defined]
                    if url.startswith(base + "/"):
                        route.continue_()  # type: ignore[attr-defined]
                    else:
                        elsewhere.append(url)
                        route.abort()  # type: ignore[attr-defined]

                context.route("**/*", local_only)
                page = context.new_page()
                page.goto(address)
                for name in names:  # every finished run, by name
                    page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
                shown = page.evaluate(
                    """() => Array.from(document.querySelectorAll('[role=gridcell][col-id]'))
                        .map(cell => [cell.getAttribute('col-id'), cell.innerText.trim()])"""
                )
                # MLflow's assistant panel opens the first time: close it, as the README says
                close = page.get_by_role("button", name="Close", exact=True)
                if close.count():
                    close.first.click()
                page.wait_for_timeout(500)
                page.screenshot(path=str(artifacts / "ui-runs.png"))

                page.goto(runs_url(base, experiment_id, UI_CELLS_VIEW))
                page.get_by_text("Group: baseline", exact=False).first.wait_for(timeout=30_000)
                page.wait_for_timeout(500)
                page.screenshot(path=str(artifacts / "ui-cells.png"))
            finally:
                browser.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    columns = {
        f"metrics.`{m}`": m for m in ("final_train_accuracy", "final_test_accuracy", "final_gap")
    }
    values: dict[str, list[str]] = {}
    for column, text in shown:
        if column in columns and text not in ("", "-"):  # "-": the failed run has none
            values.setdefault(columns[column], []).append(text)
    # the three columns are there, a value per finished run, as short as the float32 they are
    assert sorted(values) == sorted(columns.values()), shown
    for metric, texts in values.items():
        assert len(texts) == len(finished), (metric, texts)
        logged = {repr(r.metrics[metric]) for r in finished}
        assert set(texts) <= logged, (metric, texts, logged)
        assert all(len(text) <= 10 for text in texts), (metric, texts)
    assert (artifacts / "ui-runs.png").stat().st_size > 10_000


def _group_of(pid: str) -> int | None:
    """The process group of a process, from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[2])
