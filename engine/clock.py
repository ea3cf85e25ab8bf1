"""Time as the engine counts it: integer milliseconds since the epoch. Every
clock in the engine is this function or one injected in its place (tests)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
