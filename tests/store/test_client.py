"""The general Redis client (engine/store/client.py): a send that cannot go out
(a frozen server, its socket buffers full) fails with a named timeout after
socket_timeout and the pool goes on with a new connection; scripts packed and
run in one round trip."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from engine.store.client import BoundedSendConnection, run_scripts
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
