"""Who is in each tracked segment now, kept as people enter and leave.

Members live in SEGMENT_SHARDS sets per segment (engine/store/keys.py), each
with a stream of its entries and exits in the same slot: one script adds or
removes a member and records the change only when the set changed, so a
retried batch records nothing twice and a change is never recorded without
the membership it describes. The recheck schedule says when time alone may
next move a person (a window emptying), so nobody scans every profile."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from engine.audiences.identifiers import EMAIL_TRAIT, PHONE_TRAIT, hashed_email, hashed_phone
from engine.store.client import run_scripts
from engine.store.keys import SEGMENT_CHANGES_MAX, SEGMENT_SHARDS, Keys

ENTER, EXIT = "+", "-"

# KEYS[1] members  KEYS[2] changes
# ARGV: op (+|-), person, segment, reason, stream max length[, email sha256, phone
# sha256: the identifiers of someone being erased, whose card will be gone
# when the removal is delivered]
CHANGE = r"""
local n
if ARGV[1] == '+' then n = redis.call('SADD', KEYS[1], ARGV[2]) else n = redis.call('SREM', KEYS[1], ARGV[2]) end
if n == 1 then
  local fields = {'s', ARGV[3], 'p', ARGV[2], 'o', ARGV[1], 'r', ARGV[4]}
  if ARGV[6] and ARGV[6] ~= '' then table.insert(fields, 'e'); table.insert(fields, ARGV[6]) end
  if ARGV[7] and ARGV[7] ~= '' then table.insert(fields, 'ph'); table.insert(fields, ARGV[7]) end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
end
return n
"""

# Take up to ARGV[2] people whose recheck is due by ARGV[1], pushing their entry
# ARGV[3] ms on: a process that dies before rechecking leaves them to the next.
# KEYS[1] rechecks
CLAIM = r"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, person in ipairs(due) do redis.call('ZADD', KEYS[1], later, person) end
return due
"""


def shard_of(person: str) -> int:
    return zlib.crc32(person.encode()) % SEGMENT_SHARDS


@dataclass(frozen=True, slots=True)
class Change:
    person: str
    segment: str
    op: str  # ENTER or EXIT
    reason: str  # event, time, consent, erased


class MembershipStore:
    def __init__(self, redis, keys: Keys, *, phone_region: str | None = None, card_ttl_s: int = 400 * 86_400,
                 max_changes: int = SEGMENT_CHANGES_MAX):
        self.redis = redis
        self.keys = keys
        self.phone_region = phone_region
        self.card_ttl_s = card_ttl_s
        self.max_changes = max_changes
        self._change = redis.register_script(CHANGE)
        self._claim = redis.register_script(CLAIM)

    async def record(self, changes: Sequence[Change]) -> list[Change]:
        """Apply entries and exits; returns those that changed a set (the others
        were already recorded, by an earlier try of the same batch)."""
        calls = []
        for change in changes:
            shard = shard_of(change.person)
            keys = [self.keys.segment_members(change.segment, shard), self.keys.segment_changes(change.segment, shard)]
            calls.append((self._change, keys, [change.op, change.person, change.segment, change.reason,
                                                self.max_changes]))
        done = await run_scripts(self.redis, calls)
        return [change for change, n in zip(changes, done, strict=True) if n]

    async def erase(self, person: str, tracked: Sequence[str]) -> list[str]:
        """Take `person` out of every tracked segment before their data goes,
        each removal carrying their hashed identifiers so destinations can still
        drop them; returns the segments they were in."""
        (email, phone, _), = await self.cards([person])
        shard = shard_of(person)
        calls = [(self._change, [self.keys.segment_members(segment, shard), self.keys.segment_changes(segment, shard)],
                  [EXIT, person, segment, "erased", self.max_changes, email or "", phone or ""])
                 for segment in tracked]
        removed = await run_scripts(self.redis, calls)
        await self.redis.zrem(self.keys.segment_rechecks(shard), person)
        return [segment for segment, n in zip(tracked, removed, strict=True) if n]

    def card_commands(self, pipe, person: str, traits: dict) -> bool:
        """Queue the update of a person's audience card (Keys.audience_card) from
        traits an event sets (None: unset); False when they name no email or phone."""
        fields = {"e": (EMAIL_TRAIT, hashed_email), "p": (PHONE_TRAIT, lambda v: hashed_phone(v, self.phone_region))}
        touched = False
        key = self.keys.audience_card(person)
        for field_name, (trait, hashed) in fields.items():
            if trait not in traits:
                continue
            touched = True
            digest = hashed(traits[trait])
            if digest is None:
                pipe.hdel(key, field_name)
            else:
                pipe.hset(key, field_name, digest)
        if touched:
            pipe.expire(key, self.card_ttl_s)
        return touched

    async def set_advertising(self, person: str, granted: bool, segments: Sequence[str]) -> None:
        """Advertising consent given or withdrawn: the card says so, and each
        tracked segment the person is in records it, so destinations add or
        remove them (`reason` consent)."""
        pipe = self.redis.pipeline(transaction=False)
        key = self.keys.audience_card(person)
        pipe.hset(key, "a", "1" if granted else "0")
        pipe.expire(key, self.card_ttl_s)
        op = ENTER if granted else EXIT
        for segment in segments:
            pipe.xadd(self.keys.segment_changes(segment, shard_of(person)),
                      {"s": segment, "p": person, "o": op, "r": "consent"}, maxlen=self.max_changes, approximate=True)
        await pipe.execute()

    async def cards(self, people: Sequence[str]) -> list[tuple[str | None, str | None, bool]]:
        """(email sha256, phone sha256, advertising consent) of each person."""
        pipe = self.redis.pipeline(transaction=False)
        for person in people:
            pipe.hmget(self.keys.audience_card(person), "e", "p", "a")
        return [(_text(e) if e else None, _text(p) if p else None, a == b"1" or a == "1")
                for e, p, a in await pipe.execute()]

    def schedule(self, pipe, person: str, at_ms: int | None) -> None:
        """When time alone may next change `person`'s segments (None: never)."""
        key = self.keys.segment_rechecks(shard_of(person))
        if at_ms is None:
            pipe.zrem(key, person)
        else:
            pipe.zadd(key, {person: at_ms})

    async def claim_due(self, now_ms: int, limit: int, lease_ms: int) -> list[str]:
        per_shard = max(1, limit // SEGMENT_SHARDS)
        calls = [(self._claim, [self.keys.segment_rechecks(shard)], [now_ms, per_shard, lease_ms])
                 for shard in range(SEGMENT_SHARDS)]
        claimed = await run_scripts(self.redis, calls)
        return [p.decode() if isinstance(p, bytes) else p for people in claimed for p in people]

    async def sizes(self, segments: Sequence[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for segment in segments:
            for shard in range(SEGMENT_SHARDS):
                pipe.scard(self.keys.segment_members(segment, shard))
        counts = await pipe.execute()
        return {segment: sum(counts[i * SEGMENT_SHARDS:(i + 1) * SEGMENT_SHARDS])
                for i, segment in enumerate(segments)}

    async def last_changes(self, segments: Sequence[str]) -> dict[str, int | None]:
        """Ms of each segment's latest recorded entry or exit (its stream id)."""
        pipe = self.redis.pipeline(transaction=False)
        for segment in segments:
            for shard in range(SEGMENT_SHARDS):
                pipe.xrevrange(self.keys.segment_changes(segment, shard), count=1)
        tails = await pipe.execute()
        result = {}
        for i, segment in enumerate(segments):
            stamps = [int(entry[0][0].split(b"-")[0]) for entry in tails[i * SEGMENT_SHARDS:(i + 1) * SEGMENT_SHARDS]
                      if entry]
            result[segment] = max(stamps) if stamps else None
        return result

    async def is_member(self, segment: str, person: str) -> bool:
        return bool(await self.redis.sismember(self.keys.segment_members(segment, shard_of(person)), person))

    async def page(self, segment: str, cursor: str | None, count: int) -> tuple[list[str], str | None]:
        """One page of members: `cursor` is "<shard>.<scan cursor>" from the last
        page (None: the first). A member present for the whole walk is listed
        once at least (SSCAN's promise); the next cursor is None at the end."""
        shard, scan = _cursor(cursor)
        people: list[str] = []
        while shard < SEGMENT_SHARDS and len(people) < count:
            scan, found = await self.redis.sscan(self.keys.segment_members(segment, shard), scan, count=count)
            people.extend(p.decode() if isinstance(p, bytes) else p for p in found)
            if scan == 0:
                shard, scan = shard + 1, 0
        return people, (f"{shard}.{scan}" if shard < SEGMENT_SHARDS else None)

    async def walk(self, segment: str, chunk: int = 1000) -> AsyncIterator[list[str]]:
        """Every member, a chunk at a time (an export), memory flat."""
        for shard in range(SEGMENT_SHARDS):
            key, scan = self.keys.segment_members(segment, shard), 0
            while True:
                scan, found = await self.redis.sscan(key, scan, count=chunk)
                if found:
                    yield [p.decode() if isinstance(p, bytes) else p for p in found]
                if scan == 0:
                    break

    async def forget(self, segment: str) -> None:
        """A segment no longer tracked: drop its members and changes."""
        keys = [k for shard in range(SEGMENT_SHARDS)
                for k in (self.keys.segment_members(segment, shard), self.keys.segment_changes(segment, shard))]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        await pipe.execute()


def _cursor(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 0
    shard, _, scan = text.partition(".")
    if not (shard.isdigit() and scan.isdigit()) or int(shard) >= SEGMENT_SHARDS:
        raise ValueError("cursor is the value `next` of the previous page")
    return int(shard), int(scan)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
