"""The ingest pipeline on a moto server over real HTTP: real S3 event notifications into
the real SQS queue, the real ingest and counts handlers called with the event shapes
Lambda sends (by the local event source mappings of :mod:`dicomshare_local.pollers`),
real DICOM files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import boto3
import pydicom
import pytest
from aws_lambda_powertools.utilities import parameters
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from pydicom.data import get_testdata_file

from dicomshare import index
from dicomshare.deidentify import new_uid
from dicomshare.profile import for_partner
from dicomshare.settings import Partner, Settings
from dicomshare_aws import resources
from dicomshare_aws.s3_deidentify import deidentify_object
from dicomshare_local import demo, pollers, provision

SECRET = "4f1c" * 16
SETTINGS = Settings(partners=(Partner(id="hospital-a"), Partner(id="hospital-b", options=())))
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
    """The ingest side of the system on one moto server, driven one batch at a time."""

    def __init__(self, endpoint_url: str, session: boto3.Session, res: provision.Resources):
        from lambdas.counts import handler as counts_handler
        from lambdas.ingest import handler as ingest_handler

        self.ingest_handler, self.counts_handler = ingest_handler, counts_handler
        self.endpoint_url, self.session, self.resources = endpoint_url, session, res
        self.sqs_events: list[dict] = []
        self.stream_events: list[dict] = []
        self.ingest = pollers.SqsPoller("ingest", self._record(ingest_handler.handler, self.sqs_events),
                                        resources.INGEST_TIMEOUT_SECONDS, self.client("sqs"),
                                        res.ingest_queue_url, session.region_name)
        self.counts = pollers.StreamPoller("counts", self._record(counts_handler.handler, self.stream_events),
                                           resources.COUNTS_TIMEOUT_SECONDS, self.client("dynamodbstreams"),
                                           res.stream_arn, self.client("sqs"), res.counts_dlq_url,
                                           session.region_name)

    @staticmethod
    def _record(handler, into):
        def invoke(event, context):
            into.append(json.loads(json.dumps(event)))
            return handler(event, context)
        return invoke

    def client(self, service: str):
        return self.session.client(service, endpoint_url=self.endpoint_url)

    def upload(self, key: str, body: bytes) -> None:
        self.client("s3").put_object(Bucket=self.resources.ingest_bucket, Key=key, Body=body)

    def run(self) -> None:
        """Deliver every queued S3 event, then every new stream record."""
        while self.ingest.poll_once():
            pass
        while self.counts.poll_once():
            pass

    def keys(self, bucket: str) -> list[str]:
        pages = self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def items(self) -> list[dict]:
        table = self.session.resource("dynamodb", endpoint_url=self.endpoint_url).Table(self.resources.table_name)
        found, kwargs = [], {}
        while True:
            page = table.scan(**kwargs)
            found += page["Items"]
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def study(self, original_study_uid: str) -> dict:
        new = new_uid(SECRET.encode(), original_study_uid)
        return next(i for i in self.items() if i[index.PK] == f"STUDY#{new}" and i[index.SK] == "STUDY")


def _reset_cached_clients(system: Pipeline) -> None:
    system.ingest_handler._clients.cache_clear()
    system.counts_handler._clients.cache_clear()
    parameters.clear_caches()


@pytest.fixture(scope="module")
def pipeline():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    session = boto3.Session(region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    res = provision.provision(session, endpoint, SETTINGS, SECRET)
    environment = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                   "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                   **res.lambda_environment(SETTINGS)}
    with pytest.MonkeyPatch.context() as env:
        env.delenv("AWS_PROFILE", raising=False)
        for name, value in environment.items():
            env.setenv(name, value)
        system = Pipeline(endpoint, session, res)
        _reset_cached_clients(system)
        yield system
        _reset_cached_clients(system)
    server.stop()


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


def _series(slices: int, description: str) -> list[pydicom.Dataset]:
    return [_planted(ds) for ds in demo.ct_series(slices, "20240315", description, size=32)]


def _shipped(name: str) -> pydicom.Dataset:
    return _planted(pydicom.dcmread(get_testdata_file(name)))


def _bytes(ds: pydicom.Dataset) -> bytes:
    return demo.part10_bytes(ds)


def test_mixed_batch_ends_each_object_in_one_place(pipeline, log_lines, capfd):
    ct = _series(20, "ZQX STUDY CT")
    mr, ct_small = _shipped("MR_small.dcm"), _shipped("CT_small.dcm")
    burned = _shipped("CT_small.dcm")
    burned.SOPInstanceUID = burned.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    burned.BurnedInAnnotation = "YES"
    truncated_ct = _bytes(ct[0])[:-500]
    accepted = {
        **{f"hospital-a/ZQXPLANTSURNAME ZQXGIVEN/ct series/slice {n:02d}.dcm": _bytes(ds) for n, ds in enumerate(ct)},
        "hospital-a/deep/a/b/c/d/e/f/Ünïcødé fïlé +plus+ & more.dcm": _bytes(mr),
        "hospital-b/2024/03/CT small.dcm": _bytes(ct_small),
    }
    duplicates = {"hospital-a/again/ZQXPLANTSURNAME slice 00 copy.dcm": _bytes(ct[0])}
    refused = {
        "hospital-a/broken/MR_truncated.dcm": (Path(get_testdata_file("MR_truncated.dcm")).read_bytes(), "truncated"),
        "hospital-a/broken/cut ZQXPLANTSURNAME.dcm": (truncated_ct, "truncated"),
        "hospital-a/notes/readme ZQXPLANTSURNAME.txt": (b"Patient ZQXPLANTSURNAME, not DICOM\n", "not_dicom"),
        "hospital-a/empty.dcm": (b"", "empty_object"),
        "hospital-a/burned in.dcm": (_bytes(burned), "burned_in_annotation"),
        "someone-else/ZQXPLANTSURNAME.dcm": (_bytes(ct_small), "unknown_partner"),
        "loose file.dcm": (_bytes(ct_small), "unknown_partner"),
    }
    for key, body in {**accepted, **duplicates}.items():
        pipeline.upload(key, body)
    for key, (body, _) in refused.items():
        pipeline.upload(key, body)
    pipeline.run()

    s3 = pipeline.client("s3")
    r = pipeline.resources
    assert s3.list_object_versions(Bucket=r.ingest_bucket).get("Versions", []) == []
    instances = [i for i in pipeline.items() if i[index.SK].startswith("INSTANCE#")]
    assert len(instances) == len(accepted)
    assert sorted(pipeline.keys(r.deid_bucket)) == sorted(i["s3_key"] for i in instances)
    for item in instances:
        assert item["s3_key"] == index.deidentified_object_key(item["study_uid"], item["series_uid"],
                                                               item["sop_instance_uid"])
        body = s3.get_object(Bucket=r.deid_bucket, Key=item["s3_key"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (item["size"], item["sha256"])

    quarantined = {}
    for key in pipeline.keys(r.quarantine_bucket):
        tags = s3.get_object_tagging(Bucket=r.quarantine_bucket, Key=key)["TagSet"]
        head = s3.head_object(Bucket=r.quarantine_bucket, Key=key)
        assert head["Metadata"]["reason"] == {t["Key"]: t["Value"] for t in tags}["reason"]
        quarantined[key] = head["Metadata"]["reason"]
    records = {i["original_key_sha256"]: i for i in pipeline.items() if i[index.SK] == "QUARANTINE"}
    assert len(records) == len(quarantined) == len(refused)
    for key, (body, reason) in refused.items():
        record = records[hashlib.sha256(key.encode()).hexdigest()]
        assert (record["reason"], record["size"]) == (reason, len(body))
        assert quarantined[record["quarantine_key"]] == reason
        expected_partner = key.split("/")[0] if key.startswith("hospital-") else "unknown"
        assert record["quarantine_key"].startswith(f"{expected_partner}/")
        assert s3.get_object(Bucket=r.quarantine_bucket, Key=record["quarantine_key"])["Body"].read() == body

    study = pipeline.study(ct[0].StudyInstanceUID)
    ct_sizes = sum(i["size"] for i in instances if i["study_uid"] == study["study_uid"])
    assert (study["instance_count"], study["series_count"], study["total_bytes"]) == (20, 1, ct_sizes)
    assert study["modalities"] == {"CT"} and study["partner"] == "hospital-a"
    assert study["gsi1pk"] == f"PATIENT#{study['patient_pseudonym']}"
    series = next(i for i in pipeline.items() if i[index.SK] == f"SERIES#{instances[0]['series_uid']}"
                  and i["study_uid"] == instances[0]["study_uid"])
    assert series["instance_count"] == sum(1 for i in instances if i["series_uid"] == series["series_uid"])
    assert pipeline.study(mr.StudyInstanceUID)["instance_count"] == 1
    small = pipeline.study(ct_small.StudyInstanceUID)
    assert (small["instance_count"], small["partner"], small["modalities"]) == (1, "hospital-b", {"CT"})

    index_dump = json.dumps(pipeline.items(), default=str)
    stored = b"".join(s3.get_object(Bucket=r.deid_bucket, Key=k)["Body"].read() for k in pipeline.keys(r.deid_bucket))
    logs = log_lines.getvalue() + capfd.readouterr().out
    assert '"outcome":"quarantined"' in logs.replace(" ", "") and "key_sha256" in logs
    for planted in PLANTED_STRINGS:
        assert planted.encode() not in stored
        assert planted not in index_dump
        assert planted not in logs
    assert "Ünïcødé" not in logs and "Ünïcødé" not in index_dump


def test_redelivered_events_and_stream_records_change_nothing(pipeline):
    for ds in _series(3, "REDELIVERY"):
        pipeline.upload(f"hospital-a/redelivery/{ds.InstanceNumber}.dcm", _bytes(ds))
    pipeline.run()
    before = sorted(json.dumps(i, default=str, sort_keys=True) for i in pipeline.items())
    deid_before = pipeline.keys(pipeline.resources.deid_bucket)

    for event in list(pipeline.sqs_events):
        assert pipeline.ingest_handler.handler(event, pollers.LambdaContext("ingest", 60)) == {"batchItemFailures": []}
    for event in list(pipeline.stream_events):
        assert pipeline.counts_handler.handler(event, pollers.LambdaContext("counts", 60)) == {"batchItemFailures": []}
    pipeline.run()

    assert sorted(json.dumps(i, default=str, sort_keys=True) for i in pipeline.items()) == before
    assert pipeline.keys(pipeline.resources.deid_bucket) == deid_before


def test_same_file_twice_in_one_batch_counts_once(pipeline):
    (ds,) = _series(1, "TWICE")
    for key in ("hospital-a/twice/one.dcm", "hospital-a/twice/two.dcm"):
        pipeline.upload(key, _bytes(ds))
    pipeline.run()
    study = pipeline.study(ds.StudyInstanceUID)
    assert (study["instance_count"], study["series_count"]) == (1, 1)
    assert not pipeline.keys(pipeline.resources.ingest_bucket)


def test_killed_after_storing_before_indexing_converges(pipeline):
    """A Lambda killed after writing the de-identified object, before the index put: the
    retry rewrites the same bytes to the same key, indexes once, then deletes."""
    series = _series(2, "KILLED")
    key = "hospital-a/killed/first.dcm"
    s3 = pipeline.client("s3")
    pipeline.upload(key, _bytes(series[0]))
    first = deidentify_object(
        s3, pipeline.resources.ingest_bucket, key, pipeline.resources.deid_bucket,
        lambda plan: index.deidentified_object_key(plan.study_instance_uid, plan.series_instance_uid,
                                                   plan.sop_instance_uid),
        profile=for_partner(SETTINGS.partners[0].options), secret=SECRET.encode(), settings=SETTINGS,
        size=len(_bytes(series[0])))
    pipeline.upload("hospital-a/killed/second.dcm", _bytes(series[1]))
    pipeline.run()

    study = pipeline.study(series[0].StudyInstanceUID)
    assert (study["instance_count"], study["series_count"]) == (2, 1)
    stored = s3.get_object(Bucket=pipeline.resources.deid_bucket, Key=first.key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == first.sha256
    versions = s3.list_object_versions(Bucket=pipeline.resources.deid_bucket, Prefix=first.key)["Versions"]
    assert len({v["ETag"] for v in versions}) == 1
    assert not pipeline.keys(pipeline.resources.ingest_bucket)


def test_killed_after_indexing_before_delete_converges(pipeline):
    """The original still in the ingest bucket after its instance was indexed (a Lambda
    killed before the delete, or the same file uploaded again): one instance, exact counts."""
    (ds,) = _series(1, "KILLED LATE")
    pipeline.upload("hospital-a/late/one.dcm", _bytes(ds))
    pipeline.run()
    pipeline.upload("hospital-a/late/one.dcm", _bytes(ds))
    pipeline.run()
    study = pipeline.study(ds.StudyInstanceUID)
    assert study["instance_count"] == 1
    instances = [i for i in pipeline.items() if i.get("study_uid") == study["study_uid"]
                 and i[index.SK].startswith("INSTANCE#")]
    assert len(instances) == 1 and study["total_bytes"] == instances[0]["size"]
    assert not pipeline.client("s3").list_object_versions(Bucket=pipeline.resources.ingest_bucket).get("Versions")


def test_test_event_and_already_processed_are_not_failures(pipeline, log_lines):
    context = pollers.LambdaContext("ingest", 60)
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": pipeline.resources.ingest_bucket}
    gone = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": pipeline.resources.ingest_bucket},
                                "object": {"key": "hospital-a/never+uploaded.dcm", "size": 10}}}]}
    event = {"Records": [{
        "messageId": f"m{n}", "receiptHandle": "r", "body": json.dumps(body), "attributes": {},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1",
    } for n, body in enumerate((test_event, gone))]}
    assert pipeline.ingest_handler.handler(event, context) == {"batchItemFailures": []}
    assert '"outcome":"already_processed"' in log_lines.getvalue().replace(" ", "")


def test_study_event_is_emitted_per_study(pipeline):
    sqs = pipeline.client("sqs")
    while sqs.receive_message(QueueUrl=pipeline.resources.events_queue_url, MaxNumberOfMessages=10).get("Messages"):
        pass
    series = _series(4, "EVENTS")
    for ds in series:
        pipeline.upload(f"hospital-a/events/{ds.InstanceNumber}.dcm", _bytes(ds))
    pipeline.run()
    study = pipeline.study(series[0].StudyInstanceUID)
    messages = sqs.receive_message(QueueUrl=pipeline.resources.events_queue_url, MaxNumberOfMessages=10)["Messages"]
    events = [json.loads(m["Body"]) for m in messages]
    mine = [e for e in events if e["detail"]["study_uid"] == study["study_uid"]]
    assert sum(e["detail"]["new_instances"] for e in mine) == 4
    assert {(e["source"], e["detail-type"], e["detail"]["partner"]) for e in mine} == {
        (resources.EVENT_SOURCE, "StudyInstancesReceived", "hospital-a")}
