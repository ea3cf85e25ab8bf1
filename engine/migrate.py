"""`attimo migrate`: data written before the two identity spaces, brought into
them. Before, anonymous and user ids shared one key space, `{u:<id>}`; now a
person is `u:<user_id>` or `a:<anonymous_id>` (engine/ingest/identity.py).

- Known people's per-person keys already have their final name (`{u:<id>}`).
- An anonymous visitor's keys move from `{u:<id>}` to `{a:<id>}`. Which old ids
  were anonymous cannot be read from the data: an id is anonymous when it
  matches `anonymous_pattern`, which the operator must give (the snippet's ids
  are 24 hex digits, SNIPPET_ANONYMOUS_ID, but so are MongoDB ObjectIds: a
  guess could move known people). A key whose new name is already taken by
  other data is left where it is and reported; by the same data (a run that
  crashed between copy and delete), the old one is deleted.
- Queued follow-ups named their person bare; each moves to the due-queue shard
  of its new person, with its attempts. Messages in flight are left for a run
  after the schedulers have stopped. Dead letters are renamed in place.

Stop the API, the workers and the schedulers first. Every step checks before it
writes, so running it again after a crash finishes the job, and running it on
migrated data changes nothing."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

import orjson

from engine.clock import now_ms
from engine.events import ANONYMOUS, KNOWN
from engine.followups.due_queue import DueQueue, shard_of
from engine.followups.message import Message
from engine.store.keys import DUE_DONE_KEEP_MS, DUE_SHARDS, Keys

SNIPPET_ANONYMOUS_ID = r"[0-9a-f]{24}"
PERSON_KEY = re.compile(r"^(?P<prefix>.+):\{u:(?P<id>[^{}]+)\}:(?P<suffix>[a-z]+)$")


@dataclass
class MigrationReport:
    keys_moved: int = 0
    keys_taken: int = 0  # the anonymous key's new name already exists: left in place
    messages_moved: int = 0
    messages_in_flight: int = 0  # left for another run
    dead_letters_renamed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Migration:
    def __init__(self, redis, keys: Keys, anonymous_pattern: str, *, dry_run: bool = False):
        self.redis = redis
        self.keys = keys
        self.anonymous = re.compile(anonymous_pattern)
        self.dry_run = dry_run
        self.queue = DueQueue(redis, keys)
        self.report = MigrationReport()

    def person(self, old_id: str) -> str:
        """The person an id written before the two spaces names now."""
        return (ANONYMOUS if self.anonymous.fullmatch(old_id) else KNOWN) + old_id

    async def run(self) -> MigrationReport:
        await self._move_anonymous_keys()
        for shard in range(DUE_SHARDS):
            await self._move_messages(shard)
        await self._rename_dead_letters()
        return self.report

    async def _move_anonymous_keys(self) -> None:
        async for raw in self.redis.scan_iter(match=f"{self.keys.prefix}:{{u:*}}:*", count=1000):
            name = raw.decode() if isinstance(raw, bytes) else raw
            found = PERSON_KEY.match(name)
            if found is None or found["prefix"] != self.keys.prefix or not self.anonymous.fullmatch(found["id"]):
                continue
            target = f"{self.keys.prefix}:{{{ANONYMOUS}{found['id']}}}:{found['suffix']}"
            payload, ttl_ms = await self.redis.dump(name), await self.redis.pttl(name)
            if payload is None:
                continue  # expired or moved meanwhile
            if await self.redis.exists(target):
                if await self.redis.dump(target) == payload:  # a run that crashed after its copy
                    if not self.dry_run:
                        await self.redis.delete(name)
                    self.report.keys_moved += 1
                else:
                    self.report.keys_taken += 1
                continue
            if not self.dry_run:
                # Two slots on a Redis Cluster: copy, then delete. A crash in
                # between leaves both; the next run finds the copy and skips.
                await self.redis.restore(target, max(ttl_ms, 0), payload)
                await self.redis.delete(name)
            self.report.keys_moved += 1

    async def _move_messages(self, shard: int) -> None:
        keys = self.keys
        for message_id, raw in (await self.redis.hgetall(keys.due_messages(shard))).items():
            message = Message.decode(raw)
            if message.person.startswith((KNOWN, ANONYMOUS)):
                continue
            if await self.redis.zscore(keys.due_inflight(shard), message_id) is not None:
                self.report.messages_in_flight += 1
                continue
            due = await self.redis.zscore(keys.due(shard), message_id)
            if due is None:
                continue
            moved = replace(message, person=self.person(message.person), due_ms=int(due))
            attempts = await self.redis.hget(keys.due_attempts(shard), message_id)
            self.report.messages_moved += 1
            if self.dry_run:
                continue
            if shard_of(moved.person) == shard:
                # Same shard: the id is already queued here, so scheduling would
                # be a no-op; rename the person in place (one slot, one transaction).
                new_index = keys.due_person_channel(shard, moved.person, moved.channel)
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(keys.due_messages(shard), message_id, moved.encode())
                pipe.srem(keys.due_person_channel(shard, message.person, message.channel), message_id)
                pipe.sadd(new_index, message_id)
                pipe.pexpireat(new_index, max(moved.due_ms, now_ms()) + DUE_DONE_KEEP_MS)  # as the queue does
                await pipe.execute()
                continue
            await self.queue.schedule(moved)  # a no-op when a crashed run already did it
            if attempts is not None:
                await self.redis.hset(keys.due_attempts(shard_of(moved.person)), message_id, attempts)
            pipe = self.redis.pipeline(transaction=True)  # one slot: the old shard's keys
            pipe.zrem(keys.due(shard), message_id)
            pipe.hdel(keys.due_messages(shard), message_id)
            pipe.hdel(keys.due_attempts(shard), message_id)
            pipe.hdel(keys.due_sent(shard), message_id)
            pipe.srem(keys.due_person_channel(shard, message.person, message.channel), message_id)
            await pipe.execute()

    async def _rename_dead_letters(self) -> None:
        key = self.keys.dead_letters()
        for index, raw in enumerate(await self.redis.lrange(key, 0, -1)):
            try:
                entry = orjson.loads(raw)
                person = entry["message"]["person"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if not isinstance(person, str) or person.startswith((KNOWN, ANONYMOUS)):
                continue
            entry["message"]["person"] = self.person(person)
            self.report.dead_letters_renamed += 1
            if not self.dry_run:
                await self.redis.lset(key, index, orjson.dumps(entry))
