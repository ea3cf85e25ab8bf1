"""The lookup index in Redis: which people an address names. An entry is
"<kind>:<hex digest>" (engine/audiences/lookup.py says what it is made of);
this module only keeps the entries, sharded over IX_SHARDS tags, and each
person's own list of them, so erasure finds them all (Keys.people_index,
Keys.indexed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.store.keys import IX_SHARDS, Keys

MAX_PEOPLE_PER_ENTRY = 100  # a lookup lists at most this many people (a shared info@ address)


def shard_of(entry: str) -> int:
    """The shard of an entry "<kind>:<hex>", from its digest: the same address
    always in the same shard, and addresses spread evenly over them."""
    return int(entry.partition(":")[2][:8], 16) % IX_SHARDS


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PeopleIndex:
    def __init__(self, redis, keys: Keys, *, ttl_ms: int = 400 * 86_400_000):
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms  # the profile TTL: a person's list of entries lives as long as they do

    async def recorded(self, people: Iterable[str]) -> dict[str, set[str]]:
        """The entries written for each person, one round trip."""
        people = list(people)
        pipe = self.redis.pipeline(transaction=False)
        for person in people:
            pipe.smembers(self.keys.indexed(person))
        replies = await pipe.execute()
        return {person: {_text(e) for e in entries} for person, entries in zip(people, replies, strict=True)}

    async def add(self, entries: Mapping[str, Iterable[str]]) -> None:
        """Index each person under their entries: their own list first, then the
        index, so an entry the index holds is always on its person's list."""
        entries = {person: list(found) for person, found in entries.items() if found}
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for person, found in entries.items():
            pipe.sadd(self.keys.indexed(person), *found)
            pipe.pexpire(self.keys.indexed(person), self.ttl_ms)
        await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for person, found in entries.items():
            for entry in found:
                pipe.zadd(self.keys.people_index(shard_of(entry)), {f"{entry}:{person}": 0})
        await pipe.execute()

    async def remove(self, entries: Mapping[str, Iterable[str]]) -> None:
        """Take each person out of these entries: the index first, then their list."""
        entries = {person: list(found) for person, found in entries.items() if found}
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for person, found in entries.items():
            for entry in found:
                pipe.zrem(self.keys.people_index(shard_of(entry)), f"{entry}:{person}")
        await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for person, found in entries.items():
            pipe.srem(self.keys.indexed(person), *found)
        await pipe.execute()

    async def find(self, entry: str) -> list[str]:
        """The people indexed under an entry (at most MAX_PEOPLE_PER_ENTRY), not
        checked: the caller checks each against their profile."""
        prefix = f"{entry}:"
        # Every score is 0, so members sort by their bytes: this entry's all
        # start with "<entry>:", and ";" is the byte after ":".
        members = await self.redis.zrange(self.keys.people_index(shard_of(entry)), f"[{prefix}",
                                          f"({entry};", bylex=True, offset=0, num=MAX_PEOPLE_PER_ENTRY)
        return [_text(m)[len(prefix):] for m in members]

    async def forget(self, person: str) -> int:
        """Remove a person from every entry on their list (erasure; the list
        itself goes with the person's keys). How many were removed."""
        found = (await self.recorded([person]))[person]
        await self.remove({person: found})
        return len(found)
