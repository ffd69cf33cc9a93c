"""The encoded path on every character set without code extensions (PS3.5 6.1): the same
bytes as the pydicom path, which decodes each value with the source's character set and
writes the output in UTF-8; ISO 2022 code extensions left to the pydicom path."""

from __future__ import annotations

import io
import random
import warnings

import pydicom
import pytest
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomshare import profile as profiles
from dicomshare.deidentify.dataset_reader import quiet_pydicom
from dicomshare.deidentify.encoded_values import CODECS, reencoded
from dicomshare.deidentify.plan import Plan, Request
from dicomshare.encoded_dataset import NotPlain
from dicomshare.settings import Settings

from test_deidentify import base_dataset, planted_dataset, plans, to_file

SECRET = b"c" * 32
PARTNER = "hospital-a"

NAMES = {
    "ISO_IR 100": ("Müller^Jürgen", "Thorax ärztliche Kontrolle, Genève"),
    "ISO_IR 101": ("Żółkiewski^Łukasz", "Kontrola płuc, Kraków"),
    "ISO_IR 109": ("Ħasan^Ġużeppi", "Kontroll tal-pulmun, Għawdex"),
    "ISO_IR 110": ("Ābele^Ģirts", "Plaušu kontrole, Rīga"),
    "ISO_IR 126": ("Παπαδόπουλος^Γιώργος", "Έλεγχος θώρακα, Αθήνα"),
    "ISO_IR 127": ("محمد^علي", "فحص الصدر"),
    "ISO_IR 138": ("כהן^דוד", "בדיקת חזה"),
    "ISO_IR 144": ("Иванов^Пётр", "Контроль грудной клетки, Москва"),
    "ISO_IR 148": ("Şahinoğlu^Çağrı", "Göğüs kontrolü, İzmir"),
    "ISO_IR 166": ("สมชาย^ใจดี", "ตรวจทรวงอก"),
    "ISO_IR 13": ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ｷｮｳﾌﾞ CT"),
    "ISO_IR 192": ("山田^太郎", "Thorax ärztlich 胸部 Ωmega"),
    "GB18030": ("欧阳^小明", "胸部 CT 复查"),
    "GBK": ("司马^小龙", "胸部 CT 复查"),
}
"""A patient's name and a study description in each character set of the encoded path."""


def _both_paths(data: bytes, profile: profiles.Profile) -> tuple:
    return plans(data, Request(profile, SECRET, Settings(), PARTNER))


def _named(charset: str, name: str, description: str, **uids) -> Dataset:
    """An object naming its patient in ``charset``, also in free text, with text nested in
    a sequence and kept values of every kind (numbers, codes, dates, multi-valued text)."""
    def text(value: str) -> bytes:  # encoded here: pydicom's own encoder garbles ISO_IR 13
        return value.encode(CODECS[charset])

    ds = base_dataset(**uids)
    ds.SpecificCharacterSet = charset
    ds.PatientName = text(name)
    ds.PatientID = text(f"ID-{name.split('^')[0]}")
    ds.StudyDate = "20200110"
    ds.StudyTime = "083000"
    ds.StudyDescription = text(f"{description} {name.split('^')[0]}")
    ds.SeriesDescription = text(description)
    ds.InstitutionName = text(f"Klinik {name.split('^')[1]}")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = [" 0.5", "0.5 "]
    ds.SliceThickness = "2.50"
    ds.InstanceNumber = "7"
    ds.Manufacturer = text(description[:20])
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", text(description[:30])
    ds.AnatomicRegionSequence = Sequence([code])
    other = Dataset()
    other.PatientName = text(name)
    other.PatientID = "OTHER-ID"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.LargestImagePixelValue = 4095
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    return ds


def _leaks(output: bytes, name: str, charset: str) -> list[bytes]:
    """The parts of ``name`` found in ``output``, in the source's encoding and in UTF-8."""
    codec = CODECS[charset]
    parts = [p for p in name.split("^") if p]
    return [encoded for part in parts for encoded in {part.encode(codec), part.encode("utf-8")} if encoded in output]


@pytest.mark.parametrize("profile_name", ["basic", "clinical"])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("charset", list(NAMES))
def test_encoded_path_takes_each_character_set_and_matches_pydicom(tmp_path, charset, transfer_syntax, profile_name):
    name, description = NAMES[charset]
    profile = profiles.named(profile_name)
    data = to_file(_named(charset, name, description), tmp_path / "a.dcm", transfer_syntax).read_bytes()
    assert name.split("^")[0].encode(CODECS[charset]) in data
    encoded, dataset = _both_paths(data, profile)
    assert encoded is not None
    assert encoded == dataset
    output = encoded.new_header
    assert _leaks(output, name, charset) == []
    out = pydicom.dcmread(io.BytesIO(output))
    assert out.SpecificCharacterSet == "ISO_IR 192"
    if profile.cleans:
        assert out.SeriesDescription == description
        assert out.StudyDescription == description


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_planted_identifiers_in_latin_1_and_utf_8_match_pydicom(tmp_path, transfer_syntax):
    """The planted object of the table test (every attribute of Table E.1-1, sequences
    three deep), declaring a character set, with non-ASCII names."""
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        for profile_name in ("basic", "clinical"):
            profile = profiles.named(profile_name)
            ds = planted_dataset(profile)
            ds.SpecificCharacterSet = charset
            ds.PatientName = "LEAKFAMILY^LEAKGIVENÄÖß"
            ds.StudyDescription = "Thorax LEAKGIVENÄÖß Genève"
            data = to_file(ds, tmp_path / "a.dcm", transfer_syntax).read_bytes()
            encoded, dataset = _both_paths(data, profile)
            assert encoded is not None and encoded == dataset, (charset, profile_name)
            assert b"LEAK" not in encoded.new_header


def test_a_latin_1_series_matches_pydicom_object_after_object(tmp_path):
    """As a series is read: each object reuses the elements it shares with the one before,
    and the caches never hand one character set's output to another with the same bytes."""
    clinical = profiles.named("clinical")
    for i, charset in enumerate(["ISO_IR 100"] * 3 + ["ISO_IR 148", "ISO_IR 100", "ISO_IR 6"]):
        ds = _named(charset, "Muller^Jurgen" if charset == "ISO_IR 6" else "Müller^Jürgen",
                    "Thorax Kontrolle" if charset == "ISO_IR 6" else "Thorax ärztliche Kontrolle",
                    sop_uid=f"1.2.3.999.2.{i}")
        ds.InstanceNumber = str(i)
        ds.SliceLocation = f"{i * 2.5:.1f}"
        if i == 2:
            ds.PatientID = "ANOTHER-PATIENT"
        encoded, dataset = _both_paths(to_file(ds, tmp_path / f"{i}.dcm").read_bytes(), clinical)
        assert encoded is not None and encoded == dataset, (i, charset)


@pytest.mark.parametrize("charset", ["ISO 2022 IR 100", ["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 100"]])
def test_code_extensions_go_to_the_pydicom_path(tmp_path, charset):
    ds = base_dataset()
    ds.SpecificCharacterSet = charset
    ds.StudyDescription = "胸部ＣＴ検査" if "87" in str(charset) else "Genève"
    data = to_file(ds, tmp_path / "a.dcm").read_bytes()
    encoded, dataset = _both_paths(data, profiles.named("clinical"))
    assert encoded is None and isinstance(dataset, Plan)


def _with_raw_text(tmp_path, charset: str, value: bytes) -> bytes:
    """An object whose Study Description holds ``value`` as it is (not encoded by pydicom)."""
    ds = base_dataset()
    ds.SpecificCharacterSet = charset
    ds.StudyDescription = "X" * len(value)
    data = to_file(ds, tmp_path / "a.dcm").read_bytes()
    return data.replace(b"X" * len(value), value)


def test_bytes_the_character_set_does_not_decode_go_to_the_pydicom_path(tmp_path):
    data = _with_raw_text(tmp_path, "ISO_IR 192", b"Thorax \xff\xfe ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded, dataset = _both_paths(data, profiles.named("clinical"))
    assert encoded is None and isinstance(dataset, Plan)


def test_an_escape_sequence_in_a_single_byte_set_goes_to_the_pydicom_path(tmp_path):
    data = _with_raw_text(tmp_path, "ISO_IR 100", b"Thorax \x1b$B$3 ")
    encoded, dataset = _both_paths(data, profiles.named("clinical"))
    assert encoded is None and isinstance(dataset, Plan)


def test_a_character_set_declared_in_an_item_goes_to_the_pydicom_path(tmp_path):
    ds = _named("ISO_IR 100", "Müller^Jürgen", "Thorax")
    ds.AnatomicRegionSequence[0].SpecificCharacterSet = "ISO_IR 148"
    encoded, dataset = _both_paths(to_file(ds, tmp_path / "a.dcm").read_bytes(), profiles.named("clinical"))
    assert encoded is None and isinstance(dataset, Plan)


_TAGS = {
    "AE": 0x00080054, "AS": 0x00101010, "AT": 0x00209165, "CS": 0x00080060, "DA": 0x00080020, "DS": 0x00180050,
    "DT": 0x0008002A, "FD": 0x00189089, "FL": 0x00189087, "IS": 0x00200013, "LO": 0x00081030, "LT": 0x00204000,
    "OB": 0x00420011, "OW": 0x00660023, "SH": 0x00081010, "SL": 0x00186020, "SS": 0x00189219, "ST": 0x00081040,
    "TM": 0x00080030, "UC": 0x00080119, "UI": 0x00080016, "UL": 0x00081161, "UR": 0x00081190, "US": 0x00280010,
    "UT": 0x00189913,
}
"""A tag of each VR, for :func:`_pydicom_written`."""
_ALPHABET = [b"1", b"2", b".", b" ", b"\\", b"\x00", b"A", b"-", b"e", b"+", b"\t", b"\xe4", b"\xc3", b"\xa4"]


def _pydicom_written(vr: str, value: bytes, codec: str) -> bytes | None:
    """The value bytes the pydicom path writes for a kept element: converted with the
    source's character set, written in UTF-8; ``None`` when pydicom cannot convert it."""
    raw = RawDataElement(Tag(_TAGS[vr]), vr, len(value), value, 0, False, True)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    with quiet_pydicom(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            write_data_element(fp, convert_raw_data_element(raw, encoding=[codec]), ["ISO_IR 192"])
        except Exception:
            return None
    return fp.getvalue()[8:]


@pytest.mark.parametrize("codec", ["latin_1", "UTF8"])
@pytest.mark.parametrize("vr", sorted(_TAGS))
def test_kept_values_are_written_as_pydicom_writes_them(vr, codec):
    """Generated values, odd ones included (spaces and tabs around, NULs, empty values,
    malformed numbers, signalling NaNs, odd lengths): :func:`reencoded` gives pydicom's
    bytes, or declines; and it takes the ordinary ones."""
    rng = random.Random(f"{vr}{codec}")
    taken = 0
    for n in range(1500):
        if vr in ("FL", "FD", "SL", "SS", "UL", "US", "AT", "OB", "OW"):
            value = rng.randbytes(rng.choice([0, 2, 4, 8, 3, 12]))
        else:
            value = b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 9)))
        try:
            ours = reencoded(vr, value, codec)
        except (NotPlain, UnicodeError):
            continue
        assert ours == _pydicom_written(vr, value, codec), value
        taken += 1
    assert taken > 200
    ordinary = {"DS": b"-12.5\\0.75 ", "IS": b"42", "UI": b"1.2.840.10008.1.2\x00", "FL": b"\x00\x00\xc0\x7f"}
    if vr in ordinary:
        assert reencoded(vr, ordinary[vr], codec) == _pydicom_written(vr, ordinary[vr], codec)
