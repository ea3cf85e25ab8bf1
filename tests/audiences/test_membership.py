"""Tracked segments against a real Redis (single and cluster): entries and exits
by event and by time, recorded once, seen by journeys, delivered to a real
webhook receiver with retries, exported with the hashes ad platforms match."""

import hashlib
import time

import orjson
import pytest

from engine.audiences.destinations import Deliveries, export_rows
from engine.audiences.membership import shard_of
from engine.catalog.windows import DAY_MS
from engine.events import CONSENT, Event
from engine.ingest.rechecks import recheck_due
from engine.signing import verify_signature
from engine.store.keys import SEGMENT_SHARDS, Keys
from tests.conftest import make_pipeline

NOW = 1_764_000_000_000
KEYS = Keys()
SECRET = b"destination secret"

CATALOG = """
segments:
  - id: crm_fan
    track: true
    when: {event: page_view, where: {category: crm}, within: 7d, count: {at_least: 3}}
    destinations:
      - id: ads_hook
        webhook: {url: URL, batch: 100, attempts: 3}
  - id: lapsed
    track: true
    when: {all: [{trait: registered, equals: true}, {inactive_for: 30d}]}
  - id: untracked
    when: {trait: registered, equals: true}
journeys:
  - id: win_back
    trigger: {event: segment_exited, where: {segment: crm_fan}}
    steps:
      - {send: {channel: inbox, template: miss_you}}
templates:
  miss_you: {subject: "We miss you", text: "Come back"}
"""


def views(person, start, n=3, ts=NOW):
    return [Event(f"{person}-v{start + i}", "page_view", person, ts, {"category": "crm"}) for i in range(n)]


def consent(person, granted=True, ts=NOW):
    return Event(f"{person}-ads-{granted}-{ts}", CONSENT, person, ts,
                 {"channel": "ads", "purpose": "advertising", "granted": granted}, trusted=True)


def identify(person, ts=NOW, **traits):
    return Event(f"{person}-id-{ts}-{sorted(traits)}", "identify", person, ts, {}, traits, trusted=True)


async def members(redis, segment):
    found = set()
    for shard in range(SEGMENT_SHARDS):
        found |= {m.decode() for m in await redis.smembers(KEYS.segment_members(segment, shard))}
    return found


async def changes(redis, segment):
    found = []
    for shard in range(SEGMENT_SHARDS):
        for entry_id, fields in await redis.xrange(KEYS.segment_changes(segment, shard)):
            found.append((int(entry_id.split(b"-")[0]), fields[b"p"].decode(), fields[b"o"].decode(),
                          fields[b"r"].decode()))
    return sorted(found)


def pipeline_for(redis, url="http://127.0.0.1:9/none"):
    return make_pipeline(redis, CATALOG.replace("URL", url))


async def test_entries_and_exits_by_event_are_kept_and_recorded_once(redis):
    pipeline = pipeline_for(redis)
    batch = views("u:ada", 0) + views("u:bob", 0, n=2)
    for _ in range(3):  # a retried batch records nothing twice
        await pipeline.apply(batch, NOW)
    assert await members(redis, "crm_fan") == {"u:ada"}
    assert [c[1:] for c in await changes(redis, "crm_fan")] == [("u:ada", "+", "event")]
    assert await pipeline.membership.sizes(["crm_fan", "lapsed"]) == {"crm_fan": 1, "lapsed": 0}
    await pipeline.apply(views("u:bob", 2, n=1), NOW + 1000)
    assert await members(redis, "crm_fan") == {"u:ada", "u:bob"}
    # the untracked segment keeps no members
    await pipeline.apply([identify("u:ada", registered=True)], NOW)
    assert not await redis.keys("*{sg:untracked*")


async def test_a_window_emptying_moves_a_person_out_without_an_event_and_starts_a_journey(redis):
    pipeline = pipeline_for(redis)
    await pipeline.apply(views("u:ada", 0), NOW)
    assert await members(redis, "crm_fan") == {"u:ada"}
    due = await redis.zscore(KEYS.segment_rechecks(shard_of("u:ada")), "u:ada")
    assert NOW < due <= NOW + 8 * DAY_MS  # when the views fall out of the 7-day window
    assert await recheck_due(pipeline, NOW + DAY_MS) == 0  # nothing due yet: nobody is read
    assert await recheck_due(pipeline, int(due)) == 1
    assert await members(redis, "crm_fan") == set()
    assert [c[1:] for c in await changes(redis, "crm_fan")] == [("u:ada", "+", "event"), ("u:ada", "-", "time")]
    state = orjson.loads(await redis.get(KEYS.journeys("u:ada")))
    assert "win_back" in orjson.dumps(state).decode()  # the exit started the win-back journey
    # next: only the day an idle spell of 30 days could begin (the lapsed segment)
    assert await redis.zscore(KEYS.segment_rechecks(shard_of("u:ada")), "u:ada") == NOW + 30 * DAY_MS


async def test_an_idle_spell_moves_a_person_in_without_an_event(redis):
    pipeline = pipeline_for(redis)
    await pipeline.apply([identify("u:cy", registered=True), *views("u:cy", 0, n=1)], NOW)
    assert await members(redis, "lapsed") == set()
    await recheck_due(pipeline, NOW + 29 * DAY_MS)
    assert await members(redis, "lapsed") == set()
    await recheck_due(pipeline, NOW + 30 * DAY_MS)
    assert await members(redis, "lapsed") == {"u:cy"}
    # coming back moves them out by event
    await pipeline.apply(views("u:cy", 5, n=1, ts=NOW + 31 * DAY_MS), NOW + 31 * DAY_MS)
    assert await members(redis, "lapsed") == set()
    assert [c[2:] for c in await changes(redis, "lapsed")] == [("+", "time"), ("-", "event")]


async def test_members_are_paged_with_a_cursor_until_the_end(redis):
    pipeline = pipeline_for(redis)
    people = [f"u:p{i}" for i in range(45)]
    await pipeline.apply([e for p in people for e in views(p, 0)], NOW)
    seen, cursor, pages = set(), None, 0
    while True:
        page, cursor = await pipeline.membership.page("crm_fan", cursor, 10)
        seen |= set(page)
        pages += 1
        if cursor is None:
            break
    assert seen == set(people) and pages >= 4


def ref_sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


async def test_export_has_reference_hashes_and_only_people_with_advertising_consent(redis):
    pipeline = pipeline_for(redis)
    await pipeline.apply([identify("u:ada", email="  Ada@Example.COM ", phone="+44 20 7946 0958"),
                          identify("u:bob", email="bob@example.com"), consent("u:ada"),
                          *views("u:ada", 0), *views("u:bob", 0)], NOW)
    rows = [row async for chunk in export_rows(pipeline.membership, "crm_fan") for row in chunk]
    assert rows == [["u:ada", ref_sha("ada@example.com"), ref_sha("+442079460958")]]  # bob gave no consent
    google = [row async for chunk in export_rows(pipeline.membership, "crm_fan", "google") for row in chunk]
    assert google == [[ref_sha("ada@example.com"), ref_sha("+442079460958")]]


async def test_a_webhook_destination_gets_adds_and_removals_in_order_after_an_outage(redis, receiver):
    pipeline = pipeline_for(redis, receiver.url + "/ads")
    catalog = pipeline.catalogs.current
    deliveries = Deliveries(redis, KEYS, pipeline.membership, SECRET)
    receiver.statuses = [503, 503]  # down for the first two tries
    people = [f"u:p{i}" for i in range(5)]
    await pipeline.apply([e for p in people for e in (identify(p, email=f"{p[2:]}@example.com"), consent(p))]
                         + [e for p in people for e in views(p, 0)], NOW)
    await pipeline.apply([consent("u:p0", granted=False, ts=NOW + 1)], NOW + 1)  # p0 withdraws: a removal
    now = NOW + 10
    for _ in range(20):
        await deliveries.run_once(catalog, now)
        now += 60_000
    bodies = [r for r in receiver.received if r.path == "/ads"]
    assert len(bodies) == 3  # two refused tries, then the same batch taken
    assert bodies[0].body == bodies[2].body and bodies[0].headers["idempotency-key"] == \
        bodies[2].headers["idempotency-key"]
    last = bodies[2]
    assert verify_signature(SECRET, last.headers["x-attimo-timestamp"], last.body, last.headers["x-attimo-signature"])
    sent = orjson.loads(last.body)["changes"]
    adds = {c["email_sha256"] for c in sent if c["op"] == "add"}
    # p0 withdrew before delivery: judged by consent at delivery, never added, only removed
    assert adds == {ref_sha(f"p{i}@example.com") for i in range(1, 5)}
    removals = [c for c in sent if c["op"] == "remove"]
    assert [(c["email_sha256"], c["reason"]) for c in removals] == [(ref_sha("p0@example.com"), "consent")]
    assert "person" not in sent[0]  # hashed identifiers only, unless the catalog asks
    # an exit by time reaches it as a removal, in a new batch
    await recheck_due(pipeline, NOW + 8 * DAY_MS)
    await deliveries.run_once(catalog, NOW + 8 * DAY_MS)
    exits = orjson.loads(receiver.received[-1].body)["changes"]
    assert {(c["op"], c["reason"]) for c in exits} == {("remove", "time")} and len(exits) == 5
    await deliveries.aclose()


async def test_a_destination_that_never_answers_is_dead_lettered_with_the_reason(redis, receiver):
    pipeline = pipeline_for(redis, receiver.url + "/down")
    receiver.statuses = [500] * 10
    deliveries = Deliveries(redis, KEYS, pipeline.membership, SECRET)
    await pipeline.apply([identify("u:ada", email="ada@example.com"), consent("u:ada"), *views("u:ada", 0)], NOW)
    now = NOW
    for _ in range(6):
        await deliveries.run_once(pipeline.catalogs.current, now)
        now += 60_000
    assert len(receiver.received) == 3  # attempts: 3
    letter = orjson.loads((await redis.lrange(KEYS.dead_letters(), 0, 0))[0])
    assert letter["destination"] == "ads_hook" and letter["reason"] == "HTTP 500 after 3 attempt(s)"
    assert orjson.loads(letter["body"])["changes"][0]["op"] == "add"
    # delivery goes on past it: a later change is sent
    receiver.statuses = []
    await pipeline.apply([consent("u:ada", granted=False, ts=NOW + 5)], NOW + 5)
    await deliveries.run_once(pipeline.catalogs.current, now)
    assert orjson.loads(receiver.received[-1].body)["changes"][0]["op"] == "remove"
    await deliveries.aclose()


@pytest.mark.parametrize("kind", ["segment_entered", "segment_exited", "segment_recheck"])
def test_nobody_can_send_the_events_attimo_makes(kind):
    from engine.errors import EventRejected
    from engine.events import decode_batch
    body = orjson.dumps({"events": [{"id": "x", "type": kind, "anonymous_id": "a1",
                                     "properties": {"segment": "crm_fan"}}]})
    with pytest.raises(EventRejected, match="made by Attimo"):
        decode_batch(body)


async def test_erasing_a_member_removes_them_and_the_removal_still_names_their_hashes(redis, receiver):
    pipeline = pipeline_for(redis, receiver.url + "/ads")
    deliveries = Deliveries(redis, KEYS, pipeline.membership, SECRET)
    await pipeline.apply([identify("u:ada", email="ada@example.com"), consent("u:ada"), *views("u:ada", 0)], NOW)
    await deliveries.run_once(pipeline.catalogs.current, NOW)
    assert await pipeline.membership.erase("u:ada", sorted(pipeline.catalogs.current.audiences.tracked)) == \
        ["crm_fan"]
    for key in KEYS.of_person("u:ada"):
        await redis.delete(key)  # what erasure then does: the card goes with the rest
    await deliveries.run_once(pipeline.catalogs.current, NOW + 1)
    [added, removed] = [orjson.loads(r.body)["changes"][0] for r in receiver.received]
    assert added["op"] == "add" and removed["op"] == "remove" and removed["reason"] == "erased"
    assert removed["email_sha256"] == ref_sha("ada@example.com")
    assert await members(redis, "crm_fan") == set()
    assert await redis.zscore(KEYS.segment_rechecks(shard_of("u:ada")), "u:ada") is None
    await deliveries.aclose()


async def test_change_records_older_than_a_week_are_trimmed(redis):
    pipeline = pipeline_for(redis)
    await pipeline.apply(views("u:ada", 0), NOW)
    await pipeline.membership.trim(["crm_fan"], NOW - 1)  # younger than the limit: kept
    assert len(await changes(redis, "crm_fan")) == 1
    deliveries = Deliveries(redis, KEYS, pipeline.membership, SECRET)
    await deliveries.run_once(pipeline.catalogs.current, int(time.time() * 1000) + 8 * DAY_MS)
    assert await changes(redis, "crm_fan") == []
    assert await members(redis, "crm_fan") == {"u:ada"}  # membership itself stays
    await deliveries.aclose()


async def test_a_scheduled_export_writes_the_customer_list_into_the_export_folder(redis, tmp_path):
    catalog = CATALOG.replace("        webhook: {url: URL, batch: 100, attempts: 3}",
                              "        export: {format: csv, shape: meta, every: 1d}")
    pipeline = make_pipeline(redis, catalog)
    await pipeline.apply([identify("u:ada", email="Ada@example.com"), consent("u:ada"), *views("u:ada", 0),
                          identify("u:bob", phone="+1 415 555 2671"), consent("u:bob"), *views("u:bob", 0),
                          *views("u:cy", 0)], NOW)
    deliveries = Deliveries(redis, KEYS, pipeline.membership, SECRET, export_dir=str(tmp_path))
    await deliveries.run_once(pipeline.catalogs.current, NOW)
    await deliveries.run_once(pipeline.catalogs.current, NOW + 3_600_000)  # not a day yet: no second file
    [written] = list((tmp_path / "ads_hook").iterdir())
    assert written.name == "crm_fan-20251124T160000Z.csv"
    lines = written.read_text().splitlines()
    assert lines[0] == "email,phone"
    assert sorted(lines[1:]) == sorted([f"{ref_sha('ada@example.com')},", f",{ref_sha('+14155552671')}"])
    await deliveries.run_once(pipeline.catalogs.current, NOW + 86_400_000)
    assert len(list((tmp_path / "ads_hook").iterdir())) == 2
    await deliveries.aclose()


async def test_many_changes_in_one_millisecond_of_one_shard_are_all_delivered_in_small_batches(redis, receiver):
    """One script records a shard's changes of a batch in the same ms (stream
    ids …-0 … …-11): batches cut between them lose none ("-10" < "-2" as text)."""
    pipeline = make_pipeline(redis, CATALOG.replace("URL", receiver.url + "/ads").replace("batch: 100", "batch: 3"))
    people = [f"u:s{i}" for i in range(12)]
    await pipeline.apply([e for p in people for e in (identify(p, email=f"{p[2:]}@example.com"), consent(p))], NOW)
    for n, person in enumerate(people):  # as the script writes them, with the ids it would give
        await redis.xadd(KEYS.segment_changes("crm_fan", 3), {"s": "crm_fan", "p": person, "o": "+", "r": "event"},
                         id=f"1764000000000-{n}")
    deliveries = Deliveries(redis, KEYS, pipeline.membership, SECRET)
    for turn in range(6):
        await deliveries.run_once(pipeline.catalogs.current, NOW + turn)
    sent = [c for r in receiver.received for c in orjson.loads(r.body)["changes"]]
    assert len(receiver.received) == 4
    assert [c["email_sha256"] for c in sent] == [ref_sha(f"{p[2:]}@example.com") for p in people]  # in order
    await deliveries.aclose()
