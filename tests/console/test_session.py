"""Console sessions without a server: what a cookie proves, for how long, to
whom, and the CSRF nonce a changing request must carry; the sign-in throttle."""

from __future__ import annotations

import base64

import orjson
import pytest

from api.console.session import (
    SESSION_S,
    Session,
    SignInThrottle,
    cleared_cookie_header,
    cookie_header,
    decode,
    encode,
    session_caller,
    sign_in,
)
from engine.errors import NotAuthenticated, NotAuthorized
from engine.ingest.identity import ADMIN, INGEST, READ
from engine.settings import Settings

NOW = 1_800_000_000
SETTINGS = Settings(server_token="server-secret-1", admin_token="admin-secret-1", read_token="read-secret-1",
                    ingest_token="ingest-secret-1")


def cookie_for(token: str, settings: Settings = SETTINGS, now: float = NOW) -> str:
    session = sign_in(token, settings, now)
    assert session is not None
    return encode(session, settings)


@pytest.mark.parametrize(("token", "name", "scopes"), [
    ("admin-secret-1", "admin token", {ADMIN, READ}),
    ("server-secret-1", "server token", {ADMIN, READ}),
    ("read-secret-1", "read token", {READ}),
])
def test_each_console_token_signs_in_with_its_name_and_scopes(token, name, scopes):
    session = decode(cookie_for(token), SETTINGS, NOW + 60)
    assert (session.name, session.scopes) == (name, frozenset(scopes))
    assert session.expires == NOW + SESSION_S
    assert len(session.csrf) >= 32


def test_an_ingest_token_or_a_guess_does_not_sign_in():
    assert sign_in("ingest-secret-1", SETTINGS, NOW) is None
    assert sign_in("admin-secret-", SETTINGS, NOW) is None
    assert sign_in("", SETTINGS, NOW) is None
    assert sign_in("", Settings(), NOW) is None  # no tokens configured: an empty one is not one


def test_each_sign_in_gets_its_own_csrf_nonce():
    nonces = {sign_in("admin-secret-1", SETTINGS, NOW).csrf for _ in range(20)}
    assert len(nonces) == 20


def test_a_session_expires_after_eight_hours():
    cookie = cookie_for("admin-secret-1")
    assert decode(cookie, SETTINGS, NOW + SESSION_S - 1).name == "admin token"
    with pytest.raises(NotAuthenticated, match="expired"):
        decode(cookie, SETTINGS, NOW + SESSION_S)


def test_changing_the_token_ends_its_sessions_and_no_other():
    admin, read = cookie_for("admin-secret-1"), cookie_for("read-secret-1")
    rotated = Settings(server_token="server-secret-1", admin_token="admin-secret-2", read_token="read-secret-1")
    with pytest.raises(NotAuthenticated, match="not valid"):
        decode(admin, rotated, NOW)
    assert decode(read, rotated, NOW).name == "read token"


def test_a_changed_payload_is_refused():
    payload, _, mac = cookie_for("read-secret-1").partition(".")
    body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(name="admin token", scopes=["admin", "read"])
    forged = base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()
    with pytest.raises(NotAuthenticated):
        decode(f"{forged}.{mac}", SETTINGS, NOW)


def test_a_read_token_holder_cannot_make_an_admin_session():
    """The MAC key is derived from the token signed in with: knowing the read
    token, one can sign any payload with the read key, and it reads as a read
    session or not at all."""
    from api.console.session import _b64, _key, _mac

    payload = _b64(orjson.dumps({"name": "admin token", "scopes": ["admin", "read"], "exp": NOW + 60,
                                 "csrf": "x"}))
    forged = f"{payload}.{_b64(_mac(_key(SETTINGS, 'read token'), payload))}"
    with pytest.raises(NotAuthenticated):
        decode(forged, SETTINGS, NOW)


@pytest.mark.parametrize("cookie", ["", ".", "abc", "abc.def", "a.b.c", "é.é", "x" * 5000, "e30.!!!!"])
def test_garbage_is_not_a_session(cookie):
    with pytest.raises(NotAuthenticated):
        decode(cookie, SETTINGS, NOW)


def test_a_changing_request_needs_the_sessions_csrf_nonce():
    cookie = cookie_for("admin-secret-1")
    nonce = decode(cookie, SETTINGS, NOW).csrf
    assert session_caller(cookie, "GET", None, SETTINGS, NOW).may(READ)
    assert session_caller(cookie, "HEAD", None, SETTINGS, NOW).may(ADMIN)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for header in (None, "", nonce[:-1], nonce + "x", cookie_for("admin-secret-1").partition(".")[0]):
            with pytest.raises(NotAuthorized, match="X-CSRF-Token"):
                session_caller(cookie, method, header, SETTINGS, NOW)
        caller = session_caller(cookie, method, nonce, SETTINGS, NOW)
        assert caller.is_server and caller.may(ADMIN) and not caller.may(INGEST)
        assert caller.name == "admin token (console)"  # what a catalog published from the console records


def test_the_cookie_is_http_only_strict_and_secure_behind_https():
    plain = cookie_header("v", SETTINGS)
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Path=/" in plain
    assert "Secure" not in plain
    https = Settings(admin_token="a", public_url="https://attimo.example")
    assert cookie_header("v", https).endswith("; Secure")
    assert "Max-Age=0" in cleared_cookie_header(https)


def test_the_throttle_refuses_an_address_past_its_failures_until_they_age():
    throttle = SignInThrottle(limit=3, window_s=60)
    for second in range(3):
        assert throttle.retry_after("198.51.100.7", NOW + second) == 0
        throttle.failed("198.51.100.7", NOW + second)
    assert throttle.retry_after("198.51.100.7", NOW + 3) == 57
    assert throttle.retry_after("203.0.113.1", NOW + 3) == 0  # another address is not held back
    assert throttle.retry_after("198.51.100.7", NOW + 60) == 0  # the first failure left the window


def test_the_throttle_forgets_the_longest_quiet_addresses_past_its_bound():
    throttle = SignInThrottle(limit=1, window_s=60, max_clients=2)
    for address in ("a", "b", "c"):
        throttle.failed(address, NOW)
    assert list(throttle.failures) == ["b", "c"]


def test_a_session_object_says_what_it_may():
    session = Session("read token", frozenset({READ}), NOW, "n")
    assert session.may(READ) and not session.may(ADMIN)
