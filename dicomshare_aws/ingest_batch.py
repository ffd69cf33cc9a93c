"""The ingest function's SQS batches: S3 event notifications in, one outcome per object out.

Partial batch responses (Powertools batch processing): a message that fails is retried
(and after ``MAX_RECEIVE_COUNT`` tries lands in the dead-letter queue) without failing the
rest of its batch. An object that cannot finish before the timeout is not started; its
message is reported as failed and made visible again at once
(:mod:`dicomshare_aws.batch_deadline`). Each object gets one log line (the SQS message id
as correlation id, the key's HMAC keyed with the deployment secret, never the key or a
DICOM value: ``study_uid`` is the de-identified one) and its metrics.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from dicomshare_aws import batch_deadline
from dicomshare_aws.ingest_object import INGESTED, QUARANTINED, ObjectFailed, Outcome
from dicomshare_aws.s3_events import S3Object, created_objects


def ingest_batch(event: dict[str, Any], context: Any, *, ingest: Callable[[S3Object], Outcome],
                 secret: Callable[[], bytes], sqs: Callable[[], Any], logger: Logger, metrics: Metrics) -> dict:
    """Ingest the objects of every message of an SQS ``event`` (``ingest(obj)``: where one
    ends); the partial batch response. ``sqs()`` gives the client that makes the messages
    of objects not started visible again."""
    not_started: list[SQSRecord] = []

    def record_handler(record: SQSRecord) -> None:
        logger.set_correlation_id(record.message_id)
        for obj in created_objects(record.body):
            try:
                _ingest_logged(obj, ingest, context, secret(), logger, metrics)
            except batch_deadline.NotStarted:
                not_started.append(record)
                raise

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    response = process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)
    if not_started:
        client = sqs()
        batch_deadline.retry_now(client, batch_deadline.queue_url(client, not_started[0].event_source_arn),
                                 [record.receipt_handle for record in not_started])
    return response


def _ingest_logged(obj: S3Object, ingest: Callable[[S3Object], Outcome], context: Any, secret: bytes,
                   logger: Logger, metrics: Metrics) -> None:
    """Ingest one object if there is time for it; log its outcome and add its metrics."""
    started = time.perf_counter()
    fields = {"bucket": obj.bucket, "key_hmac": obj.fingerprint(secret), "s3_request_id": obj.request_id}
    try:
        batch_deadline.ensure_time_for(context, fields["key_hmac"], obj.size)
    except batch_deadline.NotStarted:
        logger.warning("object not started", extra={**fields, "outcome": "not_started", "size": obj.size})
        raise
    try:
        result = ingest(obj)
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
