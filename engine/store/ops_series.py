"""The console's figures that add up across processes: each process counts in
memory (OpsCounts: request times by endpoint and bucket, fallbacks, Redis
errors, events applied, per 10-second slot) and flushes every second into one
Redis hash per slot that every process adds to (OpsSeries). Also the Kafka
workers' per-partition lag, which the API reads back for the console."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping

from engine.latency import LATENCY_BUCKETS, STEP_MS, STEP_S
from engine.store.keys import OPS_LAG_TTL_S, OPS_SLOT_TTL_S, Keys

COUNTERS = ("fallbacks", "redis_errors", "events_applied")


class OpsCounts:
    """One process's counts since its last flush, by slot. What the request path
    pays: a clock read, a bisect and a dict increment; no I/O."""

    __slots__ = ("_clock", "_retry", "_slots")

    def __init__(self, clock=time.time):
        self._clock = clock  # epoch seconds
        self._slots: dict[int, dict] = {}  # slot start ms -> {(endpoint, bucket) or counter: n}
        self._retry: dict[int, dict[str, int]] = {}  # fields of a flush that failed

    def _slot(self) -> dict:
        slot = int(self._clock()) // STEP_S * STEP_MS
        counts = self._slots.get(slot)
        if counts is None:
            counts = self._slots[slot] = {}
        return counts

    def observe(self, endpoint: str, seconds: float) -> None:
        counts = self._slot()
        key = (endpoint, bisect_left(LATENCY_BUCKETS, seconds))
        counts[key] = counts.get(key, 0) + 1

    def count(self, counter: str, n: int = 1) -> None:
        """One of COUNTERS."""
        counts = self._slot()
        counts[counter] = counts.get(counter, 0) + n

    def take(self) -> dict[int, dict[str, int]]:
        """What was counted since the last take, as hash fields per slot:
        `<endpoint>:<bucket index>` (engine.latency.OVERFLOW past the last
        bound), `<endpoint>:n` (requests), and the counters by name; then start afresh."""
        taken, self._slots = self._slots, {}
        out, self._retry = self._retry, {}
        for slot, counts in taken.items():
            _add(out.setdefault(slot, {}), fields(counts))
        return out

    def put_back(self, taken: dict[int, dict[str, int]], keep_s: int) -> None:
        """A flush that failed: its counts go out with the next one, except
        slots older than `keep_s` (nobody reads them by then)."""
        oldest_ms = (self._clock() - keep_s) * 1000
        for slot, slot_fields in taken.items():
            if slot >= oldest_ms:
                _add(self._retry.setdefault(slot, {}), slot_fields)


def fields(counts: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, n in counts.items():
        if isinstance(key, str):
            out[key] = out.get(key, 0) + n
            continue
        endpoint, bucket = key
        out[f"{endpoint}:{bucket}"] = n
        out[f"{endpoint}:n"] = out.get(f"{endpoint}:n", 0) + n
    return out


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for field, n in more.items():
        into[field] = into.get(field, 0) + n


class OpsSeries:
    """The Redis side: per-slot hashes every process adds to, and the workers'
    lag reports."""

    def __init__(self, redis, keys: Keys):
        self.redis = redis
        self.keys = keys

    async def flush(self, counts: OpsCounts) -> int:
        """One pipelined round trip: HINCRBY per field and an EXPIRE per slot.
        Returns the fields written. On a Redis error the counts are kept for the
        next flush and the error raised (engine.clock.every logs it); a flush
        cut off mid-way may then count part of that second twice."""
        taken = counts.take()
        if not taken:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        written = 0
        for slot, slot_fields in taken.items():
            key = self.keys.ops_slot(slot // 1000)
            for field, n in slot_fields.items():
                pipe.hincrby(key, field, n)
                written += 1
            pipe.expire(key, OPS_SLOT_TTL_S)
        try:
            await pipe.execute()
        except Exception:
            counts.put_back(taken, OPS_SLOT_TTL_S)
            raise
        return written

    async def read(self, first_slot_ms: int, last_slot_ms: int) -> dict[int, dict[str, int]]:
        """Every slot's counts from first to last (start ms), in one round trip."""
        slots = list(range(first_slot_ms, last_slot_ms + 1, STEP_MS))
        pipe = self.redis.pipeline(transaction=False)
        for slot in slots:
            pipe.hgetall(self.keys.ops_slot(slot // 1000))
        replies = await pipe.execute()
        return {slot: {_text(field): int(n) for field, n in reply.items()}
                for slot, reply in zip(slots, replies, strict=True) if reply}

    async def report_lag(self, lags: Mapping[int, int], now_ms: int) -> None:
        """A Kafka worker's lag on the partitions it holds, "<records> <ms>"
        per partition: each worker writes its own, the latest report wins."""
        if not lags:
            return
        key = self.keys.ops_kafka_lag()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={str(p): f"{lag} {now_ms}" for p, lag in lags.items()})
        pipe.expire(key, OPS_LAG_TTL_S)
        await pipe.execute()

    async def lag(self, now_ms: int, fresh_ms: int = 10_000) -> dict[str, int] | None:
        """Per partition, the records not applied yet as last reported within
        `fresh_ms` (a partition no worker reported lately is left out: its
        worker is gone or it moved). None when no worker reported."""
        reports = await self.redis.hgetall(self.keys.ops_kafka_lag())
        if not reports:
            return None
        out = {}
        for partition, value in reports.items():
            lag, _, at = _text(value).partition(" ")
            if now_ms - int(at) <= fresh_ms:
                out[_text(partition)] = int(lag)
        return dict(sorted(out.items(), key=lambda item: int(item[0])))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value

