"""Index items built from a de-identified instance (and quarantine records), as plain dicts.

The items follow the index model of :mod:`dicomshare.index`. Everything here is taken
from the *de-identified* dataset the engine produced, never from the uploaded file, so no
item can hold an identifying value; quarantine records hold no DICOM value at all (the
object was refused, its content is untrusted), only a keyed hash of the original key.

Values that name things in paths or in the page are checked against their value
representation (PS3.5 6.2) before they are indexed: a Modality that is not a code string,
a Series or Instance Number that is not an integer string, is indexed as empty.

An instance's metadata for the viewer is the DICOM JSON Model (PS3.18 Annex F.2) of the
de-identified header, every attribute but bulk data (:func:`dicom_json`): what a viewer
needs to display any object we accept (palette lookup tables, segmentation and
functional-group sequences included), and nothing the de-identification removed. It is
stored as its own object beside the instance
(:func:`dicomshare.index.metadata_object_key`), not in the instance item: an enhanced
multi-frame header outgrows DynamoDB's 400 KB, and every byte of the item is written on
the study's instance partition (``INSTANCES#<study>``), the hottest per study. The item records only its size (``metadata_bytes``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from pydicom.datadict import tag_for_keyword
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

MAX_DICOM_JSON = 4 * 1024**2
"""Bound of the metadata in bytes: one instance's entry must fit one response of the viewer
document (``GET /share/dicomjson``) even uncompressed, within Lambda's 6 MB response, and
the API holds at most one page of metadata in memory. A 5,000-frame enhanced CT, whose
per-frame functional groups (frame content, plane position, pixel measures, VOI, pixel
value transformation) take 0.4–0.8 kB a frame in PS3.18 F.2 JSON, is 2–4 MB and fits.
Past the bound the largest attributes are left out, one by one, until it fits."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


CODE_STRING = re.compile(r"^[A-Z0-9 _]{1,16}$")
"""PS3.5 6.2 CS: upper-case letters, digits, space and underscore, at most 16 characters."""
INTEGER_STRING = re.compile(r"^[+-]?[0-9]{1,12}$")
"""PS3.5 6.2 IS: an optional sign and at most 12 characters in all (here: digits)."""


def _code_string(ds: Dataset, keyword: str) -> str:
    """A CS value as indexed: ``""`` unless it is a valid code string (``../../x`` or
    ``<img>`` in Modality never reaches the index, the API, or a path built from it)."""
    value = _text(ds, keyword)
    return value if CODE_STRING.match(value) else ""


def _integer_text(ds: Dataset, keyword: str) -> str:
    """An IS (or US) value as indexed text: ``""`` unless it is a valid integer string."""
    value = _text(ds, keyword)
    return value if INTEGER_STRING.match(value) else ""


CHECKED = {"Modality": _code_string, "SeriesNumber": _integer_text, "InstanceNumber": _integer_text}
"""Attributes left out of ``dicom_json`` when their value is not valid for its VR."""
_CHECKED_TAGS = {tag_for_keyword(keyword): (keyword, check) for keyword, check in CHECKED.items()}


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = _integer_text(ds, keyword)
    return int(value) if value else None


def dicom_json(ds: Dataset) -> str:
    """PS3.18 F.2 JSON of the header without bulk data: every attribute except
    :data:`BULK_DATA_TAGS`, overlay data (60xx,3000) and binary values over
    :data:`MAX_INLINE_BINARY`; attributes pydicom cannot encode (a messy archive's invalid
    values) are left out, and so are the :data:`CHECKED` attributes whose value is not valid
    for its VR. At most :data:`MAX_DICOM_JSON` bytes (ASCII: as many characters as bytes)."""
    elements: dict[str, Any] = {}
    for element in ds:
        tag = int(element.tag)
        if tag in BULK_DATA_TAGS or (tag >> 24 == 0x60 and tag & 0xFFFF == 0x3000):
            continue
        if tag in _CHECKED_TAGS and not _CHECKED_TAGS[tag][1](ds, _CHECKED_TAGS[tag][0]):
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
    size: int,
    sha256: str | None,
    received_at: str,
    partner: str,
    patient_pseudonym: str,
    metadata_bytes: int,
) -> dict[str, Any]:
    """The instance item of a de-identified dataset.

    ``ds`` is the de-identified header; ``size`` and ``sha256`` describe the stored
    de-identified object (at :func:`dicomshare.index.deidentified_object_key` of its UIDs,
    not repeated in the item; ``sha256`` is ``None``, and the attribute absent,
    when the pixel data was copied server-side and never hashed); ``metadata_bytes`` is the
    size of its stored metadata object (:func:`dicom_json`). The study and series attributes are repeated on
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
        "size": size,
        "transfer_syntax_uid": transfer_syntax_uid,
        "number_of_frames": _integer(ds, "NumberOfFrames") or 1,
        "rows": _integer(ds, "Rows") or 0,
        "columns": _integer(ds, "Columns") or 0,
        "received_at": received_at,
        "partner": partner,
        "modality": _code_string(ds, "Modality"),
        "series_description": _text(ds, "SeriesDescription"),
        "series_number": _integer_text(ds, "SeriesNumber"),
        "patient_pseudonym": patient_pseudonym,
        "study_date": _text(ds, "StudyDate"),
        "study_time": _text(ds, "StudyTime"),
        "study_description": _text(ds, "StudyDescription"),
        "metadata_bytes": metadata_bytes,
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


def key_fingerprint(secret: bytes, key: str) -> str:
    """HMAC-SHA256, keyed with the deployment secret, of an uploaded object's key: what logs
    and records hold instead of the key, whose file name may contain a patient's name. A
    plain hash would let anyone who guesses a key (``partner/DOE^JOHN/1.dcm``) confirm it;
    without the secret nobody can. The same key always gives the same fingerprint, so an
    operator with the secret can still find an object's log lines."""
    return hmac.new(secret, b"dicomshare object key\x00" + key.encode(), hashlib.sha256).hexdigest()


def quarantine_object_key(partner: str, object_id_: str) -> str:
    """Key of a refused object in the quarantine bucket: never the original file name."""
    return f"{partner}/{object_id_}"


def quarantine_item(
    *,
    object_id_: str,
    reason: str,
    partner: str,
    size: int,
    original_key_hmac: str,
    received_at: str,
) -> dict[str, Any]:
    """The quarantine record of a refused object, listed in the ``QUARANTINE`` collection."""
    return {
        **index.quarantine_key(object_id_),
        "reason": reason,
        "partner": partner,
        "size": size,
        "quarantine_key": quarantine_object_key(partner, object_id_),
        "original_key_hmac": original_key_hmac,
        "received_at": received_at,
        "gsi2pk": index.QUARANTINE,
        "gsi2sk": f"{received_at}#{object_id_}",
    }
