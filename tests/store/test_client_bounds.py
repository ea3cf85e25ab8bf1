"""The general Redis client's bound on a send (engine/store/client.py): a send
that cannot go out (a frozen server, its socket buffers full) fails with a
named timeout after socket_timeout, and the pool goes on with a new connection."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import TimeoutError as RedisTimeout

from engine.store.client import BoundedSendConnection
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
