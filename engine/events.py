"""Event schema, validation and limits. Turns request bytes into `Event`s the
pipeline can apply, or raises an error that names the field and the limit."""

from __future__ import annotations

import math
import re
import zoneinfo
from datetime import UTC, datetime
from functools import cache
from typing import Any

import msgspec

from engine.errors import EventRejected, MalformedBody
from engine.settings import (
    MAX_DEPTH,
    MAX_EVENTS_PER_BATCH,
    MAX_PROPERTIES,
    MAX_STRING_LENGTH,
)

# A person is KNOWN + user id or ANONYMOUS + anonymous id (engine/ingest/identity.py
# decides which); the two spaces never share a key.
KNOWN = "u:"
ANONYMOUS = "a:"
# Person ids end up inside a Redis hash tag: braces and whitespace would break it.
PERSON_ID = re.compile(r"[^\s{}]{1,128}")
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
PLACEMENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# A pool of single-use discount codes (offer content `code_pool`), and one code in it.
CODE_POOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
DISCOUNT_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EVENT_ID_MAX = 128


class WireEvent(msgspec.Struct, gc=False):
    """An event as clients send it."""

    id: str
    type: str
    anonymous_id: str | None = None
    user_id: str | None = None
    user_sig: str | None = None
    ts: float | str | None = None
    properties: dict[str, Any] = {}
    traits: dict[str, Any] | None = None


class WireBatch(msgspec.Struct, gc=False):
    events: list[WireEvent]


class Event(msgspec.Struct, array_like=True, gc=False):
    """A validated event with its person resolved: what the pipeline applies.

    `merge_from` names an anonymous profile to fold into `person` (set when a
    signed user id arrives together with an anonymous id). `trusted`: a server
    token sent it (or Attimo made it), so its amounts may count as money."""

    id: str
    type: str
    person: str
    ts: int
    properties: dict[str, Any] = {}
    traits: dict[str, Any] | None = None
    merge_from: str | None = None
    trusted: bool = False


_batch_decoder = msgspec.json.Decoder(WireBatch)


def decode_json(decoder: msgspec.json.Decoder, body: bytes):
    """A body through a typed decoder: 400 for bad JSON, 422 naming the field
    that breaks the schema."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise EventRejected(*_split_msgspec_error(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("malformed JSON: nested too deep") from None


def decode_batch(body: bytes) -> list[WireEvent]:
    """Parse and bound a batch: 400 for bad JSON, 422 naming the field otherwise."""
    events = decode_json(_batch_decoder, body).events
    if not events:
        raise EventRejected("a batch needs at least one event", "events")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise EventRejected("too many events in one batch", "events", MAX_EVENTS_PER_BATCH)
    for i, event in enumerate(events):
        check_wire_event(event, f"events[{i}]")
    return events


def check_wire_event(event: WireEvent, path: str) -> None:
    if not event.id or len(event.id) > EVENT_ID_MAX:
        raise EventRejected("event id must be 1 to 128 characters", f"{path}.id", EVENT_ID_MAX)
    if not EVENT_TYPE.fullmatch(event.type):
        raise EventRejected(
            "event type must be 1 to 64 letters, digits or _ . : -", f"{path}.type", 64
        )
    for name in ("anonymous_id", "user_id"):
        value = getattr(event, name)
        if value is not None and not PERSON_ID.fullmatch(value):
            raise EventRejected(
                "person ids are 1 to 128 characters without spaces or braces", f"{path}.{name}", 128
            )
    if event.anonymous_id is None and event.user_id is None:
        raise EventRejected("an event needs anonymous_id or user_id", path)
    if event.type in ATTIMO_EVENTS:
        raise EventRejected(f"{event.type} events are made by Attimo when a segment's members change",
                            f"{path}.type")
    if event.type == CONSENT:
        check_consent(event.properties, f"{path}.properties")
    check_value(event.properties, f"{path}.properties", 1)
    if event.traits is not None:
        check_value(event.traits, f"{path}.traits", 1)
        zone = event.traits.get(TIMEZONE_TRAIT)
        if zone is not None and not known_time_zone(zone):
            raise EventRejected("timezone must be an IANA time zone name, e.g. Europe/Rome",
                                f"{path}.traits.{TIMEZONE_TRAIT}")


CONSENT = "consent"
# The trait that places a person in a time zone: quiet hours are theirs.
TIMEZONE_TRAIT = "timezone"
EMAIL_OPEN = "email_open"
EMAIL_CLICK = "email_click"
# Recorded by the signed links of an email (api/followups.py); a browser that
# sent them itself could walk a person through a journey's "opened E" branch.
LINK_EVENTS = frozenset({EMAIL_OPEN, EMAIL_CLICK})
# Made by Attimo when a tracked segment's membership changes (journeys can
# start on them) and when time alone may have changed it; nobody sends them.
SEGMENT_ENTERED = "segment_entered"
SEGMENT_EXITED = "segment_exited"
SEGMENT_RECHECK = "segment_recheck"
ATTIMO_EVENTS = frozenset({SEGMENT_ENTERED, SEGMENT_EXITED, SEGMENT_RECHECK})
# Advertising consent: what audience destinations export people under.
ADS_CHANNEL = "ads"
ADVERTISING = "advertising"
CHANNEL_NAME = re.compile(r"[a-z0-9_]{1,32}|\*")


def check_consent(properties: dict, path: str) -> None:
    """A consent event says {"channel", "granted": true|false, "purpose"?} (purpose
    "*", every purpose, when absent): the contact policy reads nothing else."""
    for name in ("channel", "purpose"):
        value = properties.get(name, "*" if name == "purpose" else None)
        if not isinstance(value, str) or not CHANNEL_NAME.fullmatch(value):
            raise EventRejected(f"a consent event needs {name}: 1 to 32 of a-z 0-9 _ (or *)", f"{path}.{name}", 32)
    if not isinstance(properties.get("granted"), bool):
        raise EventRejected("a consent event needs granted: true or false", f"{path}.granted")


@cache
def _zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def known_time_zone(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 64 and ".." not in name and _zone(name)


def check_number(value: Any, path: str) -> None:
    """Numbers a store and a comparison can hold: 64-bit integers, finite floats."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise EventRejected("integer out of range (64-bit signed)", path)
    if isinstance(value, float) and not math.isfinite(value):
        raise EventRejected("number out of range (finite values only)", path)


def check_value(value: Any, path: str, depth: int) -> None:
    """Enforce depth, string length, size and number limits on free-form JSON."""
    if isinstance(value, int | float):
        check_number(value, path)
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise EventRejected("string too long", path, MAX_STRING_LENGTH)
        return
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise EventRejected("nesting too deep", path, MAX_DEPTH)
        if len(value) > MAX_PROPERTIES:
            raise EventRejected("too many properties", path, MAX_PROPERTIES)
        for key, item in value.items():
            if len(key) > 128:
                raise EventRejected("property name too long", f"{path}.{key[:32]}…", 128)
            check_value(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, list):
        if depth > MAX_DEPTH:
            raise EventRejected("nesting too deep", path, MAX_DEPTH)
        if len(value) > MAX_PROPERTIES:
            raise EventRejected("too many items", path, MAX_PROPERTIES)
        for i, item in enumerate(value):
            check_value(item, f"{path}[{i}]", depth + 1)


def event_time_ms(ts: float | str | None, now_ms: int, path: str) -> int:
    """Epoch ms or ISO 8601; server time when absent. A time in the future (a
    client clock ahead, or a forged stamp) is clamped to now, so no window bucket
    ever lies ahead of the server's clock."""
    if ts is None:
        return now_ms
    if isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            raise EventRejected("ts must be epoch milliseconds or ISO 8601", f"{path}.ts") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
    else:
        ms = int(ts)
    if ms < 0:
        raise EventRejected("ts must not be negative", f"{path}.ts")
    return min(ms, now_ms)


def _split_msgspec_error(message: str) -> tuple[str, str]:
    """msgspec says 'Expected `str`, got `int` - at `$.events[0].id`'."""
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        return message, ""
    field = where.rstrip("`").removeprefix("$").lstrip(".")
    return reason, field
