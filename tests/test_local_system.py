"""`dicomshare local up` as a newcomer runs it: a real process, real ports, real signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from dicomshare import settings
from conftest import require_tool
from dicomshare_local import demo

CLI = [sys.executable, "-m", "dicomshare"]


def _start_up(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    out = tmp_path / "stdout"
    with out.open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            [*CLI, "local", "up", "--state-dir", str(tmp_path / "state"), "--config", str(tmp_path / "none.json"),
             "--aws-port", "0", "--api-port", "0", "--dicom-port", "0"], stdout=stdout, stderr=stderr, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        ready = [line for line in out.read_text().splitlines() if line.startswith("ready ")]
        if ready:
            return process, ready[0].split()[1]
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no ready line; stderr: {(tmp_path / 'stderr').read_text()}")


def _port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def test_local_up_serves_uploads_and_stops_cleanly(tmp_path):
    process, api_url = _start_up(tmp_path)
    try:
        connection = json.loads((tmp_path / "state" / "local.json").read_text())
        assert connection["api_url"] == api_url
        for key in ("aws_endpoint_url", "region", "ingest_bucket", "partner_prefix", "admin_token"):
            assert connection[key], key
        assert oct((tmp_path / "state" / "local.json").stat().st_mode & 0o777) == "0o600"
        s3 = boto3.client("s3", endpoint_url=connection["aws_endpoint_url"], region_name=connection["region"],
                          aws_access_key_id=connection["aws_access_key_id"],
                          aws_secret_access_key=connection["aws_secret_access_key"])
        ds = next(demo.ct_series(1, "20240101", "CT HEAD", size=64))
        s3.put_object(Bucket=connection["ingest_bucket"], Key=connection["partner_prefix"] + "a.dcm",
                      Body=demo.part10_bytes(ds))
        folder = tmp_path / "outbox"
        folder.mkdir()
        next(demo.ct_series(1, "20240101", "CT CHEST", size=64)).save_as(folder / "b.dcm", enforce_file_format=True)
        sent = subprocess.run([require_tool("storescu"), "-aet", connection["partner_ae_title"], "-aec",
                               connection["dicom_ae_title"], "+sd", "127.0.0.1", str(connection["dicom_port"]),
                               str(folder)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 180
        while s3.list_objects_v2(Bucket=connection["deid_bucket"], Prefix="studies/").get("KeyCount", 0) < 2:
            assert time.monotonic() < deadline, "the uploaded and the sent file were never both de-identified"
            time.sleep(0.2)
        partner_token = connection["partner_tokens"][connection["partner_prefix"].rstrip("/")]
        request = urllib.request.Request(api_url + "/receipts", headers={"Authorization": f"Bearer {partner_token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert {r["outcome"] for r in body["receipts"]} == {"ingested"}
        assert len(body["receipts"]) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert not _port_open(api_url)
    assert not _port_open(connection["aws_endpoint_url"] + "/")


def test_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "local", "up", "--state-dir", str(tmp_path), "--aws-port", "0", "--api-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"dicomshare: port {port} on 127.0.0.1 is in use: choose another with --api-port PORT"


@pytest.mark.parametrize("command", [["--help"], ["local", "--help"], ["local", "up", "--help"],
                                     ["local", "demo", "--help"], ["deid", "--help"], ["gateway", "--help"]])
def test_every_subcommand_has_help(command):
    result = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_configuration_document_is_validated():
    with pytest.raises(settings.ConfigError, match=r"partners\[0\]\.id"):
        settings.from_document({"partners": [{"id": "Bad Name"}]})
    with pytest.raises(settings.ConfigError, match="version"):
        settings.from_document({"version": 2})
    loaded = settings.from_document({"environment": "prod", "partners": [{"id": "clinic-a", "options": []}]})
    assert loaded.partner("clinic-a").options == ()
    assert settings.from_document(settings.to_document(loaded)) == loaded
