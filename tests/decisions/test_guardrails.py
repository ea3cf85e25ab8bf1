"""Discount guardrails and on-site pressure in decide: a budget spent, an empty
code pool, discounts per person, promotional impressions per day; each with its
reason in explain. The counters are fed by real impressions through the real
pipeline and Redis."""

import pytest

from engine.catalog.compile import compile_catalog
from engine.catalog.windows import DAY_MS, HOUR_MS
from engine.decisions.budgets import Budgets
from engine.decisions.decide import decide
from engine.errors import CatalogError
from engine.events import Event
from engine.profile import Profile
from tests.conftest import make_pipeline

NOW = 1_764_000_000_000


def offer(oid, kind="discount", placements=("hero",), **fields):
    content = fields.pop("content", {"title": oid, **({"code": oid.upper()} if kind == "discount" else {})})
    return {"id": oid, "kind": kind, "placements": list(placements), "content": content, **fields}


def reasons(catalog, profile=None, budgets=None, now=NOW, placement="hero"):
    decision = decide(catalog, profile or Profile(), "u:ada", [placement], {}, now, explain=True, budgets=budgets)
    rows = decision.explain[placement]["offers"]
    return {row["offer"]: row.get("reason", "chosen" if row.get("chosen") else "eligible") for row in rows}


def chosen(catalog, profile=None, budgets=None, now=NOW, placements=("hero",)):
    decision = decide(catalog, profile or Profile(), "u:ada", list(placements), {}, now, budgets=budgets)
    return {name: (answer or {}).get("offer") for name, answer in decision.placements.items()}


# -- budgets and code pools: read from the process's snapshot -----------------------


def test_a_discount_whose_spend_reached_its_budget_is_ineligible_with_the_reason():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("ten_off", priority=5, budget={"amount": 500, "per": "day"}),
        offer("free_shipping", priority=1, budget={"amount": 100}),
        offer("newsletter", kind="content"),
    ]})
    assert catalog.offers_by_id["free_shipping"].budget.per == "campaign"  # the default
    assert chosen(catalog, budgets=Budgets({"ten_off": 499.99})) == {"hero": "ten_off"}
    assert chosen(catalog, budgets=Budgets({"ten_off": 500.0})) == {"hero": "free_shipping"}
    assert reasons(catalog, budgets=Budgets({"ten_off": 612.5, "free_shipping": 100})) == {
        "ten_off": "budget spent", "free_shipping": "budget spent", "newsletter": "chosen"}
    # Without a snapshot (a test, a tool) there are no budgets.
    assert chosen(catalog) == {"hero": "ten_off"}


def test_an_offer_whose_code_pool_is_empty_is_ineligible_and_its_content_never_names_the_pool():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("spring", priority=5, content={"title": "Spring", "code_pool": "spring-25"}),
        offer("fallback", kind="content"),
    ]})
    spring = catalog.offers_by_id["spring"]
    assert spring.code_pool == "spring-25" and catalog.code_pools == {"spring-25": "spring"}
    assert spring.answer()["content"] == {"title": "Spring"}  # the person's own code is added by the API
    assert chosen(catalog, budgets=Budgets()) == {"hero": "spring"}
    assert reasons(catalog, budgets=Budgets(empty_pools=frozenset({"spring-25"}))) == {
        "spring": "code pool empty", "fallback": "chosen"}


# -- discounts per person and on-site pressure: hidden impression counters ----------


def impression(eid: str, offer_id: str, ts: int, person="u:ada") -> Event:
    return Event(eid, "impression", person, ts, {"offer": offer_id}, trusted=True)


GUARDED = """
placements: [hero, side]
discounts: {per_person: 2, within: 30d}
contact_policy:
  caps:
    email: {day: 1}
    onsite: {day: 3}
offers:
  - {id: ten_off, kind: discount, placements: [hero], priority: 5, value: 10, content: {code: TEN}}
  - {id: free_ship, kind: discount, placements: [hero], priority: 4, content: {code: SHIP}}
  - {id: spring_banner, kind: banner, placements: [side], priority: 5, content: {title: Spring}}
  - {id: quiet_banner, kind: banner, placements: [side], priority: 3, promotional: false, content: {title: Hi}}
  - {id: guide, kind: content, placements: [hero, side], content: {title: Guide}}
"""


async def test_two_discounts_shown_within_30_days_stop_the_third(redis):
    pipeline = make_pipeline(redis, GUARDED)
    catalog = pipeline.catalogs.current
    await pipeline.apply([impression("i1", "ten_off", NOW - 20 * DAY_MS),
                          impression("i2", "guide", NOW - DAY_MS)], NOW)
    profile = await pipeline.store.fetch("u:ada")
    assert chosen(catalog, profile) == {"hero": "ten_off"}  # one discount so far: content does not count
    await pipeline.apply([impression("i3", "free_ship", NOW - HOUR_MS)], NOW)
    profile = await pipeline.store.fetch("u:ada")
    assert reasons(catalog, profile) == {"ten_off": "discount limit reached", "free_ship": "discount limit reached",
                                         "guide": "chosen"}
    # Eleven days on, the first impression is out of the 30-day window.
    assert chosen(catalog, profile, now=NOW + 11 * DAY_MS) == {"hero": "ten_off"}


async def test_promotional_impressions_past_the_onsite_day_cap_stop_promotional_offers_only(redis):
    pipeline = make_pipeline(redis, GUARDED)
    catalog = pipeline.catalogs.current
    assert catalog.contact_policy["channel_caps"]["email"].per_day == 1  # the scheduler's caps are untouched
    # Three promotional impressions across offers and placements today.
    await pipeline.apply([impression("i1", "spring_banner", NOW - 3 * HOUR_MS),
                          impression("i2", "ten_off", NOW - 2 * HOUR_MS),
                          impression("i3", "quiet_banner", NOW - 2 * HOUR_MS),  # not promotional
                          impression("i4", "spring_banner", NOW - HOUR_MS)], NOW)
    profile = await pipeline.store.fetch("u:ada")
    assert reasons(catalog, profile, placement="side") == {
        "spring_banner": "on-site pressure cap reached", "quiet_banner": "chosen", "guide": "eligible"}
    assert reasons(catalog, profile)["ten_off"] == "on-site pressure cap reached"
    # A rolling day: 22 hours later the first has left the window.
    assert chosen(catalog, profile, now=NOW + 22 * HOUR_MS, placements=("side",)) == {"side": "spring_banner"}


def test_the_hidden_counters_keep_their_counts_when_offers_join_the_catalog():
    spec = {"placements": ["hero"], "discounts": {"per_person": 1}, "offers": [offer("a")]}
    before = compile_catalog(spec).discount_limit.feature
    spec["offers"].append(offer("b"))
    after = compile_catalog(spec).discount_limit.feature
    assert before.fid == after.fid
    assert before.matches({"offer": "b"}) is False and after.matches({"offer": "b"}) is True
    assert after.matches({"offer": ["a"]}) is False  # a list never counts (nor raises)


def test_discounts_are_promotional_by_default_and_content_is_not():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("d"), offer("b", kind="banner"), offer("c", kind="content"),
        offer("c2", kind="content", promotional=True)]})
    assert {o.id: o.promotional for o in catalog.offers} == {"d": True, "b": True, "c": False, "c2": True}


def test_every_guardrail_problem_is_named_with_its_path():
    with pytest.raises(CatalogError) as caught:
        compile_catalog({
            "placements": ["hero"],
            "discounts": {"per_person": -1},
            "contact_policy": {"caps": {"onsite": {"month": 3, "day": "five"}}},
            "offers": [
                offer("a", budget={"amount": 500, "per": "week"}),
                offer("b", kind="banner", budget={"amount": 5}),
                offer("c", content={"code_pool": "has space"}),
                offer("d", content={"code": "X", "code_pool": "p"}),
                offer("e", content={"code_pool": "p"}),
                offer("f", content={"code_pool": "p"}),
                offer("g", kind="content", promotional="yes"),
            ],
        })
    problems = dict(caught.value.problems)
    assert problems == {
        "discounts.per_person": "a whole number of discounts shown, 0 or more",
        "contact_policy.caps.onsite.month": "unknown field; expected day, week",
        "contact_policy.caps.onsite.day": "a whole number of promotional impressions, 0 or more",
        "offers[0].budget.per": "day (each UTC day) or campaign (the offer's whole life)",
        "offers[1].budget": "only a discount has a budget: its cost is counted from redemptions",
        "offers[2].content.code_pool": "a pool name: 1 to 64 letters, digits or _ . -",
        "offers[3].content.code_pool": "a static code or a code pool, not both",
        "offers[5].content.code_pool": "pool 'p' already belongs to offer 'e'",
        "offers[6].promotional": "true or false",
    }
