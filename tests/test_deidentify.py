"""The de-identification engine on real files: planted identifiers, pydicom's test files,
consistency, determinism and character sets (PS3.15 Annex E)."""

from __future__ import annotations

import io
import re
import subprocess
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomshare import profile as profiles
from dicomshare.deidentify import deidentify_file, deidentify_header
from dicomshare.deidentify.dataset_path import rewrite_dataset
from dicomshare.deidentify.encoded_path import rewrite_encoded
from dicomshare.deidentify.file_meta import IMPLEMENTATION_CLASS_UID
from dicomshare.deidentify.identities import date_offset_days, new_uid, patient_pseudonym
from dicomshare.deidentify.kernel_copy import PAGE_BYTES, SPLICE_PIPE_BYTES
from dicomshare.deidentify.plan import Request
from dicomshare.settings import Settings
from dicomshare.validation import DeidentificationRefused

from conftest import require_tool

SECRET = b"s" * 32
PARTNER = "hospital-a"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def plant(tag: int, vr: str) -> str:
    """A distinctive value for ``tag`` that a leak search can find in raw bytes."""
    ident = f"{tag:08X}"
    return {
        "AE": f"LEAK{ident}",
        "AS": "077Y",
        "CS": f"LEAK{ident}",
        "DA": "19010101",
        "DS": "9876.54321",
        "DT": "19010101120000",
        "IS": "987654321",
        "PN": f"LEAK{ident}^LEAKGIVEN",
        "TM": "235959.987654",
        "UI": f"1.2.3.999{int(ident, 16)}",
        "UR": f"http://leak.example/{ident}",
    }.get(vr, f"LEAK{ident}")


LEAK_MARKERS = (b"LEAK", b"1.2.3.999", b"19010101", b"077Y", b"9876.54321", b"987654321", b"leak.example")


def table_elements(skip: set[int]) -> list[tuple[int, str]]:
    """(tag, VR) of every Table E.1-1 row with a single, string or sequence VR."""
    found = []
    for row in profiles.table_rows():
        ident = row["id"]
        if not re.fullmatch(r"[0-9a-f]{8}", ident):
            continue
        tag = int(ident, 16)
        if tag >> 16 in (0x0000, 0x0002) or tag in skip or tag not in DicomDictionary:
            continue
        vr = dictionary_VR(tag)
        if vr in STRING_VRS or vr == "SQ":
            found.append((tag, vr))
    return found


def planted_item(depth: int) -> Dataset:
    """A sequence item full of identifiers, nesting ``depth`` more levels."""
    item = Dataset()
    item.PatientName = f"LEAKNESTED{depth}^NAME"
    item.PatientID = f"LEAKNESTEDID{depth}"
    item.ReferencedSOPInstanceUID = f"1.2.3.999.{depth}"
    item.StudyDate = "19010101"
    item.add_new(0x00400241, "AE", f"LEAKAE{depth}")  # Performed Station AE Title
    item.add_new(0x00321032, "PN", f"LEAKPHYS{depth}")  # Requesting Physician
    block = item.private_block(0x0011, "LEAKNESTEDCREATOR", create=True)
    block.add_new(0x01, "LO", "LEAKNESTEDPRIVATE")
    if depth > 1:
        item.ReferencedImageSequence = Sequence([planted_item(depth - 1)])
    return item


def base_dataset(study_uid: str = "1.2.3.999.1", sop_uid: str = "1.2.3.999.2") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = "1.2.3.999.3"
    ds.FrameOfReferenceUID = "1.2.3.999.4"
    ds.Modality = "CT"
    ds.PatientID = "LEAKPATIENTID"
    ds.PatientName = "LEAKFAMILY^LEAKGIVEN"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 16, 15  # every bit stored
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = bytes(range(32))
    return ds


def planted_dataset(profile: profiles.Profile) -> Dataset:
    """Every string attribute of Table E.1-1 planted, sequences 3 deep, private, overlays,
    curves and the leak classes outside the table (PN, DA, free text)."""
    ds = base_dataset()
    keep_for_structure = {0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00100020, 0x00100010}
    for tag, vr in table_elements(keep_for_structure):
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence([planted_item(3)]))
        elif vr == "TM" and profile.options:
            continue  # times are kept by design under the dates options
        elif profile.action(tag) == profiles.CLEAN and vr in {"LO", "LT", "SH", "ST", "UC", "UT"}:
            ds.add_new(tag, vr, "Chest LEAKFAMILY LEAKPATIENTID 19010101 01.01.1901")
        else:
            ds.add_new(tag, vr, plant(tag, vr))
    block = ds.private_block(0x0009, "LEAKCREATOR", create=True)
    block.add_new(0x01, "LO", "LEAKPRIVATE")
    block.add_new(0x02, "SQ", Sequence([planted_item(3)]))
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000022, "LO", "LEAKOVERLAYDESC")
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60003000, "OW", b"LEAKOVERLAYDATA!")
    ds.add_new(0x60004000, "LT", "LEAKOVERLAYCOMMENT")
    ds.add_new(0x50003000, "OW", b"LEAKCURVEDATA!!!")
    ds.add_new(0x00400243, "SH", "LEAKUNLISTEDTEXT")  # Performed Location (not in the table)
    ds.add_new(0x00181203, "DA", "19010101")  # Date of Last Calibration? (unlisted DA)
    ds.add_new(0x0040A123, "PN", "LEAKUNLISTEDPN")  # Person Name (SR), outside the table
    return ds


def to_file(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = "LEAKSOURCEAE"
    ds.file_meta.SendingApplicationEntityTitle = "LEAKSENDAE"
    ds.file_meta.ImplementationVersionName = "LEAKIMPL"
    ds.save_as(path, enforce_file_format=True)
    return path


def deidentified_bytes(
    path: Path, profile: profiles.Profile, secret: bytes = SECRET, partner: str = PARTNER, **settings
) -> bytes:
    out = io.BytesIO()
    deidentify_file(path, out, profile=profile, secret=secret, partner=partner, settings=Settings(**settings))
    return out.getvalue()


@pytest.mark.parametrize("profile_name", ["basic", "clinical"])
def test_no_planted_identifier_survives(tmp_path, profile_name):
    profile = profiles.named(profile_name)
    src = to_file(planted_dataset(profile), tmp_path / "planted.dcm")
    assert b"LEAKPATIENTID" in src.read_bytes()
    output = deidentified_bytes(src, profile)
    survivors = [m for m in LEAK_MARKERS if m in output]
    assert survivors == []
    ds = pydicom.dcmread(io.BytesIO(output))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.PixelData == bytes(range(32))
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert not any(0x5000 <= elem.tag.group <= 0x60FF for elem in ds)


def test_clean_descriptors_keep_the_rest_of_a_description(tmp_path):
    ds = base_dataset()
    ds.StudyDate = "20200131"
    ds.AccessionNumber = "ACC778899"
    ds.StudyDescription = "CT chest LEAKFAMILY ACC778899 31.01.2020 follow-up"
    ds.SeriesDescription = "Axial 5mm"
    out = pydicom.dcmread(io.BytesIO(deidentified_bytes(to_file(ds, tmp_path / "a.dcm"), profiles.named("clinical"))))
    shifted = date(2020, 1, 31) + timedelta(days=date_offset_days(SECRET, patient_pseudonym(SECRET, PARTNER, "", "LEAKPATIENTID")))
    assert out.StudyDescription == f"CT chest {shifted:%d.%m.%Y} follow-up"
    assert out.StudyDate == f"{shifted:%Y%m%d}"
    assert out.SeriesDescription == "Axial 5mm"


def test_recorded_method(tmp_path):
    src = to_file(base_dataset(), tmp_path / "a.dcm")
    ds = pydicom.dcmread(io.BytesIO(deidentified_bytes(src, profiles.named("clinical"))))
    assert ds.PatientIdentityRemoved == "YES"
    assert "2024b" in " ".join(ds.DeidentificationMethod)
    assert "rtnLongModifDatesOpt" in ds.DeidentificationMethod
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107", "113105"]
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    pseudonym = patient_pseudonym(SECRET, PARTNER, "", "LEAKPATIENTID")
    assert ds.PatientID == pseudonym and str(ds.PatientName) == pseudonym


def test_references_resolve_inside_the_study(tmp_path):
    first = base_dataset(sop_uid="1.2.3.999.10")
    second = base_dataset(sop_uid="1.2.3.999.11")
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.999.10"
    second.ReferencedImageSequence = Sequence([ref])
    a = pydicom.dcmread(io.BytesIO(deidentified_bytes(to_file(first, tmp_path / "a.dcm"), profiles.named("basic"))))
    b = pydicom.dcmread(io.BytesIO(deidentified_bytes(to_file(second, tmp_path / "b.dcm"), profiles.named("basic"))))
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SOPInstanceUID.startswith("2.25.") and len(a.SOPInstanceUID) <= 64
    assert a.SOPClassUID == CTImageStorage


def test_same_secret_same_bytes_other_secret_other_uids(tmp_path):
    src = to_file(base_dataset(), tmp_path / "a.dcm")
    clinical = profiles.named("clinical")
    assert deidentified_bytes(src, clinical) == deidentified_bytes(src, clinical)
    one = pydicom.dcmread(io.BytesIO(deidentified_bytes(src, clinical)))
    other = pydicom.dcmread(io.BytesIO(deidentified_bytes(src, clinical, secret=b"o" * 32)))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert one[keyword].value != other[keyword].value


def test_date_shift_is_per_patient_and_keeps_intervals(tmp_path):
    first, second = base_dataset(sop_uid="1.2.3.999.20"), base_dataset(study_uid="1.2.3.999.21", sop_uid="1.2.3.999.22")
    first.StudyDate, second.StudyDate = "20200110", "20200301"
    first.AcquisitionDateTime = "20200110083000.5+0100"
    clinical = profiles.named("clinical")
    a = pydicom.dcmread(io.BytesIO(deidentified_bytes(to_file(first, tmp_path / "a.dcm"), clinical)))
    b = pydicom.dcmread(io.BytesIO(deidentified_bytes(to_file(second, tmp_path / "b.dcm"), clinical)))
    shift = timedelta(days=date_offset_days(SECRET, patient_pseudonym(SECRET, PARTNER, "", "LEAKPATIENTID")))
    assert a.StudyDate == (date(2020, 1, 10) + shift).strftime("%Y%m%d")
    assert b.StudyDate == (date(2020, 3, 1) + shift).strftime("%Y%m%d")
    assert a.AcquisitionDateTime == (date(2020, 1, 10) + shift).strftime("%Y%m%d") + "083000.5+0100"


@pytest.mark.parametrize(
    "charset, description",
    [
        ("ISO_IR 192", "Thorax ärztlich 胸部 Ωmega"),
        ("ISO_IR 100", "Thorax ärztliche Kontrolle, Genève"),
        (["ISO 2022 IR 6", "ISO 2022 IR 87"], "胸部ＣＴ検査"),
    ],
)
def test_character_sets_survive(tmp_path, charset, description):
    ds = base_dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = "山田^太郎" if "87" in str(charset) else "Müller^Jürgen"
    ds.StudyDescription = description
    src = to_file(ds, tmp_path / "a.dcm")
    out = pydicom.dcmread(io.BytesIO(deidentified_bytes(src, profiles.named("clinical"))))
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert out.StudyDescription == description
    assert "Müller" not in str(out.PatientName) and "山田" not in str(out.PatientName)


def test_burned_in_annotation_refused_unless_allowed(tmp_path):
    ds = base_dataset()
    ds.BurnedInAnnotation = "YES"
    src = to_file(ds, tmp_path / "a.dcm")
    with pytest.raises(DeidentificationRefused) as refused:
        deidentified_bytes(src, profiles.named("clinical"))
    assert refused.value.reason == "burned_in_annotation"
    assert deidentified_bytes(src, profiles.named("clinical"), allow_burned_in_annotation=True)


def test_trailing_padding_is_dropped_and_the_splice_is_exact(tmp_path):
    ds = base_dataset()
    ds.add_new(0xFFFCFFFC, "OB", b"LEAKTRAILINGPADDING!")
    src = to_file(ds, tmp_path / "a.dcm")
    with open(src, "rb") as fp:
        plan = deidentify_header(fp, profile=profiles.named("basic"), secret=SECRET, partner=PARTNER, settings=Settings())
    data = src.read_bytes()
    assert data[plan.pixel_offset : plan.pixel_offset + 4] == b"\xe0\x7f\x10\x00"
    output = deidentified_bytes(src, profiles.named("basic"))
    assert output == plan.new_header + data[plan.pixel_offset : plan.pixel_end]
    assert b"LEAK" not in output
    assert pydicom.dcmread(io.BytesIO(output)).PixelData == bytes(range(32))


def _pixel_data_file(tmp_path: Path, rows: int) -> tuple[Dataset, Path]:
    """An object with ``rows`` x ``rows`` 16-bit Pixel Data: 256 fits the splice pipe of
    :func:`~dicomshare.deidentify.kernel_copy.kernel_copy`, 2048 takes several pipes' worth (``copy_file_range``)."""
    ds = base_dataset()
    ds.Rows = ds.Columns = rows
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    return ds, to_file(ds, tmp_path / f"{rows}.dcm")


@pytest.mark.dciodvfy
@pytest.mark.parametrize("rows", [256, 2048])
def test_pixel_data_is_copied_whole_between_files(tmp_path, rows):
    ds, src = _pixel_data_file(tmp_path, rows)
    plan = deidentify_file(src, tmp_path / "out", profile=profiles.named("clinical"), secret=SECRET, partner=PARTNER)
    output = tmp_path / "out" / plan.relative_path
    assert output.read_bytes() == plan.new_header + src.read_bytes()[plan.pixel_offset : plan.pixel_end]
    out = pydicom.dcmread(output)
    assert out.PixelData == ds.PixelData
    if plan.pixel_length > SPLICE_PIPE_BYTES:  # padded to the source's offset within a page
        assert len(plan.new_header) % PAGE_BYTES == plan.pixel_offset % PAGE_BYTES
        assert out.file_meta.PrivateInformationCreatorUID == IMPLEMENTATION_CLASS_UID
    else:
        assert "PrivateInformationCreatorUID" not in out.file_meta
    assert _dciodvfy_errors(output) <= _dciodvfy_errors(src)


@pytest.mark.parametrize("rows", [256, 2048])
def test_an_output_the_kernel_cannot_write_to_gets_the_same_bytes(tmp_path, rows):
    """``splice`` and ``copy_file_range`` refuse a file opened for appending; the chunked
    copy then writes it, and the next copy between files works (a new pipe)."""
    _, src = _pixel_data_file(tmp_path, rows)
    with open(tmp_path / "appended.dcm", "ab") as out:
        plan = deidentify_file(src, out, profile=profiles.named("clinical"), secret=SECRET, partner=PARTNER)
    expected = plan.new_header + src.read_bytes()[plan.pixel_offset : plan.pixel_end]
    assert (tmp_path / "appended.dcm").read_bytes() == expected
    assert deidentified_bytes(src, profiles.named("clinical")) == expected
    again = deidentify_file(src, tmp_path / "out", profile=profiles.named("clinical"), secret=SECRET, partner=PARTNER)
    assert (tmp_path / "out" / again.relative_path).read_bytes() == expected


def _dicom_looking_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def _dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    return {
        re.sub(r"\s+", " ", re.sub(r'\b[\d.]+\b|"[^"]*"', "", line)).strip()
        for line in result.stderr.splitlines()
        if line.startswith("Error")
    }


@pytest.mark.dciodvfy
@pytest.mark.parametrize("path", _dicom_looking_files(), ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_pydicom_test_files_deidentified_or_refused(tmp_path, path):
    settings = Settings(allow_burned_in_annotation=True)
    try:
        plan = deidentify_file(path, tmp_path, profile=profiles.named("clinical"), secret=SECRET, partner=PARTNER, settings=settings)
    except DeidentificationRefused as refused:
        assert re.fullmatch(r"[a-z_]+(:[A-Za-z]+)?", refused.reason)
        assert list(tmp_path.iterdir()) == []
        return
    output = tmp_path / plan.relative_path
    out = pydicom.dcmread(output)
    src = pydicom.dcmread(path)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in src:
            assert out[keyword].value == src[keyword].value
    assert out.PatientIdentityRemoved == "YES"
    assert _dciodvfy_errors(output) <= _dciodvfy_errors(path)


def test_default_settings_refuse_secondary_capture():
    with pytest.raises(DeidentificationRefused) as refused:
        deidentify_file(TEST_FILES / "SC_rgb_small_odd.dcm", io.BytesIO(), secret=SECRET, partner=PARTNER)
    assert refused.value.reason == "burned_in_annotation"


def test_deflated_is_rewritten_in_memory():
    path = TEST_FILES / "image_dfl.dcm"
    out = io.BytesIO()
    plan = deidentify_file(path, out, secret=SECRET, partner=PARTNER, settings=Settings(allow_burned_in_annotation=True))
    assert plan.pixel_offset is None
    assert pydicom.dcmread(io.BytesIO(out.getvalue())).PixelData == pydicom.dcmread(path).PixelData


@pytest.mark.parametrize("original", ["1.2.3", "1.2.840.113619.2.55.3.604688119.969.1268071029.320", "0", ""])
def test_new_uids_are_valid_uuid_derived_uids(original):
    uid = new_uid(SECRET, PARTNER, original)
    assert pydicom.uid.UID(uid).is_valid and uid.startswith("2.25.")
    assert int(uid[5:]) < 2**128 and not uid[5:].startswith("0")


def plans(data: bytes, request: Request) -> tuple:
    """The encoded path's plan (``None`` when it declines) and the pydicom path's plan or
    refusal reason."""
    encoded = rewrite_encoded(io.BytesIO(data), len(data), request)
    try:
        dataset = rewrite_dataset(io.BytesIO(data), len(data), request)
    except DeidentificationRefused as refused:
        dataset = refused.reason
    return encoded, dataset


def _both_paths(path: Path, profile: profiles.Profile, settings: Settings) -> tuple:
    """:func:`plans` of the file at ``path``, with this module's secret and partner."""
    return plans(path.read_bytes(), Request(profile, SECRET, settings, PARTNER))


@pytest.mark.parametrize("profile_name", ["basic", "clinical"])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_encoded_path_matches_the_pydicom_path_on_planted_identifiers(tmp_path, profile_name, transfer_syntax):
    profile = profiles.named(profile_name)
    src = to_file(planted_dataset(profile), tmp_path / "planted.dcm", transfer_syntax)
    encoded, dataset = _both_paths(src, profile, Settings())
    assert encoded is not None
    assert encoded == dataset


def test_encoded_path_matches_the_pydicom_path_on_pydicom_test_files():
    """Every file the encoded path takes comes out byte for byte as through pydicom; a
    file either path refuses is left to the pydicom path. Both profiles, one process, so
    the per-patient element caches are shared across files as in a real run."""
    settings = Settings(allow_burned_in_annotation=True)
    taken = 0
    for profile_name in ("basic", "clinical"):
        for path in _dicom_looking_files():
            encoded, dataset = _both_paths(path, profiles.named(profile_name), settings)
            if encoded is None:
                continue
            taken += 1
            assert encoded == dataset, path.name
    assert taken >= 250  # 125 of the 176 files per profile, with pydicom 3.0 (the rest are refused or not plain)


@pytest.mark.parametrize("profile_name", ["basic", "clinical"])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_encoded_path_matches_the_pydicom_path_along_a_series(tmp_path, profile_name, transfer_syntax):
    """Objects read one after the other, as a series is: each reuses the elements it shares
    with the one before (the previous object's, and the per-patient caches), and each still
    comes out byte for byte as through pydicom, whatever changed between them: UIDs and
    numbers, an element of another length, one that comes and goes, a nested sequence,
    a description naming the patient, another patient."""
    profile = profiles.named(profile_name)
    for i in range(6):
        ds = planted_dataset(profile)
        ds.SOPInstanceUID = f"1.2.3.999.2.{i}"
        ds.InstanceNumber = i % 3
        ds.ImageComments = "LEAK" * (i % 2 + 1)
        if i % 2:
            ds.SliceLocation = i
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = f"1.2.3.999.2.{i // 2}"
        if i == 4:
            ds.SeriesDescription = "Axial LEAKFAMILY"
            ds.PatientID = "LEAKOTHERPATIENT"
        encoded, dataset = _both_paths(to_file(ds, tmp_path / f"{i}.dcm", transfer_syntax), profile, Settings())
        assert encoded is not None
        assert encoded == dataset, i
