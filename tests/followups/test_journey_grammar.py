"""The journey grammar end to end, one construct at a time: events through the
real pipeline, the real scheduler with an injected clock, and what the SMTP
sink and the webhook receiver got (webhooks checked against their HMAC
signature), plus the journey state in Redis. The inbox and device caps go
through the API. The demo catalog's scenarios: tests/followups/test_demo_journeys.py."""

from __future__ import annotations

import contextlib

import orjson
import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.clock import now_ms
from engine.events import Event
from engine.followups.channels.senders import senders_from_settings
from engine.followups.channels.webhook import verify_signature
from engine.followups.inbox import InboxStore
from engine.ingest.identity import known
from engine.settings import Settings
from engine.store.keys import DEVICES_MAX, INBOX_MAX, Keys
from engine.testing.processes import wait_until
from tests.conftest import signed
from tests.followups.test_journeys import (
    DAY,
    MINUTE,
    T0,
    apply,
    drain,
    opt_in,
    world,  # noqa: F401 - the fixture _running asks for
)

HOUR = 60 * MINUTE
WEBHOOK_SECRET = b"grammar-webhook-secret"
WEBHOOK_CHANNELS = ("push", "sms", "sales", "operator")

GRAMMAR = """
placements:
  home: {description: "Home page"}
offers:
  - id: analytics_coupon
    kind: discount
    placements: [home]
    value: 25
    content: {title: "25% off Analytics Suite", code: ANALYTICS25}
scoring:
  half_life: 30d
  events:
    - {event: download, points: 30}
  traits:
    - {trait: role, in: [director], points: 30}
templates:
  thanks: {subject: "Thanks for coming", text: "See you soon."}
  missed: {subject: "Sorry we missed you", text: "Book another slot."}
  survey: {subject: "How was it?", text: "Tell us."}
  pro_tips: {subject: "Pro tips", text: "For pro users."}
  free_nudge: {subject: "Go pro", text: "Upgrade today."}
  upgrade_note: {subject: "Upgrade", text: "See plans."}
  refund_alert:
    subject: "Refund for {{ person }}"
    text: "{{ traits.name }} asks {{ event.amount }} back: {{ event.reason }}"
  hot: {subject: "Hot: {{ person }}", text: "Score {{ score | round | int }}"}
  day1: {subject: "Day 1", text: "Import your contacts."}
  day3: {subject: "Day 3", text: "Invite a teammate."}
  low: {subject: "Low campaign", text: "low"}
  high: {subject: "High campaign", text: "high"}
  wish: {subject: "On your wishlist: {{ event.item }}", text: "Still there."}
  coupon:
    subject: "{{ offer.content.title }}"
    text: "Code {{ offer.content.code }} at checkout ({{ offer.kind }} {{ offer.offer }})."
  note: {subject: "Note {{ event.n }}", text: "n", expires: 14d}
  ping: {subject: "Ping", text: "ping"}
journeys:
  - id: demo_call
    trigger: {event: demo_booked}
    steps:
      - wait_for: {event: demo_attended, where: {demo: crm}, timeout: 2d}
        then:
          - send: {channel: email, template: thanks}
        else:
          - send: {channel: email, template: missed}
      - send: {channel: inbox, template: survey}
  - id: signup_branch
    trigger: {event: signup}
    steps:
      - wait: 1h
      - if: {trait: plan, equals: pro}
        then:
          - send: {channel: email, template: pro_tips}
          - exit
        else:
          - send: {channel: push, template: free_nudge}
      - send: {channel: inbox, template: upgrade_note}
  - id: refund_escalation
    trigger: {event: refund_requested}
    reentry: always
    steps:
      - notify: {channel: operator, template: refund_alert}
  - id: hot_score
    trigger: {score: {at_least: 50}}
    steps:
      - notify: {channel: sales, template: hot}
  - id: trial_drip
    trigger: {event: trial_started}
    exit:
      - event: purchase
      - {trait: churned, equals: true}
    steps:
      - wait: 1d
      - send: {channel: email, template: day1}
      - wait: 2d
      - send: {channel: email, template: day3}
  - id: low_campaign
    trigger: {event: browse_promo}
    group: campaign
    priority: 10
    reentry: always
    steps:
      - wait: 1d
      - send: {channel: email, template: low}
  - id: high_campaign
    trigger: {event: vip_invite}
    group: campaign
    priority: 20
    steps:
      - wait: 1d
      - send: {channel: email, template: high}
  - id: wishlist
    trigger: {event: wishlist_add}
    reentry: {after: 2d}
    steps:
      - send: {channel: email, template: wish}
  - id: once_only
    trigger: {event: quiz_done}
    steps:
      - send: {channel: email, template: thanks}
  - id: coupon
    trigger: {event: coupon_wanted}
    steps:
      - send: {channel: email, template: coupon, offer: analytics_coupon}
      - send: {channel: inbox, template: coupon, offer: analytics_coupon}
  - id: notes
    trigger: {event: note}
    reentry: always
    steps:
      - send: {channel: inbox, template: note}
  - id: pings
    trigger: {event: ping}
    reentry: always
    steps:
      - send: {channel: push, template: ping}
"""


@contextlib.asynccontextmanager
async def _running(request, redis, receiver, catalog):
    """The `world` of tests/followups/test_journeys.py with `catalog` in force and a
    scheduler whose senders are built from settings as in production: email to
    the SMTP sink, push, sales and operator webhooks to the receiver. Yields
    (pipeline, clock, scheduler)."""
    pipeline, clock, make = request.getfixturevalue("world")
    pipeline.catalogs.current = catalog
    settings = Settings(smtp_port=request.getfixturevalue("smtp").port, tracking_secret="grammar-tracking",
                        public_url="http://attimo.test",
                        webhook_urls=tuple(f"{c}={receiver.url}/{c}" for c in WEBHOOK_CHANNELS),
                        webhook_secret=WEBHOOK_SECRET.decode(), webhook_attempts=1)
    senders, closeables = senders_from_settings(settings, redis, Keys())
    scheduler = make(alert_channel="operator")
    scheduler.senders.update(senders)
    try:
        yield pipeline, clock, scheduler
    finally:
        for resource in closeables:
            await resource.aclose()


@pytest.fixture
async def grammar(request, redis, receiver):
    async with _running(request, redis, receiver, compile_catalog(parse_catalog_text(GRAMMAR))) as running:
        yield running


def webhooks(receiver, channel: str) -> list[dict]:
    """The bodies the receiver got on a channel, each checked against its signature."""
    bodies = []
    for got in receiver.received:
        if got.path != f"/{channel}":
            continue
        assert verify_signature(WEBHOOK_SECRET, got.headers["x-attimo-timestamp"], got.body,
                                got.headers["x-attimo-signature"]), f"bad signature on {got.path}"
        body = orjson.loads(got.body)
        assert got.headers["idempotency-key"] == body["id"]
        bodies.append(body)
    return bodies


def emails(smtp) -> list[tuple[str, str]]:
    """(recipient, subject) of every email the sink got, in order."""
    return [(recipients[0], message["Subject"]) for recipients, message in smtp.messages]


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


async def customer(redis, pipeline, clock, person: str, **traits) -> str:
    """A person with an email address who opted in to email: returns the address."""
    address = f"{person}@example.com"
    await opt_in(redis, person)
    await apply(pipeline, clock, person, "identify", f"{person}-id", traits={"email": address, **traits})
    return address


async def active(pipeline, person: str) -> dict:
    return (await pipeline.journeys.state(person))["a"]


# -- wait_for ------------------------------------------------------------------------


async def test_wait_for_takes_the_event_branch_when_the_event_comes_before_the_timeout(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-came")
    await apply(pipeline, clock, "u-came", "demo_booked", "b1")
    run = (await active(pipeline, "u-came"))["demo_call"]
    assert run["pc"] == 0 and run["until"] == T0 + 2 * DAY
    clock.now += HOUR
    await apply(pipeline, clock, "u-came", "demo_attended", "a1", {"demo": "analytics"})  # not the awaited one
    assert (await active(pipeline, "u-came"))["demo_call"]["until"] == T0 + 2 * DAY
    clock.now += DAY
    await apply(pipeline, clock, "u-came", "demo_attended", "a2", {"demo": "crm"})
    await drain(scheduler)
    assert emails(smtp) == [(address, "Thanks for coming")]
    [survey] = await InboxStore(redis).messages("u-came", clock())
    assert survey["title"] == "How was it?"  # the step after the wait_for follows the branch
    assert await active(pipeline, "u-came") == {}
    clock.now += 2 * DAY  # the timeout's timer fires, stale: the run moved on
    await drain(scheduler)
    assert emails(smtp) == [(address, "Thanks for coming")]


async def test_wait_for_takes_the_timeout_branch_when_the_event_does_not_come(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-away")
    await apply(pipeline, clock, "u-away", "demo_booked", "b1")
    clock.now += 2 * DAY - 1
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += 1
    await drain(scheduler)
    assert emails(smtp) == [(address, "Sorry we missed you")]
    assert [m["title"] for m in await InboxStore(redis).messages("u-away", clock())] == ["How was it?"]
    assert await active(pipeline, "u-away") == {}
    clock.now += HOUR
    await apply(pipeline, clock, "u-away", "demo_attended", "a1", {"demo": "crm"})  # too late
    await drain(scheduler)
    assert emails(smtp) == [(address, "Sorry we missed you")]


# -- if / else and the exit step -----------------------------------------------------


async def test_if_branches_on_a_condition_read_when_the_step_is_reached(redis, smtp, receiver, grammar):
    pipeline, clock, scheduler = grammar
    pro = await customer(redis, pipeline, clock, "u-pro")
    await customer(redis, pipeline, clock, "u-free", plan="free")
    await apply(pipeline, clock, "u-pro", "signup", "s1")
    await apply(pipeline, clock, "u-free", "signup", "s2")
    clock.now += 30 * MINUTE
    await apply(pipeline, clock, "u-pro", "identify", "p1", traits={"plan": "pro"})  # after entering
    clock.now += 30 * MINUTE
    await drain(scheduler)
    # then: the email, and its exit step skips the inbox message after the if
    assert emails(smtp) == [(pro, "Pro tips")]
    assert await InboxStore(redis).messages("u-pro", clock()) == []
    # else: push, then the step after the if
    [push] = webhooks(receiver, "push")
    assert (push["person"], push["template"], push["title"]) == ("u-free", "free_nudge", "Go pro")
    assert [m["title"] for m in await InboxStore(redis).messages("u-free", clock())] == ["Upgrade"]
    assert await active(pipeline, "u-pro") == {} and await active(pipeline, "u-free") == {}


# -- notify ----------------------------------------------------------------------------


async def test_notify_sends_one_signed_alert_to_the_operator_without_consent(redis, smtp, receiver, grammar):
    pipeline, clock, scheduler = grammar
    await apply(pipeline, clock, "u-refund", "identify", "i1", traits={"name": "Rita"})  # no consent at all
    event = {"amount": 120, "reason": "charged twice"}
    await apply(pipeline, clock, "u-refund", "refund_requested", "r1", event)
    await apply(pipeline, clock, "u-refund", "refund_requested", "r1", event)  # redelivered
    await drain(scheduler)
    [alert] = webhooks(receiver, "operator")
    assert (alert["channel"], alert["template"], alert["person"], alert["purpose"]) == (
        "operator", "refund_alert", "u-refund", "operations")
    assert alert["title"] == "Refund for u-refund"
    assert alert["text"] == "Rita asks 120 back: charged twice"
    assert alert["traits"]["name"] == "Rita"
    assert len(receiver.received) == 1 and smtp.messages == []


# -- score trigger ---------------------------------------------------------------------


async def test_crossing_the_score_threshold_with_events_enters_the_score_journey(redis, receiver, grammar):
    pipeline, clock, scheduler = grammar
    await apply(pipeline, clock, "u-lead", "download", "d1")  # 30 points
    await drain(scheduler)
    assert webhooks(receiver, "sales") == []
    assert "hot_score" not in (await pipeline.journeys.state("u-lead"))["e"]
    clock.now += HOUR
    result = await apply(pipeline, clock, "u-lead", "download", "d2")  # about 60
    assert "entered: hot_score" in result.journey_actions[0].log
    await drain(scheduler)
    [alert] = webhooks(receiver, "sales")
    assert (alert["person"], alert["template"], alert["title"], alert["text"]) == (
        "u-lead", "hot", "Hot: u-lead", "Score 60")
    assert (await pipeline.journeys.state("u-lead"))["e"]["hot_score"] == [clock(), 0]


async def test_trait_points_crossing_the_score_threshold_enter_the_score_journey(redis, receiver, grammar):
    pipeline, clock, scheduler = grammar
    await apply(pipeline, clock, "u-boss", "download", "d1")  # 30 points
    clock.now += HOUR
    await apply(pipeline, clock, "u-boss", "identify", "i1", traits={"role": "director"})  # +30
    await drain(scheduler)
    [alert] = webhooks(receiver, "sales")
    assert (alert["person"], alert["text"]) == ("u-boss", "Score 60")


# -- exits -----------------------------------------------------------------------------


async def test_an_exit_condition_ends_the_journey_in_the_batch_that_makes_it_true(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-churn")
    await apply(pipeline, clock, "u-churn", "trial_started", "t1")
    clock.now += DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Day 1")]
    clock.now += HOUR
    result = await apply(pipeline, clock, "u-churn", "identify", "c1", traits={"churned": True})
    assert "ended: trial_drip: exit condition" in result.journey_actions[0].log
    assert await active(pipeline, "u-churn") == {}
    clock.now += 2 * DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Day 1")]
    assert await active(pipeline, "u-churn") == {}


async def test_an_exit_event_while_waiting_ends_the_journey_and_nothing_is_sent_after(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-bought")
    await apply(pipeline, clock, "u-bought", "trial_started", "t1")
    clock.now += DAY
    await drain(scheduler)
    assert (await active(pipeline, "u-bought"))["trial_drip"]["until"] == T0 + 3 * DAY  # the second wait
    clock.now += HOUR
    result = await apply(pipeline, clock, "u-bought", "purchase", "p1", {"amount": 49})
    assert "ended: trial_drip: exit: purchase" in result.journey_actions[0].log
    assert await active(pipeline, "u-bought") == {}
    clock.now += 5 * DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Day 1")]


# -- exclusive groups ------------------------------------------------------------------


async def test_a_higher_priority_journey_replaces_a_lower_one_of_its_group(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-swap")
    await apply(pipeline, clock, "u-swap", "browse_promo", "b1")
    clock.now += HOUR
    result = await apply(pipeline, clock, "u-swap", "vip_invite", "v1")
    assert result.journey_actions[0].log == [
        "ended: low_campaign: replaced by high_campaign (higher priority in group campaign)",
        "entered: high_campaign"]
    assert list(await active(pipeline, "u-swap")) == ["high_campaign"]
    clock.now += DAY  # the low journey's timer is due first, and finds its run gone
    await drain(scheduler)
    assert emails(smtp) == [(address, "High campaign")]
    assert await active(pipeline, "u-swap") == {}


async def test_a_lower_priority_journey_is_blocked_while_a_higher_one_of_its_group_runs(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-block")
    await apply(pipeline, clock, "u-block", "vip_invite", "v1")
    clock.now += HOUR
    await apply(pipeline, clock, "u-block", "browse_promo", "b1")
    state = await pipeline.journeys.state("u-block")
    assert list(state["a"]) == ["high_campaign"] and "low_campaign" not in state["e"]
    clock.now += DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "High campaign")]
    # The group is free once the high journey is over.
    await apply(pipeline, clock, "u-block", "browse_promo", "b2")
    assert list(await active(pipeline, "u-block")) == ["low_campaign"]
    clock.now += DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "High campaign"), (address, "Low campaign")]


# -- re-entry ----------------------------------------------------------------------------


async def test_reentry_after_a_window_is_refused_inside_it_and_allowed_after(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-wish")
    await apply(pipeline, clock, "u-wish", "wishlist_add", "w1", {"item": "CRM Pro"})
    await drain(scheduler)
    clock.now += 2 * DAY - 1
    await apply(pipeline, clock, "u-wish", "wishlist_add", "w2", {"item": "Dashboards"})
    await drain(scheduler)
    assert emails(smtp) == [(address, "On your wishlist: CRM Pro")]
    assert (await pipeline.journeys.state("u-wish"))["e"]["wishlist"] == [T0, 0]
    clock.now += 1
    await apply(pipeline, clock, "u-wish", "wishlist_add", "w3", {"item": "Email Sync"})
    await drain(scheduler)
    assert emails(smtp) == [(address, "On your wishlist: CRM Pro"), (address, "On your wishlist: Email Sync")]
    assert (await pipeline.journeys.state("u-wish"))["e"]["wishlist"] == [clock(), 0]


async def test_without_a_reentry_policy_a_journey_is_entered_once(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-quiz")
    await apply(pipeline, clock, "u-quiz", "quiz_done", "q1")
    clock.now += 300 * DAY
    await apply(pipeline, clock, "u-quiz", "quiz_done", "q2")
    await drain(scheduler)
    assert emails(smtp) == [(address, "Thanks for coming")]


# -- offers in templates -------------------------------------------------------------------


async def test_a_send_with_an_offer_renders_the_offer_fields(redis, smtp, grammar):
    pipeline, clock, scheduler = grammar
    address = await customer(redis, pipeline, clock, "u-coupon")
    await apply(pipeline, clock, "u-coupon", "coupon_wanted", "c1")
    await drain(scheduler)
    [(recipients, message)] = smtp.messages
    assert recipients == [address] and message["Subject"] == "25% off Analytics Suite"
    assert "Code ANALYTICS25 at checkout (discount analytics_coupon)." in text_of(message)
    [note] = await InboxStore(redis).messages("u-coupon", clock())
    assert (note["title"], note["text"]) == ("25% off Analytics Suite",
                                             "Code ANALYTICS25 at checkout (discount analytics_coupon).")


# -- the app's side: inbox and devices through the API ------------------------------------------


async def test_the_inbox_keeps_the_newest_messages_up_to_its_cap(redis, api, grammar):
    pipeline, clock, scheduler = grammar
    clock.now = now_ms()  # the API reads expiry against the wall clock
    for n in range(INBOX_MAX + 2):
        await apply(pipeline, clock, known("u-notes"), "note", f"n{n}", {"n": n})
        await drain(scheduler)
        clock.now += MINUTE
    with api.server() as client:
        answer = client.get("/v1/inbox", params={"user_id": "u-notes"})
    assert answer.status_code == 200, answer.text
    titles = [m["title"] for m in answer.json()["messages"]]
    assert titles == [f"Note {n}" for n in range(INBOX_MAX + 1, 1, -1)]  # Note 0 and 1 dropped
    assert answer.json()["unread"] == INBOX_MAX


async def test_expired_inbox_messages_are_not_returned(redis, api, grammar):
    pipeline, clock, scheduler = grammar
    now = now_ms()
    clock.now = now - 15 * DAY  # the template expires in 14 days: gone by now
    await apply(pipeline, clock, known("u-old"), "note", "n1", {"n": "old"})
    await drain(scheduler)
    clock.now = now - 2 * DAY  # while the old one is still there
    await apply(pipeline, clock, known("u-old"), "note", "n2", {"n": "recent"})
    await drain(scheduler)
    query = {"user_id": "u-old", "user_sig": signed("u-old")}
    with api.browser() as client:
        answer = client.get("/v1/inbox", params=query)
        assert answer.status_code == 200, answer.text
        [message] = answer.json()["messages"]
        assert message["title"] == "Note recent" and message["expires"] == now + 12 * DAY
        [old_id] = [m["id"] for m in orjson.loads(await redis.get(Keys().inbox(known("u-old"))))
                    if m["title"] == "Note old"]
        assert client.post(f"/v1/inbox/{old_id}/read", json=query).status_code == 404


async def test_a_person_keeps_at_most_ten_devices_the_least_recently_registered_dropped(
        redis, api, receiver, grammar):
    pipeline, clock, scheduler = grammar
    person = "u-devices"

    def register(token: str) -> dict:
        before = now_ms()
        wait_until(lambda: now_ms() > before, 1, 0.0005, "the next millisecond")  # distinct registration times
        with api.browser() as client:
            answer = client.post("/v1/devices", json={"user_id": person, "user_sig": signed(person),
                                                      "token": token, "platform": "ios"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    for n in range(DEVICES_MAX):
        assert register(f"tok-{n}") == {"devices": n + 1}
    assert register("tok-0") == {"devices": DEVICES_MAX}  # refreshed: now the newest
    assert register("tok-new") == {"devices": DEVICES_MAX}
    await apply(pipeline, clock, known(person), "ping", "p1")
    await drain(scheduler)
    [push] = webhooks(receiver, "push")
    tokens = {device["token"] for device in push["tokens"]}
    assert tokens == {f"tok-{n}" for n in range(DEVICES_MAX) if n != 1} | {"tok-new"}


VIP = GRAMMAR + """
  - id: vip_track
    trigger: {event: vip_join}
    group: campaign
    priority: 30
    exit:
      - {trait: left_vip, equals: true}
    steps:
      - wait: 1d
      - send: {channel: email, template: high}
"""


async def test_a_run_ended_by_its_exit_condition_does_not_block_its_group_in_the_same_batch(
        request, redis, smtp, receiver):
    async with _running(request, redis, receiver, compile_catalog(parse_catalog_text(VIP))) as (
            pipeline, clock, scheduler):
        address = await customer(redis, pipeline, clock, "u-y")
        await apply(pipeline, clock, "u-y", "vip_join", "v1")
        clock.now += HOUR
        # One batch: the trait that ends vip_track, then the trigger of low_campaign (same group).
        result = await pipeline.apply([Event("i2", "identify", "u-y", clock(), {}, {"left_vip": True}),
                                       Event("b1", "browse_promo", "u-y", clock() + 1, {})], clock())
        assert result.journey_actions[0].log == ["ended: vip_track: exit condition", "entered: low_campaign"]
        clock.now += 2 * DAY
        await drain(scheduler)
        assert emails(smtp) == [(address, "Low campaign")]


async def test_an_offer_value_renders_as_written_in_the_catalog(request, redis, smtp, receiver):
    catalog = GRAMMAR.replace("Code {{ offer.content.code }} at checkout ({{ offer.kind }} {{ offer.offer }}).",
                              "{{ offer.value }}% off")
    async with _running(request, redis, receiver, compile_catalog(parse_catalog_text(catalog))) as (
            pipeline, clock, scheduler):
        await customer(redis, pipeline, clock, "u-c")
        await apply(pipeline, clock, "u-c", "coupon_wanted", "c1")
        await drain(scheduler)
        [(_, message)] = smtp.messages
        assert message.get_body(("plain",)).get_content().startswith("25% off")
