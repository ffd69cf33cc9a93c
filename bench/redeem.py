"""Share redemption at real study sizes: response bytes, time and peak memory of
``POST /redeem`` and of the paged share reads, for studies of 1,000, 20,000 and 100,000
instances, each against Lambda's 6 MB response limit and the API's 1 MB target.

- Each study is seeded directly into the local system's table (moto server): instance
  items built by the ingest side's own builder (:func:`dicomshare.index_items.instance_item`,
  from one generated CT header per series, UIDs varied per instance), series of at most
  10,000 instances, and the study and series items the counts aggregator would write;
  the metadata objects of the instances the pages below read.
  The pipeline's pollers are stopped, so nothing else runs.
- The API handler is called in this process with API Gateway proxy events (as the local
  gateway does). "as sent" is the body the client receives (JSON, or gzip when the client
  accepts it); "as Lambda counts" is the proxy response's ``body`` string, base64 when
  binary (the deployed API declares ``*/*`` binary, so every compressed body is base64).
- Presigned URLs carry a 1,100-character session token, as the function's role
  credentials do on AWS, so URL sizes are AWS's (the local endpoint's host is shorter
  than ``<bucket>.s3.<region>.amazonaws.com`` by about 40 characters).
- Time is one call; peak memory is ``tracemalloc``'s peak of Python allocations during a
  second, identical call (tracing slows what it traces; the container's own baseline,
  about 100 MB on Lambda, is not included). Redemptions are counted by both calls.
- Pages: the first 5 pages of the study's first series are read with ``next``; the
  figures are the largest page and the median time. A page costs one DynamoDB query of
  at most 100 items whatever the study's size; moto answers it in about 0.3 s (DynamoDB:
  tens of ms).

Run: ``python -m bench redeem`` (about 5 minutes, most of it seeding 121,000 items).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid

SIZES = tuple(int(s) for s in os.environ.get("BENCH_REDEEM_SIZES", "1000,20000,100000").split(","))
SERIES_SIZE = 10_000
PAGES = 5
LAMBDA_LIMIT = 6 * 1024 * 1024
TARGET = 1024 * 1024
SESSION_TOKEN = "IQoJb3JpZ2luX2VjE" + "A" * 1083
HEAVY_MODULES = ("pydicom", "numpy", "highdicom")

COLD_IMPORT = """
import json, sys, time
started = time.perf_counter()
import lambdas.api.handler
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY_MODULES,)


def seed(system, instances: int) -> tuple[str, list[str]]:
    """A study of ``instances`` instance items in series of at most 10,000, with its study
    and series items; (StudyInstanceUID, SeriesInstanceUIDs)."""
    from pydicom.uid import generate_uid

    from dicomshare import index, manifest
    from dicomshare.index_items import dicom_json, instance_item
    from dicomshare_aws import instance_metadata
    from dicomshare_local import demo

    table = system.resources.table_name
    s3 = system.client("s3")
    dynamodb = __import__("boto3").resource("dynamodb").Table(table)
    study_uid, received, pseudonym = generate_uid(), "2024-03-01T10:15:00Z", f"PSEUDO-{uuid.uuid4().hex[:8]}"
    series_uids = []
    with dynamodb.batch_writer() as batch:
        for first in range(0, instances, SERIES_SIZE):
            count = min(SERIES_SIZE, instances - first)
            series_uid = generate_uid()
            series_uids.append(series_uid)
            [ds] = demo.ct_series(1, "20240301", "CT BENCH", size=16)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study_uid, series_uid, len(series_uids)
            sops = sorted(generate_uid() for _ in range(count))
            for number, sop in enumerate(sops, 1):
                ds.SOPInstanceUID, ds.InstanceNumber = sop, number
                metadata = dicom_json(ds)
                item = instance_item(
                    ds, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, size=540_000,
                    sha256="0" * 64, received_at=received, partner="bench", patient_pseudonym=pseudonym,
                    metadata_bytes=len(metadata))
                if len(series_uids) == 1 and number <= PAGES * manifest.INSTANCES_PER_PAGE:  # the pages read
                    instance_metadata.store(s3, system.resources.deid_bucket, item, metadata)
                batch.put_item(Item=item)
            batch.put_item(Item={**index.series_key(study_uid, series_uid), "study_uid": study_uid,
                                 "series_uid": series_uid, "modality": "CT", "series_description": "CT BENCH",
                                 "series_number": str(len(series_uids)), "instance_count": count,
                                 "total_bytes": 540_000 * count})
        batch.put_item(Item={
            **index.study_key(study_uid), "study_uid": study_uid, "patient_pseudonym": pseudonym,
            "study_date": "20240301", "study_time": "101500", "study_description": "CT BENCH",
            "modalities": ["CT"], "series_count": len(series_uids), "instance_count": instances,
            "total_bytes": 540_000 * instances, "partner": "bench", "first_received": received,
            "last_received": received, "gsi1pk": index.patient_partition("bench", pseudonym),
            "gsi1sk": f"20240301#{study_uid}", "gsi2pk": index.STUDIES, "gsi2sk": f"{received}#{study_uid}"})
    return study_uid, series_uids


def call(method: str, path: str, headers: dict[str, str], query: dict[str, str] | None = None,
         body: bytes = b"", admin: bool = False) -> dict:
    """The API handler on one proxy event: status, sizes, seconds, peak Python memory."""
    from dicomshare_local.gateway import LOCAL_ADMIN_ARN, _event
    from dicomshare_local.pollers import LambdaContext
    from dicomshare_aws import resources
    from lambdas.api.handler import handler
    from urllib.parse import urlencode

    identity = {"sourceIp": "127.0.0.1", "userAgent": "bench"}
    if admin:
        identity["userArn"] = identity["caller"] = LOCAL_ADMIN_ARN  # a session of the local admin role
    event = _event(method, path, urlencode(query or {}), headers, body, identity, "127.0.0.1")
    started = time.perf_counter()
    response = handler(event, LambdaContext("api", resources.API_TIMEOUT_SECONDS))
    seconds = time.perf_counter() - started
    tracemalloc.start()  # a second call for memory: tracing slows the code it traces
    handler(event, LambdaContext("api", resources.API_TIMEOUT_SECONDS))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    raw = response.get("body") or ""
    sent = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
    counted = len(raw.encode())
    return {"status": response["statusCode"], "sent": sent, "sent_bytes": len(sent), "lambda_bytes": counted,
            "seconds": seconds, "peak": peak, "headers": response.get("headers") or {}}


def measure(study_uid: str, series_uids: list[str], instances: int) -> dict:
    created = call("POST", "/shares", {"Content-Type": "application/json"},
                   body=json.dumps({"study_uid": study_uid}).encode(), admin=True)
    assert created["status"] == 201, created["sent"][:300]
    token = json.loads(created["sent"])["token"]
    auth = {"Authorization": f"Share {token}"}
    results = {}
    for encoding in ("identity", "gzip"):
        redeemed = call("POST", "/redeem", {**auth, "Accept-Encoding": encoding})
        assert redeemed["status"] == 200, redeemed["sent"][:300]
        body = gzip.decompress(redeemed["sent"]) if encoding == "gzip" else redeemed["sent"]
        assert json.loads(body)["studies"][0]["instance_count"] == instances
        results[f"redeem_{encoding}"] = summary([redeemed])
    for route in ("instances", "dicomjson"):
        for encoding in ("identity", "gzip"):
            pages, following = [], None
            while len(pages) < PAGES:
                query = {"study_uid": study_uid, "series_uid": series_uids[0], **({"next": following} if following else {})}
                page = call("GET", f"/share/{route}", {**auth, "Accept-Encoding": encoding}, query)
                assert page["status"] == 200, page["sent"][:300]
                pages.append(page)
                body = gzip.decompress(page["sent"]) if encoding == "gzip" else page["sent"]
                following = json.loads(body)["next"]
                if not following:
                    break
            results[f"{route}_page_{encoding}"] = summary(pages)
    kos = call("POST", "/redeem", {**auth, "Accept": "application/dicom"})
    assert kos["status"] == 200
    results["kos_page"] = summary([kos])
    return results


def summary(calls: list[dict]) -> dict:
    largest = max(calls, key=lambda c: c["lambda_bytes"])
    return {
        "calls": len(calls),
        "max_bytes_sent": largest["sent_bytes"],
        "max_bytes_lambda_counts": largest["lambda_bytes"],
        "median_ms": round(statistics.median(c["seconds"] for c in calls) * 1000, 1),
        "max_peak_python_mb": round(max(c["peak"] for c in calls) / 1e6, 2),
        "share_of_6mb_limit": round(largest["lambda_bytes"] / LAMBDA_LIMIT, 3),
        "under_1mb": largest["lambda_bytes"] < TARGET,
    }


def cold_start() -> dict:
    runs = []
    for _ in range(5):
        result = subprocess.run([sys.executable, "-c", COLD_IMPORT], capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    heavy = sorted({m for r in runs for m in r["heavy"]})
    return {"import_ms_median": round(statistics.median(r["seconds"] for r in runs) * 1000, 1),
            "heavy_modules_imported": heavy}


def table(report: dict) -> str:
    lines = ["| instances | response | bytes sent | bytes as Lambda counts (limit 6 MB) | median ms | peak MB |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for size, results in report["sizes"].items():
        for name, r in results.items():
            lines.append(f"| {int(size):,} | {name} | {r['max_bytes_sent']:,} | {r['max_bytes_lambda_counts']:,} "
                         f"({r['share_of_6mb_limit']:.1%}) | {r['median_ms']} | {r['max_peak_python_mb']} |")
    return "\n".join(lines)


def main() -> None:
    from dicomshare.settings import Partner, Settings
    from dicomshare_local.system import LocalSystem

    report: dict = {"cold_start": cold_start(), "sizes": {}}
    with tempfile.TemporaryDirectory() as state, LocalSystem(state, settings=Settings(partners=(Partner(id="bench"),))) as system:
        system.disable_event_sources()
        os.environ["AWS_SESSION_TOKEN"] = SESSION_TOKEN
        for size in SIZES:
            started = time.perf_counter()
            study_uid, series_uids = seed(system, size)
            print(f"seeded {size:,} instances in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            report["sizes"][size] = measure(study_uid, series_uids, size)
            print(table({"sizes": {size: report["sizes"][size]}}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    print(table(report))
    failed = [(s, n) for s, r in report["sizes"].items() for n, x in r.items() if not x["under_1mb"]]
    if failed:
        print(f"OVER 1 MB: {failed}", file=sys.stderr)
    if report["cold_start"]["heavy_modules_imported"]:
        print(f"FAIL: the API handler imports {report['cold_start']['heavy_modules_imported']}", file=sys.stderr)


if __name__ == "__main__":
    main()
