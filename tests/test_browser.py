"""The report renders in a real browser: headless Chromium, no network, every image loaded.

Needs Debian's `chromium` (or `SUITE_CHROMIUM` pointing at a Chromium binary) and the
`playwright` package (a dev dependency; its own browser downloads are not used). Skips
without them. The full-page screenshot is kept in `test-artifacts/` (or
`$SUITE_TEST_ARTIFACTS`) for a human to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.browser


def chromium() -> str:
    found = os.environ.get("SUITE_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if not found:
        pytest.skip("no chromium: install Debian's (apt-get install chromium) to run this test")
    return found


def test_report_renders_offline_with_every_image(report_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    binary = chromium()
    artifacts = Path(os.environ.get("SUITE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
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
