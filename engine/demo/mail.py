"""DEMO ONLY: what `attimo demo` sends, kept in memory so a new user can see it.
A local SMTP server (aiosmtpd) on a free port receives the emails; the demo's
own /demo/webhooks/{channel} route receives push, SMS and operator webhooks;
GET /demo/outbox lists both, newest first."""

from __future__ import annotations

from collections import deque
from email import message_from_bytes, policy

from engine.clock import now_ms
from engine.store.local_server import free_port

OUTBOX_MAX = 200


class DemoOutbox:
    def __init__(self) -> None:
        self.items: deque[dict] = deque(maxlen=OUTBOX_MAX)
        self.smtp_port = 0
        self._controller = None

    # aiosmtpd handler hook
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content, policy=policy.default)
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        self.items.appendleft({
            "kind": "email", "at": now_ms(), "to": list(envelope.rcpt_tos),
            "subject": message["Subject"], "message_id": message["X-Attimo-Message-Id"],
            "list_unsubscribe": message["List-Unsubscribe"],
            "text": text.get_content() if text is not None else "",
            "html": html.get_content() if html is not None else None,
        })
        return "250 OK"

    def webhook(self, channel: str, headers: dict, body: object) -> None:
        self.items.appendleft({"kind": "webhook", "channel": channel, "at": now_ms(),
                               "idempotency_key": headers.get("idempotency-key"), "body": body})

    def start_smtp(self) -> DemoOutbox:
        from aiosmtpd.controller import Controller

        self.smtp_port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.smtp_port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
