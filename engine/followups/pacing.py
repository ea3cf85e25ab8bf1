"""Due times paced to a rate: each message gets the first free slot (one slot
every 1/rate second) at or after the moment it is meant for, so however the
members of a broadcast are spread over time zones, no second holds more than
`rate` of its messages. Memory stays flat: the slots taken are kept as a few
runs (about one per distinct target moment), not one entry per message. Pure."""

from __future__ import annotations

import math
from bisect import bisect_right


class Pacer:
    def __init__(self, rate_per_s: float):
        self.width_ms = 1000.0 / rate_per_s
        self._starts: list[int] = []  # disjoint runs of taken slots [start, end), never adjacent
        self._ends: list[int] = []
        self._cursor: dict[int, int] = {}  # target ms -> the slot its next message tries first

    def take(self, target_ms: int) -> int:
        """The due time of the next message meant for `target_ms`."""
        slot = self._cursor.get(target_ms)
        if slot is None:
            slot = math.ceil(target_ms / self.width_ms)
        i = bisect_right(self._starts, slot) - 1
        if i >= 0 and slot < self._ends[i]:
            slot = self._ends[i]  # taken: the run's end is free (runs never touch)
        self._occupy(slot, i)
        self._cursor[target_ms] = slot + 1
        return math.ceil(slot * self.width_ms)

    def _occupy(self, slot: int, i: int) -> None:
        """Mark `slot` taken; `i` is the run starting at or before it (-1: none)."""
        starts, ends = self._starts, self._ends
        joins_left = i >= 0 and ends[i] == slot
        joins_right = i + 1 < len(starts) and starts[i + 1] == slot + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = slot + 1
        elif joins_right:
            starts[i + 1] = slot
        else:
            starts.insert(i + 1, slot)
            ends.insert(i + 1, slot + 1)
