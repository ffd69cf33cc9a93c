"""Copying the source's Pixel Data range into the output in the kernel (Linux): ``splice``
through a pipe for small ranges, ``copy_file_range`` kept page-aligned for large ones."""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import suppress
from typing import BinaryIO

from dicomshare.deidentify.plan import Plan
from dicomshare.validation import TRUNCATED, DeidentificationRefused

SPLICE_PIPE_BYTES = 1024**2
"""Between two files, Pixel Data up to this size moves through a pipe of this size; larger
Pixel Data keeps its source's offset within a page and is copied range by range
(:func:`kernel_copy`)."""
PAGE_BYTES = 4096
KERNEL_PIPE_BYTES = 16 * PAGE_BYTES
"""What ``copy_file_range`` moves at a time on a file system without shared extents."""


def kernel_copy(plan: Plan, src: BinaryIO, dst: BinaryIO) -> bool:
    """Copy the Pixel Data range from file to file in the kernel (Linux); ``False`` when
    not possible.

    Up to :data:`SPLICE_PIPE_BYTES`, through a pipe that size (``splice``): one write, at
    any output offset. Larger ranges by ``copy_file_range``, which on ext4 writes
    :data:`KERNEL_PIPE_BYTES` at a time, as ``cp`` does: the output keeps the source's
    offset within a page (:func:`.file_meta.header_bytes`) and a first call ends on a
    :data:`KERNEL_PIPE_BYTES` boundary of the output, so every later write is whole and
    aligned. Measured on 1 GiB: unaligned, half again as long as ``cp``; through a 1 MiB
    pipe as long as ``cp`` on a quiet machine but two to four times as long on a busy one;
    aligned, as long as ``cp`` on both.
    """
    try:
        src_fd, dst_fd = src.fileno(), dst.fileno()
    except (AttributeError, OSError):
        return False
    dst.flush()
    if plan.pixel_length <= SPLICE_PIPE_BYTES and hasattr(os, "splice"):
        copied = _splice(plan, src_fd, dst_fd)
    elif hasattr(os, "copy_file_range"):
        copied = _copy_range(plan, src_fd, dst_fd, dst.tell())
    else:
        return False
    if copied:
        dst.seek(0, os.SEEK_END)
    return copied


def _copy_range(plan: Plan, src_fd: int, dst_fd: int, dst_offset: int) -> bool:
    """:func:`kernel_copy` by ``copy_file_range``, from ``dst_offset`` in the output."""
    offset, end = plan.pixel_offset, plan.pixel_end
    length = -dst_offset % KERNEL_PIPE_BYTES or 1 << 30
    try:
        while offset < end:
            copied = os.copy_file_range(src_fd, dst_fd, min(end - offset, length), offset)
            if copied == 0:
                raise DeidentificationRefused(TRUNCATED)
            offset, length = offset + copied, 1 << 30
    except OSError:
        if offset != plan.pixel_offset:
            raise
        return False
    return True


def _splice(plan: Plan, src_fd: int, dst_fd: int) -> bool:
    """:func:`kernel_copy` through this thread's pipe (:class:`_SplicePipe`)."""
    offset, end, written = plan.pixel_offset, plan.pixel_end, 0
    pipe_out, pipe_in = _PIPE.fds()
    try:
        while offset < end:
            moved = os.splice(src_fd, pipe_in, end - offset, offset_src=offset)
            if moved == 0:
                raise DeidentificationRefused(TRUNCATED)
            offset += moved
            while written < offset - plan.pixel_offset:
                written += os.splice(pipe_out, dst_fd, offset - plan.pixel_offset - written)
    except OSError:
        _PIPE.close()  # it may hold bytes of this copy
        if written:
            raise
        return False
    except BaseException:
        _PIPE.close()
        raise
    return True


class _SplicePipe(threading.local):
    """This thread's pipe for :func:`kernel_copy`, made once per process (opening one and
    sizing it took 8 us, per object); dropped when a copy fails, as it may hold bytes."""

    pid = 0
    pair = (-1, -1)

    def fds(self) -> tuple[int, int]:
        """``(read end, write end)``."""
        if self.pid != os.getpid():
            self.pair, self.pid = os.pipe(), os.getpid()
            with suppress(OSError):
                fcntl.fcntl(self.pair[1], fcntl.F_SETPIPE_SZ, SPLICE_PIPE_BYTES)
        return self.pair

    def close(self) -> None:
        if self.pid == os.getpid():
            os.close(self.pair[0])
            os.close(self.pair[1])
        self.pid = 0


_PIPE = _SplicePipe()
