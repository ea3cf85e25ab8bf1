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


def derived_key(secret: str | bytes, purpose: str) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, purpose.encode(), hashlib.sha256).digest()
