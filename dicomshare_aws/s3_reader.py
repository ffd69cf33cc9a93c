"""A seekable, read-only file over one S3 object, for readers that need only part of it
(the de-identification engine reads the header; the preview renderer one frame)."""

from __future__ import annotations

import io
import os
from typing import Any

FIRST_READ_BYTES = 16 * 1024
MAX_READ_BYTES = 4 * 1024**2


class S3RangeReader(io.RawIOBase):
    """A seekable, read-only file over one S3 object version, fetched by ``Range`` GETs.

    A miss fetches :data:`FIRST_READ_BYTES`; while reads continue where the last fetch
    ended the fetch size doubles up to :data:`MAX_READ_BYTES`. ``bytes_read`` counts every
    byte fetched. Every GET names the ETag first seen (``IfMatch``), so a concurrent
    overwrite fails the rewrite instead of mixing two objects.
    """

    def __init__(self, s3_client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._s3, self._bucket, self._key, self._size = s3_client, bucket, key, size
        self._pos = 0
        self._block_start, self._block = 0, b""
        self._fetch_size = FIRST_READ_BYTES
        self.etag: str | None = None
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (one GET)."""
        if end <= start:
            return b""
        extra = {"IfMatch": self.etag} if self.etag else {}
        response = self._s3.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end - 1}", **extra)
        self.etag = self.etag or response["ETag"]
        data = response["Body"].read()
        self.bytes_read += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        end = min(self._pos + size, self._size)
        if end <= self._pos:
            return b""
        block_end = self._block_start + len(self._block)
        if not (self._block_start <= self._pos and end <= block_end):
            sequential = self._pos == block_end
            self._fetch_size = min(self._fetch_size * 2, MAX_READ_BYTES) if sequential else FIRST_READ_BYTES
            fetch_end = min(max(end, self._pos + self._fetch_size), self._size)
            self._block_start, self._block = self._pos, self.fetch(self._pos, fetch_end)
        offset = self._pos - self._block_start
        data = self._block[offset : offset + end - self._pos]
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
