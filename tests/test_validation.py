"""Refusal reasons (dicomshare.validation) on real, deliberately broken files."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from dicomshare import profile, validation
from dicomshare.deidentify import deidentify_header
from dicomshare.settings import Settings
from dicomshare.validation import DeidentificationRefused

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def dataset(**overrides) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.5", "1.2.3.4", "1.2.3.4.1"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(32)
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def reason(data: bytes, settings: Settings = Settings()) -> str:
    with pytest.raises(DeidentificationRefused) as refused:
        deidentify_header(io.BytesIO(data), profile=profile.named("basic"), secret=b"k" * 32, partner="partner",
                          settings=settings)
    return refused.value.reason


def test_reasons():
    assert reason(b"") == validation.EMPTY_OBJECT
    assert reason(b"hello world" * 20) == validation.NOT_DICOM
    assert reason(encode(dataset()), Settings(max_object_bytes=100)) == validation.TOO_LARGE
    assert reason(encode(dataset(Modality=None))) == "missing_required:Modality"
    assert reason(encode(dataset(StudyInstanceUID=None))) == "missing_required:StudyInstanceUID"
    assert reason(encode(dataset(PixelData=None), "1.2.840.10008.1.2.4.100")) == validation.UNSUPPORTED_TRANSFER_SYNTAX
    assert reason(encode(dataset(BurnedInAnnotation="YES"))) == validation.BURNED_IN_ANNOTATION
    assert reason((TEST_FILES / "dicomdirtests" / "DICOMDIR").read_bytes()) == validation.UNSUPPORTED_SOP_CLASS


def test_truncated_native_pixel_data():
    data = encode(dataset())
    assert reason(data[:-1]) == validation.TRUNCATED


def test_truncated_header():
    assert reason((TEST_FILES / "rtplan_truncated.dcm").read_bytes()) == validation.TRUNCATED


def test_encapsulated_pixel_data_must_end_with_a_sequence_delimiter():
    ds = dataset()
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    data = encode(ds, RLELossless)
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    assert reason(data[:-8]) == validation.TRUNCATED
    plan = deidentify_header(io.BytesIO(data), profile=profile.named("basic"), secret=b"k" * 32, partner="partner",
                             settings=Settings())
    assert plan.pixel_end == len(data)


def test_supported_transfer_syntaxes_cover_the_common_codecs():
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5"):
        validation.check_transfer_syntax(uid)


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "reportsi.dcm", "image_dfl.dcm"])
def test_damaged_files_are_refused_never_crash(name):
    """Flipped bytes, cut files and 0xFFFFFFFF lengths (fixed seed): refused with a reason
    or de-identified; any other exception fails the test."""
    rng = random.Random(name)
    data = (TEST_FILES / name).read_bytes()
    settings = Settings(allow_burned_in_annotation=True)
    for _ in range(60):
        damaged = bytearray(data)
        position = rng.randrange(132, min(len(data), 3000))
        choice = rng.randrange(3)
        if choice == 0:
            damaged[position] = rng.randrange(256)
        elif choice == 1:
            damaged = damaged[: rng.randrange(132, len(data))]
        else:
            damaged[position : position + 4] = b"\xff\xff\xff\xff"
        try:
            deidentify_header(io.BytesIO(bytes(damaged)), profile=profile.named("clinical"), secret=b"k" * 32, partner="partner",
                              settings=settings)
        except DeidentificationRefused as refused:
            assert refused.reason.split(":")[0] in {
                validation.TRUNCATED, validation.MALFORMED, validation.MISSING_REQUIRED,
                validation.UNSUPPORTED_TRANSFER_SYNTAX, validation.NOT_DICOM, validation.UNSUPPORTED_SOP_CLASS,
                validation.PIXEL_DATA_LENGTH, validation.BURNED_IN_ANNOTATION, validation.JPEG_METADATA,
                validation.RECOGNIZABLE_VISUAL_FEATURES, validation.OVERLAY_IN_PIXEL_DATA,
            }
