"""One uploaded object, from the ingest bucket to exactly one place.

For each object named by an S3 event notification: **validate** and **de-identify** it
(:func:`dicomshare_aws.s3_deidentify.deidentify_object`, with the partner's PS3.15 E.3
options and identities scoped to the partner of the key's prefix; an object without
Patient ID takes the patient its study has in the index,
:func:`dicomshare_aws.index_store.study_patient`), **store** the result in the de-identified bucket under a key built from the new
UIDs only (:func:`dicomshare.index.deidentified_object_key`), with its metadata for the
viewer beside it (:mod:`dicomshare_aws.instance_metadata`, written before the item, so no
item points at missing metadata), **index** it (an instance item), then delete the original. Before anything is stored, the instance's study is
**claimed** for the uploading partner and the patient pseudonym (a conditional write of
the study's ownership item): an instance whose study belongs to another partner or
pseudonym is quarantined as ``study_conflict``, so one partner can never add images to
another's study, nor to the shares already sent for it. A refused object is **moved** to the quarantine bucket
(server-side copy, the reason as object tag and metadata, a quarantine record), then
deleted. Every outcome is also a **receipt** for the partner (:mod:`dicomshare.receipts`,
written by :func:`dicomshare_aws.receipt_store.record`, and an ``ObjectReceipt`` event).
The original is deleted only after its de-identified copy or its quarantine copy and
record, and its receipt, are written, so a crash at any step leaves the original in place
and the event to be retried.

Idempotency: conditional writes, not Powertools idempotency
-----------------------------------------------------------
The natural key of an instance is its *de-identified* SOP Instance UID, and the engine's
output is deterministic (UIDs are keyed hashes of the originals, the header is rebuilt
the same way every time, pixel data is copied verbatim). So every retry, redelivery or
re-upload of a file writes the same bytes to the same S3 key, and the instance item is a
conditional put (``attribute_not_exists(pk)``) that only the first attempt wins. A Lambda
killed mid-object simply redoes the work on the next delivery and converges: the
re-written object is identical, the second put is refused (outcome ``duplicate``, no
second count: counts come from the table's stream of *new* instance items, see
:mod:`dicomshare_aws.counts`), and the original is then deleted. A multipart upload
interrupted by a crash is aborted on error by the engine; one interrupted by a killed
Lambda is removed by the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule, and
an incomplete multipart upload is never visible as an object.

Powertools idempotency would add a table of in-flight records and an expiry window, and
would still need these conditional writes for the "same file, two keys" case, which it
cannot see (two different events). When a redelivered event finds the original already
gone (``404`` on ``HeadObject``: an earlier delivery finished), the outcome is
``already_processed``: neither a failure nor a quarantine.

Nothing here logs or stores a DICOM value or the original key: logs and quarantine
records carry the key's HMAC (keyed with the deployment secret), quarantine keys are
``<partner>/<object_id>``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import cache
from typing import Callable, Mapping

from botocore.exceptions import ClientError

from dicomshare import index, index_items, receipts, validation
from dicomshare.profile import Profile, for_partner
from dicomshare.settings import (DEID_BUCKET_ENV, EVENT_BUS_NAME_ENV, QUARANTINE_BUCKET_ENV, TABLE_NAME_ENV, Partner,
                                 Settings)
from dicomshare.validation import DeidentificationRefused
from dicomshare_aws import index_store, instance_metadata, receipt_store
from dicomshare_aws.s3_events import S3Object
from dicomshare_aws.s3_deidentify import deidentify_object

INGESTED = "ingested"
DUPLICATE = "duplicate"
QUARANTINED = "quarantined"
ALREADY_PROCESSED = "already_processed"

UNKNOWN_PARTNER_REASON = "unknown_partner"
"""Quarantine reason: the key is outside every configured ``<partner-id>/`` prefix."""
STUDY_CONFLICT_REASON = "study_conflict"
"""Quarantine reason: the instance's (de-identified) study belongs to another partner or
another patient pseudonym (:func:`dicomshare_aws.index_store.claim_study`)."""

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class ObjectFailed(Exception):
    """An object could not be processed this time (an AWS error); the message holds only
    the key's fingerprint and the error's type and code, never the key or a value."""

    def __init__(self, key_hmac: str, error: str) -> None:
        super().__init__(f"object {key_hmac} not processed: {error}")
        self.error = error

    @classmethod
    def from_error(cls, error: Exception, key_hmac: str) -> "ObjectFailed":
        code = error.response["Error"].get("Code", "") if isinstance(error, ClientError) else ""
        return cls(key_hmac, f"{type(error).__name__}({code})" if code else type(error).__name__)


@dataclass(frozen=True)
class Outcome:
    outcome: str
    partner: str
    size: int
    reason: str = ""
    study_uid: str = ""
    stored_bytes: int = 0
    bytes_read: int = 0
    """Bytes the function fetched from the uploaded object (small for large objects: their
    pixel data is copied server-side)."""

    def log_fields(self) -> dict[str, object]:
        """What a log line may say about the outcome (``study_uid`` is the de-identified one)."""
        return {"outcome": self.outcome, "reason": self.reason, "partner": self.partner, "size": self.size,
                "bytes_read": self.bytes_read, "study_uid": self.study_uid}


@dataclass(frozen=True)
class Destinations:
    """Where objects go: the resource names a handler reads from its environment."""

    deid_bucket: str
    quarantine_bucket: str
    table_name: str
    event_bus: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "Destinations":
        return cls(environ[DEID_BUCKET_ENV], environ[QUARANTINE_BUCKET_ENV], environ[TABLE_NAME_ENV],
                   environ[EVENT_BUS_NAME_ENV])


@cache
def partner_profile(options: tuple[str, ...], keep_free_text: bool = False) -> Profile:
    """The profile of a partner's options, built once per warm Lambda (Table E.1-1 has 621 rows)."""
    return for_partner(options, keep_free_text)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _partner(key: str, settings: Settings) -> Partner | None:
    """The configured partner whose ``<id>/`` prefix the key starts with."""
    prefix, separator, _ = key.partition("/")
    return settings.partner(prefix) if separator else None


def ingest_object(
    s3,
    dynamodb,
    obj: S3Object,
    *,
    destinations: Destinations,
    settings: Settings,
    secret: Callable[[], bytes],
    events,
) -> Outcome:
    """Process one uploaded object; returns where it ended. Raises only for failures that
    a retry can fix (AWS errors), leaving the original in the ingest bucket."""
    try:
        head = s3.head_object(Bucket=obj.bucket, Key=obj.key)
    except ClientError as error:
        if error.response["Error"]["Code"] in _NOT_FOUND:
            return Outcome(ALREADY_PROCESSED, partner="", size=0)
        raise
    size = head["ContentLength"]
    version = head.get("VersionId") or head["ETag"].strip('"')
    partner = _partner(obj.key, settings)
    partner_id = partner.id if partner else receipts.UNKNOWN_PARTNER
    key_hmac = obj.fingerprint(secret())
    receipt = _Receipt(dynamodb, events, destinations, obj, head, version, partner_id, key_hmac)
    try:
        if partner is None:
            raise DeidentificationRefused(UNKNOWN_PARTNER_REASON)
        validation.check_size(size, settings)

        def owned_key(plan) -> str:
            """The output's key, once its study is claimed for this partner and patient:
            called before anything is written, so a conflicting instance leaves no copy."""
            if not index_store.claim_study(dynamodb, destinations.table_name, plan.study_instance_uid,
                                           partner=partner.id, patient_pseudonym=plan.patient_pseudonym,
                                           claimed_at=_now()):
                raise DeidentificationRefused(STUDY_CONFLICT_REASON)
            return index.deidentified_object_key(plan.study_instance_uid, plan.series_instance_uid,
                                                 plan.sop_instance_uid)

        result = deidentify_object(
            s3, obj.bucket, obj.key, destinations.deid_bucket, owned_key,
            profile=partner_profile(partner.options, partner.keep_free_text),
            secret=secret(),
            settings=settings.for_partner(partner),
            partner=partner.id,
            study_patient=lambda study_uid: index_store.study_patient(
                dynamodb, destinations.table_name, study_uid, partner.id),
            size=size,
        )
    except DeidentificationRefused as refused:
        _quarantine(s3, dynamodb, obj, head, version, refused.reason, partner_id, destinations, key_hmac)
        receipt.record(QUARANTINED, reason=refused.reason)
        _delete_original(s3, obj, head)
        return Outcome(QUARANTINED, partner=partner_id, size=size, reason=refused.reason)
    metadata = index_items.dicom_json(result.plan.dataset)
    item = index_items.instance_item(
        result.plan.dataset,
        transfer_syntax_uid=str(result.plan.dataset.file_meta.TransferSyntaxUID),
        size=result.size,
        sha256=result.sha256,
        received_at=_now(),
        partner=partner_id,
        patient_pseudonym=result.plan.patient_pseudonym,
        metadata_bytes=len(metadata),
    )
    instance_metadata.store(s3, destinations.deid_bucket, item, metadata)
    created = index_store.put_new(dynamodb, destinations.table_name, item)
    receipt.record(INGESTED if created else DUPLICATE, study_uid=item["study_uid"], series_uid=item["series_uid"],
                   sop_instance_uid=item["sop_instance_uid"])
    _delete_original(s3, obj, head)
    return Outcome(INGESTED if created else DUPLICATE, partner=partner_id, size=size,
                   study_uid=item["study_uid"], stored_bytes=result.size, bytes_read=result.bytes_read)


@dataclass(frozen=True)
class _Receipt:
    """Records the receipt of the object being processed (no value from the file: the
    UIDs passed in are the de-identified ones)."""

    dynamodb: object
    events: object
    destinations: Destinations
    obj: S3Object
    head: dict
    version: str
    partner: str
    key_hmac: str

    def record(self, outcome: str, **fields: str) -> None:
        item = receipts.receipt_item(
            partner=self.partner, object_id=index_items.object_id(self.obj.bucket, self.obj.key, self.version),
            key_hmac=self.key_hmac, outcome=outcome, recorded_at=_now(), size=self.head["ContentLength"],
            upload_id_=receipts.upload_id(self.head.get("Metadata") or {}), **fields)
        receipt_store.record(self.dynamodb, self.events, self.destinations.table_name, self.destinations.event_bus,
                             item)


def _quarantine(s3, dynamodb, obj: S3Object, head: dict, version: str, reason: str, partner: str,
                destinations: Destinations, key_hmac: str) -> None:
    """Server-side copy to ``<partner>/<object_id>`` with the reason, then the record."""
    object_id = index_items.object_id(obj.bucket, obj.key, version)
    source = {"Bucket": obj.bucket, "Key": obj.key}
    if head.get("VersionId"):
        source["VersionId"] = head["VersionId"]
    s3.copy(
        source,
        destinations.quarantine_bucket,
        index_items.quarantine_object_key(partner, object_id),
        ExtraArgs={"Metadata": {"reason": reason}, "MetadataDirective": "REPLACE",
                   "Tagging": f"reason={reason}", "TaggingDirective": "REPLACE"},
    )
    index_store.put_new(dynamodb, destinations.table_name, index_items.quarantine_item(
        object_id_=object_id, reason=reason, partner=partner, size=head["ContentLength"],
        original_key_hmac=key_hmac, received_at=_now()))


def _delete_original(s3, obj: S3Object, head: dict) -> None:
    """Delete exactly the version that was processed: a newer upload to the same key
    (with its own event) stays in place."""
    version = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
    s3.delete_object(Bucket=obj.bucket, Key=obj.key, **version)
