"""Server processes for the tests and benchmarks: one `ServerProcess` (a free
port, a log file, wait until it answers, stop it on every way out of a `with`
block) and what is built on it: redis-server, a Redis Cluster, `attimo serve`,
uvicorn apps and the constant server. Also `wait_until` and CPU pinning.

The low-level pieces (free_port, die_with_parent, the redis-server binary) are
engine.store.local_server's, which `attimo demo` uses too."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Self, TypeVar

import httpx
import redis

from engine.store.local_server import die_with_parent, free_port, redis_server_binary

__all__ = [
    "ORIGIN", "REPO_ROOT", "SITE_KEY", "SITE_SECRET", "TOKEN", "ApiServer", "ConstantServer",
    "RedisCluster", "RedisServer", "ServerFailed", "ServerProcess", "UvicornServer", "free_port",
    "pin_current_process", "raise_on_sigterm", "resolve_core", "start_api", "start_pinned",
    "start_process", "stop_api", "stop_process", "usable_cores", "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20.0

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02,
               what: str = "condition", error: type[Exception] = AssertionError) -> T:
    """Call `check` until it returns something truthy, and return that; raise
    `error` after `timeout_s`. Poll with a deadline instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------
# CPU pinning: a benchmark's process under test and its load generator on
# separate cores.

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


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `with` blocks stop the servers."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# --------------------------------------------------------------------------
# Starting and stopping a process


def start_process(command: Sequence[str], core: int | None = None, **popen_kwargs: Any) -> subprocess.Popen:
    """Start `command` (under `taskset -c <core>` if a core is given) in its own
    session, so a Ctrl-C reaches only us and we stop it in order; the kernel
    stops it if we die without cleaning up."""
    if core is not None:
        command = ["taskset", "-c", str(resolve_core(core)), *command]
    popen_kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(list(command), preexec_fn=die_with_parent, **popen_kwargs)


def start_pinned(command: Sequence[str], core: int, **popen_kwargs: Any) -> subprocess.Popen:
    """`command` pinned to one core."""
    return start_process(command, core, **popen_kwargs)


def stop_process(process: subprocess.Popen, timeout: float = 5.0,
                 stop_signal: int = signal.SIGTERM) -> None:
    """`stop_signal`, then SIGKILL after `timeout` s; safe to call twice."""
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Started:
    """`with X() as x:` starts x and stops it on the way out, also when the
    start itself fails half way."""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ServerFailed(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


class ServerProcess(Started):
    """A server in a subprocess on a free port (or `port`), optionally pinned to
    `core`, logging to a file; `start` returns once `is_ready`, `stop` ends it.
    Subclasses say what to run (`command`) and how to tell it answers."""

    name = "server"
    stop_signal: int = signal.SIGTERM
    stop_timeout_s = 5.0

    def __init__(self, core: int | None = None, port: int | None = None,
                 env: Mapping[str, str] | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 *, log_dir: Path | None = None, cwd: Path = REPO_ROOT):
        self.core = core
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        # Scratch space, removed on stop; the log stays if it is in `log_dir`.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"attimo-{self.name}-"))
        self.log_path = Path(log_dir or self.workdir) / f"{self.name}-{self.port}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        """Accepts connections (HTTP servers listen only once they can answer:
        uvicorn after the app's lifespan startup)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> Self:
        with open(self.log_path, "wb") as log:
            self.process = start_process(self.command(), self.core, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env)
        try:
            wait_until(self._answers, self.startup_timeout_s, 0.05,
                       f"{self.name} on port {self.port} to answer", error=ServerFailed)
        except ServerFailed:
            if self.process.poll() is None:  # still running: it timed out
                raise ServerFailed(f"{self.name} not ready after {self.startup_timeout_s} s:\n"
                                   f"{self.log_tail()}") from None
            raise
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServerFailed(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
        return self.is_ready()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, self.stop_timeout_s, self.stop_signal)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --------------------------------------------------------------------------
# Redis


class RedisServer(ServerProcess):
    """A throwaway redis-server with persistence off: never a shared one."""

    name = "redis"

    def __init__(self, core: int | None = None, port: int | None = None,
                 env: Mapping[str, str] | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 *, extra_args: Sequence[str] = ()):
        super().__init__(core, port, env, startup_timeout_s)
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        # "--save ''" turns RDB snapshots off; the data dies with the process.
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            *self.extra_args,
        ]  # fmt: skip

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def is_ready(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def used_memory(self) -> int:
        with self.client() as client:
            return int(client.info("memory")["used_memory"])

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def _cluster_ok(info: object) -> bool:
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


class RedisCluster(Started):
    """A private Redis Cluster of `size` primaries (no replicas): redis-servers
    with `--cluster-enabled yes` on free ports, joined with `redis-cli --cluster
    create`. Its `url` is the redis+cluster:// form engine.store.client reads."""

    def __init__(self, size: int = 3, core: int | None = None):
        cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000")
        self.nodes = [RedisServer(core, _free_cluster_port(), extra_args=cluster_args)
                      for _ in range(size)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout_s: float = 30.0) -> Self:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is needed to form a cluster (apt-get install redis-tools)")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout_s,
        )
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            with node.client() as client:
                wait_until(lambda client=client: _cluster_ok(client.execute_command("CLUSTER INFO")),
                           max(0.0, deadline - time.monotonic()), 0.05,
                           f"cluster node {node.port} to reach cluster_state:ok", error=ServerFailed)
        return self

    def flush(self) -> None:
        """Empty every primary (ours only)."""
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# --------------------------------------------------------------------------
# HTTP servers

TOKEN = "test-server-token"
SITE_KEY = "test-site-key"
SITE_SECRET = "test-site-secret"
ORIGIN = "http://shop.example"


class ApiServer(ServerProcess):
    """`attimo serve` against `redis_url`, with the test credentials above, the
    demo catalog, rate limits never reached and the scheduler off unless `env`
    says otherwise; its log in
    `log_dir`. Stopped with SIGINT, as an operator's Ctrl-C."""

    name = "api"
    stop_signal = signal.SIGINT
    stop_timeout_s = 10.0

    def __init__(self, redis_url: str, log_dir: Path, **env: str):
        super().__init__(env={
            "ATTIMO_REDIS_URL": redis_url,
            "ATTIMO_SERVER_TOKEN": TOKEN,
            "ATTIMO_SITE_KEY": SITE_KEY,
            "ATTIMO_SITE_SECRET": SITE_SECRET,
            "ATTIMO_ALLOWED_ORIGINS": ORIGIN,
            "ATTIMO_CATALOG": str(REPO_ROOT / "examples" / "catalog.yaml"),
            "ATTIMO_CATALOG_POLL_S": "0.2",
            "ATTIMO_SCHEDULER": "off",  # tests that send messages turn it on
            # Every test speaks from 127.0.0.1, most with new anonymous ids: limits
            # this high are never reached but still run on every public call.
            # tests/security/test_rate_limits.py starts servers with low ones.
            "ATTIMO_RATE_LIMIT": "1000000/minute",
            "ATTIMO_NEW_PROFILE_LIMIT": "1000000/minute",
            **env,
        }, log_dir=log_dir)
        self.redis_url = redis_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "engine.cli", "serve", "--port", str(self.port)]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10)

    def server(self) -> httpx.Client:
        return self.client(Authorization=f"Bearer {TOKEN}")

    def browser(self, **headers: str) -> httpx.Client:
        return self.client(**{"X-Attimo-Key": SITE_KEY, **headers})

    def post_catalog(self, text: str) -> dict:
        with self.server() as client:
            answer = client.post("/v1/admin/catalog", content=text)
        assert answer.status_code == 200, answer.text
        return answer.json()


def start_api(redis_url: str, tmp_dir: Path, **env: str) -> ApiServer:
    """A started `attimo serve`; its log is `tmp_dir`/api-<port>.log."""
    return ApiServer(redis_url, tmp_dir, **env).start()


def stop_api(server: ApiServer) -> None:
    server.stop()


class UvicornServer(ServerProcess):
    """`app` ("module:attribute") under uvicorn with the settings every
    benchmark uses: one worker (or `workers` processes behind one socket, as
    `attimo serve --workers N` runs them), uvloop, httptools, no access log."""

    name = "uvicorn"

    def __init__(self, app: str, core: int | None = None, port: int | None = None,
                 env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                 startup_timeout_s: float = STARTUP_TIMEOUT_S, workers: int = 1):
        super().__init__(core, port, env, startup_timeout_s)
        self.app = app
        self.extra_args = list(extra_args)
        self.workers = workers

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", self.app,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--loop", "uvloop",
            "--http", "httptools",
            "--no-access-log",
            "--workers", str(self.workers),
            "--log-level", "warning",
            *self.extra_args,
        ]  # fmt: skip


class ConstantServer(ServerProcess):
    """benchmarks.constant_server: the load generator's ceiling, not a subject."""

    name = "constant"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.constant_server", "--port", str(self.port)]
