"""What a redeemed share returns, built from index items and, for the OHIF document, the
instances' metadata objects (no DICOM file is read).

Every response has a size bounded whatever the study's size (Lambda answers at most
6 MB; studies reach 100,000 instances):

- the redemption (JSON): the share, its studies and their series with counts;
- one page of a series' instances: de-identified attributes, a presigned URL per
  instance and per preview;
- one page of a series as an OHIF Viewer "dicomjson" document (OHIF's ``dicomjson`` data
  source: naturalized metadata, one ``dicomweb:<url>`` per instance or frame);
- one page of a study as a DICOM Key Object Selection document titled "Manifest"
  (DCM 113030), as an IHE XDS-I.b
  imaging manifest is, so a receiving PACS can import the reference list (PS3.3 A.59,
  template TID 2010). highdicom (and with it pydicom and numpy) is imported only when this
  document is asked for, so the API's cold start stays small.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from dicomshare import index
from dicomshare.shares import Share, iso

ALWAYS_LISTS = frozenset({"PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "ImageType"})
"""Attributes OHIF reads as arrays even when they hold one value."""

INSTANCE_FIELDS = (
    "sop_instance_uid",
    "sop_class_uid",
    "instance_number",
    "number_of_frames",
    "rows",
    "columns",
    "transfer_syntax_uid",
    "size",
    "sha256",
)

INSTANCES_PER_PAGE = 100
"""Instances per page of ``GET /share/instances``: about 3.4 kB each on AWS (two presigned
URLs carrying the function's session token, and the instance's attributes), so a page is
about 340 kB, 450 kB once base64-encoded as Lambda counts it."""

PAGE_BYTES = 512 * 1024
"""Budget of one page of the OHIF document (``GET /share/dicomjson``) in JSON bytes before
compression: a page ends before the entry that would cross it (at least one entry, so an
instance whose metadata alone is larger, up to
:data:`dicomshare.index_items.MAX_DICOM_JSON`, is a page of its own)."""

ENTRY_BYTES = 2048
"""What an entry adds to its metadata in :func:`ohif_items`' plan: its presigned URL (about
1.4 kB with a Lambda function's session token) and the JSON around it."""

KOS_INSTANCES_PER_PAGE = 1000
"""Instances referenced by one Key Object Selection document (one page of the study):
about 150 bytes each in the document, and highdicom builds 1,000 references in well
under API Gateway's 29 s."""

Presigner = Callable[[str], str]
"""S3 key -> presigned GET URL."""


def redemption(share: Share, studies: Sequence[tuple[str, dict[str, Any] | None, list[dict[str, Any]]]]) -> dict[str, Any]:
    """What ``POST /redeem`` returns: the share, its studies and their series with counts.

    ``studies`` holds, shared study first, (StudyInstanceUID, study item or None, series
    items). The size depends on the number of series, not of instances: instances and
    their URLs come per series in pages (:func:`instance_entries`, :func:`ohif_page`).
    """
    return {
        "share": {
            "share_id": share.share_id,
            "expires_at": iso(share.expires_at),
            "allow_download": share.allow_download,
            "recipient": share.recipient,
        },
        "studies": [
            study_summary(uid, study, series, prior=position > 0)
            for position, (uid, study, series) in enumerate(studies)
        ],
    }


def study_summary(study_uid: str, study: dict[str, Any] | None, series_items: list[dict[str, Any]], *,
                  prior: bool) -> dict[str, Any]:
    """One study with its series in series-number order, counts from the series items."""
    study = study or {}
    series = sorted((series_summary(s) for s in series_items), key=_series_order)
    return {
        "study_uid": study_uid,
        "prior": prior,
        "patient_pseudonym": study.get("patient_pseudonym", ""),
        "study_date": study.get("study_date", ""),
        "study_time": study.get("study_time", ""),
        "study_description": study.get("study_description", ""),
        "modalities": sorted({s["modality"] for s in series if s["modality"]}),
        "series_count": len(series),
        "instance_count": sum(s["instance_count"] for s in series),
        "total_bytes": sum(s["total_bytes"] for s in series),
        "series": series,
    }


def series_summary(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "series_uid": item["series_uid"],
        "modality": item.get("modality", ""),
        "series_description": item.get("series_description", ""),
        "series_number": integer_string(item.get("series_number")),
        "instance_count": int(item.get("instance_count", 0)),
        "total_bytes": int(item.get("total_bytes", 0)),
    }


def instance_entries(items: list[dict[str, Any]], *, instance_url: Presigner | None, preview_url: Presigner,
                     preview_key: Callable[[str, str, str], str]) -> list[dict[str, Any]]:
    """One page of a series' instances: attributes, a presigned URL of the object (none
    for a view-only share) and of its preview."""
    entries = []
    for item in items:
        entry = {k: item[k] for k in INSTANCE_FIELDS if k in item}
        if instance_url:
            entry["url"] = instance_url(object_key(item))
        entry["preview_url"] = preview_url(preview_key(item["study_uid"], item["series_uid"], item["sop_instance_uid"]))
        entries.append(entry)
    return entries


def ohif_items(items: list[dict[str, Any]], *, first_frame: int = 1, budget: int = PAGE_BYTES) -> int:
    """How many of ``items`` one page of the OHIF document (from frame ``first_frame`` of
    the first) may hold, planned from their ``metadata_bytes`` before any metadata object
    is read (:func:`ohif_page`'s entries: the metadata once, then a URL per frame): the API
    reads only these, so a request holds about one page of metadata, or one instance's
    when that alone is larger than ``budget``. At least one."""
    used = 0
    for position, item in enumerate(items):
        start = first_frame if position == 0 else 1
        frames = max(int(item.get("number_of_frames") or 1) - start + 1, 1)
        used += (int(item.get("metadata_bytes") or 0) if start == 1 else 0) + ENTRY_BYTES * frames
        if used > budget:
            return position + 1
    return len(items)


def ohif_page(study: dict[str, Any], series: dict[str, Any], items: list[dict[str, Any]],
              metadata: dict[str, dict[str, Any] | None], *, instance_url: Presigner, first_frame: int = 1,
              budget: int = PAGE_BYTES) -> tuple[dict[str, Any], int, int]:
    """One page of a series as an OHIF ``dicomjson`` document (a complete document with
    one study and one series; a client appends the pages' instances).

    ``study`` and ``series`` are summaries (:func:`study_summary`, :func:`series_summary`);
    ``metadata`` maps SOP Instance UIDs to their PS3.18 F.2 metadata objects, ``None`` (or
    absent) where one could not be read (:func:`naturalized`). A multi-frame instance is
    one entry per frame, its URL ending ``&frame=<k>`` (OHIF reads the frame number there).
    Only frame 1's entry carries the instance's metadata; the later frames' carry its UIDs
    and frame count (:func:`frame_metadata`): OHIF keeps the first entry of a SOP Instance
    UID and derives every frame from it (per-frame functional groups included), so a
    5,000-frame object is not 5,000 copies of its header. Entries are added from frame
    ``first_frame`` of the first item until the next would cross ``budget`` JSON bytes (at
    least one entry). Returns the document, how many items were finished, and the frame to
    resume the next unfinished item at.
    """
    entries: list[dict[str, Any]] = []
    used = 0
    for position, item in enumerate(items):
        url = f"dicomweb:{instance_url(object_key(item))}"
        frames = int(item.get("number_of_frames") or 1)
        for frame in range(first_frame if position == 0 else 1, frames + 1):
            entry_metadata = naturalized(item, metadata.get(item["sop_instance_uid"])) if frame == 1 \
                else frame_metadata(item)
            size = len(json.dumps(entry_metadata, separators=(",", ":"))) + len(url) + 40
            if entries and used + size > budget:
                return _ohif_document(study, series, entries), position, frame
            entries.append({"metadata": entry_metadata, "url": f"{url}&frame={frame}" if frames > 1 else url})
            used += size
    return _ohif_document(study, series, entries), len(items), 1


def frame_metadata(item: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a multi-frame instance's entries after the first: what OHIF matches
    them to the instance by."""
    return {
        "StudyInstanceUID": item["study_uid"],
        "SeriesInstanceUID": item["series_uid"],
        "SOPInstanceUID": item["sop_instance_uid"],
        "SOPClassUID": item.get("sop_class_uid", ""),
        "NumberOfFrames": int(item.get("number_of_frames") or 1),
    }


def object_key(item: dict[str, Any]) -> str:
    """The S3 key of an instance item's DICOM object."""
    return index.deidentified_object_key(item["study_uid"], item["series_uid"], item["sop_instance_uid"])


def _ohif_document(study: dict[str, Any], series: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"studies": [{
        "StudyInstanceUID": study["study_uid"],
        "StudyDate": study["study_date"],
        "StudyTime": study["study_time"],
        "StudyDescription": study["study_description"],
        "PatientName": study["patient_pseudonym"],
        "PatientID": study["patient_pseudonym"],
        "AccessionNumber": "",
        "Modalities": "\\".join(study["modalities"]),
        "NumInstances": study["instance_count"],
        "series": [{
            "SeriesInstanceUID": series["series_uid"],
            "SeriesDescription": series["series_description"],
            "SeriesNumber": series["series_number"],
            "Modality": series["modality"],
            "instances": entries,
        }],
    }]}


def naturalized(item: dict[str, Any], dataset: dict[str, Any] | None) -> dict[str, Any]:
    """An instance's metadata object (``dataset``, PS3.18 F.2) as keyword -> value, OHIF's
    form: single values as scalars, IS/DS as numbers, person names as their alphabetic form,
    sequences as lists of naturalized items, binary values as ``{"InlineBinary": …}``
    (palette lookup tables). Private and unknown attributes are left out.

    Without a readable metadata object (``None``), the entry is built from the instance
    item's own fields (:data:`ITEM_METADATA`): the viewer still lists the instance and
    reads the rest from the DICOM object it loads."""
    if dataset is None:
        metadata = {keyword: item[field] for keyword, field in ITEM_METADATA.items() if item.get(field) not in (None, "")}
        if "SeriesNumber" in metadata:
            metadata["SeriesNumber"] = integer_string(metadata["SeriesNumber"])
    else:
        metadata = naturalized_dataset(dataset)
    metadata.update({
        "StudyInstanceUID": item["study_uid"],
        "SeriesInstanceUID": item["series_uid"],
        "SOPInstanceUID": item["sop_instance_uid"],
        "SOPClassUID": item.get("sop_class_uid", metadata.get("SOPClassUID", "")),
    })
    return metadata


ITEM_METADATA = {
    "Modality": "modality", "SeriesNumber": "series_number", "SeriesDescription": "series_description",
    "InstanceNumber": "instance_number", "NumberOfFrames": "number_of_frames", "Rows": "rows",
    "Columns": "columns", "StudyDate": "study_date", "StudyTime": "study_time",
    "StudyDescription": "study_description",
}
"""Keyword -> instance item field: the entry of an instance whose metadata object cannot be read."""


def naturalized_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    from pydicom.datadict import keyword_for_tag  # only here: the API's cold start imports no pydicom

    metadata: dict[str, Any] = {}
    for tag, element in dataset.items():
        keyword = keyword_for_tag(int(tag, 16)) if isinstance(element, dict) else ""
        if not keyword:
            continue
        if "InlineBinary" in element:
            metadata[keyword] = {"InlineBinary": element["InlineBinary"]}
            continue
        values = element.get("Value")
        if not values:
            continue
        if element.get("vr") == "SQ":
            metadata[keyword] = [naturalized_dataset(v or {}) for v in values]
            continue
        if element.get("vr") == "PN":
            values = [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
        metadata[keyword] = values if keyword in ALWAYS_LISTS or len(values) > 1 else values[0]
    return metadata


def key_object_selection(
    share_id: str, study: dict[str, Any], instances: list[dict[str, Any]], page: int = 1
) -> bytes:
    """A Key Object Selection document titled Manifest (DCM 113030) referencing one page
    of a shared study's instances (PS3.3 A.59; highdicom supports one study per document).

    A study larger than :data:`KOS_INSTANCES_PER_PAGE` instances is referenced by several
    documents, one per page, numbered by ``InstanceNumber``. The patient is named by
    pseudonym only; the documents' UIDs derive from the share, study and page, so the same
    share always yields the same documents.
    """
    from io import BytesIO

    import highdicom
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    evidence = []
    for item in sorted(instances, key=_instance_order):
        ds = Dataset()
        ds.StudyInstanceUID = item["study_uid"]
        ds.SeriesInstanceUID = item["series_uid"]
        ds.SOPInstanceUID = item["sop_instance_uid"]
        ds.SOPClassUID = item["sop_class_uid"]
        ds.Modality = item.get("modality", "")
        ds.PatientID = study.get("patient_pseudonym", "")
        ds.PatientName = study.get("patient_pseudonym", "") + "^"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.AccessionNumber = ""
        ds.StudyID = ""
        ds.StudyDate = study.get("study_date", "")
        ds.StudyTime = study.get("study_time", "")
        ds.ReferringPhysicianName = ""
        evidence.append(ds)
    content = highdicom.ko.KeyObjectSelection(
        document_title=codes.DCM.Manifest,
        referenced_objects=evidence,
        description="Shared instances",
    )
    document = highdicom.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=generate_uid(entropy_srcs=["dicomshare-kos-series", share_id, study["study_uid"]]),
        series_number=9901,
        sop_instance_uid=generate_uid(entropy_srcs=["dicomshare-kos", share_id, study["study_uid"], str(page)]),
        instance_number=page,
        manufacturer="dicomshare",
    )
    buffer = BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def integer_string(value: Any) -> int | None:
    """An IS value (PS3.5 6.2) as a number, None when absent or not a number."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _series_order(series: dict[str, Any]) -> tuple[bool, int, str]:
    number = series["series_number"]
    return (number is None, number or 0, series["series_uid"])


def _instance_order(item: dict[str, Any]) -> tuple[float, str]:
    number = item.get("instance_number")
    return (number if isinstance(number, (int, float)) else float("inf"), item["sop_instance_uid"])
