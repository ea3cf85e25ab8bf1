"""Real services for the tests (started by engine.testing): a redis-server on a
free port (ours, so we may flush it), a 3-primary Redis Cluster for the suites
that run on both, and `attimo serve` as a subprocess speaking HTTP on another."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_sync
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.catalog.model import CatalogHolder
from engine.ingest.identity import sign_user_id
from engine.ingest.pipeline import Pipeline
from engine.settings import Settings
from engine.store.client import connect
from engine.store.keys import Keys
from engine.store.profiles import ProfileStore
from engine.testing.processes import (
    SITE_SECRET,
    RedisCluster,
    RedisServer,
    start_api,
    stop_api,
)
from engine.testing.sinks import SmtpSink, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent

# The suites that run twice, on a single redis-server and on a Redis Cluster
# (where a CROSSSLOT error anywhere fails them): module -> the tests taking the
# `redis` fixture that do, None for all of them. tests/store/test_cluster.py's own
# tests run on the cluster only.
ON_BOTH = {
    "test_budgets": None,
    "test_outcome_stores": None,
    "test_due_queue": None,
    "test_export": None,
    "test_pipeline": None,
    "test_membership": None,
    "test_lookup": None,
    "test_ops_series": None,
    "test_broadcasts": {
        "test_a_walk_done_again_after_a_crash_sends_nothing_twice",
        "test_cancel_drops_what_is_still_queued_and_stops_the_walk",
        "test_a_purchase_after_it_counts_for_the_treated_or_the_held_out",
    },
    "test_scheduler": {
        "test_a_failing_channel_is_retried_through_the_queue_then_dead_lettered",
        "test_a_message_that_fails_for_good_alerts_the_operator_once",
        "test_a_redis_that_forgot_its_scripts_still_gets_every_step",
        "test_consent_withdrawn_while_a_message_waits_sends_nothing",
        "test_ten_concurrent_sends_against_a_cap_of_two_send_exactly_two",
        "test_unsubscribe_cancels_everything_queued_for_the_channel",
    },
}
ON_THE_CLUSTER_ONLY = {"test_cluster"}


def redis_backends(module: str, test: str) -> list[str]:
    if module in ON_THE_CLUSTER_ONLY:
        return ["cluster"]
    if module in ON_BOTH and (ON_BOTH[module] is None or test in ON_BOTH[module]):
        return ["single", "cluster"]
    return ["single"]


def pytest_generate_tests(metafunc):
    if "redis" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    backends = redis_backends(module, metafunc.function.__name__)
    if backends != ["single"]:
        metafunc.parametrize("redis", backends, indirect=True)


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster():
    """Started the first time a test runs on the cluster."""
    with RedisCluster(3) as cluster:
        yield cluster


@pytest.fixture
async def redis(request, redis_server):
    """An empty Redis through the product's own client (engine/store/client.py):
    the single server, or for the suites of ON_BOTH also the cluster (the
    test's id then ends in [single] or [cluster])."""
    if getattr(request, "param", "single") == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        client = connect(Settings(redis_url=cluster.url))
        assert isinstance(client, AsyncRedisCluster)
    else:
        client = connect(Settings(redis_url=redis_server.url))
        await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server):
    """The suite's Redis as it is (not flushed): what a module's API left in it."""
    client = Redis.from_url(redis_server.url)
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


@pytest.fixture(scope="module")
def sinks():
    """A real SMTP server, a push gateway and an SMS gateway that is down (500)
    for the whole module: what the follow-up API modules send to."""
    smtp, push, failing = SmtpSink().start(), WebhookReceiver().start(), WebhookReceiver().start()
    failing.statuses = [500] * 1000
    yield smtp, push, failing
    for sink in (smtp, push, failing):
        sink.stop()


@pytest.fixture
def receiver():
    """A real HTTP server for webhooks on a free port; keeps what it received."""
    sink = WebhookReceiver().start()
    yield sink
    sink.stop()


# Debian's Chromium: a browser download is impossible where the tests run.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium for a module's browser tests (the snippet, the console)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
