"""What de-identifying a header is asked (:class:`Request`), and its result (:class:`Plan`):
new bytes before Pixel Data, and the source's Pixel Data range to append verbatim."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import pydicom
from pydicom.dataset import Dataset

from dicomshare.deidentify.dataset_reader import quiet_pydicom
from dicomshare.profile import Profile
from dicomshare.settings import Settings


@dataclass(frozen=True)
class Request:
    """What both paths of :func:`~dicomshare.deidentify.deidentify_header` de-identify an
    object with: the profile, the settings its validation applies, and the identities
    keyed with ``secret`` and scoped to ``partner``; ``study_patient`` as for that function."""

    profile: Profile
    secret: bytes
    settings: Settings
    partner: str
    study_patient: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class Plan:
    """The result of :func:`~dicomshare.deidentify.deidentify_header`.

    ``new_header``: preamble, File Meta Information and the de-identified data set up to
    (excluding) Pixel Data. ``pixel_offset``/``pixel_end``: the source byte range of the
    Pixel Data element to append verbatim; ``pixel_offset`` is ``None`` when
    ``new_header`` is the whole output. The UIDs are the output's.
    """

    new_header: bytes
    pixel_offset: int | None
    pixel_end: int
    patient_pseudonym: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @property
    def pixel_length(self) -> int:
        return 0 if self.pixel_offset is None else self.pixel_end - self.pixel_offset

    @property
    def output_size(self) -> int:
        return len(self.new_header) + self.pixel_length

    @property
    def relative_path(self) -> str:
        """``<study>/<series>/<sop>.dcm``, from the new UIDs only."""
        return f"{self.study_instance_uid}/{self.series_instance_uid}/{self.sop_instance_uid}.dcm"

    @cached_property
    def dataset(self) -> Dataset:
        """The de-identified data set without pixel data (for the indexer), read from ``new_header``."""
        with quiet_pydicom():
            return pydicom.dcmread(io.BytesIO(self.new_header), stop_before_pixels=True)

