"""Outcome benchmark (P11-P14): does Attimo's learning arbitration earn what an
oracle would, through the real API and Redis? A seeded shop (benchmarks/
shop_world.py) sends the same visitors to five policies: random, a marketer's
static priorities and Attimo's expected value with learning (both through
`attimo serve`, each on its own Redis), and two oracles that know the hidden
rates. Then, per seed, a checkout where one offer has a 10 % hold-out: its
uplift as GET /v1/kpis reports it against the truth. Then `attimo evaluate`
estimates the static policy from the learning run's log, and decide's p99
with learning against priority at a fixed open-loop rate.

    python -m benchmarks.bench_outcomes [--quick] [--seeds N]

Redis and the APIs run on core 0, the simulated shop and the load generator on
core 1. A figure the run could not give is null, and stderr and
benchmarks/results/outcomes.md say why. Last line: JSON figures."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from tempfile import mkdtemp

import aiohttp
import numpy as np
import orjson

from benchmarks.harness import SERVER_CORE, alternate, log, run
from benchmarks.http_client import HttpTarget
from benchmarks.outcome_figures import (
    UpliftSeed,
    ci_coverage,
    discount_cost_per_incremental_conversion,
    reward_per_decision,
    share,
    true_uplift,
    uplift_rel_error,
)
from benchmarks.outcome_report import write_outcomes_report
from benchmarks.results import LoadResult
from benchmarks.schedule import LoadOptions
from benchmarks.shop_traffic import Drive, Population, ShopApi, drive, sample_staleness
from benchmarks.shop_world import (
    ARBITRATED,
    DEVICES,
    HOLDOUT_OFFER,
    OFFERS,
    Visits,
    World,
    browsing_visits,
    catalog_yaml,
    checkout_visits,
    learning_block,
)
from engine.testing.processes import REPO_ROOT, SITE_KEY, ApiServer, RedisServer

MAX_ERROR_SHARE = 0.01  # more failed decides than this and the figures would describe the errors


class Nulls(dict):
    """Figures a run could not give (no discount shown, no estimate), each with
    its reason (stderr and the report)."""

    def null(self, key: str, reason: str) -> None:
        log(f"{key}: null: {reason}")
        self[key] = reason


@dataclass
class MainRun:
    """What the side-by-side run leaves for the figures."""

    static: Drive
    learning: Drive
    staleness_ms: list[float]
    staleness_reason: str | None
    latency: dict[str, LoadResult]
    pair_ratios: list[float]  # learning's p99 over priority's, each interleaved pair, sorted
    ope: dict | None
    ope_reason: str | None
    catalog: Path  # what the learning API ran: the uplift seeds run it too


def api_server(redis_url: str, catalog: Path, log_dir: Path) -> ApiServer:
    """`attimo serve` on the servers' core; one simulated shop plays thousands of
    visitors from 127.0.0.1, so the public rate limits are off."""
    server = ApiServer(redis_url, log_dir, ATTIMO_CATALOG=str(catalog), ATTIMO_RATE_LIMIT="off",
                       ATTIMO_NEW_PROFILE_LIMIT="off")
    server.core = SERVER_CORE
    return server


def learning_api(stack: ExitStack, redis_url: str, work: Path, half_life_s: int) -> tuple[ApiServer, Path]:
    """The API with expected value and the learning section; returns it and its catalog."""
    catalog = work / "learning.yaml"
    catalog.write_text(catalog_yaml("expected_value", learning_block(half_life_s)))
    return stack.enter_context(api_server(redis_url, catalog, work)), catalog


def decide_target(port: int, people: Population) -> HttpTarget:
    """P14's load: a signed visitor asking for one of the two arbitrated placements."""
    def body(i: int) -> dict:
        person = (i * 7919) % len(people.ids)
        return {"user_id": people.ids[person], "user_sig": people.sigs[person],
                "placements": [ARBITRATED[i % 2]], "context": {"device": DEVICES[i % 3 % 2]}}
    return HttpTarget("127.0.0.1", port, "/v1/decide", bodies=body, headers={"X-Attimo-Key": SITE_KEY})


async def decide_latency(args: argparse.Namespace, targets: dict[str, HttpTarget]) -> tuple[dict, list[float]]:
    """Learning against priority at one fixed rate, in interleaved pairs: each
    side's run of median p99 stands for it, and the ratio is the median of the
    pairs' own ratios (one pair would measure the hypervisor's steal as much as
    the servers; a ratio of two medians mixes pairs). Returns both, and every
    pair's ratio."""
    rate = args.decide_rate
    plan = argparse.Namespace(rates=[rate] * args.latency_pairs, warmup=args.warmup, duration=args.latency_seconds)
    series = await alternate(targets, plan, rate, lambda name, r, result: (
        f"{name:8} {r:.0f} req/s: p50 {result.p50_ms:.2f} p99 {result.p99_ms:.2f} ms, errors {result.error_count}"),
        LoadOptions())
    ratios = sorted(learning.p99_ms / priority.p99_ms
                    for learning, priority in zip(series["learning"], series["priority"], strict=True))
    return ({name: sorted(runs, key=lambda result: result.p99_ms)[len(runs) // 2] for name, runs in series.items()},
            ratios)


def check_errors(name: str, result: Drive, n_visits: int) -> None:
    log(f"{name}: {n_visits} visits in {result.seconds:.1f} s, {result.errors} failed decides")
    if result.errors > MAX_ERROR_SHARE * n_visits:
        raise SystemExit(f"{name}: {result.errors} of {n_visits} decides failed")


def off_policy_estimate(redis_url: str, catalog: Path) -> tuple[dict | None, str | None]:
    """`attimo evaluate --json` of `catalog` over the decision log in `redis_url`:
    its answer, or why there is none."""
    # The shop's purchases come within a flush of their impression: a few
    # seconds of reward window, where a real site would keep the default days.
    done = subprocess.run([sys.executable, "-m", "engine.cli", "evaluate", "--catalog", str(catalog), "--json",
                           "--reward-window-s", "5"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                          env={**os.environ, "ATTIMO_REDIS_URL": redis_url})
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return None, f"attimo evaluate exited with {done.returncode}: {said[-1] if said else 'no output'}"
    try:
        answer = orjson.loads(done.stdout.strip().splitlines()[-1])
        float(answer["target"]["dr"]["value"])
    except (IndexError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None, f"attimo evaluate printed no target.dr.value: {done.stdout.strip()[-200:]!r}"
    return answer, None


async def main_run(args: argparse.Namespace, world: World, visits: Visits, work: Path) -> MainRun:
    """Static and learning side by side on the same visitors and the same
    clock (so both meet the drift at once), then P14's latency on the warm
    servers, then the off-policy estimate from the learning run's log."""
    # The run compresses weeks into minutes: a third of it, so the drift half
    # way is followed within the second half.
    half_life_s = max(5, round(len(visits) / args.rate / 3))
    (work / "static.yaml").write_text(catalog_yaml("priority"))
    (work / "static-evaluate.yaml").write_text(catalog_yaml("priority", learning_block(half_life_s)))
    people = {"static": Population.named("st", len(visits.plan)), "learning": Population.named("ev", len(visits.plan))}
    with ExitStack() as stack:
        redis = {name: stack.enter_context(RedisServer(SERVER_CORE)) for name in people}
        static_api = stack.enter_context(api_server(redis["static"].url, work / "static.yaml", work))
        learn_api, catalog = learning_api(stack, redis["learning"].url, work, half_life_s)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
            shops = {"static": ShopApi(static_api.base_url, session), "learning": ShopApi(learn_api.base_url, session)}
            await asyncio.gather(*(shops[name].identify(people[name], visits.plan) for name in shops))
            log(f"{len(visits.plan)} people a policy, {len(visits)} visits at {args.rate:.0f}/s, "
                f"half-life {half_life_s} s")
            stop, ages = asyncio.Event(), []
            sampler = asyncio.create_task(sample_staleness(shops["learning"], ages, stop))
            static, learning = await asyncio.gather(
                *(drive(shops[name], world, visits, people[name], args.rate) for name in ("static", "learning")))
            stop.set()
            staleness_reason = await sampler
        for name, result in (("static", static), ("learning", learning)):
            check_errors(name, result, len(visits))
        latency, pair_ratios = await decide_latency(args, {"learning": decide_target(learn_api.port, people["learning"]),
                                              "priority": decide_target(static_api.port, people["static"])})
        ope, ope_reason = off_policy_estimate(redis["learning"].url, work / "static-evaluate.yaml")
    return MainRun(static, learning, ages, staleness_reason, latency, pair_ratios, ope, ope_reason, catalog)


async def uplift_seed(args: argparse.Namespace, world: World, seed: int, catalog: Path,
                      work: Path) -> tuple[UpliftSeed, str | None]:
    """One seed's checkout on a fresh Redis and API: every visitor is exposed
    to the hold-out offer (it is the checkout's only one) or held out of it."""
    visits = checkout_visits(seed, args.checkout_people)
    truth = true_uplift(world, visits)
    offer = OFFERS[HOLDOUT_OFFER].id
    with RedisServer(SERVER_CORE) as redis, api_server(redis.url, catalog, work) as api:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            shop = ShopApi(api.base_url, session)
            people = Population.named(f"s{seed}", len(visits.plan))
            await shop.identify(people, visits.plan)
            check_errors(f"seed {seed}", await drive(shop, world, visits, people, args.checkout_rate), len(visits))
            status, answer = await shop.read(f"/v1/kpis?offers={offer}")
    uplift = ((answer or {}).get("offers") or {}).get(offer, {}).get("uplift") if status == 200 else None
    if not isinstance(uplift, dict) or not isinstance(uplift.get("uplift"), int | float):
        return UpliftSeed(seed, truth), (f"GET /v1/kpis answered {status} without offers.{offer}.uplift.uplift"
                                         if status == 200 else f"GET /v1/kpis answered {status}")
    ci95 = tuple(uplift["ci95"]) if isinstance(uplift.get("ci95"), list) and len(uplift["ci95"]) == 2 else None
    log(f"seed {seed}: uplift {uplift['uplift']:.4f} ci95 {ci95}, truth {truth:.4f}")
    return UpliftSeed(seed, truth, float(uplift["uplift"]), ci95, uplift.get("treated"), uplift.get("control")), None


def p12_figures(seeds: list[UpliftSeed], reasons: list[str], nulls: Nulls) -> dict:
    if any(s.estimate is None for s in seeds):
        nulls.null("uplift_rel_error", reasons[0])
        nulls.null("ci_coverage", reasons[0])
        return {"uplift_rel_error": None, "ci_coverage": None}
    coverage = ci_coverage(seeds)
    if coverage is None:
        nulls.null("ci_coverage", f"GET /v1/kpis gives offers.{OFFERS[HOLDOUT_OFFER].id}.uplift without a ci95")
    return {"uplift_rel_error": uplift_rel_error(seeds), "ci_coverage": coverage}


def learning_figures(world: World, visits: Visits, run: MainRun, policies: dict, nulls: Nulls) -> dict:
    """The figures that describe learning."""
    attimo = policies["Attimo"]
    figures = {
        "oracle_share": share(world, visits, attimo, policies["contextual oracle"]),
        "discount_cost_per_incremental_conversion": discount_cost_per_incremental_conversion(world, visits, attimo),
        "decide_p99_ms_learning": run.latency["learning"].p99_ms,
        "decide_p99_learning_over_priority": run.pair_ratios[len(run.pair_ratios) // 2],
        "ratio_spread": [round(run.pair_ratios[0], 3), round(run.pair_ratios[-1], 3)],
    }
    if figures["discount_cost_per_incremental_conversion"] is None:
        nulls.null("discount_cost_per_incremental_conversion", "Attimo showed no discount that added a purchase")
    return figures


def other_figures(world: World, visits: Visits, run: MainRun, policies: dict, nulls: Nulls) -> dict:
    oracle = policies["contextual oracle"]
    figures = {
        "persona_oracle_share": share(world, visits, policies["persona oracle"], oracle),
        "static_share": share(world, visits, policies["static priority"], oracle),
        "random_share": share(world, visits, policies["random"], oracle),
        "discount_cost_per_incremental_conversion_static":
            discount_cost_per_incremental_conversion(world, visits, policies["static priority"]),
        "model_staleness_p99_ms": float(np.percentile(run.staleness_ms, 99)) if run.staleness_ms else None,
        "decide_p99_ms_priority": run.latency["priority"].p99_ms,
        "ope_rel_error": None,
    }
    if run.ope is not None:
        truth = reward_per_decision(world, visits, policies["static priority"])
        figures["ope_rel_error"] = abs(float(run.ope["target"]["dr"]["value"]) - truth) / truth
    else:
        nulls.null("ope_rel_error", run.ope_reason or "no estimate")
    if not run.staleness_ms:
        nulls.null("model_staleness_p99_ms", run.staleness_reason or "no sample")
    if figures["discount_cost_per_incremental_conversion_static"] is None:
        nulls.null("discount_cost_per_incremental_conversion_static", "the static policy showed no discount that added a purchase")
    return figures


async def measure(args: argparse.Namespace) -> dict:
    world = World(args.world_seed)
    visits = browsing_visits(0, args.people, args.mean_visits)
    work = Path(mkdtemp(prefix="attimo-bench-outcomes-"))
    shop = await main_run(args, world, visits, work)
    seeds, reasons = [], []
    for seed in range(1, args.seeds + 1):
        found, reason = await uplift_seed(args, world, seed, shop.catalog, work)
        seeds.append(found)
        reasons += [reason] if reason else []
    policies = {
        "contextual oracle": world.context_oracle(visits),
        "persona oracle": world.persona_oracle(visits),
        "Attimo": shop.learning.shown,
        "static priority": shop.static.shown,
        "random": world.random_policy(visits, 1),
    }
    nulls = Nulls()
    figures = {
        **learning_figures(world, visits, shop, policies, nulls),
        **other_figures(world, visits, shop, policies, nulls),
        **p12_figures(seeds, reasons, nulls),
        "people": args.people,
        "visits": len(visits),
        "checkout_people": args.checkout_people,
        "seeds": args.seeds,
        "quick": args.quick,
    }
    notes = [
        f"{args.people} people a policy, {len(visits)} visits at {args.rate:.0f}/s; drift half way; "
        f"{args.seeds} hold-out seeds of {args.checkout_people} checkout visitors",
        f"decide p99 at {args.decide_rate:.0f} req/s, median of {args.latency_pairs} interleaved pairs of "
        f"{args.latency_seconds:.0f} s: learning {shop.latency['learning'].p99_ms:.2f} ms, "
        f"priority {shop.latency['priority'].p99_ms:.2f} ms; the ratio is the median of the pairs' ratios "
        f"({', '.join(f'{r:.2f}' for r in shop.pair_ratios)})",
        f"Redis and the APIs on core {SERVER_CORE}; the shop and the load generator on the other",
    ]
    write_outcomes_report(figures, world, visits, policies, seeds, nulls, notes)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_outcomes", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 3 minutes: fewer people and seeds")
    parser.add_argument("--seeds", type=int, help="hold-out seeds (default 3 quick, 20 full)")
    parser.add_argument("--people", type=int, help="people a policy (default 10k quick, 100k full)")
    parser.add_argument("--mean-visits", type=float, default=2.5, help="visits a person, on average")
    parser.add_argument("--rate", type=float, help="visits a second, each API policy")
    parser.add_argument("--checkout-people", type=int, help="checkout visitors a hold-out seed")
    parser.add_argument("--world-seed", type=int, default=19, help="the hidden rates")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or (3 if quick else 20)
    args.people = args.people or (10_000 if quick else 100_000)
    args.rate = args.rate or (400.0 if quick else 500.0)
    args.checkout_people = args.checkout_people or (6_000 if quick else 50_000)
    args.checkout_rate = 2 * args.rate  # one API alone on its core
    args.decide_rate = 400.0 if quick else 1000.0
    args.latency_pairs = 3 if quick else 5
    args.latency_seconds = 2.0 if quick else 10.0
    args.warmup = 2.0 if quick else 8.0
    run(measure, args)


if __name__ == "__main__":
    main()
