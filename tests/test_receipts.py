"""Receipts: one per uploaded object, written by the ingest path, read by its partner only.

Runs against the local system (moto server over HTTP, the real ingest handler behind the
local SQS poller, the real API behind the local gateway).
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import pydicom
from pydicom.data import get_testdata_file

from dicomshare import index_items
from conftest import fresh_uids
from dicomshare_local import demo
from dicomshare_local.system import SECRET_FILE

PHI = "RECEIPT^PLANTED^NAME"


def planted_file(name: str = PHI, slice_size: int = 32) -> bytes:
    ds = next(demo.ct_series(1, "20240102", f"CT {name}", size=slice_size))
    ds.PatientName = name
    ds.PatientID = "MRN-RECEIPT-777"
    return demo.part10_bytes(ds)


def partner_call(api, token: str, path: str):
    return api.call("GET", path, admin=False, headers={"Authorization": f"Bearer {token}"})


def all_receipts(api, token: str | None, query: str = "") -> list[dict]:
    found, page = [], None
    while True:
        path = f"/receipts?limit=2{query}" + (f"&next={page}" if page else "")
        status, body = (partner_call(api, token, path) if token else api.call("GET", path))
        assert status == 200, body
        found += body["receipts"]
        page = body["next"]
        if not page:
            return found


@pytest.fixture(scope="module")
def uploaded(local_system):
    """Both partners upload; one object each is refused; one is sent twice under two keys."""
    s3 = local_system.client("s3")
    bucket = local_system.resources.ingest_bucket
    good = planted_file()
    upload_id = hashlib.sha256(b"1.2.3.4.5").hexdigest()
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    objects = {
        f"demo-partner/{PHI}/a.dcm": (good, {"upload-id": upload_id}),
        f"demo-partner/{PHI}/again.dcm": (good, {"upload-id": "NOT A HASH " + PHI}),
        "demo-partner/notes.txt": (f"patient {PHI}".encode(), {}),
        "basic-partner/mr.dcm": (demo.part10_bytes(fresh_uids(pydicom.dcmread(get_testdata_file("MR_small.dcm")))), {}),
        "basic-partner/empty.dcm": (b"", {}),
    }
    for key, (body, metadata) in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
    local_system.wait_idle(timeout=300)
    return objects, upload_id, since


def test_each_object_has_one_receipt_for_its_partner(local_system, api, uploaded):
    objects, upload_id, since = uploaded
    secret = (local_system.state_dir / SECRET_FILE).read_text().strip().encode()

    def fingerprint(key: str) -> str:
        return index_items.key_fingerprint(secret, key)

    demo_receipts = [r for r in all_receipts(api, local_system.partner_tokens["demo-partner"], f"&since={since}")
                     if r["key_hmac"] in {fingerprint(k) for k in objects}]
    by_key = {r["key_hmac"]: r for r in demo_receipts}
    assert len(demo_receipts) == len(by_key) == 3
    first = by_key[fingerprint(f"demo-partner/{PHI}/a.dcm")]
    second = by_key[fingerprint(f"demo-partner/{PHI}/again.dcm")]
    text = by_key[fingerprint("demo-partner/notes.txt")]
    assert sorted([first["outcome"], second["outcome"]]) == ["duplicate", "ingested"]
    assert first["upload_id"] == upload_id and "upload_id" not in second, "free text is never stored"
    assert first["sop_instance_uid"] == second["sop_instance_uid"] and first["study_uid"].startswith("2.25.")
    assert (text["outcome"], text["reason"]) == ("quarantined", "not_dicom")
    assert "study_uid" not in text
    for receipt in demo_receipts:
        assert receipt["partner"] == "demo-partner" and len(receipt["object_fingerprint"]) == 32


def test_a_partner_never_sees_another_partners_receipts(local_system, api, uploaded):
    tokens = local_system.partner_tokens
    basic = all_receipts(api, tokens["basic-partner"])
    assert {r["partner"] for r in basic} == {"basic-partner"}
    assert {r["outcome"] for r in basic} >= {"ingested", "quarantined"}
    status, body = partner_call(api, tokens["basic-partner"], "/receipts?partner=demo-partner")
    assert (status, body["error"]) == (403, "other_partner")
    _, own = partner_call(api, tokens["demo-partner"], "/receipts?limit=1")
    status, body = partner_call(api, tokens["basic-partner"], f"/receipts?next={own['next']}")
    assert (status, body["error"]) == (422, "invalid_next"), "a page token of one partner opens nothing of another"


def test_a_partner_token_reaches_the_receipts_route_only(local_system, api):
    token = local_system.partner_tokens["demo-partner"]
    for path in ("/studies", "/shares", "/openapi.json"):
        status, _ = partner_call(api, token, path)
        assert status == 403, path


def test_admins_name_the_partner(api, uploaded):
    status, body = api.call("GET", "/receipts")
    assert (status, body["error"]) == (422, "partner_required")
    assert {r["partner"] for r in all_receipts(api, None, "&partner=basic-partner")} == {"basic-partner"}
    status, body = api.call("GET", "/receipts?since=yesterday&partner=demo-partner")
    assert status == 422


def test_every_receipt_is_an_event_and_no_receipt_holds_a_planted_value(local_system, uploaded):
    sqs = local_system.client("sqs")
    details = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=local_system.resources.events_queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
        details += [json.loads(m["Body"]) for m in messages]
        if not messages and details:
            break
    receipts = [d for d in details if d["detail-type"] == "ObjectReceipt"]
    assert {r["detail"]["partner"] for r in receipts} >= {"demo-partner", "basic-partner"}
    table = local_system.client("dynamodb")
    items = table.scan(TableName=local_system.resources.table_name)["Items"]
    stored = [i for i in items if i["pk"]["S"].startswith("RECEIPT#")]
    assert stored
    for text in (json.dumps(stored), json.dumps(details)):
        for planted in (PHI, "MRN-RECEIPT-777", "NOT A HASH", "RECEIPT^PLANTED"):
            assert planted not in text
