"""The processes a benchmark measures: a private redis-server and a uvicorn app,
each on a free port and pinned to a core, started as context managers so they
stop on every way out (normal end, exception, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Self

import redis

from benchmarks.loadgen import start_pinned, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `with` blocks stop the servers."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


class ServerFailed(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


class _PinnedServer:
    """A subprocess pinned to one core, logging to a temporary file."""

    name = "server"

    def __init__(self, core: int, port: int | None = None, env: Mapping[str, str] | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.core = core
        self.startup_timeout_s = startup_timeout_s
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.workdir = tempfile.TemporaryDirectory(prefix=f"attimo-{self.name}-")
        self.log_path = Path(self.workdir.name) / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        # HTTP servers listen only once they can answer (uvicorn: after the
        # app's lifespan startup).
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = start_pinned(
                self.command(),
                self.core,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=self.env,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.05)
        raise ServerFailed(f"{self.name} not ready after {self.startup_timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.workdir.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisServer(_PinnedServer):
    """A throwaway redis-server with persistence off: never the shared one on 6379."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        # "--save ''" turns RDB snapshots off; the data dies with the process.
        return [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir.name,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def used_memory(self) -> int:
        with redis.Redis(port=self.port) as client:
            return int(client.info("memory")["used_memory"])


class UvicornServer(_PinnedServer):
    """`app` ("module:attribute") under uvicorn with the settings every
    benchmark uses: one worker, uvloop, httptools, no access log."""

    name = "uvicorn"

    def __init__(
        self,
        app: str,
        core: int,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ):
        super().__init__(core, port, env, startup_timeout_s)
        self.app = app
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", self.app,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--loop", "uvloop",
            "--http", "httptools",
            "--no-access-log",
            "--workers", "1",
            "--log-level", "warning",
            *self.extra_args,
        ]  # fmt: skip


class ConstantServer(_PinnedServer):
    """benchmarks.constant_server: the load generator's ceiling, not a subject."""

    name = "constant"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.constant_server", "--port", str(self.port)]
