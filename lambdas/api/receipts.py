"""``GET /receipts``: what became of each uploaded object, for the partner that sent it.

A partner calls it with its own role (IAM, SigV4; locally its bearer token from
``local.json``) and sees only its own receipts: the partner is taken from the caller's
identity, never from the request. An administrator names the partner (``?partner=``).
Receipts come oldest first from ``since`` (ISO 8601 UTC, recording time), in pages
(``next``).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from dicomshare.receipts import UNKNOWN_PARTNER
from dicomshare_aws import receipt_store
from dicomshare_aws.share_store import InvalidPageToken
from lambdas.api import dependencies as deps
from lambdas.api.errors import ApiError

router = Router()

SINCE_PATTERN = r"^\d{4}-\d{2}-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?Z?)?$"
ASSUMED_ROLE = re.compile(r"^arn:aws[a-z-]*:sts::\d{12}:assumed-role/([\w+=,.@-]+)/")


def caller_partner(user_arn: str | None) -> str | None:
    """The partner whose role signed the request, or ``None`` for any other principal."""
    match = ASSUMED_ROLE.match(user_arn or "")
    if not match:
        return None
    settings, region = deps.settings(), os.environ.get("AWS_REGION", "")
    return next((p.id for p in settings.partners if p.role_name(settings.environment, region) == match.group(1)), None)


@router.get("/receipts", responses={403: {"description": "other_partner"}, 422: {"description": "partner_required"}})
def list_receipts(
    since: Annotated[str | None, Query(pattern=SINCE_PATTERN)] = None,
    partner: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    next: Annotated[str | None, Query(max_length=2048)] = None,
) -> dict[str, Any]:
    own = caller_partner(router.current_event.request_context.identity.user_arn)
    if own is not None and partner not in (None, own):
        raise ApiError(403, "other_partner", "A partner sees its own receipts only.")
    partner = own or partner
    if partner is None:
        raise ApiError(422, "partner_required", "Administrators name the partner: ?partner=<id>.")
    if partner != UNKNOWN_PARTNER and deps.settings().partner(partner) is None:
        raise ApiError(404, "unknown_partner", "No configured partner has this id.")
    try:
        found, following = receipt_store.list_receipts(
            deps.store().table, partner, (since or "").removesuffix("Z"), limit, next)
    except InvalidPageToken as error:
        raise ApiError(422, "invalid_next", str(error)) from error
    return {"partner": partner, "receipts": found, "next": following}
