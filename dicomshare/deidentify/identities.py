"""Keyed identities: new UIDs, the patient pseudonym and the date shift, from a secret.

Consistent without a lookup table: the same secret and original value always give the same
result, so every object of a study, every re-upload and every reference map the same way.
UIDs become ``2.25.<HMAC-SHA256(secret, uid) as a version-8 UUID>`` (PS3.5 B.2); Patient
ID and Patient's Name become ``DS-<base32>``; the date offset is 1 to 3650 days back.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
from functools import lru_cache

from dicomshare.deidentify.formatted import conforms

MAX_DATE_OFFSET_DAYS = 3650


@lru_cache(maxsize=16)
def _keyed(secret: bytes):
    """The HMAC-SHA256 state after the key (RFC 2104): copied for each message, set up once."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def _hmac(secret: bytes, message: bytes) -> bytes:
    mac = _keyed(secret).copy()
    mac.update(message)
    return mac.digest()


@lru_cache(maxsize=4096)
def new_uid(secret: bytes, uid: str) -> str:
    """The replacement for ``uid``: ``2.25.`` + a version-8 UUID from HMAC-SHA256 (PS3.5 B.2)."""
    digest = bytearray(_hmac(secret, b"uid\x00" + uid.encode("ascii", "replace"))[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(digest, 'big')}"


@lru_cache(maxsize=1024)
def patient_pseudonym(secret: bytes, patient_id: str) -> str:
    """Keyed pseudonym for a Patient ID: ``DS-`` + 26 base32 characters (fits SH/LO/PN)."""
    digest = _hmac(secret, b"patient\x00" + patient_id.encode("utf-8"))
    return "DS-" + base64.b32encode(digest[:16]).decode("ascii").rstrip("=")


@lru_cache(maxsize=1024)
def date_offset_days(secret: bytes, patient_id: str) -> int:
    """The patient's date shift: from -1 to -3650 days, the same for all of their studies."""
    digest = _hmac(secret, b"dateshift\x00" + patient_id.encode("utf-8"))
    return -(1 + int.from_bytes(digest[:8], "big") % MAX_DATE_OFFSET_DAYS)


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

