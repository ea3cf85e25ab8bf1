"""A person's profile in Redis: the one-read fetch for decide, the read and
the compare-and-set write of a batch applied in Python (and the Lua script
that applies it in Redis when that write lost a race), the scripts that stage
and merge an anonymous profile into a known one, and record segment
membership. Each script touches the keys of one person only (one hash tag),
so all of this runs on Redis Cluster too."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from engine.profile import Profile, decode_profile
from engine.store.client import preload, run_commands, run_scripts
from engine.store.keys import MERGE_STAGING_TTL_S, Keys

_encode = msgspec.msgpack.encode


# Shared Lua: ring update and profile normalisation.
_LUA_LIB = r"""
local function ring_add(ring, bucket, length, amount)
  if ring == nil or #ring == 0 then return {bucket, amount} end
  local newest = ring[1]
  if bucket > newest then
    local shift = bucket - newest
    if shift >= length then return {bucket, amount} end
    local out = {bucket, amount}
    for _ = 1, shift - 1 do out[#out + 1] = 0 end
    for i = 2, #ring do
      if #out > length then break end
      out[#out + 1] = ring[i]
    end
    while #out > length + 1 do out[#out] = nil end
    return out
  end
  local age = newest - bucket
  if age >= length then return ring end
  for i = #ring + 1, age + 2 do ring[i] = 0 end
  ring[age + 2] = ring[age + 2] + amount
  return ring
end

local function load_profile(raw)
  local p = {}
  if raw then p = cmsgpack.unpack(raw) end
  if type(p.t) ~= 'table' then p.t = {} end
  if type(p.w) ~= 'table' then p.w = {} end
  return p
end

-- A feature's {resolution ms, ring length} from the catalog's table
-- (",<fid>:<resolution>:<length>,…"), or nil when the catalog has no such feature.
local function feature(features, fid)
  local at = string.find(features, ',' .. fid .. ':', 1, true)
  if at == nil then return nil end
  local resolution, length = string.match(features, '^(%d+):(%d+),', at + #fid + 2)
  return {tonumber(resolution), tonumber(length)}
end

-- Drop rings the catalog no longer asks for, and rings wholly outside their window.
local function prune_rings(p, features, now)
  for fid, ring in pairs(p.w) do
    local f = feature(features, fid)
    if f == nil or #ring < 2 or math.floor(now / f[1]) - ring[1] >= f[2] then
      p.w[fid] = nil
    else
      while #ring > 2 and ring[#ring] == 0 do ring[#ring] = nil end
    end
  end
end

local function decay(s, now, half_life)
  if s == nil or #s < 2 then return 0 end
  local value = s[1]
  if half_life > 0 and now > s[2] then value = value * math.pow(0.5, (now - s[2]) / half_life) end
  return value
end

local function seen(p, ts, session_gap)
  if p.ls == nil or p.ls == 0 then
    p.fs = ts; p.ls = ts; p.gap = 0
    return
  end
  if ts - p.ls > session_gap then p.gap = ts - p.ls end
  if ts > p.ls then p.ls = ts end
  if p.fs == nil or ts < p.fs then p.fs = ts end
end

local function save(key, p, ttl_ms)
  local packed = cmsgpack.pack(p)
  redis.call('SET', key, packed, 'PX', ttl_ms)
  return packed
end
"""

# Write a profile the caller read and applied a batch to (engine/profile.py,
# apply_ops), unless someone wrote it since: Redis does a compare and a copy
# instead of unpacking and packing the whole profile (most of a batch's Redis
# time when Lua applied it). Dedupe stays exact: every accepted event rewrites
# the profile (its version moves), so ids read as absent are still absent when
# the profile is unchanged.
# KEYS[1] profile  KEYS[2] dedupe zset
# ARGV[1] the SHA-1 (hex) of the profile as read, '' when absent (the digest
#         rather than the bytes: the profile crosses the network twice, not three times)
# ARGV[2] the new profile
# ARGV[3] now ms  ARGV[4] dedupe ttl ms  ARGV[5] profile ttl ms
# ARGV[6…] the accepted events' 8-byte id hashes
# Returns 1 when written, 0 when the profile changed since it was read.
WRITE_LUA = r"""
local current = redis.call('GET', KEYS[1])
if (current and redis.sha1hex(current) or '') ~= ARGV[1] then return 0 end
local now, dedupe_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dedupe_ttl)
for first = 6, #ARGV, 1000 do  -- unpack's stack is bounded: a worker's batch may hold thousands
  local members = {}
  for i = first, math.min(first + 999, #ARGV) do
    members[#members + 1] = now
    members[#members + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[2], unpack(members))
end
redis.call('PEXPIRE', KEYS[2], dedupe_ttl)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
return 1
"""

# Apply one person's batch: dedupe by event id and every update, atomically.
# The path of a write that lost WRITE_LUA's race (and of nothing else): the
# same rules as engine/profile.py's apply_ops.
# KEYS[1] profile  KEYS[2] dedupe zset
# ARGV[1] msgpack [now_ms, dedupe ttl ms, profile ttl ms, score half-life ms,
#         session gap ms, 1 to return the stored profile else 0]
# ARGV[2] msgpack ops, one per event: [ts, traits_set|false, traits_unset|false,
#         [[fid, bucket, amount, ring length], …], points, 1 if it is the
#         person's own activity (0: a journey's set_trait, which must not
#         move "last seen" and so postpone inactivity)]
# ARGV[3] the catalog's feature table (",<fid>:<resolution_ms>:<length>,…",
#         engine/catalog/compile.py) to prune the profile's rings against, or
#         "" to skip pruning this time (the caller prunes every few batches).
# ARGV[4…] 8-byte event id hashes, one per op, in order (Redis's cmsgpack has
#         no binary type, so they travel as arguments)
# Returns {accepted, duplicates, packed profile or ""}
APPLY_LUA = _LUA_LIB + r"""
local params = cmsgpack.unpack(ARGV[1])
local now, dedupe_ttl, profile_ttl, half_life, session_gap, want_profile =
  params[1], params[2], params[3], params[4], params[5], params[6]
local ops = cmsgpack.unpack(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dedupe_ttl)
local p = nil
local accepted, duplicates = 0, 0
for i, op in ipairs(ops) do
  local id = ARGV[3 + i]
  if redis.call('ZSCORE', KEYS[2], id) then
    duplicates = duplicates + 1
  else
    redis.call('ZADD', KEYS[2], now, id)
    accepted = accepted + 1
    if p == nil then p = load_profile(redis.call('GET', KEYS[1])) end
    if op[6] ~= 0 then seen(p, op[1], session_gap) end
    if op[2] then for k, v in pairs(op[2]) do p.t[k] = v end end
    if op[3] then for _, k in ipairs(op[3]) do p.t[k] = nil end end
    for _, inc in ipairs(op[4]) do
      p.w[inc[1]] = ring_add(p.w[inc[1]], inc[2], inc[4], inc[3])
    end
    if op[5] ~= 0 then p.s = {decay(p.s, now, half_life) + op[5], now} end
  end
end
local packed = ''
if accepted > 0 then
  if ARGV[3] ~= '' then prune_rings(p, ARGV[3], now) end
  p.v = (p.v or 0) + 1
  packed = save(KEYS[1], p, profile_ttl)
  redis.call('PEXPIRE', KEYS[2], dedupe_ttl)
elseif want_profile == 1 then
  packed = redis.call('GET', KEYS[1]) or ''
end
if want_profile ~= 1 then packed = '' end
return {accepted, duplicates, packed}
"""

# Take an anonymous profile out for a merge (first step, in the anonymous slot).
# KEYS[1] anonymous profile  KEYS[2] merge staging
# ARGV[1] a fresh merge token (hex)  ARGV[2] staging ttl seconds
# Returns the staged "<token>|<profile bytes>", or nil when there is nothing to merge.
STAGE_LUA = r"""
local staged = redis.call('GET', KEYS[2])
if staged then return staged end
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
staged = ARGV[1] .. '|' .. raw
redis.call('SET', KEYS[2], staged, 'EX', tonumber(ARGV[2]))
redis.call('DEL', KEYS[1])
return staged
"""

# Fold a staged anonymous profile into a known one, once per merge token.
# KEYS[1] known profile  KEYS[2] known dedupe zset
# ARGV[1] now_ms  ARGV[2] dedupe ttl ms  ARGV[3] profile ttl ms  ARGV[4] half-life ms
# ARGV[5] feature table  ARGV[6] merge token  ARGV[7] anonymous profile (msgpack)
# Returns 1 when merged, 0 when this token was merged before.
MERGE_LUA = _LUA_LIB + r"""
local now = tonumber(ARGV[1])
local token = 'merge:' .. ARGV[6]
if redis.call('ZSCORE', KEYS[2], token) then return 0 end
redis.call('ZADD', KEYS[2], now, token)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
local features = ARGV[5]
local p = load_profile(redis.call('GET', KEYS[1]))
local a = load_profile(ARGV[7])
for k, v in pairs(a.t) do if p.t[k] == nil then p.t[k] = v end end
for fid, ring in pairs(a.w) do
  local f = feature(features, fid)
  if f then
    for i = 2, #ring do
      if ring[i] ~= 0 then p.w[fid] = ring_add(p.w[fid], ring[1] - (i - 2), f[2], ring[i]) end
    end
  end
end
local half_life = tonumber(ARGV[4])
local points = decay(p.s, now, half_life) + decay(a.s, now, half_life)
if points ~= 0 then p.s = {points, now} end
if a.ls and a.ls > 0 then
  if p.ls == nil or p.ls == 0 or a.ls > p.ls then p.ls = a.ls; p.gap = a.gap or 0 end
  if p.fs == nil or p.fs == 0 or (a.fs and a.fs < p.fs) then p.fs = a.fs end
end
prune_rings(p, features, now)
p.v = (p.v or 0) + 1
save(KEYS[1], p, tonumber(ARGV[3]))
return 1
"""

# Forget a staged anonymous profile once its merge is confirmed.
# KEYS[1] merge staging  ARGV[1] the staged value read before
UNSTAGE_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Record segment membership computed from a given profile version, unless a
# newer batch has landed since (its own pass will record its membership).
# KEYS[1] profile  ARGV[1] version  ARGV[2] msgpack list of segment ids
SET_SEGMENTS_LUA = r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local p = cmsgpack.unpack(raw)
if p.v ~= tonumber(ARGV[1]) then return 0 end
p.g = cmsgpack.unpack(ARGV[2])
redis.call('SET', KEYS[1], cmsgpack.pack(p), 'KEEPTTL')
return 1
"""

SCRIPTS = {
    "write": WRITE_LUA,
    "apply": APPLY_LUA,
    "stage": STAGE_LUA,
    "merge": MERGE_LUA,
    "unstage": UNSTAGE_LUA,
    "set_segments": SET_SEGMENTS_LUA,
}


class ProfileStore:
    """Thin adapter between the pure core and Redis: key shapes, scripts by SHA
    (loaded once, reloaded on NOSCRIPT), one round trip per call."""

    def __init__(self, redis, keys: Keys, *, dedupe_ttl_s: int, profile_ttl_s: int):
        self.redis = redis
        self.keys = keys
        self.dedupe_ttl_ms = dedupe_ttl_s * 1000
        self.profile_ttl_ms = profile_ttl_s * 1000
        self.scripts = {name: redis.register_script(source) for name, source in SCRIPTS.items()}

    async def load_scripts(self) -> None:
        """Load the scripts ahead of the first batch (start-up), so it pays no load."""
        await preload(self.redis, self.scripts.values())

    async def remember_merge(self, person: str, anonymous: str) -> None:
        """Note that `anonymous` was merged into `person` (Keys.merged)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.merged(person), anonymous)
        pipe.pexpire(self.keys.merged(person), self.profile_ttl_ms)
        await pipe.execute()

    async def fetch(self, person: str) -> Profile:
        """The read decide makes: one GET."""
        return decode_profile(await self.redis.get(self.keys.profile(person)))

    async def run(self, calls: Sequence[tuple[str, list, list]]) -> list:
        """Run (script name, keys, args) calls in one pipelined round trip
        (engine.store.client.run_scripts: every script here is idempotent, so
        running them again after a NOSCRIPT is safe)."""
        return await run_scripts(self.redis, [(self.scripts[name], keys, args) for name, keys, args in calls])

    async def read(self, batches: Sequence[tuple[str, list[bytes]]]) -> list[tuple[bytes | None, list]]:
        """What applying a batch reads first, for every (person, event id
        hashes) in one round trip: the profile, and the score (the time it
        was applied) the dedupe set holds for each id, None where it holds none."""
        replies = await run_commands(self.redis, [
            command for person, id_hashes in batches
            for command in (("GET", self.keys.profile(person)), ("ZMSCORE", self.keys.dedupe(person), *id_hashes))])
        return list(zip(replies[::2], replies[1::2], strict=True))

    def write_call(self, person: str, read: bytes | None, profile: bytes, now_ms: int,
                   id_hashes: list[bytes]) -> tuple:
        """Write `profile` unless the stored one is no longer `read` (None: absent)."""
        keys = [self.keys.profile(person), self.keys.dedupe(person)]
        digest = hashlib.sha1(read).hexdigest() if read else ""  # a change check, not a secret
        return ("write", keys, [digest, profile, now_ms, self.dedupe_ttl_ms, self.profile_ttl_ms, *id_hashes])

    def apply_call(self, person: str, params: bytes, ops: bytes, prune_table: bytes,
                   id_hashes: list[bytes]) -> tuple:
        keys = [self.keys.profile(person), self.keys.dedupe(person)]
        return ("apply", keys, [params, ops, prune_table, *id_hashes])

    def stage_call(self, anonymous: str, token: str) -> tuple:
        keys = [self.keys.profile(anonymous), self.keys.merge_staging(anonymous)]
        return ("stage", keys, [token, MERGE_STAGING_TTL_S])

    def merge_call(self, person: str, common: list, token: str, anonymous_profile: bytes) -> tuple:
        keys = [self.keys.profile(person), self.keys.dedupe(person)]
        return ("merge", keys, common + [token, anonymous_profile])

    def unstage_call(self, anonymous: str, staged: bytes) -> tuple:
        return ("unstage", [self.keys.merge_staging(anonymous)], [staged])

    def set_segments_call(self, person: str, version: int, segments: list[str]) -> tuple:
        return ("set_segments", [self.keys.profile(person)], [version, _encode(segments)])
