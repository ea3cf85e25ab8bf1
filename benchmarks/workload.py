"""The data the decide and ingest benchmarks run on: a generated catalog of any
size over five placements, realistic people (traits plus weeks of page views and
purchases) applied through the real pipeline, and fresh event batches.

Seeding 100k people event by event would take minutes, so a few hundred
template people are applied through the pipeline (the same Lua as production)
and their stored profiles are copied to the other ids: every profile in Redis
is one the engine itself wrote."""

from __future__ import annotations

import itertools
import random

import orjson
import yaml
from redis.asyncio import Redis

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.catalog.model import CatalogHolder
from engine.catalog.windows import DAY_MS, MINUTE_MS
from engine.events import Event
from engine.ingest.pipeline import Pipeline
from engine.settings import Settings
from engine.store.client import connect
from engine.store.keys import Keys
from engine.store.profiles import ProfileStore

PLACEMENTS = [f"slot_{n}" for n in range(5)]
CATEGORIES = [f"c{n}" for n in range(10)]
PROFESSIONS = ["marketing", "sales", "founder", "engineer", "finance", "student"]
PLANS = ["free", "pro", "team"]
TEMPLATES = 500
COPY_BATCH = 2000


def person_id(index: int) -> str:
    """The same ids as benchmarks.floor_app, so both servers read the same people."""
    return f"person-{index}"


def catalog_yaml(n_offers: int) -> str:
    """`n_offers` offers spread over five placements, with every condition kind
    the grammar has: traits, behaviour in a window (count and sum), context,
    segments, score, exclusions, caps, a date range. Behaviour goes through 20
    named rules, as a real catalog reuses its rules rather than growing a new
    windowed feature per offer."""
    rules = {}
    for category in CATEGORIES:
        rules[f"interest_{category}"] = {
            "event": "page_view", "where": {"category": category}, "within": "7d", "count": {"at_least": 2},
        }
        rules[f"buyer_{category}"] = {
            "event": "purchase", "where": {"category": category}, "within": "90d",
            "sum": {"of": "amount", "above": 100},
        }
    segments = [
        {"id": "registered", "when": {"trait": "registered", "equals": True}},
        {"id": "engaged", "when": {"score": {"at_least": 20}}},
        {"id": "c1_fan", "when": {"rule": "interest_c1"}},
        {"id": "pro_regular", "when": {"all": [
            {"trait": "plan", "equals": "pro"},
            {"event": "page_view", "within": "30d", "count": {"at_least": 5}},
        ]}},
        {"id": "prospect", "when": {"not": {"segment": "registered"}}},
    ]
    offers = []
    for i in range(n_offers):
        category = CATEGORIES[i % len(CATEGORIES)]
        low_age = 18 + (i * 7) % 40
        conditions = [
            {"rule": f"interest_{category}"},
            {"all": [{"trait": "age", "between": [low_age, low_age + 12]},
                     {"trait": "profession", "in": PROFESSIONS[i % 3: i % 3 + 3]}]},
            {"all": [{"context": "category", "equals": category}, {"not": {"trait": "plan", "in": ["team"]}}]},
            {"segment": segments[i % len(segments)]["id"]},
            {"any": [{"rule": f"buyer_{category}"}, {"score": {"at_least": 30 + i % 40}}]},
            None,
        ]
        offer = {
            "id": f"offer_{i}",
            "kind": ("content", "banner", "discount")[i % 3],
            "placements": [PLACEMENTS[i % 5], PLACEMENTS[(i + 2) % 5]] if i % 4 == 0 else [PLACEMENTS[i % 5]],
            "priority": (i * 7919) % 100,
            "product_line": category,
            "content": {"title": f"Offer {i} for {category}", "cta": {"label": "See", "href": f"/{category}/{i}"}},
        }
        when = conditions[i % len(conditions)]
        if when is not None:
            offer["when"] = when
        if i % 7 == 0:
            offer["exclude"] = {"trait": "complaint", "exists": True}
        if i % 3 == 0:
            offer["cap"] = {"impressions": 5, "within": "7d"}
        if i % 11 == 0:
            offer["start"], offer["end"] = "2026-01-01", "2030-12-31"
        if i % 2 == 0:
            offer["value"] = 5 + i % 30
        offers.append(offer)
    spec = {
        "protected_traits": ["complaint", "tier"],
        "placements": {name: {"description": f"benchmark slot {name}"} for name in PLACEMENTS},
        "rules": rules,
        "segments": segments,
        "scoring": {
            "half_life": "30d",
            "events": [
                {"event": "page_view", "where": {"page_type": "pricing"}, "points": 10},
                {"event": "purchase", "points": 25},
            ],
        },
        "offers": offers,
    }
    return yaml.safe_dump(spec, sort_keys=False)


def thirty_traits(index: int) -> dict:
    """A CRM record: 30 traits, P7's profile size."""
    rng = random.Random(index)
    traits = {
        "registered": index % 2 == 0,
        "age": 18 + index % 60,
        "profession": PROFESSIONS[index % len(PROFESSIONS)],
        "plan": PLANS[index % len(PLANS)],
        "country": ("FR", "DE", "US", "IT", "ES")[index % 5],
        "first_name": f"Name{index % 997}",
        "email": f"person{index}@example.com",
        "company": f"Company {index % 313}",
        "lifetime_value": round(rng.uniform(0, 5000), 2),
        "timezone": "Europe/Paris",
    }
    for n in range(len(traits), 30):
        traits[f"crm_field_{n}"] = rng.choice((rng.randint(0, 1000), f"value-{rng.randint(0, 99)}", True))
    if index % 23 == 0:
        traits["complaint"] = "billing"
    return traits


def activity(person: str, index: int, now_ms: int, days: int, per_day: int, prefix: str = "seed") -> list[Event]:
    """`per_day` events a day over the last `days` days: page views over a few
    favourite categories, some on pricing pages, and now and then a purchase."""
    rng = random.Random(index * 31 + days)
    favourites = rng.sample(CATEGORIES, 3)
    events = [Event(f"{prefix}-{person}-traits", "identify", person, now_ms - days * DAY_MS, {},
                    thirty_traits(index))]
    for day in range(days, 0, -1):
        for n in range(per_day):
            ts = now_ms - day * DAY_MS + n * 7 * MINUTE_MS
            category = rng.choice(favourites)
            if rng.random() < 0.03:
                properties = {"category": category, "amount": rng.randint(20, 300)}
                kind = "purchase"
            else:
                page_type = "pricing" if rng.random() < 0.1 else "article"
                properties = {"category": category, "page_type": page_type, "path": f"/{category}/{n}"}
                kind = "page_view"
            events.append(Event(f"{prefix}-{person}-{day}-{n}", kind, person, ts, properties))
    return events


def production_pipeline(redis, keys: Keys, catalog_text: str) -> Pipeline:
    """The pipeline with the default TTLs, as `attimo serve` builds it."""
    catalog = compile_catalog(parse_catalog_text(catalog_text))
    store = ProfileStore(redis, keys, dedupe_ttl_s=86_400, profile_ttl_s=400 * 86_400)
    return Pipeline(store, CatalogHolder(catalog, catalog_text))


async def seed_people(redis_url: str, catalog_text: str, n_people: int, now_ms: int, *,
                      key_prefix: str = "attimo") -> None:
    """`n_people` profiles with 30 traits and two weeks of activity (8 events a
    day), written by the real pipeline for TEMPLATES people and copied to the rest."""
    keys = Keys(key_prefix)
    redis = connect(Settings(redis_url=redis_url, redis_pool_timeout_ms=5000))  # a Cluster URL works too
    try:
        pipeline = production_pipeline(redis, keys, catalog_text)
        templates = min(TEMPLATES, n_people)
        for start in range(0, templates, 50):
            # The benchmark asks for them as visitors (anonymous_id): a:<id>.
            batch = [event for index in range(start, min(start + 50, templates))
                     for event in activity(f"a:{person_id(index)}", index, now_ms, days=14, per_day=8)]
            await pipeline.apply(batch, now_ms)
        reads = redis.pipeline(transaction=False)  # one slot per person: no MGET across them
        for index in range(templates):
            reads.get(keys.profile(f"a:{person_id(index)}"))
        stored = await reads.execute()
        for start in range(templates, n_people, COPY_BATCH):
            pipe = redis.pipeline(transaction=False)
            for index in range(start, min(start + COPY_BATCH, n_people)):
                pipe.set(keys.profile(f"a:{person_id(index)}"), stored[index % templates])
            await pipe.execute()
    finally:
        await redis.aclose()


class FreshBatches:
    """Request bytes for the load generator that never repeat an event id: it
    cycles through `requests[i % len]`, so this sequence makes a new batch of
    `size` events (`people_per_batch` people, chosen at random among
    `n_people`) on every access, instead of replaying ids the server would
    count as duplicates."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str], n_people: int,
                 size: int = 20, people_per_batch: int = 20, seed: int = 7, id_field: str = "user_id"):
        self.head = "\r\n".join([
            f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
            *(f"{name}: {value}" for name, value in headers.items()),
            "Content-Type: application/json",
        ]).encode()
        self.n_people = n_people
        self.size = size
        self.people_per_batch = people_per_batch
        self.id_field = id_field
        self.counter = itertools.count()
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, _index: int) -> bytes:
        batch = next(self.counter)
        people = [person_id(self.rng.randrange(self.n_people)) for _ in range(self.people_per_batch)]
        events = []
        for n in range(self.size):
            category = CATEGORIES[(batch + n) % len(CATEGORIES)]
            events.append({
                "id": f"bench-{batch}-{n}",
                "type": "page_view",
                self.id_field: people[n % self.people_per_batch],
                "properties": {"category": category, "page_type": "article", "path": f"/{category}/{n}"},
            })
        body = orjson.dumps({"events": events})
        return self.head + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


# P7's person: 30 traits and exactly five windowed features, windows from a
# week to a quarter, counts and sums, with property filters.
P7_CATALOG = """
placements: {home_hero: {}}
rules:
  frequent_visitor: {event: page_view, within: 7d, count: {at_least: 5}}
  crm_reader: {event: page_view, where: {category: c1}, within: 90d, count: {at_least: 3}}
  pricing_shopper: {event: page_view, where: {page_type: pricing}, within: 30d, count: {at_least: 2}}
  big_spender: {event: purchase, within: 90d, sum: {of: amount, above: 500}}
  recent_buyer: {event: purchase, within: 14d, count: {at_least: 1}}
segments:
  - {id: regular, when: {rule: frequent_visitor}}
offers:
  - {id: hello, kind: content, placements: [home_hero], content: {title: hi},
     when: {any: [{rule: crm_reader}, {rule: pricing_shopper}, {rule: big_spender}, {rule: recent_buyer}]}}
"""


async def month_of_activity(redis_url: str, n_people: int, now_ms: int, *, key_prefix: str = "attimo",
                            per_day: int = 20, days: int = 30) -> None:
    """P7's population: `n_people` who each sent `per_day` events a day for
    `days` days. TEMPLATES of them go through the real pipeline (everything
    before the last day in one batch, applied two days ago so its dedupe ids
    have expired as they would have, then the last day); every key those
    people have is then DUMPed and RESTOREd under the other ids, which keeps
    Redis's own encodings: the memory is what the pipeline itself would use."""
    keys = Keys(key_prefix)
    redis = Redis.from_url(redis_url)
    try:
        pipeline = production_pipeline(redis, keys, P7_CATALOG)
        templates = min(TEMPLATES, n_people)
        last_day = now_ms - DAY_MS
        for start in range(0, templates, 20):
            month = [activity(f"u:{person_id(i)}", i, now_ms, days=days, per_day=per_day)  # known people
                     for i in range(start, min(start + 20, templates))]
            await pipeline.apply([e for events in month for e in events if e.ts < last_day], last_day - DAY_MS)
            await pipeline.apply([e for events in month for e in events if e.ts >= last_day], now_ms)
        # Only the templates' keys exist yet: one pass over the keyspace finds them all.
        names_of: dict[str, list[bytes]] = {}
        async for name in redis.scan_iter(match=f"{key_prefix}:{{u:*", count=1000):
            person = name.decode().split("{u:", 1)[1].split("}", 1)[0]
            names_of.setdefault(person, []).append(name)
        dumps = []
        for index in range(templates):
            names = names_of[person_id(index)]
            pipe = redis.pipeline(transaction=False)
            for name in names:
                pipe.dump(name)
                pipe.pttl(name)
            replies = await pipe.execute()
            dumps.append([(name.decode().split("}", 1)[1], replies[2 * n], replies[2 * n + 1])
                          for n, name in enumerate(names)])
        for start in range(templates, n_people, COPY_BATCH):
            pipe = redis.pipeline(transaction=False)
            for index in range(start, min(start + COPY_BATCH, n_people)):
                for suffix, payload, ttl in dumps[index % templates]:
                    pipe.restore(f"{key_prefix}:{{u:{person_id(index)}}}{suffix}", max(ttl, 0), payload)
            await pipe.execute()
    finally:
        await redis.aclose()
