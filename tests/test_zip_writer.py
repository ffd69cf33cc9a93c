"""The page's ZIP writer (npm ``client-zip``, the file the API serves at ``/client-zip.js``)
streams archives of any size: ZIP64 past 4 GiB and past 65,535 entries, with flat memory.
Run in node (the same ES module the browser loads) on generated data."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "lambdas" / "api" / "static" / "client-zip.js"
SMALL = 70_000
BIG = 4 * 1024**3 + 300 * 1024**2  # 4.3 GiB


def pattern(size: int) -> bytes:
    chunk = bytes((i * 31 + 7) & 0xFF for i in range(1 << 20))
    return (chunk * (size // len(chunk) + 1))[:size]


def test_streamed_zip64_past_4_gib_and_65535_entries(tmp_path):
    node = require_tool("node")
    if not LIBRARY.is_file():
        message = f"{LIBRARY} is missing: run make web"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    output = tmp_path / "share.zip"
    try:
        run = subprocess.run([node, str(Path(__file__).with_name("zip_writer.mjs")), str(LIBRARY), str(output),
                              str(SMALL), str(BIG)], capture_output=True, text=True, timeout=900, check=True)
        assert json.loads(run.stdout)["peak_rss"] < 400 * 1024**2  # the 4.3 GiB archive never sat in memory
        with zipfile.ZipFile(output) as archive:
            infos = archive.infolist()
            assert len(infos) == SMALL + 3
            assert archive.read("small/000000.dcm") == b"entry 0"
            assert archive.read(f"small/{SMALL - 1:06d}.dcm") == f"entry {SMALL - 1}".encode()
            big = archive.getinfo("big.bin")
            assert big.file_size == BIG and big.compress_type == zipfile.ZIP_STORED
            crc = 0
            with archive.open(big) as stream:  # zipfile checks the stored CRC-32 at the end
                first = stream.read(1 << 20)
                crc = zlib.crc32(first)
                while chunk := stream.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            assert first == pattern(1 << 20) and crc == big.CRC
            after = archive.getinfo("after/2.dcm")
            assert after.header_offset > 4 * 1024**3  # a ZIP64 offset
            assert archive.read("after/1.dcm") == b"after the big entry"
            assert archive.read(after) == pattern(3 << 20)
    finally:
        output.unlink(missing_ok=True)
