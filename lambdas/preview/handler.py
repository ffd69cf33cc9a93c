"""Preview Lambda: S3 notifications (through SQS) of new de-identified instances -> a PNG
preview beside each (:mod:`dicomshare_aws.preview_object`), one log line per object with
its outcome (Powertools batch processing: partial batch responses)."""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomshare.settings import DEID_BUCKET_ENV
from dicomshare_aws.preview_object import preview_object
from dicomshare_aws.s3_events import created_objects

logger = Logger(service="preview")
processor = BatchProcessor(event_type=EventType.SQS)
s3 = boto3.client("s3")


def render(record: SQSRecord) -> None:
    for obj in created_objects(record.body):
        logger.info("preview", extra=preview_object(s3, obj, os.environ[DEID_BUCKET_ENV]))


@logger.inject_lambda_context(clear_state=True, log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=render, processor=processor, context=context)
