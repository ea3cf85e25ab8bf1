"""The catalog's broadcasts for marketers (server token): progress and KPIs
(read scope), and the two levers, start now and cancel (admin scope). The
walk itself runs in the scheduler process (engine/followups/broadcasts.py)."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, services_of
from engine.catalog.broadcasts import Broadcast
from engine.errors import NotFound, StoreUnavailable
from engine.followups.broadcasts import CANCELLED, DONE, RUNNING, SCHEDULED
from engine.ingest.identity import ADMIN, READ, require
from engine.policy import PERSONAL_CHANNELS


def _broadcast(request: Request) -> Broadcast:
    broadcast_id = request.path_params["broadcast_id"]
    broadcast = services_of(request).holder.current.broadcasts.get(broadcast_id)
    if broadcast is None:
        raise NotFound(f"no broadcast {broadcast_id!r} in the catalog in force", "broadcast_id")
    return broadcast


async def _reports(request: Request, broadcasts: list[Broadcast]) -> list[dict]:
    services = services_of(request)
    try:
        return await services.runtime.broadcasts.report(broadcasts, sorted(PERSONAL_CHANNELS))
    except RedisError as exc:
        raise StoreUnavailable("the broadcasts' state is unavailable") from exc


async def list_broadcasts(request: Request) -> Response:
    """
    summary: The catalog's broadcasts, each with its progress and KPIs (server token).
    security: [{serverToken: []}]
    responses:
      200: {description: '{"broadcasts": [each as GET /v1/broadcasts/{id} answers]}'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
    """
    require(caller_of(request), READ)
    broadcasts = list(services_of(request).holder.current.broadcasts.values())
    return json_response({"broadcasts": await _reports(request, broadcasts)})


async def get_broadcast(request: Request) -> Response:
    """
    summary: One broadcast's progress and KPIs (server token).
    security: [{serverToken: []}]
    description: '`state`: scheduled, running (being walked, or messages still queued), done or cancelled.
      `queued`: messages put in the due queue, `sent`: sent so far. `kpis`: what a journey reports (entered,
      held_out, sent, sent_by_channel, dropped, opened, clicked and their rates, converted and
      converted_control, uplift, revenue) plus dead_letter and unsubscribed (within 7 days of it).'
    parameters:
      - {name: broadcast_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: '{"id", "segment", "channel", "template", "purpose", "at", "local_time", "rate", "holdout",
        "starts_ms", "state", "started_ms", "walked_ms", "finished_ms", "cancelled_ms", "last_due_ms", "queued",
        "sent", "kpis"}'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
      404: {description: No such broadcast in the catalog in force}
    """
    require(caller_of(request), READ)
    [report] = await _reports(request, [_broadcast(request)])
    return json_response(report)


async def start_broadcast(request: Request) -> Response:
    """
    summary: Start a broadcast now instead of at its time (admin token).
    security: [{serverToken: []}]
    description: 'The scheduler process walks its segment within a second. Each message is still due at the
      member''s own `at` (or now, when that has passed or the broadcast has no `at`). Starting one already
      running changes nothing.'
    parameters:
      - {name: broadcast_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: '{"id", "state": "running", "was": the state before}'}
      401: {description: Missing token}
      403: {description: Not the admin token}
      404: {description: No such broadcast in the catalog in force}
      409: {description: 'Done or cancelled: a broadcast is sent once'}
    """
    require(caller_of(request), ADMIN)
    broadcast = _broadcast(request)
    try:
        before = await services_of(request).runtime.broadcasts.start(broadcast)
    except RedisError as exc:
        raise StoreUnavailable("cannot start the broadcast") from exc
    if before not in (SCHEDULED, RUNNING):
        return json_response({"id": broadcast.id, "state": before,
                              "error": f"broadcast {broadcast.id!r} is {before}: a broadcast is sent once"}, 409)
    return json_response({"id": broadcast.id, "state": RUNNING, "was": before})


async def cancel_broadcast(request: Request) -> Response:
    """
    summary: Cancel a broadcast (admin token); what is not sent yet is not sent.
    security: [{serverToken: []}]
    description: 'Its messages still queued are dropped and the walk stops. A send already begun goes on.
      Cancelling again searches the queue again and changes nothing else.'
    parameters:
      - {name: broadcast_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: '{"id", "state": "cancelled", "was": the state before, "dropped": messages dropped}'}
      401: {description: Missing token}
      403: {description: Not the admin token}
      404: {description: No such broadcast in the catalog in force}
      409: {description: Done already}
    """
    require(caller_of(request), ADMIN)
    broadcast = _broadcast(request)
    try:
        before, dropped = await services_of(request).runtime.broadcasts.cancel(broadcast)
    except RedisError as exc:
        raise StoreUnavailable("cannot cancel the broadcast") from exc
    if before == DONE:
        return json_response({"id": broadcast.id, "state": DONE,
                              "error": f"broadcast {broadcast.id!r} is done: nothing is left to cancel"}, 409)
    return json_response({"id": broadcast.id, "state": CANCELLED, "was": before, "dropped": dropped})


ROUTES = [
    Route("/v1/broadcasts", list_broadcasts, methods=["GET"]),
    Route("/v1/broadcasts/{broadcast_id}", get_broadcast, methods=["GET"]),
    Route("/v1/admin/broadcasts/{broadcast_id}/start", start_broadcast, methods=["POST"]),
    Route("/v1/admin/broadcasts/{broadcast_id}/cancel", cancel_broadcast, methods=["POST"]),
]
