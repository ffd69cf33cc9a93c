"""Uploads spooled instances to the ingest bucket, each with its partner's credentials.

Each entry is one ``PutObject`` to ``<partner>/gateway/<content hash>.dcm`` with SSE-KMS
(when a key is configured) and the upload identifier as ``x-amz-meta-upload-id``; the
entry is deleted from the spool only after S3 answered success. Any failure leaves it in
place, with the rest of that partner's entries (other partners go on): the uploader waits
(``retry_seconds``, doubling up to ``max_retry_seconds``) and tries again, oldest first,
so a restart or an outage delays uploads and loses none.

While uploads fail, every attempt logs one line with the spool's size and the error's
type and code (never a key or a value), and the metrics below say so too. Metrics are
CloudWatch embedded metric format lines on stdout (namespace ``dicomshare-gateway``):
``SpoolFiles``, ``SpoolBytes``, ``FilesUploaded``, ``UploadFailures``. On ECS the
awslogs driver turns them into metrics; elsewhere they are plain JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Callable

import boto3
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from dicomshare_gateway.config import GatewayConfig, GatewayPartner
from dicomshare_gateway.spool import Entry, Spool

METRICS_NAMESPACE = "dicomshare-gateway"
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=10, read_timeout=120)
"""Few retries inside botocore: the uploader's own loop retries, and logs each failure."""

log = logging.getLogger("dicomshare.gateway")


def partner_client(partner: GatewayPartner, config: GatewayConfig):
    """An S3 client with the partner's credentials: its role assumed with the machine's
    credentials (or its named profile's), refreshed before they expire."""
    session = boto3.Session(profile_name=partner.profile, region_name=config.upload.region)
    if partner.role_arn:
        extra = {"RoleSessionName": f"dicomshare-gateway-{partner.id}"[:64]}
        if partner.external_id:
            extra["ExternalId"] = partner.external_id
        fetcher = AssumeRoleCredentialFetcher(session._session.create_client, session.get_credentials(),
                                              partner.role_arn, extra_args=extra)
        session._session._credentials = DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
    return session.client("s3", endpoint_url=config.upload.endpoint_url, config=CLIENT_CONFIG)


def emit_metrics(dimensions: dict[str, str], **values: float) -> None:
    """One CloudWatch embedded-metric-format line on stdout."""
    print(json.dumps({
        "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [{
            "Namespace": METRICS_NAMESPACE, "Dimensions": [sorted(dimensions)],
            "Metrics": [{"Name": name, "Unit": "Bytes" if name.endswith("Bytes") else "Count"} for name in values]}]},
        **dimensions, **values,
    }), file=sys.stdout, flush=True)


def error_text(error: Exception) -> str:
    code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
    return f"{type(error).__name__}({code})" if code else type(error).__name__


class Uploader(threading.Thread):
    def __init__(self, spool: Spool, config: GatewayConfig,
                 client_for: Callable[[GatewayPartner, GatewayConfig], object] = partner_client):
        super().__init__(name="uploader", daemon=True)
        self.spool = spool
        self.config = config
        self.partners = {p.id: p for p in config.partners}
        self.client_for = client_for
        self._clients: dict[str, object] = {}
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.idle = threading.Event()

    def client(self, partner: str):
        if partner not in self._clients:
            self._clients[partner] = self.client_for(self.partners[partner], self.config)
        return self._clients[partner]

    def upload(self, entry: Entry) -> None:
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.config.upload.sse_kms_key_id} \
            if self.config.upload.sse_kms_key_id else {}
        with entry.path.open("rb") as body:
            self.client(entry.partner).put_object(
                Bucket=self.config.upload.bucket, Key=entry.object_key, Body=body, ContentType="application/dicom",
                Metadata={"upload-id": entry.upload_id}, **extra)
        self.spool.remove(entry)

    def drain(self) -> int:
        """Upload every waiting entry once, oldest first per partner; the number uploaded.
        A failure stops that partner's uploads for this round (its order is kept) but not
        the other partners'; the first failure is raised at the end."""
        uploaded, stopped, failure = 0, set(), None
        for entry in self.spool.entries():
            if self.stopping.is_set():
                break
            if entry.partner in stopped:
                continue
            if entry.partner not in self.partners:
                log.error("spool entries of a partner no longer configured are kept; partner=%s", entry.partner)
                stopped.add(entry.partner)
                continue
            try:
                self.upload(entry)
            except FileNotFoundError:
                continue
            except (BotoCoreError, ClientError, OSError) as error:
                stopped.add(entry.partner)
                failure = failure or error
                continue
            uploaded += 1
        if failure is not None:
            raise failure
        return uploaded

    def run(self) -> None:
        delay = self.config.upload.retry_seconds
        while not self.stopping.is_set():
            self.idle.clear()
            try:
                uploaded = self.drain()
            except (BotoCoreError, ClientError, OSError) as error:
                files, size = self.spool.size()
                log.warning("upload failed, will retry in %.0f s: %s; spool holds %d files, %d bytes",
                            delay, error_text(error), files, size)
                emit_metrics({"Gateway": self.config.ae_title}, UploadFailures=1, SpoolFiles=files, SpoolBytes=size)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.config.upload.max_retry_seconds)
                continue
            delay = self.config.upload.retry_seconds
            if uploaded:
                files, size = self.spool.size()
                log.info("uploaded %d files; spool holds %d files, %d bytes", uploaded, files, size)
                emit_metrics({"Gateway": self.config.ae_title}, FilesUploaded=uploaded, SpoolFiles=files,
                             SpoolBytes=size)
                continue
            self.idle.set()
            self.wake.wait(1.0)
            self.wake.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
