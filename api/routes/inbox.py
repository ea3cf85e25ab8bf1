"""The app's side: the in-app inbox (read, dismiss) and push devices, for a signed user (or the server token acting for one)."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import NO_STORE, caller_of, json_object_body, json_response, services_of
from engine.clock import now_ms
from engine.errors import EventRejected, NotAuthorized, StoreUnavailable
from engine.events import PERSON_ID
from engine.ingest.identity import INGEST, READ, require

MAX_TOKEN_LENGTH = 512


async def _signed_person(request: Request, scope: str, body: dict | None = None) -> str:
    """A signed user id (site key + user_sig), or any user id with a server token
    of `scope`: only a signed id may read an inbox or receive messages. From the
    headers X-Attimo-User and X-Attimo-User-Sig (kept out of URLs and access
    logs), else the JSON body for POSTs, else the query (older apps)."""
    caller = caller_of(request)
    if caller.is_server:
        require(caller, scope)
    if "x-attimo-user" in request.headers:
        user_id, user_sig = request.headers["x-attimo-user"], request.headers.get("x-attimo-user-sig")
    else:
        source = body if body is not None else request.query_params
        user_id, user_sig = source.get("user_id"), source.get("user_sig")
    if not isinstance(user_id, str) or not PERSON_ID.fullmatch(user_id):
        raise NotAuthorized("user_id (signed) is required: an inbox belongs to a known person")
    return caller.person(None, user_id, user_sig if isinstance(user_sig, str) else None, "user")


async def get_inbox(request: Request) -> Response:
    """
    summary: The in-app inbox of a signed user, newest first (unexpired, not dismissed).
    security: [{siteKey: []}, {serverToken: []}]
    parameters:
      - {name: user_id, in: query, required: true, schema: {type: string}}
      - {name: user_sig, in: query, schema: {type: string}, description: 'HMAC of user_id (site key callers)'}
    responses:
      200: {description: '{"messages": [{"id", "title", "text", "at", "expires", "read"}], "unread": n}'}
      401: {description: Missing or unknown key}
      403: {description: Not a signed user}
    """
    services = services_of(request)
    person = await _signed_person(request, READ)
    try:
        messages = await services.inbox.messages(person, now_ms())
    except RedisError as exc:
        raise StoreUnavailable("the inbox is unavailable") from exc
    return json_response({"messages": messages, "unread": sum(not m["read"] for m in messages)},
                         headers=NO_STORE)


async def _mark(request: Request, flag: str) -> Response:
    services = services_of(request)
    body = await json_object_body(request) if not request.query_params.get("user_id") else None
    person = await _signed_person(request, INGEST, body)
    message_id = request.path_params["message_id"]
    try:
        found = await services.inbox.mark(person, message_id, flag, now_ms())
    except RedisError as exc:
        raise StoreUnavailable("the inbox is unavailable") from exc
    if not found:
        return json_response({"error": "no such message in this inbox (or it expired)"}, 404)
    return json_response({"id": message_id, flag: True})


async def read_inbox_message(request: Request) -> Response:
    """
    summary: Mark an inbox message read (signed user in the JSON body or the query).
    security: [{siteKey: []}, {serverToken: []}]
    parameters:
      - {name: message_id, in: path, required: true, schema: {type: string}}
      - {name: user_id, in: query, schema: {type: string}, description: or in the JSON body}
      - {name: user_sig, in: query, schema: {type: string}, description: or in the JSON body}
    requestBody: {content: {application/json: {schema: {$ref: '#/components/schemas/SignedUser'}}}}
    responses:
      200: {description: marked}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Not a signed user}
      404: {description: No such message}
      422: {description: The body is not a JSON object}
    """
    return await _mark(request, "read")


async def dismiss_inbox_message(request: Request) -> Response:
    """
    summary: Dismiss an inbox message; it is not listed again (signed user in the JSON body or the query).
    security: [{siteKey: []}, {serverToken: []}]
    parameters:
      - {name: message_id, in: path, required: true, schema: {type: string}}
      - {name: user_id, in: query, schema: {type: string}, description: or in the JSON body}
      - {name: user_sig, in: query, schema: {type: string}, description: or in the JSON body}
    requestBody: {content: {application/json: {schema: {$ref: '#/components/schemas/SignedUser'}}}}
    responses:
      200: {description: dismissed}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Not a signed user}
      404: {description: No such message}
      422: {description: The body is not a JSON object}
    """
    return await _mark(request, "dismissed")


async def post_device(request: Request) -> Response:
    """
    summary: Register a push token for a signed user; push messages go to the push webhook with the person's tokens.
    security: [{siteKey: []}, {serverToken: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [user_id, token]
            properties:
              user_id: {type: string}
              user_sig: {type: string, description: 'HMAC of user_id (site key callers)'}
              token: {type: string, maxLength: 512}
              platform: {type: string, maxLength: 32}
    responses:
      200: {description: '{"devices": number of tokens the person has}'}
      400: {description: Malformed JSON}
      401: {description: Missing or unknown key}
      403: {description: Not a signed user}
      422: {description: A missing or too long token}
    """
    services = services_of(request)
    body = await json_object_body(request)
    person = await _signed_person(request, INGEST, body)
    token, platform = body.get("token"), body.get("platform", "unknown")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
        raise EventRejected("token: the push token, 1 to 512 characters", "token", MAX_TOKEN_LENGTH)
    if not isinstance(platform, str) or len(platform) > 32:
        raise EventRejected("platform: ios, android, web … (at most 32 characters)", "platform", 32)
    try:
        count = await services.devices.register(person, token, platform, now_ms())
    except RedisError as exc:
        raise StoreUnavailable("cannot register the device") from exc
    return json_response({"devices": count})


async def delete_device(request: Request) -> Response:
    """
    summary: Remove a push token of a signed user (logout, uninstall, a token the platform retired).
    description: 'The token is removed from the signed person''s devices only: a token of someone else is
      untouched. Removing a token that is not there answers `"removed": false` (safe to retry).'
    security: [{siteKey: []}, {serverToken: []}]
    parameters:
      - {name: token, in: path, required: true, schema: {type: string, maxLength: 512}}
      - {name: X-Attimo-User, in: header, schema: {type: string}, description: the user id (or user_id in the query)}
      - {name: X-Attimo-User-Sig, in: header, schema: {type: string}, description: 'HMAC of the user id (site key callers)'}
    responses:
      200: {description: '{"removed": true|false, "devices": number of tokens the person has left}'}
      401: {description: Missing or unknown key}
      403: {description: Not a signed user}
      404: {description: A path no route takes (a token with a line break)}
      422: {description: A too long token}
    """
    services = services_of(request)
    person = await _signed_person(request, INGEST)
    token = request.path_params["token"]
    if not 0 < len(token) <= MAX_TOKEN_LENGTH:
        raise EventRejected("token: the push token, 1 to 512 characters", "token", MAX_TOKEN_LENGTH)
    try:
        removed = await services.devices.remove(person, token)
        left = len(await services.devices.tokens(person))
    except RedisError as exc:
        raise StoreUnavailable("cannot remove the device") from exc
    return json_response({"removed": removed, "devices": left})


ROUTES = [
    Route("/v1/inbox", get_inbox, methods=["GET"]),
    Route("/v1/inbox/{message_id}/read", read_inbox_message, methods=["POST"]),
    Route("/v1/inbox/{message_id}/dismiss", dismiss_inbox_message, methods=["POST"]),
    Route("/v1/devices", post_device, methods=["POST"]),
    Route("/v1/devices/{token:path}", delete_device, methods=["DELETE"]),
]
