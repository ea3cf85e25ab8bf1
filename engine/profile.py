"""A person's profile as stored (msgpack) and read by the pure core: traits,
windowed counters, score, segments, first and last seen. No I/O here; the
Redis side is engine/store/profiles.py."""

from __future__ import annotations

from typing import Any

import msgspec


class Profile(msgspec.Struct, omit_defaults=True, gc=False):
    """The stored profile (msgpack). Short field names: this is stored for every
    person, and P7 counts bytes."""

    t: dict[str, Any] | list = {}  # traits
    w: dict[str, list] | list = {}  # windowed rings: feature id → [newest bucket, v0, v1, …]
    s: list = []  # behavioural score: [points, at_ms]
    g: list = []  # segment ids as of the last applied batch
    v: int = 0  # version: +1 per applied batch or merge
    fs: int = 0  # first seen (ms)
    ls: int = 0  # last seen (ms)
    gap: int = 0  # idle time before the current session (ms)

    def __post_init__(self) -> None:
        # Lua's cmsgpack writes an empty table as an empty array.
        if not isinstance(self.t, dict):
            self.t = {}
        if not isinstance(self.w, dict):
            self.w = {}


EMPTY_PROFILE = Profile()
_decode_profile = msgspec.msgpack.Decoder(Profile).decode


def decode_profile(raw: bytes | None) -> Profile:
    return _decode_profile(raw) if raw else Profile()


# Applying events to a stored profile: the API and the worker do it here, in
# Python, and Redis only checks that nobody wrote the profile since it was
# read (engine/store/profiles.py, WRITE_LUA). The same rules in Lua (APPLY_LUA
# there) serve a write that lost that race; tests/store/test_apply_parity.py
# holds the two to the same results.

encode_profile = msgspec.msgpack.Encoder().encode


def ring_add(ring: list | None, bucket: int, length: int, amount) -> list:
    """Add `amount` to `bucket` of a ring [newest bucket, v0, v1, …] keeping
    `length` buckets; a bucket older than the window changes nothing."""
    if not ring:
        return [bucket, amount]
    newest = ring[0]
    if bucket > newest:
        shift = bucket - newest
        if shift >= length:
            return [bucket, amount]
        out = [bucket, amount, *([0] * (shift - 1)), *ring[1:]]
        del out[length + 1:]
        return out
    age = newest - bucket
    if age >= length:
        return ring
    if len(ring) < age + 2:
        ring.extend([0] * (age + 2 - len(ring)))
    ring[age + 1] += amount
    return ring


def decay(score: list, now_ms: int, half_life_ms: int) -> float:
    """A score [points, at_ms] as of `now_ms`."""
    if len(score) < 2:
        return 0
    value = score[0]
    if half_life_ms > 0 and now_ms > score[1]:
        value = value * 0.5 ** ((now_ms - score[1]) / half_life_ms)
    return value


def _seen(p: Profile, ts: int, session_gap_ms: int) -> None:
    if not p.ls:
        p.fs = p.ls = ts
        p.gap = 0
        return
    if ts - p.ls > session_gap_ms:
        p.gap = ts - p.ls
    if ts > p.ls:
        p.ls = ts
    if not p.fs or ts < p.fs:
        p.fs = ts


def apply_ops(p: Profile, ops: list, now_ms: int, half_life_ms: int, session_gap_ms: int) -> None:
    """Apply events, each as engine.ingest.pipeline.event_ops describes it:
    [ts, traits to set | False, traits to unset | False, [[feature id, bucket,
    amount, ring length], …], score points, 1 if it is the person's activity]."""
    traits, rings = p.t, p.w
    for ts, to_set, to_unset, increments, points, active in ops:
        if active:
            _seen(p, ts, session_gap_ms)
        if to_set:
            traits.update(to_set)
        if to_unset:
            for name in to_unset:
                traits.pop(name, None)
        for fid, bucket, amount, length in increments:
            rings[fid] = ring_add(rings.get(fid), bucket, length, amount)
        if points:
            p.s = [decay(p.s, now_ms, half_life_ms) + points, now_ms]


def prune_rings(p: Profile, features: dict, now_ms: int) -> None:
    """Drop rings the catalog no longer asks for (`features`: id → an object
    with resolution_ms and length) and rings wholly outside their window; trim
    trailing empty buckets."""
    rings = p.w
    for fid in list(rings):
        ring, feature = rings[fid], features.get(fid)
        if feature is None or len(ring) < 2 or now_ms // feature.resolution_ms - ring[0] >= feature.length:
            del rings[fid]
            continue
        while len(ring) > 2 and ring[-1] == 0:
            ring.pop()
