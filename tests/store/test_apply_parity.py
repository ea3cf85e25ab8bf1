"""A batch is applied in Python (engine/profile.py) and written by a compare
and set; a write that lost the race is applied by the Lua script instead. The
two must leave the same profile: random batches go through both, on a real
Redis, batch after batch, and the stored profiles are compared."""

import random
from types import SimpleNamespace

import msgspec
import pytest

from engine.catalog.compile import feature_table
from engine.ingest.pipeline import event_id_hash
from engine.profile import Profile, apply_ops, decode_profile, encode_profile, prune_rings
from engine.store.keys import Keys
from engine.store.profiles import ProfileStore

NOW = 1_764_000_000_000
HOUR = 3_600_000
HALF_LIFE = 10 * 24 * HOUR
SESSION_GAP = 30 * 60_000
# Ring ids with characters a Lua pattern would read as magic.
FEATURES = {"a": (HOUR, 24), "b-x": (24 * HOUR, 7), "c%": (60_000, 30), "gone": (HOUR, 3)}
KEPT = {fid: SimpleNamespace(resolution_ms=r, length=n) for fid, (r, n) in FEATURES.items() if fid != "gone"}


def random_ops(rng: random.Random, now: int) -> list:
    ops = []
    for _ in range(rng.randint(1, 6)):
        # Quarter hours, a millisecond or a second off: ties and near-ties.
        ts = now - rng.randint(0, rng.choice([4, 160])) * 15 * 60_000 + rng.choice([0, 0, 1, 999, -1])
        to_set = {f"k{rng.randint(0, 5)}": rng.choice([1, 2.5, "x", True, [1, 2]])} if rng.random() < 0.4 else False
        to_unset = [f"k{rng.randint(0, 5)}"] if rng.random() < 0.2 else False
        increments = []
        for fid, (resolution, length) in FEATURES.items():
            if rng.random() < 0.5:
                amount = rng.choice([1, 3, 0.5, 120, 0])
                increments.append([fid, ts // resolution, amount, length])
        points = rng.choice([0, 0, 5, 1.5])
        ops.append([ts, to_set, to_unset, increments, points, rng.choice([0, 1, 1])])
    return ops


def normalised(raw: bytes) -> dict:
    """A stored profile as the product reads it: Lua writes an empty table as
    an array and every field; Python leaves out the defaults."""
    return msgspec.structs.asdict(decode_profile(raw))


def edge_batches(fid: str) -> list[list]:
    """A ring whose newest bucket is one short of its window's length, then
    one whose newest bucket is exactly that old (pruned), at the same now."""
    resolution, length = FEATURES[fid]
    batches = []
    for age in (length - 1, length, length + 1):
        ts = (NOW // resolution - age) * resolution
        batches.append([[ts, False, False, [[fid, ts // resolution, 1, length]], 0, 1]])
    return batches


async def apply_both(store: ProfileStore, redis, person: str, batch: int, ops: list, now: int, prune: bool):
    table = feature_table({fid: FEATURES[fid] for fid in KEPT})
    ids = [event_id_hash(f"{person}:{batch}:{i}") for i in range(len(ops))]
    params = msgspec.msgpack.encode([now, store.dedupe_ttl_ms, store.profile_ttl_ms, HALF_LIFE, SESSION_GAP, 0])
    lua_person, py_person = f"u:lua{person}", f"u:py{person}"
    [reply] = await store.run([store.apply_call(lua_person, params, msgspec.msgpack.encode(ops),
                                                table if prune else b"", ids)])
    assert reply[:2] == [len(ops), 0]

    [(raw, scores)] = await store.read([(py_person, ids)])
    assert scores == [None] * len(ids)
    p = decode_profile(raw)
    apply_ops(p, ops, now, HALF_LIFE, SESSION_GAP)
    if prune:
        prune_rings(p, KEPT, now)
    p.v += 1
    assert await store.run([store.write_call(py_person, raw, encode_profile(p), now, ids)]) == [1]

    lua = normalised(await redis.get(Keys().profile(lua_person)))
    py = normalised(await redis.get(Keys().profile(py_person)))
    assert py.pop("s", None) == pytest.approx(lua.pop("s", None))
    assert py == lua, (person, batch)
    return py


async def test_rings_at_the_edge_of_their_window_are_pruned_alike(redis):
    store = ProfileStore(redis, Keys(), dedupe_ttl_s=86_400, profile_ttl_s=86_400)
    for fid in KEPT:
        kept = []
        for at, ops in enumerate(edge_batches(fid)):
            profile = await apply_both(store, redis, f"edge{fid}{at}", 0, ops, NOW, prune=True)
            kept.append(fid in profile["w"])
        assert kept == [True, False, False]


async def test_python_and_lua_leave_the_same_profile_batch_after_batch(redis):
    store = ProfileStore(redis, Keys(), dedupe_ttl_s=86_400, profile_ttl_s=86_400)
    rng = random.Random(18)
    for person in range(40):
        for batch in range(10):
            now = NOW + batch * 7 * HOUR + person
            ops = random_ops(rng, now)
            prune = batch % 3 == 2
            py = await apply_both(store, redis, str(person), batch, ops, now, prune)
            if prune:
                assert "gone" not in py["w"]
            else:
                assert py["w"]


async def test_a_write_after_someone_else_wrote_is_refused(redis):
    store = ProfileStore(redis, Keys(), dedupe_ttl_s=86_400, profile_ttl_s=86_400)
    ids = [event_id_hash("e1")]
    [(raw, _)] = await store.read([("u:1", ids)])
    await redis.set(Keys().profile("u:1"), encode_profile(Profile(v=7)))  # another writer
    assert await store.run([store.write_call("u:1", raw, encode_profile(Profile(v=1)), NOW, ids)]) == [0]
    assert decode_profile(await redis.get(Keys().profile("u:1"))).v == 7
    assert await redis.zcard(Keys().dedupe("u:1")) == 0  # the refused write recorded no id either
    # A profile that was there when read, rewritten since: refused; as read: written.
    [(raw, _)] = await store.read([("u:1", ids)])
    await redis.set(Keys().profile("u:1"), encode_profile(Profile(v=8)))
    assert await store.run([store.write_call("u:1", raw, encode_profile(Profile(v=9)), NOW, ids)]) == [0]
    [(raw, _)] = await store.read([("u:1", ids)])
    assert await store.run([store.write_call("u:1", raw, encode_profile(Profile(v=9)), NOW, ids)]) == [1]
    assert decode_profile(await redis.get(Keys().profile("u:1"))).v == 9
    assert await redis.zcard(Keys().dedupe("u:1")) == 1
