"""The whole system over real HTTP: a partner uploads, the pipeline de-identifies and
indexes, an admin shares, a clinician redeems and downloads every file."""

from __future__ import annotations

import hashlib
import io
import urllib.request

import pydicom

from dicomshare_local import demo

PLANTED = (b"E2EPLANT", b"Plantville")


def _planted_series(slices: int):
    for ds in demo.ct_series(slices, "20240102", "E2E CT CHEST", size=64):
        ds.PatientName = "E2EPLANT^SURNAME"
        ds.PatientID = "E2EPLANTID"
        ds.InstitutionName = "Plantville Infirmary"
        yield ds


def test_upload_share_redeem_download(local_system, api):
    s3 = local_system.client("s3")
    originals = list(_planted_series(4))
    for n, ds in enumerate(originals):
        s3.put_object(Bucket=local_system.resources.ingest_bucket,
                      Key=f"demo-partner/e2e folder/E2EPLANT slice {n}.dcm", Body=demo.part10_bytes(ds))
    local_system.wait_idle()

    studies = all_studies(api)
    study = next(s for s in studies if s.get("study_description") == "E2E CT CHEST")
    assert (study["instance_count"], study["series_count"], study["modalities"]) == (4, 1, ["CT"])

    status, share = api.call("POST", "/shares", {"study_uid": study["study_uid"], "expires_in": 3600})
    assert status == 201, share
    assert share["url"] == f"{local_system.api_url}/view#{share['token']}"

    status, manifest = api.call("POST", "/redeem", admin=False, headers={"Authorization": f"Share {share['token']}"})
    assert status == 200, manifest
    series = manifest["studies"][0]["series"]
    instances = []
    for entry in series:
        status, page = api.call("GET", f"/share/instances?study_uid={study['study_uid']}&series_uid={entry['series_uid']}",
                                admin=False, headers={"Authorization": f"Share {share['token']}"})
        assert status == 200 and page["next"] is None, page
        instances += page["instances"]
    assert len(instances) == 4
    original_pixels = {bytes(ds.PixelData) for ds in originals}
    for instance in instances:
        with urllib.request.urlopen(instance["url"], timeout=30) as response:
            payload = response.read()
        assert hashlib.sha256(payload).hexdigest() == instance["sha256"]
        assert not any(p in payload for p in PLANTED)
        ds = pydicom.dcmread(io.BytesIO(payload))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID == instance["sop_instance_uid"]
        assert ds.StudyInstanceUID == study["study_uid"]
        assert bytes(ds.PixelData) in original_pixels
    assert not s3.list_objects_v2(Bucket=local_system.resources.ingest_bucket, Prefix="demo-partner/e2e folder/").get("KeyCount")


def all_studies(api) -> list[dict]:
    studies, path = [], "/studies"
    while path:
        status, page = api.call("GET", path)
        assert status == 200, page
        studies += page["studies"]
        path = f"/studies?next={page['next']}" if page.get("next") else None
    return studies
