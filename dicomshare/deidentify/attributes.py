"""What the safety policy knows about attributes: outside PS3.15 Table E.1-1 the text and
UIDs that are kept, binary values that rendering needs, attributes that always go, and the
VR every rule is applied with (the data dictionary's, not the file's); for the checks of
kept text (:meth:`.actions.Deidentifier.check_kept`) the VRs checked, codes and coding
schemes, enumerated code strings, and the long free texts Clean Descriptors removes."""

from __future__ import annotations

from functools import lru_cache

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from dicomshare.encoded_dataset import dictionary_entry
from dicomshare.validation import MALFORMED, DeidentificationRefused

TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})

KEPT_TEXT = frozenset(
    {
        0x00080100,  # Code Value
        0x00080102,  # Coding Scheme Designator
        0x00080103,  # Coding Scheme Version
        0x00080104,  # Code Meaning
        0x00080105,  # Mapping Resource
        0x00080106,  # Context Group Version
        0x0008010F,  # Context Identifier
        0x00080119,  # Long Code Value
        0x00080120,  # URN Code Value
        0x00080070,  # Manufacturer
        0x00081090,  # Manufacturer's Model Name
        0x00181020,  # Software Versions
        0x00281054,  # Rescale Type
        0x00283003,  # LUT Explanation
        0x00281055,  # Window Center & Width Explanation
        0x00180024,  # Sequence Name
        0x00180085,  # Imaged Nucleus
        0x00181040,  # Contrast/Bolus Route
        0x00181160,  # Filter Type
        0x00181210,  # Convolution Kernel
        0x00181250,  # Receive Coil Name
        0x00181251,  # Transmit Coil Name
        0x00189005,  # Pulse Sequence Name
    }
)
"""Text attributes outside Table E.1-1 kept verbatim: coded entries (PS3.3 8.8) and
equipment, acquisition-technique and LUT vocabulary. Any other non-empty text attribute outside the table gets a
dummy value (valid whether the attribute is Type 1, 2 or 3)."""

KEPT_UID_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "MediaStorageSOPClassUID",
        "AffectedSOPClassUID",
        "RequestedSOPClassUID",
        "ReferencedSOPClassUIDInFile",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "SOPClassesInStudy",
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "MappingResourceUID",
        "ContextUID",
        "PrivateInformationCreatorUID",
        "ImplementationClassUID",
    }
)
"""UI attributes naming a class, syntax or scheme, never an instance: always kept."""
KEPT_UID_TAGS = frozenset(tag_for_keyword(keyword) for keyword in KEPT_UID_KEYWORDS)

CODE_VALUE_TAGS = frozenset({0x00080100, 0x00080119, 0x00080120})
"""Code Value, Long Code Value, URN Code Value: replaced whole when they hold an
identifier; checked by the free-text detector only in a local coding scheme
(:func:`local_coding_scheme`), since standard codes are digit runs (SNOMED CT)."""

STANDARD_CODING_SCHEMES = frozenset(
    {"DCM", "SCT", "SRT", "LN", "UCUM", "FMA", "RADLEX", "NCIt", "UMLS", "MDC", "NEU", "UBERON", "ICD10", "I10",
     "I9C", "I10P", "ACR", "SNM3", "99SDM", "NCDR", "BARI", "DCMUID", "ISO3166_1", "ISO639_1", "ISO639_2", "HPC",
     "CD2", "C4", "ITIS_TSN", "MGI", "PUBCHEM_CID", "NYUMCCG", "MAYONRISBIOR", "IBSI", "RXNORM", "ATC"}
)
"""Coding scheme designators of PS3.16 Table 8-1 whose codes are vocabulary. Any other
(``99...`` private schemes, ``L``, ``LOCAL``, anything unknown) is local: a site may put
anything in its codes."""


def local_coding_scheme(designator: str | None) -> bool:
    """Whether the codes of an item with this Coding Scheme Designator are local (PS3.16 8)."""
    return (designator or "").strip(" \x00") not in STANDARD_CODING_SCHEMES


FREE_TEXT_KEYWORDS = (
    "AcquisitionComments", "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "Allergies",
    "CommentsOnRadiationDose", "CommentsOnThePerformedProcedureStep", "DischargeDiagnosisDescription",
    "FrameComments", "IdentifyingComments", "ImageComments", "ImagingServiceRequestComments", "Impressions",
    "InterpretationDiagnosisDescription", "InterpretationText", "MedicalAlerts", "Occupation", "PatientComments",
    "PatientState", "ReasonForStudy", "ReasonForTheImagingServiceRequest", "ReasonForTheRequestedProcedure",
    "ReasonForVisit", "RequestedProcedureComments", "ResultsComments", "ServiceEpisodeDescription",
    "SpecimenDetailedDescription", "StudyComments", "VisitComments", "FractionationNotes", "PrescriptionNotes",
    "RTPhysicianIntentNarrative", "TreatmentTechniqueNotes", "MakerNote",
)
"""Histories, comments, reasons, impressions and notes: long free text written about the
patient rather than a descriptor a clinician reads to find an image. Clean Descriptors
keeps the descriptors (Study, Series, Performed Procedure Step and Requested Procedure
Description, Protocol Name, labels, ...) cleaned; these take the basic profile's action
unless the profile keeps free text."""
FREE_TEXT_TAGS = frozenset(tag_for_keyword(keyword) for keyword in FREE_TEXT_KEYWORDS)

ENUMERATED_KEYWORDS = (
    "ValueType", "RelationshipType", "ContinuityOfContent", "Modality", "PhotometricInterpretation",
    "PatientPosition", "ConversionType", "PixelPresentation", "VolumetricProperties", "Laterality",
    "ImageLaterality", "PresentationIntentType", "RescaleType", "CompletionFlag", "VerificationFlag",
)
"""Code strings with enumerated values (PS3.3): one word of a name (``Text``, ``Primary``)
must not replace the term the object's structure needs; whole identifiers and the
free-text detector still apply."""
ENUMERATED_TAGS = frozenset(tag_for_keyword(keyword) for keyword in ENUMERATED_KEYWORDS)

CHECKED_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
"""The VRs of kept values that :meth:`Deidentifier.check_kept` checks."""

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"})
"""Values no text check can read: outside Table E.1-1 removed unless in :data:`KEPT_BINARY`."""

KEPT_BINARY = frozenset(
    {
        0x00281201,  # Red Palette Color Lookup Table Data
        0x00281202,  # Green Palette Color Lookup Table Data
        0x00281203,  # Blue Palette Color Lookup Table Data
        0x00281204,  # Alpha Palette Color Lookup Table Data
        0x00281221,  # Segmented Red Palette Color Lookup Table Data
        0x00281222,  # Segmented Green Palette Color Lookup Table Data
        0x00281223,  # Segmented Blue Palette Color Lookup Table Data
        0x00283006,  # LUT Data (Modality and VOI LUT Sequences)
        0x00282000,  # ICC Profile
        0x54001010,  # Waveform Data
        0x7FE00001,  # Extended Offset Table
        0x7FE00008,  # Float Pixel Data (deflated objects carry it in the data set)
        0x7FE00009,  # Double Float Pixel Data
        0x7FE00010,  # Pixel Data
        0x7FE00002,  # Extended Offset Table Lengths
    }
)
"""Binary attributes outside Table E.1-1 that rendering needs (docs/deidentification.md
says why each one): palettes and LUTs turn stored values into displayed ones, the ICC
profile gives colours, Waveform Data is a waveform object's content, the Extended Offset
Table finds the frames of encapsulated Pixel Data; Pixel Data itself is policed by
:mod:`dicomshare.validation` (geometry, encapsulation, JPEG segments)."""

ALWAYS_REMOVED = frozenset(
    {
        0x04000500,  # Encrypted Attributes Sequence: the original values, encrypted
        0x04000520,  # Encrypted Content
        0x04000115,  # Certificate of Signer
        0x04000120,  # Signature
        0x04000404,  # MAC
        0x4FFE0001,  # MAC Parameters Sequence
        0xFFFAFFFA,  # Digital Signatures Sequence (void once anything changes)
        0x006862C0,  # HPGL Document Sequence: drawings with any text
        0x00686300,  # HPGL Document
        0x0008041B,  # Record Key
        0x0008041C,  # Prior Record Key
    }
)
"""Removed wherever they are, whatever the table says; so are the Variable Pixel Data
groups (7F00-7FDF,xxxx), retired, which may hold any image."""


@lru_cache(maxsize=4096)
def effective_vr(tag: int, vr: str) -> str:
    """The VR the rules apply to: for a public attribute the data dictionary knows, its
    dictionary VR (or the one of its alternatives the element uses), not the VR written
    in the file. A file VR that contradicts the dictionary is tolerated when both are
    character strings (the value is read as written and judged as the dictionary says);
    any other contradiction (a name written as OB, text as US, a sequence as anything
    else) is refused :data:`~dicomshare.validation.MALFORMED`.
    """
    if tag & 0xFFFF == 0 or (tag >> 16) & 1:
        return vr
    entry = dictionary_entry(tag)
    if entry is None:
        return vr
    dictionary = entry[0]
    if vr in (None, "UN"):
        return dictionary
    alternatives = dictionary.split(" or ")
    if vr == dictionary or vr in alternatives:
        return vr
    if vr in STRING_VRS and all(alternative in STRING_VRS for alternative in alternatives):
        return alternatives[0]
    raise DeidentificationRefused(MALFORMED)


def change_vr(vr: str, encoded_vr: str) -> str:
    """The VR :meth:`Deidentifier.change` works with: the effective ``vr`` when it and the
    element's own are character strings, else the element's (a number is written as it is
    encoded)."""
    return vr if vr in STRING_VRS and encoded_vr in STRING_VRS else encoded_vr


def vr_of(ds: Dataset, tag: int) -> str:
    """An element's :func:`effective_vr` without converting its value."""
    return effective_vr(int(tag), ds.get_item(tag).VR or "UN")

