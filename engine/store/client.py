"""The one place a Redis client is made from the settings: a single server behind a
blocking connection pool (a full pool waits briefly, then fails with a named
error the API turns into a 503 or a fallback), or a Redis Cluster when the URL's
scheme is `redis+cluster://` (any node; the others are discovered)."""

from __future__ import annotations

import asyncio
import math
import weakref
from urllib.parse import urlsplit, urlunsplit

from hiredis import pack_command
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from engine.settings import Settings

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
            if isinstance(redis, RedisCluster):
                pipe = redis.pipeline(transaction=False)
                for script, keys, args in calls:
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return await pipe.execute()
            return await _run_packed(redis, calls)
        except NoScriptError:
            if attempt == 2:
                raise
            loaded.clear()
    raise AssertionError("unreachable")


def packed_calls(calls: list[tuple]) -> bytes:
    """The EVALSHA commands of `calls` in RESP, packed by hiredis in C: about a
    microsecond a call where redis-py's packer, which inspects every argument
    in Python, took tens (a third of an ingest batch's CPU:
    benchmarks/README.md, P3)."""
    return b"".join([pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                     for script, keys, args in calls])


async def _run_packed(redis: Redis, calls: list[tuple]) -> list:
    """`calls` on one connection of the pool, written at once, replies read in
    order under one deadline; the first error reply is raised once every reply
    is read (the connection stays in step), as a redis-py pipeline does. A
    connection that broke is dropped and the calls written once more on a new
    one (they are safe to repeat)."""
    payload = packed_calls(calls)
    pool = redis.connection_pool
    for attempt in (1, 2):
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(payload, check_health=False)
            replies, first_error = [], None
            async with asyncio.timeout(SOCKET_TIMEOUT_S):
                for _ in calls:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
                        first_error = first_error or exc
        except (RedisConnectionError, RedisTimeout, TimeoutError) as exc:
            await connection.disconnect()
            if attempt == 2:
                if isinstance(exc, TimeoutError):
                    raise RedisTimeout("Redis did not answer in time") from exc
                raise
            continue
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        if first_error is not None:
            raise first_error
        return replies
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
        try:
            return [pack_command(args)]
        except TypeError as exc:
            raise DataError(f"Invalid input in {args[0]!r}: {exc}; convert to bytes, str, int or float first") \
                from None

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
    """The single-server client: redis-py's, with pipelines read under one deadline."""

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
    return Store.from_pool(BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=size,
        timeout=timeout_s,
        connection_class=BoundedSendConnection,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
    ))
