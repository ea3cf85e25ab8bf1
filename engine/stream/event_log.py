"""The Kafka path's wire: resolved events as records, and the producer the API
awaits before answering 202. One record holds one person's events of one
request, keyed by the person, so a person's events stay in order on one
partition and a worker applies each record with one Lua call (the record
layout BENCHMARKS.md P4 measured: one person's batch per record, not one event)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from engine.errors import StoreUnavailable
from engine.events import Event
from engine.settings import Settings

log = logging.getLogger("attimo.event_log")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[Event]).decode


def records(events: list[Event]) -> list[tuple[bytes, bytes]]:
    """(key, value) per person: the person id, and their events msgpack-encoded."""
    by_person: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_person[event.person].append(event)
    return [(person.encode(), _encode(batch)) for person, batch in by_person.items()]


def decode_record(value: bytes) -> list[Event]:
    """The events of one record; raises msgspec errors for a record that is not one."""
    return _decode(value)


def brokers(settings: Settings) -> list[str]:
    return list(settings.kafka_brokers)


async def ensure_topics(settings: Settings) -> None:
    """Create the events and dead-letter topics if they do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers(settings))
    await admin.start()
    try:
        for name in (settings.kafka_topic, settings.kafka_dlq_topic):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, settings.kafka_partitions, 1)])
    finally:
        await admin.close()


class EventLog:
    """The API's producer: idempotent, acknowledged by every in-sync replica.
    Started on first use and restarted after a failure, so an API that came
    up while the broker was down answers 503 until it is back, then 202."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.topic = settings.kafka_topic
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _ready(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=brokers(self.settings),
                    enable_idempotence=self.settings.kafka_idempotent,
                    acks="all",
                    linger_ms=self.settings.kafka_linger_ms,
                    request_timeout_ms=int(self.settings.apply_budget_ms),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, events: list[Event]) -> None:
        """Return once the broker has acknowledged every record; else StoreUnavailable."""
        try:
            async with asyncio.timeout(self.settings.apply_budget_ms / 1000):
                producer = await self._ready()
                sent = [await producer.send(self.topic, value, key=key) for key, value in records(events)]
                await asyncio.gather(*sent)
        except (KafkaError, TimeoutError, OSError) as exc:
            await self.close()
            raise StoreUnavailable("the event log is unavailable") from exc

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except (KafkaError, OSError) as exc:
                log.warning("closing the Kafka producer: %r", exc)
