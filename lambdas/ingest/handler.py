"""Ingest function: SQS batches of S3 event notifications, one outcome per object.

Partial batch responses (Powertools batch processing): a message that fails is retried
(and after ``MAX_RECEIVE_COUNT`` tries lands in the dead-letter queue) without failing the
rest of its batch. Logs carry the SQS message id as correlation id and the key's SHA-256,
never the key or a DICOM value (``study_uid`` is the de-identified one).
"""

import os
import time
from functools import cache

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomshare import settings as config
from dicomshare_aws.ingest_object import INGESTED, QUARANTINED, Destinations, ObjectFailed, ingest_object
from dicomshare_aws.s3_events import created_objects

logger = Logger(service="ingest")
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@cache
def _clients():
    return boto3.client("s3"), boto3.client("dynamodb")


@cache
def _events():
    return boto3.client("events")


def _secret() -> bytes:
    return parameters.get_secret(os.environ[config.DEID_SECRET_ARN_ENV], max_age=300).encode()


def record_handler(record: SQSRecord) -> None:
    logger.set_correlation_id(record.message_id)
    destinations = Destinations.from_environment(os.environ)
    for obj in created_objects(record.body):
        started = time.perf_counter()
        fields = {"bucket": obj.bucket, "key_sha256": obj.key_sha256, "s3_request_id": obj.request_id}
        try:
            result = ingest_object(*_clients(), obj, destinations=destinations,
                                   settings=config.from_environment(), secret=_secret, events=_events())
        except Exception as error:
            failed = ObjectFailed.from_error(error, obj)
            logger.error("object failed", extra={**fields, "outcome": "failed", "error": failed.error})
            raise failed from None
        duration_ms = (time.perf_counter() - started) * 1000
        logger.info("object processed", extra={**fields, **result.log_fields(), "duration_ms": round(duration_ms, 1)})
        metrics.add_metric(name="IngestDuration", unit=MetricUnit.Milliseconds, value=duration_ms)
        if result.outcome == INGESTED:
            metrics.add_metric(name="FilesIngested", unit=MetricUnit.Count, value=1)
            metrics.add_metric(name="BytesIngested", unit=MetricUnit.Bytes, value=result.size)
        elif result.outcome == QUARANTINED:
            with single_metric(name="FilesRefused", unit=MetricUnit.Count, value=1) as metric:
                metric.add_dimension(name="reason", value=result.reason)


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
