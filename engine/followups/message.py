"""A follow-up message as queued, claimed and sent: who, which channel, when,
what. Pure data; its JSON form is what the due queue stores."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson


@dataclass(frozen=True, slots=True)
class Message:
    id: str  # the idempotency key: the same id scheduled twice is one message
    person: str
    channel: str  # email, push, sms, webhook, operator, inbox ...
    due_ms: int
    template: str = ""
    purpose: str = "marketing"
    body: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "person": self.person, "channel": self.channel, "due_ms": self.due_ms,
             "template": self.template, "purpose": self.purpose, "body": self.body})

    @classmethod
    def decode(cls, raw: bytes | str) -> Message:
        return cls(**orjson.loads(raw))
