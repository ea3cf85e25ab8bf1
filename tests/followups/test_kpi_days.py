"""KPIs kept a day at a time, against a real Redis with the days set by an
injected clock: a date range reads what those days counted (distinct ids over
the range, sums added), the totals stay the whole life."""

from __future__ import annotations

import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.events import Event
from engine.followups.kpis import KpiStore, days_between
from engine.store.keys import Keys

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
