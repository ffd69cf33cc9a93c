"""Identities scoped per partner (PS3.15 E.3.6 keyed mapping): two hospitals with the same
MRN or the same original UIDs never meet; an object without Patient ID takes its study's
patient; the output records the derivation."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomshare import profile as profiles
from dicomshare.deidentify import deidentify_file, deidentify_header
from dicomshare.deidentify.dataset_path import rewrite_dataset
from dicomshare.deidentify.encoded_path import rewrite_encoded
from dicomshare.deidentify.identities import (
    IDENTITIES_VERSION,
    date_offset_days,
    new_uid,
    patient_pseudonym,
    study_pseudonym,
)
from dicomshare.deidentify.plan import Request
from dicomshare.settings import Settings

from test_deidentify import base_dataset, to_file

SECRET = b"i" * 32
CLINICAL = profiles.named("clinical")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _output(path: Path, partner: str, study_patient=None) -> bytes:
    out = io.BytesIO()
    deidentify_file(path, out, profile=CLINICAL, secret=SECRET, partner=partner,
                    study_patient=study_patient)
    return out.getvalue()


def _read(output: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(output))


def _dated(ds: Dataset) -> Dataset:
    ds.StudyDate = "20200110"
    ds.AcquisitionDateTime = "20200110083000"
    return ds


def _shift(ds: Dataset) -> timedelta:
    return date(int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]), int(ds.StudyDate[6:])) - date(2020, 1, 10)


def test_same_mrn_and_uids_at_two_partners_never_meet(tmp_path):
    """Hospital A's Alice and hospital B's Bob: both Patient ID LEAKPATIENTID, both with the
    same original UIDs (a partner re-using another's Study Instance UID)."""
    src = to_file(_dated(base_dataset()), tmp_path / "a.dcm")
    a_bytes, b_bytes = _output(src, "hospital-a"), _output(src, "hospital-b")
    a, b = _read(a_bytes), _read(b_bytes)
    assert a.PatientID != b.PatientID and str(a.PatientName) != str(b.PatientName)
    assert _shift(a) != _shift(b)
    for keyword in UID_KEYWORDS:
        assert a[keyword].value != b[keyword].value
        assert a[keyword].value.encode() not in b_bytes and b[keyword].value.encode() not in a_bytes
    assert a.PatientID.encode() not in b_bytes and b.PatientID.encode() not in a_bytes
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.PatientID == patient_pseudonym(SECRET, "hospital-a", "", "LEAKPATIENTID")
    assert _shift(a) == timedelta(days=date_offset_days(SECRET, a.PatientID))


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_same_partner_same_bytes_on_every_upload(tmp_path, transfer_syntax):
    src = to_file(_dated(base_dataset()), tmp_path / "a.dcm", transfer_syntax)
    assert _output(src, "hospital-a") == _output(src, "hospital-a")
    again = to_file(_dated(base_dataset()), tmp_path / "again.dcm", transfer_syntax)
    assert _output(again, "hospital-a") == _output(src, "hospital-a")


def test_issuer_of_patient_id_tells_patients_apart(tmp_path):
    """One partner (a regional archive) holding two hospitals' patients with the same MRN."""
    first, second, none = base_dataset(), base_dataset(sop_uid="1.2.3.999.6"), base_dataset(sop_uid="1.2.3.999.7")
    first.IssuerOfPatientID, second.IssuerOfPatientID = "HOSPITAL-NORTH", "HOSPITAL-SOUTH"
    outputs = [_read(_output(to_file(ds, tmp_path / f"{n}.dcm"), "archive"))
               for n, ds in enumerate((first, second, none))]
    assert len({ds.PatientID for ds in outputs}) == 3
    assert outputs[0].PatientID == patient_pseudonym(SECRET, "archive", "HOSPITAL-NORTH", "LEAKPATIENTID")
    assert all("IssuerOfPatientID" not in ds for ds in outputs)


def test_fields_cannot_be_shifted_into_each_other():
    assert patient_pseudonym(SECRET, "a", "b", "c") != patient_pseudonym(SECRET, "a", "", "bc")
    assert patient_pseudonym(SECRET, "a-b", "", "c") != patient_pseudonym(SECRET, "a", "b", "c")
    assert new_uid(SECRET, "a", "1.2") != new_uid(SECRET, "a1", ".2")
    assert study_pseudonym(SECRET, "a", "1.2.3") != patient_pseudonym(SECRET, "a", "", "1.2.3")


def _without_patient(absent: bool = False, **uids) -> Dataset:
    """An object whose Patient ID (Type 2) is empty, or ``absent``."""
    ds = _dated(base_dataset(**uids))
    if absent:
        del ds.PatientID
    else:
        ds.PatientID = ""
    return ds


@pytest.mark.parametrize("absent", [False, True])
def test_object_without_patient_id_takes_its_studys_patient(tmp_path, absent):
    with_id = _read(_output(to_file(_dated(base_dataset()), tmp_path / "a.dcm"), "hospital-a"))
    asked = []

    def study_patient(study_uid: str) -> str | None:
        asked.append(study_uid)
        return with_id.PatientID if study_uid == with_id.StudyInstanceUID else None

    src = to_file(_without_patient(absent, sop_uid="1.2.3.999.8"), tmp_path / "b.dcm")
    output = _output(src, "hospital-a", study_patient)
    without_id = _read(output)
    assert asked == [with_id.StudyInstanceUID]
    assert str(without_id.PatientName) == with_id.PatientID
    assert ("PatientID" not in without_id) if absent else (without_id.PatientID == with_id.PatientID)
    assert without_id.StudyDate == with_id.StudyDate and without_id.StudyInstanceUID == with_id.StudyInstanceUID
    assert b"LEAK" not in output


def test_object_without_patient_id_of_an_unknown_study_is_keyed_from_its_study(tmp_path):
    first = _read(_output(to_file(_without_patient(), tmp_path / "a.dcm"), "hospital-a", lambda uid: None))
    second = _read(_output(to_file(_without_patient(sop_uid="1.2.3.999.8"), tmp_path / "b.dcm"), "hospital-a"))
    other = _read(_output(to_file(_without_patient(study_uid="1.2.3.999.9"), tmp_path / "c.dcm"), "hospital-a"))
    assert first.PatientID == second.PatientID == study_pseudonym(SECRET, "hospital-a", "1.2.3.999.1")
    assert other.PatientID != first.PatientID
    assert first.PatientID != patient_pseudonym(SECRET, "hospital-a", "", "LEAKPATIENTID")


def test_a_study_patient_that_is_not_a_pseudonym_is_an_error(tmp_path):
    src = to_file(_without_patient(), tmp_path / "a.dcm")
    with pytest.raises(ValueError):
        _output(src, "hospital-a", lambda uid: "DOE^JOHN")


@pytest.mark.parametrize("path_name", ["encoded", "dataset"])
def test_a_failing_look_up_fails_as_it_fails_never_as_a_refusal(tmp_path, path_name):
    """The pipeline's look-up is a DynamoDB call: its error must be retried, not quarantined."""
    data = to_file(_without_patient(), tmp_path / "a.dcm").read_bytes()
    rewrite = rewrite_encoded if path_name == "encoded" else rewrite_dataset

    def study_patient(study_uid: str) -> str | None:
        raise ConnectionError("index unavailable")

    with pytest.raises(ConnectionError):
        rewrite(io.BytesIO(data), len(data), Request(CLINICAL, SECRET, Settings(), "hospital-a", study_patient))


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_both_paths_agree_on_scoped_identities(tmp_path, transfer_syntax):
    ds = _without_patient()
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.999.10"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.StudyDescription = "Follow-up LEAKFAMILY 10.01.2020"
    data = to_file(ds, tmp_path / "a.dcm", transfer_syntax).read_bytes()
    known = patient_pseudonym(SECRET, "hospital-b", "", "OTHERID")
    for partner, study_patient in (("hospital-a", None), ("hospital-b", lambda uid: known)):
        request = Request(CLINICAL, SECRET, Settings(), partner, study_patient)
        encoded = rewrite_encoded(io.BytesIO(data), len(data), request)
        dataset = rewrite_dataset(io.BytesIO(data), len(data), request)
        assert encoded is not None and encoded == dataset
    assert encoded.patient_pseudonym == known


def test_the_output_records_the_derivation(tmp_path):
    src = to_file(base_dataset(), tmp_path / "a.dcm")
    with open(src, "rb") as fp:
        plan = deidentify_header(fp, profile=profiles.named("basic"), secret=SECRET, settings=Settings(),
                                 partner="hospital-a")
    ds = plan.dataset
    assert IDENTITIES_VERSION == "dicomshare identities v2"
    assert list(ds.DeidentificationMethod)[-1] == IDENTITIES_VERSION
    assert all(len(value) <= 64 for value in ds.DeidentificationMethod)


def _deid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "dicomshare"), "deid", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _outputs(folder: Path) -> dict[str, Dataset]:
    """The de-identified files of a run by their (new) SOP Instance UID."""
    return {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, sorted(folder.rglob("*.dcm")))}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_cli_file_without_patient_id_takes_the_patient_of_its_study_in_the_run(tmp_path, jobs):
    src = tmp_path / "in"
    src.mkdir()
    # sorted first, so the run meets the files without Patient ID before the one with it
    to_file(_without_patient(sop_uid="1.2.3.999.21"), src / "a-no-id.dcm")
    to_file(_without_patient(True, sop_uid="1.2.3.999.22"), src / "b-no-id-at-all.dcm")
    to_file(_dated(base_dataset(sop_uid="1.2.3.999.23")), src / "c-with-id.dcm")
    to_file(_without_patient(study_uid="1.2.3.999.30", sop_uid="1.2.3.999.31"), src / "d-alone.dcm")
    (tmp_path / "secret").write_text("k" * 64)
    result = _deid(str(src), str(tmp_path / "out"), "--secret-file", str(tmp_path / "secret"),
                   "--partner", "hospital-a", "--jobs", jobs, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 de-identified, 0 duplicate, 0 refused" in result.stdout
    secret = b"k" * 64
    out = _outputs(tmp_path / "out")
    new = {n: new_uid(secret, "hospital-a", f"1.2.3.999.{n}") for n in (21, 22, 23, 31)}
    expected = patient_pseudonym(secret, "hospital-a", "", "LEAKPATIENTID")
    assert out[new[23]].PatientID == out[new[21]].PatientID == expected
    assert str(out[new[22]].PatientName) == expected and "PatientID" not in out[new[22]]
    assert out[new[21]].StudyDate == out[new[22]].StudyDate == out[new[23]].StudyDate
    assert out[new[31]].PatientID == study_pseudonym(secret, "hospital-a", "1.2.3.999.30")


def test_cli_partner_scopes_identities_and_is_checked(tmp_path):
    src = to_file(_dated(base_dataset()), tmp_path / "a.dcm")
    (tmp_path / "secret").write_text("k" * 64)
    patients = set()
    for partner in ("local", "hospital-b"):
        args = ["--partner", partner] if partner != "local" else []
        result = _deid(str(src), str(tmp_path / partner), "--secret-file", str(tmp_path / "secret"), *args,
                       cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        (ds,) = _outputs(tmp_path / partner).values()
        assert ds.PatientID == patient_pseudonym(b"k" * 64, partner, "", "LEAKPATIENTID")
        patients.add(ds.PatientID)
    assert len(patients) == 2
    for bad in ("Hospital A", "-x", "a", "local\n"):
        result = _deid(str(src), str(tmp_path / "bad"), "--partner", bad, cwd=tmp_path)
        assert result.returncode == 2 and "--partner" in result.stderr
