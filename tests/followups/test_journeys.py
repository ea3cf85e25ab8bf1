"""Journeys end to end against real Redis and a real SMTP sink, with an injected
clock (no sleeps): triggers and exits in the pipeline, waits in the due queue,
the scheduler advancing them, the contact policy at send time."""

from __future__ import annotations

import asyncio

import pytest

from engine.catalog.compile import compile_catalog, load_catalog_file, parse_catalog_text
from engine.catalog.journeys import JOURNEY_CHANNEL, TRAIT_EVENT
from engine.errors import CatalogError
from engine.events import Event
from engine.followups.channels.email import EmailChannel, SmtpConfig, Tracker
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.journey_runner import internal_senders
from engine.followups.scheduler import Scheduler
from engine.followups.transitions import held_out
from engine.policy import Caps, ContactPolicy
from tests.conftest import ROOT, make_pipeline

T0 = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC
MINUTE = 60_000
DAY = 86_400_000

CATALOG = """
segments:
  - id: registered
    when: {trait: registered, equals: true}
templates:
  cart_reminder:
    subject: "Still thinking about {{ event.product }}?"
    text: "Use code {{ event.code | default('CART10') }} for {{ event.product }}."
    html: '<p>Hi {{ traits.name }}, <a href="https://shop.example/cart">back to your cart</a></p>'
  welcome:
    subject: "Welcome, {{ traits.name }}"
    text: "Thanks for registering."
  comeback:
    subject: "We miss you"
    text: "15% off with COMEBACK15"
  promo:
    text: "Promo {{ journey }}"
journeys:
  - id: cart_abandonment
    trigger: {event: add_to_cart}
    exit:
      - event: purchase
    reentry: {after: 1d}
    steps:
      - wait: 30m
      - send: {channel: email, template: cart_reminder}
  - id: welcome
    trigger: {segment: registered}
    steps:
      - send: {channel: email, template: welcome}
      - set_trait: {welcomed: true}
  - id: re_engagement
    trigger: {inactive_for: 30d}
    reentry: always
    steps:
      - send: {channel: email, template: comeback}
  - id: webinar_campaign
    trigger: {event: form_submit, where: {form: webinar}}
    group: campaign
    priority: 10
    steps:
      - wait: 1d
      - send: {channel: email, template: promo}
  - id: trial_campaign
    trigger: {event: form_submit}
    group: campaign
    priority: 20
    steps:
      - wait: 1d
      - send: {channel: email, template: promo}
  - id: flash_promo
    trigger: {event: flash}
    reentry: always
    steps:
      - send: {channel: email, template: promo, purpose: promotions}
"""


class Clock:
    def __init__(self, now: int = T0):
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def world(redis, smtp):
    """A pipeline with the test catalog and a scheduler sharing its clock."""
    clock = Clock()
    pipeline = make_pipeline(redis, CATALOG)
    email = EmailChannel(SmtpConfig(port=smtp.port), Tracker(b"k", "http://attimo.test"))

    def scheduler(policy: ContactPolicy | None = None, **kw) -> Scheduler:
        policy = policy or ContactPolicy()
        senders = {"email": email.send, **internal_senders(pipeline.journeys, clock)}
        return Scheduler(DueQueue(redis), ContactStore(redis), policy, senders, clock=clock, **kw)

    return pipeline, clock, scheduler


async def apply(pipeline, clock, person, kind, eid, properties=None, traits=None):
    return await pipeline.apply([Event(eid, kind, person, clock(), properties or {}, traits)], clock())


async def opt_in(redis, person: str, granted: bool = True) -> None:
    await ContactStore(redis).set_consent(person, "email", "*", granted)


async def drain(scheduler: Scheduler) -> None:
    """Run the scheduler until nothing is due at the current (fake) time."""
    while await scheduler.run_once():
        pass


async def test_cart_abandoned_sends_exactly_one_reminder_after_30_minutes(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-cart")
    await apply(pipeline, clock, "u-cart", "identify", "e0", traits={"email": "ana@example.com", "name": "Ana"})
    await apply(pipeline, clock, "u-cart", "add_to_cart", "e1", {"product": "CRM Pro", "code": "CRM10"})
    await apply(pipeline, clock, "u-cart", "add_to_cart", "e1", {"product": "CRM Pro"})  # redelivered
    clock.now += 29 * MINUTE
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += MINUTE
    await drain(scheduler)
    clock.now += DAY // 2
    await drain(scheduler)
    [(recipients, message)] = smtp.messages
    assert recipients == ["ana@example.com"]
    assert message["Subject"] == "Still thinking about CRM Pro?"
    assert "Use code CRM10 for CRM Pro." in message.get_body(("plain",)).get_content()
    assert message["List-Unsubscribe"].startswith("<http://attimo.test/v1/unsubscribe?")
    assert "/v1/t/click?" in message.get_body(("html",)).get_content()
    assert (await pipeline.journeys.state("u-cart"))["a"] == {}


async def test_purchase_inside_30_minutes_cancels_the_reminder(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-buy")
    await apply(pipeline, clock, "u-buy", "identify", "e0", traits={"email": "bo@example.com"})
    await apply(pipeline, clock, "u-buy", "add_to_cart", "e1", {"product": "CRM Pro"})
    clock.now += 10 * MINUTE
    result = await apply(pipeline, clock, "u-buy", "purchase", "e2", {"product": "CRM Pro"})
    assert any("ended: cart_abandonment: exit: purchase" in line
               for actions in result.journey_actions for line in actions.log)
    clock.now += 40 * MINUTE
    await drain(scheduler)
    assert smtp.messages == []


async def test_a_cart_and_its_purchase_in_one_batch_send_nothing(redis, smtp, world):
    """The purchase comes after the cart in event time: the journey the cart
    starts is ended by the purchase in the same batch (a browser flushes both)."""
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-quick")
    await apply(pipeline, clock, "u-quick", "identify", "e0", traits={"email": "qi@example.com"})
    cart = Event("e1", "add_to_cart", "u-quick", clock(), {"product": "CRM Pro"})
    purchase = Event("e2", "purchase", "u-quick", clock() + 1, {"product": "CRM Pro"})
    result = await pipeline.apply([purchase, cart], clock())  # order of arrival does not matter
    assert result.journey_actions[0].log == ["entered: cart_abandonment",
                                             "ended: cart_abandonment: exit: purchase"]
    clock.now += 40 * MINUTE
    await drain(scheduler)
    assert smtp.messages == []
    assert (await pipeline.journeys.state("u-quick"))["a"] == {}


async def test_a_held_out_person_holds_the_exclusive_groups_place(redis, smtp, world):
    """The control group of the higher-priority journey gets nothing, and not the
    lower-priority journey of the same group either: it stays a control group."""
    pipeline, clock, make = world
    pipeline.catalogs.current = compile_catalog(parse_catalog_text(CATALOG.replace(
        "  - id: trial_campaign\n", "  - id: trial_campaign\n    holdout: 100\n")))
    scheduler = make()
    await opt_in(redis, "u-ctl")
    await apply(pipeline, clock, "u-ctl", "identify", "e0", traits={"email": "ctl@example.com"})
    result = await apply(pipeline, clock, "u-ctl", "form_submit", "e1", {"form": "webinar"})
    assert result.journey_actions[0].log == ["held out: trial_campaign"]
    state = await pipeline.journeys.state("u-ctl")
    assert set(state["a"]) == {"trial_campaign"} and state["a"]["trial_campaign"]["held"] == 1
    clock.now += 2 * DAY
    await drain(scheduler)
    assert smtp.messages == []
    assert (await pipeline.journeys.state("u-ctl"))["a"] == {}  # walked to the end, sending nothing


SCORED = CATALOG.replace("journeys:\n", """scoring:
  half_life: 10d
  events:
    - {event: demo_request, points: 30}
journeys:
  - id: hot_lead
    trigger: {score: {at_least: 50}}
    reentry: always
    steps:
      - send: {channel: email, template: promo}
""", 1)


async def test_a_score_trigger_fires_when_the_score_crosses_not_while_it_stays_above(redis, smtp, world):
    pipeline, clock, make = world
    pipeline.catalogs.current = compile_catalog(parse_catalog_text(SCORED))
    scheduler = make()
    await opt_in(redis, "u-lead")
    await apply(pipeline, clock, "u-lead", "identify", "e0", traits={"email": "lead@example.com"})

    async def demo_request(eid: str) -> list[str]:
        result = await apply(pipeline, clock, "u-lead", "demo_request", eid)
        await drain(scheduler)
        return [line for actions in result.journey_actions for line in actions.log]

    assert await demo_request("d1") == []  # 30 points
    clock.now += DAY
    assert await demo_request("d2") == ["entered: hot_lead", "ended: hot_lead: finished"]  # 30 * 0.93 + 30
    clock.now += DAY
    assert await demo_request("d3") == []  # still above: no new crossing, though re-entry is "always"
    clock.now += 30 * DAY  # cooled to about 10 points
    assert await demo_request("d4") == []  # 40
    clock.now += DAY
    assert await demo_request("d5") == ["entered: hot_lead", "ended: hot_lead: finished"]  # crossed again
    assert len(smtp.messages) == 2


async def test_thirty_days_idle_queues_the_comeback_message(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-idle")
    await apply(pipeline, clock, "u-idle", "identify", "e0", traits={"email": "cy@example.com"})
    clock.now += 20 * DAY
    await apply(pipeline, clock, "u-idle", "page_view", "e1")  # activity pushes the timer forward
    clock.now += 29 * DAY  # 49 days after the first event, 29 after the last
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += DAY
    await drain(scheduler)
    [(_, message)] = smtp.messages
    assert message["Subject"] == "We miss you"
    clock.now += 60 * DAY  # still idle: one message per absence, not one a month
    await drain(scheduler)
    assert len(smtp.messages) == 1


async def test_no_inactivity_timer_for_a_visitor_no_message_can_reach(redis, world):
    pipeline, clock, _ = world
    await apply(pipeline, clock, "a-visitor", "page_view", "v1")
    await apply(pipeline, clock, "u-known", "identify", "k1", traits={"email": "kn@example.com"})
    queue = DueQueue(redis)
    assert await queue.pending_for("a-visitor", [JOURNEY_CHANNEL]) == []
    assert [m["template"] for m in await queue.pending_for("u-known", [JOURNEY_CHANNEL])] == ["re_engagement"]


async def test_a_trait_a_journey_sets_is_not_the_persons_activity(redis, smtp, world):
    """A set_trait step days later must not count as the person coming back: it
    would postpone the inactivity journey and fake a return."""
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-quiet")
    await apply(pipeline, clock, "u-quiet", "identify", "e0", traits={"email": "qu@example.com"})
    seen = clock()
    clock.now += 10 * DAY
    await apply(pipeline, clock, "u-quiet", TRAIT_EVENT, "jt:x:1", traits={"welcomed": True})
    profile = await pipeline.store.fetch("u-quiet")
    assert profile.t["welcomed"] is True and profile.ls == seen
    clock.now += 20 * DAY  # 30 days after the person's own last event
    await drain(scheduler)
    assert [m["Subject"] for _, m in smtp.messages] == ["We miss you"]


async def test_an_idle_timer_claimed_while_the_person_comes_back_waits_again(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-back")
    await apply(pipeline, clock, "u-back", "identify", "e0", traits={"email": "di@example.com"})
    clock.now += 30 * DAY
    [timer] = await scheduler.queue.claim(clock(), 10, 60_000)  # in flight ...
    await apply(pipeline, clock, "u-back", "page_view", "e1")  # ... when the person returns
    assert await scheduler.process(timer) == "rescheduled"
    assert smtp.messages == []
    clock.now += 30 * DAY - 1
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += 1
    await drain(scheduler)
    assert len(smtp.messages) == 1


async def test_registration_without_consent_sends_nothing(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await apply(pipeline, clock, "u-new", "register", "e1",
                traits={"registered": True, "email": "ed@example.com", "name": "Ed"})
    await drain(scheduler)
    assert smtp.messages == []
    [outcome] = await ContactStore(redis).outcomes("u-new")
    assert outcome["status"] == "dropped" and outcome["reason"].startswith("no consent")
    # The journey ran (its set_trait step applied) even though the email was dropped.
    assert (await pipeline.store.fetch("u-new")).t["welcomed"] is True


async def test_registration_with_consent_in_the_same_batch_sends_the_welcome(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await pipeline.apply([
        Event("c1", "consent", "u-yes", clock(), {"channel": "email", "purpose": "marketing", "granted": True}),
        Event("r1", "register", "u-yes", clock(), {}, {"registered": True, "email": "fa@example.com",
                                                        "name": "Fa"}),
    ], clock())
    await drain(scheduler)
    [(_, message)] = smtp.messages
    assert message["Subject"] == "Welcome, Fa"


async def test_two_triggers_of_an_exclusive_group_at_once_enter_one_journey(redis, world):
    pipeline, clock, _ = world
    await apply(pipeline, clock, "u-both", "form_submit", "e1", {"form": "webinar"})
    state = await pipeline.journeys.state("u-both")
    assert list(state["a"]) == ["trial_campaign"]  # both matched; the higher priority won
    await apply(pipeline, clock, "u-both", "form_submit", "e2", {"form": "webinar"})
    assert list((await pipeline.journeys.state("u-both"))["a"]) == ["trial_campaign"]


async def test_racing_triggers_of_one_group_leave_one_journey_and_one_timer(redis, world):
    """Five batches at once, each with its own trigger event: every one reads
    the empty state and schedules its entry's timer; one compare-and-set wins,
    the others read again, find the person in the journey, and take back the
    timers they queued."""
    pipeline, clock, _ = world
    await asyncio.gather(*(apply(pipeline, clock, "u-race", "form_submit", f"r{i}", {"form": "webinar"})
                           for i in range(5)))
    assert list((await pipeline.journeys.state("u-race"))["a"]) == ["trial_campaign"]
    timers = await DueQueue(redis).pending_for("u-race", [JOURNEY_CHANNEL])
    assert [t["template"] for t in timers if t["id"].startswith("jt:")] == ["trial_campaign"]


async def test_ten_concurrent_triggers_against_a_cap_of_two_send_exactly_two(redis, smtp, world):
    pipeline, clock, make = world
    await opt_in(redis, "u-cap")
    await apply(pipeline, clock, "u-cap", "identify", "e0", traits={"email": "gi@example.com"})
    await asyncio.gather(*(apply(pipeline, clock, "u-cap", "flash", f"f{i}") for i in range(10)))
    assert len(await DueQueue(redis).pending_for("u-cap", ["email"])) == 10
    policy = ContactPolicy(channel_caps={"email": Caps(per_day=2)})
    schedulers = [make(policy, batch=2, concurrency=10) for _ in range(5)]
    await asyncio.gather(*(s.run_once() for s in schedulers))
    assert len(smtp.messages) == 2
    assert sum(s.stats.dropped for s in schedulers) == 8


async def test_consent_withdrawn_while_the_reminder_waits_sends_nothing(redis, smtp, world):
    pipeline, clock, make = world
    scheduler = make()
    await opt_in(redis, "u-stop")
    await apply(pipeline, clock, "u-stop", "identify", "e0", traits={"email": "ha@example.com"})
    await apply(pipeline, clock, "u-stop", "add_to_cart", "e1", {"product": "CRM Pro"})
    clock.now += 5 * MINUTE
    await apply(pipeline, clock, "u-stop", "consent", "e2", {"channel": "email", "granted": False})
    clock.now += 60 * MINUTE
    await drain(scheduler)
    assert smtp.messages == []


def test_holdout_share_is_deterministic_and_close_to_the_percentage():
    catalog = compile_catalog(parse_catalog_text(CATALOG.replace(
        "  - id: flash_promo\n", "  - id: flash_promo\n    holdout: 10\n")))
    journey = catalog.journeys.by_id["flash_promo"]
    people = [f"p-{i}" for i in range(20_000)]
    first = [held_out(p, journey) for p in people]
    assert first == [held_out(p, journey) for p in people]
    assert 0.09 < sum(first) / len(people) < 0.11


async def test_a_held_out_person_enters_but_gets_nothing(redis, world):
    pipeline, clock, _ = world
    pipeline.catalogs.current = compile_catalog(parse_catalog_text(CATALOG.replace(
        "  - id: flash_promo\n", "  - id: flash_promo\n    holdout: 100\n")))
    result = await apply(pipeline, clock, "u-held", "flash", "f1")
    assert result.journey_actions[0].log == ["held out: flash_promo", "ended: flash_promo: finished"]
    assert await DueQueue(redis).pending_for("u-held", ["email"]) == []
    assert (await pipeline.journeys.state("u-held"))["e"]["flash_promo"] == [clock(), 1]


def test_every_journey_problem_is_reported_with_its_path():
    bad = """
segments: [{id: s, when: {trait: a, equals: 1}}]
templates:
  t: {text: "{{ unclosed"}
journeys:
  - id: j1
    trigger: {segment: nope}
    reentry: sometimes
    steps:
      - wait: soon
      - send: {channel: fax, template: missing}
      - if: {trait: x, equals: 1}
        then: [{notify: {template: t, channel: email}}]
      - dance: true
  - id: j1
    trigger: {event: a}
    steps: []
"""
    with pytest.raises(CatalogError) as caught:
        compile_catalog(parse_catalog_text(bad))
    paths = {path for path, _ in caught.value.problems}
    assert {"templates.t.text", "journeys[0].trigger.segment", "journeys[0].reentry",
            "journeys[0].steps[0].wait", "journeys[0].steps[1].send.channel",
            "journeys[0].steps[1].send.template", "journeys[0].steps[2].then[0].notify.channel",
            "journeys[0].steps[3]", "journeys[1].id"} <= paths


def test_the_demo_catalog_expresses_the_journey_scenarios():
    catalog, _ = load_catalog_file(ROOT / "examples" / "catalog.yaml")
    journeys = catalog.journeys.by_id
    assert {"welcome", "cart_abandonment", "re_engagement", "lead_nurturing", "hot_lead_alert",
            "accessory_follow_up", "content_follow_up", "webinar_follow_up", "trial_onboarding",
            "complaint_escalation"} <= set(journeys)


async def test_quiet_hours_follow_the_time_zone_the_person_sent(redis, smtp, world):
    """A `timezone` trait places the person: 20:26 UTC is 05:26 in Tokyo, inside
    quiet hours 21-8 there, so the promotion waits for 08:00 Tokyo (23:00 UTC)."""
    pipeline, clock, make = world
    scheduler = make(ContactPolicy(quiet_start_hour=21, quiet_end_hour=8))
    await opt_in(redis, "u-tokyo")
    await apply(pipeline, clock, "u-tokyo", "identify", "e0",
                traits={"email": "ken@example.com", "timezone": "Asia/Tokyo"})
    assert (await ContactStore(redis).load("u-tokyo")).tz == "Asia/Tokyo"
    await apply(pipeline, clock, "u-tokyo", "flash", "f1")
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += 2 * 60 * MINUTE + 33 * MINUTE  # 22:59:40 UTC
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += MINUTE
    await drain(scheduler)
    assert [m["To"] for _, m in smtp.messages] == ["ken@example.com"]


async def test_a_condition_exit_ends_the_run_in_the_batch_that_makes_it_true(redis, smtp, world):
    """`exit: [{trait: open_deal, equals: true}]`: the identify that sets the
    trait ends the waiting run at once (not when its timer fires)."""
    pipeline, clock, make = world
    pipeline.catalogs.current = compile_catalog(parse_catalog_text(CATALOG.replace(
        "      - event: purchase\n", "      - event: purchase\n      - {trait: open_deal, equals: true}\n")))
    scheduler = make()
    await opt_in(redis, "u-deal")
    await apply(pipeline, clock, "u-deal", "identify", "e0", traits={"email": "deal@example.com"})
    await apply(pipeline, clock, "u-deal", "add_to_cart", "e1", {"product": "CRM Pro"})
    clock.now += MINUTE
    result = await apply(pipeline, clock, "u-deal", "identify", "e2", traits={"open_deal": True})
    assert [line for actions in result.journey_actions for line in actions.log] == [
        "ended: cart_abandonment: exit condition"]
    assert (await pipeline.journeys.state("u-deal"))["a"] == {}
    clock.now += 40 * MINUTE
    await drain(scheduler)
    assert smtp.messages == []
