"""Values of encoded elements decoded as pydicom 3 decodes them (``pydicom.values``), for
the encoded path; and the bounded caches by an element's encoding."""

from __future__ import annotations

from dicomshare.deidentify.attributes import STRING_VRS
from dicomshare.encoded_dataset import Element, NotPlain, implicit_vr

_DEFAULT_CHARACTER_SETS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})

ELEMENT_CACHE_SIZE = 4096
ELEMENT_CACHE_ELEMENT_BYTES = 256
"""Only elements encoded in up to this many bytes are remembered (names, dates, UIDs, codes,
small sequences: the ones that are decoded); with :data:`ELEMENT_CACHE_SIZE` entries per
cache and four patients' caches, the caches hold at most about 25 MiB."""



def decoded_strings(vr: str, value: bytes) -> list[str]:
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
"""What :func:`single_string` decoded, by encoding; bounded as :func:`.encoded_path._element_caches` are."""


def single_string(element: Element | None) -> str:
    """A single-valued string element's value (``""`` when absent); :class:`NotPlain` when
    it holds several values or is not a plain string (pydicom would give another text).

    Remembered by the element's encoding in :data:`_SINGLE_STRINGS`: the UIDs, class and
    patient of a series repeat.
    """
    if element is None:
        return ""
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
    """Keep ``result`` for ``element`` in ``cache`` (one of :func:`.encoded_path._element_caches`, or
    :data:`_SINGLE_STRINGS`), within their bounds."""
    if element.size <= ELEMENT_CACHE_ELEMENT_BYTES:
        if len(cache) >= ELEMENT_CACHE_SIZE:
            cache.clear()
        cache[element.raw] = result


def check_plain(element: Element) -> None:
    """:class:`NotPlain` for VR UN on a tag the data dictionary knows (pydicom would decode
    it with the dictionary's VR) and for a character set other than the default."""
    if element.vr == "UN" and implicit_vr(element.tag) != "UN":
        raise NotPlain()
    if element.tag == 0x00080005 and single_string(element) not in _DEFAULT_CHARACTER_SETS:
        raise NotPlain()


