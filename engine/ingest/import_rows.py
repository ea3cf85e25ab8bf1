"""People in a CRM export, read as they arrive: bytes in (a file read in
pieces, a request body streamed), one `Row` (a person and their traits) or one
`Refusal` (line, field, reason) out per line. CSV with a header row, or JSON
Lines. Nothing here waits for the whole input, and no line may pass
MAX_LINE_BYTES. Pure: no I/O."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson

from engine.errors import EventRejected
from engine.events import PERSON_ID, TIMEZONE_TRAIT, check_value, known_time_zone
from engine.policy import CONTACT_TRAITS
from engine.settings import MAX_PROPERTIES

MAX_LINE_BYTES = 64 * 1024  # one person's line (a CSV record with its quoted line breaks)
MAX_NAME_LENGTH = 128  # a trait name, as for events
ID_RULE = "person ids are 1 to 128 characters without spaces or braces"
# Numbers only as they are written by a program: no sign +, no leading zero, no
# exponent, at most 18 digits, so "007", "02134" (a zip code) and "1e5" stay text.
INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,17})\.[0-9]{1,17}")
CSV, JSONL = "csv", "jsonl"


class Row(msgspec.Struct, frozen=True):
    """One person to import: `traits` maps a name to its value (None removes it)."""

    line: int
    user_id: str
    traits: dict[str, Any]


class Refusal(msgspec.Struct, frozen=True):
    """A line not imported: where, which field ("" for the line as a whole), why."""

    line: int
    field: str
    reason: str


def cell_value(name: str, text: str) -> str | int | float:
    """A CSV cell as a trait: whole numbers and decimals written plainly become
    numbers, anything else stays text; email and phone always stay text."""
    if name not in CONTACT_TRAITS:
        if INTEGER.fullmatch(text):
            return int(text)
        if DECIMAL.fullmatch(text):
            return float(text)
    return text


def check_traits(line: int, traits: dict[str, Any]) -> Refusal | None:
    """The limits events have: trait names, string lengths, nesting, numbers,
    the time zone."""
    if len(traits) > MAX_PROPERTIES:
        return Refusal(line, "", f"too many traits: at most {MAX_PROPERTIES}")
    for name, value in traits.items():
        if not name or len(name) > MAX_NAME_LENGTH:
            return Refusal(line, name[:32], f"a trait name is 1 to {MAX_NAME_LENGTH} characters")
        try:
            check_value(value, name, 2)
        except EventRejected as exc:
            limit = f" (limit {exc.limit})" if exc.limit is not None else ""
            return Refusal(line, exc.field, exc.reason + limit)
    zone = traits.get(TIMEZONE_TRAIT)
    if zone is not None and not known_time_zone(zone):
        return Refusal(line, TIMEZONE_TRAIT, "not an IANA time zone name, e.g. Europe/Rome")
    return None


def person_row(line: int, id_field: str, user_id: Any, traits: dict[str, Any]) -> Row | Refusal:
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if user_id is None or user_id == "":
        return Refusal(line, id_field, f"no {id_field}")
    if not isinstance(user_id, str) or not PERSON_ID.fullmatch(user_id):
        return Refusal(line, id_field, f"bad id: {ID_RULE}")
    if not traits:
        return Refusal(line, "", "nothing to import: no trait given")
    return check_traits(line, traits) or Row(line, user_id, traits)


class LineSplitter:
    """Bytes as they come → (line number, line bytes) with "\\n" or "\\r\\n"
    cut off; a line past MAX_LINE_BYTES comes out as None, once, and the rest of
    it is skipped, without ever holding more than the limit."""

    def __init__(self, limit: int = MAX_LINE_BYTES):
        self.limit = limit
        self.pending = bytearray()
        self.number = 0
        self.skipping = False

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        self.pending += chunk
        while True:
            end = self.pending.find(b"\n")
            if end < 0:
                if len(self.pending) > self.limit:
                    if not self.skipping:
                        self.number += 1
                        self.skipping = True
                        yield self.number, None
                    self.pending.clear()
                return
            if self.skipping:
                self.skipping = False
            else:
                self.number += 1
                yield self.number, None if end > self.limit else bytes(self.pending[:end]).removesuffix(b"\r")
            del self.pending[:end + 1]

    def close(self) -> Iterator[tuple[int, bytes | None]]:
        if self.pending and not self.skipping:
            self.number += 1
            yield self.number, bytes(self.pending).removesuffix(b"\r")
        self.pending.clear()


def _text(line: int, raw: bytes) -> str | Refusal:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Refusal(line, "", f"not UTF-8 (byte {exc.start + 1})")


TOO_LONG = f"line longer than {MAX_LINE_BYTES} bytes"


class CsvRows:
    """A header row naming the columns, `id_column` among them; then one person a
    record. A cell left empty is not given (an import never removes a trait);
    surrounding spaces are trimmed. A quoted cell may hold line breaks: the
    record is numbered by its first line."""

    def __init__(self, id_column: str = "user_id"):
        self.id_column = id_column
        self.lines = LineSplitter()
        self.columns: list[str] | None = None
        self.record: list[str] = []  # lines of a record whose quote is still open
        self.record_line = 0
        self.record_bytes = 0

    def feed(self, chunk: bytes) -> list[Row | Refusal]:
        return [out for number, raw in self.lines.feed(chunk) if (out := self._line(number, raw)) is not None]

    def close(self) -> list[Row | Refusal]:
        out = [found for number, raw in self.lines.close() if (found := self._line(number, raw)) is not None]
        if self.record:
            out.append(self._refuse(Refusal(self.record_line, "", "a quoted cell is never closed")))
        if self.columns is None:
            raise EventRejected("no header row: the first line names the columns", "header")
        return out

    def _line(self, number: int, raw: bytes | None) -> Row | Refusal | None:
        if raw is None:
            return self._refuse(Refusal(self.record_line if self.record else number, "", TOO_LONG))
        text = _text(number, raw)
        if isinstance(text, Refusal):
            return self._refuse(text)
        if number == 1:
            text = text.removeprefix("\ufeff")  # the byte order mark spreadsheets write
        if not self.record:
            if not text.strip():
                return None  # a blank line between records
            self.record_line, self.record_bytes = number, 0
        self.record.append(text)
        self.record_bytes += len(raw) + 1
        if self.record_bytes > MAX_LINE_BYTES:
            return self._refuse(Refusal(self.record_line, "", TOO_LONG))
        if sum(part.count('"') for part in self.record) % 2:
            return None  # inside a quoted cell: the record goes on on the next line
        record, self.record = "\n".join(self.record), []
        try:
            cells = next(csv.reader([record], strict=True), [])
        except csv.Error as exc:
            return self._refuse(Refusal(self.record_line, "", f"bad CSV: {exc}"))
        if self.columns is None:
            self.columns = self._header(cells)
            return None
        return self._person(self.record_line, cells)

    def _refuse(self, refusal: Refusal) -> Refusal:
        """A record given up; without a header yet, the whole import is."""
        self.record = []
        if self.columns is None:
            raise EventRejected(f"the header row (line {refusal.line}): {refusal.reason}", "header")
        return refusal

    def _header(self, cells: list[str]) -> list[str]:
        names = [cell.strip() for cell in cells]
        if self.id_column not in names:
            raise EventRejected(f"the header row has no {self.id_column} column (the person's id); "
                                "name another with --id-column", "header")
        if len(names) > MAX_PROPERTIES + 1:
            raise EventRejected(f"too many columns: at most {MAX_PROPERTIES} traits and the id", "header",
                                MAX_PROPERTIES + 1)
        for i, name in enumerate(names):
            if not name or len(name) > MAX_NAME_LENGTH:
                raise EventRejected(f"column {i + 1}: a name is 1 to {MAX_NAME_LENGTH} characters", "header")
            if name in names[:i]:
                raise EventRejected(f"column {i + 1}: {name} is named twice", "header")
        return names

    def _person(self, line: int, cells: list[str]) -> Row | Refusal:
        columns = self.columns or []
        if len(cells) > len(columns):
            return Refusal(line, "", f"too many columns: {len(cells)}, the header has {len(columns)}")
        given = {name: cell.strip() for name, cell in zip(columns, cells, strict=False) if cell.strip()}
        user_id = given.pop(self.id_column, None)
        return person_row(line, self.id_column, user_id,
                          {name: cell_value(name, text) for name, text in given.items()})


class JsonlRows:
    """One JSON object a line: `{"user_id": …, "traits": {…}}`, or flat, every
    key but the id a trait. A trait set to null is removed, as in events.
    Blank lines are skipped."""

    def __init__(self, id_column: str = "user_id"):
        self.id_column = id_column
        self.lines = LineSplitter()

    def feed(self, chunk: bytes) -> list[Row | Refusal]:
        return [out for number, raw in self.lines.feed(chunk) if (out := self._line(number, raw)) is not None]

    def close(self) -> list[Row | Refusal]:
        return [out for number, raw in self.lines.close() if (out := self._line(number, raw)) is not None]

    def _line(self, number: int, raw: bytes | None) -> Row | Refusal | None:
        if raw is None:
            return Refusal(number, "", TOO_LONG)
        if not raw.strip():
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Refusal(number, "", f"bad JSON: {exc}")
        if not isinstance(value, dict):
            return Refusal(number, "", "not a JSON object")
        user_id = value.pop(self.id_column, None)
        if value.keys() == {"traits"}:
            traits = value["traits"]
            if not isinstance(traits, dict):
                return Refusal(number, "traits", "traits is a JSON object")
        else:
            traits = value
        return person_row(number, self.id_column, user_id, traits)


def rows_reader(kind: str, id_column: str = "user_id") -> CsvRows | JsonlRows:
    if not id_column or len(id_column) > MAX_NAME_LENGTH:
        raise EventRejected(f"the id column is named with 1 to {MAX_NAME_LENGTH} characters", "id_column")
    return CsvRows(id_column) if kind == CSV else JsonlRows(id_column)
