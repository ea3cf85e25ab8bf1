"""What every HTTP benchmark of Attimo does around its own subject: the common
command-line arguments, fixed-rate runs that alternate between the server under
test and its floor (so drift on a noisy machine hits both alike), the
saturation search of each, and the pinned run that ends with the figures line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

import uvloop

from benchmarks.http_client import HttpTarget
from benchmarks.report import print_figures
from benchmarks.results import LoadResult
from benchmarks.saturation import SaturationResult, find_max_rps
from benchmarks.schedule import LoadOptions, run_open_loop, warm_up
from engine.testing.processes import pin_current_process, raise_on_sigterm

SERVER_CORE, LOADGEN_CORE = 0, 1


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def arguments(prog: str, description: str, rates: str, rates_help: str = "req/s") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="under 60 s: fewer people, shorter runs")
    parser.add_argument("--people", type=int)
    parser.add_argument("--rates", default=rates, help=rates_help)
    parser.add_argument("--duration", type=float, help="seconds per fixed-rate run")
    parser.add_argument("--p99-limit-ms", type=float, default=25.0, help="saturation: highest p99 that passes")
    return parser


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in what --quick decides."""
    args.rates = [float(rate) for rate in args.rates.split(",")]
    args.people = args.people or (10_000 if args.quick else 100_000)
    args.duration = args.duration or (1.5 if args.quick else 10.0)
    args.warmup = 2.0 if args.quick else 8.0  # a fresh server opens its pool and settles for ~8 s
    args.step_seconds = 1.0 if args.quick else 2.5
    args.refine = 1 if args.quick else 2
    return args


async def alternate(targets: Mapping[str, HttpTarget], args: argparse.Namespace, warm_rate: float,
                    describe: Callable[[str, float, LoadResult], str],
                    options: LoadOptions) -> dict[str, list[LoadResult]]:
    """Warm every target, then each rate on each target in turn."""
    for target in targets.values():
        await warm_up(target, warm_rate, args.warmup, options)
    series: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for rate in args.rates:
        for name, target in targets.items():
            result = await run_open_loop(target, rate, args.duration, options)
            series[name].append(result)
            log(describe(name, rate, result))
    return series


async def saturate(targets: Mapping[str, HttpTarget], args: argparse.Namespace, start_rate: float,
                   options: LoadOptions) -> dict[str, SaturationResult]:
    return {
        name: await find_max_rps(
            target, start_rate=start_rate, step_seconds=args.step_seconds, p99_limit_ms=args.p99_limit_ms,
            refine_steps=args.refine, options=replace(options, drain_timeout=2.0), log=log)
        for name, target in targets.items()
    }


def run(measure: Callable[[argparse.Namespace], Awaitable[dict]], args: argparse.Namespace) -> None:
    """Pin this process (the load generator) away from the servers, measure,
    and print the figures as the last line."""
    raise_on_sigterm()
    pin_current_process(LOADGEN_CORE)
    print_figures(uvloop.run(measure(args)))
