"""The batch pipeline against a real Redis: dedupe, windows at their edges,
traits, score, segments, merges, TTLs and bounded state."""

import asyncio

import msgspec
import pytest
from redis.crc import key_slot

from engine.catalog.windows import DAY_MS, MINUTE_MS
from engine.events import CONSENT, Event
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.erase import erase_person
from engine.followups.kpis import KpiStore
from engine.followups.transitions import held_out
from engine.ingest.pipeline import PRUNE_EVERY, event_id_hash
from engine.policy import consent_given
from engine.profile import decode_profile
from engine.store.keys import Keys
from tests.conftest import make_pipeline

NOW = 1_764_000_000_000
KEYS = Keys()

CATALOG = """
segments:
  - id: crm_fan
    when: {event: page_view, where: {category: crm}, within: 7d, count: {at_least: 3}}
  - id: registered
    when: {trait: registered, equals: true}
scoring:
  half_life: 10d
  events:
    - {event: download, points: 10}
rules:
  watched: {event: video, within: 30d, sum: {of: seconds, above: 100}}
  recent: {event: page_view, within: 30m}
"""


def page_view(eid, person="p1", ts=NOW, category="crm", **extra):
    return Event(eid, "page_view", person, ts, {"category": category, **extra})


async def profile_of(redis, person="p1"):
    return decode_profile(await redis.get(KEYS.profile(person)))


def feature(pipeline, event_type, within_days):
    catalog = pipeline.catalogs.current
    return next(f for f in catalog.features.values()
                if f.event_type == event_type and f.length >= within_days and f.resolution_ms == DAY_MS)


async def test_same_batch_five_times_changes_the_profile_once(redis):
    pipeline = make_pipeline(redis, CATALOG)
    batch = [page_view(f"e{i}") for i in range(3)] + [
        Event("t1", "identify", "p1", NOW, {}, {"registered": True, "age": 30})]
    results = [await pipeline.apply(batch, NOW + i) for i in range(5)]
    assert [(r.accepted, r.duplicates) for r in results] == [(4, 0)] + [(0, 4)] * 4
    profile = await profile_of(redis)
    crm = next(iter(pipeline.catalogs.current.features.values()))
    assert profile.w[crm.fid][1:] == [3]
    assert profile.v == 1
    assert profile.t == {"registered": True, "age": 30}
    assert await redis.zcard(KEYS.dedupe("p1")) == 4


async def test_a_duplicate_inside_one_batch_counts_once(redis):
    pipeline = make_pipeline(redis, CATALOG)
    result = await pipeline.apply([page_view("same"), page_view("same")], NOW)
    assert (result.accepted, result.duplicates) == (1, 1)


async def test_an_event_just_inside_and_just_outside_a_7_day_window(redis):
    pipeline = make_pipeline(redis, CATALOG)
    catalog = pipeline.catalogs.current
    start_of_today = NOW // DAY_MS * DAY_MS
    inside = start_of_today - 6 * DAY_MS  # first ms of the oldest day inside 7d
    outside = inside - 1  # last ms of the day before
    await pipeline.apply([page_view("in1", ts=inside), page_view("in2", ts=inside),
                          page_view("out", ts=outside)], NOW)
    profile = await profile_of(redis)
    facts = catalog.facts(profile, {}, NOW)
    assert not facts.in_segment("crm_fan")  # 2 inside, the third is outside
    await pipeline.apply([page_view("in3", ts=inside + 5)], NOW)
    facts = catalog.facts(await profile_of(redis), {}, NOW)
    assert facts.in_segment("crm_fan")
    # A day later the oldest day slides out.
    assert not catalog.facts(await profile_of(redis), {}, NOW + DAY_MS).in_segment("crm_fan")


async def test_minute_window_edges(redis):
    pipeline = make_pipeline(redis, CATALOG)
    catalog = pipeline.catalogs.current
    recent = catalog.rules["recent"]
    minute_start = NOW // MINUTE_MS * MINUTE_MS
    await pipeline.apply([page_view("old", ts=minute_start - 29 * MINUTE_MS - 1)], NOW)
    assert not recent(catalog.facts(await profile_of(redis), {}, NOW))
    await pipeline.apply([page_view("edge", ts=minute_start - 29 * MINUTE_MS)], NOW)
    assert recent(catalog.facts(await profile_of(redis), {}, NOW))


async def test_sums_of_a_numeric_property(redis):
    pipeline = make_pipeline(redis, CATALOG)
    catalog = pipeline.catalogs.current
    watched = catalog.rules["watched"]
    video = [Event(f"v{i}", "video", "p1", NOW - i * DAY_MS, {"seconds": 40}) for i in range(2)]
    video.append(Event("v-bad", "video", "p1", NOW, {"seconds": "lots"}))  # not a number: ignored
    await pipeline.apply(video, NOW)
    assert not watched(catalog.facts(await profile_of(redis), {}, NOW))
    await pipeline.apply([Event("v9", "video", "p1", NOW, {"seconds": 20.5})], NOW)
    assert watched(catalog.facts(await profile_of(redis), {}, NOW))


async def test_rings_stay_bounded_by_their_longest_window(redis):
    pipeline = make_pipeline(redis, CATALOG)
    crm = feature(pipeline, "page_view", 7)
    events = [page_view(f"e{d}", ts=NOW - d * DAY_MS) for d in range(40)]
    await pipeline.apply(events, NOW)
    ring = (await profile_of(redis)).w[crm.fid]
    assert len(ring) - 1 <= crm.length
    assert ring[1:] == [1] * crm.length


async def test_rings_the_catalog_no_longer_needs_are_dropped_on_a_pruning_write(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("e1")], NOW)
    assert len((await profile_of(redis)).w) == 2  # crm_fan ring + the 30m ring
    slimmer = make_pipeline(redis, "segments: [{id: x, when: {trait: a, equals: 1}}]")
    # One batch in PRUNE_EVERY prunes, chosen by its first event id's hash.
    ids = (f"e{n}" for n in range(2, 1000))
    pruning = next(i for i in ids if event_id_hash(i)[0] % PRUNE_EVERY == 0)
    skipping = next(i for i in ids if event_id_hash(i)[0] % PRUNE_EVERY != 0)
    await slimmer.apply([page_view(skipping)], NOW)
    assert len((await profile_of(redis)).w) == 2
    await slimmer.apply([page_view(pruning)], NOW)
    assert (await profile_of(redis)).w == {}


async def test_a_pruning_write_keeps_the_rings_the_catalog_still_has(redis):
    """The scripts find each ring in the catalog's feature table by its id."""
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("e1")], NOW)
    before = (await profile_of(redis)).w
    assert len(before) == 2
    table = pipeline.catalogs.current.feature_table.decode()
    assert all(f",{fid}:" in table for fid in before)
    pruning = next(i for i in (f"p{n}" for n in range(1000)) if event_id_hash(i)[0] % PRUNE_EVERY == 0)
    await pipeline.apply([page_view(pruning)], NOW)
    after = (await profile_of(redis)).w
    assert after.keys() == before.keys()
    assert sum(sum(ring[1:]) for ring in after.values()) == sum(sum(ring[1:]) for ring in before.values()) + 2


async def test_the_scripts_match_ring_ids_with_lua_pattern_characters_as_text(redis):
    """Feature ids are base64url: "-" is magic in Lua patterns, so a lookup by
    pattern would keep or drop the wrong rings. Here the table names only
    "x-y_z"; "x%y" and "xy_z" are not in it and go."""
    day = NOW // DAY_MS
    rings = {"x-y_z": [day, 1], "x%y": [day, 1], "xy_z": [day, 1]}
    await redis.set(KEYS.profile("p1"), msgspec.msgpack.encode({"t": {}, "w": rings, "v": 1}))
    store = make_pipeline(redis, CATALOG).store
    params = msgspec.msgpack.encode([NOW, store.dedupe_ttl_ms, store.profile_ttl_ms, 0, 30 * MINUTE_MS, 0])
    ops = msgspec.msgpack.encode([[NOW, False, False, [], 0, 1]])
    call = store.apply_call("p1", params, ops, f",x-y_z:{DAY_MS}:7,".encode(), [event_id_hash("lua-1")])
    assert (await store.run([call]))[0][0] == 1
    assert (await profile_of(redis)).w == {"x-y_z": [day, 1]}


def test_the_feature_table_names_ids_with_lua_pattern_characters_as_text():
    from engine.catalog.compile import feature_table
    assert feature_table({"a-b_c%d": (60_000, 30), "x": (86_400_000, 7)}) == b",a-b_c%d:60000:30,x:86400000:7,"


async def test_traits_set_and_null_removes(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([Event("t1", "identify", "p1", NOW, {}, {"a": 1, "b": "x", "c": [1, 2]})], NOW)
    await pipeline.apply([Event("t2", "identify", "p1", NOW, {}, {"a": None, "b": "y"})], NOW)
    assert (await profile_of(redis)).t == {"b": "y", "c": [1, 2]}


async def test_score_points_decay_with_the_half_life(redis):
    pipeline = make_pipeline(redis, CATALOG)
    catalog = pipeline.catalogs.current
    await pipeline.apply([Event("d1", "download", "p1", NOW, {})], NOW)
    await pipeline.apply([Event("d2", "download", "p1", NOW + 10 * DAY_MS, {})], NOW + 10 * DAY_MS)
    profile = await profile_of(redis)
    assert catalog.scoring.score(profile, NOW + 10 * DAY_MS) == pytest.approx(15.0)
    assert catalog.scoring.score(profile, NOW + 20 * DAY_MS) == pytest.approx(7.5)


async def test_segment_membership_is_recorded_and_changes_reported(redis):
    pipeline = make_pipeline(redis, CATALOG)
    result = await pipeline.apply([page_view(f"e{i}") for i in range(3)], NOW)
    assert result.segment_changes == {"p1": ([], ["crm_fan"])}
    assert (await profile_of(redis)).g == ["crm_fan"]
    result = await pipeline.apply([Event("t", "identify", "p1", NOW, {}, {"registered": True})], NOW)
    assert result.segment_changes == {"p1": (["crm_fan"], ["crm_fan", "registered"])}
    result = await pipeline.apply([page_view("e9")], NOW)
    assert result.segment_changes == {}


async def test_a_batch_retried_after_a_crash_before_its_segments_were_written_records_them(redis):
    """The profile was written but the process died before the segment write;
    the retried batch is all duplicates and must still record the segment."""
    pipeline = make_pipeline(redis, CATALOG)
    batch = [page_view(f"e{i}") for i in range(3)]
    await pipeline.apply(batch, NOW)
    key = KEYS.profile("p1")
    stored = msgspec.msgpack.decode(await redis.get(key))
    stored["g"] = []  # as it was before the segment write
    await redis.set(key, msgspec.msgpack.encode(stored), keepttl=True)
    result = await pipeline.apply(batch, NOW)
    assert result.accepted == 0 and result.duplicates == 3
    assert (await profile_of(redis)).g == ["crm_fan"]


async def test_dedupe_forgets_ids_after_its_ttl(redis):
    pipeline = make_pipeline(redis, CATALOG, dedupe_ttl_s=3600)
    await pipeline.apply([page_view("e1")], NOW)
    assert (await pipeline.apply([page_view("e1")], NOW + 3_599_000)).duplicates == 1
    assert (await pipeline.apply([page_view("e1")], NOW + 3_601_000)).accepted == 1


async def test_every_key_has_a_ttl(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("e1")], NOW)
    assert 0 < await redis.pttl(KEYS.profile("p1")) <= 400 * DAY_MS
    assert 0 < await redis.pttl(KEYS.dedupe("p1")) <= DAY_MS


async def test_anonymous_history_merges_into_the_known_person_once(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view(f"a{i}", person="a:anon-1") for i in range(2)]
                         + [Event("at", "identify", "a:anon-1", NOW, {}, {"lang": "it", "age": 20})], NOW)
    await pipeline.apply([Event("kt", "identify", "u:u-1", NOW, {}, {"age": 40})], NOW)
    login = Event("login", "page_view", "u:u-1", NOW, {"category": "crm"}, merge_from="a:anon-1")
    first = await pipeline.apply([login], NOW)
    assert first.merged == 1
    profile = await profile_of(redis, "u:u-1")
    crm = feature(pipeline, "page_view", 7)
    assert profile.w[crm.fid][1:] == [3]  # 2 anonymous + the login page view
    assert profile.t == {"age": 40, "lang": "it"}  # the known person's traits win
    assert await redis.exists(KEYS.profile("a:anon-1"), KEYS.merge_staging("a:anon-1")) == 0
    again = await pipeline.apply([login, Event("next", "page_view", "u:u-1", NOW, {}, merge_from="a:anon-1")], NOW)
    assert again.merged == 0
    assert (await profile_of(redis, "u:u-1")).w[crm.fid][1:] == [3]


async def test_the_visitors_events_in_the_batch_that_merges_them_reach_the_known_person(redis):
    """The anonymous profile is staged for the merge after this batch's writes
    to it: the page views sent in the same batch as the login are merged too,
    and no stray anonymous profile is left."""
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("v0", person="a:anon-9")], NOW)
    login = Event("login", "identify", "u:u-9", NOW, {}, {"lang": "it"}, merge_from="a:anon-9")
    result = await pipeline.apply([page_view("v1", person="a:anon-9"), page_view("v2", person="a:anon-9"), login],
                                  NOW)
    assert (result.accepted, result.merged) == (3, 1)
    crm = feature(pipeline, "page_view", 7)
    assert (await profile_of(redis, "u:u-9")).w[crm.fid][1:] == [3]
    assert await redis.exists(KEYS.profile("a:anon-9"), KEYS.merge_staging("a:anon-9")) == 0


async def test_thousands_of_events_of_one_person_in_one_batch_are_all_recorded(redis):
    """A worker's batch may hold many records of one person: their ids go into
    the dedupe set in chunks (Lua's unpack has a bounded stack), all of them."""
    pipeline = make_pipeline(redis, CATALOG)
    result = await pipeline.apply([page_view(f"many{i}") for i in range(5000)], NOW)
    assert (result.accepted, result.duplicates) == (5000, 0)
    assert await redis.zcard(KEYS.dedupe("p1")) == 5000
    crm = feature(pipeline, "page_view", 7)
    assert (await profile_of(redis)).w[crm.fid][1:] == [5000]


async def test_concurrent_batches_for_one_person_lose_no_update(redis):
    """Two processes apply to the same person at once: both read the same
    profile, one write lands and the other is refused and applied again in
    Redis. Every page view is counted, and every id is recorded once."""
    first, second = make_pipeline(redis, CATALOG), make_pipeline(redis, CATALOG)
    await first.apply([page_view("seed")], NOW)
    conflicts = 0
    for round_ in range(5):
        results = await asyncio.gather(
            first.apply([page_view(f"a{round_}"), page_view(f"b{round_}")], NOW),
            second.apply([page_view(f"c{round_}"), page_view("seed")], NOW))
        assert [(r.accepted, r.duplicates) for r in results] == [(2, 0), (1, 1)]
        conflicts += results[1].conflicts
    if getattr(redis, "pipelined", None) is not None:
        # One pipelined connection answers in order: the second read always
        # comes before the first write (the cluster's client may interleave
        # either way, and then the counts above are what must hold).
        assert conflicts == 5
    crm = feature(pipeline=first, event_type="page_view", within_days=7)
    profile = await profile_of(redis)
    assert profile.w[crm.fid][1:] == [1 + 5 * 3]
    assert profile.v == 1 + 5 * 2
    assert await redis.zcard(KEYS.dedupe("p1")) == 1 + 5 * 3


async def test_segments_are_recorded_from_the_merged_history(redis):
    """Three CRM views as a visitor, then a login with an unrelated event: the
    known person is a crm_fan by the merged history, recorded in the same batch."""
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view(f"v{i}", person="a:anon-7") for i in range(3)], NOW)
    assert (await profile_of(redis, "a:anon-7")).g == ["crm_fan"]
    login = Event("login", "identify", "u:u-7", NOW, {}, {"lang": "it"}, merge_from="a:anon-7")
    result = await pipeline.apply([login], NOW)
    assert result.merged == 1 and result.segment_changes == {"u:u-7": ([], ["crm_fan"])}
    assert (await profile_of(redis, "u:u-7")).g == ["crm_fan"]


async def test_consent_given_before_logging_in_follows_the_person_once(redis):
    pipeline = make_pipeline(redis, CATALOG)
    contacts = ContactStore(redis)
    consent = Event("c1", CONSENT, "a:anon-9", NOW, {"channel": "email", "purpose": "*", "granted": True})
    await pipeline.apply([Event("v1", "page_view", "a:anon-9", NOW, {}), consent], NOW)
    assert consent_given(await contacts.load("a:anon-9"), "email", "marketing") is True
    login = Event("login", "identify", "u:u-9", NOW + 1, {}, {"email": "zoe@example.com"}, merge_from="a:anon-9")
    await pipeline.apply([login], NOW + 1)
    assert consent_given(await contacts.load("u:u-9"), "email", "marketing") is True
    assert await redis.exists(KEYS.contact("a:anon-9")) == 0
    # Later the person unsubscribes; the next batch from the same browser still
    # names the visitor, but there is nothing left to fold in again.
    await contacts.set_consent("u:u-9", "email", "*", False)
    await pipeline.apply([Event("next", "page_view", "u:u-9", NOW + 2, {}, merge_from="a:anon-9")], NOW + 2)
    assert consent_given(await contacts.load("u:u-9"), "email", "marketing") is False


async def test_an_opt_in_replayed_after_an_unsubscribe_does_not_undo_it(redis):
    """A browser resends its batch (same ids) after the person unsubscribed from
    the email's link: the old opt-in, applied again for crash safety, is older
    than the unsubscribe and changes nothing; a new opt-in later counts."""
    pipeline = make_pipeline(redis, CATALOG)
    contacts = ContactStore(redis)

    def consent(eid: str, ts: int, granted: bool, purpose: str = "marketing") -> Event:
        return Event(eid, CONSENT, "u-10", ts, {"channel": "email", "purpose": purpose, "granted": granted})

    opt_in = [Event("v1", "page_view", "u-10", NOW, {}), consent("c1", NOW, True)]
    await pipeline.apply(opt_in, NOW)
    assert consent_given(await contacts.load("u-10"), "email", "marketing") is True
    await contacts.set_consent("u-10", "email", "*", False)  # GET /v1/unsubscribe
    await pipeline.apply(opt_in, NOW + 60_000)  # the same batch again
    await pipeline.apply([consent("c2", NOW - 1, True)], NOW + 60_000)  # an older choice sent late
    assert consent_given(await contacts.load("u-10"), "email", "marketing") is False
    await pipeline.apply([consent("c3", NOW + 120_000, True)], NOW + 120_000)  # opted in again, later
    assert consent_given(await contacts.load("u-10"), "email", "marketing") is True
    await pipeline.apply([consent("c4", NOW + 180_000, False, "*")], NOW + 180_000)
    await pipeline.apply([consent("c3", NOW + 120_000, True)], NOW + 190_000)  # c3 replayed
    assert consent_given(await contacts.load("u-10"), "email", "marketing") is False


async def test_a_merge_interrupted_after_staging_completes_once_on_retry(redis):
    pipeline = make_pipeline(redis, CATALOG)
    store = pipeline.store
    await pipeline.apply([page_view("a1", person="a:anon-2")], NOW)
    # The process died after taking the anonymous profile out, before merging it.
    (staged,) = await store.run([store.stage_call("a:anon-2", "deadbeef")])
    assert staged.startswith(b"deadbeef|")
    assert not await redis.exists(KEYS.profile("a:anon-2"))
    login = Event("login", "identify", "u:u-2", NOW, {}, {"x": 1}, merge_from="a:anon-2")
    assert (await pipeline.apply([login], NOW)).merged == 1
    # And if it died after merging but before forgetting the staged copy: merged once.
    await redis.set(KEYS.merge_staging("a:anon-2"), staged)
    assert (await pipeline.apply([Event("l2", "identify", "u:u-2", NOW, {}, merge_from="a:anon-2")], NOW)).merged == 0
    crm = feature(pipeline, "page_view", 7)
    assert (await profile_of(redis, "u:u-2")).w[crm.fid][1:] == [1]


async def test_a_persons_keys_share_one_cluster_slot(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("e1", person="user@example.com")], NOW)
    keys = [KEYS.profile("user@example.com"), KEYS.dedupe("user@example.com"),
            KEYS.merge_staging("user@example.com")]
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_stored_ids_are_8_byte_hashes(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("an-event-id-that-is-rather-long-0001")], NOW)
    (member,) = await redis.zrange(KEYS.dedupe("p1"), 0, -1)
    assert member == event_id_hash("an-event-id-that-is-rather-long-0001") and len(member) == 8


async def test_scripts_are_reloaded_after_a_script_flush(redis):
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([page_view("e1")], NOW)
    await redis.script_flush()
    assert (await pipeline.apply([page_view("e2")], NOW)).accepted == 1


def test_profiles_decode_the_empty_tables_lua_writes():
    raw = msgspec.msgpack.encode({"t": [], "w": [], "v": 1})
    profile = decode_profile(raw)
    assert profile.t == {} and profile.w == {} and profile.v == 1


KPI_CATALOG = CATALOG + """
placements: [hero]
offers:
  - {id: deal, kind: discount, placements: [hero], value: 20, content: {title: Deal, code: DEAL20}}
templates:
  promo: {subject: "Deal", text: "Ten percent off."}
journeys:
  - id: promo
    trigger: {event: signup}
    holdout: 50
    steps:
      - send: {channel: inbox, template: promo}
"""


async def test_kpis_follow_entries_and_purchases_once(redis):
    """In the pipeline (inline or in the Kafka worker): entries and hold-outs,
    converters and revenue per group; a redelivered batch changes none of them.
    An email_open a client sends as an event counts no open: only the signed
    pixel does (tests/followups/test_kpis.py)."""
    pipeline = make_pipeline(redis, KPI_CATALOG)
    people = [f"k{n}" for n in range(12)]
    journey = pipeline.catalogs.current.journeys.by_id["promo"]
    control = [p for p in people if held_out(p, journey)]
    treated = [p for p in people if p not in control]
    signups = [Event(f"{p}-s", "signup", p, NOW, {}) for p in people]
    engagement = [Event(f"open:m-{p}", "email_open", p, NOW, {"message_id": f"m-{p}", "journey": "promo"})
                  for p in treated[:2]]
    # As a server sends them (trusted): a browser's purchase would be counted apart.
    engagement.append(Event("imp-1", "impression", treated[0], NOW, {"offer": "deal"}, trusted=True))
    purchases = [Event(f"{treated[0]}-b", "purchase", treated[0], NOW + 1, {"revenue": 40}, trusted=True),
                 Event(f"{control[0]}-b", "purchase", control[0], NOW + 1, {"total": 10, "code": "DEAL20"},
                       trusted=True)]
    for _ in range(2):  # the second time as a redelivery
        await pipeline.apply(signups, NOW)
        await pipeline.apply(engagement + purchases, NOW + 1)
    report = await KpiStore(redis, KEYS).report(["promo"], ["email", "inbox"], ["deal"])
    deal = report["offers"]["deal"]
    assert (deal["impressions"], deal["converted"], deal["redeemed"]) == (1, 1, 1)
    assert (deal["revenue"], deal["discount_cost"], deal["roi"]) == (50.0, 2.0, 24.0)
    promo = report["journeys"]["promo"]
    assert (promo["entered"], promo["held_out"]) == (len(treated), len(control))
    assert (promo["opened"], promo["converted"], promo["converted_control"]) == (0, 1, 1)
    assert (promo["revenue"], promo["revenue_control"]) == (40.0, 10.0)
    assert report["channels"]["email"]["opened"] == 0


async def test_a_servers_bounce_or_complaint_suppresses_the_address_and_a_browsers_does_not(redis):
    pipeline = make_pipeline(redis, CATALOG)
    events = [
        Event("b1", "bounce", "u:ana", NOW, {"address": "Ana <ANA@example.com>"}, trusted=True),
        Event("b2", "complaint", "u:bo", NOW, {"channel": "sms", "address": "+39 333 111 2222"}, trusted=True),
        Event("b3", "bounce", "a:evil", NOW, {"address": "ceo@example.com"}),  # from a browser: ignored
        Event("b4", "bounce", "u:cy", NOW, {"address": "not an address"}, trusted=True),  # nothing to suppress
    ]
    await pipeline.apply(events, NOW)
    suppressed = {member.decode() for member in await redis.smembers(Keys().suppressed())}
    assert suppressed == {"email:ana@example.com", "sms:+393331112222"}


async def test_erasing_a_known_person_erases_the_anonymous_ids_merged_into_them(redis):
    pipeline = make_pipeline(redis, CATALOG)
    before = [page_view(f"e{i}", person="a:anon-e") for i in range(2)]
    before.append(Event("ce", CONSENT, "a:anon-e", NOW, {"channel": "sms", "purpose": "*", "granted": True}))
    await pipeline.apply(before, NOW)
    await pipeline.apply([Event("login-e", "identify", "u:u-e", NOW + 1, {}, {"email": "e@example.com"},
                                merge_from="a:anon-e")], NOW + 1)
    assert await redis.exists(KEYS.dedupe("a:anon-e")) == 1  # the visitor's event ids outlive the merge
    erased = await erase_person(redis, KEYS, DueQueue(redis), "u:u-e", [])
    for person in ("a:anon-e", "u:u-e"):
        left = [key for key in KEYS.of_person(person) if await redis.exists(key)]
        assert left == [], person
    assert erased["keys"] >= 3
