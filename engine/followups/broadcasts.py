"""Broadcasts carried out: when one's time comes (or an operator starts it),
one process walks its tracked segment a chunk at a time and queues one message
per member in the due queue, due at the member's own moment and paced to the
broadcast's rate. The scheduler sends them like any journey's message, under
the contact policy (consent, suppression, caps, quiet hours), and counts them
for the broadcast's KPIs. Message ids are `bc:<broadcast>:<person>`, so a walk
done again (a crash, a restart) queues nothing twice; a cancel drops what is
still queued and stops the walk."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from engine.catalog.broadcasts import MESSAGE_PREFIX, Broadcast
from engine.catalog.rules import Facts
from engine.clock import now_ms
from engine.followups.due_queue import DueQueue
from engine.followups.kpis import KpiStore, KpiTally
from engine.followups.message import Message
from engine.followups.pacing import Pacer
from engine.followups.transitions import held_out, message_body, template_values
from engine.policy import ContactState
from engine.profile import decode_profile
from engine.store.keys import BROADCAST_LEASE_MS, Keys

log = logging.getLogger("attimo.broadcasts")

SCHEDULED, RUNNING, DONE, CANCELLED = "scheduled", "running", "done", "cancelled"
WALK_CHUNK = 500  # members read, judged and queued per round of the walk
DONE_CHECK_MS = 60_000  # how often a walked broadcast's queue is searched for what is left
PERIOD_S = 1.0  # how often run_scheduler looks for broadcasts to start, walk or finish

# KEYS[1] the broadcast's state HASH
# ARGV[1] the new state, ARGV[2] the states it may come from (space-separated;
# no hash at all is "scheduled"), ARGV[3] now ms, ARGV[4] the field stamped with it
# Returns the state before: the change was made when it is one of ARGV[2].
TRANSITION = """
local before = redis.call('HGET', KEYS[1], 'state') or 'scheduled'
for allowed in string.gmatch(ARGV[2], '%S+') do
  if allowed == before then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], ARGV[4], ARGV[3])
    return before
  end
end
return before
"""

# KEYS[1] the broadcast's state HASH
# ARGV[1] ms the walk ended, ARGV[2] the latest due time it queued
# The walk is over: `walked`, and `last_due` only ever moved later.
WALKED = """
redis.call('HSET', KEYS[1], 'walked', ARGV[1])
local before = tonumber(redis.call('HGET', KEYS[1], 'last_due') or '0')
if tonumber(ARGV[2]) > before then redis.call('HSET', KEYS[1], 'last_due', ARGV[2]) end
return 1
"""


class Broadcasts:
    """The broadcasts of the catalog in force against Redis. Stores come from
    the process's composition root (engine/runtime.py)."""

    def __init__(self, redis, keys: Keys, queue: DueQueue, membership, kpis: KpiStore, contacts, *,
                 clock: Callable[[], int] = now_ms, default_zone: str = "UTC", owner: str | None = None,
                 chunk: int = WALK_CHUNK):
        self.redis = redis
        self.keys = keys
        self.queue = queue
        self.membership = membership
        self.kpis = kpis
        self.contacts = contacts  # ContactStore: outcomes of members no message can reach
        self.clock = clock
        self.default_zone = default_zone  # for members who sent no time zone
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        self.chunk = chunk
        self._transition = redis.register_script(TRANSITION)
        self._walked = redis.register_script(WALKED)

    # -- state ----------------------------------------------------------------------

    async def states(self, ids: list[str]) -> dict[str, dict]:
        pipe = self.redis.pipeline(transaction=False)
        for broadcast in ids:
            pipe.hgetall(self.keys.broadcast_state(broadcast))
        return {broadcast: _decoded(raw) for broadcast, raw in zip(ids, await pipe.execute(), strict=True)}

    async def _state_of(self, broadcast: str) -> str:
        state = await self.redis.hget(self.keys.broadcast_state(broadcast), "state")
        return _text(state) if state is not None else SCHEDULED

    async def _move(self, broadcast: str, to: str, allowed: tuple[str, ...], stamp: str) -> str:
        """The state before; the move happened when it is in `allowed`."""
        before = await self._transition(keys=[self.keys.broadcast_state(broadcast)],
                                        args=[to, " ".join(allowed), self.clock(), stamp])
        return _text(before)

    async def start(self, broadcast: Broadcast) -> str:
        """Start now, before its time (an operator's call): the state before.
        The walk itself is done by the scheduler process's next turn."""
        return await self._move(broadcast.id, RUNNING, (SCHEDULED,), "started")

    async def cancel(self, broadcast: Broadcast) -> tuple[str, int]:
        """Stop it: the walk stops at its next chunk, and every message of it
        still queued (or claimed, before its send began) is dropped. Returns the
        state before and how many messages were dropped; a broadcast already
        done is left as it is."""
        before = await self._move(broadcast.id, CANCELLED, (SCHEDULED, RUNNING), "cancelled")
        if before == DONE:
            return before, 0
        dropped = 0
        async for ids in self.queue.find(f"{MESSAGE_PREFIX}{broadcast.id}:"):
            dropped += await self.queue.cancel_ids(
                [(message_id, message_id[len(MESSAGE_PREFIX) + len(broadcast.id) + 1:], broadcast.channel)
                 for message_id in ids], self.clock())
        return before, dropped

    # -- the background turn --------------------------------------------------------

    async def run_once(self, catalog) -> None:
        """Start what is due, walk what is started and not walked (this process
        holding the walk's lease), and mark done what has nothing left queued."""
        broadcasts = list(catalog.broadcasts.values())
        if not broadcasts:
            return
        states = await self.states([b.id for b in broadcasts])
        for broadcast in broadcasts:
            state = states[broadcast.id]
            now = self.clock()
            if (state["state"] == SCHEDULED and broadcast.start_ms is not None and now >= broadcast.start_ms
                    and await self._move(broadcast.id, RUNNING, (SCHEDULED,), "started") == SCHEDULED):
                state["state"] = RUNNING
            if state["state"] != RUNNING:
                continue
            if not state.get("walked"):
                if await self._lease(broadcast.id):
                    await self.walk(broadcast, catalog)
            else:
                await self._finish_if_sent(broadcast, state, now)

    async def _lease(self, broadcast: str) -> bool:
        key = self.keys.broadcast_lease(broadcast)
        if await self.redis.set(key, self.owner, nx=True, px=BROADCAST_LEASE_MS):
            return True
        holder = await self.redis.get(key)
        if holder is not None and _text(holder) == self.owner:
            await self.redis.pexpire(key, BROADCAST_LEASE_MS)
            return True
        return False

    async def walk(self, broadcast: Broadcast, catalog) -> bool:
        """Queue the broadcast for every member; False when it stopped early
        (cancelled, or the lease went to another process)."""
        template = catalog.journeys.templates[broadcast.template]
        pacer = Pacer(broadcast.rate)
        began = self.clock()  # a moment already past is paced from now
        last_due = 0
        async for people in self.membership.walk(broadcast.segment, self.chunk):
            if not await self._lease(broadcast.id) or await self._state_of(broadcast.id) != RUNNING:
                return False
            queued, last = await self._queue_chunk(broadcast, catalog, template, people, pacer, began)
            last_due = max(last_due, last)
            if await self._state_of(broadcast.id) == CANCELLED:
                # A cancel that searched the queue before these were queued did not see them.
                await self.queue.cancel_ids([(m.id, m.person, m.channel) for m in queued], self.clock())
                return False
        await self._walked(keys=[self.keys.broadcast_state(broadcast.id)], args=[self.clock(), last_due])
        log.info("broadcast %s: %s walked, last message due at %d", broadcast.id, broadcast.segment, last_due)
        return True

    async def _queue_chunk(self, broadcast: Broadcast, catalog, template, people: list[str], pacer: Pacer,
                           began: int) -> tuple[list[Message], int]:
        now = self.clock()
        read = self.redis.pipeline(transaction=False)
        for person in people:
            read.get(self.keys.contact(person))
            read.get(self.keys.profile(person))
        raws = await read.execute()
        messages: list[Message] = []
        entries: list[tuple[str, bool, int]] = []  # person, held out, due
        dropped: list[tuple[str, str]] = []  # person, reason
        for n, person in enumerate(people):
            contact, profile = ContactState.decode(raws[2 * n]), decode_profile(raws[2 * n + 1])
            moment = max(broadcast.due_ms(contact.tz, self.default_zone), began)
            if held_out(person, broadcast):
                entries.append((person, True, moment))
                continue
            values = template_values(person, Facts(catalog, profile, {}, now), template, {}, broadcast=broadcast.id)
            body = message_body(template, broadcast.channel, values, {"broadcast": broadcast.id})
            if isinstance(body, str):
                dropped.append((person, body))
                continue
            due = pacer.take(moment)
            messages.append(Message(broadcast.message_id(person), person, broadcast.channel, due,
                                    broadcast.template, broadcast.purpose, body))
            entries.append((person, False, due))
        new = await self.queue.schedule_many(messages)
        pipe, tally = self.redis.pipeline(transaction=False), KpiTally()
        for person, held, due in entries:
            self.kpis.broadcast_entry(pipe, tally, broadcast.id, person, held, due, now)
        for person, reason in dropped:
            message_id = broadcast.message_id(person)
            self.contacts.outcome_commands(pipe, person, {
                "id": message_id, "channel": broadcast.channel, "template": broadcast.template,
                "broadcast": broadcast.id, "status": "dropped", "reason": reason, "at": now})
            self.kpis.outcome(tally, broadcast.channel, None, "dropped", message_id)
        tally.into(pipe)
        if any(new):
            pipe.hincrby(self.keys.broadcast_state(broadcast.id), "queued", sum(new))
        await pipe.execute()
        return messages, max((m.due_ms for m in messages), default=0)

    async def _finish_if_sent(self, broadcast: Broadcast, state: dict, now: int) -> None:
        """Done once the last due time has passed and none of its messages is
        left in the queue (a quiet-hours delay keeps it running). Searching the
        queue costs a scan, so at most every DONE_CHECK_MS."""
        if now < int(state.get("last_due", 0)) or now - int(state.get("checked", 0)) < DONE_CHECK_MS:
            return
        await self.redis.hset(self.keys.broadcast_state(broadcast.id), "checked", now)
        async for _ in self.queue.find(f"{MESSAGE_PREFIX}{broadcast.id}:"):
            return
        if await self._move(broadcast.id, DONE, (RUNNING,), "finished") == RUNNING:
            log.info("broadcast %s: done", broadcast.id)

    # -- reading ----------------------------------------------------------------------

    async def report(self, broadcasts: list[Broadcast], channels: list[str]) -> list[dict]:
        """Each broadcast's progress and its KPIs (the same as a journey's)."""
        states = await self.states([b.id for b in broadcasts])
        kpis = (await self.kpis.report([], channels, [], [b.id for b in broadcasts]))["broadcasts"]
        out = []
        for broadcast in broadcasts:
            state, counted = states[broadcast.id], kpis[broadcast.id]
            out.append({**broadcast.describe(), "state": state["state"],
                        "started_ms": _int(state.get("started")), "walked_ms": _int(state.get("walked")),
                        "finished_ms": _int(state.get("finished")), "cancelled_ms": _int(state.get("cancelled")),
                        "last_due_ms": _int(state.get("last_due")),
                        "queued": int(state.get("queued", 0)), "sent": counted["sent"], "kpis": counted})
        return out


def _decoded(raw: dict) -> dict:
    state = {_text(k): _text(v) for k, v in raw.items()}
    state.setdefault("state", SCHEDULED)
    return state


def _int(value) -> int | None:
    return int(value) if value is not None else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
