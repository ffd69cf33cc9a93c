"""API Lambda: admin routes (IAM), ``POST /redeem`` and ``GET /view`` (share token),
``GET /receipts`` (a partner's role, or an admin).

A caller reaches only the routes :func:`lambdas.api.admin.admitted` lets it; anyone else
is refused ``admin_only`` before routing. Refusals are JSON (:mod:`lambdas.api.errors`).
Every response carries ``Cache-Control: no-store``: shares, studies, manifests and errors
are per caller and must never sit in a browser's or a proxy's cache.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver

from lambdas.api import admin, errors, page, receipts, redeem

logger = Logger(service="api")
app = APIGatewayRestResolver(enable_validation=True, debug=False)
for module in (admin, redeem, page, receipts, errors):
    app.include_router(module.router)


@app.get("/openapi.json", include_in_schema=False)
def openapi() -> dict[str, Any]:
    return app.get_openapi_schema(title="dicomshare", version="1").model_dump(mode="json", by_alias=True, exclude_none=True)


@logger.inject_lambda_context(clear_state=True, log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if not admin.admitted(event):
        return errors.error_event_response(403, "admin_only", "This route needs administrator credentials.")
    response = app.resolve(event, context)
    response.setdefault("multiValueHeaders", {})["Cache-Control"] = ["no-store"]
    return response
