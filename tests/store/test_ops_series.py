"""The console's per-slot counts against a real Redis (and a cluster): what
several processes flush adds up in one hash per slot, expiring; a flush Redis
refused goes out with the next; the Kafka workers' lag reports read back fresh."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.latency import STEP_MS, bucket_of
from engine.store.keys import OPS_SLOT_TTL_S, Keys
from engine.store.local_server import free_port
from engine.store.ops_series import OpsCounts, OpsSeries

T0 = 1_700_000_000.0  # epoch seconds, the start of a slot
SLOT = int(T0) * 1000


class Clock:
    def __init__(self, at: float):
        self.at = at

    def __call__(self) -> float:
        return self.at


async def test_two_processes_flushing_the_same_slot_add_up(redis):
    series = OpsSeries(redis, Keys())
    first, second = OpsCounts(Clock(T0 + 1)), OpsCounts(Clock(T0 + 7))
    for _ in range(30):
        first.observe("decide", 0.0015)
    first.observe("decide", 2.0)  # past the last bound: the overflow bucket
    first.count("fallbacks", 2)
    for _ in range(12):
        second.observe("decide", 0.0015)
        second.observe("events", 0.004)
    second.count("events_applied", 120)
    second.count("redis_errors")
    assert await series.flush(first) == 4  # decide:3, decide:11, decide:n, fallbacks: one HINCRBY each
    await series.flush(second)
    assert await series.flush(second) == 0  # nothing new: no round trip's worth
    slots = await series.read(SLOT, SLOT)
    assert slots == {SLOT: {
        f"decide:{bucket_of(0.0015)}": 42, "decide:11": 1, "decide:n": 43,
        f"events:{bucket_of(0.004)}": 12, "events:n": 12,
        "fallbacks": 2, "redis_errors": 1, "events_applied": 120,
    }}
    ttl = await redis.ttl(Keys().ops_slot(int(T0)))
    assert OPS_SLOT_TTL_S - 5 <= ttl <= OPS_SLOT_TTL_S


async def test_counts_fall_in_the_slot_of_their_time(redis):
    series = OpsSeries(redis, Keys())
    clock = Clock(T0 + 9.9)
    counts = OpsCounts(clock)
    counts.observe("decide", 0.001)
    clock.at = T0 + 10.0  # the next slot
    counts.observe("decide", 0.001)
    counts.observe("decide", 0.001)
    await series.flush(counts)
    slots = await series.read(SLOT - STEP_MS, SLOT + 2 * STEP_MS)
    assert {slot: c["decide:n"] for slot, c in slots.items()} == {SLOT: 1, SLOT + STEP_MS: 2}


async def test_a_flush_redis_refused_goes_out_with_the_next_one(redis):
    counts = OpsCounts(Clock(T0 + 1))
    for _ in range(5):
        counts.observe("decide", 0.001)
    nobody = Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        with pytest.raises(RedisConnectionError):
            await OpsSeries(nobody, Keys()).flush(counts)
    finally:
        await nobody.aclose()
    counts.observe("decide", 0.001)
    series = OpsSeries(redis, Keys())
    await series.flush(counts)
    assert (await series.read(SLOT, SLOT))[SLOT]["decide:n"] == 6


async def test_lag_reports_read_back_per_partition_while_fresh(redis):
    series = OpsSeries(redis, Keys())
    assert await series.lag(100_000) is None  # no worker ever reported: not Kafka mode
    await series.report_lag({0: 12, 1: 0}, 100_000)  # one worker
    await series.report_lag({2: 7}, 95_000)  # another, a while ago
    assert await series.lag(100_500) == {"0": 12, "1": 0, "2": 7}
    assert await series.lag(106_000) == {"0": 12, "1": 0}  # partition 2's report is stale
