"""Clients already in the field: the real segment-analytics-python and
rudder-sdk-python libraries, pointed at `attimo serve` with the server token as
their write key, against a real Redis. What they send shows in the profile, a
resend of the same messageIds changes nothing, and what they cannot send is
refused with the answer they understand."""

from __future__ import annotations

import base64
import gzip
import re
import uuid

import httpx
import pytest
from rudderstack.analytics.client import Client as RudderClient
from rudderstack.analytics.request import APIError as RudderAPIError
from segment.analytics.client import Client as SegmentClient
from segment.analytics.request import APIError as SegmentAPIError

from engine.testing.processes import TOKEN, free_port, start_api, stop_api, wait_until

PRICING = {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}
PRICING_VIEWS = 'page_view where {"category":"crm","page_type":"pricing"} count within 7d'
ALL_VIEWS = "page_view count within 90d"
NEWSLETTER_OPENS = 'email_open where {"email":"spring_newsletter"} count within 365d'


class Recorder:
    """A client's on_error callback: what it gave up on, and why."""

    def __init__(self):
        self.errors: list[Exception] = []

    def __call__(self, error, batch):
        self.errors.append(error)


def segment_client(api, write_key: str = TOKEN, **options) -> tuple[SegmentClient, Recorder]:
    recorder = Recorder()
    client = SegmentClient(write_key=write_key, host=api.base_url, on_error=recorder,
                           upload_interval=0.05, max_retries=2, **options)
    return client, recorder


def rudder_client(api, write_key: str = TOKEN, **options) -> tuple[RudderClient, Recorder]:
    recorder = Recorder()
    client = RudderClient(write_key=write_key, host=api.base_url, on_error=recorder,
                          upload_interval=0.05, max_retries=1, **options)
    return client, recorder


CLIENTS = {"segment": segment_client, "rudder": rudder_client}


def person(api, person_id: str) -> dict:
    with api.server() as client:
        answer = client.get(f"/v1/people/{person_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def duplicates_counted(api) -> float:
    text = httpx.get(f"{api.base_url}/metrics", timeout=5).text
    found = re.search(r"^attimo_events_duplicate_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def basic(key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def send_visit(client, anonymous: str, user: str, ids: dict[str, str]) -> None:
    """Three pricing views while anonymous, a newsletter open and a video watch,
    then the person signs up and is identified with CRM traits."""
    for n in range(3):
        client.page(anonymous_id=anonymous, name="CRM pricing", category="crm",
                    properties={"page_type": "pricing", "url": "https://shop.example/pricing/crm"},
                    message_id=ids[f"page{n}"])
    client.track(anonymous_id=anonymous, event="Email Open", properties={"email": "spring_newsletter"},
                 message_id=ids["open"])
    client.flush()
    client.identify(user_id=user, anonymous_id=anonymous, message_id=ids["identify"],
                    traits={"registered": True, "age": 31, "profession": "marketing"})
    client.track(user_id=user, event="Video Progress", message_id=ids["video"],
                 properties={"video": "crm_demo", "seconds": 150})
    client.flush()


@pytest.mark.parametrize("library", CLIENTS)
def test_a_clients_calls_reach_the_profile_and_a_resend_changes_nothing(clean_api, library):
    client, recorder = CLIENTS[library](clean_api)
    tag = uuid.uuid4().hex[:8]
    anonymous, user = f"{library}-anon-{tag}", f"{library}-user-{tag}"
    ids = {name: f"{library}-{name}-{tag}" for name in ("page0", "page1", "page2", "open", "identify", "video")}
    try:
        send_visit(client, anonymous, user, ids)
        assert recorder.errors == []
        profile = wait_until(lambda: (p := person(clean_api, user))["features"][ALL_VIEWS] == 3 and p,
                             what="the visit in the profile")
        assert profile["traits"] == {"registered": True, "age": 31, "profession": "marketing"}
        assert profile["features"][PRICING_VIEWS] == 3
        assert profile["features"][NEWSLETTER_OPENS] == 1
        assert "registered" in profile["segments"]
        assert profile["score"] == pytest.approx(33, abs=0.1)  # 3 pricing views × 10 + an open × 3
        assert not person(clean_api, f"a:{anonymous}")["exists"]  # merged into the known person

        before = duplicates_counted(clean_api)
        send_visit(client, anonymous, user, ids)
        assert recorder.errors == []
        wait_until(lambda: duplicates_counted(clean_api) >= before + 6, what="the resend to be answered")
        again = person(clean_api, user)
        assert again == profile
    finally:
        client.shutdown()


@pytest.mark.parametrize("library", CLIENTS)
def test_alias_merges_the_previous_id_history(clean_api, library):
    client, recorder = CLIENTS[library](clean_api)
    tag = uuid.uuid4().hex[:8]
    previous, user = f"{library}-device-{tag}", f"{library}-member-{tag}"
    try:
        for n in range(2):
            client.page(anonymous_id=previous, properties=PRICING, message_id=f"{tag}-p{n}")
        client.flush()
        wait_until(lambda: person(clean_api, f"a:{previous}")["features"][ALL_VIEWS] == 2, what="the device's views")
        client.alias(previous_id=previous, user_id=user, message_id=f"{tag}-alias")
        client.flush()
        merged = wait_until(lambda: (p := person(clean_api, user))["features"][ALL_VIEWS] == 2 and p,
                            what="the alias merge")
        assert merged["features"][PRICING_VIEWS] == 2
        assert not person(clean_api, f"a:{previous}")["exists"]

        client.alias(previous_id=previous, user_id=user, message_id=f"{tag}-alias")
        client.page(anonymous_id=previous, properties=PRICING, message_id=f"{tag}-p0")
        client.flush()
        assert recorder.errors == []
        assert person(clean_api, user) == merged
        assert not person(clean_api, f"a:{previous}")["exists"]
    finally:
        client.shutdown()


@pytest.mark.parametrize("library", CLIENTS)
def test_a_bad_write_key_is_a_401_the_client_gives_up_on(clean_api, library):
    client, recorder = CLIENTS[library](clean_api, write_key="not-the-token")
    try:
        client.track(anonymous_id="a-intruder", event="Order Completed", message_id="intruder-1")
        client.flush()
    finally:
        client.shutdown()
    (error,) = recorder.errors
    # rudder reads `code` from the answer; without it, it would retry a 401 ten times.
    assert isinstance(error, SegmentAPIError | RudderAPIError)
    assert (error.status, error.code) == (401, "unauthorized")
    assert "write key" in error.message
    assert not person(clean_api, "a:a-intruder")["exists"]


def test_rudder_batches_past_512_kb_are_refused_with_413(clean_api):
    # rudder takes messages up to 4 MB and packs 4 MB in one request (gzipped);
    # Attimo, like Segment, takes 512 KB, counted after inflating.
    client, recorder = rudder_client(clean_api)
    bulky = {"notes": ["x" * 4000] * 100, "more": ["y" * 4000] * 60}
    try:
        client.track(anonymous_id="a-bulky", event="Note", properties=bulky, message_id="bulky-1")
        client.flush()
    finally:
        client.shutdown()
    (error,) = recorder.errors
    assert (error.status, error.code) == (413, "payload_too_large")
    assert not person(clean_api, "a:a-bulky")["exists"]


def test_malformed_and_oversize_bodies_get_a_reason(clean_api):
    with httpx.Client(base_url=clean_api.base_url, headers=basic(TOKEN), timeout=10) as http:
        malformed = http.post("/v1/batch", content=b'{"batch": [')
        assert malformed.status_code == 400
        assert malformed.json()["code"] == "bad_request" and "malformed JSON" in malformed.json()["error"]

        bad_gzip = http.post("/v1/batch", content=b"plain", headers={"Content-Encoding": "gzip"})
        assert bad_gzip.status_code == 400 and "gzip" in bad_gzip.json()["error"]

        oversize = http.post("/v1/batch", content=b" " * (600 * 1024))
        assert oversize.status_code == 413 and oversize.json()["limit"] == 512 * 1024

        bomb = gzip.compress(b'{"batch": [' + b" " * (8 * 1024 * 1024) + b"]}")
        inflated = http.post("/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"})
        assert inflated.status_code == 413 and "inflated" in inflated.json()["error"]

        too_long = http.post("/v1/track", json={"anonymousId": "a1", "event": "X", "properties": {"s": "x" * 5000}})
        assert too_long.status_code == 422
        assert (too_long.json()["field"], too_long.json()["limit"]) == ("properties.s", 4096)

        unknown = http.post("/v1/batch", json={"batch": [{"type": "compose", "anonymousId": "a1"}]})
        assert unknown.status_code == 422 and unknown.json()["field"] == "batch[0].type"

    no_key = httpx.post(f"{clean_api.base_url}/v1/identify", json={"userId": "u1"}, timeout=10)
    assert no_key.status_code == 401
    assert no_key.headers["WWW-Authenticate"].startswith("Basic")


def test_single_calls_and_the_body_write_key(clean_api):
    tag = uuid.uuid4().hex[:8]
    user = f"raw-{tag}"
    calls = [
        ("/v1/identify", {"userId": user, "traits": {"registered": True}, "messageId": f"{tag}-1"}),
        ("/v1/page", {"userId": user, "properties": PRICING, "messageId": f"{tag}-2"}),
        ("/v1/screen", {"userId": user, "name": "Home", "messageId": f"{tag}-3"}),
        ("/v1/track", {"userId": user, "event": "Email Open", "properties": {"email": "spring_newsletter"},
                       "messageId": f"{tag}-4"}),
    ]
    with httpx.Client(base_url=clean_api.base_url, timeout=10) as http:
        for path, body in calls:
            answer = http.post(path, json={**body, "writeKey": TOKEN})
            assert (answer.status_code, answer.json()) == (200, {"success": True, "accepted": 1, "duplicates": 0})
        resent = http.post("/v1/track", json={**calls[-1][1], "writeKey": TOKEN})
        assert resent.json() == {"success": True, "accepted": 0, "duplicates": 1}
        wrong = http.post("/v1/track", json={**calls[-1][1], "writeKey": "guess"})
        assert wrong.status_code == 401
    profile = person(clean_api, user)
    assert profile["traits"] == {"registered": True}
    assert profile["features"][PRICING_VIEWS] == 1 and profile["features"][NEWSLETTER_OPENS] == 1


def test_a_store_outage_is_a_503_with_retry_after(tmp_path):
    # Nothing listens on this port: every apply fails, nothing is acknowledged.
    server = start_api(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    try:
        answer = httpx.post(f"{server.base_url}/v1/batch", headers=basic(TOKEN), timeout=10,
                            json={"batch": [{"type": "track", "event": "X", "anonymousId": "a1"}]})
    finally:
        stop_api(server)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert (answer.json()["success"], answer.json()["code"]) == (False, "unavailable")
