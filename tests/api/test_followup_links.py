"""The links inside follow-up emails and consent events, through HTTP against
`attimo serve`: the open pixel and the click redirect become events on the
person's profile (so a rule on "opened email E" sees them), a changed link is a
400, and the unsubscribe link or a consent event withdrawing a channel changes
the contact state and cancels what was queued."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from engine.followups.channels.email import Tracker
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.message import Message
from engine.policy import consent_given
from engine.store.keys import Keys
from engine.testing.processes import SITE_SECRET, start_api, stop_api

PREFIX = "links"


@pytest.fixture(scope="module")
def links_api(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("links"), ATTIMO_KEY_PREFIX=PREFIX)
    yield server
    stop_api(server)


@pytest.fixture
def tracker(links_api, redis_sync_client):
    # The API signs with the site secret when no ATTIMO_TRACKING_SECRET is set.
    return Tracker(secret=SITE_SECRET.encode(), public_url=links_api.base_url)


def email_opens(server, person: str) -> float:
    with server.server() as client:
        profile = client.get(f"/v1/people/{person}").json()
    # The demo catalog's composite rule watches email_open where email = spring_newsletter.
    return next(value for label, value in profile["features"].items() if label.startswith("email_open"))


def test_the_open_pixel_records_one_email_open_per_message(links_api, tracker):
    pixel = tracker.open_url("m-1", "u-open", "spring_newsletter")
    with links_api.client() as client:
        for _ in range(3):  # a mail client loading the pixel again changes nothing
            answer = client.get(pixel)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "image/gif"
    assert email_opens(links_api, "u-open") == 1


def test_the_click_redirects_to_the_signed_target_and_records_the_click(links_api, tracker):
    link = tracker.click_url("m-2", "u-click", "https://shop.example/crm?a=1&b=2", "spring_newsletter")
    with links_api.client() as client:
        answer = client.get(link)
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://shop.example/crm?a=1&b=2"
        with links_api.server() as server:
            profile = server.get("/v1/people/u-click").json()
    assert profile["exists"] and profile["version"] == 1


@pytest.mark.parametrize("change", [
    lambda url: url.replace("shop.example", "evil.example"),
    lambda url: url.replace("p=u-click", "p=u-other"),
    lambda url: url.replace("e=spring_newsletter", "e=other"),
    lambda url: url.split("&s=")[0],
])
def test_a_changed_link_is_400_and_records_nothing(links_api, tracker, change):
    link = tracker.click_url("m-3", "u-click", "https://shop.example/", "spring_newsletter")
    with links_api.client() as client:
        answer = client.get(change(link))
    assert answer.status_code == 400
    assert "location" not in answer.headers
    with links_api.server() as server:
        for person in ("u-click", "u-other"):
            assert not server.get(f"/v1/people/{person}").json()["exists"]


def test_unsubscribe_withdraws_consent_and_cancels_what_is_queued(links_api, tracker, redis_server):
    async def queue_and_opt_in() -> None:
        redis = Redis.from_url(redis_server.url)
        keys = Keys(PREFIX)
        await ContactStore(redis, keys).set_consent("u:u-un", "email", "marketing", True)
        queue = DueQueue(redis, keys)
        for n in range(3):
            await queue.schedule(Message(id=f"later-{n}", person="u:u-un", channel="email", due_ms=10**13))
        await queue.schedule(Message(id="push-1", person="u:u-un", channel="push", due_ms=10**13))
        await redis.aclose()

    async def after() -> tuple[bool | None, dict]:
        redis = Redis.from_url(redis_server.url)
        keys = Keys(PREFIX)
        state = await ContactStore(redis, keys).load("u:u-un")
        pending = await DueQueue(redis, keys).pending()
        await redis.aclose()
        return consent_given(state, "email", "marketing"), pending

    asyncio.run(queue_and_opt_in())
    with links_api.client() as client:
        answer = client.post(tracker.unsubscribe_url("u-un", "email"))
        assert answer.status_code == 200
        assert answer.json() == {"unsubscribed": "email", "cancelled": 3}
        page = client.get(tracker.unsubscribe_url("u-un", "email")).text  # the link: a page, changes nothing
        assert 'method="post"' in page and "Stop all email messages" in page
        done = client.post(tracker.unsubscribe_url("u-un", "email"), headers={"Accept": "text/html"})
        assert "no more email" in done.text
    consent, pending = asyncio.run(after())
    assert consent is False  # the earlier explicit opt-in no longer wins
    assert pending["due"] == 1  # the push message stays


def test_consent_events_set_the_contact_state_and_an_unsubscribe_cancels_the_queue(links_api, redis_server,
                                                                                   redis_sync_client):
    keys = Keys(PREFIX)

    async def queue_emails() -> None:
        redis = Redis.from_url(redis_server.url)
        for n in range(2):
            await DueQueue(redis, keys).schedule(Message(id=f"c-{n}", person="a:a-c", channel="email", due_ms=10**13))
        await redis.aclose()

    async def state() -> tuple[bool | None, bool | None, dict]:
        redis = Redis.from_url(redis_server.url)
        contact = await ContactStore(redis, keys).load("a:a-c")
        # Emails only: any activity also arms the demo catalog's inactivity timer.
        pending = {"due": len(await DueQueue(redis, keys).pending_for("a:a-c", ["email"]))}
        await redis.aclose()
        return consent_given(contact, "email", "marketing"), consent_given(contact, "push", "news"), pending

    def consent(event_id: str, **properties) -> int:
        with links_api.browser() as client:  # a consent banner: the visitor speaks for itself
            return client.post("/v1/events", json={"events": [
                {"id": event_id, "type": "consent", "anonymous_id": "a-c", "properties": properties}]}).status_code

    asyncio.run(queue_emails())
    assert consent("c1", channel="email", purpose="marketing", granted=True) == 202
    assert consent("c2", channel="push", granted=True) == 202
    marketing, push, pending = asyncio.run(state())
    assert (marketing, push, pending["due"]) == (True, True, 2)
    assert consent("c3", channel="email", purpose="marketing", granted=False) == 202
    assert asyncio.run(state())[2]["due"] == 2  # one purpose: judged at send time, the queue stays
    assert consent("c4", channel="email", granted=False) == 202  # every purpose: an unsubscribe
    marketing, push, pending = asyncio.run(state())
    assert (marketing, push, pending["due"]) == (False, True, 0)


@pytest.mark.parametrize(("properties", "field"), [
    ({"granted": True}, "events[0].properties.channel"),
    ({"channel": "email"}, "events[0].properties.granted"),
    ({"channel": "Email Marketing", "granted": True}, "events[0].properties.channel"),
])
def test_a_malformed_consent_event_is_422(links_api, properties, field):
    with links_api.browser() as client:
        answer = client.post("/v1/events", json={"events": [
            {"id": "bad", "type": "consent", "anonymous_id": "a-c", "properties": properties}]})
    assert answer.status_code == 422
    assert answer.json()["field"] == field


def test_a_persons_pending_and_recent_messages_with_their_reasons(links_api, redis_server, redis_sync_client):
    """GET /v1/people/{id} shows what waits for the person and what happened to
    what did not wait, with the reason the scheduler gave."""
    from engine.followups.scheduler import Scheduler
    from engine.policy import ContactPolicy

    keys = Keys(PREFIX)
    now = 1_780_000_000_000

    async def never_sent(message, values):
        raise AssertionError("an email without opt-in was sent")

    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        queue, contacts = DueQueue(redis, keys), ContactStore(redis, keys)
        await queue.schedule(Message(id="now-1", person="u:u-m", channel="email", due_ms=now, template="welcome",
                                     body={"to": "m@example.com", "subject": "Hi", "text": "Hi"}))
        await queue.schedule(Message(id="later-1", person="u:u-m", channel="push", due_ms=now + 3_600_000,
                                     template="cart_reminder"))
        scheduler = Scheduler(queue, contacts, ContactPolicy(), {"email": never_sent}, clock=lambda: now)
        assert await scheduler.run_once() == 1
        await redis.aclose()

    asyncio.run(run())
    with links_api.server() as client:
        messages = client.get("/v1/people/u-m").json()["messages"]
    assert [(m["id"], m["channel"], m["state"]) for m in messages["pending"]] == [("later-1", "push", "queued")]
    [outcome] = messages["recent"]
    assert outcome["status"] == "dropped"
    assert outcome["reason"].startswith("no consent")


def test_attimo_serve_runs_the_scheduler_and_sends_what_is_due(redis_server, redis_sync_client, tmp_path):
    import time

    from engine.testing.processes import wait_until
    from engine.testing.sinks import WebhookReceiver

    receiver = WebhookReceiver().start()
    server = start_api(redis_server.url, tmp_path, ATTIMO_SCHEDULER="embedded", ATTIMO_KEY_PREFIX="embedded",
                       ATTIMO_WEBHOOK_URLS=f"push={receiver.url}/push", ATTIMO_WEBHOOK_SECRET="s")
    try:
        async def schedule() -> None:
            redis = Redis.from_url(redis_server.url)
            await DueQueue(redis, Keys("embedded")).schedule(Message(
                id="push-now", person="u:u-e", channel="push", due_ms=time.time_ns() // 1_000_000,
                template="hello", body={"title": "Hello"}))
            await redis.aclose()

        asyncio.run(schedule())
        wait_until(lambda: receiver.received, 10, 0.05, "the embedded scheduler to send")
        [delivery] = receiver.received
        assert delivery.path == "/push"
        assert delivery.headers["idempotency-key"] == "push-now"
    finally:
        stop_api(server)
        receiver.stop()
