"""Clean Descriptors (PS3.15 E.3.5): the identifying values of a header, and text without them.

Identifiers are compared *folded*: each character through NFKD, without combining marks
(accents, kana voicing marks), case-folded and recomposed (NFKC), so ``Strauß``,
``STRAUSS``, ``strauss``, ``Müller`` (NFC or NFD) and ``MULLER``, or full-width and
half-width forms, are one identifier. Person Names give every component of every
component group (alphabetic, ideographic, phonetic: PS3.5 6.2.1): ``Yamada^Tarou=山田^
太郎=やまだ^たろう`` gives ``yamada``, ``tarou``, ``山田``, ``太郎``, ``やまだ``, ``たろう``.
Words in scripts written with spaces are removed as whole words; components in scripts
written without them (Han, kana, Hangul, Thai, ...), single characters included, and
whole values (three characters or more) wherever they occur.

One :class:`Matcher` per set of identifiers finds them all in one pass over the folded
text: an Aho-Corasick automaton (``pyahocorasick``) for the substrings and one
tokenisation with a set look-up for the words, so the cost is linear in the text whatever
the number of identifiers. Free text is first scanned by :mod:`.free_text` (dates, phone
numbers, e-mail addresses, URLs, ID-like digit runs, addresses, titled names).
"""

from __future__ import annotations

import datetime
import heapq
import re
import unicodedata
from bisect import bisect_left, bisect_right
from functools import lru_cache
from itertools import accumulate

import ahocorasick

from dicomshare.deidentify.free_text import DateRule, scrub_free_text
from dicomshare.profile import CLEAN, table_rows

IDENTIFIER_PASSES = 3
"""Removing an identifier may join two pieces into another; the text is scanned again,
up to this many times, after which a text still holding one is emptied."""

NO_SPACE_SCRIPTS = (
    "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u30ff\u3130-\u318f"
    "\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff"
)
"""Thai, Lao, Tibetan, Myanmar, Hangul, Khmer, kana, Han: scripts whose words (names
included) are written without spaces, so no word boundary is asked for."""
_NO_SPACE = re.compile(f"[{NO_SPACE_SCRIPTS}]")
_WORD = re.compile(f"[^\\W_{NO_SPACE_SCRIPTS}]+")
_SEPARATORS = re.compile(r"[\s^=,.\-/()'’\"]+")

WORD_TAGS = frozenset({0x00100020, 0x00101000, 0x00080050})
"""Patient ID, Other Patient IDs, Accession Number: besides Person Names, the values whose
words are identifiers one by one. (An institution's name is one whole identifier: its
words, ``medical``, ``systems``, ``general``, are everyone's.)"""

DESCRIPTOR_TAGS = frozenset(
    int(row["id"], 16) for row in table_rows() if row.get("cleanDescOpt") == CLEAN and "x" not in row["id"]
)
"""The descriptors of the Clean Descriptors option (descriptions, comments, labels): what
they say is no identifier (a removed Series Description ``AXIAL`` must not clean the Image
Type ``AXIAL`` out of every header); they are cleaned, or removed, themselves."""


def _fold_character(character: str) -> str:
    decomposed = unicodedata.normalize("NFKD", character)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFKC", bare.casefold())


class _FoldedCharacters(dict):
    """Each character's folded form, worked out once."""

    def __missing__(self, character: str) -> str:
        folded = self[character] = _fold_character(character)
        return folded


_FOLDED = _FoldedCharacters()


def fold(text: str) -> str:
    """``text`` as identifiers are compared (see the module's docstring)."""
    return text.lower() if text.isascii() else "".join([_FOLDED[c] for c in text])


def _folded_with_starts(text: str) -> tuple[str, list[int] | None]:
    """:func:`fold` and, for each character of ``text``, where its folded form starts
    (``None`` when the positions are the same: ASCII)."""
    if text.isascii():
        return text.lower(), None
    pieces = [_FOLDED[c] for c in text]
    return "".join(pieces), list(accumulate(map(len, pieces), initial=0))


def identifiers_in(tag: int, vr: str, values: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The identifiers and words (folded), for Clean Descriptors, in the values of an
    element that is not kept (for :meth:`.actions.Deidentifier.add_identifiers`).

    Not in descriptors (:data:`DESCRIPTOR_TAGS`) nor private attributes (removed whole;
    what they say about the patient the standard attributes say too, and the rest is
    vendor vocabulary, ``WHOLE BODY``, that must not clean the kept values)."""
    if tag in DESCRIPTOR_TAGS or (tag >> 16) & 1:
        return frozenset(), frozenset()
    identifiers: set[str] = set()
    words: set[str] = set()
    for value in values:
        text = value.strip()
        if len(text) >= 3 and vr != "DT":
            identifiers.add(fold(text))
        if vr == "PN" or tag in WORD_TAGS:
            for token in _SEPARATORS.split(fold(text)):
                if len(token) >= 2 or _NO_SPACE.search(token):
                    words.add(token)
        if vr in ("DA", "DT"):
            identifiers.update(date_spellings(text[:8]))  # a DT's time varies per instance
    identifiers.discard("")
    return frozenset(identifiers), frozenset(words)


AUTOMATON_MAX_CHARACTERS = 10240
"""The longest identifier in the automaton (an LT value's maximum length). The automaton
frees its trie recursively, one C stack frame per character of its longest word: a
1,000,000-character identifier (a hostile removed value) crashed the process when the
matcher was freed. Longer identifiers are searched one by one (:func:`_found_long`); there
are at most a header's size divided by this many of them."""


class Matcher:
    """Every identifier of a header, found in one pass over a folded text."""

    def __init__(self, identifiers: frozenset[str], words: frozenset[str]) -> None:
        substrings = identifiers | {w for w in words if _NO_SPACE.search(w)}
        self.words = frozenset(w for w in words if not _NO_SPACE.search(w))
        self.long = tuple(sorted(s for s in substrings if len(s) > AUTOMATON_MAX_CHARACTERS))
        substrings = {s for s in substrings if len(s) <= AUTOMATON_MAX_CHARACTERS}
        self.automaton = None
        if substrings:
            self.automaton = ahocorasick.Automaton()
            for substring in substrings:
                self.automaton.add_word(substring, len(substring))
            self.automaton.make_automaton()

    def spans(self, folded: str):
        """The ``(start, end)`` of identifiers in ``folded``, by start: every occurrence of
        every substring, every whole word, and every occurrence of a long identifier (spans
        may overlap: :meth:`remove` joins them). ``Automaton.iter`` rather than
        ``iter_long``, whose leftmost-longest matching has missed matches in pyahocorasick
        releases (its issues 133 and 185)."""
        substrings = (
            sorted((end - length + 1, end + 1) for end, length in self.automaton.iter(folded))
            if self.automaton is not None else ()
        )
        words = (m.span() for m in _WORD.finditer(folded) if m.group() in self.words) if self.words else ()
        longs = [_found_long(folded, identifier) for identifier in self.long if len(identifier) <= len(folded)]
        return heapq.merge(substrings, words, *longs)

    def remove(self, text: str) -> str | None:
        """``text`` without the identifiers found in it; ``None`` when there is none."""
        folded, starts = _folded_with_starts(text)
        pieces, position, found = [], 0, False
        for start, end in self.spans(folded):
            if starts is not None:
                start = bisect_right(starts, start) - 1
                end = bisect_left(starts, end)
                while end < len(text) and starts[end + 1] == starts[end]:
                    end += 1  # combining marks after the end go too
            found = True
            if start > position:
                pieces.append(text[position:start])
            position = max(position, end)
        if not found:
            return None
        pieces.append(text[position:])
        return "".join(pieces)


def _found_long(folded: str, identifier: str):
    """The ``(start, end)`` of each occurrence of ``identifier`` in ``folded``, by start."""
    start = folded.find(identifier)
    while start >= 0:
        yield start, start + len(identifier)
        start = folded.find(identifier, start + len(identifier))


@lru_cache(maxsize=16)
def matcher(identifiers: frozenset[str], words: frozenset[str]) -> Matcher:
    """The :class:`Matcher` of a header's identifiers (the objects of a series share them)."""
    return Matcher(identifiers, words)


def scrub(
    text: str, identifiers: frozenset[str], words: frozenset[str], dates: DateRule, free_text: bool = True
) -> str | None:
    """``text`` cleaned: what :mod:`.free_text` finds (unless ``free_text`` is false), then
    every identifier of the header; ``None`` when nothing was found."""
    changed = False
    if free_text:
        found = scrub_free_text(text, dates)
        if found is not None:
            text, changed = found, True
    if identifiers or words:
        found_in = matcher(identifiers, words)
        for _ in range(IDENTIFIER_PASSES):
            found = found_in.remove(text)
            if found is None:
                break
            text, changed = found, True
        else:
            if found_in.remove(text) is not None:
                text = ""
    return re.sub(r"\s{2,}", " ", text).strip() if changed else None


def clean_text(text: str, identifiers: frozenset[str], words: frozenset[str], dates: DateRule) -> str:
    """PS3.15 E.3.5 Clean Descriptors: ``text`` without any identifying value (:func:`scrub`),
    its runs of white space made one space."""
    found = scrub(text, identifiers, words, dates)
    return re.sub(r"\s{2,}", " ", text).strip() if found is None else found


@lru_cache(maxsize=1024)
def date_spellings(value: str) -> tuple[str, ...]:
    """The ways a DA value may be written in free text, folded: ISO and DICOM, numeric
    day-month-year and month/day/year (with and without leading zeros), and with English
    month names. They are removed from text whose own dates are kept (full-dates
    option); otherwise :mod:`.free_text` shifts or removes every date, whatever its
    spelling, before they are looked for."""
    if not re.fullmatch(r"\d{8}", value):
        return ()
    try:
        day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return ()
    y, m, d = day.year, day.month, day.day
    spellings = {f"{y}{m:02d}{d:02d}", f"{y}-{m:02d}-{d:02d}", f"{y}/{m:02d}/{d:02d}", f"{y}.{m:02d}.{d:02d}"}
    for dd in {f"{d}", f"{d:02d}"}:
        for mm in {f"{m}", f"{m:02d}"}:
            spellings |= {f"{dd}.{mm}.{y}", f"{mm}/{dd}/{y}", f"{dd}/{mm}/{y}", f"{dd}-{mm}-{y}"}
        for name in (day.strftime("%b"), day.strftime("%B")):
            spellings |= {f"{dd} {name} {y}", f"{dd}-{name}-{y}", f"{name} {dd} {y}", f"{name} {dd}, {y}"}
    return tuple(sorted(fold(spelling) for spelling in spellings))
