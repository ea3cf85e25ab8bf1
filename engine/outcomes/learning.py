"""Propensity learnt online, the part that counts: per offer and context
bucket, impressions and rewards (clicks, or conversions) faded with the
catalog's half-life, in Redis; and the snapshot each API process decides with
(engine/decisions/learning.py), refreshed from Redis at least every second.

An impression or click counts only with a decision id issued to that person for
that offer (engine/decisions/ids.py), which also names the bucket the decision
was made in, so a browser cannot teach a bucket it was not in; each (decision,
offer, kind) teaches once, however often it is replayed. A conversion teaches
the offers of the buyer's latest decision with a verified impression within a
day (last touch), in its bucket."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Container
from dataclasses import dataclass

from engine.catalog.learning import ALL, Learning
from engine.clock import every, in_background, now_ms
from engine.decisions.learning import Model
from engine.store.client import run_scripts
from engine.store.keys import EXPOSURE_TTL_S, LEARNED_MAX, Keys

log = logging.getLogger("attimo.learning")

REFRESH_S = 1.0  # the longest a snapshot is kept before it is read again
CONVERSION_WINDOW_MS = 86_400_000  # a purchase teaches the impressions of the day before it
LEARNED_TTL_MS = 86_400_000 + 60_000  # a decision id's lifetime, and its slack

# KEYS[1] the person's learned markers (ZSET), KEYS[2] their exposures (HASH)
# ARGV[1] now ms, [2] marker TTL ms, [3] most markers a person may hold, [4] exposures TTL s,
# [5] conversion window ms, then groups of 5: kind (i, c or p), marker, offer,
# bucket, decision nonce. Returns, flat, offer, bucket, kind, nonce of each
# lesson not taught before; a purchase teaches the offers of the person's
# latest decision with a verified impression within the window (last touch),
# in that decision's bucket.
MARK = """
local now = tonumber(ARGV[1])
local out = {}
-- Markers live as long as a decision id: a replay within it finds its marker.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
for i = 6, #ARGV, 5 do
  local kind, marker, offer, bucket, nonce = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  -- A click teaches only after its impression did; past the cap a person teaches nothing more today.
  local allowed = redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3])
  if kind == 'c' and not redis.call('ZSCORE', KEYS[1], 'i' .. string.sub(marker, 2)) then allowed = false end
  if allowed and redis.call('ZADD', KEYS[1], 'NX', now, marker) == 1 then
    if kind == 'p' then
      -- Last touch: the offers of the person's latest decision with a verified
      -- impression (one page may show several) get the conversion.
      local seen = redis.call('HGETALL', KEYS[2])
      local latest, latest_nonce = -1, nil
      local found = {}
      for j = 1, #seen, 2 do
        if string.sub(seen[j], 1, 2) == 's:' then
          local at, by, was = string.match(seen[j + 1], '^(%d+)|([^|]*)|(.*)$')
          if at and now - tonumber(at) <= tonumber(ARGV[5]) then
            found[#found + 1] = {string.sub(seen[j], 3), was, by}
            if tonumber(at) > latest then latest, latest_nonce = tonumber(at), by end
          end
        end
      end
      for _, hit in ipairs(found) do
        if hit[3] == latest_nonce then
          out[#out + 1] = hit[1]
          out[#out + 1] = hit[2]
          out[#out + 1] = 'p'
          out[#out + 1] = hit[3]
        end
      end
    else
      if kind == 'i' then redis.call('HSET', KEYS[2], 's:' .. offer, now .. '|' .. nonce .. '|' .. bucket) end
      out[#out + 1] = offer
      out[#out + 1] = bucket
      out[#out + 1] = kind
      out[#out + 1] = nonce
    end
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
return out
"""

# KEYS[1] one offer's model (HASH bucket -> "<impressions> <rewards> <ms>")
# ARGV[1] now ms, [2] half-life ms, then triples: bucket, impressions, rewards.
# Fades what is stored to now, then adds.
ADD = """
local now, half_life = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local n, r = 0, 0
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  if stored then
    local a, b, at = string.match(stored, '(%S+) (%S+) (%S+)')
    n, r = tonumber(a), tonumber(b)
    local age = now - tonumber(at)
    if age > 0 then
      local fade = math.pow(0.5, age / half_life)
      n, r = n * fade, r * fade
    end
  end
  n = n + tonumber(ARGV[i + 1])
  r = r + tonumber(ARGV[i + 2])
  redis.call('HSET', KEYS[1], ARGV[i], string.format('%.9g %.9g %d', n, r, now))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Lesson:
    """One verified outcome: `kind` i (impression), c (click) or p (purchase);
    `marker` names it once (decision nonce and offer, or the purchase's event id)."""

    person: str
    kind: str
    marker: str
    offer: str = ""
    bucket: str = ALL
    nonce: str = ""  # the decision it answers (none for a purchase: found from the impression)


class LearningStore:
    def __init__(self, redis, keys: Keys):
        self.redis = redis
        self.keys = keys
        self._mark = redis.register_script(MARK)
        self._add = redis.register_script(ADD)

    async def teach(self, learning: Learning, lessons: list[Lesson], learnable: Container[str], now: int) -> list[Lesson]:
        """Count each lesson once; returns the rewards it taught (with the
        decision each answers, for the decision log)."""
        by_person: dict[str, list[Lesson]] = defaultdict(list)
        for lesson in lessons:
            if lesson.kind == "p" or lesson.offer in learnable:
                by_person[lesson.person].append(lesson)
        if not by_person:
            return []
        calls = []
        people = list(by_person)
        for person in people:
            args = [now, LEARNED_TTL_MS, LEARNED_MAX, EXPOSURE_TTL_S, CONVERSION_WINDOW_MS]
            for lesson in by_person[person]:
                args += [lesson.kind, f"{lesson.kind}:{lesson.marker}", lesson.offer, lesson.bucket, lesson.nonce]
            calls.append((self._mark, [self.keys.learned(person), self.keys.exposures(person)], args))
        rewarded = "c" if learning.reward == "click" else "p"
        deltas: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
        rewards = []
        for person, fresh in zip(people, await run_scripts(self.redis, calls), strict=True):
            for i in range(0, len(fresh), 4):
                offer, bucket, kind, nonce = (v.decode() if isinstance(v, bytes) else v for v in fresh[i:i + 4])
                if offer not in learnable:
                    continue
                if kind == "i":
                    deltas[offer][bucket][0] += 1
                elif kind == rewarded:
                    deltas[offer][bucket][1] += 1
                    rewards.append(Lesson(person, kind, "", offer, bucket, nonce))
        adds = []
        for offer, buckets in deltas.items():
            args = [now, learning.half_life_ms]
            for bucket, (shown, rewarded_n) in buckets.items():
                args += [bucket, shown, rewarded_n]
            adds.append((self._add, [self.keys.model(offer)], args))
        await run_scripts(self.redis, adds)
        return rewards

    async def holdout_counts(self, offers: list[str]) -> dict[str, dict[str, float]]:
        """Each hold-out offer's exposure counters (engine/outcomes/exposures.py)."""
        if not offers:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for offer in offers:
            pipe.hgetall(self.keys.kpi("h", offer, "itt"))
        return {offer: {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
                for offer, raw in zip(offers, await pipe.execute(), strict=True)}

    async def counts(self, offers: list[str], now: int, half_life_ms: int) -> dict[str, dict[str, tuple]]:
        """Every offer's (impressions, rewards) per bucket, faded to now."""
        if not offers:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for offer in offers:
            pipe.hgetall(self.keys.model(offer))
        out = {}
        for offer, raw in zip(offers, await pipe.execute(), strict=True):
            buckets = {}
            for bucket, value in raw.items():
                shown, rewards, at = value.split()
                fade = 0.5 ** (max(0, now - int(at)) / half_life_ms)
                buckets[bucket.decode() if isinstance(bucket, bytes) else bucket] = (
                    float(shown) * fade, float(rewards) * fade)
            out[offer] = buckets
        return out


class ModelHolder:
    """The snapshot a process decides with, refreshed every REFRESH_S by `run`.
    None until the first refresh (decide then uses the declared propensities)."""

    def __init__(self, store: LearningStore, catalogs, period_s: float = REFRESH_S):
        self.store = store
        self.catalogs = catalogs  # a CatalogHolder
        self.period_s = period_s
        self.current: Model | None = None

    async def refresh(self) -> Model | None:
        catalog = self.catalogs.current
        if catalog.learning is None:
            self.current = None
            return None
        taken = now_ms()
        counts = await self.store.counts(list(catalog.learnable), taken, catalog.learning.half_life_ms)
        discounts = [o.id for o in catalog.learnable.values() if o.kind == "discount" and o.holdout_pct]
        holdouts = await self.store.holdout_counts(discounts) if catalog.learning.reward == "conversion" else None
        self.current = Model.build(catalog, counts, taken, holdouts=holdouts)
        return self.current

    def for_catalog(self, catalog) -> Model | None:
        model = self.current
        return model if model is not None and model.digest == catalog.digest else None

    def running(self):
        """The refresh, every period, while the block runs (the API's lifespan)."""
        return in_background(every(self.period_s, self.refresh, "learning: model refresh", log))
