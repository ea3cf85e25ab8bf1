"""What operators and tools read: liveness, readiness, Prometheus metrics, the
console's overview of every process (engine/store/ops_series.py), the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from api import metrics
from api.http import NO_STORE, caller_of, json_response, services_of
from api.routes.decide import DecideRequest
from engine.clock import now_ms
from engine.errors import EventRejected, StoreUnavailable
from engine.events import WireBatch
from engine.ingest.identity import READ, require
from engine.ingest.segment import SegmentBatch, SegmentMessage
from engine.latency import STEP_MS, overview
from engine.store.keys import OPS_SLOT_TTL_S

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


MAX_MINUTES = OPS_SLOT_TTL_S // 60


async def get_overview(request: Request) -> Response:
    """
    summary: 'The console''s figures: latency, rates and errors of every API process, and the state now (server token).'
    security: [{serverToken: []}]
    description: 'One point per 10-second slot over the last `minutes`, added up over every API process and
      replica (each flushes its counts to Redis every second), the last point the slot under way. Per endpoint
      (the `endpoint` label of attimo_request_seconds): `rate` (requests/s), `count`, and `p50`, `p95`, `p99` in
      ms, interpolated linearly within the latency bucket the rank falls in (as Prometheus''s
      histogram_quantile does), so a figure is as precise as its bucket (250 µs to 1 s; past 1 s it reads 1000);
      null for a slot without requests. `fallbacks`, `redis_errors`, `events_applied` per second; `thresholds`,
      the lines not to cross. `now`: Redis memory and PING time, the due queue''s depth and how late its
      oldest overdue message is, dead letters kept, and in Kafka mode each partition''s lag as the workers last
      reported it (null otherwise).'
    parameters:
      - {name: minutes, in: query, schema: {type: integer, minimum: 1, maximum: 120, default: 60}}
    responses:
      200: {description: '{"step_s": 10, "t": [slot start ms], "endpoints": {name: {"rate", "count", "p50",
        "p95", "p99"}}, "fallbacks", "redis_errors", "events_applied", "thresholds", "now": {"redis":
        {"used_memory", "ping_ms"}, "due_queue": {"depth", "in_flight", "lateness_ms"}, "dead_letters",
        "kafka"}}'}
      401: {description: Missing token}
      403: {description: A token without the read scope}
      422: {description: minutes is not a whole number from 1 to 120}
      503: {description: Redis unavailable}
    """
    services = services_of(request)
    require(caller_of(request), READ)
    minutes = _minutes(request)
    now = now_ms()
    current_slot = now - now % STEP_MS
    first_slot = current_slot - (minutes * 60_000 // STEP_MS - 1) * STEP_MS
    try:
        slots = await services.runtime.ops.read(first_slot, current_slot)
        state = await state_now(services, now)
    except RedisError as exc:
        raise StoreUnavailable("the console's figures are unavailable") from exc
    return json_response({**overview(slots, first_slot, now), "now": state}, headers=NO_STORE)


def _minutes(request: Request) -> int:
    raw = request.query_params.get("minutes", "60")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_MINUTES:
        raise EventRejected(f"minutes: a whole number from 1 to {MAX_MINUTES}", "minutes", MAX_MINUTES)
    return int(raw)


async def state_now(services, now: int) -> dict:
    """Redis, the due queue, dead letters and the Kafka lag, read now. The PING
    is timed on its own, before the other reads share the connection pool."""
    redis = services.redis
    started = time.perf_counter()
    await redis.ping()
    ping_ms = round((time.perf_counter() - started) * 1000, 3)
    memory, queue, dead, lag = await asyncio.gather(
        redis.info("memory"), services.queue.depth_and_lateness(now),
        redis.llen(services.keys.dead_letters()),
        services.runtime.ops.lag(now) if services.event_log is not None else _none())
    return {"redis": {"used_memory": _used_memory(memory), "ping_ms": ping_ms}, "due_queue": queue,
            "dead_letters": dead, "kafka": lag}


async def _none() -> None:
    return None


def _used_memory(info: dict) -> int:
    """INFO memory of one server, or of every node of a cluster (added up)."""
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(node["used_memory"]) for node in info.values() if isinstance(node, dict))


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
    Route("/v1/ops/overview", get_overview, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
]
