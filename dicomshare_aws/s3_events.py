"""S3 event notifications as SQS delivers them to the ingest and preview functions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote_plus

from dicomshare import index_items


@dataclass(frozen=True)
class S3Object:
    """An object named by an S3 event notification (key URL-decoded)."""

    bucket: str
    key: str
    size: int | None
    request_id: str

    def fingerprint(self, secret: bytes) -> str:
        """What logs and records say instead of the key, which may hold a patient's name
        (:func:`dicomshare.index_items.key_fingerprint`)."""
        return index_items.key_fingerprint(secret, self.key)


def created_objects(body: str) -> Iterator[S3Object]:
    """The new objects of one SQS message body holding an S3 event notification.

    Keys arrive URL-encoded (``+`` for space, ``%2B`` for ``+``) and are decoded with
    ``unquote_plus``. The ``s3:TestEvent`` S3 sends when a notification is configured
    has no records and yields nothing.
    """
    notification = json.loads(body)
    for record in notification.get("Records", []):
        if not record.get("eventName", "").startswith("ObjectCreated:"):
            continue
        s3 = record["s3"]
        yield S3Object(
            bucket=s3["bucket"]["name"],
            key=unquote_plus(s3["object"]["key"]),
            size=s3["object"].get("size"),
            request_id=record.get("responseElements", {}).get("x-amz-request-id", ""),
        )
