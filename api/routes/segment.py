"""Segment-compatible ingest routes: POST /v1/batch and the single-call paths
(/v1/track, /v1/identify, /v1/page, /v1/screen, /v1/alias, /v1/group), so
teams that already send events with Segment-style libraries point them at
Attimo unchanged. The write key is the server token; the mapping lives in
engine/ingest/segment.py and the apply step is POST /v1/events' own."""

from __future__ import annotations

import time
import zlib

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import metrics
from api.errors import ERROR_HANDLERS
from api.http import json_response, read_body, services_of
from engine.clock import now_ms
from engine.errors import AttimoError, BodyTooLarge, EventRejected, MalformedBody
from engine.ingest.identity import authenticate_write_key, resolve_events
from engine.ingest.segment import KINDS, decode_batch_body, decode_single_body, wire_events
from engine.settings import MAX_BODY_BYTES

SEGMENT_SECONDS = metrics.EndpointTimer("segment")

# What the clients read from an error answer: analytics-python logs `code` and
# `message`; rudder-sdk-python raises KeyError without `code` and then retries
# a 4xx it should have given up on.
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 413: "payload_too_large",
    415: "unsupported_encoding", 422: "invalid_event", 429: "rate_limited", 503: "unavailable",
}


class UnsupportedEncoding(EventRejected):
    status = 415


async def ingest(request: Request, kind: str | None) -> Response:
    started = time.perf_counter()
    services = services_of(request)
    authorization = request.headers.get("authorization")
    caller = None
    if authorization is not None:  # refuse a bad key before reading the body
        caller = authenticate_write_key(authorization, None, services.settings)
    body = gunzip_bounded(await read_body(request), request.headers.get("content-encoding"))
    batch = decode_batch_body(body) if kind is None else decode_single_body(body, kind)
    if caller is None:
        caller = authenticate_write_key(None, batch.write_key, services.settings)
    now = now_ms()
    events = resolve_events(wire_events(batch, now, single=kind is not None), caller, services.holder.current, now)
    result = await services.apply(events, now)
    SEGMENT_SECONDS.observe(time.perf_counter() - started)
    # Both clients count a send as done on 200 (rudder on exactly 200).
    return json_response({"success": True, "accepted": result.accepted, "duplicates": result.duplicates})


def gunzip_bounded(body: bytes, encoding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """A gzip body (rudder's default) inflated under the same limit as a plain
    one, stopping at limit + 1 bytes: a zip bomb costs us 512 KB, not gigabytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding("Content-Encoding must be gzip or absent", "Content-Encoding")
    parts, size = [], 0
    while body:  # a gzip stream may hold several members
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(body, limit - size + 1)
        except zlib.error as exc:
            raise MalformedBody(f"the gzip body does not inflate: {exc}", "body") from None
        size += len(part)
        if size > limit:
            raise BodyTooLarge("request body too large once inflated", "body", limit)
        if not inflater.eof:
            raise MalformedBody("the gzip body is cut short", "body")
        parts.append(part)
        body = inflater.unused_data
    return b"".join(parts)


def segment_errors(endpoint):
    """Answer errors with the status POST /v1/events would give, in a body both
    clients can read (`code`, `message`, plus Attimo's `error`/`field`/`limit`)."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except AttimoError as exc:
            handler = next(ERROR_HANDLERS[cls] for cls in type(exc).__mro__ if cls in ERROR_HANDLERS)
            answer = await handler(request, exc)
            detail = orjson.loads(answer.body)
            status = answer.status_code
            body = {"success": False, "code": ERROR_CODES.get(status, "error"),
                    "message": str(exc), **detail}
            headers = {k: v for k, v in answer.headers.items() if k in ("retry-after",)}
            if status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="attimo"'
            return json_response(body, status, headers)

    guarded.__doc__ = endpoint.__doc__
    guarded.__name__ = endpoint.__name__
    return guarded


async def post_batch(request: Request) -> Response:
    """
    summary: Segment-compatible batch of track/identify/page/screen/alias/group calls (at most 500).
    description: Write key = the server token, as the HTTP Basic user with an empty
      password (or writeKey in the body). Body may be gzip (Content-Encoding), 512 KB
      inflated at most. Mapped onto Attimo events as docs/segment.md says, then
      validated, deduplicated by messageId and applied like POST /v1/events.
    security: [{writeKey: []}, {serverToken: []}]
    requestBody: {required: true, content: {application/json: {schema: {$ref: '#/components/schemas/SegmentBatch'}}}}
    responses:
      200: {description: 'Applied: {"success": true, "accepted": N, "duplicates": M}'}
      400: {description: Malformed JSON or gzip}
      401: {description: Missing or unknown write key}
      413: {description: 'Body over 512 KB, before or after inflating'}
      415: {description: Content-Encoding other than gzip}
      422: {description: A field breaks the schema or a limit; the answer names it}
      503: {description: Redis unavailable; retry after Retry-After seconds}
    """
    return await ingest(request, None)


def single_call(kind: str):
    async def endpoint(request: Request) -> Response:
        return await ingest(request, kind)

    endpoint.__name__ = f"post_{kind}"
    endpoint.__doc__ = f"""
    summary: Segment-compatible single {kind} call; answers as POST /v1/batch.
    security: [{{writeKey: []}}, {{serverToken: []}}]
    requestBody: {{required: true, content: {{application/json: {{schema: {{$ref: '#/components/schemas/SegmentMessage'}}}}}}}}
    responses:
      200: {{description: 'Applied: {{"success": true, "accepted": N, "duplicates": M}}'}}
      400: {{description: Malformed JSON or gzip}}
      401: {{description: Missing or unknown write key}}
      413: {{description: Body over 512 KB}}
      415: {{description: Content-Encoding other than gzip}}
      422: {{description: A field breaks the schema or a limit}}
      503: {{description: Redis unavailable; retry after Retry-After seconds}}
    """
    return endpoint


ROUTES = [
    Route("/v1/batch", segment_errors(post_batch), methods=["POST"]),
    *(
        Route(f"/v1/{kind}", segment_errors(single_call(kind)), methods=["POST"])
        for kind in KINDS
    ),
]
