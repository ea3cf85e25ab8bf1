"""What budgeted discounts have spent and which code pools are empty, as one
snapshot per API process: decide reads it in memory (no Redis on the request
path), and a background task of the API refreshes it from Redis every second,
so a budget is held to within a second's redemptions."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

from engine.catalog.model import CatalogHolder
from engine.clock import every, now_ms
from engine.store.keys import Keys

log = logging.getLogger("attimo.budgets")

REFRESH_S = 1.0


def utc_day(ms: int) -> str:
    """The UTC day a spend counts for: YYYY-MM-DD."""
    return _day_name(ms // 86_400_000)


@functools.lru_cache(maxsize=64)
def _day_name(day: int) -> str:
    """Formatted once a day, not once a KPI count (a journey's batch counts thousands)."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


@dataclass(frozen=True, slots=True)
class Budgets:
    """Offer id -> what it spent against its budget (today's spend for `per:
    day`, every redemption's for `per: campaign`); the code pools with no code
    left to give; when it was read (ms)."""

    spent: dict[str, float] = field(default_factory=dict)
    empty_pools: frozenset[str] = frozenset()
    read_at_ms: int = 0


class BudgetBook:
    """The process's snapshot (`current`), swapped whole on each refresh. A
    catalog without budgets or code pools costs no Redis call at all."""

    def __init__(self, redis, keys: Keys, holder: CatalogHolder, clock=now_ms):
        self.redis = redis  # redis.asyncio.Redis or RedisCluster (not imported: the decisions stay pure)
        self.keys = keys
        self.holder = holder
        self.clock = clock
        self.current = Budgets()

    async def refresh(self) -> Budgets:
        """One pipelined read: each budgeted offer's spend (all under {kpi}) and
        each pool's count of codes left (one slot per pool)."""
        catalog = self.holder.current
        now = self.clock()
        if not catalog.budgeted and not catalog.code_pools:
            self.current = Budgets(read_at_ms=now)
            return self.current
        pipe = self.redis.pipeline(transaction=False)
        self._queue_spent(pipe, catalog.budgeted, now)
        pools = list(catalog.code_pools)
        for pool in pools:
            pipe.scard(self.keys.pool_available(pool))
        answers = await pipe.execute()
        spent = {offer.id: float(raw or 0) for offer, raw in zip(catalog.budgeted, answers, strict=False)}
        left = answers[len(catalog.budgeted):]
        self.current = Budgets(spent, frozenset(pool for pool, n in zip(pools, left, strict=True) if not n), now)
        return self.current

    async def burn(self, offers) -> dict[str, dict]:
        """Each budgeted offer's budget and what it has spent against it, read
        now from Redis (not the snapshot): {"per", "amount", "spent"}, the
        spend today's for `per: day`. For the KPIs."""
        budgeted = [offer for offer in offers if offer.budget is not None]
        if not budgeted:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        self._queue_spent(pipe, budgeted, self.clock())
        answers = await pipe.execute()
        return {offer.id: {"per": offer.budget.per, "amount": offer.budget.amount, "spent": round(float(raw or 0), 2)}
                for offer, raw in zip(budgeted, answers, strict=True)}

    def _queue_spent(self, pipe, offers, now: int) -> None:
        """One read per offer of what counts against its budget: the day's
        spend (`per: day`, UTC) or every redemption's cost (`per: campaign`)."""
        day = utc_day(now)
        for offer in offers:
            if offer.budget.per == "day":
                pipe.get(self.keys.offer_spent_on(offer.id, day))
            else:
                pipe.hget(self.keys.kpi("o", offer.id, "money"), "discount_cost")

    async def run(self, interval_s: float = REFRESH_S) -> None:
        """Refresh for ever (the API's lifespan cancels it). A failed read keeps
        the last snapshot and says so; decide goes on."""
        await every(interval_s, self.refresh, "budget snapshot refresh", log)
