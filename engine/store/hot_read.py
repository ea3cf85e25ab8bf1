"""Decide's one read, a GET of the person's profile, over a single pipelined
connection instead of redis-py's pool: every decide of the process writes its
GET on the same connection and Redis answers in order, so a read costs one
write, one future and its share of one parse, without a connection taken from
and given back to a pool, a retry wrapper or a timer of its own (the decide
budget bounds it). Measured on the decide benchmark (benchmarks/README.md, P1c):
the round trip through the pool was about a third of a decide's CPU.

Only for a plain `redis://` server: a Redis Cluster, a TLS or a Unix socket URL
keeps redis-py (`HotReader.of` says which). A read the caller stopped waiting
for (its budget passed) still has its answer parsed and dropped, so the order
holds; a connection whose oldest read waits past STALLED_S, or with more than
MAX_WAITING reads in flight, is closed, failing them all (the decide falls back)
and the next read opens a new one."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

STALLED_S = 5.0  # the oldest read unanswered this long: the connection is given up
MAX_WAITING = 10_000
CONNECT_TIMEOUT_S = 1.0


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class _Pipelined(asyncio.Protocol):
    """One connection: replies resolve the waiting reads in the order sent."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()[0]
                if future.done():  # its caller stopped waiting
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ResponseError(str(reply)))
                else:
                    future.set_result(reply)
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
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def send(self, command: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((future, time.monotonic()))
        self.transport.write(command)
        return future


class HotReader:
    """GET over one pipelined connection to a plain Redis server."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None):
        self.host, self.port = host, port
        self._hello = []
        if password is not None:
            auth = (b"AUTH", username.encode(), password.encode()) if username else (b"AUTH", password.encode())
            self._hello.append(_command(*auth))
        if db:
            self._hello.append(_command(b"SELECT", str(db).encode()))
        self._connection: _Pipelined | None = None
        self._connecting: asyncio.Future | None = None

    @classmethod
    def of(cls, url: str) -> HotReader | None:
        """A reader for `url`, or None where redis-py keeps the read (a cluster,
        TLS, a Unix socket)."""
        if not url.startswith("redis://"):
            return None
        options = parse_url(url)
        if "path" in options or "host" not in options:
            return None
        return cls(options["host"], int(options.get("port", 6379)), db=int(options.get("db", 0)),
                   username=options.get("username"), password=options.get("password"))

    async def get(self, key: str) -> bytes | None:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        waiting = connection.waiting
        if waiting and (len(waiting) >= MAX_WAITING or time.monotonic() - waiting[0][1] > STALLED_S):
            connection.close(RedisTimeout("Redis stopped answering"))
            connection = await self._connect()
        return await connection.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key.encode()))

    async def _connect(self) -> _Pipelined:
        """One connection at a time: concurrent reads wait for the same attempt."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        finally:
            if attempt.done():
                self._connecting = None

    async def _open(self) -> _Pipelined:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, connection = await loop.create_connection(_Pipelined, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot reach Redis at {self.host}:{self.port}: {exc}") from exc
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for hello in self._hello:  # AUTH, SELECT: answered before any read is sent
                    await connection.send(hello)
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
