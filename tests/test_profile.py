"""PS3.15 Table E.1-1 as packaged, and how rows, options and compound codes become actions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydicom.datadict import tag_for_keyword

import dicomshare
from dicomshare import profile
from dicomshare.settings import Partner


def tag(keyword: str) -> int:
    return tag_for_keyword(keyword)


def test_packaged_table_is_complete():
    rows = profile.table_rows()
    assert len(rows) == 621
    assert {r["basicProfile"] for r in rows} <= {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}


def test_basic_profile_actions():
    basic = profile.named("basic")
    assert basic.options == () and basic.revision == "2024b"
    assert basic.action(tag("PatientName")) == "Z"
    assert basic.action(tag("StudyInstanceUID")) == "U"
    assert basic.action(tag("StudyDescription")) == "X"
    assert basic.action(tag("Modality")) is None


@pytest.mark.parametrize(
    "code, in_iod, expected",
    [("X/Z", True, "Z"), ("X/D", True, "D"), ("Z/D", True, "D"), ("X/Z/D", True, "D"), ("X/Z/U*", True, "U"),
     ("X/Z", False, "X"), ("Z/D", False, "Z"), ("K", True, "K")],
)
def test_compound_codes_resolve_to_a_valid_action(code, in_iod, expected):
    assert profile.resolve(code, in_iod) == expected


def test_compound_rows():
    basic = profile.named("basic")
    assert basic.action(tag("ReferencedImageSequence")) == "U"
    assert basic.action(tag("InstitutionName")) == "D"
    assert basic.action(tag("ContentDate")) == "D"


def test_repeating_groups_and_private_attributes():
    basic = profile.named("basic")
    assert basic.action(0x60003000) == basic.action(0x601E3000) == "X"
    assert basic.action(0x60024000) == "X"
    assert basic.action(0x50101234) == "X"
    assert basic.action(0x60000010) is None
    assert basic.action(0x00091001) == basic.action(0x7FE10010) == "X"


def test_clinical_options_override_the_basic_profile():
    clinical = profile.named("clinical")
    assert clinical.options == ("rtnLongModifDatesOpt", "cleanDescOpt")
    assert clinical.action(tag("StudyDate")) == "C"
    assert clinical.action(tag("StudyDescription")) == "C"
    assert clinical.action(tag("PatientName")) == "Z"
    assert [c.value for c in clinical.codes] == ["113100", "113107", "113105"]
    assert "2024b" in " ".join(clinical.method)


def test_method_codes_are_those_of_cid_7050():
    """The codes are written out in :mod:`dicomshare.profile`; pydicom's dictionary agrees."""
    from pydicom.sr.codedict import codes

    known = {c.value: c for c in (getattr(codes.DCM, name) for name in codes.DCM.dir())}
    for code in (profile.BASIC_PROFILE_CODE, *profile.OPTION_CODES.values()):
        assert (code.scheme_designator, code.meaning) == (known[code.value].scheme_designator, known[code.value].meaning)


def test_keep_wins_over_clean_and_uids_can_be_retained():
    both = profile.Profile(name="custom", options=("rtnLongModifDatesOpt", "rtnLongFullDatesOpt", "rtnUIDsOpt"))
    assert both.action(tag("StudyDate")) == "K"
    assert both.action(tag("SOPInstanceUID")) == "K"


def test_partner_options_and_unknown_names():
    assert profile.for_partner(Partner(id="p1").options).name == "clinical"
    assert profile.for_partner(()).name == "basic"
    assert profile.for_partner(("rtnDevIdOpt",)).action(tag("DeviceSerialNumber")) == "K"
    with pytest.raises(ValueError):
        profile.Profile(options=("cleanGraphOpt",))
    with pytest.raises(ValueError):
        profile.named("lenient")


def test_domain_package_never_imports_aws_sdks():
    package = Path(dicomshare.__file__).parent
    imported = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"boto3", "botocore", "aioboto3", "s3transfer"}
