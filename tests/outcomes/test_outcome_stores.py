"""What decisions earned, in Redis, on a single server and on a Cluster (where
a key crossing slots fails): the pipeline teaches the model from verified
impressions, clicks and purchases once each; exposures are counted once per
person and credited once; the decision log is written off the request path,
read back and evaluated."""

from __future__ import annotations

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.decisions.decide import decide
from engine.decisions.ids import DecisionSigner, new_nonce
from engine.events import Event
from engine.outcomes import log as log_module
from engine.outcomes.evaluate import evaluate, logged_decisions
from engine.outcomes.exposures import Credit, ExposureStore
from engine.outcomes.learning import LearningStore, Lesson, ModelHolder
from engine.outcomes.log import DecisionLog
from engine.profile import Profile
from engine.store.keys import Keys
from tests.conftest import make_pipeline

NOW = 1_780_000_000_000
CATALOG = """
placements: {hero: {arbitration: expected_value}}
learning: {reward: conversion, buckets: [{context: device, values: [mobile]}, {trait: plan, values: [pro]}]}
offers:
  - {id: one, kind: content, placements: [hero], worth: 2, propensity: 0.2, holdout: 50}
  - {id: two, kind: content, placements: [hero], worth: 1, propensity: 0.1}
"""
SECRET = "outcome-secret"


def event(event_id: str, person: str, kind: str, ts: int, trusted: bool = False, **properties) -> Event:
    return Event(id=event_id, type=kind, person=person, ts=ts, properties=properties, trusted=trusted)


async def test_the_pipeline_teaches_each_verified_outcome_once_and_logs_its_reward(redis):
    pipeline = make_pipeline(redis, CATALOG)
    pipeline.decisions = DecisionSigner.from_secret(SECRET)
    catalog = pipeline.catalogs.current
    log = pipeline.decision_log
    person = "u:buyer"
    decision = None
    for seed in range(50):  # someone treated (not held out of `one`, or shown `two`)
        decision = decide(catalog, Profile(), f"u:buyer{seed}", ["hero"], {"device": "mobile"}, NOW)
        if decision.placements["hero"] is not None:
            person = f"u:buyer{seed}"
            break
    offer = decision.placements["hero"]["offer"]
    nonce = new_nonce()
    decision_id = pipeline.decisions.issue(person, [offer], NOW // 1000, decision.bucket, nonce)
    log.record(person, nonce, NOW, decision)
    assert await log.flush(NOW) == 1
    events = [
        event("i1", person, "impression", NOW + 1, offer=offer, decision_id=decision_id),
        event("p1", person, "purchase", NOW + 2, trusted=True, revenue=30),
    ]
    for _ in range(2):  # redelivered: nothing twice
        await pipeline.apply(events, NOW + 10)
    counts = await pipeline.learning.counts([offer], NOW + 10, catalog.learning.half_life_ms)
    shown, rewards = counts[offer]["mobile|other"]  # a bucket of two features: the purchase finds it
    assert round(shown, 3) == 1 and round(rewards, 3) == 1

    rows = await logged_decisions(redis, Keys())
    assert [(r.placement, r.chosen, r.reward) for r in rows] == [("hero", offer, 1.0)]
    result = await evaluate(redis, Keys(), catalog, pipeline.learning, NOW + 10, reward_window_ms=0)
    assert result["logged"] == {"decisions": 1, "reward_rate": 1.0,
                                "left_out": {"joint_placements": 0, "reward_pending": 0}}
    # By default a decision younger than the reward window waits for its reward.
    waiting = await evaluate(redis, Keys(), catalog, pipeline.learning, NOW + 10)
    assert waiting["logged"]["left_out"]["reward_pending"] == 1 and waiting["logged"]["decisions"] == 0


async def test_exposures_count_each_person_once_and_credit_once(redis):
    keys = Keys()
    store = ExposureStore(redis, keys)
    await store.expose({"u:a": (NOW, "*", [("h:one", "t")]), "u:b": (NOW, "*", [("h:one", "c")]),
                        "u:c": (NOW, "*", [("h:one", "t")])})
    await store.expose({"u:a": (NOW + 5, "*", [("h:one", "t")])})  # seen again: one person, once
    purchase = Credit("u:a", NOW + 100, ("c", "r:buy-1"), revenue=10.0)
    await store.credit([purchase, purchase, Credit("u:b", NOW + 100, ("c", "r:buy-2"), revenue=5.0)])
    uplift = (await store.uplifts(["one"]))["one"]
    assert (uplift["treated"], uplift["control"]) == (2, 1)
    assert (uplift["converted_treated"], uplift["converted_control"]) == (1, 1)
    assert uplift["uplift"] == -0.5


async def test_a_purchase_applied_before_its_exposure_is_written_still_counts(redis):
    store = ExposureStore(redis, Keys())
    # The purchase is applied first (the decision log flushes its exposure a moment later).
    await store.credit([Credit("u:quick", NOW + 50, ("c", "r:buy-q"), revenue=20.0)])
    await store.expose({"u:quick": (NOW, "mobile|pro", [("h:one", "t"), ("e:test", "arm_b")])})
    await store.expose({"u:quick": (NOW + 10, "mobile|pro", [("h:one", "t")])})  # nothing twice
    uplift = (await store.uplifts(["one"]))["one"]
    assert (uplift["treated"], uplift["converted_treated"]) == (1, 1)
    counters = await redis.hgetall(Keys().kpi("h", "one", "itt"))
    assert int(counters[b"t|converted|mobile|pro"]) == 1
    arms = await redis.hgetall(Keys().kpi("e", "test", "arms"))
    assert float(arms[b"arm_b|revenue"]) == 20.0 and int(arms[b"arm_b|converted"]) == 1
    # A purchase long before the decide is not what the offer earned.
    await store.credit([Credit("u:late", NOW - 600_000, ("c", "r:buy-old"), revenue=5.0)])
    await store.expose({"u:late": (NOW, "*", [("h:one", "c")])})
    assert (await store.uplifts(["one"]))["one"]["converted_control"] == 0


async def test_the_model_snapshot_reads_every_offer_across_slots(redis):
    pipeline = make_pipeline(redis, CATALOG)
    learning = LearningStore(redis, Keys())
    holder = ModelHolder(learning, pipeline.catalogs)
    model = await holder.refresh()
    assert model is not None and model.digest == pipeline.catalogs.current.digest
    assert holder.for_catalog(pipeline.catalogs.current) is model
    other = compile_catalog(parse_catalog_text(CATALOG.replace("worth: 1", "worth: 3")))
    assert holder.for_catalog(other) is None  # a snapshot of another catalog is never used


async def test_a_full_buffer_drops_the_oldest_and_counts_them(redis):
    catalog = compile_catalog(parse_catalog_text(CATALOG))
    decision = decide(catalog, Profile(), "u:z", ["hero"], {}, NOW)
    original, log_module.BUFFER_MAX = log_module.BUFFER_MAX, 3
    try:
        small = DecisionLog(redis, Keys(), ExposureStore(redis, Keys()))
        for n in range(5):
            small.record("u:z", f"nonce-{n}", NOW + n, decision)
    finally:
        log_module.BUFFER_MAX = original
    assert small.dropped == 2 and await small.flush(NOW) == 3
    rows = await logged_decisions(redis, Keys())
    assert sorted(row.at_ms for row in rows) == [NOW + 2, NOW + 3, NOW + 4]  # the newest three


async def test_a_conversion_teaches_the_offers_of_the_latest_decision_only(redis):
    catalog = compile_catalog(parse_catalog_text(CATALOG))
    learning = LearningStore(redis, Keys())
    offers = {"one", "two"}
    seen_first = [Lesson("u:l", "i", "n1:one", "one", "mobile|other", "n1")]
    seen_last = [Lesson("u:l", "i", "n2:two", "two", "other|other", "n2")]
    await learning.teach(catalog.learning, seen_first, offers, NOW)
    await learning.teach(catalog.learning, seen_last, offers, NOW + 1000)
    rewards = await learning.teach(catalog.learning, [Lesson("u:l", "p", "buy-1")], offers, NOW + 2000)
    assert [(r.offer, r.bucket, r.nonce) for r in rewards] == [("two", "other|other", "n2")]
    counts = await learning.counts(["one", "two"], NOW + 2000, catalog.learning.half_life_ms)
    assert counts["one"]["mobile|other"][1] == 0 and round(counts["two"]["other|other"][1], 3) == 1


JOURNEY_EXPERIMENT = """
templates:
  hello: {subject: "Hello", text: "Hello"}
journeys:
  - id: welcome
    trigger: {event: signup}
    steps:
      - send: {channel: inbox, template: hello}
experiments:
  - id: welcome_test
    metric: conversion
    arms:
      - {id: without, weight: 50, journeys: []}
      - {id: with_welcome, weight: 50, journeys: [welcome]}
"""


async def test_a_journey_experiment_enters_only_the_arm_that_lists_it_and_reports_both(redis):
    pipeline = make_pipeline(redis, JOURNEY_EXPERIMENT)
    catalog = pipeline.catalogs.current
    people = [f"u:j{i}" for i in range(60)]
    await pipeline.apply([event(f"s-{p}", p, "signup", NOW) for p in people], NOW)
    await pipeline.apply([event(f"b-{p}", p, "purchase", NOW + 10, trusted=True, revenue=10) for p in people[:30]],
                         NOW + 10)
    experiment = catalog.experiment("welcome_test")
    for person in people:
        state = await pipeline.journeys.state(person)
        entered = "welcome" in state["e"]
        assert entered == (experiment.arm_of(person).id == "with_welcome"), person
    report = await ExposureStore(redis, Keys()).experiment(catalog, "welcome_test")
    arms = report["arms"]
    assert arms["without"]["exposures"] + arms["with_welcome"]["exposures"] == 60
    assert arms["without"]["conversions"] + arms["with_welcome"]["conversions"] == 30
    assert report["effects"]["with_welcome"]["vs"] == "without"


async def test_a_click_teaches_only_after_its_impression_and_a_replay_a_day_long_teaches_nothing(redis):
    catalog = compile_catalog(parse_catalog_text(CATALOG.replace("reward: conversion", "reward: click")))
    learning = LearningStore(redis, Keys())
    offers = {"one", "two"}
    bucket = "mobile|other"
    click = Lesson("u:c", "c", "n1:one", "one", bucket, "n1")
    impression = Lesson("u:c", "i", "n1:one", "one", bucket, "n1")
    assert await learning.teach(catalog.learning, [click], offers, NOW) == []  # no impression yet
    assert [r.offer for r in await learning.teach(catalog.learning, [impression, click], offers, NOW + 1)] == ["one"]
    # Many newer lessons later, the same decision replayed still teaches nothing.
    others = [Lesson("u:c", "i", f"m{n}:two", "two", bucket, f"m{n}") for n in range(100)]
    await learning.teach(catalog.learning, others, offers, NOW + 2)
    assert await learning.teach(catalog.learning, [impression, click], offers, NOW + 3) == []
    counts = await learning.counts(["one"], NOW + 3, catalog.learning.half_life_ms)
    shown, rewards = counts["one"][bucket]
    assert round(shown, 3) == 1 and round(rewards, 3) == 1


async def test_a_click_credits_only_the_experiments_of_placements_its_offer_shows_in(redis):
    pipeline = make_pipeline(redis, TWO_EXPERIMENTS)
    pipeline.decisions = DecisionSigner.from_secret(SECRET)
    catalog = pipeline.catalogs.current
    person = "u:clicker"
    decision = decide(catalog, Profile(), person, ["hero", "side"], {}, NOW)
    pipeline.decision_log.record(person, "n", NOW, decision)
    await pipeline.decision_log.flush(NOW)
    hero = decision.placements["hero"]["offer"]
    decision_id = pipeline.decisions.issue(person, [hero], NOW // 1000, decision.bucket, "n")
    await pipeline.apply([event("i", person, "impression", NOW + 1, offer=hero, decision_id=decision_id),
                          event("c", person, "click", NOW + 2, offer=hero, decision_id=decision_id)], NOW + 2)
    store = ExposureStore(redis, Keys())
    hero_report = await store.experiment(catalog, "hero_test")
    side_report = await store.experiment(catalog, "side_test")
    assert sum(arm["clicks"] for arm in hero_report["arms"].values()) == 1
    assert sum(arm["clicks"] for arm in side_report["arms"].values()) == 0


async def test_a_repeat_buyer_counts_once_in_the_revenue_variance(redis):
    store = ExposureStore(redis, Keys())
    await store.expose({"u:r": (NOW, "*", [("e:test", "a")])})
    await store.credit([Credit("u:r", NOW + 10, ("c", "r:p1"), revenue=10.0),
                        Credit("u:r", NOW + 20, ("c", "r:p2"), revenue=30.0)])
    arms = await redis.hgetall(Keys().kpi("e", "test", "arms"))
    assert float(arms[b"a|revenue"]) == 40.0 and float(arms[b"a|revenue2"]) == 1600.0  # (10 + 30)², not 10² + 30²


TWO_EXPERIMENTS = """
placements: {hero: {}, side: {}}
learning: {reward: click}
offers:
  - {id: h1, kind: content, placements: [hero], priority: 2}
  - {id: h2, kind: content, placements: [hero], priority: 1}
  - {id: s1, kind: content, placements: [side], priority: 2}
  - {id: s2, kind: content, placements: [side], priority: 1}
experiments:
  - {id: hero_test, placement: hero, metric: click, arms: [{id: a}, {id: b, offers: [h2]}]}
  - {id: side_test, placement: side, metric: click, arms: [{id: a}, {id: b, offers: [s2]}]}
"""
