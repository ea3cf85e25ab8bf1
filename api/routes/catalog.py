"""The catalog (server token): publishing one (admin), and reading what is in
force, every version kept, the diff between two, and what a draft's problems
are before publishing it (read)."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, read_body, services_of
from engine.catalog.lines import with_lines
from engine.catalog.publish import MESSAGE_MAX, compile_off_loop, unified_diff
from engine.errors import CatalogError, EventRejected, NotFound, StoreUnavailable
from engine.ingest.identity import ADMIN, READ, require, require_one_of
from engine.settings import MAX_BODY_BYTES

CATALOG_BODY_MAX = 4 * MAX_BODY_BYTES
YAML = "application/yaml; charset=utf-8"


def _problems(text: str, exc: CatalogError) -> Response:
    return json_response({"error": "the catalog has problems", "problems": with_lines(text, exc.problems)}, 422)


def _message(request: Request) -> str:
    message = request.query_params.get("message", "")
    if len(message) > MESSAGE_MAX:
        raise EventRejected(f"a message is at most {MESSAGE_MAX} characters", "message", MESSAGE_MAX)
    return message


async def _publish(request: Request, text: str, message: str) -> Response:
    services = services_of(request)
    try:
        catalog = await services.catalogs.publish(text, author=caller_of(request).name, message=message)
    except CatalogError as exc:
        return _problems(text, exc)
    except RedisError as exc:
        raise StoreUnavailable("cannot publish the catalog") from exc
    return json_response({
        "version": services.holder.version,
        "digest": services.catalogs.digest,
        "offers": len(catalog.offers),
        "segments": len(catalog.segments),
        "placements": sorted(catalog.placements),
    })


async def post_catalog(request: Request) -> Response:
    """
    summary: Publish a catalog (server token, admin scope); YAML or JSON body.
    description: 'The body is read as catalog text (YAML 1.2, of which JSON is a part) whatever its
      Content-Type, and compiled before anything changes. It becomes a new numbered version, recorded with
      the token that published it and `?message=`.'
    security: [{serverToken: []}]
    parameters:
      - {name: message, in: query, schema: {type: string, maxLength: 500}}
    requestBody:
      required: true
      content:
        application/yaml: {schema: {type: string}}
        application/json: {schema: {type: object}}
    responses:
      200: {description: '{"version", "digest", "offers", "segments", "placements"}'}
      401: {description: Missing token}
      403: {description: Not a token with the admin scope}
      413: {description: Body over 2 MB}
      422: {description: 'The catalog has problems: {"problems": [{"path", "reason", "line"}]}'}
    """
    require(caller_of(request), ADMIN)
    message = _message(request)
    text = (await read_body(request, CATALOG_BODY_MAX)).decode("utf-8", "replace")
    return await _publish(request, text, message)


async def get_catalog(request: Request) -> Response:
    """
    summary: The catalog source in force (server token, read or admin scope).
    security: [{serverToken: []}]
    responses:
      200: {description: 'The source text, with headers X-Attimo-Catalog-Version and X-Attimo-Catalog-Digest'}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
    """
    require_one_of(caller_of(request), READ, ADMIN)
    services = services_of(request)
    return Response(services.holder.source_text, media_type=YAML,
                    headers={"X-Attimo-Catalog-Version": str(services.holder.version),
                             "X-Attimo-Catalog-Digest": services.catalogs.digest})


class Catalog(HTTPEndpoint):
    """One route for the path, so a 405's Allow header names both GET and POST."""

    get = staticmethod(get_catalog)
    post = staticmethod(post_catalog)


async def list_versions(request: Request) -> Response:
    """
    summary: The catalog versions kept, newest first (server token, read or admin scope).
    security: [{serverToken: []}]
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
    responses:
      200: {description: '{"in_force": n, "versions": [{"n", "digest", "author", "message", "at", "offers",
        "segments", "journeys"}]}'}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
      422: {description: A limit out of range}
    """
    require_one_of(caller_of(request), READ, ADMIN)
    limit = _number(request.query_params.get("limit", "50"), "limit", 500)
    catalogs = services_of(request).catalogs
    try:
        versions, in_force = await catalogs.versions(limit), await catalogs.in_force()
    except RedisError as exc:
        raise StoreUnavailable("the catalog store is unavailable") from exc
    return json_response({"in_force": in_force, "versions": versions})


async def _text(request: Request, n: int) -> str:
    try:
        text = await services_of(request).catalogs.text_of(n)
    except RedisError as exc:
        raise StoreUnavailable("the catalog store is unavailable") from exc
    if text is None:
        raise NotFound(f"no catalog version {n} is kept", "n")
    return text


async def get_version(request: Request) -> Response:
    """
    summary: One catalog version's source text (server token, read or admin scope).
    security: [{serverToken: []}]
    parameters:
      - {name: n, in: path, required: true, schema: {type: integer}}
    responses:
      200: {description: The source text}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
      404: {description: No such version kept}
    """
    require_one_of(caller_of(request), READ, ADMIN)
    return Response(await _text(request, _number(request.path_params["n"], "n")), media_type=YAML)


async def restore_version(request: Request) -> Response:
    """
    summary: Publish an earlier catalog version again, as a new version (server token, admin scope).
    security: [{serverToken: []}]
    parameters:
      - {name: n, in: path, required: true, schema: {type: integer}}
      - {name: message, in: query, schema: {type: string, maxLength: 500}}
    responses:
      200: {description: '{"version", "digest", "offers", "segments", "placements"}'}
      401: {description: Missing token}
      403: {description: Not a token with the admin scope}
      404: {description: No such version kept}
      422: {description: 'It no longer compiles: {"problems": [...]}'}
    """
    require(caller_of(request), ADMIN)
    n = _number(request.path_params["n"], "n")
    message = _message(request) or f"restore of version {n}"
    return await _publish(request, await _text(request, n), message)


async def diff_versions(request: Request) -> Response:
    """
    summary: A unified diff between two catalog versions (server token, read or admin scope).
    security: [{serverToken: []}]
    parameters:
      - {name: from, in: query, required: true, schema: {type: integer}}
      - {name: to, in: query, required: true, schema: {type: integer}}
    responses:
      200: {description: '{"from", "to", "diff"}'}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
      404: {description: A version not kept}
      422: {description: from or to missing or not a number}
    """
    require_one_of(caller_of(request), READ, ADMIN)
    old = _number(request.query_params.get("from", ""), "from")
    new = _number(request.query_params.get("to", ""), "to")
    diff = unified_diff(await _text(request, old), await _text(request, new), f"version {old}", f"version {new}")
    return json_response({"from": old, "to": new, "diff": diff})


async def validate_catalog(request: Request) -> Response:
    """
    summary: Check a draft catalog without publishing it (server token, read or admin scope).
    security: [{serverToken: []}]
    requestBody:
      required: true
      content:
        application/yaml: {schema: {type: string}}
    responses:
      200: {description: '{"ok": true, "offers", "segments", "placements", "journeys"}'}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
      413: {description: Body over 2 MB}
      422: {description: 'Every problem with its path, reason and line: {"problems": [{"path", "reason", "line"}]}'}
    """
    require_one_of(caller_of(request), READ, ADMIN)
    text = (await read_body(request, CATALOG_BODY_MAX)).decode("utf-8", "replace")
    try:
        catalog = await compile_off_loop(text, "draft catalog")
    except CatalogError as exc:
        return _problems(text, exc)
    return json_response({"ok": True, "offers": len(catalog.offers), "segments": len(catalog.segments),
                          "placements": sorted(catalog.placements), "journeys": len(catalog.journeys.by_id)})


def _number(text: str, field: str, most: int | None = None) -> int:
    if not text.isdigit() or int(text) < 1 or (most is not None and int(text) > most):
        raise EventRejected(f"{field} is a whole number from 1" + (f" to {most}" if most else ""), field)
    return int(text)


ROUTES = [
    Route("/v1/admin/catalog", Catalog),
    Route("/v1/admin/catalog/versions", list_versions, methods=["GET"]),
    Route("/v1/admin/catalog/versions/{n}", get_version, methods=["GET"]),
    Route("/v1/admin/catalog/versions/{n}/restore", restore_version, methods=["POST"]),
    Route("/v1/admin/catalog/diff", diff_versions, methods=["GET"]),
    Route("/v1/admin/catalog/validate", validate_catalog, methods=["POST"]),
]
