"""Rewrite one S3 object into its de-identified copy without pulling the pixel data through.

The header is read with ranged GETs through :class:`S3RangeReader` (small requests,
growing while reads are sequential) and de-identified by
:func:`dicomshare.deidentify.deidentify_header`. Then:

- objects below :data:`SMALL_OBJECT_BYTES` are fetched with one GET and written with one
  PutObject (with ``ChecksumSHA256``, so S3 verifies the body);
- larger objects become a multipart upload: part 1 is the new header plus enough source
  pixel bytes (ranged GET) to reach S3's 5 MiB minimum part size, every following part is
  an ``UploadPartCopy`` of the source's Pixel Data range (``CopySourceRange``, at most
  :data:`COPY_PART_BYTES` each, ``CopySourceIfMatch`` the ETag that was read), so those
  bytes never pass through the function. The part copies run in parallel, at most
  :data:`COPY_CONCURRENCY` at once (S3 copies each part at a few hundred MB/s at most, so
  a 4 GiB object copied part after part took tens of seconds). Any error cancels the
  copies not yet started and aborts the upload: no orphaned parts.

Integrity, honestly: a server-side copy cannot be hashed without reading it back, so
:attr:`RewriteResult.sha256` is the SHA-256 of the whole output only when the whole output
passed through the function (small objects); for multipart rewrites it is ``None`` and
:attr:`RewriteResult.header_sha256` plus the source ETag (copied with ``If-Match``) and the
output ETag are what is known. The destination bucket's default encryption (SSE-KMS)
applies; no encryption headers are sent and no source metadata is copied.

The first stored instance wins, as in Orthanc and Google's DICOM store: every write is
conditional (``If-None-Match: *``). When an object already holds that SOP Instance UID,
it is compared with this output: the same bytes (an earlier try of this upload, or the
same file uploaded again) make the write a no-op; other bytes (another file claiming the
same SOP Instance UID) refuse the upload as :data:`CONFLICTING_INSTANCE`, so it is
quarantined and the stored instance never changes under its index item. Large outputs
are compared by size and header, since their pixel data was copied server-side and is
not read back.
"""

from __future__ import annotations

import base64
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from botocore.exceptions import ClientError

from dicomshare.deidentify import deidentify_header
from dicomshare.deidentify.plan import Plan
from dicomshare.profile import Profile
from dicomshare.settings import Settings
from dicomshare.validation import CONFLICTING_INSTANCE, DeidentificationRefused
from dicomshare_aws.s3_reader import S3RangeReader

SMALL_OBJECT_BYTES = 8 * 1024**2
MIN_PART_BYTES = 5 * 1024**2
"""S3's minimum size of every part but the last."""
COPY_PART_BYTES = 128 * 1024**2
COPY_CONCURRENCY = 8
"""Part copies in flight at once for one object (boto3 clients are thread-safe; botocore's
connection pool holds 10)."""
CONTENT_TYPE = "application/dicom"


@dataclass(frozen=True)
class RewriteResult:
    """What :func:`deidentify_object` wrote, for the indexer (no identifying value in it)."""

    plan: Plan
    bucket: str
    key: str
    size: int
    """Bytes written (the de-identified object's size)."""
    bytes_read: int
    """Bytes this function fetched from the source object."""
    header_sha256: str
    sha256: str | None
    """SHA-256 of the whole output when it passed through the function; ``None`` for a
    multipart rewrite whose pixel data was copied server-side."""
    etag: str
    multipart: bool


def deidentify_object(
    s3_client: Any,
    src_bucket: str,
    src_key: str,
    dst_bucket: str,
    dst_key_fn: Callable[[Plan], str],
    *,
    profile: Profile,
    secret: bytes,
    settings: Settings,
    partner: str,
    study_patient: Callable[[str], str | None] | None = None,
    size: int,
) -> RewriteResult:
    """De-identify ``s3://src_bucket/src_key`` (``size`` bytes), sent by ``partner``, into ``dst_bucket``.

    ``partner`` and ``study_patient`` as for :func:`dicomshare.deidentify.deidentify_header`.

    ``dst_key_fn(plan)`` names the destination from the de-identified data set (for example
    :func:`dicomshare.index.deidentified_object_key` of the new UIDs). Raises
    :class:`dicomshare.validation.DeidentificationRefused` (nothing written) when the
    object is refused.
    """
    if size < SMALL_OBJECT_BYTES:
        body = s3_client.get_object(Bucket=src_bucket, Key=src_key)["Body"].read()
        plan = deidentify_header(io.BytesIO(body), profile=profile, secret=secret, settings=settings,
                                 partner=partner, study_patient=study_patient, size=len(body))
        pixels = body[plan.pixel_offset : plan.pixel_end] if plan.pixel_offset is not None else b""
        return _put_whole(s3_client, plan, dst_bucket, dst_key_fn(plan), plan.new_header + pixels, len(body))
    reader = S3RangeReader(s3_client, src_bucket, src_key, size)
    plan = deidentify_header(reader, profile=profile, secret=secret, settings=settings,
                             partner=partner, study_patient=study_patient, size=size)
    key = dst_key_fn(plan)
    if plan.pixel_offset is None or plan.output_size < SMALL_OBJECT_BYTES:
        pixels = reader.fetch(plan.pixel_offset, plan.pixel_end) if plan.pixel_offset is not None else b""
        return _put_whole(s3_client, plan, dst_bucket, key, plan.new_header + pixels, reader.bytes_read)
    etag = _multipart_rewrite(s3_client, reader, src_bucket, src_key, dst_bucket, key, plan)
    return RewriteResult(
        plan, dst_bucket, key, plan.output_size, reader.bytes_read,
        hashlib.sha256(plan.new_header).hexdigest(), None, etag, True,
    )


def _put_whole(s3_client: Any, plan: Plan, dst_bucket: str, key: str, output: bytes, bytes_read: int) -> RewriteResult:
    """One PutObject of an output that passed through the function whole; S3 checks its SHA-256."""
    digest = hashlib.sha256(output)
    try:
        etag = s3_client.put_object(
            Bucket=dst_bucket,
            Key=key,
            Body=output,
            ContentType=CONTENT_TYPE,
            ChecksumSHA256=base64.b64encode(digest.digest()).decode("ascii"),
            IfNoneMatch="*",
        )["ETag"]
    except ClientError as error:
        if not _precondition_failed(error):
            raise
        etag = _stored_etag(s3_client, dst_bucket, key, plan.new_header, len(output), output)
    return RewriteResult(
        plan, dst_bucket, key, len(output), bytes_read,
        hashlib.sha256(plan.new_header).hexdigest(), digest.hexdigest(), etag, False,
    )


def _precondition_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412")


def _stored_etag(s3_client: Any, bucket: str, key: str, header: bytes, size: int, output: bytes | None) -> str:
    """The ETag of the object already at ``key`` when it is this output; refuses the
    upload as :data:`CONFLICTING_INSTANCE` when it is not. ``output`` is None for outputs
    assembled server-side: those are compared by size and header only."""
    if output is not None:
        stored = s3_client.get_object(Bucket=bucket, Key=key)
        same = stored["Body"].read() == output
    else:
        stored = s3_client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{len(header) - 1}")
        same = stored["ContentRange"].endswith(f"/{size}") and stored["Body"].read() == header
    if not same:
        raise DeidentificationRefused(CONFLICTING_INSTANCE)
    return stored["ETag"]


def _multipart_rewrite(
    s3_client: Any, reader: S3RangeReader, src_bucket: str, src_key: str, dst_bucket: str, key: str, plan: Plan
) -> str:
    assert plan.pixel_offset is not None
    upload_id = s3_client.create_multipart_upload(Bucket=dst_bucket, Key=key, ContentType=CONTENT_TYPE)["UploadId"]
    try:
        copy_start = min(plan.pixel_offset + max(0, MIN_PART_BYTES - len(plan.new_header)), plan.pixel_end)
        first = plan.new_header + reader.fetch(plan.pixel_offset, copy_start)
        part = s3_client.upload_part(Bucket=dst_bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=first)
        parts = [{"PartNumber": 1, "ETag": part["ETag"]}]
        copy_source = {"Bucket": src_bucket, "Key": src_key}

        def copy_part(number: int, start: int) -> dict:
            end = min(start + COPY_PART_BYTES, plan.pixel_end)
            copied = s3_client.upload_part_copy(
                Bucket=dst_bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=copy_source,
                CopySourceRange=f"bytes={start}-{end - 1}",
                CopySourceIfMatch=reader.etag,
            )
            return {"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]}

        starts = range(copy_start, plan.pixel_end, COPY_PART_BYTES)
        with ThreadPoolExecutor(max_workers=max(1, min(COPY_CONCURRENCY, len(starts)))) as pool:
            copies = [pool.submit(copy_part, number, start) for number, start in enumerate(starts, 2)]
            try:
                parts += [copy.result() for copy in copies]
            except BaseException:
                for copy in copies:
                    copy.cancel()
                raise
        try:
            return s3_client.complete_multipart_upload(
                Bucket=dst_bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )["ETag"]
        except ClientError as error:
            if not _precondition_failed(error):
                raise
    except BaseException:
        s3_client.abort_multipart_upload(Bucket=dst_bucket, Key=key, UploadId=upload_id)
        raise
    s3_client.abort_multipart_upload(Bucket=dst_bucket, Key=key, UploadId=upload_id)
    return _stored_etag(s3_client, dst_bucket, key, plan.new_header, plan.output_size, None)
