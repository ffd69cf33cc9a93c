"""What the pipeline accepts, and the machine-readable reasons it refuses the rest.

An object is accepted when it is a DICOM PS3.10 file (128-byte preamble, ``DICM``, File
Meta Information), in a transfer syntax of :data:`SUPPORTED_TRANSFER_SYNTAXES`, with the
attributes the index needs (:data:`REQUIRED`), no larger than
:attr:`dicomshare.settings.Settings.max_object_bytes`, and complete: a native Pixel Data
element's declared length fits in the object and encapsulated Pixel Data (PS3.5 A.4) ends
with its Sequence Delimitation Item (:mod:`dicomshare.pixel_data` walks it, with the pixel
policy's checks of its bytes).

Every refusal is a :class:`DeidentificationRefused` whose ``reason`` is one of the
constants below (``missing_required:<Keyword>`` names the attribute). Reasons never
contain a value from the object.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import BinaryIO, Mapping

from pydicom.uid import UID

from dicomshare.settings import Settings

NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
MALFORMED = "malformed"
EMPTY_OBJECT = "empty_object"
TOO_LARGE = "too_large"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
BURNED_IN_ANNOTATION = "burned_in_annotation"
RECOGNIZABLE_VISUAL_FEATURES = "recognizable_visual_features"
PIXEL_DATA_LENGTH = "pixel_data_length"
OVERLAY_IN_PIXEL_DATA = "overlay_in_pixel_data"
JPEG_METADATA = "jpeg_metadata"
CONFLICTING_INSTANCE = "conflicting_instance"
"""Another object with the same SOP Instance UID (other bytes) is already stored."""
MISSING_REQUIRED = "missing_required"
"""Prefix: the full reason is ``missing_required:<Keyword>``."""

MAX_SEQUENCE_DEPTH = 32
"""Sequences nested deeper than this are refused :data:`MALFORMED` (real objects nest a
dozen levels at most: SR content trees, code sequences); it bounds the stack and the work
of every recursive walk over a data set."""

REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
CHECKED = ("MediaStorageSOPClassUID", *REQUIRED, "BurnedInAnnotation", "RecognizableVisualFeatures")
"""The attributes :func:`check_attributes` reads."""

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

SUPPORTED_TRANSFER_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
        "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE Lossless
    }
)
"""Transfer syntaxes (PS3.5 Section 10 and Annex A) the engine rewrites."""

UNSUPPORTED_SOP_CLASSES = frozenset({"1.2.840.10008.1.3.10"})
"""Media Storage Directory (DICOMDIR): its records hold identities and byte offsets."""

_UID = re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*")

ENCAPSULATED_DOCUMENTS = frozenset({"1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.104.2"})
"""Encapsulated PDF and CDA: their text is the document, whatever Burned In Annotation says."""

class DeidentificationRefused(Exception):
    """The object is not de-identified; ``reason`` says why, machine-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_size(size: int, settings: Settings) -> None:
    if size == 0:
        raise DeidentificationRefused(EMPTY_OBJECT)
    if size > settings.max_object_bytes:
        raise DeidentificationRefused(TOO_LARGE)


def check_preamble(fp: BinaryIO) -> None:
    """PS3.10 7.1: a 128-byte preamble followed by ``DICM``; leaves ``fp`` at the start."""
    fp.seek(0)
    head = fp.read(132)
    fp.seek(0)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise DeidentificationRefused(NOT_DICOM)


def check_transfer_syntax(transfer_syntax: str | None) -> None:
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise DeidentificationRefused(UNSUPPORTED_TRANSFER_SYNTAX)


def check_attributes(attributes: Mapping[str, str], settings: Settings) -> None:
    """Required attributes, SOP class, and the pixel policy (PS3.15 E.3.1: the basic
    profile does not clean pixel data, so what cannot be shown clean is refused).

    ``attributes`` maps the keywords of :data:`CHECKED` to their (top-level) values as
    strings, ``""`` when absent (a multi-valued one is not a single enumerated value).

    - Recognizable Visual Features (0028,0302) other than absent or ``NO`` is refused
      :data:`RECOGNIZABLE_VISUAL_FEATURES`;
    - Burned In Annotation (0028,0301) other than absent, ``NO`` or ``YES`` (PS3.3
      C.7.6.1.1.7: enumerated, single-valued) is refused :data:`BURNED_IN_ANNOTATION`;
    - unless :attr:`~dicomshare.settings.Settings.allow_burned_in_annotation`: ``YES`` is
      refused, and so is a class of
      :attr:`~dicomshare.settings.Settings.high_risk_sop_classes` that does not say exactly
      ``NO`` (absent is not ``NO``; an encapsulated document is refused whatever it says),
      unless the uploading partner opts in for that class
      (:attr:`~dicomshare.settings.Settings.pixel_opt_in`; ``YES`` is refused all the same).
    """
    if attributes["MediaStorageSOPClassUID"] in UNSUPPORTED_SOP_CLASSES:
        raise DeidentificationRefused(UNSUPPORTED_SOP_CLASS)
    for keyword in REQUIRED:
        if not attributes[keyword].strip():
            raise DeidentificationRefused(f"{MISSING_REQUIRED}:{keyword}")
    if not _UID.fullmatch(attributes["SOPClassUID"].strip()):
        raise DeidentificationRefused(MALFORMED)  # kept as it is: it must be a UID (PS3.5 9.1)
    if attributes["RecognizableVisualFeatures"].strip() not in ("", "NO"):
        raise DeidentificationRefused(RECOGNIZABLE_VISUAL_FEATURES)
    burned = attributes["BurnedInAnnotation"].strip()
    if burned not in ("", "NO", "YES"):
        raise DeidentificationRefused(BURNED_IN_ANNOTATION)
    if settings.allow_burned_in_annotation:
        return
    if burned == "YES":
        raise DeidentificationRefused(BURNED_IN_ANNOTATION)
    sop_class = attributes["SOPClassUID"].strip()
    if sop_class not in settings.high_risk_sop_classes or sop_class in settings.pixel_opt_in:
        return
    if burned != "NO" or sop_class in ENCAPSULATED_DOCUMENTS:
        raise DeidentificationRefused(BURNED_IN_ANNOTATION)


@lru_cache(maxsize=64)
def transfer_syntax_encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """``(little_endian, implicit_vr)`` of a transfer syntax (PS3.5 Section 10)."""
    uid = UID(transfer_syntax)
    return uid.is_little_endian, uid.is_implicit_VR
