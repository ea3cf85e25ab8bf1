"""The decision log: every decision of an expected-value placement (person,
bucket, candidates, chosen, the probability it had) and every reward one
earned, in Redis streams, so another catalog's arbitration can be evaluated on
the traffic this one served (engine/outcomes/evaluate.py).

Off the request path: decide hands its decision to `record`, which only
appends to an in-process buffer; a task flushes the buffer every FLUSH_S in one
pipelined round trip (and the hold-out and experiment exposures with it,
engine/outcomes/exposures.py). The buffer is bounded: past BUFFER_MAX waiting
entries the oldest are dropped and counted, so a Redis outage costs log entries,
never the API's memory. Each stream is trimmed to about `max_len` entries.
A person's decisions and rewards go to the same shard (crc32 of the person)."""

from __future__ import annotations

import logging
import zlib
from collections import deque
from dataclasses import dataclass, field

import msgspec

from engine.clock import every, in_background
from engine.outcomes.exposures import ExposureStore
from engine.store.keys import DECISION_LOG_SHARDS, Keys

log = logging.getLogger("attimo.decision_log")

FLUSH_S = 0.2
BUFFER_MAX = 100_000
DECISION, REWARD = b"d", b"r"

_encode = msgspec.msgpack.encode


def shard_of(person: str) -> int:
    return zlib.crc32(person.encode()) % DECISION_LOG_SHARDS


@dataclass
class DecisionLog:
    redis: object
    keys: Keys
    exposures: ExposureStore
    max_len: int = 100_000
    dropped: int = 0
    _decisions: deque = field(default_factory=lambda: deque(maxlen=BUFFER_MAX))
    _exposed: deque = field(default_factory=lambda: deque(maxlen=BUFFER_MAX))

    def record(self, person: str, nonce: str, now: int, decision) -> None:
        """Called by decide's route: appends, never waits."""
        if decision.logged:
            if len(self._decisions) == BUFFER_MAX:
                self.dropped += 1
            # No person id: the nonce joins a decision to its rewards, and erasure
            # has nothing to find here.
            self._decisions.append((person, [now, nonce, decision.bucket, decision.logged]))
        if decision.exposures:
            self._exposed.append((person, now, decision.bucket, decision.exposures))

    async def flush(self, now: int) -> int:
        """Write what is waiting; returns how many decisions were written."""
        decisions = [self._decisions.popleft() for _ in range(len(self._decisions))]
        exposed = [self._exposed.popleft() for _ in range(len(self._exposed))]
        if exposed:  # first: the uplift and experiment counts matter more than the log
            by_person: dict[str, tuple[int, str, list]] = {}
            for person, at, bucket, pairs in exposed:
                by_person.setdefault(person, (at, bucket, []))[2].extend(pairs)
            await self.exposures.expose(by_person)
        if decisions:
            # One stream entry per shard and flush, holding its decisions: a
            # handful of commands however busy the interval was.
            by_shard: dict[int, list] = {}
            for person, entry in decisions:
                by_shard.setdefault(shard_of(person), []).append(entry)
            pipe = self.redis.pipeline(transaction=False)
            for shard, entries in by_shard.items():
                pipe.xadd(self.keys.decision_log(shard), {DECISION: _encode(entries)},
                          maxlen=self.max_len, approximate=True)
            await pipe.execute()
        return len(decisions)

    def rewards(self, pipe, rewards: list, now: int) -> None:
        """Queue reward entries (engine.outcomes.learning.Lesson) into `pipe`."""
        for lesson in rewards:
            if lesson.nonce:
                pipe.xadd(self.keys.decision_log(shard_of(lesson.person)),
                          {REWARD: _encode([now, lesson.nonce, lesson.offer, lesson.kind])},
                          maxlen=self.max_len, approximate=True)

    def running(self, clock):
        """Flush every FLUSH_S while the block runs, and once more after it."""
        return in_background(every(FLUSH_S, lambda: self.flush(clock()), "decision log: flush", log),
                             last=lambda: self.flush(clock()))


async def read_log(redis, keys: Keys, batch: int = 10_000):
    """Every entry of every shard, oldest first per shard: (kind, decoded entry)."""
    decode = msgspec.msgpack.decode
    for shard in range(DECISION_LOG_SHARDS):
        start = "-"
        while True:
            entries = await redis.xrange(keys.decision_log(shard), min=start, count=batch)
            if not entries:
                break
            for _, fields in entries:
                for kind, value in fields.items():
                    yield (kind if isinstance(kind, bytes) else kind.encode()), decode(value)
            last = entries[-1][0]
            last = last.decode() if isinstance(last, bytes) else last
            start = "(" + last
            if len(entries) < batch:
                break
