"""The few named errors Attimo raises, each carrying what a person needs to fix
the cause. The API maps them to HTTP answers in one place (api/errors.py).

AttimoError
├── SettingsError, CatalogError          fix the configuration or the catalog
├── EventRejected (422)                  input breaks the schema or a limit
│   ├── BodyTooLarge (413)
│   ├── MalformedBody (400)
│   ├── BodyTimeout (408)
│   └── UnsupportedMediaType (415)
├── NotAuthenticated (401), NotAuthorized (403)
├── RateLimited (429)                    a client past its rate limit: retry_after s
├── StoreUnavailable (503)               Redis or Kafka not there, or too slow
│   └── StoreContention                  a key kept changing under a transaction
└── SendError                            a channel failed: retried through the queue
    └── PermanentSendError               retrying cannot help: dead-lettered at once
"""

from __future__ import annotations


class AttimoError(Exception):
    """Base class: a message a person can act on."""


class SettingsError(AttimoError):
    pass


class CatalogError(AttimoError):
    """A catalog that cannot be loaded; `problems` lists every (path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {path}: {reason}" for path, reason in problems)
        super().__init__(f"{len(problems)} problem(s) in catalog:\n{lines}")


class EventRejected(AttimoError):
    """Input that breaks the schema or a limit: `field` is a JSON path."""

    status = 422

    def __init__(self, reason: str, field: str = "", limit: int | None = None):
        self.reason = reason
        self.field = field
        self.limit = limit
        where = f" at {field}" if field else ""
        super().__init__(f"{reason}{where}")

    def as_dict(self) -> dict:
        body: dict = {"error": self.reason}
        if self.field:
            body["field"] = self.field
        if self.limit is not None:
            body["limit"] = self.limit
        return body


class NotFound(EventRejected):
    """A path naming nothing that exists (a segment, an experiment)."""

    status = 404


class BodyTooLarge(EventRejected):
    status = 413


class MalformedBody(EventRejected):
    status = 400


class BodyTimeout(EventRejected):
    """The body did not arrive within ATTIMO_READ_TIMEOUT_MS."""

    status = 408


class UnsupportedMediaType(EventRejected):
    """A body in a Content-Type the route does not read."""

    status = 415


class NotAuthenticated(AttimoError):
    """No credentials, or credentials this server does not know (401)."""


class NotAuthorized(AttimoError):
    """Known credentials that may not do this (403)."""


class RateLimited(AttimoError):
    """A public client past a rate limit (ATTIMO_RATE_LIMIT, ATTIMO_NEW_PROFILE_LIMIT):
    429, to be retried after `retry_after` whole seconds."""

    def __init__(self, reason: str, retry_after: int):
        self.retry_after = max(1, retry_after)
        super().__init__(reason)


class StoreUnavailable(AttimoError):
    """Redis is unreachable, too slow for the budget, or the pool is exhausted."""


class StoreContention(StoreUnavailable):
    """A key kept changing under an optimistic transaction (WATCH or
    compare-and-set) past the bounded number of attempts: retry later."""


class SendError(AttimoError):
    """Raised by a sender (engine/followups/scheduler.py) for a failure worth retrying
    later through the queue; its text is the reason recorded (any other
    exception is retried too, with its type named in the reason)."""


class PermanentSendError(SendError):
    """Raised by a sender when retrying cannot help: dead-letter at once."""


class AddressRefused(PermanentSendError):
    """The recipient's address does not exist (a hard bounce): dead-letter, and
    suppress the address on the channel so nothing is sent to it again."""

    def __init__(self, reason: str, channel: str, address: str):
        super().__init__(reason)
        self.channel = channel
        self.address = address
