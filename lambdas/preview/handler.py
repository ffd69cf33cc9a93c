"""Preview Lambda: S3 notifications (through SQS) of new de-identified instances -> a PNG
preview beside them (``index.preview_object_key``). Header and one frame are read with
ranged GETs, never the whole object. An instance that cannot be rendered gets no preview
(outcome ``no_preview``) and its message succeeds: the page shows "no preview"."""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import unquote_plus

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomshare import index, preview
from dicomshare.settings import DEID_BUCKET_ENV
from dicomshare_aws.s3_reader import S3RangeReader

INSTANCE_KEY = re.compile(r"^studies/([0-9.]+)/series/([0-9.]+)/instances/([0-9.]+)\.dcm$")

logger = Logger()
processor = BatchProcessor(event_type=EventType.SQS)
s3 = boto3.client("s3")


def render(record: SQSRecord) -> None:
    for notification in json.loads(record.body).get("Records", []):
        bucket = notification["s3"]["bucket"]["name"]
        key = unquote_plus(notification["s3"]["object"]["key"])
        match = INSTANCE_KEY.match(key)
        if bucket != os.environ[DEID_BUCKET_ENV] or not match:
            logger.info("preview", extra={"outcome": "ignored"})
            continue
        size = notification["s3"]["object"].get("size") or s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        reader = S3RangeReader(s3, bucket, key, int(size))
        try:
            png = preview.render_file(reader, io_errors=(ClientError, BotoCoreError))
        except preview.NoPreview as refusal:
            logger.info("preview", extra={"outcome": "no_preview", "reason": refusal.reason})
            continue
        s3.put_object(Bucket=bucket, Key=index.preview_object_key(*match.groups()), Body=png, ContentType="image/png")
        logger.info("preview", extra={"outcome": "rendered", "bytes_read": reader.bytes_read, "size": int(size)})


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=render, processor=processor, context=context)
