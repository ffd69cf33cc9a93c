"""Ingest throughput through the local pipeline, bytes the handler reads per file, and the
ingest handler's cold-start import.

- A local system (moto server, the real ingest and counts handlers behind the local
  event source mappings) receives :data:`SMALL_FILES` CT slices of 512x512 (about 0.5 MB)
  and :data:`LARGE_FILES` objects of :data:`LARGE_SIDE` x :data:`LARGE_SIDE` 16-bit pixels
  (32 MiB) uploaded with boto3, as a partner would.
- files/s: from the first upload to the pipeline being idle again (every object stored,
  indexed and counted). Per-file handler time and bytes read are the ``duration_ms`` and
  ``bytes_read`` fields of the handler's own log lines (``bytes_read`` counts every byte
  the function fetched from the uploaded object: large objects have their pixel data
  copied server-side with UploadPartCopy, so only the header and the first part's few MiB
  pass through the function).
- Cold start: a fresh interpreter imports ``lambdas.ingest.handler``.

moto is much slower than S3 and DynamoDB (it deep-copies a table for every item of a
transaction), so the absolute numbers are a floor for the code, not a forecast for AWS.
Run: ``python -m bench ingest``.
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL_FILES = 100
LARGE_FILES = 3
LARGE_SIDE = 4096
PARTNER = "bench-partner"

COLD_IMPORT = """
import json, sys, time
if sys.argv[1] == "bundle":
    sys.modules["numpy"] = None  # the ingest bundle (lambdas/ingest/requirements.txt) has no numpy
started = time.perf_counter()
import lambdas.ingest.handler
print(json.dumps({"seconds": time.perf_counter() - started, "numpy": bool(sys.modules.get("numpy"))}))
"""


def small_files():
    from dicomshare_local import demo

    for n, ds in enumerate(demo.ct_series(SMALL_FILES, "20240301", "CT BENCH", size=512)):
        yield f"{PARTNER}/bench/small/{n:04d}.dcm", demo.part10_bytes(ds)


def large_files():
    from dicomshare_local import demo

    for n, ds in enumerate(demo.ct_series(LARGE_FILES, "20240302", "CT BENCH LARGE", size=16)):
        ds.Rows = ds.Columns = LARGE_SIDE
        ds.PixelData = bytes(LARGE_SIDE * LARGE_SIDE * 2)
        yield f"{PARTNER}/bench/large/{n:04d}.dcm", demo.part10_bytes(ds)


def run_pipeline() -> dict[str, list[dict]]:
    from dicomshare.settings import Partner, Settings
    from dicomshare_local.system import LocalSystem

    lines = io.StringIO()
    with tempfile.TemporaryDirectory() as state, LocalSystem(
            Path(state), settings=Settings(partners=(Partner(id=PARTNER),))) as system:
        from lambdas.ingest import handler

        capture = logging.StreamHandler(lines)
        capture.setFormatter(handler.logger.registered_formatter)
        logging.getLogger(handler.logger.name).addHandler(capture)
        s3 = system.client("s3")
        results = {}
        for label, files in (("small", list(small_files())), ("large", list(large_files()))):
            lines.seek(0)
            lines.truncate()
            started = time.perf_counter()
            for key, body in files:
                s3.put_object(Bucket=system.resources.ingest_bucket, Key=key, Body=body)
            system.wait_idle(timeout=1800)
            elapsed = time.perf_counter() - started
            logged = [json.loads(x) for x in lines.getvalue().splitlines() if '"outcome"' in x]
            results[label] = {"files": len(files), "elapsed": elapsed, "lines": logged,
                              "size": statistics.median(len(b) for _, b in files),
                              "counted": counted(system, {x["study_uid"] for x in logged if "study_uid" in x})}
        logging.getLogger(handler.logger.name).removeHandler(capture)
    return results


def counted(system, study_uids: set[str]) -> int:
    """Instances the study items count, read back from the index."""
    from dicomshare import index
    from dicomshare_aws.index_store import to_attribute_values

    dynamodb = system.client("dynamodb")
    return sum(int(dynamodb.get_item(TableName=system.resources.table_name, ConsistentRead=True,
                                     Key=to_attribute_values(index.study_key(uid)))["Item"]["instance_count"]["N"])
               for uid in study_uids)


def cold_import(variant: str) -> dict:
    runs = [json.loads(subprocess.run([sys.executable, "-c", COLD_IMPORT, variant], check=True, capture_output=True,
                                      text=True).stdout) for _ in range(5)]
    return {"seconds": statistics.median(r["seconds"] for r in runs), "numpy": any(r["numpy"] for r in runs)}


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results = run_pipeline()
    print(f"{'set':<6} {'files':>5} {'MB/file':>8} {'files/s':>8} {'handler ms p50':>15} {'p95':>7} "
          f"{'bytes read/file':>16} {'counted':>8}")
    for label, r in results.items():
        durations = sorted(x["duration_ms"] for x in r["lines"])
        read = statistics.median(x.get("bytes_read", 0) for x in r["lines"])
        print(f"{label:<6} {r['files']:>5} {r['size'] / 1e6:>8.2f} {r['files'] / r['elapsed']:>8.1f} "
              f"{statistics.median(durations):>15.0f} {durations[int(0.95 * (len(durations) - 1))]:>7.0f} "
              f"{read / 1e6:>13.2f} MB {r['counted']:>8}")
    for variant, label in (("bundle", "as bundled (no numpy)"), ("venv", "in this venv (numpy installed)")):
        cold = cold_import(variant)
        print(f"cold start, import lambdas.ingest.handler {label}: {cold['seconds'] * 1000:.0f} ms "
              f"(median of 5; numpy imported: {'yes' if cold['numpy'] else 'no'})")
