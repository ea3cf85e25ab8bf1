"""Learning and experiments in the pure decide: the catalog's learning and
experiments blocks compile (or say what is wrong, where); buckets stay bounded
whatever a browser sends; Thompson draws follow the posterior; the chosen
offer's probability is what the draws and exploration give it; hold-out
offers are recorded as would-have-shown; an arm narrows the offers."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.decisions.decide import decide
from engine.decisions.learning import Model
from engine.errors import CatalogError
from engine.profile import Profile

NOW = 1_780_000_000_000
CATALOG = """
segments: [{id: buyers, when: {trait: bought, equals: true}}]
placements: {hero: {arbitration: expected_value}, side: {}}
learning:
  reward: click
  exploration: 0.1
  prior_weight: 10
  buckets: [{context: device, values: [mobile, desktop]}, {segment: buyers}]
offers:
  - {id: good, kind: content, placements: [hero], worth: 1, propensity: 0.05}
  - {id: poor, kind: content, placements: [hero], worth: 1, propensity: 0.05}
  - {id: held, kind: banner, placements: [side], priority: 9, holdout: 50}
  - {id: plain, kind: content, placements: [side], priority: 1}
"""


def catalog(text: str = CATALOG):
    return compile_catalog(parse_catalog_text(text))


def test_buckets_are_named_by_the_features_and_unknown_values_are_other():
    shop = catalog()
    bucket = decide(shop, Profile(t={"bought": True}), "a:x", ["hero"], {"device": "mobile"}, NOW).bucket
    assert bucket == "mobile|1"
    odd = decide(shop, Profile(), "a:x", ["hero"], {"device": "toaster-9000"}, NOW).bucket
    assert odd == "other|0"


def test_every_decision_names_the_bucket_even_where_no_placement_learns():
    # A priority placement's impressions of a learnable offer teach the bucket
    # the person was in, not a bucket of their own.
    decision = decide(catalog(), Profile(t={"bought": True}), "a:x", ["side"], {"device": "desktop"}, NOW)
    assert decision.bucket == "desktop|1"


def test_pooled_codes_are_for_signed_in_people_only():
    pooled = CATALOG.replace("- {id: plain, kind: content, placements: [side], priority: 1}",
                             "- {id: plain, kind: discount, placements: [side], priority: 1, value: 10, "
                             "content: {code_pool: spring}}")
    shop = catalog(pooled.replace("holdout: 50", "holdout: 0"))

    def reasons(person):
        explained = decide(shop, Profile(), person, ["side"], {}, NOW, explain=True).explain["side"]["offers"]
        return {row["offer"]: (row["eligible"], row.get("reason")) for row in explained}

    assert reasons("u:ada")["plain"] == (True, None)
    assert reasons("a:anyone")["plain"] == (False, "single-use codes go to signed-in people")


def test_learning_and_experiment_mistakes_are_reported_at_their_paths():
    bad = CATALOG.replace("reward: click", "reward: likes").replace("{segment: buyers}", "{segment: nobody}")
    bad += """
experiments:
  - {id: t, placement: nowhere, arms: [{id: a}, {id: b}]}
  - {id: u, placement: hero, arms: [{id: a, weight: -1}, {id: b, offers: [missing]}]}
  - {id: v, arms: [{id: a, journeys: [nope]}, {id: b}]}
"""
    with pytest.raises(CatalogError) as caught:
        catalog(bad)
    paths = {path for path, _ in caught.value.problems}
    assert {"learning.reward", "learning.buckets[1].segment", "experiments[0].placement",
            "experiments[1].arms[0].weight", "experiments[1].arms[1].offers",
            "experiments[2].arms[0].journeys"} <= paths


def test_too_many_buckets_are_refused():
    many = CATALOG.replace("{segment: buyers}", "{segment: buyers}, {trait: a, values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}")
    with pytest.raises(CatalogError, match="at most 64"):
        catalog(many)


def test_thompson_draws_favour_the_better_posterior_and_the_probability_says_how_often():
    shop = catalog()
    model = Model.build(shop, {"good": {"mobile|0": (1000.0, 100.0)}, "poor": {"mobile|0": (1000.0, 20.0)}}, NOW,
                        rng=np.random.default_rng(1))
    rng = random.Random(4)
    chosen = Counter()
    probabilities = {}
    for _ in range(2000):
        decision = decide(shop, Profile(), "a:x", ["hero"], {"device": "mobile"}, NOW, model=model, rng=rng)
        offer = decision.placements["hero"]["offer"]
        chosen[offer] += 1
        probabilities[offer] = decision.logged[0][3]
        placement, candidates, logged_offer, _ = decision.logged[0]
        assert placement == "hero" and set(candidates) == {"good", "poor"} and logged_offer == offer
    # The posterior means are 0.1 and 0.02: the draws always favour good; only exploration shows poor.
    assert probabilities["good"] == pytest.approx(0.95)
    assert probabilities["poor"] == pytest.approx(0.05)
    assert 0.93 <= chosen["good"] / 2000 <= 0.97


def test_without_evidence_in_a_bucket_the_prior_is_sampled():
    shop = catalog()
    model = Model.build(shop, {}, NOW)
    seen = Counter(decide(shop, Profile(), "a:x", ["hero"], {"device": "desktop"}, NOW, model=model,
                          rng=random.Random(i)).placements["hero"]["offer"] for i in range(200))
    assert seen["good"] > 40 and seen["poor"] > 40  # equal priors: both are tried


def test_a_held_out_person_is_recorded_as_would_have_seen_the_offer():
    shop = catalog()
    exposures = Counter()
    for i in range(400):
        decision = decide(shop, Profile(), f"a:{i}", ["side"], {}, NOW)
        for field, group in decision.exposures:
            exposures[(field, group)] += 1
        shown = decision.placements["side"]["offer"]
        assert (("h:held", "t") in decision.exposures) == (shown == "held")
        assert (("h:held", "c") in decision.exposures) == (shown == "plain")
    assert 150 <= exposures[("h:held", "c")] <= 250


def test_an_arm_narrows_the_offers_and_sets_the_arbitration():
    text = CATALOG + """
experiments:
  - id: side_test
    placement: side
    arms: [{id: control, weight: 1}, {id: plain_only, weight: 1, offers: [plain]}]
"""
    shop = catalog(text)
    arms = Counter()
    for i in range(300):
        person = f"a:{i}"
        decision = decide(shop, Profile(), person, ["side"], {}, NOW)
        arm = dict(decision.exposures)["e:side_test"]
        arms[arm] += 1
        if arm == "plain_only":
            assert decision.placements["side"]["offer"] == "plain"
            assert ("h:held", "c") not in decision.exposures  # never a candidate in this arm
        again = decide(shop, Profile(), person, ["side"], {}, NOW)
        assert dict(again.exposures)["e:side_test"] == arm
    assert 120 <= arms["plain_only"] <= 180


DISCOUNTS = """
placements: {checkout: {arbitration: expected_value}}
learning: {reward: conversion, exploration: 0.0, buckets: [{context: device, values: [mobile]}]}
offers:
  - {id: buy_anyway, kind: discount, placements: [checkout], worth: 10, propensity: 0.1, holdout: 10, value: 10}
  - {id: persuades, kind: discount, placements: [checkout], worth: 10, propensity: 0.05, holdout: 10, value: 10}
"""


def test_discounts_go_to_people_they_change_not_to_those_who_buy_anyway():
    shop = catalog(DISCOUNTS)
    counts = {"buy_anyway": {"mobile": (9000.0, 900.0)}, "persuades": {"mobile": (9000.0, 720.0)}}
    holdouts = {  # conversions per decide-time exposure, treated (t) and held out (c)
        "buy_anyway": {"t|exposed|mobile": 9000, "t|converted|mobile": 900,
                       "c|exposed|mobile": 1000, "c|converted|mobile": 95},
        "persuades": {"t|exposed|mobile": 9000, "t|converted|mobile": 720,
                      "c|exposed|mobile": 1000, "c|converted|mobile": 20},
    }
    plain = Model.build(shop, counts, NOW)
    incremental = Model.build(shop, counts, NOW, holdouts=holdouts)

    def shown(model, seed):
        return decide(shop, Profile(t={}), f"a:{seed}", ["checkout"], {"device": "mobile"}, NOW, model=model,
                      rng=random.Random(seed)).placements["checkout"]

    by_rate = Counter((shown(plain, s) or {}).get("offer") for s in range(300))
    by_increment = Counter((shown(incremental, s) or {}).get("offer") for s in range(300))
    assert by_rate.most_common(1)[0][0] == "buy_anyway"  # the higher conversion rate
    assert by_increment.most_common(1)[0][0] == "persuades"  # adds 6 points, not 0.5
    explained = decide(shop, Profile(), "a:1", ["checkout"], {"device": "mobile"}, NOW, explain=True,
                       model=incremental)
    rows = {row["offer"]: row for row in explained.explain["checkout"]["offers"]}
    assert rows["persuades"]["incremental_propensity"] == pytest.approx(0.06, abs=0.01)
