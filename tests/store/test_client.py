"""The general Redis client (engine/store/client.py): a send that cannot go out
(a frozen server, its socket buffers full) fails with a named timeout after
socket_timeout and the pool goes on with a new connection; pipelines read under
one deadline; scripts and collected commands packed and run in one round trip
over the pipelined connection."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from engine.settings import Settings
from engine.store.client import (
    BoundedSendConnection,
    Commands,
    OneDeadlinePipeline,
    Store,
    connect,
    run_commands,
    run_scripts,
)
from engine.testing.processes import RedisServer


async def test_a_send_to_a_frozen_server_times_out_and_the_pool_recovers():
    with RedisServer() as server:
        pool = BlockingConnectionPool.from_url(server.url, max_connections=2, timeout=1,
                                               connection_class=BoundedSendConnection, socket_timeout=0.5)
        client = Redis(connection_pool=pool)
        try:
            assert await client.set("k", "v")
            server.pause()
            try:
                with pytest.raises(RedisTimeout, match="writing"):
                    await client.set("big", b"x" * 64_000_000)  # more than the socket buffers hold
            finally:
                server.resume()
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()
            await pool.aclose()


async def test_scripts_run_packed_in_order_an_error_is_raised_after_every_reply_is_read(redis):
    """run_scripts on a single server writes its own RESP: replies in the order
    of the calls, numbers, strings and bytes arguments as Redis sees them, and a
    failing call raises once all replies are read, so the connection stays in
    step for the next caller."""
    echo = redis.register_script("return {KEYS[1], ARGV[1], ARGV[2], ARGV[3]}")
    fail = redis.register_script("return redis.call('INCR', KEYS[1])")
    await redis.set("text", "not a number")
    calls = [(echo, [f"k{i}"], [i, f"s{i}", bytes([0, 255, i])]) for i in range(50)]
    replies = await run_scripts(redis, calls)
    assert replies == [[f"k{i}".encode(), str(i).encode(), f"s{i}".encode(), bytes([0, 255, i])] for i in range(50)]
    with pytest.raises(ResponseError, match="not an integer"):
        await run_scripts(redis, [(echo, ["a"], [1, 2, 3]), (fail, ["text"], []), (echo, ["b"], [4, 5, 6])])
    assert await run_scripts(redis, [(echo, ["c"], [7, 8, 9])]) == [[b"c", b"7", b"8", b"9"]]


async def test_packed_scripts_survive_a_killed_connection(redis):
    echo = redis.register_script("return ARGV[1]")
    assert await run_scripts(redis, [(echo, [], ["one"])]) == [b"one"]
    await redis.client_kill_filter(_type="normal", skipme=False)
    assert await run_scripts(redis, [(echo, [], ["two"])]) == [b"two"]


async def test_commands_packed_in_c_reach_redis_as_redis_py_would_send_them(redis_server):
    """Every argument type redis-py takes, a command name with a space in it,
    and a value Redis cannot take refused before anything is sent."""
    pool = BlockingConnectionPool.from_url(redis_server.url, max_connections=2, timeout=1,
                                           connection_class=BoundedSendConnection, socket_timeout=5)
    client = Redis(connection_pool=pool)
    try:
        await client.delete("packed")
        await client.hset("packed", mapping={"text": "é", "bytes": b"\x00\xff", "int": -3, "float": 0.1,
                                             "view": memoryview(b"ab")})
        assert await client.hgetall("packed") == {b"text": "é".encode(), b"bytes": b"\x00\xff", b"int": b"-3",
                                                  b"float": b"0.1", b"view": b"ab"}
        assert await client.execute_command("CONFIG GET", "maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        pipe = client.pipeline(transaction=False)
        for n in range(100):
            pipe.incrby("packed-counter", n)
        assert (await pipe.execute())[-1] == sum(range(100))
        with pytest.raises(DataError):
            await client.set("packed", None)
        assert await client.get("packed-counter") == str(sum(range(100))).encode()
    finally:
        await client.delete("packed", "packed-counter")
        await client.aclose()
        await pool.aclose()


async def test_a_pipeline_answers_as_redis_py_would_under_one_deadline(redis_server):
    """The product's single-server client reads a pipeline's replies under one
    deadline: the replies keep redis-py's conversions (a hash as a dict, scores
    as floats, a transaction's replies), an error reply is raised after every
    reply is read, and the connection goes on in step."""
    client = connect(Settings(redis_url=redis_server.url))
    assert isinstance(client, Store)
    try:
        await client.delete("h", "z", "s")
        pipe = client.pipeline(transaction=False)
        assert isinstance(pipe, OneDeadlinePipeline)
        pipe.hset("h", mapping={"a": 1, "b": "two"})
        pipe.hgetall("h")
        pipe.zadd("z", {"x": 1.5, "y": 2})
        pipe.zrange("z", 0, -1, withscores=True)
        pipe.set("s", "text")
        assert await pipe.execute() == [2, {b"a": b"1", b"b": b"two"}, 2, [(b"x", 1.5), (b"y", 2.0)], True]
        pipe = client.pipeline(transaction=True)
        pipe.incr("n")
        pipe.incr("n")
        assert await pipe.execute() == [1, 2]
        pipe = client.pipeline(transaction=False)
        pipe.incr("n")
        pipe.incr("s")  # not a number
        pipe.incr("n")
        with pytest.raises(ResponseError, match="not an integer"):
            await pipe.execute()
        assert await client.get("n") == b"4"  # the third ran; the next command reads its own reply
    finally:
        await client.delete("h", "z", "s", "n")
        await client.aclose()


async def test_a_pipeline_to_a_frozen_server_fails_after_one_deadline_and_the_client_recovers():
    """A frozen server: the pipeline fails with a named timeout (after its
    attempts, each bounded by socket_timeout as a whole, not per reply) and the
    next command, once the server is back, gets a connection in step."""
    with RedisServer() as server:
        pool = BlockingConnectionPool.from_url(server.url, max_connections=2, timeout=1,
                                               connection_class=BoundedSendConnection, socket_timeout=0.3)
        client = Store(connection_pool=pool)
        try:
            await client.set("k", "v")
            server.pause()
            started = time.monotonic()
            try:
                pipe = client.pipeline(transaction=False)
                for n in range(50):
                    pipe.get(f"k{n}")
                with pytest.raises(RedisTimeout):
                    await pipe.execute()
            finally:
                server.resume()
            # redis-py's retries (3 by default) each wait one deadline, not 50.
            assert time.monotonic() - started < 0.3 * 4 + 2
            pipe = client.pipeline(transaction=False)
            pipe.get("k")
            pipe.set("k2", "w")
            assert await pipe.execute() == [b"v", True]
            assert await asyncio.wait_for(client.get("k2"), 2) == b"w"
        finally:
            await client.aclose()
            await pool.aclose()


async def test_commands_collected_as_on_a_pipeline_run_in_one_round_trip(redis):
    """`Commands` takes what a helper would queue into a pipeline; run_commands
    sends it over the pipelined connection and answers as Redis does (a hash
    as a flat list); an error reply is raised after the others ran."""
    assert redis.pipelined is not None
    commands = Commands()
    commands.lpush("history", b"one", "two")
    commands.ltrim("history", 0, 0)
    commands.expire("history", 60)
    commands.hset("h", mapping={"a": 1})
    commands.hgetall("h")
    commands.pfadd("ids", "x", "y", "x")
    commands.get("missing")
    assert await run_commands(redis, commands.stack) == [2, b"OK", 1, 1, [b"a", b"1"], 1, None]
    assert await redis.lrange("history", 0, -1) == [b"two"]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await run_commands(redis, [("INCR", "n"), ("INCR", "h"), ("INCR", "n")])
    assert await redis.get("n") == b"2"
    with pytest.raises(DataError):
        await run_commands(redis, [("SET", "k", None)])
    assert await run_commands(redis, []) == []


async def test_scripts_run_again_after_redis_forgot_them(redis):
    echo = redis.register_script("return ARGV[1]")
    assert await run_scripts(redis, [(echo, [], ["one"])]) == [b"one"]
    await redis.script_flush()
    assert await run_scripts(redis, [(echo, [], ["two"]), (echo, [], ["three"])]) == [b"two", b"three"]
