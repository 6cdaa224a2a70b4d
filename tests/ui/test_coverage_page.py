"""The coverage pages in headless Chromium, served by uvicorn on loopback, built from real images."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from services.api.app import create_app
from tests.api.conftest import (  # noqa: F401 (fixtures used by name)
    app_client,
    create_site,
    procedure_body,
    queue,
    upload_files,
)
from tests.conftest import class_images, skip_or_fail

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server_url(settings, runtime, queue, app_client):  # noqa: F811
    """Serve the app with uvicorn on 127.0.0.1 at a free port, sharing the test's runtime."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, runtime=runtime, queue=queue), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-ui-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser_context(tmp_path):
    """Open a fresh Chromium profile with Debian's chromium; never a downloaded browser."""
    if not Path(CHROMIUM).is_file():
        skip_or_fail(f"chromium not found at {CHROMIUM}: install Debian's package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


def test_coverage_page_marks_missing_cecum(app_client, queue, server_url, browser_context, labeled_images, tmp_path):  # noqa: F811
    site = create_site(app_client, "ui-site")
    cecum = class_images(labeled_images, "normal-cecum", 8)[6:8]
    polyp = class_images(labeled_images, "polyp", 10)[6:10]
    plan = {"COL-DOCUMENTED": cecum + polyp[:2], "COL-NO-CECUM": polyp[2:]}
    ids = {}
    for external_id, paths in plan.items():
        procedure = app_client.post(
            "/v1/procedures", json=procedure_body(external_id), headers=site.headers
        ).json()
        app_client.post(f"/v1/procedures/{procedure['id']}/images", files=upload_files(paths), headers=site.headers)
        ids[external_id] = procedure["id"]
    queue.wait_idle(timeout_s=300)

    page = browser_context.new_page()
    page.goto(f"{server_url}/ui/procedures/{ids['COL-NO-CECUM']}")
    assert "/ui/login" in page.url
    page.fill("input[name=key]", site.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/ui/procedures/{ids['COL-NO-CECUM']}")

    card = page.locator("[data-landmark=normal-cecum]")
    assert card.get_attribute("data-status") == "missing"
    assert card.locator(".mark").is_visible()
    assert "Missing" in card.inner_text()
    assert "0%" in page.locator("#coverage").inner_text()
    page.screenshot(path=str(tmp_path / "coverage-missing.png"), full_page=True)

    page.goto(f"{server_url}/ui/procedures/{ids['COL-DOCUMENTED']}")
    documented = page.locator("[data-landmark=normal-cecum]")
    assert documented.get_attribute("data-status") == "documented"
    thumbnail = documented.locator(".frame img")
    thumbnail.wait_for()
    assert page.evaluate("image => image.complete && image.naturalWidth > 0", thumbnail.element_handle())
    assert "Score" in documented.inner_text()
    references = documented.locator(".references img")
    assert references.count() == 3
    for index in range(references.count()):
        reference = references.nth(index).element_handle()
        page.wait_for_function("image => image.complete", arg=reference)
        assert page.evaluate("image => image.naturalWidth > 0", reference)
    page.screenshot(path=str(tmp_path / "coverage-documented.png"), full_page=True)

    page.goto(f"{server_url}/ui/sites/{site.id}")
    row = page.locator("tr[data-landmark=normal-cecum]")
    assert "1 / 2" in row.inner_text()
    assert "COL-NO-CECUM" in row.inner_text()
    page.screenshot(path=str(tmp_path / "site-overview.png"), full_page=True)


def test_pages_without_key_go_to_sign_in(server_url, browser_context):
    page = browser_context.new_page()
    page.goto(f"{server_url}/ui/sites/00000000-0000-4000-8000-000000000000")
    assert "/ui/login" in page.url
    page.fill("input[name=key]", "edk_wrong")
    page.click("button[type=submit]")
    assert "invalid or revoked" in page.locator("[role=alert]").inner_text()
