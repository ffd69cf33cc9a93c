"""The whole of dicomshare on this machine, with no AWS account and no Docker.

moto in server mode on 127.0.0.1 stands in for S3, SQS, DynamoDB (and its stream), KMS,
Secrets Manager and EventBridge; the resources are created from the definitions the CDK
stacks use (:mod:`dicomshare_local.provision`); the real handlers are called by local
event source mappings (:mod:`dicomshare_local.pollers`) and a local API Gateway
(:mod:`dicomshare_local.gateway`). Partners and tests talk to it exactly as to AWS: boto3
or the AWS CLI pointed at ``aws_endpoint_url``, and the API over HTTP. With a DICOM port,
the first partner's C-STORE gateway (:mod:`dicomshare_gateway`) runs too, uploading to the
local ingest bucket as a partner's gateway uploads to AWS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import boto3

from dicomshare import settings as settings_module
from dicomshare.cli import DEFAULT_SECRET_FILE, read_secret_file
from dicomshare.settings import Settings
from dicomshare_aws import resources
from dicomshare_local import gateway, pollers, provision
from dicomshare_local.moto_server import SerialMotoServer

CONNECTION_FILE = "local.json"
SECRET_FILE = DEFAULT_SECRET_FILE.name
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}

LOCAL_DICOM_AE_TITLE = "DICOMSHARE"

log = logging.getLogger("dicomshare.local")


def partner_ae_title(partner_id: str) -> str:
    """The calling AE title the local gateway accepts from a partner: its id, upper case."""
    return partner_id.upper()[:16].rstrip("-")


class PortInUse(RuntimeError):
    def __init__(self, port: int, flag: str):
        super().__init__(f"port {port} on 127.0.0.1 is in use: choose another with {flag} PORT")


def load_settings(config_file: Path) -> Settings:
    """The ``dicomshare`` document of ``cdk.json``: the local system runs the deployed config."""
    if not config_file.exists():
        return Settings(partners=(settings_module.Partner(id="demo-partner"),))
    context = json.loads(config_file.read_text())["context"]
    return settings_module.from_document(context["dicomshare"])


def _check_port(host: str, port: int, flag: str) -> None:
    if port == 0:
        return
    with socket.socket() as probe:
        # As the servers themselves bind (allow_reuse_address): connections of a system
        # stopped a moment ago, still in TIME_WAIT, must not make the port look taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise PortInUse(port, flag) from None


class LocalSystem:
    """Context manager: ``with LocalSystem(state_dir) as system: ...``."""

    def __init__(self, state_dir: Path, *, settings: Settings, host: str = "127.0.0.1",
                 aws_port: int = 0, api_port: int = 0, region: str = "us-east-1", dicom_port: int | None = None):
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.host = host
        self.aws_port = aws_port
        self.api_port = api_port
        self.region = region
        self.dicom_port = dicom_port
        self.dicom_gateway = None
        self.admin_token = secrets.token_urlsafe(24)
        self.partner_tokens = {p.id: secrets.token_urlsafe(24) for p in settings.partners}
        self._pollers: list[pollers.Poller] = []

    def __enter__(self) -> "LocalSystem":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        _check_port(self.host, self.aws_port, "--aws-port")
        _check_port(self.host, self.api_port, "--api-port")
        if self.dicom_port is not None:
            _check_port(self.host, self.dicom_port, "--dicom-port")
        # moto's access log prints object keys, and partners' keys can carry patient names.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto = SerialMotoServer(ip_address=self.host, port=self.aws_port, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.session = boto3.Session(region_name=self.region, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        self.resources = provision.provision(self.session, self.endpoint_url, self.settings,
                                             read_secret_file(self.state_dir / SECRET_FILE).decode())
        self.environment = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            **CREDENTIALS,
            **self.resources.lambda_environment(
                dataclasses.replace(self.settings, admins=(*self.settings.admins, gateway.LOCAL_ADMIN_ROLE))),
        }
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(self.environment)
        self._start_pollers()
        self._start_gateway()
        if self.dicom_port is not None and self.settings.partners:
            self._start_dicom_gateway()
        self._write_connection_file()

    def _start_pollers(self) -> None:
        from lambdas.counts.handler import handler as counts
        from lambdas.ingest.handler import handler as ingest
        from lambdas.preview.handler import handler as preview
        from lambdas.reconcile.handler import handler as reconcile

        sqs = self.client("sqs")
        r = self.resources
        self._pollers = [
            pollers.SqsPoller("ingest", ingest, resources.INGEST_TIMEOUT_SECONDS, sqs, r.ingest_queue_url, self.region),
            pollers.SqsPoller("preview", preview, resources.PREVIEW_TIMEOUT_SECONDS, self.client("sqs"),
                              r.preview_queue_url, self.region),
            pollers.StreamPoller("counts", counts, resources.COUNTS_TIMEOUT_SECONDS, self.client("dynamodbstreams"),
                                 r.stream_arn, self.client("sqs"), r.counts_dlq_url, self.region),
            pollers.SchedulePoller("reconcile", reconcile, resources.RECONCILE_TIMEOUT_SECONDS,
                                   resources.RECONCILE_SCHEDULE_MINUTES * 60, self.region),
        ]
        for poller in self._pollers:
            poller.start()

    def _start_gateway(self) -> None:
        from lambdas.api.handler import handler as api

        self.http = gateway.make_server(self.host, self.api_port, api, self.admin_token, {
            token: self.partner_arn(partner) for partner, token in self.partner_tokens.items()},
            object_origin=self.endpoint_url)
        origin = f"http://{self.host}:{self.http.server_address[1]}"
        self.api_url = f"{origin}/{gateway.STAGE}"
        # The web stack's two settings on AWS, with the gateway's origin: where share links
        # point, and the one origin the de-identified bucket answers cross-origin reads for.
        self.client("ssm").put_parameter(Name=self.resources.share_origin_parameter, Value=origin, Type="String",
                                         Overwrite=True)
        self.client("s3").put_bucket_cors(Bucket=self.resources.deid_bucket, CORSConfiguration=resources.page_cors(origin))
        threading.Thread(target=self.http.serve_forever, name="gateway", daemon=True).start()

    def _start_dicom_gateway(self) -> None:
        from dicomshare_gateway import config
        from dicomshare_gateway.scp import Gateway

        partner = self.settings.partners[0]
        self.dicom_gateway = Gateway(config.from_document({
            "version": config.GATEWAY_CONFIG_VERSION, "ae_title": LOCAL_DICOM_AE_TITLE, "bind_address": self.host,
            "port": self.dicom_port, "spool_dir": "gateway-spool", "min_free_bytes": 64 * 1024**2,
            "upload_id_secret_file": "gateway-upload-id-secret",
            "upload": {"bucket": self.resources.ingest_bucket, "region": self.region, "endpoint_url": self.endpoint_url},
            "partners": [{"id": partner.id, "calling_ae_titles": [partner_ae_title(partner.id)]}],
        }, base=self.state_dir))
        self.dicom_gateway.start()

    def partner_arn(self, partner_id: str) -> str:
        """The identity a partner's token stands for: its role's assumed-role ARN."""
        role = self.settings.partner(partner_id).role_name(self.settings.environment, self.region)
        return f"arn:aws:sts::000000000000:assumed-role/{role}/local"

    def _write_connection_file(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / CONNECTION_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.connection(), f, indent=2)

    def connection(self) -> dict:
        """What ``local.json`` holds: enough to upload as a partner and to call the API."""
        partner = self.settings.partners[0] if self.settings.partners else None
        return {
            "aws_endpoint_url": self.endpoint_url,
            "region": self.region,
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "ingest_bucket": self.resources.ingest_bucket,
            "deid_bucket": self.resources.deid_bucket,
            "quarantine_bucket": self.resources.quarantine_bucket,
            "table_name": self.resources.table_name,
            "partner_prefix": partner.prefix if partner else "",
            "api_url": self.api_url,
            "admin_token": self.admin_token,
            "partner_tokens": dict(self.partner_tokens),
            **({"dicom_port": self.dicom_gateway.port, "dicom_ae_title": LOCAL_DICOM_AE_TITLE,
                "partner_ae_title": partner_ae_title(partner.id)} if self.dicom_gateway else {}),
        }

    def client(self, service: str):
        return self.session.client(service, endpoint_url=self.endpoint_url)

    def wait_idle(self, timeout: float = 120) -> None:
        """Block until every queue is drained and every handler has finished."""
        sqs = self.client("sqs")
        queues = (self.resources.ingest_queue_url, self.resources.preview_queue_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            quiet = all(p.idle_rounds >= 2 and not p.busy.is_set() for p in self._pollers)
            if quiet and all(_queue_depth(sqs, q) == 0 for q in queues):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the local pipeline was still busy after {timeout:.0f} s")

    def disable_event_sources(self) -> None:
        """Stop calling the pipeline's handlers, as disabling their event source mappings
        does on AWS; the API keeps serving (benchmarks time it alone)."""
        for poller in self._pollers:
            poller.stop()
        for poller in self._pollers:
            poller.join(timeout=resources.INGEST_TIMEOUT_SECONDS)

    def stop(self) -> None:
        if self.dicom_gateway is not None:
            self.dicom_gateway.stop()
        self.disable_event_sources()
        if getattr(self, "http", None):
            self.http.shutdown()
            self.http.server_close()
        if getattr(self, "moto", None):
            self.moto.stop()


def _queue_depth(sqs, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attributes.values())
