"""Importing people from a CRM export: each row read (engine/ingest/import_rows.py)
becomes one trait event for `u:<id>`, applied through the pipeline in batches as
rows arrive, like any server's events. Its id is a digest of the person and the
row's traits, so running the same export again is deduplicated and changes
nothing. `attimo import` and POST /v1/admin/import both come here."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import orjson

from engine.catalog.journeys import TRAIT_EVENT
from engine.clock import now_ms
from engine.events import Event
from engine.ingest.identity import known
from engine.ingest.import_rows import CsvRows, JsonlRows, Refusal, Row
from engine.ingest.pipeline import ApplyResult
from engine.settings import MAX_EVENTS_PER_BATCH

IMPORT_BATCH = MAX_EVENTS_PER_BATCH  # people a batch: one pipeline call, as one POST /v1/events at most
MAX_ERRORS_LISTED = 1000  # in the report; the count is always complete

Apply = Callable[[list[Event], int], Awaitable[ApplyResult]]


def import_event(row: Row, now: int) -> Event:
    """The trait event of a row. TRAIT_EVENT, as a journey's set_trait: the
    traits change but the person did nothing (their "last seen" stays, no
    inactivity timer starts); trusted, as a server's word."""
    person = known(row.user_id)
    content = orjson.dumps(row.traits, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(person.encode() + b"\0" + content, digest_size=16).hexdigest()
    return Event(f"import:{digest}", TRAIT_EVENT, person, now, {}, row.traits, trusted=True)


@dataclass
class ImportReport:
    applied: int = 0
    duplicates: int = 0  # rows applied before with the same traits: nothing changed
    refused: int = 0
    errors: list[Refusal] = field(default_factory=list)  # the first MAX_ERRORS_LISTED

    def as_dict(self) -> dict:
        return {"applied": self.applied, "duplicates": self.duplicates, "refused": self.refused,
                "errors": [{"line": e.line, "field": e.field, "reason": e.reason} for e in self.errors]}


class Importer:
    """Rows and refusals in, batches of events through `apply` (Pipeline.apply,
    or the API's Services.apply, which follows its transport) as soon as a batch
    is full. `on_refusal` sees every refusal (the CLI writes them all to a file)."""

    def __init__(self, apply: Apply, *, batch_size: int = IMPORT_BATCH, clock: Callable[[], int] = now_ms,
                 on_refusal: Callable[[Refusal], None] | None = None):
        self.apply = apply
        self.batch_size = max(1, min(batch_size, IMPORT_BATCH))
        self.clock = clock
        self.on_refusal = on_refusal
        self.report = ImportReport()
        self.pending: list[Row] = []

    async def take(self, items: Iterable[Row | Refusal]) -> None:
        for item in items:
            if isinstance(item, Refusal):
                self._refuse(item)
                continue
            self.pending.append(item)
            if len(self.pending) >= self.batch_size:
                await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        now = self.clock()
        rows, self.pending = self.pending, []
        result = await self.apply([import_event(row, now) for row in rows], now)
        self.report.applied += result.accepted
        self.report.duplicates += result.duplicates

    def _refuse(self, refusal: Refusal) -> None:
        self.report.refused += 1
        if len(self.report.errors) < MAX_ERRORS_LISTED:
            self.report.errors.append(refusal)
        if self.on_refusal is not None:
            self.on_refusal(refusal)


async def import_people(pieces: AsyncIterable[bytes], reader: CsvRows | JsonlRows, importer: Importer) -> ImportReport:
    """Read the pieces as they come and apply what they hold, a batch at a time:
    never more than a batch of rows and one line held."""
    async for piece in pieces:
        await importer.take(reader.feed(piece))
    await importer.take(reader.close())
    await importer.flush()
    return importer.report
