"""What the routes share in one process: the engine's stores (built once by
engine/runtime.py), the Kafka event log in Kafka mode, the budgets, and the one
way events are applied before an ingest route answers."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from api import metrics
from api.ratelimit import RateLimits
from engine.catalog.journeys import JOURNEY_CHANNEL
from engine.errors import StoreUnavailable
from engine.events import Event
from engine.ingest.pipeline import ApplyResult
from engine.policy import PERSONAL_CHANNELS
from engine.runtime import Runtime
from engine.store.client import connect
from engine.store.pipelined import Pipelined
from engine.stream.event_log import EventLog


class Services:
    def __init__(self, runtime: Runtime):
        settings = runtime.settings
        self.runtime = runtime
        self.settings = settings
        self.redis = runtime.redis
        # Decide's reads: one pipelined connection (engine/store/pipelined.py),
        # or on a cluster a client of their own; either way bounded by the
        # decide budget alone, the only timer a decide's round trip carries.
        self.profile_reader = Pipelined.of(settings.redis_url) or connect(settings, caller_bounds=True)
        self.keys = runtime.keys
        self.holder = runtime.holder
        self.catalogs = runtime.catalogs
        self.store = runtime.profiles
        self.pipeline = runtime.pipeline
        self.queue = runtime.queue
        self.contacts = runtime.contacts
        self.inbox = runtime.inbox
        self.devices = runtime.devices
        self.kpis = runtime.kpis
        self.tracker = runtime.tracker
        self.budgets = runtime.budgets
        self.codes = runtime.codes
        self.lookup = runtime.pipeline.lookup  # people by email or phone
        # Kafka mode: accepted events go to the log; `attimo worker` applies them.
        self.event_log = EventLog(settings) if settings.kafka_brokers else None
        self.decide_budget_s = settings.redis_budget_ms / 1000
        self.apply_budget_s = settings.apply_budget_ms / 1000
        self.rate_limits = RateLimits(settings, runtime.redis, runtime.keys)

    async def apply(self, events: list[Event], now: int) -> ApplyResult:
        """Apply resolved events before answering (every ingest route comes here):
        a Redis failure or a pass of the budget is a 503, nothing acknowledged.
        In Kafka mode, "applied" is "acknowledged by the broker"; a worker applies
        them (duplicates are found there, so none are reported here)."""
        if self.event_log is not None:
            await self.event_log.publish(events)
            metrics.EVENTS_QUEUED.inc(len(events))
            return ApplyResult(accepted=len(events))
        try:
            async with asyncio.timeout(self.apply_budget_s):
                result = await self.pipeline.apply(events, now)
        except TimeoutError as exc:
            metrics.redis_error("apply", "timeout")
            raise StoreUnavailable("the profile store did not answer in time") from exc
        except RedisError as exc:
            metrics.redis_error("apply", type(exc).__name__)
            raise StoreUnavailable("the profile store is unavailable") from exc
        metrics.events_applied(result.accepted)
        metrics.EVENTS_DUPLICATE.inc(result.duplicates)
        if result.merged:
            metrics.MERGES.inc(result.merged)
        if result.conflicts:
            metrics.WRITE_CONFLICTS.inc(result.conflicts)
        return result

    def webhook_channels(self) -> set[str]:
        return {channel for channel, _ in self.settings.webhook_urls}

    def queued_channels(self) -> list[str]:
        """Every channel a person's message may wait on in the due queue, which
        finds them by person and channel: the personal ones, journey timers, the
        webhooks configured (operator alerts, sales), and the catalog's notify
        channels (queued even when no webhook sends them: dead-lettered when due)."""
        steps = {step.channel for journey in self.holder.current.journeys.all for step in journey.steps}
        named = PERSONAL_CHANNELS | {JOURNEY_CHANNEL, self.settings.alert_channel} | self.webhook_channels()
        return sorted(c for c in named | steps if c)

    async def aclose(self) -> None:
        if self.event_log is not None:
            await self.event_log.close()
        await self.profile_reader.aclose()
        await self.runtime.aclose()
