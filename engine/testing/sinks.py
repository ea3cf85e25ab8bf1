"""Real receivers for the follow-up tests and benchmarks: an HTTP webhook
receiver (plain asyncio, HTTP/1.1) and an SMTP server (aiosmtpd), each on a
free port in a thread of this process, keeping what they received."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller

from engine.testing.processes import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at_ms: float = 0.0  # wall clock when it arrived


@dataclass
class WebhookReceiver:
    """Answers each POST with the next status of `statuses` (then 200) and keeps
    what it got. Runs its own event loop in a thread, so subprocesses can call it."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    delay_ms: float = 0.0  # how long each answer takes, like a real gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                path = request_line.decode().split(" ")[1]
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append(Received(path, headers, body, time.time() * 1000))
                status = self.statuses.pop(0) if self.statuses else 200
                if self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000)
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def start(self) -> WebhookReceiver:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            self._loop.run_forever()
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _Inbox:
    def __init__(self) -> None:
        self.messages = []
        self.arrived_ms: list[float] = []  # wall clock of each message, same order
        self.peers: list = []  # the client's address of each message: one per connection
        # Answers to the next deliveries instead of 250 (e.g. "451 4.3.0 Try
        # again later"), one each, like a relay that is busy or refuses; each
        # refused delivery is kept in `refused` as (answer, wall clock ms).
        self.replies: list[str] = []
        self.refused: list[tuple[str, float]] = []
        # Recipients this relay says do not exist: RCPT TO answers 550, as for a
        # mailbox that bounces.
        self.unknown: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.unknown:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.replies:
            reply = self.replies.pop(0)
            self.refused.append((reply, time.time() * 1000))
            return reply
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.arrived_ms.append(time.time() * 1000)
        self.peers.append(session.peer)
        self.messages.append((envelope.rcpt_tos, message))
        return "250 OK"


class SmtpSink:
    """aiosmtpd on a free port; `messages` holds (recipients, parsed message);
    set `replies` to refuse the next deliveries (their answers are in `refused`)."""

    def __init__(self) -> None:
        self.inbox = _Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self):
        return self.inbox.messages

    @property
    def replies(self) -> list[str]:
        return self.inbox.replies

    @replies.setter
    def replies(self, answers: list[str]) -> None:
        self.inbox.replies = list(answers)

    @property
    def refused(self) -> list[tuple[str, float]]:
        return self.inbox.refused

    def bounce(self, *addresses: str) -> None:
        """These recipients do not exist from now on (550 at RCPT TO)."""
        self.inbox.unknown.update(a.lower() for a in addresses)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def restart(self) -> None:
        """Stop (dropping every open connection) and listen again on the same port."""
        self.controller.stop()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()
