"""Demo data for the local system: one patient with a prior and a current CT study (the
current one a generated ≥100-slice series), plus DICOM files that pydicom ships; uploaded
as the first configured partner, exactly as a partner would."""

from __future__ import annotations

import datetime
import io
import json
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHIPPED_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "rtdose.dcm")
PATIENT = {"PatientName": "DEMO^JANE^Q", "PatientID": "DEMO-0001", "PatientBirthDate": "19700101",
           "PatientSex": "F", "InstitutionName": "Demo General Hospital",
           "ReferringPhysicianName": "WHO^DR^SENT"}


def ct_series(slices: int, study_date: str, description: str, size: int = 512) -> Iterator[Dataset]:
    """A synthetic CT series of one patient: an elliptical body with two organs, in HU."""
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    for n in range(slices):
        z = n / max(slices - 1, 1)
        image = np.full((size, size), -1000, dtype=np.int16)
        image[(xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1] = 40
        image[((xx + 0.35) / 0.25) ** 2 + (yy / (0.3 + 0.1 * np.sin(np.pi * z))) ** 2 < 1] = -800
        image[((xx - 0.3) / 0.22) ** 2 + ((yy + 0.1) / 0.2) ** 2 < 1] = 60 + int(40 * z)
        image[(xx / 0.08) ** 2 + ((yy - 0.45) / 0.08) ** 2 < 1] = 700
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.update(PATIENT)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = f"ACC{study_date}"
        ds.StudyID = "1"
        ds.StudyDescription = description
        ds.SeriesDescription = "Axial 2.5 mm"
        ds.Modality = "CT"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SeriesNumber = 2
        ds.InstanceNumber = n + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [-250.0, -250.0, -2.5 * n]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.5
        ds.SliceLocation = -2.5 * n
        ds.PixelSpacing = [500 / size, 500 / size]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = (image.astype(np.int32) + 1024).astype(np.int16).tobytes()
        yield ds


def part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def demo_objects() -> Iterator[tuple[str, bytes]]:
    """(relative key, bytes) of every demo object; keys name nobody."""
    today = datetime.date.today()
    studies = ((today - datetime.timedelta(days=400), "CT ABDOMEN (prior)", 40),
               (today, "CT ABDOMEN WITH CONTRAST", 120))
    for number, (date, description, slices) in enumerate(studies, 1):
        for n, ds in enumerate(ct_series(slices, date.strftime("%Y%m%d"), description)):
            yield f"ct-study-{number}/slice-{n:04d}.dcm", part10_bytes(ds)
    for name in SHIPPED_FILES:
        yield f"pydicom-test-files/{name}", Path(get_testdata_file(name)).read_bytes()


def load(system) -> str:
    """Upload the demo objects as the first partner, wait for indexing, share the largest
    study (with its prior) and return the clinician link."""
    s3 = system.client("s3")
    prefix = system.connection()["partner_prefix"]
    for key, body in demo_objects():
        s3.put_object(Bucket=system.resources.ingest_bucket, Key=prefix + key, Body=body)
    system.wait_idle(timeout=600)
    studies = api(system, "GET", "/studies")["studies"]
    largest = max(studies, key=lambda s: s["instance_count"])
    share = api(system, "POST", "/shares", {"study_uid": largest["study_uid"], "expires_in": 24 * 3600,
                                            "recipient": "demo", "include_priors": True})
    return share["url"]


def api(system, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        system.api_url + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {system.admin_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
