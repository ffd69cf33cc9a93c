"""The DICOM gateway with a real client nobody here wrote: dcmtk's ``storescu``/``echoscu``
send to ``dicomshare gateway``, which spools and uploads to the local system's ingest
bucket; the real pipeline indexes or quarantines every instance and records its receipt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from botocore.exceptions import EndpointConnectionError
import pytest
from pydicom.data import get_testdata_file

from dicomshare_gateway import config as gateway_config
from dicomshare_gateway.scp import Gateway
from dicomshare_gateway.spool import upload_id
from dicomshare_local import demo
from conftest import fresh_uids, require_tool

PHI_NAME = "GATEWAY^PLANTED^PATIENT"
PHI_ID = "MRN-GW-4242"
GATEWAY_AE = "DICOMSHARE"
DEMO_AE = "DEMO-PACS"
BASIC_AE = "BASIC-PACS"


def gateway_document(local_system, spool: Path, port: int = 0, **overrides) -> dict:
    return {
        "version": 1, "ae_title": GATEWAY_AE, "bind_address": "127.0.0.1", "port": port,
        "spool_dir": str(spool / "spool"), "min_free_bytes": 0,
        "upload_id_secret_file": str(spool / "upload-id-secret"),
        "upload": {"bucket": local_system.resources.ingest_bucket, "region": local_system.region,
                   "endpoint_url": local_system.endpoint_url, "retry_seconds": 0.2, "max_retry_seconds": 1},
        "partners": [{"id": "demo-partner", "calling_ae_titles": [DEMO_AE]},
                     {"id": "basic-partner", "calling_ae_titles": [BASIC_AE]}],
        **overrides,
    }


def write_planted(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    ds.PatientName, ds.PatientID = PHI_NAME, PHI_ID
    ds.InstitutionName = "Planted General " + PHI_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def mixed_folder(root: Path, slices: int = 6, size: int = 64) -> tuple[list[str], list[str]]:
    """(SOP Instance UIDs that must be indexed, those that must be quarantined); plus a
    text file storescu cannot send."""
    good, refused = [], []
    for n, ds in enumerate(demo.ct_series(slices, "20240301", "CT CHEST " + PHI_NAME, size=size)):
        good.append(write_planted(ds, root / f"{PHI_NAME}/ct/{n:03d}.dcm").SOPInstanceUID)
    mr = fresh_uids(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    good.append(write_planted(mr, root / f"{PHI_NAME}/mr.dcm").SOPInstanceUID)
    (burned,) = demo.ct_series(1, "20240301", "CT SCOUT", size=size)
    burned.BurnedInAnnotation = "YES"
    refused.append(write_planted(burned, root / "burned.dcm").SOPInstanceUID)
    (no_modality,) = demo.ct_series(1, "20240301", "CT", size=size)
    del no_modality.Modality
    refused.append(write_planted(no_modality, root / "no-modality.dcm").SOPInstanceUID)
    (root / "notes.txt").write_text(f"not DICOM: {PHI_NAME}")
    return good, refused


def storescu(port: int, folder: Path, calling: str = DEMO_AE, *extra: str, timeout: int = 120):
    return subprocess.run([require_tool("storescu"), "-aet", calling, "-aec", GATEWAY_AE, "-R", "+sd", "+r", "-nh",
                           *extra, "127.0.0.1", str(port), str(folder)], capture_output=True, text=True, timeout=timeout)


def receipts_by_upload_id(api, local_system, partner: str) -> dict[str, list[dict]]:
    found, page = [], None
    while True:
        status, body = api.call("GET", f"/receipts?limit=1000&partner={partner}" + (f"&next={page}" if page else ""))
        assert status == 200, body
        found += body["receipts"]
        page = body["next"]
        if not page:
            break
    grouped: dict[str, list[dict]] = {}
    for receipt in found:
        grouped.setdefault(receipt.get("upload_id", ""), []).append(receipt)
    return grouped


def wait_until_uploaded(spool_root: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while list((spool_root / "spool" / "ready").glob("*/*.dcm")):
        assert time.monotonic() < deadline, "the spool never emptied"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(local_system, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    server = Gateway(gateway_config.from_document(gateway_document(local_system, root)))
    server.start()
    yield server
    server.stop()


def test_echo_and_an_unknown_calling_ae_is_rejected_at_association(gateway, tmp_path):
    echoscu = require_tool("echoscu")
    ok = subprocess.run([echoscu, "-aet", DEMO_AE, "-aec", GATEWAY_AE, "127.0.0.1", str(gateway.port)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    stranger = subprocess.run([echoscu, "-aet", "STRANGER", "-aec", GATEWAY_AE, "-v", "127.0.0.1", str(gateway.port)],
                              capture_output=True, text=True, timeout=60)
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout
    wrong_called = subprocess.run([echoscu, "-aet", DEMO_AE, "-aec", "SOMEONE-ELSE", "-v", "127.0.0.1",
                                   str(gateway.port)], capture_output=True, text=True, timeout=60)
    assert wrong_called.returncode != 0
    (tmp_path / "one").mkdir()
    write_planted(next(demo.ct_series(1, "20240301", "CT", size=32)), tmp_path / "one" / "a.dcm")
    before = gateway.received
    result = storescu(gateway.port, tmp_path / "one", "STRANGER")
    assert result.returncode != 0 and gateway.received == before


def test_mixed_folder_every_instance_indexed_or_quarantined_with_a_receipt(gateway, local_system, api, tmp_path,
                                                                          capfd, caplog):
    good, refused = mixed_folder(tmp_path / "outbox")
    result = storescu(gateway.port, tmp_path / "outbox")
    assert "notes.txt" in result.stderr + result.stdout, "storescu reports the file it cannot send"
    assert gateway.received >= len(good) + len(refused)
    wait_until_uploaded(Path(gateway.config.spool_dir).parent)
    local_system.wait_idle(timeout=300)
    receipts = receipts_by_upload_id(api, local_system, "demo-partner")
    ids = {uid: upload_id(gateway.secret, uid) for uid in good + refused}
    for uid in good:
        (receipt,) = receipts[ids[uid]]
        assert receipt["outcome"] == "ingested" and receipt["sop_instance_uid"] != uid
    reasons = sorted(receipts[ids[uid]][0]["reason"] for uid in refused)
    assert reasons == ["burned_in_annotation", "missing_required:Modality"]
    study_uid = receipts[ids[good[0]]][0]["study_uid"]
    deadline = time.monotonic() + 60
    while api.call("GET", f"/studies/{study_uid}")[1].get("study", {}).get("instance_count") != len(good) - 1:
        assert time.monotonic() < deadline, "the CT study was never counted"
        time.sleep(0.2)
    captured = capfd.readouterr()
    assert '"burned_in_annotation"' in captured.out, "the handlers' log lines are captured"
    assert_no_planted_value(local_system, [result.stdout, result.stderr, captured.out, captured.err, caplog.text])


def test_same_folder_again_changes_no_count(gateway, local_system, api, tmp_path):
    folder = tmp_path / "again"
    good, _ = mixed_folder(folder, slices=3)
    for _ in range(2):
        storescu(gateway.port, folder)
        wait_until_uploaded(Path(gateway.config.spool_dir).parent)
        local_system.wait_idle(timeout=300)
    receipts = receipts_by_upload_id(api, local_system, "demo-partner")
    outcomes = [r["outcome"] for r in receipts[upload_id(gateway.secret, good[0])]]
    assert sorted(outcomes) == ["duplicate", "ingested"]
    study_uid = receipts[upload_id(gateway.secret, good[0])][0]["study_uid"]
    assert api.call("GET", f"/studies/{study_uid}")[1]["study"]["instance_count"] == 3


def test_a_full_spool_refuses_instead_of_accepting(local_system, tmp_path):
    document = gateway_document(local_system, tmp_path, min_free_bytes=2**62)
    server = Gateway(gateway_config.from_document(document))
    server.start()
    try:
        (tmp_path / "one").mkdir()
        write_planted(next(demo.ct_series(1, "20240301", "CT", size=32)), tmp_path / "one" / "a.dcm")
        result = storescu(server.port, tmp_path / "one", DEMO_AE, "-v")
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr, result.stderr
        assert not list((tmp_path / "spool" / "ready").glob("*/*.dcm"))
    finally:
        server.stop()


def start_subprocess_gateway(config_file: Path, log: Path) -> tuple[subprocess.Popen, int]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = log.read_text().count("listening") if log.exists() else 0
    with log.open("a") as out:
        process = subprocess.Popen([sys.executable, "-m", "dicomshare", "gateway", "--config", str(config_file)],
                                   stdout=out, stderr=subprocess.STDOUT, env=environment)
    deadline = time.monotonic() + 60
    while log.read_text().count("listening") == started:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process, json.loads(config_file.read_text())["port"]


def test_killed_mid_transfer_and_restarted_loses_nothing(local_system, api, tmp_path, capfd):
    """S3 unreachable (the spool grows; the log says so, without a value): SIGKILL while
    storescu is sending; a restart resumes the spool and keeps failing to upload; then
    SIGKILL again, restart with S3 back and the sender retrying the whole folder: every
    instance ends indexed exactly once, the repeats as duplicates."""
    folder = tmp_path / "outbox"
    good = [write_planted(ds, folder / f"{n:03d}.dcm").SOPInstanceUID
            for n, ds in enumerate(demo.ct_series(24, "20240302", "CT KILL", size=256))]
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    document = gateway_document(local_system, tmp_path, port=port)
    offline = json.loads(json.dumps(document))
    offline["upload"]["endpoint_url"] = "http://127.0.0.1:9"
    config_file = tmp_path / "gateway.json"
    config_file.write_text(json.dumps(offline))
    log = tmp_path / "gateway.log"
    process, port = start_subprocess_gateway(config_file, log)
    sender = subprocess.Popen([require_tool("storescu"), "-aet", DEMO_AE, "-aec", GATEWAY_AE, "-R", "+sd", "+r", "-nh",
                               "127.0.0.1", str(port), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = tmp_path / "spool" / "ready"
    deadline = time.monotonic() + 60
    while len(list(ready.glob("*/*.dcm"))) < 5:
        assert time.monotonic() < deadline and sender.poll() is None, "storescu finished before the kill"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    sender.wait(timeout=120)
    spooled = len(list(ready.glob("*/*.dcm")))
    assert 5 <= spooled < len(good) or sender.returncode != 0

    process, port = start_subprocess_gateway(config_file, log)
    assert f"spool holds {spooled} files" in log.read_text()
    deadline = time.monotonic() + 60
    while "upload failed, will retry" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert len(list(ready.glob("*/*.dcm"))) == spooled, "S3 unreachable: the spool keeps everything"

    config_file.write_text(json.dumps(document))
    process, port = start_subprocess_gateway(config_file, log)
    try:
        resend = storescu(port, folder)
        assert resend.returncode == 0, resend.stdout + resend.stderr
        wait_until_uploaded(tmp_path)
        local_system.wait_idle(timeout=300)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    secret = (tmp_path / "upload-id-secret").read_text().strip().encode()
    receipts = receipts_by_upload_id(api, local_system, "demo-partner")
    for uid in good:
        outcomes = [r["outcome"] for r in receipts[upload_id(secret, uid)]]
        assert outcomes.count("ingested") == 1 and set(outcomes) <= {"ingested", "duplicate"}, outcomes
    study_uid = receipts[upload_id(secret, good[0])][0]["study_uid"]
    deadline = time.monotonic() + 60
    while api.call("GET", f"/studies/{study_uid}")[1]["study"]["instance_count"] != len(good):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    captured = capfd.readouterr()
    assert_no_planted_value(local_system, [log.read_text(), captured.out, captured.err])


def assert_no_planted_value(local_system, outputs: list[str]) -> None:
    """No planted value in any S3 key (every version of every bucket), any table item or the
    given outputs (the handlers' and the gateway's log lines)."""
    s3 = local_system.client("s3")
    keys = [o["Key"] for bucket in (local_system.resources.ingest_bucket, local_system.resources.deid_bucket,
                                    local_system.resources.quarantine_bucket)
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for o in page.get("Versions", [])]
    items = json.dumps(local_system.client("dynamodb").scan(TableName=local_system.resources.table_name)["Items"])
    for text in (json.dumps(keys), items, *outputs):
        for planted in (PHI_NAME, PHI_ID, "PLANTED"):
            assert planted not in text


def test_print_upload_id_matches_the_receipts(local_system, tmp_path):
    config_file = tmp_path / "gateway.json"
    config_file.write_text(json.dumps(gateway_document(local_system, tmp_path)))
    result = subprocess.run([sys.executable, "-m", "dicomshare", "gateway", "--config", str(config_file),
                             "--print-upload-id", "1.2.3.4"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / "upload-id-secret").read_text().strip().encode()
    assert result.stdout.strip() == upload_id(secret, "1.2.3.4")


@pytest.mark.parametrize("change, field", [
    ({"version": 2}, "version"), ({"ae_title": "A\\B"}, "ae_title"), ({"partners": []}, "partners"),
    ({"partners": [{"id": "a-1", "calling_ae_titles": []}]}, r"partners\[0\].calling_ae_titles"),
    ({"upload": {}}, "upload.bucket"), ({"colour": "blue"}, "colour"),
])
def test_configuration_errors_name_the_field(local_system, tmp_path, change, field):
    with pytest.raises(gateway_config.GatewayConfigError, match=field):
        gateway_config.from_document({**gateway_document(local_system, tmp_path), **change})


def test_spool_leftovers_of_a_crash_mid_write_are_removed(tmp_path):
    from dicomshare_gateway.spool import Spool

    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "half.part").write_bytes(b"never acknowledged")
    spool = Spool(tmp_path, 0)
    assert not list(spool.incoming.iterdir())
    entry = spool.accept("demo-partner", "ab" * 32, b"DICM bytes")
    assert entry.object_key.startswith("demo-partner/gateway/") and entry.upload_id == "ab" * 32
    assert [e.path for e in spool.entries()] == [entry.path] and shutil.disk_usage(tmp_path)


def certificates(folder: Path) -> Path:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    openssl = require_tool("openssl")
    folder.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca",
        "-days", "1")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
            f"/CN={name}")
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return folder


def test_tls_with_client_certificates(local_system, tmp_path):
    tls = certificates(tmp_path / "tls")
    document = gateway_document(local_system, tmp_path, tls={
        "certificate": str(tls / "server.pem"), "private_key": str(tls / "server.key"),
        "ca_certificates": str(tls / "ca.pem")})
    server = Gateway(gateway_config.from_document(document))
    server.start()
    echoscu = require_tool("echoscu")
    base = [echoscu, "-aet", DEMO_AE, "-aec", GATEWAY_AE]
    try:
        with_certificate = subprocess.run(
            [*base, "+tls", str(tls / "client.key"), str(tls / "client.pem"), "+cf", str(tls / "ca.pem"),
             "127.0.0.1", str(server.port)], capture_output=True, text=True, timeout=60)
        assert with_certificate.returncode == 0, with_certificate.stderr
        anonymous = subprocess.run([*base, "+tla", "+cf", str(tls / "ca.pem"), "127.0.0.1", str(server.port)],
                                   capture_output=True, text=True, timeout=60)
        assert anonymous.returncode != 0, "mutual TLS: a caller without a certificate is refused"
        plain = subprocess.run([*base, "127.0.0.1", str(server.port)], capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0
    finally:
        server.stop()


def test_one_partners_failing_uploads_do_not_hold_back_another(local_system, tmp_path):
    """Upload order is kept per partner; a partner whose uploads fail (here its S3 endpoint
    is unreachable) keeps its spool while the other partner's drains into the bucket."""
    import boto3
    from botocore.config import Config

    from dicomshare_gateway.spool import Spool
    from dicomshare_gateway.uploader import Uploader, partner_client

    config = gateway_config.from_document(gateway_document(local_system, tmp_path))
    spool = Spool(config.spool_dir, 0)
    for n in range(3):
        spool.accept("demo-partner", f"{n:064x}", f"unreachable {n}".encode())
        spool.accept("basic-partner", f"{n:064x}", f"reachable {n} {tmp_path}".encode())

    def client_for(partner, config):
        if partner.id == "demo-partner":
            return boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name=local_system.region,
                                config=Config(retries={"max_attempts": 1}, connect_timeout=2))
        return partner_client(partner, config)

    uploader = Uploader(spool, config, client_for=client_for)
    with pytest.raises(EndpointConnectionError):
        uploader.drain()
    assert [e.partner for e in spool.entries()] == ["demo-partner"] * 3, "the other partner's spool drained"
    local_system.wait_idle(timeout=120)


def test_each_partner_uploads_with_its_own_assumed_role(local_system, tmp_path):
    """With ``role_arn`` per partner (as the hosted gateway is configured), each partner's
    uploads are signed by a session of that partner's role, assumed through STS (moto's)
    with the machine's credentials and the partner's ExternalId, never by the machine's
    own credentials or another partner's role."""
    import boto3
    from moto.sts.models import sts_backends

    from dicomshare_gateway.spool import Spool
    from dicomshare_gateway.uploader import Uploader

    iam = local_system.client("iam")
    roles = {}
    for partner in ("demo-partner", "basic-partner"):
        name = f"gateway-test-{partner}-{tmp_path.name}"[:64]
        roles[partner] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}))["Role"]
    document = gateway_document(local_system, tmp_path)
    for partner in document["partners"]:
        partner.update(role_arn=roles[partner["id"]]["Arn"], external_id=f"external-id-of-{partner['id']}")
    config = gateway_config.from_document(document)
    spool = Spool(config.spool_dir, 0)
    for partner in roles:
        spool.accept(partner, f"{1:064x}", f"assumed role upload {partner} {tmp_path}".encode())

    uploader = Uploader(spool, config)
    assert uploader.drain() == 2 and not list(spool.entries())
    for partner, role in roles.items():
        signer = uploader.client(partner)._request_signer._credentials.get_frozen_credentials()
        caller = boto3.client("sts", endpoint_url=local_system.endpoint_url, region_name=local_system.region,
                              aws_access_key_id=signer.access_key, aws_secret_access_key=signer.secret_key,
                              aws_session_token=signer.token).get_caller_identity()
        assert caller["Arn"] == f"arn:aws:sts::123456789012:assumed-role/{role['RoleName']}/dicomshare-gateway-{partner}"
        assumed = sts_backends["123456789012"]["aws"].get_assumed_role_from_access_key(signer.access_key)
        assert assumed.external_id == f"external-id-of-{partner}", "the moto server (in this process) saw it"
    local_system.wait_idle(timeout=120)
