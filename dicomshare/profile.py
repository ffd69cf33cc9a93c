"""The Application Level Confidentiality Profile (DICOM PS3.15 Annex E, Table E.1-1).

The table ships with the package (``dicomshare/data/confidentiality_profile_attributes.json``,
PS3.15 revision 2024b, 621 rows) and is the single source of truth: :class:`Profile` turns
it into one action per attribute tag for the basic profile plus the chosen options of
PS3.15 E.3.

Action codes (PS3.15 E.1.1): ``X`` remove, ``Z`` zero length, ``D`` dummy value,
``K`` keep, ``C`` clean, ``U`` consistent UID replacement. Compound codes are resolved to
the single action that keeps the object valid (see :func:`resolve`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Mapping, NamedTuple

REVISION = "2024b"
"""PS3.15 revision the packaged table was extracted from."""

REMOVE, EMPTY, DUMMY, KEEP, CLEAN, UID = "X", "Z", "D", "K", "C", "U"



class Code(NamedTuple):
    """A coded concept (PS3.3 8.8) of CID 7050 De-identification Method (PS3.16), written
    out rather than taken from ``pydicom.sr.codedict``, whose import costs every
    ``dicomshare deid`` run about a tenth of a second."""

    value: str
    scheme_designator: str
    meaning: str


OPTION_CODES: Mapping[str, Code] = MappingProxyType(
    {
        "rtnLongFullDatesOpt": Code("113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"),
        "rtnLongModifDatesOpt": Code("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
        "rtnPatCharsOpt": Code("113108", "DCM", "Retain Patient Characteristics Option"),
        "rtnDevIdOpt": Code("113109", "DCM", "Retain Device Identity Option"),
        "rtnInstIdOpt": Code("113112", "DCM", "Retain Institution Identity Option"),
        "rtnUIDsOpt": Code("113110", "DCM", "Retain UIDs Option"),
        "cleanDescOpt": Code("113105", "DCM", "Clean Descriptors Option"),
    }
)
"""PS3.15 E.3 options this engine implements, with their CID 7050 codes.

``rtnSafePrivOpt``, ``cleanStructContOpt`` and ``cleanGraphOpt`` are not implemented:
naming one is a configuration error rather than a silent downgrade to the basic profile.
"""

BASIC_PROFILE_CODE = Code("113100", "DCM", "Basic Application Confidentiality Profile")

PROFILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "clinical": ("rtnLongModifDatesOpt", "cleanDescOpt"),
        "basic": (),
    }
)
"""Named profiles: ``clinical`` (the default for sharing with clinicians) and ``basic``."""

_COMPOUND = {"X/Z": EMPTY, "X/D": DUMMY, "Z/D": DUMMY, "X/Z/D": DUMMY, "X/Z/U*": UID}


def resolve(code: str, in_composite_iod: bool) -> str:
    """The single action for a (possibly compound) Table E.1-1 code.

    PS3.15 E.1.1: X/Z, X/D, Z/D, X/Z/D and X/Z/U* mean "the first action unless the
    next is needed to keep the object conformant". The table does not say which IOD makes
    an attribute Type 1 or 2, so for attributes used in standard composite IODs
    (``stdCompIOD`` = Y) the engine takes the action that is valid for every type:
    ``Z`` for X/Z, ``D`` for X/D, Z/D and X/Z/D (a Type 1 attribute may not be empty), and
    ``U`` for X/Z/U* (references keep resolving, with replaced UIDs). Attributes of no
    standard IOD take the first action.
    """
    if "/" not in code:
        return code
    return _COMPOUND[code] if in_composite_iod else code[0]


@cache
def table_rows() -> tuple[Mapping[str, str], ...]:
    """The rows of Table E.1-1 as packaged (read with :mod:`importlib.resources`)."""
    text = resources.files("dicomshare.data").joinpath("confidentiality_profile_attributes.json")
    return tuple(MappingProxyType(row) for row in json.loads(text.read_text(encoding="utf-8")))


def _row_action(row: Mapping[str, str], options: tuple[str, ...]) -> str:
    """The action for one row: an option overrides the basic profile, K before C."""
    chosen = [row[o] for o in options if o in row]
    for preferred in (KEEP, CLEAN):
        if preferred in chosen:
            return preferred
    return resolve(row["basicProfile"], row.get("stdCompIOD") == "Y")


@dataclass(frozen=True)
class Profile:
    """The basic profile plus PS3.15 E.3 options, as one action per tag.

    ``options`` are the option keys of the packaged table (``rtnLongModifDatesOpt``,
    ``cleanDescOpt``, ...), as configured in :attr:`dicomshare.settings.Partner.options`.
    """

    name: str = "clinical"
    options: tuple[str, ...] = PROFILES["clinical"]
    revision: str = REVISION
    keep_free_text: bool = False
    """Under Clean Descriptors, keep (cleaned) the long free texts too (histories, comments:
    :data:`dicomshare.deidentify.actions.FREE_TEXT_TAGS`), which otherwise take the basic
    profile's action. A partner opts in with ``keep_free_text`` in the configuration."""
    actions: Mapping[int, str] = field(init=False, repr=False, compare=False)
    repeating: Mapping[tuple[int, int, int], str] = field(init=False, repr=False, compare=False)
    basic_actions: Mapping[int, str] = field(init=False, repr=False, compare=False)
    """The basic profile's action where an option says C: used for values C cannot clean."""
    private_action: str = field(init=False, repr=False, compare=False)
    cleans: bool = field(init=False, repr=False, compare=False)
    """Whether some action is C (clean): only then are identifying values gathered."""

    def __post_init__(self) -> None:
        unknown = [o for o in self.options if o not in OPTION_CODES]
        if unknown:
            raise ValueError(f"unsupported PS3.15 E.3 option(s): {', '.join(unknown)}")
        object.__setattr__(self, "options", tuple(sorted(set(self.options), key=list(OPTION_CODES).index)))
        actions: dict[int, str] = {}
        basic: dict[int, str] = {}
        repeating: dict[tuple[int, int, int], str] = {}
        private = REMOVE
        for row in table_rows():
            action = _row_action(row, self.options)
            ident = row["id"]
            if ident.startswith("gggg"):
                private = action
            elif "x" in ident:
                group, element = ident[:4], ident[4:]
                mask = 0xFF00 if group.endswith("xx") else 0xFFFF
                element_any = element == "xxxx"
                repeating[(int(group.replace("x", "0"), 16), mask, -1 if element_any else int(element, 16))] = action
            else:
                actions[int(ident, 16)] = action
                if action == CLEAN:
                    basic[int(ident, 16)] = resolve(row["basicProfile"], row.get("stdCompIOD") == "Y")
        object.__setattr__(self, "actions", MappingProxyType(actions))
        object.__setattr__(self, "repeating", MappingProxyType(repeating))
        object.__setattr__(self, "private_action", private)
        object.__setattr__(self, "basic_actions", MappingProxyType(basic))
        object.__setattr__(self, "cleans", CLEAN in actions.values())

    def action(self, tag: int) -> str | None:
        """The action for ``tag``, or ``None`` when Table E.1-1 does not list it.

        Repeating groups (PS3.5 7.6): ``(50xx,xxxx)`` curves, ``(60xx,3000)`` overlay data,
        ``(60xx,4000)`` overlay comments. Private attributes (odd groups, PS3.5 7.8) take
        the "Private Attributes" row.
        """
        group, element = tag >> 16, tag & 0xFFFF
        if group & 1:
            return self.private_action
        found = self.actions.get(tag)
        if found is not None:
            return found
        for (base, mask, elem), act in self.repeating.items():
            if group & mask == base and elem in (-1, element):
                return act
        return None

    @property
    def codes(self) -> tuple[Code, ...]:
        """De-identification Method Code Sequence content (CID 7050): profile, then options."""
        return (BASIC_PROFILE_CODE, *(OPTION_CODES[o] for o in self.options))

    @property
    def method(self) -> list[str]:
        """De-identification Method (0012,0063, LO, VM 1-n): profile, revision, options."""
        kept = ["free text kept"] if self.keep_free_text and "cleanDescOpt" in self.options else []
        return [f"dicomshare {self.name} profile", f"PS3.15 {self.revision} Basic Profile", *self.options, *kept]


@cache
def named(name: str) -> Profile:
    """A named profile (``clinical`` or ``basic``); ``ValueError`` for any other name.

    Built once per process (a profile is immutable; building one reads Table E.1-1).
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return Profile(name=name, options=PROFILES[name])


def for_partner(partner_options: tuple[str, ...], keep_free_text: bool = False) -> Profile:
    """The profile for a partner's uploads (:attr:`dicomshare.settings.Partner.options`
    and :attr:`~dicomshare.settings.Partner.keep_free_text`)."""
    for name, options in PROFILES.items():
        if set(options) == set(partner_options):
            return Profile(name=name, options=options, keep_free_text=keep_free_text)
    return Profile(name="custom", options=tuple(partner_options), keep_free_text=keep_free_text)
