"""`attimo migrate` on data the previous key layout wrote (anonymous and user ids
in one space, `{u:<id>}`; messages naming their person bare): anonymous
visitors' keys move to `{a:<id>}`, known people's stay, queued messages move to
their new person's shard and are still sent, dead letters are renamed, and a
second run changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.catalog.model import CatalogHolder
from engine.events import Event
from engine.followups.due_queue import DueQueue, shard_of
from engine.followups.message import Message
from engine.ingest.pipeline import Pipeline
from engine.store.keys import Keys
from engine.store.profiles import ProfileStore

NOW = 1_780_000_000_000
VISITOR = "0123456789abcdef01234567"  # the snippet's kind of anonymous id
APP_VISITOR = "ios-5f2c"  # an app's, named by --anonymous-pattern
LONG_USER = "u-" + "x" * 36  # 38 characters: bare and u:-prefixed, it hashes to the same shard
KEYS = Keys("mig")
SNIPPET = r"[0-9a-f]{24}"
CATALOG = "placements: [hero]\noffers: []\n"


async def write_the_old_layout(redis) -> None:
    """Before the two spaces every person's keys were {u:<id>}, which is what
    the profile store writes for a person named u:<id> today."""
    holder = CatalogHolder(compile_catalog(parse_catalog_text(CATALOG)), CATALOG)
    pipeline = Pipeline(ProfileStore(redis, KEYS, dedupe_ttl_s=86_400, profile_ttl_s=86_400), holder)
    await pipeline.apply([Event("v1", "page_view", f"u:{VISITOR}", NOW, {}, {"lang": "it"}),
                          Event("v2", "page_view", f"u:{APP_VISITOR}", NOW, {}),
                          Event("k1", "identify", "u:u-alice", NOW, {}, {"name": "Alice"})], NOW)
    queue = DueQueue(redis, KEYS)
    await queue.schedule(Message(id="m-alice", person="u-alice", channel="email", due_ms=NOW + 60_000,
                                 body={"to": "alice@example.com"}))
    await queue.schedule(Message(id="m-long", person=LONG_USER, channel="push", due_ms=NOW + 60_000))
    await redis.lpush(KEYS.dead_letters(), orjson.dumps(
        {"message": {"id": "d1", "person": "u-alice", "channel": "sms"}, "reason": "refused", "at": NOW}))


def migrate(redis_url: str, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "migrate", "--redis-url", redis_url, *extra],
                          env={"ATTIMO_KEY_PREFIX": "mig", "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


async def test_data_of_the_old_layout_lands_in_the_two_spaces(redis, redis_server):
    await write_the_old_layout(redis)
    old_alice = await redis.get(KEYS.profile("u:u-alice"))

    dry = migrate(redis_server.url, "--dry-run", "--anonymous-pattern", r"[0-9a-f]{24}|ios-[0-9a-f]+")
    assert dry["keys_moved"] == 4 and await redis.exists(KEYS.profile(f"u:{VISITOR}"))  # nothing changed
    report = migrate(redis_server.url, "--anonymous-pattern", r"[0-9a-f]{24}|ios-[0-9a-f]+")
    assert report == {"dry_run": False, "keys_moved": 4, "keys_taken": 0, "messages_moved": 2,
                      "messages_in_flight": 0, "dead_letters_renamed": 1}

    for visitor in (VISITOR, APP_VISITOR):  # profile and dedupe ids, now in the anonymous space
        assert await redis.exists(KEYS.profile(f"a:{visitor}"), KEYS.dedupe(f"a:{visitor}")) == 2
        assert not await redis.exists(KEYS.profile(f"u:{visitor}"), KEYS.dedupe(f"u:{visitor}"))
    assert await redis.get(KEYS.profile("u:u-alice")) == old_alice  # a known person's keys stay
    assert await redis.ttl(KEYS.profile(f"a:{VISITOR}")) > 0  # with their TTL

    queue = DueQueue(redis, KEYS)
    [pending] = await queue.pending_for("u:u-alice", ["email"])
    assert (pending["id"], pending["due_ms"]) == ("m-alice", NOW + 60_000)
    if shard_of("u-alice") != shard_of("u:u-alice"):
        assert not await redis.hexists(KEYS.due_messages(shard_of("u-alice")), "m-alice")
    assert shard_of(LONG_USER) == shard_of(f"u:{LONG_USER}")
    [long] = await queue.pending_for(f"u:{LONG_USER}", ["push"])  # renamed in place, not lost
    assert long["id"] == "m-long"
    claimed = await queue.claim(NOW + 60_000, 10, 1000)
    assert sorted(c.message.person for c in claimed) == sorted(["u:u-alice", f"u:{LONG_USER}"])
    [dead] = await redis.lrange(KEYS.dead_letters(), 0, -1)
    assert orjson.loads(dead)["message"]["person"] == "u:u-alice"

    again = migrate(redis_server.url, "--anonymous-pattern", r"[0-9a-f]{24}|ios-[0-9a-f]+")
    assert again == {"dry_run": False, "keys_moved": 0, "keys_taken": 0, "messages_moved": 0,
                     "messages_in_flight": 0, "dead_letters_renamed": 0}


async def test_an_anonymous_key_whose_new_name_is_taken_is_left_and_reported(redis, redis_server):
    await write_the_old_layout(redis)
    await redis.set(KEYS.profile(f"a:{VISITOR}"), b"written since the upgrade")
    report = migrate(redis_server.url, "--anonymous-pattern", SNIPPET)
    assert report["keys_taken"] == 1
    assert await redis.get(KEYS.profile(f"a:{VISITOR}")) == b"written since the upgrade"
    assert await redis.exists(KEYS.profile(f"u:{VISITOR}"))  # kept for the operator to decide
    assert await redis.exists(KEYS.profile(f"u:{APP_VISITOR}"))  # not anonymous by the default pattern


async def test_a_run_that_crashed_between_copy_and_delete_is_finished(redis, redis_server):
    await write_the_old_layout(redis)
    old, new = KEYS.profile(f"u:{VISITOR}"), KEYS.profile(f"a:{VISITOR}")
    await redis.restore(new, 0, await redis.dump(old))  # the copy was made, the delete was not
    report = migrate(redis_server.url, "--anonymous-pattern", SNIPPET)
    assert report["keys_taken"] == 0
    assert not await redis.exists(old) and await redis.exists(new)


def test_the_pattern_of_anonymous_ids_must_be_given(redis_server):
    done = subprocess.run([sys.executable, "-m", "engine.cli", "migrate", "--redis-url", redis_server.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--anonymous-pattern" in done.stderr
