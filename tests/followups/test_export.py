"""A person's export and erasure at the engine's level, on a single
redis-server and on a Redis Cluster (where a read or a script across slots
fails): the export reads what the pipeline, the contact and inbox stores, the
due queue and the code pools keep for a person and the visitor merged into
them; after erase_person the same read finds nothing, and no key names them."""

from __future__ import annotations

import orjson

from engine.events import CONSENT, Event
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.erase import erase_person
from engine.followups.export import export_document, read_held
from engine.followups.inbox import DeviceStore, InboxStore
from engine.followups.message import Message
from engine.store.code_pools import CodePools
from engine.store.keys import Keys
from tests.conftest import make_pipeline

NOW = 1_764_000_000_000
KEYS = Keys()
PERSON, VISITOR = "u:kx81-user", "a:kx81-visitor"
CHANNELS = ["email", "inbox", "journey", "push", "sms"]
CATALOG = """
rules:
  browsing: {event: page_view, within: 7d, count: {at_least: 1}}
"""


async def seed(redis) -> None:
    pipeline = make_pipeline(redis, CATALOG)
    await pipeline.apply([Event("v1", "page_view", VISITOR, NOW, {"path": "/"}),
                          Event("v2", CONSENT, VISITOR, NOW, {"channel": "sms", "purpose": "*", "granted": True})],
                         NOW)
    await pipeline.apply([Event("login", "identify", PERSON, NOW + 1, {},
                                {"email": "Kx81@Example.com", "phone": "+44 20 7946 0000"}, merge_from=VISITOR)],
                         NOW + 1)
    await ContactStore(redis).set_consent(PERSON, "email", "*", False, source="unsubscribe link")
    await DeviceStore(redis).register(PERSON, "apns-kx81", "ios", NOW)
    await InboxStore(redis).add(Message(id="in-1", person=PERSON, channel="inbox", due_ms=NOW, template="hello",
                                        body={"title": "Hi", "text": "Welcome"}), NOW)
    queue = DueQueue(redis)
    await queue.schedule(Message(id="q-1", person=PERSON, channel="push", due_ms=NOW + 3_600_000,
                                 template="t", body={"title": "Later"}))
    await queue.schedule(Message(id="q-2", person=VISITOR, channel="journey", due_ms=NOW + 3_600_000,
                                 template="welcome"))
    await redis.hset(KEYS.exposures(PERSON), mapping={"e:exp1": f"arm_b|{NOW}|0", "h:offer1": f"c|{NOW}|0",
                                                      "c>e:exp1": "1", "rv>e:exp1": "12.5"})
    await redis.lpush(KEYS.dead_letters(), orjson.dumps({"message": {"id": "dl-1", "person": PERSON},
                                                         "reason": "refused", "at": NOW}))
    pools = CodePools(redis, KEYS)
    await pools.upload("spring", ["SPRING-1", "SPRING-2"])
    assert await pools.give("spring", PERSON) is not None


async def test_the_export_reads_everything_kept_and_erasure_leaves_nothing(redis):
    await seed(redis)
    catalog = make_pipeline(redis, CATALOG).catalogs.current
    queue = DueQueue(redis)
    held = await read_held(redis, KEYS, queue, PERSON, CHANNELS, ["spring"])
    doc = export_document(catalog, held, NOW + 2)
    assert doc["merged_ids"] == [VISITOR]
    assert doc["profile"]["traits"]["email"] == "Kx81@Example.com"
    [ring] = doc["profile"]["counters"].values()
    assert ring["event"] == "page_view" and ring["total"] == 1  # the visitor's page, merged in
    assert doc["consent"]["channels"]["email"]["*"]["granted"] is False
    assert [(h["channel"], h["granted"], h["source"]) for h in doc["consent"]["history"]] == [
        ("sms", True, "event"), ("email", False, "unsubscribe link")]
    assert doc["devices"] == [{"token": "apns-kx81", "platform": "ios", "registered": doc["devices"][0]["registered"]}]
    assert [m["id"] for m in doc["inbox"]] == ["in-1"]
    assert [(m["id"], m["person"]) for m in doc["messages"]["pending"]] == [("q-1", PERSON), ("q-2", VISITOR)]
    assert doc["messages"]["pending"][0]["body"] == {"title": "Later"}
    assert [d["message"]["id"] for d in doc["messages"]["dead_letters"]] == ["dl-1"]
    assert doc["experiments"] == {"exp1": {"arm": "arm_b", "at": doc["experiments"]["exp1"]["at"],
                                           "converted": True, "clicked": False, "unsubscribed": False,
                                           "revenue": 12.5}}
    assert doc["holdouts"]["offer1"]["group"] == "held_out"
    assert doc["discount_codes"]["spring"] in {"SPRING-1", "SPRING-2"}
    assert doc["suppression"] == {"person": False, "email": {"address": "kx81@example.com", "suppressed": False},
                                  "sms": {"address": "+442079460000", "suppressed": False}}
    assert not held.is_empty()

    erased = await erase_person(redis, KEYS, queue, PERSON, CHANNELS, CodePools(redis, KEYS), ["spring"])
    assert (erased["cancelled"], erased["dead_letters"], erased["codes"]) == (2, 1, 1)
    assert (await read_held(redis, KEYS, queue, PERSON, CHANNELS, ["spring"])).is_empty()
    assert (await read_held(redis, KEYS, queue, VISITOR, CHANNELS, ["spring"])).is_empty()
    assert [key async for key in redis.scan_iter(match="*kx81*")] == []
    for value in await redis.hvals(KEYS.pool_owners("spring")):
        assert b"kx81" not in value
