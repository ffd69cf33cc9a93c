"""The share-token routes (public): ``POST /redeem`` opens a share; the ``/share/*`` pages
read an opened share.

The token arrives in ``Authorization: Share <token>``, the PIN in ``X-Share-Pin``, on every
route. ``POST /redeem`` counts a redemption and returns the share, its studies and series
with counts: a size independent of the number of instances. Instances, their presigned
URLs and the OHIF document come per series in pages (``next`` continuation tokens) from
``GET /share/instances`` and ``GET /share/dicomjson``, which check the same token and PIN
but count no redemption, so a client fetches fresh URLs for a series whenever it needs
them until the share expires. ``GET /share/manifest`` (and ``POST /redeem`` with
``Accept: application/dicom``) returns the Key Object Selection "Manifest" of one study, a
page of at most 1,000 instances per document, the next page's token in ``X-Next-Page``.
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
from dicomshare_aws.share_store import InvalidPageToken, decode_cursor, encode_cursor
from lambdas.api import dependencies as deps
from lambdas.api.errors import ApiError
from lambdas.api.models import UID_PATTERN

router = Router()
logger = Logger(service="api")

DICOM = "application/dicom"
NEXT_PAGE_HEADER = "X-Next-Page"
REFUSED = {401: {"description": "token_required"}, 403: {"description": "pin_required, wrong_pin"},
           404: {"description": "unknown_link"}, 410: {"description": "revoked, expired, exhausted, locked"}}
PAGE_REFUSED = {**REFUSED, 403: {"description": "pin_required, wrong_pin, not_redeemed, view_only"},
                404: {"description": "unknown_link, unknown_study, unknown_series"},
                410: {"description": "revoked, expired, locked"}, 422: {"description": "invalid_next"}}

Token = Annotated[str | None, Header(alias="Authorization")]
Pin = Annotated[str | None, Header(alias=shares.PIN_HEADER, max_length=64)]
StudyUid = Annotated[str, Query(pattern=UID_PATTERN, max_length=64)]
SeriesUid = Annotated[str, Query(pattern=UID_PATTERN, max_length=64)]
Next = Annotated[str | None, Query(max_length=600)]


@router.post("/redeem", compress=True, responses={
    200: {"description": "The share, its studies and series with counts (JSON), or with Accept: "
          "application/dicom the first Key Object Selection page of a study",
          "content": {"application/json": {}, DICOM: {}}}, **REFUSED})
def redeem(authorization: Token = None, pin: Pin = None,
           study_uid: Annotated[str | None, Query(pattern=UID_PATTERN, max_length=64)] = None):
    share = shared(authorization)
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
    if DICOM in header("Accept"):
        return key_object_selection(share, study_uid or share.study_uid, None)
    store = deps.store()
    studies = [(uid, study, store.series(uid) if study else []) for uid in share.study_uids
               for study in [owned_study(share, uid)]]
    return json_response(manifest.redemption(share, studies))


@router.get("/share/instances", compress=True, responses={
    200: {"description": "One page of a series' instances with presigned URLs; `next` continues"}, **PAGE_REFUSED})
def instances(study_uid: StudyUid, series_uid: SeriesUid, authorization: Token = None, pin: Pin = None,
              next: Next = None):
    share, now = reader(authorization, pin)
    series = shared_series(share, study_uid, series_uid)[1]
    prefix = f"INSTANCE#{series_uid}#"
    after = cursor(next, prefix)[0]
    items, more = deps.store().instance_page(study_uid, prefix, after, manifest.INSTANCES_PER_PAGE,
                                             series["instance_count"])
    lifetime = shares.presign_seconds(share, now, deps.settings())
    presign = deps.presigner(lifetime).url
    entries = manifest.instance_entries([i for i in items if shares.owns(share, i)],
                                        instance_url=presign if share.allow_download else None,
                                        preview_url=presign, preview_key=index.preview_object_key)
    return json_response({
        "study_uid": study_uid, "series_uid": series_uid, "urls_expire_at": shares.iso(now + lifetime),
        "instances": entries, "next": encode_cursor(items[-1][index.SK]) if more and items else None,
    })


@router.get("/share/dicomjson", compress=True, responses={
    200: {"description": "One page of a series as an OHIF dicomjson document; `next` continues"}, **PAGE_REFUSED})
def dicomjson(study_uid: StudyUid, series_uid: SeriesUid, authorization: Token = None, pin: Pin = None,
              next: Next = None):
    share, now = reader(authorization, pin)
    if not share.allow_download:
        raise ApiError(403, "view_only", "This share is view-only: previews, no DICOM objects.")
    item, series = shared_series(share, study_uid, series_uid)
    prefix = f"INSTANCE#{series_uid}#"
    after, frame = cursor(next, prefix)
    page, more = deps.store().instance_page(study_uid, prefix, after, manifest.INSTANCES_PER_PAGE,
                                            series["instance_count"])
    owned = [i for i in page if shares.owns(share, i)]
    items = owned[:manifest.ohif_items(owned, first_frame=frame)]
    described = items[1:] if frame > 1 else items  # a page resuming inside an instance needs not its metadata
    lifetime = shares.presign_seconds(share, now, deps.settings())
    study = {**manifest.study_summary(study_uid, item, [], prior=False),
             "instance_count": int(item.get("instance_count", 0)),
             "modalities": [series["modality"]] if series["modality"] else []}
    document, finished, resume = manifest.ohif_page(study, series, items, instance_metadata(described),
        instance_url=deps.presigner(lifetime).url, first_frame=frame, budget=manifest.PAGE_BYTES)
    if finished < len(owned):  # the page ended inside the series: resume at the first unfinished item
        following = encode_cursor(items[finished - 1][index.SK] if finished else (after or prefix), resume)
    else:
        following = encode_cursor(page[-1][index.SK]) if more and page else None
    return json_response({**document, "urls_expire_at": shares.iso(now + lifetime), "next": following})


@router.get("/share/manifest", responses={
    200: {"description": "One page (at most 1,000 instances) of a study as a Key Object Selection document; "
          "X-Next-Page carries the next page's token", "content": {DICOM: {}}}, **PAGE_REFUSED})
def kos_page(study_uid: StudyUid, authorization: Token = None, pin: Pin = None, next: Next = None):
    share, _ = reader(authorization, pin)
    return key_object_selection(share, study_uid, next)


def instance_metadata(items: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """SOP Instance UID -> metadata object of the items (only items the share owns); an
    unreadable one is logged by its (de-identified) UIDs and served from the item's fields."""
    found = deps.instance_metadata(items)
    for item, metadata in zip(items, found):
        if metadata is None:
            logger.warning("instance metadata unreadable", extra={
                "study_uid": item["study_uid"], "series_uid": item["series_uid"],
                "sop_instance_uid": item["sop_instance_uid"]})
    return {item["sop_instance_uid"]: metadata for item, metadata in zip(items, found)}


def shared(authorization: str | None) -> shares.Share:
    """The share the request's token opens; refused when there is none."""
    token = shares.token_from_authorization(authorization)
    if token is None:
        raise refused(shares.ShareRefused("token_required"))
    share = deps.store().share_for_token(token, shares.token_sha256(token))
    if share is None:
        raise refused(shares.ShareRefused("unknown_link"))
    return share


def reader(authorization: str | None, pin: str | None) -> tuple[shares.Share, int]:
    """The opened share a page request may read (token, state, PIN; nothing counted)."""
    share = shared(authorization)
    now = int(time.time())
    try:
        reason = shares.access_refusal(share, now)
        if reason:
            raise shares.ShareRefused(reason)
        check_pin(share, pin)
    except shares.ShareRefused as refusal:
        audit(share.share_id, refusal.reason, action="read")
        raise refused(refusal, share.share_id) from refusal
    return share, now


def admit(share: shares.Share, pin: str | None, now: int) -> shares.Share:
    """Check state and PIN, then count the redemption atomically; the counted share."""
    reason = shares.refusal(share, now)
    if reason:
        raise shares.ShareRefused(reason)
    check_pin(share, pin)
    counted = deps.store().record_redemption(share.share_id, now)
    if counted is None:
        current = deps.store().share(share.share_id)
        raise shares.ShareRefused((current and shares.refusal(current, now)) or "unknown_link")
    return counted


def check_pin(share: shares.Share, pin: str | None) -> None:
    """Refuse a missing or wrong PIN; every wrong one counts towards the lockout."""
    if not share.pin_hash:
        return
    if not pin:
        raise shares.ShareRefused("pin_required")
    if not shares.pin_matches(pin, share.pin_hash):
        failures = deps.store().record_pin_failure(share.share_id)
        if failures >= shares.MAX_PIN_FAILURES:
            raise shares.ShareRefused("locked")
        raise shares.ShareRefused("wrong_pin", attempts_left=shares.MAX_PIN_FAILURES - failures)


def owned_study(share: shares.Share, study_uid: str) -> dict[str, Any] | None:
    """The study item, if the study is one of this share's and still belongs to the partner
    and patient frozen in the share (:func:`dicomshare.shares.owns`)."""
    if study_uid not in share.study_uids:
        return None
    study = deps.store().study(study_uid)
    return study if study is not None and shares.owns(share, study) else None


def shared_series(share: shares.Share, study_uid: str, series_uid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study item and the series summary, if the series belongs to a study of this share."""
    study = owned_study(share, study_uid)
    if study is None:
        raise ApiError(404, "unknown_study", "This share has no such study.")
    item = deps.store().series_item(study_uid, series_uid)
    if item is None:
        raise ApiError(404, "unknown_series", "This study has no such series.")
    return study, manifest.series_summary(item)


def cursor(token: str | None, prefix: str) -> tuple[str | None, int]:
    if not token:
        return None, 1
    try:
        after, frame = decode_cursor(token, prefix)
    except InvalidPageToken as error:
        raise ApiError(422, "invalid_next", str(error)) from error
    return (None if after == prefix else after), frame


def key_object_selection(share: shares.Share, study_uid: str, next: str | None) -> Response:
    study = owned_study(share, study_uid)
    if study is None:
        raise ApiError(404, "unknown_study", "This share has no such study.")
    after, page = cursor(next, "INSTANCE#")
    found, more = deps.store().instance_page(study_uid, "INSTANCE#", after, manifest.KOS_INSTANCES_PER_PAGE,
                                             int(study.get("instance_count", 0)))
    items = [i for i in found if shares.owns(share, i)]
    if not items:
        raise ApiError(404, "unknown_study", "This study has no instances.")
    document = manifest.key_object_selection(share.share_id, study, items, page)
    headers = {"Cache-Control": "no-store", "Content-Disposition": f'attachment; filename="manifest-{page}.dcm"'}
    if more:
        headers[NEXT_PAGE_HEADER] = encode_cursor(found[-1][index.SK], page + 1)
    return Response(200, DICOM, document, headers=headers)


def json_response(body: dict[str, Any]) -> Response:
    return Response(200, content_types.APPLICATION_JSON, json.dumps(body, separators=(",", ":")),
                    headers={"Cache-Control": "no-store"})


def header(name: str) -> str:
    headers = router.current_event.headers
    return headers.get(name, headers.get(name.lower(), ""))


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


def audit(share_id: str, outcome: str, action: str = "redeem") -> None:
    identity = router.current_event.request_context.identity
    deps.store().put_audit(
        share_id, action, "share-link", outcome,
        source_ip=identity.source_ip or "", user_agent=identity.user_agent or "",
    )


def refused(refusal: shares.ShareRefused, share_id: str | None = None) -> ApiError:
    logger.info("redemption refused", extra={"share_id": share_id, "outcome": refusal.reason})
    return ApiError(refusal.status, refusal.reason, refusal.message, **refusal.detail)
