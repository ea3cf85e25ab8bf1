"""The composition root: every store a process uses, built once from the
settings and passed down. The API, `attimo worker`, `attimo scheduler` and the
demo each build one Runtime at start and close it at the end; nothing else
builds a store, and nothing builds one per request."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import RedisError

from engine.audiences.destinations import Deliveries
from engine.audiences.lookup import PeopleLookup
from engine.audiences.membership import MembershipStore
from engine.catalog.compile import empty_catalog, load_catalog_file
from engine.catalog.model import CatalogHolder
from engine.catalog.publish import CatalogStore
from engine.clock import every, in_background, now_ms
from engine.decisions.budgets import BudgetBook
from engine.decisions.ids import DecisionSigner
from engine.errors import CatalogError
from engine.followups.broadcasts import PERIOD_S as BROADCAST_PERIOD_S
from engine.followups.broadcasts import Broadcasts
from engine.followups.channels.email import Tracker, tracker_from_settings
from engine.followups.channels.senders import senders_from_settings
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.inbox import DeviceStore, InboxStore
from engine.followups.journey_runner import internal_senders
from engine.followups.kpis import KpiStore
from engine.followups.scheduler import (
    QUEUE_REPORT_S,
    Scheduler,
    SchedulerStats,
    policy_from_settings,
    report_queue,
)
from engine.ingest.pipeline import Pipeline
from engine.ingest.rechecks import RECHECK_PERIOD_S, recheck_due
from engine.outcomes.exposures import ExposureStore
from engine.outcomes.learning import LearningStore, ModelHolder
from engine.outcomes.log import DecisionLog
from engine.settings import Settings
from engine.store.client import connect
from engine.store.code_pools import CodePools
from engine.store.keys import Keys
from engine.store.ops_series import OpsSeries
from engine.store.people_index import PeopleIndex
from engine.store.profiles import ProfileStore

log = logging.getLogger("attimo")
DELIVERY_PERIOD_S = 0.2  # how often webhook destinations are sent what changed


@dataclass
class Runtime:
    """One process's Redis client and stores, and the catalog in force."""

    settings: Settings
    redis: object  # redis.asyncio.Redis or RedisCluster
    keys: Keys
    holder: CatalogHolder
    catalogs: CatalogStore
    profiles: ProfileStore
    queue: DueQueue
    contacts: ContactStore
    inbox: InboxStore
    devices: DeviceStore
    kpis: KpiStore
    pipeline: Pipeline
    tracker: Tracker | None  # signs and verifies email links; None without a secret
    models: ModelHolder  # the learned propensities decide reads (refreshed by the API)
    decision_log: DecisionLog  # decisions and their exposures, written off the request path
    budgets: BudgetBook  # what budgeted discounts spent, which code pools are empty: decide's snapshot
    codes: CodePools
    broadcasts: Broadcasts  # starts, walks, cancels and reports the catalog's broadcasts
    ops: OpsSeries  # the console's figures every process adds to

    @property
    def decisions(self) -> DecisionSigner | None:
        return self.pipeline.decisions

    @classmethod
    def build(cls, settings: Settings, holder: CatalogHolder | None = None, *,
              pool_size: int | None = None, pool_timeout_s: float | None = None) -> Runtime:
        """Connects lazily: nothing here waits for Redis."""
        redis = connect(settings, pool_size=pool_size, pool_timeout_s=pool_timeout_s)
        keys = Keys(settings.key_prefix)
        holder = holder or CatalogHolder(empty_catalog())
        profiles = ProfileStore(redis, keys, dedupe_ttl_s=settings.dedupe_ttl_s,
                                profile_ttl_s=settings.profile_ttl_s)
        queue = DueQueue(redis, keys)
        contacts = ContactStore(redis, keys)
        inbox = InboxStore(redis, keys)
        kpis = KpiStore(redis, keys, once_ttl_s=settings.dedupe_ttl_s)
        learning = LearningStore(redis, keys)
        decision_log = DecisionLog(redis, keys, ExposureStore(redis, keys), max_len=settings.decision_log_max)
        membership = MembershipStore(redis, keys, card_ttl_s=settings.profile_ttl_s)
        lookup = PeopleLookup(PeopleIndex(redis, keys), settings.phone_region, membership.cards)
        pipeline = Pipeline(profiles, holder, decision_signer(settings), learning, decision_log, membership, lookup,
                            queue=queue, contacts=contacts, kpis=kpis, inbox=inbox)
        broadcasts = Broadcasts(redis, keys, queue, membership, kpis, contacts,
                                default_zone=policy_from_settings(settings).default_tz)
        catalogs = CatalogStore(redis, keys, holder)
        pipeline.journeys.alert_channel = settings.alert_channel
        pipeline.journeys.versions = catalogs.catalog_of  # runs keep the catalog version they entered with
        return cls(
            settings=settings, redis=redis, keys=keys, holder=holder,
            catalogs=catalogs, profiles=profiles, queue=queue,
            contacts=contacts, inbox=inbox, devices=DeviceStore(redis, keys), kpis=kpis,
            pipeline=pipeline, tracker=tracker_from_settings(settings),
            models=ModelHolder(learning, holder), decision_log=decision_log,
            budgets=BudgetBook(redis, keys, holder), codes=CodePools(redis, keys), broadcasts=broadcasts,
            ops=OpsSeries(redis, keys),
        )

    @classmethod
    def from_catalog_file(cls, settings: Settings, **pool) -> tuple[Runtime, str | None]:
        """With ATTIMO_CATALOG set, the file's catalog is in force from the start
        (a file that does not compile raises CatalogError here, before serving)."""
        file_text = None
        if settings.catalog_path:
            catalog, file_text = load_catalog_file(settings.catalog_path)
            holder = CatalogHolder(catalog, file_text)
        else:
            holder = CatalogHolder(empty_catalog())
        return cls.build(settings, holder, **pool), file_text

    async def start(self, file_text: str | None = None) -> None:
        """Load the scripts and the catalog in force; a Redis that is not there
        yet leaves the local catalog serving (the poller catches up)."""
        try:
            await self.profiles.load_scripts()
            await self.catalogs.start(file_text)
        except RedisError as exc:
            log.warning("Redis not reachable at start-up (%s); serving the local catalog", exc)

    async def reload_file(self) -> None:
        """SIGHUP: publish the catalog file again (kept as it is when it fails)."""
        path = self.settings.catalog_path
        if not path:
            return
        try:
            await self.catalogs.publish(Path(path).read_text(), from_file=True)
        except (CatalogError, OSError, RedisError) as exc:
            log.error("catalog reload from %s failed, keeping the current one: %s", path, exc)

    async def aclose(self) -> None:
        await self.redis.aclose()


def decision_signer(settings: Settings) -> DecisionSigner | None:
    """Signs decision ids and checks the ones impressions and clicks bring back;
    every process derives the same key from the site (or tracking) secret."""
    secret = settings.site_secret or settings.tracking_secret or settings.server_token
    if secret is None:
        log.warning("no ATTIMO_SITE_SECRET: decision ids cannot be checked, so only impressions and clicks "
                    "a server sends count in the KPIs")
        return None
    return DecisionSigner.from_secret(secret)


def scheduler_runtime(settings: Settings, holder: CatalogHolder | None = None) -> Runtime:
    """A scheduler's stores on a pool of their own, sized for its concurrent
    sends: embedded in the API, its sends never take the connections decide
    and ingest wait for."""
    return Runtime.build(settings, holder, pool_size=max(8, settings.scheduler_concurrency + 4),
                         pool_timeout_s=5)


def freeze_start_up() -> None:
    """Long-lived objects made at start-up (modules, the catalog, clients) are
    never scanned by the garbage collector again: its full collections, which
    allocations trigger on the hot path, stop growing with them. On the
    scheduler py-spy charged a tenth of its samples to allocations that set
    such a collection off (benchmarks/README.md, P9)."""
    gc.collect()
    gc.freeze()


async def run_scheduler(settings: Settings, stop: asyncio.Event | None = None, *,
                        handle_signals: bool = True, catalogs: CatalogHolder | None = None) -> SchedulerStats:
    """`attimo scheduler`: run until SIGINT/SIGTERM (or `stop`), print stats at the
    end. Embedded in `attimo serve`, the server owns the signals and sets `stop`
    and shares its catalog (`catalogs`); alone, it follows the published catalog."""
    runtime = scheduler_runtime(settings, catalogs)
    senders, closeables = senders_from_settings(settings, runtime.redis, runtime.keys)
    poller = None
    if catalogs is None:
        await runtime.catalogs.refresh()
        poller = asyncio.create_task(runtime.catalogs.poll(settings.catalog_poll_s))
    scheduler = Scheduler(runtime.queue, runtime.contacts, policy_from_settings(settings), senders,
                          lease_ms=settings.scheduler_lease_ms, batch=settings.scheduler_batch,
                          concurrency=settings.scheduler_concurrency, alert_channel=settings.alert_channel,
                          catalogs=runtime.holder, kpis=runtime.kpis)
    senders.update(internal_senders(runtime.pipeline.journeys, scheduler.clock))
    freeze_start_up()
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    deliveries = Deliveries(runtime.redis, runtime.keys, runtime.pipeline.membership,
                            (settings.webhook_secret or "").encode(), settings.export_dir,
                            dict(settings.webhook_urls))
    try:
        async with (in_background(every(RECHECK_PERIOD_S, lambda: recheck_due(runtime.pipeline),
                                        "segment rechecks", log)),
                    in_background(every(DELIVERY_PERIOD_S,
                                        lambda: deliveries.run_once(runtime.holder.current, now_ms()),
                                        "audience destinations", log)),
                    in_background(every(BROADCAST_PERIOD_S, lambda: runtime.broadcasts.run_once(runtime.holder.current),
                                        "broadcasts", log)),
                    in_background(every(QUEUE_REPORT_S, lambda: report_queue(runtime.queue), "queue gauges", log))):
            await scheduler.run(stop, settings.scheduler_poll_ms)
    finally:
        await deliveries.aclose()
        if poller is not None:
            poller.cancel()
        for resource in closeables:
            await resource.aclose()
        await runtime.aclose()
    return scheduler.stats


async def run_embedded(settings: Settings, stop: asyncio.Event, catalogs: CatalogHolder | None = None) -> None:
    """The scheduler inside `attimo serve`: restarted after any failure (Redis
    down…) instead of dying with the error. Settings were checked at start, so a
    bad value cannot make it restart for ever."""
    while not stop.is_set():
        try:
            await run_scheduler(settings, stop, handle_signals=False, catalogs=catalogs)
        except Exception:  # keep the API up; say why and try again
            log.exception("embedded scheduler failed; restarting in 1 s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
