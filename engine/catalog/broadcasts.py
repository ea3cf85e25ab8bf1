"""Broadcasts: the catalog's `broadcasts:` section, one message to every member
of a tracked segment at a moment (in each person's own time zone, or one
absolute instant), paced to a rate, under the contact policy. Validated here
with every problem at its path; walking the segment and queueing the messages
is engine/followups/broadcasts.py. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.catalog.journeys import SEND_CHANNELS, Template
from engine.catalog.rules import Compiler

BROADCAST_FIELDS = ("id", "description", "segment", "channel", "template", "purpose", "at", "local_time", "rate",
                    "holdout")
BROADCAST_ID = re.compile(r"[a-z0-9_\-]{1,64}")  # no ':' so `bc:<broadcast>:<person>` splits one way
MESSAGE_PREFIX = "bc:"
DEFAULT_RATE = 50.0  # messages per second
MAX_RATE = 1000.0  # due times are whole ms: beyond this two messages would share one
# Local times are reached first at UTC+14 (Pacific/Kiritimati): a local-time
# broadcast starts walking then, so nobody's moment has passed when it is queued.
EARLIEST_OFFSET = timedelta(hours=14)


@dataclass(frozen=True, slots=True)
class Broadcast:
    id: str
    segment: str
    channel: str
    template: str
    purpose: str = "marketing"
    at: datetime | None = None  # wall clock (naive) when local_time, else aware; None: when started
    local_time: bool = False
    rate: float = DEFAULT_RATE
    holdout_pct: float = 0.0

    @property
    def start_ms(self) -> int | None:
        """When the walk starts by itself: the earliest zone's `at`, or `at`
        (None: only when an operator starts it)."""
        if self.at is None:
            return None
        if self.local_time:
            return _ms(self.at.replace(tzinfo=UTC) - EARLIEST_OFFSET)
        return _ms(self.at)

    def due_ms(self, zone: str | None, default_zone: str = "UTC") -> int:
        """The moment this broadcast is meant for someone in `zone` (an IANA
        name; None or unknown: `default_zone`); 0 for a broadcast without
        `at`: as soon as it starts."""
        if self.at is None:
            return 0
        if not self.local_time:
            return _ms(self.at)
        try:
            tz = ZoneInfo(zone or default_zone)
        except (ZoneInfoNotFoundError, ValueError):
            tz = ZoneInfo(default_zone)
        return _ms(self.at.replace(tzinfo=tz))

    def message_id(self, person: str) -> str:
        """The idempotency key of the person's message: queued once, however
        often the segment is walked."""
        return f"{MESSAGE_PREFIX}{self.id}:{person}"

    def describe(self) -> dict:
        return {"id": self.id, "segment": self.segment, "channel": self.channel, "template": self.template,
                "purpose": self.purpose, "at": self.at.isoformat() if self.at else None, "local_time": self.local_time,
                "rate": self.rate, "holdout": self.holdout_pct, "starts_ms": self.start_ms}


def broadcast_of(message_id: str) -> str | None:
    """The broadcast a queued message belongs to, from its id (signed into the
    email's links, so opens and clicks count for it)."""
    if not message_id.startswith(MESSAGE_PREFIX):
        return None
    name, sep, _ = message_id[len(MESSAGE_PREFIX):].partition(":")
    return name if sep and name else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def compile_broadcasts(spec: Any, compiler: Compiler, templates: dict[str, Template],
                       tracked: frozenset[str]) -> dict[str, Broadcast]:
    if spec is None:
        return {}
    if not isinstance(spec, list):
        compiler.problem("broadcasts", "a list of broadcasts, each with an id")
        return {}
    out: dict[str, Broadcast] = {}
    seen: set[str] = set()
    for i, item in enumerate(spec):
        path = f"broadcasts[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            compiler.problem(path, "each broadcast is a mapping with an id (a string)")
            continue
        if not BROADCAST_ID.fullmatch(item["id"]):
            compiler.problem(f"{path}.id", "1 to 64 of a-z 0-9 _ -")
            continue
        if item["id"] in seen:
            compiler.problem(f"{path}.id", f"duplicate id {item['id']!r}")
            continue
        seen.add(item["id"])
        made = _broadcast(item, path, compiler, templates, tracked)
        if made is not None:
            out[made.id] = made
    return out


def _broadcast(item: dict, path: str, compiler: Compiler, templates: dict[str, Template],
               tracked: frozenset[str]) -> Broadcast | None:
    before = len(compiler.problems)
    for key in item:
        if key not in BROADCAST_FIELDS:
            compiler.problem(f"{path}.{key}", f"unknown broadcast field; expected {', '.join(BROADCAST_FIELDS)}")
    segment = item.get("segment")
    if not isinstance(segment, str):
        compiler.problem(f"{path}.segment", "the id of a tracked segment (text)")
    elif segment not in compiler.segment_ids:
        compiler.problem(f"{path}.segment", f"no segment named {segment!r}")
    elif segment not in tracked:
        compiler.problem(f"{path}.segment", f"segment {segment!r} is not tracked: a broadcast walks the members "
                                            "a segment with track: true keeps")
    channel = item.get("channel")
    if channel not in SEND_CHANNELS:
        compiler.problem(f"{path}.channel", f"one of {', '.join(SEND_CHANNELS)}")
    template = item.get("template")
    if not isinstance(template, str) or template not in templates:
        compiler.problem(f"{path}.template", f"no template named {template!r} under templates")
    purpose = item.get("purpose", "marketing")
    if not isinstance(purpose, str) or not purpose:
        compiler.problem(f"{path}.purpose", "a purpose name, e.g. marketing or newsletter")
    local_time = item.get("local_time", False)
    if not isinstance(local_time, bool):
        compiler.problem(f"{path}.local_time", "true or false")
        local_time = False
    at = None
    if "at" in item:
        at = _at(item["at"], local_time, f"{path}.at", compiler)
    elif local_time:
        compiler.problem(f"{path}.at", "local_time needs at: the wall-clock time (2026-12-08T10:00)")
    rate = item.get("rate", DEFAULT_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE:
        compiler.problem(f"{path}.rate", f"messages per second, above 0 and at most {MAX_RATE:g}")
    holdout = item.get("holdout", 0)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout <= 100:
        compiler.problem(f"{path}.holdout", "a percentage between 0 and 100")
    if len(compiler.problems) > before:
        return None
    return Broadcast(item["id"], segment, channel, template, purpose, at, local_time, float(rate), float(holdout))


def _at(value: Any, local_time: bool, path: str, compiler: Compiler) -> datetime | None:
    """`at`: a wall-clock time without offset when local_time (each person's
    zone places it), else an ISO 8601 time with its offset (one instant)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = None  # a day alone says no time
    if not isinstance(value, datetime):
        compiler.problem(path, "an ISO 8601 date and time: 2026-12-08T10:00 with local_time: true, "
                               "or 2026-12-08T10:00:00+01:00")
        return None
    if local_time and value.tzinfo is not None:
        compiler.problem(path, "with local_time: true, a wall-clock time without offset (2026-12-08T10:00): "
                               "each person's time zone places it")
        return None
    if not local_time and value.tzinfo is None:
        compiler.problem(path, "an instant needs its offset (2026-12-08T10:00:00+01:00); "
                               "or say local_time: true for each person's own 10:00")
        return None
    return value
