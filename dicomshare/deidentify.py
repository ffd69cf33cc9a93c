"""The de-identification engine: PS3.15 Annex E, streaming, consistent without a lookup table.

:func:`deidentify_header` reads an object up to its Pixel Data element and returns a
:class:`Plan`: the new bytes that replace everything before Pixel Data, and the byte range
of the source's Pixel Data element, which is copied verbatim (native or encapsulated).
The output is always::

    plan.new_header + source[plan.pixel_offset:plan.pixel_end]

so pixel data is never held in memory and, on S3, can be copied server-side. Anything
after the Pixel Data element (Data Set Trailing Padding (FFFC,FFFC), Digital Signatures
(FFFA,FFFA)) is dropped. When ``plan.pixel_offset`` is ``None`` (no Pixel Data, or the
Deflated transfer syntax, PS3.5 A.5, which cannot be spliced and is rewritten in memory up
to :data:`DEFLATED_MAX_BYTES`) ``new_header`` is the whole output.

What is done to each attribute (see ``docs/deidentification.md``):

- attributes listed in PS3.15 Table E.1-1 take the :class:`~dicomshare.profile.Profile`
  action, at every nesting depth of every sequence; all private attributes are removed;
  an overlay group (60xx) goes whole when its Overlay Data is removed;
- attributes *not* in the table: Person Names are emptied; dates (DA, DT) are shifted with
  the patient's offset under the modified-dates option, kept under the full-dates option
  and emptied otherwise, times (TM) are kept under either option and emptied otherwise;
  UIDs are replaced (well-known and class UIDs are kept); free text (AE, LO, LT, SH, ST,
  UC, UR, UT) gets a dummy value unless it is a coded-entry or equipment attribute of
  :data:`KEPT_TEXT`;
  attributes unknown to the data dictionary are removed; everything else is kept;
- the File Meta Information (PS3.10 7.1) is rebuilt: only version, SOP class, the new SOP
  instance UID, transfer syntax and this implementation's identity remain.

UIDs become ``2.25.<HMAC-SHA256(secret, uid) as a version-8 UUID>`` (PS3.5 B.2), so
every object of a study, every re-upload and every reference map the same way. Patient
ID and Patient's Name become the keyed pseudonym ``DS-<base32>``; the date offset is
derived from the secret and the original Patient ID (1 to 3650 days back).
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import struct
import threading
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import chain
from typing import BinaryIO, Iterable, Iterator

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.charset import default_encoding
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from dicomshare import profile as profiles
from dicomshare.encoded_dataset import (
    VRS,
    Element,
    Incomplete,
    NotPlain,
    element_bytes,
    implicit_vr,
    item_bytes,
    read_data_set,
    sequence_bytes,
)
from dicomshare.profile import CLEAN, DUMMY, EMPTY, KEEP, REMOVE, UID, Profile
from dicomshare.settings import Settings
from dicomshare.validation import (
    CHECKED,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MALFORMED,
    MISSING_REQUIRED,
    NOT_DICOM,
    TRUNCATED,
    UNSUPPORTED_TRANSFER_SYNTAX,
    SUPPORTED_TRANSFER_SYNTAXES,
    DeidentificationRefused,
    check_attributes,
    check_preamble,
    check_size,
    check_transfer_syntax,
    pixel_data_end,
    transfer_syntax_encoding,
)

__all__ = [
    "DeidentificationRefused",
    "Plan",
    "deidentify_header",
    "deidentify_file",
    "write_output",
    "new_uid",
    "patient_pseudonym",
    "date_offset_days",
]

IMPLEMENTATION_CLASS_UID = "2.25.104380893744129446262960219330931745792"
"""(0002,0012) of every output: this implementation, not the source's."""
IMPLEMENTATION_VERSION_NAME = "DICOMSHARE_0_1"

DEFLATED_MAX_BYTES = 64 * 1024**2
"""Deflated objects are rewritten in memory; larger ones are refused."""

COPY_CHUNK_BYTES = 1024**2

SPLICE_PIPE_BYTES = 1024**2
"""Between two files, Pixel Data up to this size moves through a pipe of this size; larger
Pixel Data keeps its source's offset within a page and is copied range by range
(:func:`_kernel_copy`)."""
PAGE_BYTES = 4096
KERNEL_PIPE_BYTES = 16 * PAGE_BYTES
"""What ``copy_file_range`` moves at a time on a file system without shared extents."""

_PARTIAL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
"""The partial output is a new file (never an existing one), private (0600) until renamed."""

PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
"""Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3)."""
_PIXEL_DATA_TAG_SET = frozenset(PIXEL_DATA_TAGS)

MAX_DATE_OFFSET_DAYS = 3650

_UNDEFINED_LENGTH = 0xFFFFFFFF

ACTION_CACHE_SIZE = 65536

KEPT_TEXT = frozenset(
    {
        0x00080100,  # Code Value
        0x00080102,  # Coding Scheme Designator
        0x00080103,  # Coding Scheme Version
        0x00080104,  # Code Meaning
        0x00080105,  # Mapping Resource
        0x00080106,  # Context Group Version
        0x0008010F,  # Context Identifier
        0x00080119,  # Long Code Value
        0x00080120,  # URN Code Value
        0x00080070,  # Manufacturer
        0x00081090,  # Manufacturer's Model Name
        0x00181020,  # Software Versions
        0x00281054,  # Rescale Type
        0x00283003,  # LUT Explanation
        0x00281055,  # Window Center & Width Explanation
        0x00180024,  # Sequence Name
        0x00180085,  # Imaged Nucleus
        0x00181040,  # Contrast/Bolus Route
        0x00181160,  # Filter Type
        0x00181210,  # Convolution Kernel
        0x00181250,  # Receive Coil Name
        0x00181251,  # Transmit Coil Name
        0x00189005,  # Pulse Sequence Name
    }
)
"""Text attributes outside Table E.1-1 kept verbatim: coded entries (PS3.3 8.8) and
equipment, acquisition-technique and LUT vocabulary. Any other non-empty text attribute outside the table gets a
dummy value (valid whether the attribute is Type 1, 2 or 3)."""

KEPT_UID_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "MediaStorageSOPClassUID",
        "AffectedSOPClassUID",
        "RequestedSOPClassUID",
        "ReferencedSOPClassUIDInFile",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "SOPClassesInStudy",
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "MappingResourceUID",
        "ContextUID",
        "PrivateInformationCreatorUID",
        "ImplementationClassUID",
    }
)
"""UI attributes naming a class, syntax or scheme, never an instance: always kept."""
KEPT_UID_TAGS = frozenset(tag_for_keyword(keyword) for keyword in KEPT_UID_KEYWORDS)

PSEUDONYM = "P"
"""The action for Patient ID and Patient's Name: the keyed pseudonym."""

_TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS = frozenset({"DA", "DT"})
_DUMMY = {
    "AE": "ANONYMIZED",
    "AS": "000D",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UT": "ANONYMIZED",
}
_CLEANABLE_VRS = _TEXT_VRS | _DATE_VRS | {"TM", "UI", "PN"}
_IDENTIFIER_VRS = _TEXT_VRS | _DATE_VRS | {"PN", "UI"}
_NUMERIC_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})
_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%Y/%m/%d", "%d %b %Y", "%b %d %Y")


@dataclass(frozen=True)
class Plan:
    """The result of :func:`deidentify_header`.

    ``new_header``: preamble, File Meta Information and the de-identified data set up to
    (excluding) Pixel Data. ``pixel_offset``/``pixel_end``: the source byte range of the
    Pixel Data element to append verbatim; ``pixel_offset`` is ``None`` when
    ``new_header`` is the whole output. The UIDs are the output's.
    """

    new_header: bytes
    pixel_offset: int | None
    pixel_end: int
    patient_pseudonym: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @property
    def pixel_length(self) -> int:
        return 0 if self.pixel_offset is None else self.pixel_end - self.pixel_offset

    @property
    def output_size(self) -> int:
        return len(self.new_header) + self.pixel_length

    @property
    def relative_path(self) -> str:
        """``<study>/<series>/<sop>.dcm``, from the new UIDs only."""
        return f"{self.study_instance_uid}/{self.series_instance_uid}/{self.sop_instance_uid}.dcm"

    @cached_property
    def dataset(self) -> Dataset:
        """The de-identified data set without pixel data (for the indexer), read from ``new_header``."""
        with _quiet_pydicom():
            return pydicom.dcmread(io.BytesIO(self.new_header), stop_before_pixels=True)


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


def _shift_date(value: str, days: int) -> str:
    """Shift a DA value (or DA range, PS3.5 Table 6.2-1) by ``days``; ``""`` if unparseable."""
    if "-" in value:
        return "-".join(_shift_date(part, days) if part else "" for part in value.split("-"))
    text = value.strip()
    if not re.fullmatch(r"\d{8}", text):
        return ""
    try:
        day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (day + datetime.timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def _shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value, keeping its precision, time and UTC offset."""
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?([^+\-]*)([+\-]\d{4})?", value.strip())
    if not match:
        return ""
    year, month, day, rest, offset = match.groups()
    shifted = _shift_date(f"{year}{month or '01'}{day or '01'}", days)
    if not shifted:
        return ""
    precision = 4 + (2 if month else 0) + (2 if day else 0)
    return shifted[:precision] + (rest or "") + (offset or "")


def _values(value: object) -> list:
    return list(value) if isinstance(value, (MultiValue, list)) else [value]


def _longest_first(text: str) -> tuple[int, str]:
    """Removal order for Clean Descriptors: longest first, ties by value (never by a set's
    iteration order, which changes between processes)."""
    return -len(text), text


def _cleaned(text: str, identifiers: Iterable[str], words: Iterable[str]) -> str:
    """PS3.15 E.3.5 Clean Descriptors: ``text`` without ``identifiers`` (anywhere) and
    ``words`` (as whole words), ignoring case, longest first."""
    folded = text.casefold()
    for value in sorted(identifiers, key=_longest_first):
        if value.casefold() in folded:
            text = re.sub(re.escape(value), "", text, flags=re.IGNORECASE)
            folded = text.casefold()
    for word in sorted(words, key=_longest_first):
        if word.casefold() in folded:
            text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", "", text, flags=re.IGNORECASE)
            folded = text.casefold()
    return re.sub(r"\s{2,}", " ", text).strip()


_ACTIONS: dict[Profile, dict[tuple[int, str], str]] = {}
"""Per profile, the action of each (tag, VR) met so far: see :meth:`_Deidentifier.action`."""


class _Deidentifier:
    """One object's de-identification: the profile, the keys and the values to clean out.

    The rules work on an element's tag, VR and decoded string values, so the pydicom path
    (:meth:`collect`, :meth:`apply`) and the encoded path (:func:`_rewrite_encoded`) share them.
    """

    def __init__(self, profile: Profile, secret: bytes, patient_id: str, study_instance_uid: str) -> None:
        self.profile = profile
        self.secret = secret
        self.dates = (
            KEEP if "rtnLongFullDatesOpt" in profile.options
            else CLEAN if "rtnLongModifDatesOpt" in profile.options
            else EMPTY
        )
        self.patient_key = patient_id or f"study:{study_instance_uid}"
        self.pseudonym = patient_pseudonym(secret, self.patient_key)
        self.offset = date_offset_days(secret, self.patient_key)
        self.identifiers: set[str] = set()
        self.words: set[str] = set()
        self._actions = _ACTIONS.setdefault(profile, {})

    def action(self, tag: int, vr: str) -> str:
        """The action for one element, from its tag and VR only (its value stays raw).

        It depends on the profile, tag and VR only, so it is worked out once per profile
        (up to :data:`ACTION_CACHE_SIZE` pairs: private tags are unbounded).
        """
        key = (tag, vr)
        found = self._actions.get(key)
        if found is None:
            found = self._find_action(tag, vr)
            if len(self._actions) < ACTION_CACHE_SIZE:
                self._actions[key] = found
        return found

    def _find_action(self, tag: int, vr: str) -> str:
        group = tag >> 16
        if tag & 0xFFFF == 0 or group in (0x0000, 0x0002):
            return REMOVE
        if tag in (0x00100010, 0x00100020) and self.profile.action(tag) != KEEP:
            return PSEUDONYM
        found = self.profile.action(tag)
        if 0x6000 <= group <= 0x60FF and self.profile.action((group << 16) | 0x3000) == REMOVE:
            return REMOVE
        if found is not None:
            return found
        if not keyword_for_tag(tag) and tag != 0x00080005:
            return REMOVE
        if vr == "PN":
            return EMPTY
        if vr in _DATE_VRS:
            return self.dates
        if vr == "TM":
            return KEEP if self.dates != EMPTY else EMPTY
        if vr == "UI":
            return UID
        if vr in _TEXT_VRS:
            return KEEP if tag in KEPT_TEXT else DUMMY
        if vr == "UN":
            return REMOVE
        return KEEP

    def notes(self, action: str, vr: str) -> bool:
        """Whether an element's values are identifiers for Clean (see :meth:`note`)."""
        return (
            action != KEEP
            and not (action == CLEAN and vr in _TEXT_VRS)
            and vr in _IDENTIFIER_VRS
        )

    @staticmethod
    def note(tag: int, vr: str, values: list[str]) -> tuple[frozenset[str], frozenset[str]]:
        """The identifiers and words, for Clean Descriptors, in the values of an element that
        is not kept (for :meth:`add_identifiers`)."""
        identifiers: set[str] = set()
        words: set[str] = set()
        for value in values:
            text = value.strip()
            if len(text) >= 3:
                identifiers.add(text)
            if vr == "PN" or tag in (0x00100020, 0x00080050, 0x00080080):
                words.update(w for w in re.split(r"[\s^=,.\-/]+", text) if len(w) >= 2)
            if vr == "DA":
                identifiers.update(_date_spellings(text))
        return frozenset(identifiers), frozenset(words)

    def add_identifiers(self, identifiers: set[str] | frozenset[str], words: set[str] | frozenset[str]) -> None:
        self.identifiers |= identifiers
        self.words |= words

    def collect(self, ds: Dataset) -> None:
        """Gather every identifying value (anything not kept, descriptors aside) for Clean."""
        for tag in list(ds.keys()):
            vr = _vr(ds, tag)
            if vr == "SQ":
                for item in ds[tag].value:
                    self.collect(item)
            elif self.notes(self.action(int(tag), vr), vr):
                elem = ds[tag]
                self.add_identifiers(*self.note(int(tag), elem.VR, [str(v or "") for v in _values(elem.value)]))

    def clean_text(self, text: str) -> str:
        """PS3.15 E.3.5 Clean Descriptors: remove every identifying value of the header."""
        folded = text.casefold()
        if any(map(folded.__contains__, map(str.casefold, chain(self.identifiers, self.words)))):
            return _cleaned(text, self.identifiers, self.words)
        return re.sub(r"\s{2,}", " ", text).strip()  # as _cleaned gives it: nothing to remove

    def replace_uid(self, tag: int, value: str) -> str:
        if not value or value in UID_dictionary or tag in KEPT_UID_TAGS:
            return value
        return new_uid(self.secret, value)

    def change(self, tag: int, vr: str, action: str, values: list[str], empty: bool) -> list | str | None:
        """The new value of a (non-sequence) element under ``action``, neither remove nor keep.

        ``values`` are its decoded values as strings, ``empty`` whether it has none.
        Returns the new values (a list), ``None`` for an empty value, or :data:`REMOVE`.
        """
        if action == PSEUDONYM:
            return [self.pseudonym]
        if action == EMPTY:
            return None
        if action == UID or (action == DUMMY and vr == "UI"):
            return [self.replace_uid(tag, v) for v in values] or None if vr == "UI" else None
        if action == DUMMY:
            return None if empty else self._dummy(vr)
        if action == CLEAN and vr in _CLEANABLE_VRS:
            return self._clean(tag, vr, values)
        if action == CLEAN:
            basic = self.profile.basic_actions.get(tag, REMOVE)
            if basic == REMOVE:
                return REMOVE
            return None if basic == EMPTY or empty or vr not in _DUMMY else self._dummy(vr)
        raise ValueError(f"no rule for action {action}")

    def apply(self, ds: Dataset) -> None:
        """Apply the profile to every element of ``ds`` and, recursively, its sequences."""
        for tag in list(ds.keys()):
            vr = _vr(ds, tag)
            action = self.action(int(tag), vr)
            if action == REMOVE:
                del ds[tag]
                continue
            if action == KEEP and vr != "SQ":
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                if action == EMPTY:
                    elem.value = Sequence()
                else:
                    for item in elem.value:
                        self.apply(item)
                continue
            values = [str(v) for v in _values(elem.value) if v is not None]
            new = self.change(int(tag), elem.VR, action, values, elem.is_empty)
            if new == REMOVE:
                del ds[tag]
            else:
                elem.value = new[0] if new and len(new) == 1 else new

    def _dummy(self, vr: str) -> list | None:
        if vr in _NUMERIC_VRS:
            return [0]
        return [_DUMMY[vr]] if vr in _DUMMY else None

    def _clean(self, tag: int, vr: str, values: list[str]) -> list[str] | None:
        if vr == "DA":
            return [_shift_date(v, self.offset) for v in values] or None if self.dates == CLEAN else None
        if vr == "DT":
            return [_shift_datetime(v, self.offset) for v in values] or None if self.dates == CLEAN else None
        if vr == "TM":
            return values or None if self.dates != EMPTY else None
        if vr in _TEXT_VRS:
            return [self.clean_text(v) for v in values] or None
        if vr == "PN":
            return None
        return [self.replace_uid(tag, v) for v in values] or None

    def record(self, ds: Dataset, encoding: tuple[bool, bool]) -> None:
        """PS3.15 E.1.1 and PS3.3 C.7.1.1: what was done, in the output itself.

        ``encoding`` is ``(little_endian, implicit_vr)`` of the output's data set.
        """
        for elem in _record_elements(self.profile, self.dates, *encoding):
            ds[elem.tag] = elem


@lru_cache(maxsize=64)
def _record_elements(profile: Profile, dates: str, little_endian: bool, implicit_vr: bool) -> tuple:
    """The elements :meth:`_Deidentifier.record` adds, encoded once per profile and encoding.

    They depend on the profile only, so they are built and encoded with pydicom once and
    kept as raw (immutable) elements: every output gets the same bytes, written straight
    through, and reading them from ``Plan.dataset`` decodes them as usual.
    """
    ds = Dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = profile.method
    items = []
    for code in profile.codes:
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme_designator
        item.CodeMeaning = code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = {KEEP: "UNMODIFIED", CLEAN: "MODIFIED", EMPTY: "REMOVED"}[dates]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little_endian, implicit_vr
    write_dataset(buffer, ds)
    length = buffer.tell()
    buffer.seek(0)
    encoded = read_dataset(buffer, implicit_vr, little_endian, length)
    return tuple(encoded.get_item(tag) for tag in encoded.keys())


def _vr(ds: Dataset, tag: int) -> str:
    """An element's VR without converting its value: as encoded, else the dictionary's."""
    vr = ds.get_item(tag).VR
    if vr in (None, "UN"):
        try:
            return dictionary_VR(tag)
        except KeyError:
            return vr or "UN"
    return vr


@lru_cache(maxsize=1024)
def _date_spellings(value: str) -> tuple[str, ...]:
    """The ways a DA value may be written in free text (:data:`_DATE_FORMATS`)."""
    if not re.fullmatch(r"\d{8}", value):
        return ()
    try:
        day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return ()
    return tuple(day.strftime(fmt) for fmt in _DATE_FORMATS)


def _file_meta(sop_class_uid: object, sop_instance_uid: object, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element, Explicit VR Little Endian (PS3.10 7.1, PS3.5 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _text(value: object, padding: bytes) -> bytes:
    """A UI or SH value as pydicom writes it: values joined with ``\\``, padded to even length."""
    text = "\\".join(value) if isinstance(value, (MultiValue, list)) else str(value)
    encoded = text.encode("iso8859")
    return encoded + padding if len(encoded) % 2 else encoded


def _header_bytes(
    sop_class_uid: object, sop_instance_uid: object, transfer_syntax: str, data_set: bytes, pixel_data: tuple[int, int] | None
) -> bytes:
    """Preamble, ``DICM``, File Meta Information (PS3.10 7.1), that of :func:`_file_meta`,
    and ``data_set``.

    When the source range ``pixel_data`` that follows is larger than
    :data:`SPLICE_PIPE_BYTES`, the group ends with Private Information (0002,0100)/(0002,0102)
    of zero bytes so that Pixel Data starts at its source's offset within a page, as
    :func:`_kernel_copy` needs; at most :data:`PAGE_BYTES` plus the creator are added.
    """
    before, after = _meta_around_instance(_text(sop_class_uid, b"\x00"), transfer_syntax)
    elements = before + _meta_element(0x00020003, b"UI", _text(sop_instance_uid, b"\x00")) + after
    if pixel_data is not None and pixel_data[1] - pixel_data[0] > SPLICE_PIPE_BYTES:
        creator = _meta_element(0x00020100, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\x00"))
        unpadded = 128 + 4 + 12 + len(elements) + len(creator) + 12 + len(data_set)
        padding = (pixel_data[0] - unpadded) % PAGE_BYTES
        if padding % 2 == 0:
            elements += creator + _meta_element(0x00020102, b"OB", bytes(padding))
    group_length = _meta_element(0x00020000, b"UL", struct.pack("<L", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements + data_set


@lru_cache(maxsize=64)
def _meta_around_instance(sop_class_uid: bytes, transfer_syntax: str) -> tuple[bytes, bytes]:
    """The File Meta elements of :func:`_header_bytes` before and after (0002,0003)."""
    return (
        _meta_element(0x00020001, b"OB", b"\x00\x01") + _meta_element(0x00020002, b"UI", sop_class_uid),
        _meta_element(0x00020010, b"UI", _text(transfer_syntax, b"\x00"))
        + _meta_element(0x00020012, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\x00"))
        + _meta_element(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION_NAME, b" ")),
    )


def _encode(ds: Dataset, transfer_syntax: str, pixel_data: tuple[int, int] | None) -> bytes:
    """Everything before Pixel Data: :func:`_header_bytes` with the data set ``ds``.

    The data set's bytes are those ``pydicom.dcmwrite(..., enforce_file_format=True)``
    writes. The Deflated transfer syntax goes through ``dcmwrite``, which compresses the
    data set (and its output is whole: no Pixel Data follows).
    """
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = transfer_syntax_encoding(transfer_syntax)
    _write_dataset(buffer, ds)
    return _header_bytes(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax, buffer.getvalue(), pixel_data)


def _write_dataset(fp: DicomBytesIO, ds: Dataset) -> None:
    """pydicom's ``write_dataset``, with the simple elements written directly.

    A kept value is never decoded (a ``RawDataElement``, the source's bytes) and a new
    value is mostly plain ASCII text (UIDs, pseudonyms, dummies, shifted dates); pydicom
    writes both as they are after its general per-element set-up. Here their tag, VR and
    length (PS3.5 7.1.2, 7.1.3) are written directly (:func:`_ascii_value` says which new
    values qualify). Every other element, and any data set whose encoding or character set
    changes (pydicom then decodes and re-encodes every value), goes through pydicom, as do
    undefined lengths and values too long for a 16-bit length.
    """
    # pydicom 3.0's own test for "re-encode everything" (filewriter.write_dataset)
    if ds.original_encoding != (fp.is_implicit_VR, fp.is_little_endian) or (
        ds.original_character_set != ds._character_set
    ):
        write_dataset(fp, ds)
        return
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    explicit = not fp.is_implicit_VR
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue
        elem = ds.get_item(tag)
        if elem.is_raw:
            value = None if elem.length == _UNDEFINED_LENGTH else elem.value
        else:
            value = _ascii_value(elem)
        vr = elem.VR
        if value is None:
            write_data_element(fp, elem, encodings)
        elif not explicit:
            fp.write_tag(tag)
            fp.write_UL(len(value))
            fp.write(value)
        elif vr in EXPLICIT_VR_LENGTH_32:
            fp.write_tag(tag)
            fp.write(vr.encode("ascii") + b"\x00\x00")
            fp.write_UL(len(value))
            fp.write(value)
        elif vr and len(vr) == 2 and len(value) <= 0xFFFF:
            fp.write_tag(tag)
            fp.write(vr.encode("ascii"))
            fp.write_US(len(value))
            fp.write(value)
        else:
            write_data_element(fp, elem, encodings)


_ASCII_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "LO", "LT", "SH", "ST", "UC", "UT"})


def _ascii_value(elem: DataElement) -> bytes | None:
    """The value bytes pydicom writes for a decoded string element whose values are all
    plain ``str`` in ASCII (joined with ``\\``, padded to even length with a space, or NUL
    for UI); ``None`` for anything else (numbers, names, dates as objects, other text).

    In ASCII every character set this writer meets (the default repertoire) encodes the
    same; data sets that declare another character set never reach here.
    """
    if elem.VR not in _ASCII_TEXT_VRS:
        return None
    value = elem.value
    if value is None:
        return b""
    values = list(value) if isinstance(value, (MultiValue, list)) else [value]
    if not all(isinstance(v, str) and v.isascii() for v in values):
        return None
    encoded = "\\".join(values).encode("ascii")
    if len(encoded) % 2:
        encoded += b"\x00" if elem.VR == "UI" else b" "
    return encoded


def _single_character_set(ds: Dataset) -> None:
    """Declare UTF-8 (ISO_IR 192) once, at the top, when the source used anything but ASCII.

    Every text value is first decoded with its own (possibly nested) Specific Character
    Set; the writer then encodes them all as UTF-8, so no value is re-encoded into a
    character set that cannot hold it (PS3.5 6.1.2.3, PS3.3 C.12.1.1.2). Objects in the
    default repertoire keep their (raw) values untouched.
    """
    if not _declares_character_set(ds):
        return
    _decode_all(ds)
    ds.SpecificCharacterSet = "ISO_IR 192"


def _declares_character_set(ds: Dataset) -> bool:
    charset = ds.get(0x00080005)
    declared = bool(charset and str(charset.value).replace("ISO 2022 IR 6", "").replace("ISO_IR 6", "").strip("\\ []'"))
    for tag in list(ds.keys()):
        if _vr(ds, tag) == "SQ":
            declared = any([_declares_character_set(item) for item in ds[tag].value]) or declared
    return declared


def _decode_all(ds: Dataset) -> None:
    """Convert every raw value (decoding text with its charset), then drop nested charsets."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_all(item)
                if "SpecificCharacterSet" in item:
                    del item.SpecificCharacterSet


class _ExactReader:
    """A file wrapper whose short reads raise :class:`EOFError`.

    pydicom reads a value that runs past the end of the file without complaint; a read
    returning some but not all requested bytes is exactly that truncation. pydicom may
    swallow the error and return a partial data set, so it is also remembered.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.short_read = False

    def read(self, size: int = -1) -> bytes:
        data = self._fp.read(size)
        if size is not None and 0 < len(data) < size:
            self.short_read = True
            raise EOFError("short read")
        return data

    def __getattr__(self, name: str):
        return getattr(self._fp, name)


def _read(fp: BinaryIO, *, stop_before_pixels: bool) -> Dataset:
    reader = _ExactReader(fp)
    try:
        ds = pydicom.dcmread(reader, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise DeidentificationRefused(NOT_DICOM) from exc
    except (EOFError, struct.error) as exc:
        raise DeidentificationRefused(TRUNCATED) from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DeidentificationRefused(TRUNCATED if reader.short_read else MALFORMED) from exc
    if reader.short_read:
        raise DeidentificationRefused(TRUNCATED)
    return ds


def _at_pixel_data(fp: BinaryIO, little_endian: bool) -> bool:
    start = fp.tell()
    head = fp.read(4)
    fp.seek(start)
    if len(head) < 4:
        return False
    group, element = struct.unpack(("<" if little_endian else ">") + "HH", head)
    return (group << 16 | element) in PIXEL_DATA_TAGS


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log records quote values (names, IDs): none may reach a log."""
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def _size(fp: BinaryIO) -> int:
    position = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    fp.seek(position)
    return size


def deidentify_header(
    fp: BinaryIO,
    *,
    profile: Profile,
    secret: bytes,
    settings: Settings,
    size: int | None = None,
) -> Plan:
    """Validate and de-identify the object readable from the seekable ``fp``.

    Reads the header only (up to Pixel Data, whose element header and, if encapsulated,
    item headers are read to find its end). Raises :class:`DeidentificationRefused` with a
    reason from :mod:`dicomshare.validation`; nothing else escapes for bad input.

    An ordinary object (little endian, the default character repertoire, nothing
    :mod:`~dicomshare.encoded_dataset` cannot read plainly) is rewritten element by element
    from its encoded bytes (:func:`_rewrite_encoded`); every other one, and every refusal,
    goes through a pydicom data set (:func:`_rewrite_dataset`). Both give the same bytes.
    """
    size = _size(fp) if size is None else size
    check_size(size, settings)
    check_preamble(fp)
    plan = _rewrite_encoded(fp, size, profile, secret, settings)
    if plan is None:
        plan = _rewrite_dataset(fp, size, profile, secret, settings)
    return plan


def _rewrite_dataset(fp: BinaryIO, size: int, profile: Profile, secret: bytes, settings: Settings) -> Plan:
    """De-identify through a pydicom data set: any supported object, and every refusal."""
    fp.seek(0)
    with _quiet_pydicom():
        meta_ds = _read(fp, stop_before_pixels=True)
        transfer_syntax = str(meta_ds.file_meta.get("TransferSyntaxUID", "") or "")
        if not transfer_syntax:
            raise DeidentificationRefused(f"{MISSING_REQUIRED}:TransferSyntaxUID")
        check_transfer_syntax(transfer_syntax)
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            if size > DEFLATED_MAX_BYTES:
                raise DeidentificationRefused(UNSUPPORTED_TRANSFER_SYNTAX)
            fp.seek(0)
            ds, pixel_offset, pixel_end = _read(fp, stop_before_pixels=False), None, 0
        else:
            ds = meta_ds
            little_endian, implicit_vr = transfer_syntax_encoding(transfer_syntax)
            if ds.original_encoding != (implicit_vr, little_endian):
                raise DeidentificationRefused(MALFORMED)
            if _at_pixel_data(fp, little_endian):
                pixel_offset = fp.tell()
                pixel_end = pixel_data_end(
                    fp, pixel_offset, size, little_endian=little_endian, implicit_vr=implicit_vr
                )
            else:
                pixel_offset, pixel_end = None, 0
        try:
            media_storage_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
            checked = {keyword: str(ds.get(keyword, "") or "") for keyword in CHECKED[1:]}
            check_attributes({"MediaStorageSOPClassUID": media_storage_class, **checked}, settings)
            deidentifier = _Deidentifier(
                profile, secret, str(ds.get("PatientID", "") or "").strip(), str(ds.get("StudyInstanceUID", ""))
            )
            if profile.cleans:
                deidentifier.collect(ds)
            deidentifier.apply(ds)
            _single_character_set(ds)
            deidentifier.record(ds, transfer_syntax_encoding(transfer_syntax))
            new_header = _encode(ds, transfer_syntax, None if pixel_offset is None else (pixel_offset, pixel_end))
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
        except DeidentificationRefused:
            raise
        except Exception as exc:  # a value pydicom cannot parse or write: refuse, never crash
            raise DeidentificationRefused(MALFORMED) from exc
    return Plan(new_header, pixel_offset, pixel_end, deidentifier.pseudonym, *map(str, uids))


ENCODED_READ_BYTES = 16 * 1024
"""The first read of :func:`_rewrite_encoded`; it reads eight times more while the header
runs past what it has read, up to :data:`ENCODED_MAX_BYTES`."""
ENCODED_MAX_BYTES = 64 * 1024**2

_ENCODED_TRANSFER_SYNTAXES = SUPPORTED_TRANSFER_SYNTAXES - {
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
}
_DEFAULT_CHARACTER_SETS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_CHECKED_TAGS = tuple((keyword, tag_for_keyword(keyword)) for keyword in CHECKED[1:])
_UID_TAGS = (0x0020000D, 0x0020000E, 0x00080018, 0x00080016)
"""Study, Series and SOP Instance UID, SOP Class UID: the :class:`Plan`'s UIDs."""
_NUMBER_SIZES = {"FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


def _rewrite_encoded(fp: BinaryIO, size: int, profile: Profile, secret: bytes, settings: Settings) -> Plan | None:
    """De-identify from the encoded elements (:mod:`dicomshare.encoded_dataset`).

    ``None`` when the object is not plain (see that module), declares a character set
    other than the default repertoire, holds a value this path does not decode (not ASCII,
    VR UN or an ambiguous VR that would change), or would be refused: :func:`_rewrite_dataset`
    then decides, so refusals and their reasons come from one place.
    """
    chunk = min(size, ENCODED_READ_BYTES)
    while True:
        fp.seek(0)
        data = fp.read(chunk)
        try:
            return _rewrite_encoded_bytes(data, len(data) >= size, fp, size, profile, secret, settings)
        except Incomplete:
            if chunk >= min(size, ENCODED_MAX_BYTES):
                return None
            chunk = min(size, ENCODED_MAX_BYTES, chunk * 8)
        except (NotPlain, UnicodeError, DeidentificationRefused):
            return None


def _rewrite_encoded_bytes(
    data: bytes, complete: bool, fp: BinaryIO, size: int, profile: Profile, secret: bytes, settings: Settings
) -> Plan | None:
    meta, meta_end = _file_meta_elements(data, complete)
    transfer_syntax = _single_string(meta.get(0x00020010))
    if transfer_syntax not in _ENCODED_TRANSFER_SYNTAXES:
        return None
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    if _looks_explicit(data, meta_end) == implicit:
        return None
    previous = _PREVIOUS_ELEMENTS.get(implicit, ())
    elements, stop = read_data_set(
        data, meta_end, implicit=implicit, complete=complete, stop_at=_PIXEL_DATA_TAG_SET, like=previous
    )
    if stop - meta_end <= PREVIOUS_ELEMENTS_MAX_BYTES:
        _PREVIOUS_ELEMENTS[implicit] = elements
    if stop < len(data):
        pixel_offset = stop
        pixel_end = pixel_data_end(fp, pixel_offset, size, little_endian=True, implicit_vr=implicit)
    elif complete:
        pixel_offset, pixel_end = None, 0
    else:
        raise Incomplete()
    top = {element.tag: element for element in elements}
    checked = {keyword: _single_string(top.get(tag)) for keyword, tag in _CHECKED_TAGS}
    check_attributes({"MediaStorageSOPClassUID": _single_string(meta.get(0x00020002)), **checked}, settings)
    deidentifier = _Deidentifier(
        profile, secret, _single_string(top.get(0x00100020)).strip(), checked["StudyInstanceUID"]
    )
    noted, encoded_cache = _element_caches(profile, secret, deidentifier.patient_key, implicit)
    if profile.cleans:
        deidentifier.add_identifiers(*_note_encoded(deidentifier, elements, noted))
    records = _record_bytes(profile, deidentifier.dates, implicit)
    kept = elements if records.keys().isdisjoint(top) else [e for e in elements if e.tag not in records]
    data_set, _ = _encode_elements(deidentifier, kept, implicit, encoded_cache, extra=records)
    uids = [_output_string(deidentifier, top.get(tag)) for tag in _UID_TAGS]
    if not all(uids):
        return None
    pixel_data = None if pixel_offset is None else (pixel_offset, pixel_end)
    new_header = _header_bytes(uids[3], uids[2], transfer_syntax, data_set, pixel_data)
    return Plan(new_header, pixel_offset, pixel_end, deidentifier.pseudonym, *uids)


def _file_meta_elements(data: bytes, complete: bool) -> tuple[dict[int, Element], int]:
    """The File Meta Information elements (PS3.10 7.1), by tag, and the offset after them."""
    if len(data) < 144:
        raise Incomplete() if not complete else NotPlain()
    group, element, vr, length, group_length = struct.unpack_from("<HH2sHL", data, 132)
    if (group, element, vr, length) != (2, 0, b"UL", 4):
        raise NotPlain()
    end = 144 + group_length
    elements, _ = read_data_set(data, 144, end, implicit=False, complete=complete, like=_PREVIOUS_ELEMENTS.get("meta", ()))
    if any(e.tag >> 16 != 2 for e in elements) or data[end : end + 2] == b"\x02\x00":
        raise NotPlain()
    _PREVIOUS_ELEMENTS["meta"] = elements
    return {e.tag: e for e in elements}, end


def _looks_explicit(data: bytes, offset: int) -> bool:
    """pydicom's test of a data set's first element: is its VR field two capital letters?"""
    vr = data[offset + 4 : offset + 6]
    return len(vr) == 2 and all(0x40 < b < 0x5B for b in vr)


def _strings(vr: str, value: bytes) -> list[str]:
    """The values of a string element, as pydicom 3 decodes them (``pydicom.values``).

    ASCII only: any other byte raises :class:`UnicodeDecodeError` (the pydicom path then
    decodes it with the object's character set).
    """
    text = value.decode("ascii")
    if vr in ("LT", "ST", "UT"):
        return [text.rstrip("\x00 ")]
    if vr == "UR":
        return [text.rstrip()]
    if vr == "AE":
        return [v.strip() for v in text.split("\\")]
    if vr in ("LO", "SH", "UC"):
        return [v.rstrip("\x00 ") for v in text.split("\\")]
    return text.rstrip("\x00 ").split("\\")


_SINGLE_STRINGS: dict[bytes, str] = {}
"""What :func:`_single_string` decoded, by encoding; bounded as :func:`_element_caches` are."""


def _single_string(element: Element | None) -> str:
    """A single-valued string element's value (``""`` when absent); :class:`NotPlain` when
    it holds several values or is not a plain string (pydicom would give another text).

    Remembered by the element's encoding in :data:`_SINGLE_STRINGS`: the UIDs, class and
    patient of a series repeat.
    """
    if element is None:
        return ""
    found = _SINGLE_STRINGS.get(element.raw)
    if found is None:
        if element.vr not in _STRING_VRS:
            raise NotPlain()
        values = _strings(element.vr, element.value)
        if len(values) != 1:
            raise NotPlain()
        found = values[0]
        _remember(_SINGLE_STRINGS, element, found)
    return found


PREVIOUS_ELEMENTS_MAX_BYTES = 1024**2
_PREVIOUS_ELEMENTS: dict[bool | str, list[Element]] = {}
"""The top-level elements of the last object read, by VR encoding (``True`` for implicit
VR), and of its File Meta Information (``"meta"``); for :func:`read_data_set`'s ``like``:
the objects of a series repeat most of each other's elements, which are then not read
again. Only data sets up to :data:`PREVIOUS_ELEMENTS_MAX_BYTES` are kept."""

ELEMENT_CACHE_SIZE = 4096
ELEMENT_CACHE_ELEMENT_BYTES = 256
"""Only elements encoded in up to this many bytes are remembered (names, dates, UIDs, codes,
small sequences: the ones that are decoded); with :data:`ELEMENT_CACHE_SIZE` entries per
cache and four patients' caches, the caches hold at most about 25 MiB."""


@lru_cache(maxsize=4)
def _element_caches(profile: Profile, secret: bytes, patient_key: str, implicit: bool) -> tuple[dict, dict]:
    """For one patient's objects (a series, a study): what :func:`_note_encoded` found in an
    element and what :func:`_encode_elements` made of it, by the element's encoding.

    Both depend on nothing else (Clean Descriptors text aside, which is never cached, nor
    is a sequence holding some), and most elements repeat from one object of a series to
    the next: a remembered element, sequences included, is neither decoded nor checked
    again. In memory only; elements over :data:`ELEMENT_CACHE_ELEMENT_BYTES` are not
    cached, and each cache is emptied when it reaches :data:`ELEMENT_CACHE_SIZE` entries.
    """
    return {}, {}


_NOTHING_NOTED = (frozenset(), frozenset())


def _note_encoded(deidentifier: _Deidentifier, elements: list[Element], noted: dict) -> tuple[frozenset[str], frozenset[str]]:
    """What :meth:`_Deidentifier.collect` gathers, from encoded elements (for
    :meth:`_Deidentifier.add_identifiers`)."""
    identifiers: set[str] = set()
    words: set[str] = set()
    for element in elements:
        found = noted.get(element.raw)
        if found is None:
            vr = element.vr
            if vr == "SQ":
                items = element.value
                found = _NOTHING_NOTED
                for item in items:
                    nested = _note_encoded(deidentifier, item.elements, noted)
                    if nested is not _NOTHING_NOTED:
                        found = (found[0] | nested[0], found[1] | nested[1])
            else:
                _check_plain(element)
                action = deidentifier.action(element.tag, vr)
                if deidentifier.notes(action, vr):
                    found = deidentifier.note(element.tag, vr, _strings(vr, element.value))
                    found = found if found[0] or found[1] else _NOTHING_NOTED
                else:
                    found = _NOTHING_NOTED
            _remember(noted, element, found)
        if found is not _NOTHING_NOTED:
            identifiers |= found[0]
            words |= found[1]
    if not identifiers and not words:
        return _NOTHING_NOTED
    return frozenset(identifiers), frozenset(words)


def _remember(cache: dict, element: Element, result: object) -> None:
    """Keep ``result`` for ``element`` in ``cache`` (one of :func:`_element_caches`, or
    :data:`_SINGLE_STRINGS`), within their bounds."""
    if len(element.raw) <= ELEMENT_CACHE_ELEMENT_BYTES:
        if len(cache) >= ELEMENT_CACHE_SIZE:
            cache.clear()
        cache[element.raw] = result


def _check_plain(element: Element) -> None:
    """:class:`NotPlain` for VR UN on a tag the data dictionary knows (pydicom would decode
    it with the dictionary's VR) and for a character set other than the default."""
    if element.vr == "UN" and implicit_vr(element.tag) != "UN":
        raise NotPlain()
    if element.tag == 0x00080005 and _single_string(element) not in _DEFAULT_CHARACTER_SETS:
        raise NotPlain()


def _encode_elements(
    deidentifier: _Deidentifier, elements: list[Element], implicit: bool, encoded_cache: dict, extra: dict[int, bytes] | None = None
) -> tuple[bytes, bool]:
    """:meth:`_Deidentifier.apply` and the encoding of its result, in tag order (the
    elements are in tag order: :mod:`~dicomshare.encoded_dataset` accepts no other).

    Also says whether the result may be remembered: not when it holds cleaned text.
    """
    encoded = list(extra.items()) if extra else []
    cacheable = True
    for element in elements:
        new = encoded_cache.get(element.raw, _UNCACHED)
        if new is _UNCACHED:
            new, remember = _encode_element(deidentifier, element, implicit, encoded_cache)
            if remember:
                _remember(encoded_cache, element, new)
            else:
                cacheable = False
        if new is not None:
            encoded.append((element.tag, new))
    if extra:
        encoded.sort()
    return b"".join([value for _, value in encoded]), cacheable


def _encode_element(deidentifier: _Deidentifier, element: Element, implicit: bool, encoded_cache: dict) -> tuple[bytes | None, bool]:
    """One element of :func:`_encode_elements`: its new encoding (``None``: removed) and
    whether that may be remembered."""
    tag, vr = element.tag, element.vr
    if vr == "SQ":
        items = element.value
        action = deidentifier.action(tag, vr)
        if action == REMOVE:
            return None, True
        if action == EMPTY:
            return sequence_bytes(tag, b"", undefined_length=element.undefined_length, implicit=implicit), True
        content, cacheable = [], True
        for item in items:
            item_content, item_cacheable = _encode_elements(deidentifier, item.elements, implicit, encoded_cache)
            content.append(item_bytes(item_content, undefined_length=item.undefined_length))
            cacheable = cacheable and item_cacheable
        value = b"".join(content)
        return sequence_bytes(tag, value, undefined_length=element.undefined_length, implicit=implicit), cacheable
    _check_plain(element)
    action = deidentifier.action(tag, vr)
    if action == REMOVE:
        return None, True
    if action == KEEP:
        return element_bytes(tag, vr, element.value, implicit=implicit), True
    value = _changed(deidentifier, element, action)
    new = None if value is None else element_bytes(tag, vr, value, implicit=implicit)
    return new, not (action == CLEAN and vr in _TEXT_VRS)


_UNCACHED = object()


def _changed(deidentifier: _Deidentifier, element: Element, action: str) -> bytes | None:
    """The new value's bytes under ``action`` (:meth:`_Deidentifier.change`); ``None`` to remove."""
    vr = element.vr
    if vr not in VRS:
        raise NotPlain()  # an ambiguous dictionary VR (implicit VR): pydicom resolves it
    if vr in _STRING_VRS:
        values = _strings(vr, element.value)
        empty = values == [""]
    else:
        values, empty = [], not element.value
    new = deidentifier.change(element.tag, vr, action, values, empty)
    if new == REMOVE:
        return None
    if new is None:
        return b""
    if vr in _NUMBER_SIZES:
        return bytes(_NUMBER_SIZES[vr])
    text = "\\".join(new).encode("ascii")
    return text + (b"\x00" if vr == "UI" else b" ") if len(text) % 2 else text


def _output_string(deidentifier: _Deidentifier, element: Element | None) -> str:
    """A top-level single-valued string element's value in the output; ``""`` if it has none."""
    if element is None:
        return ""
    value = _single_string(element)
    action = deidentifier.action(element.tag, element.vr)
    if action == KEEP:
        return value
    new = deidentifier.change(element.tag, element.vr, action, [value], not value)
    return new[0] if isinstance(new, list) and len(new) == 1 else ""


@lru_cache(maxsize=64)
def _record_bytes(profile: Profile, dates: str, implicit: bool) -> dict[int, bytes]:
    """:func:`_record_elements`, encoded, by tag."""
    return {
        int(elem.tag): element_bytes(int(elem.tag), elem.VR or "UN", elem.value, implicit=implicit)
        for elem in _record_elements(profile, dates, True, implicit)
    }


def write_output(plan: Plan, src: BinaryIO, dst: BinaryIO) -> None:
    """Write the de-identified object: new header, then the source's Pixel Data element.

    Between two real files the kernel moves the range (:func:`_kernel_copy`); otherwise it
    is copied in :data:`COPY_CHUNK_BYTES` chunks. Never whole in memory.
    """
    dst.write(plan.new_header)
    if plan.pixel_offset is None:
        return
    if _kernel_copy(plan, src, dst):
        return
    src.seek(plan.pixel_offset)
    remaining = plan.pixel_length
    while remaining:
        chunk = src.read(min(COPY_CHUNK_BYTES, remaining))
        if not chunk:
            raise DeidentificationRefused(TRUNCATED)
        dst.write(chunk)
        remaining -= len(chunk)


def _kernel_copy(plan: Plan, src: BinaryIO, dst: BinaryIO) -> bool:
    """Copy the Pixel Data range from file to file in the kernel (Linux); ``False`` when
    not possible.

    Up to :data:`SPLICE_PIPE_BYTES`, through a pipe that size (``splice``): one write, at
    any output offset. Larger ranges by ``copy_file_range``, which on ext4 writes
    :data:`KERNEL_PIPE_BYTES` at a time, as ``cp`` does: the output keeps the source's
    offset within a page (:func:`_header_bytes`) and a first call ends on a
    :data:`KERNEL_PIPE_BYTES` boundary of the output, so every later write is whole and
    aligned. Measured on 1 GiB: unaligned, half again as long as ``cp``; through a 1 MiB
    pipe as long as ``cp`` on a quiet machine but two to four times as long on a busy one;
    aligned, as long as ``cp`` on both.
    """
    try:
        src_fd, dst_fd = src.fileno(), dst.fileno()
    except (AttributeError, OSError):
        return False
    dst.flush()
    if plan.pixel_length <= SPLICE_PIPE_BYTES and hasattr(os, "splice"):
        copied = _splice(plan, src_fd, dst_fd)
    elif hasattr(os, "copy_file_range"):
        copied = _copy_range(plan, src_fd, dst_fd, dst.tell())
    else:
        return False
    if copied:
        dst.seek(0, os.SEEK_END)
    return copied


def _copy_range(plan: Plan, src_fd: int, dst_fd: int, dst_offset: int) -> bool:
    """:func:`_kernel_copy` by ``copy_file_range``, from ``dst_offset`` in the output."""
    offset, end = plan.pixel_offset, plan.pixel_end
    length = -dst_offset % KERNEL_PIPE_BYTES or 1 << 30
    try:
        while offset < end:
            copied = os.copy_file_range(src_fd, dst_fd, min(end - offset, length), offset)
            if copied == 0:
                raise DeidentificationRefused(TRUNCATED)
            offset, length = offset + copied, 1 << 30
    except OSError:
        if offset != plan.pixel_offset:
            raise
        return False
    return True


def _splice(plan: Plan, src_fd: int, dst_fd: int) -> bool:
    """:func:`_kernel_copy` through this thread's pipe (:class:`_SplicePipe`)."""
    offset, end, written = plan.pixel_offset, plan.pixel_end, 0
    pipe_out, pipe_in = _PIPE.fds()
    try:
        while offset < end:
            moved = os.splice(src_fd, pipe_in, end - offset, offset_src=offset)
            if moved == 0:
                raise DeidentificationRefused(TRUNCATED)
            offset += moved
            while written < offset - plan.pixel_offset:
                written += os.splice(pipe_out, dst_fd, offset - plan.pixel_offset - written)
    except OSError:
        _PIPE.close()  # it may hold bytes of this copy
        if written:
            raise
        return False
    except BaseException:
        _PIPE.close()
        raise
    return True


class _SplicePipe(threading.local):
    """This thread's pipe for :func:`_kernel_copy`, made once per process (opening one and
    sizing it took 8 us, per object); dropped when a copy fails, as it may hold bytes."""

    pid = 0
    pair = (-1, -1)

    def fds(self) -> tuple[int, int]:
        """``(read end, write end)``."""
        if self.pid != os.getpid():
            self.pair, self.pid = os.pipe(), os.getpid()
            with suppress(OSError):
                fcntl.fcntl(self.pair[1], fcntl.F_SETPIPE_SZ, SPLICE_PIPE_BYTES)
        return self.pair

    def close(self) -> None:
        if self.pid == os.getpid():
            os.close(self.pair[0])
            os.close(self.pair[1])
        self.pid = 0


_PIPE = _SplicePipe()


def deidentify_file(
    src_path: str | os.PathLike,
    dst: str | os.PathLike | BinaryIO,
    *,
    profile: Profile | None = None,
    secret: bytes,
    settings: Settings | None = None,
) -> Plan:
    """De-identify a local file into ``dst``: a directory (the file goes to
    ``dst/<study>/<series>/<sop>.dcm``, written atomically) or a writable binary file object.
    """
    profile = profile or profiles.named("clinical")
    settings = settings or Settings()
    with open(src_path, "rb") as src:
        plan = deidentify_header(src, profile=profile, secret=secret, settings=settings)
        if not isinstance(dst, (str, os.PathLike)):
            write_output(plan, src, dst)
            return plan
        folder = os.path.join(dst, plan.study_instance_uid, plan.series_instance_uid)
        partial = os.path.join(folder, f".partial-{secrets.token_hex(8)}")
        try:
            fd = os.open(partial, _PARTIAL_FLAGS, 0o600)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(partial, _PARTIAL_FLAGS, 0o600)
        with open(fd, "wb", buffering=0) as out:
            try:
                write_output(plan, src, out)
            except BaseException:
                out.close()
                os.unlink(partial)
                raise
        os.replace(partial, os.path.join(folder, f"{plan.sop_instance_uid}.dcm"))
    return plan
