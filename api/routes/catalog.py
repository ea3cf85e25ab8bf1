"""Publishing a catalog (server token): validated and compiled, then in force in every process."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, read_body, services_of
from engine.errors import StoreUnavailable
from engine.ingest.identity import ADMIN, require
from engine.settings import MAX_BODY_BYTES


async def post_catalog(request: Request) -> Response:
    """
    summary: Replace the catalog in force (server token); YAML or JSON body.
    description: The body is read as catalog text (YAML 1.2, of which JSON is a part) whatever its
      Content-Type, and compiled before anything changes.
    security: [{serverToken: []}]
    requestBody:
      required: true
      content:
        application/yaml: {schema: {type: string}}
        application/json: {schema: {type: object}}
    responses:
      200: {description: '{"digest", "offers", "segments", "placements"}'}
      401: {description: Missing token}
      403: {description: Not the server token}
      413: {description: Body over 2 MB}
      422: {description: 'The catalog has problems: {"problems": [{"path", "reason"}]}'}
    """
    services = services_of(request)
    require(caller_of(request), ADMIN)
    text = (await read_body(request, 4 * MAX_BODY_BYTES)).decode("utf-8", "replace")
    try:
        catalog = await services.catalogs.publish(text)
    except RedisError as exc:
        raise StoreUnavailable("cannot publish the catalog") from exc
    return json_response({
        "digest": services.catalogs.digest,
        "offers": len(catalog.offers),
        "segments": len(catalog.segments),
        "placements": sorted(catalog.placements),
    })


ROUTES = [Route("/v1/admin/catalog", post_catalog, methods=["POST"])]
