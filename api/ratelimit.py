"""Rate limits of public (site-key) calls, counted in the profiles' Redis so
every API process shares them (the `limits` library, sliding window counters:
two integers a key, no burst of twice the limit at a window's edge).

- ATTIMO_RATE_LIMIT: POST /v1/events and POST /v1/decide together, per client
  IP (an IPv6 client per /64, what one subscriber gets).
- ATTIMO_NEW_PROFILE_LIMIT: the anonymous profiles one IP may create. A batch
  costs one hit per distinct anonymous id (no user_id) whose profile does not
  exist yet; an id already seen is free however often it comes back.

Server-token callers (the customer's backends, bulk imports, Segment clients)
are never limited: their secret is the control, and one backend legitimately
sends from one address what thousands of browsers would.

The client IP is the socket peer, unless the peer is one of
ATTIMO_TRUSTED_PROXIES: then it is the right-most X-Forwarded-For address that
is not itself a trusted proxy. A header from any other peer is ignored.

Cost: one Redis round trip a public request (for events the limiter hit and
the profile-existence check go out together), a second one only when a batch
creates profiles, none when both limits are off. When Redis fails or passes the
decide budget, the limiter fails open with a log line: decide keeps answering
its fallback and events answer the store's own 503, as without limits."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Iterable

import limits
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from api import metrics
from engine.errors import RateLimited
from engine.settings import Settings
from engine.store.client import is_cluster_url
from engine.store.keys import Keys

log = logging.getLogger("attimo.api")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FAIL_OPEN_LOG_EVERY_S = 10.0


def client_ip(scope: dict, trusted: tuple[Network, ...]) -> str:
    """The address to limit: the peer, or behind a trusted proxy the right-most
    forwarded address that is not a trusted proxy (IPv6 as its /64)."""
    peer = scope.get("client")
    host = peer[0] if peer else ""
    address = _address(host)
    if address is not None and trusted and _is_trusted(address, trusted):
        forwarded = _forwarded_for(scope.get("headers") or ())
        for text in reversed(forwarded):
            hop = _address(text)
            if hop is None:
                break  # garbage our own proxy passed on: limit the proxy's peer as a whole
            address = hop
            if not _is_trusted(hop, trusted):
                break
    if address is None:
        return host or "unknown"
    if address.version == 6:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address, trusted: tuple[Network, ...]) -> bool:
    return any(address in network for network in trusted if network.version == address.version)


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every X-Forwarded-For entry, several headers joined in order."""
    entries: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            entries.extend(part for part in value.decode("latin-1").split(",") if part.strip())
    return entries


class RateLimits:
    """The process's limiter; `enabled` is False when both limits are off
    (then nothing here touches Redis)."""

    def __init__(self, settings: Settings, redis, keys: Keys):
        self.requests = None if settings.rate_limit == "off" else limits.parse(settings.rate_limit)
        self.new_profiles = (None if settings.new_profile_limit == "off"
                             else limits.parse(settings.new_profile_limit))
        self.trusted = tuple(ipaddress.ip_network(n) for n in settings.trusted_proxies)
        self.enabled = self.requests is not None or self.new_profiles is not None
        self.redis = redis
        self.keys = keys
        self.budget_s = settings.redis_budget_ms / 1000
        # Limits are per site key too: a new key starts with fresh counters.
        self.site = hashlib.sha256((settings.site_key or "").encode()).hexdigest()[:12]
        self.limiter = None
        self._failed_logged_at = -math.inf
        if self.enabled:
            prefix = f"{settings.key_prefix}:limits"
            if is_cluster_url(settings.redis_url):
                uri = "async+redis+cluster://" + settings.redis_url.partition("://")[2]
                storage = RedisClusterStorage(uri, implementation="redispy", key_prefix=prefix)
            else:  # the process's own connection pool: no connections of its own
                storage = RedisStorage("async+" + settings.redis_url, implementation="redispy",
                                       key_prefix=prefix, connection_pool=redis.connection_pool)
            self.limiter = SlidingWindowCounterRateLimiter(storage)

    def client(self, scope: dict) -> str:
        return client_ip(scope, self.trusted)

    async def check_request(self, ip: str) -> None:
        """One public decide or events request from `ip`; RateLimited past the limit."""
        if self.requests is not None:
            await self._hit(self.requests, ip, 1, "too many requests from this address")

    async def check_events(self, ip: str, anonymous_ids: set[str]) -> None:
        """A public events batch: the request limit, and one new-profile hit per
        anonymous person (`a:<id>`) whose profile does not exist yet."""
        if self.new_profiles is None or not anonymous_ids:
            await self.check_request(ip)
            return
        ids = sorted(anonymous_ids)
        pipe = self.redis.pipeline(transaction=False)
        for person in ids:  # one command a key: a cluster routes each to its slot
            pipe.exists(self.keys.profile(person))
        results = await asyncio.gather(self.check_request(ip), self._guarded(pipe.execute()),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        exists = results[1]
        if exists is None:  # failed open
            return
        new = sum(1 for found in exists if not found)
        if new:
            await self._hit(self.new_profiles, ip, new, "too many new profiles from this address")

    async def _hit(self, item: limits.RateLimitItem, ip: str, cost: int, reason: str) -> None:
        allowed = await self._guarded(self.limiter.hit(item, self.site, ip, cost=cost))
        if allowed is False:
            stats = await self._guarded(self.limiter.get_window_stats(item, self.site, ip))
            retry_after = math.ceil(stats.reset_time - time.time()) if stats else 1
            metrics.RATE_LIMITED.labels("requests" if item is self.requests else "new_profiles").inc()
            raise RateLimited(f"{reason}: at most {item}", min(retry_after, item.get_expiry()))

    async def _guarded(self, call):
        """The call's result, or None when Redis fails or is too slow (fail open)."""
        try:
            async with asyncio.timeout(self.budget_s):
                return await call
        except (TimeoutError, RedisError, StorageError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            metrics.redis_error("ratelimit", kind)
            now = time.monotonic()
            if now - self._failed_logged_at >= FAIL_OPEN_LOG_EVERY_S:
                self._failed_logged_at = now
                log.warning("rate limits not checked (Redis: %s); letting requests through", kind)
            return None
