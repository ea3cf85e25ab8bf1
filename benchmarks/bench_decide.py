"""Decide benchmark (compass P1, P2, P6): /v1/decide for 100k seeded people and a
200-offer catalog over 5 placements, open loop at fixed rates, next to the floor
of BENCHMARKS.md (a bare Starlette route doing one HGETALL, benchmarks.floor_app)
under the same load in the same run; the saturation throughput of both; and the
p99 with 50 offers against 5000; and (not with --quick) the p99 with a Redis
Cluster (3 primaries on the same core) against the single server.

    python -m benchmarks.bench_decide [--quick] [--people N] [--rates 500,1000,2000,4000]

Redis and the server under test share core 0, the load generator busy-polls
core 1. The API runs as `attimo serve` would (uvicorn, uvloop, httptools, one
worker, no access log, metrics on). Rates alternate between the two servers so
drift on a noisy machine hits both alike. Last line: JSON figures."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

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
)
from benchmarks.http_client import HttpTarget
from benchmarks.report import write_report
from benchmarks.schedule import LoadOptions, run_open_loop, warm_up
from benchmarks.workload import PLACEMENTS, catalog_yaml, person_id, seed_people
from engine.clock import now_ms
from engine.testing.processes import RedisCluster, RedisServer, UvicornServer

SITE_KEY, SITE_SECRET, SERVER_TOKEN = "bench-site-key", "bench-site-secret", "bench-server-token"
P1_RATE = 1000.0


def api_server(redis_url: str, catalog_path: Path) -> UvicornServer:
    env = {
        "ATTIMO_REDIS_URL": redis_url,
        "ATTIMO_CATALOG": str(catalog_path),
        "ATTIMO_SITE_KEY": SITE_KEY,
        "ATTIMO_SITE_SECRET": SITE_SECRET,
        "ATTIMO_SERVER_TOKEN": SERVER_TOKEN,
        "ATTIMO_SCHEDULER": "off",  # measure decide, not an idle scheduler's polls
        # One load generator on 127.0.0.1 plays thousands of visitors.
        "ATTIMO_RATE_LIMIT": "off",
        "ATTIMO_NEW_PROFILE_LIMIT": "off",
    }
    # A 5000-offer catalog takes seconds to compile before the port opens.
    return UvicornServer("api.app:create_app_from_env", SERVER_CORE, env=env, extra_args=["--factory"],
                         startup_timeout_s=120)


def decide_target(port: int, n_people: int) -> HttpTarget:
    """What the snippet sends: a site key, the visitor's id, three slots and the page."""
    def body(i: int) -> dict:
        return {
            "anonymous_id": person_id((i * 7919) % n_people),
            "placements": PLACEMENTS[:3] if i % 2 else PLACEMENTS[2:],
            "context": {"path": f"/c{i % 10}/page", "category": f"c{i % 10}", "device": "mobile"},
        }
    return HttpTarget("127.0.0.1", port, "/v1/decide", bodies=body, headers={"X-Attimo-Key": SITE_KEY})


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


async def p99_with_offers(redis_url: str, directory: Path, n_offers: int, n_people: int,
                          duration: float, warmup: float, options: LoadOptions, label: str = ""):
    """Decide at P1's rate with an `n_offers` catalog on a fresh server. The people
    seeded for the main run serve here too: catalogs of every size share the same
    rules, so the stored windowed features are the ones each of them reads."""
    catalog = write_catalog(directory, n_offers)
    with api_server(redis_url, catalog) as server:
        target = decide_target(server.port, n_people)
        await warm_up(target, P1_RATE, warmup, options)
        result = await run_open_loop(target, P1_RATE, duration, options)
    log(f"{n_offers} offers{label} at {P1_RATE:.0f} req/s: p99 {result.p99_ms:.2f} ms, errors {result.error_count}")
    return result


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
        offers_50 = await p99_with_offers(redis.url, work, 50, args.people, args.duration, args.warmup, options)
        offers_5000 = await p99_with_offers(redis.url, work, 5000, args.people, args.duration, args.warmup, options)
    on_cluster = None
    if not args.quick:  # a cluster of its own would take --quick past a minute
        with RedisCluster(3) as cluster:
            for node in cluster.nodes:  # the cluster gets the core the single server had
                subprocess.run(["taskset", "-pc", str(SERVER_CORE), str(node.process.pid)], check=True,
                               capture_output=True)
            await seed_people(cluster.url, catalog.read_text(), args.people, now_ms())
            on_cluster = await p99_with_offers(cluster.url, work, args.offers, args.people, args.duration,
                                               args.warmup, options, " on a 3-primary cluster")

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
        "p99_50_offers_ms": offers_50.p99_ms,
        "p99_5000_offers_ms": offers_5000.p99_ms,
        "p99_5000_over_50": offers_5000.p99_ms / offers_50.p99_ms,
        "decide_p99_ms_cluster": on_cluster.p99_ms if on_cluster else None,
        "cluster_over_single_p99": on_cluster.p99_ms / paired["subject_p99_ms"] if on_cluster else None,
        "people": args.people,
        "offers": args.offers,
        "quick": args.quick,
    }
    series["decide, 50 offers"] = [offers_50]
    series["decide, 5000 offers"] = [offers_5000]
    if on_cluster:
        series["decide, Redis Cluster"] = [on_cluster]
    write_report(
        "decide", series, title="POST /v1/decide vs the HGETALL floor", figures=figures,
        searches=searches, ccdf_rate=P1_RATE,
        notes=[
            f"{args.people} people (30 traits, two weeks of activity, written by the pipeline), "
            f"{args.offers} offers over {len(PLACEMENTS)} placements; each request asks for 3 placements",
            f"Redis and server on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}",
            f"saturation: highest rate with no errors, >= 95% of the offered rate served and p99 < "
            f"{args.p99_limit_ms:.0f} ms, {args.step_seconds} s steps",
            f"P1: {paired['pairs']} interleaved pairs of short runs at {P1_RATE:.0f} req/s (floor, decide, …); "
            f"p99 and CPU per request are medians over the pairs, the ratio the median of the pairs' own ratios; "
            f"a pair with a trial that lost over {STEAL_FLAG_SHARE:.0%} of its time to steal is left out "
            f"while 3 remain",
            "targets: P1 decide p99 <= 1.5 x floor at 1000 req/s, CPU per request <= 1.3 x; P2 saturation >= 0.5 x floor; "
            "P6 p99 with 5000 offers <= 2 x with 50; the cluster run: same load on a fresh server, "
            "people seeded alike, against a 3-primary Redis Cluster",
        ],
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = arguments("python -m benchmarks.bench_decide", __doc__.splitlines()[0], "500,1000,2000,4000")
    parser.add_argument("--offers", type=int, default=200)
    run(measure, settle(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
