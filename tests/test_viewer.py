"""The share viewer (OHIF from npm, our configuration and shim) in headless Chromium: open
a share link, click "Open in viewer", and check that OHIF, on the page's origin, renders
every display set of the shared study with non-blank pixels and logs no console error.
Screenshots go to ``test-artifacts/viewer-*.png``."""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import require_tool
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from dicomshare_local import demo
from indexed_study import put_datasets, put_study
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


VIEWPORT_TEXT = """[...document.querySelectorAll('canvas.cornerstone-canvas')].map((canvas) => {
  let element = canvas;
  for (let i = 0; i < 6 && element.parentElement; i++) element = element.parentElement;
  return element.innerText;
})"""


def console_errors(browser: DevTools) -> list[str]:
    errors = []
    for event in browser.events:
        if event["method"] == "Runtime.exceptionThrown":
            errors.append(event["params"]["exceptionDetails"].get("text", "exception"))
        elif event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in event["params"]["args"]))
        elif event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error":
            entry = event["params"]["entry"]
            errors.append(f"{entry['text']} {entry.get('url', '')[:120]}")
    return errors


REACHABLE = """(element) => {
  element.scrollIntoView({block: 'nearest', inline: 'nearest'});
  const box = element.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + box.height / 2;
  const hit = document.elementFromPoint(x, y);
  const ours = hit && (element.contains(hit) || (element.disabled && hit.contains(element)));
  return x >= 0 && x <= innerWidth && y >= 0 && y <= innerHeight && ours ? [x, y] : null;
}"""
"""Scrolled into view, is the element's centre on the screen and not covered by another? Its
centre. (A disabled button takes no pointer events: its wrapper, which explains why, may.)"""

CONTROLS = f"""[...document.querySelectorAll('button')].filter((b) => b.getClientRects().length)
  .map((b) => [b.dataset.cy || b.getAttribute('aria-label') || b.outerHTML.slice(0, 80), ({REACHABLE})(b)])"""

NO_OVERFLOW = "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) <= innerWidth"


def tap(browser: DevTools, selector: str) -> None:
    """A press and release at the element's centre, where the user's finger would land."""
    centre = browser.evaluate(f"({REACHABLE})(document.querySelector({selector!r}))")
    assert centre, f"{selector} is off the screen or covered"
    for kind in ("mousePressed", "mouseReleased"):
        browser.send("Input.dispatchMouseEvent", {"type": kind, "x": centre[0], "y": centre[1], "button": "left",
                                                  "clickCount": 1})


def open_in_viewer(chromium: str, tmp_path: Path, share: dict, name: str, *, pin: str | None = None,
                   phone: bool = False) -> DevTools:
    browser = DevTools(chromium, tmp_path / "devtools", "about:blank", arguments=GPU)
    if phone:
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    browser.send("Runtime.enable", {})
    browser.send("Log.enable", {})
    browser.send("Page.navigate", {"url": share["url"]})
    if pin:
        browser.wait_for("document.getElementById('status').dataset.state === 'pin_required'")
        browser.evaluate(f"document.getElementById('pin').value = {pin!r}")
        browser.evaluate("document.getElementById('pin-form').requestSubmit()")
    browser.wait_for("document.getElementById('status').dataset.state === 'ready'")
    page_origin = browser.evaluate("location.origin")
    browser.events.clear()  # from here on, the viewer's (the page's PIN prompt answers 403 by design)
    if phone:
        assert browser.evaluate(NO_OVERFLOW), "the share page is wider than the phone"
        tap(browser, "[data-testid=open-viewer]")
    else:
        browser.evaluate("document.querySelector('[data-testid=open-viewer]').click()")
    browser.wait_for("location.pathname.startsWith('/viewer')", timeout=30)
    assert browser.evaluate("location.origin") == page_origin
    return browser


def wait_painted(browser: DevTools, viewports: int = 1, timeout: float = 90, showing: str = "") -> list[int]:
    """Wait until the first ``viewports`` viewports have non-blank pixels (and the first one's
    overlay names ``showing``); the lit pixel count of each viewport."""
    deadline = time.monotonic() + timeout
    while True:
        lit = browser.evaluate(PAINTED) or []
        shown = browser.evaluate(VIEWPORT_TEXT) or [""]
        if len(lit) >= viewports and all(n > 0 for n in lit[:viewports]) and showing in shown[0]:
            return lit
        if time.monotonic() > deadline:
            screenshot(browser, "timeout")
            raise AssertionError(f"the viewer painted {lit} showing {shown} (not {showing!r}); "
                                 f"console errors: {console_errors(browser)}; "
                                 f"at {browser.evaluate('location.href')}; "
                                 f"{browser.evaluate('document.body.innerText.slice(0, 500)')}")
        time.sleep(0.5)


THUMBNAILS = """[...document.querySelectorAll('[data-cy^=study-browser-thumbnail]')]
  .map((thumbnail) => [thumbnail.id, thumbnail.innerText])"""

BLANK = """(() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  return [...canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data].some((v) => v);
})()"""


def every_display_set_renders(browser: DevTools, name: str, descriptions: list[str]) -> None:
    """Open every display set of the shared study, one after the other, by a double click on
    its thumbnail in OHIF's study browser, and check that the viewport then names it and paints non-blank pixels.
    The canvas is blanked before each switch, so only the new display set can paint it.
    ``descriptions``: the shared study's SeriesDescription, one per display set."""
    wait_painted(browser)  # the display set OHIF opens first
    browser.wait_for(f"document.querySelectorAll('[data-cy^=study-browser-thumbnail]').length >= {len(descriptions)}",
                     timeout=60)
    thumbnails = [(thumbnail, [d for d in descriptions if d in text]) for thumbnail, text in browser.evaluate(THUMBNAILS)]
    shared = [(thumbnail, named) for thumbnail, named in thumbnails if named]
    assert sorted(sum((named for _, named in shared), [])) == sorted(descriptions), thumbnails
    for number, (thumbnail, [description]) in enumerate(shared, start=1):
        if description not in browser.evaluate(VIEWPORT_TEXT)[0]:
            assert browser.evaluate(BLANK) is False
            browser.evaluate(f"document.getElementById({thumbnail!r})"
                             ".dispatchEvent(new MouseEvent('dblclick', {bubbles: true}))")
        wait_painted(browser, showing=description)
        screenshot(browser, f"{name}-{number}")


def screenshot(browser: DevTools, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    data = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
    (ARTIFACTS / f"viewer-{name}.png").write_bytes(base64.b64decode(data))


def ct_series(number: int, description: str, *, slices: int = 4, study: str = "CT ABDOMEN") -> list[Dataset]:
    datasets = list(demo.ct_series(slices, "20240302", study, size=96))
    for ds in datasets:
        ds.SeriesNumber, ds.SeriesDescription = number, description
    return datasets


def test_ct_series_opens_in_the_viewer_on_the_same_origin(api, local_system, chromium, tmp_path):
    study = put_datasets(local_system, ct_series(1, "AXIAL SOFT TISSUE", slices=6) + ct_series(2, "AXIAL LUNG"),
                         pseudonym="DS-VIEWER-CT", study_date="20240302")
    local_system.wait_idle()
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = open_in_viewer(chromium, tmp_path, share, "ct")
    try:
        wait_painted(browser, showing="AXIAL SOFT TISSUE")  # the first series, by number
        address = browser.evaluate("location.href")
        assert share["token"] not in address and "#" not in address
        assert urllib.parse.urlsplit(address).path == "/viewer/dicomjson"
        with urllib.request.urlopen(address, timeout=30) as response:
            policy = response.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in policy and "style-src 'self' 'sha256-" in policy  # styles by hash only
        every_display_set_renders(browser, "ct", ["AXIAL SOFT TISSUE", "AXIAL LUNG"])
        tap(browser, "[data-cy=MoreTools-split-button-secondary] button")  # a menu: its scroll lock inserts a <style>
        browser.wait_for("document.body.hasAttribute('data-scroll-locked')")
        screenshot(browser, "ct-menu")
        assert console_errors(browser) == []
    finally:
        browser.close()


def shipped(name: str, description: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesNumber, ds.SeriesDescription = 1, description
    return ds


def gradient_multiframe(frames: int = 8, size: int = 96) -> Dataset:
    """An MR multi-frame object: frame ``k`` a diagonal gradient shifted by ``k``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), "MR", 3, 1
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    yy, xx = np.mgrid[0:size, 0:size]
    ds.PixelData = np.stack([(xx + yy + 10 * k) * 20 for k in range(frames)]).astype(np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.SeriesDescription = "MULTI-FRAME GRADIENT"
    return ds


@pytest.mark.parametrize("name, datasets", [
    ("multiframe", lambda: [gradient_multiframe()]),
    ("palette", lambda: [shipped("examples_palette.dcm", "PALETTE COLOR")]),
    ("jpeg2000", lambda: [shipped("MR_small_jp2klossless.dcm", "JPEG 2000 LOSSLESS")]),
])
def test_objects_of_every_kind_render(api, local_system, chromium, tmp_path, name, datasets):
    objects = datasets()
    study = put_datasets(local_system, objects, pseudonym=f"DS-VIEWER-{name.upper()}", study_date="20240303")
    local_system.wait_idle()
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = open_in_viewer(chromium, tmp_path, share, name)
    try:
        every_display_set_renders(browser, name, [ds.SeriesDescription for ds in objects])
        assert console_errors(browser) == []
    finally:
        browser.close()


def test_pin_protected_share_opens_in_the_viewer(api, local_system, chromium, tmp_path):
    study = put_datasets(local_system, ct_series(1, "PIN AXIAL", slices=3), pseudonym="DS-VIEWER-PIN",
                         study_date="20240304")
    local_system.wait_idle()
    share = api.call("POST", "/shares", {"study_uid": study.study_uid, "pin": "zqpin7"})[1]
    browser = open_in_viewer(chromium, tmp_path, share, "pin", pin="zqpin7")
    try:
        every_display_set_renders(browser, "pin", ["PIN AXIAL"])
        assert console_errors(browser) == []
        assert "zqpin7" not in browser.evaluate("location.href")
        assert browser.evaluate("sessionStorage.getItem('dicomshare-viewer')")  # this tab only
    finally:
        browser.close()
    assert api.call("GET", f"/shares/{share['share_id']}")[1]["redemptions"] == 1  # the viewer redeemed nothing


def test_share_with_priors_shows_the_shared_study_first(api, local_system, chromium, tmp_path):
    prior = put_study(local_system, pseudonym="DS-VIEWER-PRIORS", study_date="20190101", slices=2, size=96,
                      description="CT PRIOR")
    current = put_datasets(local_system, ct_series(1, "CURRENT AXIAL", slices=3, study="CT CURRENT")
                           + ct_series(2, "CURRENT CORONAL", slices=2, study="CT CURRENT"),
                           pseudonym="DS-VIEWER-PRIORS", study_date="20240305")
    local_system.wait_idle()
    share = api.call("POST", "/shares", {"study_uid": current.study_uid, "include_priors": True})[1]
    assert share["study_uids"] == [current.study_uid, prior.study_uid]
    browser = open_in_viewer(chromium, tmp_path, share, "priors")
    try:
        wait_painted(browser, showing="CURRENT AXIAL")
        text = browser.evaluate("document.body.innerText")
        [viewport] = browser.evaluate(VIEWPORT_TEXT)
        assert "05-Mar-2024" in viewport and "01-Jan-2019" not in viewport  # the shared study is shown
        assert "05-Mar-2024" in text and "01-Jan-2019" in text  # the prior is listed beside it
        every_display_set_renders(browser, "priors", ["CURRENT AXIAL", "CURRENT CORONAL"])
        assert console_errors(browser) == []
    finally:
        browser.close()


def test_viewer_is_usable_on_a_phone(api, local_system, chromium, tmp_path):
    """At 390 x 844 the share page's button is tapped, the image takes most of the screen,
    neither page is wider than the screen, and every control of the viewer can be scrolled
    to and tapped (OHIF's header overlaps itself there without web/dicomshare-viewer.css)."""
    study = put_study(local_system, pseudonym="DS-VIEWER-PHONE", study_date="20240306", slices=3, size=96)
    local_system.wait_idle()
    share = api.call("POST", "/shares", {"study_uid": study.study_uid})[1]
    browser = open_in_viewer(chromium, tmp_path, share, "phone", phone=True)
    try:
        assert browser.evaluate("window.innerWidth") == 390
        [lit] = wait_painted(browser)[:1]
        width = browser.evaluate("document.querySelector('canvas.cornerstone-canvas').getBoundingClientRect().width")
        assert lit > 0 and width >= 300  # the image takes most of the screen
        controls = browser.evaluate(CONTROLS)
        assert len(controls) >= 10 and [c for c in controls if not c[1]] == [], controls
        assert browser.evaluate(NO_OVERFLOW), "the viewer is wider than the phone"
        screenshot(browser, "phone")
        tap(browser, "[data-cy=layout-button]")
        browser.wait_for("document.querySelector('[data-cy=layout-button]').getAttribute('aria-expanded') === 'true'")
        screenshot(browser, "phone-layout")
        assert console_errors(browser) == []
    finally:
        browser.close()
