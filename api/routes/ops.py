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


SCHEMA_BASE = {
    "openapi": "3.0.3",
    "info": {"title": "Attimo", "version": "0.1.0",
             "description": "Real-time personalization: events in, decisions out."},
    "components": {
        "securitySchemes": {
            "siteKey": {"type": "apiKey", "in": "header", "name": "X-Attimo-Key"},
            "serverToken": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "EventBatch": msgspec.json.schema(WireBatch),
            "DecideRequest": msgspec.json.schema(DecideRequest),
        },
    },
}


schemas = SchemaGenerator(SCHEMA_BASE)


async def openapi(request: Request) -> Response:
    # Status codes in the route docstrings are YAML integers: JSON wants strings.
    body = orjson.dumps(schemas.get_schema(routes=request.app.routes), option=orjson.OPT_NON_STR_KEYS)
    return Response(body, media_type="application/json")


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
]
