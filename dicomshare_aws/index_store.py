"""The ingest side's use of the index table: writes of instance items and quarantine
records, and the look-up of a study's patient (:func:`study_patient`).

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


def study_patient(dynamodb, table_name: str, study_uid: str, partner: str) -> str | None:
    """The patient pseudonym of the (de-identified) study ``study_uid`` of ``partner``, as
    the index records it; ``None`` when the index has no such study (or it is another
    partner's).

    For an object without Patient ID (:func:`dicomshare.deidentify.deidentify_header`'s
    ``study_patient``). One strongly consistent ``GetItem`` of the study's item, whose
    ``partner`` and ``patient_pseudonym`` come from its first instance.
    """
    found = dynamodb.get_item(
        TableName=table_name,
        Key=to_attribute_values(index.study_key(study_uid)),
        ConsistentRead=True,
        ProjectionExpression="partner, patient_pseudonym",
    ).get("Item", {})
    if found.get("partner", {}).get("S") != partner:
        return None
    return found.get("patient_pseudonym", {}).get("S") or None
