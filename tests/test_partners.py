"""Partner isolation over the real local system: two hospitals with the same MRN and the same
original Study Instance UID never reach each other's studies, priors or shares.

Hospital A (``demo-partner``) and hospital B (``basic-partner``) both have a patient with
Patient ID ``ZQX-100234``. Until the de-identification engine keys identities per partner,
both get the same pseudonym and the same de-identified UIDs; the index, the API and the
shares must keep them apart anyway (defence in depth). The assertions hold either way.
"""

from __future__ import annotations

import pydicom
import pytest
from boto3.dynamodb.conditions import Attr

from dicomshare import index
from dicomshare_aws import index_store
from dicomshare_local import demo
from indexed_study import now, put_instance, put_study
from test_api import all_pages
from test_end_to_end import all_studies

A, B = "demo-partner", "basic-partner"
MRN = "ZQX-100234"


def _patient(ds: pydicom.Dataset, name: str) -> pydicom.Dataset:
    ds.PatientName, ds.PatientID = name, MRN
    return ds


def _upload(system, partner: str, folder: str, datasets) -> None:
    s3 = system.client("s3")
    for n, ds in enumerate(datasets):
        s3.put_object(Bucket=system.resources.ingest_bucket, Key=f"{partner}/{folder}/{n}.dcm",
                      Body=demo.part10_bytes(ds))


def _new_study(system, api, partner: str, folder: str, datasets) -> dict:
    """Upload one study's files and return the one study that appears in the listing."""
    before = {s["study_uid"] for s in all_studies(api)}
    _upload(system, partner, folder, datasets)
    system.wait_idle()
    [study] = [s for s in all_studies(api) if s["study_uid"] not in before]
    return study


def _table(system):
    return system.session.resource("dynamodb", endpoint_url=system.endpoint_url).Table(system.resources.table_name)


def _quarantined(system, reason: str, partner: str) -> int:
    items, kwargs = [], {}
    while True:
        page = _table(system).scan(ConsistentRead=True, FilterExpression=Attr("pk").begins_with("QUARANTINE#")
                                   & Attr("reason").eq(reason) & Attr("partner").eq(partner), **kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return len(items)
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _redeemed_sops(api, token: str, route: str = "instances") -> dict[str, set[str]]:
    """The SOP Instance UIDs a share serves, per study, from its pages (``instances`` or
    the viewer's ``dicomjson``)."""
    status, manifest = api.call("POST", "/redeem", admin=False, headers={"Authorization": f"Share {token}"})
    assert status == 200, manifest
    return {s["study_uid"]: {_sop(route, i) for series in s["series"]
                             for page in all_pages(api, route, token, s["study_uid"], series["series_uid"])
                             for i in (page["instances"] if route == "instances"
                                       else page["studies"][0]["series"][0]["instances"])}
            for s in manifest["studies"]}


def _sop(route: str, entry: dict) -> str:
    return entry["sop_instance_uid"] if route == "instances" else entry["metadata"]["SOPInstanceUID"]


def _share(api, study_uid: str, **options) -> dict:
    status, share = api.call("POST", "/shares", {"study_uid": study_uid, "expires_in": 3600, **options})
    assert status == 201, share
    return share


@pytest.fixture(scope="module")
def hospitals(local_system, api):
    """A's prior (2019) and current (2024) studies and a share of the current one with
    priors; then B's study (2022, between them) and B's upload re-using A's original
    Study Instance UID."""
    a_prior = [_patient(ds, "ALICE^A") for ds in demo.ct_series(2, "20190105", "ZQX A PRIOR", size=16)]
    a_current = [_patient(ds, "ALICE^A") for ds in demo.ct_series(3, "20240105", "ZQX A CURRENT", size=16)]
    a = {"prior": _new_study(local_system, api, A, "alice-prior", a_prior),
         "current": _new_study(local_system, api, A, "alice-current", a_current)}
    early_share = _share(api, a["current"]["study_uid"], include_priors=True)
    early_sops = _redeemed_sops(api, early_share["token"])

    before = {s["study_uid"] for s in all_studies(api)}
    conflicts_before = _quarantined(local_system, "study_conflict", B)
    bob = [_patient(ds, "BOB^B") for ds in demo.ct_series(2, "20220105", "ZQX B STUDY", size=16)]
    hijack = _patient(next(demo.ct_series(1, "20240105", "ZQX B HIJACK", size=16)), "BOB^B")
    hijack.StudyInstanceUID = a_current[0].StudyInstanceUID
    _upload(local_system, B, "bob", bob)
    _upload(local_system, B, "bob-hijack", [hijack])
    local_system.wait_idle()
    b_studies = [s for s in all_studies(api) if s["study_uid"] not in before and s["partner"] == B]
    return {"a": a, "a_current_original_uid": a_current[0].StudyInstanceUID, "early_share": early_share, "early_sops": early_sops, "b_studies": b_studies,
            "hijack_quarantined": _quarantined(local_system, "study_conflict", B) - conflicts_before}


def test_same_mrn_at_two_partners_stays_two_patients(api, hospitals):
    a = hospitals["a"]
    status, detail = api.call("GET", f"/studies/{a['current']['study_uid']}")
    assert status == 200, detail
    assert [s["study_uid"] for s in detail["priors"]] == [a["prior"]["study_uid"]]
    assert detail["later"] == [] and detail["study"]["partner"] == A
    b_uids = {s["study_uid"] for s in hospitals["b_studies"]}
    assert b_uids, "B's study was indexed"
    for study in hospitals["b_studies"]:
        status, detail = api.call("GET", f"/studies/{study['study_uid']}")
        assert status == 200, detail
        others = {s["study_uid"] for s in detail["priors"] + detail["later"]}
        assert others <= b_uids and not others & {a["prior"]["study_uid"], a["current"]["study_uid"]}


def test_include_priors_never_crosses_partners(api, hospitals):
    a = hospitals["a"]
    share = _share(api, a["current"]["study_uid"], include_priors=True)
    assert share["study_uids"] == [a["current"]["study_uid"], a["prior"]["study_uid"]]
    assert _redeemed_sops(api, share["token"]) == hospitals["early_sops"]
    for study in hospitals["b_studies"]:
        b_share = _share(api, study["study_uid"], include_priors=True)
        assert set(b_share["study_uids"]) <= {s["study_uid"] for s in hospitals["b_studies"]}
        status, view = api.call("GET", f"/shares/{b_share['share_id']}")
        assert (status, view["partner"]) == (200, B)


def test_upload_with_another_partners_study_uid_never_reaches_its_study_or_shares(api, hospitals):
    a = hospitals["a"]
    current = a["current"]["study_uid"]
    # Same de-identified study UID (engine not keyed per partner): quarantined as a conflict;
    # per-partner UIDs: a study of B's own. Exactly one of the two.
    assert hospitals["hijack_quarantined"] + len(hospitals["b_studies"]) == 2
    assert current not in {s["study_uid"] for s in hospitals["b_studies"]}
    status, detail = api.call("GET", f"/studies/{current}")
    assert (detail["study"]["instance_count"], detail["study"]["partner"]) == (3, A)
    assert _redeemed_sops(api, hospitals["early_share"]["token"]) == hospitals["early_sops"]
    assert len(hospitals["early_sops"][current]) == 3


def test_same_partner_other_patient_in_an_owned_study_is_a_conflict(local_system, api, hospitals):
    intruder = next(demo.ct_series(1, "20240105", "ZQX A OTHER PATIENT", size=16))
    intruder.PatientID, intruder.PatientName = "ZQX-OTHER-7", "CAROL^C"
    intruder.StudyInstanceUID = hospitals["a_current_original_uid"]
    before = _quarantined(local_system, "study_conflict", A)
    _upload(local_system, A, "carol", [intruder])
    local_system.wait_idle()
    assert _quarantined(local_system, "study_conflict", A) == before + 1
    assert _redeemed_sops(api, hospitals["early_share"]["token"]) == hospitals["early_sops"]


def test_claims_are_first_writer_wins_and_repeatable(local_system):
    dynamodb, table = local_system.client("dynamodb"), local_system.resources.table_name
    claim = dict(claimed_at=now())
    assert index_store.claim_study(dynamodb, table, "2.25.999001", partner=A, patient_pseudonym="DS-X", **claim)
    assert index_store.claim_study(dynamodb, table, "2.25.999001", partner=A, patient_pseudonym="DS-X", **claim)
    assert not index_store.claim_study(dynamodb, table, "2.25.999001", partner=B, patient_pseudonym="DS-X", **claim)
    assert not index_store.claim_study(dynamodb, table, "2.25.999001", partner=A, patient_pseudonym="DS-Y", **claim)
    owner = _table(local_system).get_item(Key=index.study_owner_key("2.25.999001"), ConsistentRead=True)["Item"]
    assert (owner["partner"], owner["patient_pseudonym"]) == (A, "DS-X")


def test_a_share_serves_only_its_frozen_partner_and_patient(local_system, api):
    """Defence in depth: an instance item of another partner or pseudonym that reaches a
    shared study anyway (a defect, a compromised writer) is never served, and its metadata
    object is never even read."""
    from lambdas.api import dependencies

    study = put_study(local_system, pseudonym="PSEUDO-FROZEN", study_date="20240202", slices=2, partner=A)
    local_system.wait_idle()
    share = _share(api, study.study_uid)
    foreign = []
    for partner, pseudonym in ((B, "PSEUDO-FROZEN"), (A, "PSEUDO-OTHER")):
        ds = next(demo.ct_series(1, "20240202", "CT ABDOMEN", size=16))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, study.series_uids[0]
        ds.ImageComments = "ZQXFOREIGNMETA"
        put_instance(local_system, ds, partner=partner, pseudonym=pseudonym)
        foreign.append(ds.SOPInstanceUID)
    local_system.wait_idle()
    read_keys: list[str] = []
    s3 = dependencies.s3()
    s3.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: read_keys.append(params["Key"]),
                            unique_id="partners-metadata-reads")
    try:
        assert _redeemed_sops(api, share["token"]) == {study.study_uid: set(study.files)}
        assert _redeemed_sops(api, share["token"], "dicomjson") == {study.study_uid: set(study.files)}
        status, page = api.call("GET", f"/share/dicomjson?study_uid={study.study_uid}&series_uid="
                                f"{study.series_uids[0]}", admin=False, headers={"Authorization": f"Share {share['token']}"})
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.GetObject", unique_id="partners-metadata-reads")
    assert status == 200 and "ZQXFOREIGNMETA" not in str(page)
    assert len(read_keys) >= 2 and not [k for k in read_keys for sop in foreign if sop in k]
