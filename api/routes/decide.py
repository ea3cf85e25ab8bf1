"""POST /v1/decide: the hot path. One Redis read for the person (with a public
caller's rate-limit hit beside it), then the pure decide (engine/decisions/decide.py) against the catalog in memory and
the process's budget snapshot; nothing written, except a single-use code handed to the person when a pooled
discount is chosen (one more round trip, then only)."""

from __future__ import annotations

import asyncio
import time

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import metrics
from api.http import caller_of, check_rate, json_response, read_body, services_of
from engine.clock import now_ms
from engine.decisions.budgets import Budgets
from engine.decisions.decide import Decision, decide
from engine.decisions.ids import new_nonce
from engine.errors import EventRejected, NotAuthorized
from engine.events import PERSON_ID, PLACEMENT_NAME, check_number, decode_json
from engine.ingest.identity import ADMIN, READ, require
from engine.profile import decode_profile
from engine.settings import MAX_PLACEMENTS_PER_DECIDE

DECIDE_SECONDS = metrics.EndpointTimer("decide")


class DecideRequest(msgspec.Struct, gc=False):
    placements: list[str]
    anonymous_id: str | None = None
    user_id: str | None = None
    user_sig: str | None = None
    context: dict[str, str | int | float | bool] = {}


_decide_decoder = msgspec.json.Decoder(DecideRequest)


async def post_decide(request: Request) -> Response:
    """
    summary: Choose an offer for each placement, for one person, now.
    description: Reads the person with one Redis round trip and writes nothing.
      A placement answered null keeps its default content. `?explain=1` adds why.
    security: [{siteKey: []}, {serverToken: []}]
    parameters:
      - {name: explain, in: query, schema: {type: string, enum: ['1', 'true']}, description: add why each offer was chosen}
    requestBody: {required: true, content: {application/json: {schema: {$ref: '#/components/schemas/DecideRequest'}}}}
    responses:
      200: {description: '{"decision_id", "placements": {name: offer | null}, "fallback"?}'}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Bad user signature}
      422: {description: A field breaks the schema or a limit}
      429: {description: Past the rate limit of a site key; retry after Retry-After seconds}
    """
    started = time.perf_counter()
    services = services_of(request)
    caller = caller_of(request)
    limited = services.rate_limits.enabled and not caller.is_server
    body = decode_decide(await read_body(request))
    person = caller.person(body.anonymous_id, body.user_id, body.user_sig, "body")
    explain = bool(request.scope["query_string"]) and request.query_params.get("explain") in ("1", "true")
    if caller.is_server and not explain:
        require(caller, READ)  # a decision for anyone shows what is known of them
    if explain and not (caller.may(READ) or caller.may(ADMIN)):
        # The reasons name upcoming offers and betray protected traits: not for a browser.
        raise NotAuthorized("explain needs a server token with the read or admin scope")
    catalog = services.holder.current
    fallback = None
    try:
        async with asyncio.timeout(services.decide_budget_s):
            read = services.profile_reader.get(services.keys.profile(person))
            if limited:  # the limiter's hit goes out with the read: one round trip's wait
                rate, raw = await asyncio.gather(check_rate(request, caller), read, return_exceptions=True)
                for outcome in (rate, raw):
                    if isinstance(outcome, BaseException):
                        raise outcome  # RateLimited: 429; a Redis failure: the fallback
            else:
                raw = await read
    except TimeoutError:
        fallback = "timeout"
    except RedisError as exc:
        fallback = type(exc).__name__
    now = now_ms()
    if fallback is not None:
        metrics.fallback(fallback)
        answer = {"decision_id": decision_id_for(services, person, [], now, "*", new_nonce()),
                  "placements": dict.fromkeys(body.placements), "fallback": True}
    else:
        runtime = services.runtime
        profile = decode_profile(raw)
        model = runtime.models.for_catalog(catalog)
        decision = decide(catalog, profile, person, body.placements, body.context, now, explain, model,
                          budgets=services.budgets.current)
        if catalog.code_pools and not explain:  # explaining is asking: it hands no code out
            decision = await give_codes(services, catalog, decision, person, lambda budgets: decide(
                catalog, profile, person, body.placements, body.context, now, explain, model, budgets=budgets))
        chosen_offers = [chosen["offer"] for chosen in decision.placements.values() if chosen]
        nonce = new_nonce()
        answer = {"decision_id": decision_id_for(services, person, chosen_offers, now, decision.bucket, nonce),
                  "placements": decision.placements}
        if not explain:  # an explained decide is a question, not a showing: never logged nor exposed
            runtime.decision_log.record(person, nonce, now, decision)
        if decision.explain is not None:
            answer["explain"] = decision.explain
        for name, chosen in decision.placements.items():
            # Labels only for the catalog's placements: a client naming others
            # must not grow the metrics without bound.
            label = name if name in catalog.placements else metrics.UNKNOWN_PLACEMENT
            metrics.count_decision(label, chosen["offer"] if chosen else "none")
    DECIDE_SECONDS.observe(time.perf_counter() - started)
    return json_response(answer)


async def give_codes(services, catalog, decision: Decision, person: str, decide_with) -> Decision:
    """Each chosen offer with a code pool gets the person's own code, in a copy
    of its answer (the offer's own stays untouched): one script per pool, so the
    extra round trip is paid only when such an offer is chosen. A pool found
    empty since the last snapshot: decide again with it marked empty (bounded:
    each pass empties at least one more). Redis failing or too slow: those
    placements stay empty; a discount never shows without its code."""
    snapshot = services.budgets.current
    empty = set(snapshot.empty_pools)
    for _ in range(len(catalog.code_pools) + 1):
        pooled = {name: catalog.offers_by_id[answer["offer"]].code_pool
                  for name, answer in decision.placements.items() if answer is not None}
        pooled = {name: pool for name, pool in pooled.items() if pool is not None}
        if not pooled:
            return decision
        try:
            async with asyncio.timeout(services.decide_budget_s):
                codes = await asyncio.gather(*(services.codes.give(pool, person) for pool in pooled.values()))
        except (TimeoutError, RedisError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            metrics.redis_error("decide_codes", kind)
            for name in pooled:
                withdraw(decision, name)
            return decision
        ran_out = {pool for pool, code in zip(pooled.values(), codes, strict=True) if code is None}
        if not ran_out:
            for name, code in zip(pooled, codes, strict=True):
                answer = decision.placements[name]
                decision.placements[name] = {**answer, "content": {**answer["content"], "code": code}}
            return decision
        empty |= ran_out
        decision = decide_with(Budgets(snapshot.spent, frozenset(empty), snapshot.read_at_ms))
    return decision


def withdraw(decision: Decision, name: str) -> None:
    """A placement's choice not shown after all: neither answered, nor logged,
    nor counted as a hold-out offer's treated exposure."""
    offer = decision.placements[name]["offer"]
    decision.placements[name] = None
    decision.logged = [row for row in decision.logged if row[0] != name]
    decision.exposures = [pair for pair in decision.exposures if pair != (f"h:{offer}", "t")]


def decision_id_for(services, person: str, offers: list[str], now: int, bucket: str, nonce: str) -> str:
    """Signed for this person, these offers and the bucket learning saw
    (engine/decisions/ids.py): only then do the impressions and clicks that
    bring it back count, and teach that bucket."""
    signer = services.runtime.decisions
    return signer.issue(person, offers, now // 1000, bucket, nonce) if signer is not None else nonce


def decode_decide(body: bytes) -> DecideRequest:
    request = decode_json(_decide_decoder, body)
    if not request.placements:
        raise EventRejected("ask for at least one placement", "placements")
    if len(request.placements) > MAX_PLACEMENTS_PER_DECIDE:
        raise EventRejected("too many placements", "placements", MAX_PLACEMENTS_PER_DECIDE)
    for i, name in enumerate(request.placements):
        if not PLACEMENT_NAME.fullmatch(name):
            raise EventRejected("placement names are 1 to 64 letters, digits or _ . -", f"placements[{i}]", 64)
    if len(request.context) > 50:
        raise EventRejected("too many context fields", "context", 50)
    for name, value in request.context.items():
        if len(name) > 64:
            raise EventRejected("context field name too long", f"context.{name[:32]}…", 64)
        if isinstance(value, str) and len(value) > 1024:
            raise EventRejected("string too long", f"context.{name}", 1024)
        check_number(value, f"context.{name}")
    for name in ("anonymous_id", "user_id"):
        value = getattr(request, name)
        if value is not None and not PERSON_ID.fullmatch(value):
            raise EventRejected("person ids are 1 to 128 characters without spaces or braces", name, 128)
    return request


PATH = "/v1/decide"
ROUTES = [Route(PATH, post_decide, methods=["POST"])]


class DecideShortcut:
    """POST /v1/decide answered ahead of Starlette's router: the route every
    page view calls skips the router's walk over every route, its exception
    middleware and the request/response wrappers around the endpoint (a tenth
    of a decide's CPU: benchmarks/README.md, P1c). Mounted as the innermost
    middleware, so CORS (and the 500 of an unexpected error) still wrap it; the
    route above stays for every other method (405) and for the API's schema.
    Errors get the same answers as anywhere else (`handlers`: api/errors.py)."""

    def __init__(self, app, handlers: dict):
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await post_decide(request)
        except Exception as exc:
            handler = next((self.handlers[kind] for kind in type(exc).__mro__ if kind in self.handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
