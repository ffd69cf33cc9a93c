"""The ingest side's use of the index table: writes of instance items, quarantine records
and study ownership items, and the look-up of a study's patient (:func:`study_patient`).

Both are *conditional puts* (``attribute_not_exists(pk)``): the first write of an item
wins and every later write of the same item (a duplicate upload, a redelivered event, a
retried Lambda) is refused by DynamoDB and reported as ``False``. Study and series items
are never written here; the counts aggregator (:mod:`dicomshare_aws.counts`) builds them
from the table's stream of new instance items.
"""

from __future__ import annotations

from typing import Any, Mapping

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from dicomshare import index

_serializer = TypeSerializer()


def to_attribute_values(item: Mapping[str, Any]) -> dict[str, dict]:
    """A plain item as DynamoDB attribute values (``None`` attributes left out)."""
    return {name: _serializer.serialize(value) for name, value in item.items() if value is not None}


def put_new(dynamodb, table_name: str, item: Mapping[str, Any]) -> bool:
    """Put ``item`` unless an item with its key exists; ``True`` when this call created it."""
    try:
        dynamodb.put_item(
            TableName=table_name,
            Item=to_attribute_values(item),
            ConditionExpression="attribute_not_exists(pk)",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


def claim_study(dynamodb, table_name: str, study_uid: str, *, partner: str, patient_pseudonym: str,
                claimed_at: str) -> bool:
    """Claim the study for ``partner`` and ``patient_pseudonym``; ``True`` when the study
    is (now, or already) theirs, ``False`` when another partner or pseudonym owns it.

    A claimed study is only read (a strongly consistent ``GetItem`` of its ownership
    partition, ``OWNER#<uid>``: no write unit for every instance). An unclaimed one gets one conditional
    ``UpdateItem``: concurrent first claims race inside DynamoDB, so exactly one owner wins,
    and a repeat by the same owner changes nothing (``claimed_at`` keeps its first value).
    """
    owner = _owner(dynamodb, table_name, study_uid)
    if owner is not None:
        return owner == (partner, patient_pseudonym)
    try:
        dynamodb.update_item(
            TableName=table_name,
            Key=to_attribute_values(index.study_owner_key(study_uid)),
            UpdateExpression="SET partner = :partner, patient_pseudonym = :pseudonym, study_uid = :study, "
                             "claimed_at = if_not_exists(claimed_at, :at)",
            ConditionExpression="attribute_not_exists(pk) OR (partner = :partner AND patient_pseudonym = :pseudonym)",
            ExpressionAttributeValues=to_attribute_values({
                ":partner": partner, ":pseudonym": patient_pseudonym, ":study": study_uid, ":at": claimed_at}),
        )
    except ClientError as error:
        if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


def study_patient(dynamodb, table_name: str, study_uid: str, partner: str) -> str | None:
    """The patient pseudonym of the (de-identified) study ``study_uid`` of ``partner``, as
    the index records it; ``None`` when the index has no such study (or it is another
    partner's).

    For an object without Patient ID (:func:`dicomshare.deidentify.deidentify_header`'s
    ``study_patient``): the study's ownership item (:func:`claim_study`), claimed by its
    first instance before anything was stored.
    """
    owner = _owner(dynamodb, table_name, study_uid)
    return owner[1] if owner is not None and owner[0] == partner else None


def _owner(dynamodb, table_name: str, study_uid: str) -> tuple[str, str] | None:
    """``(partner, patient_pseudonym)`` of a claimed study (strongly consistent read)."""
    found = dynamodb.get_item(
        TableName=table_name,
        Key=to_attribute_values(index.study_owner_key(study_uid)),
        ConsistentRead=True,
        ProjectionExpression="partner, patient_pseudonym",
    ).get("Item")
    if not found:
        return None
    return found.get("partner", {}).get("S", ""), found.get("patient_pseudonym", {}).get("S", "")
