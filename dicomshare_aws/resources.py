"""Pipeline resource definitions shared by the CDK stacks and the local system.

Values an engineer would otherwise have to keep equal in two places live here once:
function timeouts and the queue settings derived from them, the S3 event filters, the
routes that are public. ``stacks/`` builds CloudFormation from these; ``dicomshare_local``
creates the same resources on the moto server from these.
"""

from __future__ import annotations

from dicomshare import index

INGEST_TIMEOUT_SECONDS = 120
PREVIEW_TIMEOUT_SECONDS = 60
COUNTS_TIMEOUT_SECONDS = 60
API_TIMEOUT_SECONDS = 29
RECONCILE_TIMEOUT_SECONDS = 900

RECONCILE_SCHEDULE_MINUTES = 15
"""How often the reconcile function recounts the studies the counts function flagged."""
ITERATOR_AGE_ALARM_SECONDS = 3600
"""Alarm when the counts function's oldest unprocessed stream record is an hour old: the
stream keeps records for 24 hours, so there is time to act before any expire."""

VISIBILITY_TIMEOUT_FACTOR = 6
"""SQS visibility timeout = 6 x the consuming function's timeout (AWS's guidance)."""

MAX_RECEIVE_COUNT = 5
"""Deliveries before a message moves to the dead-letter queue."""

SQS_BATCH_SIZE = 10
STREAM_BATCH_SIZE = 100
STREAM_RETRY_ATTEMPTS = 5

NEW_INSTANCES_FILTER = {
    "eventName": ["INSERT"],
    "dynamodb": {"NewImage": {"pk": {"S": [{"prefix": index.INSTANCES}]}, "sk": {"S": [{"prefix": "INSTANCE#"}]}}},
}
"""Lambda event filter (EventBridge pattern syntax) of the stream records the counts
function consumes: new instance items only (an instance partition and an instance sort
key), so its own study and series updates and counted marks never invoke it (``dicomshare.study_counts.is_instance_item``)."""

INGEST_EVENTS = ("s3:ObjectCreated:*",)
"""Ingest bucket -> ingest queue: every new object, whatever its prefix."""

PREVIEW_FILTER = {"prefix": "studies/", "suffix": ".dcm"}
"""De-identified bucket -> preview queue: new de-identified instances only."""

EVENT_SOURCE = "dicomshare"
"""``Source`` of the EventBridge events this system emits."""

PUBLIC_ROUTES = frozenset({
    ("POST", "/redeem"), ("GET", "/view"), ("GET", "/client-zip.js"), ("GET", "/download-worker.js"),
    ("GET", "/share/instances"), ("GET", "/share/dicomjson"), ("GET", "/share/manifest"),
})
"""Routes a clinician reaches with a share token; every other route is admin (IAM)."""

PARTNER_ROUTES = frozenset({("GET", "/receipts")})
"""Routes a partner's role may call (IAM on AWS, a partner token locally); admins may too."""


def page_cors(*origins: str) -> dict:
    """``CORSConfiguration`` of the de-identified bucket: ``GET``/``HEAD`` from the share
    origin's names only (the page's in-browser ZIP download and the viewer fetch the
    presigned URLs)."""
    return {"CORSRules": [{
        "AllowedMethods": ["GET", "HEAD"],
        "AllowedOrigins": list(origins),
        "AllowedHeaders": ["*"],
        "ExposeHeaders": ["Content-Length", "Content-Range", "ETag"],
        "MaxAgeSeconds": 3000,
    }]}


def share_origin_parameter(prefix: str) -> str:
    """Name of the SSM parameter that holds the share origin, where share links point:
    ``https://<CloudFront domain>`` on AWS (written by the web stack), the local gateway's
    origin locally (written by the local system). ``prefix``: ``dicomshare-<environment>``
    on AWS, the local system's resource prefix locally."""
    return f"/{prefix}/share-origin"


VIEWER_PATH = "/viewer"
"""OHIF's route on the share origin (its npm build works only at the root path ``/``)."""

VIEWER_DOCUMENT_PATH = "/dicomshare/share.json"
"""The address OHIF's dicomjson source fetches; answered in the browser by the shim."""


def viewer_content_security_policy(hashes: dict[str, list[str]], object_origin: str) -> str:
    """The viewer's Content-Security-Policy: its own files, its inline scripts and the
    ``<style>`` texts its bundle inserts by hash (``hashes``: ``web/build/viewer/csp.json``,
    computed when the viewer is built), WebAssembly codecs, and GETs of the presigned objects
    at ``object_origin``. No ``'unsafe-inline'``: style attributes in markup are refused (the
    viewer sets styles through the CSSOM, which CSP does not govern)."""
    scripts = " ".join(f"'sha256-{h}'" for h in hashes["script_sha256"])
    styles = " ".join(f"'sha256-{h}'" for h in hashes["style_sha256"])
    return (
        f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval' {scripts}; "
        f"style-src 'self' {styles}; img-src 'self' data: blob:; font-src 'self' data:; "
        f"connect-src 'self' {object_origin}; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    )


def visibility_timeout(function_timeout_seconds: int) -> int:
    return VISIBILITY_TIMEOUT_FACTOR * function_timeout_seconds
