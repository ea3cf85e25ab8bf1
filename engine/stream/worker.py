"""`attimo worker`: a faust-streaming app that applies the events the API put on
the Kafka topic, with the same pipeline as the inline path. Records are taken in
batches and all their people applied in one pipelined round trip.

Nothing is committed before Redis has it. faust's `take_events` acks a batch
when the agent asks for the next one, and also when the agent's loop is left
by an exception or a cancellation; so each message of a batch carries one more
reference until the batch is applied, and an ack without it never releases the
offset. A transient Redis error is retried with backoff, never skipped; a
worker asked to stop meanwhile exits at once without committing (as if it were
killed), and the batch goes to the next worker. Redelivered events are absorbed
by the event-id dedupe. A record the pipeline cannot read or rejects goes to
the dead-letter topic with the reason and its bytes, and the stream goes on.
Every second it adds its events applied to the console's figures and reports
its partitions' lag there (engine/store/ops_series.py)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence

import faust
import mode.loop
import msgspec
import orjson
from aiokafka.errors import KafkaError
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, EventT
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis import exceptions as redis_errors

from engine.clock import now_ms
from engine.events import Event
from engine.runtime import Runtime, freeze_start_up
from engine.settings import Settings
from engine.store.ops_series import OpsCounts
from engine.stream.event_log import decode_record, ensure_topics

log = logging.getLogger("attimo.worker")
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
# Exit status of a worker stopped while its batch could not be applied.
EXIT_UNAPPLIED = 75

APPLIED = Counter("attimo_worker_events_applied_total", "Events applied to profiles by this worker")
DUPLICATES = Counter("attimo_worker_events_duplicate_total", "Redelivered events the dedupe absorbed")
DEAD_LETTERED = Counter("attimo_worker_dead_lettered_total", "Records sent to the dead-letter topic")
REDIS_RETRIES = Counter("attimo_worker_redis_retries_total", "Applies retried after a Redis error")
WRITE_CONFLICTS = Counter("attimo_worker_profile_write_conflicts_total",
                          "Profiles another writer changed between an apply's read and its write (applied again in Redis)")
BATCH_RECORDS = Histogram("attimo_worker_batch_records", "Records per applied batch",
                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
APPLY_SECONDS = Histogram("attimo_worker_apply_seconds", "Time to apply one batch in Redis",
                          buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
LAG_SECONDS = Histogram("attimo_worker_record_age_seconds", "From a record's broker timestamp to its apply",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0))
LAG_RECORDS = Gauge("attimo_worker_consumer_lag_records",
                    "Records on the broker this worker has not applied yet, per assigned partition",
                    ["partition"])
OPS = OpsCounts()  # this worker's events applied, added to the console's figures every second

# Errors that say Redis (or the broker) is not there right now (down, restarting, failing over,
# out of memory), not that the batch is wrong: retried, never skipped.
TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
             redis_errors.ClusterDownError, redis_errors.TryAgainError, KafkaError, OSError, TimeoutError)
TRANSIENT_REPLIES = ("OOM", "BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


class _FetchWaitThread(faust_kafka.AIOKafkaConsumerThread):
    """faust passes aiokafka a fixed fetch_max_wait_ms=1500: a record on a quiet
    partition could wait that long. Ours comes from ATTIMO_WORKER_FETCH_WAIT_MS."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.app.attimo_fetch_wait_ms
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self):
        return _FetchWaitThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_kafka.Transport):
    Consumer = _Consumer


TRANSPORTS.aliases["attimo"] = "engine.stream.worker:FetchWaitTransport"


async def until_done(app: faust.App, what: str, attempt: Callable[[], Awaitable], on_retry: Counter | None = None):
    """`attempt()` until it succeeds or fails for a reason that is not transient
    (raised). Asked to stop while it cannot succeed: exit now, committing nothing."""
    delay = RETRY_FIRST_S
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if app.should_stop:
                log.error("stopping while %s fails (%s: %s): exiting without committing; "
                          "the next worker gets the batch again", what, type(exc).__name__, exc)
                logging.shutdown()
                os._exit(EXIT_UNAPPLIED)
            if on_retry is not None:
                on_retry.inc()
            log.warning("%s failed, retrying in %.2f s: %s: %s", what, delay, type(exc).__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


class Applier:
    """The worker's side of the pipeline: Redis, the catalog in force (followed
    like the API follows it), and the retry policy."""

    def __init__(self, settings: Settings, app: faust.App):
        self.app = app
        runtime, _ = Runtime.from_catalog_file(settings, pool_timeout_s=5)
        self.runtime = runtime
        self.pipeline = runtime.pipeline
        self.catalogs = runtime.catalogs

    async def apply(self, events: list[Event]) -> None:
        """Until Redis has them; raises only what the pipeline rejects for good."""

        async def attempt():
            started = time.perf_counter()
            result = await self.pipeline.apply(events, now_ms())
            APPLY_SECONDS.observe(time.perf_counter() - started)
            return result

        result = await until_done(self.app, f"applying {len(events)} events", attempt, REDIS_RETRIES)
        APPLIED.inc(result.accepted)
        OPS.count("events_applied", result.accepted)
        DUPLICATES.inc(result.duplicates)
        WRITE_CONFLICTS.inc(result.conflicts)
        if result.duplicates:
            log.warning("%d redelivered events absorbed by the dedupe", result.duplicates)


def build_app(settings: Settings) -> faust.App:
    """The worker's faust app for these settings: built when `attimo worker`
    starts, never at import (no module reads the environment by itself)."""
    app = faust.App(
        settings.worker_group,
        broker=[f"attimo://{broker}" for broker in settings.kafka_brokers] or "attimo://127.0.0.1:9092",
        web_enabled=False,
        # The worker keeps no tables; faust still wants a directory, not in the cwd.
        datadir=os.path.join(tempfile.gettempdir(), f"attimo-faust-{settings.worker_group}"),
        topic_partitions=settings.kafka_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 3),
        broker_commit_every=settings.worker_batch,
        broker_commit_interval=0.5,
        producer_acks=-1,
    )
    events_topic = app.topic(settings.kafka_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.kafka_dlq_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    app.attimo_fetch_wait_ms = settings.worker_fetch_wait_ms  # read by _FetchWaitThread
    applier: Applier | None = None
    next_offset: dict[TP, int] = {}  # per partition: the offset after the last one applied

    @app.task
    async def start_applier() -> None:
        nonlocal applier
        ready = Applier(settings, app)
        await until_done(app, "reading the published catalog", ready.catalogs.refresh)
        freeze_start_up()
        applier = ready
        app.add_future(ready.catalogs.poll(settings.catalog_poll_s))

    @app.timer(interval=1.0)
    async def report_lag() -> None:
        lags = {}
        for tp in app.consumer.assignment():
            if tp.topic == settings.kafka_topic:
                applied = next_offset.get(tp)
                if applied is None:
                    applied = await app.consumer.position(tp) or 0
                lags[tp.partition] = max(0, app.consumer.highwater(tp) - applied)
                LAG_RECORDS.labels(str(tp.partition)).set(lags[tp.partition])
        if applier is None:
            return
        try:  # the console's figures: never a reason to stop applying
            await applier.runtime.ops.report_lag(lags, now_ms())
            await applier.runtime.ops.flush(OPS)
        except Exception as exc:  # noqa: BLE001 - Redis down: the next second tries again
            log.warning("reporting to the console failed: %s: %s", type(exc).__name__, exc)

    async def dead_letter(key: bytes | None, value: bytes, reason: str) -> None:
        """Returns once the broker holds the dead letter (before the record's offset
        can be committed)."""
        body = orjson.dumps({"error": reason, "key": (key or b"").decode(errors="replace"),
                             "payload_base64": base64.b64encode(value).decode()})

        async def attempt():
            # force: send now, not attached to whatever event the stream saw last.
            return await (await dead_letters.send(key=key, value=body, force=True))

        await until_done(app, "sending a dead letter", attempt)
        DEAD_LETTERED.inc()
        log.error("dead-lettered a record: %s", reason)

    async def apply_batch(batch: Sequence[EventT]) -> None:
        """Decode, apply in one go; the records the pipeline rejects are found by
        applying each alone (harmless: the dedupe skips what is already in) and
        dead-lettered."""
        while applier is None:  # Redis was not there at start-up: start_applier retries
            if app.should_stop:
                log.error("stopping before Redis was reachable: exiting without committing")
                logging.shutdown()
                os._exit(EXIT_UNAPPLIED)
            await asyncio.sleep(0.01)
        BATCH_RECORDS.observe(len(batch))
        now_s = time.time()
        decoded: list[tuple[EventT, list[Event]]] = []
        for record in batch:
            if record.message.timestamp:  # seconds
                LAG_SECONDS.observe(max(0.0, now_s - record.message.timestamp))
            try:
                decoded.append((record, decode_record(record.value)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await dead_letter(record.key, record.value, f"not an Attimo events record: {exc}")
        try:
            await applier.apply([event for _, events in decoded for event in events])
        except Exception as exc:
            log.warning("the pipeline refused a batch of %d records (%r): applying them one by one",
                        len(decoded), exc)
            for record, events in decoded:
                try:
                    await applier.apply(events)
                except Exception as exc:
                    await dead_letter(record.key, record.value, f"rejected by the pipeline: {exc!r}")
        for record in batch:
            next_offset[record.message.tp] = max(next_offset.get(record.message.tp, 0), record.message.offset + 1)

    @app.agent(events_topic)
    async def apply_events(stream):
        async for batch in stream.take_events(settings.worker_batch, within=settings.worker_batch_wait_ms / 1000):
            for record in batch:
                record.message.incref()  # held until Redis has the batch: see the module's docstring
            await apply_batch(batch)
            for record in batch:
                record.message.decref()

    return app


def run_worker(settings: Settings) -> int:
    """`attimo worker`: make sure the topics exist, then run the faust worker."""
    if not settings.kafka_brokers:
        raise SystemExit("attimo worker needs ATTIMO_KAFKA_BROKERS")
    asyncio.run(ensure_topics(settings))
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    # uvloop, as the API runs on: the loop's own work (sockets to the broker
    # and Redis, callbacks, timers) is most of a worker's time outside the pipeline.
    mode.loop.use("uvloop")
    worker = faust.Worker(build_app(settings), loglevel="warning", quiet=True)
    # faust's start-up spinner sets the root logger to DEBUG and never sets it
    # back: every debug record of aiokafka and every journey's info line would
    # be built, then dropped by the WARNING handler (5 % of a busy worker's time).
    worker.spinner = None
    worker.execute_from_commandline()
    return 0
