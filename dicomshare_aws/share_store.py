"""DynamoDB adapter for shares, their token items and audit trail, and the index reads the
API needs (a study's items, the patient-studies and listing indexes).

Item shapes and keys come from :mod:`dicomshare.index`. The counters that guard a share
(redemptions, wrong PINs) change only through conditional ``UpdateItem`` calls, so two
concurrent redemptions can never both take the last allowed one.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections import OrderedDict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from dicomshare import index
from dicomshare.shares import MAX_PIN_FAILURES, Share, token_matches

CACHE_BYTES = 64 * 1024 * 1024
"""Bound of the container's cache of instance pages (JSON bytes of the items held)."""
RETAIN_EXPIRED_SHARE_SECONDS = 90 * 24 * 3600
"""An expired share item stays listable this long before DynamoDB TTL deletes it."""


class InvalidPageToken(ValueError):
    """A ``next`` pagination token that this API did not issue."""


class ShareStore:
    def __init__(self, table_name: str, dynamodb: Any = None):
        self.table = (dynamodb or boto3.resource("dynamodb")).Table(table_name)
        self._pages = PageCache(CACHE_BYTES)

    # shares -----------------------------------------------------------------

    def put_share(self, share: Share, token_sha256: str) -> None:
        """Write the share, then its token item (token hash -> share id); both conditional
        puts. A failure between the two leaves a share no token opens: nothing leaks."""
        self.table.put_item(Item=share_item(share), ConditionExpression="attribute_not_exists(pk)")
        self.table.put_item(
            Item={**index.token_key(token_sha256), "share_id": share.share_id, index.TTL_ATTRIBUTE: share.expires_at},
            ConditionExpression="attribute_not_exists(pk)",
        )

    def share(self, share_id: str) -> Share | None:
        item = self.table.get_item(Key=index.share_key(share_id), ConsistentRead=True).get("Item")
        return share_from_item(item) if item else None

    def share_for_token(self, token: str, token_sha256: str) -> Share | None:
        """The share a token opens, or None; the stored hash is compared in constant time."""
        item = self.table.get_item(Key=index.token_key(token_sha256), ConsistentRead=True).get("Item")
        if not item or not token_matches(token, item[index.PK].removeprefix("TOKEN#")):
            return None
        return self.share(item["share_id"])

    def list_shares(self, limit: int, page: str | None) -> tuple[list[Share], str | None]:
        items, following = self._listing(index.SHARES, limit, page)
        return [share_from_item(i) for i in items], following

    def record_redemption(self, share_id: str, now: int) -> Share | None:
        """Count one redemption if the share is still redeemable; None if it is not."""
        try:
            attributes = self.table.update_item(
                Key=index.share_key(share_id),
                UpdateExpression="ADD redemptions :one SET first_redeemed_at = if_not_exists(first_redeemed_at, :now)",
                ConditionExpression=(
                    "attribute_exists(pk) AND attribute_not_exists(revoked_at) AND pin_failures < :max_failures"
                    " AND expires_at > :now AND (attribute_not_exists(max_redemptions) OR redemptions < max_redemptions)"
                ),
                ExpressionAttributeValues={":one": 1, ":now": now, ":max_failures": MAX_PIN_FAILURES},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as error:
            if _condition_failed(error):
                return None
            raise
        return share_from_item(attributes)

    def record_pin_failure(self, share_id: str) -> int:
        """Count one wrong PIN; the new count (at most :data:`MAX_PIN_FAILURES`)."""
        try:
            attributes = self.table.update_item(
                Key=index.share_key(share_id),
                UpdateExpression="ADD pin_failures :one",
                ConditionExpression="attribute_exists(pk) AND pin_failures < :max_failures",
                ExpressionAttributeValues={":one": 1, ":max_failures": MAX_PIN_FAILURES},
                ReturnValues="UPDATED_NEW",
            )["Attributes"]
        except ClientError as error:
            if _condition_failed(error):
                return MAX_PIN_FAILURES
            raise
        return int(attributes["pin_failures"])

    def revoke(self, share_id: str, now: int) -> bool:
        """Revoke at once (idempotent: the first revocation time is kept); False if unknown."""
        return self._update_existing(
            share_id, "SET revoked_at = if_not_exists(revoked_at, :now)", {":now": now}
        )

    def unlock(self, share_id: str) -> bool:
        """Reset the wrong-PIN counter after a lockout; False if unknown."""
        return self._update_existing(share_id, "SET pin_failures = :zero", {":zero": 0})

    def _update_existing(self, share_id: str, expression: str, values: dict[str, Any]) -> bool:
        try:
            self.table.update_item(
                Key=index.share_key(share_id),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _condition_failed(error):
                return False
            raise
        return True

    # audit ------------------------------------------------------------------

    def put_audit(self, share_id: str, action: str, who: str, outcome: str, **context: str) -> None:
        """One audit record: who did what to which share, when, and with what outcome."""
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event_id = secrets.token_hex(6)
        self.table.put_item(
            Item={
                index.PK: f"SHARE#{share_id}",
                index.SK: f"AUDIT#{at}#{event_id}",
                "share_id": share_id,
                "action": action,
                "outcome": outcome,
                "who": who,
                "at": at,
                **{k: v for k, v in context.items() if v},
            }
        )

    def audit(self, share_id: str) -> list[dict[str, Any]]:
        items = self._query_all(
            KeyConditionExpression=Key(index.PK).eq(f"SHARE#{share_id}") & Key(index.SK).begins_with("AUDIT#")
        )
        return [{k: v for k, v in plain(i).items() if k not in (index.PK, index.SK)} for i in items]

    # index reads --------------------------------------------------------------

    def study(self, study_uid: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key=index.study_key(study_uid)).get("Item")
        return plain(item) if item else None

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        return [
            plain(i)
            for i in self._query_all(
                KeyConditionExpression=Key(index.PK).eq(f"STUDY#{study_uid}") & Key(index.SK).begins_with("SERIES#")
            )
        ]

    def instance_page(self, study_uid: str, prefix: str, after: str | None, limit: int,
                      version: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` instance items of the study whose sort key starts with
        ``prefix`` (``INSTANCE#<series>#`` for a series, ``INSTANCE#`` for the study) and
        follows ``after``, in sort-key order; and whether more may follow.

        Instance items are written once and never change, so pages are cached in this
        container, bounded in bytes, under the series' or study's ``instance_count``
        (``version``, kept by the counts aggregator): a new instance starts new pages.
        """
        key = (study_uid, prefix, after, limit, version)
        cached = self._pages.get(key)
        if cached is not None:
            return cached
        partition = index.instances_partition(study_uid)
        arguments: dict[str, Any] = {
            "KeyConditionExpression": Key(index.PK).eq(partition) & Key(index.SK).begins_with(prefix),
            "Limit": limit,
        }
        if after:
            arguments["ExclusiveStartKey"] = {index.PK: partition, index.SK: after}
        response = self.table.query(**arguments)
        page = ([plain(i) for i in response["Items"]], "LastEvaluatedKey" in response)
        self._pages.put(key, page, len(json.dumps(page[0])))
        return page

    def series_item(self, study_uid: str, series_uid: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key=index.series_key(study_uid, series_uid)).get("Item")
        return plain(item) if item else None

    def patient_studies(self, partner: str, patient_pseudonym: str) -> list[dict[str, Any]]:
        """The patient's studies at ``partner``, newest first (patient-studies index; the
        partition is per partner, and the items are checked again, so a pseudonym shared by
        two partners never joins their studies)."""
        items = self._query_all(
            IndexName=index.PATIENT_STUDIES_INDEX,
            KeyConditionExpression=Key("gsi1pk").eq(index.patient_partition(partner, patient_pseudonym)),
            ScanIndexForward=False,
        )
        return [plain(i) for i in items
                if i.get("partner") == partner and i.get("patient_pseudonym") == patient_pseudonym]

    def list_studies(self, limit: int, page: str | None) -> tuple[list[dict[str, Any]], str | None]:
        items, following = self._listing(index.STUDIES, limit, page)
        return [plain(i) for i in items], following

    def _listing(self, collection: str, limit: int, page: str | None) -> tuple[list[dict[str, Any]], str | None]:
        arguments: dict[str, Any] = {
            "IndexName": index.LISTING_INDEX,
            "KeyConditionExpression": Key("gsi2pk").eq(collection),
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if page:
            arguments["ExclusiveStartKey"] = decode_page(page, collection)
        response = self.table.query(**arguments)
        last = response.get("LastEvaluatedKey")
        return response["Items"], encode_page(last) if last else None

    def _query_all(self, **arguments: Any) -> Iterator[dict[str, Any]]:
        while True:
            response = self.table.query(**arguments)
            yield from response["Items"]
            if "LastEvaluatedKey" not in response:
                return
            arguments["ExclusiveStartKey"] = response["LastEvaluatedKey"]


class PageCache:
    """Least-recently-used cache bounded by the byte sizes its callers give."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = max_bytes, 0
        self.entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        previous = self.entries.pop(key, None)
        self.used += size - (previous[1] if previous else 0)
        self.entries[key] = (value, size)
        while self.used > self.max_bytes:
            _, (_, evicted) = self.entries.popitem(last=False)
            self.used -= evicted


def share_item(share: Share) -> dict[str, Any]:
    item: dict[str, Any] = {
        **index.share_key(share.share_id),
        "share_id": share.share_id,
        "study_uids": list(share.study_uids),
        "created_at": share.created_at,
        "expires_at": share.expires_at,
        "created_by": share.created_by,
        "partner": share.partner,
        "patient_pseudonym": share.patient_pseudonym,
        "recipient": share.recipient,
        "allow_download": share.allow_download,
        "include_priors": share.include_priors,
        "redemptions": share.redemptions,
        "pin_failures": share.pin_failures,
        "gsi2pk": index.SHARES,
        "gsi2sk": f"{share.created_at:012d}#{share.share_id}",
        index.TTL_ATTRIBUTE: share.expires_at + RETAIN_EXPIRED_SHARE_SECONDS,
    }
    if share.pin_hash:
        item["pin_hash"] = share.pin_hash
    if share.max_redemptions is not None:
        item["max_redemptions"] = share.max_redemptions
    return item


def share_from_item(item: dict[str, Any]) -> Share:
    def optional_int(name: str) -> int | None:
        return int(item[name]) if name in item else None

    return Share(
        share_id=item["share_id"],
        study_uids=tuple(item["study_uids"]),
        created_at=int(item["created_at"]),
        expires_at=int(item["expires_at"]),
        created_by=item.get("created_by", ""),
        partner=item.get("partner", ""),
        patient_pseudonym=item.get("patient_pseudonym", ""),
        recipient=item.get("recipient", ""),
        pin_hash=item.get("pin_hash", ""),
        max_redemptions=optional_int("max_redemptions"),
        allow_download=bool(item.get("allow_download", True)),
        include_priors=bool(item.get("include_priors", False)),
        redemptions=int(item.get("redemptions", 0)),
        pin_failures=int(item.get("pin_failures", 0)),
        revoked_at=optional_int("revoked_at"),
        first_redeemed_at=optional_int("first_redeemed_at"),
    )


def plain(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item with numbers as int/float instead of Decimal (JSON-ready)."""
    return {k: _plain(v) for k, v in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, set):
        return sorted(_plain(v) for v in value)
    return value


def encode_page(last_evaluated_key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(plain(last_evaluated_key)).encode()).decode().rstrip("=")


def decode_page(page: str, collection: str) -> dict[str, Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)))
    except (binascii.Error, ValueError) as error:
        raise InvalidPageToken("next: not a page token from this API") from error
    expected = {index.PK, index.SK, "gsi2pk", "gsi2sk"}
    if not isinstance(key, dict) or set(key) != expected or key.get("gsi2pk") != collection:
        raise InvalidPageToken("next: not a page token from this API")
    if not all(isinstance(v, str) for v in key.values()):
        raise InvalidPageToken("next: not a page token from this API")
    return key


def _condition_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


def encode_cursor(after: str, frame: int = 1) -> str:
    """The continuation token of an instance page: the sort key after which the next page
    starts (the prefix itself for the start), and the frame to resume the next item at
    (OHIF pages may split a multi-frame instance) or, for Key Object Selection pages,
    the next page's number."""
    return base64.urlsafe_b64encode(json.dumps([after, frame]).encode()).decode().rstrip("=")


def decode_cursor(token: str, prefix: str) -> tuple[str, int]:
    """(sort key, frame) of a continuation token issued for ``prefix``'s pages."""
    try:
        after, frame = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, TypeError) as error:
        raise InvalidPageToken("next: not a page token from this API") from error
    if not (isinstance(after, str) and after.startswith(prefix) and len(after) < 300
            and isinstance(frame, int) and 1 <= frame <= 1_000_000):
        raise InvalidPageToken("next: not a page token from this API")
    return after, frame
