"""API Gateway, played locally: real HTTP in, API Gateway REST proxy events to the real API
handler, its proxy response back out.

As on AWS, the stage name prefixes every path (``/local/...``) and admin routes are
authenticated *before* the handler runs. On AWS that is IAM (SigV4); here it is
``Authorization: Bearer <admin_token>`` from ``local.json``. On success the gateway fills
``requestContext.identity.userArn`` as IAM authorisation does, and drops the header.
The deployed API declares every media type binary (``*/*``), so request bodies arrive
base64-encoded; they do here too.

Every other path is the share viewer (OHIF, built by ``make viewer`` into
``web/build/viewer``), on the API's origin as CloudFront serves it on AWS: its files, and
``index.html`` for any other path (a single-page app's routes), with the viewer's
Content-Security-Policy, ``Referrer-Policy: no-referrer`` and ``nosniff``.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import mimetypes
import time
import uuid
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from dicomshare_aws import resources
from dicomshare_local.pollers import LambdaContext

STAGE = "local"
LOCAL_ADMIN_ARN = "arn:aws:iam::000000000000:user/local-admin"

log = logging.getLogger("dicomshare.local")


VIEWER_DIR = Path(__file__).resolve().parent.parent / "web" / "build" / "viewer"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def make_server(host: str, port: int, handler: Callable[[dict, Any], dict], admin_token: str,
                object_origin: str = "", viewer_dir: Path = VIEWER_DIR) -> ThreadingHTTPServer:
    class Gateway(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_request(self) -> None:
            url = urlsplit(self.path)
            if not (url.path == f"/{STAGE}" or url.path.startswith(f"/{STAGE}/")):
                return self._viewer(url.path)
            path = url.path[len(STAGE) + 1:] or "/"
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items()}
            identity = {"sourceIp": self.client_address[0], "userAgent": self.headers.get("User-Agent")}
            if (self.command, path) not in resources.PUBLIC_ROUTES:
                supplied = headers.pop("Authorization", headers.pop("authorization", ""))
                if not hmac.compare_digest(supplied.encode(), f"Bearer {admin_token}".encode()):
                    return self._reply(403, {"Content-Type": "application/json"}, json.dumps({
                        "error": "forbidden",
                        "message": "admin routes need 'Authorization: Bearer <admin_token>' from local.json",
                    }).encode())
                identity["userArn"] = identity["caller"] = LOCAL_ADMIN_ARN
            headers["X-Forwarded-Proto"] = "http"
            event = _event(self.command, path, url.query, headers, body, identity, self.headers.get("Host", ""))
            started = time.monotonic()
            response = handler(event, LambdaContext("api", resources.API_TIMEOUT_SECONDS))
            out_headers = dict(response.get("headers") or {})
            for name, values in (response.get("multiValueHeaders") or {}).items():
                out_headers[name] = ", ".join(values)
            raw = response.get("body") or ""
            payload = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
            self._reply(int(response.get("statusCode", 502)), out_headers, payload)
            log.info("%s %s %s %.0fms", self.command, path, response.get("statusCode"),
                     (time.monotonic() - started) * 1000)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_request

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
                hashes = json.loads((root / "csp.json").read_text())["script_sha256"]
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

    server = ThreadingHTTPServer((host, port), Gateway)
    server.daemon_threads = True
    return server


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
