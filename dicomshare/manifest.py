"""What a redeemed share returns, built from index items (no file is read).

Three views of the same shared instances:

- the redemption manifest (JSON): studies, series and instances with de-identified
  attributes, a presigned URL per instance and per preview;
- the same studies as an OHIF Viewer "dicomjson" document (OHIF's ``dicomjson`` data
  source: naturalized metadata, one ``dicomweb:<url>`` per instance), so any OHIF
  deployment can open the share;
- a DICOM Key Object Selection document titled "Manifest" (DCM 113030), as an IHE XDS-I.b
  imaging manifest is, so a receiving PACS can import the reference list (PS3.3 A.59,
  template TID 2010). highdicom (and with it pydicom and numpy) is imported only when this
  document is asked for, so the API's cold start stays small.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from dicomshare.shares import Share, iso

KEYWORDS = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00080060": "Modality",
    "00200011": "SeriesNumber",
    "00200013": "InstanceNumber",
    "00280010": "Rows",
    "00280011": "Columns",
    "00280100": "BitsAllocated",
    "00280101": "BitsStored",
    "00280102": "HighBit",
    "00280103": "PixelRepresentation",
    "00280002": "SamplesPerPixel",
    "00280004": "PhotometricInterpretation",
    "00280006": "PlanarConfiguration",
    "00280008": "NumberOfFrames",
    "00280030": "PixelSpacing",
    "00180050": "SliceThickness",
    "00201041": "SliceLocation",
    "00200032": "ImagePositionPatient",
    "00200037": "ImageOrientationPatient",
    "00200052": "FrameOfReferenceUID",
    "00281050": "WindowCenter",
    "00281051": "WindowWidth",
    "00281052": "RescaleIntercept",
    "00281053": "RescaleSlope",
    "00080008": "ImageType",
}
"""Tag -> keyword for the attributes an index item's ``dicom_json`` may hold (PS3.6)."""

ALWAYS_LISTS = frozenset({"PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "ImageType"})

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

Presigner = Callable[[str], str]
"""S3 key -> presigned GET URL."""


def redemption_manifest(
    share: Share,
    studies: Sequence[tuple[dict[str, Any] | None, list[dict[str, Any]]]],
    *,
    instance_url: Presigner | None,
    preview_url: Presigner,
    preview_key: Callable[[str, str, str], str],
    urls_expire_at: int,
) -> dict[str, Any]:
    """The manifest of a redeemed share.

    ``studies`` holds, shared study first, (study item or None, instance items) pairs.
    ``instance_url`` is None for a view-only share: no instance URL, no dicomjson document.
    """
    manifest_studies = []
    for position, (study, instances) in enumerate(studies):
        manifest_studies.append(
            study_manifest(study, instances, prior=position > 0, instance_url=instance_url,
                           preview_url=preview_url, preview_key=preview_key)
        )
    return {
        "share": {
            "share_id": share.share_id,
            "expires_at": iso(share.expires_at),
            "allow_download": share.allow_download,
            "recipient": share.recipient,
        },
        "urls_expire_at": iso(urls_expire_at),
        "studies": manifest_studies,
        "dicomjson": ohif_dicomjson(manifest_studies, studies) if instance_url else None,
    }


def study_manifest(
    study: dict[str, Any] | None,
    instances: list[dict[str, Any]],
    *,
    prior: bool,
    instance_url: Presigner | None,
    preview_url: Presigner,
    preview_key: Callable[[str, str, str], str],
) -> dict[str, Any]:
    """One study of the manifest; series and counts come from the instance items, so a
    study is complete even before the counts aggregator has caught up."""
    first = instances[0] if instances else (study or {})
    series: dict[str, dict[str, Any]] = {}
    for item in sorted(instances, key=_instance_order):
        entry = series.get(item["series_uid"])
        if entry is None:
            entry = series[item["series_uid"]] = {
                "series_uid": item["series_uid"],
                "modality": item.get("modality", ""),
                "series_description": item.get("series_description", ""),
                "series_number": item.get("series_number"),
                "instance_count": 0,
                "total_bytes": 0,
                "instances": [],
            }
        instance = {k: item[k] for k in INSTANCE_FIELDS if k in item}
        if instance_url:
            instance["url"] = instance_url(item["s3_key"])
        instance["preview_url"] = preview_url(
            preview_key(item["study_uid"], item["series_uid"], item["sop_instance_uid"])
        )
        entry["instances"].append(instance)
        entry["instance_count"] += 1
        entry["total_bytes"] += int(item.get("size", 0))
    ordered = sorted(series.values(), key=lambda s: (_number(s["series_number"]), s["series_uid"]))
    return {
        "study_uid": first.get("study_uid", (study or {}).get("study_uid", "")),
        "prior": prior,
        "patient_pseudonym": first.get("patient_pseudonym", ""),
        "study_date": first.get("study_date", ""),
        "study_time": first.get("study_time", ""),
        "study_description": first.get("study_description", ""),
        "modalities": sorted({s["modality"] for s in ordered if s["modality"]}),
        "series_count": len(ordered),
        "instance_count": sum(s["instance_count"] for s in ordered),
        "total_bytes": sum(s["total_bytes"] for s in ordered),
        "series": ordered,
    }


def ohif_dicomjson(
    manifest_studies: list[dict[str, Any]],
    studies: Sequence[tuple[dict[str, Any] | None, list[dict[str, Any]]]],
) -> dict[str, Any]:
    """The studies as an OHIF ``dicomjson`` document (one ``dicomweb:`` URL per instance)."""
    urls = {
        i["sop_instance_uid"]: i["url"]
        for s in manifest_studies
        for series in s["series"]
        for i in series["instances"]
    }
    document = []
    for study, (_, instances) in zip(manifest_studies, studies):
        by_series: dict[str, list[dict[str, Any]]] = {}
        for item in sorted(instances, key=_instance_order):
            by_series.setdefault(item["series_uid"], []).append(item)
        document.append(
            {
                "StudyInstanceUID": study["study_uid"],
                "StudyDate": study["study_date"],
                "StudyTime": study["study_time"],
                "StudyDescription": study["study_description"],
                "PatientName": study["patient_pseudonym"],
                "PatientID": study["patient_pseudonym"],
                "AccessionNumber": "",
                "Modalities": "\\".join(study["modalities"]),
                "NumInstances": study["instance_count"],
                "series": [
                    {
                        "SeriesInstanceUID": series["series_uid"],
                        "SeriesDescription": series["series_description"],
                        "SeriesNumber": series["series_number"],
                        "Modality": series["modality"],
                        "instances": [
                            {
                                "metadata": naturalized(item),
                                "url": f"dicomweb:{urls[item['sop_instance_uid']]}",
                            }
                            for item in by_series[series["series_uid"]]
                        ],
                    }
                    for series in study["series"]
                ],
            }
        )
    return {"studies": document}


def naturalized(item: dict[str, Any]) -> dict[str, Any]:
    """An instance item's ``dicom_json`` (PS3.18 F.2) as keyword -> value, OHIF's form."""
    metadata: dict[str, Any] = {
        "StudyInstanceUID": item["study_uid"],
        "SeriesInstanceUID": item["series_uid"],
        "SOPInstanceUID": item["sop_instance_uid"],
        "SOPClassUID": item.get("sop_class_uid", ""),
    }
    for tag, element in json.loads(item.get("dicom_json") or "{}").items():
        keyword = KEYWORDS.get(tag.upper())
        values = element.get("Value") if isinstance(element, dict) else None
        if keyword is None or not values:
            continue
        metadata[keyword] = values if keyword in ALWAYS_LISTS or len(values) > 1 else values[0]
    return metadata


def key_object_selection(
    share_id: str, study: dict[str, Any], instances: list[dict[str, Any]]
) -> bytes:
    """A Key Object Selection document titled Manifest (DCM 113030) referencing every
    shared instance of one study (PS3.3 A.59; highdicom supports one study per document).

    The patient is named by pseudonym only; the document's UIDs derive from the share and
    study, so the same share always yields the same document identity.
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
        sop_instance_uid=generate_uid(entropy_srcs=["dicomshare-kos", share_id, study["study_uid"]]),
        instance_number=1,
        manufacturer="dicomshare",
    )
    buffer = BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def _instance_order(item: dict[str, Any]) -> tuple[str, float, str]:
    return (item["series_uid"], _number(item.get("instance_number")), item["sop_instance_uid"])
