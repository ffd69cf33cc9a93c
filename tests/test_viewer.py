"""The share viewer (OHIF from npm, our configuration and shim) in headless Chromium: open
a share link, click "Open in viewer", and check that OHIF, on the page's origin, renders
every display set of the shared study with non-blank pixels and logs no console error.
Screenshots go to ``test-artifacts/viewer-*.png``."""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import require_tool
from indexed_study import put_study
from test_share_page import ARTIFACTS, DevTools

pytestmark = pytest.mark.browser

VIEWER = Path(__file__).resolve().parent.parent / "web" / "build" / "viewer" / "index.html"
GPU = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")

PAINTED = """(() => {
  const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas')];
  return canvases.map((canvas) => {
    const copy = document.createElement('canvas');
    copy.width = canvas.width; copy.height = canvas.height;
    const context = copy.getContext('2d');
    context.drawImage(canvas, 0, 0);
    const data = context.getImageData(0, 0, copy.width, copy.height).data;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 30) lit++;
    return lit;
  });
})()"""


@pytest.fixture(scope="module")
def chromium():
    path = require_tool("chromium")
    if not VIEWER.is_file():
        message = "the viewer is not built: make viewer"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    return path


def console_errors(browser: DevTools) -> list[str]:
    errors = []
    for event in browser.events:
        if event["method"] == "Runtime.exceptionThrown":
            errors.append(event["params"]["exceptionDetails"].get("text", "exception"))
        elif event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in event["params"]["args"]))
        elif event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error":
            errors.append(event["params"]["entry"]["text"])
    return errors


def open_in_viewer(chromium: str, tmp_path: Path, share: dict, name: str, *, pin: str | None = None) -> DevTools:
    browser = DevTools(chromium, tmp_path / "devtools", "about:blank", arguments=GPU)
    browser.send("Runtime.enable", {})
    browser.send("Log.enable", {})
    browser.send("Page.navigate", {"url": share["url"]})
    if pin:
        browser.wait_for("document.getElementById('status').dataset.state === 'pin_required'")
        browser.evaluate(f"document.getElementById('pin').value = {pin!r}")
        browser.evaluate("document.getElementById('pin-form').requestSubmit()")
    browser.wait_for("document.getElementById('status').dataset.state === 'ready'")
    page_origin = browser.evaluate("location.origin")
    browser.evaluate("document.querySelector('[data-testid=open-viewer]').click()")
    browser.wait_for("location.pathname.startsWith('/viewer')", timeout=30)
    assert browser.evaluate("location.origin") == page_origin
    return browser


def wait_painted(browser: DevTools, viewports: int = 1, timeout: float = 90) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        lit = browser.evaluate(PAINTED) or []
        if len(lit) >= viewports and all(n > 0 for n in lit[:viewports]):
            return lit
        if time.monotonic() > deadline:
            screenshot(browser, "timeout")
            raise AssertionError(f"the viewer painted {lit}; console errors: {console_errors(browser)}; "
                                 f"at {browser.evaluate('location.href')}; "
                                 f"{browser.evaluate('document.body.innerText.slice(0, 500)')}")
        time.sleep(0.5)


def screenshot(browser: DevTools, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    data = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
    (ARTIFACTS / f"viewer-{name}.png").write_bytes(base64.b64decode(data))


def test_ct_series_opens_in_the_viewer_on_the_same_origin(api, local_system, chromium, tmp_path):
    study = put_study(local_system, pseudonym="DS-VIEWER-CT", study_date="20240302", slices=6, size=128)
    local_system.wait_idle()
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = open_in_viewer(chromium, tmp_path, share, "ct")
    try:
        wait_painted(browser)
        address = browser.evaluate("location.href")
        assert share["token"] not in address and "#" not in address
        assert urllib.parse.urlsplit(address).path == "/viewer/dicomjson"
        screenshot(browser, "ct")
        assert console_errors(browser) == []
    finally:
        browser.close()
