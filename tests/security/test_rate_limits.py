"""Rate limits against a real `attimo serve` and the real Redis: a burst past
the limit is 429 with Retry-After and nothing applied, a burst of invented
anonymous ids stops at the new-profile quota while a returning visitor does
not, the server token is not limited, X-Forwarded-For counts only from a
trusted proxy, a Redis that is down lets requests through (no 500), and a bad
limit stops the process at start naming its variable."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys

import pytest

from api.ratelimit import client_ip
from engine.errors import SettingsError
from engine.settings import Settings
from engine.store.keys import Keys
from engine.testing.processes import start_api, stop_api

REQUESTS = 20
NEW_PROFILES = 5
LIMITS = {"ATTIMO_RATE_LIMIT": f"{REQUESTS}/minute", "ATTIMO_NEW_PROFILE_LIMIT": f"{NEW_PROFILES}/minute"}


@pytest.fixture(scope="module")
def limited(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("limited"), **LIMITS)
    yield server
    stop_api(server)


@pytest.fixture(scope="module")
def proxied(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("proxied"),
                       ATTIMO_TRUSTED_PROXIES="127.0.0.1", **LIMITS)
    yield server
    stop_api(server)


def batch(anonymous_id: str, event_id: str) -> dict:
    return {"events": [{"id": event_id, "type": "page_view", "anonymous_id": anonymous_id}]}


def decide(anonymous_id: str = "a-visitor") -> dict:
    return {"anonymous_id": anonymous_id, "placements": ["home_hero"]}


def profile_exists(redis_sync_client, anonymous_id: str) -> bool:
    """Whether the visitor with this anonymous id has a profile (person a:<id>)."""
    return bool(redis_sync_client.exists(Keys().profile(f"a:{anonymous_id}")))


def assert_limited(answer, reason: str) -> None:
    assert answer.status_code == 429, answer.text
    assert reason in answer.json()["error"]
    assert 1 <= int(answer.headers["Retry-After"]) <= 60


def test_a_burst_past_the_limit_is_429_with_retry_after_and_nothing_applied(limited, redis_sync_client):
    with limited.browser() as client:
        answers = [client.post("/v1/events", json=batch("a-visitor", f"e-{n}")) if n % 2
                   else client.post("/v1/decide", json=decide()) for n in range(REQUESTS)]
        refused_decide = client.post("/v1/decide", json=decide())
        refused_events = client.post("/v1/events", json=batch("a-visitor", "e-late"))
    assert [a.status_code for a in answers] == [200, 202] * (REQUESTS // 2)
    assert_limited(refused_decide, "too many requests")
    assert_limited(refused_events, "too many requests")
    assert profile_exists(redis_sync_client, "a-visitor")  # the accepted events were applied
    # The refused batch was not: sent again once the counters are gone, it is
    # new, not a duplicate.
    redis_sync_client.delete(*redis_sync_client.keys("*LIMITER*"))
    with limited.browser() as client:
        again = client.post("/v1/events", json=batch("a-visitor", "e-late"))
    assert again.status_code == 202 and again.json() == {"accepted": 1, "duplicates": 0}


def test_a_burst_of_new_anonymous_ids_stops_at_the_new_profile_quota(limited, redis_sync_client):
    """The incident: one client inventing an id per event. Only the quota's
    worth of profiles exist afterwards, while a returning visitor goes on."""
    with limited.browser() as client:
        invented = [client.post("/v1/events", json=batch(f"a-new-{n}", f"n-{n}")) for n in range(12)]
        returning = [client.post("/v1/events", json=batch("a-new-0", f"r-{n}")) for n in range(5)]
    statuses = [a.status_code for a in invented]
    assert statuses == [202] * NEW_PROFILES + [429] * (12 - NEW_PROFILES)
    assert_limited(invented[-1], "too many new profiles")
    assert [a.status_code for a in returning] == [202] * 5
    created = [n for n in range(12) if profile_exists(redis_sync_client, f"a-new-{n}")]
    assert created == list(range(NEW_PROFILES))


def test_one_batch_of_many_new_ids_is_refused_whole(limited, redis_sync_client):
    events = [{"id": f"b-{n}", "type": "page_view", "anonymous_id": f"a-batch-{n}"}
              for n in range(NEW_PROFILES + 1)]
    with limited.browser() as client:
        answer = client.post("/v1/events", json={"events": events})
        repeated = client.post("/v1/events", json={"events": [
            {"id": f"s-{n}", "type": "page_view", "anonymous_id": "a-same"} for n in range(50)]})
    assert_limited(answer, "too many new profiles")
    assert not any(profile_exists(redis_sync_client, f"a-batch-{n}") for n in range(NEW_PROFILES + 1))
    assert repeated.status_code == 202 and repeated.json()["accepted"] == 50  # one new id, 50 events


def test_the_server_token_is_not_limited(limited, redis_sync_client):
    with limited.server() as client:
        events = [client.post("/v1/events", json=batch(f"a-srv-{n}", f"srv-{n}"))
                  for n in range(REQUESTS + 5)]
        decides = [client.post("/v1/decide", json=decide(f"a-srv-{n}")) for n in range(5)]
    assert [a.status_code for a in events] == [202] * (REQUESTS + 5)
    assert [a.status_code for a in decides] == [200] * 5
    assert all(profile_exists(redis_sync_client, f"a-srv-{n}") for n in range(REQUESTS + 5))
    with limited.browser() as client:  # the site key's quota is untouched by them
        assert client.post("/v1/decide", json=decide()).status_code == 200


def test_forwarded_for_from_an_untrusted_peer_is_ignored(limited, redis_sync_client):
    """An attacker rotating invented addresses stays one client."""
    with limited.browser() as client:
        answers = [client.post("/v1/decide", json=decide(),
                               headers={"X-Forwarded-For": f"198.51.100.{n}"})
                   for n in range(REQUESTS + 1)]
    assert [a.status_code for a in answers[:REQUESTS]] == [200] * REQUESTS
    assert_limited(answers[REQUESTS], "too many requests")
    redis_sync_client.flushdb()
    with limited.browser() as client:
        invented = [client.post("/v1/events", json=batch(f"a-xff-{n}", f"x-{n}"),
                                headers={"X-Forwarded-For": f"203.0.113.{n}"})
                    for n in range(NEW_PROFILES + 1)]
    assert [a.status_code for a in invented] == [202] * NEW_PROFILES + [429]


def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(proxied, redis_sync_client):
    alice = {"X-Forwarded-For": "203.0.113.7"}
    with proxied.browser() as client:
        answers = [client.post("/v1/decide", json=decide(), headers=alice) for _ in range(REQUESTS)]
        over = client.post("/v1/decide", json=decide(), headers=alice)
        # Whatever alice writes on the left, the proxy appended her address on the right.
        spoofed = client.post("/v1/decide", json=decide(),
                              headers={"X-Forwarded-For": "192.0.2.1, 203.0.113.7"})
        # Through two trusted hops (127.0.0.1 twice) she is still herself.
        chained = client.post("/v1/decide", json=decide(),
                              headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.1"})
        bob = client.post("/v1/decide", json=decide(), headers={"X-Forwarded-For": "198.51.100.9"})
        the_proxy_itself = client.post("/v1/decide", json=decide())
    assert [a.status_code for a in answers] == [200] * REQUESTS
    for refused in (over, spoofed, chained):
        assert_limited(refused, "too many requests")
    assert bob.status_code == 200
    assert the_proxy_itself.status_code == 200


def test_a_redis_that_is_down_lets_requests_through_without_a_500(tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    server = start_api(f"redis://127.0.0.1:{port}/0", tmp_path, **LIMITS)
    try:
        with server.browser() as client:
            decides = [client.post("/v1/decide", json=decide()) for _ in range(REQUESTS + 2)]
            events = client.post("/v1/events", json=batch("a-down", "d-1"))
    finally:
        stop_api(server)
    assert all(a.status_code == 200 and a.json()["fallback"] is True for a in decides)
    assert events.status_code == 503  # the store's own answer, as without limits
    log = server.log_path.read_text(errors="replace")
    assert "rate limits not checked" in log and "Traceback" not in log


@pytest.mark.parametrize(("env", "fragment"), [
    ({"ATTIMO_RATE_LIMIT": "600/fortnight"}, "ATTIMO_RATE_LIMIT"),
    ({"ATTIMO_RATE_LIMIT": "lots"}, "ATTIMO_RATE_LIMIT"),
    ({"ATTIMO_RATE_LIMIT": "0/minute"}, "ATTIMO_RATE_LIMIT"),
    ({"ATTIMO_NEW_PROFILE_LIMIT": "60/minut"}, "ATTIMO_NEW_PROFILE_LIMIT"),
    ({"ATTIMO_TRUSTED_PROXIES": "127.0.0.1,proxy.internal"}, "ATTIMO_TRUSTED_PROXIES"),
    ({"ATTIMO_TRUSTED_PROXIES": "10.0.0.0/33"}, "ATTIMO_TRUSTED_PROXIES"),
])
def test_a_bad_limit_or_proxy_names_its_variable(env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)


def test_limits_parse_survive_the_round_trip_and_turn_off():
    settings = Settings.from_env({"ATTIMO_RATE_LIMIT": "10 per second", "ATTIMO_NEW_PROFILE_LIMIT": "off",
                                  "ATTIMO_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1, ::1"})
    assert settings.rate_limit == "10 per second" and settings.new_profile_limit == "off"
    assert settings.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32", "::1/128")
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings().rate_limit == "600/minute" and Settings().trusted_proxies == ()


def test_a_bad_limit_stops_serve_at_start_naming_the_variable():
    env = {**os.environ, "ATTIMO_RATE_LIMIT": "600/fortnight"}
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "ATTIMO_RATE_LIMIT" in done.stderr and "600/minute" in done.stderr


def scope(peer: str, *forwarded: str) -> dict:
    return {"client": (peer, 5000), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))


@pytest.mark.parametrize(("request_scope", "expected"), [
    (scope("192.0.2.5", "198.51.100.1"), "192.0.2.5"),  # untrusted peer: header ignored
    (scope("10.1.2.3", "198.51.100.1"), "198.51.100.1"),
    (scope("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9"), "198.51.100.1"),
    (scope("10.1.2.3", "6.6.6.6", "198.51.100.1"), "198.51.100.1"),  # several headers, in order
    (scope("10.1.2.3"), "10.1.2.3"),  # the proxy's own call
    (scope("10.1.2.3", "10.0.0.1, 10.0.0.2"), "10.0.0.1"),  # every hop trusted: the left-most
    (scope("10.1.2.3", "6.6.6.6, not-an-ip"), "10.1.2.3"),  # garbage: limit the proxy's peer
    (scope("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64"),  # an IPv6 subscriber is its /64
    (scope("10.1.2.3", "[2001:db8::9]:443"), "2001:db8::/64"),
    (scope("::ffff:192.0.2.5"), "192.0.2.5"),
])
def test_the_client_ip(request_scope, expected):
    assert client_ip(request_scope, PROXIES) == expected
