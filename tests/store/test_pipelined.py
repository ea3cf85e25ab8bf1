"""Decide's pipelined profile read (engine/store/pipelined.py) against real
redis-servers: answers in order under concurrency, a read given up on does not
shift the others, errors, AUTH and SELECT, and recovery from a killed
connection, a restarted server and a frozen one."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_sync
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from engine.store import pipelined
from engine.store.pipelined import Pipelined
from engine.testing.processes import RedisServer


async def test_concurrent_reads_each_get_their_own_key(redis, redis_server):
    await redis.mset({f"k{i}": f"value-{i}" for i in range(500)})
    reader = Pipelined.of(redis_server.url)
    try:
        keys = [f"k{i % 500}" if i % 7 else f"missing{i}" for i in range(2000)]
        answers = await asyncio.gather(*(reader.get(key) for key in keys))
        assert answers == [f"value-{int(key[1:])}".encode() if key.startswith("k") else None for key in keys]
    finally:
        await reader.aclose()


async def test_a_read_given_up_on_leaves_the_order_of_the_others(redis, redis_server):
    """A decide whose budget passes cancels its read; its reply still comes
    and must be dropped, not handed to the next read."""
    await redis.set("slow", b"x" * 5_000_000)  # a reply big enough to take a while
    await redis.set("next", b"mine")
    reader = Pipelined.of(redis_server.url)
    try:
        slow = asyncio.ensure_future(reader.get("slow"))
        await asyncio.sleep(0)
        slow.cancel()
        assert await reader.get("next") == b"mine"
        assert [await reader.get("next") for _ in range(3)] == [b"mine"] * 3
    finally:
        await reader.aclose()


async def test_an_error_reply_is_a_response_error_and_the_connection_goes_on(redis, redis_server):
    await redis.hset("a-hash", "f", "v")
    await redis.set("plain", "p")
    reader = Pipelined.of(redis_server.url)
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await reader.get("a-hash")
        assert await reader.get("plain") == b"p"
    finally:
        await reader.aclose()


async def test_auth_and_database_come_from_the_url():
    with RedisServer() as server:
        with server.client() as plain:
            plain.config_set("requirepass", "s3cret")
        with server.client() as stranger, pytest.raises(RedisError):
            stranger.ping()
        admin = f"redis://:s3cret@127.0.0.1:{server.port}"
        with redis_sync.Redis.from_url(f"{admin}/3") as client:
            client.set("k", "in db 3")
        reader = Pipelined.of(f"{admin}/3")
        try:
            assert await reader.get("k") == b"in db 3"
        finally:
            await reader.aclose()
        wrong = Pipelined.of(f"redis://:nope@127.0.0.1:{server.port}/3")
        with pytest.raises(ResponseError):
            await wrong.get("k")


def test_cluster_tls_and_socket_urls_keep_redis_py():
    assert Pipelined.of("redis+cluster://127.0.0.1:7000") is None
    assert Pipelined.of("rediss://127.0.0.1:6380/0") is None
    assert Pipelined.of("unix:///tmp/redis.sock") is None
    assert Pipelined.of("redis://127.0.0.1:6380/2") is not None


async def test_a_killed_connection_fails_its_reads_then_the_next_read_reconnects(redis, redis_server):
    await redis.set("k", "v")
    reader = Pipelined.of(redis_server.url)
    try:
        assert await reader.get("k") == b"v"
        killed = await redis.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        await asyncio.sleep(0.05)  # the close reaches the reader
        assert await reader.get("k") == b"v"
    finally:
        await reader.aclose()


async def test_a_restarted_server_is_found_again_and_a_stopped_one_is_a_connection_error():
    with RedisServer() as server:
        reader = Pipelined.of(server.url)
        server.client().set("k", "before")
        assert await reader.get("k") == b"before"
        port = server.port
    with pytest.raises(RedisConnectionError):
        await reader.get("k")
    with RedisServer(port=port) as again:
        again.client().set("k", "after")
        assert await reader.get("k") == b"after"
        await reader.aclose()


async def test_a_frozen_server_stalls_reads_until_the_connection_is_given_up(monkeypatch):
    """Reads sent to a frozen Redis never answer: the caller's budget gives up
    on them; once the oldest has waited past STALLED_S the connection is closed
    and a new one opened, so a server that comes back serves again at once."""
    monkeypatch.setattr(pipelined, "STALLED_S", 0.3)
    with RedisServer() as server:
        server.client().set("k", "v")
        reader = Pipelined.of(server.url)
        assert await reader.get("k") == b"v"
        frozen = reader._connection
        server.pause()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await reader.get("k")
            await asyncio.sleep(0.3)
        finally:
            server.resume()
        assert await reader.get("k") == b"v"
        assert reader._connection is not frozen and frozen.closed
        await reader.aclose()
