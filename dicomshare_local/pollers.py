"""Lambda's event source mappings, played locally: poll a queue or a stream and call the
real handler with the event shape Lambda sends, honouring partial batch responses; and
an EventBridge schedule.

On AWS these are the SQS and DynamoDB Streams event source mappings of ``stacks/ingest.py``;
moto cannot run Lambda code without Docker, so the local system runs them in threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable

from dicomshare_aws import resources

Handler = Callable[[dict, Any], dict | None]

log = logging.getLogger("dicomshare.local")


class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, function_name: str, timeout_seconds: int, memory_mb: int = 1024):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Poller(threading.Thread):
    """Calls ``poll_once`` until stopped; counts work in flight so callers can wait for idle."""

    def __init__(self, name: str, handler: Handler, timeout_seconds: int):
        super().__init__(name=name, daemon=True)
        self.handler = handler
        self.timeout_seconds = timeout_seconds
        self.stopping = threading.Event()
        self.busy = threading.Event()
        self.idle_rounds = 0

    def invoke(self, event: dict) -> dict:
        context = LambdaContext(self.name, self.timeout_seconds)
        try:
            return self.handler(event, context) or {}
        except Exception:
            # On AWS an unhandled error fails the whole batch, which is then retried.
            log.exception("%s: handler raised; the batch will be retried", self.name)
            return {"batchItemFailures": None}

    def run(self) -> None:
        while not self.stopping.is_set():
            self.busy.set()
            try:
                worked = self.poll_once()
            except Exception:
                log.exception("%s: polling failed", self.name)
                worked = False
            self.busy.clear()
            self.idle_rounds = 0 if worked else self.idle_rounds + 1
            if not worked:
                self.stopping.wait(0.2)

    def poll_once(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()


class SqsPoller(Poller):
    """SQS event source mapping: batches of up to 10, ``ReportBatchItemFailures``."""

    def __init__(self, name: str, handler: Handler, timeout_seconds: int, sqs, queue_url: str, region: str):
        super().__init__(name, handler, timeout_seconds)
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.region = region

    def poll_once(self) -> bool:
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=resources.SQS_BATCH_SIZE,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return False
        response = self.invoke({"Records": [self._record(m) for m in messages]})
        failures = response.get("batchItemFailures", [])
        if failures is None:
            return True
        failed = {f["itemIdentifier"] for f in failures}
        done = [m for m in messages if m["MessageId"] not in failed]
        for i in range(0, len(done), 10):
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[i:i + 10])])
        return True

    def _record(self, message: dict) -> dict:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": hashlib.md5(message["Body"].encode()).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }


class StreamPoller(Poller):
    """DynamoDB Streams event source mapping: in-order batches of the records that pass the
    function's event filter, retried from the first failed record
    (``ReportBatchItemFailures``), and after the last retry reported to the on-failure
    queue, as ``MaximumRetryAttempts`` with an SQS destination does."""

    def __init__(self, name: str, handler: Handler, timeout_seconds: int, streams, stream_arn: str,
                 sqs, failure_queue_url: str, region: str):
        super().__init__(name, handler, timeout_seconds)
        self.streams = streams
        self.stream_arn = stream_arn
        self.sqs = sqs
        self.failure_queue_url = failure_queue_url
        self.region = region
        self.shard_id = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
        self.last_sequence_number: str | None = None
        self.pending: list[dict] = []
        self.attempts = 0

    def _read(self) -> tuple[bool, list[dict]]:
        """Records after the last one read. The iterator is fetched anew each time: moto
        replaces a table's stream when it rolls back a cancelled transaction."""
        position = ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": self.last_sequence_number}
                    if self.last_sequence_number else {"ShardIteratorType": "TRIM_HORIZON"})
        iterator = self.streams.get_shard_iterator(StreamArn=self.stream_arn, ShardId=self.shard_id,
                                                   **position)["ShardIterator"]
        records = self.streams.get_records(ShardIterator=iterator, Limit=resources.STREAM_BATCH_SIZE)["Records"]
        if records:
            self.last_sequence_number = records[-1]["dynamodb"]["SequenceNumber"]
        return bool(records), [self._record(r) for r in records if _matches(resources.NEW_INSTANCES_FILTER, r)]

    def poll_once(self) -> bool:
        if not self.pending:
            read, self.pending = self._read()
            self.attempts = 0
            if not self.pending:
                return read
        failures = self.invoke({"Records": self.pending}).get("batchItemFailures", [])
        if failures == []:
            self.pending = []
            return True
        self.attempts += 1
        if failures is not None:
            first = {f["itemIdentifier"] for f in failures}
            start = next(i for i, r in enumerate(self.pending) if r["dynamodb"]["SequenceNumber"] in first)
            self.pending = self.pending[start:]
        if self.attempts > resources.STREAM_RETRY_ATTEMPTS:
            self.sqs.send_message(QueueUrl=self.failure_queue_url, MessageBody=json.dumps({
                "streamArn": self.stream_arn,
                "startSequenceNumber": self.pending[0]["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": self.pending[-1]["dynamodb"]["SequenceNumber"],
                "batchSize": len(self.pending),
            }))
            self.pending = []
        return True

    def _record(self, record: dict) -> dict:
        record = dict(record, eventSourceARN=self.stream_arn, awsRegion=self.region)
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        if hasattr(created, "timestamp"):
            record["dynamodb"] = dict(record["dynamodb"], ApproximateCreationDateTime=int(created.timestamp()))
        return record


class SchedulePoller(Poller):
    """An EventBridge schedule rule targeting a function: a "Scheduled Event" every
    ``interval_seconds``, the first one an interval after the start."""

    def __init__(self, name: str, handler: Handler, timeout_seconds: int, interval_seconds: float, region: str):
        super().__init__(name, handler, timeout_seconds)
        self.interval_seconds = interval_seconds
        self.region = region
        self.next_run = time.monotonic() + interval_seconds

    def poll_once(self) -> bool:
        if time.monotonic() < self.next_run:
            return False
        self.next_run = time.monotonic() + self.interval_seconds
        self.invoke({
            "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "000000000000", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": self.region, "resources": [f"arn:aws:events:{self.region}:000000000000:rule/{self.name}"],
            "detail": {},
        })
        return True


def _matches(pattern: dict, record: dict) -> bool:
    """Lambda event filtering for the pattern forms dicomshare uses: nested objects, lists
    of allowed values, and ``{"prefix": ...}``."""
    for key, expected in pattern.items():
        value = record.get(key) if isinstance(record, dict) else None
        if isinstance(expected, dict):
            if not _matches(expected, value or {}):
                return False
        elif not any(value == rule or (isinstance(rule, dict) and isinstance(value, str)
                                       and value.startswith(rule["prefix"])) for rule in expected):
            return False
    return True
