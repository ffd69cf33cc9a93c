"""The clinician share page in headless Chromium, against the local system over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import require_tool
from dicomshare import index
from indexed_study import put_study

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def chromium():
    return require_tool("chromium")


@pytest.fixture(scope="module")
def study(local_system):
    indexed = put_study(local_system, pseudonym="DS-PAGE4TESTQ7DG2B667PFPXHAVSA", study_date="20240301", slices=4, size=128, series=2)
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
    assert "Patient DS-PAGE4TESTQ7DG2B667PFPXHAVSA" in dom and "2024-03-01" in dom and "CT ABDOMEN" in dom
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
    share = api.call("POST", "/shares", {"study_uid": study.study_uid, "pin": "864213"})[1]
    dom = browse(chromium, tmp_path, share["url"])
    assert state(dom) == "pin_required"
    assert re.search(r'<form id="pin-form" class="notice pin"', dom)  # no longer hidden


def test_view_only_share_offers_no_download(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid, "allow_download": False})[1]
    dom = browse(chromium, tmp_path, share["url"])
    assert state(dom) == "ready" and "view only" in dom
    assert "Download series" not in dom
    assert re.search(r'id="study-actions" class="actions hidden"', dom)  # no download, no viewer


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
    assert "default-src 'none'" in policy and "script-src 'self' 'sha256-" in policy and "unsafe-inline" not in policy
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if " " in d.strip())
    assert directives["connect-src"].split() == ["'self'", local_system.endpoint_url]
    assert directives["img-src"].split() == [local_system.endpoint_url, "blob:"]
    assert '<meta name="viewport"' in body
    assert not re.search(r'(src|href)="(https?:)?//', body)  # no external resource


def test_download_worker_is_served_same_origin_and_only_it_may_run_as_a_worker(local_system):
    with urllib.request.urlopen(f"{local_system.api_url}/view", timeout=30) as response:
        policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if " " in d.strip())
    assert directives["worker-src"] == "'self'" and directives["frame-src"] == "'self'"
    with urllib.request.urlopen(f"{local_system.api_url}/download-worker.js", timeout=30) as response:
        headers, script = response.headers, response.read().decode()
    assert headers["Content-Type"].startswith("text/javascript")
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert 'addEventListener("fetch"' in script and "caches" not in script


class DevTools:
    """The smallest Chrome DevTools Protocol client: one page, ``Runtime.evaluate`` over a
    WebSocket (RFC 6455 framing, text frames only), standard library only."""

    def __init__(self, chromium: str, profile: Path, url: str, arguments: tuple[str, ...] = ("--disable-gpu",)):
        self.process = subprocess.Popen([
            chromium, "--headless", "--no-sandbox", *arguments, "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1200,900", url,
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.events: list[dict] = []
        """DevTools events received so far (console messages, exceptions, …)."""
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            target = next(t for t in json.load(response) if t["type"] == "page")
        path = urllib.parse.urlsplit(target["webSocketDebuggerUrl"]).path
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.reader = self.socket.makefile("rb")
        while self.reader.readline() not in (b"\r\n", b""):
            pass
        self.next_id = 0

    def send(self, method: str, params: dict) -> dict:
        """One DevTools command; its result."""
        self.next_id += 1
        message = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        length = len(message)
        header = bytes([0x81]) + (bytes([0x80 | length]) if length < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", length) if length < 65536 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", length))
        self.socket.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(message)))
        while True:
            reply = json.loads(self._frame())
            if "method" in reply:
                self.events.append(reply)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def _frame(self) -> bytes:
        payload = b""
        while True:
            first, second = self.reader.read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.reader.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.reader.read(8))[0]
            payload += self.reader.read(length)
            if first & 0x80:
                return payload

    def wait_for_event(self, method: str, timeout: float = 120, **params) -> dict:
        """The first event so far or to come of ``method`` whose parameters include ``params``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method and params.items() <= event["params"].items():
                    return event["params"]
            assert time.monotonic() < deadline, f"timed out waiting for {method} {params}"
            time.sleep(0.1)
            self.evaluate("0")  # reads the events that came meanwhile

    def wait_for(self, expression: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()"):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def test_scrolling_and_zip_download_in_the_browser(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = DevTools(chromium, tmp_path / "devtools", share["url"])
    try:
        browser.wait_for("document.getElementById('status').dataset.state === 'ready'")
        assert browser.evaluate("location.hash") == ""  # the token left the address bar
        card = "document.querySelectorAll('article.series')[0]"
        browser.wait_for(f"{card}.querySelector('.position').textContent === '1 / 4'")  # its first page came
        first = browser.evaluate(f"{card}.querySelector('img').src")
        browser.evaluate(f"{card}.querySelector('[aria-label=\"next image\"]').click()")
        assert browser.evaluate(f"{card}.querySelector('.position').textContent") == "2 / 4"
        browser.evaluate(f"{card}.querySelector('.viewport').dispatchEvent("
                         "new WheelEvent('wheel', {deltaY: 100, cancelable: true}))")
        assert browser.evaluate(f"{card}.querySelector('.position').textContent") == "3 / 4"
        browser.evaluate(f"(s => {{ s.value = 4; s.dispatchEvent(new Event('input')); }})"
                         f"({card}.querySelector('input[type=range]'))")
        assert browser.evaluate(f"{card}.querySelector('.position').textContent") == "4 / 4"
        assert browser.evaluate(f"{card}.querySelector('img').src") != first

        # The File System Access API, as a user picking a file would give it: the archive
        # arrives as a stream of chunks, written as they come.
        browser.evaluate("""window.showSaveFilePicker = async (options) => ({ createWritable: async () => {
            const chunks = []; window.chunkCount = 0;
            return new WritableStream({ write(chunk) { chunks.push(chunk); window.chunkCount++; },
                                        close() { window.savedZip = new Blob(chunks); } }); } })""")
        browser.evaluate("document.getElementById('download-all').click()")
        browser.wait_for("window.savedZip !== undefined")
        assert browser.evaluate("window.chunkCount") > len(study.files)  # streamed, not one buffer
        encoded = browser.evaluate("""new Promise(resolve => { const r = new FileReader();
            r.onload = () => resolve(r.result.split(',')[1]); r.readAsDataURL(window.savedZip); })""")
    finally:
        browser.close()
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded)))
    assert archive.testzip() is None
    files = {name.rsplit("/", 1)[1].removesuffix(".dcm"): archive.read(name) for name in archive.namelist()}
    assert files == study.files


def streaming_browser(chromium: str, profile: Path, downloads: Path, *, service_worker: bool = True) -> DevTools:
    """Headless Chromium as Firefox, Safari and phones are: no File System Access API (removed
    before any page script runs), so the page streams downloads through its service worker
    (or, with ``service_worker=False``, as some private windows are, has none at all).
    Downloads land in ``downloads``; network events are recorded."""
    browser = DevTools(chromium, profile, "about:blank")
    browser.send("Page.enable", {})  # else scripts added below never run
    removed = "delete window.showSaveFilePicker;" + ("" if service_worker else "delete Navigator.prototype.serviceWorker;")
    browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": removed})
    browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads),
                                                 "eventsEnabled": True})
    browser.send("Network.enable", {})
    return browser


def open_share(browser: DevTools, url: str, pin: str | None = None) -> None:
    browser.send("Page.navigate", {"url": url})
    if pin:
        browser.wait_for("document.getElementById('status').dataset.state === 'pin_required'")
        browser.evaluate(f"document.getElementById('pin').value = {pin!r}")
        browser.evaluate("document.getElementById('pin-form').requestSubmit()")
    browser.wait_for("document.getElementById('status').dataset.state === 'ready'")
    assert browser.evaluate("typeof window.showSaveFilePicker") == "undefined"


def request_urls(browser: DevTools) -> list[str]:
    return [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]


def test_download_streams_to_disk_through_the_service_worker_without_file_system_access(
        api, chromium, study, tmp_path):
    pin = "zqdlpin7"
    share = api.call("POST", "/shares", {"study_uid": study.study_uid, "pin": pin})[1]
    token = share["url"].split("#", 1)[1]
    downloads = tmp_path / "downloads"
    browser = streaming_browser(chromium, tmp_path / "devtools", downloads)
    try:
        open_share(browser, share["url"], pin)
        browser.evaluate("document.getElementById('download-all').click()")
        guid = browser.wait_for_event("Browser.downloadWillBegin", suggestedFilename="shared-study.zip")["guid"]
        browser.wait_for_event("Browser.downloadProgress", guid=guid, state="completed")
        browser.wait_for("document.getElementById('progress').classList.contains('hidden')")
        assert browser.evaluate("document.getElementById('status').dataset.state") == "ready"
        assert browser.evaluate("caches.keys()") == []  # nothing kept in Cache Storage
        assert browser.evaluate("document.querySelectorAll('iframe').length") == 0  # the frame went away
    finally:
        browser.close()
    urls = request_urls(browser)
    (address,) = [u for u in urls if "/download/" in u]
    assert re.fullmatch(r".*/download/[0-9a-f]{32}", address)  # a random one-time id, nothing else
    answered = [e["params"]["response"] for e in browser.events if e["method"] == "Network.responseReceived"]
    assert [r["fromServiceWorker"] for r in answered if r["url"] == address] == [True]
    assert not [u for u in urls if token in u or pin in u]
    assert sum("/share/instances?" in u for u in urls) >= 2 * len(study.series_uids)  # previews, then the download
    with zipfile.ZipFile(downloads / "shared-study.zip") as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        files = {name.rsplit("/", 1)[1].removesuffix(".dcm"): archive.read(name) for name in names}
    assert files == study.files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+\.dcm", n) for n in names), names


def test_without_a_service_worker_the_archive_is_assembled_in_memory_with_a_warning(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    downloads = tmp_path / "downloads"
    browser = streaming_browser(chromium, tmp_path / "devtools", downloads, service_worker=False)
    try:
        open_share(browser, share["url"])
        assert browser.evaluate("'serviceWorker' in navigator") is False
        browser.evaluate("""window.shown = []; new MutationObserver(() => window.shown.push(
            document.getElementById('status').dataset.state + ': ' + document.getElementById('status').textContent)
        ).observe(document.getElementById('status'), { attributes: true, childList: true })""")
        browser.evaluate("document.getElementById('download-all').click()")
        guid = browser.wait_for_event("Browser.downloadWillBegin", suggestedFilename="shared-study.zip")["guid"]
        browser.wait_for_event("Browser.downloadProgress", guid=guid, state="completed")
        shown = browser.evaluate("window.shown")
    finally:
        browser.close()
    assert any(s.startswith("download_in_memory: ") and "in memory" in s and "large study may fail" in s
               for s in shown), shown
    assert not [u for u in request_urls(browser) if "/download/" in u]
    with zipfile.ZipFile(downloads / "shared-study.zip") as archive:
        assert {n.rsplit("/", 1)[1].removesuffix(".dcm"): archive.read(n) for n in archive.namelist()} == study.files


@pytest.fixture(scope="module")
def large_study(local_system):
    """40 CT slices of 2048 x 2048 (8 MiB each): a 320 MiB archive."""
    indexed = put_study(local_system, pseudonym="DS-LARGE7TESTQ7DG2B667PFPXHAVS", study_date="20240302", slices=40,
                        size=2048)
    local_system.wait_idle()
    return indexed


def download_state(browser: DevTools, guid: str) -> str:
    states = [e["params"]["state"] for e in browser.events
              if e["method"] == "Browser.downloadProgress" and e["params"]["guid"] == guid]
    return states[-1] if states else "pending"


def test_large_download_reaches_disk_before_the_page_fetched_the_rest(api, chromium, local_system, large_study,
                                                                     tmp_path):
    """A 320 MiB download, with the page's object fetches held (CDP Fetch) after the first
    five: the first five objects' bytes are on disk while the sixth is not even fetched (the
    archive streams, it is not assembled first), and the page's JavaScript memory (heap and
    array buffers), sampled all through, stays below a twentieth of the archive."""
    share = api.call("POST", "/shares", {"study_uid": large_study.study_uid})[1]
    size = sum(len(data) for data in large_study.files.values())
    first = 5 * min(len(data) for data in large_study.files.values())
    downloads = tmp_path / "downloads"
    browser = streaming_browser(chromium, tmp_path / "devtools", downloads)
    try:
        open_share(browser, share["url"])
        browser.send("Fetch.enable", {"patterns": [{"urlPattern": f"{local_system.endpoint_url}/*.dcm*"}]})
        browser.evaluate("document.getElementById('download-all').click()")
        guid = browser.wait_for_event("Browser.downloadWillBegin")["guid"]
        seen, released, held, memory = 0, 0, [], []
        deadline = time.monotonic() + 600
        while (state := download_state(browser, guid)) not in ("completed", "canceled"):
            assert time.monotonic() < deadline, f"the download did not finish ({released} objects fetched)"
            paused = [e["params"]["requestId"] for e in browser.events[seen:] if e["method"] == "Fetch.requestPaused"]
            seen = len(browser.events)
            for request in paused:
                if released < 5 or held is None:
                    browser.send("Fetch.continueRequest", {"requestId": request})
                    released += 1
                else:
                    held.append(request)
            if held and received(browser, guid) >= first:
                for request in held:  # the five are on disk, the sixth still held: let the rest through
                    browser.send("Fetch.continueRequest", {"requestId": request})
                released, held = released + len(held), None
            usage = browser.send("Runtime.getHeapUsage", {})
            memory.append(usage["usedSize"] + usage.get("backingStorageSize", 0))
            time.sleep(0.2)
        assert state == "completed" and held is None
    finally:
        browser.close()
    assert max(memory) < size / 20, (max(memory), size)
    with zipfile.ZipFile(downloads / "shared-study.zip") as archive:
        assert sum(info.file_size for info in archive.infolist()) == size
        for info in archive.infolist():
            assert archive.read(info) == large_study.files[info.filename.rsplit("/", 1)[1].removesuffix(".dcm")]


def received(browser: DevTools, guid: str) -> int:
    return max([e["params"]["receivedBytes"] for e in browser.events
                if e["method"] == "Browser.downloadProgress" and e["params"]["guid"] == guid] or [0])


def test_cancelling_the_download_stops_the_fetching(api, chromium, local_system, large_study, tmp_path):
    """The page's object fetches are held (CDP Fetch) after the third; the user cancels the
    download; the page stops: the held fetch is abandoned and no other object is asked for."""
    share = api.call("POST", "/shares", {"study_uid": large_study.study_uid})[1]
    downloads = tmp_path / "downloads"
    browser = streaming_browser(chromium, tmp_path / "devtools", downloads)
    progress = "document.getElementById('progress')"

    def paused(at_least: int = 0) -> list[str]:
        deadline = time.monotonic() + 60
        while len(requests := [e["params"]["requestId"] for e in browser.events
                               if e["method"] == "Fetch.requestPaused"]) < at_least:
            assert time.monotonic() < deadline, f"the page did not ask for object {at_least}"
            time.sleep(0.1)
            browser.evaluate("0")
        return requests

    try:
        open_share(browser, share["url"])
        browser.send("Fetch.enable", {"patterns": [{"urlPattern": f"{local_system.endpoint_url}/*.dcm*"}]})
        browser.evaluate("document.querySelector('article.series button:not([aria-label])').click()")
        guid = browser.wait_for_event("Browser.downloadWillBegin", suggestedFilename="series-1.zip")["guid"]
        for number in range(3):
            browser.send("Fetch.continueRequest", {"requestId": paused(number + 1)[number]})
        paused(4)  # the fourth is held
        browser.send("Browser.cancelDownload", {"guid": guid})
        browser.wait_for(f"{progress}.classList.contains('hidden')")  # the page heard of it and stopped
        fetched = browser.evaluate(f"{progress}.value")
        assert browser.evaluate("fetch('client-zip.js').then(r => r.ok)")  # a round trip later,
        assert len(paused()) == 4  # no object was asked for since
        assert download_state(browser, guid) == "canceled"
    finally:
        browser.close()
    assert fetched == 3 < len(large_study.files)
    assert not (downloads / "series-1.zip").exists()


def test_leaving_the_page_fails_the_download_instead_of_stalling_it(api, chromium, local_system, large_study,
                                                                    tmp_path):
    """The page's object fetches are held after the first; the page goes away (as a closed
    tab does); the worker notices and fails the download, and nothing more is fetched."""
    share = api.call("POST", "/shares", {"study_uid": large_study.study_uid})[1]
    browser = streaming_browser(chromium, tmp_path / "devtools", tmp_path / "downloads")
    try:
        open_share(browser, share["url"])
        browser.send("Fetch.enable", {"patterns": [{"urlPattern": f"{local_system.endpoint_url}/*.dcm*"}]})
        browser.evaluate("document.getElementById('download-all').click()")
        guid = browser.wait_for_event("Browser.downloadWillBegin")["guid"]
        first = browser.wait_for_event("Fetch.requestPaused")["requestId"]
        browser.send("Fetch.continueRequest", {"requestId": first})
        browser.wait_for_event("Browser.downloadProgress", guid=guid, state="inProgress")
        browser.send("Page.navigate", {"url": "about:blank"})
        browser.wait_for_event("Browser.downloadProgress", guid=guid, state="canceled", timeout=60)
        assert len([e for e in browser.events if e["method"] == "Fetch.requestPaused"]) <= 2
    finally:
        browser.close()


def test_zip_entry_names_are_built_from_sanitized_segments(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = DevTools(chromium, tmp_path / "devtools", share["url"])
    try:
        browser.wait_for("document.getElementById('status').dataset.state === 'ready'")
        name = browser.evaluate("zipEntryName({study_uid: '../..'}, {series_number: '/etc', modality: '../../x\\\\C:'},"
                                " {sop_instance_uid: '..'})")
        plain = browser.evaluate("zipEntryName({study_uid: '1.2.3'}, {series_number: '2', modality: 'CT'},"
                                 " {sop_instance_uid: '1.2.3.4'})")
    finally:
        browser.close()
    segments = name.split("/")
    assert len(segments) == 3 and not any(s.startswith(".") or s in ("", "..") for s in segments), name
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", s) for s in segments), name
    assert plain == "1.2.3/2_CT/1.2.3.4.dcm"


def test_page_fits_a_phone_screen(api, chromium, study, tmp_path):
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = DevTools(chromium, tmp_path / "devtools", "about:blank")
    try:
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
        browser.send("Page.navigate", {"url": share["url"]})
        browser.wait_for("document.getElementById('status').dataset.state === 'ready'")
        assert browser.evaluate("window.innerWidth") == 390
        assert browser.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        browser.close()


def test_deidentified_bucket_cors_names_the_page_origin_only(local_system):
    """The rule the local system sets, from the definition the share API stack deploys
    (moto's server adds its own permissive CORS headers to every answer, so the rule is
    checked as configured, not by a cross-origin request)."""
    (rule,) = local_system.client("s3").get_bucket_cors(Bucket=local_system.resources.deid_bucket)["CORSRules"]
    assert rule["AllowedOrigins"] == [local_system.api_url.rsplit("/", 1)[0]]
    assert rule["AllowedMethods"] == ["GET", "HEAD"]


@pytest.mark.parametrize("origin, allowed", [("page", True), ("http://evil.example", False)])
def test_deidentified_bucket_answers_cross_origin_requests_of_the_page_only(local_system, study, origin, allowed):
    origin = local_system.api_url.rsplit("/", 1)[0] if origin == "page" else origin
    key = index.deidentified_object_key(study.study_uid, study.series_uids[0], next(iter(study.files)))
    url = local_system.client("s3").generate_presigned_url(
        "get_object", Params={"Bucket": local_system.resources.deid_bucket, "Key": key})
    request = urllib.request.Request(url, method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            granted = response.headers.get("Access-Control-Allow-Origin")
    except urllib.error.HTTPError as error:
        granted = error.headers.get("Access-Control-Allow-Origin")
    assert granted == (origin if allowed else None)
