"""``GET /view`` (public): the clinician share page, one static HTML file (no build step,
no external resource). The token stays in the URL fragment, which browsers never send.

``GET /client-zip.js`` serves the streaming ZIP writer the page downloads with: npm's
``client-zip`` (pinned by version and integrity in ``web/package-lock.json``), copied into
``lambdas/api/static/`` by ``make web``, never committed.

``GET /download-worker.js`` serves the page's download service worker (scope ``download/``),
through which browsers without the File System Access API save the archive to disk as it
streams."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

from lambdas.api import dependencies as deps

router = Router()
STATIC = Path(__file__).parent / "static"
VIEW_HTML = Path(__file__).parent / "view.html"
"""The page; on AWS the web stack also puts it in the viewer bucket, and CloudFront serves
it from there with :func:`content_security_policy` in a response-headers policy."""


@cache
def page() -> tuple[str, str]:
    """The page and its Content-Security-Policy."""
    html = VIEW_HTML.read_text(encoding="utf-8")
    return html, content_security_policy(html, deps.deid_origin())


def content_security_policy(html: str, object_origin: str) -> str:
    """The page's Content-Security-Policy: only its own inline script and style (by hash)
    run; it may fetch from its own origin (the API) and from ``object_origin``, the
    de-identified bucket's (presigned URLs), register its own origin's service worker and
    frame its own origin (the hidden frame that opens a streamed download), nothing else."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src 'self' {hashes('script')}; style-src {hashes('style')}; "
        f"img-src {object_origin} blob:; connect-src 'self' {object_origin}; "
        "worker-src 'self'; frame-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@router.get("/view", include_in_schema=False)
def view() -> Response[str]:
    html, policy = page()
    return Response(
        200,
        "text/html; charset=utf-8",
        html,
        headers={
            "Content-Security-Policy": policy,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


@router.get("/client-zip.js", include_in_schema=False)
def client_zip() -> Response[str]:
    path = STATIC / "client-zip.js"
    if not path.is_file():
        return Response(404, "application/json", '{"error": "not_built", "message": "Run make web."}')
    return Response(200, "text/javascript; charset=utf-8", path.read_text(encoding="utf-8"), headers={
        "Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


@router.get("/download-worker.js", include_in_schema=False)
def download_worker() -> Response[str]:
    return Response(200, "text/javascript; charset=utf-8", (Path(__file__).parent / "download-worker.js").read_text(
        encoding="utf-8"), headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
