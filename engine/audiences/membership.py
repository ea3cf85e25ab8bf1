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

from engine.store.cards import CONSENT, Cards
from engine.store.client import run_scripts
from engine.store.keys import SEGMENT_CHANGES_MAX, SEGMENT_SHARDS, Keys

ENTER, EXIT = "+", "-"

# One segment's shard: entries and exits of several people at once.
# KEYS[1] members  KEYS[2] changes
# ARGV[1] stream max length, then for each change six values: op (+|-), person,
# segment, reason, email sha256, phone sha256 (the last two "" unless the person
# is being erased: their card will be gone when the removal is delivered).
# Returns 1 for each change that changed the set (only those are recorded).
CHANGES = r"""
local done = {}
for i = 2, #ARGV, 6 do
  local op, person = ARGV[i], ARGV[i + 1]
  local n
  if op == '+' then n = redis.call('SADD', KEYS[1], person) else n = redis.call('SREM', KEYS[1], person) end
  if n == 1 then
    local fields = {'s', ARGV[i + 2], 'p', person, 'o', op, 'r', ARGV[i + 3]}
    if ARGV[i + 4] ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = ARGV[i + 4] end
    if ARGV[i + 5] ~= '' then fields[#fields + 1] = 'ph'; fields[#fields + 1] = ARGV[i + 5] end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  end
  done[#done + 1] = n
end
return done
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
    def __init__(self, redis, keys: Keys, *, card_ttl_s: int = 400 * 86_400,
                 max_changes: int = SEGMENT_CHANGES_MAX):
        self.redis = redis
        self.keys = keys
        self.max_changes = max_changes
        self._changes = redis.register_script(CHANGES)
        self.cards = Cards(redis, keys, card_ttl_s)
        self._claim = redis.register_script(CLAIM)

    async def record(self, changes: Sequence[Change], erased: tuple[str, str] = ("", "")) -> list[Change]:
        """Apply entries and exits, one script call per segment shard; returns
        those that changed a set (the others were already recorded, by an
        earlier try of the same batch). `erased`: the hashed email and phone the
        removals carry when the person is being erased."""
        if not changes:
            return []
        groups: dict[tuple[str, int], list[Change]] = {}
        for change in changes:
            groups.setdefault((change.segment, shard_of(change.person)), []).append(change)
        calls, order = [], []
        for (segment, shard), group in groups.items():
            args = [self.max_changes]
            for change in group:
                args += [change.op, change.person, change.segment, change.reason, *erased]
            calls.append((self._changes, [self.keys.segment_members(segment, shard),
                                          self.keys.segment_changes(segment, shard)], args))
            order.extend(group)
        done = await run_scripts(self.redis, calls)
        return [change for change, n in zip(order, (n for flags in done for n in flags), strict=True) if n]

    async def erase(self, person: str, tracked: Sequence[str]) -> list[str]:
        """Take `person` out of every tracked segment before their data goes,
        each removal carrying their hashed identifiers so destinations can still
        drop them; returns the segments they were in."""
        (card,) = await self.cards.read([person])
        email, phone = card.email, card.phone
        removed = await self.record([Change(person, segment, EXIT, "erased") for segment in tracked],
                                    (email or "", phone or ""))
        await self.redis.zrem(self.keys.segment_rechecks(shard_of(person)), person)
        return [change.segment for change in removed]

    async def set_advertising(self, person: str, granted: bool, segments: Sequence[str]) -> None:
        """Advertising consent given or withdrawn: the card says so, and each
        tracked segment the person is in records it, so destinations add or
        remove them (`reason` consent)."""
        await run_scripts(self.redis, [self.cards.swap_call(person, {CONSENT: "1" if granted else "0"})])
        if segments:
            pipe = self.redis.pipeline(transaction=False)
            op = ENTER if granted else EXIT
            for segment in segments:
                pipe.xadd(self.keys.segment_changes(segment, shard_of(person)),
                          {"s": segment, "p": person, "o": op, "r": "consent"}, maxlen=self.max_changes,
                          approximate=True)
            await pipe.execute()

    def schedule(self, pipe, when: dict[str, int | None]) -> None:
        """When time alone may next change each person's segments (None: never),
        one ZADD and one ZREM per shard."""
        adds: dict[int, dict[str, int]] = {}
        drops: dict[int, list[str]] = {}
        for person, at_ms in when.items():
            if at_ms is None:
                drops.setdefault(shard_of(person), []).append(person)
            else:
                adds.setdefault(shard_of(person), {})[person] = at_ms
        for shard, mapping in adds.items():
            pipe.zadd(self.keys.segment_rechecks(shard), mapping)
        for shard, people in drops.items():
            pipe.zrem(self.keys.segment_rechecks(shard), *people)

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

    async def trim(self, segments: Sequence[str], older_than_ms: int) -> None:
        """Drop change records older than `older_than_ms` (they name people, and
        an erased person's must not stay for long)."""
        pipe = self.redis.pipeline(transaction=False)
        for segment in segments:
            for shard in range(SEGMENT_SHARDS):
                pipe.xtrim(self.keys.segment_changes(segment, shard), minid=older_than_ms, approximate=True)
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
