"""One new de-identified instance -> a PNG preview beside it (``index.preview_object_key``).

Header and one frame are read with ranged GETs (:class:`~dicomshare_aws.s3_reader.S3RangeReader`),
never the whole object. An instance that cannot be rendered gets no preview (outcome
``no_preview``) and its message succeeds: the page shows "no preview".

Each preview is rendered once: an instance whose preview exists (a duplicate or replayed
notification) is skipped (outcome ``exists``). A preview never changes (instances are
immutable), so it is stored with ``Cache-Control: private, max-age=<1 year>, immutable``:
a browser showing it again under the same presigned URL does not fetch it again.
"""

from __future__ import annotations

import re

from botocore.exceptions import BotoCoreError, ClientError

from dicomshare import index, preview
from dicomshare_aws.s3_events import S3Object
from dicomshare_aws.s3_reader import S3RangeReader

PREVIEW_CACHE_CONTROL = "private, max-age=31536000, immutable"
INSTANCE_KEY = re.compile(r"^studies/([0-9.]+)/series/([0-9.]+)/instances/([0-9.]+)\.dcm$")


def preview_object(s3, obj: S3Object, deid_bucket: str) -> dict[str, object]:
    """Render and store the preview of the new object ``obj``; what a log line may say
    about it: ``outcome`` (``ignored`` for anything but an instance of ``deid_bucket``,
    ``exists``, ``no_preview`` with its ``reason``, ``rendered``) and the bytes read."""
    match = INSTANCE_KEY.match(obj.key)
    if obj.bucket != deid_bucket or not match:
        return {"outcome": "ignored"}
    preview_key = index.preview_object_key(*match.groups())
    if _exists(s3, obj.bucket, preview_key):
        return {"outcome": "exists"}
    size = obj.size or s3.head_object(Bucket=obj.bucket, Key=obj.key)["ContentLength"]
    reader = S3RangeReader(s3, obj.bucket, obj.key, int(size))
    try:
        png = preview.render_file(reader, io_errors=(ClientError, BotoCoreError))
    except preview.NoPreview as refusal:
        return {"outcome": "no_preview", "reason": refusal.reason}
    s3.put_object(Bucket=obj.bucket, Key=preview_key, Body=png, ContentType="image/png",
                  CacheControl=PREVIEW_CACHE_CONTROL)
    return {"outcome": "rendered", "bytes_read": reader.bytes_read, "size": int(size)}


def _exists(s3, bucket: str, key: str) -> bool:
    """Whether the object exists (HEAD; a missing key is a 404 given s3:ListBucket)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
