"""Hostile text (issue 12, items 3 and 4): names in every script and character set, record
numbers, dates in many spellings, phones, e-mail addresses, URLs, addresses and titled
names planted in descriptions, code meanings, local codes, code strings, equipment text
and nested sequences; every output searched as raw bytes in every encoding a reader might
use. Through the file entry point and through ``dicomshare deid``."""

from __future__ import annotations

import io
import subprocess
import sys
import unicodedata
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomshare import profile as profiles
from dicomshare import settings as settings_module
from dicomshare.deidentify import deidentify_file
from dicomshare.deidentify.descriptors import AUTOMATON_MAX_CHARACTERS, Matcher, fold, identifiers_in, scrub
from dicomshare.deidentify.free_text import DateRule
from dicomshare.deidentify.identities import date_offset_days, patient_pseudonym
from dicomshare.settings import Settings

from hostile import leaked
from test_deidentify import PARTNER, SECRET, _both_paths, base_dataset, to_file

PATIENT_ID = "PID99887766"
PATIENTS = {
    # character set: (Patient's Name, the names to search for, the same name in free text)
    "ISO_IR 192": ("Strauß^Jürgen", ["Strauß", "Jürgen", "STRAUSS", "Jurgen"], "STRAUSS Ju\u0308rgen"),
    "ISO_IR 100": ("Müller-Lüdenscheidt^Zoë", ["Müller", "Lüdenscheidt", "Zoë"], "mueller MÜLLER zoë"),
    "ISO_IR 144": ("Иванов^Пётр", ["Иванов", "Пётр", "ИВАНОВ"], "иванов ПЁТР"),
    "ISO_IR 126": ("Παπαδόπουλος^Νίκος", ["Παπαδόπουλος", "Νίκος"], "ΠΑΠΑΔΟΠΟΥΛΟΣ νίκος"),
    ("ISO 2022 IR 6", "ISO 2022 IR 87"): (
        "Yamada^Tarou=山田^太郎=やまだ^たろう", ["山田", "太郎", "やまだ", "たろう", "Yamada", "Tarou"], "山田太郎さん やまだ たろう"
    ),
    ("ISO 2022 IR 6", "ISO 2022 IR 149"): ("Hong^Gildong=洪^吉洞=홍^길동", ["洪", "吉洞", "홍", "길동", "Gildong"], "홍길동씨 洪吉洞"),
    "GB18030": ("Wang^Xiaodong=王^小东", ["王", "小东", "Xiaodong"], "王小东先生 WANG xiaodong"),
}
TEXT_PLANTS = [
    "Feb 3, 1961", "03-FEB-1961", "3/2/1961", "15-Jan-2024", "1961-02-03", "3 February 1961",
    "+1 (212) 555-0199", "jane.roe@example.org", "https://portal.example.net/p/4711", "www.example.net",
    "221B Baker Street", "Hauptstrasse 5", "Dr House", "mother Anna", "MRN 4477112233",
]
NEEDLES = [
    PATIENT_ID, "99887766", "Feb 3, 1961", "03-FEB-1961", "3/2/1961", "15-Jan-2024", "1961-02-03",
    "3 February 1961", "555-0199", "jane.roe", "example.org", "portal.example", "www.example", "Baker Street",
    "Hauptstra", "House", "Anna", "4477112233",
]


def hostile_dataset(charset, name: str, text_name: str) -> Dataset:
    """One object holding the patient's name in free text, codes, code strings,
    equipment text and nested sequences, besides dates, numbers, phones, e-mail, URLs,
    addresses and titled names."""
    ds = base_dataset()
    ds.SpecificCharacterSet = list(charset) if isinstance(charset, tuple) else charset
    ds.PatientName = name
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19610203"
    ds.StudyDate = "20240115"
    plants = " ; ".join(TEXT_PLANTS)
    ds.StudyDescription = f"CT chest {text_name} {plants}"
    ds.SeriesDescription = f"Axial {text_name} 15-Jan-2024"
    ds.ProtocolName = f"Thorax {PATIENT_ID} {text_name}"
    ds.ImageComments = f"Comment about {text_name} {plants}"
    ds.AdditionalPatientHistory = f"History of {text_name}, mother Anna"
    latin = next(p for p in name.split("=")[0].split("^"))
    upper = "".join(c for c in unicodedata.normalize("NFKD", latin.upper()) if c.isascii() and c.isalpha())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", upper[:16]]
    ds.BodyPartExamined = upper[:16]
    ds.add_new(0x00041500, "CS", ["DIR", upper[:8]])  # Referenced File ID
    ds.Manufacturer = f"ACME for Dr House {text_name}"
    ds.ManufacturerModelName = f"Model {PATIENT_ID}"
    ds.SoftwareVersions = ["1.0", "call +1 212 555 0199"]
    code = Dataset()
    code.CodeValue = PATIENT_ID
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = f"Biopsy of {text_name}'s liver, tel +1 (212) 555-0199"
    modifier = Dataset()
    modifier.CodeValue = "4477112233"
    modifier.CodingSchemeDesignator = "L"
    modifier.CodeMeaning = f"jane.roe@example.org {text_name}"
    code.AnatomicRegionModifierSequence = Sequence([modifier])
    standard = Dataset()
    standard.CodeValue = "39607008"
    standard.CodingSchemeDesignator = "SCT"
    standard.CodeMeaning = "Lung structure"
    ds.AnatomicRegionSequence = Sequence([code, standard])
    layer = Dataset()
    layer.GraphicLayer = upper[:16]
    layer.add_new(0x00700001, "SQ", Sequence())
    ds.GraphicAnnotationSequence = Sequence([layer])
    return ds


def leaks(output: bytes, names: list[str]) -> list[str]:
    return leaked(output, [*names, *NEEDLES])


def charset_id(charset) -> str:
    return "+".join(charset) if isinstance(charset, tuple) else charset


@pytest.mark.parametrize("charset", list(PATIENTS), ids=charset_id)
@pytest.mark.parametrize("profile_name", ["clinical", "basic"])
def test_nothing_planted_survives_the_file_entry_point(tmp_path, charset, profile_name):
    name, names, text_name = PATIENTS[charset]
    src = to_file(hostile_dataset(charset, name, text_name), tmp_path / "hostile.dcm")
    assert leaks(src.read_bytes(), names)  # the search finds what was planted
    out = io.BytesIO()
    deidentify_file(src, out, profile=profiles.named(profile_name), secret=SECRET, partner=PARTNER)
    assert leaks(out.getvalue(), names) == []
    ds = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert list(ds.ImageType[:3]) == ["ORIGINAL", "PRIMARY", "AXIAL"] and len(ds.ImageType) == 4
    assert ds.AnatomicRegionSequence[1].CodeValue == "39607008"
    assert ds.AnatomicRegionSequence[1].CodeMeaning == "Lung structure"
    assert ds.AnatomicRegionSequence[0].CodeValue == "ANONYMIZED"
    assert "Biopsy of" in ds.AnatomicRegionSequence[0].CodeMeaning
    assert ds.Manufacturer.startswith("ACME for Dr")
    assert "ImageComments" not in ds and "AdditionalPatientHistory" not in ds
    if profile_name == "clinical":
        shifted = date(2024, 1, 15) + timedelta(days=date_offset_days(SECRET, patient_pseudonym(SECRET, PARTNER, "", PATIENT_ID)))
        assert ds.StudyDate == f"{shifted:%Y%m%d}"
        assert ds.SeriesDescription.startswith("Axial ") and ds.SeriesDescription.endswith(f"{shifted:%d-%b-%Y}")
        assert ds.StudyDescription.startswith("CT chest")


def test_nothing_planted_survives_the_command_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (charset, (name, _, text_name)) in enumerate(PATIENTS.items()):
        ds = hostile_dataset(charset, name, text_name)
        ds.SOPInstanceUID = f"1.2.3.999.2.{i}"
        to_file(ds, src / f"{i}.dcm")
    command = [str(Path(sys.executable).parent / "dicomshare"), "deid", str(src), str(tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == len(PATIENTS)
    every_name = [n for _, names, _ in PATIENTS.values() for n in names]
    for output in outputs:
        assert leaks(output.read_bytes(), every_name) == [], output.name
    assert leaks((result.stdout + result.stderr).encode(), every_name) == []


def test_partner_opts_in_to_free_text(tmp_path):
    name, names, text_name = PATIENTS["ISO_IR 192"]
    src = to_file(hostile_dataset("ISO_IR 192", name, text_name), tmp_path / "a.dcm")
    out = io.BytesIO()
    partner = settings_module.from_document({"partners": [{"id": "p1", "keep_free_text": True}]}).partners[0]
    assert partner.keep_free_text and not settings_module.from_document({"partners": [{"id": "p1"}]}).partners[0].keep_free_text
    profile = profiles.for_partner(partner.options, partner.keep_free_text)
    deidentify_file(src, out, profile=profile, secret=SECRET, partner=PARTNER)
    ds = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert ds.ImageComments.startswith("Comment about")
    assert ds.AdditionalPatientHistory.startswith("History of")
    assert "free text kept" in ds.DeidentificationMethod
    assert leaks(out.getvalue(), names) == []


RULE = DateRule("shift", -10)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Feb 3, 1961", "Jan 24, 1961"),
        ("03-FEB-1961", "24-JAN-1961"),
        ("15-Jan-2024", "05-Jan-2024"),
        ("3 February 1961", "24 January 1961"),
        ("1961-02-03 and 19610203", "1961-01-24 and 19610124"),
        ("13/02/1961", "03/02/1961"),
        ("02/13/1961", "02/03/1961"),
        ("03.02.1961", "24.01.1961"),
        ("3/2/1961 seen", "seen"),  # day and month cannot be told apart: removed
        ("3. März 1961", "21. Februar 1961"),
        ("uid 1.2.840.113619.2.55.3 v10.2.3.4", "uid v10.2.3.4"),
    ],
)
def test_dates_in_any_spelling_are_shifted_consistently(text, expected):
    assert scrub(text, frozenset(), frozenset(), RULE) == expected


def test_full_dates_keep_text_dates_but_not_the_header_dates_removed():
    identifiers, words = identifiers_in(0x00100030, "DA", ["19610203"])  # Patient's Birth Date
    text = "born Feb 3, 1961 (3.2.1961), scan 15-Jan-2024"
    assert scrub(text, identifiers, words, DateRule("keep", 0)) == "born (), scan 15-Jan-2024"


def test_dates_are_removed_without_the_dates_option():
    assert scrub("Feb 3, 1961 and 15-Jan-2024 ok", frozenset(), frozenset(), DateRule("remove", 0)) == "and ok"


@pytest.mark.parametrize(
    "text, gone, kept",
    [
        ("call +1 (212) 555-0199 today", "555", "call today"),
        ("mail jane.roe@example.org now", "example", "mail now"),
        ("see https://portal.example.net/p?id=4711 now", "portal", "see now"),
        ("lives at 221B Baker Street, London", "Baker", "lives at , London"),
        ("wohnt Hauptstraße 5 in Köln", "Haupt", "wohnt in Köln"),
        ("seen by Dr House, mother Anna present", "House", "seen by Dr , mother present"),
        ("MOTHER HAS diabetes", "", "MOTHER HAS diabetes"),
        ("MRN 4477112233 and MRN:99123456", "4477", "MRN and"),
        ("512x512 slice 0.625 mm, 120 kV", "", "512x512 slice 0.625 mm, 120 kV"),
    ],
)
def test_free_text_detector(text, gone, kept):
    found = scrub(text, frozenset(), frozenset(), RULE)
    assert (found if found is not None else text) == kept
    if gone:
        assert gone not in kept


def test_identifiers_are_folded_and_split_by_component_group():
    identifiers, words = identifiers_in(0x00100010, "PN", ["Yamada^Tarou=山田^太郎=やまだ^たろう"])
    assert {"yamada", "tarou", "山田", "太郎", "やまた", "たろう"} <= words  # voicing marks fold away
    assert fold("Strauß") == fold("STRAUSS") == "strauss"
    assert fold("Mu\u0308ller") == fold("MÜLLER") == "muller"
    _, single = identifiers_in(0x00100010, "PN", ["Wang^Xiaodong=王^小东"])
    assert "王" in single
    matched = scrub("王小东先生 Wangfu", frozenset(), single, RULE)
    assert matched == "先生 Wangfu"  # CJK without word boundaries; Latin words whole


def test_one_pass_over_the_text_whatever_the_number_of_identifiers():
    """The matcher reads the text once: the automaton's matches are as many as the
    identifiers in the text, not as many as identifiers times text (structural check;
    the time for 512 KiB and 16,000 identifiers is in ``python -m bench text``)."""
    identifiers = frozenset(f"id{i:05d}x" for i in range(16000))
    words = frozenset(f"name{i:05d}" for i in range(16000))
    matcher = Matcher(identifiers, words)
    text = " ".join(f"id{i:05d}x name{i:05d} clean" for i in range(0, 16000, 100)) * 50
    spans = list(matcher.spans(text))
    assert len(spans) == 2 * 160 * 50
    assert matcher.remove(text).split() == ["clean"] * 160 * 50
    assert matcher.automaton.get_stats()["words_count"] == 16000


def test_a_huge_removed_value_is_still_an_identifier_and_crashes_nothing(tmp_path):
    """A removed value of a million characters is an identifier like any other (a kept
    text holding it loses it), and freeing its matcher does not crash the process (the
    automaton frees its trie one C stack frame per character: such identifiers are
    searched outside it). In a child process, so that a crash fails this test only; the
    matchers are dropped as a long-running process drops them from its cache."""
    long = "zq" + "x" * AUTOMATON_MAX_CHARACTERS + "qz"  # a long one, still safe to free
    matcher = Matcher(frozenset({long, "smith"}), frozenset())
    assert matcher.remove(f"before {long} between {long}{long} and smith after") == "before  between  and  after"
    assert matcher.automaton.get_stats()["words_count"] == 1
    ds = base_dataset()
    ds.StudyDescription = "CT chest"
    ds.TextValue = "ZQ" + "X" * 1_000_000 + "QZ"  # removed, so an identifier (not a descriptor)
    src = to_file(ds, tmp_path / "huge.dcm")
    script = (
        "import gc, io, sys; from dicomshare import profile; from dicomshare.deidentify import deidentify_file; "
        "from dicomshare.deidentify.descriptors import matcher; "
        "deidentify_file(sys.argv[1], io.BytesIO(), profile=profile.named('clinical'), secret=b's' * 32, partner='p'); "
        "assert matcher.cache_info().currsize; matcher.cache_clear(); gc.collect(); print('done')"
    )
    child = subprocess.run([sys.executable, "-c", script, str(src)], capture_output=True, text=True, check=False)
    assert child.returncode == 0 and child.stdout.strip() == "done", child.stderr[-2000:]


def _coded(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@pytest.mark.parametrize("profile_name", ["clinical", "basic"])
def test_both_paths_check_kept_text_alike_along_a_series(tmp_path, profile_name):
    """ASCII objects (the encoded path takes them) holding kept text with identifiers and
    the same code bytes in a standard and a local scheme, in either order, one after the
    other: the encoded path's remembered elements never carry one item's check into
    another, and both paths give the same bytes."""
    profile = profiles.named(profile_name)
    for i in range(4):
        ds = base_dataset()
        ds.SOPInstanceUID = f"1.2.3.999.2.{i}"
        ds.PatientID = PATIENT_ID
        ds.PatientName = "Roe^Jane"
        ds.StudyDescription = "CT chest ROE jane.roe@example.org Feb 3, 1961"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ROE"]
        ds.Manufacturer = "ACME for Dr House"
        standard, local = _coded("12345678", "SCT", "Lung"), _coded("12345678", "99LOCAL", "Lung of Jane")
        ds.AnatomicRegionSequence = Sequence([standard, local] if i % 2 else [local, standard])
        encoded, dataset = _both_paths(to_file(ds, tmp_path / f"{i}.dcm"), profile, Settings())
        assert encoded is not None
        assert encoded == dataset, i
        out = pydicom.dcmread(io.BytesIO(encoded.new_header))
        by_scheme = {item.CodingSchemeDesignator: item for item in out.AnatomicRegionSequence}
        assert by_scheme["SCT"].CodeValue == "12345678" and by_scheme["99LOCAL"].CodeValue == "ANONYMIZED"
        assert by_scheme["99LOCAL"].CodeMeaning == "Lung of"
        assert list(out.ImageType) == ["ORIGINAL", "PRIMARY", "ANONYMIZED"]
        assert out.Manufacturer == "ACME for Dr"
