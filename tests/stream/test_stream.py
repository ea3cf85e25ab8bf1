"""The Kafka path end to end, on a real Kafka-protocol broker (Tansu) started
here: the API produces, `attimo worker` (faust-streaming) applies with the same
pipeline, the next decide sees it; a poison record goes to the dead-letter
topic and the stream goes on; a broker that is down is a 503; and workers
killed with SIGKILL mid-stream lose nothing and apply nothing twice."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
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
import redis as redis_lib
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from engine.settings import Settings
from engine.stream.event_log import ensure_topics
from engine.testing.kafka import TansuBroker
from engine.testing.processes import start_api, stop_api, wait_until
from tests.conftest import ROOT

NOW = time.time_ns() // 1_000_000
PRICING = {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}
# Only what these tests look at (a count, an offer it unlocks), so that the
# demo catalog's journeys and scoring can change without touching them.
CATALOG = """
placements:
  home_hero: {description: hero}
rules:
  pricing_interest_crm:
    event: page_view
    where: {category: crm, page_type: pricing}
    within: 7d
    count: {at_least: 3}
offers:
  - id: crm_trial
    kind: banner
    placements: [home_hero]
    content: {title: Try CRM Pro}
    when: {rule: pricing_interest_crm}
"""


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

    def start_worker(self, **env: str) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 - the child's
        process = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker"],
                                   env={**os.environ, **self.env, **env},
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
        "ATTIMO_CATALOG": str(tmp_path / "catalog.yaml"),
    }
    (tmp_path / "catalog.yaml").write_text(CATALOG)
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
    from engine.testing.processes import free_port

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

        def lag_by_partition() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("attimo_worker_consumer_lag_records{")}

        # Lag per partition: each of the topic's 4 partitions reported, nothing left to apply.
        wait_until(lambda: lag_by_partition() == {str(p): 0.0 for p in range(4)}, 10, 0.1, "lag 0 everywhere")
        assert pricing_count(person(server, "u-s")) == 3

        def console() -> dict:
            with server.server() as client:
                return client.get("/v1/ops/overview", params={"minutes": 5}).json()

        # The console reads the same through Redis: the lag each partition's
        # worker reported, and the events the worker applied (the API queued them).
        wait_until(lambda: console()["now"]["kafka"] == {str(p): 0 for p in range(4)}, 10, 0.1, "the console's lag")
        wait_until(lambda: console()["totals"]["events_applied"] == 3, 10, 0.1, "the worker's events in the console")
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
    from engine.events import CONSENT, Event
    from engine.store.keys import Keys
    from engine.stream.event_log import records

    good = [Event(f"p{n}", "page_view", "u-p", NOW + n, PRICING) for n in range(2)]
    rejected = [Event("q1", CONSENT, "u-q", NOW, {"granted": True})]  # no channel: the pipeline refuses it
    after = [Event("p9", "page_view", "u-p", NOW + 100, PRICING)]
    asyncio.run(produce(stream.settings, [*records(good), (b"u-p", b"\xc1 not msgpack"), *records(rejected),
                                          *records(after)]))
    stream.start_worker()
    letters = {letter["key"]: letter for letter in asyncio.run(dead_letters(stream.settings, 2))}
    assert letters["u-p"]["error"].startswith("not an Attimo events record")
    assert base64.b64decode(letters["u-p"]["payload_base64"]) == b"\xc1 not msgpack"
    assert letters["u-q"]["error"].startswith("rejected by the pipeline: KeyError('channel')")
    assert base64.b64decode(letters["u-q"]["payload_base64"]) == records(rejected)[0][1]
    profile_key = Keys(stream.settings.key_prefix).dedupe("u-p")
    wait_until(lambda: redis_sync_client.zcard(profile_key) == 3, 30, 0.05, f"all good events\n{stream.logs()}")


def test_only_an_unreachable_store_is_retried():
    from redis import exceptions

    from engine.stream.worker import is_transient

    for exc in (exceptions.ConnectionError(), exceptions.TimeoutError(), exceptions.BusyLoadingError(),
                exceptions.ReadOnlyError(), exceptions.ResponseError("OOM command not allowed"), TimeoutError()):
        assert is_transient(exc), exc
    for exc in (exceptions.ResponseError("ERR user_script:1: bad"), KeyError("channel"), ValueError()):
        assert not is_transient(exc), exc


def test_redis_down_is_retried_and_a_worker_stopped_meanwhile_commits_nothing(stream):
    """Redis goes away twice. The first time the worker retries until it is back
    and applies the batch it held; the second time the worker is stopped
    (SIGTERM) while retrying: it exits without committing, and the next worker
    applies the batch once Redis is back."""
    from engine.events import Event
    from engine.store.keys import Keys
    from engine.store.local_server import LocalRedis
    from engine.stream.event_log import records

    port = LocalRedis().port
    servers = [LocalRedis(port).start()]
    try:
        stream.env["ATTIMO_REDIS_URL"] = servers[0].url
        stream.settings = Settings.from_env(stream.env)
        dedupe = Keys(stream.settings.key_prefix).dedupe

        def applied(person: str) -> int:
            with redis_lib.Redis(port=port) as client:
                return client.zcard(dedupe(person))

        def redis_down_while(person: str, events: int) -> None:
            servers[-1].stop()
            retries = stream.logs().count("retrying")
            batch = [Event(f"{person}-{n}", "page_view", person, NOW + n, PRICING) for n in range(events)]
            asyncio.run(produce(stream.settings, records(batch)))
            wait_until(lambda: stream.logs().count("retrying") > retries, 30, 0.05, f"a retry\n{stream.logs()}")

        first = stream.start_worker()
        asyncio.run(produce(stream.settings, records([Event("r0", "page_view", "u-r0", NOW, PRICING)])))
        wait_until(lambda: applied("u-r0") == 1, 60, 0.05, f"the worker to start\n{stream.logs()}")

        redis_down_while("u-r1", 5)
        servers.append(LocalRedis(port).start())
        wait_until(lambda: applied("u-r1") == 5, 30, 0.05, f"the retried batch\n{stream.logs()}")

        redis_down_while("u-r2", 5)
        first.terminate()
        assert first.wait(30) == 75  # EXIT_UNAPPLIED: stopped with a batch it could not apply
        servers.append(LocalRedis(port).start())
        stream.start_worker()
        wait_until(lambda: applied("u-r2") == 5, 60, 0.05, f"the batch the stopped worker held\n{stream.logs()}")
    finally:
        for server in servers:
            server.stop()


def test_a_broker_that_is_down_is_a_503(redis_server, tmp_path):
    from engine.testing.processes import free_port

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
    """Two workers in one group while events flow; the older one is SIGKILLed
    just after its own metrics show it applying (so it dies holding applied,
    uncommitted records, not while still starting up) and a new one started,
    eight times. Afterwards every person's dedupe set holds exactly the ids
    sent to them, no counter went past the number sent, and the workers' logs
    show that records were delivered again and absorbed (else this test would
    prove nothing about redelivery)."""
    from engine.events import Event
    from engine.profile import decode_profile
    from engine.store.keys import Keys
    from engine.stream.event_log import records
    from engine.testing.processes import free_port

    people, kills = 100, 8
    # A dead member leaves the group when its session times out; until then
    # the group cannot settle. Short sessions let the survivors take over
    # (and get records delivered again) between kills. Tansu allows 2 s; an
    # Apache Kafka broker's default group.min.session.timeout.ms is 6 s.
    stream.env["ATTIMO_WORKER_SESSION_TIMEOUT_S"] = "2"
    metrics: dict[subprocess.Popen, int] = {}

    def start() -> None:
        port = free_port()
        metrics[stream.start_worker(ATTIMO_WORKER_METRICS_PORT=str(port))] = port

    async def applied_by(process: subprocess.Popen) -> float:
        """The worker's own count of events applied (0 until it serves /metrics)."""
        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{metrics[process]}/metrics", timeout=1)).text
        except httpx.HTTPError:
            return 0.0
        found = re.search(r"^attimo_worker_events_applied_total (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    start()
    start()
    rng = random.Random(5)
    killed = asyncio.Event()
    rounds = 0  # each round sends every person one event: the flow goes on until the kills are done

    async def flow() -> None:
        nonlocal rounds
        producer = AIOKafkaProducer(bootstrap_servers=list(stream.settings.kafka_brokers), acks="all")
        await producer.start()
        try:
            while not killed.is_set() or rounds < 10:
                sent = [Event(f"k{p}-{rounds}", "page_view", f"u-{p}", NOW + rounds, PRICING) for p in range(people)]
                for start_at in range(0, people, 10):
                    for key, value in records(sent[start_at:start_at + 10]):
                        await producer.send_and_wait(stream.settings.kafka_topic, value, key=key)
                    await asyncio.sleep(0.1)  # the pace of the flow, not a wait for anything
                rounds += 1
        finally:
            await producer.stop()

    async def killer() -> None:
        try:
            for _ in range(kills):
                oldest = next(process for process in stream.workers if process.poll() is None)
                seen, deadline = await applied_by(oldest), time.monotonic() + 90
                while (now := await applied_by(oldest)) <= seen or now == 0:  # until it applies a batch
                    assert time.monotonic() < deadline, f"worker never applied\n{stream.logs()}"
                    seen = max(seen, now)
                    await asyncio.sleep(rng.uniform(0.02, 0.08))
                oldest.send_signal(signal.SIGKILL)
                oldest.wait()
                start()
        finally:
            killed.set()

    async def both() -> None:
        await asyncio.gather(flow(), killer())

    asyncio.run(both())
    assert sum(process.returncode == -signal.SIGKILL for process in stream.workers) == kills
    keys = Keys(stream.settings.key_prefix)
    per_person = rounds

    def all_applied() -> bool:
        return all(redis_sync_client.zcard(keys.dedupe(f"u-{p}")) == per_person for p in range(people))

    wait_until(all_applied, 120, 0.2, f"every event applied\n{stream.logs()}")
    for p in range(people):
        profile = decode_profile(redis_sync_client.get(keys.profile(f"u-{p}")))
        counts = [sum(ring[1:]) for ring in profile.w.values()]
        assert max(counts) == per_person, (p, counts)  # each event counted once
    logs = "".join(path.read_text(errors="replace") for path in stream.tmp.glob("worker-*.log"))
    redelivered = sum(int(n) for n in re.findall(r"(\d+) redelivered events absorbed", logs))
    assert redelivered > 0
