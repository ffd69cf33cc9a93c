"""Receipts: what became of every uploaded object, told to the partner that sent it.

One receipt per uploaded object version, recorded by the ingest path when the object
reaches its one place: ``ingested`` (a new instance), ``duplicate`` (an instance already
held: same de-identified SOP Instance UID) or ``quarantined`` (with the machine-readable
reason). A receipt holds no value from the DICOM file and not the object key:

- ``partner``; ``object_fingerprint``: the uploaded version's id (SHA-256 of
  ``<bucket>/<key>/<version>``, 32 hex digits, as in quarantine records) and
  ``key_hmac``, the key's fingerprint as in logs (HMAC keyed with the deployment secret:
  a plain hash of a key such as ``partner/DOE^JOHN/1.dcm`` could be confirmed by guessing;
  a partner matches receipts by ``upload_id`` instead);
- ``upload_id``: the partner's own identifier of the upload, taken from the object's
  ``x-amz-meta-upload-id`` metadata when it is a hex digest (16 to 128 lower-case hex
  digits; anything else is dropped, never stored: free text could name a patient). The
  gateway sends HMAC-SHA-256 of the SOP Instance UID under its own key
  (``dicomshare_gateway.spool.upload_id``);
- ``outcome``, ``reason`` and, for an instance, the *de-identified* study, series and SOP
  Instance UIDs; ``size``; ``recorded_at``.

Receipts live in the index table (:func:`dicomshare.index.receipt_key`) and are listed per
partner in the ``listing`` index (:func:`dicomshare.index.receipts_collection`). Each one is
also sent to EventBridge as ``ObjectReceipt`` (:func:`event_entry`) whose detail carries
the same fields, so a partner account can subscribe to its own (``detail.partner``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from dicomshare import index

UNKNOWN_PARTNER = "unknown"
"""Partner recorded for objects outside every configured ``<partner-id>/`` prefix: the
prefix itself is untrusted text and is never stored."""

UPLOAD_ID_METADATA = "upload-id"
"""S3 user metadata (``x-amz-meta-upload-id``) carrying the partner's upload identifier."""

UPLOAD_ID = re.compile(r"^[0-9a-f]{16,128}$")

EVENT_DETAIL_TYPE = "ObjectReceipt"

FIELDS = ("partner", "object_fingerprint", "key_hmac", "upload_id", "outcome", "reason",
          "study_uid", "series_uid", "sop_instance_uid", "size", "recorded_at")
"""What a receipt says, in the API and in events."""


def upload_id(metadata: Mapping[str, str]) -> str | None:
    """The partner's upload identifier from an object's user metadata, if it is a hex digest."""
    value = metadata.get(UPLOAD_ID_METADATA, "")
    return value if UPLOAD_ID.match(value) else None


def receipt_item(
    *,
    partner: str,
    object_id: str,
    key_hmac: str,
    outcome: str,
    recorded_at: str,
    size: int,
    upload_id_: str | None = None,
    reason: str = "",
    study_uid: str = "",
    series_uid: str = "",
    sop_instance_uid: str = "",
) -> dict[str, Any]:
    """The receipt item of one object version (empty fields left out)."""
    fields = {
        "partner": partner, "object_fingerprint": object_id, "key_hmac": key_hmac,
        "upload_id": upload_id_, "outcome": outcome, "reason": reason, "study_uid": study_uid,
        "series_uid": series_uid, "sop_instance_uid": sop_instance_uid, "size": size,
        "recorded_at": recorded_at,
    }
    return {
        **index.receipt_key(object_id),
        **{k: v for k, v in fields.items() if v not in (None, "")},
        "gsi2pk": index.receipts_collection(partner),
        "gsi2sk": f"{recorded_at}#{object_id}",
    }


def view(item: Mapping[str, Any]) -> dict[str, Any]:
    """A receipt as the API and events show it."""
    return {k: item[k] for k in FIELDS if k in item}


def event_entry(item: Mapping[str, Any], bus: str, source: str) -> dict[str, str]:
    """The EventBridge ``PutEvents`` entry of a receipt."""
    return {"Source": source, "DetailType": EVENT_DETAIL_TYPE, "Detail": json.dumps(view(item), sort_keys=True),
            "EventBusName": bus}
