"""Values of encoded elements decoded as pydicom 3 decodes them (``pydicom.values``), and
kept or changed values written as the pydicom path writes them, for the encoded path; the
pixel geometry read from them; and the bounded caches by an element's encoding."""

from __future__ import annotations

import re
import struct
from functools import lru_cache

from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword

from dicomshare.deidentify.attributes import STRING_VRS
from dicomshare.encoded_dataset import Element, NotPlain, implicit_vr
from dicomshare.pixel_data import GEOMETRY, overlay_in_pixel_data
from dicomshare.profile import Profile

CHARACTER_SET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
"""The VRs whose values use the Specific Character Set (PS3.5 6.1.2.3); pydicom decodes
every other string VR as the default repertoire."""
DEFAULT_CODEC = "ascii"
"""The codec of the default character repertoire, the only one whose values are kept as
they are (every other is re-encoded as UTF-8, as the pydicom path does)."""
_DEFAULT_CHARACTER_SETS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
CODECS = {term: codec for term, codec in python_encoding.items() if not term.startswith("ISO 2022")} | dict.fromkeys(
    _DEFAULT_CHARACTER_SETS, DEFAULT_CODEC
)
"""Python codec by single-valued Specific Character Set (0008,0005), as pydicom decodes
it: the default repertoire, the single-byte sets (ISO_IR 100, 101, 109, 110, 126, 127,
138, 144, 148, 166, 13), UTF-8 (ISO_IR 192), GB18030 and GBK. ISO 2022 code extensions
(escape sequences, several values) are not here: the pydicom path decodes them."""

ELEMENT_CACHE_SIZE = 4096
ELEMENT_CACHE_ELEMENT_BYTES = 256
"""Only elements encoded in up to this many bytes are remembered (names, dates, UIDs, codes,
small sequences: the ones that are decoded). Each cache holds up to
:data:`ELEMENT_CACHE_SIZE` entries; four patients' caches are kept, each with up to
:data:`IDENTIFIER_SETS_CACHED` caches of encoded results, so at most 20 caches, about
60 MiB by the 25 MiB figure measured for 8 of them."""



def decoded_strings(vr: str, value: bytes, codec: str = DEFAULT_CODEC) -> list[str]:
    """The values of a string element, as pydicom 3 decodes them (``pydicom.values``):
    :data:`CHARACTER_SET_VRS` with ``codec`` (of :data:`CODECS`), the others as ASCII.

    A byte the codec does not decode raises :class:`UnicodeDecodeError` (the pydicom path
    then decides, with replacement characters), as does an escape sequence (ISO 2022).
    """
    text = value.decode(codec if vr in CHARACTER_SET_VRS else DEFAULT_CODEC)
    if "\x1b" in text:
        raise UnicodeDecodeError(codec, value, 0, len(value), "escape sequence")
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
"""What :func:`single_string` decoded, by encoding; bounded as :func:`element_caches` are."""


def single_string(element: Element | None, codec: str = DEFAULT_CODEC) -> str:
    """A single-valued string element's value (``""`` when absent); :class:`NotPlain` when
    it holds several values or is not a plain string (pydicom would give another text).

    Remembered by the element's encoding in :data:`_SINGLE_STRINGS`: the UIDs, class and
    patient of a series repeat (text in another codec than ASCII is not remembered).
    """
    if element is None:
        return ""
    if codec != DEFAULT_CODEC and element.vr in CHARACTER_SET_VRS:
        values = decoded_strings(element.vr, element.value, codec)
        if len(values) != 1:
            raise NotPlain()
        return values[0]
    found = _SINGLE_STRINGS.get(element.raw)
    if found is None:
        if element.vr not in STRING_VRS:
            raise NotPlain()
        values = decoded_strings(element.vr, element.value)
        if len(values) != 1:
            raise NotPlain()
        found = values[0]
        remember(_SINGLE_STRINGS, element, found)
    return found


def remember(cache: dict, element: Element, result: object) -> None:
    """Keep ``result`` for ``element`` in ``cache`` (one of :func:`element_caches`, or
    :data:`_SINGLE_STRINGS`), within their bounds."""
    if element.size <= ELEMENT_CACHE_ELEMENT_BYTES:
        if len(cache) >= ELEMENT_CACHE_SIZE:
            cache.clear()
        cache[element.raw] = result


def check_plain(element: Element, codec: str) -> None:
    """:class:`NotPlain` for VR UN on a tag the data dictionary knows (pydicom would decode
    it with the dictionary's VR) and for a Specific Character Set in an item (the data set
    declares it at the top; an item may declare only the default, and only when the data
    set does too): the pydicom path decodes each item with its own."""
    if element.vr == "UN" and implicit_vr(element.tag) != "UN":
        raise NotPlain()
    if element.tag == 0x00080005 and (codec != DEFAULT_CODEC or single_string(element) not in _DEFAULT_CHARACTER_SETS):
        raise NotPlain()


def character_set_codec(element: Element | None) -> str:
    """The codec (of :data:`CODECS`) of the data set's Specific Character Set (0008,0005);
    :class:`NotPlain` for code extensions (several values, ISO 2022) and unknown terms."""
    codec = CODECS.get(single_string(element))
    if codec is None:
        raise NotPlain()
    return codec


_NUMBER_FORMATS = {"FD": "d", "FL": "f", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H", "UV": "Q"}
_EVEN_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "US or SS", "OB or OW", "US or OW", "US or SS or OW"})
_NUMBER_STRINGS = {
    "DS": re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"),
    "IS": re.compile(r"[+-]?\d+"),
    "UI": re.compile(r"[0-9.]*"),
}
"""Values the pydicom path writes back stripped of spaces; anything else it keeps in odd
ways (tabs, NULs, garbage), which :func:`reencoded` leaves to it."""


def reencoded(vr: str, value: bytes, codec: str) -> bytes:
    """A kept value as the pydicom path writes it when the data set declares a character
    set: every element converted (``pydicom.values``) and written again (``pydicom.filewriter``),
    text in UTF-8 (ISO_IR 192). :class:`NotPlain` for values whose conversion is not
    reproduced here (the pydicom path then writes or refuses them).

    Numbers go through ``struct`` as pydicom's do (a signalling NaN in FL comes back quiet);
    DS, IS and UI values lose their surrounding spaces; text loses trailing spaces and NULs
    per value; the rest is joined, UTF-8 and padded to even length.
    """
    number = _NUMBER_FORMATS.get(vr)
    if number is not None:
        size = struct.calcsize("<" + number)
        if len(value) % size:
            raise NotPlain()
        layout = f"<{len(value) // size}{number}"
        return struct.pack(layout, *struct.unpack(layout, value))
    if vr == "AT" or vr in _EVEN_VRS:
        if len(value) % (4 if vr == "AT" else 2):
            raise NotPlain()
        return value
    if vr not in STRING_VRS or vr == "PN":
        raise NotPlain()
    values = decoded_strings(vr, value, codec)
    pattern = _NUMBER_STRINGS.get(vr)
    if pattern is not None:
        values = [v.strip(" ") or v for v in values]
        if not all(pattern.fullmatch(v) or not v for v in values):
            raise NotPlain()
    text = "\\".join(values).encode("utf-8")
    return text + (b"\x00" if vr == "UI" else b" ") if len(text) % 2 else text


def text_bytes(values: list[str], vr: str, codec: str) -> bytes:
    """String values as pydicom writes them: joined with ``\\``, padded to even length; in
    UTF-8 unless the data set is in the default repertoire."""
    text = "\\".join(values).encode(DEFAULT_CODEC if codec == DEFAULT_CODEC else "utf-8")
    return text + (b"\x00" if vr == "UI" else b" ") if len(text) % 2 else text


_GEOMETRY_TAGS = tuple((keyword, tag_for_keyword(keyword)) for keyword in GEOMETRY)


def pixel_geometry(top: dict[int, Element]) -> dict[str, int | None]:
    """:func:`~dicomshare.pixel_data.check_pixel_geometry`'s values from the top-level
    elements, read as pydicom reads them (:class:`NotPlain` for anything else)."""
    geometry: dict[str, int | None] = {keyword: whole_number(top.get(tag)) for keyword, tag in _GEOMETRY_TAGS}
    geometry["OverlayInPixelData"] = any(
        overlay_in_pixel_data(tag, value) for tag, element in top.items()
        if tag >> 24 == 0x60 and tag & 0xFFFF in (0x0100, 0x0102) and (value := whole_number(element)) is not None
    )
    return geometry


def whole_number(element: Element | None) -> int | None:
    """A single US or IS value; ``None`` when absent or empty."""
    if element is None or not element.value:
        return None
    if element.vr == "US" and len(element.value) == 2:
        return int.from_bytes(element.value, "little")
    if element.vr == "IS":
        text = single_string(element).strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    raise NotPlain()


@lru_cache(maxsize=4)
def element_caches(
    profile: Profile, secret: bytes, partner: str, pseudonym: str, implicit: bool, codec: str
) -> tuple[dict, dict]:
    """For one patient's objects at one partner in one character set (a series, a study):
    what :func:`.encoded_path._note_encoded` found in an element, by the element's
    encoding, and, per set of identifiers found (:func:`identifiers_cache`), what
    :func:`.encoded_path._encode_elements` made of it.

    Both depend on nothing else (a kept or cleaned text depends on the identifiers it is
    checked against, hence a cache per set), and most elements repeat from one object of
    a series to the next: a remembered element, sequences included, is neither decoded
    nor checked again. In memory only; elements over :data:`ELEMENT_CACHE_ELEMENT_BYTES` are not
    cached, and each cache is emptied when it reaches :data:`ELEMENT_CACHE_SIZE` entries.
    """
    return {}, {}


IDENTIFIER_SETS_CACHED = 4


def identifiers_cache(caches: dict, found: tuple[frozenset[str], frozenset[str]]) -> dict:
    """The cache of :func:`.encoded_path._encode_elements` for the identifiers ``found``
    (:attr:`.actions.Deidentifier.found`): one of up to :data:`IDENTIFIER_SETS_CACHED` per
    patient (a study's objects share them)."""
    cache = caches.get(found)
    if cache is None:
        if len(caches) >= IDENTIFIER_SETS_CACHED:
            caches.clear()
        cache = caches[found] = {}
    return cache
