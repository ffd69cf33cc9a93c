"""The counts aggregator: study and series items kept exact from the table's stream.

Design
------
The ingest Lambda writes each instance item once (a conditional put, see
:mod:`dicomshare_aws.ingest_object`) and never touches study or series items. This
function consumes the table's stream (``NEW_IMAGE``), keeps the ``INSERT`` records of
instance items, groups them per study (:func:`dicomshare.study_counts.study_deltas`) and
applies each study's delta in **one** ``TransactWriteItems`` per chunk of at most 100
items. A 5,000-slice study arriving through 50 concurrent ingest Lambdas therefore costs
about 50 study-item writes (one per stream batch of 100), made one after another by the
shard's single consumer, instead of 5,000 conflicting writes: no hot item, no
transaction conflicts between ingest Lambdas.

Exactness under retries
-----------------------
Every transaction marks each instance it counts (``SET counted = :true``, condition
``attribute_not_exists(counted)``) in the same transaction that adds to the study and
series items. DynamoDB applies all of it or none of it, so an instance is counted
exactly when it is marked. A stream batch redelivered after a crash (or a batch retried
after a partial failure, or a record seen twice) finds its instances already marked: the
transaction is cancelled with ``ConditionalCheckFailed`` on those marks, the aggregator
drops them and applies the rest, and counts do not move.

The study's ``series_count`` grows when a series item is created: series updates carry
the condition ``attribute_not_exists(pk)`` (expected new, ``series_count`` + 1) or
``attribute_exists(pk)`` (expected existing), from a consistent read before the
transaction; a wrong expectation cancels the transaction and is flipped on retry.

Events: after its transactions, each study that gained instances in the batch gets one
EventBridge event. A batch that fails *after* its counts were applied is retried with
nothing left to count, so events are at most once per instance; counts are exact.

``modalities`` is a DynamoDB String Set (``ADD`` is idempotent per value and needs no
read); the API returns it as a sorted list. Marking instances writes ``MODIFY`` stream
records, which the aggregator ignores (the CDK event source mapping filters them out).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from botocore.exceptions import ClientError

from dicomshare import index
from dicomshare.study_counts import StudyDelta, study_deltas
from dicomshare_aws.index_store import to_attribute_values
from dicomshare_aws.resources import EVENT_SOURCE

MAX_TRANSACTION_ITEMS = 100
MAX_ATTEMPTS = 8
STUDY_INSTANCES_RECEIVED = "StudyInstancesReceived"
"""``detail-type`` of the event emitted when a study gains instances; ``detail``:
``study_uid`` (de-identified), ``new_instances``, ``partner``."""


class StudyNotCounted(Exception):
    """A stream record whose study could not be updated in this batch (to be retried)."""


def _instance_mark(table_name: str, key: Mapping[str, str]) -> dict:
    return {"Update": {
        "TableName": table_name,
        "Key": to_attribute_values(key),
        "UpdateExpression": "SET counted = :true",
        "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(counted)",
        "ExpressionAttributeValues": {":true": {"BOOL": True}},
    }}


def _series_update(table_name: str, delta: StudyDelta, series_uid: str, exists: bool) -> dict:
    series = delta.series[series_uid]
    return {"Update": {
        "TableName": table_name,
        "Key": to_attribute_values(index.series_key(delta.study_uid, series_uid)),
        "UpdateExpression": (
            "SET study_uid = :study, series_uid = :series, modality = if_not_exists(modality, :modality), "
            "series_description = if_not_exists(series_description, :description), "
            "series_number = if_not_exists(series_number, :number) "
            "ADD instance_count :n, total_bytes :b"
        ),
        "ConditionExpression": "attribute_exists(pk)" if exists else "attribute_not_exists(pk)",
        "ExpressionAttributeValues": to_attribute_values({
            ":study": delta.study_uid, ":series": series_uid, ":modality": series.modality,
            ":description": series.series_description, ":number": series.series_number,
            ":n": series.instance_count, ":b": series.total_bytes,
        }),
    }}


def _study_update(table_name: str, delta: StudyDelta, new_series: int) -> dict:
    values: dict[str, Any] = {
        ":study": delta.study_uid, ":pseudonym": delta.patient_pseudonym, ":date": delta.study_date,
        ":time": delta.study_time, ":description": delta.study_description, ":partner": delta.partner,
        ":first": delta.first_received, ":last": delta.last_received,
        ":gsi1pk": index.patient_partition(delta.partner, delta.patient_pseudonym), ":gsi1sk": f"{delta.study_date}#{delta.study_uid}",
        ":gsi2pk": index.STUDIES, ":gsi2sk": f"{delta.first_received}#{delta.study_uid}",
        ":n": delta.instance_count, ":b": delta.total_bytes, ":series_count": new_series,
    }
    static = ("study_uid = :study", "patient_pseudonym = if_not_exists(patient_pseudonym, :pseudonym)",
              "study_date = if_not_exists(study_date, :date)", "study_time = if_not_exists(study_time, :time)",
              "study_description = if_not_exists(study_description, :description)",
              "partner = if_not_exists(partner, :partner)", "first_received = if_not_exists(first_received, :first)",
              "last_received = if_not_exists(last_received, :last)", "gsi1pk = if_not_exists(gsi1pk, :gsi1pk)",
              "gsi1sk = if_not_exists(gsi1sk, :gsi1sk)", "gsi2pk = :gsi2pk",
              "gsi2sk = if_not_exists(gsi2sk, :gsi2sk)")
    add = "ADD instance_count :n, total_bytes :b, series_count :series_count"
    attribute_values = to_attribute_values(values)
    if delta.modalities:
        add += ", modalities :modalities"
        attribute_values[":modalities"] = {"SS": sorted(delta.modalities)}
    return {"Update": {
        "TableName": table_name,
        "Key": to_attribute_values(index.study_key(delta.study_uid)),
        "UpdateExpression": "SET " + ", ".join(static) + " " + add,
        "ExpressionAttributeValues": attribute_values,
    }}


def _current(dynamodb, table_name: str, keys: list[dict[str, str]]) -> dict[tuple[str, str], dict]:
    """The existing items among ``keys`` (consistent read), with the attributes
    :func:`apply_delta` decides on."""
    pending = [to_attribute_values(k) for k in keys]
    found: dict[tuple[str, str], dict] = {}
    while pending:
        response = dynamodb.batch_get_item(RequestItems={table_name: {
            "Keys": pending[:100], "ConsistentRead": True,
            "ProjectionExpression": "pk, sk, counted, first_received, last_received"}})
        for item in response["Responses"].get(table_name, []):
            found[(item["pk"]["S"], item["sk"]["S"])] = item
        pending = pending[100:] + response.get("UnprocessedKeys", {}).get(table_name, {}).get("Keys", [])
    return found


def _widen_received(dynamodb, table_name: str, delta: StudyDelta, study: dict) -> None:
    """Move the study's ``first_received`` earlier / ``last_received`` later when this
    delta holds earlier / later instances (conditional, so concurrent writers converge
    on the minimum and maximum)."""
    key = to_attribute_values(index.study_key(delta.study_uid))
    if delta.first_received < study["first_received"]["S"]:
        _update_if(dynamodb, table_name, key, "SET first_received = :t, gsi2sk = :sk", "first_received > :t",
                   {":t": delta.first_received, ":sk": f"{delta.first_received}#{delta.study_uid}"})
    if delta.last_received > study["last_received"]["S"]:
        _update_if(dynamodb, table_name, key, "SET last_received = :t", "last_received < :t",
                   {":t": delta.last_received})


def _update_if(dynamodb, table_name: str, key: dict, update: str, condition: str, values: dict) -> None:
    try:
        dynamodb.update_item(TableName=table_name, Key=key, UpdateExpression=update, ConditionExpression=condition,
                             ExpressionAttributeValues=to_attribute_values(values))
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise


def apply_delta(dynamodb, table_name: str, delta: StudyDelta) -> int:
    """Apply one study delta; returns how many of its instances this call counted (the
    rest were counted by an earlier attempt).

    A consistent read first drops the instances already counted and tells which series
    (and whether the study) exist, so a redelivered batch normally costs reads, not
    cancelled transactions; the transaction's conditions still decide when writers race.
    """
    study_key = index.study_key(delta.study_uid)
    series_keys = {s: index.series_key(delta.study_uid, s) for s in delta.series}
    current = _current(dynamodb, table_name, [study_key, *delta.instance_keys, *series_keys.values()])
    study = current.get((study_key[index.PK], study_key[index.SK]))
    if study and "first_received" in study:
        _widen_received(dynamodb, table_name, delta, study)
    uncounted = [i for i in delta.instances
                 if "counted" not in current.get((i[index.PK], i[index.SK]), {})]
    if not uncounted:
        return 0
    pending = study_deltas(uncounted, MAX_TRANSACTION_ITEMS)[0]
    existing = {s for s, k in series_keys.items() if (k[index.PK], k[index.SK]) in current}
    for _ in range(MAX_ATTEMPTS):
        series_order = sorted(pending.series)
        new_series = sum(1 for s in series_order if s not in existing)
        items = [_instance_mark(table_name, k) for k in pending.instance_keys]
        items += [_series_update(table_name, pending, s, s in existing) for s in series_order]
        items.append(_study_update(table_name, pending, new_series))
        try:
            dynamodb.transact_write_items(TransactItems=items)
            return pending.instance_count
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = [r.get("Code", "None") for r in error.response.get("CancellationReasons", [])]
        marks = len(pending.instance_keys)
        counted = {i for i, code in enumerate(reasons[:marks]) if code == "ConditionalCheckFailed"}
        flipped = {series_order[i - marks] for i, code in enumerate(reasons[marks:marks + len(series_order)], marks)
                   if code == "ConditionalCheckFailed"}
        existing ^= flipped
        if counted:
            remaining = [item for i, item in enumerate(pending.instances) if i not in counted]
            if not remaining:
                return 0
            pending = study_deltas(remaining, MAX_TRANSACTION_ITEMS)[0]
    raise RuntimeError(f"study delta not applied after {MAX_ATTEMPTS} attempts")


def count_new_instances(dynamodb, events, items, *, table_name: str, event_bus_name: str) -> dict[str, str]:
    """Count new instance items (deserialised stream images) into their studies and series,
    then emit one ``StudyInstancesReceived`` event per study that gained instances.

    Returns the studies that could not be updated, with the error's type: their records
    are reported as failed and retried (harmlessly for the instances already counted).
    """
    counted: dict[str, tuple[int, str]] = {}
    failed: dict[str, str] = {}
    for delta in study_deltas(items, MAX_TRANSACTION_ITEMS):
        if delta.study_uid in failed:
            continue
        try:
            new = apply_delta(dynamodb, table_name, delta)
        except (ClientError, RuntimeError) as error:
            failed[delta.study_uid] = type(error).__name__
            continue
        previous = counted.get(delta.study_uid, (0, delta.partner))[0]
        counted[delta.study_uid] = (previous + new, delta.partner)
    entries = [{
        "Source": EVENT_SOURCE,
        "DetailType": STUDY_INSTANCES_RECEIVED,
        "Detail": json.dumps({"study_uid": study, "new_instances": n, "partner": partner}),
        "EventBusName": event_bus_name,
    } for study, (n, partner) in sorted(counted.items()) if n]
    for i in range(0, len(entries), 10):
        events.put_events(Entries=entries[i:i + 10])
    return failed
