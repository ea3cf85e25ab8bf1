"""Single-use discount codes (server token): pools uploaded and reported
(admin), codes redeemed once by the site's server after an order (ingest).
Handing a code to a person happens in decide (api/routes/decide.py)."""

from __future__ import annotations

import msgspec
import orjson
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, read_body, services_of
from engine.clock import now_ms
from engine.errors import EventRejected, MalformedBody
from engine.events import CODE_POOL_NAME, DISCOUNT_CODE, PERSON_ID, check_number, decode_json
from engine.followups.kpis import MAX_AMOUNT
from engine.ingest.identity import ADMIN, INGEST, READ, anonymous, known, require
from engine.store.code_pools import (
    AGAIN,
    MAX_CODES_PER_UPLOAD,
    MAX_POOL_CODES,
    NOT_GIVEN,
    NOT_YOURS,
    REDEEMED,
    UNKNOWN,
    USED,
    PoolFull,
)

MAX_UPLOAD_BYTES = 1024 * 1024  # 10,000 codes of 64 characters, one a line, and room to spare
CODE_RULE = "1 to 64 letters, digits or _ . -"
REFUSED = {  # redeem outcomes that are not a redemption: 409 with the reason
    USED: "the code was already used by another order",
    NOT_YOURS: "the code was given to someone else",
    NOT_GIVEN: "the code was never given to anyone",
}


def _pool_of(request: Request) -> str:
    pool = request.path_params["pool"]
    if not CODE_POOL_NAME.fullmatch(pool):
        raise EventRejected(f"pool: {CODE_RULE}", "pool", 64)
    return pool


def parse_codes(body: bytes, content_type: str) -> list[str]:
    """A JSON list of codes, or text with one code a line (blank lines skipped);
    422 naming the first code at fault."""
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            codes = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"malformed JSON: {exc}") from None
        if not isinstance(codes, list):
            raise EventRejected("a JSON list of codes", "body")
        where = "codes[{}]"
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBody("the codes are UTF-8 text, one a line") from None
        codes = [line.strip() for line in text.splitlines() if line.strip()]
        where = "line {}"  # of the codes given, blank lines not counted
    if not codes:
        raise EventRejected("no codes given", "body")
    if len(codes) > MAX_CODES_PER_UPLOAD:
        raise EventRejected("too many codes in one upload", "body", MAX_CODES_PER_UPLOAD)
    for i, code in enumerate(codes):
        if not isinstance(code, str) or not DISCOUNT_CODE.fullmatch(code):
            raise EventRejected(f"a code is {CODE_RULE}", where.format(i if where.startswith("codes") else i + 1), 64)
    return codes


class CodePool(HTTPEndpoint):
    async def put(self, request: Request) -> Response:
        """
        summary: Add single-use codes to a pool (server token, admin scope).
        description: 'The body is a JSON list of codes (Content-Type application/json) or text with one code a
          line. Codes the pool already holds, given or not, are skipped, so an upload can be repeated. At most
          10,000 codes an upload and 1,000,000 a pool; a code is 1 to 64 letters, digits or _ . -'
        security: [{serverToken: []}]
        parameters:
          - {name: pool, in: path, required: true, schema: {type: string}, description: 'the pool, as an offer names it in content.code_pool'}
        requestBody:
          required: true
          content:
            application/json: {schema: {type: array, items: {type: string}}}
            text/plain: {schema: {type: string}}
        responses:
          200: {description: '{"pool", "offer" (the offer that gives its codes, or null), "added", "already_in_pool", "available"}'}
          400: {description: Malformed JSON or text that is not UTF-8}
          401: {description: Missing token}
          403: {description: Not a token with the admin scope}
          413: {description: Body over 1 MB}
          422: {description: 'A bad pool name or code, no codes, too many codes: {"error", "field", "limit"?}'}
        """
        services = services_of(request)
        require(caller_of(request), ADMIN)
        pool = _pool_of(request)
        codes = parse_codes(await read_body(request, MAX_UPLOAD_BYTES), request.headers.get("content-type", ""))
        try:
            result = await services.codes.upload(pool, codes)
        except PoolFull as exc:
            raise EventRejected(f"the pool would hold more than {MAX_POOL_CODES} codes (it holds {exc.held})",
                                "body", MAX_POOL_CODES) from None
        return json_response({**result, "offer": services.holder.current.code_pools.get(pool)})

    async def get(self, request: Request) -> Response:
        """
        summary: How many codes of a pool are left, given and redeemed (server token, read scope).
        security: [{serverToken: []}]
        parameters:
          - {name: pool, in: path, required: true, schema: {type: string}, description: 'the pool, as an offer names it in content.code_pool'}
        responses:
          200: {description: '{"pool", "offer", "available", "given", "redeemed"}'}
          401: {description: Missing token}
          403: {description: Not a token with the read scope}
          422: {description: Not a pool name}
        """
        services = services_of(request)
        require(caller_of(request), READ)
        pool = _pool_of(request)
        status = await services.codes.status(pool)
        return json_response({**status, "offer": services.holder.current.code_pools.get(pool)})


class RedeemRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    order_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    amount: float | None = None  # the order's revenue: the discount's cost is amount x the offer's value / 100
    pool: str | None = None  # saves looking the code up in every pool of the catalog


_redeem_decoder = msgspec.json.Decoder(RedeemRequest)


def decode_redeem(body: bytes) -> RedeemRequest:
    request = decode_json(_redeem_decoder, body)
    if not DISCOUNT_CODE.fullmatch(request.code):
        raise EventRejected(f"a code is {CODE_RULE}", "code", 64)
    if not PERSON_ID.fullmatch(request.order_id):
        raise EventRejected("order ids are 1 to 128 characters without spaces or braces", "order_id", 128)
    if (request.user_id is None) == (request.anonymous_id is None):
        raise EventRejected("name the person the code was given to: user_id or anonymous_id", "user_id")
    for name in ("user_id", "anonymous_id"):
        value = getattr(request, name)
        if value is not None and not PERSON_ID.fullmatch(value):
            raise EventRejected("person ids are 1 to 128 characters without spaces or braces", name, 128)
    if request.amount is not None:
        check_number(request.amount, "amount")
        if not 0 <= request.amount <= MAX_AMOUNT:
            raise EventRejected(f"amount: from 0 to {MAX_AMOUNT:.0f}", "amount")
    if request.pool is not None and not CODE_POOL_NAME.fullmatch(request.pool):
        raise EventRejected(f"pool: {CODE_RULE}", "pool", 64)
    return request


async def post_redeem(request: Request) -> Response:
    """
    summary: Redeem a single-use code once, for an order (server token, ingest scope).
    description: 'The site''s server calls it when an order uses a pooled code. The code must have been given
      (by decide) to the person named. The same order again is answered 200 and changes nothing. With `amount`
      (the order''s revenue) the discount''s cost (amount x the offer''s value / 100) is added, once, to the
      offer''s spend (its budget) and to its KPIs.'
    security: [{serverToken: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [code, order_id]
            properties:
              code: {type: string}
              order_id: {type: string}
              user_id: {type: string}
              anonymous_id: {type: string}
              amount: {type: number, minimum: 0}
              pool: {type: string}
    responses:
      200: {description: '{"redeemed": true, "code", "pool", "offer", "order_id", "repeated"}'}
      400: {description: Malformed JSON}
      401: {description: Missing token}
      403: {description: Not a token with the ingest scope}
      404: {description: The code is in no pool of the catalog (or of the pool named)}
      409: {description: 'Refused, with the reason: used by another order, given to someone else, never given'}
      422: {description: A field breaks the schema or a limit}
    """
    services = services_of(request)
    require(caller_of(request), INGEST)
    body = decode_redeem(await read_body(request))
    person = known(body.user_id) if body.user_id is not None else anonymous(body.anonymous_id)
    catalog = services.holder.current
    pool = body.pool or await services.codes.find(body.code, catalog.code_pools)
    outcome = UNKNOWN if pool is None else await services.codes.redeem(pool, body.code, person, body.order_id)
    if outcome == UNKNOWN:
        return json_response({"redeemed": False, "error": "no such code"}, 404)
    if outcome in REFUSED:
        return json_response({"redeemed": False, "error": REFUSED[outcome]}, 409)
    assert outcome in (REDEEMED, AGAIN), outcome
    offer = catalog.offers_by_id.get(catalog.code_pools.get(pool, ""))
    if offer is not None and body.amount is not None:
        # Again too: a retry after a crash between the two calls still counts, and only once.
        await services.kpis.record_redemption(offer, pool, body.code, body.amount, now_ms())
    return json_response({"redeemed": True, "code": body.code, "pool": pool, "offer": offer.id if offer else None,
                          "order_id": body.order_id, "repeated": outcome == AGAIN})


ROUTES = [
    Route("/v1/admin/codes/{pool}", CodePool),
    Route("/v1/codes/redeem", post_redeem, methods=["POST"]),
]
