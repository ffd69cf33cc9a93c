"""Pixel Data (PS3.5 8 and Annex A.4): where the element ends, and what it may hold.

:func:`pixel_data_end` walks the Pixel Data element that the engine copies verbatim: its
length, its encapsulated items, and on the way the checks of the pixel policy that need
its bytes (geometry, unused bits, JPEG marker segments). Every refusal is a
:class:`~dicomshare.validation.DeidentificationRefused` with a reason of
:mod:`dicomshare.validation`.
"""

from __future__ import annotations

import mmap
import re
import struct
from typing import BinaryIO, Iterator, Mapping

import numpy

from dicomshare.validation import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_METADATA,
    MALFORMED,
    OVERLAY_IN_PIXEL_DATA,
    PIXEL_DATA_LENGTH,
    TRUNCATED,
    DeidentificationRefused,
    transfer_syntax_encoding,
)

NATIVE_TRANSFER_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
)
"""Pixel Data has a defined length under these, and is encapsulated (PS3.5 A.4) under the others."""

JPEG_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
)
"""JPEG and JPEG-LS: their fragments carry JPEG marker segments (ISO/IEC 10918-1 B.2)."""

JPEG_2000_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
     "1.2.840.10008.1.2.4.203"}
)
"""JPEG 2000 and HTJ2K: their fragments carry a codestream main header (ISO/IEC 15444-1 A.2)."""

JPEG_FIRST_READ_BYTES = 2048
JPEG_HEADER_BYTES = 64 * 1024
"""How much of a fragment is read for its marker segments before Start of Scan."""

_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise DeidentificationRefused(TRUNCATED)
    return data


def pixel_data_end(
    fp: BinaryIO, offset: int, size: int, *, transfer_syntax: str, geometry: Mapping[str, int | None]
) -> int:
    """Offset just past the Pixel Data element that starts at ``offset``.

    Native data (PS3.5 A.1, the :data:`NATIVE_TRANSFER_SYNTAXES`) has a defined length,
    which must fit in ``size``. Encapsulated data (PS3.5 A.4, every other transfer syntax)
    has an undefined length: the items are walked by their lengths (only the 8-byte item
    headers are read) up to the Sequence Delimitation Item, which must be present. Either
    encoding under the other kind of transfer syntax is refused :data:`MALFORMED`. Under
    JPEG and JPEG-LS each fragment that starts a frame is checked by
    :func:`check_jpeg_markers`; native data by :func:`check_pixel_geometry` with ``geometry``.
    """
    little_endian, implicit_vr = transfer_syntax_encoding(transfer_syntax)
    endian = "<" if little_endian else ">"
    fp.seek(offset)
    header = _read_exact(fp, 8)
    if implicit_vr:
        (length,) = struct.unpack(endian + "L", header[4:8])
        value_start = offset + 8
    elif header[4:6] in _LONG_LENGTH_VRS:
        (length,) = struct.unpack(endian + "L", _read_exact(fp, 4))
        value_start = offset + 12
    else:
        (length,) = struct.unpack(endian + "H", header[6:8])
        value_start = offset + 8
    if (length == _UNDEFINED_LENGTH) == (transfer_syntax in NATIVE_TRANSFER_SYNTAXES):
        raise DeidentificationRefused(MALFORMED)
    if length != _UNDEFINED_LENGTH:
        end = value_start + length
        if end > size:
            raise DeidentificationRefused(TRUNCATED)
        (group, element) = struct.unpack(endian + "HH", header[:4])
        float_bits = _FLOAT_BITS.get(group << 16 | element, 0)
        check_pixel_geometry(length, geometry, float_bits=float_bits)
        if not float_bits:
            check_unused_bits(_chunks(fp, value_start, length), geometry, little_endian=little_endian)
        return end
    if geometry.get("OverlayInPixelData"):
        raise DeidentificationRefused(OVERLAY_IN_PIXEL_DATA)
    jpeg = transfer_syntax in JPEG_TRANSFER_SYNTAXES
    jpeg_2000 = transfer_syntax in JPEG_2000_TRANSFER_SYNTAXES
    position = value_start
    while True:
        fp.seek(position)
        group, element, item_length = struct.unpack(endian + "HHL", _read_exact(fp, 8))
        tag = group << 16 | element
        position += 8
        if tag == _SEQUENCE_DELIMITER:
            return position
        if tag != _ITEM or item_length == _UNDEFINED_LENGTH:
            raise DeidentificationRefused(MALFORMED)
        if position + item_length > size:
            raise DeidentificationRefused(TRUNCATED)
        if (jpeg or jpeg_2000) and position > value_start + 8 and item_length >= 2:  # not the Basic Offset Table
            _check_header(fp, item_length, check_jpeg_markers if jpeg else check_jpeg_2000_markers)
        position += item_length


_FLOAT_BITS = {0x7FE00008: 32, 0x7FE00009: 64}
"""Float Pixel Data and Double Float Pixel Data: Bits Allocated is implied."""

GEOMETRY = (
    "Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation",
)
"""The attributes :func:`check_pixel_geometry` reads, besides ``OverlayInPixelData``."""


def overlay_in_pixel_data(tag: int, value: int) -> bool:
    """Whether a top-level element declares overlay bits stored in Pixel Data: Overlay Bits
    Allocated (60xx,0100) other than 1 or Overlay Bit Position (60xx,0102) other than 0."""
    if tag >> 24 != 0x60 or (tag >> 16) & 1:
        return False
    element = tag & 0xFFFF
    return (element == 0x0100 and value != 1) or (element == 0x0102 and value != 0)


_JFIF_ADOBE = (
    (0xFFE0, b"JFIF\x00"), (0xFFE0, b"JFXX\x00"), (0xFFEE, b"Adobe"),
    (0xFFE8, b"SPIFF\x00"),  # JPEG-LS: the SPIFF header (ISO/IEC 10918-3 F.2), numbers only
    (0xFFE8, b"\x00\x00\x00\x01"),  # ... and its end-of-directory entry (tag 1), nothing else
)

ENCODER_COMMENT = re.compile(
    rb"(?:Kakadu-v?[0-9][0-9A-Za-z.\-]{0,15}"
    rb"|Created by (?:GDCM/)?OpenJPEG version [0-9][0-9.]{0,15}"
    rb"|Creator: JasPer Version [0-9][0-9.]{0,15}"
    rb"|CREATOR: gd-jpeg v[0-9.]{1,8} \(using IJG JPEG v[0-9]{1,3}\), (?:default quality|quality = [0-9]{1,3})\n?)\x00?"
)
"""Comments that name only the encoder that wrote the stream (Kakadu, OpenJPEG, JasPer,
libjpeg through gd), matched whole: the only comments accepted."""


class _ShortHeader(Exception):
    """The marker segments run past the bytes given."""


def _check_header(fp: BinaryIO, item_length: int, check) -> None:
    """``check`` the start of the fragment at ``fp``: :data:`JPEG_FIRST_READ_BYTES` (the
    marker segments of a frame are small; on S3 each read is a request), then up to
    :data:`JPEG_HEADER_BYTES`. A header that runs past the fragment is :data:`MALFORMED`;
    one that runs past :data:`JPEG_HEADER_BYTES` cannot be shown clean
    (:data:`JPEG_METADATA`)."""
    fragment = fp.read(min(item_length, JPEG_FIRST_READ_BYTES))
    while True:
        try:
            check(fragment)
            return
        except _ShortHeader:
            if len(fragment) >= min(item_length, JPEG_HEADER_BYTES):
                raise DeidentificationRefused(MALFORMED if len(fragment) >= item_length else JPEG_METADATA) from None
            fragment += fp.read(min(item_length, JPEG_HEADER_BYTES) - len(fragment))


def check_jpeg_markers(fragment: bytes) -> None:
    """The marker segments (ISO/IEC 10918-1 B.1.1.4, JPEG-LS alike) before Start of Scan
    of a fragment that starts with Start of Image: a Comment (COM) other than an
    :data:`ENCODER_COMMENT` or an application segment (APPn) other than JFIF (APP0),
    Adobe (APP14) and the SPIFF header of JPEG-LS (APP8) may hold any text (EXIF dates,
    device owners, names) and is refused :data:`JPEG_METADATA`. A fragment that
    continues a frame does not start with SOI and is pixel data."""
    if not fragment.startswith(b"\xff\xd8"):
        return
    position = 2
    while position + 4 <= len(fragment):
        if fragment[position] != 0xFF:
            raise DeidentificationRefused(MALFORMED)
        marker = fragment[position] << 8 | fragment[position + 1]
        if marker == 0xFFFF:  # fill byte (B.1.1.2)
            position += 1
            continue
        if marker == 0xFFDA:  # Start of Scan: entropy-coded data follows
            return
        (length,) = struct.unpack_from(">H", fragment, position + 2)
        payload = fragment[position + 4 : position + 2 + length]
        if (marker == 0xFFFE and not ENCODER_COMMENT.fullmatch(payload)) or (0xFFE0 <= marker <= 0xFFEF and not any(
            marker == allowed and payload.startswith(identifier) for allowed, identifier in _JFIF_ADOBE
        )):
            raise DeidentificationRefused(JPEG_METADATA)
        position += 2 + length
    raise _ShortHeader()


UNUSED_BITS_CHUNK_BYTES = 1024**2


def check_unused_bits(chunks: Iterator[bytes | memoryview], geometry: Mapping[str, int | None], *,
                      little_endian: bool) -> None:
    """Native Pixel Data whose Bits Stored is less than Bits Allocated (PS3.5 8.1.1,
    Annex D) has bits no viewer shows: above High Bit, where overlays were once stored,
    and below the stored bits. They must be zero (or, for signed data, copies of the
    sign bit); any other bit may carry an overlay with a name and is refused
    :data:`OVERLAY_IN_PIXEL_DATA`. The Pixel Data is read (not copied) for this, only
    when such bits exist."""
    allocated, stored = geometry.get("BitsAllocated"), geometry.get("BitsStored")
    if allocated not in (8, 16, 32) or not stored or stored >= allocated:
        return
    high_bit = geometry.get("HighBit")
    high_bit = stored - 1 if high_bit is None else high_bit
    low_bit = high_bit - stored + 1
    if low_bit < 0 or high_bit >= allocated:
        raise DeidentificationRefused(MALFORMED)
    dtype = numpy.dtype(f"u{allocated // 8}").newbyteorder("<" if little_endian else ">")
    above_ones = (1 << (allocated - high_bit - 1)) - 1
    signed = geometry.get("PixelRepresentation") == 1
    low_mask = (1 << low_bit) - 1
    carry = b""
    for chunk in chunks:
        data = carry + bytes(chunk) if carry else chunk
        usable = len(data) - len(data) % dtype.itemsize
        carry = bytes(data[usable:])
        values = numpy.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)
        if not values.size:
            continue
        if not signed:
            clean = int(values.max()) >> (high_bit + 1) == 0
        else:
            above = values >> (high_bit + 1)
            clean = bool(((above == 0) | (above == above_ones)).all())
        if not clean or (low_mask and bool((values & low_mask).any())):
            raise DeidentificationRefused(OVERLAY_IN_PIXEL_DATA)


MAPPED_WINDOW_BYTES = 32 * 1024**2
"""A real file's Pixel Data is mapped this many bytes at a time (a multiple of every
sample size): the pages of a mapped window count in the process's resident memory, so
mapping a 1 GiB value whole took the CLI's peak RSS to 1.1 GiB."""


def _chunks(fp: BinaryIO, offset: int, length: int) -> Iterator[bytes | memoryview]:
    """The bytes ``offset`` to ``offset + length`` of ``fp``: mapped from a real file in
    :data:`MAPPED_WINDOW_BYTES` windows (each unmapped when its last view goes, so at most
    two are mapped), else read in :data:`UNUSED_BITS_CHUNK_BYTES` chunks."""
    try:
        fileno = fp.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (S3, memory)
        fileno = None
    position, end = offset, offset + length
    while fileno is not None and position < end:
        start = position - position % mmap.ALLOCATIONGRANULARITY
        stop = min(end, position + MAPPED_WINDOW_BYTES)
        try:
            mapped = mmap.mmap(fileno, stop - start, access=mmap.ACCESS_READ, offset=start)
        except (OSError, ValueError):  # a file mmap cannot map: read from here on
            break
        yield memoryview(mapped)[position - start :]
        del mapped
        position = stop
    fp.seek(position)
    remaining = end - position
    while remaining:
        chunk = fp.read(min(UNUSED_BITS_CHUNK_BYTES, remaining))
        if not chunk:
            raise DeidentificationRefused(TRUNCATED)
        remaining -= len(chunk)
        yield chunk


def check_jpeg_2000_markers(fragment: bytes) -> None:
    """The main header (ISO/IEC 15444-1 A.2) of a fragment that starts a codestream (SOC,
    FF4F): a Comment (COM, FF64) other than an :data:`ENCODER_COMMENT` may hold any text
    and is refused :data:`JPEG_METADATA`.
    The header ends at the first tile-part (SOT, FF90)."""
    if not fragment.startswith(b"\xff\x4f"):
        return
    position = 2
    while position + 4 <= len(fragment):
        marker, length = struct.unpack_from(">HH", fragment, position)
        if marker >> 8 != 0xFF:
            raise DeidentificationRefused(MALFORMED)
        if marker == 0xFF90:
            return
        if marker == 0xFF64 and not ENCODER_COMMENT.fullmatch(fragment[position + 6 : position + 2 + length]):
            raise DeidentificationRefused(JPEG_METADATA)
        position += 2 + length
    raise _ShortHeader()


def check_pixel_geometry(length: int, attributes: Mapping[str, int | None], *, float_bits: int = 0) -> None:
    """Native Pixel Data (PS3.5 8.1.1) holds Rows x Columns x Samples per Pixel x Number of
    Frames x Bits Allocated bits, padded to even length: a longer value hides bytes no viewer
    shows, and is refused :data:`PIXEL_DATA_LENGTH` (as is a non-empty value whose geometry
    is missing). ``attributes`` maps those keywords (and the overlay groups' embedded-bit
    declarations, below) to their values, ``None`` when absent; ``float_bits`` is 32 or 64
    for Float and Double Float Pixel Data.

    An overlay stored in the Pixel Data bits (OverlayBitsAllocated other than 1 or
    OverlayBitPosition other than 0 in a 60xx group, retired usage, PS3.3 C.9.2.1.1) is
    refused :data:`OVERLAY_IN_PIXEL_DATA`: the overlay groups are removed, their bits would
    stay.
    """
    if attributes.get("OverlayInPixelData"):
        raise DeidentificationRefused(OVERLAY_IN_PIXEL_DATA)
    if length == 0:
        return
    rows, columns = attributes.get("Rows"), attributes.get("Columns")
    bits = float_bits or attributes.get("BitsAllocated")
    if not rows or not columns or not bits:
        raise DeidentificationRefused(PIXEL_DATA_LENGTH)
    samples = attributes.get("SamplesPerPixel") or 1
    frames = attributes.get("NumberOfFrames") or 1
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if length > expected + expected % 2:
        raise DeidentificationRefused(PIXEL_DATA_LENGTH)
