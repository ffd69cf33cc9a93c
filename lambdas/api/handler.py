"""API Lambda: admin routes (IAM), ``POST /redeem`` and ``GET /view`` (share token),
``GET /receipts`` (a partner's role, or an admin).

Admin routes are authenticated by API Gateway (IAM, SigV4, and a resource policy that
lets only the configured admin roles in) before this function runs; the handler checks
the caller against the same list (``Settings.admins``) and refuses anyone else, and lets a
partner's role reach the partner routes (``GET /receipts``) only.
Every response carries ``Cache-Control: no-store``: shares, studies, manifests and errors
are per caller and must never sit in a browser's or a proxy's cache.
"""

from __future__ import annotations

import binascii
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from dicomshare_aws.resources import PARTNER_ROUTES, PUBLIC_ROUTES
from lambdas.api import admin, dependencies, page, receipts, redeem
from lambdas.api.errors import ApiError, error_event_response, error_response

logger = Logger(service="api")
app = APIGatewayRestResolver(enable_validation=True, debug=False)
app.include_router(admin.router)
app.include_router(redeem.router)
app.include_router(page.router)
app.include_router(receipts.router)


@app.get("/openapi.json", include_in_schema=False)
def openapi() -> dict[str, Any]:
    return app.get_openapi_schema(title="dicomshare", version="1").model_dump(mode="json", by_alias=True, exclude_none=True)


@app.exception_handler(ApiError)
def api_error(error: ApiError):
    return error_response(error.status, error.reason, error.message, **error.detail)


@app.exception_handler(RequestValidationError)
def invalid_request(error: RequestValidationError):
    problems = [{"loc": [str(p) for p in e["loc"]], "type": e["type"], "msg": e.get("msg", "")} for e in error.errors()]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    return error_response(422, "invalid_request", f"{'.'.join(first['loc'])}: {first['msg']}", detail=problems)


@app.exception_handler(UnicodeDecodeError)
@app.exception_handler(binascii.Error)
def undecodable_body(_: Exception):
    return error_response(422, "invalid_request", "body: not UTF-8 JSON")


@app.not_found
def not_found(_: NotFoundError):
    return error_response(404, "no_such_route", "No such route.")


@app.exception_handler(Exception)
def unexpected(error: Exception):
    logger.error("unexpected error", extra={"error_type": type(error).__name__})
    return error_response(500, "internal_error", "Something went wrong; please try again later.")


@logger.inject_lambda_context(clear_state=True, log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    route = (event.get("httpMethod", ""), (event.get("path") or "/").rstrip("/") or "/")
    identity = (event.get("requestContext") or {}).get("identity") or {}
    caller = identity.get("userArn")
    allowed = (route in PUBLIC_ROUTES or dependencies.settings().is_admin(caller)
               or (route in PARTNER_ROUTES and receipts.caller_partner(caller) is not None))
    if not allowed:
        return error_event_response(403, "admin_only", "This route needs administrator credentials.")
    response = app.resolve(event, context)
    response.setdefault("multiValueHeaders", {})["Cache-Control"] = ["no-store"]
    return response
