"""The operator's side of follow-ups, through HTTP against `attimo serve` with its
embedded scheduler, a real SMTP sink and real webhook receivers: erasing a
person cancels everything queued for them and removes what follow-ups kept
(a later scheduler pass sends them nothing), the suppression list stops a due
email to a suppressed address and lets the next one through once lifted, and a
webhook that always fails ends in the dead letters the API lists."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest
from redis.asyncio import Redis

from engine.clock import now_ms
from engine.followups.channels.senders import senders_from_settings
from engine.followups.contacts import ContactStore, message_addresses
from engine.followups.due_queue import DueQueue, shard_of
from engine.followups.message import Message
from engine.followups.scheduler import Scheduler, policy_from_settings
from engine.ingest.identity import known
from engine.settings import Settings
from engine.store.keys import Keys
from engine.testing.processes import SITE_SECRET, start_api, stop_api, wait_until

PREFIX = "adm"
KEYS = Keys(PREFIX)
WEBHOOK_SECRET = "admin-test-secret"
# Every channel the demo catalog and this API may queue a message on.
CHANNELS = ["email", "inbox", "journey", "operator", "push", "sales", "sms", "webhook"]


@pytest.fixture(scope="module")
def admin_api(redis_server, tmp_path_factory, sinks):
    smtp, push, failing = sinks
    server = start_api(redis_server.url, tmp_path_factory.mktemp("admin"), ATTIMO_KEY_PREFIX=PREFIX,
                       ATTIMO_SCHEDULER="embedded", ATTIMO_SCHEDULER_POLL_MS="20",
                       ATTIMO_SMTP_PORT=str(smtp.port), ATTIMO_WEBHOOK_SECRET=WEBHOOK_SECRET,
                       ATTIMO_WEBHOOK_URLS=f"push={push.url},sms={failing.url}",
                       ATTIMO_WEBHOOK_ATTEMPTS="2", ATTIMO_WEBHOOK_BACKOFF_MS="1")
    yield server
    stop_api(server)


def send(server, person: str, *events: dict) -> None:
    with server.server() as client:
        answer = client.post("/v1/events", json={"events": [{"user_id": person, **e} for e in events]})
    assert answer.status_code == 202, answer.text


def opt_in(event_id: str, channel: str) -> dict:
    return {"id": event_id, "type": "consent", "properties": {"channel": channel, "granted": True}}


def email(message_id: str, person: str, to: str, due_ms: int) -> Message:
    return Message(id=message_id, person=known(person), channel="email", due_ms=due_ms, template="cart_reminder",
                   body={"to": to, "subject": "Your cart", "text": "Still thinking?", "values": {}})


def push(message_id: str, person: str, due_ms: int) -> Message:
    return Message(id=message_id, person=known(person), channel="push", due_ms=due_ms, template="cart_push",
                   body={"title": "Your cart is waiting", "text": "Come back"})


def sms(message_id: str, person: str) -> Message:
    return Message(id=message_id, person=known(person), channel="sms", due_ms=now_ms(), template="code",
                   body={"text": "Your code is 1234"})


def dead_letters(server, **params) -> list[dict]:
    with server.server() as client:
        answer = client.get("/v1/deadletters", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["dead_letters"]


def outcome(server, person: str, message_id: str) -> dict | None:
    with server.server() as client:
        recent = client.get(f"/v1/people/{person}").json()["messages"]["recent"]
    return next((o for o in recent if o["id"] == message_id and o["status"] != "retrying"), None)


async def scheduler_pass(store: Redis, sinks, clock_ms: int) -> None:
    """A real scheduler, senders built from settings as `attimo scheduler` builds
    them, with its clock at `clock_ms`, until nothing more is due."""
    smtp, receiver, _ = sinks
    settings = Settings.from_env({"ATTIMO_SMTP_PORT": str(smtp.port), "ATTIMO_SITE_SECRET": SITE_SECRET,
                                  "ATTIMO_WEBHOOK_URLS": f"push={receiver.url}",
                                  "ATTIMO_WEBHOOK_SECRET": WEBHOOK_SECRET})
    senders, closeables = senders_from_settings(settings, store, KEYS)
    scheduler = Scheduler(DueQueue(store, KEYS), ContactStore(store, KEYS), policy_from_settings(settings),
                          senders, clock=lambda: clock_ms)
    try:
        while await scheduler.run_once():
            pass
    finally:
        for resource in closeables:
            await resource.aclose()


# -- erasing a person ------------------------------------------------------------------


async def test_erasing_a_person_cancels_their_queued_messages_and_removes_what_followups_kept(
        admin_api, sinks, store):
    smtp, receiver, _ = sinks
    gone, stays = "u-gone", "u-stays"
    later = now_ms() + 86_400_000
    # What follow-ups keep for a person: consent, journeys with their timers, an
    # inbox message, a device, a dead letter; and an email and a push queued.
    send(admin_api, gone, opt_in("g1", "email"), opt_in("g2", "sms"),
         {"id": "g3", "type": "add_to_cart", "traits": {"email": "gone@example.com"}},
         {"id": "g4", "type": "form_submit", "properties": {"form": "trial"}})
    send(admin_api, stays, opt_in("s1", "email"))
    with admin_api.server() as client:
        assert client.post("/v1/devices", json={"user_id": gone, "token": "fcm-gone"}).json() == {"devices": 1}
        assert client.post("/v1/devices", json={"user_id": stays, "token": "fcm-stays"}).json() == {"devices": 1}
        wait_until(lambda: client.get("/v1/inbox", params={"user_id": gone}).json()["messages"],
                   what="the trial journey's inbox message")
    queue = DueQueue(store, KEYS)
    await queue.schedule_many([email("e-gone", gone, "gone@example.com", later), push("p-gone", gone, later),
                               email("e-stays", stays, "stays@example.com", later), push("p-stays", stays, later),
                               sms("sms-gone", gone)])
    wait_until(lambda: any(d["id"] == "sms-gone" for d in dead_letters(admin_api)), what="the dead letter")
    queued = await queue.pending_for(known(gone), CHANNELS)
    assert {"e-gone", "p-gone"} <= {m["id"] for m in queued}
    assert {m["channel"] for m in queued} == {"email", "push", "journey"}  # journey timers too

    with admin_api.server() as client:
        assert client.delete(f"/v1/people/{gone}?suppress=maybe").status_code == 422
        answer = client.delete(f"/v1/people/{gone}?suppress=true")
    assert answer.status_code == 200, answer.text
    erased = answer.json()
    assert erased["cancelled"] == len(queued) and erased["dead_letters"] == 1
    # Asked to, erasure suppresses their address first: a later sign-up with it is never emailed.
    assert erased["suppressed"] == ["email"]
    assert await store.sismember(KEYS.suppressed(), "email:gone@example.com")
    assert erased["erased"] >= 5  # profile, dedupe ids, contact state, outcomes, journeys, inbox, devices

    emails, pushes = len(smtp.messages), len(receiver.received)
    await scheduler_pass(store, sinks, later + 1)
    assert [rcpt for rcpt, _ in smtp.messages[emails:]] == [["stays@example.com"]]
    assert [orjson.loads(r.body)["person"] for r in receiver.received[pushes:]] == [known(stays)]
    assert [k async for k in store.scan_iter(match=f"{PREFIX}:*u-gone*")] == []
    assert not any(b"u-gone" in raw for raw in await store.hvals(KEYS.due_messages(shard_of(known(gone)))))
    assert not any(b"u-gone" in raw for raw in await store.lrange(KEYS.dead_letters(), 0, -1))
    with admin_api.server() as client:
        view = client.get(f"/v1/people/{gone}").json()
        assert not view["exists"]
        assert view["messages"] == {"pending": [], "recent": []}
        assert client.get("/v1/inbox", params={"user_id": gone}).json()["messages"] == []


def test_only_the_server_token_erases(admin_api):
    with admin_api.browser() as client:
        assert client.delete("/v1/people/u-any").status_code == 403
    with admin_api.client() as client:
        assert client.delete("/v1/people/u-any").status_code == 401


# -- the suppression list --------------------------------------------------------------


async def test_a_suppressed_address_gets_no_email_and_the_next_one_goes_once_lifted(admin_api, sinks, store):
    smtp, _, _ = sinks
    person = "u-sup"
    send(admin_api, person, opt_in("sup1", "email"))
    with admin_api.server() as client:
        answer = client.put("/v1/suppressions/email/Sup@Example.COM")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"channel": "email", "address": "sup@example.com", "suppressed": True,
                                 "added": True}
        assert client.put("/v1/suppressions/email/sup@example.com").json()["added"] is False
        assert "sup@example.com" in client.get("/v1/suppressions/email").json()["addresses"]

    queue = DueQueue(store, KEYS)
    await queue.schedule(email("sup-1", person, "SUP@example.com", now_ms()))  # the case differs: still suppressed
    dropped = wait_until(lambda: outcome(admin_api, person, "sup-1"), what="the suppressed email's outcome")
    assert (dropped["status"], dropped["reason"]) == ("dropped", "suppressed")
    assert not any(rcpt == ["SUP@example.com"] for rcpt, _ in smtp.messages)

    with admin_api.server() as client:
        answer = client.delete("/v1/suppressions/email/SUP@example.com")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"channel": "email", "address": "sup@example.com", "suppressed": False}
        assert client.delete("/v1/suppressions/email/sup@example.com").status_code == 404
        assert "sup@example.com" not in client.get("/v1/suppressions/email").json()["addresses"]
    await queue.schedule(email("sup-2", person, "SUP@example.com", now_ms()))
    wait_until(lambda: any(rcpt == ["SUP@example.com"] for rcpt, _ in smtp.messages), what="the email once lifted")
    assert outcome(admin_api, person, "sup-2")["status"] == "sent"
    assert [rcpt for rcpt, _ in smtp.messages].count(["SUP@example.com"]) == 1


def test_the_suppression_list_pages_in_address_order(admin_api):
    phones = ["+15550000001", "+15550000002", "+15550000003", "+15550000004", "+15550000005"]
    with admin_api.server() as client:
        for phone in reversed(phones):  # written as people say them: spaces, dashes, parentheses
            spoken = f"{phone[:2]} ({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
            answer = client.put(f"/v1/suppressions/sms/{quote(spoken)}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["address"] == phone
        seen, after = [], ""
        while True:
            page = client.get("/v1/suppressions/sms", params={"limit": 2, "after": after}).json()
            assert len(page["addresses"]) <= 2 and page["total"] == len(phones)
            seen += page["addresses"]
            if page["next"] is None:
                break
            after = page["next"]
    assert seen == phones


@pytest.mark.parametrize(("channel", "to", "candidates"), [
    ("email", "Ann <Ann@Example.COM>", ("Ann <Ann@Example.COM>", "ann@example.com", "email:ann@example.com")),
    ("email", "ann@example.com", ("ann@example.com", "email:ann@example.com")),
    ("sms", "+44 20 7946-0018", ("+44 20 7946-0018", "+442079460018", "sms:+442079460018")),
    ("email", "two@example.com, three@example.com", ("two@example.com, three@example.com",)),
    ("push", "ann@example.com", ("ann@example.com",)),
])
def test_the_send_time_check_looks_for_the_address_as_the_api_stored_it(channel, to, candidates):
    """The API stores "<channel>:<normalised address>"; the check asks for that
    form of a message's `to` (and for `to` itself, as older entries hold it)."""
    message = Message(id="m", person="u-1", channel=channel, due_ms=0, body={"to": to})
    assert message_addresses(message) == candidates


@pytest.mark.parametrize(("method", "path", "field"), [
    ("PUT", "/v1/suppressions/push/someone@example.com", "channel"),
    ("PUT", "/v1/suppressions/email/not-an-address", "address"),
    ("PUT", f"/v1/suppressions/email/{'a' * 250}@example.com", "address"),
    ("PUT", "/v1/suppressions/sms/call-me-maybe", "address"),
    ("DELETE", "/v1/suppressions/inbox/u-1", "channel"),
    ("GET", "/v1/suppressions/webhook", "channel"),
    ("GET", "/v1/suppressions/email?limit=0", "limit"),
    ("GET", "/v1/suppressions/email?limit=1001", "limit"),
])
def test_a_bad_suppression_request_is_422_naming_the_part(admin_api, method, path, field):
    with admin_api.server() as client:
        answer = client.request(method, path)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and answer.json()["error"].startswith(f"{field}:")


def test_only_the_server_token_manages_suppressions(admin_api):
    for method, path in (("PUT", "/v1/suppressions/email/a@example.com"),
                         ("DELETE", "/v1/suppressions/email/a@example.com"), ("GET", "/v1/suppressions/email")):
        with admin_api.browser() as client:
            assert client.request(method, path).status_code == 403
        with admin_api.client() as client:
            assert client.request(method, path).status_code == 401


# -- dead letters ----------------------------------------------------------------------


async def test_a_webhook_that_always_fails_ends_in_the_dead_letters_with_its_reason(admin_api, sinks, store):
    _, _, failing = sinks
    person = "u-dl"
    send(admin_api, person, opt_in("dl1", "sms"))
    before = now_ms()
    await DueQueue(store, KEYS).schedule(sms("dl-1", person))
    [dead] = wait_until(lambda: [d for d in dead_letters(admin_api) if d["id"] == "dl-1"],
                        what="the scheduler to give up")
    assert dead["reason"] == "HTTP 500 after 2 attempt(s)"  # ATTIMO_WEBHOOK_ATTEMPTS=2
    assert (dead["person"], dead["channel"], dead["template"]) == (known(person), "sms", "code")
    assert before <= dead["at"] <= now_ms()
    assert [r.headers["idempotency-key"] for r in failing.received].count("dl-1") == 2
    assert dead_letters(admin_api, limit=1)[0]["id"] == "dl-1"  # newest first
    assert outcome(admin_api, person, "dl-1")["status"] == "dead_letter"


def test_dead_letters_need_the_server_token_and_a_bounded_limit(admin_api):
    with admin_api.browser() as client:
        assert client.get("/v1/deadletters").status_code == 403
    with admin_api.server() as client:
        for limit in ("0", "1001", "ten", "²"):
            answer = client.get("/v1/deadletters", params={"limit": limit})
            assert answer.status_code == 422 and answer.json()["field"] == "limit"
