"""Shared fixtures: the local system (moto server, real handlers, real HTTP) for the session."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from dicomshare.settings import Partner, Settings


def fresh_uids(ds):
    """A shipped test file with new UIDs: other test modules upload the same file to the
    session's system, and the first stored instance of a SOP Instance UID wins."""
    from pydicom.uid import generate_uid

    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def require_tool(name: str) -> str:
    """Path of a system tool the test needs; missing fails under CI=true, else skips."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian package: see README 'Test requirements')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def local_settings() -> Settings:
    return Settings(partners=(Partner(id="demo-partner"), Partner(id="basic-partner", options=())))


@pytest.fixture(scope="session")
def local_system(tmp_path_factory, local_settings):
    from dicomshare_local.system import LocalSystem

    with LocalSystem(tmp_path_factory.mktemp("local-state"), settings=local_settings) as system:
        yield system


class Api:
    """A small HTTP client for the local API: ``api.call("GET", "/studies")`` -> (status, json)."""

    def __init__(self, base_url: str, admin_token: str):
        self.base_url = base_url
        self.admin_token = admin_token

    def call(self, method: str, path: str, body=None, headers=None, admin: bool = True):
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if admin:
            all_headers["Authorization"] = f"Bearer {self.admin_token}"
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, method=method, data=data, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, _decode(response.read(), response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            return error.code, _decode(error.read(), error.headers.get("Content-Type", ""))


def _decode(payload: bytes, content_type: str):
    return json.loads(payload) if "json" in content_type and payload else payload


@pytest.fixture(scope="session")
def api(local_system) -> Api:
    return Api(local_system.api_url, local_system.admin_token)
