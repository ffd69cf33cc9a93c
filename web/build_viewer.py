"""Build the share viewer: OHIF's prebuilt npm package with dicomshare's configuration.

``python web/build_viewer.py`` (``make viewer``):

1. ``npm pack`` fetches the ``@ohif/app`` tarball named in ``web/viewer.json`` (into
   ``web/.cache``), and its SHA-512 must equal the pinned ``integrity`` (npm's SRI form);
   none of its 40 dependencies is installed (the package ships a complete build).
2. ``dist/`` is unpacked into ``web/build/viewer`` without what a share viewer does not
   use (``omit``: the AI segmentation runtime, the microscopy viewer, the service worker,
   OHIF's demo configuration and redirects).
3. Our ``app-config.js`` replaces OHIF's, ``dicomshare-viewer.js`` (the data-source shim)
   is loaded before OHIF's bundle and ``dicomshare-viewer.css`` (the phone layout) after
   OHIF's styles; the service-worker registration is removed.
4. The SHA-256 of every inline script of ``index.html``, and of every ``<style>`` text the
   bundle writes into the page (``inline_styles.mjs`` reads them out of the bundle), is
   written to ``csp.json``, from which the local gateway and the CDK app build the viewer's
   Content-Security-Policy: no ``'unsafe-inline'``.

Nothing here is committed (``web/.cache`` and ``web/build`` are ignored).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

WEB = Path(__file__).resolve().parent
CACHE = WEB / ".cache"
OUTPUT = WEB / "build" / "viewer"
SHIM = "dicomshare-viewer.js"
STYLES = "dicomshare-viewer.css"


def tarball(package: str, version: str, integrity: str) -> Path:
    CACHE.mkdir(exist_ok=True)
    name = f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    path = CACHE / name
    if not path.exists():
        subprocess.run(["npm", "pack", f"{package}@{version}", "--silent", "--pack-destination", str(CACHE)],
                       check=True, stdout=subprocess.DEVNULL)
    algorithm, expected = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, path.read_bytes()).digest()).decode()
    if actual != expected:
        path.unlink()
        sys.exit(f"{name}: {algorithm} {actual} is not the pinned {expected}")
    return path


def unpack(path: Path, omit: list[str]) -> None:
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            relative = member.name.removeprefix("package/dist/")
            if not member.name.startswith("package/dist/") or relative.split("/")[0] in omit:
                continue
            if not (member.isfile() or member.isdir()):
                continue
            member.name = relative
            archive.extract(member, OUTPUT, filter="data")


def sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def configure() -> list[str]:
    """Our configuration and shim in; the inline scripts' CSP hashes out."""
    shutil.copy(WEB / "app-config.js", OUTPUT / "app-config.js")
    shutil.copy(WEB / SHIM, OUTPUT / SHIM)
    shutil.copy(WEB / STYLES, OUTPUT / STYLES)
    index = OUTPUT / "index.html"
    html = index.read_text(encoding="utf-8")
    html = re.sub(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>', "", html)
    html = html.replace('<script rel="preload" as="script" src="/app-config.js"></script>',
                        f'<script src="/app-config.js"></script><script src="/{SHIM}"></script>', 1)
    html = html.replace('<link href="/app.bundle.css" rel="stylesheet">',
                        f'<link href="/app.bundle.css" rel="stylesheet"><link href="/{STYLES}" rel="stylesheet">', 1)
    if f'src="/{SHIM}"' not in html or f'href="/{STYLES}"' not in html:
        sys.exit("index.html: the app-config.js script or app.bundle.css link was not found; "
                 "the shim and styles cannot be placed")
    index.write_text(html, encoding="utf-8")
    return [sha256(body) for body in re.findall(r"<script>(.*?)</script>", html, flags=re.S)]


def style_hashes() -> list[str]:
    """The CSP hashes of the ``<style>`` texts OHIF's bundle inserts (``inline_styles.mjs``)."""
    [bundle] = OUTPUT.glob("app.bundle.*.js")
    texts = json.loads(subprocess.run(["node", str(WEB / "inline_styles.mjs"), str(bundle)],
                                      check=True, capture_output=True, text=True).stdout)
    return [sha256(text) for text in texts]


def main() -> None:
    pinned = json.loads((WEB / "viewer.json").read_text())
    unpack(tarball(pinned["package"], pinned["version"], pinned["integrity"]), pinned["omit"])
    scripts, styles = configure(), style_hashes()
    (OUTPUT / "csp.json").write_text(json.dumps(
        {"version": pinned["version"], "script_sha256": scripts, "style_sha256": styles}))
    print(f"{OUTPUT}: {pinned['package']} {pinned['version']}, "
          f"{len(scripts)} inline script(s) and {len(styles)} inline style(s) hashed")


if __name__ == "__main__":
    main()
