"""What operators and tools read: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from api import metrics
from api.http import json_response, services_of
from api.routes.decide import DecideRequest
from engine.events import WireBatch
from engine.ingest.segment import SegmentBatch, SegmentMessage

log = logging.getLogger("attimo.api")


async def healthz(request: Request) -> Response:
    """
    summary: The process is alive.
    responses: {200: {description: ok}}
    """
    return json_response({"ok": True})


async def readyz(request: Request) -> Response:
    """
    summary: 'Ready to serve: Redis answers a PING within the budget.'
    responses: {200: {description: ready}, 503: {description: Redis unreachable}}
    """
    services = services_of(request)
    try:
        async with asyncio.timeout(max(services.decide_budget_s, 0.5)):
            await services.redis.ping()
    except (TimeoutError, RedisError) as exc:
        log.warning("readyz: Redis did not answer a PING: %s: %s", type(exc).__name__, exc)
        return json_response({"ready": False, "reason": "store unavailable"}, 503)
    return json_response({"ready": True, "catalog": services.catalogs.digest})


async def metrics_endpoint(request: Request) -> Response:
    """
    summary: Prometheus metrics.
    responses: {200: {description: text exposition format}}
    """
    body, content_type = metrics.render()
    return Response(body, headers={"Content-Type": content_type})


# msgspec writes nested definitions as `#/$defs/...`; schema_components puts
# every struct the bodies use under components/schemas, where such refs resolve.
_, BODY_SCHEMAS = msgspec.json.schema_components(
    [WireBatch, DecideRequest, SegmentBatch, SegmentMessage],
    ref_template="#/components/schemas/{name}",
)

SCHEMA_BASE = {
    "openapi": "3.1.0",
    "info": {"title": "Attimo", "version": "0.1.0",
             "description": "Real-time personalization: events in, decisions out."},
    "components": {
        "securitySchemes": {
            "siteKey": {"type": "apiKey", "in": "header", "name": "X-Attimo-Key",
                        "description": "The site key: browsers and apps"},
            "serverToken": {"type": "http", "scheme": "bearer",
                            "description": "The server token: your servers and operators"},
            "writeKey": {"type": "http", "scheme": "basic",
                         "description": "Segment clients: the server token as the user, empty password"},
        },
        "schemas": {
            **BODY_SCHEMAS,
            "SignedUser": {
                "type": "object",
                "properties": {"user_id": {"type": "string"},
                               "user_sig": {"type": "string", "description": "HMAC of user_id (site key callers)"}},
            },
        },
    },
}


schemas = SchemaGenerator(SCHEMA_BASE)


def openapi_document(routes: list) -> dict:
    """The OpenAPI 3.1 document of `routes` (those in the schema), from their
    docstrings. The docstrings write status codes as YAML integers for
    readability; OpenAPI wants them as strings."""
    document = schemas.get_schema(routes=routes)
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if "responses" in operation:
                operation["responses"] = {str(code): answer for code, answer in operation["responses"].items()}
    return document


async def openapi(request: Request) -> Response:
    return Response(orjson.dumps(openapi_document(request.app.routes)), media_type="application/json")


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
]
