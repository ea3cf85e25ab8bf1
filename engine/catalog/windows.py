"""Bucketed time-window counters and sums.

A windowed feature ("page_view with category=crm, counted per day") is kept per
person as a ring: [newest_bucket, v0, v1, ...] where v_i belongs to bucket
newest_bucket - i. The Lua apply script adds to it and trims it to the longest
window the catalog asks for, so a ring never holds more than
window / resolution values, and buckets past that fall off."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field

import orjson

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
MAX_WINDOW_MS = 366 * DAY_MS

_UNITS = {"s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}
_DURATION = re.compile(r"\s*(\d+)\s*([smhdw])\s*")


def parse_duration(text: object) -> int:
    """'30m', '7d', '2w', '12h' → milliseconds. Raises ValueError with the reason."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"a duration is written like 30m, 12h, 7d or 2w, not {text!r}")
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"a duration is written like 30m, 12h, 7d or 2w, not {text!r}")
    ms = int(match.group(1)) * _UNITS[match.group(2)]
    if ms <= 0:
        raise ValueError("a duration must be positive")
    return ms


def resolution_for(window_ms: int) -> int:
    """Bucket size for a window: minutes up to 2 hours, hours up to 4 days, days beyond.
    Keeps every ring at most 120, 96 or 366 values long."""
    if window_ms <= 2 * HOUR_MS:
        return MINUTE_MS
    if window_ms <= 4 * DAY_MS:
        return HOUR_MS
    return DAY_MS


@dataclass(slots=True)
class Feature:
    """One counter kept per person: events of `event_type` matching `where`,
    counted (`sum_of` None) or summed over a numeric property, per bucket."""

    fid: str
    event_type: str  # "*" matches every event
    where_spec: dict
    sum_of: str | None
    resolution_ms: int
    length: int = 1  # buckets kept: the longest window asking for this feature
    matches: object = field(default=None, repr=False)  # compiled property filter

    def amount(self, properties: dict) -> float | int | None:
        """What one event adds, or None when it does not count."""
        if self.matches is not None and not self.matches(properties):
            return None
        return self.measure(properties)

    def measure(self, properties: dict) -> float | int | None:
        """What an event that passed the property filter adds."""
        if self.sum_of is None:
            return 1
        value = properties.get(self.sum_of)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value


def feature_id(event_type: str, where_spec: dict, sum_of: str | None, resolution_ms: int) -> str:
    """A short id that stays the same across catalog reloads for the same definition,
    so stored rings keep their meaning when a catalog is edited."""
    canonical = orjson.dumps(
        [event_type, where_spec, sum_of, resolution_ms], option=orjson.OPT_SORT_KEYS
    )
    return base64.urlsafe_b64encode(hashlib.blake2b(canonical, digest_size=6).digest()).decode()


def buckets_for(window_ms: int, resolution_ms: int) -> int:
    return -(-window_ms // resolution_ms)


def window_total(ring: list | None, now_ms: int, resolution_ms: int, buckets: int) -> float:
    """Sum of the newest `buckets` buckets up to now: the current bucket and the
    buckets - 1 before it. An event in bucket now - buckets is outside."""
    if not ring:
        return 0
    newest = ring[0]
    oldest_inside = now_ms // resolution_ms - buckets + 1
    total = 0
    # Values are ordered newest first; stop at the first bucket outside the window.
    for age, value in enumerate(ring[1:]):
        bucket = newest - age
        if bucket < oldest_inside:
            break
        total += value
    return total
