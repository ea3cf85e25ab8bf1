"""What every route uses to speak HTTP: the process's services, the caller
behind the request's credentials, bounded body reading, JSON answers, and
static files held in memory (`Asset`)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api.console.session import CSRF_HEADER, SESSION_COOKIE, session_caller
from api.services import Services
from engine.errors import BodyTimeout, BodyTooLarge, EventRejected, MalformedBody, NotAuthenticated
from engine.ingest.identity import Caller, authenticate
from engine.settings import MAX_BODY_BYTES

NO_STORE = {"Cache-Control": "no-store"}
CACHE_CONTROL = "public, max-age=300, stale-while-revalidate=86400"


def services_of(request: Request) -> Services:
    return request.app.state.services


def caller_of(request: Request) -> Caller:
    """Who is asking: a server token, a site key, or (when the request names
    neither) a console session cookie with its token's scopes (api/console/session.py,
    which checks the CSRF nonce of a request that changes something); else 401.
    Credentials named in the request always win over the cookie, so the demo
    storefront's snippet, on the console's origin, stays a site-key caller."""
    settings = services_of(request).settings
    try:
        return authenticate(request.headers, request.query_params, settings)
    except NotAuthenticated:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None or _names_credentials(request):
            raise
    return session_caller(cookie, request.method, request.headers.get(CSRF_HEADER), settings)


def _names_credentials(request: Request) -> bool:
    headers = request.headers
    return "authorization" in headers or bool(headers.get("x-attimo-key") or request.query_params.get("key"))


async def check_rate(request: Request, caller: Caller, anonymous_ids: set[str] | None = None) -> None:
    """Rate limits of a public caller (api/ratelimit.py): RateLimited (429)
    past them. With `anonymous_ids` (an events batch) the new-profile limit too."""
    rate_limits = services_of(request).rate_limits
    if caller.is_server or not rate_limits.enabled:
        return
    ip = rate_limits.client(request.scope)
    if anonymous_ids is None:
        await rate_limits.check_request(ip)
    else:
        await rate_limits.check_events(ip, anonymous_ids)


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (never read
    whole) and with 408 when it has not all arrived within the read deadline."""
    try:
        async with asyncio.timeout(services_of(request).settings.read_timeout_ms / 1000):
            return await _read_bounded(request, limit)
    except TimeoutError as exc:
        raise BodyTimeout("the request body did not arrive in time", "body") from exc


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge("request body too large", "body", limit)
        except ValueError:
            raise MalformedBody("Content-Length is not a number", "Content-Length") from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge("request body too large", "body", limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def body_pieces(request: Request) -> AsyncIterator[bytes]:
    """The body as it arrives, for a route that reads it a line at a time and
    bounds the line, not the body (a CRM import): each piece must come within
    the read deadline of the one before (408 otherwise), however long the whole
    takes. api/protocol.py times such a route's connection the same way."""
    pieces = request.stream().__aiter__()
    idle_s = services_of(request).settings.read_timeout_ms / 1000
    while True:
        try:
            async with asyncio.timeout(idle_s):
                piece = await anext(pieces)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise BodyTimeout("the request body stopped arriving", "body") from exc
        if piece:
            yield piece


async def json_object_body(request: Request, limit: int = 16 * 1024) -> dict:
    raw = await read_body(request, limit)
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EventRejected("the body is a JSON object", "body")
    return body


class Asset:
    """A file held in memory with its ETag and gzip -9 form."""

    def __init__(self, body: bytes, media_type: str):
        self.body = body
        self.gzipped = gzip.compress(body, 9, mtime=0)
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self.media_type = media_type

    def response(self, request: Request, extra_headers: dict | None = None) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept-Encoding"}
        headers.update(extra_headers or {})
        candidates = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
        if self.etag in candidates or "*" in candidates:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(self.gzipped, 200, headers, media_type=self.media_type)
        return Response(self.body, 200, headers, media_type=self.media_type)
