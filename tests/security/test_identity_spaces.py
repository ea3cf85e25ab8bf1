"""Two identity spaces, attacked with the public site key: an anonymous id that
spells a known person's id (`u-alice`) reaches an empty visitor of its own,
never Alice; it cannot read her offers, change her profile or consent, or make
the shop email her; a signed Mallory cannot merge Alice (or 50 people in one
batch) into herself."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from engine.followups.contacts import ContactStore
from engine.policy import consent_given
from engine.store.keys import Keys
from engine.testing.processes import start_api, stop_api, wait_until
from tests.conftest import signed

PREFIX = "ident"
CATALOG = """
protected_traits: [vip]
placements: [hero]
offers:
  - {id: vip_only, kind: content, placements: [hero], priority: 10, content: {t: vip}, when: {trait: vip, equals: true}}
  - {id: everyone, kind: content, placements: [hero], content: {t: all}}
templates:
  welcome: {subject: "Welcome {{ traits.name }}", text: "Hello"}
journeys:
  - id: welcome
    trigger: {event: identify}
    reentry: always
    steps:
      - send: {channel: email, template: welcome}
"""


@pytest.fixture(scope="module")
def shop(redis_server, tmp_path_factory):
    from engine.testing.sinks import SmtpSink

    smtp = SmtpSink().start()
    server = start_api(redis_server.url, tmp_path_factory.mktemp("ident"), ATTIMO_KEY_PREFIX=PREFIX,
                       ATTIMO_SCHEDULER="embedded", ATTIMO_SCHEDULER_POLL_MS="20",
                       ATTIMO_SMTP_PORT=str(smtp.port))
    server.post_catalog(CATALOG)
    yield server, smtp
    stop_api(server)
    smtp.stop()


def known_person(server, user: str, **traits) -> None:
    with server.server() as client:
        answer = client.post("/v1/events", json={"events": [
            {"id": f"{user}-c", "type": "consent", "user_id": user,
             "properties": {"channel": "email", "purpose": "*", "granted": True}},
            {"id": f"{user}-i", "type": "identify", "user_id": user, "traits": traits}]})
    assert answer.status_code == 202, answer.text


def view(server, person: str) -> dict:
    with server.server() as client:
        return client.get(f"/v1/people/{person}").json()


def hero(server, **who) -> str:
    with server.browser() as client:
        answer = client.post("/v1/decide", json={**who, "placements": ["hero"]})
    assert answer.status_code == 200, answer.text
    return answer.json()["placements"]["hero"]["offer"]


def email_consent(redis_url: str, person: str) -> bool | None:
    async def read():
        redis = Redis.from_url(redis_url)
        state = await ContactStore(redis, Keys(PREFIX)).load(person)
        await redis.aclose()
        return consent_given(state, "email", "marketing")

    return asyncio.run(read())


def test_an_anonymous_id_spelling_a_known_id_reaches_an_empty_visitor(shop, redis_server):
    server, smtp = shop
    known_person(server, "u-alice", vip=True, email="alice@example.com", name="Alice")
    wait_until(lambda: any(r == ["alice@example.com"] for r, _ in smtp.messages), what="Alice's own welcome")
    alice = view(server, "u-alice")
    assert hero(server, user_id="u-alice", user_sig=signed("u-alice")) == "vip_only"

    # The attacker knows only the public key and Alice's id.
    assert hero(server, anonymous_id="u-alice") == "everyone"
    with server.browser() as client:
        answer = client.post("/v1/events", json={"events": [
            {"id": "x1", "type": "consent", "anonymous_id": "u-alice",
             "properties": {"channel": "email", "purpose": "*", "granted": False}},
            {"id": "x2", "type": "identify", "anonymous_id": "u-alice", "traits": {"name": "FREE MONEY"}}]})
    assert answer.status_code == 202  # accepted: for the visitor a:u-alice, who is nobody
    wait_until(lambda: view(server, "a:u-alice")["messages"]["recent"], what="the visitor's welcome outcome")
    assert view(server, "a:u-alice")["messages"]["recent"][0]["reason"] == "no email address trait"

    assert view(server, "u-alice") == alice  # her profile did not move
    assert email_consent(redis_server.url, "u:u-alice") is True  # nor her consent
    to_alice = [m for r, m in smtp.messages if r == ["alice@example.com"]]
    assert [m["Subject"] for m in to_alice] == ["Welcome Alice"]


def test_a_signed_user_cannot_merge_known_people_into_herself(shop):
    server, _ = shop
    victims = [f"u-victim-{n}" for n in range(50)]
    for victim in victims:
        known_person(server, victim, vip=True, email=f"{victim}@example.com")
    before = {victim: view(server, victim) for victim in victims[:3]}
    mallory = {"user_id": "u-mallory", "user_sig": signed("u-mallory")}
    with server.browser() as client:
        answer = client.post("/v1/events", json={"events": [
            {"id": f"m{n}", "type": "login", "anonymous_id": victim, **mallory} for n, victim in enumerate(victims)]})
    assert answer.status_code == 202
    for victim in victims:
        assert view(server, victim)["exists"]
    assert {victim: view(server, victim) for victim in victims[:3]} == before
    stolen = view(server, "u-mallory")["traits"]
    assert "email" not in stolen and "vip" not in stolen
