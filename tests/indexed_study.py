"""A real DICOM study placed as the ingest pipeline leaves it: de-identified objects in the
de-identified bucket (so the preview Lambda renders them) with their metadata objects, and
instance items written with the ingest side's own item builder and conditional put; the
counts aggregator then builds the study and series items from the stream. Used by the
share API, page and preview tests."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field

from pydicom.uid import generate_uid

from dicomshare import index
from dicomshare.index_items import dicom_json, instance_item
from dicomshare_aws import instance_metadata
from dicomshare_aws.index_store import put_new
from dicomshare_local import demo



@dataclass
class IndexedStudy:
    study_uid: str
    pseudonym: str
    files: dict[str, bytes] = field(default_factory=dict)
    """SOPInstanceUID -> bytes of the de-identified object."""
    series_uids: list[str] = field(default_factory=list)


def put_study(system, *, pseudonym: str, study_date: str, slices: int = 3, size: int = 64,
              description: str = "CT ABDOMEN", series: int = 1, partner: str = "demo-partner") -> IndexedStudy:
    study_uid = generate_uid()
    study = IndexedStudy(study_uid, pseudonym)
    for number in range(1, series + 1):
        series_uid = generate_uid()
        study.series_uids.append(series_uid)
        for ds in demo.ct_series(slices, study_date, description, size=size):
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study_uid, series_uid, number
            ds.PatientName = ds.PatientID = pseudonym
            study.files[ds.SOPInstanceUID] = put_instance(system, ds, partner=partner, pseudonym=pseudonym)
    return study


def put_instance(system, ds, *, partner: str, pseudonym: str) -> bytes:
    """Store ``ds`` as the ingest side does: the object, its metadata object, then its item."""
    s3, dynamodb = system.client("s3"), system.client("dynamodb")
    data = demo.part10_bytes(ds)
    key = index.deidentified_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    s3.put_object(Bucket=system.resources.deid_bucket, Key=key, Body=data, ContentType="application/dicom")
    metadata = dicom_json(ds)
    item = instance_item(
        ds, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), received_at=now(), partner=partner,
        patient_pseudonym=pseudonym, metadata_bytes=len(metadata),
    )
    instance_metadata.store(s3, system.resources.deid_bucket, item, metadata)
    put_new(dynamodb, system.resources.table_name, item)
    return data


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def put_datasets(system, datasets, *, pseudonym: str, study_date: str) -> IndexedStudy:
    """Put arbitrary de-identified datasets (each keeps its own series) into one study."""
    study = IndexedStudy(generate_uid(), pseudonym)
    for ds in datasets:
        ds.StudyInstanceUID, ds.PatientName, ds.PatientID = study.study_uid, pseudonym, pseudonym
        ds.StudyDate = study_date
        if ds.SeriesInstanceUID not in study.series_uids:
            study.series_uids.append(ds.SeriesInstanceUID)
        study.files[ds.SOPInstanceUID] = put_instance(system, ds, partner="demo-partner", pseudonym=pseudonym)
    return study
