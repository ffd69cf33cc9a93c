"""Study and series counts: chunking (pure) and exactness under retried, overlapping and
duplicated stream batches, against DynamoDB and EventBridge on a moto server."""

from __future__ import annotations

import json
from collections import Counter

import uuid
from dataclasses import dataclass

from boto3.dynamodb.types import TypeDeserializer
import pytest

from dicomshare import index
from dicomshare.index_items import instance_item
from dicomshare.study_counts import study_deltas
from dicomshare_aws import counts, index_store, resources
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
            s3_key=index.deidentified_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
            size=1000 + int(ds.InstanceNumber), sha256="0" * 64, received_at=f"2024-01-01T00:00:{ds.InstanceNumber % 60:02d}Z",
            partner="hospital-a", patient_pseudonym="DS-TESTPSEUDONYM"))
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
    assert (item["gsi1pk"], item["gsi2pk"]) == ("PATIENT#DS-TESTPSEUDONYM", "STUDIES")
    assert item["first_received"] == min(i["received_at"] for i in ct + mr)
    for series in (ct, mr):
        series_item = _get(aws, index.series_key(study, series[0]["series_uid"]))
        assert (series_item["instance_count"], series_item["total_bytes"]) == (
            len(series), sum(i["size"] for i in series))
        assert series_item["modality"] == series[0]["modality"]
    assert _new_instances_announced(aws, study) == 117


def test_an_instance_missing_from_the_table_is_not_counted(aws):
    """The transaction's own conditions (not only the read before it) keep counts exact:
    an instance the read cannot vouch for cancels the transaction and is dropped."""
    res, dynamodb, _, _ = aws
    real, phantom = _items(2, "PHANTOM")
    assert index_store.put_new(dynamodb, res.table_name, real)
    assert _count(aws, [real, phantom]) == {}
    item = _get(aws, index.study_key(real["study_uid"]))
    assert (item["instance_count"], item["series_count"], item["total_bytes"]) == (1, 1, real["size"])
