"""A person's audience card (Keys.audience_card): the SHA-256 of their
normalised email and E.164 phone, and whether they gave advertising consent,
as one string "<email>|<phone>|<consent>" so an export reads a chunk of cards
with one MGET. It is also the person's list of lookup index entries
(engine/store/people_index.py): the card is written before the index, so
erasure finds every entry from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EMAIL, PHONE, CONSENT = 1, 2, 3  # the card's parts

# KEYS[1] card  ARGV[1] TTL s, then pairs: part, value. Returns the card before.
SWAP = r"""
local before = redis.call('GET', KEYS[1]) or '||'
local e, p, a = string.match(before, '^([^|]*)|([^|]*)|([^|]*)$')
local parts = {e or '', p or '', a or ''}
for i = 2, #ARGV, 2 do parts[tonumber(ARGV[i])] = ARGV[i + 1] end
redis.call('SET', KEYS[1], table.concat(parts, '|'), 'EX', ARGV[1])
return before
"""


@dataclass(frozen=True, slots=True)
class Card:
    email: str | None = None  # sha256 hex
    phone: str | None = None
    consent: bool = False  # advertising

    def entries(self) -> set[str]:
        """The lookup index entries of this card."""
        return {f"{kind}:{digest}" for kind, digest in (("e", self.email), ("p", self.phone)) if digest}


def parse(value) -> Card:
    if not value:
        return Card()
    email, phone, consent = (value.decode() if isinstance(value, bytes) else value).split("|")
    return Card(email or None, phone or None, consent == "1")


class Cards:
    def __init__(self, redis, keys, ttl_s: int = 400 * 86_400):
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.swap = redis.register_script(SWAP)

    def swap_call(self, person: str, parts: dict[int, str]) -> tuple:
        """Set some parts of a person's card ("" clears one), for run_scripts;
        the reply is the card before."""
        args = [self.ttl_s]
        for part, value in parts.items():
            args += [part, value]
        return (self.swap, [self.keys.audience_card(person)], args)

    async def read(self, people: Sequence[str]) -> list[Card]:
        """One MGET (on a cluster, one per node)."""
        if not people:
            return []
        keys = [self.keys.audience_card(person) for person in people]
        many = getattr(self.redis, "mget_nonatomic", None)
        return [parse(value) for value in await (many(keys) if many is not None else self.redis.mget(keys))]
