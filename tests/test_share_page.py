"""The clinician share page in headless Chromium, against the local system over HTTP."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import require_tool
from indexed_study import put_study

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def chromium():
    return require_tool("chromium")


@pytest.fixture(scope="module")
def study(local_system):
    indexed = put_study(local_system, pseudonym="PSEUDO-PAGE-1", study_date="20240301", slices=4, size=128, series=2)
    local_system.wait_idle()
    return indexed


def browse(chromium: str, tmp_path: Path, url: str, *, screenshot: Path | None = None,
           window: str = "1200,900") -> str:
    """The page's DOM after its scripts ran, without the script (and, if asked, a screenshot)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", f"--window-size={window}",
    ]
    if screenshot:
        screenshot.parent.mkdir(exist_ok=True)
        subprocess.run([*command, f"--screenshot={screenshot}", url], capture_output=True, timeout=90, check=True)
    dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=90,
                         check=True).stdout
    return re.sub(r"<script>.*?</script>", "", dom, flags=re.S)


def state(dom: str) -> str:
    return re.search(r'id="status"[^>]*data-state="([^"]+)"', dom).group(1)


def test_share_link_shows_series_and_previews_then_revoked(api, chromium, study, tmp_path):
    status, share = api.call("POST", "/shares", {"study_uid": study.study_uid, "expires_in": 3600})
    assert status == 201
    dom = browse(chromium, tmp_path, share["url"], screenshot=ARTIFACTS / "share-page.png")
    assert state(dom) == "ready"
    assert "Patient PSEUDO-PAGE-1" in dom and "2024-03-01" in dom and "CT ABDOMEN" in dom
    assert len(re.findall(r'<article class="series"', dom)) == 2
    assert len(re.findall(r'data-loaded="true"', dom)) == 2  # a preview image in each series
    assert "1 / 4" in dom and dom.count("Download series") == 2
    browse(chromium, tmp_path, share["url"], screenshot=ARTIFACTS / "share-page-phone.png", window="390,844")

    assert api.call("DELETE", f"/shares/{share['share_id']}")[0] == 200
    dom = browse(chromium, tmp_path, share["url"], screenshot=ARTIFACTS / "share-page-revoked.png")
    assert state(dom) == "revoked"
    assert "The sender has revoked this share" in dom
    assert '<article class="series"' not in dom


def test_pin_protected_share_asks_for_the_pin(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid, "pin": "8642"})[1]
    dom = browse(chromium, tmp_path, share["url"])
    assert state(dom) == "pin_required"
    assert re.search(r'<form id="pin-form" class="notice pin"', dom)  # no longer hidden


def test_view_only_share_offers_no_download(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid, "allow_download": False})[1]
    dom = browse(chromium, tmp_path, share["url"])
    assert state(dom) == "ready" and "view only" in dom
    assert "Download series" not in dom
    assert re.search(r'id="study-actions" class="hidden"', dom)


def test_unknown_and_missing_links(local_system, chromium, tmp_path):
    assert state(browse(chromium, tmp_path, f"{local_system.api_url}/view#not-a-real-token")) == "unknown_link"
    assert state(browse(chromium, tmp_path, f"{local_system.api_url}/view")) == "token_required"


def test_page_headers_keep_the_token_private(local_system):
    with urllib.request.urlopen(f"{local_system.api_url}/view", timeout=30) as response:
        headers = response.headers
        body = response.read().decode()
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Referrer-Policy"] == "no-referrer"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert '<meta name="viewport"' in body
    assert not re.search(r'(src|href)="(https?:)?//', body)  # no external resource
