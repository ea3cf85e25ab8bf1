"""The one place a Redis client is made from the settings: a single server behind a
blocking connection pool (a full pool waits briefly, then fails with a named
error the API turns into a 503 or a fallback), or a Redis Cluster when the URL's
scheme is `redis+cluster://` (any node; the others are discovered)."""

from __future__ import annotations

import asyncio
import weakref
from urllib.parse import urlsplit, urlunsplit

from hiredis import pack_command
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands import CoreCommands
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeout

from engine.settings import Settings
from engine.store.pipelined import Pipelined

CLUSTER_SCHEME = "redis+cluster"
SOCKET_TIMEOUT_S = 5.0  # a command's send or reply waiting this long: the connection is given up
# An optimistic transaction (WATCH, or COMPARE_AND_SET below) that loses the
# race this many times in a row gives up with StoreContention instead of
# spinning: one key written that often by others is a fault to report.
MAX_OPTIMISTIC_ATTEMPTS = 32

# KEYS[1] a STRING read earlier (a person's journey or contact state)
# ARGV[1] the value read then ('' when absent), ARGV[2] new value, ARGV[3] TTL s
# Writes only if nobody changed it since it was read; 1 if written. Unlike
# WATCH, it holds no connection between the read and the write, and many of
# them go in one pipelined round trip.
COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""


# The script digests each client has loaded: a script is loaded before its
# first pipelined call, because on a Redis Cluster a pipeline that meets NOSCRIPT
# on one node has already run on the others.
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def preload(redis: Redis | RedisCluster, scripts) -> None:
    """Load scripts now (at start-up) instead of before their first call."""
    loaded = _LOADED.setdefault(redis, set())
    for script in scripts:
        await redis.script_load(script.script)
        loaded.add(script.sha)


async def run_scripts(redis: Redis | RedisCluster, calls: list[tuple]) -> list:
    """(script, keys, args) calls, each a script from `redis.register_script`, in
    one pipelined round trip. Raw EVALSHA: a cluster pipeline refuses the script
    helper but routes the raw command by its keys. Scripts are loaded before
    their first use; a Redis restarted since answers NOSCRIPT, and then the
    scripts are loaded again and the same calls run again (callers only pass
    calls that are safe to repeat)."""
    if not calls:
        return []
    loaded = _LOADED.setdefault(redis, set())
    for attempt in (1, 2):
        for script in {c[0].sha: c[0] for c in calls if c[0].sha not in loaded}.values():
            await redis.script_load(script.script)
            loaded.add(script.sha)
        try:
            return await run_commands(redis, [("EVALSHA", script.sha, len(keys), *keys, *args)
                                              for script, keys, args in calls])
        except NoScriptError:
            if attempt == 2:
                raise
            loaded.clear()
    raise AssertionError("unreachable")


async def run_commands(redis: Redis | RedisCluster, commands: list[tuple]) -> list:
    """Commands (tuples of a name and its arguments, as `Commands` collects
    them) in one round trip: on a single server over its pipelined connection,
    packed in C, with the replies as Redis sends them (a hash is a flat list);
    on a cluster through redis-py's pipeline, routed by key. For writes and
    plain reads whose replies are used as Redis sends them; a connection lost
    on the way sends them once more, as redis-py's own retry does, so they
    must be safe to repeat (a counter of distinct ids, a capped history)."""
    if not commands:
        return []
    pipelined = getattr(redis, "pipelined", None)
    if pipelined is None:
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()
    return await _run_pipelined(pipelined, b"".join([_pack(command) for command in commands]), len(commands))


def as_dict(reply: dict | list) -> dict:
    """A hash as run_commands answers it, a dict from redis-py (a cluster) or a
    flat field, value list from the pipelined connection."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


class Commands(CoreCommands):
    """Collects commands written as on a redis-py pipeline (`commands.lpush(…)`)
    for `run_commands`: the helpers that queue their writes into a pipeline
    queue them here as well."""

    def __init__(self) -> None:
        self.stack: list[tuple] = []

    def execute_command(self, *args, **options) -> None:
        self.stack.append(args)


def _pack(command: tuple) -> bytes:
    try:
        return pack_command(command)
    except TypeError as exc:
        raise DataError(f"Invalid input in {command[0]!r}: {exc}; convert to bytes, str, int or float first") \
            from None


async def _run_pipelined(pipelined: Pipelined, payload: bytes, count: int) -> list:
    """`count` commands written at once, their replies read under one deadline;
    the first error reply is raised. A connection that broke (or stalled) is
    given up and the commands written once more on a new one."""
    for attempt in (1, 2):
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT_S):
                return await pipelined.execute(payload, count)
        except (RedisConnectionError, RedisTimeout, TimeoutError) as exc:
            if attempt == 2:
                if isinstance(exc, TimeoutError):
                    raise RedisTimeout("Redis did not answer in time") from exc
                raise
    raise AssertionError("unreachable")


class BoundedSendConnection(Connection):
    """A connection whose sends are bounded by socket_timeout in the calling
    task. redis-py bounds them with asyncio.wait_for, which on Python 3.11 wraps
    every command's send in a Task of its own, two turns of the event loop: a
    tenth of a decide's CPU (benchmarks/README.md, P1c). Reads keep redis-py's
    own bound, which already runs in the calling task. Commands are packed by
    hiredis in C (see `pack_command`)."""

    def pack_command(self, *args):
        """One command in RESP, packed by hiredis: redis-py's own packer runs
        every argument through its encoder in Python, tens of microseconds for
        a script call, and every pipeline of the scheduler and the worker pays
        it per command. A command name with a space ("CONFIG SET") is split,
        as redis-py does; what Redis cannot take is a DataError, as there."""
        name = args[0]
        if isinstance(name, str | bytes) and (" " if isinstance(name, str) else b" ") in name:
            args = (*name.split(), *args[1:])
        return [_pack(args)]

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        bound = self.socket_timeout
        if not bound:
            return await super().send_packed_command(command, check_health)
        # Unset while this send runs, so redis-py sends in place; the connection
        # is this caller's alone until its reply is read, and that read sees it set.
        self.socket_timeout = None
        try:
            async with asyncio.timeout(bound):
                await super().send_packed_command(command, check_health)
        except TimeoutError:  # redis-py disconnected on the cancellation
            raise RedisTimeout("Timeout writing to socket") from None
        finally:
            self.socket_timeout = bound


class OneDeadlinePipeline(Pipeline):
    """A pipeline whose replies are read under one deadline (socket_timeout)
    instead of one timer per reply: redis-py arms an asyncio timeout for every
    reply it reads, about 5 µs each, and the scheduler's settle step reads a
    dozen replies a message (benchmarks/README.md, P9). A deadline missed
    drops the connection (the read was cancelled mid-reply), as a missed
    timer does."""

    async def _execute_pipeline(self, connection, commands, raise_on_error):
        return await _one_deadline(connection, super()._execute_pipeline(connection, commands, raise_on_error))

    async def _execute_transaction(self, connection, commands, raise_on_error):
        return await _one_deadline(connection, super()._execute_transaction(connection, commands, raise_on_error))


async def _one_deadline(connection: Connection, work):
    bound = connection.socket_timeout
    if not bound:
        return await work
    connection.socket_timeout = None  # each read and send waits without a timer of its own
    try:
        async with asyncio.timeout(bound):
            return await work
    except TimeoutError:
        await connection.disconnect(nowait=True)
        raise RedisTimeout("Redis did not answer the pipeline in time") from None
    finally:
        connection.socket_timeout = bound


class Store(Redis):
    """The single-server client: redis-py's, with pipelines read under one
    deadline, and the pipelined connection (`pipelined`, None for TLS or a
    Unix socket) that script calls and command batches go over."""

    pipelined: Pipelined | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.pipelined is not None:
            await self.pipelined.aclose()
        await super().aclose(close_connection_pool)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return OneDeadlinePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def connect(settings: Settings, *, pool_size: int | None = None, pool_timeout_s: float | None = None,
            caller_bounds: bool = False) -> Redis | RedisCluster:
    """`caller_bounds`: every command's caller awaits it under a deadline of
    its own (decide's budget), so the commands carry no timer of their own:
    each timer is a few microseconds of a decide that costs a few hundred."""
    size = pool_size or settings.redis_pool_size
    socket_timeout = None if caller_bounds else SOCKET_TIMEOUT_S
    timeout_s = settings.redis_pool_timeout_ms / 1000 if pool_timeout_s is None else pool_timeout_s
    if is_cluster_url(settings.redis_url):
        parts = urlsplit(settings.redis_url)
        node_url = urlunsplit(("redis", parts.netloc, "", "", ""))
        # Per node: the cluster client keeps one pool for each primary.
        return RedisCluster.from_url(
            node_url,
            max_connections=size,
            socket_connect_timeout=1.0,
            socket_timeout=socket_timeout,
        )
    # from_pool: the client owns its pool, and closing it closes the connections.
    store = Store.from_pool(BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=size,
        timeout=timeout_s,
        connection_class=BoundedSendConnection,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
    ))
    store.pipelined = Pipelined.of(settings.redis_url)
    return store
