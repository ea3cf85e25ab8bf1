"""The floor server of BENCHMARKS.md P1/P2: a bare Starlette app whose decide route
does one HGETALL of a seeded person and answers a constant decision, so /v1/decide
is compared with the least a Starlette route reading Redis can cost. Also seeds it.

Run: ATTIMO_REDIS_URL=redis://127.0.0.1:6380/0 uvicorn benchmarks.floor_app:app \
         --loop uvloop --http httptools --no-access-log --workers 1"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The same pool shape the API uses by default: blocking, bounded, with a timeout.
POOL_SIZE = 64
POOL_TIMEOUT_S = 0.1
SEED_BATCH = 2000


def person_id(index: int) -> str:
    """The id of the index-th seeded person; load bodies rotate over these."""
    return f"person-{index}"


def floor_key(user_id: str) -> str:
    return f"floor:{{u:{user_id}}}"


def seeded_profile(index: int) -> dict[str, str]:
    """About ten fields, the size of a small real profile hash."""
    return {
        "age": str(18 + index % 60),
        "country": ("FR", "DE", "US", "IT", "ES")[index % 5],
        "plan": ("free", "pro", "team")[index % 3],
        "visits_7d": str(index % 23),
        "orders_90d": str(index % 7),
        "cart_value": f"{(index * 37) % 500}.00",
        "last_seen_ms": str(1_700_000_000_000 + index * 1000),
        "score": f"{(index % 100) / 100:.2f}",
        "segment": ("new", "active", "lapsed")[index % 3],
        "email_opt_in": "1" if index % 2 else "0",
    }


async def seed_floor(redis_url: str, n_people: int, *, batch: int = SEED_BATCH) -> None:
    """Write `n_people` profile hashes with pipelined HSETs (100k in seconds)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for start in range(0, n_people, batch):
            pipe = client.pipeline(transaction=False)
            for index in range(start, min(start + batch, n_people)):
                pipe.hset(floor_key(person_id(index)), mapping=seeded_profile(index))
            await pipe.execute()
    finally:
        await client.aclose()


# Ids only need to be unique per process; a counter costs less than a uuid and
# the floor should carry no work the engine does not also have to do.
_decision_numbers = itertools.count()
PLACEMENTS = {
    "hero": {"offer_id": "floor-hero", "variant": "default"},
    "sidebar": {"offer_id": "floor-sidebar", "variant": "default"},
}


def _bad_request(reason: str) -> Response:
    return Response(orjson.dumps({"error": reason}), 400, media_type="application/json")


async def decide(request: Request) -> Response:
    try:
        user_id = orjson.loads(await request.body())["user_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _bad_request("body must be a JSON object with user_id")
    profile = await request.app.state.redis.hgetall(floor_key(user_id))
    decision = {
        "decision_id": f"floor-{next(_decision_numbers)}",
        "known": bool(profile),
        "placements": PLACEMENTS,
    }
    return Response(orjson.dumps(decision), media_type="application/json")


async def ingest(request: Request) -> Response:
    """One pipelined round trip for the batch, one HSET per event."""
    try:
        events = orjson.loads(await request.body())["events"]
        pipe = request.app.state.redis.pipeline(transaction=False)
        for event in events:
            pipe.hset(
                floor_key(event["user_id"]),
                mapping={"last_event": event["type"], "last_event_id": event["id"]},
            )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _bad_request('body must be {"events": [{"id", "type", "user_id"}, ...]}')
    await pipe.execute()
    return Response(orjson.dumps({"accepted": len(events)}), 202, media_type="application/json")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    pool = aioredis.BlockingConnectionPool.from_url(
        os.environ.get("ATTIMO_REDIS_URL", DEFAULT_REDIS_URL),
        max_connections=POOL_SIZE,
        timeout=POOL_TIMEOUT_S,
    )
    app.state.redis = aioredis.Redis(connection_pool=pool)
    await app.state.redis.ping()
    # Everything allocated so far lives for the whole process: keep it out of
    # the collector's generations so collections during the run stay short.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await pool.aclose()


app = Starlette(
    routes=[
        Route("/floor/decide", decide, methods=["POST"]),
        Route("/floor/events", ingest, methods=["POST"]),
    ],
    lifespan=lifespan,
)
