"""Keeps every serving process on the same catalog, and keeps every catalog ever
published. The catalog in force is published to Redis (source text, digest,
version number); each process polls the digest and recompiles when it changes.
Each publish is a numbered version with who published it, when and why, so a
console can show the history, a diff and roll back, and a journey run can keep
the version it entered with. A file given at start-up is published only when
it differs from the file published last, so a restarted worker never rolls back
a catalog an operator posted since."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import time
from collections import OrderedDict

import orjson

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.catalog.model import Catalog, CatalogHolder
from engine.clock import every
from engine.errors import CatalogError
from engine.store.keys import CATALOG_VERSIONS_KEPT, Keys

log = logging.getLogger("attimo.catalog")
COMPILED_KEPT = 4  # old versions compiled in one process (journey runs that entered them)
MESSAGE_MAX = 500

# KEYS: counter, versions, texts, source, version. ARGV: text, digest, meta JSON
# (without its number), "1" when from the file, versions kept. Returns the number.
PUBLISH = r"""
local n = redis.call('INCR', KEYS[1])
local meta = cjson.decode(ARGV[3])
meta['n'] = n
redis.call('HSET', KEYS[2], n, cjson.encode(meta))
redis.call('HSET', KEYS[3], n, ARGV[1])
local old = n - tonumber(ARGV[5])
if old > 0 then
  redis.call('HDEL', KEYS[2], old)
  redis.call('HDEL', KEYS[3], old)
end
redis.call('SET', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[5], 'digest', ARGV[2], 'n', n)
if ARGV[4] == '1' then redis.call('HSET', KEYS[5], 'file_digest', ARGV[2]) end
return n
"""


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def compile_text(text: str, source: str) -> Catalog:
    return compile_catalog(parse_catalog_text(text, source), source)


async def compile_off_loop(text: str, source: str) -> Catalog:
    """Compile in a thread: a catalog of thousands of offers takes seconds, and the
    event loop keeps answering decides meanwhile (slower, never stalled)."""
    return await asyncio.to_thread(compile_text, text, source)


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        old_name, new_name))


class CatalogStore:
    def __init__(self, redis, keys: Keys, holder: CatalogHolder):
        self.redis = redis
        self.keys = keys
        self.holder = holder
        self.digest = text_digest(holder.source_text)
        self._publish = redis.register_script(PUBLISH)
        self._compiled: OrderedDict[int, Catalog | None] = OrderedDict()

    async def publish(self, text: str, *, from_file: bool = False, author: str = "", message: str = "") -> Catalog:
        """Validate, compile, swap in here, and publish for the other processes
        as a new version."""
        catalog = await compile_off_loop(text, "posted catalog" if not from_file else "catalog file")
        digest = text_digest(text)
        meta = {"digest": digest, "author": author or ("catalog file" if from_file else ""),
                "message": message[:MESSAGE_MAX], "at": int(time.time() * 1000), "offers": len(catalog.offers),
                "segments": len(catalog.segments), "journeys": len(catalog.journeys.by_id)}
        keys = [self.keys.catalog_counter(), self.keys.catalog_versions(), self.keys.catalog_texts(),
                self.keys.catalog_source(), self.keys.catalog_version()]
        n = int(await self._publish(keys=keys, args=[text, digest, orjson.dumps(meta), "1" if from_file else "0",
                                                     CATALOG_VERSIONS_KEPT]))
        self._swap(catalog, text, digest, n)
        return catalog

    async def start(self, file_text: str | None) -> None:
        """At start-up: publish a changed file, else follow what Redis holds."""
        published_file = await self.redis.hget(self.keys.catalog_version(), "file_digest")
        if file_text is not None and (published_file or b"").decode() != text_digest(file_text):
            await self.publish(file_text, from_file=True)
            return
        await self.refresh()

    async def refresh(self) -> bool:
        """Adopt the published catalog if it changed; True when swapped."""
        digest, number = await self.redis.hmget(self.keys.catalog_version(), "digest", "n")
        if digest is None or digest.decode() == self.digest:
            return False
        text = (await self.redis.get(self.keys.catalog_source()) or b"").decode()
        try:
            catalog = await compile_off_loop(text, "published catalog")
        except CatalogError as exc:
            log.error("published catalog does not compile, keeping %s: %s", self.digest, exc)
            self.digest = digest.decode()
            return False
        self._swap(catalog, text, text_digest(text), int(number or 0))
        return True

    async def poll(self, every_s: float) -> None:
        """Look for a newer catalog every `every_s`; Redis down: keep serving the one we have."""
        await every(every_s, self.refresh, "catalog poll", log, first_wait=True)

    # -- versions ---------------------------------------------------------------

    async def versions(self, limit: int = 50) -> list[dict]:
        """The kept versions, newest first."""
        metas = [orjson.loads(raw) for raw in (await self.redis.hgetall(self.keys.catalog_versions())).values()]
        return sorted(metas, key=lambda meta: -meta["n"])[:limit]

    async def in_force(self) -> int:
        return int(await self.redis.hget(self.keys.catalog_version(), "n") or 0)

    async def text_of(self, n: int) -> str | None:
        raw = await self.redis.hget(self.keys.catalog_texts(), n)
        return raw.decode() if raw is not None else None

    async def catalog_of(self, n: int) -> Catalog | None:
        """Version `n` compiled (the one in force without compiling); None when
        it is no longer kept or no longer compiles. A few are kept compiled."""
        if n == self.holder.version:
            return self.holder.current
        if n in self._compiled:
            self._compiled.move_to_end(n)
            return self._compiled[n]
        text = await self.text_of(n)
        catalog = None
        if text is not None:
            try:
                catalog = await compile_off_loop(text, f"catalog version {n}")
                catalog.version = n
            except CatalogError as exc:
                log.error("catalog version %d no longer compiles: %s", n, exc)
        self._compiled[n] = catalog
        while len(self._compiled) > COMPILED_KEPT:
            self._compiled.popitem(last=False)
        return catalog

    def _swap(self, catalog: Catalog, text: str, digest: str, number: int = 0) -> None:
        self.holder.swap(catalog, text, number)
        self.digest = digest
        log.info("catalog %s (version %d) in force: %d offers, %d segments", digest, number, len(catalog.offers),
                 len(catalog.segments))
