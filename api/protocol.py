"""The HTTP protocol uvicorn runs, with a deadline on each request message: a
client that opens a connection and sends its headers or its body slowly (or
never) is cut off after ATTIMO_READ_TIMEOUT_MS instead of holding a file
descriptor for ever. uvicorn has a keep-alive timeout between requests but none
within one; and a route that answers without reading the body (a 401, say)
would leave the rest of that body with no timer at all. The deadline runs from
the connection (or the next request's first byte) until the whole message,
body included, has arrived. api/http.py's body deadline answers 408 first when
a route is reading it. A route whose body may take longer than one deadline
(a CRM import streams for minutes) is named in STREAMED_PATHS: for it the
deadline runs again from each piece of the body, so only a client that stops
sending is cut off."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

STREAMED_PATHS = frozenset({b"/v1/admin/import"})


class HeaderDeadlineProtocol(HttpToolsProtocol):
    # Set by create_app in each process (uvicorn builds protocols from this
    # class, in every worker process it spawns).
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()  # a new request on a kept-alive connection

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._header_deadline is not None and self.url.partition(b"?")[0] in STREAMED_PATHS:
            self._arm_header_deadline()

    def on_message_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
