"""What every HTTP benchmark of Attimo does around its own subject: the common
command-line arguments, fixed-rate runs that alternate between the server under
test and its floor (so drift on a noisy machine hits both alike), the
saturation search of each, and the pinned run that ends with the figures line."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import uvloop

from benchmarks.http_client import HttpTarget
from benchmarks.report import print_figures
from benchmarks.results import LoadResult, cpu_steal_seconds
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
    parser.add_argument("--saturation-rounds", type=int,
                        help="saturation searches per server, interleaved; each keeps its best (default 2, quick 1)")
    return parser


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in what --quick decides."""
    args.rates = [float(rate) for rate in args.rates.split(",")]
    args.people = args.people or (10_000 if args.quick else 100_000)
    args.duration = args.duration or (1.5 if args.quick else 10.0)
    args.warmup = 2.0 if args.quick else 8.0  # a fresh server opens its pool and settles for ~8 s
    args.step_seconds = 1.0 if args.quick else 2.5
    args.refine = 1 if args.quick else 2
    args.saturation_rounds = args.saturation_rounds or (1 if args.quick else 2)
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


# A trial that lost more than this share of its wall time to the hypervisor
# (/proc/stat steal, all cores) is flagged and left out of the medians while
# enough trials remain: it measured the steal, not Attimo.
STEAL_FLAG_SHARE = 0.05


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (every thread), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Trial:
    result: LoadResult
    cpu_us: float  # the server process's CPU time per request served
    steal_share: float  # of the trial's wall time, stolen from the VM

    @property
    def flagged(self) -> bool:
        return self.steal_share > STEAL_FLAG_SHARE


async def trial(target: HttpTarget, pid: int, rate: float, duration: float, options: LoadOptions) -> Trial:
    cpu, steal, started = process_cpu_seconds(pid), cpu_steal_seconds(), time.monotonic()
    result = await run_open_loop(target, rate, duration, options)
    wall = time.monotonic() - started
    cpu_us = (process_cpu_seconds(pid) - cpu) * 1e6 / max(result.completed, 1)
    return Trial(result, cpu_us, (cpu_steal_seconds() - steal) / max(wall, 1e-9))


async def interleaved(subject: tuple[HttpTarget, int], floor: tuple[HttpTarget, int], rate: float, pairs: int,
                      duration: float, options: LoadOptions) -> dict:
    """Floor and subject in pairs at one rate, `pairs` times, the order turned
    round every other pair (floor first, then subject first), so that neither
    always runs on a server just warmed or just left idle: each pair measures
    both under the same moment's noise. Returns each side's median p99
    and CPU per request, the median of the pairs' own p99 ratios with their
    smallest and largest (`ratio_spread`), and how many pairs were left out for
    steal (all are kept when fewer than 3 would remain)."""
    runs = []
    for index in range(pairs):
        if index % 2 == 0:
            f = await trial(*floor, rate, duration, options)
            s = await trial(*subject, rate, duration, options)
        else:
            s = await trial(*subject, rate, duration, options)
            f = await trial(*floor, rate, duration, options)
        runs.append((f, s))
        log(f"pair {len(runs)}: floor p99 {f.result.p99_ms:.2f} ms {f.cpu_us:.0f} µs/req steal {f.steal_share:.1%}; "
            f"subject p99 {s.result.p99_ms:.2f} ms {s.cpu_us:.0f} µs/req steal {s.steal_share:.1%}")
    kept = [(f, s) for f, s in runs if not (f.flagged or s.flagged)]
    if len(kept) < 3:
        kept = runs
    ratios = [s.result.p99_ms / f.result.p99_ms for f, s in kept]
    return {
        "subject_p99_ms": statistics.median(s.result.p99_ms for _, s in kept),
        "floor_p99_ms": statistics.median(f.result.p99_ms for f, _ in kept),
        "ratio": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        "subject_cpu_us": statistics.median(s.cpu_us for _, s in kept),
        "floor_cpu_us": statistics.median(f.cpu_us for f, _ in kept),
        "pairs": len(runs), "pairs_flagged_for_steal": sum(f.flagged or s.flagged for f, s in runs),
        "pairs_left_out": len(runs) - len(kept),
        "steal_share_max": max(max(f.steal_share, s.steal_share) for f, s in runs),
        "results": [(f.result, s.result) for f, s in runs],
    }


async def saturate(targets: Mapping[str, HttpTarget], args: argparse.Namespace, start_rate: float,
                   options: LoadOptions) -> dict[str, SaturationResult]:
    """Each target's saturation search, `args.saturation_rounds` times over,
    interleaved: the targets in turn, their order reversed every other round
    (floor, subject, subject, floor), so a slow minute of the VM falls on both.
    Each target keeps its best round: noise only ever lowers a capacity."""
    names = list(targets)
    best: dict[str, SaturationResult] = {}
    for round_ in range(args.saturation_rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            found = await find_max_rps(
                targets[name], start_rate=start_rate, step_seconds=args.step_seconds,
                p99_limit_ms=args.p99_limit_ms, refine_steps=args.refine,
                options=replace(options, drain_timeout=2.0), log=log)
            log(f"saturation of {name}, round {round_ + 1}: {found.max_rps:.0f}/s")
            if name not in best or found.max_rps > best[name].max_rps:
                best[name] = found
    return {name: best[name] for name in names}


def run(measure: Callable[[argparse.Namespace], Awaitable[dict]], args: argparse.Namespace) -> None:
    """Pin this process (the load generator) away from the servers, measure,
    and print the figures as the last line."""
    raise_on_sigterm()
    pin_current_process(LOADGEN_CORE)
    print_figures(uvloop.run(measure(args)))
