"""Study and series counts: chunking (pure) and exactness under retried, overlapping and
duplicated stream batches, throttling and transaction conflicts (injected into the
client's requests), and reconciliation after lost records, deleted marks and corrupted
counts, against DynamoDB and EventBridge on a moto server."""

from __future__ import annotations

import json
import time
from collections import Counter

import uuid
from dataclasses import dataclass

from boto3.dynamodb.types import TypeDeserializer
from botocore.awsrequest import AWSResponse
import pytest

from dicomshare import cli, index
from dicomshare.index_items import instance_item
from dicomshare.study_counts import study_deltas
from dicomshare_aws import counts, index_store, reconcile, resources
from dicomshare_local import demo


def _items(slices: int, description: str, *, modality: str = "CT", study_uid: str | None = None,
           series_number: int = 2) -> list[dict]:
    items = []
    for ds in demo.ct_series(slices, "20240101", description, size=8):
        ds.Modality, ds.SeriesNumber = modality, series_number
        if study_uid:
            ds.StudyInstanceUID = study_uid
        items.append(instance_item(
            ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            size=1000 + int(ds.InstanceNumber), sha256="0" * 64, received_at=f"2024-01-01T00:00:{ds.InstanceNumber % 60:02d}Z",
            partner="hospital-a", patient_pseudonym="DS-TESTPSEUDONYM", metadata_bytes=2000))
    return items


def test_deltas_stay_within_a_transaction_and_add_up():
    study = _items(1, "A")[0]["study_uid"]
    items = (_items(120, "A", study_uid=study) + _items(90, "A", study_uid=study, modality="MR", series_number=3)
             + _items(40, "A", study_uid=study) + _items(2, "B"))
    deltas = study_deltas(items + items[:30], max_items=100)
    assert all(d.transaction_items <= 100 for d in deltas)
    per_study = Counter()
    for delta in deltas:
        per_study[delta.study_uid] += delta.instance_count
        assert delta.instance_count == sum(s.instance_count for s in delta.series.values())
        assert delta.total_bytes == sum(int(i["size"]) for i in delta.instances)
    assert per_study[study] == 250 and sum(per_study.values()) == 252
    assert {m for d in deltas if d.study_uid == study for m in d.modalities} == {"CT", "MR"}


@pytest.fixture(scope="module")
def aws(local_system):
    """A table and an event bus of their own on the local system's moto server: the
    local counts poller must not consume these instance items."""
    dynamodb, events, sqs = (local_system.client(s) for s in ("dynamodb", "events", "sqs"))
    table = f"test-counts-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in (index.PK, index.SK)],
        KeySchema=[{"AttributeName": index.PK, "KeyType": "HASH"}, {"AttributeName": index.SK, "KeyType": "RANGE"}])
    queue_url = sqs.create_queue(QueueName=f"{table}-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.create_event_bus(Name=table)
    events.put_rule(Name=table, EventBusName=table, EventPattern=json.dumps({"source": [resources.EVENT_SOURCE]}))
    events.put_targets(Rule=table, EventBusName=table, Targets=[{"Id": "queue", "Arn": queue_arn}])
    yield Resources(table, table, queue_url), dynamodb, events, sqs
    dynamodb.delete_table(TableName=table)


@dataclass(frozen=True)
class Resources:
    table_name: str
    event_bus_name: str
    events_queue_url: str


def _count(aws, items) -> dict[str, str]:
    res, dynamodb, events, _ = aws
    return counts.count_new_instances(dynamodb, events, items, table_name=res.table_name,
                                      event_bus_name=res.event_bus_name)


def _get(aws, key: dict) -> dict:
    res, dynamodb, _, _ = aws
    item = dynamodb.get_item(TableName=res.table_name, Key=index_store.to_attribute_values(key),
                             ConsistentRead=True)["Item"]
    return {name: TypeDeserializer().deserialize(value) for name, value in item.items()}


def _new_instances_announced(aws, study_uid: str) -> int:
    res, _, _, sqs = aws
    total = 0
    while messages := sqs.receive_message(QueueUrl=res.events_queue_url, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            event = json.loads(message["Body"])
            if event["detail-type"] == counts.STUDY_INSTANCES_RECEIVED and event["detail"]["study_uid"] == study_uid:
                total += event["detail"]["new_instances"]
            sqs.delete_message(QueueUrl=res.events_queue_url, ReceiptHandle=message["ReceiptHandle"])
    return total


def test_overlapping_and_repeated_batches_count_each_instance_once(aws):
    res, dynamodb, _, _ = aws
    ct = _items(105, "OVERLAP")
    study = ct[0]["study_uid"]
    mr = _items(12, "OVERLAP", study_uid=study, modality="MR", series_number=3)
    for item in ct + mr:
        assert index_store.put_new(dynamodb, res.table_name, item)

    assert _count(aws, ct[:50]) == {}
    assert _count(aws, ct[30:] + mr[:5]) == {}
    assert _count(aws, ct + mr) == {}
    assert _count(aws, ct + mr) == {}

    item = _get(aws, index.study_key(study))
    assert (item["instance_count"], item["series_count"]) == (117, 2)
    assert item["total_bytes"] == sum(i["size"] for i in ct + mr)
    assert item["modalities"] == {"CT", "MR"}
    assert (item["gsi1pk"], item["gsi2pk"]) == ("PATIENT#hospital-a#DS-TESTPSEUDONYM", "STUDIES")
    assert item["first_received"] == min(i["received_at"] for i in ct + mr)
    for series in (ct, mr):
        series_item = _get(aws, index.series_key(study, series[0]["series_uid"]))
        assert (series_item["instance_count"], series_item["total_bytes"]) == (
            len(series), sum(i["size"] for i in series))
        assert series_item["modality"] == series[0]["modality"]
    assert _new_instances_announced(aws, study) == 117


class Faults:
    """Answers chosen DynamoDB calls of one client with DynamoDB's own error responses,
    through botocore's ``before-send`` hook (the request never reaches moto; botocore
    parses the answer and applies its own retry rules as it would to DynamoDB's). Every
    other call goes to the moto server. ``calls`` records (operation, answer, time)."""

    def __init__(self, client):
        self.planned: dict[str, list[str]] = {}
        self.calls: list[tuple[str, str, float]] = []
        self.before: dict[str, list] = {}
        client.meta.events.register("before-send.dynamodb", self._send)

    def fail(self, operation: str, *codes: str) -> None:
        self.planned.setdefault(operation, []).extend(codes)

    def _send(self, request, **_):
        target = request.headers["X-Amz-Target"]
        operation = (target.decode() if isinstance(target, bytes) else target).rpartition(".")[2]
        for action in self.before.pop(operation, []):
            action()
        planned = self.planned.get(operation)
        code = planned.pop(0) if planned else "sent"
        self.calls.append((operation, code, time.monotonic()))
        if code == "sent":
            return None
        if operation == "TransactWriteItems":
            size = len(json.loads(request.body)["TransactItems"])
            reasons = [{"Code": "None"}] * (size - 1) + [{"Code": code, "Message": "injected"}]
            body = {"__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                    "Message": f"Transaction cancelled [{code}]", "CancellationReasons": reasons}
        else:
            body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(json.dumps(body)))


class _Raw:
    def __init__(self, body: str):
        self.body = body.encode()

    def stream(self, **_):
        yield self.body


def _put(aws, items):
    res, dynamodb, _, _ = aws
    for item in items:
        assert index_store.put_new(dynamodb, res.table_name, item)


def _totals(aws, study: str, series: list[str]) -> tuple:
    study_item = _get(aws, index.study_key(study))
    return ((study_item["instance_count"], study_item["total_bytes"], study_item["series_count"]),
            [(s["instance_count"], s["total_bytes"]) for s in (_get(aws, index.series_key(study, u)) for u in series)])


def _expected(items) -> tuple:
    series = sorted({i["series_uid"] for i in items})
    return ((len(items), sum(i["size"] for i in items), len(series)),
            [(sum(1 for i in items if i["series_uid"] == s), sum(i["size"] for i in items if i["series_uid"] == s))
             for s in series])


def _series(items) -> list[str]:
    return sorted({i["series_uid"] for i in items})


def test_marks_live_off_the_study_partition_spread_over_shards(aws):
    res, dynamodb, _, _ = aws
    items = _items(40, "MARKS")
    study = items[0]["study_uid"]
    _put(aws, items)
    assert _count(aws, items) == {}

    def partition(pk: str) -> list[dict]:
        return dynamodb.query(TableName=res.table_name, ConsistentRead=True, KeyConditionExpression="pk = :pk",
                              ExpressionAttributeValues={":pk": {"S": pk}})["Items"]
    assert sorted({i["sk"]["S"].split("#")[0] for i in partition(f"STUDY#{study}")}) == ["SERIES", "STUDY"], \
        "the study's partition holds no instance item"
    instances = partition(index.instances_partition(study))
    assert len(instances) == 40 and all(i["sk"]["S"].startswith("INSTANCE#") for i in instances)
    assert all(set(i) - set(items[0]) == set() for i in instances), "counting writes nothing on instance items"
    shards = Counter()
    for shard in range(index.MARK_SHARDS):
        marks = dynamodb.query(TableName=res.table_name, ConsistentRead=True, KeyConditionExpression="pk = :pk",
                               ExpressionAttributeValues={":pk": {"S": index.mark_partition(study, shard)}})["Items"]
        shards[shard] = len(marks)
        assert all(set(m) == {"pk", "sk"} for m in marks)
    assert sum(shards.values()) == 40 and len(+shards) >= 5
    assert study not in reconcile.flagged_studies(dynamodb, res.table_name, older_than_seconds=0)


def test_throttling_and_conflicts_back_off_with_growing_waits_then_count_exactly(aws, local_system):
    res, _, events, _ = aws
    items = _items(30, "BACKOFF")
    study = items[0]["study_uid"]
    _put(aws, items)
    client = local_system.client("dynamodb")
    faults = Faults(client)
    faults.fail("TransactWriteItems", "ThrottlingError", "TransactionConflict", "ThrottlingError",
                "TransactionConflict", "ProvisionedThroughputExceeded")
    faults.fail("BatchGetItem", "ProvisionedThroughputExceededException", "ThrottlingException")
    assert counts.count_new_instances(client, events, items, table_name=res.table_name,
                                      event_bus_name=res.event_bus_name) == {}
    assert _totals(aws, study, _series(items)) == _expected(items)
    transactions = [(code, at) for operation, code, at in faults.calls if operation == "TransactWriteItems"]
    assert [code for code, _ in transactions][-1] == "sent" and len(transactions) == 6
    for n, ((_, failed_at), (_, next_at)) in enumerate(zip(transactions, transactions[1:])):
        assert next_at - failed_at >= counts.BACKOFF_BASE_SECONDS * 2 ** n / 2, f"wait {n} has its floor"
    assert _new_instances_announced(aws, study) == 30


def test_conflicting_aggregators_count_each_instance_once(aws, local_system):
    """Two aggregators on overlapping batches, the second one's transaction landing between
    the first one's read and its transaction: real conditional failures on the marks."""
    res, _, events, _ = aws
    items = _items(60, "RACE")
    study = items[0]["study_uid"]
    _put(aws, items)
    first, second = local_system.client("dynamodb"), local_system.client("dynamodb")
    Faults(first).before["TransactWriteItems"] = [lambda: counts.count_new_instances(
        second, events, items[20:], table_name=res.table_name, event_bus_name=res.event_bus_name)]
    assert counts.count_new_instances(first, events, items[:40], table_name=res.table_name,
                                      event_bus_name=res.event_bus_name) == {}
    assert _totals(aws, study, _series(items)) == _expected(items)
    assert _new_instances_announced(aws, study) == 60


def test_throttling_past_the_deadline_leaves_the_study_flagged_for_reconciliation(aws, local_system):
    res, dynamodb, events, _ = aws
    items = _items(12, "GIVEUP")
    study = items[0]["study_uid"]
    _put(aws, items)
    client = local_system.client("dynamodb")
    faults = Faults(client)
    faults.fail("TransactWriteItems", *["ThrottlingError"] * 100)
    failed = counts.count_new_instances(client, events, items, table_name=res.table_name,
                                        event_bus_name=res.event_bus_name, deadline=time.monotonic() + 2)
    assert failed == {study: "BackoffExhausted"}
    # Retried, then stopped by the deadline: the waits' floors (25 ms doubling) pass 2 s
    # before the 8th try, however fast or slow each call is.
    assert 1 < len([c for c in faults.calls if c[0] == "TransactWriteItems"]) < counts.MAX_ATTEMPTS
    assert "Item" not in dynamodb.get_item(TableName=res.table_name, Key=index_store.to_attribute_values(
        index.study_key(study)))
    assert study not in reconcile.flagged_studies(dynamodb, res.table_name), "too young: may still be running"
    assert study in reconcile.flagged_studies(dynamodb, res.table_name, older_than_seconds=0)

    results = {r.study_uid: r for r in reconcile.reconcile_flagged(dynamodb, res.table_name, older_than_seconds=0)}
    assert results[study].marks_added == 12 and "study.instance_count: missing -> 12" in results[study].repairs
    assert study not in reconcile.flagged_studies(dynamodb, res.table_name, older_than_seconds=0)
    assert _totals(aws, study, _series(items)) == _expected(items)
    item = _get(aws, index.study_key(study))
    assert (item["gsi1pk"], item["gsi2pk"], item["modalities"], item["partner"]) == (
        "PATIENT#hospital-a#DS-TESTPSEUDONYM", "STUDIES", {"CT"}, "hospital-a")
    assert item["first_received"] == min(i["received_at"] for i in items)
    assert _count(aws, items) == {}, "the stream's retry of the same records"
    assert _totals(aws, study, _series(items)) == _expected(items)


def test_reconcile_repairs_deleted_marks_and_corrupted_counts(aws):
    res, dynamodb, _, _ = aws
    ct = _items(25, "DRIFT")
    study = ct[0]["study_uid"]
    mr = _items(5, "DRIFT", study_uid=study, modality="MR", series_number=3)
    items = ct + mr
    _put(aws, items)
    assert _count(aws, items) == {}
    for item in ct[:7]:
        dynamodb.delete_item(TableName=res.table_name, Key=index_store.to_attribute_values(index.mark_key(item)))
    dynamodb.update_item(TableName=res.table_name, Key=index_store.to_attribute_values(index.study_key(study)),
                         UpdateExpression="SET instance_count = :n", ExpressionAttributeValues={":n": {"N": "999"}})
    dynamodb.update_item(TableName=res.table_name, Key=index_store.to_attribute_values(
        index.series_key(study, ct[0]["series_uid"])), UpdateExpression="SET total_bytes = :b",
        ExpressionAttributeValues={":b": {"N": "1"}})
    dynamodb.delete_item(TableName=res.table_name, Key=index_store.to_attribute_values(
        index.series_key(study, mr[0]["series_uid"])))

    dry = reconcile.reconcile_study(dynamodb, res.table_name, study, dry_run=True)
    assert dry.marks_added == 7 and "study.instance_count: 999 -> 30" in dry.repairs
    assert f"series {mr[0]['series_uid']}.instance_count: missing -> 5" in dry.repairs
    assert _get(aws, index.study_key(study))["instance_count"] == 999, "a dry run changes nothing"

    result = reconcile.reconcile_study(dynamodb, res.table_name, study)
    assert result.repaired and result.instances == 30
    assert _totals(aws, study, _series(items)) == _expected(items)
    assert _count(aws, items) == {}, "restored marks keep the aggregator from counting twice"
    assert _totals(aws, study, _series(items)) == _expected(items)
    assert not reconcile.reconcile_study(dynamodb, res.table_name, study).repaired


def test_reconcile_undoes_a_count_of_an_instance_that_does_not_exist(aws):
    res, dynamodb, _, _ = aws
    real, phantom = _items(2, "PHANTOM")
    _put(aws, [real])
    assert _count(aws, [real, phantom]) == {}
    result = reconcile.reconcile_study(dynamodb, res.table_name, real["study_uid"])
    assert "study.instance_count: 2 -> 1" in result.repairs
    assert _totals(aws, real["study_uid"], [real["series_uid"]]) == _expected([real])


def test_reconcile_racing_the_aggregator_starts_over_and_converges(aws, local_system):
    """The aggregator's transaction lands between the reconciliation's reads and its
    writes (its marks, then its counts): the reconciliation's conditions cancel its
    transaction, it reads again and converges."""
    res, dynamodb, events, _ = aws
    items = _items(20, "RECONCILE-RACE")
    study = items[0]["study_uid"]
    _put(aws, items)
    assert _count(aws, items[:10]) == {}
    dynamodb.update_item(TableName=res.table_name, Key=index_store.to_attribute_values(index.study_key(study)),
                         UpdateExpression="SET total_bytes = :b", ExpressionAttributeValues={":b": {"N": "7"}})
    client = local_system.client("dynamodb")
    faults = Faults(client)
    faults.before["BatchWriteItem"] = [lambda: _count(aws, items[10:])]
    result = reconcile.reconcile_study(client, res.table_name, study)
    assert result.instances == 20
    assert len([c for c in faults.calls if c[0] == "TransactWriteItems"]) == 2
    assert _totals(aws, study, _series(items)) == _expected(items)


def test_reconcile_command(aws, local_system, capsys):
    res, dynamodb, _, _ = aws
    items = _items(6, "COMMAND")
    study = items[0]["study_uid"]
    _put(aws, items)
    assert _count(aws, items) == {}
    dynamodb.update_item(TableName=res.table_name, Key=index_store.to_attribute_values(index.study_key(study)),
                         UpdateExpression="SET instance_count = :n", ExpressionAttributeValues={":n": {"N": "1"}})
    state = ["--state-dir", str(local_system.state_dir), "--table", res.table_name]
    assert cli.main(["reconcile", *state, "--dry-run", study]) == 3
    assert f"{study}: would repair (6 instances): study.instance_count: 1 -> 6" in capsys.readouterr().out
    assert cli.main(["reconcile", *state, "--all"]) == 0
    out = capsys.readouterr().out
    assert f"{study}: repaired (6 instances): study.instance_count: 1 -> 6" in out
    assert _totals(aws, study, _series(items)) == _expected(items)
    assert cli.main(["reconcile", *state, "--dry-run", study]) == 0
    assert f"{study}: consistent (6 instances)" in capsys.readouterr().out
    assert cli.main(["reconcile", "--state-dir", "/nonexistent", study]) == 2


def test_scheduled_reconcile_function_repairs_flagged_studies(aws, monkeypatch):
    """The reconcile handler, invoked as the schedule rule invokes it, on a study whose
    stream records were lost (never counted) and whose flag is older than the grace period."""
    from dicomshare_local.pollers import LambdaContext
    from lambdas.reconcile.handler import handler

    res, dynamodb, _, _ = aws
    items = _items(9, "SCHEDULED")
    study = items[0]["study_uid"]
    _put(aws, items)
    (flag,) = counts.flag_studies(dynamodb, res.table_name, [study], "lost-batch")
    dynamodb.update_item(TableName=res.table_name, Key=index_store.to_attribute_values(flag),
                         UpdateExpression="SET flagged_at = :t", ExpressionAttributeValues={
                             ":t": {"N": str(int(time.time()) - reconcile.FLAG_GRACE_SECONDS - 1)}})
    monkeypatch.setenv("TABLE_NAME", res.table_name)
    event = {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
    result = handler(event, LambdaContext("reconcile", resources.RECONCILE_TIMEOUT_SECONDS))
    assert result["reconciled"] >= 1 and result["repaired"] >= 1
    assert _totals(aws, study, _series(items)) == _expected(items)
    assert study not in reconcile.flagged_studies(dynamodb, res.table_name, older_than_seconds=0)
