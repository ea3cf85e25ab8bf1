"""Every exception a route may raise, mapped to its HTTP answer in one place.
Infrastructure failures (Redis, Kafka) are 503 with Retry-After and a body that
names no host: the cause goes to the log."""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api import metrics
from api.http import json_response
from engine.errors import (
    CatalogError,
    EventRejected,
    NotAuthenticated,
    NotAuthorized,
    RateLimited,
    StoreUnavailable,
)

log = logging.getLogger("attimo.api")


async def rejected(request: Request, exc: EventRejected) -> Response:
    metrics.EVENTS_REJECTED.labels(str(exc.status)).inc()
    return json_response(exc.as_dict(), exc.status)


async def unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
    return json_response({"error": str(exc)}, 401, {"WWW-Authenticate": "Bearer"})


async def forbidden(request: Request, exc: NotAuthorized) -> Response:
    return json_response({"error": str(exc)}, 403)


async def rate_limited(request: Request, exc: RateLimited) -> Response:
    return json_response({"error": str(exc)}, 429, {"Retry-After": str(exc.retry_after)})


async def unavailable(request: Request, exc: StoreUnavailable) -> Response:
    return json_response({"error": str(exc)}, 503, {"Retry-After": "1"})


async def bad_catalog(request: Request, exc: CatalogError) -> Response:
    problems = [{"path": path, "reason": reason} for path, reason in exc.problems]
    return json_response({"error": "the catalog has problems", "problems": problems}, 422)


async def store_failed(request: Request, exc: Exception) -> Response:
    """A Redis or Kafka error no route translated: still a 503, never a 500."""
    log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    metrics.redis_error(request.url.path[:64], type(exc).__name__)
    return json_response({"error": "store unavailable"}, 503, {"Retry-After": "1"})


async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
    """The client left while its body was being read: one quiet line, no
    traceback (a storm of them must not fill the disk); nobody reads the answer."""
    log.info("%s %s: the client disconnected before its body arrived", request.method, request.url.path)
    return Response(status_code=400)


ERROR_HANDLERS = {
    ClientDisconnect: client_gone,
    EventRejected: rejected,
    NotAuthenticated: unauthenticated,
    NotAuthorized: forbidden,
    RateLimited: rate_limited,
    StoreUnavailable: unavailable,
    CatalogError: bad_catalog,
    RedisError: store_failed,
    KafkaError: store_failed,
}
