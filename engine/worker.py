"""`attimo worker`: a faust-streaming app that applies the events the API put on
the Kafka topic, with the same pipeline as the inline path. Records are taken in
batches and all their people applied in one pipelined round trip; offsets are
acknowledged only when the batch is in Redis (faust's `take` acks a batch after
the agent's body has handled it), so a worker killed mid-batch has its records
delivered again, and the event-id dedupe makes that harmless. A record the
pipeline cannot read goes to the dead-letter topic with the reason; a Redis
error is retried with backoff, never skipped."""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import faust
import msgspec
import orjson
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_kafka
from prometheus_client import Counter, Histogram, start_http_server
from redis.exceptions import RedisError

from engine.catalog import CatalogHolder, empty_catalog, load_catalog_file
from engine.catalog_store import CatalogStore
from engine.event_log import decode_record, ensure_topics
from engine.events import Event
from engine.keys import Keys
from engine.pipeline import Pipeline
from engine.profiles import ProfileStore
from engine.redis_client import connect
from engine.settings import Settings

log = logging.getLogger("attimo.worker")
REDIS_RETRY_MAX_S = 2.0

APPLIED = Counter("attimo_worker_events_applied_total", "Events applied to profiles by this worker")
DUPLICATES = Counter("attimo_worker_events_duplicate_total", "Redelivered events the dedupe absorbed")
DEAD_LETTERED = Counter("attimo_worker_dead_lettered_total", "Records sent to the dead-letter topic")
REDIS_RETRIES = Counter("attimo_worker_redis_retries_total", "Applies retried after a Redis error")
BATCH_RECORDS = Histogram("attimo_worker_batch_records", "Records per applied batch",
                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
APPLY_SECONDS = Histogram("attimo_worker_apply_seconds", "Time to apply one batch in Redis",
                          buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
LAG_SECONDS = Histogram("attimo_worker_record_age_seconds", "From a record's broker timestamp to its apply",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0))


class _FetchWaitThread(faust_kafka.AIOKafkaConsumerThread):
    """faust passes aiokafka a fixed fetch_max_wait_ms=1500: a record on a quiet
    partition could wait that long. Ours comes from ATTIMO_WORKER_FETCH_WAIT_MS."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = SETTINGS.worker_fetch_wait_ms
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self):
        return _FetchWaitThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_kafka.Transport):
    Consumer = _Consumer


TRANSPORTS.aliases["attimo"] = "engine.worker:FetchWaitTransport"

SETTINGS = Settings.from_env()
app = faust.App(
    SETTINGS.worker_group,
    broker=[f"attimo://{broker}" for broker in SETTINGS.kafka_brokers] or "attimo://127.0.0.1:9092",
    web_enabled=False,
    topic_partitions=SETTINGS.kafka_partitions,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=SETTINGS.worker_session_timeout_s,
    broker_heartbeat_interval=min(3.0, SETTINGS.worker_session_timeout_s / 3),
    broker_commit_every=SETTINGS.worker_batch,
    broker_commit_interval=0.5,
    producer_acks=-1,
)
events_topic = app.topic(SETTINGS.kafka_topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
dead_letters = app.topic(SETTINGS.kafka_dlq_topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")


class Applier:
    """The worker's side of the pipeline: Redis, the catalog in force (followed
    like the API follows it), and the retry policy."""

    def __init__(self, settings: Settings):
        catalog, text = (load_catalog_file(settings.catalog_path) if settings.catalog_path
                         else (empty_catalog(), ""))
        self.holder = CatalogHolder(catalog, text)
        self.redis = connect(settings, pool_timeout_s=5)
        keys = Keys(settings.key_prefix)
        self.store = ProfileStore(self.redis, keys, dedupe_ttl_s=settings.dedupe_ttl_s,
                                  profile_ttl_s=settings.profile_ttl_s)
        self.pipeline = Pipeline(self.store, self.holder)
        self.catalogs = CatalogStore(self.redis, keys, self.holder)

    async def apply(self, events: list[Event]) -> None:
        """Until Redis has them: a transient error is retried with backoff."""
        delay = 0.05
        while True:
            try:
                started = time.perf_counter()
                result = await self.pipeline.apply(events, time.time_ns() // 1_000_000)
                APPLY_SECONDS.observe(time.perf_counter() - started)
                APPLIED.inc(result.accepted)
                DUPLICATES.inc(result.duplicates)
                return
            except RedisError as exc:
                REDIS_RETRIES.inc()
                log.warning("Redis error applying %d events, retrying in %.2f s: %r", len(events), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)


APPLIER: Applier | None = None


@app.task
async def start_applier() -> None:
    global APPLIER
    applier = Applier(SETTINGS)
    await applier.catalogs.refresh()
    APPLIER = applier
    app.add_future(applier.catalogs.poll(SETTINGS.catalog_poll_s))


async def dead_letter(key: bytes | None, value: bytes, reason: str) -> None:
    body = {"error": reason, "key": (key or b"").decode(errors="replace"),
            "payload_base64": base64.b64encode(value).decode()}
    await dead_letters.send(key=key, value=orjson.dumps(body))
    DEAD_LETTERED.inc()
    log.error("dead-lettered a record: %s", reason)


@app.agent(events_topic)
async def apply_events(stream):
    async for batch in stream.take_events(SETTINGS.worker_batch, within=SETTINGS.worker_batch_wait_ms / 1000):
        while APPLIER is None:
            await asyncio.sleep(0.01)
        events: list[Event] = []
        BATCH_RECORDS.observe(len(batch))
        now_s = time.time()
        for event in batch:
            if event.message.timestamp:  # seconds
                LAG_SECONDS.observe(max(0.0, now_s - event.message.timestamp))
            try:
                events.extend(decode_record(event.value))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await dead_letter(event.key, event.value, f"not an Attimo events record: {exc}")
        if events:
            await APPLIER.apply(events)


def run_worker(settings: Settings) -> int:
    """`attimo worker`: make sure the topics exist, then run the faust worker."""
    if not settings.kafka_brokers:
        raise SystemExit("attimo worker needs ATTIMO_KAFKA_BROKERS")
    asyncio.run(ensure_topics(settings))
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()
    return 0
