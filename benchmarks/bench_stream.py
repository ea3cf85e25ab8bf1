"""Stream benchmark (compass P4, P5) on a Tansu broker started here.

P4: `attimo worker` drains a topic preloaded with records as the API writes
them (one person's events per record: 10k people), against a bare faust agent
that only counts one-event records on the same broker (benchmarks.bare_agent).
Both rates run from the first record handled to the last: the worker's from the
apply times Redis keeps in each person's dedupe set, the agent's from its own
clock. The worker runs twice: with the demo catalog (journeys included) and
with a catalog of one rule and one offer, to show what the catalog costs.

P5: freshness in Kafka mode at 1k and 5k events/s (batches of 20 events of one
new person, open loop): from the API's 202 to the change being visible through
/v1/decide (one batch in SAMPLE_EVERY is followed by decides every 3 ms until
the offer its events unlock is chosen), and for every batch from the 202 to
its apply time in Redis (the dedupe set's scores). Inline mode is 0 by
construction.

Produce: POST /v1/events in Kafka mode (the API waits for the broker's ack)
against inline mode (the API applies to Redis), same batches, alternating
fixed-rate runs and a saturation search each (markdown + PNG plots as
stream_produce.*).

    python -m benchmarks.bench_stream [--quick]

Worker, API, Redis and the broker on core 0; this process on core 1. Other
work on the machine (tests run by other people) makes the figures noisy.
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
import uvloop
from aiokafka import AIOKafkaProducer

from benchmarks.harness import (
    LOADGEN_CORE,
    SERVER_CORE,
    alternate,
    arguments,
    log,
    saturate,
    settle,
)
from benchmarks.http_client import HttpTarget
from benchmarks.report import RESULTS_DIR, print_figures, write_report
from benchmarks.schedule import LoadOptions
from benchmarks.workload import FreshBatches
from engine.clock import now_ms
from engine.events import Event
from engine.settings import Settings
from engine.store.keys import Keys
from engine.stream.event_log import ensure_topics, records
from engine.testing.kafka import TansuBroker
from engine.testing.processes import (
    REPO_ROOT,
    RedisServer,
    UvicornServer,
    free_port,
    pin_current_process,
    raise_on_sigterm,
    start_pinned,
    stop_process,
    wait_until,
)

TOKEN = "bench-token"
PRICING = {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}
BATCH = 20
# Freshness through /v1/decide: one batch in this many is polled (more polls
# would make this process, the load generator, the bottleneck at 5k events/s).
SAMPLE_EVERY = 25
POLL_S = 0.003
# Freshness: a person's 20 pricing views unlock this offer, nothing else is there.
FRESHNESS_CATALOG = """
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


def stream_env(broker: TansuBroker, redis_url: str, name: str) -> dict[str, str]:
    return {
        "ATTIMO_KAFKA_BROKERS": broker.address, "ATTIMO_KAFKA_TOPIC": f"ev-{name}",
        "ATTIMO_KAFKA_DLQ_TOPIC": f"ev-{name}.dlq", "ATTIMO_KAFKA_PARTITIONS": "8",
        "ATTIMO_KAFKA_IDEMPOTENT": "0", "ATTIMO_WORKER_GROUP": f"w-{name}", "ATTIMO_REDIS_URL": redis_url,
        "ATTIMO_KEY_PREFIX": name, "ATTIMO_SERVER_TOKEN": TOKEN, "ATTIMO_SCHEDULER": "off",
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
    wait_until(check, timeout_s, 0.2, what, error=TimeoutError)


async def worker_throughput(broker, redis, work: Path, n_people: int, per_person: int,
                            catalog: Path | None = None) -> float:
    name = f"p4{uuid.uuid4().hex[:6]}"
    env = stream_env(broker, redis.url, name)
    if catalog is not None:
        env["ATTIMO_CATALOG"] = str(catalog)
    settings = Settings.from_env(env)
    await ensure_topics(settings)
    now = now_ms()
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


async def freshness(broker, redis, work: Path, rates: list[float], seconds: float) -> list[dict]:
    """Open loop, at each of `rates` events/s in turn (same API and worker):
    batches of 20 pricing views of one new person. For every batch, its apply
    time in Redis minus the moment its 202 arrived; for one in SAMPLE_EVERY, the
    first /v1/decide that shows the offer they unlock minus that moment."""
    name = f"p5{uuid.uuid4().hex[:6]}"
    catalog = work / "freshness.yaml"
    catalog.write_text(FRESHNESS_CATALOG)
    env = {**stream_env(broker, redis.url, name), "ATTIMO_CATALOG": str(catalog)}
    await ensure_topics(Settings.from_env(env))
    port = free_port()
    api = start([sys.executable, "-m", "engine.cli", "serve", "--port", str(port)], env, work / f"api-{name}.log")
    worker = start([sys.executable, "-m", "engine.cli", "worker"], env, work / f"worker-{name}.log")
    keys = Keys(name)
    client = redis_sync.Redis.from_url(redis.url)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": f"Bearer {TOKEN}"},
                                     limits=httpx.Limits(max_connections=200)) as http:
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
            wait_for(lambda: client.zcard(keys.dedupe("u:warm")) == 1, 60, "the worker to start")  # a user id: u:
            return [await one_rate(http, client, keys, f"{name}-{rate:.0f}", rate, seconds) for rate in rates]
    finally:
        stop_process(api)
        stop_process(worker)


async def one_rate(http: httpx.AsyncClient, client: redis_sync.Redis, keys: Keys, run: str, events_per_s: float,
                   seconds: float) -> dict:
    acked: dict[str, float] = {}
    visible: list[float] = []

    async def shows_offer(person: str) -> bool:
        answer = await http.post("/v1/decide", json={"user_id": person, "placements": ["home_hero"]})
        chosen = answer.json()["placements"]["home_hero"]
        return chosen is not None and chosen["offer"] == "crm_trial"

    async def send(index: int) -> None:
        person = f"{run}-{index}"
        batch = [{"id": f"{person}-{n}", "type": "page_view", "user_id": person, "properties": PRICING}
                 for n in range(BATCH)]
        answer = await http.post("/v1/events", json={"events": batch})
        if answer.status_code != 202:
            return
        acked[person] = time.time_ns() / 1e6
        if index % SAMPLE_EVERY:
            return
        started = time.perf_counter()
        while time.perf_counter() - started < 10:
            if await shows_offer(person):
                visible.append((time.perf_counter() - started) * 1000)
                return
            await asyncio.sleep(POLL_S)

    interval = BATCH / events_per_s
    begin = time.perf_counter()
    tasks = []
    for index in range(int(seconds * events_per_s / BATCH)):
        delay = begin + index * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(index)))
    await asyncio.gather(*tasks)
    people = list(acked)
    stored = [f"u:{person}" for person in people]  # sent as user ids: the engine's person is u:<id>
    wait_for(lambda: len(apply_times(client, keys, stored)) >= BATCH * len(people), 120, "every batch applied")
    pipe = client.pipeline(transaction=False)
    for person in stored:
        pipe.zrange(keys.dedupe(person), -1, -1, withscores=True)
    lags = np.array([members[0][1] - acked[person] for person, members in zip(people, pipe.execute(), strict=True)])
    lags = np.maximum(lags, 0.0)
    seen = np.array(visible or [float("nan")])
    return {"rate": events_per_s, "batches": len(lags), "sampled": len(visible),
            "p50_ms": float(np.percentile(seen, 50)), "p99_ms": float(np.percentile(seen, 99)),
            "applied_p50_ms": float(np.percentile(lags, 50)), "applied_p99_ms": float(np.percentile(lags, 99)),
            "visible_ms": seen, "applied_ms": lags}


def batches_target(port: int, name: str, people: int) -> HttpTarget:
    path, headers = "/v1/events", {"Authorization": f"Bearer {TOKEN}"}
    target = HttpTarget("127.0.0.1", port, path, bodies=b"", headers=headers)
    target.requests = FreshBatches("127.0.0.1", port, path, headers, people, size=BATCH, people_per_batch=1)
    return target


async def produce_against_inline(broker, redis, args: argparse.Namespace) -> tuple[dict, dict]:
    """POST /v1/events, batches of 20 events of one person: Kafka mode (answers
    after the broker's ack; no worker runs) against inline mode (answers after
    Redis applied), alternating fixed-rate runs, then a saturation search each."""
    name = f"pr{uuid.uuid4().hex[:6]}"
    kafka_env = {**stream_env(broker, redis.url, name), "ATTIMO_SCHEDULER": "off"}
    await ensure_topics(Settings.from_env(kafka_env))
    inline_env = {key: value for key, value in kafka_env.items() if not key.startswith("ATTIMO_KAFKA")}
    inline_env["ATTIMO_KEY_PREFIX"] = f"{name}-inline"
    options = LoadOptions()
    with UvicornServer("api.app:create_app_from_env", SERVER_CORE, env=kafka_env, extra_args=["--factory"]) as kafka, \
            UvicornServer("api.app:create_app_from_env", SERVER_CORE, env=inline_env, extra_args=["--factory"]) as inline:
        targets = {"kafka": batches_target(kafka.port, name, args.people),
                   "inline": batches_target(inline.port, name, args.people)}
        series = await alternate(targets, args, args.rates[0], lambda mode, rate, r: (
            f"produce {mode:6} {rate * BATCH:6.0f} ev/s: p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms, "
            f"errors {r.error_count}"), options)
        searches = await saturate(targets, args, args.rates[-1], options)
    return series, searches


def plot_freshness(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for row in rows:
        for key, label in (("visible_ms", "visible via /v1/decide"), ("applied_ms", "applied in Redis")):
            values = np.sort(row[key][~np.isnan(row[key])])
            if len(values):
                tail = 1.0 - np.arange(len(values)) / len(values)
                axis.step(values, tail, where="post", label=f"{row['rate']:.0f} ev/s, {label}")
    axis.set_yscale("log")
    axis.set_xlabel("ms after the 202")
    axis.set_ylabel("fraction of batches later than x")
    axis.set_title("Kafka mode: freshness after the API's 202")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


async def measure(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="attimo-bench-stream-"))
    with TansuBroker(SERVER_CORE) as broker, RedisServer(SERVER_CORE) as redis:
        n_people, per_person = (1_000, 10) if args.quick else (10_000, 10)
        worker_rate = await worker_throughput(broker, redis, work, n_people, per_person)
        log(f"worker, demo catalog: {worker_rate:.0f} events/s")
        small = work / "small.yaml"
        small.write_text(FRESHNESS_CATALOG)
        small_rate = await worker_throughput(broker, redis, work, n_people, per_person, small)
        log(f"worker, one-rule catalog: {small_rate:.0f} events/s")
        bare_rate = await bare_throughput(broker, work, n_people * per_person)
        log(f"bare agent: {bare_rate:.0f} records/s")
        seconds = 2.5 if args.quick else 20.0
        fresh = await freshness(broker, redis, work, [1000.0, 5000.0], seconds)
        for row in fresh:
            log(f"freshness at {row['rate']:.0f} ev/s: visible p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms "
                f"({row['sampled']} sampled), applied p50 {row['applied_p50_ms']:.1f} p99 "
                f"{row['applied_p99_ms']:.1f} ms ({row['batches']} batches)")
        series, searches = await produce_against_inline(broker, redis, args)
    figures = {
        "worker_events_per_s": worker_rate,
        "bare_agent_events_per_s": bare_rate,
        "worker_over_bare": worker_rate / bare_rate,
        "worker_events_per_s_one_rule": small_rate,
        "worker_one_rule_over_bare": small_rate / bare_rate,
        "freshness_p50_ms_1k": fresh[0]["p50_ms"], "freshness_p99_ms_1k": fresh[0]["p99_ms"],
        "freshness_p50_ms_5k": fresh[1]["p50_ms"], "freshness_p99_ms_5k": fresh[1]["p99_ms"],
        "applied_p50_ms_1k": fresh[0]["applied_p50_ms"], "applied_p99_ms_1k": fresh[0]["applied_p99_ms"],
        "applied_p50_ms_5k": fresh[1]["applied_p50_ms"], "applied_p99_ms_5k": fresh[1]["applied_p99_ms"],
        "produce_kafka_events_per_s": searches["kafka"].max_rps * BATCH,
        "produce_inline_events_per_s": searches["inline"].max_rps * BATCH,
        "quick": args.quick,
    }
    figures = {key: float(value) if isinstance(value, np.floating) else value for key, value in figures.items()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot_freshness(fresh, RESULTS_DIR / "stream_freshness.png")
    write_report(
        "stream_produce", series, title="POST /v1/events, Kafka mode vs inline (rates in batches of 20/s)",
        figures=figures, searches=searches, ccdf_rate=args.rates[-1],
        notes=[
            "kafka: the API answers 202 after the broker acknowledged (Tansu, memory storage, acks=all); "
            "inline: after Redis applied. Batches of 20 page views of one person, new ids every request",
            f"API, Redis and the broker on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}; "
            "other people's tests ran on this machine at the same time: noisy",
        ])
    rows = "\n".join(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in figures.items())
    (RESULTS_DIR / "stream.md").write_text(
        f"# Stream benchmark (P4, P5)\n\n- command: `python -m benchmarks.bench_stream"
        f"{' --quick' if args.quick else ''}`\n- Tansu broker (memory), one worker, "
        f"{n_people} people x {per_person} events for P4 (worker_events_per_s: the demo catalog, "
        "examples/catalog.yaml, journeys included; *_one_rule: a catalog of one rule and one offer); "
        "batches of 20 events of one person for P5\n"
        "- freshness_*: 202 to the offer visible through /v1/decide (one batch in "
        f"{SAMPLE_EVERY}, polled every 3 ms); applied_*: 202 to the apply time in Redis (every batch)\n"
        "- produce_*: saturation of POST /v1/events (p99 under the limit, no errors) in each mode; "
        "details and plots in [stream_produce.md](stream_produce.md)\n"
        "- targets: P4 worker >= 1.0 x the bare agent; P5 freshness p99 <= 100 ms at 5k events/s\n"
        "- other people's tests ran on this 2-core machine at the same time: the figures are noisy\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n\n![freshness](stream_freshness.png)\n")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = arguments("python -m benchmarks.bench_stream", __doc__.splitlines()[0], "", "batches/s (default 50,150,250; "
                       "--quick 250)")
    args = parser.parse_args(argv)
    args.rates = args.rates or ("250" if args.quick else "50,150,250")
    args = settle(args)
    args.people = 10_000
    raise_on_sigterm()
    pin_current_process(LOADGEN_CORE)
    print_figures(uvloop.run(measure(args)))


if __name__ == "__main__":
    main()
