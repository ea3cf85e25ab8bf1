"""Time as the engine counts it: integer milliseconds since the epoch. Every
clock in the engine is this function or one injected in its place (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine

CANCEL_AGAIN_S = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def every(period_s: float, step: Callable[[], Awaitable[object]], what: str, log: logging.Logger,
                first_wait: bool = False) -> None:
    """Run `step` every `period_s` (start to start), for ever: the snapshots and
    flushes each process keeps. A failure is logged and the next turn tries
    again; the caller cancels the task to stop it."""
    if first_wait:
        await asyncio.sleep(period_s)
    while True:
        started = time.monotonic()
        try:
            await step()
        except Exception as exc:  # Redis down or slow: the last state holds until it is back
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        await asyncio.sleep(max(0.0, period_s - (time.monotonic() - started)))


@contextlib.asynccontextmanager
async def in_background(work: Coroutine, last: Callable[[], Awaitable[object]] | None = None):
    """Run `work` as a task while the block runs; cancel it after, then run
    `last` (a final flush), whose failure is not the block's."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        await cancel_for_good(task)
        if last is not None:
            with contextlib.suppress(Exception):
                await last()


async def cancel_for_good(task: asyncio.Task) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again while it
    has not: a cancellation that lands as a Redis read completes can be lost in
    a client's timeout wrapper (Python 3.11's asyncio.timeout), and a loop
    that lost it would run on for ever (a shutdown that never finished)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
