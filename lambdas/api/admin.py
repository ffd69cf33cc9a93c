"""Admin routes (IAM-authenticated when deployed): shares, their audit trail, studies; and
which callers the API function lets through to which routes (:func:`admitted`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from dicomshare import shares
from dicomshare_aws.resources import PARTNER_ROUTES, PUBLIC_ROUTES
from dicomshare_aws.share_store import InvalidPageToken
from lambdas.api import dependencies as deps
from lambdas.api.errors import ApiError
from lambdas.api.models import SHARE_ID_PATTERN, UID_PATTERN, CreatedShare, CreateShare
from lambdas.api.receipts import caller_partner

router = Router()
logger = Logger(service="api")

ShareId = Annotated[str, Path(pattern=SHARE_ID_PATTERN)]
StudyUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=200)]
Page = Annotated[str | None, Query(max_length=2048)]


@router.post("/shares", responses={201: {"description": "Share created"}})
def create_share(body: CreateShare) -> Response[CreatedShare]:
    try:
        lifetime = shares.expiry_seconds(body.expires_in, deps.settings())
    except shares.ShareRequestError as error:
        raise ApiError(422, error.reason, str(error)) from error
    base = public_base()
    store = deps.store()
    study = store.study(body.study_uid)
    if study is None:
        raise unknown_study()
    study_uids = [body.study_uid]
    if body.include_priors:
        study_uids += [s["study_uid"] for s in same_patient(study) if s.get("gsi1sk", "") < study.get("gsi1sk", "")]
    now = int(time.time())
    token = shares.new_token()
    pin = shares.new_pin() if body.generate_pin else body.pin
    share = shares.Share(
        share_id=shares.new_share_id(),
        study_uids=tuple(study_uids),
        created_at=now,
        expires_at=now + lifetime,
        created_by=admin_identity(),
        partner=study.get("partner", ""),
        patient_pseudonym=study.get("patient_pseudonym", ""),
        recipient=body.recipient,
        pin_hash=shares.hash_pin(pin) if pin else "",
        max_redemptions=body.max_redemptions,
        allow_download=body.allow_download,
        include_priors=body.include_priors,
    )
    store.put_share(share, shares.token_sha256(token))
    audit(share.share_id, "create", "ok")
    logger.info("share created", extra={"share_id": share.share_id, "studies": len(study_uids)})
    created = CreatedShare(
        share_id=share.share_id,
        token=token,
        url=f"{base}/view#{token}",
        expires_at=shares.iso(share.expires_at),
        study_uids=study_uids,
        pin=pin if body.generate_pin else None,
    )
    return Response(201, content_types.APPLICATION_JSON, created.model_dump(), headers={"Cache-Control": "no-store"})


@router.get("/shares")
def list_shares(limit: Limit = 50, next: Page = None) -> dict[str, Any]:
    found, following = paged(lambda: deps.store().list_shares(limit, next))
    now = int(time.time())
    return {"shares": [share_view(s, now) for s in found], "next": following}


@router.get("/shares/<share_id>")
def get_share(share_id: ShareId) -> dict[str, Any]:
    return share_view(existing_share(share_id), int(time.time()))


@router.delete("/shares/<share_id>")
def revoke_share(share_id: ShareId) -> dict[str, Any]:
    now = int(time.time())
    if not deps.store().revoke(share_id, now):
        raise unknown_share()
    audit(share_id, "revoke", "ok")
    logger.info("share revoked", extra={"share_id": share_id})
    return share_view(existing_share(share_id), now)


@router.post("/shares/<share_id>/unlock")
def unlock_share(share_id: ShareId) -> dict[str, Any]:
    if not deps.store().unlock(share_id):
        raise unknown_share()
    audit(share_id, "unlock", "ok")
    logger.info("share unlocked", extra={"share_id": share_id})
    return share_view(existing_share(share_id), int(time.time()))


@router.get("/shares/<share_id>/audit")
def share_audit(share_id: ShareId) -> dict[str, Any]:
    existing_share(share_id)
    return {"share_id": share_id, "audit": deps.store().audit(share_id)}


@router.get("/studies")
def list_studies(limit: Limit = 50, next: Page = None) -> dict[str, Any]:
    found, following = paged(lambda: deps.store().list_studies(limit, next))
    return {"studies": [study_view(s) for s in found], "next": following}


@router.get("/studies/<study_uid>")
def get_study(study_uid: StudyUid) -> dict[str, Any]:
    store = deps.store()
    study = store.study(study_uid)
    if study is None:
        raise unknown_study()
    series = [
        {k: i.get(k) for k in ("series_uid", "modality", "series_description", "series_number", "instance_count", "total_bytes")}
        for i in store.series(study_uid)
    ]
    others = same_patient(study)
    return {
        "study": study_view(study),
        "series": sorted(series, key=lambda s: (str(s["series_number"]), s["series_uid"])),
        "priors": [study_view(s) for s in others if s.get("gsi1sk", "") < study.get("gsi1sk", "")],
        "later": [study_view(s) for s in others if s.get("gsi1sk", "") > study.get("gsi1sk", "")],
    }


def share_view(share: shares.Share, now: int) -> dict[str, Any]:
    """A share as administrators see it: state and counts, never the token or its hash."""
    return {
        "share_id": share.share_id,
        "study_uid": share.study_uid,
        "study_uids": list(share.study_uids),
        "partner": share.partner,
        "patient_pseudonym": share.patient_pseudonym,
        "status": shares.refusal(share, now) or "active",
        "recipient": share.recipient,
        "created_by": share.created_by,
        "created_at": shares.iso(share.created_at),
        "expires_at": shares.iso(share.expires_at),
        "revoked_at": shares.iso(share.revoked_at) if share.revoked_at else None,
        "first_redeemed_at": shares.iso(share.first_redeemed_at) if share.first_redeemed_at else None,
        "redemptions": share.redemptions,
        "max_redemptions": share.max_redemptions,
        "pin_protected": bool(share.pin_hash),
        "pin_failures": share.pin_failures,
        "allow_download": share.allow_download,
        "include_priors": share.include_priors,
    }


def study_view(item: dict[str, Any]) -> dict[str, Any]:
    fields = (
        "study_uid", "patient_pseudonym", "study_date", "study_time", "study_description", "modalities",
        "series_count", "instance_count", "total_bytes", "partner", "first_received", "last_received",
    )
    return {k: item.get(k) for k in fields}


def same_patient(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The other studies of the study's patient at the study's partner, newest first."""
    if not (study.get("partner") and study.get("patient_pseudonym")):
        return []
    return [s for s in deps.store().patient_studies(study["partner"], study["patient_pseudonym"])
            if s["study_uid"] != study["study_uid"]]


def existing_share(share_id: str) -> shares.Share:
    share = deps.store().share(share_id)
    if share is None:
        raise unknown_share()
    return share


def unknown_study() -> ApiError:
    return ApiError(404, "unknown_study", "No indexed study has this StudyInstanceUID.")


def unknown_share() -> ApiError:
    return ApiError(404, "unknown_share", "No share has this id.")


def paged(read: Any) -> Any:
    try:
        return read()
    except InvalidPageToken as error:
        raise ApiError(422, "invalid_next", str(error)) from error


def admitted(event: dict[str, Any]) -> bool:
    """Whether the caller of ``event`` may reach its route: anyone a public route (the share
    token is checked there), an administrator (``Settings.admins``) every route, a
    partner's role the partner routes only. Admin and partner routes are authenticated by
    API Gateway (IAM, SigV4, the resource policy) before the function runs; this checks
    the caller against the same lists."""
    route = (event.get("httpMethod", ""), (event.get("path") or "/").rstrip("/") or "/")
    caller = ((event.get("requestContext") or {}).get("identity") or {}).get("userArn")
    return (route in PUBLIC_ROUTES or deps.settings().is_admin(caller)
            or (route in PARTNER_ROUTES and caller_partner(caller) is not None))


def admin_identity() -> str:
    identity = router.current_event.request_context.identity
    return identity.user_arn or identity.caller or ""


def audit(share_id: str, action: str, outcome: str) -> None:
    identity = router.current_event.request_context.identity
    deps.store().put_audit(
        share_id, action, admin_identity(), outcome,
        source_ip=identity.source_ip or "", user_agent=identity.user_agent or "",
    )


def public_base() -> str:
    """Where clinicians reach this API: ``<share origin>/<stage>``, the origin that also
    serves the viewer (CloudFront on AWS, the local gateway locally), never the address
    this request came to (admins call API Gateway directly, with SigV4)."""
    try:
        origin = deps.share_origin()
    except GetParameterError as error:
        raise ApiError(503, "share_origin_unavailable", "The share origin is not deployed yet (the web "
                       "stack writes it); no share was created.") from error
    return f"{origin}/{router.current_event.request_context.stage}"
