"""Ingest function: SQS batches of S3 event notifications, one outcome per object.

Partial batch responses (Powertools batch processing): a message that fails is retried
(and after ``MAX_RECEIVE_COUNT`` tries lands in the dead-letter queue) without failing the
rest of its batch. An object that cannot finish before the timeout is not started; its
message is reported as failed and made visible again at once
(:mod:`dicomshare_aws.batch_deadline`). Logs carry the SQS message id as correlation id and
the key's HMAC (keyed with the deployment secret),
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
from dicomshare_aws import batch_deadline
from dicomshare_aws.ingest_object import INGESTED, QUARANTINED, Destinations, ObjectFailed, ingest_object
from dicomshare_aws.s3_events import created_objects

logger = Logger(service="ingest")
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
not_started: list[SQSRecord] = []


@cache
def _clients():
    return boto3.client("s3"), boto3.client("dynamodb")


@cache
def _sqs():
    return boto3.client("sqs")


@cache
def _events():
    return boto3.client("events")


def _secret() -> bytes:
    return parameters.get_secret(os.environ[config.DEID_SECRET_ARN_ENV], max_age=300).encode()


def record_handler(record: SQSRecord, lambda_context) -> None:
    logger.set_correlation_id(record.message_id)
    destinations = Destinations.from_environment(os.environ)
    for obj in created_objects(record.body):
        started = time.perf_counter()
        fields = {"bucket": obj.bucket, "key_hmac": obj.fingerprint(_secret()), "s3_request_id": obj.request_id}
        try:
            batch_deadline.ensure_time_for(lambda_context, fields["key_hmac"], obj.size)
        except batch_deadline.NotStarted:
            logger.warning("object not started", extra={**fields, "outcome": "not_started", "size": obj.size})
            not_started.append(record)
            raise
        try:
            result = ingest_object(*_clients(), obj, destinations=destinations,
                                   settings=config.from_environment(), secret=_secret, events=_events())
        except Exception as error:
            failed = ObjectFailed.from_error(error, fields["key_hmac"])
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
@logger.inject_lambda_context(log_event=False)
def handler(event, context):
    not_started.clear()
    response = process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)
    if not_started:
        sqs = _sqs()
        batch_deadline.retry_now(sqs, batch_deadline.queue_url(sqs, not_started[0].event_source_arn),
                                 [record.receipt_handle for record in not_started])
    return response
