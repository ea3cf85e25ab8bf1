"""The HTTP/1.1 side of the load generator: requests rendered to wire bytes
once before a run (HttpTarget), response parsing (Content-Length and chunked),
and the keep-alive connection that carries one request at a time and reports
each response to the run that owns it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

# A body is sent as is (bytes, str) or JSON-encoded (anything orjson takes).
Body = bytes | str | Mapping[str, Any]
BodySource = Body | Sequence[Any] | Callable[[int], Any] | None

_MAX_HEAD_BYTES = 64 * 1024


# --------------------------------------------------------------------------
# Requests, rendered to bytes before a run

def render_body(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


def render_requests(
    method: str,
    path: str,
    *,
    host: str,
    port: int,
    bodies: BodySource = None,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    variants: int = 4096,
) -> list[bytes]:
    """Every distinct request of a run as wire bytes; a run cycles through them.

    `bodies` is one body, a sequence of bodies, or a function of the request
    index called `variants` times (e.g. rotating over person ids)."""
    if bodies is None or isinstance(bodies, bytes | str | Mapping):
        rendered = [b"" if bodies is None else render_body(bodies)]
    elif callable(bodies):
        rendered = [render_body(bodies(i)) for i in range(variants)]
    else:
        rendered = [render_body(body) for body in bodies]
    if not rendered:
        raise ValueError("bodies is an empty sequence")

    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if bodies is not None:
        head.append(f"Content-Type: {content_type}")
    # A body-less POST still says Content-Length: 0, or a server may wait for one.
    declares_length = bodies is not None or method not in ("GET", "HEAD")
    head_bytes = "\r\n".join(head).encode()
    return [
        head_bytes
        + (f"\r\nContent-Length: {len(body)}".encode() if declares_length else b"")
        + b"\r\n\r\n"
        + body
        for body in rendered
    ]


@dataclass
class HttpTarget:
    """Where a load goes and what it carries, rendered to bytes once at creation."""

    host: str
    port: int
    path: str
    method: str = "POST"
    bodies: BodySource = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    variants: int = 4096
    requests: list[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.requests = render_requests(
            self.method,
            self.path,
            host=self.host,
            port=self.port,
            bodies=self.bodies,
            headers=self.headers,
            content_type=self.content_type,
            variants=self.variants,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> HttpTarget:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// targets are supported, got {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 80, path=path, **kwargs)


# --------------------------------------------------------------------------
# Response parsing


class ProtocolViolation(Exception):
    """The server sent something that is not a well-formed HTTP/1.1 response."""


def parse_response(buffer: bytes | bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, keep_alive) of the first complete response in
    `buffer`, or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > _MAX_HEAD_BYTES:
            raise ProtocolViolation("response head larger than 64 KiB")
        return None
    if not buffer.startswith(b"HTTP/1."):
        raise ProtocolViolation(f"not an HTTP/1.x status line: {bytes(buffer[:40])!r}")
    try:
        status = int(buffer[9:12])
    except ValueError:
        raise ProtocolViolation(f"bad status line: {bytes(buffer[:40])!r}") from None
    head = bytes(buffer[:head_end]).lower()
    body_start = head_end + 4
    keep_alive = b"\r\nconnection: close" not in head and not head.startswith(b"http/1.0")

    length_at = head.find(b"\r\ncontent-length:")
    if length_at >= 0:
        line_end = head.find(b"\r\n", length_at + 2)
        try:
            length = int(head[length_at + 17 : line_end if line_end >= 0 else None])
        except ValueError:
            raise ProtocolViolation("bad Content-Length") from None
        end = body_start + length
        return (status, end, keep_alive) if len(buffer) >= end else None
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        end = _chunked_body_end(buffer, body_start)
        return (status, end, keep_alive) if end >= 0 else None
    if status < 200 or status in (204, 304):
        return status, body_start, keep_alive
    raise ProtocolViolation("response without Content-Length or chunked encoding")


def _chunked_body_end(buffer: bytes | bytearray, position: int) -> int:
    """Offset just past a chunked body starting at `position`, or -1 if incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return -1
        try:
            size = int(bytes(buffer[position:line_end]).split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolViolation("bad chunk size") from None
        position = line_end + 2
        if size == 0:
            if len(buffer) < position + 2:
                return -1
            if buffer[position : position + 2] == b"\r\n":
                return position + 2
            trailers_end = buffer.find(b"\r\n\r\n", position)
            return trailers_end + 4 if trailers_end >= 0 else -1
        position += size + 2
        if position > len(buffer):
            return -1


# --------------------------------------------------------------------------
# A connection


class ConnectionOwner(Protocol):
    """What a Connection reports to: the run using it (schedule._OpenLoopRun)."""

    def forget_fd(self, connection: Connection) -> None: ...
    def on_response(self, connection: Connection, status: int, keep_alive: bool) -> None: ...
    def on_protocol_violation(self, connection: Connection) -> None: ...
    def on_connection_lost(self, connection: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time (no pipelining,
    as browsers and ordinary HTTP clients do)."""

    def __init__(self, run: ConnectionOwner):
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.unparsed = bytearray()
        self.busy = False
        self.intended = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fd = transport.get_extra_info("socket").fileno()

    def eof_received(self) -> None:
        # The transport closes its socket right after this: stop select()ing on it.
        self.run.forget_fd(self)

    def send(self, request: bytes, intended: float) -> None:
        self.busy = True
        self.intended = intended
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.unparsed:
            self.unparsed += data
            data = self.unparsed  # type: ignore[assignment]
        try:
            parsed = parse_response(data)
            if parsed is not None and (not self.busy or parsed[1] != len(data)):
                raise ProtocolViolation("bytes the server sent without being asked")
        except ProtocolViolation:
            self.run.on_protocol_violation(self)
            return
        if parsed is None:
            if data is not self.unparsed:
                self.unparsed = bytearray(data)
            return
        if self.unparsed:
            self.unparsed = bytearray()
        status, _, keep_alive = parsed
        self.run.on_response(self, status, keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.on_connection_lost(self)
