"""De-identification from the encoded elements (:mod:`dicomshare.encoded_dataset`): the
fast path for ordinary objects (implicit or explicit VR little endian, the default
character repertoire or one single-valued character set of
:data:`.encoded_values.CODECS`, elements in ascending tag order), which gives the same
bytes as the pydicom path (:mod:`.dataset_path`). In the default repertoire kept values
are not decoded; in another character set they are written as the pydicom path writes
them, text in UTF-8 (:func:`.encoded_values.reencoded`).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import BinaryIO

from pydicom.datadict import tag_for_keyword

from dicomshare.deidentify.actions import Deidentifier, record_elements
from dicomshare.deidentify.attributes import (
    CHECKED_VRS,
    CODE_VALUE_TAGS,
    change_vr,
    effective_vr,
    local_coding_scheme,
)
from dicomshare.deidentify.dataset_reader import PIXEL_DATA_TAG_SET
from dicomshare.deidentify.descriptors import identifiers_in
from dicomshare.deidentify.formatted import conformed, is_formatted
from dicomshare.deidentify.encoded_values import (
    DEFAULT_CODEC,
    ELEMENT_CACHE_ELEMENT_BYTES,
    STRING_VRS,
    character_set_codec,
    check_plain,
    decoded_strings,
    element_caches,
    identifiers_cache,
    reencoded,
    remember,
    single_string,
    pixel_geometry,
    text_bytes,
)
from dicomshare.deidentify.file_meta import header_bytes
from dicomshare.deidentify.identities import object_pseudonym
from dicomshare.deidentify.plan import Plan, Request
from dicomshare.encoded_dataset import (
    VRS,
    Element,
    Incomplete,
    NotPlain,
    TooManyElements,
    element_bytes,
    item_bytes,
    read_data_set,
    sequence_bytes,
)
from dicomshare.profile import EMPTY, KEEP, REMOVE, Profile
from dicomshare.pixel_data import pixel_data_end
from dicomshare.validation import (
    CHECKED,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    SUPPORTED_TRANSFER_SYNTAXES,
    TOO_LARGE,
    DeidentificationRefused,
    check_attributes,
)

ENCODED_READ_BYTES = 16 * 1024
"""The first read of :func:`rewrite_encoded`; it reads eight times more while the header
runs past what it has read, up to :data:`ENCODED_MAX_BYTES`."""
ENCODED_MAX_BYTES = 64 * 1024**2

_ENCODED_TRANSFER_SYNTAXES = SUPPORTED_TRANSFER_SYNTAXES - {
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
}
_CHECKED_TAGS = tuple((keyword, tag_for_keyword(keyword)) for keyword in CHECKED[1:])
_UID_TAGS = (0x0020000D, 0x0020000E, 0x00080018, 0x00080016)
"""Study, Series and SOP Instance UID, SOP Class UID: the :class:`Plan`'s UIDs."""
_NUMBER_SIZES = {"FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}


def rewrite_encoded(fp: BinaryIO, size: int, request: Request) -> Plan | None:
    """De-identify from the encoded elements (:mod:`dicomshare.encoded_dataset`).

    ``None`` when the object is not plain (see that module), declares a character set
    this path does not decode (code extensions: several values, ISO 2022), holds a value
    this path does not decode or write as pydicom does (bytes its character set does not
    decode, VR UN or an ambiguous VR that would change), or would be refused: :func:`.dataset_path.rewrite_dataset`
    then decides, so refusals and their reasons come from one place; except an object of
    more than :data:`~dicomshare.encoded_dataset.MAX_ELEMENTS` elements, refused
    ``too_large`` here rather than read again, at greater cost, by pydicom.
    """
    chunk = min(size, ENCODED_READ_BYTES)
    while True:
        fp.seek(0)
        data = fp.read(chunk)
        try:
            return _rewrite_encoded_bytes(
                data, len(data) >= size, fp, size, request
            )
        except Incomplete:
            if chunk >= min(size, ENCODED_MAX_BYTES):
                return None
            chunk = min(size, ENCODED_MAX_BYTES, chunk * 8)
        except TooManyElements as exc:  # not left to pydicom, which would take more memory still
            raise DeidentificationRefused(TOO_LARGE) from exc
        except (NotPlain, UnicodeError, DeidentificationRefused):
            return None


def _rewrite_encoded_bytes(data: bytes, complete: bool, fp: BinaryIO, size: int, request: Request) -> Plan | None:
    meta, meta_end = _file_meta_elements(data, complete)
    transfer_syntax = single_string(meta.get(0x00020010))
    if transfer_syntax not in _ENCODED_TRANSFER_SYNTAXES:
        return None
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    if _looks_explicit(data, meta_end) == implicit:
        return None
    previous = _PREVIOUS_ELEMENTS.get(implicit, ())
    elements, stop = read_data_set(
        data, meta_end, implicit=implicit, complete=complete, stop_at=PIXEL_DATA_TAG_SET, like=previous
    )
    if stop - meta_end <= PREVIOUS_ELEMENTS_MAX_BYTES:
        _PREVIOUS_ELEMENTS[implicit] = elements
    top = {element.tag: element for element in elements}
    if stop < len(data):
        pixel_offset = stop
        pixel_end = pixel_data_end(fp, pixel_offset, size, transfer_syntax=transfer_syntax, geometry=pixel_geometry(top))
    elif complete:
        pixel_offset, pixel_end = None, 0
    else:
        raise Incomplete()
    codec = character_set_codec(top.get(0x00080005))
    checked = {keyword: single_string(top.get(tag)) for keyword, tag in _CHECKED_TAGS}
    check_attributes({"MediaStorageSOPClassUID": single_string(meta.get(0x00020002)), **checked}, request.settings)
    profile, secret, partner = request.profile, request.secret, request.partner
    pseudonym = object_pseudonym(
        secret,
        partner,
        single_string(top.get(0x00100021), codec).strip(),
        single_string(top.get(0x00100020), codec).strip(),
        checked["StudyInstanceUID"],
        request.study_patient,
    )
    deidentifier = Deidentifier(profile, secret, partner, pseudonym)
    noted, encoded_caches = element_caches(profile, secret, partner, pseudonym, implicit, codec)
    noted_elements = elements if codec == DEFAULT_CODEC else [e for e in elements if e.tag != 0x00080005]
    deidentifier.add_identifiers(*_note_encoded(deidentifier, noted_elements, noted, codec))
    encoded_cache = identifiers_cache(encoded_caches, deidentifier.found)
    records = _record_bytes(profile, deidentifier.dates, implicit, codec != DEFAULT_CODEC)
    kept = elements if records.keys().isdisjoint(top) else [e for e in elements if e.tag not in records]
    data_set = _encode_elements(deidentifier, kept, implicit, encoded_cache, codec, extra=records)
    uids = [_output_string(deidentifier, top.get(tag)) for tag in _UID_TAGS]
    if not all(uids):
        return None
    pixel_data = None if pixel_offset is None else (pixel_offset, pixel_end)
    new_header = header_bytes(uids[3], uids[2], transfer_syntax, data_set, pixel_data)
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


PREVIOUS_ELEMENTS_MAX_BYTES = 1024**2
_PREVIOUS_ELEMENTS: dict[bool | str, list[Element]] = {}
"""The top-level elements of the last object read, by VR encoding (``True`` for implicit
VR), and of its File Meta Information (``"meta"``); for :func:`read_data_set`'s ``like``:
the objects of a series repeat most of each other's elements, which are then not read
again. Only data sets up to :data:`PREVIOUS_ELEMENTS_MAX_BYTES` are kept."""

_NOTHING_NOTED = (frozenset(), frozenset())


def _note_encoded(
    deidentifier: Deidentifier, elements: list[Element], noted: dict, codec: str
) -> tuple[frozenset[str], frozenset[str]]:
    """What :meth:`Deidentifier.collect` gathers, from encoded elements (for
    :meth:`Deidentifier.add_identifiers`)."""
    identifiers: set[str] = set()
    words: set[str] = set()
    for element in elements:
        found = noted.get(element.raw) if element.size <= ELEMENT_CACHE_ELEMENT_BYTES else None
        if found is None:
            vr = effective_vr(element.tag, element.vr)
            if element.vr == "SQ":
                nested_identifiers: set[str] = set()
                nested_words: set[str] = set()
                for item in element.value:
                    nested = _note_encoded(deidentifier, item.elements, noted, codec)
                    nested_identifiers |= nested[0]
                    nested_words |= nested[1]
                found = (
                    (frozenset(nested_identifiers), frozenset(nested_words))
                    if nested_identifiers or nested_words else _NOTHING_NOTED
                )
            else:
                check_plain(element, codec)
                action = deidentifier.action(element.tag, vr)
                if deidentifier.notes(action, vr):
                    found = identifiers_in(element.tag, vr, decoded_strings(element.vr, element.value, codec))
                    found = found if found[0] or found[1] else _NOTHING_NOTED
                else:
                    found = _NOTHING_NOTED
            remember(noted, element, found)
        if found is not _NOTHING_NOTED:
            identifiers |= found[0]
            words |= found[1]
    if not identifiers and not words:
        return _NOTHING_NOTED
    return frozenset(identifiers), frozenset(words)


def _encode_elements(
    deidentifier: Deidentifier,
    elements: list[Element],
    implicit: bool,
    encoded_cache: dict,
    codec: str,
    extra: dict[int, bytes] | None = None,
) -> bytes:
    """:meth:`Deidentifier.apply` and the encoding of its result, in tag order (the
    elements are in tag order: :mod:`~dicomshare.encoded_dataset` accepts no other).

    Each element's result is remembered by its encoding, except a code of a local coding
    scheme, whose check depends on its item (:func:`_local_codes`).
    """
    encoded = list(extra.items()) if extra else []
    local_codes = None
    for element in elements:
        in_context = False
        if element.tag in CODE_VALUE_TAGS:
            local_codes = _local_codes(elements) if local_codes is None else local_codes
            in_context = local_codes
        cacheable = not in_context and element.size <= ELEMENT_CACHE_ELEMENT_BYTES
        new = encoded_cache.get(element.raw, _UNCACHED) if cacheable else _UNCACHED
        if new is _UNCACHED:
            new = _encode_element(deidentifier, element, implicit, encoded_cache, codec, bool(local_codes))
            if cacheable:
                remember(encoded_cache, element, new)
        if new is not None:
            encoded.append((element.tag, new))
    if extra:
        encoded.sort()
    return b"".join([value for _, value in encoded])


def _local_codes(elements: list[Element]) -> bool:
    """Whether the item of ``elements`` names a local coding scheme (:func:`local_coding_scheme`)."""
    designator = next((e for e in elements if e.tag == 0x00080102), None)
    return local_coding_scheme(None if designator is None else designator.value.decode("latin-1"))


def _encode_element(
    deidentifier: Deidentifier, element: Element, implicit: bool, encoded_cache: dict, codec: str, local_codes: bool
) -> bytes | None:
    """One element of :func:`_encode_elements`: its new encoding (``None``: removed).
    ``local_codes``: its item names a local coding scheme."""
    tag = element.tag
    vr = effective_vr(tag, element.vr)
    if element.vr == "SQ":
        items = element.value
        action = deidentifier.action(tag, vr)
        if action == REMOVE:
            return None
        if action == EMPTY:
            return sequence_bytes(tag, b"", undefined_length=element.undefined_length, implicit=implicit)
        value = b"".join(
            item_bytes(_encode_elements(deidentifier, item.elements, implicit, encoded_cache, codec), undefined_length=item.undefined_length)
            for item in items
        )
        return sequence_bytes(tag, value, undefined_length=element.undefined_length, implicit=implicit)
    check_plain(element, codec)
    action = deidentifier.action(tag, vr)
    if action == REMOVE:
        return None
    if action == KEEP:
        values = decoded_strings(element.vr, element.value, codec) if is_formatted(tag, vr) or vr in CHECKED_VRS else None
        if is_formatted(tag, vr):
            fixed = conformed(tag, vr, values)
            fixed = fixed if fixed is None or any(fixed) else []
        elif vr in CHECKED_VRS:
            fixed = deidentifier.check_kept(tag, vr, values, local_codes)
        else:
            fixed = None
        if fixed is not None:
            return element_bytes(tag, element.vr, text_bytes(fixed, element.vr, codec), implicit=implicit)
        value = element.value if codec == DEFAULT_CODEC else reencoded(element.vr, element.value, codec)
        return element_bytes(tag, element.vr, value, implicit=implicit)
    value = _changed(deidentifier, element, action, vr, codec)
    return None if value is None else element_bytes(tag, element.vr, value, implicit=implicit)


_UNCACHED = object()


def _changed(deidentifier: Deidentifier, element: Element, action: str, vr: str, codec: str) -> bytes | None:
    """The new value's bytes under ``action`` (:meth:`Deidentifier.change`), ``vr`` being
    the element's :func:`~.attributes.effective_vr`; ``None`` to remove."""
    encoded_vr = element.vr
    if encoded_vr not in VRS:
        raise NotPlain()  # an ambiguous dictionary VR (implicit VR): pydicom resolves it
    if encoded_vr in STRING_VRS:
        values = decoded_strings(encoded_vr, element.value, codec)
        empty = values == [""]
    else:
        values, empty = [], not element.value
    new = deidentifier.change(element.tag, change_vr(vr, encoded_vr), action, values, empty)
    if new == REMOVE:
        return None
    if new is None:
        return b""
    if encoded_vr in _NUMBER_SIZES:
        return bytes(_NUMBER_SIZES[encoded_vr])
    return text_bytes(new, encoded_vr, codec)


def _output_string(deidentifier: Deidentifier, element: Element | None) -> str:
    """A top-level single-valued string element's value in the output; ``""`` if it has none."""
    if element is None:
        return ""
    value = single_string(element)
    vr = effective_vr(element.tag, element.vr)
    action = deidentifier.action(element.tag, vr)
    if action == KEEP:
        return value
    new = deidentifier.change(element.tag, change_vr(vr, element.vr), action, [value], not value)
    return new[0] if isinstance(new, list) and len(new) == 1 else ""


@lru_cache(maxsize=64)
def _record_bytes(profile: Profile, dates: str, implicit: bool, utf8: bool) -> dict[int, bytes]:
    """:func:`record_elements`, encoded, by tag; with ``utf8``, also the Specific Character
    Set of an output re-encoded as UTF-8 (``ISO_IR 192``, as the pydicom path declares it)."""
    records = {
        int(elem.tag): element_bytes(int(elem.tag), elem.VR or "UN", elem.value, implicit=implicit)
        for elem in record_elements(profile, dates, True, implicit)
    }
    if utf8:
        records[0x00080005] = element_bytes(0x00080005, "CS", b"ISO_IR 192", implicit=implicit)
    return records

