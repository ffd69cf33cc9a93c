"""An SQS batch's time budget: start an object only when it can finish before the timeout.

Lambda stops an invocation at its timeout whatever it is doing. An ingest batch of 10
objects that overruns is redelivered whole after the queue's visibility timeout (6 × the
function timeout: 12 minutes), and overruns again. So the ingest function checks, before
each object, the time left (``context.get_remaining_time_in_millis()``) against what the
object needs (:func:`seconds_needed`, from the size in its S3 event). An object it cannot
finish is not started: its message is reported as failed (partial batch response) and made
visible again at once (:func:`retry_now`), so another invocation, with a whole timeout
ahead of it, takes it up at once. Nothing of it was written; the retry is clean.
"""

from __future__ import annotations

from typing import Iterable

START_MARGIN_SECONDS = 15.0
"""What any object may take besides copying its pixel data (HEAD, ranged header reads,
de-identification, the writes, the delete; a 512² CT slice takes about 0.3 s), plus the
time to report the batch."""
COPY_BYTES_PER_SECOND = 100 * 1024**2
"""A floor for the server-side copy of an object's pixel data (parts copied in parallel:
:data:`dicomshare_aws.s3_deidentify.COPY_CONCURRENCY`)."""


class NotStarted(Exception):
    """An object left for another invocation: too little time to finish it in this one."""

    def __init__(self, key_hmac: str, needed: float, remaining: float) -> None:
        super().__init__(f"object {key_hmac} not started: needs {needed:.0f} s, {remaining:.0f} s left")


def seconds_needed(size: int | None) -> float:
    """Time an object of ``size`` bytes (``None``: unknown, taken as small) may need."""
    return START_MARGIN_SECONDS + (size or 0) / COPY_BYTES_PER_SECOND


def ensure_time_for(context, key_hmac: str, size: int | None) -> None:
    """Raise :class:`NotStarted` unless the invocation has time left for this object."""
    remaining = context.get_remaining_time_in_millis() / 1000
    needed = seconds_needed(size)
    if remaining < needed:
        raise NotStarted(key_hmac, needed, remaining)


def retry_now(sqs, queue_url: str, receipt_handles: Iterable[str]) -> None:
    """Make the messages of objects that were not started visible again at once."""
    handles = list(receipt_handles)
    for i in range(0, len(handles), 10):
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for n, handle in enumerate(handles[i:i + 10])])


def queue_url(sqs, queue_arn: str) -> str:
    """The URL of the queue ``arn:aws:sqs:<region>:<account>:<name>``."""
    *_, account, name = queue_arn.split(":")
    return sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
