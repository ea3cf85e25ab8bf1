"""The HTTP API: Starlette routes over the engine. Each route authenticates,
bounds and validates its input, calls the engine, and answers; errors become
HTTP answers in one place (`ERROR_HANDLERS`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import orjson
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from api import metrics
from engine.catalog.compile import CatalogHolder, empty_catalog, load_catalog_file
from engine.catalog.publish import CatalogStore
from engine.decisions.decide import decide
from engine.decisions.person_view import journeys_view, person_view
from engine.errors import (
    BodyTooLarge,
    CatalogError,
    EventRejected,
    MalformedBody,
    NotAuthenticated,
    NotAuthorized,
    StoreUnavailable,
)
from engine.events import PERSON_ID, Event, WireBatch, decode_batch
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.erase import erase_person
from engine.ingest.identity import authenticate, require_server, resolve_events
from engine.ingest.pipeline import ApplyResult, Pipeline
from engine.policy import PERSONAL_CHANNELS
from engine.profile import decode_profile
from engine.settings import MAX_BODY_BYTES, MAX_PLACEMENTS_PER_DECIDE, Settings
from engine.store.client import connect
from engine.store.keys import Keys
from engine.store.profiles import ProfileStore
from engine.stream.event_log import EventLog

log = logging.getLogger("attimo.api")

DECIDE_SECONDS = metrics.REQUEST_SECONDS.labels("decide")
EVENTS_SECONDS = metrics.REQUEST_SECONDS.labels("events")


class DecideRequest(msgspec.Struct, gc=False):
    placements: list[str]
    anonymous_id: str | None = None
    user_id: str | None = None
    user_sig: str | None = None
    context: dict[str, str | int | float | bool] = {}


_decide_decoder = msgspec.json.Decoder(DecideRequest)


class Services:
    """What the routes share in one process: settings, Redis, the catalog in force."""

    def __init__(self, settings: Settings, holder: CatalogHolder, file_text: str | None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.holder = holder
        self.file_text = file_text
        self.redis = connect(settings)
        self.store = ProfileStore(
            self.redis, self.keys,
            dedupe_ttl_s=settings.dedupe_ttl_s, profile_ttl_s=settings.profile_ttl_s,
        )
        self.pipeline = Pipeline(self.store, holder)
        # Kafka mode: accepted events go to the log; `attimo worker` applies them.
        self.event_log = EventLog(settings) if settings.kafka_brokers else None
        self.catalogs = CatalogStore(self.redis, self.keys, holder)
        self.decide_budget_s = settings.redis_budget_ms / 1000
        self.apply_budget_s = settings.apply_budget_ms / 1000
        self._decision_counters: dict[tuple[str, str], Any] = {}

    def count_decision(self, placement: str, offer: str) -> None:
        counter = self._decision_counters.get((placement, offer))
        if counter is None:
            counter = self._decision_counters[(placement, offer)] = metrics.DECISIONS.labels(placement, offer)
        counter.inc()

    async def start(self) -> None:
        try:
            await self.store.load_scripts()
            await self.catalogs.start(self.file_text)
        except RedisError as exc:
            log.warning("Redis not reachable at start-up (%s); serving the local catalog", exc)

    async def reload_file(self) -> None:
        path = self.settings.catalog_path
        if not path:
            return
        try:
            await self.catalogs.publish(Path(path).read_text(), from_file=True)
        except (CatalogError, OSError, RedisError) as exc:
            log.error("catalog reload from %s failed, keeping the current one: %s", path, exc)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (never read whole)."""
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


# -- routes ------------------------------------------------------------------------


async def post_events(request: Request) -> Response:
    """
    summary: Send a batch of events (at most 500); answered after they are applied.
    requestBody: {content: {application/json: {schema: {$ref: '#/components/schemas/EventBatch'}}}}
    responses:
      202: {description: 'Applied: {"accepted": N, "duplicates": M}'}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Bad user signature or protected trait}
      413: {description: Body over 512 KB}
      422: {description: A field breaks the schema or a limit; the answer names it}
      503: {description: Redis unavailable; retry after Retry-After seconds}
    """
    started = time.perf_counter()
    services: Services = request.app.state.services
    caller = authenticate(request.headers, request.query_params, services.settings)
    wire_events = decode_batch(await read_body(request))
    now = now_ms()
    events = resolve_events(wire_events, caller, services.holder.current, now)
    result = await apply_events(services, events, now)
    EVENTS_SECONDS.observe(time.perf_counter() - started)
    if services.event_log is not None:
        return json_response({"accepted": result.accepted, "queued": True}, 202)
    return json_response({"accepted": result.accepted, "duplicates": result.duplicates}, 202)


async def apply_events(services: Services, events: list[Event], now: int) -> ApplyResult:
    """Apply resolved events before answering (every ingest route comes here):
    a Redis failure or a pass of the budget is a 503, nothing acknowledged.
    In Kafka mode, "applied" is "acknowledged by the broker"; a worker applies
    them (duplicates are found there, so none are reported here)."""
    if services.event_log is not None:
        await services.event_log.publish(events)
        metrics.EVENTS_QUEUED.inc(len(events))
        return ApplyResult(accepted=len(events))
    try:
        async with asyncio.timeout(services.apply_budget_s):
            result = await services.pipeline.apply(events, now)
    except TimeoutError:
        metrics.REDIS_ERRORS.labels("apply", "timeout").inc()
        raise StoreUnavailable("the profile store did not answer in time") from None
    except RedisError as exc:
        metrics.REDIS_ERRORS.labels("apply", type(exc).__name__).inc()
        raise StoreUnavailable(f"the profile store is unavailable: {exc}") from None
    metrics.EVENTS_APPLIED.inc(result.accepted)
    metrics.EVENTS_DUPLICATE.inc(result.duplicates)
    if result.merged:
        metrics.MERGES.inc(result.merged)
    return result


async def post_decide(request: Request) -> Response:
    """
    summary: Choose an offer for each placement, for one person, now.
    description: Reads the person with one Redis round trip and writes nothing.
      A placement answered null keeps its default content. `?explain=1` adds why.
    requestBody: {content: {application/json: {schema: {$ref: '#/components/schemas/DecideRequest'}}}}
    responses:
      200: {description: '{"decision_id", "placements": {name: offer | null}, "fallback"?}'}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Bad user signature}
      422: {description: A field breaks the schema or a limit}
    """
    started = time.perf_counter()
    services: Services = request.app.state.services
    caller = authenticate(request.headers, request.query_params, services.settings)
    body = decode_decide(await read_body(request))
    person = caller.person(body.anonymous_id, body.user_id, body.user_sig, "body")
    if services.settings.decide_delay_ms:  # test-only, off unless ATTIMO_DECIDE_DELAY_MS is set
        await asyncio.sleep(services.settings.decide_delay_ms / 1000)
    explain = bool(request.scope["query_string"]) and request.query_params.get("explain") in ("1", "true")
    catalog = services.holder.current
    fallback = None
    try:
        async with asyncio.timeout(services.decide_budget_s):
            raw = await services.redis.get(services.keys.profile(person))
    except TimeoutError:
        fallback = "timeout"
    except RedisError as exc:
        fallback = type(exc).__name__
    decision_id = os.urandom(8).hex()
    if fallback is not None:
        metrics.FALLBACKS.labels(fallback).inc()
        metrics.REDIS_ERRORS.labels("decide", fallback).inc()
        answer = {"decision_id": decision_id, "placements": dict.fromkeys(body.placements), "fallback": True}
    else:
        decision = decide(
            catalog, decode_profile(raw), person, body.placements, body.context, now_ms(), explain
        )
        answer = {"decision_id": decision_id, "placements": decision.placements}
        if decision.explain is not None:
            answer["explain"] = decision.explain
        for name, chosen in decision.placements.items():
            services.count_decision(name, chosen["offer"] if chosen else "none")
    DECIDE_SECONDS.observe(time.perf_counter() - started)
    return json_response(answer)


def decode_decide(body: bytes) -> DecideRequest:
    try:
        request = _decide_decoder.decode(body)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).rpartition(" - at `")
        raise EventRejected(reason or str(exc), where.rstrip("`").removeprefix("$").lstrip(".")) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    if not request.placements:
        raise EventRejected("ask for at least one placement", "placements")
    if len(request.placements) > MAX_PLACEMENTS_PER_DECIDE:
        raise EventRejected("too many placements", "placements", MAX_PLACEMENTS_PER_DECIDE)
    if len(request.context) > 50:
        raise EventRejected("too many context fields", "context", 50)
    for name, value in request.context.items():
        if isinstance(value, str) and len(value) > 1024:
            raise EventRejected("string too long", f"context.{name}", 1024)
    for name in ("anonymous_id", "user_id"):
        value = getattr(request, name)
        if value is not None and not PERSON_ID.fullmatch(value):
            raise EventRejected("person ids are 1 to 128 characters without spaces or braces", name, 128)
    return request


async def get_person(request: Request) -> Response:
    """
    summary: A person's profile as the engine sees it now (server token).
    responses:
      200: {description: 'traits, windowed features, score, segments, impressions, messages: pending (queued or sending) and recent outcomes with their reasons, and journeys: in progress (step, waiting until) and last entries'}
      401: {description: Missing token}
      403: {description: Not the server token}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    person = request.path_params["person"]
    try:
        profile = await services.store.fetch(person)
        pending = await DueQueue(services.redis, services.keys).pending_for(person, sorted(PERSONAL_CHANNELS))
        recent = await ContactStore(services.redis, services.keys).outcomes(person)
        journeys = await services.pipeline.journeys.state(person)
    except RedisError as exc:
        raise StoreUnavailable(f"the profile store is unavailable: {exc}") from None
    view = person_view(services.holder.current, person, profile, now_ms())
    view["messages"] = {"pending": pending, "recent": recent}
    view["journeys"] = journeys_view(journeys)
    return json_response(view)


async def delete_person(request: Request) -> Response:
    """
    summary: Erase a person (server token).
    description: 'Cancels every message queued for them on every channel (journey timers too), then removes
      their profile, event ids, contact state (consent, time zone, outcomes), journeys, inbox, devices and
      dead letters. Their suppressions stay: they keep them from being contacted again.'
    responses:
      200: {description: '{"erased": keys removed, "cancelled": queued messages cancelled, "dead_letters": removed}'}
      401: {description: Missing token}
      403: {description: Not the server token}
    """
    from api.followups import queued_channels  # here: that module imports this one

    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    try:
        erased = await erase_person(services.redis, services.keys, DueQueue(services.redis, services.keys),
                                    request.path_params["person"], queued_channels(services), now_ms())
    except RedisError as exc:
        raise StoreUnavailable(f"the profile store is unavailable: {exc}") from None
    return json_response({"erased": erased["keys"], "cancelled": erased["cancelled"],
                          "dead_letters": erased["dead_letters"]})


async def post_catalog(request: Request) -> Response:
    """
    summary: Replace the catalog in force (server token); YAML or JSON body.
    responses:
      200: {description: '{"digest", "offers", "segments", "placements"}'}
      422: {description: 'The catalog has problems: {"problems": [{"path", "reason"}]}'}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    text = (await read_body(request, 4 * MAX_BODY_BYTES)).decode("utf-8", "replace")
    try:
        catalog = await services.catalogs.publish(text)
    except RedisError as exc:
        raise StoreUnavailable(f"cannot publish the catalog: {exc}") from None
    return json_response({
        "digest": services.catalogs.digest,
        "offers": len(catalog.offers),
        "segments": len(catalog.segments),
        "placements": sorted(catalog.placements),
    })


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
    services: Services = request.app.state.services
    try:
        async with asyncio.timeout(max(services.decide_budget_s, 0.5)):
            await services.redis.ping()
    except (TimeoutError, RedisError) as exc:
        return json_response({"ready": False, "reason": f"redis: {exc or 'timeout'}"}, 503)
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


# -- errors, in one place ------------------------------------------------------------


async def rejected(request: Request, exc: EventRejected) -> Response:
    metrics.EVENTS_REJECTED.labels(str(exc.status)).inc()
    return json_response(exc.as_dict(), exc.status)


async def unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
    return json_response({"error": str(exc)}, 401, {"WWW-Authenticate": "Bearer"})


async def forbidden(request: Request, exc: NotAuthorized) -> Response:
    return json_response({"error": str(exc)}, 403)


async def unavailable(request: Request, exc: StoreUnavailable) -> Response:
    return json_response({"error": str(exc)}, 503, {"Retry-After": "1"})


async def bad_catalog(request: Request, exc: CatalogError) -> Response:
    problems = [{"path": path, "reason": reason} for path, reason in exc.problems]
    return json_response({"error": "the catalog has problems", "problems": problems}, 422)


ERROR_HANDLERS = {
    EventRejected: rejected,
    NotAuthenticated: unauthenticated,
    NotAuthorized: forbidden,
    StoreUnavailable: unavailable,
    CatalogError: bad_catalog,
}


ROUTES = [
    Route("/v1/events", post_events, methods=["POST"]),
    Route("/v1/decide", post_decide, methods=["POST"]),
    Route("/v1/people/{person}", get_person, methods=["GET"]),
    Route("/v1/people/{person}", delete_person, methods=["DELETE"]),
    Route("/v1/admin/catalog", post_catalog, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
]


def create_app(settings: Settings, extra_routes: list | None = None) -> Starlette:
    """The API for these settings. A catalog file that does not compile stops
    start-up here, before any request is served."""
    file_text = None
    if settings.catalog_path:
        catalog, file_text = load_catalog_file(settings.catalog_path)
    else:
        catalog = empty_catalog()
    services = Services(settings, CatalogHolder(catalog, file_text or ""), file_text)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await services.start()
        poller = asyncio.create_task(services.catalogs.poll(settings.catalog_poll_s))
        scheduler_stop = asyncio.Event()
        scheduler = None
        if settings.scheduler == "embedded":
            from engine.followups.scheduler import run_embedded

            scheduler = asyncio.create_task(run_embedded(settings, scheduler_stop, services.holder))
        loop = asyncio.get_running_loop()
        reload_tasks: set[asyncio.Task] = set()

        def on_sighup() -> None:
            task = loop.create_task(services.reload_file())
            reload_tasks.add(task)
            task.add_done_callback(reload_tasks.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        # Long-lived objects made at start-up never need scanning again: no GC
        # pauses that grow with the catalog on the hot path.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            poller.cancel()
            if scheduler is not None:
                scheduler_stop.set()
                await scheduler
            loop.remove_signal_handler(signal.SIGHUP)
            if services.event_log is not None:
                await services.event_log.close()
            await services.redis.aclose()

    middleware = []
    if settings.allowed_origins:
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-Attimo-Key", "Authorization"],
            max_age=600,
        ))
    from api.followups import FOLLOWUP_ROUTES  # here: both import this module
    from api.segment import SEGMENT_ROUTES
    from api.web import web_routes

    app = Starlette(
        routes=ROUTES + SEGMENT_ROUTES + FOLLOWUP_ROUTES + web_routes(settings) + (extra_routes or []),
        middleware=middleware,
        exception_handlers=ERROR_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def create_app_from_env() -> Starlette:
    """uvicorn factory (`--factory api.app:create_app_from_env`) for worker processes."""
    return create_app(Settings.from_env())
