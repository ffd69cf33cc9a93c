"""Instance metadata objects: the viewer's metadata of each instance lives beside it in the
de-identified bucket, not in its DynamoDB item; ``GET /share/dicomjson`` serves it whole
(an enhanced multi-frame header far over DynamoDB's 400 KB included), and an unreadable
object never fails a page."""

from __future__ import annotations

import json

import numpy as np
import pytest
from boto3.dynamodb.types import TypeDeserializer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomshare import index
from dicomshare_local import demo
from indexed_study import put_study
from test_api import all_pages, create, redeem

PLANTED = ("ZQXMETAPLANT", "ZQXMETAGIVEN", "ZQXMETAID", "Metaplant Infirmary")
FRAMES = 1500
ONE_MB = 1024 * 1024


def enhanced_ct(frames: int, description: str, size: int = 4) -> Dataset:
    """An Enhanced CT object (PS3.3 A.38) whose per-frame functional groups (frame content,
    plane position, VOI, rescale) make a header of about 0.6 kB per frame, with identifiers
    planted at the top level and inside every frame's group."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "ZQXMETAPLANT^ZQXMETAGIVEN", "ZQXMETAID"
    ds.InstitutionName = "Metaplant Infirmary"
    ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20240404", "101010", description
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 7, 1
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    measures, orientation, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 0.625
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [frame_groups(k) for k in range(frames)]
    ds.PixelData = np.zeros((frames, size, size), np.int16).tobytes()
    return ds


def frame_groups(k: int) -> Dataset:
    content, position, voi, rescale, groups = Dataset(), Dataset(), Dataset(), Dataset(), Dataset()
    content.StackID, content.InStackPositionNumber, content.DimensionIndexValues = "1", k + 1, [1, k + 1]
    content.FrameAcquisitionNumber = k + 1
    content.FrameComments = "ZQXMETAPLANT was here"
    position.ImagePositionPatient = [-125.0, -125.0, -0.625 * k]
    voi.WindowCenter, voi.WindowWidth = 40, 400
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = -1024, 1, "HU"
    groups.FrameContentSequence, groups.PlanePositionSequence = [content], [position]
    groups.FrameVOILUTSequence, groups.PixelValueTransformationSequence = [voi], [rescale]
    return groups


def instance_items(system, description: str) -> list[dict]:
    dynamodb, deserializer = system.client("dynamodb"), TypeDeserializer()
    pages = dynamodb.get_paginator("scan").paginate(TableName=system.resources.table_name)
    items = [{k: deserializer.deserialize(v) for k, v in i.items()} for page in pages for i in page["Items"]]
    return [i for i in items if i[index.SK].startswith("INSTANCE#") and i.get("study_description") == description]


def stored_bytes(item: dict) -> int:
    """An upper bound of DynamoDB's item size: attribute names plus values as text."""
    return sum(len(name.encode()) + len(str(value).encode()) for name, value in item.items())


@pytest.fixture(scope="module")
def enhanced(local_system):
    """The Enhanced CT, uploaded by a partner and through the real ingest pipeline."""
    s3 = local_system.client("s3")
    s3.put_object(Bucket=local_system.resources.ingest_bucket, Key="demo-partner/meta/ZQXMETAPLANT enhanced.dcm",
                  Body=demo.part10_bytes(enhanced_ct(FRAMES, "ENHANCED CT META")))
    for ds in demo.ct_series(1, "20240404", "CT SLICE META", size=512):
        s3.put_object(Bucket=local_system.resources.ingest_bucket, Key="demo-partner/meta/slice.dcm",
                      Body=demo.part10_bytes(ds))
    local_system.wait_idle()
    (item,) = instance_items(local_system, "ENHANCED CT META")
    return item


def test_instance_items_hold_no_metadata_and_stay_under_1_kb(local_system, enhanced):
    (ct_slice,) = instance_items(local_system, "CT SLICE META")
    for item in (ct_slice, enhanced):
        assert "dicom_json" not in item and stored_bytes(item) < 1024, stored_bytes(item)
    assert enhanced["metadata_bytes"] > 2 * 400 * 1024  # far over an item's 400 KB, not trimmed
    s3 = local_system.client("s3")
    for item in (ct_slice, enhanced):
        stored = s3.get_object(Bucket=local_system.resources.deid_bucket, Key=index.metadata_object_key(
            item["study_uid"], item["series_uid"], item["sop_instance_uid"]))
        body = stored["Body"].read()
        assert (stored["ContentType"], len(body)) == ("application/dicom+json", item["metadata_bytes"])
        text = json.dumps(json.loads(body), ensure_ascii=False)
        assert not [p for p in PLANTED if p in text]
    metadata = json.loads(body)
    assert len(metadata["52009230"]["Value"]) == FRAMES  # every frame's functional groups
    assert "00209158" not in json.dumps(metadata)  # Frame Comments removed (PS3.15 E.1-1: X) in every frame


def test_dicomjson_serves_the_whole_header_once_and_a_url_per_frame(api, local_system, enhanced, caplog):
    share = create(api, enhanced["study_uid"])
    assert redeem(api, share["token"])[0] == 200
    s3 = local_system.client("s3")
    stored = json.loads(s3.get_object(Bucket=local_system.resources.deid_bucket, Key=index.metadata_object_key(
        enhanced["study_uid"], enhanced["series_uid"], enhanced["sop_instance_uid"]))["Body"].read())
    pages = all_pages(api, "dicomjson", share["token"], enhanced["study_uid"], enhanced["series_uid"])
    assert all(len(json.dumps(p, separators=(",", ":"))) < ONE_MB for p in pages)
    entries = [e for p in pages for e in p["studies"][0]["series"][0]["instances"]]
    assert [e["url"].rpartition("&frame=")[2] for e in entries] == [str(k) for k in range(1, FRAMES + 1)]
    first = entries[0]["metadata"]
    groups = first["PerFrameFunctionalGroupsSequence"]
    assert len(groups) == FRAMES and len(stored["52009230"]["Value"]) == FRAMES
    assert [g["PlanePositionSequence"][0]["ImagePositionPatient"][2] for g in groups] == \
        [-0.625 * k for k in range(FRAMES)]
    assert first["SharedFunctionalGroupsSequence"][0]["PixelMeasuresSequence"][0]["PixelSpacing"] == [0.5, 0.5]
    assert first["NumberOfFrames"] == FRAMES and first["SOPInstanceUID"] == enhanced["sop_instance_uid"]
    assert all(set(e["metadata"]) == {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                                      "NumberOfFrames"} for e in entries[1:])
    assert "instance metadata unreadable" not in caplog.text


def test_an_unreadable_metadata_object_is_served_from_the_item(api, local_system, caplog):
    study = put_study(local_system, pseudonym="PSEUDO-META-LOST", study_date="20240405", slices=3)
    local_system.wait_idle()
    s3, bucket = local_system.client("s3"), local_system.resources.deid_bucket
    lost, garbled, kept = sorted(study.files)
    series = study.series_uids[0]
    s3.delete_object(Bucket=bucket, Key=index.metadata_object_key(study.study_uid, series, lost))
    s3.put_object(Bucket=bucket, Key=index.metadata_object_key(study.study_uid, series, garbled), Body=b"\x00{not json")
    share = create(api, study.study_uid)
    assert redeem(api, share["token"])[0] == 200
    (page,) = all_pages(api, "dicomjson", share["token"], study.study_uid, series)
    entries = {e["metadata"]["SOPInstanceUID"]: e["metadata"] for e in page["studies"][0]["series"][0]["instances"]}
    assert set(entries) == {lost, garbled, kept}
    for sop in (lost, garbled):
        assert (entries[sop]["Rows"], entries[sop]["Columns"], entries[sop]["Modality"]) == (64, 64, "CT")
        assert "PixelSpacing" not in entries[sop] and isinstance(entries[sop]["InstanceNumber"], int)
    assert entries[kept]["PixelSpacing"] and entries[kept]["Rows"] == 64
    warnings = [r for r in caplog.records if r.getMessage() == "instance metadata unreadable"]
    assert sorted(r.sop_instance_uid for r in warnings) == sorted([lost, garbled])
    assert "PSEUDO-META-LOST" not in caplog.text


def test_a_page_reads_only_the_metadata_it_can_hold():
    """The page is planned from the items' ``metadata_bytes`` before any object is read:
    about one page of metadata, at least one instance, none for a frame-resumed instance."""
    from dicomshare.manifest import ENTRY_BYTES, PAGE_BYTES, ohif_items

    def item(metadata_bytes: int, frames: int = 1) -> dict:
        return {"metadata_bytes": metadata_bytes, "number_of_frames": frames}

    assert ohif_items([item(300_000), item(300_000), item(10_000)]) == 2
    assert ohif_items([item(4 * ONE_MB), item(1_000)]) == 1
    assert ohif_items([item(1_000)] * 100) == 100
    huge = item(4 * ONE_MB, frames=100)
    assert ohif_items([huge, item(1_000)], first_frame=2) == 2  # its metadata was on an earlier page
    frames_left = 99 * ENTRY_BYTES
    fitting = (PAGE_BYTES - frames_left) // (1_000 + ENTRY_BYTES)  # small instances after its 99 frames
    assert ohif_items([huge, *[item(1_000)] * 300], first_frame=2) == 1 + fitting + 1  # + the one crossing
