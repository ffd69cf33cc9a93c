"""Receipts in the index table and on the event bus (item shapes in :mod:`dicomshare.receipts`).

Writing (ingest): a conditional put keyed by the object version, so the first outcome
recorded for a version is the only one; then the ``ObjectReceipt`` event. A retry after a
crash between the two finds the receipt already there and sends the *stored* receipt
again: events are at least once (consumers de-duplicate on ``object_fingerprint``), the
table holds exactly one receipt per object version.

Reading (API): one partner's receipts from the ``listing`` index, oldest first, from
``since`` on, in pages. The page token names the partner's collection and is refused for
any other (:func:`dicomshare_aws.share_store.decode_page`).
"""

from __future__ import annotations

from typing import Any, Mapping

from boto3.dynamodb.conditions import Key
from boto3.dynamodb.types import TypeDeserializer

from dicomshare import index, receipts
from dicomshare_aws import index_store
from dicomshare_aws.resources import EVENT_SOURCE
from dicomshare_aws.share_store import decode_page, encode_page, plain

_deserializer = TypeDeserializer()


def record(dynamodb, events, table_name: str, bus: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """Store ``item`` unless a receipt of the same object version exists; publish the stored one."""
    stored = dict(item)
    if not index_store.put_new(dynamodb, table_name, item):
        existing = dynamodb.get_item(TableName=table_name, Key=index_store.to_attribute_values(
            {index.PK: item[index.PK], index.SK: item[index.SK]}), ConsistentRead=True)["Item"]
        stored = {k: _deserializer.deserialize(v) for k, v in existing.items()}
    events.put_events(Entries=[receipts.event_entry(plain(stored), bus, EVENT_SOURCE)])
    return stored


def list_receipts(table, partner: str, since: str, limit: int, page: str | None) -> tuple[list[dict], str | None]:
    """``partner``'s receipts recorded at or after ``since`` (ISO 8601, UTC), oldest first."""
    collection = index.receipts_collection(partner)
    arguments: dict[str, Any] = {
        "IndexName": index.LISTING_INDEX,
        "KeyConditionExpression": Key("gsi2pk").eq(collection) & Key("gsi2sk").gte(since) if since
        else Key("gsi2pk").eq(collection),
        "Limit": limit,
    }
    if page:
        arguments["ExclusiveStartKey"] = decode_page(page, collection)
    response = table.query(**arguments)
    last = response.get("LastEvaluatedKey")
    return [receipts.view(plain(i)) for i in response["Items"]], encode_page(last) if last else None
