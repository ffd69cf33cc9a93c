"""The File Meta Information of every output (PS3.10 7.1), rebuilt: only version, SOP
class, the new SOP Instance UID, transfer syntax and this implementation's identity."""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue

from dicomshare.deidentify.kernel_copy import PAGE_BYTES, SPLICE_PIPE_BYTES

IMPLEMENTATION_CLASS_UID = "2.25.104380893744129446262960219330931745792"
"""(0002,0012) of every output: this implementation, not the source's."""
IMPLEMENTATION_VERSION_NAME = "DICOMSHARE_0_1"


def file_meta_dataset(sop_class_uid: object, sop_instance_uid: object, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element, Explicit VR Little Endian (PS3.10 7.1, PS3.5 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _text(value: object, padding: bytes) -> bytes:
    """A UI or SH value as pydicom writes it: values joined with ``\\``, padded to even length."""
    text = "\\".join(value) if isinstance(value, (MultiValue, list)) else str(value)
    encoded = text.encode("iso8859")
    return encoded + padding if len(encoded) % 2 else encoded


def header_bytes(
    sop_class_uid: object, sop_instance_uid: object, transfer_syntax: str, data_set: bytes, pixel_data: tuple[int, int] | None
) -> bytes:
    """Preamble, ``DICM``, File Meta Information (PS3.10 7.1), that of :func:`file_meta_dataset`,
    and ``data_set``.

    When the source range ``pixel_data`` that follows is larger than
    :data:`SPLICE_PIPE_BYTES`, the group ends with Private Information (0002,0100)/(0002,0102)
    of zero bytes so that Pixel Data starts at its source's offset within a page, as
    :func:`.kernel_copy.kernel_copy` needs; at most :data:`PAGE_BYTES` plus the creator are added.
    """
    before, after = _meta_around_instance(_text(sop_class_uid, b"\x00"), transfer_syntax)
    elements = before + _meta_element(0x00020003, b"UI", _text(sop_instance_uid, b"\x00")) + after
    if pixel_data is not None and pixel_data[1] - pixel_data[0] > SPLICE_PIPE_BYTES:
        creator = _meta_element(0x00020100, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\x00"))
        unpadded = 128 + 4 + 12 + len(elements) + len(creator) + 12 + len(data_set)
        padding = (pixel_data[0] - unpadded) % PAGE_BYTES
        if padding % 2 == 0:
            elements += creator + _meta_element(0x00020102, b"OB", bytes(padding))
    group_length = _meta_element(0x00020000, b"UL", struct.pack("<L", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements + data_set


@lru_cache(maxsize=64)
def _meta_around_instance(sop_class_uid: bytes, transfer_syntax: str) -> tuple[bytes, bytes]:
    """The File Meta elements of :func:`header_bytes` before and after (0002,0003)."""
    return (
        _meta_element(0x00020001, b"OB", b"\x00\x01") + _meta_element(0x00020002, b"UI", sop_class_uid),
        _meta_element(0x00020010, b"UI", _text(transfer_syntax, b"\x00"))
        + _meta_element(0x00020012, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\x00"))
        + _meta_element(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION_NAME, b" ")),
    )

