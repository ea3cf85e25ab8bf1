"""Importing people and finding them by email or phone through a real `attimo
serve` and Redis: a CRM export streamed in pieces is applied while it is still
arriving (a body far over the 512 KB limit other routes have), the report names
each refused line, only the admin scope may import, and GET /v1/people?email=
finds people by their address now, not by an old one, nor once erased."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis.asyncio import Redis

from engine.profile import decode_profile
from engine.settings import MAX_BODY_BYTES
from engine.store.keys import IX_SHARDS, Keys
from engine.testing.processes import TOKEN, start_api, stop_api

PREFIX = "import-test"
KEYS = Keys(PREFIX)
ADMIN_TOKEN, READ_TOKEN, INGEST_TOKEN = "import-admin-token", "import-read-token", "import-ingest-token"
READ_TIMEOUT_S = 1  # short, so a body that takes longer than it takes little time


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    api = start_api(redis_server.url, tmp_path_factory.mktemp("import"), ATTIMO_KEY_PREFIX=PREFIX,
                    ATTIMO_ADMIN_TOKEN=ADMIN_TOKEN, ATTIMO_READ_TOKEN=READ_TOKEN, ATTIMO_INGEST_TOKEN=INGEST_TOKEN,
                    ATTIMO_PHONE_REGION="GB", ATTIMO_READ_TIMEOUT_MS=str(READ_TIMEOUT_S * 1000))
    yield api
    stop_api(api)


@pytest.fixture
def api(server, redis_sync_client):  # an empty Redis each time
    return server


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def profile_of(redis, person: str):
    return decode_profile(await redis.get(KEYS.profile(person)))


def row(i: int) -> bytes:
    return f"p{i},p{i}@example.com,{i},{'n' * 400}\n".encode()


async def test_an_export_sent_in_pieces_is_applied_while_it_still_arrives(api, redis_server):
    """The first batch is in Redis before the rest of the body is even sent: the
    route reads as the body comes and applies a batch as soon as it is full."""
    redis = Redis.from_url(redis_server.url)
    people = 1500  # ~600 KB, over the body limit every other route has
    first_batch_seen = []

    async def body():
        yield b"user_id,email,visits,notes\n"
        for i in range(500):
            data = row(i)
            yield data[:7]  # lines cut anywhere
            yield data[7:]
        deadline = time.monotonic() + 10
        while not await redis.exists(KEYS.profile("u:p0")):
            assert time.monotonic() < deadline, "the first 500 people were not applied while the body streamed"
            await asyncio.sleep(0.02)
        first_batch_seen.append(await redis.exists(KEYS.profile(f"u:p{people - 1}")))
        yield b"p bad,x@example.com,1,\n"
        yield b"".join(row(i) for i in range(500, people))
        yield b",nobody@example.com,1,\n"

    try:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            answer = await client.post("/v1/admin/import", content=body(),
                                       headers={"Content-Type": "text/csv", **bearer(ADMIN_TOKEN)})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "applied": people, "duplicates": 0, "refused": 2,
            "errors": [
                {"line": 502, "field": "user_id",
                 "reason": "bad id: person ids are 1 to 128 characters without spaces or braces"},
                {"line": people + 3, "field": "user_id", "reason": "no user_id"},
            ]}
        assert first_batch_seen == [0]  # the last person came later
        assert people * len(row(people)) > MAX_BODY_BYTES
        last = await profile_of(redis, f"u:p{people - 1}")
        assert last.t == {"email": f"p{people - 1}@example.com", "visits": people - 1, "notes": "n" * 400}
    finally:
        await redis.aclose()


async def test_an_import_may_take_longer_than_the_read_deadline_while_pieces_keep_coming(api):
    """Other routes' bodies must arrive whole within the deadline; an import's
    pieces each within it of the one before."""
    async def body():
        yield b"user_id,n\n"
        for i in range(8):  # ~2.4 s in all: past the deadline and the connection's second of grace
            await asyncio.sleep(READ_TIMEOUT_S * 0.3)
            yield f"s{i},{i}\n".encode()

    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        answer = await client.post("/v1/admin/import", content=body(),
                                   headers={"Content-Type": "text/csv", **bearer(ADMIN_TOKEN)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["applied"] == 8


async def test_an_import_whose_body_stops_coming_is_408(api):
    async def body():
        yield b"user_id,n\nq1,1\n"
        await asyncio.sleep(READ_TIMEOUT_S * 1.5)
        yield b"q2,2\n"

    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        answer = await client.post("/v1/admin/import", content=body(),
                                   headers={"Content-Type": "text/csv", **bearer(ADMIN_TOKEN)})
    assert answer.status_code == 408 and "stopped arriving" in answer.json()["error"]


def post_import(api, body: bytes, content_type: str, token: str = ADMIN_TOKEN, query: str = "") -> httpx.Response:
    with api.client(**bearer(token)) as client:
        return client.post(f"/v1/admin/import{query}", content=body, headers={"Content-Type": content_type})


async def test_jsonl_is_imported_and_the_same_export_again_changes_nothing(api, redis_server):
    redis = Redis.from_url(redis_server.url)
    body = (b'{"user_id": "42", "traits": {"tier": "gold", "email": "Ada@Example.com"}}\n'
            b'{"user_id": "43", "tier": "silver"}\n'
            b'not json\n')
    try:
        first = post_import(api, body, "application/x-ndjson")
        assert first.status_code == 200, first.text
        assert first.json()["applied"] == 2 and first.json()["refused"] == 1
        assert first.json()["errors"][0]["line"] == 3 and first.json()["errors"][0]["reason"].startswith("bad JSON")
        before = await redis.get(KEYS.profile("u:42"))
        again = post_import(api, body, "application/x-ndjson; charset=utf-8")
        assert again.json()["applied"] == 0 and again.json()["duplicates"] == 2
        assert await redis.get(KEYS.profile("u:42")) == before
        assert (await profile_of(redis, "u:42")).t == {"tier": "gold", "email": "Ada@Example.com"}
    finally:
        await redis.aclose()
    with api.client(**bearer(READ_TOKEN)) as client:
        assert client.get("/v1/people", params={"email": "ada@example.com"}).json() == {"people": ["u:42"]}


def test_only_an_admin_token_imports(api):
    body = b"user_id,tier\n42,gold\n"
    for token in (READ_TOKEN, INGEST_TOKEN):
        answer = post_import(api, body, "text/csv", token)
        assert answer.status_code == 403 and "admin scope" in answer.json()["error"]
    with api.client() as client:
        assert client.post("/v1/admin/import", content=body, headers={"Content-Type": "text/csv"}).status_code == 401
    assert post_import(api, body, "text/csv", TOKEN).json()["applied"] == 1  # the all-scopes token may


def test_another_body_type_is_415_and_a_header_without_the_id_is_422(api):
    answer = post_import(api, b"user_id,tier\n42,gold\n", "text/plain")
    assert answer.status_code == 415 and "text/csv" in answer.json()["error"]
    answer = post_import(api, b"id,tier\n42,gold\n", "text/csv")
    assert answer.status_code == 422
    assert answer.json()["field"] == "header" and "no user_id column" in answer.json()["error"]
    answer = post_import(api, b"id,tier\n42,gold\n", "text/csv", query="?id_column=id")
    assert answer.status_code == 200 and answer.json()["applied"] == 1
    answer = post_import(api, b"", "text/csv")
    assert answer.status_code == 422 and "no header row" in answer.json()["error"]


# -- lookup by email or phone ---------------------------------------------------


def identify(api, user: str, eid: str, **traits) -> None:
    with api.server() as client:
        answer = client.post("/v1/events", json={"events": [
            {"id": eid, "type": "identify", "user_id": user, "traits": traits}]})
    assert answer.status_code == 202, answer.text


def find(api, token: str = READ_TOKEN, **query) -> httpx.Response:
    with api.client(**bearer(token)) as client:
        return client.get("/v1/people", params=query)


def index_size(redis_sync_client) -> int:
    return sum(redis_sync_client.zcard(KEYS.people_index(shard)) for shard in range(IX_SHARDS))


def test_an_email_is_found_in_any_case_and_spacing_and_not_once_changed(api, redis_sync_client):
    identify(api, "ada", "e1", email="Ada.Lovelace@Example.com")
    for asked in ("ada.lovelace@example.com", "  ADA.LOVELACE@EXAMPLE.COM ", "Ada.Lovelace@example.com"):
        answer = find(api, email=asked)
        assert answer.status_code == 200 and answer.json() == {"people": ["u:ada"]}, asked
    assert find(api, ADMIN_TOKEN, email="ada.lovelace@example.com").json() == {"people": ["u:ada"]}
    identify(api, "ada", "e2", email="ada@newmail.example")
    assert find(api, email="ada.lovelace@example.com").json() == {"people": []}
    assert find(api, email="ADA@newmail.example").json() == {"people": ["u:ada"]}
    assert index_size(redis_sync_client) == 1  # the old entry went when the address changed


def test_an_erased_person_is_not_found(api, redis_sync_client):
    identify(api, "bob", "e1", email="bob@example.com", phone="+39 333 111 2222")
    assert find(api, phone="+393331112222").json() == {"people": ["u:bob"]}
    with api.client(**bearer(ADMIN_TOKEN)) as client:
        assert client.delete("/v1/people/bob").status_code == 200
    assert find(api, email="bob@example.com").json() == {"people": []}
    assert find(api, phone="+393331112222").json() == {"people": []}
    assert index_size(redis_sync_client) == 0


def test_a_phone_without_its_country_code_is_read_in_the_region(api):
    identify(api, "carl", "e1", phone="020 7946 0958")  # ATTIMO_PHONE_REGION=GB
    for asked in ("+44 20 7946 0958", "(020) 7946-0958", "+442079460958"):
        assert find(api, phone=asked).json() == {"people": ["u:carl"]}, asked
    assert find(api, phone="+1 202 555 0143").json() == {"people": []}


@pytest.mark.parametrize(("query", "field"), [
    ({}, "email"),
    ({"email": "a@example.com", "phone": "+442079460958"}, "email"),
    ({"email": "not an address"}, "email"),
    ({"phone": "call me"}, "phone"),
])
def test_a_lookup_needs_one_address_of_its_kind(api, query, field):
    answer = find(api, **query)
    assert answer.status_code == 422 and answer.json()["field"] == field


def test_a_lookup_needs_the_read_or_admin_scope(api):
    answer = find(api, INGEST_TOKEN, email="a@example.com")
    assert answer.status_code == 403 and "read scope" in answer.json()["error"]
    with api.browser() as client:
        assert client.get("/v1/people", params={"email": "a@example.com"}).status_code == 403
