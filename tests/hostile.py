"""Hostile objects built byte by byte (what pydicom would refuse to write, or write too
slowly), and a search for identifying values in every spelling an output could hold."""

from __future__ import annotations

import struct
import unicodedata
import zlib

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

DEEP_NAME = b"ZQXDEEP^ZQXNAME"


def base_dataset(sop_uid: str = "1.2.3.999.2") -> Dataset:
    """A small CT object whose identifiers a leak search finds (``ZQX...``)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.3.999.1"
    ds.SeriesInstanceUID = "1.2.3.999.3"
    ds.Modality = "CT"
    ds.PatientID = "ZQXPATIENTID"
    ds.PatientName = "ZQXFAMILY^ZQXGIVEN"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    return ds


def part10(ds: Dataset, data_set_tail: bytes = b"", pixel_data: bytes | None = bytes(32),
           transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """Preamble, File Meta, ``ds`` (explicit VR little endian, without Pixel Data), then the
    raw ``data_set_tail`` elements (their tags must follow those of ``ds``) and a native
    Pixel Data element (OW) holding ``pixel_data``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    write_dataset(buffer, ds)
    pixels = b"" if pixel_data is None else element(0x7FE00010, "OW", pixel_data)
    return buffer.getvalue() + data_set_tail + pixels


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 7.1.2)."""
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def nested_sequences(depth: int, *, undefined_length: bool, leaf: bytes = b"") -> bytes:
    """Content Sequence (0040,A730) nested ``depth`` deep, one item per level, with a
    Patient's Name and ``leaf`` in the innermost item."""
    body = element(0x00100010, "PN", DEEP_NAME + b" ") + leaf
    for _ in range(depth):
        if undefined_length:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
            body = (struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + item
                    + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
        else:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
            body = element(0x0040A730, "SQ", item)
    return body


def deep_object(depth: int, *, undefined_length: bool = True, leaf: bytes = b"") -> bytes:
    """An object with :func:`nested_sequences` ``depth`` deep."""
    return part10(base_dataset(), nested_sequences(depth, undefined_length=undefined_length, leaf=leaf))


ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "latin-1", "iso2022_jp", "iso2022_kr", "gb18030",
             "euc_jp", "euc_kr", "shift_jis", "cp1251", "iso8859_5", "iso8859_7")


def spellings(value: str) -> set[bytes]:
    """``value`` as bytes (at least 2) in every one of :data:`ENCODINGS` that can hold it:
    with ``^`` and space swapped, as given, upper and lower case, each in NFC and NFD and
    those upper and lower case again; ISO 2022 also without its escape sequences (at least
    4 bytes: a shorter run of 7-bit bytes turns up by chance)."""
    swapped = {value, value.replace("^", " "), value.replace(" ", "^")}
    cased = {c for text in swapped for c in (text, text.upper(), text.lower())}
    normal = {unicodedata.normalize(form, text) for text in cased for form in ("NFC", "NFD")}
    texts = cased | normal | {c for text in normal for c in (text.upper(), text.lower())}
    found = set()
    for text in texts:
        for encoding in ENCODINGS:
            try:
                encoded = text.encode(encoding)
            except UnicodeEncodeError:
                continue
            found.add(encoded)
            inner = encoded.split(b"\x1b")[1][2:] if encoding.startswith("iso2022") and b"\x1b" in encoded else b""
            if len(inner) >= 4:
                found.add(inner)
    return {spelling for spelling in found if len(spelling) >= 2}


def inflated(output: bytes) -> bytes:
    """The data set of a Deflated Explicit VR Little Endian object (PS3.5 A.5), inflated;
    ``b""`` for any other object."""
    if len(output) < 144 or b"1.2.840.10008.1.2.1.99" not in output[:1024]:
        return b""
    (group_length,) = struct.unpack_from("<L", output, 140)
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(output[144 + group_length :])


def leaked(output: bytes, values: list[str]) -> list[str]:
    """The ``values`` found in ``output`` (and in its inflated data set, if deflated) in
    any of their :func:`spellings`."""
    searched = output + inflated(output)
    return [value for value in values if any(spelling in searched for spelling in spellings(value))]


def encapsulated(*fragments: bytes) -> bytes:
    """Pixel Data (OB, undefined length) holding an empty Basic Offset Table and
    ``fragments`` (PS3.5 A.4)."""
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
    for fragment in fragments:
        fragment += b"\x00" * (len(fragment) % 2)
        items += struct.pack("<HHL", 0xFFFE, 0xE000, len(fragment)) + fragment
    return (struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + items
            + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))


def jpeg(*segments: tuple[int, bytes]) -> bytes:
    """A JPEG stream's frame: SOI, the marker ``segments`` (marker, payload), a baseline
    frame header and a scan (entropy-coded bytes) and EOI. Enough for a marker walk."""
    body = b"\xff\xd8"
    for marker, payload in segments:
        body += struct.pack(">HH", marker, len(payload) + 2) + payload
    sof = struct.pack(">BHHB", 8, 4, 4, 1) + b"\x01\x11\x00"
    sos = b"\x01\x01\x00\x00\x3f\x00"
    return body + struct.pack(">HH", 0xFFC0, len(sof) + 2) + sof + struct.pack(">HH", 0xFFDA, len(sos) + 2) + sos \
        + b"\x12\x34" * 8 + b"\xff\xd9"


JFIF = (0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")


def set_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put an encoded value in ``ds`` as it is, even one pydicom would refuse to convert."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    value += b" " * (len(value) % 2)
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
