"""The index model: one DynamoDB table holding studies, series, instances, quarantine
records, shares and their audit trail (single-table design, keyed for the API's queries).

This module is data only (no AWS calls). The CDK storage stack and the local system both
create the table from :data:`TABLE`, so the two cannot drift.

Items (``pk`` / ``sk``):

===================  ===================================  ==================================
item                 pk                                   sk
===================  ===================================  ==================================
study                ``STUDY#<StudyInstanceUID>``         ``STUDY``
series               ``STUDY#<StudyInstanceUID>``         ``SERIES#<SeriesInstanceUID>``
study ownership      ``OWNER#<StudyInstanceUID>``         ``OWNER``
instance             ``INSTANCES#<StudyInstanceUID>``     ``INSTANCE#<SeriesUID>#<SOPUID>``
counted mark         ``COUNTED#<StudyInstanceUID>#<n>``   ``MARK#<SeriesUID>#<SOPUID>``
reconcile flag       ``RECONCILE``                        ``<StudyInstanceUID>#<flag id>``
quarantine record    ``QUARANTINE#<object_id>``           ``QUARANTINE``
receipt              ``RECEIPT#<object_id>``              ``RECEIPT``
share                ``SHARE#<share_id>``                 ``SHARE``
token -> share       ``TOKEN#<sha256(token)>``            ``TOKEN``
audit record         ``SHARE#<share_id>``                 ``AUDIT#<iso time>#<event id>``
===================  ===================================  ==================================

All UIDs here are the *de-identified* ones; no item holds an identifying value.

Partitions follow the functions that write them, because IAM's ``dynamodb:LeadingKeys``
constrains only the partition key: the ingest function writes instance items
(``INSTANCES#``), ownership items (``OWNER#``), quarantine records and receipts
(:data:`INGEST_WRITES`) and cannot touch a study's partition (``STUDY#``), whose study
and series items only the counts and reconcile functions write (:data:`COUNTS_WRITES`).
A study's partition therefore takes no per-instance write; its instance partition takes
one (the instance item) per instance.

An instance lives in the de-identified bucket as two objects named by its new UIDs
(:func:`deidentified_object_key`, :func:`metadata_object_key`): the DICOM file
(``studies/<study>/series/<series>/instances/<sop>.dcm``) and its metadata for the viewer
(the same key ending ``.json``). The instance item holds only what the index, the counts
and the pages need (under 1 KB for a CT slice), and ``metadata_bytes``, the size of the
metadata object, so a page of the viewer document is planned before any object is read.

A study belongs to the partner and patient pseudonym of its first instance: the ingest
side claims the ownership item (``partner``, ``patient_pseudonym``) with a conditional
write before it stores an instance, and refuses (``study_conflict``) an instance whose
study is owned by another partner or pseudonym. Two partners may send the same original
UIDs and the same MRN; their data never meet in one study, one patient's priors or one
share.

A **counted mark** says that an instance is included in its study's and series' counts
(:mod:`dicomshare_aws.counts`). Marks live off the study's partition, spread over
:data:`MARK_SHARDS` partitions by a hash of the instance's sort key, so counting adds no
per-instance write to the study's partition. A **reconcile flag** names a study whose
counts a failed or interrupted counting may have left behind (:mod:`dicomshare_aws.reconcile`).

Global secondary indexes:

- ``patient-studies`` (``gsi1pk`` = :func:`patient_partition` of partner and pseudonym,
  ``gsi1sk`` = ``<StudyDate>#<StudyInstanceUID>``): a patient's studies at one partner in
  date order (priors never cross partners).
- ``listing`` (``gsi2pk`` = :data:`STUDIES`, :data:`SHARES` or :data:`QUARANTINE`,
  ``gsi2sk`` = ``<iso time>#<id>``): studies, shares and quarantine records newest first;
  and one collection per partner, ``gsi2pk`` = :func:`receipts_collection`
  (``RECEIPTS#<partner>``), ``gsi2sk`` = ``<recorded iso time>#<object_id>``: that
  partner's receipts in the order they were recorded (``GET /receipts``). A partner's
  receipts share no key with another partner's, so a query for one can never return the
  other's.

A receipt (:mod:`dicomshare.receipts`) is keyed by the uploaded object version
(``object_id``), so a retried or redelivered object can never record a second outcome.

``ttl`` (epoch seconds) lets DynamoDB delete expired shares; expiry itself is enforced on
every redemption, TTL only cleans up. The stream (new images) feeds the counts aggregator.
"""

from __future__ import annotations

import hashlib

PK = "pk"
SK = "sk"
TTL_ATTRIBUTE = "ttl"

PATIENT_STUDIES_INDEX = "patient-studies"
LISTING_INDEX = "listing"

MARK_SHARDS = 8
"""Partitions a study's counted marks are spread over: 2 write units per counted
instance (a transactional put of a key-only item) divided between 8 partitions."""
RECONCILE = "RECONCILE"
"""Partition key of the reconcile flags."""

STUDIES = "STUDIES"
SHARES = "SHARES"
QUARANTINE = "QUARANTINE"
"""Collections of the ``listing`` index (its ``gsi2pk`` values)."""

TABLE = {
    "partition_key": PK,
    "sort_key": SK,
    "ttl_attribute": TTL_ATTRIBUTE,
    "stream": "NEW_IMAGE",
    "global_secondary_indexes": (
        {"name": PATIENT_STUDIES_INDEX, "partition_key": "gsi1pk", "sort_key": "gsi1sk"},
        {"name": LISTING_INDEX, "partition_key": "gsi2pk", "sort_key": "gsi2sk"},
    ),
}
"""Table definition shared by ``stacks/storage.py`` and the local system (all keys strings)."""

INSTANCE_ATTRIBUTES = (
    PK, SK, "study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "size", "sha256",
    "transfer_syntax_uid", "number_of_frames", "rows", "columns", "instance_number", "received_at", "partner",
    "modality", "series_description", "series_number", "patient_pseudonym", "study_date", "study_time",
    "study_description", "metadata_bytes",
)
"""Attributes of an instance item (:func:`dicomshare.index_items.instance_item`)."""
QUARANTINE_ATTRIBUTES = (PK, SK, "reason", "partner", "size", "quarantine_key", "original_key_hmac",
                         "received_at", "gsi2pk", "gsi2sk")
OWNER_ATTRIBUTES = (PK, SK, "study_uid", "partner", "patient_pseudonym", "claimed_at")
RECEIPT_ATTRIBUTES = (PK, SK, "partner", "object_fingerprint", "key_hmac", "upload_id", "outcome", "reason",
                      "study_uid", "series_uid", "sop_instance_uid", "size", "recorded_at", "gsi2pk", "gsi2sk")
"""Attributes of a receipt (:func:`dicomshare.receipts.receipt_item`)."""

INSTANCES = "INSTANCES#"
OWNER = "OWNER#"
"""Partition key prefixes of a study's instance items and of its ownership item."""

INGEST_WRITES = {
    "leading_keys": (f"{INSTANCES}*", f"{OWNER}*", "QUARANTINE#*", "RECEIPT#*"),
    "attributes": tuple(sorted({*INSTANCE_ATTRIBUTES, *QUARANTINE_ATTRIBUTES, *OWNER_ATTRIBUTES, *RECEIPT_ATTRIBUTES})),
}
"""What the ingest function may write (its IAM policy): instance items, study ownership
items, quarantine records and receipts, never a study or series item (no ``STUDY#``
partition), a study's listing or priors keys (``gsi1*``), counts, shares or tokens."""
INGEST_READS = (f"{OWNER}*", "RECEIPT#*")
"""What the ingest function may read (``GetItem``): study ownership items and receipts."""

COUNTS_WRITES = {
    "leading_keys": ("STUDY#*", "COUNTED#*", RECONCILE),
    "attributes": (
        PK, SK, "flagged_at", "study_uid", "series_uid", "patient_pseudonym", "partner", "study_date", "study_time",
        "study_description", "modality", "series_description", "series_number", "modalities", "instance_count",
        "series_count", "total_bytes", "first_received", "last_received", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk",
    ),
}
"""What the counts and reconcile functions may write (their IAM policies): study and series
items, counted marks and reconcile flags; never instance items, ownership items, shares,
tokens or quarantine records."""
RECONCILE_READS = (*COUNTS_WRITES["leading_keys"], f"{INSTANCES}*")
"""What the reconcile function may query: what it writes, and the instance partitions it
recounts from."""


def patient_partition(partner: str, patient_pseudonym: str) -> str:
    """``gsi1pk`` of a patient's studies at one partner in the ``patient-studies`` index:
    the same pseudonym at two partners is two patients (a shared MRN is not a shared person)."""
    return f"PATIENT#{partner}#{patient_pseudonym}"


def study_key(study_uid: str) -> dict[str, str]:
    return {PK: f"STUDY#{study_uid}", SK: "STUDY"}


def study_owner_key(study_uid: str) -> dict[str, str]:
    """The item naming the partner and patient pseudonym a study belongs to."""
    return {PK: f"{OWNER}{study_uid}", SK: "OWNER"}


def series_key(study_uid: str, series_uid: str) -> dict[str, str]:
    return {PK: f"STUDY#{study_uid}", SK: f"SERIES#{series_uid}"}


def instances_partition(study_uid: str) -> str:
    """Partition key of a study's instance items."""
    return f"{INSTANCES}{study_uid}"


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> dict[str, str]:
    return {PK: instances_partition(study_uid), SK: f"INSTANCE#{series_uid}#{sop_uid}"}


def mark_partition(study_uid: str, shard: int) -> str:
    return f"COUNTED#{study_uid}#{shard}"


def mark_key(instance: dict[str, str]) -> dict[str, str]:
    """Key of the counted mark of the instance item with key ``instance``. Its sort key is
    not ``INSTANCE#...``, so marks never pass the counts function's stream filter."""
    study_uid = instance[PK].removeprefix(INSTANCES)
    shard = int.from_bytes(hashlib.sha256(instance[SK].encode()).digest()[:4], "big") % MARK_SHARDS
    return {PK: mark_partition(study_uid, shard), SK: marked_instance_sk(instance[SK], to_mark=True)}


def marked_instance_sk(sk: str, to_mark: bool = False) -> str:
    """An instance item's sort key from its mark's (or, ``to_mark``, the other way)."""
    return sk.replace("INSTANCE#", "MARK#", 1) if to_mark else sk.replace("MARK#", "INSTANCE#", 1)


def reconcile_flag_key(study_uid: str, flag_id: str) -> dict[str, str]:
    return {PK: RECONCILE, SK: f"{study_uid}#{flag_id}"}


def quarantine_key(object_id: str) -> dict[str, str]:
    return {PK: f"QUARANTINE#{object_id}", SK: "QUARANTINE"}


def receipt_key(object_id: str) -> dict[str, str]:
    return {PK: f"RECEIPT#{object_id}", SK: "RECEIPT"}


def receipts_collection(partner: str) -> str:
    """``gsi2pk`` of a partner's receipts in the ``listing`` index."""
    return f"RECEIPTS#{partner}"


def share_key(share_id: str) -> dict[str, str]:
    return {PK: f"SHARE#{share_id}", SK: "SHARE"}


def token_key(token_sha256: str) -> dict[str, str]:
    return {PK: f"TOKEN#{token_sha256}", SK: "TOKEN"}


def deidentified_object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """S3 key of a de-identified instance: built from the new UIDs only."""
    return f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}.dcm"


def metadata_object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """S3 key of a de-identified instance's metadata (PS3.18 F.2 JSON without bulk data,
    :func:`dicomshare.index_items.dicom_json`), beside the instance: the viewer document is
    built from it, so instance items stay small whatever the header's size."""
    return f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}.json"


def preview_object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """S3 key of an instance's preview image (PNG, 8-bit, at most 512 px)."""
    return f"previews/{study_uid}/series/{series_uid}/instances/{sop_uid}.png"
