"""Hostile and messy input (issue 12): objects built byte by byte, every output searched
for the identifying values planted in it."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pydicom
import pytest

from dicomshare import profile as profiles
from dicomshare.deidentify import deidentify_header
from dicomshare.deidentify.plan import Request
from dicomshare.settings import Settings
from dicomshare.validation import MALFORMED, MAX_SEQUENCE_DEPTH, DeidentificationRefused

import hostile
from test_deidentify import plans

SECRET = b"h" * 32
PARTNER = "hospital-a"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CLINICAL = profiles.named("clinical")


def deidentify(data: bytes, profile: profiles.Profile = CLINICAL, **settings) -> bytes:
    plan = deidentify_header(io.BytesIO(data), profile=profile, secret=SECRET, partner=PARTNER, settings=Settings(**settings))
    return plan.new_header + (b"" if plan.pixel_offset is None else data[plan.pixel_offset : plan.pixel_end])


def refusal(data: bytes, profile: profiles.Profile = CLINICAL, **settings) -> str:
    with pytest.raises(DeidentificationRefused) as refused:
        deidentify(data, profile, **settings)
    return refused.value.reason


def both_paths(data: bytes, profile: profiles.Profile = CLINICAL, **settings):
    """:func:`test_deidentify.plans` with this module's secret and partner."""
    return plans(data, Request(profile, SECRET, Settings(**settings), PARTNER))


# 1. No crash, bounded cost


@pytest.mark.parametrize("undefined_length", [True, False])
@pytest.mark.parametrize("depth", [MAX_SEQUENCE_DEPTH + 1, 1000, 20000])
def test_nesting_beyond_the_limit_is_refused_malformed_on_both_paths(depth, undefined_length):
    data = hostile.deep_object(depth, undefined_length=undefined_length)
    encoded, dataset = both_paths(data)
    assert encoded is None and dataset == MALFORMED
    assert refusal(data) == MALFORMED


@pytest.mark.parametrize("undefined_length", [True, False])
def test_nesting_up_to_the_limit_is_deidentified_the_same_on_both_paths(undefined_length):
    data = hostile.deep_object(MAX_SEQUENCE_DEPTH, undefined_length=undefined_length)
    encoded, dataset = both_paths(data)
    assert encoded is not None and encoded.new_header == dataset.new_header
    assert not hostile.leaked(encoded.new_header, ["ZQXDEEP^ZQXNAME", "ZQXFAMILY^ZQXGIVEN", "ZQXPATIENTID"])
    depth, ds = 0, pydicom.dcmread(io.BytesIO(encoded.new_header))
    while "ContentSequence" in ds:
        ds, depth = ds.ContentSequence[0], depth + 1
    assert depth == MAX_SEQUENCE_DEPTH and str(ds.PatientName).startswith("DS-")


def _peak_memory(data: bytes) -> tuple[int, bytes]:
    tracemalloc.start()
    try:
        output = deidentify(data)
        return tracemalloc.get_traced_memory()[1], output
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("undefined_length", [True, False])
def test_memory_is_linear_in_the_size_and_independent_of_the_depth(undefined_length):
    """An 8 MiB value at the bottom of the deepest allowed nesting takes no more memory
    than at the top: copying the bytes below each level (as the reader once did) would
    take 32 times the object."""
    payload = hostile.element(0x0040A160, "UT", b"ZQXCOMMENT " * (8 * 1024**2 // 11 + 1))
    shallow, _ = _peak_memory(hostile.deep_object(1, undefined_length=undefined_length, leaf=payload))
    data = hostile.deep_object(MAX_SEQUENCE_DEPTH, undefined_length=undefined_length, leaf=payload)
    deep, output = _peak_memory(data)
    assert deep < shallow + 1024**2 and deep < 8 * len(data)
    assert b"ZQXCOMMENT" not in output and not hostile.leaked(output, ["ZQXDEEP^ZQXNAME"])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "dicomshare"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def test_a_folder_run_goes_on_past_a_bomb_and_reports_it(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a deep.dcm").write_bytes(hostile.deep_object(1000))
    (src / "b deeper.dcm").write_bytes(hostile.deep_object(20000, undefined_length=False))
    shutil.copy(TEST_FILES / "CT_small.dcm", src / "c.dcm")
    result = run_cli("deid", str(src), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "refused a deep.dcm: malformed" in result.stdout.splitlines()
    assert "refused b deeper.dcm: malformed" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1].startswith("1 de-identified, 0 duplicate, 2 refused")
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1


# 8. CLI outputs never collide silently


def test_duplicates_are_reported_and_conflicts_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", src / "a.dcm")
    shutil.copy(TEST_FILES / "CT_small.dcm", src / "b copy.dcm")
    other = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    other.SliceThickness = "9.5"  # kept by the profile: another output, the same SOP Instance UID
    other.save_as(src / "c other.dcm")
    result = run_cli("deid", str(src), str(tmp_path / "out"), "--jobs", "2", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert "duplicate b copy.dcm: the same output as another file" in lines
    assert "refused c other.dcm: conflicting_instance" in lines
    assert lines[-1].startswith("1 de-identified, 1 duplicate, 1 refused")
    outputs = list((tmp_path / "out").rglob("*"))
    assert len([p for p in outputs if p.is_file()]) == 1  # no partial file left behind
    again = run_cli("deid", str(src / "a.dcm"), str(tmp_path / "out"), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.splitlines()[-1].startswith("0 de-identified, 1 duplicate")


def test_the_summary_equals_the_files_on_disk_for_pydicoms_test_files(tmp_path):
    result = run_cli("deid", str(TEST_FILES), str(tmp_path / "out"), "--jobs", "2", cwd=tmp_path)
    summary = result.stdout.splitlines()[-1]
    written = int(summary.split(" de-identified")[0])
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written == len(files) and all(p.suffix == ".dcm" for p in files)
    refused = [line for line in result.stdout.splitlines() if line.startswith("refused ")]
    duplicates = [line for line in result.stdout.splitlines() if line.startswith("duplicate ")]
    inputs = [p for p in TEST_FILES.rglob("*") if p.is_file()]
    assert written + len(refused) + len(duplicates) == len(inputs)


# 5. Pixel policy: refuse what cannot be shown clean

ULTRASOUND = "1.2.840.10008.5.1.4.1.1.6.1"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _with(sop_class: str | None = None, **attributes: str) -> bytes:
    ds = hostile.base_dataset()
    if sop_class:
        ds.SOPClassUID = sop_class
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return hostile.part10(ds)


@pytest.mark.parametrize("sop_class", [ULTRASOUND, MULTIFRAME_TRUE_COLOR_SC, VL_PHOTOGRAPHIC, VIDEO_ENDOSCOPIC])
def test_classes_at_risk_need_burned_in_annotation_exactly_no(sop_class):
    assert refusal(_with(sop_class)) == "burned_in_annotation"  # absent is not NO
    assert refusal(_with(sop_class, BurnedInAnnotation="")) == "burned_in_annotation"
    assert refusal(_with(sop_class, BurnedInAnnotation="YES")) == "burned_in_annotation"
    output = deidentify(_with(sop_class, BurnedInAnnotation="NO"))
    assert not hostile.leaked(output, ["ZQXFAMILY^ZQXGIVEN", "ZQXPATIENTID"])


@pytest.mark.parametrize("value", ["NO\\YES", "YES\\NO", "no", "N", "UNKNOWN", "NO\\NO"])
def test_multi_valued_or_non_standard_burned_in_annotation_is_refused(value):
    for sop_class in (None, ULTRASOUND):
        assert refusal(_with(sop_class, BurnedInAnnotation=value)) == "burned_in_annotation"
        assert refusal(_with(sop_class, BurnedInAnnotation=value), allow_burned_in_annotation=True) == (
            "burned_in_annotation")


@pytest.mark.parametrize("value", ["YES", "yes", "NO\\YES", "MAYBE"])
def test_recognizable_visual_features_other_than_no_is_refused(value):
    assert refusal(_with(None, RecognizableVisualFeatures=value)) == "recognizable_visual_features"
    assert refusal(_with(VL_PHOTOGRAPHIC, BurnedInAnnotation="NO", RecognizableVisualFeatures=value),
                   pixel_opt_in=(VL_PHOTOGRAPHIC,)) == "recognizable_visual_features"
    assert deidentify(_with(None, RecognizableVisualFeatures="NO"))


def test_a_partner_opts_in_per_class_and_documents_need_an_opt_in():
    assert deidentify(_with(ULTRASOUND), pixel_opt_in=(ULTRASOUND,))
    assert refusal(_with(VL_PHOTOGRAPHIC), pixel_opt_in=(ULTRASOUND,)) == "burned_in_annotation"
    assert refusal(_with(ULTRASOUND, BurnedInAnnotation="YES"), pixel_opt_in=(ULTRASOUND,)) == "burned_in_annotation"
    assert refusal(_with(ENCAPSULATED_PDF, BurnedInAnnotation="NO")) == "burned_in_annotation"
    assert deidentify(_with(ENCAPSULATED_PDF, BurnedInAnnotation="NO"), pixel_opt_in=(ENCAPSULATED_PDF,))


def test_partner_opt_in_is_configuration():
    from dicomshare.settings import Partner, from_document, to_document

    settings = from_document({"partners": [{"id": "echo-lab", "pixel_opt_in": [ULTRASOUND]}, {"id": "other"}]})
    assert settings.for_partner(settings.partner("echo-lab")).pixel_opt_in == (ULTRASOUND,)
    assert settings.for_partner(settings.partner("other")).pixel_opt_in == ()
    assert from_document(to_document(settings)) == settings
    assert Partner(id="x").pixel_opt_in == ()


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def test_native_pixel_data_longer_than_its_geometry_is_refused():
    ds = hostile.base_dataset()  # 4 x 4, 16 bits: 32 bytes
    assert deidentify(hostile.part10(ds, pixel_data=bytes(32)))
    hidden = bytes(32) + b"ZQXFAMILY^ZQXGIVEN hidden after the frame"
    assert refusal(hostile.part10(ds, pixel_data=hidden)) == "pixel_data_length"
    ds.NumberOfFrames = "2"
    assert deidentify(hostile.part10(ds, pixel_data=bytes(64)))
    del ds.Rows
    assert refusal(hostile.part10(ds, pixel_data=bytes(64))) == "pixel_data_length"


def test_encapsulated_items_only_under_encapsulated_transfer_syntaxes():
    ds = hostile.base_dataset()
    frame = hostile.jpeg(hostile.JFIF)
    native_with_items = hostile.part10(ds, hostile.encapsulated(frame), pixel_data=None)
    assert refusal(native_with_items) == "malformed"
    jpeg_with_native = hostile.part10(ds, pixel_data=bytes(32), transfer_syntax=JPEG_BASELINE)
    assert refusal(jpeg_with_native) == "malformed"
    assert deidentify(hostile.part10(ds, hostile.encapsulated(frame), pixel_data=None, transfer_syntax=JPEG_BASELINE))


@pytest.mark.parametrize("segment", [
    (0xFFFE, b"Patient ZQXFAMILY^ZQXGIVEN"),  # COM
    (0xFFE1, b"Exif\x00\x00ZQXFAMILY"),  # APP1 (EXIF)
    (0xFFE0, b"ZQXFAMILY not JFIF"),  # APP0 that is not JFIF
    (0xFFED, b"Photoshop 3.0\x00ZQXFAMILY"),  # APP13 (IPTC)
])
def test_jpeg_comments_and_application_segments_other_than_jfif_and_adobe_are_refused(segment):
    ds = hostile.base_dataset()
    frame = hostile.jpeg(hostile.JFIF, segment)
    data = hostile.part10(ds, hostile.encapsulated(frame), pixel_data=None, transfer_syntax=JPEG_BASELINE)
    assert refusal(data) == "jpeg_metadata"
    second_frame = hostile.part10(ds, hostile.encapsulated(hostile.jpeg(hostile.JFIF), frame), pixel_data=None,
                                  transfer_syntax=JPEG_BASELINE)
    assert refusal(second_frame) == "jpeg_metadata"
    adobe = hostile.jpeg(hostile.JFIF, (0xFFEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01"))
    assert deidentify(hostile.part10(ds, hostile.encapsulated(adobe), pixel_data=None, transfer_syntax=JPEG_BASELINE))


@pytest.mark.parametrize("overlay", [{"OverlayBitsAllocated": 16, "OverlayBitPosition": 12},
                                     {"OverlayBitsAllocated": 1, "OverlayBitPosition": 15}])
def test_overlays_declared_in_pixel_data_bits_are_refused(overlay):
    ds = hostile.base_dataset()
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000100, "US", overlay["OverlayBitsAllocated"])
    ds.add_new(0x60000102, "US", overlay["OverlayBitPosition"])
    assert refusal(hostile.part10(ds)) == "overlay_in_pixel_data"
    encoded, dataset = both_paths(hostile.part10(ds))
    assert encoded is None and dataset == "overlay_in_pixel_data"


# 2. Attributes outside Table E.1-1: the dictionary's VR, binary values, what holds originals


def _item(**elements: tuple[str, object]) -> pydicom.Dataset:
    """An item from keyword arguments named x<tag in hex>."""
    item = pydicom.Dataset()
    for tag, (vr, value) in elements.items():
        item.add_new(int(tag[1:], 16), vr, value)
    return item


def test_outside_the_table_the_dictionary_vr_decides_and_binary_values_go():
    ds = hostile.base_dataset()
    ds.add_new(0x00140104, "LO", "ZQXREVIEWER^ZQXNAME")  # Secondary Reviewer Name (PN) written as LO
    ds.add_new(0x0008041B, "OB", b"ZQXRECORDKEY")  # Record Key
    ds.add_new(0x00143080, "OB", b"ZQXBADPIXEL ")  # Bad Pixel Image: not needed to render
    ds.add_new(0x00281201, "OW", bytes(range(16)))  # Red Palette Color Lookup Table Data: kept
    ds.add_new(0x04000500, "SQ", pydicom.Sequence([_item(  # Encrypted Attributes Sequence
        x04000510=("UI", "1.2.840.10008.1.2.1"), x04000520=("OB", b"ZQXENCRYPTED"))]))
    ds.add_new(0x006862C0, "SQ", pydicom.Sequence([_item(x006862D0=("US", 1), x00686300=("OB", b"ZQXHPGL "))]))
    ds.add_new(0x00081140, "SQ", pydicom.Sequence([_item(  # a Digital Signatures Sequence in an item
        x00081150=("UI", "1.2.840.10008.5.1.4.1.1.2"), x00081155=("UI", "1.2.3.999.7"),
        xFFFAFFFA=("SQ", pydicom.Sequence([_item(x04000120=("OB", b"ZQXSIGNATURE"))])))]))
    ds.add_new(0x7F000010, "OW", b"ZQXVARIABLE ")  # Variable Pixel Data
    data = hostile.part10(ds)
    for profile_name in ("basic", "clinical"):
        profile = profiles.named(profile_name)
        encoded, dataset = both_paths(data, profile)
        assert encoded.new_header == dataset.new_header
        output = deidentify(data, profile)
        assert not hostile.leaked(output, ["ZQXREVIEWER^ZQXNAME", "ZQXRECORDKEY", "ZQXBADPIXEL", "ZQXENCRYPTED",
                                           "ZQXHPGL", "ZQXSIGNATURE", "ZQXVARIABLE", "ZQXFAMILY^ZQXGIVEN"])
        out = pydicom.dcmread(io.BytesIO(output))
        assert out.RedPaletteColorLookupTableData == bytes(range(16))
        assert 0x04000500 not in out and 0x006862C0 not in out and 0x7F000010 not in out
        assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("tag, vr, value", [
    (0x00142006, "OB", b"ZQXEVALUATOR"),  # Evaluator Name (PN) written as OB
    (0x00080041, "US", 7),  # Data Set Subtype (LO) written as US
    (0x00100030, "OB", b"19010101"),  # Patient's Birth Date (DA, in the table) written as OB
    (0x00081140, "LO", "ZQXNOTASEQUENCE"),  # a sequence written as text
])
def test_a_vr_that_contradicts_the_dictionary_is_refused(tag, vr, value):
    ds = hostile.base_dataset()
    ds.add_new(tag, vr, value)
    encoded, dataset = both_paths(hostile.part10(ds))
    assert encoded is None and dataset == MALFORMED


# 6. Formatted values follow the PS3.5 grammar or go


@pytest.mark.parametrize("options", [("rtnLongModifDatesOpt", "cleanDescOpt"), ("rtnLongFullDatesOpt",),
                                     ("rtnPatCharsOpt", "rtnLongModifDatesOpt")])
def test_kept_dates_times_ages_and_offsets_follow_the_grammar(options):
    profile = profiles.for_partner(options)
    ds = hostile.base_dataset()
    ds.StudyDate = "20200110"
    ds.SeriesDate = "20200231"  # no such day
    ds.StudyTime = "1030 ZQXTIME"
    ds.SeriesTime = "103000.5"
    ds.AcquisitionDateTime = "20200110083000 ZQXDATETIME"
    ds.ContentDate = "10.01.2020"  # ACR-NEMA spelling
    ds.TimezoneOffsetFromUTC = "ZQX 1 MAIN STREET"
    ds.PatientAge = "077Y ZQXAGE"
    ds.add_new(0x00140102, "DA", "20200110ZQXDA")  # Secondary Review Date (outside the table)
    ds.add_new(0x00140103, "TM", ["1030", "2561"])  # Secondary Review Time: one valid, one not
    ds.add_new(0x00080416, "DT", "20200110083000+0100")  # Expiration Date Time: valid
    data = hostile.part10(ds)
    encoded, dataset = both_paths(data, profile)
    assert encoded.new_header == dataset.new_header
    output = deidentify(data, profile)
    assert not hostile.leaked(output, ["ZQXTIME", "ZQXDATETIME", "ZQX 1 MAIN STREET", "ZQXAGE", "ZQXDA"])
    out = pydicom.dcmread(io.BytesIO(output))
    from dicomshare.deidentify.formatted import conforms

    for elem in out.iterall():
        form = "TZ" if elem.tag == 0x00080201 else elem.VR
        if form in ("DA", "DT", "TM", "AS", "TZ"):
            for value in elem.value if elem.VM > 1 else [elem.value]:
                assert conforms(form, str(value or "").strip()), (elem.keyword, value)
    if "StudyDate" in out and out.StudyDate:
        assert conforms("DA", out.StudyDate) and out.StudyDate != "20200110" or "rtnLongFullDatesOpt" in options
    assert out.SeriesDate == "" and out.get("StudyTime", "") == ""


def test_a_valid_utc_offset_is_kept_under_the_modified_dates_option():
    ds = hostile.base_dataset()
    ds.TimezoneOffsetFromUTC = "+0100"
    out = pydicom.dcmread(io.BytesIO(deidentify(hostile.part10(ds))))
    assert out.TimezoneOffsetFromUTC == "+0100"


def _pixels(values: list[int], *, bits_stored: int = 12, signed: bool = False) -> bytes:
    ds = hostile.base_dataset()  # 4 x 4, 16 bits allocated, high bit 11
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    import struct

    return hostile.part10(ds, pixel_data=struct.pack(f"<{len(values)}{'h' if signed else 'H'}", *values))


def test_bits_above_high_bit_are_refused_unless_zero_or_sign():
    name_plane = [0x8000 | 100] * 8 + [100] * 8  # an overlay bit plane at bit 15
    assert refusal(_pixels(name_plane)) == "overlay_in_pixel_data"
    encoded, dataset = both_paths(_pixels(name_plane))
    assert encoded is None and dataset == "overlay_in_pixel_data"
    assert deidentify(_pixels([4095] * 16))
    assert deidentify(_pixels([-2048, -1, 0, 2047] * 4, signed=True))  # sign-extended
    assert deidentify(_pixels([0x0800, 0x0FFF, 0, 0x07FF] * 4))  # signed data, upper bits zero
    assert deidentify(_pixels([0x0800, 0x0FFF, 0, 0x07FF] * 4, signed=False))
    mixed = [0x4800] + [0] * 15
    assert refusal(_pixels(mixed, signed=False)) == "overlay_in_pixel_data"
    ds = hostile.base_dataset()
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    import struct

    garbage = hostile.part10(ds, pixel_data=struct.pack("<16H", *([0x5800] + [0] * 15)))
    assert refusal(garbage) == "overlay_in_pixel_data"
    assert deidentify(_pixels([0xFFFF] * 16, bits_stored=16))  # every bit is stored


def test_unused_bits_checked_from_a_real_file_too(tmp_path):
    from dicomshare.deidentify import deidentify_file

    path = tmp_path / "overlay.dcm"
    path.write_bytes(_pixels([0x8000] * 16))
    with pytest.raises(DeidentificationRefused) as refused:
        deidentify_file(path, tmp_path / "out", secret=SECRET, partner=PARTNER)
    assert refused.value.reason == "overlay_in_pixel_data"
    path.write_bytes(_pixels([0x0FFF] * 16))
    assert deidentify_file(path, tmp_path / "out", secret=SECRET, partner=PARTNER)


def test_unused_bits_of_a_large_file_are_checked_in_bounded_memory(tmp_path):
    """256 MiB of native Pixel Data with Bits Stored 12 of 16 is checked to its last sample
    (an overlay bit there is found) while the process stays far below the value's size:
    a real file is mapped a window at a time (mapping it whole took the process's peak
    resident memory past the size of the value). In a child process, which reads its own
    peak (VmHWM: ``ru_maxrss`` would carry over the test process's)."""
    ds = hostile.base_dataset()
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = 128
    length = 1024 * 1024 * 2 * 128
    path = tmp_path / "large.dcm"
    with open(path, "wb") as out:
        out.write(hostile.part10(ds, pixel_data=None) + hostile.element(0x7FE00010, "OW", b"")[:-4])
        out.write(length.to_bytes(4, "little"))
        for _ in range(128):
            out.write(bytes(2 * 1024**2))
    script = (
        "import sys; from pathlib import Path; from dicomshare.deidentify import deidentify_file; "
        "from dicomshare.validation import DeidentificationRefused\n"
        "path = Path(sys.argv[1]); deidentify_file(path, path.parent / 'out', secret=b's' * 32, partner='p')\n"
        "with open(path, 'r+b') as f: f.seek(-2, 2); f.write(b'\\x00\\x80')\n"
        "try: deidentify_file(path, path.parent / 'out2', secret=b's' * 32, partner='p'); print('accepted')\n"
        "except DeidentificationRefused as refused: print(refused.reason)\n"
        "print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')) // 1024)"
    )
    child = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    reason, peak_mib = child.stdout.split()
    assert reason == "overlay_in_pixel_data"
    assert int(peak_mib) < 200  # the value is 256 MiB; about 100 MiB with pydicom and numpy loaded


def test_kept_numbers_and_class_uids_follow_the_grammar():
    ds = hostile.base_dataset()
    hostile.set_raw(ds, 0x00180050, "DS", b"1.5 ZQXNUMBER")  # Slice Thickness
    hostile.set_raw(ds, 0x00200013, "IS", b"7ZQXINSTANCE")  # Instance Number
    hostile.set_raw(ds, 0x00280030, "DS", b"0.5\\0.5")  # Pixel Spacing: kept
    item = pydicom.Dataset()
    hostile.set_raw(item, 0x00081150, "UI", b"1.2.840.ZQXCLASS")  # Referenced SOP Class UID
    hostile.set_raw(item, 0x00081155, "UI", b"1.2.3.999.7")
    ds.add_new(0x00081140, "SQ", pydicom.Sequence([item]))
    data = hostile.part10(ds)
    for profile in (CLINICAL, profiles.named("basic")):
        encoded, dataset = both_paths(data, profile)
        assert encoded.new_header == dataset.new_header
        assert not hostile.leaked(encoded.new_header, ["ZQXNUMBER", "ZQXINSTANCE", "ZQXCLASS"])
        out = pydicom.dcmread(io.BytesIO(encoded.new_header))
        assert out.PixelSpacing == [0.5, 0.5] and out.get("SliceThickness") in (None, "")
    ds = hostile.base_dataset()
    hostile.set_raw(ds, 0x00080016, "UI", b"ZQXFAMILY")
    assert refusal(hostile.part10(ds)) == MALFORMED


def _j2k(*segments: tuple[int, bytes]) -> bytes:
    """A JPEG 2000 codestream: SOC, SIZ, the ``segments``, then a tile-part and EOC."""
    import struct

    body = b"\xff\x4f" + struct.pack(">HH", 0xFF51, 2 + 38) + bytes(38)
    for marker, payload in segments:
        body += struct.pack(">HH", marker, len(payload) + 2) + payload
    return body + struct.pack(">HHHLBB", 0xFF90, 10, 0, 20, 0, 1) + b"\xff\x93" + b"\x00" * 6 + b"\xff\xd9"


def test_jpeg_2000_comments_are_refused():
    ds = hostile.base_dataset()
    commented = _j2k((0xFF64, b"\x00\x01Patient ZQXFAMILY^ZQXGIVEN"))
    data = hostile.part10(ds, hostile.encapsulated(commented), pixel_data=None, transfer_syntax="1.2.840.10008.1.2.4.90")
    assert refusal(data) == "jpeg_metadata"
    clean = hostile.part10(ds, hostile.encapsulated(_j2k()), pixel_data=None, transfer_syntax="1.2.840.10008.1.2.4.90")
    assert deidentify(clean)
    for comment, reason in ((b"Kakadu-v7.10.2", None), (b"Created by OpenJPEG version 2.5.0", None),
                            (b"Kakadu-v7.10.2 ZQXFAMILY", "jpeg_metadata"), (b"Created by ZQXFAMILY", "jpeg_metadata")):
        stream = _j2k((0xFF64, b"\x00\x01" + comment))
        data = hostile.part10(ds, hostile.encapsulated(stream), pixel_data=None,
                              transfer_syntax="1.2.840.10008.1.2.4.90")
        if reason:
            assert refusal(data) == reason
        else:
            assert deidentify(data)


def test_jpeg_encoder_comments_and_the_spiff_header_are_accepted():
    ds = hostile.base_dataset()
    for segment in ((0xFFFE, b"CREATOR: gd-jpeg v1.0 (using IJG JPEG v62), quality = 75\n"),
                    (0xFFE8, b"SPIFF\x00\x02\x00\x00\x03")):
        frame = hostile.jpeg(hostile.JFIF, segment)
        assert deidentify(hostile.part10(ds, hostile.encapsulated(frame), pixel_data=None,
                                         transfer_syntax=JPEG_BASELINE))
    spiff_title = hostile.jpeg((0xFFE8, b"\x00\x00\x00\x06ZQXFAMILY"))  # a SPIFF image title entry
    assert refusal(hostile.part10(ds, hostile.encapsulated(spiff_title), pixel_data=None,
                                  transfer_syntax=JPEG_BASELINE)) == "jpeg_metadata"


def test_a_deflated_object_is_searched_inflated():
    """The deflated output is searched after inflating it: compressed, no planted byte
    would be found even if it were there."""
    ds = hostile.base_dataset()
    ds.StudyDescription = "CT for ZQXFAMILY ZQXGIVEN"
    ds.add_new(0x00140104, "LO", "ZQXREVIEWER^ZQXNAME")
    ds.add_new(0x00281201, "OW", bytes(range(16)))
    ds.add_new(0x00143080, "OB", b"ZQXBADPIXEL ")
    ds.PixelData = bytes(32)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert hostile.leaked(data, ["ZQXREVIEWER^ZQXNAME", "ZQXBADPIXEL"])  # the search sees inside the stream
    output = deidentify(data)
    assert hostile.inflated(output)
    assert not hostile.leaked(output, ["ZQXFAMILY", "ZQXGIVEN", "ZQXREVIEWER^ZQXNAME", "ZQXBADPIXEL", "ZQXPATIENTID"])
    out = pydicom.dcmread(io.BytesIO(output))
    assert out.RedPaletteColorLookupTableData == bytes(range(16)) and out.PixelData == bytes(32)


def _many_empty_elements(count: int) -> bytes:
    import struct

    tail = b"".join(struct.pack("<HH2sH", 0x00A2 + 2 * (n // 0xFFFF), 1 + n % 0xFFFF, b"LO", 0) for n in range(count))
    return hostile.part10(hostile.base_dataset(), tail)


def test_a_header_of_too_many_elements_is_refused_too_large(monkeypatch):
    """Each element costs memory whatever its size: past MAX_ELEMENTS (a million, lowered
    here to keep the test short) the object is refused before pydicom would take more."""
    from dicomshare import encoded_dataset

    monkeypatch.setattr(encoded_dataset, "MAX_ELEMENTS", 10_000)
    assert refusal(_many_empty_elements(20_000)) == "too_large"
    nested = hostile.deep_object(2, leaf=b"".join(hostile.element(0x00A10000 + n, "LO", b"") for n in range(1, 12_000)))
    assert refusal(nested) == "too_large"
    assert deidentify(_many_empty_elements(5_000))
