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
instance             ``STUDY#<StudyInstanceUID>``         ``INSTANCE#<SeriesUID>#<SOPUID>``
counted mark         ``COUNTED#<StudyInstanceUID>#<n>``   ``MARK#<SeriesUID>#<SOPUID>``
reconcile flag       ``RECONCILE``                        ``<StudyInstanceUID>#<flag id>``
quarantine record    ``QUARANTINE#<object_id>``           ``QUARANTINE``
share                ``SHARE#<share_id>``                 ``SHARE``
token -> share       ``TOKEN#<sha256(token)>``            ``TOKEN``
audit record         ``SHARE#<share_id>``                 ``AUDIT#<iso time>#<event id>``
===================  ===================================  ==================================

All UIDs here are the *de-identified* ones; no item holds an identifying value.

A **counted mark** says that an instance is included in its study's and series' counts
(:mod:`dicomshare_aws.counts`). Marks live off the study's partition, spread over
:data:`MARK_SHARDS` partitions by a hash of the instance's sort key, so counting adds no
per-instance write to the study's partition. A **reconcile flag** names a study whose
counts a failed or interrupted counting may have left behind (:mod:`dicomshare_aws.reconcile`).

Global secondary indexes:

- ``patient-studies`` (``gsi1pk`` = :func:`patient_partition`, ``gsi1sk`` =
  ``<StudyDate>#<StudyInstanceUID>``): a patient's studies in date order (priors).
- ``listing`` (``gsi2pk`` = :data:`STUDIES`, :data:`SHARES` or :data:`QUARANTINE`,
  ``gsi2sk`` = ``<iso time>#<id>``): studies, shares and quarantine records newest first.

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


def patient_partition(patient_pseudonym: str) -> str:
    """``gsi1pk`` of a patient's studies in the ``patient-studies`` index."""
    return f"PATIENT#{patient_pseudonym}"


def study_key(study_uid: str) -> dict[str, str]:
    return {PK: f"STUDY#{study_uid}", SK: "STUDY"}


def series_key(study_uid: str, series_uid: str) -> dict[str, str]:
    return {PK: f"STUDY#{study_uid}", SK: f"SERIES#{series_uid}"}


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> dict[str, str]:
    return {PK: f"STUDY#{study_uid}", SK: f"INSTANCE#{series_uid}#{sop_uid}"}


def mark_partition(study_uid: str, shard: int) -> str:
    return f"COUNTED#{study_uid}#{shard}"


def mark_key(instance: dict[str, str]) -> dict[str, str]:
    """Key of the counted mark of the instance item with key ``instance``. Its sort key is
    not ``INSTANCE#...``, so marks never pass the counts function's stream filter."""
    study_uid = instance[PK].removeprefix("STUDY#")
    shard = int.from_bytes(hashlib.sha256(instance[SK].encode()).digest()[:4], "big") % MARK_SHARDS
    return {PK: mark_partition(study_uid, shard), SK: marked_instance_sk(instance[SK], to_mark=True)}


def marked_instance_sk(sk: str, to_mark: bool = False) -> str:
    """An instance item's sort key from its mark's (or, ``to_mark``, the other way)."""
    return sk.replace("INSTANCE#", "MARK#", 1) if to_mark else sk.replace("MARK#", "INSTANCE#", 1)


def reconcile_flag_key(study_uid: str, flag_id: str) -> dict[str, str]:
    return {PK: RECONCILE, SK: f"{study_uid}#{flag_id}"}


def quarantine_key(object_id: str) -> dict[str, str]:
    return {PK: f"QUARANTINE#{object_id}", SK: "QUARANTINE"}


def share_key(share_id: str) -> dict[str, str]:
    return {PK: f"SHARE#{share_id}", SK: "SHARE"}


def token_key(token_sha256: str) -> dict[str, str]:
    return {PK: f"TOKEN#{token_sha256}", SK: "TOKEN"}


def deidentified_object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """S3 key of a de-identified instance: built from the new UIDs only."""
    return f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}.dcm"


def preview_object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """S3 key of an instance's preview image (PNG, 8-bit, at most 512 px)."""
    return f"previews/{study_uid}/series/{series_uid}/instances/{sop_uid}.png"
