"""Open-loop HTTP/1.1 load generation for Attimo's benchmarks: requests leave on a
fixed-rate schedule over a pool of keep-alive connections, each latency counts
from the request's intended send time, and a saturation search finds the highest
rate a server sustains. Also owns CPU pinning of the benchmark's processes."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import uvloop

# A body is sent as is (bytes, str) or JSON-encoded (anything orjson takes).
Body = bytes | str | Mapping[str, Any]
BodySource = Body | Sequence[Any] | Callable[[int], Any] | None

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
_MAX_HEAD_BYTES = 64 * 1024
_RECONNECT_ATTEMPTS = 20
_RECONNECT_DELAY_S = 0.05


# --------------------------------------------------------------------------
# Requests, rendered to bytes before a run


def render_body(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


def render_requests(
    method: str,
    path: str,
    *,
    host: str,
    port: int,
    bodies: BodySource = None,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    variants: int = 4096,
) -> list[bytes]:
    """Every distinct request of a run as wire bytes; a run cycles through them.

    `bodies` is one body, a sequence of bodies, or a function of the request
    index called `variants` times (e.g. rotating over person ids)."""
    if bodies is None or isinstance(bodies, bytes | str | Mapping):
        rendered = [b"" if bodies is None else render_body(bodies)]
    elif callable(bodies):
        rendered = [render_body(bodies(i)) for i in range(variants)]
    else:
        rendered = [render_body(body) for body in bodies]
    if not rendered:
        raise ValueError("bodies is an empty sequence")

    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if bodies is not None:
        head.append(f"Content-Type: {content_type}")
    # A body-less POST still says Content-Length: 0, or a server may wait for one.
    declares_length = bodies is not None or method not in ("GET", "HEAD")
    head_bytes = "\r\n".join(head).encode()
    return [
        head_bytes
        + (f"\r\nContent-Length: {len(body)}".encode() if declares_length else b"")
        + b"\r\n\r\n"
        + body
        for body in rendered
    ]


@dataclass
class HttpTarget:
    """Where a load goes and what it carries, rendered to bytes once at creation."""

    host: str
    port: int
    path: str
    method: str = "POST"
    bodies: BodySource = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    variants: int = 4096
    requests: list[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.requests = render_requests(
            self.method,
            self.path,
            host=self.host,
            port=self.port,
            bodies=self.bodies,
            headers=self.headers,
            content_type=self.content_type,
            variants=self.variants,
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> HttpTarget:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// targets are supported, got {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 80, path=path, **kwargs)


# --------------------------------------------------------------------------
# Response parsing


class ProtocolViolation(Exception):
    """The server sent something that is not a well-formed HTTP/1.1 response."""


def parse_response(buffer: bytes | bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, keep_alive) of the first complete response in
    `buffer`, or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > _MAX_HEAD_BYTES:
            raise ProtocolViolation("response head larger than 64 KiB")
        return None
    if not buffer.startswith(b"HTTP/1."):
        raise ProtocolViolation(f"not an HTTP/1.x status line: {bytes(buffer[:40])!r}")
    try:
        status = int(buffer[9:12])
    except ValueError:
        raise ProtocolViolation(f"bad status line: {bytes(buffer[:40])!r}") from None
    head = bytes(buffer[:head_end]).lower()
    body_start = head_end + 4
    keep_alive = b"\r\nconnection: close" not in head and not head.startswith(b"http/1.0")

    length_at = head.find(b"\r\ncontent-length:")
    if length_at >= 0:
        line_end = head.find(b"\r\n", length_at + 2)
        try:
            length = int(head[length_at + 17 : line_end if line_end >= 0 else None])
        except ValueError:
            raise ProtocolViolation("bad Content-Length") from None
        end = body_start + length
        return (status, end, keep_alive) if len(buffer) >= end else None
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        end = _chunked_body_end(buffer, body_start)
        return (status, end, keep_alive) if end >= 0 else None
    if status < 200 or status in (204, 304):
        return status, body_start, keep_alive
    raise ProtocolViolation("response without Content-Length or chunked encoding")


def _chunked_body_end(buffer: bytes | bytearray, position: int) -> int:
    """Offset just past a chunked body starting at `position`, or -1 if incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return -1
        try:
            size = int(bytes(buffer[position:line_end]).split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolViolation("bad chunk size") from None
        position = line_end + 2
        if size == 0:
            if len(buffer) < position + 2:
                return -1
            if buffer[position : position + 2] == b"\r\n":
                return position + 2
            trailers_end = buffer.find(b"\r\n\r\n", position)
            return trailers_end + 4 if trailers_end >= 0 else -1
        position += size + 2
        if position > len(buffer):
            return -1


# --------------------------------------------------------------------------
# Results


@dataclass
class LoadResult:
    """One fixed-rate run. Latencies are of 2xx responses, in ms, from the
    intended send time; `send_lag_ms` is how late the generator itself was."""

    rate: float
    duration: float
    connections: int
    sent: int
    completed: int
    errors: dict[str, int]
    latencies_ms: np.ndarray
    send_lag_ms: np.ndarray
    elapsed: float
    cpu_steal_s: float  # stolen by the hypervisor from all cores during the run

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else math.nan

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    @property
    def p999_ms(self) -> float:
        return self.percentile(99.9)

    @property
    def max_ms(self) -> float:
        return float(self.latencies_ms.max()) if self.latencies_ms.size else math.nan

    @property
    def send_lag_p99_ms(self) -> float:
        return float(np.percentile(self.send_lag_ms, 99)) if self.send_lag_ms.size else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 1),
            "duration_s": self.duration,
            "sent": self.sent,
            "completed": self.completed,
            "achieved_rps": round(self.achieved_rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "p999_ms": round(self.p999_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "send_lag_p99_ms": round(self.send_lag_p99_ms, 3),
            "cpu_steal_s": round(self.cpu_steal_s, 3),
            "errors": dict(self.errors),
        }


def cpu_steal_seconds() -> float:
    """Time the hypervisor has taken from this VM's cores since boot (Linux):
    a run that lost much of it has noisy tails, whoever it measured."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


# --------------------------------------------------------------------------
# The open-loop run


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


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time (no pipelining,
    as browsers and ordinary HTTP clients do)."""

    def __init__(self, run: _OpenLoopRun):
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.unparsed = bytearray()
        self.busy = False
        self.intended = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fd = transport.get_extra_info("socket").fileno()

    def eof_received(self) -> None:
        # The transport closes its socket right after this: stop select()ing on it.
        self.run.forget_fd(self)

    def send(self, request: bytes, intended: float) -> None:
        self.busy = True
        self.intended = intended
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.unparsed:
            self.unparsed += data
            data = self.unparsed  # type: ignore[assignment]
        try:
            parsed = parse_response(data)
            if parsed is not None and (not self.busy or parsed[1] != len(data)):
                raise ProtocolViolation("bytes the server sent without being asked")
        except ProtocolViolation:
            self.run.on_protocol_violation(self)
            return
        if parsed is None:
            if data is not self.unparsed:
                self.unparsed = bytearray(data)
            return
        if self.unparsed:
            self.unparsed = bytearray()
        status, _, keep_alive = parsed
        self.run.on_response(self, status, keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.on_connection_lost(self)


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

        self.idle: deque[_Connection] = deque()
        self.waiting: deque[tuple[int, float]] = deque()
        self.live: set[_Connection] = set()
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
            if isinstance(connection, _Connection):
                self.idle.append(connection)

    async def _connect(self) -> _Connection:
        _, connection = await self.loop.create_connection(
            lambda: _Connection(self), self.target.host, self.target.port
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

    def forget_fd(self, connection: _Connection) -> None:
        if connection.fd >= 0:
            self.fds.remove(connection.fd)
            connection.fd = -1

    def _close(self, connection: _Connection) -> None:
        self.forget_fd(connection)
        connection.transport.close()  # type: ignore[union-attr]

    def on_connection_lost(self, connection: _Connection) -> None:
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

    def on_protocol_violation(self, connection: _Connection) -> None:
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

    def on_response(self, connection: _Connection, status: int, keep_alive: bool) -> None:
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

    def _release(self, connection: _Connection) -> None:
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


# --------------------------------------------------------------------------
# Saturation search


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
    options: LoadOptions = LoadOptions(drain_timeout=2.0),
    pause: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> SaturationResult:
    """Multiply the rate by `growth` until a step fails (or divide it until one
    passes), then bisect the bracket `refine_steps` times on a log scale.

    A step passes with no errors, throughput >= `min_throughput_ratio` x offered
    and p99 < `p99_limit_ms`. Each step is a fresh open-loop run of
    `step_seconds`; one noisy step can end the climb early, so compare two
    servers with the same arguments in the same run."""
    steps: list[LoadResult] = []
    passed: list[bool] = []

    async def attempt(rate: float) -> bool:
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
                f"{'pass' if ok else 'fail'}"
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
    )
    return SaturationResult(highest_pass or 0.0, best, steps, passed)


# --------------------------------------------------------------------------
# CPU pinning: the process under test and the load generator on separate cores


# Read once at import: after pin_current_process() this process's own affinity
# is one core, and the servers it starts next must still get the others.
_USABLE_CORES = sorted(os.sched_getaffinity(0))


def usable_cores() -> list[int]:
    return list(_USABLE_CORES)


def resolve_core(core: int) -> int:
    """`core` if this machine lets us use it, otherwise a usable one (with a
    warning: the figures are then less trustworthy, not wrong)."""
    cores = usable_cores()
    if core in cores:
        return core
    chosen = cores[core % len(cores)]
    print(f"warning: core {core} is not usable here, using core {chosen}", file=sys.stderr)
    return chosen


def pin_current_process(core: int) -> int:
    """Pin the calling process to one core; returns the core used."""
    core = resolve_core(core)
    os.sched_setaffinity(0, {core})
    return core


def _die_with_parent() -> None:
    # Runs in the child before exec: if the benchmark dies without cleaning
    # up (SIGKILL), the kernel still stops its servers.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_pinned(command: Sequence[str], core: int, **popen_kwargs: Any) -> subprocess.Popen:
    """Start `command` under `taskset -c <core>` in its own session (a Ctrl-C
    reaches the benchmark, which then stops it in order)."""
    core = resolve_core(core)
    popen_kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(
        ["taskset", "-c", str(core), *command], preexec_fn=_die_with_parent, **popen_kwargs
    )


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` s; safe to call twice."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------
# Command line, for poking at a server by hand


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
