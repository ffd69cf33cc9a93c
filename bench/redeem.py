"""Share redemption: manifest time for a 1,000-instance study (warm), the share of it spent
presigning URLs, and the API handler's cold-start import.

- The index is seeded directly with 1,000 instance items built by the ingest side's own
  code (:func:`dicomshare.index_items.instance_item`, conditional put) and their study
  item, with the local pipeline's pollers stopped (on moto, the counts aggregator's
  transactions copy the whole table each time: minutes for 1,000 items, and noise in the
  timings).
- ``POST /redeem`` is timed over HTTP on the local system (moto server, local gateway),
  after one warm-up redemption; each redemption presigns 2,000 URLs (instance + preview).
- Presigning is timed on its own with the API's presigner, 2,000 URLs.
- The first redemption reads the study's 1,000 instance items from the index; later ones
  reuse the container's copy while the study's ``instance_count`` is unchanged
  (:meth:`dicomshare_aws.share_store.ShareStore.study_instances`). The uncached index query
  is reported on its own: on the local system it is moto's response serialization (about
  3 ms per item), which DynamoDB does not have.
- Cold start: a fresh interpreter imports ``lambdas.api.handler``; the report says whether
  pydicom, numpy or highdicom were imported (they must not be).

Target (issue 5): warm manifest under 300 ms. Run: ``python -m bench redeem``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

INSTANCES = 1000
RUNS = 10
TARGET_MS = 300
HEAVY_MODULES = ("pydicom", "numpy", "highdicom")

COLD_IMPORT = """
import json, sys, time
started = time.perf_counter()
import lambdas.api.handler
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY_MODULES,)


def seed(system) -> str:
    """1,000 instance items (ingest's builder and conditional put) and their study item.

    The pipeline's pollers are stopped first, so nothing else runs while redemption is
    timed; the study item is written with the attributes the counts aggregator gives it.
    """
    import hashlib

    from dicomshare import index
    from dicomshare.index_items import instance_item
    from dicomshare_aws.index_store import put_new
    from dicomshare_local import demo

    system.disable_event_sources()
    dynamodb = system.client("dynamodb")
    table = system.resources.table_name
    received = "2024-03-01T10:15:00Z"
    for ds in demo.ct_series(INSTANCES, "20240301", "CT BENCH", size=16):
        key = index.deidentified_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        put_new(dynamodb, table, instance_item(
            ds, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, s3_key=key, size=540_000,
            sha256=hashlib.sha256(key.encode()).hexdigest(), received_at=received,
            partner="bench", patient_pseudonym="PSEUDO-BENCH"))
    study_uid = ds.StudyInstanceUID
    put_new(dynamodb, table, {
        **index.study_key(study_uid), "study_uid": study_uid, "patient_pseudonym": "PSEUDO-BENCH",
        "study_date": "20240301", "study_time": "101500", "study_description": "CT BENCH",
        "modalities": ["CT"], "series_count": 1, "instance_count": INSTANCES, "total_bytes": 540_000 * INSTANCES,
        "partner": "bench", "first_received": received, "last_received": received,
        "gsi1pk": index.patient_partition("bench", "PSEUDO-BENCH"), "gsi1sk": f"20240301#{study_uid}",
        "gsi2pk": index.STUDIES, "gsi2sk": f"{received}#{study_uid}",
    })
    return study_uid


def post(url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[float, bytes]:
    request = urllib.request.Request(url, method="POST", data=body, headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
    return time.perf_counter() - started, payload


def redemption(system, study_uid: str) -> dict:
    admin = {"Authorization": f"Bearer {system.admin_token}", "Content-Type": "application/json"}
    _, created = post(f"{system.api_url}/shares", admin, json.dumps({"study_uid": study_uid}).encode())
    token = json.loads(created)["token"]
    share = {"Authorization": f"Share {token}"}
    first, _ = post(f"{system.api_url}/redeem", share)
    timings, payload = [], b""
    for _ in range(RUNS):
        seconds, payload = post(f"{system.api_url}/redeem", share)
        timings.append(seconds)
    manifest = json.loads(payload)
    assert manifest["studies"][0]["instance_count"] == INSTANCES
    gzipped = post(f"{system.api_url}/redeem", {**share, "Accept-Encoding": "gzip"})[1]

    from lambdas.api import dependencies

    started = time.perf_counter()
    presign_url = dependencies.presigner(900).url
    for n in range(2 * INSTANCES):
        presign_url(f"studies/{n}.dcm")
    presign = time.perf_counter() - started
    started = time.perf_counter()
    dependencies.store().instances(study_uid)
    uncached_query = time.perf_counter() - started
    median = statistics.median(timings)
    return {
        "instances": INSTANCES,
        "first_redeem_ms_uncached_index": round(first * 1000, 1),
        "index_query_ms_uncached": round(uncached_query * 1000, 1),
        "redeem_ms_median": round(median * 1000, 1),
        "redeem_ms_min": round(min(timings) * 1000, 1),
        "redeem_ms_max": round(max(timings) * 1000, 1),
        "presign_ms_2000_urls": round(presign * 1000, 1),
        "presign_share_of_median": round(presign / median, 2),
        "manifest_bytes": len(payload),
        "manifest_bytes_gzip": len(gzipped),
        "target_ms": TARGET_MS,
        "meets_target": median * 1000 < TARGET_MS,
    }


def cold_start() -> dict:
    runs = []
    for _ in range(5):
        result = subprocess.run([sys.executable, "-c", COLD_IMPORT], capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    heavy = sorted({m for r in runs for m in r["heavy"]})
    return {
        "import_ms_median": round(statistics.median(r["seconds"] for r in runs) * 1000, 1),
        "heavy_modules_imported": heavy,
        "no_pydicom_numpy_highdicom": not heavy,
    }


def main() -> None:
    from dicomshare.settings import Partner, Settings
    from dicomshare_local.system import LocalSystem

    report = {"cold_start": cold_start()}
    with tempfile.TemporaryDirectory() as state, LocalSystem(state, settings=Settings(partners=(Partner(id="bench"),))) as system:
        report["redeem"] = redemption(system, seed(system))
    print(json.dumps(report, indent=2))
    if not report["cold_start"]["no_pydicom_numpy_highdicom"]:
        print(f"FAIL: the API handler imports {report['cold_start']['heavy_modules_imported']}", file=sys.stderr)
    if not report["redeem"]["meets_target"]:
        print(f"MISS: warm redemption {report['redeem']['redeem_ms_median']} ms >= {TARGET_MS} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
