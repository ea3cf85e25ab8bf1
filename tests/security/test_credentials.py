"""Credentials, attacked: explain through the public key, a signature that
never expires or was made for another id, a secret being rotated, and tokens
used outside their scope. Against a real `attimo serve` with scoped tokens."""

from __future__ import annotations

import time

import pytest

from engine.ingest.identity import sign_user_id
from engine.testing.processes import SITE_SECRET, start_api, stop_api

NEW_SECRET = "rotated-site-secret"
TOKENS = {"ingest": "tok-ingest", "read": "tok-read", "admin": "tok-admin"}


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("creds"), ATTIMO_KEY_PREFIX="creds",
                       ATTIMO_SITE_SECRET=NEW_SECRET, ATTIMO_SITE_SECRET_PREVIOUS=SITE_SECRET,
                       ATTIMO_SIGNATURE_MAX_AGE_S="3600", ATTIMO_INGEST_TOKEN=TOKENS["ingest"],
                       ATTIMO_READ_TOKEN=TOKENS["read"], ATTIMO_ADMIN_TOKEN=TOKENS["admin"])
    yield server
    stop_api(server)


def decide(api, sig: str, user: str = "u-ada", **query) -> int:
    with api.browser() as client:
        return client.post("/v1/decide", params=query,
                           json={"user_id": user, "user_sig": sig, "placements": ["home_hero"]}).status_code


def bearer(api, scope: str):
    return api.client(Authorization=f"Bearer {TOKENS[scope]}")


def test_explain_is_refused_to_the_site_key_and_to_tokens_without_read(api):
    with api.browser() as client:
        answer = client.post("/v1/decide?explain=1", json={"anonymous_id": "a-x", "placements": ["home_hero"]})
    assert answer.status_code == 403 and "explain" in answer.json()["error"]
    for scope, status in (("ingest", 403), ("read", 200), ("admin", 200)):
        with bearer(api, scope) as client:
            answer = client.post("/v1/decide?explain=1", json={"anonymous_id": "a-x", "placements": ["home_hero"]})
        assert answer.status_code == status, scope
        if status == 200:
            assert "explain" in answer.json()


def test_a_timestamped_signature_expires_and_cannot_come_from_the_future(api):
    now = int(time.time())
    assert decide(api, sign_user_id(NEW_SECRET, "u-ada", now - 60)) == 200
    assert decide(api, sign_user_id(NEW_SECRET, "u-ada", now - 7200)) == 403  # past the hour allowed
    assert decide(api, sign_user_id(NEW_SECRET, "u-ada", now + 3600)) == 403
    assert decide(api, sign_user_id(NEW_SECRET, "u-eve", now), user="u-eve") == 200
    assert decide(api, sign_user_id(NEW_SECRET, "u-eve", now), user="u-ada") == 403  # another id's
    with api.browser() as client:
        answer = client.post("/v1/decide", json={"user_id": "u-ada", "placements": ["home_hero"],
                                                 "user_sig": sign_user_id(NEW_SECRET, "u-ada", now - 7200)})
    assert "expired" in answer.json()["error"]


def test_both_secrets_of_a_rotation_are_accepted_and_no_other(api):
    assert decide(api, sign_user_id(NEW_SECRET, "u-ada")) == 200
    assert decide(api, sign_user_id(SITE_SECRET, "u-ada")) == 200  # signed before the rotation
    assert decide(api, sign_user_id("some-other-secret", "u-ada")) == 403
    assert decide(api, sign_user_id(SITE_SECRET, "u-ada", int(time.time()))) == 200


@pytest.mark.parametrize(("scope", "allowed"), [
    ("ingest", {"events"}),
    ("read", {"person", "kpis", "deadletters", "lookup", "segments", "members", "export", "catalog_read",
              "versions"}),
    ("admin", {"catalog", "erase", "suppress", "import", "lookup", "catalog_read", "versions"}),
])
def test_a_token_is_refused_outside_its_scope(api, scope, allowed):
    calls = {
        "events": lambda c: c.post("/v1/events", json={"events": [{"id": f"s-{scope}", "type": "x", "user_id": "u-s"}]}),
        "person": lambda c: c.get("/v1/people/u-s"),
        "kpis": lambda c: c.get("/v1/kpis"),
        "deadletters": lambda c: c.get("/v1/deadletters"),
        "catalog": lambda c: c.post("/v1/admin/catalog", content="placements: [home_hero]\noffers: []\n"),
        "erase": lambda c: c.delete("/v1/people/u-gone"),
        "suppress": lambda c: c.put("/v1/suppressions/email/gone@example.com"),
        "import": lambda c: c.post("/v1/admin/import", content=f"user_id,tier\nu-{scope},gold\n",
                                   headers={"Content-Type": "text/csv"}),
        "lookup": lambda c: c.get("/v1/people", params={"email": "s@example.com"}),
        "segments": lambda c: c.get("/v1/segments"),
        "catalog_read": lambda c: c.get("/v1/admin/catalog"),
        "versions": lambda c: c.get("/v1/admin/catalog/versions"),
        "members": lambda c: c.get("/v1/segments/crm_pricing_no_purchase/members"),
        "export": lambda c: c.get("/v1/segments/crm_pricing_no_purchase/export"),
    }
    with bearer(api, scope) as client:
        for name, call in calls.items():
            answer = call(client)
            if name in allowed:
                assert answer.status_code in (200, 202), (name, answer.text)
            else:
                assert answer.status_code == 403, (name, answer.status_code)
                assert "scope" in answer.json()["error"]


def test_the_all_scopes_server_token_still_does_everything(api):
    with api.server() as client:
        assert client.get("/v1/people/u-s").status_code == 200
        assert client.post("/v1/events", json={"events": [{"id": "all-1", "type": "x", "user_id": "u-s"}]}).status_code == 202
        assert client.post("/v1/decide?explain=1", json={"user_id": "u-s", "placements": ["home_hero"]}).status_code == 200


def test_the_inbox_takes_the_signature_in_headers_not_the_url(api):
    sig = sign_user_id(NEW_SECRET, "u-app", int(time.time()))
    with api.browser() as client:
        answer = client.get("/v1/inbox", headers={"X-Attimo-User": "u-app", "X-Attimo-User-Sig": sig})
        assert answer.status_code == 200 and answer.json() == {"messages": [], "unread": 0}
        assert client.get("/v1/inbox", headers={"X-Attimo-User": "u-app", "X-Attimo-User-Sig": "0" * 64}).status_code == 403


def test_a_plain_signature_never_passes_for_a_timestamped_one(api):
    """Plain: HMAC of the id. A site letting users pick ids could sign
    "<now>.u-ada"; that must not make a fresh timestamped signature for u-ada."""
    now = int(time.time())
    plain_of_lookalike = sign_user_id(NEW_SECRET, f"{now}.u-ada")
    assert decide(api, f"{now}.{plain_of_lookalike}") == 403
    assert decide(api, sign_user_id(NEW_SECRET, "u-ada", now)) == 200


def test_a_decision_for_anyone_needs_the_read_scope(api):
    for scope, status in (("ingest", 403), ("admin", 403), ("read", 200)):
        with bearer(api, scope) as client:
            answer = client.post("/v1/decide", json={"user_id": "u-ada", "placements": ["home_hero"]})
        assert answer.status_code == status, scope


def test_a_person_in_a_server_url_must_be_an_id(api):
    with api.server() as client:
        assert client.get("/v1/people/a}b").status_code == 422
        assert client.get("/v1/people/a:a%20b").status_code == 422
