"""Importing people from a CRM export: the rows read from CSV and JSON Lines
however the bytes are cut, each bad line refused with its line, field and
reason, and `attimo import` against a real Redis: the rest applied (the
traits are in the profiles), a second run changes nothing, and imported
addresses are found by the lookup."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.audiences.lookup import PeopleLookup
from engine.errors import EventRejected
from engine.ingest.import_rows import MAX_LINE_BYTES, CsvRows, JsonlRows, Refusal, Row, rows_reader
from engine.ingest.importer import import_event
from engine.profile import decode_profile
from engine.store.keys import Keys
from engine.store.people_index import PeopleIndex
from tests.conftest import ROOT

KEYS = Keys()

CSV_EXPORT = (
    "\ufeffuser_id,email,age,zip,score,note,timezone\r\n"        # 1: header (with the BOM Excel writes)
    "42,Ada@Example.com,31,02134,-2.5,\"likes\nhats\",Europe/Rome\r\n"  # 2-3: quoted line break
    "4 2,x@example.com,30,,,,\r\n"                                 # 4: bad id
    "43,bob@example.com,,,,,\r\n"                                  # 5
    ",nobody@example.com,1,,,,\r\n"                                # 6: no id
    "44,c@example.com,5,,,,,extra\r\n"                             # 7: too many columns
    f"45,d@example.com,,,,{'x' * 4097},\r\n"                       # 8: string too long
    "46,e@example.com,,,,,Mars/Olympus\r\n"                        # 9: not a time zone
    "\r\n"                                                         # 10: blank, skipped
    "47,,,007,,,\r\n"                                              # 11
)


def read_all(reader, data: bytes, piece: int) -> list:
    out = []
    for start in range(0, len(data), piece):
        out += reader.feed(data[start:start + piece])
    return out + reader.close()


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_csv_rows_are_the_same_however_the_bytes_arrive(piece):
    rows = read_all(CsvRows(), CSV_EXPORT.encode(), piece)
    assert rows == [
        Row(2, "42", {"email": "Ada@Example.com", "age": 31, "zip": "02134", "score": -2.5,
                      "note": "likes\nhats", "timezone": "Europe/Rome"}),
        Refusal(4, "user_id", "bad id: person ids are 1 to 128 characters without spaces or braces"),
        Row(5, "43", {"email": "bob@example.com"}),
        Refusal(6, "user_id", "no user_id"),
        Refusal(7, "", "too many columns: 8, the header has 7"),
        Refusal(8, "note", "string too long (limit 4096)"),
        Refusal(9, "timezone", "not an IANA time zone name, e.g. Europe/Rome"),
        Row(11, "47", {"zip": "007"}),
    ]


def test_a_line_past_the_limit_is_refused_and_the_next_one_read():
    data = b"user_id,note\n1," + b"x" * (MAX_LINE_BYTES + 10) + b"\n2,short\n"
    for piece in (1000, len(data)):
        assert read_all(CsvRows(), data, piece) == [
            Refusal(2, "", f"line longer than {MAX_LINE_BYTES} bytes"), Row(3, "2", {"note": "short"})]


def test_bad_csv_and_bad_utf8_are_refused_by_line():
    data = b'user_id,note\n1,"a"b\n2,\xff\n3,ok\n4,"never closed\n'
    assert read_all(CsvRows(), data, 5) == [
        Refusal(2, "", "bad CSV: ',' expected after '\"'"),
        Refusal(3, "", "not UTF-8 (byte 3)"),
        Row(4, "3", {"note": "ok"}),
        Refusal(5, "", "a quoted cell is never closed"),
    ]


@pytest.mark.parametrize(("data", "reason"), [
    (b"id,email\n1,a@b.c\n", "the header row has no user_id column"),
    (b"user_id,email,email\n", "column 3: email is named twice"),
    (b"user_id,,x\n", "column 2: a name is 1 to 128 characters"),
    (b"user_id," + b",".join(b"c%d" % i for i in range(101)) + b"\n", "too many columns"),
    (b"", "no header row"),
    (b"\xffuser_id\n", "the header row (line 1): not UTF-8"),
])
def test_a_bad_header_refuses_the_whole_import(data, reason):
    with pytest.raises(EventRejected) as caught:
        read_all(CsvRows(), data, 4)
    assert caught.value.field == "header" and caught.value.reason.startswith(reason)


def test_jsonl_rows_nested_or_flat_with_null_removing_a_trait():
    data = (b'{"user_id": "u1", "traits": {"email": "a@b.c", "vip": true}}\n'
            b'{"user_id": 7, "plan": "pro", "old": null}\n'
            b'\n'
            b'{"user_id": "u3", "traits": [1]}\n'
            b'[1, 2]\n'
            b'{"user_id": "u4", "email": \n'
            b'{"user_id": "u5", "n": 1e400}\n'
            b'{"user_id": "u6", "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}}\n'
            b'{"plan": "free"}')
    rows = read_all(JsonlRows(), data, 9)
    assert rows[:2] == [Row(1, "u1", {"email": "a@b.c", "vip": True}), Row(2, "7", {"plan": "pro", "old": None})]
    assert [(r.line, r.field) for r in rows[2:]] == [(4, "traits"), (5, ""), (6, ""), (7, ""), (8, "deep.a.b.c.d"),
                                                     (9, "user_id")]
    assert rows[3].reason == "not a JSON object" and rows[4].reason.startswith("bad JSON")
    assert rows[-1].reason == "no user_id"


def test_an_import_events_id_is_its_person_and_traits_whatever_the_order():
    first = import_event(Row(1, "42", {"a": 1, "b": "x"}), 1)
    again = import_event(Row(9, "42", {"b": "x", "a": 1}), 2)
    assert first.id == again.id and first.person == "u:42" and first.trusted
    assert import_event(Row(1, "42", {"a": 2, "b": "x"}), 1).id != first.id
    assert import_event(Row(1, "43", {"a": 1, "b": "x"}), 1).id != first.id


def test_the_id_column_can_be_another():
    assert read_all(rows_reader("csv", "crm_id"), b"crm_id,tier\nC-1,gold\n", 3) == [Row(2, "C-1", {"tier": "gold"})]


# -- attimo import against a real Redis -------------------------------------------


def attimo_import(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "import", *args, "--redis-url", redis_url],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


async def traits_of(redis, person: str) -> dict:
    return decode_profile(await redis.get(KEYS.profile(person))).t


async def test_attimo_import_applies_the_good_lines_and_reports_each_bad_one(redis, redis_server, tmp_path):
    export = tmp_path / "crm.csv"
    export.write_text(CSV_EXPORT, encoding="utf-8")
    errors = tmp_path / "errors.csv"
    done = attimo_import(redis_server.url, str(export), "--errors", str(errors), "--batch-size", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "applied 3, duplicates 0, refused 5"
    assert lines[1:] == [
        "line 4: user_id: bad id: person ids are 1 to 128 characters without spaces or braces",
        "line 6: user_id: no user_id",
        "line 7: too many columns: 8, the header has 7",
        "line 8: note: string too long (limit 4096)",
        "line 9: timezone: not an IANA time zone name, e.g. Europe/Rome",
    ]
    assert errors.read_text().splitlines()[:3] == [
        "line,field,reason", "4,user_id,bad id: person ids are 1 to 128 characters without spaces or braces",
        "6,user_id,no user_id"]
    assert await traits_of(redis, "u:42") == {"email": "Ada@Example.com", "age": 31, "zip": "02134", "score": -2.5,
                                              "note": "likes\nhats", "timezone": "Europe/Rome"}
    assert await traits_of(redis, "u:43") == {"email": "bob@example.com"}
    assert await traits_of(redis, "u:47") == {"zip": "007"}
    for refused in ("u:4 2", "u:44", "u:45", "u:46"):
        assert await redis.exists(KEYS.profile(refused)) == 0
    lookup = PeopleLookup(PeopleIndex(redis, KEYS))
    assert await lookup.find("email", "ada@example.com") == ["u:42"]  # imports feed the lookup index too


async def test_running_the_same_import_again_changes_nothing(redis, redis_server, tmp_path):
    export = tmp_path / "crm.csv"
    export.write_text(CSV_EXPORT, encoding="utf-8")
    attimo_import(redis_server.url, str(export))
    before = {p: await redis.get(KEYS.profile(p)) for p in ("u:42", "u:43", "u:47")}
    again = attimo_import(redis_server.url, str(export))
    assert again.returncode == 1  # the same lines are refused again
    assert again.stdout.splitlines()[0] == "applied 0, duplicates 3, refused 5"
    after = {p: await redis.get(KEYS.profile(p)) for p in before}
    assert after == before  # same bytes: traits and version (a write would have bumped it)
    assert decode_profile(after["u:42"]).v == 1


async def test_a_changed_row_is_applied_on_the_next_run(redis, redis_server, tmp_path):
    export = tmp_path / "crm.jsonl"
    export.write_text('{"user_id": "42", "traits": {"tier": "gold", "email": "old@example.com"}}\n')
    assert attimo_import(redis_server.url, str(export)).returncode == 0
    export.write_text('{"user_id": "42", "tier": "platinum", "email": "new@example.com"}\n')
    done = attimo_import(redis_server.url, str(export))
    assert done.returncode == 0 and done.stdout.splitlines() == ["applied 1, duplicates 0, refused 0"]
    assert await traits_of(redis, "u:42") == {"tier": "platinum", "email": "new@example.com"}
    lookup = PeopleLookup(PeopleIndex(redis, KEYS))
    assert await lookup.find("email", "old@example.com") == []
    assert await lookup.find("email", "NEW@example.com") == ["u:42"]


async def test_jsonl_import_reports_bad_json_and_removes_a_trait_set_to_null(redis, redis_server, tmp_path):
    export = tmp_path / "crm.jsonl"
    export.write_text('{"user_id": "42", "traits": {"tier": "gold", "trial": true}}\n'
                      '{"user_id": "42", "trial": null}\n'
                      '{"user_id": "43", \n'
                      '"just a string"\n')
    done = attimo_import(redis_server.url, str(export))
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "applied 2, duplicates 0, refused 2"
    assert done.stdout.splitlines()[1].startswith("line 3: bad JSON")
    assert done.stdout.splitlines()[2] == "line 4: not a JSON object"
    assert await traits_of(redis, "u:42") == {"tier": "gold"}


async def test_a_file_without_the_id_column_imports_nothing(redis, redis_server, tmp_path):
    export = tmp_path / "crm.csv"
    export.write_text("id,email\n42,a@example.com\n")
    done = attimo_import(redis_server.url, str(export))
    assert done.returncode == 1
    assert "the header row has no user_id column" in done.stderr
    assert await redis.exists(KEYS.profile("u:42")) == 0
    done = attimo_import(redis_server.url, str(export), "--id-column", "id")
    assert done.returncode == 0, done.stdout + done.stderr
    assert await traits_of(redis, "u:42") == {"email": "a@example.com"}


def test_a_file_of_another_kind_needs_format(tmp_path):
    export = tmp_path / "crm.txt"
    export.write_text("user_id,email\n")
    done = attimo_import("redis://127.0.0.1:1/0", str(export))
    assert done.returncode == 2 and "--format" in done.stderr
