"""The saturation search: the highest rate a server sustains (no errors,
throughput near the offered rate, p99 under a limit), found by growing the
rate until a step fails, then bisecting the bracket on a log scale. A step
that fails is run once more and fails only if it fails again: on a VM whose
hypervisor steals CPU, one slow step used to end a climb early (decide's
saturation moved 4500, 2711, 3000 req/s over three runs of one commit)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.http_client import HttpTarget
from benchmarks.results import LoadResult
from benchmarks.schedule import LoadOptions, run_open_loop

# A step's stragglers get 2 s, not a full run's 5: the next step is waiting.
STEP_OPTIONS = LoadOptions(drain_timeout=2.0)


@dataclass
class SaturationResult:
    """The highest offered rate that passed (0 if none did), the step that
    measured it, and every step tried, in order."""

    max_rps: float
    best: LoadResult | None
    steps: list[LoadResult]
    passed: list[bool]

    @property
    def achieved_rps(self) -> float:
        return self.best.achieved_rps if self.best is not None else 0.0


def step_passes(
    result: LoadResult, *, p99_limit_ms: float = 100.0, min_throughput_ratio: float = 0.95
) -> bool:
    return (
        result.error_count == 0
        and result.achieved_rps >= min_throughput_ratio * result.rate
        and result.p99_ms < p99_limit_ms
    )


async def find_max_rps(
    target: HttpTarget,
    *,
    start_rate: float = 1000.0,
    growth: float = 1.5,
    refine_steps: int = 2,
    step_seconds: float = 2.5,
    p99_limit_ms: float = 100.0,
    min_throughput_ratio: float = 0.95,
    min_rate: float = 50.0,
    max_rate: float = 200_000.0,
    options: LoadOptions = STEP_OPTIONS,
    pause: float = 0.2,
    confirm_failures: bool = True,
    log: Callable[[str], None] | None = None,
) -> SaturationResult:
    """Multiply the rate by `growth` until a step fails (or divide it until one
    passes), then bisect the bracket `refine_steps` times on a log scale.

    A step passes with no errors, throughput >= `min_throughput_ratio` x offered
    and p99 < `p99_limit_ms`. Each step is a fresh open-loop run of
    `step_seconds`; with `confirm_failures` a failed step is run again and
    the rate fails only if both runs fail. Compare two servers with the same
    arguments in the same run."""
    steps: list[LoadResult] = []
    passed: list[bool] = []

    async def attempt(rate: float) -> bool:
        return await attempt_once(rate) or (confirm_failures and await attempt_once(rate, again=True))

    async def attempt_once(rate: float, again: bool = False) -> bool:
        if steps:
            await asyncio.sleep(pause)  # let the server finish what the last step queued
        result = await run_open_loop(target, rate, step_seconds, options)
        ok = step_passes(
            result, p99_limit_ms=p99_limit_ms, min_throughput_ratio=min_throughput_ratio
        )
        steps.append(result)
        passed.append(ok)
        if log is not None:
            log(
                f"saturation step {rate:8.0f} req/s -> {result.achieved_rps:8.0f} rps, "
                f"p99 {result.p99_ms:8.2f} ms, errors {result.error_count}: "
                f"{'pass' if ok else 'fail'}{' (again)' if again else ''}"
            )
        return ok

    highest_pass: float | None = None
    lowest_fail: float | None = None
    rate = start_rate
    if await attempt(rate):
        highest_pass = rate
        while rate * growth <= max_rate:
            rate *= growth
            if not await attempt(rate):
                lowest_fail = rate
                break
            highest_pass = rate
    else:
        lowest_fail = rate
        while rate / growth >= min_rate:
            rate /= growth
            if await attempt(rate):
                highest_pass = rate
                break
            lowest_fail = rate

    if highest_pass is not None and lowest_fail is not None:
        for _ in range(refine_steps):
            middle = math.sqrt(highest_pass * lowest_fail)
            if await attempt(middle):
                highest_pass = middle
            else:
                lowest_fail = middle

    best = next(
        (step for step, ok in zip(steps, passed, strict=True) if ok and step.rate == highest_pass),
        None,
    )  # a rate that passed on its second run: that run
    return SaturationResult(highest_pass or 0.0, best, steps, passed)
