"""Stream benchmark (compass P4, P5) on a Tansu broker started here.

P4: `attimo worker` drains a topic preloaded with records as the API writes
them (one person's events per record: 10k people), against a bare faust agent
that only counts one-event records on the same broker (benchmarks.bare_agent).
Both rates run from the first record handled to the last: the worker's from the
apply times Redis keeps in each person's dedupe set, the agent's from its own
clock.

P5: freshness in Kafka mode, from the API's 202 to the event being applied in
Redis (what /v1/decide reads, with one GET), at 1k and 5k events/s (batches of
20 events of one person, open loop); inline mode is 0 by construction. Also the
API's produce throughput against inline mode.

    python -m benchmarks.bench_stream [--quick]

Worker and API on core 0 with Redis and the broker; this process on core 1.
Last line: JSON figures."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis as redis_sync
from aiokafka import AIOKafkaProducer

from benchmarks.harness import LOADGEN_CORE, SERVER_CORE, log
from benchmarks.loadgen import pin_current_process, start_pinned, stop_process
from benchmarks.processes import REPO_ROOT, RedisServer, free_port, raise_on_sigterm
from benchmarks.report import RESULTS_DIR, print_figures
from engine.event_log import ensure_topics, records
from engine.events import Event
from engine.keys import Keys
from engine.settings import Settings
from tests.kafka_broker import TansuBroker

TOKEN = "bench-token"
PRICING = {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}


def stream_env(broker: TansuBroker, redis_url: str, name: str) -> dict[str, str]:
    return {
        "ATTIMO_KAFKA_BROKERS": broker.address, "ATTIMO_KAFKA_TOPIC": f"ev-{name}",
        "ATTIMO_KAFKA_DLQ_TOPIC": f"ev-{name}.dlq", "ATTIMO_KAFKA_PARTITIONS": "8",
        "ATTIMO_KAFKA_IDEMPOTENT": "0", "ATTIMO_WORKER_GROUP": f"w-{name}", "ATTIMO_REDIS_URL": redis_url,
        "ATTIMO_KEY_PREFIX": name, "ATTIMO_SERVER_TOKEN": TOKEN,
        "ATTIMO_CATALOG": str(REPO_ROOT / "examples" / "catalog.yaml"),
    }


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as out:
        return start_pinned(command, SERVER_CORE, env={**os.environ, **env}, cwd=REPO_ROOT,
                            stdout=out, stderr=subprocess.STDOUT)


async def produce(settings: Settings, pairs: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=list(settings.kafka_brokers), acks="all", linger_ms=5)
    await producer.start()
    try:
        for start_at in range(0, len(pairs), 1000):
            sent = [await producer.send(settings.kafka_topic, value, key=key)
                    for key, value in pairs[start_at:start_at + 1000]]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


def apply_times(client: redis_sync.Redis, keys: Keys, people: list[str]) -> np.ndarray:
    """Every applied event's apply time (ms): the dedupe sets' scores."""
    pipe = client.pipeline(transaction=False)
    for person in people:
        pipe.zrange(keys.dedupe(person), 0, -1, withscores=True)
    return np.array([score for members in pipe.execute() for _, score in members])


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


async def worker_throughput(broker, redis, work: Path, n_people: int, per_person: int) -> float:
    name = f"p4{uuid.uuid4().hex[:6]}"
    env = stream_env(broker, redis.url, name)
    settings = Settings.from_env(env)
    await ensure_topics(settings)
    now = time.time_ns() // 1_000_000
    people = [f"u{p}" for p in range(n_people)]
    events = [Event(f"{name}-{p}-{n}", "page_view", person, now - n, PRICING)
              for p, person in enumerate(people) for n in range(per_person)]
    await produce(settings, records(events))
    worker = start([sys.executable, "-m", "engine.cli", "worker"], env, work / "worker.log")
    client = redis_sync.Redis.from_url(redis.url)
    keys = Keys(name)
    try:
        wait_for(lambda: len(apply_times(client, keys, people)) >= len(events), 300, "the worker to drain")
    finally:
        stop_process(worker)
    times = apply_times(client, keys, people)
    return len(events) / max((times.max() - times.min()) / 1000, 1e-3)


async def bare_throughput(broker, work: Path, n_records: int) -> float:
    name = f"bare{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env({"ATTIMO_KAFKA_BROKERS": broker.address, "ATTIMO_KAFKA_TOPIC": name,
                                  "ATTIMO_KAFKA_DLQ_TOPIC": f"{name}.dlq", "ATTIMO_KAFKA_PARTITIONS": "8"})
    await ensure_topics(settings)
    one = Event("x", "page_view", "u", 0, PRICING)
    value = records([one])[0][1]
    await produce(settings, [(f"u{n % 10_000}".encode(), value) for n in range(n_records)])
    out = work / "bare.out"
    agent = start([sys.executable, "-m", "benchmarks.bare_agent"],
                  {"BARE_BROKER": broker.address, "BARE_TOPIC": name, "BARE_EXPECT": str(n_records),
                   "BARE_OUT": str(out)}, work / "bare.log")
    try:
        wait_for(out.exists, 300, "the bare agent to count every record")
    finally:
        stop_process(agent)
    first, last, count = (int(x) for x in out.read_text().split(","))
    return count / max((last - first) / 1000, 1e-3)


async def freshness(broker, redis, work: Path, events_per_s: float, seconds: float) -> dict:
    """Open loop: batches of 20 events of one person at `events_per_s`; for each,
    the apply time in Redis minus the moment its 202 arrived."""
    name = f"p5{uuid.uuid4().hex[:6]}"
    env = stream_env(broker, redis.url, name)
    settings = Settings.from_env(env)
    await ensure_topics(settings)
    port = free_port()
    api = start([sys.executable, "-m", "engine.cli", "serve", "--port", str(port)], env, work / f"api-{name}.log")
    worker = start([sys.executable, "-m", "engine.cli", "worker"], env, work / f"worker-{name}.log")
    acked: dict[str, float] = {}
    keys = Keys(name)
    client = redis_sync.Redis.from_url(redis.url)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the API did not start")
                await asyncio.sleep(0.1)
            # The worker must have joined its group before the clock starts.
            warm = [{"id": f"{name}-warm", "type": "page_view", "user_id": "warm", "properties": PRICING}]
            await http.post("/v1/events", json={"events": warm})
            wait_for(lambda: client.zcard(keys.dedupe("warm")) == 1, 60, "the worker to start")

            interval = 20 / events_per_s
            begin = time.perf_counter()
            tasks = []

            async def send(index: int) -> None:
                person = f"f{index}"
                batch = [{"id": f"{name}-{index}-{n}", "type": "page_view", "user_id": person,
                          "properties": PRICING} for n in range(20)]
                answer = await http.post("/v1/events", json={"events": batch})
                if answer.status_code == 202:
                    acked[person] = time.time_ns() / 1e6

            for index in range(int(seconds * events_per_s / 20)):
                delay = begin + index * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(index)))
            await asyncio.gather(*tasks)
        people = list(acked)
        wait_for(lambda: len(apply_times(client, keys, people)) >= 20 * len(people), 120, "every batch applied")
        pipe = client.pipeline(transaction=False)
        for person in people:
            pipe.zrange(keys.dedupe(person), -1, -1, withscores=True)
        lags = np.array([members[0][1] - acked[person] for person, members in zip(people, pipe.execute(), strict=True)])
    finally:
        stop_process(api)
        stop_process(worker)
    lags = np.maximum(lags, 0.0)
    return {"rate": events_per_s, "batches": len(lags), "p50_ms": float(np.percentile(lags, 50)),
            "p99_ms": float(np.percentile(lags, 99))}


async def measure(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="attimo-bench-stream-"))
    with TansuBroker() as broker, RedisServer(SERVER_CORE) as redis:
        subprocess.run(["taskset", "-pc", str(SERVER_CORE), str(broker.process.pid)], check=True,
                       capture_output=True)
        n_people, per_person = (2_000, 10) if args.quick else (10_000, 10)
        worker_rate = await worker_throughput(broker, redis, work, n_people, per_person)
        log(f"worker: {worker_rate:.0f} events/s")
        bare_rate = await bare_throughput(broker, work, n_people * per_person)
        log(f"bare agent: {bare_rate:.0f} records/s")
        seconds = 5.0 if args.quick else 20.0
        fresh = [await freshness(broker, redis, work, rate, seconds) for rate in (1000.0, 5000.0)]
        for row in fresh:
            log(f"freshness at {row['rate']:.0f} ev/s: p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms")
    figures = {
        "worker_events_per_s": worker_rate,
        "bare_agent_events_per_s": bare_rate,
        "worker_over_bare": worker_rate / bare_rate,
        "freshness_p50_ms_1k": fresh[0]["p50_ms"], "freshness_p99_ms_1k": fresh[0]["p99_ms"],
        "freshness_p50_ms_5k": fresh[1]["p50_ms"], "freshness_p99_ms_5k": fresh[1]["p99_ms"],
        "quick": args.quick,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in figures.items())
    (RESULTS_DIR / "stream.md").write_text(
        f"# Stream benchmark (P4, P5)\n\n- command: `python -m benchmarks.bench_stream"
        f"{' --quick' if args.quick else ''}`\n- Tansu broker (memory), one worker, "
        f"{n_people} people x {per_person} events for P4; batches of 20 events of one person for P5\n"
        "- targets: P4 worker >= 1.0 x the bare agent; P5 freshness p99 <= 100 ms at 5k events/s\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_stream", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute or two: fewer people, shorter runs")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    pin_current_process(LOADGEN_CORE)
    print_figures(asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
