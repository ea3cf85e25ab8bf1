"""The Segment HTTP Tracking API spoken by clients already in the field
(analytics-python, rudder-sdk-python, …): its messages decoded and mapped onto
Attimo wire events, which then take the same checks and pipeline as
POST /v1/events. Pure: bytes and a clock in, `WireEvent`s out."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from engine.errors import EventRejected, MalformedBody
from engine.events import WireEvent, _split_msgspec_error, check_wire_event
from engine.settings import MAX_EVENTS_PER_BATCH

Id = str | int


class SegmentMessage(msgspec.Struct, rename="camel", gc=False):
    """One call as the clients send it; fields Attimo does not use (integrations,
    channel, version, receivedAt …) are ignored."""

    type: str | None = None
    message_id: Id | None = None
    anonymous_id: Id | None = None
    user_id: Id | None = None
    previous_id: Id | None = None
    group_id: Id | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: str | float | None = None
    original_timestamp: str | float | None = None
    sent_at: str | None = None
    write_key: str | None = None


class SegmentBatch(msgspec.Struct, rename="camel", gc=False):
    """POST /v1/batch: the calls plus what the batch says for all of them."""

    batch: list[SegmentMessage]
    context: dict[str, Any] | None = None
    sent_at: str | None = None
    write_key: str | None = None


KINDS = ("track", "identify", "page", "screen", "alias", "group")

_batch_decoder = msgspec.json.Decoder(SegmentBatch)
_message_decoder = msgspec.json.Decoder(SegmentMessage)
_encode = msgspec.json.encode
# Segment names events in Title Case with spaces ("Order Completed"); Attimo
# event types are snake_case words ("order_completed").
_NOT_IN_TYPE = re.compile(r"[^a-z0-9_.:\-]+")
PAGE_FIELDS = ("path", "url", "referrer", "title", "search")


def decode_batch_body(body: bytes) -> SegmentBatch:
    """POST /v1/batch: 400 for bad JSON, 422 naming the field otherwise."""
    batch = _decode(_batch_decoder, body)
    if not batch.batch:
        raise EventRejected("a batch needs at least one message", "batch")
    if len(batch.batch) > MAX_EVENTS_PER_BATCH:
        raise EventRejected("too many messages in one batch", "batch", MAX_EVENTS_PER_BATCH)
    return batch


def decode_single_body(body: bytes, kind: str) -> SegmentBatch:
    """POST /v1/track, /v1/page …: one message whose type is the path's."""
    message = _decode(_message_decoder, body)
    message.type = kind
    return SegmentBatch(batch=[message], sent_at=message.sent_at, write_key=message.write_key)


def wire_events(batch: SegmentBatch, now_ms: int, single: bool = False) -> list[WireEvent]:
    """Every message as an Attimo wire event, checked with the same limits as
    POST /v1/events; the whole batch or nothing."""
    sent_ms = _iso_ms(batch.sent_at, "sentAt") if batch.sent_at is not None else None
    events = []
    for i, message in enumerate(batch.batch):
        prefix = "" if single else f"batch[{i}]"
        event = to_wire_event(message, batch.context, sent_ms, now_ms, prefix)
        try:
            check_wire_event(event, prefix)
        except EventRejected as exc:
            raise EventRejected(exc.reason, exc.field.lstrip("."), exc.limit) from None
        events.append(event)
    return events


def to_wire_event(
    message: SegmentMessage, batch_context: dict | None, sent_ms: int | None, now_ms: int, prefix: str = ""
) -> WireEvent:
    """One Segment call → one Attimo event (see docs/segment.md for the table)."""
    kind = message.type
    context = {**(batch_context or {}), **(message.context or {})}
    context_traits = context.get("traits") if isinstance(context.get("traits"), dict) else None
    properties = dict(message.properties or {})
    traits = dict(context_traits) if context_traits else None
    anonymous_id = _id(message.anonymous_id)
    user_id = _id(message.user_id)
    if kind == "track":
        event_type = track_type(message.event or "")
        if not event_type:
            raise EventRejected("a track call needs an event name", _at(prefix, "event"))
    elif kind == "page":
        event_type = "page_view"
        page = context.get("page") if isinstance(context.get("page"), dict) else {}
        page_properties(properties, page, message.name, message.category)
    elif kind == "screen":
        event_type = "screen_view"
        _name_and_category(properties, message.name, message.category)
    elif kind == "identify":
        event_type = "identify"
        traits = {**(traits or {}), **(message.traits or {})}
    elif kind == "alias":
        # The previous id's history merges into the user id: the engine's merge.
        event_type = "alias"
        if message.previous_id is None or user_id is None:
            raise EventRejected("an alias call needs previousId and userId", _at(prefix, "previousId"))
        anonymous_id = _id(message.previous_id)
    elif kind == "group":
        event_type = "group"
        if message.group_id is None:
            raise EventRejected("a group call needs groupId", _at(prefix, "groupId"))
        # Group traits describe the company, not the person: event properties.
        properties = {**(message.traits or {}), "group_id": _id(message.group_id)}
    elif kind is None:
        raise EventRejected("a message needs a type", _at(prefix, "type"))
    else:
        raise EventRejected(f"type must be one of {', '.join(KINDS)}", _at(prefix, "type"))
    return WireEvent(
        id=_id(message.message_id) or derived_id(message),
        type=event_type,
        anonymous_id=anonymous_id,
        user_id=user_id,
        ts=event_ms(message, sent_ms, now_ms, prefix),
        properties=properties,
        traits=traits or None,
    )


def track_type(name: str) -> str:
    """'Order Completed' → 'order_completed'; 'video_progress' stays."""
    return _NOT_IN_TYPE.sub("_", name.strip().lower()).strip("_")


def page_properties(properties: dict, page: dict, name: str | None, category: str | None) -> None:
    """Fill a page view's path, url … from context.page where the properties lack
    them; the path from the url as a last resort, since page_view rules match paths."""
    for field in PAGE_FIELDS:
        value = page.get(field)
        if field not in properties and isinstance(value, str):
            properties[field] = value
    url = properties.get("url")
    if "path" not in properties and isinstance(url, str) and url:
        properties["path"] = urlsplit(url).path or "/"
    _name_and_category(properties, name, category)


def _name_and_category(properties: dict, name: str | None, category: str | None) -> None:
    if name is not None:
        properties.setdefault("name", name)
    if category is not None:
        properties.setdefault("category", category)


def event_ms(message: SegmentMessage, sent_ms: int | None, now_ms: int, prefix: str) -> int | None:
    """When it happened. With the sender's clock at send time (sentAt), the
    sender's clock skew is taken out as Segment does:
    receivedAt − (sentAt − timestamp). Without any stamp: server time (None)."""
    stamp, field = message.timestamp, "timestamp"
    if stamp is None:
        stamp, field = message.original_timestamp, "originalTimestamp"
    if stamp is None:
        return None
    ms = _iso_ms(stamp, _at(prefix, field))
    if message.sent_at is not None:
        sent_ms = _iso_ms(message.sent_at, _at(prefix, "sentAt"))
    if sent_ms is not None:
        ms = now_ms - (sent_ms - ms)
    return max(ms, 0)


def derived_id(message: SegmentMessage) -> str:
    """No messageId (raw HTTP callers may omit it): the same message content is
    the same event, so a retried request is still applied once."""
    return "seg-" + hashlib.blake2b(_encode(message), digest_size=12).hexdigest()


def _iso_ms(stamp: str | float, field: str) -> int:
    if not isinstance(stamp, str):
        return int(stamp)
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        raise EventRejected("timestamps must be ISO 8601", field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _id(value: Id | None) -> str | None:
    return None if value is None or value == "" else str(value)


def _at(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix else field


def _decode(decoder: msgspec.json.Decoder, body: bytes):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise EventRejected(*_split_msgspec_error(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("malformed JSON: nested too deep") from None
