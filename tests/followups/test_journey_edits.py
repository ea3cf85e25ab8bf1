"""A journey edited while people are in it, against real Redis, a real
scheduler and the catalog versions kept in Redis: a run goes on with the
version it entered with; one that cannot go on ends with its reason, and the
operator is told. (Shortening a live journey used to strand its runs: their
timer failed with IndexError and the run stayed active for good.)"""

from __future__ import annotations

import orjson

from engine.catalog.publish import CatalogStore
from engine.events import Event
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.journey_runner import internal_senders
from engine.followups.scheduler import Scheduler
from engine.policy import ContactPolicy
from engine.store.keys import Keys
from tests.conftest import make_pipeline

T0 = 1_780_000_000_000
DAY = 86_400_000
KEYS = Keys()

LONG = """
templates:
  day1: {subject: Day one, text: "one", expires: 30d}
  day2: {subject: Day two, text: "two", expires: 30d}
  day3: {subject: Day three, text: "three", expires: 30d}
journeys:
  - id: onboarding
    trigger: {event: signup}
    steps:
      - send: {channel: inbox, template: day1}
      - wait: 1d
      - send: {channel: inbox, template: day2}
      - wait: 1d
      - send: {channel: inbox, template: day3}
"""
SHORT = """
templates:
  welcome: {subject: Welcome, text: "all in one", expires: 30d}
journeys:
  - id: onboarding
    trigger: {event: signup}
    steps:
      - send: {channel: inbox, template: welcome}
"""


class Clock:
    now = T0

    def __call__(self) -> int:
        return self.now


async def setup(redis):
    clock = Clock()
    pipeline = make_pipeline(redis, LONG)
    catalogs = CatalogStore(redis, KEYS, pipeline.catalogs)
    await catalogs.publish(LONG, author="test")
    pipeline.journeys.versions = catalogs.catalog_of
    pipeline.journeys.alert_channel = "operator"
    senders = {**internal_senders(pipeline.journeys, clock), "operator": _record}
    scheduler = Scheduler(DueQueue(redis), ContactStore(redis), ContactPolicy(), senders, clock=clock,
                          alert_channel="operator")
    return pipeline, catalogs, scheduler, clock


ALERTS: list = []


async def _record(message, values) -> None:
    ALERTS.append(message)


async def inbox_subjects(pipeline, person, now) -> list[str]:
    return sorted(m["title"] for m in await pipeline.journeys.inbox.messages(person, now))


async def signup(pipeline, person, now) -> None:
    await pipeline.apply([Event(f"signup-{person}", "signup", person, now)], now)


async def drain(scheduler) -> None:
    while await scheduler.run_once():
        pass


async def test_a_shortened_journey_lets_waiting_runs_finish_the_version_they_entered(redis):
    pipeline, catalogs, scheduler, clock = await setup(redis)
    await signup(pipeline, "u:ada", clock.now)
    await drain(scheduler)
    assert await inbox_subjects(pipeline, "u:ada", clock.now) == ["Day one"]
    await catalogs.publish(SHORT, author="test", message="one message is enough")
    await signup(pipeline, "u:bob", clock.now)  # enters the new version
    await drain(scheduler)
    for _ in range(2):
        clock.now += DAY + 1
        await drain(scheduler)
    assert await inbox_subjects(pipeline, "u:ada", clock.now) == ["Day one", "Day three", "Day two"]
    assert await inbox_subjects(pipeline, "u:bob", clock.now) == ["Welcome"]
    for person in ("u:ada", "u:bob"):
        assert (await pipeline.journeys.state(person))["a"] == {}  # both runs ended, none stranded


async def test_a_run_whose_version_is_no_longer_kept_ends_with_the_reason_and_an_alert(redis):
    ALERTS.clear()
    pipeline, catalogs, scheduler, clock = await setup(redis)
    await signup(pipeline, "u:cy", clock.now)
    await drain(scheduler)
    await catalogs.publish(SHORT, author="test")
    await redis.hdel(KEYS.catalog_texts(), 1)  # as if 500 versions had been published since
    clock.now += DAY + 1
    await drain(scheduler)
    assert (await pipeline.journeys.state("u:cy"))["a"] == {}
    outcomes = [orjson.loads(raw) for raw in await redis.lrange(KEYS.contact_outcomes("u:cy"), 0, -1)]
    [ended] = [o for o in outcomes if o["status"] == "ended"]
    assert ended["journey"] == "onboarding" and "version 1" in ended["reason"] and "no longer kept" in ended["reason"]
    [alert] = ALERTS
    assert alert.channel == "operator" and alert.body["alert"] == "journey_stranded"
    assert await inbox_subjects(pipeline, "u:cy", clock.now) == ["Day one"]


async def test_a_run_from_before_versions_at_a_step_that_is_gone_ends_with_the_reason(redis):
    """A run written before runs recorded their version (no "v", "jd")."""
    ALERTS.clear()
    pipeline, catalogs, scheduler, clock = await setup(redis)
    await signup(pipeline, "u:di", clock.now)
    await drain(scheduler)
    state = await pipeline.journeys.state("u:di")
    run = state["a"]["onboarding"]
    del run["v"], run["jd"]
    await redis.set(KEYS.journeys("u:di"), orjson.dumps(state))
    await catalogs.publish(SHORT, author="test")
    clock.now += DAY + 1
    await drain(scheduler)
    assert (await pipeline.journeys.state("u:di"))["a"] == {}
    outcomes = [orjson.loads(raw) for raw in await redis.lrange(KEYS.contact_outcomes("u:di"), 0, -1)]
    assert any(o["status"] == "ended" and "step 2 no longer exists" in o["reason"] for o in outcomes)
    assert [a.body["alert"] for a in ALERTS] == ["journey_stranded"]
