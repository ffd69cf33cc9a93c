"""Index items built from a de-identified instance (and quarantine records), as plain dicts.

The items follow the index model of :mod:`dicomshare.index`. Everything here is taken
from the *de-identified* dataset the engine produced, never from the uploaded file, so no
item can hold an identifying value; quarantine records hold no DICOM value at all (the
object was refused, its content is untrusted), only a keyed hash of the original key.

Values that name things in paths or in the page are checked against their value
representation (PS3.5 6.2) before they are indexed: a Modality that is not a code string,
a Series or Instance Number that is not an integer string, is indexed as empty.

``dicom_json`` is the DICOM JSON Model (PS3.18 Annex F.2) of a fixed list of header
attributes (:data:`DICOM_JSON_KEYWORDS`): what a viewer needs to lay out a series, nothing
that describes the patient.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
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


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = _integer_text(ds, keyword)
    return int(value) if value else None


def dicom_json(ds: Dataset) -> str:
    """PS3.18 F.2 JSON of the :data:`DICOM_JSON_KEYWORDS` present in ``ds``."""
    selected = Dataset()
    for keyword in DICOM_JSON_KEYWORDS:
        if keyword in CHECKED and not CHECKED[keyword](ds, keyword):
            continue
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
        "modality": _code_string(ds, "Modality"),
        "series_description": _text(ds, "SeriesDescription"),
        "series_number": _integer_text(ds, "SeriesNumber"),
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
