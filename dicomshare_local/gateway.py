"""API Gateway, played locally: real HTTP in, API Gateway REST proxy events to the real API
handler, its proxy response back out.

As on AWS, the stage name prefixes every path (``/local/...``) and admin routes are
authenticated *before* the handler runs. On AWS that is IAM (SigV4); here it is
``Authorization: Bearer <admin_token>`` from ``local.json``. On success the gateway fills
``requestContext.identity.userArn`` as IAM authorisation does, with a session of
:data:`LOCAL_ADMIN_ROLE` (which the local system adds to the configured ``admins``, so the
handler checks it like any admin), and drops the header. A partner's token
(``partner_tokens`` in ``local.json``) stands for the partner's role: it reaches the
partner routes only (``GET /receipts``), as the role's IAM policy allows on AWS, and the
identity is the role's assumed-role ARN.
The deployed API declares every media type binary (``*/*``), so request bodies arrive
base64-encoded; they do here too.

Every other path is the share viewer (OHIF, built by ``make viewer`` into
``web/build/viewer``), on the API's origin as CloudFront serves it on AWS: its files, and
``index.html`` for any other path (a single-page app's routes), with the viewer's
Content-Security-Policy, ``Referrer-Policy: no-referrer`` and ``nosniff``.

Every request gets a response, as from API Gateway: a handler that raises gives
``502 {"message": "Internal server error"}``, one still running after the integration's
29 s gives ``504 {"message": "Endpoint request timed out"}`` (the handler finishes in the
background). The listen backlog holds 128 connections (``http.server``'s default of 5
reset the connections of a browser opening a share page while the pipeline was busy).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import mimetypes
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as HandlerTimedOut
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from dicomshare_aws import resources
from dicomshare_local.pollers import LambdaContext

STAGE = "local"
MAX_BODY_BYTES = 10 * 1024 * 1024
"""API Gateway's payload limit (10 MB): larger requests get 413, as there."""
LOCAL_ADMIN_ROLE = "arn:aws:iam::000000000000:role/dicomshare-local-admin"
LOCAL_ADMIN_ARN = "arn:aws:sts::000000000000:assumed-role/dicomshare-local-admin/local"
"""The caller an admin request carries locally: a session of :data:`LOCAL_ADMIN_ROLE`."""

log = logging.getLogger("dicomshare.local")

INTERNAL_ERROR = (502, {"message": "Internal server error"})
TIMED_OUT = (504, {"message": "Endpoint request timed out"})


VIEWER_DIR = Path(__file__).resolve().parent.parent / "web" / "build" / "viewer"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


def make_server(host: str, port: int, handler: Callable[[dict, Any], dict], admin_token: str,
                partner_identities: dict[str, str] | None = None, object_origin: str = "",
                viewer_dir: Path = VIEWER_DIR,
                timeout_seconds: float = resources.API_TIMEOUT_SECONDS) -> ThreadingHTTPServer:
    """``partner_identities``: partner token -> the assumed-role ARN it stands for;
    ``object_origin``: where presigned URLs point (the viewer's CSP names it)."""
    credentials = {f"Bearer {admin_token}": (LOCAL_ADMIN_ARN, None), **{
        f"Bearer {token}": (arn, resources.PARTNER_ROUTES) for token, arn in (partner_identities or {}).items()}}

    class Gateway(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_request(self) -> None:
            url = urlsplit(self.path)
            if not (url.path == f"/{STAGE}" or url.path.startswith(f"/{STAGE}/")):
                return self._viewer(url.path)
            path = url.path[len(STAGE) + 1:] or "/"
            length = self._content_length()
            if length is None:
                return
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items()}
            identity = {"sourceIp": self.client_address[0], "userAgent": self.headers.get("User-Agent")}
            if (self.command, path) not in resources.PUBLIC_ROUTES:
                supplied = headers.pop("Authorization", headers.pop("authorization", ""))
                arn, routes = next((found for expected, found in credentials.items()
                                    if hmac.compare_digest(supplied.encode(), expected.encode())), (None, None))
                if arn is None or (routes is not None and (self.command, path) not in routes):
                    return self._reply(403, {"Content-Type": "application/json"}, json.dumps({
                        "error": "forbidden",
                        "message": "admin routes need 'Authorization: Bearer <admin_token>' from local.json"
                                   " (a partner token reaches GET /receipts only)",
                    }).encode())
                identity["userArn"] = identity["caller"] = arn
            headers["X-Forwarded-Proto"] = "http"
            event = _event(self.command, path, url.query, headers, body, identity, self.headers.get("Host", ""))
            started = time.monotonic()
            response = invoke(event)
            out_headers = dict(response.get("headers") or {})
            for name, values in (response.get("multiValueHeaders") or {}).items():
                out_headers[name] = ", ".join(values)
            raw = response.get("body") or ""
            payload = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
            self._reply(int(response.get("statusCode", 502)), out_headers, payload)
            log.info("%s %s %s %.0fms", self.command, path, response.get("statusCode"),
                     (time.monotonic() - started) * 1000)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_request

        def _content_length(self) -> int | None:
            """The request's body length, or None after refusing the request: 400 for a
            Content-Length that is not one non-negative integer (or a chunked body), 413
            above :data:`MAX_BODY_BYTES`. The connection is closed: its stream is untrusted."""
            values = self.headers.get_all("Content-Length") or []
            chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
            if not values and not chunked:
                return 0
            if chunked or len(values) != 1 or not re.fullmatch(r"[0-9]{1,19}", values[0].strip()):
                return self._refuse(400, "invalid_request", "Content-Length must be one non-negative integer.")
            if int(values[0]) > MAX_BODY_BYTES:
                return self._refuse(413, "payload_too_large", f"The body may be at most {MAX_BODY_BYTES} bytes.")
            return int(values[0])

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self.close_connection = True
            self._reply(status, {"Content-Type": "application/json", "Connection": "close"},
                        json.dumps({"error": reason, "message": message}).encode())

        def _viewer(self, path: str) -> None:
            if self.command not in ("GET", "HEAD") or not (viewer_dir / "index.html").is_file():
                return self._reply(404, {"Content-Type": "application/json"}, json.dumps(
                    {"message": f"Not found: the API is under /{STAGE}/; the viewer needs make viewer"}).encode())
            root = viewer_dir.resolve()
            file = (root / path.lstrip("/")).resolve()
            if not (file.is_relative_to(root) and file.is_file()) or file.name == "csp.json":
                file = root / "index.html"
            headers = {
                "Content-Type": mimetypes.guess_type(file.name)[0] or "application/octet-stream",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache" if file.suffix == ".html" or file.name == "app-config.js"
                else "public, max-age=86400",
            }
            if file.suffix == ".html":
                hashes = json.loads((root / "csp.json").read_text())
                headers["Content-Security-Policy"] = resources.viewer_content_security_policy(hashes, object_origin)
            self._reply(200, headers, file.read_bytes())

        def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Silenced: the default line would carry the query string; ``do_request`` logs."""

    # Lambda runs one event at a time per execution environment, and the handler relies on
    # it (Powertools' resolver keeps the current event on the app): one worker, calls in turn.
    invocations = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api")

    def invoke(event: dict) -> dict:
        """The handler's proxy response, or API Gateway's own for an error or a timeout."""
        running = invocations.submit(handler, event, LambdaContext("api", resources.API_TIMEOUT_SECONDS))
        try:
            return running.result(timeout=timeout_seconds)
        except HandlerTimedOut:
            status, body = TIMED_OUT
        except Exception:
            log.exception("api: handler raised")
            status, body = INTERNAL_ERROR
        return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}

    return _Server((host, port), Gateway)


def _event(method: str, path: str, query: str, headers: dict[str, str], body: bytes,
           identity: dict, host: str) -> dict:
    params = parse_qs(query, keep_blank_values=True)
    now = time.time()
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in params.items()} or None,
        "multiValueQueryStringParameters": params or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/{STAGE}{path}",
            "stage": STAGE,
            "domainName": host,
            "apiId": "local",
            "accountId": "000000000000",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "identity": identity,
        },
        "body": base64.b64encode(body).decode() if body else None,
        "isBase64Encoded": bool(body),
    }
