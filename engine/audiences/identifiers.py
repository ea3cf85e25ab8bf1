"""The identifiers ad platforms match customer lists on, in the one form they
expect before hashing (Google Customer Match, Meta Custom Audiences): an email
trimmed and in lower case, a phone in E.164 (+ country code and digits), each
sent as the hex SHA-256 of that form. Pure."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import phonenumbers

from engine.policy import suppression_address

EMAIL_TRAIT = "email"
PHONE_TRAIT = "phone"


def normal_email(text: object) -> str | None:
    """`"  Ada@Example.COM "` → `ada@example.com`; None when it is not an address."""
    if not isinstance(text, str):
        return None
    return suppression_address("email", text)


def normal_phone(text: object, region: str | None = None) -> str | None:
    """`"+44 20 7946 0958"` → `+442079460958`. A number without its country code
    is read in `region` (ATTIMO_PHONE_REGION, e.g. "GB"), and without a region
    it is not a phone number: guessing the country would match a stranger."""
    if not isinstance(text, str) or not text.strip() or len(text) > 40:
        return None
    return _normal_phone(text, region)


# "+<country><number>" with only spaces, dots or dashes between the digits:
# already E.164 once they are taken out (phonenumbers costs ~50 µs a number,
# the most of a CRM import's row). Anything else (a "(0)", no "+") is parsed.
_INTERNATIONAL = re.compile(r"\+[1-9](?:[ .\-]?[0-9]){7,14}")
_SEPARATORS = str.maketrans("", "", " .-")


@lru_cache(maxsize=8192)  # a batch names an address in the lookup index and the audience card
def _normal_phone(text: str, region: str | None) -> str | None:
    plain = text.strip()
    if _INTERNATIONAL.fullmatch(plain):
        return plain.translate(_SEPARATORS)
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=8192)
def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hashed_email(text: object) -> str | None:
    email = normal_email(text)
    return sha256_hex(email) if email else None


def hashed_phone(text: object, region: str | None = None) -> str | None:
    phone = normal_phone(text, region)
    return sha256_hex(phone) if phone else None
