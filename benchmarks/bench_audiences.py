"""Audiences: how fast a tracked segment's changes reach a webhook destination,
how fast a large segment exports, what tracking costs the pipeline, and how fast
a CRM file imports.

- `segment_change_p99_ms`: membership change (its record in Redis) → the
  destination's webhook receiving it, at a fixed 1k changes/s open loop, with
  `attimo scheduler` delivering on its own core. Also from the intended time of
  the batch that caused it (`segment_change_from_intent_p99_ms`: a stall of the
  load driver is charged too).
- `export_rows_per_s`: `GET /v1/segments/{id}/export` of a segment of 1M members
  (200k with --quick) through `attimo serve` on its own core, against a floor
  measured in the same run: the bare walk of the same member sets (SSCAN only,
  no identifiers read, nothing encoded). `export_rss_growth_mb`: the server's
  peak resident memory over what it held before (memory flat: a few MB).
- `pipeline_events_per_s_tracking` over `pipeline_events_per_s_untracked`:
  the same events through the pipeline with the segment tracked and not,
  interleaved pairs; the median of the per-pair ratios and their spread.
- `import_rows_per_s`: `attimo import` of a CSV of 1M rows (100k with --quick),
  7 columns, on its own core, against a floor: the same traits already parsed
  into events, through the pipeline in-process (`import_floor_rows_per_s`).

    python -m benchmarks.bench_audiences [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from redis.asyncio import Redis

from benchmarks.harness import LOADGEN_CORE, SERVER_CORE
from benchmarks.report import RESULTS_DIR, command_line, print_figures
from engine.audiences.identifiers import sha256_hex
from engine.audiences.membership import shard_of
from engine.catalog.compile import compile_catalog
from engine.catalog.loader import parse_catalog_text
from engine.catalog.model import CatalogHolder
from engine.catalog.publish import CatalogStore
from engine.events import CONSENT, Event
from engine.ingest.pipeline import Pipeline
from engine.store.keys import Keys
from engine.store.profiles import ProfileStore
from engine.testing.processes import (
    TOKEN,
    ApiServer,
    RedisServer,
    pin_current_process,
    start_pinned,
    stop_process,
    wait_until,
)
from engine.testing.sinks import WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
KEYS = Keys()
REDIS_CORE, DRIVER_CORE = LOADGEN_CORE, LOADGEN_CORE  # Redis, the load and the receiver share a core
SUBJECT_CORE = SERVER_CORE  # the scheduler, the API or the pipeline under test has the other
CHANGES_PER_S = 1000
BATCH_EVERY_MS = 10

CHANGE_CATALOG = """
segments:
  - id: vip
    track: true
    when: {trait: vip, equals: true}
    destinations:
      - id: bench_hook
        webhook: {channel: audiences, batch: 1000, include_person: true}
"""

TRACKING_CATALOG = """
segments:
  - id: crm_fan
    track: TRACK
    when: {event: page_view, where: {category: crm}, within: 7d, count: {at_least: 3}}
  - id: registered
    track: TRACK
    when: {trait: registered, equals: true}
"""


def pipeline_for(redis, catalog_yaml: str) -> Pipeline:
    catalog = compile_catalog(parse_catalog_text(catalog_yaml))
    store = ProfileStore(redis, KEYS, dedupe_ttl_s=86_400, profile_ttl_s=400 * 86_400)
    return Pipeline(store, CatalogHolder(catalog, catalog_yaml))


# -- segment change → webhook -------------------------------------------------------


async def drive_changes(redis_url: str, people: int, seconds: float) -> dict[tuple[str, int], float]:
    """Open loop: every 10 ms, 10 people flip `vip` (in, out, in …). Returns the
    intended time of each (person, n-th change)."""
    redis = Redis.from_url(redis_url)
    pipeline = pipeline_for(redis, CHANGE_CATALOG)
    per_batch = CHANGES_PER_S * BATCH_EVERY_MS // 1000
    intended: dict[tuple[str, int], float] = {}
    batches = int(seconds * 1000 / BATCH_EVERY_MS)
    start = time.time() * 1000 + 200
    for i in range(batches):
        due = start + i * BATCH_EVERY_MS
        wait = (due - time.time() * 1000) / 1000
        if wait > 0:
            await asyncio.sleep(wait)
        events = []
        for j in range(per_batch):
            k = i * per_batch + j
            person, n = f"u:p{k % people}", k // people
            intended[(person, n)] = due
            events.append(Event(f"flip-{k}", "identify", person, int(due), {}, {"vip": n % 2 == 0}, trusted=True))
        await pipeline.apply(events, int(time.time() * 1000))
    await redis.aclose()
    return intended


async def seed_consent(redis_url: str, people: int) -> None:
    """Publish the catalog (what `attimo scheduler` follows) and give everyone
    an email and advertising consent."""
    redis = Redis.from_url(redis_url)
    pipeline = pipeline_for(redis, CHANGE_CATALOG)
    await CatalogStore(redis, KEYS, CatalogHolder(pipeline.catalogs.current)).publish(CHANGE_CATALOG)
    for start in range(0, people, 500):
        events = []
        for i in range(start, min(people, start + 500)):
            person = f"u:p{i}"
            events.append(Event(f"seed-{i}", "identify", person, 0, {}, {"email": f"p{i}@example.com"}, trusted=True))
            events.append(Event(f"ads-{i}", CONSENT, person, 0, {"channel": "ads", "purpose": "advertising",
                                                                 "granted": True}, trusted=True))
        await pipeline.apply(events, int(time.time() * 1000))
    await redis.aclose()


def segment_changes(redis_server: RedisServer, quick: bool) -> dict:
    people, seconds = (2_000, 15.0) if quick else (10_000, 60.0)
    receiver = WebhookReceiver().start()
    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "catalog.yaml"
        catalog.write_text(CHANGE_CATALOG)
        asyncio.run(seed_consent(redis_server.url, people))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTIMO_REDIS_URL": redis_server.url,
               "ATTIMO_CATALOG": str(catalog), "ATTIMO_WEBHOOK_URLS": f"audiences={receiver.url}/hook",
               "ATTIMO_WEBHOOK_SECRET": "bench"}
        scheduler = start_pinned([sys.executable, "-m", "engine.cli", "scheduler"], SUBJECT_CORE, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)
            receiver.received.clear()
            intended = asyncio.run(drive_changes(redis_server.url, people, seconds))
            wait_until(lambda: _delivered(receiver) >= len(intended), 30, 0.1, "every change delivered")
        finally:
            stop_process(scheduler)
    receiver.stop()
    seen: dict[str, int] = {}
    from_change, from_intent = [], []
    for got in receiver.received:
        for change in orjson.loads(got.body)["changes"]:
            n = seen.get(change["person"], 0)
            seen[change["person"]] = n + 1
            from_change.append(got.at_ms - change["at"])
            from_intent.append(got.at_ms - intended[(change["person"], n)])
    changes_ms, intent_ms = np.array(from_change), np.array(from_intent)
    return {
        "segment_change_p50_ms": float(np.percentile(changes_ms, 50)),
        "segment_change_p99_ms": float(np.percentile(changes_ms, 99)),
        "segment_change_p999_ms": float(np.percentile(changes_ms, 99.9)),
        "segment_change_from_intent_p99_ms": float(np.percentile(intent_ms, 99)),
        "segment_changes": len(changes_ms), "segment_changes_lost": len(intended) - len(changes_ms),
        "segment_changes_per_s": CHANGES_PER_S,
        "_change_latencies": changes_ms,
    }


def _delivered(receiver: WebhookReceiver) -> int:
    return sum(len(orjson.loads(got.body)["changes"]) for got in list(receiver.received))


# -- export ---------------------------------------------------------------------------


async def seed_members(redis_url: str, segment: str, members: int) -> None:
    """Members and their cards written directly: seeding is not what is measured."""
    redis = Redis.from_url(redis_url)
    chunk = 10_000
    for start in range(0, members, chunk):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(members, start + chunk)):
            person = f"u:m{i}"
            pipe.sadd(KEYS.segment_members(segment, shard_of(person)), person)
            phone = sha256_hex(f"+4420794{i:06d}") if i % 3 == 0 else ""
            pipe.set(KEYS.audience_card(person), f"{sha256_hex(f'm{i}@example.com')}|{phone}|1")
        await pipe.execute()
    await redis.aclose()


async def bare_walk(redis_url: str, segment: str) -> tuple[int, float]:
    """The floor: every member read with SSCAN, nothing else."""
    redis = Redis.from_url(redis_url)
    started, rows = time.perf_counter(), 0
    for shard in range(16):
        cursor = 0
        while True:
            cursor, found = await redis.sscan(KEYS.segment_members(segment, shard), cursor, count=2000)
            rows += len(found)
            if cursor == 0:
                break
    await redis.aclose()
    return rows, time.perf_counter() - started


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def export(redis_server: RedisServer, quick: bool, pairs: int) -> dict:
    members = 200_000 if quick else 1_000_000
    asyncio.run(seed_members(redis_server.url, "vip", members))
    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "catalog.yaml"
        catalog.write_text(CHANGE_CATALOG)
        api = ApiServer(redis_server.url, Path(folder), ATTIMO_CATALOG=str(catalog)).start()
        os.sched_setaffinity(api.process.pid, {SUBJECT_CORE})
        try:
            before_kb = _rss_kb(api.process.pid, "VmRSS")
            subject, floor, rows = [], [], 0
            for _ in range(pairs):  # floor, subject, floor, subject …
                counted, took = asyncio.run(bare_walk(redis_server.url, "vip"))
                floor.append(counted / took)
                started = time.perf_counter()
                rows = 0
                with httpx.stream("GET", f"{api.base_url}/v1/segments/vip/export?format=csv", timeout=600,
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
                    answer.raise_for_status()
                    for _line in answer.iter_lines():
                        rows += 1
                subject.append((rows - 1) / (time.perf_counter() - started))
            peak_kb = _rss_kb(api.process.pid, "VmHWM")
        finally:
            api.stop()
    ratios = [s / f for s, f in zip(subject, floor, strict=True)]
    return {
        "export_members": members, "export_rows": rows - 1,
        "export_rows_per_s": statistics.median(subject),
        "export_floor_rows_per_s": statistics.median(floor),
        "export_ratio": statistics.median(ratios),
        "export_ratio_spread": [min(ratios), max(ratios)],
        "export_rss_growth_mb": (peak_kb - before_kb) / 1024,
    }


# -- tracking cost -------------------------------------------------------------------------


async def pipeline_rate(redis_url: str, tracked: bool, people: int, batches: int, seed: int) -> float:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    pipeline = pipeline_for(redis, TRACKING_CATALOG.replace("TRACK", "true" if tracked else "false"))
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    work = []
    for b in range(batches):
        events = []
        for i in range(500):
            person = f"u:t{rng.randrange(people)}"
            category = "crm" if rng.random() < 0.5 else "analytics"
            traits = {"registered": True} if rng.random() < 0.05 else None
            events.append(Event(f"{seed}-{b}-{i}", "page_view", person, now, {"category": category}, traits))
        work.append(events)
    started = time.perf_counter()
    for events in work:
        await pipeline.apply(events, now)
    took = time.perf_counter() - started
    await redis.aclose()
    return batches * 500 / took


def tracking_cost(redis_server: RedisServer, quick: bool, pairs: int) -> dict:
    people, batches = (5_000, 40) if quick else (10_000, 200)
    pin_current_process(SUBJECT_CORE)  # the pipeline is the subject here: Redis keeps the other core
    untracked, tracked = [], []
    for pair in range(pairs):  # untracked (floor), tracked, untracked, tracked …
        untracked.append(asyncio.run(pipeline_rate(redis_server.url, False, people, batches, pair)))
        tracked.append(asyncio.run(pipeline_rate(redis_server.url, True, people, batches, pair)))
    ratios = [t / u for t, u in zip(tracked, untracked, strict=True)]
    return {
        "pipeline_events_per_s_tracking": statistics.median(tracked),
        "pipeline_events_per_s_untracked": statistics.median(untracked),
        "tracking_ratio": statistics.median(ratios),
        "tracking_ratio_spread": [min(ratios), max(ratios)],
    }


# -- import ----------------------------------------------------------------------------------


def write_csv(path: Path, rows: int) -> None:
    plans, cities = ("free", "pro", "team"), ("Rome", "Lyon", "Leeds", "Porto", "Graz")
    with path.open("w") as out:
        out.write("user_id,email,phone,plan,city,seats,registered\n")
        for i in range(rows):
            out.write(f"c{i},C{i}@Example.com,+44 20 7946 {i % 10000:04d},{plans[i % 3]},{cities[i % 5]},"
                      f"{i % 50},true\n")


async def floor_import(redis_url: str, rows: int) -> float:
    """The floor: the same traits, already parsed into events, through the pipeline."""
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    pipeline = pipeline_for(redis, TRACKING_CATALOG.replace("TRACK", "true"))
    plans, cities = ("free", "pro", "team"), ("Rome", "Lyon", "Leeds", "Porto", "Graz")
    started = time.perf_counter()
    for start in range(0, rows, 500):
        now = int(time.time() * 1000)
        events = [Event(f"floor-{i}", "journey_trait", f"u:c{i}", now, {}, {
            "email": f"C{i}@Example.com", "phone": f"+44 20 7946 {i % 10000:04d}", "plan": plans[i % 3],
            "city": cities[i % 5], "seats": i % 50, "registered": True}, trusted=True)
            for i in range(start, min(rows, start + 500))]
        await pipeline.apply(events, now)
    took = time.perf_counter() - started
    await redis.flushdb()
    await redis.aclose()
    return rows / took


def import_rows(redis_server: RedisServer, quick: bool) -> dict:
    rows = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as folder:
        csv, catalog = Path(folder) / "people.csv", Path(folder) / "catalog.yaml"
        write_csv(csv, rows)
        catalog.write_text(TRACKING_CATALOG.replace("TRACK", "true"))
        pin_current_process(SUBJECT_CORE)
        floor = asyncio.run(floor_import(redis_server.url, rows))
        pin_current_process(DRIVER_CORE)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        done = subprocess.run(["taskset", "-c", str(SUBJECT_CORE), sys.executable, "-m", "engine.cli", "import",
                               str(csv), "--redis-url", redis_server.url, "--catalog", str(catalog)],
                              env=env, capture_output=True, text=True, timeout=1800)
        took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"attimo import failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    people = redis_server.client().dbsize()
    return {"import_rows": rows, "import_rows_per_s": rows / took, "import_floor_rows_per_s": floor,
            "import_over_floor": rows / took / floor, "import_keys_after": people}


# -- report ------------------------------------------------------------------------------------


def write_results(figures: dict, latencies: np.ndarray, quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "bench_audiences" + ("_quick" if quick else "")
    fig, ax = plt.subplots(figsize=(7, 4))
    ordered = np.sort(latencies)
    tail = 1 - np.arange(len(ordered)) / len(ordered)
    ax.step(ordered, tail, where="post")
    ax.set_yscale("log")
    ax.set_xlabel("membership change → webhook received (ms)")
    ax.set_ylabel("share of changes slower")
    ax.axvline(1000, color="red", linestyle="--", label="goal: p99 ≤ 1 s")
    ax.set_title(f"Segment changes at {CHANGES_PER_S}/s to a webhook destination")
    ax.legend()
    fig.tight_layout()
    plot = RESULTS_DIR / f"{name}_changes.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    rows = [
        ("segment change → webhook, p50 / p99 / p99.9", f"{figures['segment_change_p50_ms']:.0f} / "
         f"{figures['segment_change_p99_ms']:.0f} / {figures['segment_change_p999_ms']:.0f} ms", "p99 ≤ 1000 ms"),
        ("… from the intended time of its batch, p99", f"{figures['segment_change_from_intent_p99_ms']:.0f} ms", ""),
        ("changes lost", str(figures["segment_changes_lost"]), "0"),
        ("export rows/s (floor: bare SSCAN walk)", f"{figures['export_rows_per_s']:,.0f} "
         f"({figures['export_floor_rows_per_s']:,.0f})", "≥ 100,000"),
        ("export server memory growth", f"{figures['export_rss_growth_mb']:.1f} MB", "flat"),
        ("pipeline events/s tracked / untracked", f"{figures['pipeline_events_per_s_tracking']:,.0f} / "
         f"{figures['pipeline_events_per_s_untracked']:,.0f} = {figures['tracking_ratio']:.2f} "
         f"(pairs {figures['tracking_ratio_spread'][0]:.2f}–{figures['tracking_ratio_spread'][1]:.2f})", "≥ 0.8"),
    ]
    if "import_rows_per_s" in figures:
        rows.append(("import rows/s (`attimo import`, CSV; floor: the same traits as events through the pipeline)",
                     f"{figures['import_rows_per_s']:,.0f} ({figures['import_floor_rows_per_s']:,.0f})", "≥ 20,000"))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(f"""# Audiences

- command: `{command_line()}`
- machine: {os.cpu_count()} cores; Redis and the load on core {REDIS_CORE}, the subject on core {SUBJECT_CORE}

| figure | this run | goal |
|---|---|---|
{table}

![changes]({plot.name})

```json
{orjson.dumps({k: v for k, v in figures.items() if not k.startswith('_')}).decode()}
```
""")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="under 90 s, the same figures from fewer samples")
    args = parser.parse_args()
    pairs = 3 if args.quick else 5
    pin_current_process(DRIVER_CORE)
    figures: dict = {}
    with RedisServer(REDIS_CORE) as redis_server:
        figures.update(segment_changes(redis_server, args.quick))
        redis_server.client().flushdb()
        figures.update(export(redis_server, args.quick, pairs))
        redis_server.client().flushdb()
        figures.update(tracking_cost(redis_server, args.quick, pairs))
        redis_server.client().flushdb()
        figures.update(import_rows(redis_server, args.quick))
    latencies = figures.pop("_change_latencies")
    write_results(figures, latencies, args.quick)
    print_figures(figures)


if __name__ == "__main__":
    main()
