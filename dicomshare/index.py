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
quarantine record    ``QUARANTINE#<object_id>``           ``QUARANTINE``
receipt              ``RECEIPT#<object_id>``              ``RECEIPT``
share                ``SHARE#<share_id>``                 ``SHARE``
token -> share       ``TOKEN#<sha256(token)>``            ``TOKEN``
audit record         ``SHARE#<share_id>``                 ``AUDIT#<iso time>#<event id>``
===================  ===================================  ==================================

All UIDs here are the *de-identified* ones; no item holds an identifying value.

Global secondary indexes:

- ``patient-studies`` (``gsi1pk`` = :func:`patient_partition`, ``gsi1sk`` =
  ``<StudyDate>#<StudyInstanceUID>``): a patient's studies in date order (priors).
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

PK = "pk"
SK = "sk"
TTL_ATTRIBUTE = "ttl"

PATIENT_STUDIES_INDEX = "patient-studies"
LISTING_INDEX = "listing"

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


def preview_object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """S3 key of an instance's preview image (PNG, 8-bit, at most 512 px)."""
    return f"previews/{study_uid}/series/{series_uid}/instances/{sop_uid}.png"
