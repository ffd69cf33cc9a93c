"""Writes of the ingest side to the index table: instance items and quarantine records.

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
