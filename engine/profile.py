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
