"""Open-loop HTTP/1.1 load from the command line, for poking at a server by
hand: `python -m benchmarks.loadgen URL --rate R` (or --find-max). The pieces
are benchmarks.http_client (requests and responses), benchmarks.schedule (the
open-loop run), benchmarks.results (what a run measured) and
benchmarks.saturation (the highest sustained rate)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import uvloop

from benchmarks.http_client import HttpTarget
from benchmarks.saturation import find_max_rps
from benchmarks.schedule import (
    DEFAULT_CONNECTIONS,
    DEFAULT_MAX_OUTSTANDING,
    LoadOptions,
    run_open_loop,
    warm_up,
)
from engine.testing.processes import pin_current_process


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Open-loop HTTP/1.1 load: fixed rate, latency from intended send time.",
    )
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000/floor/decide")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", help="request body (sent as is)")
    parser.add_argument("--header", action="append", type=_parse_header, default=[])
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds, discarded")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--max-outstanding", type=int, default=DEFAULT_MAX_OUTSTANDING)
    parser.add_argument("--core", type=int, help="pin the generator to this core")
    parser.add_argument("--no-busy-poll", action="store_true", help="sleep between sends")
    parser.add_argument("--find-max", action="store_true", help="run the saturation search")
    parser.add_argument("--step-seconds", type=float, default=2.5)
    parser.add_argument("--p99-limit-ms", type=float, default=100.0)
    args = parser.parse_args(argv)

    if args.core is not None:
        pin_current_process(args.core)
    target = HttpTarget.from_url(
        args.url, method=args.method, bodies=args.body, headers=dict(args.header)
    )
    options = LoadOptions(
        connections=args.connections,
        max_outstanding=args.max_outstanding,
        busy_poll=not args.no_busy_poll,
    )

    async def measure() -> dict[str, Any]:
        if args.warmup > 0:
            await warm_up(target, args.rate, args.warmup, options)
        if not args.find_max:
            return (await run_open_loop(target, args.rate, args.duration, options)).summary()
        found = await find_max_rps(
            target,
            start_rate=args.rate,
            step_seconds=args.step_seconds,
            p99_limit_ms=args.p99_limit_ms,
            options=replace(options, drain_timeout=2.0),
            log=lambda line: print(line, file=sys.stderr),
        )
        return {"max_rps": round(found.max_rps, 1), "achieved_rps": round(found.achieved_rps, 1)}

    print(orjson.dumps(uvloop.run(measure())).decode())


if __name__ == "__main__":
    main()
