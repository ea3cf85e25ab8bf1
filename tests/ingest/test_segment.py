"""Segment messages mapped onto Attimo events: the pure mapping, its limits and
time handling, gzip bodies and the write-key convention."""

import base64
import gzip

import orjson
import pytest

from api.routes.segment import UnsupportedEncoding, gunzip_bounded
from engine.catalog.compile import empty_catalog
from engine.errors import BodyTooLarge, EventRejected, MalformedBody, NotAuthenticated
from engine.ingest.identity import Caller, authenticate_write_key, resolve_events
from engine.ingest.segment import decode_batch_body, decode_single_body, track_type, wire_events
from engine.settings import Settings

NOW = 1_764_000_000_000
SETTINGS = Settings(server_token="srv-token")


def batch(*messages, **top):
    return orjson.dumps({"batch": list(messages), **top})


def msg(**fields):
    return {"type": "track", "event": "Signed Up", "messageId": "m1", "anonymousId": "a1", **fields}


def mapped(*messages, **top):
    return wire_events(decode_batch_body(batch(*messages, **top)), NOW)


def test_track_maps_name_ids_and_properties():
    (event,) = mapped(msg(event="Order Completed", userId="u1", properties={"total": 30}))
    assert (event.id, event.type, event.anonymous_id, event.user_id, event.properties) == (
        "m1", "order_completed", "a1", "u1", {"total": 30})


@pytest.mark.parametrize(("name", "event_type"), [
    ("Order Completed", "order_completed"),
    ("video_progress", "video_progress"),
    ("  Viewed /pricing page ", "viewed_pricing_page"),
    ("Email Open", "email_open"),
])
def test_track_names_become_snake_case_types(name, event_type):
    assert track_type(name) == event_type


def test_page_is_a_page_view_with_the_path_the_rules_match():
    (event,) = mapped(msg(type="page", name="Pricing", category="crm",
                          properties={"page_type": "pricing"},
                          context={"page": {"path": "/pricing/crm", "url": "https://shop.example/pricing/crm",
                                            "referrer": "https://search.example/", "title": "CRM pricing"}}))
    assert event.type == "page_view"
    assert event.properties == {
        "page_type": "pricing", "path": "/pricing/crm", "url": "https://shop.example/pricing/crm",
        "referrer": "https://search.example/", "title": "CRM pricing", "name": "Pricing", "category": "crm",
    }


def test_page_properties_win_and_the_path_falls_back_to_the_url():
    (event,) = mapped(msg(type="page", properties={"url": "https://shop.example/cart?x=1", "category": "crm"},
                          category="ignored"))
    assert event.properties == {"url": "https://shop.example/cart?x=1", "path": "/cart", "category": "crm"}


def test_screen_is_a_screen_view_named_after_the_screen():
    (event,) = mapped(msg(type="screen", name="Checkout", properties={"step": 2}))
    assert (event.type, event.properties) == ("screen_view", {"step": 2, "name": "Checkout"})


def test_identify_sets_traits_over_context_traits():
    (event,) = mapped(msg(type="identify", userId="u1", traits={"age": 30, "plan": "pro"},
                          context={"traits": {"plan": "free", "country": "IT"}}))
    assert (event.type, event.user_id) == ("identify", "u1")
    assert event.traits == {"plan": "pro", "country": "IT", "age": 30}


def test_context_traits_ride_along_on_other_calls():
    (event,) = mapped(msg(context={"traits": {"email_verified": True}, "ip": "10.0.0.1"}))
    assert event.traits == {"email_verified": True}


def test_batch_context_is_the_default_for_each_message():
    page, track = mapped(msg(type="page", messageId="m1"), msg(messageId="m2", context={"traits": {"b": 2}}),
                         context={"page": {"path": "/home"}, "traits": {"a": 1}})
    assert page.properties["path"] == "/home" and page.traits == {"a": 1}
    assert track.traits == {"b": 2}


def test_alias_merges_the_previous_id_into_the_user_id():
    events = mapped(msg(type="alias", previousId="a-old", userId="u1", anonymousId=None))
    (event,) = resolve_events(events, Caller(is_server=True), empty_catalog(), NOW)
    assert (event.type, event.person, event.merge_from) == ("alias", "u:u1", "a:a-old")


def test_a_known_user_with_an_anonymous_id_merges_it():
    (event,) = resolve_events(mapped(msg(userId="u1")), Caller(is_server=True), empty_catalog(), NOW)
    assert (event.person, event.merge_from) == ("u:u1", "a:a1")


def test_group_traits_become_properties_not_person_traits():
    (event,) = mapped(msg(type="group", groupId=42, traits={"industry": "retail"}))
    assert (event.type, event.properties, event.traits) == ("group", {"industry": "retail", "group_id": "42"}, None)


def test_numeric_ids_become_strings():
    (event,) = mapped(msg(userId=7, anonymousId=None, messageId=99))
    assert (event.user_id, event.id) == ("7", "99")


def test_without_message_id_the_same_content_is_the_same_event():
    first, again, other = mapped(msg(messageId=None), msg(messageId=None), msg(messageId=None, event="Other"))
    assert first.id == again.id != other.id
    assert first.id.startswith("seg-")


def test_timestamps_lose_the_senders_clock_skew():
    # The sender's clock is 1 h ahead: it stamped the event 2 s before sending.
    (event,) = mapped(msg(timestamp="2026-11-24T11:00:00.000+01:00"), sentAt="2026-11-24T10:00:02Z")
    assert event.ts == NOW - 2000


def test_timestamps_without_sent_at_are_taken_as_sent():
    (event,) = mapped(msg(timestamp="2025-11-24T16:00:00Z"))
    assert event.ts == 1_764_000_000_000


def test_original_timestamp_stands_in_for_timestamp_and_none_means_server_time():
    stamped, unstamped = mapped(msg(originalTimestamp=1_763_999_000_000), msg(messageId="m2"))
    assert (stamped.ts, unstamped.ts) == (1_763_999_000_000, None)


@pytest.mark.parametrize(("message", "fragment", "field"), [
    (msg(type="compose"), "type must be one of", "batch[0].type"),
    ({"event": "x", "anonymousId": "a"}, "needs a type", "batch[0].type"),
    (msg(event=" !! "), "needs an event name", "batch[0].event"),
    (msg(type="alias", userId="u1"), "previousId and userId", "batch[0].previousId"),
    (msg(type="group"), "needs groupId", "batch[0].groupId"),
    (msg(anonymousId=None), "anonymous_id or user_id", "batch[0]"),
    (msg(userId="has space"), "without spaces or braces", "batch[0].user_id"),
    (msg(timestamp="yesterday"), "ISO 8601", "batch[0].timestamp"),
    (msg(properties=[1]), "Expected `object | null`", "batch[0].properties"),
])
def test_bad_messages_are_rejected_naming_the_field(message, fragment, field):
    with pytest.raises(EventRejected) as caught:
        mapped(message)
    assert fragment in caught.value.reason and caught.value.field == field


@pytest.mark.parametrize(("message", "field", "limit"), [
    (msg(properties={"s": "x" * 4097}), "batch[0].properties.s", 4096),
    (msg(properties={"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}), "batch[0].properties.a.b.c.d.e", 5),
    (msg(type="identify", traits={f"t{i}": i for i in range(101)}), "batch[0].traits", 100),
    (msg(messageId="m" * 129), "batch[0].id", 128),
])
def test_the_limits_of_post_events_apply(message, field, limit):
    with pytest.raises(EventRejected) as caught:
        mapped(message)
    assert (caught.value.field, caught.value.limit) == (field, limit)


def test_more_than_500_messages_is_refused():
    with pytest.raises(EventRejected) as caught:
        decode_batch_body(batch(*[msg(messageId=f"m{i}") for i in range(501)]))
    assert (caught.value.field, caught.value.limit) == ("batch", 500)


def test_malformed_json_is_a_400_kind_of_error():
    with pytest.raises(MalformedBody):
        decode_batch_body(b'{"batch": [')


def test_a_single_call_takes_its_type_from_the_path_and_names_fields_plainly():
    body = orjson.dumps({"type": "identify", "event": "Clicked", "anonymousId": "a1", "messageId": "m1",
                         "writeKey": "k", "sentAt": "2025-11-24T16:00:00Z"})
    single = decode_single_body(body, "track")
    (event,) = wire_events(single, NOW, single=True)
    assert (event.type, single.write_key) == ("clicked", "k")
    with pytest.raises(EventRejected) as caught:
        wire_events(decode_single_body(orjson.dumps({"anonymousId": "a b"}), "page"), NOW, single=True)
    assert caught.value.field == "anonymous_id"


# -- gzip bodies ---------------------------------------------------------------------


def test_gzip_bodies_inflate_and_plain_ones_pass():
    body = batch(msg())
    assert gunzip_bounded(gzip.compress(body), "gzip") == body
    assert gunzip_bounded(gzip.compress(body[:5]) + gzip.compress(body[5:]), "gzip") == body
    assert gunzip_bounded(body, None) == body


def test_a_zip_bomb_stops_at_the_limit():
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLarge) as caught:
        gunzip_bounded(bomb, "gzip")
    assert caught.value.limit == 512 * 1024
    assert gunzip_bounded(gzip.compress(b" " * 512 * 1024), "gzip") == b" " * 512 * 1024


@pytest.mark.parametrize(("body", "encoding", "error"), [
    (b"not gzip at all", "gzip", MalformedBody),
    (gzip.compress(b'{"batch": []}')[:-6], "gzip", MalformedBody),
    (b"{}", "br", UnsupportedEncoding),
])
def test_bad_encodings_are_refused(body, encoding, error):
    with pytest.raises(error):
        gunzip_bounded(body, encoding)


# -- the write key ----------------------------------------------------------------------


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("authorization", "body_key"), [
    (basic("srv-token"), None),
    ("Basic " + base64.b64encode(b"srv-token").decode(), None),  # no colon: older clients
    ("Bearer srv-token", None),
    (None, "srv-token"),
])
def test_the_server_token_is_the_write_key(authorization, body_key):
    assert authenticate_write_key(authorization, body_key, SETTINGS).is_server


@pytest.mark.parametrize(("authorization", "body_key", "fragment"), [
    (basic("wrong"), None, "unknown write key"),
    (basic("wrong"), "srv-token", "unknown write key"),  # the header decides
    ("Basic !!!", None, "base64"),
    ("Digest x", None, "HTTP Basic"),
    (None, None, "send the write key"),
])
def test_a_bad_write_key_is_refused(authorization, body_key, fragment):
    with pytest.raises(NotAuthenticated) as caught:
        authenticate_write_key(authorization, body_key, SETTINGS)
    assert fragment in str(caught.value)


def test_no_server_token_configured_means_no_write_key():
    with pytest.raises(NotAuthenticated):
        authenticate_write_key(basic(""), None, Settings(server_token=None))
