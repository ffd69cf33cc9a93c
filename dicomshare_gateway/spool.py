"""The gateway's local spool: a received instance is on disk, synced, before C-STORE success.

Layout under ``spool_dir``::

    incoming/<random>.part                 being written (never acknowledged; removed on start)
    ready/<partner>/<entry>.dcm            acknowledged, waiting for upload

``<entry>`` is ``<receive time, ns, 20 digits>-<content SHA-256, 32 hex>-<upload id>``: the
order of names is the order of arrival, and the name holds nothing from the file but two
hashes. An instance is accepted by writing ``incoming/…``, ``fsync`` of the file, a
rename into ``ready/<partner>/`` and ``fsync`` of that folder (POSIX makes a rename
durable only once its directory is synced). Only then does the gateway answer success, so
a power cut after the answer never loses the instance. It leaves the spool only after S3
confirmed its upload (:mod:`dicomshare_gateway.uploader`).

A write that would leave less than ``min_free_bytes`` free on the spool's file system is
refused (:class:`SpoolFull`): the caller gets a C-STORE failure and sends again later,
instead of the gateway acknowledging what it may not be able to keep.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class SpoolFull(OSError):
    """Accepting the instance would leave less than the configured free space."""


def upload_id(secret: bytes, sop_instance_uid: str) -> str:
    """The upload identifier of an instance: HMAC-SHA-256 of its SOP Instance UID under the
    gateway's own secret (64 hex digits).

    Not the UID itself: an original SOP Instance UID is an identifier PS3.15 replaces (it
    links a de-identified instance back to the partner's PACS, and UIDs built from device
    serials and times can be guessed), so it must not reach the ingest bucket's metadata
    or a receipt. Not a plain hash either: that could be tested against guessed UIDs.
    The partner, holding the secret, recomputes it (``dicomshare gateway upload-id``)."""
    return hmac.new(secret, sop_instance_uid.encode("ascii", "replace"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Entry:
    path: Path
    partner: str

    @property
    def content_sha256(self) -> str:
        return self.path.stem.split("-")[1]

    @property
    def upload_id(self) -> str:
        return self.path.stem.split("-")[2]

    @property
    def object_key(self) -> str:
        """Ingest bucket key: the partner's prefix and the content hash (never a DICOM value)."""
        return f"{self.partner}/gateway/{self.content_sha256}.dcm"


COPY_CHUNK_BYTES = 1024**2


def _chunks(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as data:
        while chunk := data.read(COPY_CHUNK_BYTES):
            yield chunk


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Spool:
    def __init__(self, root: Path, min_free_bytes: int):
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.incoming = self.root / "incoming"
        self.ready = self.root / "ready"
        for folder in (self.incoming, self.ready):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.incoming.glob("*.part"):
            leftover.unlink()

    def accept(self, partner: str, upload_id_: str, source: bytes | Path) -> Entry:
        """Write ``source`` (the instance's bytes, or a file holding them, copied in chunks)
        durably for ``partner``; raises :class:`SpoolFull` or ``OSError``."""
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if shutil.disk_usage(self.root).free - size < self.min_free_bytes:
            raise SpoolFull("spool below its minimum free space")
        folder = self.ready / partner
        if not folder.is_dir():
            folder.mkdir(mode=0o700, exist_ok=True)
            _fsync_directory(self.ready)
        part = self.incoming / f"{secrets.token_hex(8)}.part"
        digest = hashlib.sha256()
        try:
            descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                for chunk in _chunks(source):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            name = f"{time.time_ns():020d}-{digest.hexdigest()[:32]}-{upload_id_}.dcm"
            os.replace(part, folder / name)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        _fsync_directory(folder)
        return Entry(folder / name, partner)

    def entries(self) -> Iterator[Entry]:
        """Waiting entries, oldest first within each partner."""
        for folder in sorted(p for p in self.ready.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.dcm")):
                yield Entry(path, folder.name)

    def remove(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)
        _fsync_directory(entry.path.parent)

    def size(self) -> tuple[int, int]:
        """(files, bytes) waiting for upload."""
        files = total = 0
        for entry in self.entries():
            try:
                total += entry.path.stat().st_size
            except FileNotFoundError:
                continue
            files += 1
        return files, total
