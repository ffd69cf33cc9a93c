"""The profile's actions on elements: what each tag and VR gets, and the new values.

Attributes listed in PS3.15 Table E.1-1 take the :class:`~dicomshare.profile.Profile`
action, at every nesting depth of every sequence; all private attributes are removed; an
overlay group (60xx) goes whole when its Overlay Data is removed. Attributes *not* in the
table: Person Names are emptied; dates (DA, DT) are shifted with the patient's offset
under the modified-dates option, kept under the full-dates option and emptied otherwise,
times (TM) are kept under either option and emptied otherwise; UIDs are replaced
(well-known and class UIDs are kept); free text (AE, LO, LT, SH, ST, UC, UR, UT) gets a
dummy value unless it is a coded-entry or equipment attribute of :data:`KEPT_TEXT`;
attributes unknown to the data dictionary are removed; everything else is kept.

Every text value that is kept (code strings, coded entries, equipment text: the VRs of
:data:`CHECKED_VRS`) is checked (:meth:`Deidentifier.check_kept`): one holding an
identifier of the header, or what the free-text detector finds, is cleaned or replaced by
a value valid for its VR. Under Clean Descriptors the long free texts of
:data:`FREE_TEXT_TAGS` (histories, comments) take the basic profile's action unless the
profile keeps free text (:attr:`.Profile.keep_free_text`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from dicomshare.deidentify.descriptors import clean_text, identifiers_in, scrub
from dicomshare.deidentify.formatted import TIMEZONE_OFFSET_FROM_UTC, conformed, conforms, is_formatted, split_values
from dicomshare.deidentify.free_text import DateRule
from dicomshare.deidentify.identities import IDENTITIES_VERSION, date_offset_days, new_uid, shift_date, shift_datetime
from dicomshare.deidentify.attributes import (
    ALWAYS_REMOVED,
    BINARY_VRS,
    CHECKED_VRS,
    CODE_VALUE_TAGS,
    ENUMERATED_TAGS,
    FREE_TEXT_TAGS,
    KEPT_BINARY,
    KEPT_TEXT,
    KEPT_UID_TAGS,
    TEXT_VRS,
    change_vr,
    local_coding_scheme,
    vr_of,
)
from dicomshare.encoded_dataset import dictionary_entry
from dicomshare.profile import CLEAN, DUMMY, EMPTY, KEEP, REMOVE, UID, Profile

ACTION_CACHE_SIZE = 65536

def _raw_string(elem) -> str | None:
    """An element's value as text without converting it in its data set (ASCII values)."""
    if elem is None or elem.value is None:
        return None
    value = elem.value
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


_MAX_LENGTHS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")

PSEUDONYM = "P"
"""The action for Patient ID and Patient's Name: the keyed pseudonym."""

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
_CLEANABLE_VRS = TEXT_VRS | _DATE_VRS | {"TM", "UI", "PN"}
_IDENTIFIER_VRS = TEXT_VRS | _DATE_VRS | {"PN"}
"""The VRs whose values are identifiers for Clean Descriptors. Not UI: the detector removes
every UID-like run from text, and a series' identifiers then stay the same from one
instance to the next (its kept elements are checked once per series, not per file)."""
_NUMERIC_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})

def _values(value: object) -> list:
    return list(value) if isinstance(value, (MultiValue, list)) else [value]


_ACTIONS: dict[Profile, dict[tuple[int, str], str]] = {}
"""Per profile, the action of each (tag, VR) met so far: see :meth:`Deidentifier.action`."""


class Deidentifier:
    """One object's de-identification: the profile, the keys and the values to clean out.

    ``partner`` scopes the new UIDs and ``pseudonym`` is the patient's
    (:func:`.identities.object_pseudonym`), which also gives the date shift.
    The rules work on an element's tag, VR and decoded string values, so the pydicom path
    (:meth:`collect`, :meth:`apply`) and the encoded path (:func:`.encoded_path.rewrite_encoded`) share them.
    """

    def __init__(self, profile: Profile, secret: bytes, partner: str, pseudonym: str) -> None:
        self.profile = profile
        self.secret = secret
        self.partner = partner
        self.dates = (
            KEEP if "rtnLongFullDatesOpt" in profile.options
            else CLEAN if "rtnLongModifDatesOpt" in profile.options
            else EMPTY
        )
        self.pseudonym = pseudonym
        self.offset = date_offset_days(secret, pseudonym)
        self.date_rule = DateRule({KEEP: "keep", CLEAN: "shift", EMPTY: "remove"}[self.dates], self.offset)
        self._identifiers: set[str] = set()
        self._words: set[str] = set()
        self._found: tuple[frozenset[str], frozenset[str]] | None = None
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
        if tag in ALWAYS_REMOVED or 0x7F00 <= group <= 0x7FDF:
            return REMOVE
        if tag in (0x00100010, 0x00100020) and self.profile.action(tag) != KEEP:
            return PSEUDONYM
        found = self.profile.action(tag)
        if found == CLEAN and tag in FREE_TEXT_TAGS and not self.profile.keep_free_text:
            return self.profile.basic_actions[tag]
        if 0x6000 <= group <= 0x60FF and self.profile.action((group << 16) | 0x3000) == REMOVE:
            return REMOVE
        if found is not None:
            return found
        entry = dictionary_entry(tag)
        if (entry is None or not entry[4]) and tag != 0x00080005:
            return REMOVE
        if vr == "PN":
            return EMPTY
        if vr in _DATE_VRS:
            return self.dates
        if vr == "TM":
            return KEEP if self.dates != EMPTY else EMPTY
        if vr == "UI":
            return UID
        if vr in TEXT_VRS:
            return KEEP if tag in KEPT_TEXT else DUMMY
        if vr in BINARY_VRS:
            return KEEP if tag in KEPT_BINARY else REMOVE
        return KEEP

    def notes(self, action: str, vr: str) -> bool:
        """Whether an element's values are identifiers for Clean (see :func:`.descriptors.identifiers_in`)."""
        return (
            action != KEEP
            and not (action == CLEAN and vr in TEXT_VRS)
            and vr in _IDENTIFIER_VRS
        )

    def add_identifiers(self, identifiers: frozenset[str], words: frozenset[str]) -> None:
        self._identifiers |= identifiers
        self._words |= words
        self._found = None

    @property
    def found(self) -> tuple[frozenset[str], frozenset[str]]:
        """The identifiers and words gathered (:meth:`add_identifiers`), as one key."""
        if self._found is None:
            self._found = (frozenset(self._identifiers), frozenset(self._words))
        return self._found

    def collect(self, ds: Dataset) -> None:
        """Gather every identifying value (anything not kept, descriptors aside) for Clean."""
        for tag in list(ds.keys()):
            vr = vr_of(ds, tag)
            if vr == "SQ":
                for item in ds[tag].value:
                    self.collect(item)
            elif self.notes(self.action(int(tag), vr), vr):
                elem = ds[tag]
                self.add_identifiers(*identifiers_in(int(tag), vr, [str(v or "") for v in _values(elem.value)]))

    def clean_text(self, text: str) -> str:
        """PS3.15 E.3.5 Clean Descriptors: remove every identifying value of the header."""
        return clean_text(text, *self.found, self.date_rule)

    def check_kept(self, tag: int, vr: str, values: list[str], local_codes: bool) -> list[str] | None:
        """The new values of a kept element whose values hold an identifier of the header
        or what the free-text detector finds; ``None`` when they hold neither (the element
        stays as it is). ``local_codes``: the element's item names a local coding scheme.

        A cleaned value stays when it is valid for the VR; otherwise (and for codes,
        whose meaning a part of them would change) the VR's dummy value takes its place,
        so Type 1 attributes keep a value and multi-valued ones their multiplicity.
        """
        if vr not in CHECKED_VRS:
            return None
        new, changed = [], False
        code = tag in CODE_VALUE_TAGS
        for value in values:
            identifiers, words = self.found
            words = frozenset() if tag in ENUMERATED_TAGS else words
            found = scrub(value, identifiers, words, self.date_rule, free_text=local_codes or not code)
            if found is None:
                new.append(value)
                continue
            changed = True
            if code or not found or vr == "AE" or (vr == "CS" and not _CODE_STRING.fullmatch(found)):
                found = _DUMMY.get(vr, "")
            new.append(found[: _MAX_LENGTHS.get(vr, len(found))])
        return new if changed else None

    def replace_uid(self, tag: int, value: str) -> str:
        """A new UID (:func:`.identities.new_uid`); well-known UIDs and the class, syntax and
        scheme UIDs of :data:`KEPT_UID_TAGS` are kept when they are UIDs (PS3.5 9.1)."""
        if not value or value in UID_dictionary:
            return value
        if tag in KEPT_UID_TAGS:
            return value if conforms("UI", value) else ""
        return new_uid(self.secret, self.partner, value)

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
        local_codes = local_coding_scheme(_raw_string(ds.get_item(0x00080102)))
        for tag in list(ds.keys()):
            vr = vr_of(ds, tag)
            action = self.action(int(tag), vr)
            if action == REMOVE:
                del ds[tag]
                continue
            if action == KEEP and vr != "SQ":
                if is_formatted(int(tag), vr):
                    self._conform(ds, int(tag), vr)
                elif vr in CHECKED_VRS:
                    self._check_kept_element(ds, tag, vr, local_codes)
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
            new = self.change(int(tag), change_vr(vr, elem.VR), action, values, elem.is_empty)
            if new == REMOVE:
                del ds[tag]
            else:
                elem.value = new[0] if new and len(new) == 1 else new

    @staticmethod
    def _conform(ds: Dataset, tag: int, vr: str) -> None:
        """A kept formatted value (:mod:`.formatted`) that does not follow its grammar goes."""
        raw = ds.get_item(tag)
        if raw.is_raw:
            values = split_values(raw.value) if raw.value else []
        else:
            values = [str(v) for v in _values(raw.value) if v is not None]
        fixed = conformed(tag, vr, values)
        if fixed is not None:
            ds[tag] = DataElement(tag, raw.VR or vr, None if not any(fixed) else fixed[0] if len(fixed) == 1 else fixed)

    def _check_kept_element(self, ds: Dataset, tag: int, vr: str, local_codes: bool) -> None:
        """:meth:`check_kept` on ``ds[tag]``; an element that stays is left as read (raw)."""
        raw = ds.get_item(tag)
        elem = ds[tag]
        values = [str(v) for v in _values(elem.value) if v is not None]
        new = self.check_kept(int(tag), vr, values, local_codes)
        if new is not None:
            elem.value = new[0] if len(new) == 1 else new
        elif raw.is_raw:
            ds[tag] = raw

    def _dummy(self, vr: str) -> list | None:
        if vr in _NUMERIC_VRS:
            return [0]
        return [_DUMMY[vr]] if vr in _DUMMY else None

    def _clean(self, tag: int, vr: str, values: list[str]) -> list[str] | None:
        if tag == TIMEZONE_OFFSET_FROM_UTC:
            return conformed(tag, vr, values) or values or None
        if vr == "DA":
            return [shift_date(v, self.offset) for v in values] or None if self.dates == CLEAN else None
        if vr == "DT":
            return [shift_datetime(v, self.offset) for v in values] or None if self.dates == CLEAN else None
        if vr == "TM":
            return (conformed(tag, vr, values) or values) or None if self.dates != EMPTY else None
        if vr in TEXT_VRS:
            return [self.clean_text(v) for v in values] or None
        if vr == "PN":
            return None
        return [self.replace_uid(tag, v) for v in values] or None

    def record(self, ds: Dataset, encoding: tuple[bool, bool]) -> None:
        """PS3.15 E.1.1 and PS3.3 C.7.1.1: what was done, in the output itself.

        ``encoding`` is ``(little_endian, implicit_vr)`` of the output's data set.
        """
        for elem in record_elements(self.profile, self.dates, *encoding):
            ds[elem.tag] = elem


@lru_cache(maxsize=64)
def record_elements(profile: Profile, dates: str, little_endian: bool, implicit_vr: bool) -> tuple:
    """The elements :meth:`Deidentifier.record` adds, encoded once per profile and encoding.

    They depend on the profile only, so they are built and encoded with pydicom once and
    kept as raw (immutable) elements: every output gets the same bytes, written straight
    through, and reading them from ``Plan.dataset`` decodes them as usual.
    """
    ds = Dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [*profile.method, IDENTITIES_VERSION]
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
