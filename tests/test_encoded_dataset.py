"""Reading a data set as its encoded elements (PS3.5 7.1, 7.5), alone and like another."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicomshare.encoded_dataset import NotPlain, read_data_set


def encoded(ds: Dataset, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def study_object(instance: int, comment: str, with_location: bool, referenced: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.3.{instance}"
    ds.StudyDate = "20240102"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPInstanceUID = referenced
    ds.ReferencedImageSequence = Sequence([item])
    ds.PatientName = "Doe^Jane"
    ds.InstanceNumber = instance
    if with_location:
        ds.SliceLocation = 1.5
    ds.ImageComments = comment
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_reading_like_the_previous_data_set_reuses_what_repeats_and_reads_the_rest(implicit):
    first = encoded(study_object(1, "short", False, "1.2.3.1"), implicit)
    second = encoded(study_object(22, "a longer comment", True, "1.2.3.2"), implicit)
    before, _ = read_data_set(first, 0, implicit=implicit, complete=True)
    alone, _ = read_data_set(second, 0, implicit=implicit, complete=True)
    like, _ = read_data_set(second, 0, implicit=implicit, complete=True, like=before)
    assert [(e.tag, e.raw) for e in like] == [(e.tag, e.raw) for e in alone]
    reused = {e.tag for e in like if any(e is b for b in before)}
    assert reused == {0x00080020, 0x00080060, 0x00100010}  # Study Date, Modality, Patient's Name
    assert like[3].value[0].elements[0].value == b"1.2.3.2\x00"


@pytest.mark.parametrize("implicit", [False, True])
def test_elements_out_of_order_are_not_plain_even_when_known(implicit):
    before, _ = read_data_set(encoded(study_object(1, "c", False, "1.2.3.1"), implicit), 0, implicit=implicit, complete=True)
    shuffled = b"".join(e.raw for e in reversed(before))
    with pytest.raises(NotPlain):
        read_data_set(shuffled, 0, implicit=implicit, complete=True)
    with pytest.raises(NotPlain):
        read_data_set(shuffled, 0, implicit=implicit, complete=True, like=before)
    repeated = before[0].raw + before[0].raw
    with pytest.raises(NotPlain):
        read_data_set(repeated, 0, implicit=implicit, complete=True, like=before)
