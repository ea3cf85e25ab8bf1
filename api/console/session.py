"""Console sessions: a server token (all scopes), the admin token or the read
token, exchanged once at /console/sign-in for a stateless cookie that the
console's pages and their same-origin calls to /v1/… carry instead of the token.

The cookie is `<payload>.<mac>`, both base64url: the payload is JSON
{"name", "scopes", "exp" (unix s), "csrf"}; the MAC is HMAC-SHA256 under a key
derived (engine/signing.py) from the token signed in with. So a session lasts
as long as its token: rotating the token ends every session made with it, and a
read token's holder can never make an admin session. Nothing is stored
server-side: signing out clears the cookie, it cannot recall a copy.

A request authenticated by the cookie that may change something (any method but
GET and HEAD) must carry the session's `csrf` nonce in X-CSRF-Token: a page of
another site can make the browser send the cookie (were SameSite not enough),
but cannot read the nonce, which only the console's own pages hold."""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from hashlib import sha256

import orjson

from engine.errors import NotAuthenticated, NotAuthorized
from engine.ingest.identity import ADMIN, READ, Caller, server_caller
from engine.settings import Settings
from engine.signing import CONSOLE_SESSIONS, derived_key

SESSION_COOKIE = "attimo_console"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 8 * 3600
MAX_COOKIE_CHARS = 1024  # a real one is ~200: anything longer is refused unread
SAFE_METHODS = frozenset({"GET", "HEAD"})

# The tokens that may sign in: the settings field, the session's name, its
# scopes. The console shows before it changes, so an admin session reads too
# (an admin token can already export everything held about anyone); the server
# token counts as admin. No session ingests: the console never sends events,
# and an ingest token may not sign in.
CONSOLE_ADMIN = frozenset({ADMIN, READ})
SIGN_IN_TOKENS = (
    ("server_token", "server token", CONSOLE_ADMIN),
    ("admin_token", "admin token", CONSOLE_ADMIN),
    ("read_token", "read token", frozenset({READ})),
)


@dataclass(frozen=True, slots=True)
class Session:
    name: str  # "server token", "admin token" or "read token"
    scopes: frozenset
    expires: int  # unix seconds
    csrf: str

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def sign_in(token: str, settings: Settings, now_s: float) -> Session | None:
    """A new session for a token that may sign in, or None. Every configured
    token is compared in constant time, with no early exit."""
    found = None
    for field, name, scopes in SIGN_IN_TOKENS:
        secret = getattr(settings, field)
        if secret and hmac.compare_digest(token.encode(), secret.encode()):
            found = Session(name, scopes, int(now_s) + SESSION_S, secrets.token_urlsafe(24))
    return found


def encode(session: Session, settings: Settings) -> str:
    payload = _b64(orjson.dumps({"name": session.name, "scopes": sorted(session.scopes),
                                 "exp": session.expires, "csrf": session.csrf}))
    return f"{payload}.{_b64(_mac(_key(settings, session.name), payload))}"


def decode(cookie: str, settings: Settings, now_s: float) -> Session:
    """The session a cookie holds; NotAuthenticated (401) when it is not one of
    ours, was made with a token since changed, or has expired."""
    payload, dot, mac = cookie.partition(".")
    if not dot or len(cookie) > MAX_COOKIE_CHARS:
        raise NotAuthenticated("the console session cookie is not valid: sign in again")
    try:
        given = _unb64(mac)
    except ValueError:
        given = b""
    # Try the key of every token that may sign in (at most three HMACs): the
    # payload is read only once one of them vouches for it.
    signed_by = None
    for _, name, _ in SIGN_IN_TOKENS:
        key = _key(settings, name)
        if key is not None and hmac.compare_digest(_mac(key, payload), given):
            signed_by = name
    if signed_by is None:
        raise NotAuthenticated("the console session is not valid (signed out, or its token was "
                               "changed): sign in again")
    body = orjson.loads(_unb64(payload))
    scopes = frozenset(body["scopes"])
    if body["name"] != signed_by or scopes != _scopes_of(signed_by):
        raise NotAuthenticated("the console session is not valid: sign in again")
    if body["exp"] <= now_s:
        raise NotAuthenticated("the console session has expired (they last 8 hours): sign in again")
    return Session(signed_by, scopes, body["exp"], body["csrf"])


def session_caller(cookie: str, method: str, csrf_header: str | None, settings: Settings,
                   now_s: float | None = None) -> Caller:
    """The caller behind a console cookie, for a request to /v1/…: its token's
    scopes, once the CSRF nonce is checked on a request that changes something."""
    session = decode(cookie, settings, time.time() if now_s is None else now_s)
    if method not in SAFE_METHODS and not (
            csrf_header and hmac.compare_digest(csrf_header.encode(), session.csrf.encode())):
        raise NotAuthorized("a console request that changes something must carry X-CSRF-Token "
                            "(the session's nonce, in the page's csrf-token meta tag): reload the page")
    return server_caller(session.scopes, f"{session.name} (console)")  # the name a publish records


def cookie_header(value: str, settings: Settings, max_age: int = SESSION_S) -> str:
    """The Set-Cookie value: HttpOnly (page scripts never read it), SameSite=Strict
    (never sent with a request another site starts), Secure behind https."""
    secure = "; Secure" if settings.public_url.startswith("https://") else ""
    return f"{SESSION_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"


def cleared_cookie_header(settings: Settings) -> str:
    return cookie_header("", settings, max_age=0)


def _scopes_of(name: str) -> frozenset:
    return next(scopes for _, known, scopes in SIGN_IN_TOKENS if known == name)


def _key(settings: Settings, name: str) -> bytes | None:
    field = next(field for field, known, _ in SIGN_IN_TOKENS if known == name)
    secret = getattr(settings, field)
    return derived_key(secret, CONSOLE_SESSIONS) if secret else None


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, payload.encode(), sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # ValueError if not


class SignInThrottle:
    """Failed sign-ins per client address: past `limit` in `window_s`, that
    address is refused (429) until the oldest failure leaves the window, so a
    token cannot be guessed fast. Per process; bounded to `max_clients`
    addresses (the longest quiet forgotten first)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_clients: int = 10_000):
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.failures: OrderedDict[str, deque] = OrderedDict()

    def retry_after(self, client: str, now_s: float) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        recent = self.failures.get(client)
        if recent is None:
            return 0
        while recent and recent[0] <= now_s - self.window_s:
            recent.popleft()
        if len(recent) < self.limit:
            return 0
        return max(1, int(recent[0] + self.window_s - now_s + 0.999))

    def failed(self, client: str, now_s: float) -> None:
        recent = self.failures.pop(client, None) or deque(maxlen=self.limit)
        recent.append(now_s)
        self.failures[client] = recent  # to the end: the most recently active
        while len(self.failures) > self.max_clients:
            self.failures.popitem(last=False)
