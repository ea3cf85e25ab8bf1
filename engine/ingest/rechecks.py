"""Segment membership that time alone changes: a person whose window empties or
whose idle spell begins leaves (or enters) a tracked segment with no event of
theirs. The pipeline notes when that may next happen for each person it
evaluates (MembershipStore.schedule); this claims those that are due and runs
them through the pipeline again, so an exit by time is recorded, delivered and
seen by journeys exactly like one caused by an event."""

from __future__ import annotations

import logging

from engine.audiences.membership import EXIT, Change
from engine.clock import now_ms as clock_now
from engine.events import SEGMENT_RECHECK, Event
from engine.ingest.pipeline import Pipeline

log = logging.getLogger("attimo.rechecks")
RECHECK_BATCH = 500
RECHECK_LEASE_MS = 60_000  # a claimed recheck not done by then is claimed again
RECHECK_PERIOD_S = 1.0


async def recheck_due(pipeline: Pipeline, now_ms: int | None = None, batch: int = RECHECK_BATCH) -> int:
    """Recheck everyone due by `now_ms`; returns how many were rechecked."""
    now_ms = clock_now() if now_ms is None else now_ms
    catalog = pipeline.catalogs.current
    tracked = sorted(catalog.audiences.tracked)
    membership, store = pipeline.membership, pipeline.store
    done = 0
    while True:
        people = await membership.claim_due(now_ms, batch, RECHECK_LEASE_MS)
        if not people:
            return done
        done += len(people)
        pipe = store.redis.pipeline(transaction=False)
        for person in people:
            pipe.exists(store.keys.profile(person))
        alive = [person for person, there in zip(people, await pipe.execute(), strict=True) if there]
        gone = sorted(set(people) - set(alive))
        if gone:  # the profile expired: the person leaves whatever tracked segment holds them
            await _expired(pipeline, gone, tracked)
        if alive:
            await pipeline.apply([Event(f"{SEGMENT_RECHECK}:{person}:{now_ms}", SEGMENT_RECHECK, person, now_ms,
                                        trusted=True) for person in alive], now_ms)


async def _expired(pipeline: Pipeline, people: list[str], tracked: list[str]) -> None:
    membership = pipeline.membership
    found = []
    for segment in tracked:
        for person in people:
            if await membership.is_member(segment, person):
                found.append(Change(person, segment, EXIT, "expired"))
    if found:
        await membership.record(found)
    pipe = pipeline.store.redis.pipeline(transaction=False)
    membership.schedule(pipe, dict.fromkeys(people))
    await pipe.execute()
