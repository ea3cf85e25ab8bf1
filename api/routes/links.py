"""The links inside emails: the open pixel and the click redirect come back as
`email_open` / `email_click` events for the person (so a catalog rule can say
"opened email E"), and the unsubscribe link withdraws consent for the channel
and cancels everything queued on it at once. Every link was signed when the
email was made; a changed one is a 400, so the redirect is never open."""

from __future__ import annotations

import base64
import hashlib
import html

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from api.http import NO_STORE, json_response, services_of
from engine.clock import now_ms
from engine.errors import StoreUnavailable
from engine.events import EMAIL_CLICK, EMAIL_OPEN, Event
from engine.followups.channels.email import TrackingLinkExpired, TrackingLinkInvalid
from engine.ingest.identity import person_of_path

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _verified(request: Request) -> dict[str, str] | Response:
    services = services_of(request)
    tracker = services.tracker
    if tracker is None:
        return json_response({"error": "tracking links are off: set ATTIMO_TRACKING_SECRET"}, 404)
    try:
        return tracker.verify(str(request.url))
    except TrackingLinkExpired as exc:
        return json_response({"error": str(exc)}, 410)
    except TrackingLinkInvalid as exc:
        return json_response({"error": str(exc)}, 400)


async def _record(request: Request, event_id: str, event_type: str, person: str, properties: dict,
                  kpi: str) -> None:
    """The event for the person, and the open or click for the KPIs (counted here,
    from the signed link, not from events: a client could send those)."""
    services = services_of(request)
    now = now_ms()
    await services.apply([Event(event_id, event_type, person, now, properties)], now)
    try:
        pipe = services.redis.pipeline(transaction=False)
        services.kpis.engagement(pipe, kpi, properties.get("journey"),
                                                           properties["message_id"])
        await pipe.execute()
    except RedisError as exc:
        raise StoreUnavailable(f"cannot count the {kpi}") from exc


def _journey(link: dict) -> dict:
    return {"journey": link["j"]} if link.get("j") else {}


async def track_open(request: Request) -> Response:
    """
    summary: Open pixel of a follow-up email; records an email_open event.
    description: The query is the one the email was made with, signed; any change is a 400.
    parameters:
      - {name: m, in: query, required: true, schema: {type: string}, description: message id}
      - {name: p, in: query, required: true, schema: {type: string}, description: person}
      - {name: e, in: query, schema: {type: string}, description: email template}
      - {name: j, in: query, schema: {type: string}, description: journey}
      - {name: s, in: query, required: true, schema: {type: string}, description: the signature}
      - {name: x, in: query, schema: {type: string}, description: expiry (unix seconds)}
    responses:
      200: {description: a 1x1 GIF}
      400: {description: the link was changed}
      404: {description: 'tracking links are off (no ATTIMO_TRACKING_SECRET)'}
      410: {description: the link expired}
    """
    link = _verified(request)
    if isinstance(link, Response):
        return link
    # One open per message counts: a mail client that loads the pixel again changes nothing.
    await _record(request, f"open:{link['m']}", EMAIL_OPEN, person_of_path(link["p"]),
                  {"email": link["e"], "message_id": link["m"], **_journey(link)}, "opened")
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def track_click(request: Request) -> Response:
    """
    summary: Click redirect of a follow-up email; records an email_click event.
    description: The query is the one the email was made with, signed; any change is a 400.
    parameters:
      - {name: m, in: query, required: true, schema: {type: string}, description: message id}
      - {name: p, in: query, required: true, schema: {type: string}, description: person}
      - {name: e, in: query, schema: {type: string}, description: email template}
      - {name: j, in: query, schema: {type: string}, description: journey}
      - {name: u, in: query, required: true, schema: {type: string}, description: the target URL}
      - {name: s, in: query, required: true, schema: {type: string}, description: the signature}
      - {name: x, in: query, schema: {type: string}, description: expiry (unix seconds)}
    responses:
      302: {description: to the signed target}
      400: {description: the link was changed}
      404: {description: 'tracking links are off (no ATTIMO_TRACKING_SECRET)'}
      410: {description: the link expired}
    """
    link = _verified(request)
    if isinstance(link, Response):
        return link
    target = link["u"]
    tag = hashlib.blake2b(target.encode(), digest_size=6).hexdigest()
    await _record(request, f"click:{link['m']}:{tag}", EMAIL_CLICK, person_of_path(link["p"]),
                  {"email": link["e"], "message_id": link["m"], "url": target, **_journey(link)}, "clicked")
    return RedirectResponse(target, 302, headers=NO_STORE)


async def unsubscribe(request: Request) -> Response:
    """
    summary: 'Unsubscribe link: GET shows a confirmation page, POST unsubscribes (its button, and RFC 8058 one-click).'
    description: 'A GET changes nothing (mail scanners follow links). The POST withdraws consent for the
      channel, every purpose, and cancels what is queued on it; it answers a page to a browser, JSON otherwise.'
    parameters:
      - {name: p, in: query, required: true, schema: {type: string}, description: person}
      - {name: c, in: query, required: true, schema: {type: string}, description: channel}
      - {name: s, in: query, required: true, schema: {type: string}, description: the signature}
    requestBody:
      description: 'RFC 8058 one-click: List-Unsubscribe=One-Click (the body is not read)'
      content: {application/x-www-form-urlencoded: {schema: {type: object, properties: {List-Unsubscribe: {type: string}}}}}
    responses:
      200: {description: 'the page, or done'}
      400: {description: the link was changed}
      404: {description: 'tracking links are off (no ATTIMO_TRACKING_SECRET)'}
      410: {description: the link expired}
    """
    link = _verified(request)
    if isinstance(link, Response):
        return link
    channel = link["c"]
    if request.method == "GET":
        return HTMLResponse(CONFIRM_PAGE.format(channel=html.escape(channel), action=html.escape(f"{request.url.path}?{request.url.query}")),
                            headers={**NO_STORE, "Content-Security-Policy": PAGE_CSP})
    services = services_of(request)
    person = person_of_path(link["p"])
    try:
        await services.contacts.set_consent(person, channel, "*", False, source="unsubscribe link")
        now = now_ms()
        cancelled = await services.queue.cancel(person, channel, now)
        await services.kpis.record_unsubscribe(person, channel, now)
    except RedisError as exc:
        raise StoreUnavailable("cannot record the unsubscribe") from exc
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(DONE_PAGE.format(channel=html.escape(channel)),
                            headers={**NO_STORE, "Content-Security-Policy": PAGE_CSP})
    return json_response({"unsubscribed": channel, "cancelled": cancelled})


PAGE_CSP = "default-src 'none'; form-action 'self'; style-src 'unsafe-inline'"
CONFIRM_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<p>Stop all {channel} messages from us?</p>
<form method="post" action="{action}"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form></body></html>"""
DONE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribed</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<p>You will get no more {channel} messages from us.</p></body></html>"""


ROUTES = [
    Route("/v1/t/open", track_open, methods=["GET"]),
    Route("/v1/t/click", track_click, methods=["GET"]),
    Route("/v1/unsubscribe", unsubscribe, methods=["GET", "POST"]),
]
