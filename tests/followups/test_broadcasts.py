"""Broadcasts end to end against real Redis and a real SMTP sink, with an
injected clock (no sleeps): members put in a tracked segment by the pipeline,
the walk queueing one message each in the due queue, the scheduler sending
them under the contact policy, the KPIs counting them for the broadcast."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from engine.catalog.broadcasts import broadcast_of
from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.errors import CatalogError
from engine.events import Event
from engine.followups.broadcasts import CANCELLED, DONE, DONE_CHECK_MS, RUNNING, Broadcasts
from engine.followups.channels.email import EmailChannel, SmtpConfig, Tracker
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.kpis import KpiStore
from engine.followups.pacing import Pacer
from engine.followups.scheduler import Scheduler
from engine.policy import Caps, ContactPolicy, record_send
from engine.store.keys import Keys
from tests.conftest import make_pipeline

HOUR = 3_600_000
SECOND = 1000
KEYS = Keys()


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def catalog_yaml(broadcast: str) -> str:
    return f"""
segments:
  - id: subscribers
    track: true
    when: {{trait: newsletter, equals: true}}
templates:
  newsletter:
    subject: "December news for {{{{ traits.name | default('you') }}}}"
    text: "What is new this month."
    html: '<p><a href="https://shop.example/news">Read it</a></p>'
broadcasts:
  - {broadcast}
"""


LOCAL = "{id: news, segment: subscribers, channel: email, template: newsletter, at: '2026-12-08T10:00', local_time: true}"
INSTANT = "{id: news, segment: subscribers, channel: email, template: newsletter, at: '2026-12-08T12:00:00+00:00'}"


class Clock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


class World:
    def __init__(self, redis, smtp, broadcast: str, now: int, policy: ContactPolicy | None = None, **kw):
        self.redis = redis
        self.clock = Clock(now)
        self.pipeline = make_pipeline(redis, catalog_yaml(broadcast))
        self.catalog = self.pipeline.catalogs.current
        self.broadcast = self.catalog.broadcasts["news"]
        self.tracker = Tracker(b"k", "http://attimo.test")
        email = EmailChannel(SmtpConfig(port=smtp.port), self.tracker)
        self.queue = DueQueue(redis)
        self.contacts = ContactStore(redis)
        self.kpis = KpiStore(redis, KEYS)
        self.broadcasts = self.walker(**kw)
        self.scheduler = Scheduler(self.queue, self.contacts, policy or ContactPolicy(), {"email": email.send},
                                   clock=self.clock, kpis=self.kpis)

    def walker(self, **kw) -> Broadcasts:
        """A process's Broadcasts (each with its own lease owner)."""
        return Broadcasts(self.redis, KEYS, self.queue, self.pipeline.membership, self.kpis, self.contacts,
                          clock=self.clock, **kw)

    async def member(self, name: str, *, consent: bool = True, subscribed: bool = True, zone: str | None = None):
        traits = {"email": f"{name}@example.com", "name": name.title(), "newsletter": subscribed}
        if zone:
            traits["timezone"] = zone
        now = self.clock()
        await self.pipeline.apply([Event(f"{name}-i", "identify", f"u:{name}", now, {}, traits)], now)
        if consent:
            await self.contacts.set_consent(f"u:{name}", "email", "*", True)

    async def drain(self) -> None:
        while await self.scheduler.run_once():
            pass

    async def due_times(self) -> dict[str, int]:
        """The broadcast's messages waiting in the due queue: person -> due ms."""
        found = {}
        for shard in range(16):
            for member, score in await self.redis.zrange(KEYS.due(shard), 0, -1, withscores=True):
                member = member.decode()
                if broadcast_of(member) == "news":
                    found[member.split(":", 2)[2]] = int(score)
        return found

    async def report(self) -> dict:
        [report] = await self.broadcasts.report([self.broadcast], ["email"])
        return report


async def test_a_broadcast_sends_one_email_to_each_consenting_member(redis, smtp):
    world = World(redis, smtp, LOCAL, ms("2026-12-07T12:00"))
    await world.member("ana")
    await world.member("ben")
    await world.member("cy", consent=False)  # a member, but never opted in
    await world.member("dee", subscribed=False)  # opted in, not a subscriber
    await world.broadcasts.run_once(world.catalog)
    assert (await world.report())["state"] == "scheduled"  # 10:00 has come nowhere yet
    world.clock.now = world.broadcast.start_ms  # 10:00 at UTC+14
    await world.broadcasts.run_once(world.catalog)
    report = await world.report()
    assert (report["state"], report["queued"]) == ("running", 3)
    assert set(await world.due_times()) == {"u:ana", "u:ben", "u:cy"}
    world.clock.now = ms("2026-12-08T09:59:59")  # no time zone: the policy's default, UTC
    await world.drain()
    assert smtp.messages == []
    world.clock.now = ms("2026-12-08T10:01")
    await world.drain()
    assert sorted(m["To"] for _, m in smtp.messages) == ["ana@example.com", "ben@example.com"]
    assert {m["Subject"] for _, m in smtp.messages} == {"December news for Ana", "December news for Ben"}
    outcomes = await world.contacts.outcomes("u:cy")
    assert outcomes[0]["status"] == "dropped" and outcomes[0]["reason"].startswith("no consent")
    report = await world.report()
    assert (report["sent"], report["kpis"]["entered"], report["kpis"]["dropped"]) == (2, 3, 1)


async def test_each_member_gets_it_at_ten_in_their_own_time_zone(redis, smtp):
    world = World(redis, smtp, LOCAL, ms("2026-12-07T00:00"))
    await world.member("kenji", zone="Asia/Tokyo")
    await world.member("nora", zone="America/New_York")
    world.clock.now = world.broadcast.start_ms
    await world.broadcasts.run_once(world.catalog)
    assert await world.due_times() == {"u:kenji": ms("2026-12-08T01:00"), "u:nora": ms("2026-12-08T15:00")}
    world.clock.now = ms("2026-12-08T01:00")
    await world.drain()
    assert [m["To"] for _, m in smtp.messages] == ["kenji@example.com"]
    world.clock.now = ms("2026-12-08T14:59")
    await world.drain()
    assert len(smtp.messages) == 1
    world.clock.now = ms("2026-12-08T15:00")
    await world.drain()
    assert [m["To"] for _, m in smtp.messages][1:] == ["nora@example.com"]


async def test_quiet_hours_put_off_a_member_for_whom_it_is_night(redis, smtp):
    """12:00 UTC is 21:00 in Tokyo, inside quiet hours 21-8 there: Kenji's email
    waits for 08:00 Tokyo (23:00 UTC) while London gets it at noon."""
    world = World(redis, smtp, INSTANT, ms("2026-12-08T11:00"),
                  ContactPolicy(quiet_start_hour=21, quiet_end_hour=8))
    await world.member("kenji", zone="Asia/Tokyo")
    await world.member("lily", zone="Europe/London")
    world.clock.now = ms("2026-12-08T12:00")
    await world.broadcasts.run_once(world.catalog)
    world.clock.now += SECOND  # both due (paced 20 ms apart)
    await world.drain()
    assert [m["To"] for _, m in smtp.messages] == ["lily@example.com"]
    assert (await world.due_times())["u:kenji"] == ms("2026-12-08T23:00")
    world.clock.now = ms("2026-12-08T22:59")
    await world.drain()
    assert len(smtp.messages) == 1
    world.clock.now = ms("2026-12-08T23:00")
    await world.drain()
    assert [m["To"] for _, m in smtp.messages][1:] == ["kenji@example.com"]


async def test_the_contact_caps_hold_for_a_broadcast(redis, smtp):
    world = World(redis, smtp, INSTANT, ms("2026-12-08T11:00"),
                  ContactPolicy(channel_caps={"email": Caps(per_day=1)}))
    await world.member("ana")
    await world.member("ben")
    await world.contacts.update("u:ben", lambda state: record_send(state, channel="email", template="receipt",
                                                                   now_ms=ms("2026-12-08T08:00")))
    world.clock.now = ms("2026-12-08T12:00")
    await world.broadcasts.run_once(world.catalog)
    world.clock.now += SECOND
    await world.drain()
    assert [m["To"] for _, m in smtp.messages] == ["ana@example.com"]
    [outcome, *_] = await world.contacts.outcomes("u:ben")
    assert (outcome["status"], outcome["reason"]) == ("dropped", "email cap: 1 per day reached")


async def test_a_walk_done_again_after_a_crash_sends_nothing_twice(redis, smtp):
    world = World(redis, smtp, INSTANT, ms("2026-12-08T12:00"), chunk=2)
    for name in ("ana", "ben", "cy", "dee", "eve"):
        await world.member(name)
    await world.broadcasts.run_once(world.catalog)
    assert (await world.report())["queued"] == 5
    world.clock.now += 10 * SECOND
    await world.drain()
    assert len(smtp.messages) == 5
    # Another process finds the walk unfinished (the first died before marking
    # it) once the lease has lapsed, and walks again: every id is known.
    await redis.hdel(KEYS.broadcast_state("news"), "walked")
    await redis.delete(KEYS.broadcast_lease("news"))
    await world.walker(chunk=3).run_once(world.catalog)
    world.clock.now += 10 * SECOND
    await world.drain()
    assert len(smtp.messages) == 5
    assert sorted(m["To"] for _, m in smtp.messages) == [f"{n}@example.com" for n in ("ana", "ben", "cy", "dee",
                                                                                       "eve")]
    report = await world.report()
    assert (report["queued"], report["sent"]) == (5, 5)
    world.clock.now += DONE_CHECK_MS
    await world.broadcasts.run_once(world.catalog)
    assert (await world.report())["state"] == DONE
    assert await world.broadcasts.start(world.broadcast) == DONE  # a broadcast done is not started again


async def test_one_process_walks_a_broadcast_at_a_time(redis, smtp):
    world = World(redis, smtp, INSTANT, ms("2026-12-08T12:00"))
    await world.member("ana")
    other = world.walker()
    assert await world.broadcasts._lease("news")
    await other.run_once(world.catalog)  # started, but the walk is the lease holder's
    report = await world.report()
    assert (report["state"], report["queued"], report["walked_ms"]) == (RUNNING, 0, None)
    await world.broadcasts.run_once(world.catalog)
    assert (await world.report())["queued"] == 1


async def test_cancel_drops_what_is_still_queued_and_stops_the_walk(redis, smtp):
    world = World(redis, smtp, INSTANT.replace("}", ", rate: 1}"), ms("2026-12-08T12:00"))
    names = ["ana", "ben", "cy", "dee", "eve"]
    for name in names:
        await world.member(name)
    await world.broadcasts.run_once(world.catalog)
    world.clock.now += 1500  # one a second: two are due
    await world.drain()
    assert len(smtp.messages) == 2
    before, dropped = await world.broadcasts.cancel(world.broadcast)
    assert (before, dropped) == (RUNNING, 3)
    world.clock.now += HOUR
    await world.drain()
    assert len(smtp.messages) == 2
    report = await world.report()
    assert (report["state"], report["sent"]) == (CANCELLED, 2)
    assert await world.due_times() == {}


async def test_a_cancelled_broadcast_is_never_walked(redis, smtp):
    world = World(redis, smtp, INSTANT, ms("2026-12-08T11:00"))
    await world.member("ana")
    assert await world.broadcasts.cancel(world.broadcast) == ("scheduled", 0)
    world.clock.now = ms("2026-12-08T12:00")
    await world.broadcasts.run_once(world.catalog)
    assert await world.broadcasts.walk(world.broadcast, world.catalog) is False
    assert (await world.report())["queued"] == 0
    assert await world.due_times() == {}


async def test_the_messages_are_paced_to_the_rate(redis, smtp):
    """rate: 4 a second, 20 members meant for the same instant: the due queue's
    scores are 250 ms apart, so no second holds more than four."""
    world = World(redis, smtp, INSTANT.replace("}", ", rate: 4}"), ms("2026-12-08T11:00"), chunk=7)
    for n in range(20):
        await world.member(f"p{n}")
    world.clock.now = ms("2026-12-08T12:00")
    await world.broadcasts.run_once(world.catalog)
    due = sorted((await world.due_times()).values())
    assert len(due) == 20
    assert due[0] == ms("2026-12-08T12:00")
    assert [b - a for a, b in zip(due, due[1:], strict=False)] == [250] * 19
    assert max(sum(start <= d < start + SECOND for d in due) for start in due) == 4


def test_pacing_across_time_zones_never_puts_more_than_the_rate_in_a_second():
    pacer = Pacer(10)
    targets = [0, 1_500, 0, 3_000, 1_500] * 40  # three zones' moments, interleaved as a walk meets them
    due = sorted(pacer.take(t) for t in targets)
    assert len(set(due)) == len(due)
    assert max(sum(start <= d < start + SECOND for d in due) for start in due) == 10
    assert due[0] == 0 and due[-1] == 199 * 100  # no gap: the slots fill from the first moment on


def test_nobody_is_sent_it_before_their_moment():
    pacer = Pacer(2)
    assert [pacer.take(t) for t in (10_000, 0, 10_000, 0)] == [10_000, 0, 10_500, 500]


async def test_kpis_count_the_send_an_open_and_an_unsubscribe_for_the_broadcast(redis, smtp):
    world = World(redis, smtp, INSTANT, ms("2026-12-08T12:00"))
    await world.member("ana")
    await world.member("ben")
    await world.broadcasts.run_once(world.catalog)
    world.clock.now += SECOND
    await world.drain()
    by_person = {recipients[0]: email for recipients, email in smtp.messages}
    html = by_person["ana@example.com"].get_body(("html",)).get_content()
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    link = world.tracker.verify(pixel.replace("&amp;", "&"))  # what GET /v1/t/open checks, then counts
    assert broadcast_of(link["m"]) == "news"
    for _ in range(2):  # the pixel loaded twice counts once
        pipe = redis.pipeline(transaction=False)
        world.kpis.engagement(pipe, "opened", link.get("j") or None, link["m"])
        await pipe.execute()
    await world.kpis.record_unsubscribe("u:ben", "email", world.clock())
    kpis = (await world.report())["kpis"]
    assert (kpis["entered"], kpis["sent"], kpis["sent_by_channel"]) == (2, 2, {"email": 2})
    assert (kpis["opened"], kpis["open_rate"], kpis["unsubscribed"]) == (1, 0.5, 1)


async def test_a_purchase_after_it_counts_for_the_treated_or_the_held_out(redis, smtp):
    world = World(redis, smtp, INSTANT.replace("}", ", holdout: 50}"), ms("2026-12-08T12:00"))
    from engine.followups.transitions import held_out

    people = [f"p{n}" for n in range(12)]
    for name in people:
        await world.member(name)
    control = [p for p in people if held_out(f"u:{p}", world.broadcast)]
    treated = [p for p in people if p not in control]
    assert control and treated
    await world.broadcasts.run_once(world.catalog)
    world.clock.now += SECOND
    await world.drain()
    assert sorted(r[0] for r, _ in smtp.messages) == sorted(f"{p}@example.com" for p in treated)
    world.clock.now += HOUR
    for buyer in (treated[0], control[0]):
        event = Event(f"{buyer}-buy", "purchase", f"u:{buyer}", world.clock(), {"revenue": 40}, trusted=True)
        await world.pipeline.apply([event], world.clock())
    kpis = (await world.report())["kpis"]
    assert (kpis["entered"], kpis["held_out"]) == (len(treated), len(control))
    assert (kpis["converted"], kpis["converted_control"]) == (1, 1)
    assert (kpis["revenue"], kpis["revenue_control"]) == (40.0, 40.0)
    assert kpis["uplift"] == round(round(1 / len(treated), 4) - round(1 / len(control), 4), 4)


def test_every_broadcast_problem_is_reported_with_its_path():
    spec = parse_catalog_text("""
segments:
  - {id: subscribers, track: true, when: {trait: newsletter, equals: true}}
  - {id: vip, when: {trait: vip, equals: true}}
templates:
  newsletter: {subject: News, text: News}
broadcasts:
  - {id: a, segment: vip, channel: fax, template: nope, at: '2026-12-08T10:00', rate: 0, holdout: 120}
  - {id: b, segment: subscribers, channel: email, template: newsletter, at: '2026-12-08T10:00+01:00',
     local_time: true}
  - {id: c, segment: subscribers, channel: email, template: newsletter, at: 'Tuesday', colour: red}
  - {id: c, segment: subscribers, channel: email, template: newsletter}
  - {id: 'D:1', segment: subscribers, channel: email, template: newsletter}
""")
    with pytest.raises(CatalogError) as caught:
        compile_catalog(spec)
    paths = [path for path, _ in caught.value.problems]
    assert paths == ["broadcasts[0].segment", "broadcasts[0].channel", "broadcasts[0].template", "broadcasts[0].at",
                     "broadcasts[0].rate", "broadcasts[0].holdout", "broadcasts[1].at", "broadcasts[2].colour",
                     "broadcasts[2].at", "broadcasts[3].id", "broadcasts[4].id"]
    reasons = dict(caught.value.problems)
    assert "not tracked" in reasons["broadcasts[0].segment"]
    assert "offset" in reasons["broadcasts[0].at"]


def test_a_local_time_broadcast_starts_when_ten_comes_to_the_first_zone():
    catalog = compile_catalog(parse_catalog_text(catalog_yaml(LOCAL)))
    broadcast = catalog.broadcasts["news"]
    assert broadcast.start_ms == ms("2026-12-07T20:00")  # 10:00 at UTC+14
    assert broadcast.due_ms("Pacific/Kiritimati") == broadcast.start_ms
    assert broadcast.due_ms(None, "Europe/Rome") == ms("2026-12-08T09:00")
    assert broadcast.due_ms("Not/AZone") == ms("2026-12-08T10:00")
