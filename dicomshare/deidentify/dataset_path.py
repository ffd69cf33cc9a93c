"""De-identification through a pydicom data set: any supported object (big endian,
deflated, declared character sets, damaged files), and every refusal with its reason.

The data set is read up to Pixel Data, the profile applied (:mod:`.actions`), text
re-encoded as UTF-8 when the source used another character set, and written with the
simple elements' bytes written directly (as pydicom writes them).
"""

from __future__ import annotations

import io
from typing import BinaryIO

import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from dicomshare.deidentify.actions import Deidentifier
from dicomshare.deidentify.attributes import vr_of
from dicomshare.deidentify.dataset_reader import at_pixel_data, quiet_pydicom, read_object
from dicomshare.deidentify.file_meta import file_meta_dataset, header_bytes
from dicomshare.deidentify.identities import object_pseudonym
from dicomshare.deidentify.plan import Plan, Request
from dicomshare.pixel_data import (
    GEOMETRY,
    check_pixel_geometry,
    check_unused_bits,
    overlay_in_pixel_data,
    pixel_data_end,
)
from dicomshare.validation import (
    CHECKED,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    MALFORMED,
    MISSING_REQUIRED,
    UNSUPPORTED_TRANSFER_SYNTAX,
    DeidentificationRefused,
    check_attributes,
    check_transfer_syntax,
    transfer_syntax_encoding,
)

DEFLATED_MAX_BYTES = 64 * 1024**2
"""Deflated objects are rewritten in memory; larger ones are refused."""

_UNDEFINED_LENGTH = 0xFFFFFFFF


def rewrite_dataset(fp: BinaryIO, size: int, request: Request) -> Plan:
    """De-identify through a pydicom data set: any supported object, and every refusal."""
    fp.seek(0)
    with quiet_pydicom():
        meta_ds = read_object(fp, stop_before_pixels=True)
        transfer_syntax = str(meta_ds.file_meta.get("TransferSyntaxUID", "") or "")
        if not transfer_syntax:
            raise DeidentificationRefused(f"{MISSING_REQUIRED}:TransferSyntaxUID")
        check_transfer_syntax(transfer_syntax)
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            if size > DEFLATED_MAX_BYTES:
                raise DeidentificationRefused(UNSUPPORTED_TRANSFER_SYNTAX)
            fp.seek(0)
            ds, pixel_offset, pixel_end = read_object(fp, stop_before_pixels=False), None, 0
            if "PixelData" in ds:
                pixels = ds.get_item("PixelData").value or b""
                check_pixel_geometry(len(pixels), _geometry(ds))
                check_unused_bits(iter([pixels]), _geometry(ds), little_endian=True)
        else:
            ds = meta_ds
            little_endian, implicit_vr = transfer_syntax_encoding(transfer_syntax)
            if ds.original_encoding != (implicit_vr, little_endian):
                raise DeidentificationRefused(MALFORMED)
            if at_pixel_data(fp, little_endian):
                pixel_offset = fp.tell()
                pixel_end = pixel_data_end(
                    fp, pixel_offset, size, transfer_syntax=transfer_syntax, geometry=_geometry(ds)
                )
            else:
                pixel_offset, pixel_end = None, 0
        try:
            media_storage_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
            checked = {keyword: str(ds.get(keyword, "") or "") for keyword in CHECKED[1:]}
            check_attributes({"MediaStorageSOPClassUID": media_storage_class, **checked}, request.settings)
            patient = [str(ds.get(keyword, "") or "").strip() for keyword in ("IssuerOfPatientID", "PatientID")]
        except DeidentificationRefused:
            raise
        except Exception as exc:  # a value pydicom cannot parse: refuse, never crash
            raise DeidentificationRefused(MALFORMED) from exc
        # outside the refusals: the caller's look-up of the study's patient fails as it fails
        pseudonym = object_pseudonym(request.secret, request.partner, *patient, checked["StudyInstanceUID"],
                                     request.study_patient)
        try:
            deidentifier = Deidentifier(request.profile, request.secret, request.partner, pseudonym)
            deidentifier.collect(ds)
            deidentifier.apply(ds)
            _single_character_set(ds)
            deidentifier.record(ds, transfer_syntax_encoding(transfer_syntax))
            new_header = _encode(ds, transfer_syntax, None if pixel_offset is None else (pixel_offset, pixel_end))
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
        except DeidentificationRefused:
            raise
        except Exception as exc:  # a value pydicom cannot parse or write: refuse, never crash
            raise DeidentificationRefused(MALFORMED) from exc
    return Plan(new_header, pixel_offset, pixel_end, deidentifier.pseudonym, *map(str, uids))



def _geometry(ds: Dataset) -> dict[str, int | None]:
    """The top-level values :func:`~dicomshare.pixel_data.check_pixel_geometry` reads;
    refused :data:`MALFORMED` when one is not a single whole number."""
    try:
        geometry: dict[str, int | None] = {
            keyword: None if ds.get(keyword) in (None, "") else int(ds.get(keyword)) for keyword in GEOMETRY
        }
        geometry["OverlayInPixelData"] = any(
            overlay_in_pixel_data(tag, int(ds[tag].value)) for tag in ds.keys()
            if tag.group >> 8 == 0x60 and tag.element in (0x0100, 0x0102) and ds[tag].value is not None
        )
    except (TypeError, ValueError) as exc:
        raise DeidentificationRefused(MALFORMED) from exc
    return geometry


def _encode(ds: Dataset, transfer_syntax: str, pixel_data: tuple[int, int] | None) -> bytes:
    """Everything before Pixel Data: :func:`header_bytes` with the data set ``ds``.

    The data set's bytes are those ``pydicom.dcmwrite(..., enforce_file_format=True)``
    writes. The Deflated transfer syntax goes through ``dcmwrite``, which compresses the
    data set (and its output is whole: no Pixel Data follows).
    """
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        ds.file_meta = file_meta_dataset(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = transfer_syntax_encoding(transfer_syntax)
    _write_dataset(buffer, ds)
    return header_bytes(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax, buffer.getvalue(), pixel_data)


def _write_dataset(fp: DicomBytesIO, ds: Dataset) -> None:
    """pydicom's ``write_dataset``, with the simple elements written directly.

    A kept value is never decoded (a ``RawDataElement``, the source's bytes) and a new
    value is mostly plain ASCII text (UIDs, pseudonyms, dummies, shifted dates); pydicom
    writes both as they are after its general per-element set-up. Here their tag, VR and
    length (PS3.5 7.1.2, 7.1.3) are written directly (:func:`_ascii_value` says which new
    values qualify). Every other element, and any data set whose encoding or character set
    changes (pydicom then decodes and re-encodes every value), goes through pydicom, as do
    undefined lengths and values too long for a 16-bit length.
    """
    # pydicom 3.0's own test for "re-encode everything" (filewriter.write_dataset)
    if ds.original_encoding != (fp.is_implicit_VR, fp.is_little_endian) or (
        ds.original_character_set != ds._character_set
    ):
        write_dataset(fp, ds)
        return
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    explicit = not fp.is_implicit_VR
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue
        elem = ds.get_item(tag)
        if elem.is_raw:
            value = None if elem.length == _UNDEFINED_LENGTH else elem.value
        else:
            value = _ascii_value(elem)
        vr = elem.VR
        if value is None:
            write_data_element(fp, elem, encodings)
        elif not explicit:
            fp.write_tag(tag)
            fp.write_UL(len(value))
            fp.write(value)
        elif vr in EXPLICIT_VR_LENGTH_32:
            fp.write_tag(tag)
            fp.write(vr.encode("ascii") + b"\x00\x00")
            fp.write_UL(len(value))
            fp.write(value)
        elif vr and len(vr) == 2 and len(value) <= 0xFFFF:
            fp.write_tag(tag)
            fp.write(vr.encode("ascii"))
            fp.write_US(len(value))
            fp.write(value)
        else:
            write_data_element(fp, elem, encodings)


_ASCII_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "LO", "LT", "SH", "ST", "UC", "UT"})


def _ascii_value(elem: DataElement) -> bytes | None:
    """The value bytes pydicom writes for a decoded string element whose values are all
    plain ``str`` in ASCII (joined with ``\\``, padded to even length with a space, or NUL
    for UI); ``None`` for anything else (numbers, names, dates as objects, other text).

    In ASCII every character set this writer meets (the default repertoire) encodes the
    same; data sets that declare another character set never reach here.
    """
    if elem.VR not in _ASCII_TEXT_VRS:
        return None
    value = elem.value
    if value is None:
        return b""
    values = list(value) if isinstance(value, (MultiValue, list)) else [value]
    if not all(isinstance(v, str) and v.isascii() for v in values):
        return None
    encoded = "\\".join(values).encode("ascii")
    if len(encoded) % 2:
        encoded += b"\x00" if elem.VR == "UI" else b" "
    return encoded


def _single_character_set(ds: Dataset) -> None:
    """Declare UTF-8 (ISO_IR 192) once, at the top, when the source used anything but ASCII.

    Every text value is first decoded with its own (possibly nested) Specific Character
    Set; the writer then encodes them all as UTF-8, so no value is re-encoded into a
    character set that cannot hold it (PS3.5 6.1.2.3, PS3.3 C.12.1.1.2). Objects in the
    default repertoire keep their (raw) values untouched.
    """
    if not _declares_character_set(ds):
        return
    _decode_all(ds)
    ds.SpecificCharacterSet = "ISO_IR 192"


def _declares_character_set(ds: Dataset) -> bool:
    charset = ds.get(0x00080005)
    declared = bool(charset and str(charset.value).replace("ISO 2022 IR 6", "").replace("ISO_IR 6", "").strip("\\ []'"))
    for tag in list(ds.keys()):
        if vr_of(ds, tag) == "SQ":
            declared = any([_declares_character_set(item) for item in ds[tag].value]) or declared
    return declared


def _decode_all(ds: Dataset) -> None:
    """Convert every raw value (decoding text with its charset), then drop nested charsets."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_all(item)
                if "SpecificCharacterSet" in item:
                    del item.SpecificCharacterSet

