"""The demo catalog's journeys and offers for SCENARIOS 2, 4, 5, 6, 8, 11 and 12
(examples/catalog.yaml), driven as the scenarios tell them: events through the
real pipeline, the real scheduler with an injected clock, what the SMTP sink
and the webhook receiver got, and what deciding shows on site. Also the
constructs scenario 2 and the SMS channel rest on: consent conditions and the
phone trait."""

from __future__ import annotations

import pytest

from engine.catalog.compile import compile_catalog, load_catalog_file, parse_catalog_text
from engine.decisions.decide import decide
from engine.errors import CatalogError
from engine.followups.contacts import ContactStore
from engine.followups.inbox import DeviceStore, InboxStore
from engine.policy import suppression_address
from tests.conftest import ROOT
from tests.followups.test_journey_grammar import (
    GRAMMAR,
    _running,
    active,
    customer,
    emails,
    text_of,
    webhooks,
)
from tests.followups.test_journeys import (
    DAY,
    MINUTE,
    apply,
    drain,
    world,  # noqa: F401 - the fixture _running asks for
)

HOUR = 60 * MINUTE


@pytest.fixture
async def demo(request, redis, receiver):
    catalog, _ = load_catalog_file(ROOT / "examples" / "catalog.yaml")
    async with _running(request, redis, receiver, catalog) as running:
        yield running


async def test_scenario_2_the_cart_reminder_is_an_email_with_an_opt_in_and_a_push_without(
        redis, smtp, receiver, demo):
    """`if: {all: [{trait: email, exists: true}, {consent: email}]}`: the email
    goes to whom it may; a person with an address but no opt-in gets the push
    (their device's token), not a dropped email."""
    pipeline, clock, scheduler = demo
    address = await customer(redis, pipeline, clock, "u-mail")
    await apply(pipeline, clock, "u-app", "identify", "u-app-id", traits={"email": "app@example.com"})
    await DeviceStore(redis).register("u-app", "tok-1", "ios", clock())
    for person in ("u-mail", "u-app"):
        await apply(pipeline, clock, person, "add_to_cart", f"{person}-cart", {"product": "CRM Pro"})
    clock.now += 30 * MINUTE
    await drain(scheduler)
    assert emails(smtp) == [(address, "Still thinking about CRM Pro?")]
    [push] = webhooks(receiver, "push")
    assert (push["person"], push["template"], push["tokens"][0]["token"]) == ("u-app", "cart_push", "tok-1")


async def test_scenario_4_pricing_three_times_in_a_week_sends_the_trial_email(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    address = await customer(redis, pipeline, clock, "u-price")
    pricing = {"category": "crm", "page_type": "pricing"}
    for n in range(2):
        await apply(pipeline, clock, "u-price", "page_view", f"pv{n}", pricing)
        clock.now += 2 * DAY
    await drain(scheduler)
    assert smtp.messages == []
    await apply(pipeline, clock, "u-price", "page_view", "pv2", pricing)
    await drain(scheduler)
    [(recipients, message)] = smtp.messages
    assert recipients == [address] and message["Subject"] == "Your CRM Pro trial is ready"
    assert "TRIAL14" in text_of(message)
    # ... and the trial banner shows on the next page view.
    decision = decide(pipeline.catalogs.current, await pipeline.store.fetch("u-price"), "u-price",
                      ["home_hero"], {}, clock())
    assert decision.placements["home_hero"]["offer"] == "crm_trial"


async def test_scenario_4_pricing_views_spread_over_more_than_a_week_send_nothing(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    await customer(redis, pipeline, clock, "u-slow")
    for n in range(3):
        await apply(pipeline, clock, "u-slow", "page_view", f"pv{n}", {"category": "crm", "page_type": "pricing"})
        clock.now += 5 * DAY
    await drain(scheduler)
    assert smtp.messages == []
    assert "lead_nurturing" not in (await pipeline.journeys.state("u-slow"))["e"]


async def test_scenario_5_a_lead_crossing_the_hot_threshold_notifies_sales_once(redis, smtp, receiver, demo):
    pipeline, clock, scheduler = demo
    await apply(pipeline, clock, "u-hot", "identify", "i1", traits={"name": "Hana", "role": "director"})  # 20
    await apply(pipeline, clock, "u-hot", "download", "d1")  # 35
    await drain(scheduler)
    assert webhooks(receiver, "sales") == []
    await apply(pipeline, clock, "u-hot", "form_submit", "f1", {"form": "contact"})  # 55
    await apply(pipeline, clock, "u-cold", "download", "d2")  # 15: a cold lead is left alone
    await drain(scheduler)
    [alert] = webhooks(receiver, "sales")
    assert (alert["channel"], alert["template"], alert["person"]) == ("sales", "hot_lead", "u-hot")
    assert alert["title"] == "Hot lead: u-hot (55 points)"  # 20 + 15 + 20, decayed a little, rounded
    assert alert["text"].startswith("Hana, director, reached 55")
    assert (await pipeline.store.fetch("u-hot")).t["hot_lead_since_alert"] is True
    assert smtp.messages == []


async def test_scenario_6_a_purchase_gets_the_accessory_email_two_days_later(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    crm = await customer(redis, pipeline, clock, "u-crm")
    analytics = await customer(redis, pipeline, clock, "u-ana")
    await apply(pipeline, clock, "u-crm", "purchase", "p1", {"category": "crm", "amount": 99})
    await apply(pipeline, clock, "u-ana", "purchase", "p2", {"category": "analytics", "amount": 79})
    # On site at once: the accessory for what was bought.
    assert await offer_for(pipeline, clock, "u-crm", "sidebar") == "crm_accessory"
    assert await offer_for(pipeline, clock, "u-ana", "sidebar") == "analytics_accessory"
    clock.now += 2 * DAY - 1
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += 1
    await drain(scheduler)
    got = {recipients[0]: message for recipients, message in smtp.messages}
    assert set(got) == {crm, analytics} and len(smtp.messages) == 2
    assert got[crm]["Subject"] == "Get more from your crm plan"
    assert "SYNC10" in text_of(got[crm])
    assert got[analytics]["Subject"] == "Get more from your analytics plan"
    assert "DASH10" in text_of(got[analytics])


async def offer_for(pipeline, clock, person: str, placement: str) -> str | None:
    decision = decide(pipeline.catalogs.current, await pipeline.store.fetch(person), person, [placement], {}, clock())
    answer = decision.placements[placement]
    return answer["offer"] if answer else None


async def test_scenario_6_the_accessory_stops_once_bought_and_comparing_pro_shows_enterprise(redis, smtp, demo):
    pipeline, clock, _ = demo
    await apply(pipeline, clock, "u-sync", "purchase", "p1", {"category": "crm", "product": "crm_pro"})
    assert await offer_for(pipeline, clock, "u-sync", "sidebar") == "crm_accessory"
    await apply(pipeline, clock, "u-sync", "purchase", "p2", {"category": "crm", "product": "email_sync"})
    assert await offer_for(pipeline, clock, "u-sync", "sidebar") != "crm_accessory"
    # The up-sell: CRM Pro's pages seen twice in a week put Enterprise in the hero.
    pro_page = {"category": "crm", "product": "crm_pro", "page_type": "product"}
    await apply(pipeline, clock, "u-up", "page_view", "v1", pro_page)
    assert await offer_for(pipeline, clock, "u-up", "home_hero") != "crm_enterprise_upsell"
    await apply(pipeline, clock, "u-up", "page_view", "v2", pro_page)
    assert await offer_for(pipeline, clock, "u-up", "home_hero") == "crm_enterprise_upsell"
    await apply(pipeline, clock, "u-up", "identify", "i1", traits={"tier": "enterprise"})
    assert await offer_for(pipeline, clock, "u-up", "home_hero") != "crm_enterprise_upsell"


async def test_scenario_8_the_content_email_picks_articles_from_what_was_read(redis, smtp, demo):
    """The digest has a section per topic read in the last 30 days (the
    catalog's read_* rules), not one for what was read before."""
    pipeline, clock, scheduler = demo
    address = await customer(redis, pipeline, clock, "u-reader")
    await apply(pipeline, clock, "u-reader", "article_view", "a0", {"topic": "marketing"})
    clock.now += 40 * DAY
    await drain(scheduler)
    smtp.messages.clear()  # the digest for the marketing article, 39 days ago
    await apply(pipeline, clock, "u-reader", "article_view", "a1", {"topic": "analytics"})
    await apply(pipeline, clock, "u-reader", "article_view", "a2", {"topic": "crm"})
    clock.now += DAY - 1
    await drain(scheduler)
    assert smtp.messages == []
    clock.now += 1
    await drain(scheduler)
    [(recipients, message)] = smtp.messages
    assert recipients == [address] and message["Subject"] == "More on what you read this month"
    text = text_of(message)
    assert "https://shop.example/blog/crm-pipeline-guide" in text
    assert "https://shop.example/blog/analytics-cohorts" in text
    assert "Marketing:" not in text


async def test_scenario_11_webinar_reminder_then_replay_when_not_attended(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    address = await customer(redis, pipeline, clock, "u-web")
    await apply(pipeline, clock, "u-web", "event_registration", "r1", {"webinar": "Growth playbook"})
    clock.now += DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Your webinar starts tomorrow")]
    assert "See you at Growth playbook." in text_of(smtp.messages[0][1])
    clock.now += 3 * DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Your webinar starts tomorrow"), (address, "The replay is ready")]
    assert "Watch the replay of Growth playbook." in text_of(smtp.messages[1][1])
    assert await active(pipeline, "u-web") == {}


async def test_scenario_11_attending_the_webinar_means_no_replay(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    address = await customer(redis, pipeline, clock, "u-att")
    await apply(pipeline, clock, "u-att", "event_registration", "r1", {"webinar": "Growth playbook"})
    clock.now += DAY
    await drain(scheduler)
    clock.now += DAY
    await apply(pipeline, clock, "u-att", "webinar_attended", "w1")
    clock.now += 3 * DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Your webinar starts tomorrow")]
    assert await active(pipeline, "u-att") == {}


async def test_scenario_11_the_trial_replaces_the_webinar_campaign(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    address = await customer(redis, pipeline, clock, "u-camp")
    await apply(pipeline, clock, "u-camp", "event_registration", "r1", {"webinar": "Growth playbook"})
    clock.now += HOUR
    await apply(pipeline, clock, "u-camp", "form_submit", "f1", {"form": "trial"})
    assert list(await active(pipeline, "u-camp")) == ["trial_onboarding"]
    await drain(scheduler)
    [tip] = await InboxStore(redis).messages("u-camp", clock())
    assert (tip["template"], tip["title"]) == ("trial_inbox", "Trial tip")
    assert tip["expires"] == clock() + 14 * DAY
    clock.now += 2 * DAY
    await drain(scheduler)
    assert emails(smtp) == [(address, "Three tips for your trial")]  # no webinar reminder
    assert await active(pipeline, "u-camp") == {}


async def test_scenario_11_the_webinar_cannot_start_during_the_trial_and_a_purchase_ends_it(redis, smtp, demo):
    pipeline, clock, scheduler = demo
    await customer(redis, pipeline, clock, "u-trial")
    await apply(pipeline, clock, "u-trial", "form_submit", "f1", {"form": "trial"})
    clock.now += HOUR
    await apply(pipeline, clock, "u-trial", "event_registration", "r1", {"webinar": "Growth playbook"})
    state = await pipeline.journeys.state("u-trial")
    assert list(state["a"]) == ["trial_onboarding"] and "webinar_follow_up" not in state["e"]
    clock.now += DAY
    result = await apply(pipeline, clock, "u-trial", "purchase", "p1", {"amount": 49})
    assert "ended: trial_onboarding: exit: purchase" in result.journey_actions[0].log
    clock.now += 5 * DAY
    await drain(scheduler)
    assert smtp.messages == []  # neither the trial tips nor a webinar reminder
    assert [m["title"] for m in await InboxStore(redis).messages("u-trial", clock())] == ["Trial tip"]


async def test_scenario_12_a_complaint_alerts_the_operator_and_marks_the_profile(redis, smtp, receiver, demo):
    pipeline, clock, scheduler = demo
    await apply(pipeline, clock, "u-angry", "support_ticket", "t0", {"kind": "question", "message": "How?"})
    await drain(scheduler)
    assert webhooks(receiver, "operator") == []
    await apply(pipeline, clock, "u-angry", "support_ticket", "t1",
                {"kind": "complaint", "message": "I was charged twice"})
    await drain(scheduler)
    [alert] = webhooks(receiver, "operator")
    assert (alert["channel"], alert["template"], alert["person"]) == ("operator", "complaint_alert", "u-angry")
    assert (alert["title"], alert["text"]) == ("Complaint from u-angry", "I was charged twice")
    assert (await pipeline.store.fetch("u-angry")).t["complaint"] is True
    assert smtp.messages == []


# -- consent and SMS ----------------------------------------------------------------


GATED = GRAMMAR + """
  - id: opted_in_only
    trigger: {event: survey_wanted, when: {consent: email}}
    reentry: always
    steps:
      - send: {channel: email, template: survey}
"""


async def test_a_trigger_gated_on_consent_enters_only_those_who_opted_in(request, redis, smtp, receiver):
    async with _running(request, redis, receiver, compile_catalog(parse_catalog_text(GATED))) as (
            pipeline, clock, scheduler):
        assert pipeline.catalogs.current.journeys.consent_gates
        address = await customer(redis, pipeline, clock, "u-yes")
        await apply(pipeline, clock, "u-no", "identify", "u-no-id", traits={"email": "no@example.com"})
        for person in ("u-yes", "u-no"):
            await apply(pipeline, clock, person, "survey_wanted", f"{person}-s1")
        await drain(scheduler)
        assert emails(smtp) == [(address, "How was it?")]
        assert "opted_in_only" not in (await pipeline.journeys.state("u-no"))["e"]


TEXTED = GRAMMAR + """
  - id: texted
    trigger: {event: text_me}
    steps:
      - send: {channel: sms, template: ping}
"""


async def test_an_sms_goes_to_the_phone_trait_and_a_suppressed_number_gets_none(request, redis, smtp, receiver):
    async with _running(request, redis, receiver, compile_catalog(parse_catalog_text(TEXTED))) as (
            pipeline, clock, scheduler):
        contacts = ContactStore(redis)
        for person, phone in (("u-sms", "+39 333 1234567"), ("u-blocked", "+39 333 7654321"), ("u-nophone", None)):
            await contacts.set_consent(person, "sms", "*", True)
            traits = {"phone": phone} if phone else {"name": "No Phone"}
            await apply(pipeline, clock, person, "identify", f"{person}-id", traits=traits)
        await contacts.suppress_address("sms", suppression_address("sms", "+393337654321"))
        for person in ("u-sms", "u-blocked", "u-nophone"):
            await apply(pipeline, clock, person, "text_me", f"{person}-t")
        await drain(scheduler)
        [sms] = webhooks(receiver, "sms")
        assert (sms["person"], sms["to"]) == ("u-sms", "+39 333 1234567")
        [blocked] = await contacts.outcomes("u-blocked")
        [nophone] = await contacts.outcomes("u-nophone")
        assert (blocked["status"], blocked["reason"]) == ("dropped", "suppressed")
        assert (nophone["status"], nophone["reason"]) == ("dropped", "no phone trait")


def test_a_consent_condition_outside_journeys_is_refused():
    """Deciding an offer does not read the contact state: a consent condition
    there would always be false, so the catalog is refused."""
    bad = GRAMMAR.replace("    placements: [home]\n", "    placements: [home]\n    when: {consent: email}\n", 1)
    with pytest.raises(CatalogError) as caught:
        compile_catalog(parse_catalog_text(bad))
    assert [(path, reason) for path, reason in caught.value.problems if "consent" in path] == [
        ("offers[0].when.consent",
         "consent conditions work in journeys only (deciding an offer does not read the contact state)")]
