"""Clean Descriptors (PS3.15 E.3.5): the identifying values of a header, and text without them."""

from __future__ import annotations

import datetime
import re
from functools import lru_cache
from itertools import chain
from typing import Iterable

DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%Y/%m/%d", "%d %b %Y", "%b %d %Y")
"""The spellings of a date looked for in free text (:func:`date_spellings`)."""


def identifiers_in(tag: int, vr: str, values: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The identifiers and words, for Clean Descriptors, in the values of an element that
    is not kept (for :meth:`.actions.Deidentifier.add_identifiers`)."""
    identifiers: set[str] = set()
    words: set[str] = set()
    for value in values:
        text = value.strip()
        if len(text) >= 3:
            identifiers.add(text)
        if vr == "PN" or tag in (0x00100020, 0x00080050, 0x00080080):
            words.update(w for w in re.split(r"[\s^=,.\-/]+", text) if len(w) >= 2)
        if vr == "DA":
            identifiers.update(date_spellings(text))
    return frozenset(identifiers), frozenset(words)


def clean_text(text: str, identifiers: set[str], words: set[str]) -> str:
    """PS3.15 E.3.5 Clean Descriptors: ``text`` without any identifying value of the header
    (:func:`_cleaned`, only when one occurs in it)."""
    folded = text.casefold()
    if any(map(folded.__contains__, map(str.casefold, chain(identifiers, words)))):
        return _cleaned(text, identifiers, words)
    return re.sub(r"\s{2,}", " ", text).strip()  # as _cleaned gives it: nothing to remove


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


@lru_cache(maxsize=1024)
def date_spellings(value: str) -> tuple[str, ...]:
    """The ways a DA value may be written in free text (:data:`DATE_FORMATS`)."""
    if not re.fullmatch(r"\d{8}", value):
        return ()
    try:
        day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return ()
    return tuple(day.strftime(fmt) for fmt in DATE_FORMATS)

