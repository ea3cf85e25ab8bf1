"""One key per purpose, derived from a secret: a signature made for one job
(a timestamped user signature, an email link, a decision id) is never valid
for another, even where their messages could be made to look alike. The
labels hold spaces, which no person id may (so no plain user signature is
ever a derived key)."""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMPED_USER_SIG = "attimo timestamped user signature"
EMAIL_LINKS = "attimo email links v2"
DECISION_IDS = "attimo decision ids"
CONSOLE_SESSIONS = "attimo console sessions"


def derived_key(secret: str | bytes, purpose: str) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, purpose.encode(), hashlib.sha256).digest()


# Webhook bodies (follow-up webhooks and audience destinations): HMAC-SHA256 of
# "<timestamp ms>.<body>" with ATTIMO_WEBHOOK_SECRET, sent in these headers.
SIGNATURE_HEADER = "X-Attimo-Signature"
TIMESTAMP_HEADER = "X-Attimo-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign_body(secret: bytes, timestamp_ms: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp_ms).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """For receivers (and tests): does the signature header match the body?"""
    try:
        expected = sign_body(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), signature.encode())
