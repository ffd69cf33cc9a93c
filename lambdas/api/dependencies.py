"""What the API routes need from their environment, created once per Lambda container on
first use (never at import: cold start stays small and needs no network)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.utilities import parameters

from dicomshare import settings as config
from dicomshare_aws.instance_metadata import read_many
from dicomshare_aws.s3_presign import Presigner, bucket_origin
from dicomshare_aws.share_store import ShareStore


@cache
def settings() -> config.Settings:
    return config.from_environment()


@cache
def store() -> ShareStore:
    return ShareStore(os.environ[config.TABLE_NAME_ENV])


@cache
def session() -> boto3.Session:
    return boto3.Session()


def deid_endpoint_url() -> str | None:
    """The local S3 endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``); None on AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def deid_origin() -> str:
    """The origin of the presigned URLs the page loads (the only one besides its own)."""
    return bucket_origin(os.environ[config.DEID_BUCKET_ENV], session().region_name, deid_endpoint_url())


SHARE_ORIGIN_MAX_AGE_SECONDS = 300
"""How long a container keeps the share origin it read: a changed origin (a custom domain
put in front of the distribution) reaches share links within five minutes, without a
deployment, at one SSM read per container per five minutes."""


def share_origin() -> str:
    """Where share links point (``https://<CloudFront domain>`` on AWS): the SSM parameter
    named by ``SHARE_ORIGIN_PARAMETER``, which the web stack writes (the local system, the
    local gateway's origin). Raises ``parameters.exceptions.GetParameterError`` while it
    does not exist (the web stack not deployed yet)."""
    return parameters.get_parameter(os.environ[config.SHARE_ORIGIN_PARAMETER_ENV],
                                    max_age=SHARE_ORIGIN_MAX_AGE_SECONDS).rstrip("/")


def presigner(expires_in: int) -> Presigner:
    """Presigns GETs of de-identified objects with the function's current credentials:
    SigV4 (required for SSE-KMS objects), virtual-hosted on AWS, path style on the local
    endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``)."""
    credentials = session().get_credentials().get_frozen_credentials()
    return Presigner(
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        token=credentials.token,
        region=session().region_name,
        bucket=os.environ[config.DEID_BUCKET_ENV],
        expires_in=expires_in,
        endpoint_url=deid_endpoint_url(),
    )


@cache
def s3() -> Any:
    return session().client("s3")


def instance_metadata(items: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The instance items' metadata objects, read in parallel (``None`` where unreadable)."""
    return read_many(s3(), os.environ[config.DEID_BUCKET_ENV], items)


@cache
def events() -> Any:
    return boto3.client("events")


def event_bus() -> str:
    return os.environ[config.EVENT_BUS_NAME_ENV]
