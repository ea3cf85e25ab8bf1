"""Keeps every serving process on the same catalog. The catalog in force is
published to Redis (source text + digest); each process polls the digest and
recompiles when it changes. A file given at start-up is published only when it
differs from the file published last, so a restarted worker never rolls back a
catalog an operator posted since."""

from __future__ import annotations

import asyncio
import hashlib
import logging

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.catalog.model import Catalog, CatalogHolder
from engine.clock import every
from engine.errors import CatalogError
from engine.store.keys import Keys

log = logging.getLogger("attimo.catalog")


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def compile_text(text: str, source: str) -> Catalog:
    return compile_catalog(parse_catalog_text(text, source), source)


async def compile_off_loop(text: str, source: str) -> Catalog:
    """Compile in a thread: a catalog of thousands of offers takes seconds, and the
    event loop keeps answering decides meanwhile (slower, never stalled)."""
    return await asyncio.to_thread(compile_text, text, source)


class CatalogStore:
    def __init__(self, redis, keys: Keys, holder: CatalogHolder):
        self.redis = redis
        self.keys = keys
        self.holder = holder
        self.digest = text_digest(holder.source_text)

    async def publish(self, text: str, *, from_file: bool = False) -> Catalog:
        """Validate, compile, swap in here, and publish for the other processes."""
        catalog = await compile_off_loop(text, "posted catalog" if not from_file else "catalog file")
        digest = text_digest(text)
        fields = {"digest": digest}
        if from_file:
            fields["file_digest"] = digest
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.catalog_source(), text)
        pipe.hset(self.keys.catalog_version(), mapping=fields)
        await pipe.execute()
        self._swap(catalog, text, digest)
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
        digest = await self.redis.hget(self.keys.catalog_version(), "digest")
        if digest is None or digest.decode() == self.digest:
            return False
        text = (await self.redis.get(self.keys.catalog_source()) or b"").decode()
        try:
            catalog = await compile_off_loop(text, "published catalog")
        except CatalogError as exc:
            log.error("published catalog does not compile, keeping %s: %s", self.digest, exc)
            self.digest = digest.decode()
            return False
        self._swap(catalog, text, text_digest(text))
        return True

    async def poll(self, every_s: float) -> None:
        """Look for a newer catalog every `every_s`; Redis down: keep serving the one we have."""
        await every(every_s, self.refresh, "catalog poll", log, first_wait=True)

    def _swap(self, catalog: Catalog, text: str, digest: str) -> None:
        self.holder.swap(catalog, text)
        self.digest = digest
        log.info("catalog %s in force: %d offers, %d segments", digest, len(catalog.offers), len(catalog.segments))
