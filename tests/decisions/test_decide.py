"""Deciding: eligibility, arbitration order, caps, exclusions, groups, dates,
hold-out, and that the offer index never changes an answer."""

import random

import pytest

from engine.catalog.compile import compile_catalog
from engine.catalog.windows import DAY_MS
from engine.decisions.decide import decide, in_holdout
from engine.profile import Profile

NOW = 1_764_000_000_000


def offer(oid, placements=("hero",), **fields):
    return {"id": oid, "kind": "content", "placements": list(placements), "content": {"title": oid}, **fields}


def pick(catalog, profile=None, placements=("hero",), context=None, person="p1", now=NOW):
    decision = decide(catalog, profile or Profile(), person, list(placements), context or {}, now)
    return {name: (chosen or {}).get("offer") for name, chosen in decision.placements.items()}


def test_higher_priority_wins_then_declared_score_then_id():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("low", priority=1, score=9),
        offer("high_b", priority=5, score=1),
        offer("high_a", priority=5, score=1),
        offer("high_scored", priority=5, score=2),
    ]})
    assert pick(catalog) == {"hero": "high_scored"}
    assert [o.id for o in catalog.offers] == ["high_scored", "high_a", "high_b", "low"]


def test_null_when_nothing_is_eligible_and_for_unknown_placements():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("vip_only", when={"trait": "vip", "equals": True}),
    ]})
    assert pick(catalog, placements=("hero", "nowhere")) == {"hero": None, "nowhere": None}
    assert pick(catalog, Profile(t={"vip": True})) == {"hero": "vip_only"}


def test_no_offer_twice_in_one_answer_and_one_per_group():
    catalog = compile_catalog({"placements": ["hero", "side", "cart"], "offers": [
        offer("everywhere", ("hero", "side"), priority=9),
        offer("side_default", ("side",), priority=1),
        offer("ten_off", ("hero", "cart"), priority=5, group="discounts"),
        offer("twenty_off", ("cart",), priority=4, group="discounts"),
        offer("cart_default", ("cart",), priority=0),
    ]})
    assert pick(catalog, placements=("hero", "side", "cart")) == {
        "hero": "everywhere", "side": "side_default", "cart": "ten_off",
    }
    assert pick(catalog, placements=("cart", "hero")) == {"cart": "ten_off", "hero": "everywhere"}
    assert pick(catalog, placements=("hero", "cart")) == {"hero": "everywhere", "cart": "ten_off"}


def test_exclusions_by_trait():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("upsell", priority=5, exclude={"trait": "complaint", "exists": True}),
        offer("default"),
    ]})
    assert pick(catalog, Profile(t={"complaint": "billing"})) == {"hero": "default"}
    assert pick(catalog, Profile()) == {"hero": "upsell"}


def test_start_and_end_dates_are_whole_days_inclusive():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("sale", priority=5, start="2025-11-24", end="2025-11-30"),
        offer("default"),
    ]})
    day = 1_763_942_400_000  # 2025-11-24T00:00:00Z
    assert pick(catalog, now=day - 1) == {"hero": "default"}
    assert pick(catalog, now=day) == {"hero": "sale"}
    assert pick(catalog, now=day + 7 * DAY_MS - 1) == {"hero": "sale"}
    assert pick(catalog, now=day + 7 * DAY_MS) == {"hero": "default"}


def test_impression_cap_reads_the_impression_window():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("capped", priority=5, cap={"impressions": 2, "within": "7d"}),
        offer("default"),
    ]})
    capped = catalog.offers_by_id["capped"]
    fid = capped.cap_feature.fid
    today = NOW // DAY_MS
    assert pick(catalog, Profile(w={fid: [today, 1]})) == {"hero": "capped"}
    assert pick(catalog, Profile(w={fid: [today, 1, 0, 1]})) == {"hero": "default"}
    assert pick(catalog, Profile(w={fid: [today - 7, 5]})) == {"hero": "capped"}  # outside 7d


def test_holdout_is_deterministic_and_near_its_share():
    catalog = compile_catalog({"placements": ["hero"], "offers": [offer("promo", holdout=20)]})
    promo = catalog.offers_by_id["promo"]
    people = [f"p{i}" for i in range(5000)]
    held = [p for p in people if in_holdout(promo, p)]
    assert 0.17 < len(held) / len(people) < 0.23
    assert all(pick(catalog, person=p) == {"hero": None} for p in held[:50])
    assert held == [p for p in people if in_holdout(promo, p)]


def test_explain_gives_every_offer_its_reason():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        offer("ended", priority=9, end="2020-01-01"),
        offer("vip", priority=8, when={"trait": "vip", "equals": True}),
        offer("excluded", priority=7, exclude={"trait": "country", "equals": "IT"}),
        offer("winner", priority=1),
        offer("runner_up", priority=0),
    ]})
    decision = decide(catalog, Profile(t={"country": "IT"}), "p", ["hero"], {}, NOW, explain=True)
    reasons = {row["offer"]: row.get("reason", "chosen" if row.get("chosen") else "eligible")
               for row in decision.explain["hero"]["offers"]}
    assert reasons == {"ended": "ended", "vip": "conditions not met", "excluded": "excluded",
                       "winner": "chosen", "runner_up": "eligible"}
    assert decision.placements["hero"]["offer"] == "winner"


def test_the_index_only_narrows_and_never_changes_an_answer():
    """Random catalogs and people: the indexed walk equals evaluating every offer."""
    rng = random.Random(7)
    countries = ["IT", "FR", "DE", "ES"]
    offers = []
    for i in range(300):
        kind = rng.choice(["eq", "in", "ctx", "any", "all", "not", "open"])
        when = {
            "eq": {"trait": "country", "equals": rng.choice(countries)},
            "in": {"trait": "tier", "in": rng.sample(["gold", "silver", "bronze"], 2)},
            "ctx": {"context": "category", "equals": rng.choice(["crm", "erp"])},
            "any": {"any": [{"trait": "country", "equals": "IT"}, {"context": "device", "equals": "mobile"}]},
            "all": {"all": [{"trait": "age", "at_least": rng.randint(18, 60)},
                            {"trait": "interests", "contains": rng.choice(["golf", "ski"])}]},
            "not": {"not": {"trait": "country", "equals": rng.choice(countries)}},
            "open": None,
        }[kind]
        fields = {"priority": rng.randint(0, 20)}
        if when:
            fields["when"] = when
        offers.append(offer(f"o{i}", rng.sample(["a", "b", "c"], rng.randint(1, 2)), **fields))
    catalog = compile_catalog({"placements": ["a", "b", "c"], "offers": offers})
    for n in range(300):
        profile = Profile(t={
            "country": rng.choice(countries), "tier": rng.choice(["gold", "silver", "bronze", "none"]),
            "age": rng.randint(10, 70), "interests": rng.sample(["golf", "ski", "chess"], 2),
        })
        context = {"category": rng.choice(["crm", "erp", "hr"]), "device": rng.choice(["mobile", "desktop"])}
        fast = decide(catalog, profile, f"p{n}", ["a", "b", "c"], context, NOW)
        full = decide(catalog, profile, f"p{n}", ["a", "b", "c"], context, NOW, explain=True)
        assert fast.placements == full.placements


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("kind", "popup", "one of content, banner, discount"),
    ("placements", ["nowhere"], "no placement named"),
    ("cap", {"impressions": 0}, "cap takes"),
    ("holdout", 140, "percentage"),
    ("start", "someday", "date"),
    ("colour", "red", "unknown offer field"),
])
def test_bad_offers_are_refused_with_path_and_reason(field, value, fragment):
    from engine.errors import CatalogError

    with pytest.raises(CatalogError) as caught:
        compile_catalog({"placements": ["hero"], "offers": [offer("x", **{field: value})]})
    assert any(fragment in reason and path.startswith("offers[0]") for path, reason in caught.value.problems), caught.value.problems
