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
Every transaction puts a **counted mark** for each instance it counts (a key-only item,
condition ``attribute_not_exists(pk)``) in the same transaction that adds to the study
and series items. DynamoDB applies all of it or none of it, so an instance is counted
exactly when it is marked. A stream batch redelivered after a crash (or a batch retried
after a partial failure, or a record seen twice) finds its instances already marked: a
consistent read drops them first, and when a concurrent writer wins a race anyway the
transaction is cancelled with ``ConditionalCheckFailed`` on those marks; the aggregator
drops them and applies the rest, and counts do not move.

Marks live off the study's partition (:func:`dicomshare.index.mark_key`: ``COUNTED#<study>#<n>``,
8 partitions per study), and so do the instance items (``INSTANCES#<study>``). The study's
partition then takes, per instance, only a share of one study and one series update per
transaction of up to ~97 instances; the instance partition takes the ingest function's put
of the instance item (1 write unit up to 1 KB); against 9 units on one partition when the
mark was written on the instance item itself (``python -m bench scale`` measures it).

Throttling and conflicts
------------------------
A throttled request (``ProvisionedThroughputExceeded``, ``ThrottlingException``,
``RequestLimitExceeded``), a transaction cancelled for ``ThrottlingError`` or
``TransactionConflict`` (another transaction on the same items, for example a reconciliation)
and DynamoDB's ``InternalServerError`` are retried after an exponential backoff with jitter
(:class:`Backoff`: 50 ms doubling to 5 s, each wait drawn from its upper half, at most
:data:`MAX_ATTEMPTS` tries), re-reading everything before each try. The backoff stops
before the function's deadline: the study's records are then reported as failed and the
stream retries them.

Nothing is lost when that fails too: before a batch touches a study, the study is
**flagged** (one item ``RECONCILE`` / ``<study>#<flag id>``; two writes per study per batch,
on a partition of their own); the flag is deleted once the study's delta is applied. A
study whose counting failed, was killed or timed out keeps its flag, and the scheduled
reconcile function (:mod:`dicomshare_aws.reconcile`) recounts it from its instance items,
even after the stream gave up on its records.

The study's ``series_count`` grows when a series item is created: series updates carry
the condition ``attribute_not_exists(pk)`` (expected new, ``series_count`` + 1) or
``attribute_exists(pk)`` (expected existing), from a consistent read before the
transaction; a wrong expectation cancels the transaction and is flipped on retry.

Events: after its transactions, each study that gained instances in the batch gets one
EventBridge event. A batch that fails *after* its counts were applied is retried with
nothing left to count, so events are at most once per instance; counts are exact.

``modalities`` is a DynamoDB String Set (``ADD`` is idempotent per value and needs no
read); the API returns it as a sorted list. Marks and flags are not instance items, so
their stream records never reach the function (the CDK event source mapping filters them
out).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any, Mapping

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord, DynamoDBRecordEventName
from botocore.exceptions import ClientError

from dicomshare import index
from dicomshare.study_counts import StudyDelta, is_instance_item, study_deltas
from dicomshare_aws.index_store import to_attribute_values
from dicomshare_aws.resources import EVENT_SOURCE

MAX_TRANSACTION_ITEMS = 100
MAX_ATTEMPTS = 10
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 5.0
RETRYABLE_ERRORS = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                              "RequestLimitExceeded", "TransactionConflictException", "InternalServerError"})
RETRYABLE_CANCELLATIONS = frozenset({"ThrottlingError", "TransactionConflict", "ProvisionedThroughputExceeded"})
STUDY_INSTANCES_RECEIVED = "StudyInstancesReceived"
"""``detail-type`` of the event emitted when a study gains instances; ``detail``:
``study_uid`` (de-identified), ``new_instances``, ``partner``."""


class StudyNotCounted(Exception):
    """A stream record whose study could not be updated in this batch (to be retried)."""


class BackoffExhausted(RuntimeError):
    """Retryable errors went on past :data:`MAX_ATTEMPTS` tries or the deadline."""


class Backoff:
    """Exponential backoff with jitter: the n-th wait is drawn from the upper half of
    ``min(cap, base * 2**n)``, so waits grow (and have a floor) while concurrent writers
    spread out; never past ``deadline`` (``time.monotonic()`` seconds)."""

    def __init__(self, deadline: float | None = None, *, attempts: int = MAX_ATTEMPTS,
                 base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> None:
        self.deadline, self.attempts, self.base, self.cap = deadline, attempts, base, cap
        self.waited = 0

    def wait(self, reason: str) -> None:
        """Sleep before the next try, or raise :class:`BackoffExhausted`."""
        ceiling = min(self.cap, self.base * 2 ** self.waited)
        delay = random.uniform(ceiling / 2, ceiling)
        self.waited += 1
        if self.waited >= self.attempts or (self.deadline is not None and time.monotonic() + delay > self.deadline):
            raise BackoffExhausted(f"{reason}: gave up after {self.waited} tries")
        time.sleep(delay)


def retryable(error: ClientError) -> str | None:
    """The throttling or conflict code that makes ``error`` worth another try, if any."""
    code = error.response.get("Error", {}).get("Code", "")
    if code in RETRYABLE_ERRORS:
        return code
    if code == "TransactionCanceledException":
        reasons = {r.get("Code") for r in error.response.get("CancellationReasons", [])}
        return next(iter(sorted(reasons & RETRYABLE_CANCELLATIONS)), None)
    return None


def _instance_mark(table_name: str, instance: Mapping[str, str]) -> dict:
    return {"Put": {
        "TableName": table_name,
        "Item": to_attribute_values(index.mark_key(dict(instance))),
        "ConditionExpression": "attribute_not_exists(pk)",
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
    backoff = Backoff()
    while pending:
        response = dynamodb.batch_get_item(RequestItems={table_name: {
            "Keys": pending[:100], "ConsistentRead": True,
            "ProjectionExpression": "pk, sk, first_received, last_received"}})
        for item in response["Responses"].get(table_name, []):
            found[(item["pk"]["S"], item["sk"]["S"])] = item
        unprocessed = response.get("UnprocessedKeys", {}).get(table_name, {}).get("Keys", [])
        pending = pending[100:] + unprocessed
        if unprocessed:
            backoff.wait("UnprocessedKeys")
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


def apply_delta(dynamodb, table_name: str, delta: StudyDelta, deadline: float | None = None) -> int:
    """Apply one study delta; returns how many of its instances this call counted (the
    rest were counted by an earlier attempt). Throttling and conflicts are retried with
    :class:`Backoff` until ``deadline``; then :class:`BackoffExhausted` is raised."""
    backoff = Backoff(deadline)
    while True:
        try:
            return _apply_once(dynamodb, table_name, delta)
        except ClientError as error:
            code = retryable(error)
            if code is None:
                raise
            backoff.wait(code)


def _apply_once(dynamodb, table_name: str, delta: StudyDelta) -> int:
    """One consistent read, then the transaction, re-planned while only its conditions
    (marks already written, series created meanwhile) cancel it.

    The read drops the instances already counted and tells which series (and whether the
    study) exist, so a redelivered batch normally costs reads, not cancelled transactions;
    the transaction's conditions still decide when writers race.
    """
    study_key = index.study_key(delta.study_uid)
    series_keys = {s: index.series_key(delta.study_uid, s) for s in delta.series}
    marks = {(i[index.PK], i[index.SK]): index.mark_key(i) for i in delta.instance_keys}
    current = _current(dynamodb, table_name, [study_key, *marks.values(), *series_keys.values()])
    study = current.get((study_key[index.PK], study_key[index.SK]))
    if study and "first_received" in study:
        _widen_received(dynamodb, table_name, delta, study)
    uncounted = [i for i in delta.instances
                 if (marks[(i[index.PK], i[index.SK])][index.PK], i[index.SK]) not in current]
    if not uncounted:
        return 0
    pending = study_deltas(uncounted, MAX_TRANSACTION_ITEMS)[0]
    existing = {s for s, k in series_keys.items() if (k[index.PK], k[index.SK]) in current}
    for _ in range(len(pending.instances) + len(pending.series) + 1):
        series_order = sorted(pending.series)
        new_series = sum(1 for s in series_order if s not in existing)
        items = [_instance_mark(table_name, k) for k in pending.instance_keys]
        items += [_series_update(table_name, pending, s, s in existing) for s in series_order]
        items.append(_study_update(table_name, pending, new_series))
        try:
            dynamodb.transact_write_items(TransactItems=items)
            return pending.instance_count
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException" or retryable(error):
                raise
            reasons = [r.get("Code", "None") for r in error.response.get("CancellationReasons", [])]
        marked = len(pending.instance_keys)
        counted = {i for i, code in enumerate(reasons[:marked]) if code == "ConditionalCheckFailed"}
        flipped = {series_order[i - marked] for i, code in enumerate(reasons[marked:marked + len(series_order)], marked)
                   if code == "ConditionalCheckFailed"}
        existing ^= flipped
        if counted:
            remaining = [item for i, item in enumerate(pending.instances) if i not in counted]
            if not remaining:
                return 0
            pending = study_deltas(remaining, MAX_TRANSACTION_ITEMS)[0]
    raise RuntimeError("study delta not applied: its conditions kept failing")


def flag_studies(dynamodb, table_name: str, study_uids: list[str], flag_id: str) -> list[dict]:
    """Flag ``study_uids`` for reconciliation (see the module's docstring); returns the
    flags' keys, to delete with :func:`unflag` once each study is counted."""
    now = time.time()
    keys = [index.reconcile_flag_key(study_uid, flag_id) for study_uid in study_uids]
    batch_write(dynamodb, table_name, [{"PutRequest": {"Item": to_attribute_values(
        {**key, "study_uid": key[index.SK].rpartition("#")[0], "flagged_at": int(now)})}} for key in keys])
    return keys


def unflag(dynamodb, table_name: str, keys: list[dict]) -> None:
    batch_write(dynamodb, table_name, [{"DeleteRequest": {"Key": to_attribute_values(k)}} for k in keys])


def batch_write(dynamodb, table_name: str, requests: list[dict], deadline: float | None = None) -> None:
    """``BatchWriteItem`` in requests of 25; unprocessed items retried with :class:`Backoff`."""
    backoff = Backoff(deadline)
    while requests:
        try:
            response = dynamodb.batch_write_item(RequestItems={table_name: requests[:25]})
        except ClientError as error:
            code = retryable(error)
            if code is None:
                raise
            backoff.wait(code)
            continue
        unprocessed = response.get("UnprocessedItems", {}).get(table_name, [])
        requests = requests[25:] + unprocessed
        if unprocessed:
            backoff.wait("UnprocessedItems")


def new_instance(record: DynamoDBRecord) -> dict | None:
    """The new instance item of a stream record (deserialised), or ``None`` for any other record."""
    if record.event_name != DynamoDBRecordEventName.INSERT:
        return None
    image = record.dynamodb.new_image
    return image if is_instance_item(image) else None


def count_new_instances(dynamodb, events, items, *, table_name: str, event_bus_name: str,
                        deadline: float | None = None) -> dict[str, str]:
    """Count new instance items (deserialised stream images) into their studies and series,
    then emit one ``StudyInstancesReceived`` event per study that gained instances.

    Returns the studies that could not be updated, with the error's type: their records
    are reported as failed and retried (harmlessly for the instances already counted),
    and their reconcile flags stay. ``deadline`` (``time.monotonic()`` seconds) bounds
    the backoff.
    """
    deltas = study_deltas(items, MAX_TRANSACTION_ITEMS)
    flags = {k[index.SK].rpartition("#")[0]: k for k in flag_studies(
        dynamodb, table_name, sorted({d.study_uid for d in deltas}), uuid.uuid4().hex)}
    counted: dict[str, tuple[int, str]] = {}
    failed: dict[str, str] = {}
    for delta in deltas:
        if delta.study_uid in failed:
            continue
        try:
            new = apply_delta(dynamodb, table_name, delta, deadline)
        except (ClientError, RuntimeError) as error:
            failed[delta.study_uid] = type(error).__name__
            continue
        previous = counted.get(delta.study_uid, (0, delta.partner))[0]
        counted[delta.study_uid] = (previous + new, delta.partner)
    unflag(dynamodb, table_name, [key for study, key in flags.items() if study not in failed])
    entries = [{
        "Source": EVENT_SOURCE,
        "DetailType": STUDY_INSTANCES_RECEIVED,
        "Detail": json.dumps({"study_uid": study, "new_instances": n, "partner": partner}),
        "EventBusName": event_bus_name,
    } for study, (n, partner) in sorted(counted.items()) if n]
    for i in range(0, len(entries), 10):
        events.put_events(Entries=entries[i:i + 10])
    return failed
