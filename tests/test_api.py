"""The share API over real HTTP against the local system (moto server, real handlers)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pydicom
import pytest

from dicomshare import index
from dicomshare.shares import MAX_PIN_FAILURES
from indexed_study import put_study


@pytest.fixture(scope="module")
def studies(local_system):
    """Two studies of one patient (a prior and a current one) and an unrelated study."""
    prior = put_study(local_system, pseudonym="PSEUDO-API-1", study_date="20200105", slices=2)
    current = put_study(local_system, pseudonym="PSEUDO-API-1", study_date="20240301", slices=3, series=2)
    other = put_study(local_system, pseudonym="PSEUDO-API-2", study_date="20230101", slices=1)
    local_system.wait_idle()
    return {"prior": prior, "current": current, "other": other}


def create(api, study_uid: str, **options) -> dict:
    status, body = api.call("POST", "/shares", {"study_uid": study_uid, "expires_in": 3600, **options})
    assert status == 201, body
    return body


def redeem(api, token: str | None, pin: str | None = None, accept: str | None = None):
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Share {token}"
    if pin is not None:
        headers["X-Share-Pin"] = pin
    if accept:
        headers["Accept"] = accept
    return api.call("POST", "/redeem", headers=headers, admin=False)


def read(api, route: str, token: str, pin: str | None = None, **query):
    """One ``GET /share/<route>`` page (token and PIN as on /redeem)."""
    headers = {"Authorization": f"Share {token}"}
    if pin is not None:
        headers["X-Share-Pin"] = pin
    return api.call("GET", f"/share/{route}?{urllib.parse.urlencode(query)}", headers=headers, admin=False)


def all_pages(api, route: str, token: str, study_uid: str, series_uid: str, pin: str | None = None) -> list[dict]:
    pages, following = [], None
    while True:
        query = {"study_uid": study_uid, "series_uid": series_uid, **({"next": following} if following else {})}
        status, page = read(api, route, token, pin, **query)
        assert status == 200, page
        pages.append(page)
        following = page["next"]
        if following is None:
            return pages


def share_instances(api, token: str, manifest: dict, pin: str | None = None) -> list[dict]:
    return [instance for study in manifest["studies"] for series in study["series"]
            for page in all_pages(api, "instances", token, study["study_uid"], series["series_uid"], pin)
            for instance in page["instances"]]


def audit_outcomes(api, share_id: str) -> list[tuple[str, str]]:
    status, body = api.call("GET", f"/shares/{share_id}/audit")
    assert status == 200
    return [(r["action"], r["outcome"]) for r in body["audit"]]


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def share_items(local_system) -> int:
    pages = local_system.client("dynamodb").get_paginator("scan").paginate(
        TableName=local_system.resources.table_name, Select="COUNT",
        FilterExpression="begins_with(#pk, :share)", ExpressionAttributeNames={"#pk": index.PK},
        ExpressionAttributeValues={":share": {"S": "SHARE#"}})
    return sum(page["Count"] for page in pages)


def test_share_links_point_to_the_configured_share_origin(api, local_system, studies):
    """Links use the share origin (on AWS, CloudFront's, which the web stack writes into SSM),
    not the address the admin called; the local system writes its gateway's origin there.
    Until the origin exists no share is made: a clear 503."""
    from aws_lambda_powertools.utilities import parameters

    ssm, name = local_system.client("ssm"), local_system.resources.share_origin_parameter
    local_origin, stage = local_system.api_url.rsplit("/", 1)
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == local_origin
    try:
        ssm.put_parameter(Name=name, Value="https://d111111abcdef8.cloudfront.net", Type="String", Overwrite=True)
        parameters.clear_caches()
        share = create(api, studies["current"].study_uid)
        assert share["url"] == f"https://d111111abcdef8.cloudfront.net/{stage}/view#{share['token']}"
        ssm.delete_parameter(Name=name)
        parameters.clear_caches()
        before = share_items(local_system)
        status, body = api.call("POST", "/shares", {"study_uid": studies["current"].study_uid, "expires_in": 3600})
        assert (status, body["error"]) == (503, "share_origin_unavailable")
        assert share_items(local_system) == before
    finally:
        ssm.put_parameter(Name=name, Value=local_origin, Type="String", Overwrite=True)
        parameters.clear_caches()
    assert create(api, studies["current"].study_uid)["url"].startswith(f"{local_system.api_url}/view#")


def test_lifecycle_create_redeem_download_revoke(api, local_system, studies):
    current = studies["current"]
    share = create(api, current.study_uid, recipient="Dr Second Opinion")
    assert share["url"] == f"{local_system.api_url}/view#{share['token']}"
    assert len(share["token"]) >= 43

    status, manifest = redeem(api, share["token"])
    assert status == 200, manifest
    [study] = manifest["studies"]
    assert study["study_uid"] == current.study_uid
    assert study["patient_pseudonym"] == "PSEUDO-API-1"
    assert study["instance_count"] == 6 and study["series_count"] == 2
    assert [(s["series_number"], s["instance_count"]) for s in study["series"]] == [(1, 3), (2, 3)]
    assert all("instances" not in s for s in study["series"])  # constant size: instances come in pages
    instances = share_instances(api, share["token"], manifest)
    assert {i["sop_instance_uid"] for i in instances} == set(current.files)
    for instance in instances[:2]:
        data = download(instance["url"])
        assert data == current.files[instance["sop_instance_uid"]]
        assert hashlib.sha256(data).hexdigest() == instance["sha256"]
        assert download(instance["preview_url"]).startswith(b"\x89PNG")
    [page] = all_pages(api, "dicomjson", share["token"], current.study_uid, study["series"][0]["series_uid"])
    ohif = page["studies"][0]
    assert ohif["StudyInstanceUID"] == current.study_uid and ohif["series"][0]["SeriesNumber"] == 1
    first = ohif["series"][0]["instances"][0]
    assert first["url"].startswith("dicomweb:http") and len(ohif["series"][0]["instances"]) == 3
    assert first["metadata"]["Rows"] == 64 and len(first["metadata"]["ImageOrientationPatient"]) == 6

    status, inspected = api.call("GET", f"/shares/{share['share_id']}")
    assert status == 200 and inspected["redemptions"] == 1 and inspected["status"] == "active"
    assert share["token"] not in json.dumps(inspected)

    status, revoked = api.call("DELETE", f"/shares/{share['share_id']}")
    assert status == 200 and revoked["status"] == "revoked"
    status, body = redeem(api, share["token"])
    assert (status, body["error"]) == (410, "revoked")
    assert audit_outcomes(api, share["share_id"]) == [
        ("create", "ok"), ("redeem", "ok"), ("revoke", "ok"), ("redeem", "revoked")]
    record = api.call("GET", f"/shares/{share['share_id']}/audit")[1]["audit"][0]
    assert record["who"].startswith("arn:aws:sts::") and record["source_ip"] == "127.0.0.1"


def test_first_redemption_emits_one_event(api, local_system, studies):
    share = create(api, studies["other"].study_uid)
    assert redeem(api, share["token"])[0] == 200
    assert redeem(api, share["token"])[0] == 200
    sqs = local_system.client("sqs")
    found = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not found:
        for message in sqs.receive_message(QueueUrl=local_system.resources.events_queue_url,
                                           MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            event = json.loads(message["Body"])
            if event["detail-type"] == "ShareFirstRedeemed" and event["detail"]["share_id"] == share["share_id"]:
                found.append(event)
                assert share["token"] not in message["Body"]
    assert len(found) == 1


def test_expired_share_is_refused(api, local_system, studies):
    share = create(api, studies["other"].study_uid)
    local_system.client("dynamodb").update_item(
        TableName=local_system.resources.table_name,
        Key={k: {"S": v} for k, v in index.share_key(share["share_id"]).items()},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    status, body = redeem(api, share["token"])
    assert (status, body["error"]) == (410, "expired")
    assert api.call("GET", f"/shares/{share['share_id']}")[1]["status"] == "expired"


def test_pin_required_wrong_lockout_and_unlock(api, studies):
    share = create(api, studies["other"].study_uid, pin="471193")
    status, body = redeem(api, share["token"])
    assert (status, body["error"]) == (403, "pin_required")
    for attempt in range(1, MAX_PIN_FAILURES):
        status, body = redeem(api, share["token"], pin="0000")
        assert (status, body["error"], body["attempts_left"]) == (403, "wrong_pin", MAX_PIN_FAILURES - attempt)
    status, body = redeem(api, share["token"], pin="0000")
    assert (status, body["error"]) == (410, "locked")
    assert redeem(api, share["token"], pin="471193")[1]["error"] == "locked"
    status, unlocked = api.call("POST", f"/shares/{share['share_id']}/unlock")
    assert status == 200 and unlocked["status"] == "active"
    assert redeem(api, share["token"], pin="471193")[0] == 200
    outcomes = audit_outcomes(api, share["share_id"])
    assert ("redeem", "pin_required") in outcomes and ("unlock", "ok") in outcomes
    assert outcomes.count(("redeem", "wrong_pin")) == MAX_PIN_FAILURES - 1


def test_max_redemptions_is_enforced(api, studies):
    share = create(api, studies["other"].study_uid, max_redemptions=1)
    assert redeem(api, share["token"])[0] == 200
    status, body = redeem(api, share["token"])
    assert (status, body["error"]) == (410, "exhausted")


@pytest.mark.parametrize("authorization", ["Share AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Share x"])
def test_unknown_tokens_get_404_without_a_hint(api, authorization):
    status, body = api.call("POST", "/redeem", headers={"Authorization": authorization}, admin=False)
    assert status == 404
    assert body == {"error": "unknown_link", "message": "This link is not valid."}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer something"}, {"Authorization": "Share "}])
def test_missing_token_is_refused(api, headers):
    status, body = api.call("POST", "/redeem", headers=headers, admin=False)
    assert (status, body["error"]) == (401, "token_required")


def test_view_only_share_has_no_dicom_urls(api, studies):
    share = create(api, studies["other"].study_uid, allow_download=False)
    status, manifest = redeem(api, share["token"])
    assert status == 200 and manifest["share"]["allow_download"] is False
    instances = share_instances(api, share["token"], manifest)
    assert instances and all("url" not in i and i["preview_url"] for i in instances)
    series = manifest["studies"][0]["series"][0]["series_uid"]
    status, body = read(api, "dicomjson", share["token"], study_uid=studies["other"].study_uid, series_uid=series)
    assert (status, body["error"]) == (403, "view_only")


def test_include_priors_shares_the_earlier_study(api, studies):
    share = create(api, studies["current"].study_uid, include_priors=True)
    assert share["study_uids"] == [studies["current"].study_uid, studies["prior"].study_uid]
    status, manifest = redeem(api, share["token"])
    assert [(s["study_uid"], s["prior"]) for s in manifest["studies"]] == [
        (studies["current"].study_uid, False), (studies["prior"].study_uid, True)]
    assert len(share_instances(api, share["token"], manifest)) == 8
    status, detail = api.call("GET", f"/studies/{studies['current'].study_uid}")
    assert [p["study_uid"] for p in detail["priors"]] == [studies["prior"].study_uid]
    assert [s["instance_count"] for s in detail["series"]] == [3, 3]


def test_key_object_selection_manifest(api, studies):
    current = studies["current"]
    share = create(api, current.study_uid)
    status, payload = redeem(api, share["token"], accept="application/dicom")
    assert status == 200
    ds = pydicom.dcmread(io.BytesIO(payload))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert (ds.ConceptNameCodeSequence[0].CodeValue, ds.ConceptNameCodeSequence[0].CodeMeaning) == ("113030", "Manifest")
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == set(current.files)
    assert str(ds.PatientID) == "PSEUDO-API-1"


def test_server_generated_pin_is_returned_once_and_opens_the_share(api, studies):
    share = create(api, studies["other"].study_uid, generate_pin=True)
    assert re.fullmatch(r"[0-9]{8}", share["pin"])
    assert redeem(api, share["token"])[1]["error"] == "pin_required"
    assert redeem(api, share["token"], pin=share["pin"])[0] == 200
    status, view = api.call("GET", f"/shares/{share['share_id']}")
    assert view["pin_protected"] and share["pin"] not in json.dumps(view)
    assert create(api, studies["other"].study_uid)["pin"] is None


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    ({}, "study_uid"),
    ({"study_uid": "not a uid"}, "study_uid"),
    ({"study_uid": "1.2.3", "expires_in": "soon"}, "expires_in"),
    ({"study_uid": "1.2.3", "pin": "Zq!"}, "pin"),
    ({"study_uid": "1.2.3", "colour": "red"}, "colour"),
    ({"study_uid": "1.2.3", "max_redemptions": 0}, "max_redemptions"),
    (b"\xff\xfe{\"study_uid\": \"1.2.3\"}", "body"),
    (b"{\"study_uid\": \"1.2.\xff\"}", "body"),
    ('{"study_uid": "1.2.3"}'.encode("utf-16"), "body"),
    (b"\x00", "body"),
    (b"[1, 2]", "body"),
    (b"null", "body"),
    ({"study_uid": "1.2.3", "pin": "0000"}, "pin"),
    ({"study_uid": "1.2.3", "pin": "      "}, "pin"),
    ({"study_uid": "1.2.3", "pin": "777777"}, "pin"),
    ({"study_uid": "1.2.3", "pin": "123456"}, "pin"),
    ({"study_uid": "1.2.3", "pin": "987654"}, "pin"),
    ({"study_uid": "1.2.3", "pin": "abcdefg"}, "pin"),
    ({"study_uid": "1.2.3", "pin": "Zq!x-9", "generate_pin": True}, "pin"),
])
def test_malformed_create_bodies_get_422_with_a_reason(api, body, field):
    status, answer = api.call("POST", "/shares", body)
    assert status == 422, answer
    assert answer["error"] == "invalid_request" and field in answer["message"]
    assert "Traceback" not in json.dumps(answer) and "Zq!" not in json.dumps(answer)


def test_out_of_range_expiry_and_unknown_study(api, studies, local_settings):
    status, body = api.call("POST", "/shares", {"study_uid": studies["other"].study_uid,
                                                "expires_in": local_settings.share_max_seconds + 1})
    assert (status, body["error"]) == (422, "expires_in_out_of_range")
    status, body = api.call("POST", "/shares", {"study_uid": "1.2.3.4.5"})
    assert (status, body["error"]) == (404, "unknown_study")
    assert api.call("GET", "/shares/0123456789abcdef")[0] == 404
    assert api.call("GET", "/shares/not-an-id")[0] == 422
    assert api.call("GET", "/nowhere") == (404, {"error": "no_such_route", "message": "No such route."})


@pytest.mark.parametrize("method, path", [("GET", "/shares"), ("POST", "/shares"), ("GET", "/studies"),
                                          ("DELETE", "/shares/0123456789abcdef"), ("GET", "/openapi.json")])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"])
def test_admin_routes_refuse_missing_or_bad_credentials(api, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    status, body = api.call(method, path, {}, headers=headers, admin=False)
    assert status == 403 and body["error"]


@pytest.mark.parametrize("identity", [
    {},
    {"caller": "AROAEXAMPLE:alice"},
    {"userArn": "arn:aws:sts::000000000000:assumed-role/someone-else/alice"},
    {"userArn": "arn:aws:sts::111111111111:assumed-role/dicomshare-local-admin/alice"},
    {"userArn": "arn:aws:iam::000000000000:user/dicomshare-local-admin"},
])
def test_handler_refuses_admin_events_of_callers_not_named_admin(local_system, identity):
    """Behind the resource policy, the handler checks the caller against the same list."""
    from dicomshare_local.pollers import LambdaContext
    from lambdas.api.handler import handler

    event = {"httpMethod": "GET", "path": "/shares", "headers": {}, "requestContext": {"identity": identity}}
    response = handler(event, LambdaContext("api", 29))
    assert response["statusCode"] == 403 and json.loads(response["body"])["error"] == "admin_only"


def test_study_listing_pages_and_openapi(api, studies):
    status, first = api.call("GET", "/studies?limit=1")
    assert status == 200 and len(first["studies"]) == 1 and first["next"]
    assert {"study_uid", "instance_count", "series_count", "modalities"} <= set(first["studies"][0])
    status, second = api.call("GET", f"/studies?limit=1&next={first['next']}")
    assert status == 200 and second["studies"][0]["study_uid"] != first["studies"][0]["study_uid"]
    assert api.call("GET", "/studies?next=garbage")[1]["error"] == "invalid_next"
    assert api.call("GET", "/studies?limit=0")[0] == 422
    status, listing = api.call("GET", "/shares?limit=2")
    assert status == 200 and all("token" not in s for s in listing["shares"])
    status, schema = api.call("GET", "/openapi.json")
    assert status == 200 and {"/shares", "/redeem", "/studies/{study_uid}", "/share/instances", "/share/dicomjson",
                              "/share/manifest"} <= set(schema["paths"])


def test_token_never_reaches_logs_or_the_index(api, local_system, studies, caplog):
    pin = "Zq9!pin-never-stored"
    share = create(api, studies["other"].study_uid, pin=pin)
    token = share["token"]
    redeem(api, token)
    redeem(api, token, pin="1357")
    redeem(api, token, pin=pin)
    api.call("DELETE", f"/shares/{share['share_id']}")
    redeem(api, token)
    logged = json.dumps([record.__dict__ for record in caplog.records], default=str)
    assert "share redeemed" in logged and "redemption refused" in logged
    assert token not in logged and pin not in logged
    pages = local_system.client("dynamodb").get_paginator("scan").paginate(TableName=local_system.resources.table_name)
    items = [item for page in pages for item in page["Items"]]
    assert token not in json.dumps(items) and pin not in json.dumps(items)


@pytest.mark.parametrize("endpoint_url, region, addressing", [
    (None, "eu-west-1", "virtual"), ("http://127.0.0.1:5000", "us-east-1", "path")])
def test_presigned_urls_match_botocore_signature_for_signature(monkeypatch, endpoint_url, region, addressing):
    import datetime
    from urllib.parse import parse_qs, urlsplit

    import boto3
    import botocore.auth
    from botocore.config import Config

    from dicomshare_aws.s3_presign import Presigner

    moment = datetime.datetime(2026, 11, 23, 10, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    credentials = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "se/cr+et", "aws_session_token": "to/k+en=="}
    client = boto3.client("s3", region_name=region, endpoint_url=endpoint_url, **credentials,
                          config=Config(signature_version="s3v4", s3={"addressing_style": addressing}))
    key = "studies/1.2.3/series/4.5/instances/6.7 a+b~.dcm"
    expected = urlsplit(client.generate_presigned_url(
        "get_object", Params={"Bucket": "deid-bucket", "Key": key}, ExpiresIn=600))
    ours = urlsplit(Presigner(
        access_key="AKIDEXAMPLE", secret_key="se/cr+et", token="to/k+en==", region=region, bucket="deid-bucket",
        expires_in=600, endpoint_url=endpoint_url, now=moment.replace(tzinfo=datetime.timezone.utc)).url(key))
    assert (ours.scheme, ours.netloc, ours.path) == (expected.scheme, expected.netloc, expected.path)
    assert parse_qs(ours.query) == parse_qs(expected.query)


def test_concurrent_redemptions_never_exceed_max_redemptions(api, studies):
    from concurrent.futures import ThreadPoolExecutor

    share = create(api, studies["other"].study_uid, max_redemptions=3)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(status for status, _ in pool.map(lambda _: redeem(api, share["token"]), range(8)))
    assert statuses == [200] * 3 + [410] * 5
    assert api.call("GET", f"/shares/{share['share_id']}")[1]["redemptions"] == 3


def test_api_handler_import_needs_no_pydicom_numpy_or_highdicom():
    import subprocess
    import sys

    probe = ("import sys, lambdas.api.handler; "
             "print(','.join(m for m in ('pydicom', 'numpy', 'highdicom') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_every_response_says_no_store(api, studies):
    share = create(api, studies["other"].study_uid)
    requests = [("GET", "/studies", None, True), ("GET", f"/studies/{studies['other'].study_uid}", None, True),
                ("GET", "/shares", None, True), ("GET", f"/shares/{share['share_id']}", None, True),
                ("GET", "/openapi.json", None, True), ("GET", "/nowhere", None, True),
                ("POST", "/shares", {"study_uid": "bad"}, True), ("GET", "/view", None, False),
                ("POST", "/redeem", None, False)]
    for method, path, body, admin in requests:
        headers = {"Content-Type": "application/json"}
        if admin:
            headers["Authorization"] = f"Bearer {api.admin_token}"
        request = urllib.request.Request(api.base_url + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                cache = response.headers.get_all("Cache-Control")
        except urllib.error.HTTPError as error:
            cache = error.headers.get_all("Cache-Control")
        assert cache == ["no-store"], (method, path, cache)


def test_pages_follow_next_and_split_multi_frame_instances(api, studies, monkeypatch):
    from dicomshare import manifest as manifest_module

    current = studies["current"]
    share = create(api, current.study_uid)
    manifest = redeem(api, share["token"])[1]
    series = manifest["studies"][0]["series"][1]["series_uid"]
    monkeypatch.setattr(manifest_module, "INSTANCES_PER_PAGE", 2)
    pages = all_pages(api, "instances", share["token"], current.study_uid, series)
    assert [len(p["instances"]) for p in pages] == [2, 1]
    assert len({i["sop_instance_uid"] for p in pages for i in p["instances"]}) == 3
    monkeypatch.setattr(manifest_module, "PAGE_BYTES", 1)  # one entry per page
    pages = all_pages(api, "dicomjson", share["token"], current.study_uid, series)
    assert [len(p["studies"][0]["series"][0]["instances"]) for p in pages] == [1, 1, 1]


def test_multi_frame_entries_end_with_the_frame_number():
    from dicomshare import manifest as manifest_module

    item = {"study_uid": "1.2", "series_uid": "1.2.3", "sop_instance_uid": "1.2.3.4",
            "number_of_frames": 3}
    study = {"study_uid": "1.2", "study_date": "", "study_time": "", "study_description": "",
             "patient_pseudonym": "P", "modalities": [], "instance_count": 1}
    series = {"series_uid": "1.2.3", "series_description": "", "series_number": 2, "modality": "MR"}
    document, finished, resume = manifest_module.ohif_page(study, series, [item], {},
                                                           instance_url=lambda k: f"https://s3/{k}?sig=1")
    urls = [e["url"] for e in document["studies"][0]["series"][0]["instances"]]
    key = "studies/1.2/series/1.2.3/instances/1.2.3.4.dcm"
    assert urls == [f"dicomweb:https://s3/{key}?sig=1&frame={k}" for k in (1, 2, 3)] and (finished, resume) == (1, 1)
    document, finished, resume = manifest_module.ohif_page(study, series, [item], {},
                                                           instance_url=lambda k: f"https://s3/{k}?sig=1",
                                                           first_frame=2, budget=1)
    assert [e["url"][-7:] for e in document["studies"][0]["series"][0]["instances"]] == ["frame=2"]
    assert (finished, resume) == (0, 3)


def test_reads_check_token_and_pin_but_count_no_redemption(api, studies):
    other = studies["other"]
    share = create(api, other.study_uid, pin="864213", max_redemptions=1)
    series = other.series_uids[0]
    query = {"study_uid": other.study_uid, "series_uid": series}
    assert read(api, "instances", share["token"], "864213", **query)[1]["error"] == "not_redeemed"
    assert redeem(api, share["token"], pin="864213")[0] == 200
    assert redeem(api, share["token"], pin="864213")[1]["error"] == "exhausted"
    for _ in range(3):  # an opened share stays readable: fresh URLs until it expires
        status, page = read(api, "instances", share["token"], "864213", **query)
        assert status == 200 and page["instances"][0]["url"]
    assert read(api, "instances", share["token"], **query)[1]["error"] == "pin_required"
    status, body = read(api, "instances", share["token"], "0000", **query)
    assert (status, body["error"], body["attempts_left"]) == (403, "wrong_pin", MAX_PIN_FAILURES - 1)
    assert api.call("GET", f"/shares/{share['share_id']}")[1]["redemptions"] == 1
    assert read(api, "instances", "x" * 43, **query)[1]["error"] == "unknown_link"
    assert read(api, "instances", share["token"], "864213", study_uid=studies["prior"].study_uid,
                series_uid=series)[1]["error"] == "unknown_study"
    assert read(api, "instances", share["token"], "864213", study_uid=other.study_uid,
                series_uid="1.2.3")[1]["error"] == "unknown_series"
    foreign = base64.urlsafe_b64encode(json.dumps([f"INSTANCE#{studies['prior'].series_uids[0]}#1", 1]).encode()).decode()
    for bad in ("!!", foreign):
        assert read(api, "instances", share["token"], "864213", next=bad, **query)[1]["error"] == "invalid_next"
    api.call("DELETE", f"/shares/{share['share_id']}")
    assert read(api, "instances", share["token"], "864213", **query)[1]["error"] == "revoked"
    assert ("read", "wrong_pin") in audit_outcomes(api, share["share_id"])


def test_key_object_selection_pages(api, studies, monkeypatch):
    from dicomshare import manifest as manifest_module

    current = studies["current"]
    share = create(api, current.study_uid)
    monkeypatch.setattr(manifest_module, "KOS_INSTANCES_PER_PAGE", 4)
    request = urllib.request.Request(f"{api.base_url}/redeem", method="POST", headers={
        "Authorization": f"Share {share['token']}", "Accept": "application/dicom"})
    with urllib.request.urlopen(request, timeout=60) as response:
        documents = [pydicom.dcmread(io.BytesIO(response.read()))]
        following = response.headers["X-Next-Page"]
    request = urllib.request.Request(f"{api.base_url}/share/manifest?study_uid={current.study_uid}&next={following}",
                                     headers={"Authorization": f"Share {share['token']}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        documents.append(pydicom.dcmread(io.BytesIO(response.read())))
        assert response.headers["X-Next-Page"] is None
    referenced = [item.ReferencedSOPInstanceUID for ds in documents
                  for study in ds.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence]
    assert sorted(referenced) == sorted(current.files) and len(referenced) == 6
    assert [ds.InstanceNumber for ds in documents] == [1, 2]
    assert documents[0].SOPInstanceUID != documents[1].SOPInstanceUID


def test_viewer_metadata_is_the_whole_header_without_bulk_data():
    from pydicom.data import get_testdata_file

    from dicomshare import manifest as manifest_module
    from dicomshare.index_items import MAX_DICOM_JSON, dicom_json

    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    ds.IconImageSequence = [pydicom.Dataset()]
    ds.IconImageSequence[0].PixelData = b"\0" * 64
    ds.SeriesNumber, ds.ReferencedImageSequence = "10", [pydicom.Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    stored = json.loads(dicom_json(ds))
    assert "7FE00010" not in stored and "00880200" not in stored  # pixel data, icon image
    metadata = manifest_module.naturalized({"study_uid": "1", "series_uid": "2", "sop_instance_uid": "3"}, stored)
    assert metadata["PhotometricInterpretation"] == "PALETTE COLOR"
    assert base64.b64decode(metadata["RedPaletteColorLookupTableData"]["InlineBinary"]) == \
        ds.RedPaletteColorLookupTableData
    assert metadata["RedPaletteColorLookupTableDescriptor"] == [256, 0, 16]
    assert metadata["SeriesNumber"] == 10 and metadata["Rows"] == ds.Rows  # IS as numbers
    assert metadata["ReferencedImageSequence"] == [{"ReferencedSOPInstanceUID": "1.2.3"}]
    ds.ImageComments = "x" * (MAX_DICOM_JSON + 1000)  # too large for one response: left out, the rest kept
    bounded = dicom_json(ds)
    assert len(bounded) <= MAX_DICOM_JSON and "00204000" not in json.loads(bounded) and "00280004" in bounded
