"""`dicomshare local up` as a newcomer runs it: a real process, real ports, real signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from dicomshare import settings
from conftest import require_tool
from dicomshare_aws import index_store
from dicomshare_local import demo, gateway

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
        while sum(o["Key"].endswith(".dcm") for o in s3.list_objects_v2(
                Bucket=connection["deid_bucket"], Prefix="studies/").get("Contents", [])) < 2:
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


def test_port_probe_ignores_connections_in_time_wait():
    """Restarting right after Ctrl-C: the last connections of the stopped system linger in
    TIME_WAIT on its port, which must not count as "in use"."""
    from dicomshare_local.system import _check_port

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end goes to TIME_WAIT
        client.recv(1)
        client.close()
    _check_port("127.0.0.1", port, "--api-port")


@pytest.mark.parametrize("length, status", [("-1", 400), ("abc", 400), ("1, 2", 400), ("²", 400),
                                            (str(10 * 1024 * 1024 + 1), 413), ("99999999999999999999999", 400)])
def test_gateway_refuses_bad_or_oversized_content_length(local_system, length, status):
    host, port = local_system.api_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /local/redeem HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n".encode())
        answer = connection.recv(65536).decode("latin-1")
    assert answer.startswith(f"HTTP/1.1 {status} ") or answer.startswith(f"HTTP/1.0 {status} "), answer[:80]


def test_gateway_serves_concurrent_requests_one_handler_call_at_a_time(local_system, api):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: api.call("GET", "/studies?limit=1" if n % 2 else "/shares?limit=1"), range(16)))
    assert all(status == 200 for status, _ in results)
    assert all(("studies" in body) == (n % 2 == 1) for n, (_, body) in enumerate(results))


def test_domain_package_never_imports_the_local_runtime():
    """No import circle: ``dicomshare_local`` uses the domain package, never the reverse
    (the ``local`` subcommand comes in through the ``dicomshare.commands`` entry point)."""
    import ast

    import dicomshare

    for source in Path(dicomshare.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("dicomshare_local", "dicomshare_aws", "lambdas")], source


def _gateway_answers(handler, timeout_seconds: float = 29) -> tuple[int, dict]:
    server = gateway.make_server("127.0.0.1", 0, handler, "token", timeout_seconds=timeout_seconds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{server.server_address[1]}/{gateway.STAGE}/redeem",
                                         method="POST", data=b"{}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
    finally:
        server.shutdown()
        server.server_close()


def test_gateway_answers_for_a_failing_or_slow_handler_as_api_gateway_does():
    def failing(event, context):
        raise RuntimeError("boom")

    def slow(event, context):
        time.sleep(3)
        return {"statusCode": 200, "body": "{}"}

    assert _gateway_answers(failing) == (502, {"message": "Internal server error"})
    assert _gateway_answers(slow, timeout_seconds=0.5) == (504, {"message": "Endpoint request timed out"})


def test_api_answers_every_request_while_a_large_study_is_counted(local_system, api):
    """Instance items of a 400-instance study written as fast as they go while 12 clients
    list studies: the counts function runs meanwhile, and every request gets its answer."""
    from test_counts import _items

    dynamodb = local_system.client("dynamodb")
    items = _items(400, "RESPONSIVE")
    answers: list = []

    def list_studies():
        try:
            answers.append(api.call("GET", "/studies")[0])
        except Exception as error:  # a dropped connection, a reset, a client timeout
            answers.append(repr(error))

    clients = [threading.Thread(target=list_studies) for _ in range(12)]
    for n, item in enumerate(items):
        index_store.put_new(dynamodb, local_system.resources.table_name, item)
        if n % 30 == 0 and n // 30 < len(clients):
            clients[n // 30].start()
    for client in clients:
        client.join()
    assert answers == [200] * 12
    local_system.wait_idle(timeout=600)
    status, body = api.call("GET", "/studies")
    (study,) = [s for s in body["studies"] if s["study_description"] == "RESPONSIVE"]
    assert study["instance_count"] == 400
