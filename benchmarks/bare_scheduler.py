"""P9's floor: a bare loop over the same due queue that claims what is due,
posts each message to its webhook URL and acknowledges it: no contact policy,
no send marks, no outcomes, no KPIs, no retries, over the same Redis client
(engine/store/client.py). What the queue and the sink allow; `attimo scheduler`'s throughput is reported against it. Runs until the
queue has been empty for 2 s after its first send (or BARE_SECONDS), then
prints what it sent.

    BARE_REDIS=redis://… BARE_URL=http://…/push python -m benchmarks.bare_scheduler
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import orjson
import uvloop

from engine.clock import now_ms
from engine.followups.due_queue import DueQueue
from engine.settings import Settings
from engine.store.client import connect

BATCH = 200
IN_FLIGHT = 64
LEASE_MS = 30_000


async def main() -> None:
    redis = connect(Settings(redis_url=os.environ["BARE_REDIS"]))  # the scheduler's own client
    url = os.environ["BARE_URL"]
    queue = DueQueue(redis)
    sent, idle_since, deadline = 0, None, time.monotonic() + float(os.environ.get("BARE_SECONDS", "600"))
    limit = asyncio.Semaphore(IN_FLIGHT)
    async with aiohttp.ClientSession() as session:

        async def post(message) -> None:
            async with limit, session.post(url, data=orjson.dumps(message.body),
                                           headers={"Idempotency-Key": message.id,
                                                    "Content-Type": "application/json"}) as answer:
                await answer.read()

        while time.monotonic() < deadline:
            claimed = await queue.claim(now_ms(), BATCH, LEASE_MS)
            if not claimed:
                idle_since = idle_since or time.monotonic()
                if sent and time.monotonic() - idle_since > 2.0:  # done (before the first: not due yet)
                    break
                await asyncio.sleep(0.01)
                continue
            idle_since = None
            await asyncio.gather(*(post(item.message) for item in claimed))
            await queue.settle([item.message for item in claimed], [], now_ms())
            sent += len(claimed)
    await redis.aclose()
    print(orjson.dumps({"sent": sent}).decode(), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
