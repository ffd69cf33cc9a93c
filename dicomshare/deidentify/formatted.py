"""Formatted values (PS3.5 6.2, Table 6.2-1): dates, times, date-times, ages, UTC
offsets, numbers as strings and UIDs are kept only when they follow the grammar, so no
text can ride along in them."""

from __future__ import annotations

import datetime
import re
from functools import lru_cache

TIMEZONE_OFFSET_FROM_UTC = 0x00080201
"""(0008,0201), SH: one ``&ZZXX`` offset (PS3.3 C.12.1.1.8)."""

FORMATTED_VRS = frozenset({"DA", "DT", "TM", "AS", "DS", "IS", "UI"})

_OFFSET = r"[+-](?:0\d|1[0-4])[0-5]\d"
_FRACTION = r"(?:\.\d{1,6})?"
_TIME = rf"(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60){_FRACTION})?)?"
_GRAMMAR = {
    "DA": re.compile(r"(\d{4})(\d{2})(\d{2})"),
    "TM": re.compile(_TIME),
    "DT": re.compile(
        rf"(\d{{4}})(?:(\d{{2}})(?:(\d{{2}})(?:(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60){_FRACTION})?)?)?)?)?(?:{_OFFSET})?"
    ),
    "AS": re.compile(r"\d{3}[DWMY]"),
    "DS": re.compile(r" *[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)? *"),
    "IS": re.compile(r" *[+-]?\d+ *"),
    "UI": re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*"),
    "TZ": re.compile(_OFFSET),
}


@lru_cache(maxsize=4096)
def conforms(form: str, value: str) -> bool:
    """Whether ``value`` (padding stripped) is a ``form`` value: a VR of
    :data:`FORMATTED_VRS` or ``"TZ"`` (a UTC offset). Empty conforms (a zero-length value);
    dates must exist in the calendar."""
    if not value:
        return True
    match = _GRAMMAR[form].fullmatch(value)
    if match is None:
        return False
    if form in ("DA", "DT"):
        year, month, day = match.group(1), match.group(2) or "01", match.group(3) or "01"
        try:
            datetime.date(int(year), int(month), int(day))
        except ValueError:
            return False
    return True


def conformed(tag: int, vr: str, values: list[str]) -> list[str] | None:
    """``values`` with each one that does not conform removed (an empty value in its
    place); ``None`` when all conform or the element is not formatted."""
    form = "TZ" if tag == TIMEZONE_OFFSET_FROM_UTC else vr
    if form not in _GRAMMAR or all(conforms(form, value.strip()) for value in values):
        return None
    return [value if conforms(form, value.strip()) else "" for value in values]


def split_values(value: bytes) -> list[str]:
    """The values of an encoded formatted element, as pydicom decodes them (trailing
    padding off, split at ``\\``); bytes that are not ASCII are one value that conforms
    to nothing."""
    try:
        return value.decode("ascii").rstrip("\x00 ").split("\\")
    except UnicodeDecodeError:
        return ["\x00"]


def is_formatted(tag: int, vr: str) -> bool:
    return vr in FORMATTED_VRS or tag == TIMEZONE_OFFSET_FROM_UTC
