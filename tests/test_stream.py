"""The Kafka path end to end, on a real Kafka-protocol broker (Tansu) started
here: the API produces, `attimo worker` (faust-streaming) applies with the same
pipeline, the next decide sees it; a poison record goes to the dead-letter
topic and the stream goes on; a broker that is down is a 503; and workers
killed with SIGKILL mid-stream lose nothing and apply nothing twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from engine.event_log import ensure_topics
from engine.settings import Settings
from tests.conftest import ROOT, start_api, stop_api, wait_until
from tests.kafka_broker import TansuBroker

NOW = time.time_ns() // 1_000_000
PRICING = {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}


@pytest.fixture(scope="module")
def broker():
    with TansuBroker() as started:
        yield started


@dataclass
class Stream:
    """One test's topics, consumer group and key prefix on the shared broker and Redis."""

    env: dict[str, str]
    settings: Settings
    tmp: Path
    workers: list[subprocess.Popen]

    def start_worker(self) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 - the child's
        process = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker"], env={**os.environ, **self.env},
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.workers.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-2000:] for path in sorted(self.tmp.glob("worker-*.log")))


@pytest.fixture
def stream(broker, redis_server, tmp_path):
    name = uuid.uuid4().hex[:8]
    env = {
        "ATTIMO_KAFKA_BROKERS": broker.address,
        "ATTIMO_KAFKA_TOPIC": f"events-{name}",
        "ATTIMO_KAFKA_DLQ_TOPIC": f"events-{name}.dlq",
        "ATTIMO_KAFKA_PARTITIONS": "4",
        "ATTIMO_KAFKA_IDEMPOTENT": "0",  # Tansu's memory engine has no InitProducerId
        "ATTIMO_WORKER_GROUP": f"workers-{name}",
        "ATTIMO_KEY_PREFIX": f"stream-{name}",
        "ATTIMO_REDIS_URL": redis_server.url,
        "ATTIMO_CATALOG": str(ROOT / "examples" / "catalog.yaml"),
    }
    settings = Settings.from_env(env)
    asyncio.run(ensure_topics(settings))
    handle = Stream(env, settings, tmp_path, [])
    yield handle
    for process in handle.workers:
        if process.poll() is None:
            process.terminate()
    for process in handle.workers:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def person(server, person_id: str) -> dict:
    with server.server() as client:
        return client.get(f"/v1/people/{person_id}").json()


def pricing_count(profile: dict) -> float:
    return next(value for label, value in profile["features"].items() if "pricing" in label and "crm" in label)


def test_api_to_topic_to_worker_to_the_next_decide(stream, tmp_path):
    from engine.local_redis import free_port

    metrics_port = free_port()
    stream.env["ATTIMO_WORKER_METRICS_PORT"] = str(metrics_port)
    stream.start_worker()
    server = start_api(stream.settings.redis_url, tmp_path, **{k: v for k, v in stream.env.items()
                                                               if k != "ATTIMO_REDIS_URL"})
    try:
        events = [{"id": f"s{n}", "type": "page_view", "user_id": "u-s", "properties": PRICING} for n in range(3)]
        with server.server() as client:
            answer = client.post("/v1/events", json={"events": events})
            assert answer.status_code == 202
            assert answer.json() == {"accepted": 3, "queued": True}

            def decided():
                body = {"user_id": "u-s", "placements": ["home_hero"]}
                chosen = client.post("/v1/decide", json=body).json()["placements"]["home_hero"]
                return chosen is not None and chosen["offer"] == "crm_trial"

            wait_until(decided, 60, 0.05, f"the worker to apply the events\n{stream.logs()}")
            client.post("/v1/events", json={"events": events})  # the same ids again

        def worker_metric(name: str) -> float:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

        # The resent batch is absorbed by the dedupe: counted as duplicates, applied once.
        wait_until(lambda: worker_metric("attimo_worker_events_duplicate_total") == 3, 30, 0.05, "the duplicates")
        assert worker_metric("attimo_worker_events_applied_total") == 3
        assert pricing_count(person(server, "u-s")) == 3
    finally:
        stop_api(server)


async def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=list(settings.kafka_brokers), acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.kafka_topic, value, key=key)
    finally:
        await producer.stop()


async def dead_letters(settings: Settings, expected: int) -> list[dict]:
    consumer = AIOKafkaConsumer(settings.kafka_dlq_topic, bootstrap_servers=list(settings.kafka_brokers),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[dict] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < expected:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(orjson.loads(record.value) for record in records)
    finally:
        await consumer.stop()
    return found


def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_stream_goes_on(stream, redis_sync_client):
    from engine.event_log import records
    from engine.events import Event
    from engine.keys import Keys

    good = [Event(f"p{n}", "page_view", "u-p", NOW + n, PRICING) for n in range(2)]
    after = [Event("p9", "page_view", "u-p", NOW + 100, PRICING)]
    asyncio.run(produce(stream.settings, [*records(good), (b"u-p", b"\xc1 not msgpack"), *records(after)]))
    stream.start_worker()
    (letter,) = asyncio.run(dead_letters(stream.settings, 1))
    assert letter["error"].startswith("not an Attimo events record")
    assert letter["key"] == "u-p"
    profile_key = Keys(stream.settings.key_prefix).dedupe("u-p")
    wait_until(lambda: redis_sync_client.zcard(profile_key) == 3, 30, 0.05, f"all good events\n{stream.logs()}")


def test_a_broker_that_is_down_is_a_503(redis_server, tmp_path):
    from engine.local_redis import free_port

    server = start_api(redis_server.url, tmp_path, ATTIMO_KAFKA_BROKERS=f"127.0.0.1:{free_port()}",
                       ATTIMO_APPLY_BUDGET_MS="1000")
    try:
        with server.server() as client:
            answer = client.post("/v1/events", json={"events": [{"id": "d1", "type": "x", "user_id": "u-d"}]})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "event log" in answer.json()["error"]
        assert "Traceback" not in server.log_path.read_text()
    finally:
        stop_api(server)


def test_workers_killed_mid_stream_lose_nothing_and_apply_nothing_twice(stream, redis_sync_client):
    """Two workers in one group while a known set of events flows for about
    forty seconds; every two seconds or so the older one is SIGKILLed and a new
    one started, 20 times. Afterwards every person's dedupe set holds exactly
    the ids sent to them and no counter went past the number sent."""
    from engine.event_log import records
    from engine.events import Event
    from engine.keys import Keys
    from engine.profiles import decode_profile

    people, per_person, kills = 100, 40, 20
    sent = [Event(f"k{p}-{n}", "page_view", f"u-{p}", NOW + n, PRICING)
            for n in range(per_person) for p in range(people)]
    chunks = [sent[i:i + 100] for i in range(0, len(sent), 100)]
    stream.start_worker()
    stream.start_worker()
    rng = random.Random(5)

    async def flow() -> None:
        for chunk in chunks:
            await produce(stream.settings, records(chunk))
            await asyncio.sleep(1.0)  # the pace of the flow, not a wait for anything

    async def killer() -> None:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(1.5, 2.5))  # a random moment mid-stream
            oldest = next(process for process in stream.workers if process.poll() is None)
            oldest.send_signal(signal.SIGKILL)
            oldest.wait()
            stream.start_worker()

    async def both() -> None:
        await asyncio.gather(flow(), killer())

    asyncio.run(both())
    assert sum(process.returncode == -signal.SIGKILL for process in stream.workers) == kills
    keys = Keys(stream.settings.key_prefix)

    def all_applied() -> bool:
        return all(redis_sync_client.zcard(keys.dedupe(f"u-{p}")) == per_person for p in range(people))

    wait_until(all_applied, 120, 0.2, f"every event applied\n{stream.logs()}")
    for p in range(people):
        profile = decode_profile(redis_sync_client.get(keys.profile(f"u-{p}")))
        counts = [sum(ring[1:]) for ring in profile.w.values()]
        assert max(counts) == per_person, (p, counts)  # each event counted once
