"""Where tracked segments' people go.

Webhooks: every entry and exit of the segment, in order, batched, signed like
every Attimo webhook (engine/signing.py), with an idempotency key per batch and
an id per change. One process at a time delivers for a destination (a lease in
Redis), from where the last delivery ended (a cursor per change-stream shard).
A batch that fails is tried again with a growing pause, the same batch, until
the destination's `attempts` are spent; then it is dead-lettered with the
reason and delivery goes on. Adds go only for people with advertising consent;
removals always go.

Exports: the whole segment as a customer list (CSV or JSON Lines) with the
hashed identifiers ad platforms match on, streamed a chunk at a time so memory
stays flat, on demand (GET /v1/segments/{id}/export) or every `every` into
ATTIMO_EXPORT_DIR."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson

from engine.audiences.membership import ENTER, MembershipStore
from engine.catalog.audiences import Destination
from engine.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_body
from engine.store.keys import DEAD_LETTERS_MAX, DESTINATION_LEASE_MS, SEGMENT_SHARDS, Keys

log = logging.getLogger("attimo.destinations")
BACKOFF_FIRST_MS = 500
BACKOFF_MAX_MS = 30_000
EXPORT_CHUNK = 2000
TIMEOUT_S = 10.0
CHANGES_KEPT_MS = 7 * 86_400_000  # change records older than this are trimmed (they name people)
TRIM_EVERY_MS = 60_000
COLUMNS = {  # shape -> (email column, phone column); plain adds the person id first
    "plain": ("email_sha256", "phone_sha256"),
    "google": ("Email", "Phone"),
    "meta": ("email", "phone"),
}


@dataclass
class _Pending:
    """A batch being tried: the same changes and key on every try."""

    body: bytes
    key: str
    cursors: dict[int, str]
    count: int
    attempts: int = 0
    next_try_ms: float = 0.0


class Deliveries:
    """Runs the webhook destinations and scheduled exports of the catalog in force."""

    def __init__(self, redis, keys: Keys, membership: MembershipStore, secret: bytes,
                 export_dir: str | None = None, urls: dict[str, str] | None = None, owner: str | None = None):
        """`urls`: the webhook channels (ATTIMO_WEBHOOK_URLS) a destination may name."""
        self.redis = redis
        self.urls = urls or {}
        self.keys = keys
        self.membership = membership
        self.secret = secret
        self.export_dir = export_dir
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        self._pending: dict[str, _Pending] = {}
        self._trimmed_ms = 0
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run_once(self, catalog, now_ms: int) -> int:
        """One turn over every destination; returns the changes delivered. Once
        a minute, also trims every tracked segment's change records to a week."""
        if now_ms - self._trimmed_ms >= TRIM_EVERY_MS and catalog.audiences.tracked:
            self._trimmed_ms = now_ms
            await self.membership.trim(sorted(catalog.audiences.tracked), now_ms - CHANGES_KEPT_MS)
        delivered = 0
        for destination in catalog.audiences.destinations:
            if not await self._lease(destination.id):
                continue
            if destination.kind == "webhook":
                delivered += await self._deliver(destination, now_ms)
            elif destination.every_ms:
                await self._scheduled_export(destination, now_ms)
        return delivered

    async def _lease(self, destination: str) -> bool:
        key = self.keys.destination_lease(destination)
        if await self.redis.set(key, self.owner, nx=True, px=DESTINATION_LEASE_MS):
            return True
        holder = await self.redis.get(key)
        if holder is not None and (holder.decode() if isinstance(holder, bytes) else holder) == self.owner:
            await self.redis.pexpire(key, DESTINATION_LEASE_MS)
            return True
        self._pending.pop(destination, None)  # another process took over: it starts from the cursors
        return False

    # -- webhooks -----------------------------------------------------------------

    async def _deliver(self, destination: Destination, now_ms: int) -> int:
        pending = self._pending.get(destination.id)
        if pending is None:
            pending = await self._next_batch(destination)
            if pending is None:
                return 0
            if not pending.count:  # only adds without consent: nothing to send, move on
                await self._advance(destination, pending.cursors)
                return 0
            self._pending[destination.id] = pending
        if now_ms < pending.next_try_ms:
            return 0
        pending.attempts += 1
        url = destination.url or self.urls.get(destination.channel)
        reason = await self._post(url, pending) if url else f"no URL for webhook channel {destination.channel!r}"
        if reason is None:
            await self._advance(destination, pending.cursors)
            del self._pending[destination.id]
            return pending.count
        permanent = reason.startswith("HTTP 4") and reason not in ("HTTP 408", "HTTP 429")
        if permanent or pending.attempts >= destination.attempts:
            await self._dead_letter(destination, pending, reason, now_ms)
            await self._advance(destination, pending.cursors)
            del self._pending[destination.id]
            return 0
        pause = min(BACKOFF_FIRST_MS * 2 ** (pending.attempts - 1), BACKOFF_MAX_MS)
        pending.next_try_ms = now_ms + pause
        log.warning("destination %s: %s (attempt %d of %d); next try in %d ms", destination.id, reason,
                    pending.attempts, destination.attempts, pause)
        return 0

    async def _next_batch(self, destination: Destination) -> _Pending | None:
        state = await self.redis.hgetall(self.keys.destination_state(destination.id))
        cursors = {int(k): _text(v) for k, v in ((_text(k), v) for k, v in state.items()) if k.isdigit()}
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SEGMENT_SHARDS):
            after = cursors.get(shard, "0")
            pipe.xrange(self.keys.segment_changes(destination.segment, shard),
                        f"({after}" if after != "0" else "-", "+", count=destination.batch)
        entries = []
        for shard, found in enumerate(await pipe.execute()):
            entries.extend((_order(entry_id), shard, _text(entry_id), fields) for entry_id, fields in found)
        if not entries:
            return None
        # By stream id as numbers (ms, then sequence): one script call records
        # many changes in the same ms, and "…-10" sorts before "…-2" as text.
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        entries = entries[:destination.batch]
        taken: dict[int, str] = {}
        for _, shard, entry_id, _ in entries:
            taken[shard] = entry_id
        people = [_text(fields[b"p"]) for _, _, _, fields in entries]
        cards = await self.membership.cards.read(people)
        changes = []
        for ((stamp, _), shard, entry_id, fields), person, card in zip(entries, people, cards, strict=True):
            email, phone, consent = card.email, card.phone, card.consent
            op = _text(fields[b"o"])
            if op == ENTER and not consent:
                continue  # no advertising consent: the destination never hears of them
            if b"e" in fields or b"ph" in fields:  # recorded with the change: the person was erased since
                email, phone = _text(fields.get(b"e")), _text(fields.get(b"ph"))
            change = {"id": f"{destination.segment}:{shard}:{entry_id}", "op": "add" if op == ENTER else "remove",
                      "reason": _text(fields[b"r"]), "at": stamp, "email_sha256": email, "phone_sha256": phone}
            if destination.include_person:
                change["person"] = person
            elif email is None and phone is None:
                continue  # nothing an ad platform could match on
            changes.append(change)
        body = orjson.dumps({"destination": destination.id, "segment": destination.segment, "changes": changes})
        ranges = ",".join(f"{shard}:{cursors.get(shard, '0')}-{last}" for shard, last in sorted(taken.items()))
        key = hashlib.sha256(f"{destination.id}|{ranges}".encode()).hexdigest()[:32]
        return _Pending(body, key, taken, len(changes))

    async def _post(self, url: str, pending: _Pending) -> str | None:
        """None when the receiver took it (2xx), else why not."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        stamp = int(time.time() * 1000)
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: pending.key,
                   TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: sign_body(self.secret, stamp, pending.body)}
        try:
            async with self._session.post(url, data=pending.body, headers=headers) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except TimeoutError:
            return "timed out"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"

    async def _advance(self, destination: Destination, cursors: dict[int, str]) -> None:
        await self.redis.hset(self.keys.destination_state(destination.id), mapping=cursors)

    async def _dead_letter(self, destination: Destination, pending: _Pending, reason: str, now_ms: int) -> None:
        log.error("destination %s: batch of %d changes dead-lettered: %s", destination.id, pending.count, reason)
        entry = {"kind": "destination", "destination": destination.id, "segment": destination.segment,
                 "reason": f"{reason} after {pending.attempts} attempt(s)", "at": now_ms,
                 "idempotency_key": pending.key, "body": pending.body.decode()}
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(self.keys.dead_letters(), orjson.dumps(entry))
        pipe.ltrim(self.keys.dead_letters(), 0, DEAD_LETTERS_MAX - 1)
        await pipe.execute()

    # -- exports ------------------------------------------------------------------

    async def _scheduled_export(self, destination: Destination, now_ms: int) -> None:
        if not self.export_dir:
            return
        state_key = self.keys.destination_state(destination.id)
        last = await self.redis.hget(state_key, "export")
        if last is not None and now_ms - int(last) < destination.every_ms:
            return
        await self.redis.hset(state_key, "export", now_ms)
        path = await export_to_file(self.membership, destination, Path(self.export_dir), now_ms)
        log.info("destination %s: exported %s to %s", destination.id, destination.segment, path)


async def export_rows(membership: MembershipStore, segment: str, shape: str = "plain") -> AsyncIterator[list]:
    """The segment's members with advertising consent, a chunk at a time, as rows
    of [person, email sha256, phone sha256] ("plain") or [email, phone]
    (google, meta: people with neither are left out)."""
    async for people in membership.walk(segment, EXPORT_CHUNK):
        rows = []
        for person, card in zip(people, await membership.cards.read(people), strict=True):
            if not card.consent:
                continue
            if shape == "plain":
                rows.append([person, card.email, card.phone])
            elif card.email or card.phone:
                rows.append([card.email, card.phone])
        if rows:
            yield rows


def header(fmt: str, shape: str) -> bytes:
    if fmt != "csv":
        return b""
    email, phone = COLUMNS[shape]
    return (f"person,{email},{phone}\r\n" if shape == "plain" else f"{email},{phone}\r\n").encode()


def encode_rows(rows: list[list], fmt: str, shape: str) -> bytes:
    """Ids and hex digests hold no comma, quote or line break (person ids are
    checked on the way in), so a CSV cell needs no quoting."""
    if fmt == "csv":
        return b"".join((",".join(cell or "" for cell in row) + "\r\n").encode() for row in rows)
    email, phone = COLUMNS[shape]
    names = ("person", email, phone) if shape == "plain" else (email, phone)
    return b"".join(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n" for row in rows)


async def export_to_file(membership: MembershipStore, destination: Destination, directory: Path,
                         now_ms: int) -> Path:
    """Write the export beside its final name, then rename: a reader never sees half a file."""
    stamp = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = directory / destination.id
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    final = folder / f"{destination.segment}-{stamp}.{destination.format}"
    partial = final.with_suffix(final.suffix + ".partial")
    with partial.open("wb") as out:
        out.write(header(destination.format, destination.shape))
        async for rows in export_rows(membership, destination.segment, destination.shape):
            out.write(encode_rows(rows, destination.format, destination.shape))
    os.replace(partial, final)
    return final


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _order(entry_id) -> tuple[int, int]:
    """A stream id "<ms>-<sequence>" as numbers."""
    ms, _, sequence = _text(entry_id).partition("-")
    return int(ms), int(sequence)
