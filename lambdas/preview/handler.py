"""Preview Lambda: S3 notifications (through SQS) of new de-identified instances -> a PNG
preview beside them (``index.preview_object_key``). Header and one frame are read with
ranged GETs, never the whole object. An instance that cannot be rendered gets no preview
(outcome ``no_preview``) and its message succeeds: the page shows "no preview".

Each preview is rendered once: an instance whose preview exists (a duplicate or replayed
notification) is skipped (outcome ``exists``). A preview never changes (instances are
immutable), so it is stored with ``Cache-Control: private, max-age=<1 year>, immutable``:
a browser showing it again under the same presigned URL does not fetch it again."""

from __future__ import annotations

import os
import re
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomshare import index, preview
from dicomshare.settings import DEID_BUCKET_ENV
from dicomshare_aws.s3_events import created_objects
from dicomshare_aws.s3_reader import S3RangeReader

PREVIEW_CACHE_CONTROL = "private, max-age=31536000, immutable"
INSTANCE_KEY = re.compile(r"^studies/([0-9.]+)/series/([0-9.]+)/instances/([0-9.]+)\.dcm$")

logger = Logger(service="preview")
processor = BatchProcessor(event_type=EventType.SQS)
s3 = boto3.client("s3")


def render(record: SQSRecord) -> None:
    for obj in created_objects(record.body):
        match = INSTANCE_KEY.match(obj.key)
        if obj.bucket != os.environ[DEID_BUCKET_ENV] or not match:
            logger.info("preview", extra={"outcome": "ignored"})
            continue
        preview_key = index.preview_object_key(*match.groups())
        if exists(obj.bucket, preview_key):
            logger.info("preview", extra={"outcome": "exists"})
            continue
        size = obj.size or s3.head_object(Bucket=obj.bucket, Key=obj.key)["ContentLength"]
        reader = S3RangeReader(s3, obj.bucket, obj.key, int(size))
        try:
            png = preview.render_file(reader, io_errors=(ClientError, BotoCoreError))
        except preview.NoPreview as refusal:
            logger.info("preview", extra={"outcome": "no_preview", "reason": refusal.reason})
            continue
        s3.put_object(Bucket=obj.bucket, Key=preview_key, Body=png, ContentType="image/png",
                      CacheControl=PREVIEW_CACHE_CONTROL)
        logger.info("preview", extra={"outcome": "rendered", "bytes_read": reader.bytes_read, "size": int(size)})


def exists(bucket: str, key: str) -> bool:
    """Whether the object exists (HEAD; a missing key is a 404 given s3:ListBucket)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


@logger.inject_lambda_context(clear_state=True, log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=render, processor=processor, context=context)
