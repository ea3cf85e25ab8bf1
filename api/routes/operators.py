"""Marketers' and operators' reads and levers (server token): KPIs, the suppression list, dead letters."""

from __future__ import annotations

import orjson
from redis.exceptions import RedisError
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, services_of
from engine.errors import EventRejected, StoreUnavailable
from engine.followups.kpis import MAX_DAILY_DAYS, days_between
from engine.ingest.identity import ADMIN, READ, require
from engine.policy import (
    EMAIL_MAX_LENGTH,
    PERSONAL_CHANNELS,
    SUPPRESSIBLE_CHANNELS,
    suppression_address,
)
from engine.store.keys import DEAD_LETTERS_MAX


async def get_kpis(request: Request) -> Response:
    """
    summary: KPIs per journey, broadcast, channel and offer (server token).
    security: [{serverToken: []}]
    description: 'Per journey of the catalog in force: entered, held out, sends by channel, opens, clicks,
      their rates, converters and revenue for the treated and the hold-out group, and the uplift. Per channel:
      sent, dropped, dead letters, opens, clicks, unsubscribes and their rates. Per offer: impressions,
      viewers, clicks, clickers, click-through rate, converters, conversion rate, revenue, discount cost and
      ROI; for an offer with a hold-out, `uplift`: people decide chose it for (treated) or would have but
      held out (control), converters of each, their rates, the difference and its 95 % interval (exact counts).
      Counts are of distinct ids (HyperLogLog, standard error 0.81 %). With `from` and `to` (UTC days,
      YYYY-MM-DD, both included, at most 400 days), what those days counted: distinct ids over the range,
      sums added; the hold-out uplift stays the whole-life figure. An offer with a budget has `budget`:
      {"per": "day"|"campaign", "amount", "spent"}, the spend now (today''s, UTC, for `per: day`) whatever
      the range. With `by=day` too (a range of at most 92 days), `by_day`: [{"day", "offers": {id: {...}}}],
      each day''s offer figures on their own, oldest first.'
    parameters:
      - {name: from, in: query, schema: {type: string, format: date}}
      - {name: to, in: query, schema: {type: string, format: date}}
      - {name: by, in: query, schema: {type: string, enum: [day]}}
    responses:
      200: {description: '{"journeys": {id: {...}}, "channels": {name: {...}}, "offers": {id: {...}},
        "broadcasts": {id: {...}}, "days": {"from", "to"} with a range, "by_day": [...] with by=day}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      422: {description: 'A bad date, a range backwards or over 400 days, `by` other than day, or by=day
        without a range or over 92 days'}
      503: {description: Redis unavailable}
    """
    services = services_of(request)
    require(caller_of(request), READ)
    channels = sorted(PERSONAL_CHANNELS | services.webhook_channels())
    days = _days(request)
    by_day = _by_day(request, days)
    try:
        catalog = services.holder.current
        report = await services.kpis.report(
            list(catalog.journeys.by_id), channels, list(catalog.offers_by_id), list(catalog.broadcasts), days)
        if days is not None:
            report["days"] = {"from": days[0], "to": days[-1]}
        held = [offer.id for offer in catalog.offers if offer.holdout_pct]
        for offer, uplift in (await services.runtime.decision_log.exposures.uplifts(held)).items():
            report["offers"][offer]["uplift"] = uplift
        for offer, budget in (await services.budgets.burn(catalog.offers)).items():
            report["offers"][offer]["budget"] = budget
        if by_day:
            report["by_day"] = await services.kpis.offers_by_day(list(catalog.offers_by_id), days)
    except RedisError as exc:
        raise StoreUnavailable("the KPI store is unavailable") from exc
    for journey in report["journeys"].values():  # JSON keys are text: step 0 is "0"
        journey["waiting"] = {str(step): n for step, n in journey["waiting"].items()}
    return json_response(report)


MAX_PAGE = 1000


def _by_day(request: Request, days: list[str] | None) -> bool:
    """Whether `by=day` asks for each day of the range on its own (checked: a
    range is needed, of at most MAX_DAILY_DAYS days)."""
    by = request.query_params.get("by")
    if by is None:
        return False
    if by != "day":
        raise EventRejected("by: only day", "by")
    if days is None:
        raise EventRejected("by=day needs a range: from and to (YYYY-MM-DD)", "from")
    if len(days) > MAX_DAILY_DAYS:
        raise EventRejected(f"by=day reads at most {MAX_DAILY_DAYS} days", "to", MAX_DAILY_DAYS)
    return True


def _days(request: Request) -> list[str] | None:
    first, last = request.query_params.get("from"), request.query_params.get("to")
    if first is None and last is None:
        return None
    if first is None or last is None:
        raise EventRejected("a date range needs both from and to (YYYY-MM-DD)", "from" if first is None else "to")
    try:
        return days_between(first, last)
    except ValueError as exc:
        raise EventRejected(f"from and to are UTC days, YYYY-MM-DD: {exc}", "from") from None


def _limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise EventRejected(f"limit: a whole number from 1 to {maximum}", "limit", maximum)
    return int(raw)


def _suppressible(request: Request) -> tuple[str, str | None]:
    """The path's channel, checked, and its address normalised (None when the
    route has no address); 422 naming the part at fault."""
    channel = request.path_params["channel"]
    if channel not in SUPPRESSIBLE_CHANNELS:
        kinds = ", ".join(f"{c} ({what})" for c, what in SUPPRESSIBLE_CHANNELS.items())
        raise EventRejected(f"channel: one of {kinds}; push and inbox reach a person id, not an address",
                            "channel")
    text = request.path_params.get("address")
    if text is None:
        return channel, None
    if len(text) > EMAIL_MAX_LENGTH:
        raise EventRejected("address: too long", "address", EMAIL_MAX_LENGTH)
    address = suppression_address(channel, text)
    if address is None:
        raise EventRejected(f"address: not {SUPPRESSIBLE_CHANNELS[channel]}", "address")
    return channel, address


async def put_suppression(request: Request) -> Response:
    """
    summary: Suppress an address on a channel (server token); nothing more is sent to it there.
    security: [{serverToken: []}]
    description: 'The address is normalised (email: lower case; phone: digits and a leading +), as the check
      at send time normalises a message''s `to`. A message it stops is dropped with the reason "suppressed".
      Putting it again changes nothing.'
    parameters:
      - {name: channel, in: path, required: true, schema: {type: string, enum: [email, sms]}}
      - {name: address, in: path, required: true, schema: {type: string, maxLength: 254}}
    responses:
      200: {description: '{"channel", "address" (normalised), "suppressed": true, "added": false if it already was}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      422: {description: 'Not a channel with addresses, or not an address of the channel'}
    """
    services = services_of(request)
    require(caller_of(request), ADMIN)
    channel, address = _suppressible(request)
    try:
        added = await services.contacts.suppress_address(channel, address)
    except RedisError as exc:
        raise StoreUnavailable("cannot suppress the address") from exc
    return json_response({"channel": channel, "address": address, "suppressed": True, "added": added})


async def delete_suppression(request: Request) -> Response:
    """
    summary: Lift an address's suppression on a channel (server token).
    security: [{serverToken: []}]
    parameters:
      - {name: channel, in: path, required: true, schema: {type: string, enum: [email, sms]}}
      - {name: address, in: path, required: true, schema: {type: string, maxLength: 254}}
    responses:
      200: {description: '{"channel", "address", "suppressed": false}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      404: {description: The address was not suppressed on this channel}
      422: {description: 'Not a channel with addresses, or not an address of the channel'}
    """
    services = services_of(request)
    require(caller_of(request), ADMIN)
    channel, address = _suppressible(request)
    try:
        removed = await services.contacts.unsuppress_address(channel, address)
    except RedisError as exc:
        raise StoreUnavailable("cannot lift the suppression") from exc
    if not removed:
        return json_response({"error": f"{address} is not suppressed on {channel}"}, 404)
    return json_response({"channel": channel, "address": address, "suppressed": False})


async def list_suppressions(request: Request) -> Response:
    """
    summary: A channel's suppressed addresses in order, a page at a time (server token).
    security: [{serverToken: []}]
    parameters:
      - {name: channel, in: path, required: true, schema: {type: string, enum: [email, sms]}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
      - {name: after, in: query, schema: {type: string}, description: 'the `next` of the page before'}
    responses:
      200: {description: '{"channel", "addresses": [...], "total": n, "next": the value for `after`, null on the last page}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      422: {description: 'Not a channel with addresses, or a limit out of range'}
    """
    services = services_of(request)
    require(caller_of(request), READ)
    channel, _ = _suppressible(request)
    limit = _limit(request, 100, MAX_PAGE)
    after = request.query_params.get("after", "")
    if len(after) > EMAIL_MAX_LENGTH:
        raise EventRejected("after: too long", "after", EMAIL_MAX_LENGTH)
    try:
        page, total = await services.contacts.suppressed_addresses(channel, after, limit)
    except RedisError as exc:
        raise StoreUnavailable("the suppression list is unavailable") from exc
    return json_response({"channel": channel, "addresses": page, "total": total,
                          "next": page[-1] if len(page) == limit else None})


def _dead_letter_view(raw: bytes) -> dict:
    try:
        entry = orjson.loads(raw)
        if entry.get("kind") == "destination":  # an audience webhook batch (engine/audiences/destinations.py)
            return {"destination": entry["destination"], "segment": entry["segment"], "reason": entry["reason"],
                    "at": entry["at"], "idempotency_key": entry["idempotency_key"],
                    "changes": len(orjson.loads(entry["body"])["changes"])}
        message = entry["message"]
        return {"id": message["id"], "person": message["person"], "channel": message["channel"],
                "template": message.get("template", ""), "purpose": message.get("purpose", ""),
                "due_ms": message.get("due_ms"), "reason": entry["reason"], "at": entry["at"]}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return {"reason": "unreadable dead letter (not written by the scheduler)"}


async def get_dead_letters(request: Request) -> Response:
    """
    summary: The most recent dead-lettered messages, newest first, with the reason each failed (server token).
    security: [{serverToken: []}]
    description: A message is dead-lettered when its channel refused it for good or it ran out of attempts.
      Its body (address, traits) is not shown.
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 50}}
    responses:
      200: {description: '{"dead_letters": [{"id", "person", "channel", "template", "purpose", "due_ms", "reason", "at"}
        or, for an audience webhook batch, {"destination", "segment", "reason", "at", "idempotency_key", "changes"}],
        "total": n kept (at most 10000)}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      422: {description: A limit out of range}
    """
    services = services_of(request)
    require(caller_of(request), READ)
    limit = _limit(request, 50, min(MAX_PAGE, DEAD_LETTERS_MAX))
    try:
        pipe = services.redis.pipeline(transaction=False)
        pipe.lrange(services.keys.dead_letters(), 0, limit - 1)
        pipe.llen(services.keys.dead_letters())
        entries, total = await pipe.execute()
    except RedisError as exc:
        raise StoreUnavailable("the dead letters are unavailable") from exc
    return json_response({"dead_letters": [_dead_letter_view(raw) for raw in entries], "total": total})


class Suppression(HTTPEndpoint):
    """One route for the path, so a 405's Allow header names both PUT and DELETE."""

    put = staticmethod(put_suppression)
    delete = staticmethod(delete_suppression)


ROUTES = [
    Route("/v1/kpis", get_kpis, methods=["GET"]),
    Route("/v1/suppressions/{channel}", list_suppressions, methods=["GET"]),
    Route("/v1/suppressions/{channel}/{address}", Suppression),
    Route("/v1/deadletters", get_dead_letters, methods=["GET"]),
]
