"""Event validation and limits, and event time handling."""

import orjson
import pytest

from engine.errors import EventRejected, MalformedBody
from engine.events import decode_batch, event_time_ms

NOW = 1_764_000_000_000


def batch(*events):
    return orjson.dumps({"events": list(events)})


def ev(**fields):
    return {"id": "e1", "type": "page_view", "anonymous_id": "a1", **fields}


def test_a_valid_batch_decodes():
    (event,) = decode_batch(batch(ev(properties={"path": "/"})))
    assert (event.id, event.type, event.anonymous_id, event.properties) == ("e1", "page_view", "a1", {"path": "/"})


@pytest.mark.parametrize(("body", "field", "limit"), [
    (batch(*[ev(id=f"e{i}") for i in range(501)]), "events", 500),
    (batch(ev(properties={"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}})), "events[0].properties.a.b.c.d.e", 5),
    (batch(ev(properties={"s": "x" * 4097})), "events[0].properties.s", 4096),
    (batch(ev(properties={f"p{i}": i for i in range(101)})), "events[0].properties", 100),
    (batch(ev(traits={"bio": "x" * 5000})), "events[0].traits.bio", 4096),
    (batch(ev(id="x" * 129)), "events[0].id", 128),
])
def test_limits_name_the_field_and_the_limit(body, field, limit):
    with pytest.raises(EventRejected) as caught:
        decode_batch(body)
    assert (caught.value.field, caught.value.limit) == (field, limit)


def test_depth_five_is_allowed():
    decode_batch(batch(ev(properties={"a": {"b": {"c": {"d": {"e": 1}}}}})))


@pytest.mark.parametrize(("event", "fragment", "field"), [
    ({"type": "x", "anonymous_id": "a"}, "Object missing required field `id`", "events[0]"),
    (ev(anonymous_id=None), "anonymous_id or user_id", "events[0]"),
    (ev(type="has space"), "event type", "events[0].type"),
    (ev(user_id="u{1}"), "without spaces or braces", "events[0].user_id"),
    (ev(properties=[1, 2]), "Expected `object`", "events[0].properties"),
    (ev(traits={"timezone": "Mars/Olympus"}), "IANA time zone", "events[0].traits.timezone"),
    (ev(traits={"timezone": "../../etc/passwd"}), "IANA time zone", "events[0].traits.timezone"),
])
def test_schema_errors_name_the_field(event, fragment, field):
    with pytest.raises(EventRejected) as caught:
        decode_batch(batch(event))
    assert fragment in caught.value.reason and caught.value.field == field


def test_malformed_json_is_a_400_kind_of_error():
    with pytest.raises(MalformedBody):
        decode_batch(b'{"events": [')


def test_event_time_accepts_epoch_ms_and_iso_8601_and_clamps_the_future():
    assert event_time_ms(None, NOW, "e") == NOW
    assert event_time_ms(NOW - 5, NOW, "e") == NOW - 5
    assert event_time_ms("2025-11-24T16:00:00Z", NOW, "e") == NOW
    assert event_time_ms("2025-11-24T17:00:00+01:00", NOW, "e") == NOW
    assert event_time_ms("2025-11-24T15:00:00", NOW, "e") == NOW - 3_600_000  # naive means UTC
    assert event_time_ms(NOW + 10 * 86_400_000, NOW, "e") == NOW
    with pytest.raises(EventRejected, match="ISO 8601"):
        event_time_ms("yesterday", NOW, "e")
