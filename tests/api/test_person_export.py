"""A person's data, complete, and an erasure that leaves nothing, through HTTP
against `attimo serve` and a real scheduler (its clock set by the test), a real
SMTP sink and real webhook receivers. One person is given every kind of data
Attimo keeps: events with traits, consent given as a visitor and after login
(a merged anonymous id), a device, an inbox message, journey runs with a
message sent and one waiting, a dead-lettered message and the operator's alert
about it, messages in flight with a send mark and waiting after a failed send,
an experiment arm. The export shows all of it; after DELETE, no key in Redis
names them and no value holds their ids, addresses, device token or message ids."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from engine.catalog.compile import load_catalog_file
from engine.catalog.model import CatalogHolder
from engine.clock import now_ms
from engine.followups.channels.senders import senders_from_settings
from engine.followups.due_queue import DueQueue, shard_of
from engine.followups.journey_runner import internal_senders
from engine.followups.message import Message
from engine.followups.scheduler import Scheduler, policy_from_settings
from engine.runtime import Runtime
from engine.settings import Settings
from engine.store.keys import DUE_SHARDS, Keys
from engine.testing.processes import REPO_ROOT, SITE_SECRET, start_api, stop_api, wait_until
from tests.conftest import signed

PREFIX = "exp"
KEYS = Keys(PREFIX)
WEBHOOK_SECRET = "export-test-secret"
READ_TOKEN, ADMIN_TOKEN, INGEST_TOKEN = "export-read-token", "export-admin-token", "export-ingest-token"
CATALOG = REPO_ROOT / "examples" / "catalog.yaml"

# Every name of the person that must not outlive the erasure.
USER = "gk7q-person"
ANONYMOUS = "v93x-visitor"
EMAIL = "Gk7q.Someone@Example.com"
PHONE = "+39 333 765 4321"
DEVICE = "fcm-tok-5h2w"
NAMES = (USER, ANONYMOUS, "gk7q.someone@example.com", "gk7q.someone", "3337654321", DEVICE)
MINUTE = 60_000


@pytest.fixture(scope="module")
def settings_env(sinks) -> dict[str, str]:
    smtp, push, failing = sinks
    return {"ATTIMO_KEY_PREFIX": PREFIX, "ATTIMO_SMTP_PORT": str(smtp.port), "ATTIMO_SITE_SECRET": SITE_SECRET,
            "ATTIMO_WEBHOOK_URLS": f"push={push.url},operator={push.url},sms={failing.url}",
            "ATTIMO_WEBHOOK_SECRET": WEBHOOK_SECRET, "ATTIMO_WEBHOOK_ATTEMPTS": "2",
            "ATTIMO_WEBHOOK_BACKOFF_MS": "1"}


@pytest.fixture(scope="module")
def export_api(redis_server, tmp_path_factory, settings_env):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("export"), ATTIMO_READ_TOKEN=READ_TOKEN,
                       ATTIMO_ADMIN_TOKEN=ADMIN_TOKEN, ATTIMO_INGEST_TOKEN=INGEST_TOKEN, **settings_env)
    yield server
    stop_api(server)


def post_events(client, *events: dict) -> None:
    answer = client.post("/v1/events", json={"events": list(events)})
    assert answer.status_code == 202, answer.text


def export(server, person: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with server.server() as client:
        return client.get(f"/v1/people/{person}/export", headers=headers)


async def scheduler_pass(redis_url: str, settings_env: dict, clock_ms: int) -> None:
    """A real scheduler as `attimo scheduler` builds it (senders from settings,
    journey timers and the inbox inside), its clock at `clock_ms`, until
    nothing more is due."""
    settings = Settings.from_env({"ATTIMO_REDIS_URL": redis_url, **settings_env})
    catalog, text = load_catalog_file(CATALOG)
    runtime = Runtime.build(settings, CatalogHolder(catalog, text))
    senders, closeables = senders_from_settings(settings, runtime.redis, runtime.keys)
    scheduler = Scheduler(runtime.queue, runtime.contacts, policy_from_settings(settings), senders,
                          clock=lambda: clock_ms, alert_channel=settings.alert_channel,
                          catalogs=runtime.holder, kpis=runtime.kpis)
    senders.update(internal_senders(runtime.pipeline.journeys, scheduler.clock))
    try:
        while await scheduler.run_once():
            pass
    finally:
        for resource in closeables:
            await resource.aclose()
        await runtime.aclose()
        await runtime.redis.connection_pool.disconnect()  # a pool given to the client outlives its aclose()


async def seed_everything(server, store: Redis, redis_url: str, settings_env: dict) -> int:
    """Give the person every kind of data; returns the scheduler's last clock."""
    start = now_ms()
    with server.browser() as browser:  # a visitor: a page, an article (a journey waits a day to follow
        # it up: a timer queued for the visitor), and consent to SMS given before logging in
        post_events(browser,
                    {"id": "ev-1", "type": "page_view", "anonymous_id": ANONYMOUS,
                     "properties": {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}},
                    {"id": "ev-0", "type": "article_view", "anonymous_id": ANONYMOUS,
                     "properties": {"article": "crm-basics"}},
                    {"id": "ev-2", "type": "consent", "anonymous_id": ANONYMOUS,
                     "properties": {"channel": "sms", "granted": True}})
    with server.server() as client:  # the login merges the visitor; traits, consent, a cart, a trial
        post_events(client,
                    {"id": "ev-3", "type": "identify", "user_id": USER, "anonymous_id": ANONYMOUS,
                     "traits": {"email": EMAIL, "phone": PHONE, "plan": "pro"}},
                    {"id": "ev-4", "type": "consent", "user_id": USER,
                     "properties": {"channel": "email", "granted": True}},
                    {"id": "ev-5", "type": "add_to_cart", "user_id": USER, "properties": {"product": "crm"}},
                    {"id": "ev-6", "type": "form_submit", "user_id": USER, "properties": {"form": "trial"}})
        assert client.post("/v1/devices", json={"user_id": USER, "token": DEVICE, "platform": "android"}
                           ).json() == {"devices": 1}
    with server.browser() as browser:  # a decide on the experiment's placement: an arm
        answer = browser.post("/v1/decide", json={"user_id": USER, "user_sig": signed(USER),
                                                  "placements": ["cart_banner"]})
        assert answer.status_code == 200, answer.text
    wait_until(lambda: export(server, USER).json()["experiments"], what="the experiment exposure")

    queue = DueQueue(store, KEYS)
    person = f"u:{USER}"
    # An SMS the gateway refuses: dead-lettered, and the operator alerted about it.
    assert await queue.schedule(Message(id="msg-a1", person=person, channel="sms", due_ms=start, template="code",
                                        body={"to": PHONE, "text": "Your code is 1234"}))
    await scheduler_pass(redis_url, settings_env, start)  # the trial's inbox message, the dead letter
    clock = start + 31 * MINUTE
    await scheduler_pass(redis_url, settings_env, clock)  # the cart reminder email
    # A send under way (its send mark written) and one waiting after a failed send.
    for message_id in ("msg-a2", "msg-a3"):
        assert await queue.schedule(Message(id=message_id, person=person, channel="push", due_ms=clock,
                                            template="cart_push", body={"title": "Your cart", "text": "t"}))
    claimed = {c.message.id: c for c in await queue.claim(clock, 10, 60_000)}
    assert set(claimed) == {"msg-a2", "msg-a3"}
    assert await queue.begin_send(claimed["msg-a2"], clock, 60_000) == 0
    assert await queue.delay(claimed["msg-a3"].message, clock + MINUTE, clear_send_mark=True, failed_send=True)
    return clock


async def values_of(store: Redis, key: bytes) -> list[bytes]:
    """Every value a key holds, whatever its type (field names and members too)."""
    kind = (await store.type(key)).decode()
    if kind == "string":
        return [await store.get(key) or b""]
    if kind == "hash":
        return [part for pair in (await store.hgetall(key)).items() for part in pair]
    if kind == "list":
        return await store.lrange(key, 0, -1)
    if kind == "set":
        return list(await store.smembers(key))
    if kind == "zset":
        return await store.zrange(key, 0, -1)
    if kind == "stream":
        return [part for _, entry in await store.xrange(key) for pair in entry.items() for part in pair]
    return []


async def the_queue_names(store: Redis, message_ids: set[str]) -> set[str]:
    """Which of these message ids any due-queue structure of any shard still holds."""
    found = set()
    for shard in range(DUE_SHARDS):
        for key in (KEYS.due(shard), KEYS.due_inflight(shard), KEYS.due_done(shard)):
            found.update(m.decode() for m in await store.zrange(key, 0, -1))
        for key in (KEYS.due_messages(shard), KEYS.due_attempts(shard), KEYS.due_sent(shard)):
            found.update(f.decode() for f in await store.hkeys(key))
    return found & message_ids


async def test_the_export_holds_everything_and_erasure_leaves_nothing_naming_the_person(
        export_api, sinks, store, redis_server, settings_env):
    smtp, push, _ = sinks
    clock = await seed_everything(export_api, store, redis_server.url, settings_env)
    with export_api.server() as client:
        assert client.put("/v1/suppressions/email/gk7q.someone@example.com").status_code == 200

    answer = export(export_api, USER)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["person"] == f"u:{USER}" and doc["merged_ids"] == [f"a:{ANONYMOUS}"]
    profile = doc["profile"]
    assert profile["traits"]["email"] == EMAIL and profile["traits"]["plan"] == "pro"
    assert profile["first_seen"] and profile["last_seen"]
    page_views = [c for c in profile["counters"].values() if c.get("event") == "page_view"]
    assert page_views and all(c["total"] == sum(c["buckets"]) for c in page_views)
    assert any(c["total"] == 1 for c in page_views)  # the visitor's page view, merged in
    consent = doc["consent"]
    assert consent["channels"]["email"]["*"]["granted"] is True
    assert consent["channels"]["sms"]["*"]["granted"] is True  # given as a visitor
    assert {(h["channel"], h["granted"], h["source"]) for h in consent["history"]} == {
        ("sms", True, "event"), ("email", True, "event")}
    assert [d["token"] for d in doc["devices"]] == [DEVICE] and doc["devices"][0]["platform"] == "android"
    assert [m["template"] for m in doc["inbox"]] == ["trial_inbox"]
    pending = doc["messages"]["pending"]
    assert {m["id"] for m in pending} >= {"msg-a2", "msg-a3"}
    assert {m["channel"] for m in pending} == {"journey", "push"}  # the trial's and re-engagement's timers
    assert {m["template"] for m in pending if m["person"] == f"a:{ANONYMOUS}"} == {"content_follow_up"}
    assert all("body" in m for m in pending)
    assert {m["state"] for m in pending if m["id"] == "msg-a2"} == {"sending"}
    recent = {(o["channel"], o["status"]) for o in doc["messages"]["recent"]}
    assert {("inbox", "sent"), ("email", "sent"), ("sms", "dead_letter")} <= recent
    assert [d["message"]["id"] for d in doc["messages"]["dead_letters"]] == ["msg-a1"]
    assert set(doc["journeys"]["active"]) >= {"trial_onboarding"}
    assert doc["journeys"]["active"]["trial_onboarding"]["trigger"] == {"form": "trial"}
    assert {"trial_onboarding", "cart_abandonment"} <= set(doc["journeys"]["entered"])
    assert doc["experiments"]["cart_learning"]["arm"] in {"priority_order", "learnt"}
    assert doc["suppression"] == {"person": False,
                                  "email": {"address": "gk7q.someone@example.com", "suppressed": True},
                                  "sms": {"address": "+393337654321", "suppressed": False}}
    assert doc["kept_for_bookkeeping"]["event_ids"] >= 4
    assert [rcpt for rcpt, _ in smtp.messages] == [[EMAIL]]  # the cart reminder went out

    # Every message id of theirs the queue knows now: sent, waiting, dead-lettered, alerted, under way.
    ids = {m["id"] for m in pending} | {o["id"] for o in doc["messages"]["recent"]} | {"msg-a1", "alert:msg-a1"}
    assert await the_queue_names(store, ids) >= {"msg-a1", "alert:msg-a1", "msg-a2", "msg-a3"}
    assert await store.hexists(KEYS.due_sent(shard_of(f"u:{USER}")), "msg-a2")
    assert await store.hget(KEYS.due_attempts(shard_of(f"u:{USER}")), "msg-a3") == b"1"

    with export_api.server() as client:
        answer = client.delete(f"/v1/people/{USER}")
    assert answer.status_code == 200, answer.text
    erased = answer.json()
    assert erased["cancelled"] == len(pending) and erased["dead_letters"] == 1

    assert await the_queue_names(store, ids) == set()
    leftovers = []
    async for key in store.scan_iter(count=1000):
        for name in NAMES:
            if name.encode() in key.lower():
                leftovers.append((key, name, "in the key's name"))
        # Suppressions stay, by design: they keep the address from being contacted again.
        kept_on_purpose = key in (KEYS.suppressed().encode(), KEYS.suppressed_on("email").encode())
        for value in await values_of(store, key):
            for name in NAMES:
                if name.encode() in value.lower() and not (kept_on_purpose and "gk7q.someone" in name):
                    leftovers.append((key, name, value[:120]))
    assert leftovers == []
    assert export(export_api, USER).status_code == 404

    # Nothing of theirs goes out afterwards, not even what was under way or waiting.
    emails, pushes = len(smtp.messages), len(push.received)
    await scheduler_pass(redis_server.url, settings_env, clock + 3 * 86_400_000)
    assert len(smtp.messages) == emails and len(push.received) == pushes


def test_an_unknown_person_is_404_and_a_bad_id_422(export_api):
    answer = export(export_api, "nobody-here")
    assert answer.status_code == 404 and "nobody-here" in answer.json()["error"]
    assert export(export_api, "x" * 300).status_code == 422


def test_the_export_needs_a_server_token_that_may_read_or_administer(export_api):
    with export_api.server() as client:
        post_events(client, {"id": "ev-s1", "type": "page_view", "user_id": "u-scoped"})
    assert export(export_api, "u-scoped", READ_TOKEN).status_code == 200
    assert export(export_api, "u-scoped", ADMIN_TOKEN).status_code == 200
    refused = export(export_api, "u-scoped", INGEST_TOKEN)
    assert refused.status_code == 403 and "read or the admin scope" in refused.json()["error"]
    with export_api.browser() as browser:
        assert browser.get("/v1/people/u-scoped/export").status_code == 403
    with export_api.client() as client:
        assert client.get("/v1/people/u-scoped/export").status_code == 401
