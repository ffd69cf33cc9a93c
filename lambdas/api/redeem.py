"""``POST /redeem`` (public): a share token buys the manifest of the shared studies.

The token arrives in ``Authorization: Share <token>``, the PIN in ``X-Share-Pin``. Every
attempt, refused or not, is an audit record. ``Accept: application/dicom`` returns the
Key Object Selection "Manifest" document of one shared study (``?study_uid=``, default the
shared study) instead of the JSON manifest.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Header, Query

from dicomshare import index, manifest, shares
from dicomshare_aws.resources import EVENT_SOURCE
from lambdas.api import dependencies as deps
from lambdas.api.errors import ApiError
from lambdas.api.models import UID_PATTERN

router = Router()
logger = Logger(service="api")

DICOM = "application/dicom"


@router.post("/redeem", compress=True, responses={
    200: {"description": "The manifest (JSON), or with Accept: application/dicom the Key Object Selection document",
          "content": {"application/json": {}, DICOM: {}}},
    401: {"description": "token_required"}, 403: {"description": "pin_required, wrong_pin"},
    404: {"description": "unknown_link"}, 410: {"description": "revoked, expired, exhausted, locked"},
})
def redeem(
    authorization: Annotated[str | None, Header(alias="Authorization")] = None,
    pin: Annotated[str | None, Header(alias=shares.PIN_HEADER, max_length=64)] = None,
    study_uid: Annotated[str | None, Query(pattern=UID_PATTERN, max_length=64)] = None,
):
    store = deps.store()
    token = shares.token_from_authorization(authorization)
    if token is None:
        raise refused(shares.ShareRefused("token_required"))
    share = store.share_for_token(token, shares.token_sha256(token))
    if share is None:
        raise refused(shares.ShareRefused("unknown_link"))
    now = int(time.time())
    try:
        share = admit(share, pin, now)
    except shares.ShareRefused as refusal:
        audit(share.share_id, refusal.reason)
        raise refused(refusal, share.share_id) from refusal
    audit(share.share_id, "ok")
    if share.redemptions == 1:
        announce_first_redemption(share, now)
    logger.info("share redeemed", extra={"share_id": share.share_id, "outcome": "ok"})
    studies = [shares.shared_part(share, *store.study_instances(uid)) for uid in share.study_uids]
    if DICOM in router.current_event.headers.get("Accept", router.current_event.headers.get("accept", "")):
        return key_object_selection(share, studies, study_uid or share.study_uid)
    return manifest_response(share, studies, now)


def admit(share: shares.Share, pin: str | None, now: int) -> shares.Share:
    """Check state and PIN, then count the redemption atomically; the counted share."""
    reason = shares.refusal(share, now)
    if reason:
        raise shares.ShareRefused(reason)
    if share.pin_hash:
        if not pin:
            raise shares.ShareRefused("pin_required")
        if not shares.pin_matches(pin, share.pin_hash):
            failures = deps.store().record_pin_failure(share.share_id)
            if failures >= shares.MAX_PIN_FAILURES:
                raise shares.ShareRefused("locked")
            raise shares.ShareRefused("wrong_pin", attempts_left=shares.MAX_PIN_FAILURES - failures)
    counted = deps.store().record_redemption(share.share_id, now)
    if counted is None:
        current = deps.store().share(share.share_id)
        raise shares.ShareRefused((current and shares.refusal(current, now)) or "unknown_link")
    return counted


def manifest_response(share: shares.Share, studies: list[tuple[Any, Any]], now: int) -> Response:
    lifetime = shares.presign_seconds(share, now, deps.settings())
    presign = deps.presigner(lifetime).url
    body = manifest.redemption_manifest(
        share,
        studies,
        instance_url=presign if share.allow_download else None,
        preview_url=presign,
        preview_key=index.preview_object_key,
        urls_expire_at=now + lifetime,
    )
    return Response(200, content_types.APPLICATION_JSON, json.dumps(body), headers={"Cache-Control": "no-store"})


def key_object_selection(share: shares.Share, studies: list[tuple[Any, Any]], study_uid: str) -> Response:
    chosen = next(((study, items) for study, items in studies if items and items[0]["study_uid"] == study_uid), None)
    if chosen is None:
        raise ApiError(404, "unknown_study", "This share has no such study.")
    study, items = chosen
    document = manifest.key_object_selection(share.share_id, study or items[0], items)
    return Response(200, DICOM, document, headers={
        "Cache-Control": "no-store",
        "Content-Disposition": 'attachment; filename="manifest.dcm"',
    })


def announce_first_redemption(share: shares.Share, now: int) -> None:
    """EventBridge ``ShareFirstRedeemed`` so the sender can be told the link was opened."""
    deps.events().put_events(
        Entries=[{
            "Source": EVENT_SOURCE,
            "DetailType": "ShareFirstRedeemed",
            "Detail": json.dumps({"share_id": share.share_id, "redeemed_at": shares.iso(now)}),
            "EventBusName": deps.event_bus(),
        }]
    )


def audit(share_id: str, outcome: str) -> None:
    identity = router.current_event.request_context.identity
    deps.store().put_audit(
        share_id, "redeem", "share-link", outcome,
        source_ip=identity.source_ip or "", user_agent=identity.user_agent or "",
    )


def refused(refusal: shares.ShareRefused, share_id: str | None = None) -> ApiError:
    logger.info("redemption refused", extra={"share_id": share_id, "outcome": refusal.reason})
    return ApiError(refusal.status, refusal.reason, refusal.message, **refusal.detail)
