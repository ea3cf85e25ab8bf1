"""A person's contact state in Redis: consent, time zone, recent sends and
outcomes, the suppression list. A verdict of the pure contact policy
(engine/policy.py) that allows a send is recorded in the same optimistic
transaction, so concurrent senders cannot both pass a cap."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from engine.clock import now_ms
from engine.errors import StoreContention
from engine.events import KNOWN
from engine.followups.message import Message
from engine.policy import (
    PERSONAL_CHANNELS,
    ContactPolicy,
    ContactState,
    Verdict,
    absorb,
    judge,
    record_send,
    set_consent,
    suppression_address,
)
from engine.store.client import COMPARE_AND_SET, MAX_OPTIMISTIC_ATTEMPTS, run_commands, run_scripts
from engine.store.keys import CONTACT_OUTCOMES_MAX, CONTACT_STATE_TTL_S, Keys


def message_addresses(message: Message) -> tuple[str, ...]:
    """What the suppression list may name for a message besides its person: its
    `to` as written and normalised (an entry for every channel) and, normalised,
    as "<channel>:<address>" (an entry for that channel, put by the API)."""
    to = message.body.get("to")
    if not isinstance(to, str) or not to:
        return ()
    normal = suppression_address(message.channel, to)
    if normal is None:
        return (to,)
    return tuple(dict.fromkeys((to, normal, f"{message.channel}:{normal}")))


def person_names(person: str) -> tuple[str, ...]:
    """How the suppression list may name a person: as now (`u:<id>`) and, for a
    known person, bare, as entries made before the two identity spaces did."""
    return (person, person[2:]) if person.startswith(KNOWN) else (person,)


class ContactStore:
    """Reads and writes a person's contact state; a verdict that allows a send is
    recorded in the same optimistic transaction, so concurrent senders cannot
    both pass a cap."""

    def __init__(self, redis: Redis, keys: Keys | None = None, *, ttl_s: int = CONTACT_STATE_TTL_S):
        self.redis = redis
        self.keys = keys or Keys()
        self.ttl_s = ttl_s
        self._cas = redis.register_script(COMPARE_AND_SET)

    async def load(self, person: str) -> ContactState:
        return ContactState.decode(await self.redis.get(self.keys.contact(person)))

    async def update(self, person: str, change) -> ContactState:
        """Apply `change(state)` atomically (consent events, time zone)."""
        key = self.keys.contact(person)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_OPTIMISTIC_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    state = ContactState.decode(await pipe.get(key))
                    change(state)
                    pipe.multi()
                    pipe.set(key, state.encode(), ex=self.ttl_s)
                    await pipe.execute()
                    return state
                except WatchError:
                    continue
            raise StoreContention(f"{key} kept changing: gave up after {MAX_OPTIMISTIC_ATTEMPTS} attempts")

    async def absorb(self, person: str, anonymous: str) -> bool:
        """After an identity merge: the anonymous visitor's consent, time zone and
        send history join the known person's, once (the anonymous state is
        deleted after; a crash in between folds the same state again, which
        changes nothing). False if the visitor had no contact state."""
        raw = await self.redis.get(self.keys.contact(anonymous))
        if not raw:
            return False
        visitor = ContactState.decode(raw)
        await self.update(person, lambda state: absorb(state, visitor))
        await self.redis.delete(self.keys.contact(anonymous))
        return True

    async def set_consent(self, person: str, channel: str, purpose: str, granted: bool,
                          at_ms: int | None = None, *, source: str = "event") -> bool:
        """set_consent() atomically; False if a later choice was already in force.
        `source` names where the choice came from in the consent history: a
        consent event (the default) or an unsubscribe link."""
        applied = []
        recorded = now_ms()
        await self.update(person, lambda s: applied.append(
            set_consent(s, channel, purpose, granted, at_ms, source=source, recorded_ms=recorded)))
        return applied[-1]

    async def set_tz(self, person: str, tz: str) -> None:
        def change(state: ContactState) -> None:
            state.tz = tz
        await self.update(person, change)

    async def suppress(self, who: str) -> None:
        await self.redis.sadd(self.keys.suppressed(), who)

    async def suppress_address(self, channel: str, address: str) -> bool:
        """Suppress a normalised address on one channel (suppression_address);
        False if it already was. The send-time check reads the entry in the
        suppression set (sent first); the channel's index only lists it."""
        pipe = self.redis.pipeline(transaction=False)  # two slots on a Cluster: no MULTI
        self.suppress_commands(pipe, channel, address)
        added, _ = await pipe.execute()
        return bool(added)

    def suppress_commands(self, pipe, channel: str, address: str) -> None:
        """Queue the suppression of a normalised address into `pipe`."""
        pipe.sadd(self.keys.suppressed(), f"{channel}:{address}")
        pipe.zadd(self.keys.suppressed_on(channel), {address: 0})

    async def unsuppress_address(self, channel: str, address: str) -> bool:
        """Lift an address's suppression on one channel; False if it had none."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(self.keys.suppressed(), f"{channel}:{address}")
        pipe.zrem(self.keys.suppressed_on(channel), address)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def suppressed_addresses(self, channel: str, after: str, limit: int) -> tuple[list[str], int]:
        """A page of a channel's suppressed addresses in order, those after
        `after` ("" from the start), and how many the channel has."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebylex(self.keys.suppressed_on(channel), f"({after}" if after else "-", "+", 0, limit)
        pipe.zcard(self.keys.suppressed_on(channel))
        page, total = await pipe.execute()
        return [address.decode() for address in page], total

    async def check_and_reserve(self, policy: ContactPolicy, *, person: str, channel: str,
                                purpose: str, template: str, now_ms: int, message_id: str = "",
                                addresses: tuple[str, ...] = ()) -> Verdict:
        """Judge a message and, if allowed, count it as sent, in one transaction."""
        key = self.keys.contact(person)
        candidates = (*person_names(person), *addresses)
        flags = await self.redis.smismember(self.keys.suppressed(), candidates)
        suppressed = any(flags)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_OPTIMISTIC_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    state = ContactState.decode(await pipe.get(key))
                    verdict = judge(policy, state, channel=channel, purpose=purpose,
                                    template=template, now_ms=now_ms, suppressed=suppressed,
                                    message_id=message_id)
                    if verdict.action != "allow" or channel not in PERSONAL_CHANNELS:
                        await pipe.unwatch()
                        return verdict
                    record_send(state, channel=channel, template=template, now_ms=now_ms,
                                message_id=message_id)
                    pipe.multi()
                    pipe.set(key, state.encode(), ex=self.ttl_s)
                    await pipe.execute()
                    return verdict
                except WatchError:
                    continue
            raise StoreContention(f"{key} kept changing: gave up after {MAX_OPTIMISTIC_ATTEMPTS} attempts")

    async def check_and_reserve_many(self, policy: ContactPolicy, messages: list[Message],
                                     now_ms: int) -> list[Verdict]:
        """check_and_reserve for a scheduler's batch in two round trips instead of
        about five per message: read every state (and the suppression list) at
        once, judge each message in order against its person's state as the
        earlier ones changed it, then write each changed state by compare-and-set.
        A person whose state changed meanwhile is judged again, one message at a
        time, through check_and_reserve."""
        if not messages:
            return []
        people = list(dict.fromkeys(m.person for m in messages))
        addresses = {m.id: message_addresses(m) for m in messages}
        candidates = list(dict.fromkeys([*(n for p in people for n in person_names(p)),
                                         *(a for found in addresses.values() for a in found)]))
        flags, *raws = await run_commands(self.redis, [("SMISMEMBER", self.keys.suppressed(), *candidates),
                                                       *(("GET", self.keys.contact(person)) for person in people)])
        suppressed = {c for c, flag in zip(candidates, flags, strict=True) if flag}
        read = dict(zip(people, raws, strict=True))
        states = {person: ContactState.decode(raw) for person, raw in read.items()}
        verdicts, changed = [], {}
        for m in messages:
            state = states[m.person]
            verdict = judge(policy, state, channel=m.channel, purpose=m.purpose, template=m.template,
                            now_ms=now_ms, message_id=m.id,
                            suppressed=any(n in suppressed for n in (*person_names(m.person), *addresses[m.id])))
            if verdict.action == "allow" and m.channel in PERSONAL_CHANNELS:
                record_send(state, channel=m.channel, template=m.template, now_ms=now_ms, message_id=m.id)
                changed[m.person] = state
            verdicts.append(verdict)
        if not changed:
            return verdicts
        written = await run_scripts(self.redis, [
            (self._cas, [self.keys.contact(person)], [read[person] or b"", state.encode(), self.ttl_s])
            for person, state in changed.items()])
        raced = {person for person, ok in zip(changed, written, strict=True) if not ok}
        for n, m in enumerate(messages):
            if m.person in raced:
                verdicts[n] = await self.check_and_reserve(
                    policy, person=m.person, channel=m.channel, purpose=m.purpose, template=m.template,
                    now_ms=now_ms, message_id=m.id, addresses=addresses[m.id])
        return verdicts

    def outcome_commands(self, pipe, person: str, outcome: dict) -> None:
        """Queue the commands that keep one outcome into `pipe` (batched writes)."""
        key = self.keys.contact_outcomes(person)
        pipe.lpush(key, orjson.dumps(outcome))
        pipe.ltrim(key, 0, CONTACT_OUTCOMES_MAX - 1)
        pipe.expire(key, self.ttl_s)

    async def record_outcome(self, person: str, outcome: dict) -> None:
        """Keep the person's recent message outcomes (sent, delayed, dropped...)."""
        pipe = self.redis.pipeline(transaction=True)
        self.outcome_commands(pipe, person, outcome)
        await pipe.execute()

    async def outcomes(self, person: str) -> list[dict]:
        return [orjson.loads(raw) for raw in await self.redis.lrange(self.keys.contact_outcomes(person), 0, -1)]

