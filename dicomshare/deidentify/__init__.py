"""The de-identification engine: PS3.15 Annex E, streaming, consistent without a lookup table.

:func:`deidentify_header` reads an object up to its Pixel Data element and returns a
:class:`.plan.Plan`: the new bytes that replace everything before
Pixel Data, and the byte range of the source's Pixel Data element, which is copied verbatim
(native or encapsulated). The output is always::

    plan.new_header + source[plan.pixel_offset:plan.pixel_end]

so pixel data is never held in memory and, on S3, can be copied server-side. Anything
after the Pixel Data element (Data Set Trailing Padding (FFFC,FFFC), Digital Signatures
(FFFA,FFFA)) is dropped. When ``plan.pixel_offset`` is ``None`` (no Pixel Data, or the
Deflated transfer syntax, PS3.5 A.5, which cannot be spliced and is rewritten in memory)
``new_header`` is the whole output.

The modules, as ``docs/deidentification.md`` describes them:

- :mod:`.identities`: keyed UIDs, pseudonym and date shift;
- :mod:`.actions`: the profile's action per tag and VR, and the new values;
- :mod:`.descriptors` and :mod:`.free_text`: Clean Descriptors (identifiers, the one-pass
  matcher, the free-text detector);
- :mod:`.file_meta`: the rebuilt File Meta Information (PS3.10 7.1);
- :mod:`.encoded_path` and :mod:`.encoded_values`: the fast path over encoded elements;
- :mod:`.dataset_reader` and :mod:`.dataset_path`: the path through a pydicom data set;
- :mod:`.kernel_copy`: the Pixel Data range copied by the kernel;
- here: the entry points.
"""

from __future__ import annotations

import filecmp
import os
import secrets
from contextlib import suppress
from typing import BinaryIO, Callable

from dicomshare import profile as profiles
from dicomshare.deidentify.dataset_path import rewrite_dataset
from dicomshare.deidentify.encoded_path import rewrite_encoded
from dicomshare.deidentify.kernel_copy import kernel_copy
from dicomshare.deidentify.plan import Plan, Request
from dicomshare.profile import Profile
from dicomshare.settings import Settings
from dicomshare.validation import (
    CONFLICTING_INSTANCE,
    MALFORMED,
    TOO_LARGE,
    TRUNCATED,
    DeidentificationRefused,
    check_preamble,
    check_size,
)

__all__ = ["DuplicateInstance", "deidentify_header", "deidentify_file", "write_output"]

COPY_CHUNK_BYTES = 1024**2

_PARTIAL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
"""The partial output is a new file (never an existing one), private (0600) until renamed."""


def _size(fp: BinaryIO) -> int:
    position = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    fp.seek(position)
    return size


def deidentify_header(
    fp: BinaryIO,
    *,
    profile: Profile,
    secret: bytes,
    settings: Settings,
    partner: str,
    study_patient: Callable[[str], str | None] | None = None,
    size: int | None = None,
) -> Plan:
    """Validate and de-identify the object readable from the seekable ``fp``, sent by ``partner``.

    New UIDs, the pseudonym and the date shift are keyed with ``secret`` and scoped to
    ``partner`` (:mod:`.identities`). An object without Patient ID takes its study's
    patient: ``study_patient(new_study_instance_uid)`` gives that patient's pseudonym, or
    ``None`` when nobody knows it (the pseudonym is then keyed from the study); whatever
    it raises propagates, never as a refusal.

    Reads the header only (up to Pixel Data, whose element header and, if encapsulated,
    item headers are read to find its end). Raises :class:`DeidentificationRefused` with a
    reason from :mod:`dicomshare.validation`; nothing else escapes for bad input.

    An ordinary object (little endian, the default character repertoire, nothing
    :mod:`~dicomshare.encoded_dataset` cannot read plainly) is rewritten element by element
    from its encoded bytes (:func:`rewrite_encoded`); every other one, and every refusal,
    goes through a pydicom data set (:func:`rewrite_dataset`). Both give the same bytes.

    Bounded cost: sequences nested deeper than
    :data:`~dicomshare.validation.MAX_SEQUENCE_DEPTH` are refused ``malformed``; should
    any walk still exhaust the stack it is refused ``malformed``, and an object that
    exhausts memory is refused ``too_large``: neither is retried in vain.
    """
    size = _size(fp) if size is None else size
    check_size(size, settings)
    check_preamble(fp)
    try:
        request = Request(profile, secret, settings, partner, study_patient)
        return rewrite_encoded(fp, size, request) or rewrite_dataset(fp, size, request)
    except RecursionError as exc:
        raise DeidentificationRefused(MALFORMED) from exc
    except MemoryError as exc:
        raise DeidentificationRefused(TOO_LARGE) from exc


def write_output(plan: Plan, src: BinaryIO, dst: BinaryIO) -> None:
    """Write the de-identified object: new header, then the source's Pixel Data element.

    Between two real files the kernel moves the range (:func:`kernel_copy`); otherwise it
    is copied in :data:`COPY_CHUNK_BYTES` chunks. Never whole in memory.
    """
    dst.write(plan.new_header)
    if plan.pixel_offset is None:
        return
    if kernel_copy(plan, src, dst):
        return
    src.seek(plan.pixel_offset)
    remaining = plan.pixel_length
    while remaining:
        chunk = src.read(min(COPY_CHUNK_BYTES, remaining))
        if not chunk:
            raise DeidentificationRefused(TRUNCATED)
        dst.write(chunk)
        remaining -= len(chunk)



class DuplicateInstance(Exception):
    """:func:`deidentify_file` found the same output (the same bytes) already in its
    folder: nothing was written. ``plan`` is this input's."""

    def __init__(self, plan: Plan) -> None:
        super().__init__("duplicate")
        self.plan = plan


def deidentify_file(
    src_path: str | os.PathLike,
    dst: str | os.PathLike | BinaryIO,
    *,
    profile: Profile | None = None,
    secret: bytes,
    partner: str,
    study_patient: Callable[[str], str | None] | None = None,
    settings: Settings | None = None,
) -> Plan:
    """De-identify a local file sent by ``partner`` into ``dst``: a directory (the file goes to
    ``dst/<study>/<series>/<sop>.dcm``, written atomically) or a writable binary file object.

    In a directory the first stored instance wins, as in the pipeline: when that path
    already holds the same bytes :class:`DuplicateInstance` is raised, when it holds other
    bytes (another object with the same SOP Instance UID) the file is refused
    ``conflicting_instance``; an existing file is never replaced.
    ``study_patient`` as for :func:`deidentify_header`.
    """
    profile = profile or profiles.named("clinical")
    settings = settings or Settings()
    with open(src_path, "rb") as src:
        plan = deidentify_header(
            src, profile=profile, secret=secret, settings=settings, partner=partner, study_patient=study_patient
        )
        if not isinstance(dst, (str, os.PathLike)):
            write_output(plan, src, dst)
            return plan
        folder = os.path.join(dst, plan.study_instance_uid, plan.series_instance_uid)
        partial = os.path.join(folder, f".partial-{secrets.token_hex(8)}")
        try:
            fd = os.open(partial, _PARTIAL_FLAGS, 0o600)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(partial, _PARTIAL_FLAGS, 0o600)
        try:
            with open(fd, "wb", buffering=0) as out:
                write_output(plan, src, out)
            _store(partial, os.path.join(folder, f"{plan.sop_instance_uid}.dcm"), plan)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(partial)
    return plan


def _store(partial: str, final: str, plan: Plan) -> None:
    """Give the finished ``partial`` its name ``final`` unless that exists (a hard link
    never replaces: two writers of one name cannot both win); else compare."""
    try:
        os.link(partial, final)
        return
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not os.path.exists(final):
            os.replace(partial, final)
            return
    if not filecmp.cmp(partial, final, shallow=False):
        raise DeidentificationRefused(CONFLICTING_INSTANCE)
    raise DuplicateInstance(plan)
