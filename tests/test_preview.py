"""Preview rendering (pydicom's shipped files and generated ones) and the preview Lambda
on the local system: frame by frame over ranged S3 reads, "no preview" without retries."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from dicomshare import index, preview
from dicomshare_local import demo

SHIPPED = [
    ("CT_small.dcm", "L"),
    ("MR_small_RLE.dcm", "L"),
    ("MR_small_jp2klossless.dcm", "L"),
    ("MR_small_jpeg_ls_lossless.dcm", "L"),
    ("JPEGLSNearLossless_16.dcm", "L"),
    ("JPEG2000.dcm", "L"),
    ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),
    ("SC_rgb_rle_16bit.dcm", "RGB"),
    ("examples_jpeg2k.dcm", "RGB"),
    ("examples_ybr_color.dcm", "RGB"),
    ("examples_palette.dcm", "RGB"),
    ("rtdose_rle.dcm", "L"),
]


def png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


def part10(ds: Dataset) -> bytes:
    return demo.part10_bytes(ds)


def multiframe(frames: int, size: int = 64) -> Dataset:
    """An MR multi-frame file whose frame ``n`` is uniformly ``n * 100``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = frames * 50, frames * 100
    pixels = np.repeat(np.arange(frames, dtype=np.uint16)[:, None, None] * 100, size * size).reshape(frames, size, size)
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.mark.parametrize("name, mode", SHIPPED)
def test_shipped_files_render_8_bit_previews(name, mode):
    with open(get_testdata_file(name), "rb") as f:
        image = png(preview.render_file(f))
    assert image.mode == mode and max(image.size) <= preview.MAX_SIZE


def test_color_is_converted_from_ybr():
    with open(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), "rb") as f:
        image = np.asarray(png(preview.render_file(f)))
    assert image[5, 5].tolist() == pytest.approx([255, 0, 0], abs=3)


def test_ct_window_from_the_file():
    ds = next(demo.ct_series(1, "20240101", "CT", size=64))
    image = np.asarray(png(preview.render_file(io.BytesIO(part10(ds)))))
    assert image[0, 0] == 0  # air, -1000 HU, below the 40/400 window
    assert abs(int(image[32, 32]) - 128) <= 2  # soft tissue, 40 HU, the window centre


def test_modality_default_window_and_percentiles_when_the_file_has_none():
    ds = next(demo.ct_series(1, "20240101", "CT", size=64))
    del ds.WindowCenter, ds.WindowWidth
    ct = np.asarray(png(preview.render_file(io.BytesIO(part10(ds)))))
    assert abs(int(ct[32, 32]) - 128) <= 2  # CT default 40/400
    ds.Modality = "OT"
    other = np.asarray(png(preview.render_file(io.BytesIO(part10(ds)))))
    assert other.min() == 0 and other.max() == 255


def test_monochrome1_is_inverted_and_large_images_are_downscaled():
    ds = next(demo.ct_series(1, "20240101", "CT", size=1024))
    ds.PhotometricInterpretation = "MONOCHROME1"
    image = png(preview.render_file(io.BytesIO(part10(ds))))
    assert image.size == (512, 512)
    assert np.asarray(image)[0, 0] == 255


def test_middle_frame_of_a_multiframe_file_is_shown():
    ds = multiframe(9)
    image = np.asarray(png(preview.render_file(io.BytesIO(part10(ds)))))
    # frame 4 of 0..8 holds 400; window 450/900 maps it just below the middle.
    assert abs(int(image.mean()) - round((400 - (450 - 0.5 - 449)) / 899 * 255)) <= 1


def test_files_without_a_renderable_frame():
    with open(get_testdata_file("rtplan.dcm"), "rb") as f, pytest.raises(preview.NoPreview) as refused:
        preview.render_file(f)
    assert refused.value.reason == "not_an_image"
    with open(get_testdata_file("JPEG2000.dcm"), "rb") as f:
        data = f.read()
    with pytest.raises(preview.NoPreview) as refused:
        preview.render_file(io.BytesIO(data[:-4000] + bytes(3990) + data[-10:]))
    assert refused.value.reason == "undecodable"


def test_preview_lambda_renders_frame_by_frame_and_skips_undecodable_files(local_system, caplog):
    s3 = local_system.client("s3")
    bucket = local_system.resources.deid_bucket
    large = multiframe(200, size=256)  # 26 MB of pixel data
    renderable = index.deidentified_object_key(large.StudyInstanceUID, large.SeriesInstanceUID, large.SOPInstanceUID)
    s3.put_object(Bucket=bucket, Key=renderable, Body=part10(large))
    plan = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    not_an_image = index.deidentified_object_key(study, series, sop)
    s3.put_object(Bucket=bucket, Key=not_an_image, Body=part10(plan))
    local_system.wait_idle()

    preview_key = index.preview_object_key(large.StudyInstanceUID, large.SeriesInstanceUID, large.SOPInstanceUID)
    stored = s3.get_object(Bucket=bucket, Key=preview_key)
    assert stored["CacheControl"] == "private, max-age=31536000, immutable"
    image = png(stored["Body"].read())
    assert image.size == (256, 256)
    s3.copy_object(Bucket=bucket, Key=renderable, CopySource={"Bucket": bucket, "Key": renderable},
                   MetadataDirective="REPLACE")  # a second notification of the same instance
    local_system.wait_idle()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=index.preview_object_key(study, series, sop))
    outcomes = [record.__dict__ for record in caplog.records if record.getMessage() == "preview"]
    rendered = [o for o in outcomes if o.get("outcome") == "rendered" and o["size"] > 20_000_000]
    assert len(rendered) == 1 and any(o.get("outcome") == "exists" for o in outcomes)  # rendered once
    assert rendered[0]["bytes_read"] < rendered[0]["size"] / 10
    assert any(o.get("outcome") == "no_preview" and o.get("reason") == "not_an_image" for o in outcomes)
    dlq = local_system.client("sqs").get_queue_attributes(
        QueueUrl=local_system.resources.preview_dlq_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert dlq["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert sop not in json.dumps(outcomes)


def test_read_errors_propagate_for_a_retry():
    class Unavailable(Exception):
        pass

    class Failing(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 200:
                raise Unavailable("storage unavailable")
            return super().read(size)

    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        data = f.read()
    with pytest.raises(Unavailable):
        preview.render_file(Failing(data), io_errors=(Unavailable,))
    with pytest.raises(preview.NoPreview):
        preview.render_file(Failing(data))
