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
"""

from __future__ import annotations

from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from dicomshare.deidentify.descriptors import clean_text, identifiers_in
from dicomshare.deidentify.identities import IDENTITIES_VERSION, date_offset_days, new_uid, shift_date, shift_datetime
from dicomshare.profile import CLEAN, DUMMY, EMPTY, KEEP, REMOVE, UID, Profile

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

TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
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
_IDENTIFIER_VRS = TEXT_VRS | _DATE_VRS | {"PN", "UI"}
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
        if vr in TEXT_VRS:
            return KEEP if tag in KEPT_TEXT else DUMMY
        if vr == "UN":
            return REMOVE
        return KEEP

    def notes(self, action: str, vr: str) -> bool:
        """Whether an element's values are identifiers for Clean (see :func:`.descriptors.identifiers_in`)."""
        return (
            action != KEEP
            and not (action == CLEAN and vr in TEXT_VRS)
            and vr in _IDENTIFIER_VRS
        )

    def add_identifiers(self, identifiers: set[str] | frozenset[str], words: set[str] | frozenset[str]) -> None:
        self.identifiers |= identifiers
        self.words |= words

    def collect(self, ds: Dataset) -> None:
        """Gather every identifying value (anything not kept, descriptors aside) for Clean."""
        for tag in list(ds.keys()):
            vr = vr_of(ds, tag)
            if vr == "SQ":
                for item in ds[tag].value:
                    self.collect(item)
            elif self.notes(self.action(int(tag), vr), vr):
                elem = ds[tag]
                self.add_identifiers(*identifiers_in(int(tag), elem.VR, [str(v or "") for v in _values(elem.value)]))

    def clean_text(self, text: str) -> str:
        """PS3.15 E.3.5 Clean Descriptors: remove every identifying value of the header."""
        return clean_text(text, self.identifiers, self.words)

    def replace_uid(self, tag: int, value: str) -> str:
        if not value or value in UID_dictionary or tag in KEPT_UID_TAGS:
            return value
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
        for tag in list(ds.keys()):
            vr = vr_of(ds, tag)
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
            return [shift_date(v, self.offset) for v in values] or None if self.dates == CLEAN else None
        if vr == "DT":
            return [shift_datetime(v, self.offset) for v in values] or None if self.dates == CLEAN else None
        if vr == "TM":
            return values or None if self.dates != EMPTY else None
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



def vr_of(ds: Dataset, tag: int) -> str:
    """An element's VR without converting its value: as encoded, else the dictionary's."""
    vr = ds.get_item(tag).VR
    if vr in (None, "UN"):
        try:
            return dictionary_VR(tag)
        except KeyError:
            return vr or "UN"
    return vr

