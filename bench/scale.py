"""Real study sizes (issue 14): each figure printed against the AWS limit it must stay under.

1. **Write units per instance on the hottest partition.** A real-size CT study (512×512
   slices, instance items built by the ingest side's own code) is counted by the real
   aggregator on the local system; a botocore ``before-send`` hook records every write the
   ingest put and the aggregator send, and charges it as DynamoDB does (1 write unit per
   started KB of the item, twice inside a transaction; an update is charged for the item's
   size after it). Units per instance on the study's instance partition
   (``INSTANCES#<uid>``: the ingest side's put of each instance item, the hottest), on the
   study's partition (``STUDY#<uid>``: the study and series items only the counts function
   writes, one update per batch), on the busiest mark partition (``COUNTED#<uid>#<n>``) and
   on ``RECONCILE``. Limit: 1,000 write units per second per partition; the printed
   files/s (the hottest partition's) is what one study may arrive at.
2. **Cold import per function, with and without bytecode.** Each function is bundled as
   for Lambda (``stacks/pip_bundling.py``), but with wheels for this machine (x86_64) so
   it can run here, by a CPython 3.12 (the runtime's version); a fresh interpreter
   imports ``lambdas.<function>.handler`` from the bundle as shipped (unchecked-hash
   bytecode) and from the same bundle without ``__pycache__`` (what Lambda had to compile
   at every cold start, since ``/var/task`` is read-only: ``PYTHONDONTWRITEBYTECODE``);
   best of 5. boto3, which the runtime provides precompiled, comes from a compiled
   ``--target`` beside it. Limit: Lambda's 10 s init phase (and the API's 29 s).
3. **The local system under a large study.** 2,000 instance items (a CT study) are written
   to the local system's table (``BatchWriteItem``) and counted by the local pipeline
   while clients call ``GET /studies`` every 0.5 s: every request must get an answer; the
   latencies are printed against API Gateway's 29 s.
4. **Redemption response size** (constant-size ``/redeem``) belongs to the redemption work
   of issue 14 and is measured by ``python -m bench redeem``; its section below says so.

Run: ``python -m bench scale`` (needs PyPI or pip's cache for the bundles, and CPython 3.12).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

WCU_PER_PARTITION = 1000
LAMBDA_INIT_SECONDS = 10
API_GATEWAY_SECONDS = 29
STUDY_INSTANCES = 2000
FUNCTIONS = ("ingest", "counts", "reconcile", "api", "preview")
HOST_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
OLD_UNITS_PER_INSTANCE = 9
"""The design before issue 14 (mark on the instance item), worked out in the issue."""


def item_bytes(item: dict) -> int:
    """DynamoDB's item size: attribute names plus values (strings UTF-8, numbers ~1 byte
    per 2 digits + 1, sets the sum of their members)."""
    def value_size(value: dict) -> int:
        (kind, v), = value.items()
        if kind == "S":
            return len(v.encode())
        if kind == "N":
            return len(v.lstrip("-").replace(".", "")) // 2 + 2
        if kind == "SS":
            return sum(len(x.encode()) for x in v)
        if kind == "BOOL" or kind == "NULL":
            return 1
        if kind == "M":
            return 3 + sum(len(k.encode()) + value_size(x) for k, x in v.items())
        if kind == "L":
            return 3 + sum(value_size(x) for x in v)
        return len(str(v))
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def _ct_items(count: int) -> list[dict]:
    from dicomshare.index_items import dicom_json, instance_item
    from dicomshare_local import demo

    items = []
    for ds in demo.ct_series(count, "20240101", "CT ANGIO RUNOFF WITH CONTRAST", size=8):
        ds.Rows = ds.Columns = 512
        ds.PixelSpacing = [0.9765625, 0.9765625]
        items.append(instance_item(
            ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            size=526_000 + int(ds.InstanceNumber), sha256="ab" * 32,
            received_at=f"2026-11-29T12:{int(ds.InstanceNumber) // 60 % 60:02d}:{int(ds.InstanceNumber) % 60:02d}.000Z",
            partner="st-mary-pacs", patient_pseudonym="DS-" + "7" * 32, metadata_bytes=len(dicom_json(ds))))
    return items


def write_units(system) -> dict:
    """Count a real-size study through the real aggregator; charge every write."""
    from dicomshare import index
    from dicomshare_aws import counts, index_store

    table = system.resources.table_name
    charged: dict[str, float] = defaultdict(float)
    updates: list[tuple[dict, int]] = []

    def charge(request, **_):
        operation = request.headers["X-Amz-Target"]
        operation = (operation.decode() if isinstance(operation, bytes) else operation).rpartition(".")[2]
        body = json.loads(request.body or b"{}")
        if operation == "PutItem":
            charged[body["Item"]["pk"]["S"]] += units(item_bytes(body["Item"]))
        elif operation == "BatchWriteItem":
            for request_ in body["RequestItems"][table]:
                (kind, write), = request_.items()
                key = write.get("Item") or write["Key"]
                charged[key["pk"]["S"]] += units(item_bytes(key if kind == "DeleteRequest" else write["Item"]))
        elif operation == "TransactWriteItems":
            for item in body["TransactItems"]:
                (kind, write), = item.items()
                if kind == "Put":
                    charged[write["Item"]["pk"]["S"]] += 2 * units(item_bytes(write["Item"]))
                else:
                    updates.append((write["Key"], 2))
        elif operation == "UpdateItem":
            updates.append((body["Key"], 1))

    dynamodb = system.client("dynamodb")
    dynamodb.meta.events.register("before-send.dynamodb", charge)
    items = _ct_items(STUDY_INSTANCES)
    study = items[0]["study_uid"]
    for item in items:
        index_store.put_new(dynamodb, table, item)
    events = system.client("events")
    for i in range(0, len(items), 100):  # stream batches of 100, as the event source mapping delivers them
        counts.count_new_instances(dynamodb, events, items[i:i + 100], table_name=table,
                                   event_bus_name=system.resources.event_bus_name)
    dynamodb.meta.events.unregister("before-send.dynamodb", charge)
    for key, factor in updates:
        stored = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        charged[key["pk"]["S"]] += factor * units(item_bytes(stored))
    per_instance = {pk: total / len(items) for pk, total in charged.items()}
    marks = [v for pk, v in per_instance.items() if pk.startswith(f"COUNTED#{study}#")]
    return {
        "instances": len(items),
        "instance_item_bytes": statistics.median(item_bytes(index_store.to_attribute_values(i)) for i in items),
        "instance_partition": per_instance[index.instances_partition(study)],
        "study_partition": per_instance.get(index.study_key(study)[index.PK], 0.0),
        "busiest_mark_partition": max(marks),
        "mark_partitions": len(marks),
        "reconcile_partition": per_instance.get("RECONCILE", 0.0),
    }


def _best_import_seconds(python: str, path: list[Path], module: str, runs: int = 5) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "PYTHONDONTWRITEBYTECODE": "1",
           "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "bench"}
    env.pop("PYTHONHOME", None)
    best = math.inf
    for _ in range(runs):
        result = subprocess.run([python, "-s", "-c", code], env=env, capture_output=True, text=True,
                                cwd=tempfile.gettempdir())
        if result.returncode:
            raise RuntimeError(f"import {module} failed: {result.stderr[-500:]}")
        best = min(best, float(result.stdout.strip().splitlines()[-1]))
    return best


def cold_imports(workdir: Path) -> dict:
    from stacks import pip_bundling

    python = pip_bundling.lambda_python()
    runtime_sdk = workdir / "runtime-boto3"
    if not runtime_sdk.exists():
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                        str(runtime_sdk), "boto3"], check=True)
        pip_bundling.compile_bytecode(str(runtime_sdk), python)
    report = {}
    for function in FUNCTIONS:
        compiled = workdir / function
        if not (compiled / "lambdas").exists():
            try:
                pip_bundling.bundle(function, str(compiled), platforms=HOST_PLATFORMS)
            except subprocess.CalledProcessError:
                report[function] = None  # a pinned wheel exists for the Lambda platform only
                continue
        plain = workdir / f"{function}-no-bytecode"
        if not plain.exists():
            shutil.copytree(compiled, plain, ignore=shutil.ignore_patterns("__pycache__"))
        module = f"lambdas.{function}.handler"
        report[function] = {
            "without_bytecode_s": _best_import_seconds(python, [plain, runtime_sdk], module),
            "with_bytecode_s": _best_import_seconds(python, [compiled, runtime_sdk], module),
        }
    return report


def local_responsiveness(system) -> dict:
    """``GET /studies`` every 0.5 s while a 2,000-instance study is written and counted."""
    from dicomshare_aws import index_store

    dynamodb = system.client("dynamodb")
    items = _ct_items(STUDY_INSTANCES)
    latencies: list[float] = []
    statuses: list[int] = []  # API Gateway's own answers: 502, or 504 past 29 s
    dropped: list[str] = []  # no answer at all: what must never happen
    done = threading.Event()

    def list_studies():
        started = time.monotonic()
        request = urllib.request.Request(system.api_url + "/studies?limit=10",
                                         headers={"Authorization": f"Bearer {system.admin_token}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
            latencies.append(time.monotonic() - started)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
        except OSError as error:
            dropped.append(repr(error))

    callers: list[threading.Thread] = []

    def call_every_half_second():
        while not done.is_set():
            caller = threading.Thread(target=list_studies)
            caller.start()
            callers.append(caller)
            done.wait(0.5)

    started = time.monotonic()
    ticker = threading.Thread(target=call_every_half_second)
    ticker.start()
    for i in range(0, len(items), 25):
        dynamodb.batch_write_item(RequestItems={system.resources.table_name: [
            {"PutRequest": {"Item": index_store.to_attribute_values(item)}} for item in items[i:i + 25]]})
    system.wait_idle(timeout=1800)
    counted_after = time.monotonic() - started
    done.set()
    ticker.join()
    for caller in callers:
        caller.join()
    return {"requests": len(latencies) + len(statuses) + len(dropped), "error_statuses": statuses,
            "unanswered": len(dropped),
            "p50_s": statistics.median(latencies), "max_s": max(latencies), "counted_after_s": counted_after}


def main() -> None:
    from dicomshare.settings import Partner, Settings
    from dicomshare_local.system import LocalSystem

    workdir = Path(os.environ.get("BENCH_SCALE_DIR", Path(tempfile.gettempdir()) / "dicomshare-bench-scale"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(partners=(Partner(id="st-mary-pacs"),))

    with tempfile.TemporaryDirectory() as state, LocalSystem(Path(state), settings=settings) as system:
        local = local_responsiveness(system)
        system.disable_event_sources()
        wcu = write_units(system)
    hottest = max(wcu["instance_partition"], wcu["study_partition"], wcu["busiest_mark_partition"])
    print("== write units per instance (DynamoDB: 1,000 WCU/s per partition)")
    print(f"instance item: {wcu['instance_item_bytes']:.0f} bytes (one write unit up to 1,024: "
          f"{'met' if wcu['instance_item_bytes'] <= 1024 else 'missed'}; the viewer's metadata is an S3 object); "
          f"{wcu['instances']} instances counted in batches of 100")
    print(f"{'partition':<28}{'WCU/instance':>14}{'files/s at 1,000 WCU':>24}")
    for label, key in (("INSTANCES#<uid>", "instance_partition"), ("STUDY#<uid>", "study_partition")):
        print(f"{label + (' (hottest)' if wcu[key] == hottest else ''):<28}{wcu[key]:>14.2f}"
              f"{WCU_PER_PARTITION / max(wcu[key], 1e-9):>24.0f}")
    print(f"{'COUNTED#<uid>#<n> (busiest)':<28}{wcu['busiest_mark_partition']:>14.2f}"
          f"{WCU_PER_PARTITION / wcu['busiest_mark_partition']:>24.0f}   ({wcu['mark_partitions']} partitions)")
    print(f"{'RECONCILE (all studies)':<28}{wcu['reconcile_partition']:>14.3f}"
          f"{WCU_PER_PARTITION / max(wcu['reconcile_partition'], 1e-9):>24.0f}")
    put = units(wcu["instance_item_bytes"])
    print(f"hottest partition: {hottest:.2f} WCU/instance, {WCU_PER_PARTITION / hottest:.0f} files/s per study; "
          f"the ingest function's put of the instance item: {put} (on INSTANCES#<uid>; counting adds "
          f"{wcu['study_partition']:.2f} on STUDY#<uid>); before issue 14: ~{OLD_UNITS_PER_INSTANCE} "
          f"(~{WCU_PER_PARTITION // OLD_UNITS_PER_INSTANCE} files/s); target <= 3: "
          + ("met" if hottest <= 3 else "missed"))

    print("\n== cold import of lambdas.<function>.handler, CPython 3.12 (Lambda init phase: 10 s)")
    print(f"{'function':<12}{'no bytecode':>14}{'bytecode':>12}{'speed-up':>10}")
    for function, figures in cold_imports(workdir).items():
        if figures is None:
            print(f"{function:<12}{'(a pinned wheel has no build for this machine: not measured)':>36}")
            continue
        without, with_ = figures["without_bytecode_s"], figures["with_bytecode_s"]
        print(f"{function:<12}{without:>13.3f}s{with_:>11.3f}s{without / with_:>9.1f}x")

    print(f"\n== local system: GET /studies every 0.5 s while {STUDY_INSTANCES} instances are counted "
          f"(API Gateway: {API_GATEWAY_SECONDS} s)")
    print(f"{local['requests']} requests, {local['unanswered']} without an answer, "
          f"{len(local['error_statuses'])} answered with an error status {sorted(set(local['error_statuses']))}; "
          f"latency p50 "
          f"{local['p50_s']:.2f} s, max {local['max_s']:.2f} s; study counted after {local['counted_after_s']:.0f} s")

    print("\n== redemption response size (Lambda: 6 MB response; target: < 1 MB per response)")
    print("measured by the redemption work of issue 14 (constant-size /redeem): python -m bench redeem")


if __name__ == "__main__":
    main()
