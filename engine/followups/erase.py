"""Erasing a person: everything the due queue names of them, then every key
kept about them, then their dead letters. Their suppressions stay."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from engine.followups.due_queue import DueQueue
from engine.store.code_pools import CodePools
from engine.store.keys import Keys
from engine.store.people_index import PeopleIndex


async def erase_person(redis, keys: Keys, queue: DueQueue, person: str, channels: Sequence[str],
                       codes: CodePools | None = None, pools: Sequence[str] = (),
                       index: PeopleIndex | None = None) -> dict[str, int]:
    """Everything kept about one person and the anonymous ids merged into them:
    first what the due queue names of them (`channels`: every channel one of
    their messages may wait on: personal ones, journey timers, operator
    webhooks), so no send of theirs starts after, and neither their message ids
    nor their send and attempt marks stay behind, not even in done; then their
    keys (profile, dedupe ids, staging, contact state and outcomes, journeys,
    inbox, devices, what decisions did to them, their entries in the email
    and phone lookup index); the discount codes kept for them in `pools` (the code stays used); then their dead letters. Their
    suppressions stay: those keep them from being contacted again. The work is
    bounded by the person's own data, never by the queue's or the store's size,
    except the dead letters (a list capped at DEAD_LETTERS_MAX). Returns how
    many of each."""
    # The anonymous ids merged into them: what is left under those (dedupe
    # ids, contact state given before login, timers queued for the visitor)
    # is theirs too. One call each: a person's keys share one slot.
    merged = [m.decode() if isinstance(m, bytes) else m for m in await redis.smembers(keys.merged(person))]
    everyone = [*merged, person]
    cancelled = 0
    for someone in everyone:
        cancelled += await queue.erase(someone, channels)
    index = index or PeopleIndex(redis, keys)
    removed = 0
    for someone in everyone:
        await index.forget(someone)  # before their keys: their list of entries is one of them
        removed += await redis.delete(*keys.of_person(someone))
    forgotten = await codes.forget(person, pools) if codes is not None else 0
    dead = await _forget_dead_letters(redis, keys, set(everyone))
    return {"keys": removed, "cancelled": cancelled, "dead_letters": dead, "codes": forgotten}


async def _forget_dead_letters(redis, keys: Keys, people: set[str]) -> int:
    """A dead letter holds the whole message (address, traits). Removed by
    value: entries pushed or trimmed meanwhile are left alone."""
    dead = []
    for raw in await redis.lrange(keys.dead_letters(), 0, -1):
        try:
            if msgspec.json.decode(raw)["message"]["person"] in people:
                dead.append(raw)
        except (msgspec.DecodeError, KeyError, TypeError):
            continue  # not the scheduler's shape: not this person's to judge
    if dead:
        pipe = redis.pipeline(transaction=False)
        for raw in dead:
            pipe.lrem(keys.dead_letters(), 0, raw)
        await pipe.execute()
    return len(dead)
