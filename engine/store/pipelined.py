"""One pipelined connection per client to a plain Redis server, shared by every
caller: each write goes out at once and Redis answers in order, so a round
trip costs one write, one future and its share of one parse, without a
connection taken from and given back to redis-py's pool, a retry wrapper or a
timer per reply. Decide's profile GET (`get`) and the batches of script calls
and commands of ingest, the worker and the scheduler (`execute`) use it.
Measured (benchmarks/README.md): the pool's round trip was about a third of a
decide's CPU, and a large part of the scheduler's.

Only for a plain `redis://` server: a Redis Cluster, a TLS or a Unix socket URL
keeps redis-py (`Pipelined.of` says which). Nothing that holds a connection
(WATCH, MULTI, blocking reads, SUBSCRIBE) goes here. A caller that stops
waiting (its deadline passed) still has its replies parsed and dropped, so the
order holds; a connection whose oldest request waits past STALLED_S, or with
more than MAX_WAITING in flight, is closed, failing them all, and the next
request opens a new one."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

STALLED_S = 5.0  # the oldest request unanswered this long: the connection is given up
MAX_WAITING = 10_000
CONNECT_TIMEOUT_S = 1.0


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Waiting:
    """A request in flight: `count` replies to gather for one future."""

    __slots__ = ("future", "count", "replies", "sent_at")

    def __init__(self, future: asyncio.Future, count: int, sent_at: float):
        self.future, self.count, self.replies, self.sent_at = future, count, [], sent_at


class _Connection(asyncio.Protocol):
    """One connection: replies resolve the requests in the order sent."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[_Waiting] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := self.reader.gets()) is not False:
                head = waiting[0]
                head.replies.append(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)
                if len(head.replies) == head.count:
                    waiting.popleft()
                    if not head.future.done():  # else its caller stopped waiting
                        head.future.set_result(head.replies)
        except hiredis.ProtocolError as exc:
            self.close(RedisConnectionError(f"Redis sent what is not RESP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError("the Redis connection closed"))

    def close(self, error: Exception) -> None:
        self.closed = True
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_exception(error)

    def send(self, payload: bytes, count: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiting(future, count, time.monotonic()))
        self.transport.write(payload)
        return future


class Pipelined:
    """Requests over one pipelined connection to a plain Redis server."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None):
        self.host, self.port = host, port
        self._hello = []
        if password is not None:
            auth = (b"AUTH", username.encode(), password.encode()) if username else (b"AUTH", password.encode())
            self._hello.append(_command(*auth))
        if db:
            self._hello.append(_command(b"SELECT", str(db).encode()))
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future | None = None

    @classmethod
    def of(cls, url: str) -> Pipelined | None:
        """A connection for `url`, or None where redis-py keeps the work (a
        cluster, TLS, a Unix socket)."""
        if not url.startswith("redis://"):
            return None
        options = parse_url(url)
        if "path" in options or "host" not in options:
            return None
        return cls(options["host"], int(options.get("port", 6379)), db=int(options.get("db", 0)),
                   username=options.get("username"), password=options.get("password"))

    async def get(self, key: str) -> bytes | None:
        """GET, the error reply raised."""
        [reply] = await self.execute(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key.encode()), 1)
        return reply

    async def execute(self, payload: bytes, count: int) -> list:
        """`payload`, `count` commands in RESP, and their `count` replies in
        order; the first error reply is raised (the others were read: the
        connection stays in step). Unbounded: callers wait under a deadline
        of their own."""
        replies = await self.send(payload, count)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def send(self, payload: bytes, count: int) -> list:
        """As `execute`, error replies returned in place, not raised."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        waiting = connection.waiting
        if waiting and (len(waiting) >= MAX_WAITING or time.monotonic() - waiting[0].sent_at > STALLED_S):
            connection.close(RedisTimeout("Redis stopped answering"))
            connection = await self._connect()
        return await connection.send(payload, count)

    async def _connect(self) -> _Connection:
        """One connection at a time: concurrent requests wait for the same attempt."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        finally:
            if attempt.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot reach Redis at {self.host}:{self.port}: {exc}") from exc
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for hello in self._hello:  # AUTH, SELECT: answered before any request is sent
                    [reply] = await connection.send(hello, 1)
                    if isinstance(reply, ResponseError):
                        raise reply
        except BaseException as exc:
            connection.close(RedisConnectionError("closed"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeout("Redis did not answer AUTH or SELECT in time") from exc
            raise
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        if self._connection is not None and not self._connection.closed:
            self._connection.close(RedisConnectionError("closed"))
