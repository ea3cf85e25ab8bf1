"""The open-loop schedule: request i leaves at t0 + i/rate over a pool of
keep-alive connections (benchmarks.http_client), its latency counted from that
intended time whether it left on time or waited for a free connection, so a
slow server cannot slow the load down (no coordinated omission)."""

from __future__ import annotations

import asyncio
import gc
import select
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from benchmarks.http_client import Connection, HttpTarget
from benchmarks.results import LoadResult, cpu_steal_seconds

DEFAULT_CONNECTIONS = 64
DEFAULT_MAX_OUTSTANDING = 2048
DEFAULT_DRAIN_TIMEOUT_S = 5.0

# How the generator waits between sends. uvloop timers tick in whole
# milliseconds, too coarse for a 1000 req/s schedule, and waking an idle vCPU
# is slow at the tail: on the 2-core VM these benchmarks were written on, a
# 0.8 ms select() overshot by 0.11 ms at p50, 0.6 ms at p99 and 1.7 ms at p999,
# and an open-loop run against a constant-response server measured p99 4.0 ms
# sleeping against 0.34 ms spinning. So by default the generator busy-polls its
# own core (the loop spins on zero-timeout polls, reading each response the
# moment it lands). With busy_poll=False a timer wakes it this long before the
# next send and a select() on the connections, whose timeout has microsecond
# resolution, covers the rest: gentler on a shared core, noisier at the tail.
_COARSE_WAKE_MARGIN_S = 0.002
_SELECT_FD_LIMIT = 1024  # FD_SETSIZE: select() refuses larger descriptors
_RECONNECT_ATTEMPTS = 20
_RECONNECT_DELAY_S = 0.05


@dataclass(frozen=True)
class LoadOptions:
    """How the generator offers a load, whatever its rate.

    Requests beyond `max_outstanding` in flight or queued are counted as
    "dropped" instead of queued; those unanswered `drain_timeout` s after the
    schedule ends count as "unfinished". `busy_poll` spins the generator's
    core between sends (see _COARSE_WAKE_MARGIN_S for why it is the default)."""

    connections: int = DEFAULT_CONNECTIONS
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
    busy_poll: bool = True


class _OpenLoopRun:
    """Request i leaves at t0 + i/rate on an idle connection, or waits in a queue
    for the next one to free up; its latency runs from t0 + i/rate either way."""

    def __init__(
        self,
        target: HttpTarget,
        rate: float,
        duration: float,
        options: LoadOptions,
    ):
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.requests = target.requests
        self.rate = rate
        self.duration = duration
        self.connection_count = options.connections
        self.max_outstanding = options.max_outstanding
        self.drain_timeout = options.drain_timeout
        self.busy_poll = options.busy_poll
        self.total = max(1, round(rate * duration))
        self.interval = 1.0 / rate

        self.idle: deque[Connection] = deque()
        self.waiting: deque[tuple[int, float]] = deque()
        self.live: set[Connection] = set()
        self.fds: list[int] = []
        self.reconnects: set[asyncio.Task] = set()
        self.outstanding = 0
        self.next_index = 0
        self.sent = 0
        self.completed = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.send_lags: list[float] = []
        self.t0 = 0.0
        self.last_completion = 0.0
        self.finishing = False
        self.drained = self.loop.create_future()

    async def execute(self) -> LoadResult:
        await self._open_pool()
        gc_was_enabled = gc.isenabled()
        gc.collect()
        # A collection mid-run would stall the generator and be charged to the server.
        gc.disable()
        steal_before = cpu_steal_seconds()
        try:
            lead_time = 0.01
            self.t0 = time.perf_counter() + lead_time
            self.loop.call_later(lead_time - _COARSE_WAKE_MARGIN_S, self._pace)
            await asyncio.wait(
                [self.drained], timeout=lead_time + self.duration + self.drain_timeout
            )
        finally:
            self.finishing = True
            if gc_was_enabled:
                gc.enable()
            self._close_pool()
        if self.outstanding:
            self.errors["unfinished"] += self.outstanding
        if self.next_index < self.total:
            # The generator could not keep its own schedule: say so, loudly.
            self.errors["not_sent"] += self.total - self.next_index
        measured = max(self.last_completion - self.t0, self.duration)
        return LoadResult(
            rate=self.rate,
            duration=self.duration,
            connections=self.connection_count,
            sent=self.sent,
            completed=self.completed,
            errors=dict(self.errors),
            latencies_ms=np.array(self.latencies, dtype=np.float64) * 1000.0,
            send_lag_ms=np.array(self.send_lags, dtype=np.float64) * 1000.0,
            elapsed=measured,
            cpu_steal_s=cpu_steal_seconds() - steal_before,
        )

    # ---- connections

    async def _open_pool(self) -> None:
        results = await asyncio.gather(
            *(self._connect() for _ in range(self.connection_count)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == len(results):
            raise ConnectionError(
                f"no connection to {self.target.host}:{self.target.port}: {failures[0]!r}"
            )
        if failures:
            self.errors["connect"] += len(failures)
        for connection in results:
            if isinstance(connection, Connection):
                self.idle.append(connection)

    async def _connect(self) -> Connection:
        _, connection = await self.loop.create_connection(
            lambda: Connection(self), self.target.host, self.target.port
        )
        self.live.add(connection)
        self.fds.append(connection.fd)
        return connection

    async def _replace_connection(self) -> None:
        for _ in range(_RECONNECT_ATTEMPTS):
            if self.finishing:
                return
            try:
                connection = await self._connect()
            except OSError:
                self.errors["connect"] += 1
                await asyncio.sleep(_RECONNECT_DELAY_S)
                continue
            if self.finishing:
                connection.transport.close()  # type: ignore[union-attr]
            else:
                self._release(connection)
            return

    def _close_pool(self) -> None:
        for task in self.reconnects:
            task.cancel()
        for connection in list(self.live):
            if connection.transport is not None:
                connection.transport.close()

    def forget_fd(self, connection: Connection) -> None:
        if connection.fd >= 0:
            self.fds.remove(connection.fd)
            connection.fd = -1

    def _close(self, connection: Connection) -> None:
        self.forget_fd(connection)
        connection.transport.close()  # type: ignore[union-attr]

    def on_connection_lost(self, connection: Connection) -> None:
        self.live.discard(connection)
        self.forget_fd(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if self.finishing:
            return
        if connection.busy:
            connection.busy = False
            self.errors["connection_lost"] += 1
            self._finish_one()
        # Idle connections are closed by servers' keep-alive timeouts: replace
        # them quietly, the schedule does not depend on them.
        task = self.loop.create_task(self._replace_connection())
        self.reconnects.add(task)
        task.add_done_callback(self.reconnects.discard)

    def on_protocol_violation(self, connection: Connection) -> None:
        self.errors["protocol"] += 1
        if connection.busy:
            connection.busy = False
            self._finish_one()
        self._close(connection)

    # ---- requests

    def _pace(self) -> None:
        """Send every request now due, then sleep until the next one."""
        if self.finishing:
            return
        now = time.perf_counter()
        index = self.next_index
        t0, interval, total = self.t0, self.interval, self.total
        while index < total:
            intended = t0 + index * interval
            if intended > now:
                break
            self.send_lags.append(now - intended)
            self._dispatch(index, intended)
            index += 1
        self.next_index = index
        if index >= total:
            self._check_drained()
            return
        if self.busy_poll:
            self.loop.call_soon(self._pace)
            return
        wait = t0 + index * interval - time.perf_counter()
        if wait > _COARSE_WAKE_MARGIN_S:
            self.loop.call_later(wait - _COARSE_WAKE_MARGIN_S, self._pace)
            return
        if wait > 0:
            # Block until the send time, or until a response is readable, so
            # the loop can read it and time it without delay.
            self._wait_for_io(wait)
        self.loop.call_soon(self._pace)

    def _wait_for_io(self, timeout: float) -> None:
        """Block until a connection is readable or `timeout` s pass (the loop
        is idle meanwhile: it has nothing else to do)."""
        fds = self.fds
        if fds and max(fds) < _SELECT_FD_LIMIT:
            try:
                select.select(fds, (), (), timeout)
                return
            except (OSError, ValueError):
                pass  # a socket closed under us: the loop will report it
        time.sleep(min(timeout, 0.0002))

    def _dispatch(self, index: int, intended: float) -> None:
        if self.outstanding >= self.max_outstanding:
            self.errors["dropped"] += 1
            return
        self.outstanding += 1
        self.sent += 1
        if self.idle:
            self.idle.popleft().send(self.requests[index % len(self.requests)], intended)
        else:
            self.waiting.append((index, intended))

    def on_response(self, connection: Connection, status: int, keep_alive: bool) -> None:
        now = time.perf_counter()
        connection.busy = False
        if 200 <= status < 300:
            self.completed += 1
            self.latencies.append(now - connection.intended)
            self.last_completion = now
        else:
            self.errors[f"http_{status}"] += 1
        self.outstanding -= 1
        if keep_alive:
            self._release(connection)
        else:
            self._close(connection)
        self._check_drained()

    def _release(self, connection: Connection) -> None:
        if self.waiting:
            index, intended = self.waiting.popleft()
            connection.send(self.requests[index % len(self.requests)], intended)
        else:
            self.idle.append(connection)

    def _finish_one(self) -> None:
        self.outstanding -= 1
        self._check_drained()

    def _check_drained(self) -> None:
        if self.next_index >= self.total and self.outstanding == 0 and not self.drained.done():
            self.drained.set_result(None)


async def run_open_loop(
    target: HttpTarget,
    rate: float,
    duration: float,
    options: LoadOptions = LoadOptions(),
    *,
    warmup: float = 0.0,
) -> LoadResult:
    """Offer `rate` req/s for `duration` s, after `warmup` s at the same rate
    whose results are discarded."""
    if warmup > 0:
        await warm_up(target, rate, warmup, options)
    return await _OpenLoopRun(target, rate, duration, options).execute()


async def warm_up(
    target: HttpTarget, rate: float, seconds: float, options: LoadOptions = LoadOptions()
) -> None:
    """A short run whose numbers are for nobody: fills pools, caches and the
    server's first-request paths."""
    await _OpenLoopRun(target, rate, seconds, options).execute()
