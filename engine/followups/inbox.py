"""The in-app inbox and a person's push devices. The inbox is one JSON list per
person (newest first, capped, each message with its expiry and read/dismissed
flags) changed in optimistic transactions; devices are a hash of push token ->
platform. The scheduler's `inbox` channel writes here, `push` reads the tokens."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from engine.errors import StoreContention
from engine.followups.message import Message
from engine.store.client import MAX_OPTIMISTIC_ATTEMPTS, as_dict, run_commands
from engine.store.coalesce import Coalesced
from engine.store.keys import CONTACT_STATE_TTL_S, DEVICES_MAX, INBOX_MAX, Keys

DEFAULT_EXPIRES_MS = 30 * 86_400_000


class InboxStore:
    def __init__(self, redis: Redis, keys: Keys | None = None):
        self.redis = redis
        self.keys = keys or Keys()

    async def _change(self, person: str, now_ms: int, change: Callable[[list], object]) -> object:
        key = self.keys.inbox(person)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_OPTIMISTIC_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    items = [m for m in orjson.loads(raw) if m["expires"] > now_ms] if raw else []
                    result = change(items)
                    pipe.multi()
                    if items:
                        ttl_ms = max(m["expires"] for m in items) - now_ms
                        pipe.set(key, orjson.dumps(items), px=max(ttl_ms, 1))
                    else:
                        pipe.delete(key)
                    await pipe.execute()
                    return result
                except WatchError:
                    continue
            raise StoreContention(f"{key} kept changing: gave up after {MAX_OPTIMISTIC_ATTEMPTS} attempts")

    async def add(self, message: Message, now_ms: int) -> bool:
        """Deliver one message; the same message id twice is one message."""
        body = message.body

        def change(items: list) -> bool:
            if any(m["id"] == message.id for m in items):
                return False
            items.insert(0, {
                "id": message.id, "template": message.template, "title": body.get("title", ""),
                "text": body.get("text", ""), **({"html": body["html"]} if body.get("html") else {}),
                "at": now_ms, "expires": now_ms + int(body.get("expires_ms") or DEFAULT_EXPIRES_MS),
                "read": False, "dismissed": False})
            del items[INBOX_MAX:]
            return True

        return bool(await self._change(message.person, now_ms, change))

    async def messages(self, person: str, now_ms: int) -> list[dict]:
        """What the app shows: unexpired, not dismissed, newest first."""
        raw = await self.redis.get(self.keys.inbox(person))
        items = orjson.loads(raw) if raw else []
        return [m for m in items if m["expires"] > now_ms and not m["dismissed"]]

    async def mark(self, person: str, message_id: str, flag: str, now_ms: int) -> bool:
        """flag is read or dismissed; False when no such message (or expired)."""

        def change(items: list) -> bool:
            for item in items:
                if item["id"] == message_id:
                    item[flag] = True
                    return True
            return False

        return bool(await self._change(person, now_ms, change))


class DeviceStore:
    def __init__(self, redis: Redis, keys: Keys | None = None):
        self.redis = redis
        self.keys = keys or Keys()
        # Push sends running at once read their people's devices in one round
        # trip: one read each cost a pooled connection and a reply of its own,
        # the largest part of a push's Redis cost (benchmarks/README.md, P9).
        self._reads = Coalesced(self.tokens_many)

    async def register(self, person: str, token: str, platform: str, now_ms: int) -> int:
        """Add or refresh a push token; the oldest go past DEVICES_MAX. Returns the count."""
        key = self.keys.devices(person)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, token, orjson.dumps({"platform": platform, "at": now_ms}))
        pipe.expire(key, CONTACT_STATE_TTL_S)
        pipe.hgetall(key)
        devices = (await pipe.execute())[-1]
        if len(devices) > DEVICES_MAX:
            by_age = sorted(devices, key=lambda t: orjson.loads(devices[t])["at"])
            await self.redis.hdel(key, *by_age[: len(devices) - DEVICES_MAX])
        return min(len(devices), DEVICES_MAX)

    async def tokens(self, person: str) -> list[dict]:
        return await self._reads(person)

    async def tokens_many(self, people: list[str]) -> list[list[dict]]:
        """Each person's push tokens, oldest token name first, in one round trip."""
        replies = await run_commands(self.redis, [("HGETALL", self.keys.devices(person)) for person in people])
        return [[{"token": t.decode(), **orjson.loads(v)} for t, v in sorted(as_dict(devices).items())]
                for devices in replies]

    async def remove(self, person: str, token: str) -> bool:
        return bool(await self.redis.hdel(self.keys.devices(person), token))
