"""The ingest pipeline in the local system (moto server over real HTTP): real S3 event
notifications into the real SQS queue, the real ingest and counts handlers called by the
local event source mappings with the event shapes Lambda sends, real DICOM files.

Redeliveries are replayed by calling the handlers directly with the same event shapes."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomshare import index
from dicomshare.index_items import key_fingerprint
from dicomshare.manifest import object_key
from dicomshare.deidentify.identities import new_uid
from dicomshare.profile import for_partner
from dicomshare_aws import batch_deadline, resources
from dicomshare_aws.s3_deidentify import deidentify_object
from dicomshare_local import demo, pollers, system as local

import hostile

CLINICAL, BASIC = "demo-partner", "basic-partner"
SCRATCH = "test-ingest-scratch"
DEADLINE_BUCKET = "test-ingest-deadline"
"""A bucket without event notifications: objects the local pollers do not see."""
PLANTED = {
    "PatientName": "ZQXPLANTSURNAME^ZQXGIVEN",
    "PatientID": "ZQX-PID-4471",
    "InstitutionName": "ZQX Memorial Infirmary",
    "ReferringPhysicianName": "ZQXDOCTOR^ALBERT",
    "AccessionNumber": "ZQXACC991",
    "PatientBirthDate": "19610203",
}
PLANTED_STRINGS = [v.split("^")[0] for v in PLANTED.values()] + ["ZQXGIVEN"]


class Pipeline:
    """The ingest side of the local system, with replay of the events it consumed."""

    def __init__(self, system):
        from lambdas.counts import handler as counts_handler
        from lambdas.ingest import handler as ingest_handler

        self.system, self.resources = system, system.resources
        self.ingest_handler, self.counts_handler = ingest_handler, counts_handler
        self.secret = (system.state_dir / local.SECRET_FILE).read_text().strip().encode()

    def client(self, service: str):
        return self.system.client(service)

    def upload(self, key: str, body: bytes) -> None:
        self.client("s3").put_object(Bucket=self.resources.ingest_bucket, Key=key, Body=body)

    def run(self) -> None:
        self.system.wait_idle()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def items(self) -> list[dict]:
        table = self.system.session.resource("dynamodb", endpoint_url=self.system.endpoint_url).Table(
            self.resources.table_name)
        found, kwargs = [], {}
        while True:
            page = table.scan(ConsistentRead=True, **kwargs)
            found += page["Items"]
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def study(self, original_study_uid: str, partner: str = CLINICAL) -> dict:
        new = new_uid(self.secret, partner, original_study_uid)
        return next(i for i in self.items() if i[index.PK] == f"STUDY#{new}" and i[index.SK] == "STUDY")

    def instances(self, study_uid: str) -> list[dict]:
        return [i for i in self.items() if i[index.PK] == index.instances_partition(study_uid)
                and i[index.SK].startswith("INSTANCE#")]

    def replay_s3_events(self, keys: list[str]) -> dict:
        """Deliver the S3 notifications of ``keys`` again."""
        return self.ingest_handler.handler({"Records": self.s3_event_records(keys)},
                                           pollers.LambdaContext("ingest", 120))

    def s3_event_records(self, keys: list[str], bucket: str | None = None) -> list[dict]:
        """SQS records holding the S3 notifications of ``keys``, as Lambda receives them."""
        queue_arn = f"arn:aws:sqs:{self.system.region}:123456789012:ingest"
        return [{
            "messageId": f"replay-{n}", "receiptHandle": "replay", "attributes": {}, "messageAttributes": {},
            "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": self.system.region,
            "body": json.dumps({"Records": [{
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": self.system.region,
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket or self.resources.ingest_bucket, "arn": "arn:aws:s3:::ingest"},
                       "object": {"key": quote_plus(key, safe=""), "size": 1}}}]}),
        } for n, key in enumerate(keys)]

    def replay_stream(self) -> list[dict]:
        """Deliver every record of the table's stream again, in batches as Lambda does."""
        streams = self.client("dynamodbstreams")
        shard = streams.describe_stream(StreamArn=self.resources.stream_arn)["StreamDescription"]["Shards"][0]
        iterator = streams.get_shard_iterator(StreamArn=self.resources.stream_arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        responses = []
        while True:
            page = streams.get_records(ShardIterator=iterator, Limit=resources.STREAM_BATCH_SIZE)
            if not page["Records"]:
                return responses
            iterator = page["NextShardIterator"]
            records = [dict(r, eventSourceARN=self.resources.stream_arn, awsRegion=self.system.region,
                            dynamodb={**r["dynamodb"], "ApproximateCreationDateTime": 0}) for r in page["Records"]]
            responses.append(self.counts_handler.handler({"Records": records}, pollers.LambdaContext("counts", 60)))


@pytest.fixture(scope="module")
def pipeline(local_system):
    return Pipeline(local_system)


@pytest.fixture
def log_lines(pipeline):
    """Every line the handlers log, formatted exactly as Lambda would print it."""
    stream = io.StringIO()
    modules = (pipeline.ingest_handler, pipeline.counts_handler)
    handlers = []
    for handler_module, log in zip(modules, [logging.getLogger(m.logger.name) for m in modules]):
        capture = logging.StreamHandler(stream)
        capture.setFormatter(handler_module.logger.registered_formatter)
        log.addHandler(capture)
        handlers.append((log, capture))
    yield stream
    for log, capture in handlers:
        log.removeHandler(capture)


def _planted(ds: pydicom.Dataset) -> pydicom.Dataset:
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    return ds


def _series(slices: int, description: str, size: int = 32) -> list[pydicom.Dataset]:
    return [_planted(ds) for ds in demo.ct_series(slices, "20240315", description, size=size)]


def _shipped(name: str) -> pydicom.Dataset:
    return _planted(pydicom.dcmread(get_testdata_file(name)))


def _bytes(ds: pydicom.Dataset) -> bytes:
    return demo.part10_bytes(ds)


def _gone_from_ingest(pipeline, keys) -> bool:
    s3 = pipeline.client("s3")
    return all(not s3.list_object_versions(Bucket=pipeline.resources.ingest_bucket, Prefix=k).get("Versions")
               for k in keys)


def test_mixed_batch_ends_each_object_in_one_place(pipeline, log_lines, capfd):
    ct = _series(20, "ZQX STUDY CT")
    mr, ct_small = _shipped("MR_small.dcm"), _shipped("CT_small.dcm")
    burned = _shipped("CT_small.dcm")
    burned.SOPInstanceUID = burned.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    burned.BurnedInAnnotation = "YES"
    accepted = {
        **{f"{CLINICAL}/ZQXPLANTSURNAME ZQXGIVEN/ct series/slice {n:02d}.dcm": _bytes(ds) for n, ds in enumerate(ct)},
        f"{CLINICAL}/deep/a/b/c/d/e/f/Ünïcødé fïlé +plus+ & more%20.dcm": _bytes(mr),
        f"{BASIC}/2024/03/CT small.dcm": _bytes(ct_small),
    }
    duplicates = {f"{CLINICAL}/again/ZQXPLANTSURNAME slice 00 copy.dcm": _bytes(ct[0])}
    refused = {
        f"{CLINICAL}/broken/MR_truncated.dcm": (Path(get_testdata_file("MR_truncated.dcm")).read_bytes(), "truncated"),
        f"{CLINICAL}/broken/cut ZQXPLANTSURNAME.dcm": (_bytes(ct[1])[:-500], "truncated"),
        f"{CLINICAL}/notes/readme ZQXPLANTSURNAME.txt": (b"Patient ZQXPLANTSURNAME, not DICOM\n", "not_dicom"),
        f"{CLINICAL}/empty.dcm": (b"", "empty_object"),
        f"{CLINICAL}/burned in.dcm": (_bytes(burned), "burned_in_annotation"),
        f"{CLINICAL}/nested 1000 deep.dcm": (hostile.deep_object(1000), "malformed"),
        "someone-else/ZQXPLANTSURNAME.dcm": (_bytes(ct_small), "unknown_partner"),
        "loose ZQXPLANTSURNAME file.dcm": (_bytes(ct_small), "unknown_partner"),
    }
    for key, body in {**accepted, **duplicates}.items():
        pipeline.upload(key, body)
    for key, (body, _) in refused.items():
        pipeline.upload(key, body)
    pipeline.run()

    s3, r = pipeline.client("s3"), pipeline.resources
    assert _gone_from_ingest(pipeline, [*accepted, *duplicates, *refused])
    studies = {pipeline.study(ds.StudyInstanceUID, partner)["study_uid"]
               for ds, partner in ((ct[0], CLINICAL), (mr, CLINICAL), (ct_small, BASIC))}
    instances = [i for study in studies for i in pipeline.instances(study)]
    assert len(instances) == len(accepted)
    deid_keys = [k for study in studies for k in pipeline.keys(r.deid_bucket, f"studies/{study}/")]
    metadata_keys = [index.metadata_object_key(i["study_uid"], i["series_uid"], i["sop_instance_uid"])
                     for i in instances]
    object_keys = [index.deidentified_object_key(i["study_uid"], i["series_uid"], i["sop_instance_uid"])
                   for i in instances]
    assert sorted(deid_keys) == sorted(object_keys + metadata_keys)
    for item, stored_key, metadata_key in zip(instances, object_keys, metadata_keys):
        body = s3.get_object(Bucket=r.deid_bucket, Key=stored_key)["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (item["size"], item["sha256"])
        stored = s3.get_object(Bucket=r.deid_bucket, Key=metadata_key)
        metadata = stored["Body"].read()
        assert (stored["ContentType"], len(metadata)) == ("application/dicom+json", item["metadata_bytes"])
        assert json.loads(metadata)["0020000D"]["Value"] == [item["study_uid"]]
        assert "dicom_json" not in item

    records = {i["original_key_hmac"]: i for i in pipeline.items() if i[index.SK] == "QUARANTINE"}
    for key, (body, reason) in refused.items():
        assert hashlib.sha256(key.encode()).hexdigest() not in records
        record = records[key_fingerprint(pipeline.secret, key)]
        assert (record["reason"], record["size"]) == (reason, len(body))
        partner = key.split("/")[0] if key.startswith((CLINICAL, BASIC)) else "unknown"
        assert record["quarantine_key"].startswith(f"{partner}/") and record["gsi2pk"] == "QUARANTINE"
        moved = s3.get_object(Bucket=r.quarantine_bucket, Key=record["quarantine_key"])
        tags = s3.get_object_tagging(Bucket=r.quarantine_bucket, Key=record["quarantine_key"])["TagSet"]
        assert moved["Body"].read() == body
        assert moved["Metadata"]["reason"] == reason and tags == [{"Key": "reason", "Value": reason}]

    study = pipeline.study(ct[0].StudyInstanceUID)
    ct_instances = pipeline.instances(study["study_uid"])
    assert (study["instance_count"], study["series_count"]) == (20, 1)
    assert study["total_bytes"] == sum(i["size"] for i in ct_instances)
    assert study["modalities"] == {"CT"} and study["partner"] == CLINICAL
    assert study["gsi1pk"] == f"PATIENT#{CLINICAL}#{study['patient_pseudonym']}"
    assert study["gsi1sk"] == f"{study['study_date']}#{study['study_uid']}"
    series = next(i for i in pipeline.items() if i[index.PK] == f"STUDY#{study['study_uid']}"
                  and i[index.SK].startswith("SERIES#"))
    assert (series["instance_count"], series["total_bytes"]) == (20, study["total_bytes"])
    assert pipeline.study(mr.StudyInstanceUID)["modalities"] == {"MR"}
    small = pipeline.study(ct_small.StudyInstanceUID, BASIC)
    assert (small["instance_count"], small["series_count"], small["partner"]) == (1, 1, BASIC)

    index_dump = json.dumps(pipeline.items(), default=str)
    stored = b"".join(s3.get_object(Bucket=r.deid_bucket, Key=k)["Body"].read() for k in deid_keys)
    metadata = json.dumps([json.loads(s3.get_object(Bucket=r.deid_bucket, Key=k)["Body"].read())
                           for k in metadata_keys], ensure_ascii=False)  # JSON escapes non-ASCII: decoded
    logs = log_lines.getvalue() + capfd.readouterr().out
    assert logs.count('"outcome":"quarantined"') == len(refused)
    assert logs.count('"outcome":"ingested"') == len(accepted)
    assert logs.count('"outcome":"duplicate"') == len(duplicates)
    for planted in PLANTED_STRINGS:
        assert planted.encode() not in stored
        assert planted not in metadata
        assert planted not in index_dump
        assert planted not in logs
    assert "Ünïcødé" not in logs and "Ünïcødé" not in index_dump and "Ünïcødé" not in metadata


def test_redelivered_events_and_stream_records_change_nothing(pipeline, log_lines):
    keys = []
    for ds in _series(3, "REDELIVERY"):
        keys.append(f"{CLINICAL}/redelivery/slice {ds.InstanceNumber}+.dcm")
        pipeline.upload(keys[-1], _bytes(ds))
    pipeline.run()
    before = sorted(json.dumps(i, default=str, sort_keys=True) for i in pipeline.items())
    deid_before = pipeline.keys(pipeline.resources.deid_bucket)

    assert pipeline.replay_s3_events(keys + keys) == {"batchItemFailures": []}
    assert log_lines.getvalue().count('"outcome":"already_processed"') == 6
    assert all(response == {"batchItemFailures": []} for response in pipeline.replay_stream())
    pipeline.run()

    assert sorted(json.dumps(i, default=str, sort_keys=True) for i in pipeline.items()) == before
    assert pipeline.keys(pipeline.resources.deid_bucket) == deid_before


def test_same_file_twice_in_one_batch_counts_once(pipeline):
    (ds,) = _series(1, "TWICE")
    keys = [f"{CLINICAL}/twice/one.dcm", f"{CLINICAL}/twice/two.dcm"]
    for key in keys:
        pipeline.upload(key, _bytes(ds))
    pipeline.run()
    study = pipeline.study(ds.StudyInstanceUID)
    assert (study["instance_count"], study["series_count"]) == (1, 1)
    assert len(pipeline.instances(study["study_uid"])) == 1
    assert _gone_from_ingest(pipeline, keys)


def test_killed_after_storing_before_indexing_converges(pipeline):
    """A Lambda killed after writing the de-identified object, before the index put: the
    retry finds the same bytes at the same key (a conditional write, no new version),
    indexes once, then deletes."""
    series = _series(2, "KILLED")
    s3, r = pipeline.client("s3"), pipeline.resources
    s3.create_bucket(Bucket=SCRATCH)
    s3.put_object(Bucket=SCRATCH, Key="first.dcm", Body=_bytes(series[0]))
    settings = pipeline.system.settings
    first = deidentify_object(
        s3, SCRATCH, "first.dcm", r.deid_bucket,
        lambda plan: index.deidentified_object_key(plan.study_instance_uid, plan.series_instance_uid,
                                                   plan.sop_instance_uid),
        profile=for_partner(settings.partner(CLINICAL).options), secret=pipeline.secret, settings=settings, partner=CLINICAL,
        size=len(_bytes(series[0])))
    for n, ds in enumerate(series):
        pipeline.upload(f"{CLINICAL}/killed/{n}.dcm", _bytes(ds))
    pipeline.run()

    study = pipeline.study(series[0].StudyInstanceUID)
    assert (study["instance_count"], study["series_count"]) == (2, 1)
    assert len(pipeline.instances(study["study_uid"])) == 2
    versions = s3.list_object_versions(Bucket=r.deid_bucket, Prefix=first.key)["Versions"]
    assert [v["ETag"] for v in versions] == [first.etag]
    assert _gone_from_ingest(pipeline, [f"{CLINICAL}/killed/"])


def test_killed_after_indexing_before_delete_converges(pipeline):
    """The original still in the ingest bucket after its instance was indexed (a Lambda
    killed before the delete, or the same file uploaded again): one instance, exact counts."""
    (ds,) = _series(1, "KILLED LATE")
    key = f"{CLINICAL}/late/one.dcm"
    for _ in range(2):
        pipeline.upload(key, _bytes(ds))
        pipeline.run()
    study = pipeline.study(ds.StudyInstanceUID)
    (instance,) = pipeline.instances(study["study_uid"])
    assert (study["instance_count"], study["total_bytes"]) == (1, instance["size"])
    assert _gone_from_ingest(pipeline, [key])


def test_large_object_pixel_data_is_copied_server_side(pipeline, log_lines):
    (ds,) = _series(1, "LARGE", size=2100)
    data = _bytes(ds)
    pipeline.upload(f"{CLINICAL}/large/one.dcm", data)
    pipeline.run()
    (instance,) = pipeline.instances(pipeline.study(ds.StudyInstanceUID)["study_uid"])
    assert "sha256" not in instance
    stored = pipeline.client("s3").get_object(Bucket=pipeline.resources.deid_bucket, Key=object_key(instance))
    copy = pydicom.dcmread(io.BytesIO(stored["Body"].read()))
    assert copy.PixelData == ds.PixelData and instance["size"] == stored["ContentLength"]
    (line,) = [json.loads(x) for x in log_lines.getvalue().splitlines() if '"ingested"' in x]
    assert len(data) > 8 * 1024**2 and line["bytes_read"] < 6 * 1024**2


def test_test_event_and_already_processed_are_not_failures(pipeline, log_lines):
    context = pollers.LambdaContext("ingest", 60)
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": pipeline.resources.ingest_bucket}
    event = {"Records": [{
        "messageId": "test-event", "receiptHandle": "r", "body": json.dumps(test_event), "attributes": {},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1",
    }]}
    assert pipeline.ingest_handler.handler(event, context) == {"batchItemFailures": []}
    assert pipeline.replay_s3_events([f"{CLINICAL}/never uploaded.dcm"]) == {"batchItemFailures": []}
    assert log_lines.getvalue().count('"outcome":"already_processed"') == 1


def test_study_event_is_emitted_per_study(pipeline):
    sqs = pipeline.client("sqs")
    series = _series(4, "EVENTS")
    for ds in series:
        pipeline.upload(f"{CLINICAL}/events/{ds.InstanceNumber}.dcm", _bytes(ds))
    pipeline.run()
    study = pipeline.study(series[0].StudyInstanceUID)
    mine = []
    while messages := sqs.receive_message(QueueUrl=pipeline.resources.events_queue_url,
                                          MaxNumberOfMessages=10).get("Messages"):
        mine += [e for e in map(lambda m: json.loads(m["Body"]), messages)
                 if e["detail-type"] == "StudyInstancesReceived" and e["detail"].get("study_uid") == study["study_uid"]]
    assert sum(e["detail"]["new_instances"] for e in mine) == 4
    assert {(e["source"], e["detail-type"], e["detail"]["partner"]) for e in mine} == {
        (resources.EVENT_SOURCE, "StudyInstancesReceived", CLINICAL)}


def test_a_failing_message_does_not_fail_its_batch(pipeline):
    """A message that cannot be processed is reported alone (to be retried, then parked in
    the dead-letter queue); the rest of its batch completes."""
    (ds,) = _series(1, "PARTIAL")
    s3 = pipeline.client("s3")
    s3.create_bucket(Bucket=SCRATCH)
    s3.put_object(Bucket=SCRATCH, Key=f"{CLINICAL}/partial/one.dcm", Body=_bytes(ds))
    records = pipeline.s3_event_records([f"{CLINICAL}/partial/one.dcm"], bucket=SCRATCH)
    records.insert(0, dict(records[0], messageId="garbled", body="{not json"))
    response = pipeline.ingest_handler.handler({"Records": records}, pollers.LambdaContext("ingest", 60))
    assert response == {"batchItemFailures": [{"itemIdentifier": "garbled"}]}
    pipeline.run()
    assert pipeline.study(ds.StudyInstanceUID)["instance_count"] == 1
    assert not s3.list_object_versions(Bucket=SCRATCH, Prefix=f"{CLINICAL}/partial/").get("Versions")


def test_items_hold_only_the_attributes_their_writers_may_write(pipeline):
    """The attribute and partition lists of the functions' IAM policies (``dicomshare.index``)
    cover what the pipeline really writes: a list that missed one would make AWS deny the
    write. Each writer's items lie in partitions only that writer may write."""
    for ds in _series(2, "WRITERS"):
        pipeline.upload(f"{CLINICAL}/writers/{ds.InstanceNumber}.dcm", _bytes(ds))
    pipeline.upload(f"{CLINICAL}/writers/empty.dcm", b"")
    pipeline.run()
    ingest, counts = set(index.INGEST_WRITES["attributes"]), set(index.COUNTS_WRITES["attributes"])

    def partition_of(writes: dict, item: dict) -> bool:
        return any(fnmatch.fnmatchcase(item[index.PK], p) for p in writes["leading_keys"])
    kinds = set()
    for item in pipeline.items():
        kind = item[index.SK].split("#")[0]
        kinds.add(kind)
        if kind in ("INSTANCE", "OWNER", "QUARANTINE", "RECEIPT"):
            assert set(item) <= ingest, item[index.SK]
            assert partition_of(index.INGEST_WRITES, item) and not partition_of(index.COUNTS_WRITES, item), kind
        elif kind in ("STUDY", "SERIES", "MARK") or item[index.PK] == index.RECONCILE:
            assert set(item) <= counts, item[index.SK]
            assert partition_of(index.COUNTS_WRITES, item) and not partition_of(index.INGEST_WRITES, item), kind
    assert {"INSTANCE", "OWNER", "QUARANTINE", "RECEIPT", "STUDY", "SERIES"} <= kinds


def test_code_and_integer_strings_are_validated_before_indexing():
    """A hostile Modality (a path, markup) or a non-integer Series/Instance Number is
    indexed as empty: it never reaches the API, the page or a ZIP entry name."""
    from dicomshare.index_items import dicom_json, instance_item

    ds = pydicom.dcmread(io.BytesIO(_hostile_header()))
    item = instance_item(ds, transfer_syntax_uid="1.2.840.10008.1.2.1", size=1, sha256=None,
                         received_at="t", partner="p", patient_pseudonym="DS-X", metadata_bytes=1)
    assert (item["modality"], item["series_number"], "instance_number" in item) == ("", "", False)
    assert not {"00080060", "00200011", "00200013"} & set(json.loads(dicom_json(ds)))
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", "-3", "+12"
    item = instance_item(ds, transfer_syntax_uid="1.2.840.10008.1.2.1", size=1, sha256=None,
                         received_at="t", partner="p", patient_pseudonym="DS-X", metadata_bytes=1)
    assert (item["modality"], item["series_number"], item["instance_number"]) == ("CT", "-3", 12)


def _hostile_header() -> bytes:
    """A Part 10 file whose Modality, Series Number and Instance Number are written raw,
    as a hostile or broken sender would (pydicom refuses to set them)."""
    ds = next(demo.ct_series(1, "20240101", "CT", size=8))
    data = demo.part10_bytes(ds)
    for keyword, value in (("Modality", b"../../x "), ("SeriesNumber", b"1/../2"), ("InstanceNumber", b"12a ")):
        element = ds.data_element(keyword)
        old = element.tag.group.to_bytes(2, "little") + element.tag.element.to_bytes(2, "little") + element.VR.encode()
        start = data.index(old)
        length = int.from_bytes(data[start + 6:start + 8], "little")
        data = data[:start + 6] + len(value).to_bytes(2, "little") + value + data[start + 8 + length:]
    return data


class Budget:
    """Lambda's context for an invocation whose remaining time is given, call by call, by
    ``remaining_ms`` (then its last value): the time a batch has left when each object is
    about to start, without waiting for it to pass."""

    def __init__(self, *remaining_ms: int):
        self.remaining = list(remaining_ms)
        real = pollers.LambdaContext("ingest", resources.INGEST_TIMEOUT_SECONDS)
        self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("_")})

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining.pop(0) if len(self.remaining) > 1 else self.remaining[0]


def test_objects_that_cannot_finish_before_the_timeout_are_not_started(pipeline, log_lines):
    """A batch stops starting objects once too little time is left: their messages are
    reported as failed, visible again at once, and the retry indexes them."""
    series = _series(3, "DEADLINE")
    s3, sqs = pipeline.client("s3"), pipeline.client("sqs")
    s3.create_bucket(Bucket=DEADLINE_BUCKET)
    queue_url = sqs.create_queue(QueueName="deadline-test", Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    keys = [f"{CLINICAL}/deadline/{ds.InstanceNumber}.dcm" for ds in series]
    for key, ds in zip(keys, series):
        s3.put_object(Bucket=DEADLINE_BUCKET, Key=key, Body=_bytes(ds))
    for record in pipeline.s3_event_records(keys, bucket=DEADLINE_BUCKET):
        sqs.send_message(QueueUrl=queue_url, MessageBody=record["body"])
    messages = []
    while len(messages) < 3:
        messages += sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    records = [dict(r, messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"],
                    eventSourceARN=queue_arn)
               for r, m in zip(pipeline.s3_event_records(keys, bucket=DEADLINE_BUCKET), messages)]

    enough = int(batch_deadline.seconds_needed(1) * 1000) + 1000
    response = pipeline.ingest_handler.handler({"Records": records}, Budget(enough, enough, enough - 2000))
    assert response == {"batchItemFailures": [{"itemIdentifier": messages[2]["MessageId"]}]}
    assert '"outcome":"not_started"' in log_lines.getvalue()
    deferred_key = json.loads(messages[2]["Body"])["Records"][0]["s3"]["object"]["key"]
    assert s3.list_object_versions(Bucket=DEADLINE_BUCKET, Prefix=unquote_plus(deferred_key)).get("Versions"), \
        "not started: the original is untouched"
    (again,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert again["MessageId"] == messages[2]["MessageId"], "visible again at once, not after 600 s"

    retry = [dict(records[2], receiptHandle=again["ReceiptHandle"])]
    assert pipeline.ingest_handler.handler({"Records": retry}, Budget(enough)) == {"batchItemFailures": []}
    pipeline.run()
    assert pipeline.study(series[0].StudyInstanceUID)["instance_count"] == 3
    assert not s3.list_object_versions(Bucket=DEADLINE_BUCKET, Prefix=f"{CLINICAL}/deadline/").get("Versions")


def test_time_needed_grows_with_the_object(pipeline):
    four_gib = batch_deadline.seconds_needed(4 * 1024**3)
    assert batch_deadline.seconds_needed(None) == batch_deadline.START_MARGIN_SECONDS
    assert batch_deadline.START_MARGIN_SECONDS + 30 < four_gib < resources.INGEST_TIMEOUT_SECONDS, \
        "the largest object allowed by default still fits in one invocation"


def test_identities_are_scoped_per_partner_and_a_file_without_patient_id_joins_its_study(pipeline):
    """Two partners upload the same MRN with the same original UIDs: two studies, two
    pseudonyms, two date shifts. A later file of the first partner's study without Patient
    ID takes the patient its study has in the index."""
    first, second, no_id = _series(3, "SCOPED")
    first.PatientID = second.PatientID = "SCOPED-MRN-100234"
    no_id.PatientID = ""
    pipeline.upload(f"{CLINICAL}/scoped/a.dcm", _bytes(first))
    pipeline.upload(f"{BASIC}/scoped/a.dcm", _bytes(first))
    pipeline.upload(f"{CLINICAL}/scoped/b.dcm", _bytes(second))
    pipeline.run()
    pipeline.upload(f"{CLINICAL}/scoped/no id.dcm", _bytes(no_id))
    pipeline.run()

    mine, theirs = pipeline.study(first.StudyInstanceUID), pipeline.study(first.StudyInstanceUID, BASIC)
    assert mine["study_uid"] != theirs["study_uid"]
    assert mine["patient_pseudonym"] != theirs["patient_pseudonym"]
    assert (mine["partner"], theirs["partner"], mine["instance_count"]) == (CLINICAL, BASIC, 3)
    assert {i["patient_pseudonym"] for i in pipeline.instances(mine["study_uid"])} == {mine["patient_pseudonym"]}
    s3 = pipeline.client("s3")
    stored = {i["sop_instance_uid"]: pydicom.dcmread(io.BytesIO(
        s3.get_object(Bucket=pipeline.resources.deid_bucket, Key=object_key(i))["Body"].read()))
        for i in pipeline.instances(mine["study_uid"])}
    (joined,) = [ds for ds in stored.values() if str(ds.PatientName) == mine["patient_pseudonym"]
                 and ds.SOPInstanceUID == new_uid(pipeline.secret, CLINICAL, no_id.SOPInstanceUID)]
    assert joined.PatientID == mine["patient_pseudonym"] and joined.StudyDate == mine["study_date"]
    (other,) = pipeline.instances(theirs["study_uid"])
    assert other["sop_instance_uid"] != new_uid(pipeline.secret, CLINICAL, first.SOPInstanceUID)
