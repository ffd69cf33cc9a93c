"""Instance metadata objects: the viewer's metadata of each de-identified instance, stored
beside it in the de-identified bucket (:func:`dicomshare.index.metadata_object_key`).

The ingest side writes the object (:func:`store`) after the instance's DICOM object and
**before** its instance item, so an indexed instance never points at missing metadata;
the engine's output is deterministic, so a retried or redelivered object rewrites the same
bytes. The bucket's default encryption (SSE-KMS with the de-identified bucket's key)
applies, as for the DICOM object; the key ends ``.json``, so the preview notification
(suffix ``.dcm``) never fires on it, nor may the preview function read it. The
metadata object is never written for an instance the engine refused: another file
claiming a stored SOP Instance UID is quarantined before this write, so the object always
describes the stored instance.

The share API reads one page's objects (:func:`read_many`) in parallel, at most
:data:`READERS` at once (boto3 clients are thread-safe), and only for the instance items
the share owns. An object that cannot be read (missing, denied, not JSON) is ``None``: the
page serves that entry from the instance item's own fields
(:func:`dicomshare.manifest.naturalized`) and logs its UIDs only. No pydicom here: the
API imports this module, and its cold start stays small.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from botocore.exceptions import BotoCoreError, ClientError

from dicomshare import index

CONTENT_TYPE = "application/dicom+json"
READERS = 10
"""Metadata objects read at once by one API request: botocore's connection pool holds 10."""


def store(s3_client: Any, bucket: str, item: dict[str, Any], metadata: str) -> None:
    """Write ``metadata`` (:func:`dicomshare.index_items.dicom_json`, ASCII) as the metadata
    object of the instance item ``item``."""
    s3_client.put_object(Bucket=bucket, Key=_key(item), Body=metadata.encode(), ContentType=CONTENT_TYPE)


def read_many(s3_client: Any, bucket: str, items: Iterable[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The PS3.18 F.2 metadata of each instance item, in order; ``None`` for an object that
    cannot be read or parsed."""
    keys = [_key(i) for i in items]
    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=min(READERS, len(keys))) as pool:
        return list(pool.map(lambda key: _read(s3_client, bucket, key), keys))


def _read(s3_client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        metadata = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ClientError, BotoCoreError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def _key(item: dict[str, Any]) -> str:
    return index.metadata_object_key(item["study_uid"], item["series_uid"], item["sop_instance_uid"])
