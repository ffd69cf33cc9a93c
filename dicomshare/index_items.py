"""Index items built from a de-identified instance (and quarantine records), as plain dicts.

The items follow the index model of :mod:`dicomshare.index`. Everything here is taken
from the *de-identified* dataset the engine produced, never from the uploaded file, so no
item can hold an identifying value; quarantine records hold no DICOM value at all (the
object was refused, its content is untrusted), only a hash of the original key.

``dicom_json`` is the DICOM JSON Model (PS3.18 Annex F.2) of the de-identified header,
every attribute but bulk data (:func:`dicom_json`): what a viewer needs to display any
object we accept (palette lookup tables, segmentation and functional-group sequences
included), and nothing the de-identification removed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydicom.dataset import Dataset

from dicomshare import index

BULK_DATA_TAGS = frozenset({
    0x7FE00008, 0x7FE00009, 0x7FE00010,  # Float, Double Float and Pixel Data
    0x00880200,  # Icon Image Sequence (a thumbnail's pixels)
    0x00420011,  # Encapsulated Document
    0x54000100,  # Waveform Sequence
    0x56000020,  # Spectroscopy Data
})
"""Attributes left out of ``dicom_json``: pixel and other bulk data (PS3.18 F.2.7)."""

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
MAX_INLINE_BINARY = 128 * 1024
"""Binary values up to this size are kept inline (a 65,536-entry 16-bit palette lookup
table is exactly this); larger ones are bulk data and left out."""

MAX_DICOM_JSON = 300 * 1024
"""Bound of ``dicom_json`` in bytes, so an instance item stays under DynamoDB's 400 KB: past
it, the largest attributes are left out, one by one, until it fits."""

UNKNOWN_PARTNER = "unknown"
"""Partner recorded for objects outside every configured ``<partner-id>/`` prefix: the
prefix itself is untrusted text and is never stored."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return int(value)


def dicom_json(ds: Dataset) -> str:
    """PS3.18 F.2 JSON of the header without bulk data: every attribute except
    :data:`BULK_DATA_TAGS`, overlay data (60xx,3000) and binary values over
    :data:`MAX_INLINE_BINARY`; attributes pydicom cannot encode (a messy archive's invalid
    values) are left out. At most :data:`MAX_DICOM_JSON` bytes."""
    elements: dict[str, Any] = {}
    for element in ds:
        tag = int(element.tag)
        if tag in BULK_DATA_TAGS or (tag >> 24 == 0x60 and tag & 0xFFFF == 0x3000):
            continue
        if element.VR in BINARY_VRS and element.value is not None and len(element.value) > MAX_INLINE_BINARY:
            continue
        try:
            elements[f"{tag:08X}"] = element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=0)
        except (ValueError, TypeError, OverflowError):
            continue
    sizes = {tag: len(json.dumps(value, separators=(",", ":"))) for tag, value in elements.items()}
    total = sum(sizes.values()) + 8 * len(sizes)
    for tag in sorted(sizes, key=sizes.get, reverse=True):
        if total <= MAX_DICOM_JSON:
            break
        total -= sizes[tag] + 8
        del elements[tag]
    return json.dumps(elements, sort_keys=True, separators=(",", ":"))


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
