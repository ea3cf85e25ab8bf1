"""Tracked segments for marketers and their tools (server token, read scope):
sizes, members page by page, and the customer-list export ad platforms take."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.http import caller_of, json_response, services_of
from engine.audiences.destinations import encode_rows, export_rows, header
from engine.audiences.membership import MembershipStore
from engine.catalog.audiences import FORMATS, SHAPES
from engine.errors import EventRejected, NotFound, StoreUnavailable
from engine.ingest.identity import READ, require

PAGE_DEFAULT = 500
PAGE_MAX = 5000
MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


async def list_segments(request: Request) -> Response:
    """
    summary: The catalog's segments, with the size of each tracked one (server token).
    security: [{serverToken: []}]
    responses:
      200: {description: '{"segments": [{"id", "tracked", "size", "last_change", "destinations"}]}: size and
        last_change (ms of the latest entry or exit) for tracked segments, null otherwise'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
    """
    require(caller_of(request), READ)
    services = services_of(request)
    catalog = services.holder.current
    audiences = catalog.audiences
    tracked = sorted(audiences.tracked)
    membership = services.runtime.pipeline.membership
    try:
        sizes = await membership.sizes(tracked)
        changed = await membership.last_changes(tracked)
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    return json_response({"segments": [
        {"id": sid, "tracked": sid in audiences.tracked, "size": sizes.get(sid), "last_change": changed.get(sid),
         "destinations": [{"id": d.id, "kind": d.kind} for d in audiences.of_segment(sid)]}
        for sid in catalog.segments]})


def _tracked_segment(request: Request) -> tuple[str, MembershipStore]:
    """The path's segment, for a caller with the read scope: 404 when the
    catalog has none by that id, 422 when it is not tracked; and its store."""
    require(caller_of(request), READ)
    segment = request.path_params["segment_id"]
    catalog = services_of(request).holder.current
    if segment not in catalog.segments:
        raise NotFound(f"no segment {segment!r} in the catalog in force", "segment_id")
    if segment not in catalog.audiences.tracked:
        raise EventRejected(f"segment {segment!r} is not tracked: its members are kept once the catalog "
                            "says track: true", "segment_id")
    return segment, services_of(request).runtime.pipeline.membership


async def segment_members(request: Request) -> Response:
    """
    summary: One page of a tracked segment's members (server token).
    description: 'Pass `next` from the answer as `cursor` for the following page; `next` is null after the
      last. A member present for the whole walk is listed at least once.'
    security: [{serverToken: []}]
    parameters:
      - {name: segment_id, in: path, required: true, schema: {type: string}}
      - {name: cursor, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 5000}}
    responses:
      200: {description: '{"segment", "members": [person ids], "next": cursor|null}'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
      404: {description: No such segment in the catalog in force}
      422: {description: 'The segment is not tracked, or a bad cursor or limit'}
    """
    segment, membership = _tracked_segment(request)
    limit = _limit(request.query_params.get("limit"))
    try:
        members, cursor = await membership.page(segment, request.query_params.get("cursor"), limit)
    except ValueError as exc:
        raise EventRejected(str(exc), "cursor") from None
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    return json_response({"segment": segment, "members": members, "next": cursor})


async def segment_export(request: Request) -> Response:
    """
    summary: A tracked segment as a customer list for ad platforms (server token).
    description: 'Streamed. Only members who gave advertising consent (a consent event with channel `ads`,
      purpose `advertising`). Identifiers are SHA-256 hex of the normalised email (trimmed, lower case) and
      phone (E.164). `shape`: `plain` (person, email_sha256, phone_sha256), `google` (Customer Match columns
      Email, Phone) or `meta` (Custom Audiences columns email, phone); the last two leave out members
      with neither.'
    security: [{serverToken: []}]
    parameters:
      - {name: segment_id, in: path, required: true, schema: {type: string}}
      - {name: format, in: query, schema: {type: string, enum: [csv, jsonl]}}
      - {name: shape, in: query, schema: {type: string, enum: [plain, google, meta]}}
    responses:
      200: {description: 'CSV with a header row, or one JSON object per line'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
      404: {description: No such segment in the catalog in force}
      422: {description: 'The segment is not tracked, or an unknown format or shape'}
    """
    segment, membership = _tracked_segment(request)
    fmt = request.query_params.get("format", "csv")
    shape = request.query_params.get("shape", "plain")
    if fmt not in FORMATS:
        raise EventRejected(f"format is one of {', '.join(FORMATS)}", "format")
    if shape not in SHAPES:
        raise EventRejected(f"shape is one of {', '.join(SHAPES)}", "shape")

    async def body():
        yield header(fmt, shape)
        async for rows in export_rows(membership, segment, shape):
            yield encode_rows(rows, fmt, shape)

    name = f"{segment}.{fmt}"
    return StreamingResponse(body(), media_type=MEDIA[fmt],
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _limit(text: str | None) -> int:
    if text is None:
        return PAGE_DEFAULT
    if not text.isdigit() or not 1 <= int(text) <= PAGE_MAX:
        raise EventRejected(f"limit is a whole number from 1 to {PAGE_MAX}", "limit", PAGE_MAX)
    return int(text)


ROUTES = [
    Route("/v1/segments", list_segments, methods=["GET"]),
    Route("/v1/segments/{segment_id}/members", segment_members, methods=["GET"]),
    Route("/v1/segments/{segment_id}/export", segment_export, methods=["GET"]),
]
