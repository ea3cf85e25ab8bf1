"""POST /v1/events: a batch of events from the snippet, an app or a server, applied before the answer (or acknowledged by Kafka in Kafka mode)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import metrics
from api.http import caller_of, check_rate, json_response, read_body, services_of
from engine.clock import now_ms
from engine.events import ANONYMOUS, decode_batch
from engine.ingest.identity import INGEST, require, resolve_events

EVENTS_SECONDS = metrics.EndpointTimer("events")


async def post_events(request: Request) -> Response:
    """
    summary: Send a batch of events (at most 500); answered after they are applied.
    security: [{siteKey: []}, {serverToken: []}]
    requestBody: {required: true, content: {application/json: {schema: {$ref: '#/components/schemas/WireBatch'}}}}
    responses:
      202: {description: 'Applied: {"accepted": N, "duplicates": M}'}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Bad user signature or protected trait}
      413: {description: Body over 512 KB}
      422: {description: A field breaks the schema or a limit; the answer names it}
      429: {description: 'Past a rate limit of a site key (requests, or new profiles); retry after Retry-After seconds'}
      503: {description: Redis unavailable; retry after Retry-After seconds}
    """
    started = time.perf_counter()
    services = services_of(request)
    caller = caller_of(request)
    if caller.is_server:
        require(caller, INGEST)  # acting for anyone, setting any trait
    wire_events = decode_batch(await read_body(request))
    now = now_ms()
    events = resolve_events(wire_events, caller, services.holder.current, now)
    await check_rate(request, caller, {e.person for e in events if e.person.startswith(ANONYMOUS)})
    result = await services.apply(events, now)
    EVENTS_SECONDS.observe(time.perf_counter() - started)
    if services.event_log is not None:
        return json_response({"accepted": result.accepted, "queued": True}, 202)
    return json_response({"accepted": result.accepted, "duplicates": result.duplicates}, 202)


ROUTES = [Route("/v1/events", post_events, methods=["POST"])]
