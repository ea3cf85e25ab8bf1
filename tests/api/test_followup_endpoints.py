"""Journeys through HTTP against `attimo serve` with its embedded scheduler, a
real SMTP sink and a real webhook receiver: a registration with consent gets
the welcome email, the trial journey fills the in-app inbox (read, dismiss),
a registered device receives push with its token, and the people view shows
journeys and message outcomes with their reasons."""

from __future__ import annotations

import orjson
import pytest

from engine.followups.channels.webhook import verify_signature
from engine.store.keys import Keys
from engine.testing.processes import SITE_KEY, start_api, stop_api, wait_until
from tests.conftest import ROOT, signed

PREFIX = "fu"
WEBHOOK_SECRET = "endpoint-test-secret"
PUSH_JOURNEY = """
  - id: app_nudge
    trigger: {event: app_open}
    reentry: always
    steps:
      - send: {channel: push, template: cart_push}
"""


@pytest.fixture(scope="module")
def sinks():
    from engine.testing.sinks import SmtpSink, WebhookReceiver

    smtp, receiver = SmtpSink().start(), WebhookReceiver().start()
    yield smtp, receiver
    smtp.stop()
    receiver.stop()


@pytest.fixture(scope="module")
def followup_api(redis_server, tmp_path_factory, sinks):
    smtp, receiver = sinks
    server = start_api(redis_server.url, tmp_path_factory.mktemp("followups"), ATTIMO_KEY_PREFIX=PREFIX,
                       ATTIMO_SCHEDULER="embedded", ATTIMO_SCHEDULER_POLL_MS="20",
                       ATTIMO_SMTP_PORT=str(smtp.port), ATTIMO_WEBHOOK_URLS=f"push={receiver.url}",
                       ATTIMO_WEBHOOK_SECRET=WEBHOOK_SECRET)
    server.post_catalog((ROOT / "examples" / "catalog.yaml").read_text() + PUSH_JOURNEY)
    yield server
    stop_api(server)


def send(server, person: str, *events: dict) -> None:
    batch = [{"user_id": person, "user_sig": signed(person), **event} for event in events]
    with server.browser() as client:
        answer = client.post("/v1/events", json={"events": batch})
    assert answer.status_code == 202, answer.text


def consent(eid: str) -> dict:
    return {"id": eid, "type": "consent", "properties": {"channel": "email", "purpose": "marketing", "granted": True}}


def test_registering_with_consent_gets_the_welcome_email(followup_api, sinks):
    smtp, _ = sinks
    send(followup_api, "u-wel", consent("w1"),
         {"id": "w2", "type": "register", "traits": {"registered": True, "email": "wel@example.com", "name": "Wel"}})
    wait_until(lambda: any(r == ["wel@example.com"] for r, _ in smtp.messages), what="the welcome email")
    [message] = [m for r, m in smtp.messages if r == ["wel@example.com"]]
    assert message["Subject"] == "Welcome to the shop, Wel"
    with followup_api.server() as client:
        view = client.get("/v1/people/u-wel").json()
    assert "welcome" in view["journeys"]["entered"]
    assert any(o["template"] == "welcome" and o["status"] == "sent" for o in view["messages"]["recent"])


def test_registering_without_consent_sends_nothing_and_says_why(followup_api, sinks):
    smtp, _ = sinks
    send(followup_api, "u-nope", {"id": "n1", "type": "register",
                                  "traits": {"registered": True, "email": "nope@example.com"}})

    def dropped():
        with followup_api.server() as client:
            recent = client.get("/v1/people/u-nope").json()["messages"]["recent"]
        return [o for o in recent if o["status"] == "dropped"]

    [outcome] = wait_until(dropped, what="the dropped welcome")
    assert outcome["reason"] == "no consent: email needs an opt-in for marketing"
    assert not any(r == ["nope@example.com"] for r, _ in smtp.messages)


def test_the_trial_journey_fills_the_inbox_which_reads_and_dismisses(followup_api):
    person = "u-app"
    send(followup_api, person, {"id": "t1", "type": "form_submit", "properties": {"form": "trial"}})
    query = {"user_id": person, "user_sig": signed(person)}
    with followup_api.browser() as client:
        def inbox():
            answer = client.get("/v1/inbox", params=query)
            assert answer.status_code == 200, answer.text
            return answer.json()["messages"]

        [message] = wait_until(inbox, what="the inbox message")
        assert message["title"] == "Trial tip" and message["read"] is False
        assert client.post(f"/v1/inbox/{message['id']}/read", json=query).json() == {"id": message["id"],
                                                                                       "read": True}
        assert client.get("/v1/inbox", params=query).json()["unread"] == 0
        assert client.post(f"/v1/inbox/{message['id']}/dismiss", json=query).status_code == 200
        assert inbox() == []
        assert client.post("/v1/inbox/nope/read", json=query).status_code == 404
        # Someone else's inbox: an unsigned or wrongly signed id is refused.
        assert client.get("/v1/inbox", params={"user_id": person}).status_code == 403
        assert client.get("/v1/inbox", params={"user_id": person, "user_sig": signed("u-other")}).status_code == 403
        assert client.get("/v1/inbox", params={"anonymous_id": "a-1"}).status_code == 403
    with followup_api.client() as anonymous:
        assert anonymous.get("/v1/inbox", params=query).status_code == 401
    with followup_api.server() as server:  # the server token reads any person's inbox
        assert server.get("/v1/inbox", params={"user_id": person}).status_code == 200


def test_a_registered_device_receives_push_with_its_token(followup_api, sinks):
    _, receiver = sinks
    person = "u-phone"
    with followup_api.client(**{"X-Attimo-Key": SITE_KEY}) as client:
        answer = client.post("/v1/devices", json={"user_id": person, "user_sig": signed(person),
                                                  "token": "fcm-token-1", "platform": "android"})
        assert answer.json() == {"devices": 1}
        assert client.post("/v1/devices", json={"user_id": person, "token": "x"}).status_code == 403
        assert client.post("/v1/devices", json={"user_id": person, "user_sig": signed(person)}).status_code == 422
    send(followup_api, person, {"id": "o1", "type": "app_open"})
    [push] = wait_until(lambda: [r for r in receiver.received if b'"u:u-phone"' in r.body], what="the push webhook")
    assert verify_signature(WEBHOOK_SECRET.encode(), push.headers["x-attimo-timestamp"], push.body,
                            push.headers["x-attimo-signature"])
    body = orjson.loads(push.body)
    assert body["channel"] == "push" and body["title"] == "Your cart is waiting"
    assert [device["token"] for device in body["tokens"]] == ["fcm-token-1"]
    assert push.headers["idempotency-key"] == body["id"]


def test_a_signed_user_removes_their_own_push_token_and_only_theirs(followup_api, redis_server):
    person, other = "u-logout", "u-keeps"
    with followup_api.client(**{"X-Attimo-Key": SITE_KEY}) as client:
        for user, token in ((person, "fcm:tok/1"), (person, "apns-2"), (other, "fcm:tok/1")):
            assert client.post("/v1/devices", json={"user_id": user, "user_sig": signed(user),
                                                    "token": token}).status_code == 200
        mine = {"X-Attimo-User": person, "X-Attimo-User-Sig": signed(person)}
        gone = client.delete("/v1/devices/fcm:tok/1", headers=mine)
        assert gone.json() == {"removed": True, "devices": 1}
        assert client.delete("/v1/devices/fcm:tok/1", headers=mine).json() == {"removed": False, "devices": 1}
        # Unsigned, or signed for someone else: refused; the token stays where it is.
        assert client.delete("/v1/devices/apns-2", headers={"X-Attimo-User": person}).status_code == 403
        forged = {"X-Attimo-User": person, "X-Attimo-User-Sig": signed(other)}
        assert client.delete("/v1/devices/apns-2", headers=forged).status_code == 403
    with followup_api.server() as server:  # the site's server may remove any person's token
        assert server.delete("/v1/devices/apns-2", params={"user_id": person}).json() == {"removed": True,
                                                                                          "devices": 0}
    store = redis_server.client()
    assert store.hkeys(Keys(PREFIX).devices(f"u:{person}")) == []
    assert store.hkeys(Keys(PREFIX).devices(f"u:{other}")) == [b"fcm:tok/1"]


def test_the_schema_lists_the_follow_up_routes(followup_api):
    with followup_api.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/inbox", "/v1/inbox/{message_id}/read", "/v1/inbox/{message_id}/dismiss",
            "/v1/devices", "/v1/suppressions/{channel}", "/v1/deadletters"} <= set(paths)
    assert set(paths["/v1/suppressions/{channel}/{address}"]) == {"put", "delete"}
