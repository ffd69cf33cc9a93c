"""The free-text detector of Clean Descriptors (PS3.15 E.3.5): what identifies a person in
any text, whether or not the header holds it.

Phone numbers are found by ``phonenumbers`` (libphonenumber's matcher); dates in the
common spellings (``19610203``, ``1961-02-03``, ``03.02.1961``, ``3/2/1961``,
``03-FEB-1961``, ``3 February 1961``, ``Feb 3, 1961``), e-mail addresses, URLs, UIDs
(dotted numbers of five components or more), ID-like digit runs (six digits or more, an
optional short letter prefix: MRNs, accession and insurance numbers), street addresses and titled names ("Dr House", "mother Anna") by one
compiled expression, each of whose alternatives starts at a token boundary and reads a
bounded number of characters, so a scan costs time linear in the text.

Dates are shifted by the patient's offset under the modified-dates option (written in
the spelling they had; a numeric day/month order that cannot be told, such as
``3/2/1961``, is removed), kept under the full-dates option and removed otherwise.
Everything else found is removed.
"""

from __future__ import annotations

import datetime
import re

import phonenumbers

PHONE_REGION = "US"
"""The region whose national numbers (without a ``+`` prefix) ``phonenumbers`` looks for;
international numbers are found whatever the region."""
_PHONE_CANDIDATE = re.compile(r"\+?\(?\d(?:[ ().\-/]{0,3}\d){6,16}")
"""Where a phone number may be: seven digits or more with separators. ``phonenumbers``
judges these only (its own matcher reads every character with heavy expressions: about
0.7 s for 512 KiB of prose without a single number)."""
_PHONE_CONTEXT = 4

_MONTH_NAMES = (
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"),
    ("januar", "februar", "maerz", "april", "mai", "juni", "juli", "august", "september", "oktober",
     "november", "dezember"),
    ("janvier", "fevrier", "mars", "avril", "mai", "juin", "juillet", "aout", "septembre", "octobre",
     "novembre", "decembre"),
)
"""Month names by language, in the ASCII spelling dates are written back in."""
_MONTH_ALIASES = {"sept": ("sep", 8), "märz": ("maerz", 2), "février": ("fevrier", 1), "août": ("aout", 7),
                  "décembre": ("decembre", 11), "jän": ("jan", 0), "jänner": ("januar", 0)}
_MONTHS: dict[str, tuple[tuple[str, ...], int]] = {}
for _names in _MONTH_NAMES:
    for _index, _name in enumerate(_names):
        _MONTHS.setdefault(_name, (_names, _index))
for _alias, (_name, _index) in _MONTH_ALIASES.items():
    _MONTHS[_alias] = (next(n for n in _MONTH_NAMES if _name in n), _index)


def _any_case(words) -> str:
    """An expression matching any of ``words`` in any case, as a trie of explicit case
    classes (``[Dd](?:[Rr]|[Oo][Cc]...)``): sre then rejects a position on its first
    character, where an ignore-case alternation lower-cases and tries every word."""
    trie: dict = {}
    for word in words:
        node = trie
        for character in word:
            node = node.setdefault(character, {})
        node[""] = {}

    def expression(node: dict) -> str:
        branches = []
        for character, child in sorted(node.items()):
            if not character:
                continue
            cases = {character, character.upper(), character.lower()}
            head = re.escape(character) if len(cases) == 1 else f"[{''.join(sorted(map(re.escape, cases)))}]"
            branches.append(head + expression(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return expression(trie)


_MONTH = _any_case(_MONTHS)

_TITLES = _any_case((
    "dr|doctor|prof|professor|mr|mrs|ms|miss|mister|sir|madam|herr|frau|mme|mlle|nurse|"
    "mother|father|mom|mum|dad|son|daughter|wife|husband|brother|sister|aunt|uncle|"
    "grandmother|grandfather|grandma|grandpa|spouse|partner|guardian"
).split("|"))
_NOT_NAMES = _any_case((
    "the|and|or|has|had|have|is|was|were|with|without|of|in|on|at|to|for|who|which|that|"
    "died|deceased|report|reports|said|says|history|unknown|alive|also|not|no|a|an"
).split("|"))
_CAPITAL = "A-ZÀ-ÖØ-ÞĀ-ŽΑ-ΩА-Я"
_NAME_WORD = rf"[{_CAPITAL}][\w'’-]{{1,40}}"
_STREET = _any_case((
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|court|ct|way|place|pl|square|sq|terrace|"
    "parkway|highway|hwy"
).split("|"))
_STRASSE = "|".join(f"(?<={_any_case([suffix])})" for suffix in ("straße", "strasse", "str", "weg", "gasse", "platz", "allee", "damm"))
_STREET_START = _any_case("rue|via|calle|avenida|avenue|boulevard|chemin|place|viale|piazza".split("|"))

DETECTOR = re.compile(
    "(?<!\\w)(?:%s)" % "|".join(  # every alternative starts a token: one test rejects a position inside a word
        (
            # ISO 8601 and DICOM DA: 1961-02-03, 1961/02/03, 19610203
            r"(?<![\w.])(?P<iy>(?:1[89]|20)\d\d)(?P<isep>[-./]?)(?P<im>0[1-9]|1[0-2])(?P=isep)"
            r"(?P<id>0[1-9]|[12]\d|3[01])(?![\w]|\.\d)",
            # numeric day and month: 03.02.1961, 3/2/1961, 03-02-61
            r"(?<![\w.])(?P<na>\d{1,2})(?P<nsep>[-./])(?P<nb>\d{1,2})(?P=nsep)(?P<ny>\d{4}|\d\d)(?![\w]|\.\d)",
            # day, month name, year: 03-FEB-1961, 15-Jan-2024, 3 February 1961, 3. März 1961
            rf"(?<!\w)(?P<dd>\d{{1,2}})(?:st|nd|rd|th)?(?P<ds>[ .\-/]{{1,2}})(?P<dm>{_MONTH})(?P<dmd>\.?)"
            rf"(?P<dt>[ .\-/,]{{1,3}})(?P<dy>\d{{4}}|\d\d)(?!\w)",
            # month name, day, year: Feb 3, 1961; February 3rd 1961
            rf"(?<!\w)(?P<mm>{_MONTH})(?P<mmd>\.?)(?P<ms>[ \-]{{1,2}})(?P<md>\d{{1,2}})(?P<mo>(?i:st|nd|rd|th)?)"
            rf"(?P<mt>,?[ ]{{1,2}})(?P<my>\d{{4}})(?!\w)",
            # e-mail address
            r"(?P<email>(?<![\w.+-])[\w.+-]{1,64}+@[\w-]{1,63}+(?:\.[\w-]{1,63}+)+)",
            # URL
            r"(?P<url>(?i:(?<![\w.])(?:https?|ftp|file)://|(?<![\w.])www\.)[^\s<>\"']+)",
            # street address: 221B Baker Street, 12 rue de la Paix, Hauptstraße 5
            rf"(?P<street>(?<!\w)\d{{1,5}}[a-zA-Z]?,?[ ]{{1,3}}(?:[{_CAPITAL}][\w'.-]{{0,30}}+[ ]{{1,3}}){{0,4}}"
            rf"{_STREET}\b\.?"
            rf"|(?<!\w)\d{{1,5}},?[ ]{{1,3}}{_STREET_START}(?:[ ]{{1,3}}[\w'’-]{{1,30}}+){{1,4}}"
            rf"|(?<!\w)[{_CAPITAL}][\w-]{{0,40}}+(?:{_STRASSE})\.?[ ]{{0,3}}\d{{1,5}}[a-zA-Z]?(?!\w))",
            # UIDs and other dotted numbers of five components or more: 1.2.840.113619.2.55
            r"(?P<uid>(?<![\w.])\d{1,39}(?:\.\d{1,39}){4,}(?![\w.]))",
            # ID-like digit runs: 1234567, MRN12345678, 123-456-789
            r"(?P<id_run>(?<![\w.])[A-Za-z]{0,4}[#:]?\d(?:[-/]?\d){5,}(?![\w]|\.\d))",
            # titled names: Dr House, mother Anna, Mrs. O'Brien-Smith
            rf"(?<!\w)(?:{_TITLES})\.?[ ]{{1,3}}(?!(?:{_NOT_NAMES})\b)(?P<name>{_NAME_WORD}(?:[ ]{{1,3}}(?!(?:{_NOT_NAMES})\b){_NAME_WORD})?)",
        )
    )
)
"""The detector's expression (everything but phone numbers); see the module's docstring."""


class DateRule:
    """What happens to a date found in text: shifted by ``offset`` days (``shift``), kept
    (``keep``) or removed (``remove``)."""

    def __init__(self, mode: str, offset: int) -> None:
        self.mode, self.offset = mode, offset

    def __call__(self, day: datetime.date) -> datetime.date | None:
        if self.mode == "keep":
            return day
        if self.mode == "remove":
            return None
        try:
            return day + datetime.timedelta(days=self.offset)
        except OverflowError:
            return None


def _year(text: str) -> int:
    """A written year; two digits as POSIX ``strptime`` reads them (69 to 99: 1900s)."""
    value = int(text)
    return value if len(text) == 4 else value + (1900 if value >= 69 else 2000)


def _two_digit(value: int, like: str) -> str:
    return f"{value:02d}" if len(like) == 2 else str(value)


def _month_name(token: str, index: int, match_case: str) -> str:
    names, _ = _MONTHS[token.casefold()]
    name = names[index]
    if match_case.isupper():
        return name.upper()
    if match_case[:1].isupper():
        return name.capitalize()
    return name


def _date(match: re.Match, rule: DateRule) -> str | None:
    """The replacement of a date found by :data:`DETECTOR`: shifted in the same spelling,
    kept, or ``""`` (removed); ``None`` when the match is no date."""
    group = match.group
    try:
        if group("iy"):
            day = datetime.date(int(group("iy")), int(group("im")), int(group("id")))
            new = rule(day)
            return "" if new is None else group(0) if new == day else (
                f"{new.year:04d}{group('isep')}{new.month:02d}{group('isep')}{new.day:02d}"
            )
        if group("na"):
            a, b, sep = int(group("na")), int(group("nb")), group("nsep")
            if sep == "/" and a <= 12 and b <= 12 and a != b:
                return ""  # 3/2/1961: 3 February or March 2? Neither can be shifted
            day_first = sep != "/" or a > 12
            d, m = (a, b) if day_first else (b, a)
            day = datetime.date(_year(group("ny")), m, d)
            new = rule(day)
            if new is None:
                return ""
            if new == day:
                return group(0)
            first, second = (new.day, new.month) if day_first else (new.month, new.day)
            first_like, second_like = group("na"), group("nb")
            year = f"{new.year % 100:02d}" if len(group("ny")) == 2 else f"{new.year:04d}"
            return f"{_two_digit(first, first_like)}{sep}{_two_digit(second, second_like)}{sep}{year}"
        if group("dd"):
            token = group("dm")
            _, month = _MONTHS[token.casefold()]
            day = datetime.date(_year(group("dy")), month + 1, int(group("dd")))
            new = rule(day)
            if new is None:
                return ""
            if new == day:
                return group(0)
            year = f"{new.year % 100:02d}" if len(group("dy")) == 2 else f"{new.year:04d}"
            return (
                f"{_two_digit(new.day, group('dd'))}{group('ds')}{_month_name(token, new.month - 1, token)}"
                f"{group('dmd')}{group('dt')}{year}"
            )
        token = group("mm")
        _, month = _MONTHS[token.casefold()]
        day = datetime.date(int(group("my")), month + 1, int(group("md")))
        new = rule(day)
        if new is None:
            return ""
        if new == day:
            return group(0)
        ordinal = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(new.day, "th")
        suffix = (ordinal.upper() if group("mo").isupper() else ordinal) if group("mo") else ""
        return (
            f"{_month_name(token, new.month - 1, token)}{group('mmd')}{group('ms')}{new.day}{suffix}"
            f"{group('mt')}{new.year:04d}"
        )
    except ValueError:
        return None


def scrub_free_text(text: str, rule: DateRule) -> str | None:
    """``text`` with phone numbers, e-mail addresses, URLs, ID-like digit runs, street
    addresses and titled names removed and dates handled by ``rule``; ``None`` when none
    is found (the text is left as it was)."""
    changed = False
    phones = []
    for candidate in _PHONE_CANDIDATE.finditer(text):
        start = max(0, candidate.start() - _PHONE_CONTEXT)
        window = text[start : candidate.end() + _PHONE_CONTEXT]
        matches = phonenumbers.PhoneNumberMatcher(window, PHONE_REGION, leniency=phonenumbers.Leniency.VALID)
        phones.extend((start + m.start, start + m.end) for m in matches)
    if phones:
        text = _replace(text, [(start, end, "") for start, end in _merged(phones)])
        changed = True
    replacements = []
    for match in DETECTOR.finditer(text):
        kind = match.lastgroup
        if kind in ("email", "url", "street", "uid", "id_run"):
            replacements.append((match.start(), match.end(), ""))
        elif kind == "name":
            replacements.append((match.start("name"), match.end("name"), ""))
        else:
            new = _date(match, rule)
            if new is None:
                continue
            if new != match.group(0):
                replacements.append((match.start(), match.end(), new))
    if replacements:
        return _replace(text, replacements)
    return text if changed else None


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` in order, overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _replace(text: str, replacements: list[tuple[int, int, str]]) -> str:
    """``text`` with each ``(start, end, new)`` span (in order, not overlapping) replaced."""
    pieces, position = [], 0
    for start, end, new in replacements:
        pieces.append(text[position:start])
        pieces.append(new)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)

