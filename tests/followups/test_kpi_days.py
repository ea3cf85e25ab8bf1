"""KPIs kept a day at a time, against a real Redis with the days set by an
injected clock: a date range reads what those days counted (distinct ids over
the range, sums added), the totals stay the whole life."""

from __future__ import annotations

import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.events import Event
from engine.followups.kpis import KpiStore, KpiTally, days_between
from engine.store.keys import Keys
from tests.conftest import ROOT

DAY = 86_400_000
MONDAY = 1_764_547_200_000  # 2025-12-01 00:00 UTC
CATALOG = compile_catalog(parse_catalog_text("""
placements: [hero]
offers:
  - {id: hello, kind: content, placements: [hero], content: {title: Hello}}
"""))


class Clock:
    now = MONDAY + 3_600_000

    def __call__(self) -> int:
        return self.now


def impression(eid, person, ts):
    return Event(eid, "impression", person, ts, {"offer": "hello"}, trusted=True)


def purchase(eid, person, ts, value):
    return Event(eid, "purchase", person, ts, {"value": value}, trusted=True)


async def test_a_date_range_reads_what_its_days_counted(redis):
    clock = Clock()
    kpis = KpiStore(redis, Keys(), clock=clock)
    offers = CATALOG.offers_by_id

    async def record(events):
        by_person: dict = {}
        for event in events:
            by_person.setdefault(event.person, []).append(event)
        await kpis.record_batch(by_person, offers, lambda person, event: event.id)

    await record([impression("m1", "u:ada", clock.now), impression("m2", "u:bob", clock.now)])
    await record([purchase("p1", "u:ada", clock.now, 30)])
    clock.now += DAY  # Tuesday
    await record([impression("t1", "u:ada", clock.now), impression("t2", "u:cy", clock.now)])
    await record([purchase("p2", "u:cy", clock.now, 12)])
    whole = (await kpis.report([], [], ["hello"]))["offers"]["hello"]
    monday = (await kpis.report([], [], ["hello"], days=["2025-12-01"]))["offers"]["hello"]
    tuesday = (await kpis.report([], [], ["hello"], days=["2025-12-02"]))["offers"]["hello"]
    both = (await kpis.report([], [], ["hello"], days=days_between("2025-12-01", "2025-12-02")))["offers"]["hello"]
    assert (whole["impressions"], whole["viewers"], whole["revenue"]) == (4, 3, 42.0)
    assert (monday["impressions"], monday["viewers"], monday["converted"], monday["revenue"]) == (2, 2, 1, 30.0)
    assert (tuesday["impressions"], tuesday["viewers"], tuesday["converted"], tuesday["revenue"]) == (2, 2, 1, 12.0)
    assert (both["viewers"], both["converted"], both["revenue"]) == (3, 2, 42.0)  # ada once over both days
    nothing = (await kpis.report([], [], ["hello"], days=["2025-11-30"]))["offers"]["hello"]
    assert (nothing["impressions"], nothing["revenue"]) == (0, 0.0)


def test_a_range_is_checked():
    assert days_between("2025-12-30", "2026-01-02") == ["2025-12-30", "2025-12-31", "2026-01-01", "2026-01-02"]
    for first, last in (("2025-12-02", "2025-12-01"), ("2024-01-01", "2025-12-01"), ("2025-13-01", "2025-12-01")):
        with pytest.raises(ValueError):
            days_between(first, last)


def test_kpis_over_http_take_a_date_range(clean_api):
    import time as clock

    today = clock.strftime("%Y-%m-%d", clock.gmtime())
    yesterday = clock.strftime("%Y-%m-%d", clock.gmtime(clock.time() - 86_400))
    with clean_api.server() as client:
        event = {"id": "imp-1", "type": "impression", "user_id": "u-kd", "properties": {"offer": "crm_trial"}}
        assert client.post("/v1/events", json={"events": [event]}).status_code == 202
        now = client.get("/v1/kpis", params={"from": today, "to": today}).json()
        before = client.get("/v1/kpis", params={"from": yesterday, "to": yesterday}).json()
        assert now["offers"]["crm_trial"]["impressions"] == 1 and now["days"] == {"from": today, "to": today}
        assert before["offers"]["crm_trial"]["impressions"] == 0
        assert client.get("/v1/kpis", params={"from": today}).status_code == 422
        assert client.get("/v1/kpis", params={"from": today, "to": yesterday}).status_code == 422
        assert client.get("/v1/kpis", params={"from": "2025-02-30", "to": today}).status_code == 422


async def test_a_range_by_day_reads_each_day_on_its_own(redis):
    clock = Clock()
    kpis = KpiStore(redis, Keys(), clock=clock)
    by_person = {"u:ada": [impression("m1", "u:ada", clock.now)], "u:bob": [impression("m2", "u:bob", clock.now)]}
    await kpis.record_batch(by_person, CATALOG.offers_by_id, lambda person, event: event.id)
    clock.now += 2 * DAY  # Wednesday
    await kpis.record_batch({"u:ada": [impression("w1", "u:ada", clock.now)]}, CATALOG.offers_by_id,
                            lambda person, event: event.id)
    days = days_between("2025-11-30", "2025-12-03")
    by_day = await kpis.offers_by_day(["hello"], days)
    assert [day["day"] for day in by_day] == days
    assert [day["offers"]["hello"]["impressions"] for day in by_day] == [0, 2, 0, 1]
    # Each day alone: ada on Monday and on Wednesday is a viewer of each.
    assert [day["offers"]["hello"]["viewers"] for day in by_day] == [0, 2, 0, 1]
    with pytest.raises(ValueError):
        await kpis.offers_by_day(["hello"], days_between("2025-08-31", "2025-12-01"))  # 93 days


def test_kpis_over_http_by_day_and_the_budget_burn(clean_api):
    import time as clock

    today = clock.strftime("%Y-%m-%d", clock.gmtime())
    week_ago = clock.strftime("%Y-%m-%d", clock.gmtime(clock.time() - 6 * 86_400))
    budgeted = (ROOT / "examples" / "catalog.yaml").read_text().replace(
        "    worth: 9 ", "    budget: {amount: 100, per: day}\n    worth: 9 ", 1)
    assert budgeted.count("budget: {amount: 100") == 1
    clean_api.post_catalog(budgeted)
    with clean_api.server() as client:
        events = [{"id": "imp-bd", "type": "impression", "user_id": "u-bd", "properties": {"offer": "crm_trial"}},
                  {"id": "buy-bd", "type": "purchase", "user_id": "u-bd",
                   "properties": {"revenue": 250, "code": "SYNC10"}},
                  {"id": "cart-bd", "type": "add_to_cart", "user_id": "u-bd2"}]
        assert client.post("/v1/events", json={"events": events}).status_code == 202
        answer = client.get("/v1/kpis", params={"from": week_ago, "to": today, "by": "day"}).json()
        assert [day["day"] for day in answer["by_day"]] == days_between(week_ago, today)
        assert [day["offers"]["crm_trial"]["impressions"] for day in answer["by_day"]] == [0] * 6 + [1]
        # 10 % of 250 spent today of the 100 a day; offers without a budget have none.
        assert answer["offers"]["cart_crm_addon"]["budget"] == {"per": "day", "amount": 100.0, "spent": 25.0}
        assert "budget" not in answer["offers"]["crm_trial"]
        # A run waiting at a step: its step is a text key in JSON (cart_abandonment waits 30 min at step 0).
        assert answer["journeys"]["cart_abandonment"]["waiting"] == {"0": 1}
        assert client.get("/v1/kpis").json()["offers"]["cart_crm_addon"]["budget"]["spent"] == 25.0
        long_ago = clock.strftime("%Y-%m-%d", clock.gmtime(clock.time() - 92 * 86_400))
        for params in ({"by": "day"}, {"from": today, "to": today, "by": "week"},
                       {"from": long_ago, "to": today, "by": "day"}):
            assert client.get("/v1/kpis", params=params).status_code == 422, params
        assert client.get("/v1/kpis", params={"from": long_ago, "to": today}).status_code == 200  # not by day


async def test_a_tally_leaves_redis_as_one_command_an_id_would(redis):
    """The journey runner and the scheduler merge a batch's KPI writes
    (KpiTally): the counts, the day keys' expiry and the runs waiting must be
    what the same writes queued one by one leave."""
    clock = Clock()
    one_by_one, tallied = KpiStore(redis, Keys("a"), clock=clock), KpiStore(redis, Keys("b"), clock=clock)
    outcomes = [("email", "welcome", "sent", f"m{n}") for n in range(40)] + [("push", None, "dropped", "m99")]

    def write(kpis, target):
        for channel, journey, status, message_id in outcomes:
            kpis.outcome(target, channel, journey, status, message_id)
        for n in range(40):
            kpis.entry(target, "welcome", f"r{n}", held_out=n % 10 == 0)
            kpis.waiting(target, "welcome", 0, 1)
        for _ in range(30):
            kpis.waiting(target, "welcome", 0, -1)
            kpis.waiting(target, "welcome", 1, 1)
        for _ in range(5):  # started and stopped at step 2 within the batch: nothing waits there
            kpis.waiting(target, "welcome", 2, 1)
            kpis.waiting(target, "welcome", 2, -1)

    pipe = redis.pipeline(transaction=False)
    write(one_by_one, pipe)
    queued_one_by_one = len(pipe)
    await pipe.execute()
    pipe, tally = redis.pipeline(transaction=False), KpiTally()
    write(tallied, tally)
    tally.into(pipe)
    assert len(pipe) < queued_one_by_one / 10
    await pipe.execute()

    reports = [await kpis.report(["welcome"], ["email", "push"]) for kpis in (one_by_one, tallied)]
    assert reports[0] == reports[1]
    welcome = reports[1]["journeys"]["welcome"]
    assert (welcome["entered"], welcome["held_out"], welcome["sent"], welcome["waiting"]) == (36, 4, 40, {0: 10, 1: 30})
    assert reports[1]["channels"]["push"]["dropped"] == 1
    day = "@2025-12-01"
    for metric in ("sent", "entered"):
        ttls = [await redis.ttl(kpis.keys.kpi("j", "welcome", metric + day)) for kpis in (one_by_one, tallied)]
        assert ttls[0] > 0 and abs(ttls[0] - ttls[1]) <= 1
