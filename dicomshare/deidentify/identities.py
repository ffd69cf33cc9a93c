"""Keyed identities: new UIDs, the patient pseudonym and the date shift, from a secret,
scoped per partner.

Consistent without a lookup table: the same secret, partner and original value always give
the same result, so every object of a study, every re-upload and every reference map the
same way. Two partners never meet: the same MRN or the same original UID at two partners
gives two pseudonyms, two date shifts and two new UIDs (hospitals reuse MRNs, and some
re-use UIDs). Derivation :data:`IDENTITIES_VERSION`, recorded in every output's
De-identification Method:

- a UID becomes ``2.25.<HMAC-SHA256(secret, "uid", partner, uid) as a version-8 UUID>``
  (PS3.5 B.2);
- Patient ID and Patient's Name become ``DS-<base32(HMAC(secret, "patient", partner,
  Issuer of Patient ID, Patient ID))>``; an object without Patient ID takes the pseudonym
  of its study's patient when the caller knows it, else one keyed from its study
  (:func:`study_pseudonym`);
- the date offset, 1 to 3650 days back, is keyed from the pseudonym alone, so whoever
  knows a study's pseudonym shifts its dates the same way.

Each field of a message is length-prefixed, so no choice of values makes two messages
equal.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
from functools import lru_cache
from typing import Callable

from dicomshare.deidentify.formatted import conforms

MAX_DATE_OFFSET_DAYS = 3650
IDENTITIES_VERSION = "dicomshare identities v2"
"""The derivation above (v1 keyed from the secret and Patient ID or UID only, not per partner)."""
PSEUDONYM = re.compile(r"DS-[A-Z2-7]{26}")


@lru_cache(maxsize=16)
def _keyed(secret: bytes):
    """The HMAC-SHA256 state after the key (RFC 2104): copied for each message, set up once."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def _hmac(secret: bytes, *fields: str) -> bytes:
    """HMAC-SHA256 of the fields, each as its UTF-8 length (4 bytes) and bytes."""
    mac = _keyed(secret).copy()
    for text in fields:
        encoded = text.encode("utf-8", "surrogatepass")
        mac.update(len(encoded).to_bytes(4, "big") + encoded)
    return mac.digest()


@lru_cache(maxsize=4096)
def new_uid(secret: bytes, partner: str, uid: str) -> str:
    """The replacement for ``uid`` sent by ``partner``: ``2.25.`` + a version-8 UUID from
    HMAC-SHA256 (PS3.5 B.2)."""
    digest = bytearray(_hmac(secret, "uid", partner, uid)[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _pseudonym(digest: bytes) -> str:
    return "DS-" + base64.b32encode(digest[:16]).decode("ascii").rstrip("=")


@lru_cache(maxsize=1024)
def patient_pseudonym(secret: bytes, partner: str, issuer: str, patient_id: str) -> str:
    """The pseudonym of Patient ID ``patient_id`` issued by ``issuer`` (Issuer of Patient
    ID, ``""`` when absent) at ``partner``: ``DS-`` + 26 base32 characters (fits SH/LO/PN)."""
    return _pseudonym(_hmac(secret, "patient", partner, issuer, patient_id))


@lru_cache(maxsize=1024)
def study_pseudonym(secret: bytes, partner: str, study_instance_uid: str) -> str:
    """The pseudonym of an object without Patient ID whose study's patient is unknown:
    keyed from its (original) Study Instance UID, so the files of such a study stay together."""
    return _pseudonym(_hmac(secret, "study patient", partner, study_instance_uid))


@lru_cache(maxsize=1024)
def date_offset_days(secret: bytes, pseudonym: str) -> int:
    """The date shift of the patient with ``pseudonym``: from -1 to -3650 days, the same
    for all of their studies."""
    digest = _hmac(secret, "dateshift", pseudonym)
    return -(1 + int.from_bytes(digest[:8], "big") % MAX_DATE_OFFSET_DAYS)


def object_pseudonym(
    secret: bytes,
    partner: str,
    issuer: str,
    patient_id: str,
    study_instance_uid: str,
    study_patient: Callable[[str], str | None] | None,
) -> str:
    """The pseudonym of one object: from its Patient ID (and issuer) when it has one; else
    its study's patient's, which ``study_patient`` gives for the *new* Study Instance UID
    (``None`` when unknown); else :func:`study_pseudonym`.

    ``ValueError`` when ``study_patient`` gives something that is not a pseudonym.
    """
    if patient_id:
        return patient_pseudonym(secret, partner, issuer, patient_id)
    known = study_patient(new_uid(secret, partner, study_instance_uid)) if study_patient else None
    if known is None:
        return study_pseudonym(secret, partner, study_instance_uid)
    if not PSEUDONYM.fullmatch(known):
        raise ValueError("the study's patient is not a pseudonym")
    return known


def shift_date(value: str, days: int) -> str:
    """Shift a DA value (or DA range, PS3.5 Table 6.2-1) by ``days``; ``""`` if unparseable."""
    if "-" in value:
        return "-".join(shift_date(part, days) if part else "" for part in value.split("-"))
    text = value.strip()
    if not re.fullmatch(r"\d{8}", text):
        return ""
    try:
        day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (day + datetime.timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value, keeping its precision, time and UTC offset;
    ``""`` unless it follows the DT grammar (PS3.5 Table 6.2-1)."""
    if not conforms("DT", value.strip()):
        return ""
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?([^+\-]*)([+\-]\d{4})?", value.strip())
    if not match:
        return ""
    year, month, day, rest, offset = match.groups()
    shifted = shift_date(f"{year}{month or '01'}{day or '01'}", days)
    if not shifted:
        return ""
    precision = 4 + (2 if month else 0) + (2 if day else 0)
    return shifted[:precision] + (rest or "") + (offset or "")

