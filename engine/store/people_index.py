"""The lookup index in Redis: which people an address names. An entry is
"<kind>:<hex digest>" (engine/audiences/lookup.py says what it is made of);
this module only keeps the entries, sharded over IX_SHARDS tags
(Keys.people_index). A person's own list of their entries is their audience
card (engine/store/cards.py), written first, so erasure finds them all."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.store.cards import Cards
from engine.store.keys import IX_SHARDS, Keys

MAX_PEOPLE_PER_ENTRY = 100  # a lookup lists at most this many people (a shared info@ address)


def shard_of(entry: str) -> int:
    """The shard of an entry "<kind>:<hex>", from its digest: the same address
    always in the same shard, and addresses spread evenly over them."""
    return int(entry.partition(":")[2][:8], 16) % IX_SHARDS


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PeopleIndex:
    def __init__(self, redis, keys: Keys):
        self.redis = redis
        self.keys = keys

    async def add(self, entries: Mapping[str, Iterable[str]]) -> None:
        """Index each person under their entries (already on their card)."""
        entries = {person: list(found) for person, found in entries.items() if found}
        if not entries:
            return
        by_shard: dict[int, dict[str, int]] = {}
        for person, found in entries.items():
            for entry in found:
                by_shard.setdefault(shard_of(entry), {})[f"{entry}:{person}"] = 0
        pipe = self.redis.pipeline(transaction=False)
        for shard, members in by_shard.items():  # one ZADD a shard, not one an entry
            pipe.zadd(self.keys.people_index(shard), members)
        await pipe.execute()

    async def remove(self, entries: Mapping[str, Iterable[str]]) -> None:
        """Take each person out of these entries."""
        entries = {person: list(found) for person, found in entries.items() if found}
        if not entries:
            return
        by_shard: dict[int, list[str]] = {}
        for person, found in entries.items():
            for entry in found:
                by_shard.setdefault(shard_of(entry), []).append(f"{entry}:{person}")
        pipe = self.redis.pipeline(transaction=False)
        for shard, members in by_shard.items():
            pipe.zrem(self.keys.people_index(shard), *members)
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
        """Remove a person from every entry on their card (erasure; the card
        goes with the person's keys). How many were removed."""
        (card,) = await Cards(self.redis, self.keys).read([person])
        found = card.entries()
        await self.remove({person: found})
        return len(found)
