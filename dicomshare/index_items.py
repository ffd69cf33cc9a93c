"""Index items built from a de-identified instance (and quarantine records), as plain dicts.

The items follow the index model of :mod:`dicomshare.index`. Everything here is taken
from the *de-identified* dataset the engine produced, never from the uploaded file, so no
item can hold an identifying value; quarantine records hold no DICOM value at all (the
object was refused, its content is untrusted), only a hash of the original key.

``dicom_json`` is the DICOM JSON Model (PS3.18 Annex F.2) of a fixed list of header
attributes (:data:`DICOM_JSON_KEYWORDS`): what a viewer needs to lay out a series, nothing
that describes the patient.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydicom.dataset import Dataset

from dicomshare import index

DICOM_JSON_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "SeriesNumber", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
    "PlanarConfiguration", "NumberOfFrames", "PixelSpacing", "SliceThickness", "SliceLocation",
    "ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID", "WindowCenter",
    "WindowWidth", "RescaleIntercept", "RescaleSlope", "ImageType",
)
"""Attributes copied into an instance item's ``dicom_json`` (PS3.18 F.2), when present."""



def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return int(value)


def dicom_json(ds: Dataset) -> str:
    """PS3.18 F.2 JSON of the :data:`DICOM_JSON_KEYWORDS` present in ``ds``."""
    selected = Dataset()
    for keyword in DICOM_JSON_KEYWORDS:
        if keyword in ds and not ds.data_element(keyword).is_empty:
            selected.add(ds.data_element(keyword))
    return json.dumps(selected.to_json_dict(), sort_keys=True, separators=(",", ":"))


def instance_item(
    ds: Dataset,
    *,
    transfer_syntax_uid: str,
    s3_key: str,
    size: int,
    sha256: str | None,
    received_at: str,
    partner: str,
    patient_pseudonym: str,
) -> dict[str, Any]:
    """The instance item of a de-identified dataset.

    ``ds`` is the de-identified header; ``size`` and ``sha256`` describe the stored
    de-identified object at ``s3_key`` (``sha256`` is ``None``, and the attribute absent,
    when the pixel data was copied server-side and never hashed). The study and series attributes are repeated on
    every instance so the counts aggregator builds study and series items from the table
    stream alone.
    """
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    item: dict[str, Any] = {
        **index.instance_key(study, series, sop),
        "study_uid": study,
        "series_uid": series,
        "sop_instance_uid": sop,
        "sop_class_uid": str(ds.SOPClassUID),
        "s3_key": s3_key,
        "size": size,
        "transfer_syntax_uid": transfer_syntax_uid,
        "number_of_frames": _integer(ds, "NumberOfFrames") or 1,
        "rows": _integer(ds, "Rows") or 0,
        "columns": _integer(ds, "Columns") or 0,
        "received_at": received_at,
        "partner": partner,
        "modality": _text(ds, "Modality"),
        "series_description": _text(ds, "SeriesDescription"),
        "series_number": _text(ds, "SeriesNumber"),
        "patient_pseudonym": patient_pseudonym,
        "study_date": _text(ds, "StudyDate"),
        "study_time": _text(ds, "StudyTime"),
        "study_description": _text(ds, "StudyDescription"),
        "dicom_json": dicom_json(ds),
    }
    if sha256 is not None:
        item["sha256"] = sha256
    instance_number = _integer(ds, "InstanceNumber")
    if instance_number is not None:
        item["instance_number"] = instance_number
    return item


def object_id(bucket: str, key: str, version: str) -> str:
    """Identifier of one uploaded object version: SHA-256 of ``<bucket>/<key>/<version>``,
    32 hex digits. ``version`` is the S3 version id, or the ETag when unversioned."""
    return hashlib.sha256(f"{bucket}/{key}/{version}".encode()).hexdigest()[:32]


def key_sha256(key: str) -> str:
    """Hex SHA-256 of an uploaded object's key: what logs and records hold instead of the
    key, whose file name may contain a patient's name."""
    return hashlib.sha256(key.encode()).hexdigest()


def quarantine_object_key(partner: str, object_id_: str) -> str:
    """Key of a refused object in the quarantine bucket: never the original file name."""
    return f"{partner}/{object_id_}"


def quarantine_item(
    *,
    object_id_: str,
    reason: str,
    partner: str,
    size: int,
    original_key: str,
    received_at: str,
) -> dict[str, Any]:
    """The quarantine record of a refused object, listed in the ``QUARANTINE`` collection."""
    return {
        **index.quarantine_key(object_id_),
        "reason": reason,
        "partner": partner,
        "size": size,
        "quarantine_key": quarantine_object_key(partner, object_id_),
        "original_key_sha256": key_sha256(original_key),
        "received_at": received_at,
        "gsi2pk": index.QUARANTINE,
        "gsi2sk": f"{received_at}#{object_id_}",
    }
