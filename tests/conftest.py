"""Real services for the tests: a redis-server on a free port (ours, so we may
flush it), and `attimo serve` as a subprocess speaking HTTP on another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from engine.catalog.compile import CatalogHolder, compile_catalog, parse_catalog_text
from engine.ingest.identity import sign_user_id
from engine.ingest.pipeline import Pipeline
from engine.store.keys import Keys
from engine.store.local_server import LocalRedis, free_port
from engine.store.profiles import ProfileStore
from tests.followup_sinks import SmtpSink, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-server-token"
SITE_KEY = "test-site-key"
SITE_SECRET = "test-site-secret"
ORIGIN = "http://shop.example"


def wait_until(check, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "condition"):
    """Poll with a deadline instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def redis_server():
    with LocalRedis() as server:
        yield server


@pytest.fixture
async def redis(redis_server):
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def redis_sync_client(redis_server):
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def make_pipeline(redis, catalog_yaml: str, *, dedupe_ttl_s: int = 86_400) -> Pipeline:
    catalog = compile_catalog(parse_catalog_text(catalog_yaml))
    store = ProfileStore(redis, Keys(), dedupe_ttl_s=dedupe_ttl_s, profile_ttl_s=400 * 86_400)
    return Pipeline(store, CatalogHolder(catalog, catalog_yaml))


@dataclass
class ApiServer:
    base_url: str
    redis_url: str
    process: subprocess.Popen
    log_path: Path

    def client(self, **headers) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10)

    def server(self) -> httpx.Client:
        return self.client(Authorization=f"Bearer {TOKEN}")

    def browser(self, **headers) -> httpx.Client:
        return self.client(**{"X-Attimo-Key": SITE_KEY, **headers})

    def post_catalog(self, text: str) -> dict:
        with self.server() as client:
            answer = client.post("/v1/admin/catalog", content=text)
        assert answer.status_code == 200, answer.text
        return answer.json()


def start_api(redis_url: str, tmp_dir: Path, **env) -> ApiServer:
    port = free_port()
    log_path = tmp_dir / f"api-{port}.log"
    environment = {
        **os.environ,
        "ATTIMO_REDIS_URL": redis_url,
        "ATTIMO_SERVER_TOKEN": TOKEN,
        "ATTIMO_SITE_KEY": SITE_KEY,
        "ATTIMO_SITE_SECRET": SITE_SECRET,
        "ATTIMO_ALLOWED_ORIGINS": ORIGIN,
        "ATTIMO_CATALOG": str(ROOT / "examples" / "catalog.yaml"),
        "ATTIMO_CATALOG_POLL_S": "0.2",
        "ATTIMO_SCHEDULER": "off",  # tests that send messages turn it on
        **env,
    }
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)],
        env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    log.close()
    server = ApiServer(f"http://127.0.0.1:{port}", redis_url, process, log_path)

    def ready():
        if process.poll() is not None:
            raise AssertionError(f"attimo serve exited:\n{log_path.read_text()}")
        try:
            return httpx.get(f"{server.base_url}/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 20, 0.05, "attimo serve to answer /healthz")
    return server


def stop_api(server: ApiServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def api(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("api"))
    yield server
    stop_api(server)


@pytest.fixture
def clean_api(api, redis_sync_client):
    """The shared API with an empty Redis and the demo catalog in force."""
    api.post_catalog((ROOT / "examples" / "catalog.yaml").read_text())
    return api


def signed(user_id: str) -> str:
    return sign_user_id(SITE_SECRET, user_id)


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd) on a free port; keeps what it received."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def receiver():
    """A real HTTP server for webhooks on a free port; keeps what it received."""
    sink = WebhookReceiver().start()
    yield sink
    sink.stop()
