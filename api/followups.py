"""Follow-up endpoints. The links inside emails: the open pixel and the click
redirect come back as `email_open` / `email_click` events for the person (so a
catalog rule can say "opened email E"), and the unsubscribe link withdraws
consent for the channel and cancels everything queued on it at once. Every link
was signed when the email was made; a changed one is a 400, so the redirect is
never open. And the app's side: the in-app inbox (read, dismiss) and push
devices, for a signed user (or the server token acting for one). And the
operator's: the suppression list, dead letters, and the channels a person's
messages may wait on (erasing a person cancels them all)."""

from __future__ import annotations

import base64
import hashlib

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from api.app import Services, apply_events, json_response, now_ms, read_body
from engine.catalog.journeys import JOURNEY_CHANNEL
from engine.errors import EventRejected, MalformedBody, NotAuthorized, StoreUnavailable
from engine.events import EMAIL_CLICK, EMAIL_OPEN, PERSON_ID, Event
from engine.followups.channels.email import TrackingLinkInvalid, tracker_from_settings
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.inbox import DeviceStore, InboxStore
from engine.followups.kpis import KpiStore
from engine.ingest.identity import authenticate, require_server
from engine.policy import (
    EMAIL_MAX_LENGTH,
    PERSONAL_CHANNELS,
    SUPPRESSIBLE_CHANNELS,
    suppression_address,
)
from engine.store.keys import DEAD_LETTERS_MAX

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store"}


def _verified(request: Request) -> dict[str, str] | Response:
    services: Services = request.app.state.services
    tracker = tracker_from_settings(services.settings)
    if tracker is None:
        return json_response({"error": "tracking links are off: set ATTIMO_TRACKING_SECRET"}, 404)
    try:
        return tracker.verify(str(request.url))
    except TrackingLinkInvalid as exc:
        return json_response({"error": str(exc)}, 400)


async def _record(request: Request, event_id: str, event_type: str, person: str, properties: dict,
                  kpi: str) -> None:
    """The event for the person, and the open or click for the KPIs (counted here,
    from the signed link, not from events: a client could send those)."""
    services: Services = request.app.state.services
    now = now_ms()
    await apply_events(services, [Event(event_id, event_type, person, now, properties)], now)
    try:
        pipe = services.redis.pipeline(transaction=False)
        KpiStore(services.redis, services.keys).engagement(pipe, kpi, properties.get("journey"),
                                                           properties["message_id"])
        await pipe.execute()
    except RedisError as exc:
        raise StoreUnavailable(f"cannot count the {kpi}: {exc}") from None


def _journey(link: dict) -> dict:
    return {"journey": link["j"]} if link.get("j") else {}


async def track_open(request: Request) -> Response:
    """
    summary: Open pixel of a follow-up email; records an email_open event.
    responses: {200: {description: a 1x1 GIF}, 400: {description: the link was changed}}
    """
    link = _verified(request)
    if isinstance(link, Response):
        return link
    # One open per message counts: a mail client that loads the pixel again changes nothing.
    await _record(request, f"open:{link['m']}", EMAIL_OPEN, link["p"],
                  {"email": link["e"], "message_id": link["m"], **_journey(link)}, "opened")
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def track_click(request: Request) -> Response:
    """
    summary: Click redirect of a follow-up email; records an email_click event.
    responses: {302: {description: to the signed target}, 400: {description: the link was changed}}
    """
    link = _verified(request)
    if isinstance(link, Response):
        return link
    target = link["u"]
    tag = hashlib.blake2b(target.encode(), digest_size=6).hexdigest()
    await _record(request, f"click:{link['m']}:{tag}", EMAIL_CLICK, link["p"],
                  {"email": link["e"], "message_id": link["m"], "url": target, **_journey(link)}, "clicked")
    return RedirectResponse(target, 302, headers=NO_STORE)


async def unsubscribe(request: Request) -> Response:
    """
    summary: 'Unsubscribe link (GET, or POST for List-Unsubscribe-Post one-click).'
    description: Withdraws consent for the channel, every purpose, and cancels what is queued on it.
    responses: {200: {description: done}, 400: {description: the link was changed}}
    """
    link = _verified(request)
    if isinstance(link, Response):
        return link
    services: Services = request.app.state.services
    person, channel = link["p"], link["c"]
    try:
        await ContactStore(services.redis, services.keys).set_consent(person, channel, "*", False)
        cancelled = await DueQueue(services.redis, services.keys).cancel(person, channel, now_ms())
        pipe = services.redis.pipeline(transaction=False)
        KpiStore(services.redis, services.keys).count(pipe, "c", channel, "unsubscribed", person)
        await pipe.execute()
    except RedisError as exc:
        raise StoreUnavailable(f"cannot record the unsubscribe: {exc}") from None
    if request.method == "POST":
        return json_response({"unsubscribed": channel, "cancelled": cancelled})
    return HTMLResponse(f"<!doctype html><title>Unsubscribed</title><p>You will get no more {channel} "
                        "messages from us.</p>", headers=NO_STORE)


# -- the app: inbox and devices ------------------------------------------------------

MAX_TOKEN_LENGTH = 512


async def _signed_person(request: Request, body: dict | None = None) -> str:
    """A signed user id (site key + user_sig), or any user id with the server token:
    only a signed id may read an inbox or receive messages. From the query, or the
    JSON body for POSTs."""
    services: Services = request.app.state.services
    caller = authenticate(request.headers, request.query_params, services.settings)
    source = body if body is not None else request.query_params
    user_id, user_sig = source.get("user_id"), source.get("user_sig")
    if not isinstance(user_id, str) or not PERSON_ID.fullmatch(user_id):
        raise NotAuthorized("user_id (signed) is required: an inbox belongs to a known person")
    return caller.person(None, user_id, user_sig if isinstance(user_sig, str) else None, "user")


async def _json_body(request: Request) -> dict:
    raw = await read_body(request, 16 * 1024)
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EventRejected("the body is a JSON object", "body")
    return body


async def get_inbox(request: Request) -> Response:
    """
    summary: The in-app inbox of a signed user, newest first (unexpired, not dismissed).
    parameters:
      - {name: user_id, in: query, required: true, schema: {type: string}}
      - {name: user_sig, in: query, schema: {type: string}, description: 'HMAC of user_id (site key callers)'}
    responses:
      200: {description: '{"messages": [{"id", "title", "text", "at", "expires", "read"}], "unread": n}'}
      401: {description: Missing or unknown key}
      403: {description: Not a signed user}
    """
    services: Services = request.app.state.services
    person = await _signed_person(request)
    try:
        messages = await InboxStore(services.redis, services.keys).messages(person, now_ms())
    except RedisError as exc:
        raise StoreUnavailable(f"the inbox is unavailable: {exc}") from None
    return json_response({"messages": messages, "unread": sum(not m["read"] for m in messages)},
                         headers=NO_STORE)


async def _mark(request: Request, flag: str) -> Response:
    services: Services = request.app.state.services
    body = await _json_body(request) if not request.query_params.get("user_id") else None
    person = await _signed_person(request, body)
    message_id = request.path_params["message_id"]
    try:
        found = await InboxStore(services.redis, services.keys).mark(person, message_id, flag, now_ms())
    except RedisError as exc:
        raise StoreUnavailable(f"the inbox is unavailable: {exc}") from None
    if not found:
        return json_response({"error": "no such message in this inbox (or it expired)"}, 404)
    return json_response({"id": message_id, flag: True})


async def read_inbox_message(request: Request) -> Response:
    """
    summary: Mark an inbox message read (signed user in the JSON body or the query).
    responses: {200: {description: marked}, 403: {description: Not a signed user}, 404: {description: No such message}}
    """
    return await _mark(request, "read")


async def dismiss_inbox_message(request: Request) -> Response:
    """
    summary: Dismiss an inbox message; it is not listed again.
    responses: {200: {description: dismissed}, 403: {description: Not a signed user}, 404: {description: No such message}}
    """
    return await _mark(request, "dismissed")


async def post_device(request: Request) -> Response:
    """
    summary: Register a push token for a signed user; push messages go to the push webhook with the person's tokens.
    requestBody: {content: {application/json: {schema: {type: object, required: [user_id, token], properties: {user_id: {type: string}, user_sig: {type: string}, token: {type: string}, platform: {type: string}}}}}}
    responses:
      200: {description: '{"devices": number of tokens the person has}'}
      403: {description: Not a signed user}
      422: {description: A missing or too long token}
    """
    services: Services = request.app.state.services
    body = await _json_body(request)
    person = await _signed_person(request, body)
    token, platform = body.get("token"), body.get("platform", "unknown")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
        raise EventRejected("token: the push token, 1 to 512 characters", "token", MAX_TOKEN_LENGTH)
    if not isinstance(platform, str) or len(platform) > 32:
        raise EventRejected("platform: ios, android, web … (at most 32 characters)", "platform", 32)
    try:
        count = await DeviceStore(services.redis, services.keys).register(person, token, platform, now_ms())
    except RedisError as exc:
        raise StoreUnavailable(f"cannot register the device: {exc}") from None
    return json_response({"devices": count})


# -- marketers: KPIs -------------------------------------------------------------------


async def get_kpis(request: Request) -> Response:
    """
    summary: KPIs per journey, channel and offer (server token).
    description: 'Per journey of the catalog in force: entered, held out, sends by channel, opens, clicks,
      their rates, converters and revenue for the treated and the hold-out group, and the uplift. Per channel:
      sent, dropped, dead letters, opens, clicks, unsubscribes and their rates. Per offer: impressions,
      viewers, clicks, clickers, click-through rate, converters, conversion rate, revenue, discount cost and
      ROI. Counts are of distinct ids (HyperLogLog, standard error 0.81 %).'
    responses:
      200: {description: '{"journeys": {id: {...}}, "channels": {name: {...}}, "offers": {id: {...}}}'}
      401: {description: Missing token}
      403: {description: Not the server token}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    channels = sorted(PERSONAL_CHANNELS | webhook_channels(services))
    try:
        catalog = services.holder.current
        report = await KpiStore(services.redis, services.keys).report(
            list(catalog.journeys.by_id), channels, list(catalog.offers_by_id))
    except RedisError as exc:
        raise StoreUnavailable(f"the KPI store is unavailable: {exc}") from None
    return json_response(report)


def webhook_channels(services: Services) -> set[str]:
    return {item.split("=", 1)[0] for item in services.settings.webhook_urls if "=" in item}


def queued_channels(services: Services) -> list[str]:
    """Every channel a person's message may wait on in the due queue, which
    finds them by person and channel: the personal ones, journey timers, the
    webhooks configured (operator alerts, sales), and the catalog's notify
    channels (queued even when no webhook sends them: dead-lettered when due)."""
    steps = {step.channel for journey in services.holder.current.journeys.all for step in journey.steps}
    named = PERSONAL_CHANNELS | {JOURNEY_CHANNEL, services.settings.alert_channel} | webhook_channels(services)
    return sorted(c for c in named | steps if c)


# -- operators: the suppression list and dead letters ------------------------------

MAX_PAGE = 1000


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
      422: {description: Not a channel with addresses, or not an address of the channel}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    channel, address = _suppressible(request)
    try:
        added = await ContactStore(services.redis, services.keys).suppress_address(channel, address)
    except RedisError as exc:
        raise StoreUnavailable(f"cannot suppress the address: {exc}") from None
    return json_response({"channel": channel, "address": address, "suppressed": True, "added": added})


async def delete_suppression(request: Request) -> Response:
    """
    summary: Lift an address's suppression on a channel (server token).
    parameters:
      - {name: channel, in: path, required: true, schema: {type: string, enum: [email, sms]}}
      - {name: address, in: path, required: true, schema: {type: string, maxLength: 254}}
    responses:
      200: {description: '{"channel", "address", "suppressed": false}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      404: {description: The address was not suppressed on this channel}
      422: {description: Not a channel with addresses, or not an address of the channel}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    channel, address = _suppressible(request)
    try:
        removed = await ContactStore(services.redis, services.keys).unsuppress_address(channel, address)
    except RedisError as exc:
        raise StoreUnavailable(f"cannot lift the suppression: {exc}") from None
    if not removed:
        return json_response({"error": f"{address} is not suppressed on {channel}"}, 404)
    return json_response({"channel": channel, "address": address, "suppressed": False})


async def list_suppressions(request: Request) -> Response:
    """
    summary: A channel's suppressed addresses in order, a page at a time (server token).
    parameters:
      - {name: channel, in: path, required: true, schema: {type: string, enum: [email, sms]}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
      - {name: after, in: query, schema: {type: string}, description: 'the `next` of the page before'}
    responses:
      200: {description: '{"channel", "addresses": [...], "total": n, "next": the value for `after`, null on the last page}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      422: {description: Not a channel with addresses, or a limit out of range}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    channel, _ = _suppressible(request)
    limit = _limit(request, 100, MAX_PAGE)
    after = request.query_params.get("after", "")
    if len(after) > EMAIL_MAX_LENGTH:
        raise EventRejected("after: too long", "after", EMAIL_MAX_LENGTH)
    try:
        page, total = await ContactStore(services.redis, services.keys).suppressed_addresses(channel, after, limit)
    except RedisError as exc:
        raise StoreUnavailable(f"the suppression list is unavailable: {exc}") from None
    return json_response({"channel": channel, "addresses": page, "total": total,
                          "next": page[-1] if len(page) == limit else None})


def _dead_letter_view(raw: bytes) -> dict:
    try:
        entry = orjson.loads(raw)
        message = entry["message"]
        return {"id": message["id"], "person": message["person"], "channel": message["channel"],
                "template": message.get("template", ""), "purpose": message.get("purpose", ""),
                "due_ms": message.get("due_ms"), "reason": entry["reason"], "at": entry["at"]}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return {"reason": "unreadable dead letter (not written by the scheduler)"}


async def get_dead_letters(request: Request) -> Response:
    """
    summary: The most recent dead-lettered messages, newest first, with the reason each failed (server token).
    description: A message is dead-lettered when its channel refused it for good or it ran out of attempts.
      Its body (address, traits) is not shown.
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 50}}
    responses:
      200: {description: '{"dead_letters": [{"id", "person", "channel", "template", "purpose", "due_ms", "reason", "at"}], "total": n kept (at most 10000)}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      422: {description: A limit out of range}
    """
    services: Services = request.app.state.services
    require_server(authenticate(request.headers, request.query_params, services.settings))
    limit = _limit(request, 50, min(MAX_PAGE, DEAD_LETTERS_MAX))
    try:
        pipe = services.redis.pipeline(transaction=False)
        pipe.lrange(services.keys.dead_letters(), 0, limit - 1)
        pipe.llen(services.keys.dead_letters())
        entries, total = await pipe.execute()
    except RedisError as exc:
        raise StoreUnavailable(f"the dead letters are unavailable: {exc}") from None
    return json_response({"dead_letters": [_dead_letter_view(raw) for raw in entries], "total": total})


FOLLOWUP_ROUTES = [
    Route("/v1/kpis", get_kpis, methods=["GET"]),
    Route("/v1/suppressions/{channel}", list_suppressions, methods=["GET"]),
    Route("/v1/suppressions/{channel}/{address}", put_suppression, methods=["PUT"]),
    Route("/v1/suppressions/{channel}/{address}", delete_suppression, methods=["DELETE"]),
    Route("/v1/deadletters", get_dead_letters, methods=["GET"]),
    Route("/v1/inbox", get_inbox, methods=["GET"]),
    Route("/v1/inbox/{message_id}/read", read_inbox_message, methods=["POST"]),
    Route("/v1/inbox/{message_id}/dismiss", dismiss_inbox_message, methods=["POST"]),
    Route("/v1/devices", post_device, methods=["POST"]),
    Route("/v1/t/open", track_open, methods=["GET"]),
    Route("/v1/t/click", track_click, methods=["GET"]),
    Route("/v1/unsubscribe", unsubscribe, methods=["GET", "POST"]),
]
