"""A little-endian data set as its encoded data elements (PS3.5 7.1 and 7.5).

:func:`read_data_set` splits the bytes of a data set into :class:`Element` records (tag,
VR, the element's whole encoding, from which the value's bytes or the items of a sequence
are read when asked for) without decoding any value; :func:`element_bytes` and
:func:`sequence_bytes` encode elements again. De-identification
(:mod:`dicomshare.deidentify`) uses them to rewrite an ordinary object without building a
pydicom data set, which is several times faster.

Nested sequences are read as offsets into the one buffer of the object: a sequence's
encoding is not copied (its elements' are, once each), so memory stays linear in the size of
the object whatever the depth. Sequences nested deeper than :data:`MAX_SEQUENCE_DEPTH` are
not read (:class:`NotPlain`; the pydicom path refuses them).

Only unambiguous encodings are accepted. Anything else raises :class:`NotPlain` and the
caller reads the object with pydicom instead, which knows the rest: big endian, values of
undefined length that are not sequences, VR UN with undefined length (PS3.5 6.2.2),
sequences that switch to implicit VR, VRs that are not in PS3.5 Table 6.2-1, elements out
of tag order or repeated (PS3.5 7.1: ascending, at most once), damaged or truncated data.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import DicomDictionary, get_entry

from dicomshare.validation import MAX_SEQUENCE_DEPTH

VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
"""The value representations of PS3.5 Table 6.2-1."""

LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
"""Explicit VRs with a reserved field and a 32-bit length (PS3.5 Table 7.1-1)."""

ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF

_VR_LENGTH_32 = {vr.encode("ascii"): (vr, vr in LONG_LENGTH_VRS) for vr in VRS}
"""Encoded VR -> (VR, whether it has a 32-bit length)."""

_TAG_LENGTH = struct.Struct("<HHL")
_TAG_VR_SHORT_LENGTH = struct.Struct("<HH2sH")
_TAG_VR_LONG_LENGTH = struct.Struct("<HH2sHL")
_LENGTH = struct.Struct("<L")


class NotPlain(Exception):
    """The bytes need pydicom's general reader (or are damaged)."""


class Incomplete(NotPlain):
    """The data set runs past the bytes given: read more of the object."""


class TooManyElements(Exception):
    """The data set holds more than :data:`MAX_ELEMENTS` elements, at all depths."""


MAX_ELEMENTS = 1_000_000
"""Each element read costs a few hundred bytes of memory whatever its size: a header of
empty elements takes about 40 times its size (a million of them, 7.6 MiB, took 317 MiB).
Real headers hold tens of thousands (an enhanced multi-frame object of thousands of
frames a few hundred thousand)."""


@dataclass(slots=True)
class Item:
    """A sequence item (PS3.5 7.5): its elements, and whether its length was undefined."""

    elements: list[Element]
    undefined_length: bool


class Element:
    """One data element. ``raw`` is its whole encoding (tag, VR, length, value), ``size``
    its length; ``value`` is the value's bytes.

    ``vr`` is the encoded VR (explicit VR) or the data dictionary's (implicit VR: ``UN``
    for tags it does not know, and possibly an ambiguous one such as ``US or SS``).
    """

    __slots__ = ("tag", "vr", "raw", "size", "undefined_length", "_value_offset")

    def __init__(self, tag: int, vr: str, raw: bytes, value_offset: int) -> None:
        self.tag = tag
        self.vr = vr
        self.raw = raw
        self.size = len(raw)
        self.undefined_length = False
        self._value_offset = value_offset

    @property
    def value(self) -> bytes:
        return self.raw[self._value_offset :]


class SequenceElement(Element):
    """A sequence (VR SQ): ``value`` is its list of :class:`Item`, read when first asked for
    (:class:`NotPlain` if they are damaged), and ``raw`` is copied from the object's buffer
    only when asked for (callers ask only for small ones: see ``size``)."""

    __slots__ = ("_data", "_start", "_implicit", "_depth", "_items", "_raw", "_budget")

    def __init__(
        self, tag: int, data: bytes, start: int, end: int, value_offset: int, implicit: bool, depth: int,
        budget: list[int], items: list[Item] | None = None,
    ) -> None:
        self.tag = tag
        self.vr = "SQ"
        self.size = end - start
        self.undefined_length = items is not None
        self._value_offset = value_offset
        self._data, self._start, self._implicit, self._depth = data, start, implicit, depth
        self._items = items
        self._raw: bytes | None = None
        self._budget = budget

    @property
    def raw(self) -> bytes:  # type: ignore[override]
        if self._raw is None:
            self._raw = self._data[self._start : self._start + self.size]
        return self._raw

    @property
    def value(self) -> list[Item]:  # type: ignore[override]
        if self._items is None:
            reader = _Reader(self._data, self._implicit, complete=True, budget=self._budget)
            self._items, _ = reader.items(self._start + self._value_offset, self._start + self.size, undefined=False, depth=self._depth)
        return self._items


@lru_cache(maxsize=4096)
def implicit_vr(tag: int) -> str:
    """The VR of ``tag`` in an implicit VR data set: the data dictionary's, else ``UN``."""
    entry = dictionary_entry(tag)
    return "UN" if entry is None else entry[0]


_REPEATING_GROUPS = frozenset({0x0020, 0x0028, 0x1000, 0x1010})
"""Groups of pydicom's repeating-group entries (``RepeatersDictionary``) besides 50xx,
60xx and 7Fxx."""


def dictionary_entry(tag: int) -> tuple | None:
    """pydicom's data dictionary entry for ``tag`` (VR, VM, name, retired, keyword), or
    ``None``. pydicom's own lookup tries every repeating-group mask on a miss (about 50 us):
    a header of a million unknown tags took minutes. Here a miss costs that only in the
    groups where repeating entries exist."""
    entry = DicomDictionary.get(tag)
    if entry is not None:
        return entry
    group = tag >> 16
    if group in _REPEATING_GROUPS or group >> 8 in (0x50, 0x60, 0x7F):
        try:
            return get_entry(tag)
        except KeyError:
            return None
    return None


def read_data_set(
    data: bytes,
    offset: int,
    end: int | None = None,
    *,
    implicit: bool,
    complete: bool,
    stop_at: frozenset[int] = frozenset(),
    like: Sequence[Element] = (),
) -> tuple[list[Element], int]:
    """The elements from ``offset`` to ``end`` (default: the end of ``data``) or the first
    tag in ``stop_at``.

    Returns the elements and the offset where reading stopped. ``complete`` says whether
    ``data`` holds the whole object: when it does not and an element runs past its end,
    :class:`Incomplete` is raised.

    ``like`` are the elements of a similar data set read before with the same ``implicit``
    and ``stop_at`` (the previous object of a series): where the next element's bytes are
    those of the next one of ``like`` (past any tag already read, so the order stays
    ascending), that element is taken as it is instead of being read again.
    """
    end = len(data) if end is None else end
    if end > len(data):
        raise Incomplete() if not complete else NotPlain()
    return _Reader(data, implicit, complete=complete).elements(offset, end, stop_at=stop_at, like=like)


class _Reader:
    def __init__(self, data: bytes, implicit: bool, *, complete: bool, budget: list[int] | None = None) -> None:
        self.data = data
        self.implicit = implicit
        self.complete = complete
        self.budget = [MAX_ELEMENTS] if budget is None else budget
        """Elements left to read, shared with the sequences read later (:class:`TooManyElements`)."""

    def _short(self, end: int) -> NotPlain:
        """An element or item runs past ``end``: more to read, or a damaged object."""
        return Incomplete() if end == len(self.data) and not self.complete else NotPlain()

    def elements(
        self,
        offset: int,
        end: int,
        *,
        stop_at: frozenset[int] = frozenset(),
        in_item: bool = False,
        like: Sequence[Element] = (),
        depth: int = 0,
    ) -> tuple[list[Element], int]:
        """The elements from ``offset`` to ``end``, at ``depth`` sequences deep."""
        data, implicit = self.data, self.implicit
        elements: list[Element] = []
        previous = -1
        known_index, known_count = 0, len(like)
        while offset < end:
            if known_index < known_count:
                known = like[known_index]
                known_end = offset + known.size
                if known_end <= end and data.startswith(known.raw, offset):
                    elements.append(known)
                    previous, offset, known_index = known.tag, known_end, known_index + 1
                    continue
            if offset + 8 > end:
                raise self._short(end)
            group, number, vr_bytes, short_length = _TAG_VR_SHORT_LENGTH.unpack_from(data, offset)
            tag = group << 16 | number
            if tag in stop_at:
                return elements, offset
            if tag == ITEM_DELIMITATION and in_item:
                return elements, offset + 8
            if group == 0xFFFE or tag <= previous:
                raise NotPlain()
            previous, start = tag, offset
            self.budget[0] -= 1
            if self.budget[0] < 0:
                raise TooManyElements()
            while known_index < known_count and like[known_index].tag <= tag:
                known_index += 1
            if implicit:
                vr = implicit_vr(tag)
                (length,) = _LENGTH.unpack_from(data, offset + 4)
                offset += 8
            else:
                found = _VR_LENGTH_32.get(vr_bytes)
                if found is None:
                    raise NotPlain()
                vr, long_length = found
                if long_length:
                    if offset + 12 > end:
                        raise self._short(end)
                    (length,) = _LENGTH.unpack_from(data, offset + 8)
                    offset += 12
                else:
                    length = short_length
                    offset += 8
            if length == UNDEFINED_LENGTH:
                if vr != "SQ" and not (implicit and vr == "UN" and self._starts_item(offset, end)):
                    raise NotPlain()
                items, value_end = self.items(offset, end, undefined=True, depth=depth)
                elements.append(SequenceElement(tag, data, start, value_end, offset - start, implicit, depth,
                                                self.budget, items))
                offset = value_end
                continue
            value_end = offset + length
            if value_end > end:
                raise self._short(end)
            if vr == "SQ":
                elements.append(SequenceElement(tag, data, start, value_end, offset - start, implicit, depth,
                                                self.budget))
            else:
                elements.append(Element(tag, vr, data[start:value_end], offset - start))
            offset = value_end
        if in_item:
            raise self._short(end)
        return elements, offset

    def _starts_item(self, offset: int, end: int) -> bool:
        if offset + 4 > end:
            raise self._short(end)
        group, number = struct.unpack_from("<HH", self.data, offset)
        return (group << 16 | number) == ITEM

    def items(self, offset: int, end: int, *, undefined: bool, depth: int) -> tuple[list[Item], int]:
        """The items of a sequence value at ``depth``: to ``end``, or its Sequence
        Delimitation Item. Their elements are one sequence deeper, at most
        :data:`MAX_SEQUENCE_DEPTH`."""
        if depth >= MAX_SEQUENCE_DEPTH:
            raise NotPlain()
        data = self.data
        items: list[Item] = []
        while undefined or offset < end:
            if offset + 8 > end:
                raise self._short(end)
            group, number, length = _TAG_LENGTH.unpack_from(data, offset)
            tag = group << 16 | number
            offset += 8
            if undefined and tag == SEQUENCE_DELIMITATION:
                return items, offset
            if tag != ITEM:
                raise NotPlain()
            if length == UNDEFINED_LENGTH:
                elements, offset = self.elements(offset, end, in_item=True, depth=depth + 1)
            else:
                if offset + length > end:
                    raise self._short(end)
                elements, _ = self.elements(offset, offset + length, depth=depth + 1)
                offset += length
            items.append(Item(elements, length == UNDEFINED_LENGTH))
        return items, offset


def element_bytes(tag: int, vr: str, value: bytes, *, implicit: bool) -> bytes:
    """One element with a defined length (PS3.5 7.1.1 to 7.1.3)."""
    if implicit:
        return _TAG_LENGTH.pack(tag >> 16, tag & 0xFFFF, len(value)) + value
    if vr in LONG_LENGTH_VRS:
        return _TAG_VR_LONG_LENGTH.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise NotPlain()
    return _TAG_VR_SHORT_LENGTH.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value)) + value


def item_bytes(content: bytes, *, undefined_length: bool) -> bytes:
    """A sequence item holding the encoded elements ``content`` (PS3.5 7.5.1)."""
    if undefined_length:
        return _TAG_LENGTH.pack(0xFFFE, 0xE000, UNDEFINED_LENGTH) + content + _TAG_LENGTH.pack(0xFFFE, 0xE00D, 0)
    return _TAG_LENGTH.pack(0xFFFE, 0xE000, len(content)) + content


def sequence_bytes(tag: int, items: bytes, *, undefined_length: bool, implicit: bool) -> bytes:
    """A sequence element whose value is the encoded ``items`` (PS3.5 7.5.2)."""
    if not undefined_length:
        return element_bytes(tag, "SQ", items, implicit=implicit)
    head = (
        _TAG_LENGTH.pack(tag >> 16, tag & 0xFFFF, UNDEFINED_LENGTH)
        if implicit
        else _TAG_VR_LONG_LENGTH.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, UNDEFINED_LENGTH)
    )
    return head + items + _TAG_LENGTH.pack(0xFFFE, 0xE0DD, 0)
