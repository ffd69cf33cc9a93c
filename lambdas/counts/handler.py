"""Counts function: the table's stream (new images) -> exact study and series counts.

The batch's new instance items are aggregated per study (:mod:`dicomshare_aws.counts`,
which explains why the counts stay exact under retries, throttling and conflicts, backing
off until 10 s before the timeout); Powertools batch processing then reports the
records of any study that could not be updated, so the stream retries from there.
"""

import os
import time
from functools import cache

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord, DynamoDBStreamEvent

from dicomshare import settings as config
from dicomshare_aws.counts import StudyNotCounted, count_new_instances, new_instance

logger = Logger(service="counts")
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
DEADLINE_MARGIN_SECONDS = 10
"""Backoff stops this long before the timeout: enough to report the failed records."""


@cache
def _clients():
    return boto3.client("dynamodb"), boto3.client("events")


@logger.inject_lambda_context(log_event=False)
def handler(event, context):
    items = [i for i in map(new_instance, DynamoDBStreamEvent(event).records) if i]
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS
    failed = count_new_instances(*_clients(), items, table_name=os.environ[config.TABLE_NAME_ENV],
                                 event_bus_name=os.environ[config.EVENT_BUS_NAME_ENV], deadline=deadline)
    for study_uid, error in failed.items():
        logger.error("study not counted", extra={"study_uid": study_uid, "error": error})

    def record_handler(record: DynamoDBRecord) -> None:
        item = new_instance(record)
        if item and item["study_uid"] in failed:
            raise StudyNotCounted(item["study_uid"])

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
