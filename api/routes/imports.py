"""Importing people from a CRM over HTTP (server token, admin scope): the body,
CSV or JSON Lines, is read as it arrives and applied a batch at a time
(engine/ingest/importer.py), so its size has no limit, only each line's."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import body_pieces, caller_of, json_response, services_of
from engine.errors import UnsupportedMediaType
from engine.ingest.identity import ADMIN, require
from engine.ingest.import_rows import CSV, JSONL, rows_reader
from engine.ingest.importer import Importer, import_people

MEDIA_TYPES = {"text/csv": CSV, "application/x-ndjson": JSONL, "application/jsonl": JSONL}


async def post_import(request: Request) -> Response:
    """
    summary: Import people and their traits from a CRM export (server token, admin scope).
    description: 'The body is CSV with a header row (Content-Type text/csv) or JSON Lines, one object a line
      (application/x-ndjson): `{"user_id": …, "traits": {…}}` or flat. The column or key `user_id` (another with
      `?id_column=`) names the person, u:<id>; every other column is a trait. A CSV cell left empty is not
      given; one written as a plain number (31, -2.5; not 007) is a number; email and phone stay text. The
      body is read and applied as it arrives, 500 people at a time, without a size limit; a line is at most
      64 KB. Each row is applied once: sending the same export again counts its rows in `duplicates` and
      changes nothing. A line that breaks a rule is refused and listed; the others are applied.'
    security: [{serverToken: []}]
    parameters:
      - {name: id_column, in: query, schema: {type: string}, description: 'the column or key holding the user id (default user_id)'}
    requestBody:
      required: true
      content:
        text/csv: {schema: {type: string}}
        application/x-ndjson: {schema: {type: string}}
    responses:
      200: {description: '{"applied": n, "duplicates": n, "refused": n, "errors": [{"line", "field", "reason"}, …]} (the first 1,000 refusals; the count is complete)'}
      401: {description: Missing token}
      403: {description: Not a token with the admin scope}
      408: {description: The body stopped arriving for longer than the read deadline (what came before it is applied)}
      415: {description: Neither text/csv nor application/x-ndjson}
      422: {description: 'A CSV header without the id column, with a column named twice or too many columns, or no header at all: {"error", "field": "header"}'}
    """
    services = services_of(request)
    require(caller_of(request), ADMIN)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    kind = MEDIA_TYPES.get(media_type)
    if kind is None:
        raise UnsupportedMediaType("send text/csv (a header row, then one person a line) or "
                                   "application/x-ndjson (one JSON object a line)", "Content-Type")
    reader = rows_reader(kind, request.query_params.get("id_column", "user_id"))
    # Services.apply answers 503 for a Redis that fails or is too slow for a
    # batch; the batches before it stay applied, and sending it all again is safe.
    report = await import_people(body_pieces(request), reader, Importer(services.apply))
    return json_response(report.as_dict())

ROUTES = [Route("/v1/admin/import", post_import, methods=["POST"])]
