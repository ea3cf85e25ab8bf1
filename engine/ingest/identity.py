"""Who may speak for whom. A server token may act for any person and set any
trait; a public site key acts only for its own anonymous id, or for a user id
signed by the site's backend (hex HMAC-SHA256 of the id with the site secret),
never sets a protected trait nor, unsigned, a contact address (email, phone),
and never sends the events an email's signed links record (email_open,
email_click)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.catalog.model import Catalog
from engine.errors import EventRejected, NotAuthenticated, NotAuthorized
from engine.events import ANONYMOUS, KNOWN, LINK_EVENTS, PERSON_ID, Event, WireEvent, event_time_ms
from engine.policy import CONTACT_TRAITS
from engine.signing import TIMESTAMPED_USER_SIG, derived_key


def known(user_id: str) -> str:
    """A person the site vouches for: a signed user id, or the server's word."""
    return KNOWN + user_id


def anonymous(anonymous_id: str) -> str:
    """A visitor known only by the id its browser or app made up."""
    return ANONYMOUS + anonymous_id


def person_of_path(text: str) -> str:
    """A person named in a server URL or link: `u:<user id>`, `a:<anonymous
    id>`, or a bare user id (the common case for a CRM); 422 if not an id."""
    person = text if text.startswith((KNOWN, ANONYMOUS)) else known(text)
    if not PERSON_ID.fullmatch(person[2:]):
        raise EventRejected("person ids are 1 to 128 characters without spaces or braces", "person", 128)
    return person


# What a server token may do. ATTIMO_SERVER_TOKEN holds them all (as before
# scopes existed); ATTIMO_INGEST_TOKEN, ATTIMO_READ_TOKEN and ATTIMO_ADMIN_TOKEN
# one each, so a leaked ingest token cannot read people or erase them.
INGEST, READ, ADMIN = "ingest", "read", "admin"
ALL_SCOPES = frozenset({INGEST, READ, ADMIN})
CLOCK_SKEW_S = 300  # a timestamped signature may come from a clock this far ahead


def sign_user_id(secret: str, user_id: str, timestamp: int | None = None) -> str:
    """The user_sig of a user id: hex HMAC-SHA256 of the id under the site
    secret (never expires), or with `timestamp` (unix seconds) the form
    `<timestamp>.<hex>`: HMAC of "<timestamp>.<user id>" under a key of its own,
    derived from the secret (engine/signing.py), so a plain signature of an id
    that looks like "<timestamp>.<id>" is never a timestamped one for <id>. It
    expires after ATTIMO_SIGNATURE_MAX_AGE_S."""
    if timestamp is None:
        return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    key = derived_key(secret, TIMESTAMPED_USER_SIG)
    return f"{timestamp}." + hmac.new(key, f"{timestamp}.{user_id}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a public site key (`is_server` False), or a server token
    with its scopes. `site_secrets` verify user signatures: the current secret
    and, while one is being rotated out, the previous one."""

    is_server: bool
    site_secret: str | None = None
    scopes: frozenset = frozenset()
    name: str = ""  # which token: "server token", "admin token", … (who published a catalog)
    previous_secret: str | None = None
    max_age_s: int = 7 * 86_400
    clock: Callable[[], float] = time.time

    def may(self, scope: str) -> bool:
        return self.is_server and scope in self.scopes

    def person(self, anonymous_id: str | None, user_id: str | None, user_sig: str | None, field: str) -> str:
        """The person a request may read or write: `u:<user_id>` only with the
        site's signature (or the server token), else `a:<anonymous_id>`, which
        never names a known person's keys, whatever the id says."""
        if user_id is not None:
            if not self.is_server:
                self._check_signature(user_id, user_sig, field)
            return known(user_id)
        if anonymous_id is None:
            raise NotAuthorized(f"{field}: anonymous_id or user_id is required")
        return anonymous(anonymous_id)

    def _check_signature(self, user_id: str, user_sig: str | None, field: str) -> None:
        if not user_sig:
            raise NotAuthorized(f"{field}.user_sig: a user_id from a site key must be signed")
        stamp, dot, _ = user_sig.partition(".")
        timestamp = None
        if dot:
            if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
                raise NotAuthorized(f"{field}.user_sig: not <unix seconds>.<hex>")
            timestamp = int(stamp)
            age = self.clock() - timestamp
            if age > self.max_age_s:
                raise NotAuthorized(f"{field}.user_sig: expired (older than {self.max_age_s} s): sign it again")
            if age < -CLOCK_SKEW_S:
                raise NotAuthorized(f"{field}.user_sig: signed in the future")
        given = user_sig.lower().encode()
        for secret in (self.site_secret, self.previous_secret):
            if secret and hmac.compare_digest(sign_user_id(secret, user_id, timestamp).encode(), given):
                return
        raise NotAuthorized(f"{field}.user_sig: signature does not match user_id")


def _server_token(token: str, settings) -> tuple[str, frozenset] | None:
    """The name and scopes of a bearer token, or None if it is none of ours."""
    found = None
    for name, scopes in (("server_token", ALL_SCOPES), ("ingest_token", frozenset({INGEST})),
                         ("read_token", frozenset({READ})), ("admin_token", frozenset({ADMIN}))):
        secret = getattr(settings, name)
        # Every configured token is compared (no early exit): the time taken
        # does not tell which one a guess came close to.
        if secret and hmac.compare_digest(token.encode(), secret.encode()):
            found = (name.replace("_", " "), scopes)
    return found


def _server_scopes(token: str, settings) -> frozenset | None:
    found = _server_token(token, settings)
    return found[1] if found else None


def server_caller(scopes: frozenset, name: str = "") -> Caller:
    return Caller(is_server=True, scopes=scopes, name=name)


def authenticate(headers, query, settings) -> Caller:
    """A bearer token (server, with its scopes), or a public site key in
    X-Attimo-Key (or ?key= for sendBeacon, which cannot set headers)."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        found = _server_token(token.strip(), settings) if scheme.lower() == "bearer" else None
        if found is None:
            raise NotAuthenticated("the Authorization bearer token is not valid")
        return server_caller(found[1], found[0])
    key = headers.get("x-attimo-key") or query.get("key")
    if key is None:
        raise NotAuthenticated("send X-Attimo-Key (site key) or Authorization: Bearer (server token)")
    if not settings.site_key or not hmac.compare_digest(key.encode(), settings.site_key.encode()):
        raise NotAuthenticated("unknown site key")
    return Caller(is_server=False, site_secret=settings.site_secret, previous_secret=settings.site_secret_previous,
                  max_age_s=settings.signature_max_age_s)


def authenticate_write_key(authorization: str | None, body_write_key: str | None, settings) -> Caller:
    """Segment-style clients: the write key is the HTTP Basic user with an empty
    password (or `writeKey` in the body, or a Bearer token). A write key is a
    server token with the ingest scope (or the all-scopes server token)."""
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                raise NotAuthenticated("the Authorization Basic credentials are not base64 of 'key:'") from None
        elif scheme.lower() == "bearer":
            key = credentials.strip()
        else:
            raise NotAuthenticated("use HTTP Basic with the write key as the user and an empty password")
    elif body_write_key is not None:
        key = body_write_key
    else:
        raise NotAuthenticated("send the write key as the HTTP Basic user (empty password) or as writeKey")
    scopes = _server_scopes(key, settings)
    if scopes is None:
        raise NotAuthenticated("unknown write key (a server token with the ingest scope)")
    caller = server_caller(scopes)
    require(caller, INGEST)
    return caller


def require(caller: Caller, scope: str) -> None:
    """403 unless a server token with `scope` (the all-scopes token has every one)."""
    if not caller.is_server:
        raise NotAuthorized(f"this endpoint needs a server token with the {scope} scope")
    if not caller.may(scope):
        raise NotAuthorized(f"this token may not {scope}: it needs the {scope} scope")


def require_one_of(caller: Caller, *scopes: str) -> None:
    """403 unless a server token with one of `scopes` (reading what an admin
    changes: the catalog, its versions)."""
    if not any(caller.may(scope) for scope in scopes):
        require(caller, scopes[0])


def resolve_events(wire_events: list[WireEvent], caller: Caller, catalog: Catalog, now_ms: int) -> list[Event]:
    """Authorize each event and pin it to a person; the whole batch or nothing."""
    events = []
    protected = catalog.protected_traits
    for i, wire in enumerate(wire_events):
        path = f"events[{i}]"
        person = caller.person(wire.anonymous_id, wire.user_id, wire.user_sig, path)
        if wire.type in LINK_EVENTS and not caller.is_server:
            raise NotAuthorized(f"{path}.type: {wire.type} is recorded by the email's signed links; "
                                "only the server token sends it")
        if wire.traits and not caller.is_server and wire.user_id is None:
            for name in CONTACT_TRAITS & wire.traits.keys():
                raise NotAuthorized(f"{path}.traits.{name}: a contact address; only a signed user_id "
                                    "or the server token sets it")
        if wire.traits and not caller.is_server and protected:
            for name in wire.traits:
                if name in protected:
                    raise NotAuthorized(f"{path}.traits.{name}: a protected trait; only the server token sets it")
        # Only ever an anonymous profile into the signed user: never one known
        # person into another, whatever the anonymous id is made to say.
        merge_from = anonymous(wire.anonymous_id) if wire.user_id is not None and wire.anonymous_id else None
        events.append(Event(
            id=wire.id,
            type=wire.type,
            person=person,
            ts=event_time_ms(wire.ts, now_ms, path),
            properties=wire.properties,
            traits=wire.traits,
            merge_from=merge_from,
            trusted=caller.is_server,
        ))
    return events
