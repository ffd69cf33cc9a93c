"""S3 rewrite against a moto server over real HTTP: small objects in one PUT, large ones as
a multipart upload whose pixel data is copied server-side."""

from __future__ import annotations

import io
import threading
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.awsrequest import AWSResponse
import numpy as np
import pydicom
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from dicomshare import index, profile
from dicomshare.deidentify import deidentify_header
from dicomshare.settings import Settings
from dicomshare.validation import DeidentificationRefused
from dicomshare_aws import s3_deidentify
from dicomshare_aws.s3_deidentify import deidentify_object

SECRET = b"0123456789abcdef0123456789abcdef"
SRC, DST = "ingest", "deid"


@pytest.fixture(scope="module")
def s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=SRC)
    client.create_bucket(Bucket=DST)
    yield client
    server.stop()


def dicom_bytes(frames: int, rows: int = 512, encapsulated: bool = False, sop_instance_uid: str | None = None,
                seed: int = 7) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.1"
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "SECRETPATIENT", "Doe^Jane"
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    pixels = np.random.default_rng(seed).integers(0, 65535, size=frames * rows * rows, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    if encapsulated:
        frame_bytes = len(pixels) // frames
        ds.PixelData = pydicom.encaps.encapsulate(
            [pixels[i * frame_bytes : (i + 1) * frame_bytes] for i in range(frames)]
        )
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    else:
        ds.PixelData = pixels
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rewrite(s3, key: str, data: bytes):
    s3.put_object(Bucket=SRC, Key=key, Body=data)
    return deidentify_object(
        s3, SRC, key, DST,
        lambda plan: index.deidentified_object_key(plan.study_instance_uid, plan.series_instance_uid, plan.sop_instance_uid),
        profile=profile.named("clinical"), secret=SECRET, settings=Settings(), partner="partner", size=len(data),
    )


def expected_output(data: bytes) -> bytes:
    plan = deidentify_header(io.BytesIO(data), profile=profile.named("clinical"), secret=SECRET, settings=Settings(), partner="partner")
    return plan.new_header + data[plan.pixel_offset : plan.pixel_end]


def test_small_object_single_put(s3):
    data = dicom_bytes(frames=1, rows=64)
    result = rewrite(s3, "partner/small.dcm", data)
    body = s3.get_object(Bucket=DST, Key=result.key)["Body"].read()
    assert body == expected_output(data)
    assert not result.multipart and result.sha256 is not None and result.size == len(body)
    assert result.key.startswith("studies/2.25.") and b"SECRETPATIENT" not in body


@pytest.mark.parametrize("encapsulated", [False, True], ids=["native", "encapsulated"])
def test_large_object_multipart_copies_pixel_data_server_side(s3, monkeypatch, encapsulated):
    monkeypatch.setattr(s3_deidentify, "COPY_PART_BYTES", 6 * 1024**2)
    data = dicom_bytes(frames=24, encapsulated=encapsulated)
    assert len(data) >= 12 * 1024**2
    result = rewrite(s3, f"partner/large-{encapsulated}.dcm", data)
    body = s3.get_object(Bucket=DST, Key=result.key)["Body"].read()
    assert body == expected_output(data)
    assert result.multipart and result.sha256 is None and result.size == len(body)
    assert result.bytes_read < len(data) // 2
    assert pydicom.dcmread(io.BytesIO(body)).PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData
    assert s3.list_multipart_uploads(Bucket=DST).get("Uploads", []) == []


@pytest.mark.parametrize("frames, other_frames", [(1, 1), (24, 25)], ids=["single-put", "multipart"])
def test_first_stored_instance_wins(s3, monkeypatch, frames, other_frames):
    """The same file again writes nothing; another file claiming the same SOP Instance UID
    is refused and the stored instance does not change. Single-put outputs are compared
    byte for byte (here: other pixels only); multipart outputs by size and header."""
    monkeypatch.setattr(s3_deidentify, "COPY_PART_BYTES", 6 * 1024**2)
    uid = generate_uid()
    first = rewrite(s3, f"partner/first-{frames}.dcm", dicom_bytes(frames=frames, sop_instance_uid=uid))
    stored = s3.get_object(Bucket=DST, Key=first.key)["Body"].read()
    again = rewrite(s3, f"partner/again-{frames}.dcm", dicom_bytes(frames=frames, sop_instance_uid=uid))
    assert (again.key, again.size, again.etag) == (first.key, first.size, first.etag)
    with pytest.raises(DeidentificationRefused) as refused:
        rewrite(s3, f"partner/other-{frames}.dcm", dicom_bytes(frames=other_frames, sop_instance_uid=uid, seed=8))
    assert refused.value.reason == s3_deidentify.CONFLICTING_INSTANCE
    versions = s3.list_object_versions(Bucket=DST, Prefix=first.key).get("Versions", [])
    assert len(versions) <= 1 and s3.get_object(Bucket=DST, Key=first.key)["Body"].read() == stored
    assert s3.list_multipart_uploads(Bucket=DST).get("Uploads", []) == []


def test_refused_object_writes_nothing(s3):
    data = dicom_bytes(frames=20)
    truncated = data[: len(data) - 1000]
    s3.put_object(Bucket=SRC, Key="partner/truncated.dcm", Body=truncated)
    before = s3.list_objects_v2(Bucket=DST).get("KeyCount", 0)
    with pytest.raises(DeidentificationRefused) as refused:
        deidentify_object(
            s3, SRC, "partner/truncated.dcm", DST, lambda plan: "never",
            profile=profile.named("clinical"), secret=SECRET, settings=Settings(), partner="partner", size=len(truncated),
        )
    assert refused.value.reason == "truncated"
    assert s3.list_objects_v2(Bucket=DST).get("KeyCount", 0) == before


def test_source_overwritten_mid_rewrite_aborts_the_upload(s3):
    data = dicom_bytes(frames=24)
    s3.put_object(Bucket=SRC, Key="partner/overwritten.dcm", Body=data)

    def key_after_overwrite(plan):
        s3.put_object(Bucket=SRC, Key="partner/overwritten.dcm", Body=data[:-2] + b"\x00\x00")
        return "studies/overwritten.dcm"

    with pytest.raises(Exception):
        deidentify_object(
            s3, SRC, "partner/overwritten.dcm", DST, key_after_overwrite,
            profile=profile.named("clinical"), secret=SECRET, settings=Settings(), partner="partner", size=len(data),
        )
    assert s3.list_multipart_uploads(Bucket=DST).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=DST, Prefix="studies/overwritten").get("KeyCount", 0) == 0


class PartCopies:
    """botocore ``before-send`` hook on UploadPartCopy: holds the first ``together`` copies
    until that many are in flight at once (a barrier: copies made one after another break
    it), and answers the copy of part ``fail_part`` with S3's 500 error."""

    def __init__(self, client, together: int = 0, fail_part: int | None = None):
        self.barrier = threading.Barrier(together, timeout=20) if together else None
        self.fail_part = fail_part
        self.parts: list[int] = []
        client.meta.events.register("before-send.s3.UploadPartCopy", self._send)

    def _send(self, request, **_):
        number = int(parse_qs(urlsplit(request.url).query)["partNumber"][0])
        self.parts.append(number)
        if self.barrier is not None and len(self.parts) <= self.barrier.parties:
            self.barrier.wait()
        if number == self.fail_part:
            body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            return AWSResponse(request.url, 500, {}, _Raw(body))
        return None


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


def _client_like(s3):
    return boto3.client("s3", endpoint_url=s3.meta.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_part_copies_run_in_parallel(s3, monkeypatch):
    monkeypatch.setattr(s3_deidentify, "COPY_PART_BYTES", 5 * 1024**2)
    client = _client_like(s3)
    copies = PartCopies(client, together=3)
    data = dicom_bytes(frames=40)
    result = rewrite(client, "partner/parallel.dcm", data)
    assert len(copies.parts) == 4 and sorted(copies.parts) == list(range(2, 2 + len(copies.parts)))
    assert s3.get_object(Bucket=DST, Key=result.key)["Body"].read() == expected_output(data)


def test_a_failed_part_copy_aborts_the_upload(s3, monkeypatch):
    monkeypatch.setattr(s3_deidentify, "COPY_PART_BYTES", 5 * 1024**2)
    monkeypatch.setattr(s3_deidentify, "COPY_CONCURRENCY", 1)
    client = _client_like(s3)
    copies = PartCopies(client, fail_part=3)
    data = dicom_bytes(frames=40, seed=11)
    with pytest.raises(Exception):
        rewrite(client, "partner/failed-copy.dcm", data)
    assert 5 not in copies.parts, "copies not yet started are cancelled (one worker: at most part 4 had begun)"
    assert s3.list_multipart_uploads(Bucket=DST).get("Uploads", []) == []
