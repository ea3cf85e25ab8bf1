"""Decide benchmark (compass P1, P2, P6): /v1/decide for 100k seeded people and a
200-offer catalog over 5 placements, open loop at fixed rates, next to the floor
of BENCHMARKS.md (a bare Starlette route doing one HGETALL, benchmarks.floor_app)
under the same load in the same run; the saturation throughput of both, and of
the API as one and as two worker processes, unpinned (not with --quick); the
p99 with 5000 offers against 50, in interleaved pairs (and decide itself timed
in process with each catalog); and (not with --quick) the p99 with a Redis
Cluster (3 primaries on the same core) against the single server.

    python -m benchmarks.bench_decide [--quick] [--people N] [--rates 500,1000,2000,4000]

Redis and the server under test share core 0, the load generator busy-polls
core 1. The API runs as `attimo serve` would (uvicorn, uvloop, httptools, one
worker, no access log, metrics on). The scale-out's APIs (one process, then
two) are not pinned: they share both cores with Redis and the load generator,
which then sleeps between sends instead of spinning. Rates alternate between
the two servers so drift on a noisy machine hits both alike. Last line: JSON
figures."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
from redis import Redis

from benchmarks.floor_app import seed_floor
from benchmarks.harness import (
    LOADGEN_CORE,
    SERVER_CORE,
    STEAL_FLAG_SHARE,
    alternate,
    arguments,
    interleaved,
    log,
    run,
    saturate,
    settle,
    trial,
)
from benchmarks.http_client import HttpTarget
from benchmarks.report import write_report
from benchmarks.schedule import LoadOptions, warm_up
from benchmarks.workload import COPY_BATCH, PLACEMENTS, catalog_yaml, person_id, seed_people
from engine.catalog.compile import load_catalog_file
from engine.clock import now_ms
from engine.decisions.decide import decide
from engine.profile import decode_profile
from engine.store.keys import Keys
from engine.testing.processes import RedisCluster, RedisServer, UvicornServer

SITE_KEY, SITE_SECRET, SERVER_TOKEN = "bench-site-key", "bench-site-secret", "bench-server-token"
P1_RATE = 1000.0
SEED_PREFIX = "attimo"  # where seed_people writes; Settings' default
P6_OFFERS = (50, 5000)


def api_server(redis_url: str, catalog_path: Path, *, key_prefix: str = SEED_PREFIX, core: int | None = SERVER_CORE,
               workers: int = 1, extra_env: dict[str, str] | None = None) -> UvicornServer:
    env = {
        "ATTIMO_REDIS_URL": redis_url,
        "ATTIMO_KEY_PREFIX": key_prefix,
        "ATTIMO_CATALOG": str(catalog_path),
        "ATTIMO_SITE_KEY": SITE_KEY,
        "ATTIMO_SITE_SECRET": SITE_SECRET,
        "ATTIMO_SERVER_TOKEN": SERVER_TOKEN,
        "ATTIMO_SCHEDULER": "off",  # measure decide, not an idle scheduler's polls
        # One load generator on 127.0.0.1 plays thousands of visitors.
        "ATTIMO_RATE_LIMIT": "off",
        "ATTIMO_NEW_PROFILE_LIMIT": "off",
        **(extra_env or {}),
    }
    # A 5000-offer catalog takes seconds to compile before the port opens.
    return UvicornServer("api.app:create_app_from_env", core, env=env, extra_args=["--factory"],
                         startup_timeout_s=120, workers=workers)


def decide_body(i: int, n_people: int) -> dict:
    """What the snippet sends for request i: the visitor's id, three slots and the page."""
    return {
        "anonymous_id": person_id((i * 7919) % n_people),
        "placements": PLACEMENTS[:3] if i % 2 else PLACEMENTS[2:],
        "context": {"path": f"/c{i % 10}/page", "category": f"c{i % 10}", "device": "mobile"},
    }


def decide_target(port: int, n_people: int) -> HttpTarget:
    """What the snippet sends, with the site key."""
    return HttpTarget("127.0.0.1", port, "/v1/decide", bodies=lambda i: decide_body(i, n_people),
                      headers={"X-Attimo-Key": SITE_KEY})


def check_seeded(port: int) -> None:
    """The API must find the people the load asks for (as visitors, a:<id>):
    otherwise every decide would read an empty profile and measure nothing."""
    answer = httpx.get(f"http://127.0.0.1:{port}/v1/people/a:{person_id(0)}", timeout=10,
                       headers={"Authorization": f"Bearer {SERVER_TOKEN}"})
    if not answer.json().get("exists"):
        raise SystemExit(f"the API does not see the seeded people: {answer.text[:200]}")


def floor_target(port: int, n_people: int) -> HttpTarget:
    return HttpTarget("127.0.0.1", port, "/floor/decide",
                      bodies=lambda i: {"user_id": person_id((i * 7919) % n_people)})


def write_catalog(directory: Path, n_offers: int) -> Path:
    path = directory / f"catalog-{n_offers}.yaml"
    path.write_text(catalog_yaml(n_offers))
    return path


def copy_profiles(redis_url: str, n_people: int, prefix: str) -> None:
    """The seeded profiles again under `prefix`: a server with a key prefix of its
    own has its own published catalog too, so two servers with different
    catalogs can run side by side on one Redis (with one prefix, each would
    adopt the other's catalog at its next poll)."""
    source, target = Keys(SEED_PREFIX), Keys(prefix)
    with Redis.from_url(redis_url) as client:
        for start in range(0, n_people, COPY_BATCH):
            ids = [f"a:{person_id(i)}" for i in range(start, min(start + COPY_BATCH, n_people))]
            values = client.mget([source.profile(person) for person in ids])
            client.mset({target.profile(person): value for person, value in zip(ids, values, strict=True)
                         if value is not None})


def decide_in_process(catalogs: dict[int, Path], redis_url: str, n_people: int, calls: int,
                      rounds: int) -> dict[int, float]:
    """Microseconds per call of engine.decisions.decide.decide with each catalog,
    on the requests and stored profiles the load sends (decoded beforehand): the
    median over `rounds` rounds that alternate between the catalogs. What decide
    costs in Python, without HTTP, Redis or the open-loop tail."""
    compiled = {n: load_catalog_file(path)[0] for n, path in catalogs.items()}
    bodies = [decide_body(i, n_people) for i in range(calls)]
    keys = Keys(SEED_PREFIX)
    with Redis.from_url(redis_url) as client:
        raw = client.mget([keys.profile(f"a:{body['anonymous_id']}") for body in bodies])
    cases = [(f"a:{body['anonymous_id']}", body["placements"], body["context"], decode_profile(stored))
             for body, stored in zip(bodies, raw, strict=True)]
    now = now_ms()
    for n, catalog in compiled.items():  # what the load asks is answered: offers are chosen, not all nulls
        answers = [answer for person, placements, context, profile in cases
                   for answer in decide(catalog, profile, person, placements, context, now).placements.values()]
        log(f"decide in process, {n} offers: {sum(a is not None for a in answers) / len(answers):.0%} "
            f"of placements filled, {len({a['offer'] for a in answers if a})} distinct offers chosen")
    per_call: dict[int, list[float]] = {n: [] for n in compiled}
    for _ in range(rounds):
        for n, catalog in compiled.items():
            started = time.perf_counter()
            for person, placements, context, profile in cases:
                decide(catalog, profile, person, placements, context, now)
            per_call[n].append((time.perf_counter() - started) * 1e6 / len(cases))
    for n, times in per_call.items():
        log(f"decide in process, {n} offers: {statistics.median(times):.0f} µs a call "
            f"(rounds {min(times):.0f}–{max(times):.0f})")
    return {n: statistics.median(times) for n, times in per_call.items()}


async def p6_interleaved(redis_url: str, directory: Path, args: argparse.Namespace, options: LoadOptions) -> dict:
    """P6: an API with 50 offers and one with 5000 up at once on the server core,
    each under a key prefix of its own holding the same people, measured in
    interleaved pairs at P1's rate (50 plays the floor)."""
    servers = []
    for n_offers in P6_OFFERS:
        prefix = f"offers{n_offers}"
        copy_profiles(redis_url, args.people, prefix)
        servers.append(api_server(redis_url, write_catalog(directory, n_offers), key_prefix=prefix))
    few, many = servers
    with few, many:
        check_seeded(few.port)
        check_seeded(many.port)
        targets = [decide_target(server.port, args.people) for server in servers]
        for target in targets:
            await warm_up(target, P1_RATE, args.warmup, options)
        return await interleaved((targets[1], many.process.pid), (targets[0], few.process.pid), P1_RATE,
                                 3 if args.quick else 7, 1.5 if args.quick else 4.0, options)


async def scale_out(redis_url: str, catalog: Path, args: argparse.Namespace, directory: Path,
                    options: LoadOptions) -> dict:
    """The API as one uvicorn process, then as two worker processes behind one
    socket (`attimo serve --workers 2`, metrics shared through
    PROMETHEUS_MULTIPROC_DIR as the CLI sets it): the saturation rate of each.
    Neither is pinned, so both may use both cores, and the load generator
    sleeps between sends instead of spinning on core 1, which it would
    otherwise hold against the second process; the one process is measured
    the same way, so the ratio compares process counts only."""
    gentle = replace(options, busy_poll=False)
    searches = {}
    for workers in (1, 2):
        metrics_dir = directory / f"metrics-{workers}-workers"
        metrics_dir.mkdir()
        env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)} if workers > 1 else {}
        with api_server(redis_url, catalog, core=None, workers=workers, extra_env=env) as api:
            check_seeded(api.port)
            target = decide_target(api.port, args.people)
            await warm_up(target, P1_RATE, args.warmup, gentle)
            name = f"decide, {workers} worker{'s' if workers > 1 else ''} unpinned"
            searches.update(await saturate({name: target}, args, 2000, gentle))
    return searches


async def on_cluster_trials(redis_url: str, directory: Path, n_offers: int, n_people: int, duration: float,
                            warmup: float, options: LoadOptions, trials: int) -> dict:
    """Decide at P1's rate against a Redis Cluster, `trials` short runs on one
    server: the median p99 with its smallest and largest, and the median CPU
    per decide of the API process. One long run said little: three primaries
    and the API share one core, so at P1's rate a run either kept up or, after
    one stall, queued for the rest of it (p99 4 ms in one run, 250 ms in the
    next, the same code). The people seeded for the main run serve here too."""
    catalog = write_catalog(directory, n_offers)
    with api_server(redis_url, catalog) as server:
        target = decide_target(server.port, n_people)
        await warm_up(target, P1_RATE, warmup, options)
        runs = [await trial(target, server.process.pid, P1_RATE, duration, options) for _ in range(trials)]
    p99s = [run.result.p99_ms for run in runs]
    log(f"{n_offers} offers on a 3-primary cluster at {P1_RATE:.0f} req/s: p99 "
        + ", ".join(f"{p99:.2f}" for p99 in p99s) + " ms, µs/req " + ", ".join(f"{run.cpu_us:.0f}" for run in runs)
        + f", errors {sum(run.result.error_count for run in runs)}")
    return {"p99_ms": statistics.median(p99s), "p99_spread": [min(p99s), max(p99s)],
            "cpu_us": statistics.median(run.cpu_us for run in runs), "results": [run.result for run in runs]}


async def measure(args: argparse.Namespace) -> dict:
    options = LoadOptions()
    work = Path(tempfile.mkdtemp(prefix="attimo-bench-decide-"))
    catalog = write_catalog(work, args.offers)
    with RedisServer(SERVER_CORE) as redis:
        started = time.monotonic()
        await seed_people(redis.url, catalog.read_text(), args.people, now_ms())
        await seed_floor(redis.url, args.people)
        log(f"seeded {args.people} people in {time.monotonic() - started:.1f} s")
        with api_server(redis.url, catalog) as api, \
                UvicornServer("benchmarks.floor_app:app", SERVER_CORE, env={"ATTIMO_REDIS_URL": redis.url}) as floor:
            check_seeded(api.port)
            targets = {"decide": decide_target(api.port, args.people), "floor": floor_target(floor.port, args.people)}
            series = await alternate(targets, args, P1_RATE, lambda name, rate, r: (
                f"{name:6} {rate:6.0f} req/s: p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} p999 {r.p999_ms:.2f} ms, "
                f"{r.achieved_rps:.0f} rps, errors {r.error_count}"), options)
            # P1 and its CPU twin: interleaved pairs of short runs at the same rate.
            paired = await interleaved((targets["decide"], api.process.pid), (targets["floor"], floor.process.pid),
                                       P1_RATE, 3 if args.quick else 7, 1.5 if args.quick else 4.0, options)
            searches = await saturate(targets, args, 2000, options)
        # Two more servers and searches would take --quick past a minute and a half.
        scaled = await scale_out(redis.url, catalog, args, work, options) if not args.quick else {}
        in_process = decide_in_process({n: write_catalog(work, n) for n in P6_OFFERS}, redis.url, args.people,
                                       calls=1000 if args.quick else 4000, rounds=5)
        p6 = await p6_interleaved(redis.url, work, args, options)
    on_cluster = None
    if not args.quick:  # a cluster of its own would take --quick past a minute
        with RedisCluster(3) as cluster:
            for node in cluster.nodes:  # the cluster gets the core the single server had
                subprocess.run(["taskset", "-pc", str(SERVER_CORE), str(node.process.pid)], check=True,
                               capture_output=True)
            await seed_people(cluster.url, catalog.read_text(), args.people, now_ms())
            on_cluster = await on_cluster_trials(cluster.url, work, args.offers, args.people, 4.0, args.warmup,
                                                 options, trials=5)

    one, two = scaled.get("decide, 1 worker unpinned"), scaled.get("decide, 2 workers unpinned")
    figures = {
        # Medians over interleaved pairs (a single pair measured the hypervisor's steal).
        "decide_p99_ms": paired["subject_p99_ms"],
        "floor_p99_ms": paired["floor_p99_ms"],
        "p99_over_floor": paired["ratio"],
        "ratio_spread": paired["ratio_spread"],
        "decide_cpu_us": paired["subject_cpu_us"],
        "floor_cpu_us": paired["floor_cpu_us"],
        "cpu_over_floor": paired["subject_cpu_us"] / paired["floor_cpu_us"],
        "pairs": paired["pairs"],
        "pairs_flagged_for_steal": paired["pairs_flagged_for_steal"],
        "steal_share_max": paired["steal_share_max"],
        "decide_rps_max": searches["decide"].max_rps,
        "floor_rps_max": searches["floor"].max_rps,
        "rps_max_over_floor": searches["decide"].max_rps / max(searches["floor"].max_rps, 1.0),
        "decide_rps_max_1_worker_unpinned": one.max_rps if one else None,
        "decide_rps_max_2_workers": two.max_rps if two else None,
        "workers_2_over_1": two.max_rps / max(one.max_rps, 1.0) if one and two else None,
        # P6, like P1: medians over interleaved pairs, the ratio the median of the pairs' own.
        "p99_50_offers_ms": p6["floor_p99_ms"],
        "p99_5000_offers_ms": p6["subject_p99_ms"],
        "p99_5000_over_50": p6["ratio"],
        "p6_ratio_spread": p6["ratio_spread"],
        "cpu_us_50_offers": p6["floor_cpu_us"],
        "cpu_us_5000_offers": p6["subject_cpu_us"],
        "cpu_5000_over_50": p6["subject_cpu_us"] / p6["floor_cpu_us"],
        "p6_pairs_flagged_for_steal": p6["pairs_flagged_for_steal"],
        "decide_us_50_offers": in_process[50],
        "decide_us_5000_offers": in_process[5000],
        "decide_in_process_5000_over_50": in_process[5000] / in_process[50],
        "decide_p99_ms_cluster": on_cluster["p99_ms"] if on_cluster else None,
        "cluster_p99_spread": on_cluster["p99_spread"] if on_cluster else None,
        "cluster_over_single_p99": on_cluster["p99_ms"] / paired["subject_p99_ms"] if on_cluster else None,
        "decide_cpu_us_cluster": on_cluster["cpu_us"] if on_cluster else None,
        "cluster_cpu_over_single": on_cluster["cpu_us"] / paired["subject_cpu_us"] if on_cluster else None,
        "people": args.people,
        "offers": args.offers,
        "quick": args.quick,
    }
    series["decide, 50 offers"] = [floor for floor, _ in p6["results"]]
    series["decide, 5000 offers"] = [subject for _, subject in p6["results"]]
    if on_cluster:
        series["decide, Redis Cluster"] = on_cluster["results"]
    write_report(
        "decide", series, title="POST /v1/decide vs the HGETALL floor", figures=figures,
        searches={**searches, **scaled}, ccdf_rate=P1_RATE,
        notes=[
            f"{args.people} people (30 traits, two weeks of activity, written by the pipeline), "
            f"{args.offers} offers over {len(PLACEMENTS)} placements; each request asks for 3 placements",
            f"Redis and server on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}",
            f"saturation: highest rate with no errors, >= 95% of the offered rate served and p99 < "
            f"{args.p99_limit_ms:.0f} ms, {args.step_seconds} s steps",
            f"P1: {paired['pairs']} interleaved pairs of short runs at {P1_RATE:.0f} req/s (floor then decide, then the other way round, …); "
            f"p99 and CPU per request are medians over the pairs, the ratio the median of the pairs' own ratios; "
            f"a pair with a trial that lost over {STEAL_FLAG_SHARE:.0%} of its time to steal is left out "
            f"while 3 remain",
            f"P6: an API with 50 offers and one with 5000 up at once on core {SERVER_CORE} (each under a key "
            f"prefix of its own holding the same people, so neither adopts the other's catalog), "
            f"{p6['pairs']} interleaved pairs at {P1_RATE:.0f} req/s (50, 5000, …), medians as for P1; "
            f"decide also timed in process with each catalog (median of 5 alternating rounds)",
            "scale-out (not with --quick): the API as 1 uvicorn process, then as 2 worker processes behind one "
            "socket, neither pinned (both cores, shared with Redis and the load generator, which sleeps between "
            "sends for these two searches instead of spinning); a 2-core machine with Redis and the load "
            "generator on it cannot double the rate",
            "targets: P1 decide p99 <= 1.5 x floor at 1000 req/s, CPU per request <= 1.3 x; "
            "P2 saturation >= 0.75 x floor; P6 p99 with 5000 offers <= 1.5 x with 50 (and <= 1.5 x in process); "
            "the cluster run (not with --quick): 5 short runs at P1's rate against a 3-primary Redis Cluster on "
            f"core {SERVER_CORE}, people seeded alike; median p99 with its spread, median CPU per decide",
        ],
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = arguments("python -m benchmarks.bench_decide", __doc__.splitlines()[0], "500,1000,2000,4000")
    parser.add_argument("--offers", type=int, default=200)
    run(measure, settle(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
