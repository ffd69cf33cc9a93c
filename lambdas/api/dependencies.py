"""What the API routes need from their environment, created once per Lambda container on
first use (never at import: cold start stays small and needs no network)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from dicomshare import settings as config
from dicomshare_aws.share_store import ShareStore


@cache
def settings() -> config.Settings:
    return config.from_environment()


@cache
def store() -> ShareStore:
    return ShareStore(os.environ[config.TABLE_NAME_ENV])


@cache
def s3() -> Any:
    """S3 client for presigning: SigV4 (required for KMS-encrypted objects), virtual-host style
    on AWS; path style when ``AWS_ENDPOINT_URL`` points at a local endpoint."""
    addressing = "path" if os.environ.get("AWS_ENDPOINT_URL") else "virtual"
    return boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": addressing}))


@cache
def events() -> Any:
    return boto3.client("events")


def deidentified_bucket() -> str:
    return os.environ[config.DEID_BUCKET_ENV]


def event_bus() -> str:
    return os.environ[config.EVENT_BUS_NAME_ENV]
