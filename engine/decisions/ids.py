"""Decision ids the server can check. A decide answer's `decision_id` is signed
over its nonce, the time, the offers chosen and the person; an impression or a
click counts for an offer's KPIs only with a decision id that verifies for that
person and that offer, within DECISION_TTL_S. So a browser can still show what
it likes, but cannot mint impressions, clicks or the conversions they credit
for offers it was never given.

The id also names the context bucket the decision was made in (the catalog's
`learning.buckets`), so what an impression teaches goes to the bucket decide
saw, not one the browser names.

Form: `<nonce>.<payload>.<signature>`, the payload base64url of the JSON
[unix seconds, [offer ids], bucket], the signature the first 16 bytes (hex) of an
HMAC-SHA256 under a key derived from the site (or tracking) secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

import orjson

from engine.signing import DECISION_IDS, derived_key

DECISION_TTL_S = 86_400  # an impression or click must come within a day of its decision


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a verified decision id says."""

    nonce: str
    issued_s: int
    offers: list[str]
    bucket: str


@dataclass(frozen=True, slots=True)
class DecisionSigner:
    key: bytes
    ttl_s: int = DECISION_TTL_S

    @classmethod
    def from_secret(cls, secret: str) -> DecisionSigner:
        # Its own key: a decision id is never a valid user or link signature.
        return cls(derived_key(secret, DECISION_IDS))

    def _signature(self, nonce: str, payload: str, person: str) -> str:
        message = f"{nonce}.{payload}.{person}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def issue(self, person: str, offers: list[str], now_s: int, bucket: str = "*", nonce: str | None = None) -> str:
        nonce = nonce or new_nonce()
        payload = _b64(orjson.dumps([now_s, offers, bucket]))
        return f"{nonce}.{payload}.{self._signature(nonce, payload, person)}"

    def verify(self, decision_id: object, person: str, offer: str, now_s: float) -> bool:
        """True when `decision_id` was issued here, to `person`, with `offer`
        among the offers chosen, no longer than ttl_s ago."""
        ticket = self.read(decision_id, person, now_s)
        return ticket is not None and offer in ticket.offers

    def read(self, decision_id: object, person: str, now_s: float) -> Ticket | None:
        """The decision, when `decision_id` was issued here to `person` no
        longer than ttl_s ago; else None."""
        if not isinstance(decision_id, str) or len(decision_id) > 2048 or not decision_id.isascii():
            return None
        nonce, _, rest = decision_id.partition(".")
        payload, _, signature = rest.partition(".")
        expected = self._signature(nonce, payload, person)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return None
        try:
            issued, offers, *extra = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
            return None
        # A minute of slack: another API process may stamp a little ahead.
        if not isinstance(issued, int) or not -60 <= now_s - issued <= self.ttl_s or not isinstance(offers, list):
            return None
        bucket = extra[0] if extra and isinstance(extra[0], str) else "*"  # ids issued before buckets: "*"
        return Ticket(nonce, issued, offers, bucket)


def new_nonce() -> str:
    return os.urandom(8).hex()
