"""Pools of single-use discount codes: uploaded by the site's server, one code
handed to each person and kept for them, redeemed once. Each pool's keys share
the hash tag {codes:<pool>} (engine/store/keys.py), so every step is one Lua
script on one Redis Cluster slot and two decides can never get the same code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.store.keys import Keys

MAX_CODES_PER_UPLOAD = 10_000
MAX_POOL_CODES = 1_000_000  # available + given: bounded state for every pool

# KEYS[1] available SET, KEYS[2] owners HASH (code -> person)
# ARGV[1] the pool's limit (available + given), then the codes (distinct)
# Adds the codes the pool does not hold yet, given or not. Returns {added,
# already there, available after}, or {-1, codes held} when the limit would pass.
UPLOAD = """
local held = redis.call('SCARD', KEYS[1]) + redis.call('HLEN', KEYS[2])
local new = {}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 and redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    new[#new + 1] = ARGV[i]
  end
end
if held + #new > tonumber(ARGV[1]) then return {-1, held} end
for _, code in ipairs(new) do redis.call('SADD', KEYS[1], code) end
return {#new, #ARGV - 1 - #new, redis.call('SCARD', KEYS[1])}
"""

# KEYS[1] available SET, KEYS[2] given HASH (person -> code), KEYS[3] owners HASH (code -> person)
# ARGV[1] the person
# The person's code: the one kept for them, else one taken from the available
# set and kept; false when the pool has none left to give.
GIVE = """
local code = redis.call('HGET', KEYS[2], ARGV[1])
if code then return code end
code = redis.call('SPOP', KEYS[1])
if not code then return false end
redis.call('HSET', KEYS[2], ARGV[1], code)
redis.call('HSET', KEYS[3], code, ARGV[1])
return code
"""

# KEYS[1] owners HASH (code -> person), KEYS[2] redeemed HASH (code -> order id), KEYS[3] available SET
# ARGV[1] code, ARGV[2] person, ARGV[3] order id
# Returns one of the REDEEM_* outcomes below; only 'redeemed' writes.
REDEEM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner then
  if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 'not given' end
  return 'unknown'
end
if owner ~= ARGV[2] then return 'not yours' end
local order = redis.call('HGET', KEYS[2], ARGV[1])
if order then
  if order == ARGV[3] then return 'again' end
  return 'used'
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 'redeemed'
"""

# KEYS[1] given HASH (person -> code), KEYS[2] owners HASH (code -> person)
# ARGV[1] the person
# Erasure: forgets who got a code. The code stays out of the pool, owned by
# nobody, so it is never given again nor redeemed. Returns 1 if they had one.
FORGET = """
local code = redis.call('HGET', KEYS[1], ARGV[1])
if not code then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], code, '')
return 1
"""

REDEEMED = "redeemed"  # first time: counts
AGAIN = "again"  # the same order redeemed it before: nothing changes
USED = "used"  # another order redeemed it before
NOT_YOURS = "not yours"  # given to someone else
NOT_GIVEN = "not given"  # in the pool but never given to anyone
UNKNOWN = "unknown"  # in no pool


class PoolFull(Exception):
    """An upload would take the pool past MAX_POOL_CODES (`held`: codes it has)."""

    def __init__(self, held: int):
        self.held = held
        super().__init__(f"the pool holds {held} codes; at most {MAX_POOL_CODES}")


@dataclass
class CodePools:
    redis: object  # redis.asyncio.Redis or RedisCluster
    keys: Keys

    def __post_init__(self) -> None:
        self._upload = self.redis.register_script(UPLOAD)
        self._give = self.redis.register_script(GIVE)
        self._redeem = self.redis.register_script(REDEEM)
        self._forget = self.redis.register_script(FORGET)

    async def upload(self, pool: str, codes: Iterable[str]) -> dict:
        distinct = list(dict.fromkeys(codes))
        keys = self.keys
        added, existing, available = await self._upload(
            keys=[keys.pool_available(pool), keys.pool_owners(pool)], args=[MAX_POOL_CODES, *distinct])
        if added == -1:
            raise PoolFull(existing)
        return {"pool": pool, "added": added, "already_in_pool": existing, "available": available}

    async def status(self, pool: str) -> dict:
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(keys.pool_available(pool))
        pipe.hlen(keys.pool_given(pool))
        pipe.hlen(keys.pool_redeemed(pool))
        available, given, redeemed = await pipe.execute()
        return {"pool": pool, "available": available, "given": given, "redeemed": redeemed}

    async def give(self, pool: str, person: str) -> str | None:
        """The code kept for `person` (given now if they had none); None when
        the pool has no code left for them."""
        keys = self.keys
        code = await self._give(keys=[keys.pool_available(pool), keys.pool_given(pool), keys.pool_owners(pool)],
                                args=[person])
        return code.decode() if isinstance(code, bytes) else code

    async def find(self, code: str, pools: Iterable[str]) -> str | None:
        """The pool, among `pools`, that holds `code` (given or not): one pipelined read."""
        pools = list(pools)
        if not pools:
            return None
        pipe = self.redis.pipeline(transaction=False)
        for pool in pools:
            pipe.hexists(self.keys.pool_owners(pool), code)
            pipe.sismember(self.keys.pool_available(pool), code)
        found = await pipe.execute()
        return next((pool for i, pool in enumerate(pools) if found[2 * i] or found[2 * i + 1]), None)

    async def redeem(self, pool: str, code: str, person: str, order_id: str) -> str:
        keys = self.keys
        outcome = await self._redeem(
            keys=[keys.pool_owners(pool), keys.pool_redeemed(pool), keys.pool_available(pool)],
            args=[code, person, order_id])
        return outcome.decode() if isinstance(outcome, bytes) else outcome

    async def forget(self, person: str, pools: Iterable[str]) -> int:
        """Erasure: `person` no longer named in any of `pools`; how many codes they had."""
        forgotten = 0
        for pool in pools:
            forgotten += await self._forget(keys=[self.keys.pool_given(pool), self.keys.pool_owners(pool)],
                                            args=[person])
        return forgotten
