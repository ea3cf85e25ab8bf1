"""Erasing a person: what is queued for them, then every key kept about them,
then their dead letters. Their suppressions stay."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from engine.followups.due_queue import DueQueue
from engine.store.code_pools import CodePools
from engine.store.keys import Keys
from engine.store.people_index import PeopleIndex


async def erase_person(redis, keys: Keys, queue: DueQueue, person: str, channels: Sequence[str],
                       now_ms: int, codes: CodePools | None = None, pools: Sequence[str] = (),
                       index: PeopleIndex | None = None) -> dict[str, int]:
    """Everything kept about one person: first what is queued for them on each
    of `channels` (the due queue finds a person's messages by channel only, so
    the caller names every channel one may wait on: personal ones, journey
    timers, operator webhooks), so no send of theirs starts after; then their
    keys (profile, dedupe ids, staging, contact state and outcomes, journeys,
    inbox, devices, what decisions did to them) and those of the anonymous ids
    merged into them, with their entries in the email and phone lookup index,
    and the discount codes kept for them in `pools` (the code stays used); then
    their dead letters. Their suppressions stay: those keep
    them from being contacted again. Returns how many of each."""
    cancelled = 0
    for channel in channels:
        cancelled += await queue.cancel(person, channel, now_ms)
    # The anonymous ids merged into them: what is left under those (dedupe
    # ids, contact state given before login) is theirs too. One call each: a
    # person's keys share one slot.
    merged = [m.decode() if isinstance(m, bytes) else m for m in await redis.smembers(keys.merged(person))]
    index = index or PeopleIndex(redis, keys)
    removed = 0
    for someone in [*merged, person]:
        await index.forget(someone)  # before their keys: their list of entries is one of them
        removed += await redis.delete(*keys.of_person(someone))
    forgotten = await codes.forget(person, pools) if codes is not None else 0
    # A dead letter holds the whole message (address, traits). Removed by
    # value: entries pushed or trimmed meanwhile are left alone.
    dead = []
    for raw in await redis.lrange(keys.dead_letters(), 0, -1):
        try:
            if msgspec.json.decode(raw)["message"]["person"] == person:
                dead.append(raw)
        except (msgspec.DecodeError, KeyError, TypeError):
            continue  # not the scheduler's shape: not this person's to judge
    if dead:
        pipe = redis.pipeline(transaction=False)
        for raw in dead:
            pipe.lrem(keys.dead_letters(), 0, raw)
        await pipe.execute()
    return {"keys": removed, "cancelled": cancelled, "dead_letters": len(dead), "codes": forgotten}
