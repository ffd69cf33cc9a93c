"""Reconciliation: recount a study from its instance items and repair its counts and marks.

The counts aggregator (:mod:`dicomshare_aws.counts`) keeps study and series counts exact
as long as every new instance item's stream record is eventually processed. When that
fails for good (records parked in the counts dead-letter queue, records older than the
stream's 24 hours, a counted mark deleted by hand, a count edited by hand), this module
restores the invariant from the only source of truth, the instance items:

1. read the study item and its series items (consistent reads);
2. recount all instance items of the study (:func:`dicomshare.study_counts.recount`,
   consistent query, only the attributes counts need);
3. read the study's counted marks (its :data:`dicomshare.index.MARK_SHARDS` partitions);
4. put the missing marks, so the aggregator never counts those instances again;
5. set the study's and every series' counts to the recount, each update conditioned on
   the item still holding what step 1 read.

Running concurrently with the aggregator is safe: an aggregator transaction between steps
1 and 5 changes a count that step 5 conditions on, so step 5 is cancelled and the whole
reconciliation starts over (after :class:`dicomshare_aws.counts.Backoff`); an aggregator
transaction after step 4 finds the instances it would count already marked and drops them;
instances written after step 2 are not in the recount, unmarked, and counted by the
aggregator on top of it. A reconciliation interrupted between steps 4 and 5 leaves marked
but uncounted instances: its study keeps its reconcile flag, so the next run repairs it.

Entry points: :func:`reconcile_study` (the ``dicomshare reconcile`` command), and
:func:`reconcile_flagged` (the scheduled reconcile function: studies the aggregator
flagged and did not unflag). Nothing here reads or logs a DICOM value: study UIDs are the
de-identified ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from dicomshare import index
from dicomshare.study_counts import StudyDelta, recount
from dicomshare_aws.counts import Backoff, batch_write, retryable, unflag
from dicomshare_aws.index_store import to_attribute_values

COUNT_ATTRIBUTES = ("pk", "sk", "study_uid", "series_uid", "size", "received_at", "modality",
                    "series_description", "series_number", "partner", "patient_pseudonym", "study_date",
                    "study_time", "study_description")
"""What a recount reads of each instance item (the attributes the counts are built from)."""
STUDY_TOTALS = ("instance_count", "total_bytes", "series_count")
SERIES_TOTALS = ("instance_count", "total_bytes")
FLAG_GRACE_SECONDS = 300
"""Flags younger than this may belong to a counts invocation still running (its timeout
is 60 s): they are left to it."""

_deserializer = TypeDeserializer()


@dataclass
class Reconciled:
    """What a reconciliation found and did (no identifying value in it)."""

    study_uid: str
    instances: int = 0
    marks_added: int = 0
    repairs: list[str] = field(default_factory=list)
    """``"<item>.<attribute>: <stored> -> <recounted>"`` for every value that was wrong."""

    @property
    def repaired(self) -> bool:
        return bool(self.repairs or self.marks_added)

    def describe(self) -> str:
        if not self.repaired:
            return f"{self.study_uid}: consistent ({self.instances} instances)"
        repairs = list(self.repairs) + ([f"marks: +{self.marks_added}"] if self.marks_added else [])
        return f"{self.study_uid}: repaired ({self.instances} instances): " + "; ".join(repairs)


def _plain(item: dict) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def _query(dynamodb, table_name: str, pk: str, prefix: str | None = None, projection: tuple[str, ...] = ()
           ) -> Iterator[dict[str, Any]]:
    """Every item of partition ``pk`` (whose sort key starts with ``prefix``), consistent."""
    request: dict[str, Any] = {
        "TableName": table_name, "ConsistentRead": True,
        "KeyConditionExpression": "pk = :pk" + (" AND begins_with(sk, :prefix)" if prefix else ""),
        "ExpressionAttributeValues": to_attribute_values({":pk": pk, ":prefix": prefix}),
    }
    if projection:
        request["ProjectionExpression"] = ", ".join(f"#a{i}" for i in range(len(projection)))
        request["ExpressionAttributeNames"] = {f"#a{i}": name for i, name in enumerate(projection)}
    while True:
        page = dynamodb.query(**request)
        yield from map(_plain, page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _unchanged(stored: dict[str, Any] | None, names: tuple[str, ...], values: dict) -> str:
    """Condition: the item still holds what was read (absent stays absent)."""
    if stored is None:
        return "attribute_not_exists(pk)"
    parts = []
    for i, name in enumerate(names):
        if name in stored:
            values[f":was{i}"] = stored[name]
            parts.append(f"{name} = :was{i}")
        else:
            parts.append(f"attribute_not_exists({name})")
    return " AND ".join(parts)


def _series_set(table_name: str, truth: StudyDelta, series_uid: str, stored: dict | None) -> dict:
    series = truth.series.get(series_uid)
    values: dict[str, Any] = {":n": series.instance_count if series else 0, ":b": series.total_bytes if series else 0}
    update = "SET instance_count = :n, total_bytes = :b"
    if series:
        values.update({":study": truth.study_uid, ":series": series_uid, ":modality": series.modality,
                       ":description": series.series_description, ":number": series.series_number})
        update += (", study_uid = :study, series_uid = :series, modality = if_not_exists(modality, :modality), "
                   "series_description = if_not_exists(series_description, :description), "
                   "series_number = if_not_exists(series_number, :number)")
    condition = _unchanged(stored, SERIES_TOTALS, values)
    return {"Update": {"TableName": table_name, "Key": to_attribute_values(index.series_key(truth.study_uid, series_uid)),
                       "UpdateExpression": update, "ConditionExpression": condition,
                       "ExpressionAttributeValues": to_attribute_values(values)}}


def _study_set(table_name: str, truth: StudyDelta, stored: dict | None) -> dict:
    values: dict[str, Any] = {
        ":n": truth.instance_count, ":b": truth.total_bytes, ":series_count": len(truth.series),
        ":first": truth.first_received, ":last": truth.last_received, ":study": truth.study_uid,
        ":pseudonym": truth.patient_pseudonym, ":date": truth.study_date, ":time": truth.study_time,
        ":description": truth.study_description, ":partner": truth.partner,
        ":gsi1pk": index.patient_partition(truth.partner, truth.patient_pseudonym), ":gsi1sk": f"{truth.study_date}#{truth.study_uid}",
        ":gsi2pk": index.STUDIES, ":gsi2sk": f"{truth.first_received}#{truth.study_uid}",
    }
    update = ("SET instance_count = :n, total_bytes = :b, series_count = :series_count, first_received = :first, "
              "last_received = :last, gsi2pk = :gsi2pk, gsi2sk = :gsi2sk, study_uid = :study, "
              "patient_pseudonym = if_not_exists(patient_pseudonym, :pseudonym), "
              "study_date = if_not_exists(study_date, :date), study_time = if_not_exists(study_time, :time), "
              "study_description = if_not_exists(study_description, :description), "
              "partner = if_not_exists(partner, :partner), gsi1pk = if_not_exists(gsi1pk, :gsi1pk), "
              "gsi1sk = if_not_exists(gsi1sk, :gsi1sk)")
    if truth.modalities:
        update += ", modalities = :modalities"
    else:
        update += " REMOVE modalities"
    condition = _unchanged(stored, STUDY_TOTALS, values)
    attribute_values = to_attribute_values(values)
    if truth.modalities:
        attribute_values[":modalities"] = {"SS": sorted(truth.modalities)}
    return {"Update": {"TableName": table_name, "Key": to_attribute_values(index.study_key(truth.study_uid)),
                       "UpdateExpression": update, "ConditionExpression": condition,
                       "ExpressionAttributeValues": attribute_values}}


def _differences(truth: StudyDelta, study: dict | None, series: dict[str, dict]) -> list[str]:
    found = []
    expected_study = {"instance_count": truth.instance_count, "total_bytes": truth.total_bytes,
                      "series_count": len(truth.series), "modalities": set(truth.modalities) or None,
                      "first_received": truth.first_received, "last_received": truth.last_received}
    for name, value in expected_study.items():
        stored = (study or {}).get(name)
        if (int(stored) if name in STUDY_TOTALS and stored is not None else stored) != value:
            found.append(f"study.{name}: {_shown(stored)} -> {_shown(value)}")
    for series_uid in sorted(set(truth.series) | set(series)):
        expected = truth.series.get(series_uid)
        for name in SERIES_TOTALS:
            stored = series.get(series_uid, {}).get(name)
            value = getattr(expected, name) if expected else 0
            if (int(stored) if stored is not None else None) != value:
                found.append(f"series {series_uid}.{name}: {_shown(stored)} -> {value}")
    return found


def _shown(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, set):
        return ",".join(sorted(value))
    return str(int(value)) if hasattr(value, "to_integral_value") else str(value)


def reconcile_study(dynamodb, table_name: str, study_uid: str, *, dry_run: bool = False,
                    deadline: float | None = None) -> Reconciled:
    """Recount ``study_uid`` from its instance items and repair its counts and counted
    marks (unless ``dry_run``); see the module's docstring for why this is safe while the
    aggregator runs."""
    backoff = Backoff(deadline)
    while True:
        try:
            return _reconcile_once(dynamodb, table_name, study_uid, dry_run)
        except ClientError as error:
            code = retryable(error)
            if code is None and not _changed_meanwhile(error):
                raise
            backoff.wait(code or "changed meanwhile")


def _changed_meanwhile(error: ClientError) -> bool:
    reasons = error.response.get("CancellationReasons", [])
    return (error.response["Error"]["Code"] == "TransactionCanceledException"
            and any(r.get("Code") == "ConditionalCheckFailed" for r in reasons))


def _reconcile_once(dynamodb, table_name: str, study_uid: str, dry_run: bool) -> Reconciled:
    partition = index.study_key(study_uid)[index.PK]
    instances_partition = index.instances_partition(study_uid)
    study = next(iter(_query(dynamodb, table_name, partition, "STUDY")), None)
    series = {i["series_uid"]: i for i in _query(dynamodb, table_name, partition, "SERIES#")}
    instance_sks: set[str] = set()

    def instances() -> Iterator[dict]:
        for item in _query(dynamodb, table_name, instances_partition, "INSTANCE#", COUNT_ATTRIBUTES):
            instance_sks.add(item[index.SK])
            yield item

    truth = recount(instances())
    marked = {index.marked_instance_sk(item[index.SK]) for shard in range(index.MARK_SHARDS)
              for item in _query(dynamodb, table_name, index.mark_partition(study_uid, shard), projection=("sk",))}
    unmarked = sorted(instance_sks - marked)
    result = Reconciled(study_uid, instances=len(instance_sks), marks_added=len(unmarked))
    if truth is None:
        return result
    result.repairs = _differences(truth, study, series)
    if dry_run or not result.repaired:
        return result
    batch_write(dynamodb, table_name, [{"PutRequest": {"Item": to_attribute_values(
        index.mark_key({index.PK: instances_partition, index.SK: sk}))}} for sk in unmarked])
    updates = [_series_set(table_name, truth, s, series.get(s)) for s in sorted(set(truth.series) | set(series))]
    updates.append(_study_set(table_name, truth, study))
    for i in range(0, len(updates), 100):
        dynamodb.transact_write_items(TransactItems=updates[i:i + 100])
    return result


def flagged_studies(dynamodb, table_name: str, older_than_seconds: float = FLAG_GRACE_SECONDS
                    ) -> dict[str, list[dict]]:
    """Studies with reconcile flags older than ``older_than_seconds``, with those flags' keys."""
    cutoff = time.time() - older_than_seconds
    studies: dict[str, list[dict]] = {}
    for item in _query(dynamodb, table_name, index.RECONCILE):
        if item.get("flagged_at", 0) <= cutoff:
            studies.setdefault(item["study_uid"], []).append({index.PK: item[index.PK], index.SK: item[index.SK]})
    return studies


def reconcile_flagged(dynamodb, table_name: str, *, older_than_seconds: float = FLAG_GRACE_SECONDS,
                      deadline: float | None = None) -> Iterator[Reconciled]:
    """Reconcile every flagged study, then delete its flags; stops starting studies at
    ``deadline`` (the flags of the rest stay for the next run)."""
    for study_uid, flags in sorted(flagged_studies(dynamodb, table_name, older_than_seconds).items()):
        if deadline is not None and time.monotonic() > deadline:
            return
        result = reconcile_study(dynamodb, table_name, study_uid, deadline=deadline)
        unflag(dynamodb, table_name, flags)
        yield result


def all_studies(dynamodb, table_name: str) -> list[str]:
    """Every study with a study item or an instance item (a scan of the whole table: for
    recovering from a counts outage longer than the stream's 24 hours)."""
    found: set[str] = set()
    request: dict[str, Any] = {"TableName": table_name, "ProjectionExpression": "pk",
                               "FilterExpression": "begins_with(pk, :study) OR begins_with(pk, :instances)",
                               "ExpressionAttributeValues": {":study": {"S": "STUDY#"},
                                                             ":instances": {"S": index.INSTANCES}}}
    while True:
        page = dynamodb.scan(**request)
        found.update(item["pk"]["S"].removeprefix("STUDY#").removeprefix(index.INSTANCES)
                     for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return sorted(found)
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
