"""API errors: every refusal is JSON ``{"error": <machine reason>, "message": <human text>}``.

:data:`router` turns what a route raises (and a request no route matches) into such a
refusal; the API function includes it as it includes the routes. An unexpected error is
logged by type only and answered 500 without detail.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

router = Router()
logger = Logger(service="api")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, **detail: Any):
        self.status, self.reason, self.message, self.detail = status, reason, message, detail
        super().__init__(reason)


def error_response(status: int, reason: str, message: str, **detail: Any) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps({"error": reason, "message": message, **detail}),
        headers={"Cache-Control": "no-store"},
    )


def error_event_response(status: int, reason: str, message: str) -> dict[str, Any]:
    """The same error as a Lambda proxy response, for refusals made before routing."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON, "Cache-Control": "no-store"},
        "body": json.dumps({"error": reason, "message": message}),
        "isBase64Encoded": False,
    }


@router.exception_handler(ApiError)
def api_error(error: ApiError) -> Response:
    return error_response(error.status, error.reason, error.message, **error.detail)


@router.exception_handler(RequestValidationError)
def invalid_request(error: RequestValidationError) -> Response:
    problems = [{"loc": [str(p) for p in e["loc"]], "type": e["type"], "msg": e.get("msg", "")} for e in error.errors()]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    return error_response(422, "invalid_request", f"{'.'.join(first['loc'])}: {first['msg']}", detail=problems)


@router.exception_handler([UnicodeDecodeError, binascii.Error])
def undecodable_body(_: Exception) -> Response:
    return error_response(422, "invalid_request", "body: not UTF-8 JSON")


@router.exception_handler(NotFoundError)
def not_found(_: NotFoundError) -> Response:
    return error_response(404, "no_such_route", "No such route.")


@router.exception_handler(Exception)
def unexpected(error: Exception) -> Response:
    logger.error("unexpected error", extra={"error_type": type(error).__name__})
    return error_response(500, "internal_error", "Something went wrong; please try again later.")
