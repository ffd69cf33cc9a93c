"""Powertools switches that would print whole events (share tokens, PINs, object keys that
carry patient names) stay off whatever the environment says: the handlers pin
``log_event=False`` and the API resolver ``debug=False``.

Each handler runs in a fresh interpreter with every such switch turned on
(``POWERTOOLS_LOGGER_LOG_EVENT``, ``POWERTOOLS_DEV``, ``POWERTOOLS_EVENT_HANDLER_DEBUG``,
``POWERTOOLS_DEBUG``), so the values read at import time are the hostile ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN, PIN, PLANTED_KEY = "ZQXTOKENabcdefghijklmnopqrstuvwxyz0123456789", "ZQXPIN8642", "partner/ZQXDOE^JOHN/1.dcm"

API_EVENT = {
    "httpMethod": "GET", "path": "/view", "resource": "/view",
    "headers": {"Authorization": f"Share {TOKEN}", "X-Share-Pin": PIN},
    "multiValueHeaders": {}, "queryStringParameters": None, "body": None, "isBase64Encoded": False,
    "requestContext": {"stage": "v1", "identity": {"sourceIp": "192.0.2.1"}, "path": "/v1/view"},
}
INGEST_EVENT = {"Records": [{
    "messageId": "m1", "receiptHandle": "r", "attributes": {}, "messageAttributes": {}, "md5OfBody": "",
    "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1",
    "body": json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                     "s3": {"bucket": {"name": "b"}, "object": {"key": PLANTED_KEY, "size": 1}}}]}),
}]}

SCRIPT = """
import json, sys
from dicomshare_local.pollers import LambdaContext
module = __import__(sys.argv[1], fromlist=["handler"])
try:
    module.handler(json.loads(sys.argv[2]), LambdaContext("f", 30))
except Exception as error:
    print("raised", type(error).__name__)
"""


@pytest.mark.parametrize("module, event", [("lambdas.api.handler", API_EVENT), ("lambdas.ingest.handler", INGEST_EVENT)])
def test_events_are_never_logged_even_when_the_environment_asks(module, event):
    env = {**os.environ, "POWERTOOLS_LOGGER_LOG_EVENT": "true", "POWERTOOLS_DEV": "true",
           "POWERTOOLS_EVENT_HANDLER_DEBUG": "true", "POWERTOOLS_DEBUG": "true", "POWERTOOLS_LOG_LEVEL": "DEBUG",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "DEID_BUCKET": "d",
           "QUARANTINE_BUCKET": "q", "TABLE_NAME": "t", "DEID_SECRET_ARN": "s", "EVENT_BUS_NAME": "e"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, module, json.dumps(event)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert output.strip(), "the handler logged nothing at all: the test would prove nothing"
    for secret in (TOKEN, PIN, "ZQXDOE"):
        assert secret not in output


def test_resolver_debug_is_pinned_off():
    from lambdas.api.handler import app

    assert app._debug is False


def test_every_handler_pins_log_event_off():
    """Every function's handler, including ones added later, pins ``log_event=False``."""
    decorators = {path.parent.name: [line.strip() for line in path.read_text().splitlines()
                                     if line.strip().startswith("@logger.inject_lambda_context")]
                  for path in (ROOT / "lambdas").glob("*/handler.py")}
    assert len(decorators) >= 5
    for function, lines in decorators.items():
        assert lines and all("log_event=False" in line for line in lines), function


def test_every_handler_is_thin():
    """House rule (Powertools style): a handler module stays under 50 lines; its logic lives
    in the module named for its concept."""
    sizes = {path.parent.name: len(path.read_text().splitlines()) for path in (ROOT / "lambdas").glob("*/handler.py")}
    assert len(sizes) >= 5
    assert {function: lines for function, lines in sizes.items() if lines >= 50} == {}
