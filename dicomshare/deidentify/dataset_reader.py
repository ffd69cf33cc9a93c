"""Reading an object with pydicom: exact reads (a short read is truncation), pydicom kept
quiet (its warnings quote values), and where Pixel Data starts."""

from __future__ import annotations

import logging
import struct
import warnings
from contextlib import contextmanager
from typing import BinaryIO, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomshare.encoded_dataset import implicit_vr
from dicomshare.validation import MALFORMED, MAX_SEQUENCE_DEPTH, NOT_DICOM, TRUNCATED, DeidentificationRefused

PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
"""Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3)."""
PIXEL_DATA_TAG_SET = frozenset(PIXEL_DATA_TAGS)


class _ExactReader:
    """A file wrapper whose short reads raise :class:`EOFError`.

    pydicom reads a value that runs past the end of the file without complaint; a read
    returning some but not all requested bytes is exactly that truncation. pydicom may
    swallow the error and return a partial data set, so it is also remembered.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.short_read = False

    def read(self, size: int = -1) -> bytes:
        data = self._fp.read(size)
        if size is not None and 0 < len(data) < size:
            self.short_read = True
            raise EOFError("short read")
        return data

    def __getattr__(self, name: str):
        return getattr(self._fp, name)


def read_object(fp: BinaryIO, *, stop_before_pixels: bool) -> Dataset:
    """The object read by pydicom; refused when damaged or nested deeper than
    :data:`~dicomshare.validation.MAX_SEQUENCE_DEPTH` (pydicom itself recurses once per
    level and gives up at about two hundred: :class:`RecursionError`, refused too)."""
    reader = _ExactReader(fp)
    try:
        ds = pydicom.dcmread(reader, stop_before_pixels=stop_before_pixels)
        if _sequence_depth(ds) > MAX_SEQUENCE_DEPTH:
            raise DeidentificationRefused(MALFORMED)
    except DeidentificationRefused:
        raise
    except InvalidDicomError as exc:
        raise DeidentificationRefused(NOT_DICOM) from exc
    except (EOFError, struct.error) as exc:
        raise DeidentificationRefused(TRUNCATED) from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DeidentificationRefused(TRUNCATED if reader.short_read else MALFORMED) from exc
    if reader.short_read:
        raise DeidentificationRefused(TRUNCATED)
    return ds


def _sequence_depth(ds: Dataset) -> int:
    """How deep sequences nest in ``ds``, walked without recursion; stops counting past
    :data:`~dicomshare.validation.MAX_SEQUENCE_DEPTH`."""
    deepest = 0
    stack = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SEQUENCE_DEPTH:
            break
        for tag in current.keys():
            vr = current.get_item(tag).VR
            if vr in (None, "UN"):
                vr = implicit_vr(tag)
            if vr == "SQ":
                stack.extend((item, depth + 1) for item in current[tag].value)
    return deepest


def at_pixel_data(fp: BinaryIO, little_endian: bool) -> bool:
    start = fp.tell()
    head = fp.read(4)
    fp.seek(start)
    if len(head) < 4:
        return False
    group, element = struct.unpack(("<" if little_endian else ">") + "HH", head)
    return (group << 16 | element) in PIXEL_DATA_TAGS


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log records quote values (names, IDs): none may reach a log."""
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled

