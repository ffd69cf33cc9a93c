"""API errors: every refusal is JSON ``{"error": <machine reason>, "message": <human text>}``."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types


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
