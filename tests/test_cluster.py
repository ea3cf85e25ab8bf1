"""The profile, pipeline, due-queue and scheduler suites again, on a real
3-primary Redis Cluster started here, plus the API end to end on it. The tests
are the same functions as in their own modules (imported below); only the
`redis` fixture they receive is a cluster client. A CROSSSLOT error anywhere
fails them."""

from __future__ import annotations

import pytest
import redis as redis_sync
from redis.asyncio.cluster import RedisCluster

from engine.settings import Settings
from engine.store.client import connect
from engine.store.local_server import LocalRedisCluster
from tests.conftest import ROOT, signed, start_api, stop_api
from tests.test_due_queue import *  # noqa: F403 - the same tests, on the cluster
from tests.test_pipeline import *  # noqa: F403
from tests.test_scheduler import (  # noqa: F401 - the ones that take the `redis` fixture
    test_a_failing_channel_is_retried_through_the_queue_then_dead_lettered,
    test_a_message_that_fails_for_good_alerts_the_operator_once,
    test_a_redis_that_forgot_its_scripts_still_gets_every_step,
    test_consent_withdrawn_while_a_message_waits_sends_nothing,
    test_ten_concurrent_sends_against_a_cap_of_two_send_exactly_two,
    test_unsubscribe_cancels_everything_queued_for_the_channel,
)


@pytest.fixture(scope="module")
def cluster():
    with LocalRedisCluster(3) as started:
        yield started


@pytest.fixture
async def redis(cluster):
    """Overrides conftest's single-server client for every test in this module."""
    cluster.flush()
    client = connect(Settings(redis_url=cluster.url))
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


async def test_the_cluster_spreads_people_over_every_primary(redis, cluster):
    from engine.events import Event
    from tests.conftest import make_pipeline

    pipeline = make_pipeline(redis, "segments: [{id: x, when: {trait: a, equals: 1}}]")
    now = 1_764_000_000_000
    await pipeline.apply([Event(f"e{n}", "page_view", f"p{n}", now) for n in range(60)], now)
    per_node = []
    for node in cluster.nodes:
        with redis_sync.Redis(port=node.port) as client:
            per_node.append(client.dbsize())
    assert all(count > 0 for count in per_node), per_node


def test_the_api_on_the_cluster(cluster, tmp_path):
    cluster.flush()
    server = start_api(cluster.url, tmp_path, ATTIMO_KEY_PREFIX="api-on-cluster")
    try:
        server.post_catalog((ROOT / "examples" / "catalog.yaml").read_text())
        pricing = {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}
        events = [{"id": f"c{n}", "type": "page_view", "user_id": "u-c", "user_sig": signed("u-c"),
                   "anonymous_id": f"a-c{n}", "properties": pricing} for n in range(3)]
        with server.browser() as client:
            assert client.post("/v1/events", json={"events": events}).json() == {"accepted": 3, "duplicates": 0}
            answer = client.post("/v1/decide", json={"user_id": "u-c", "user_sig": signed("u-c"),
                                                     "placements": ["home_hero", "sidebar"]}).json()
        assert answer["placements"]["home_hero"]["offer"] == "crm_trial"
        assert "fallback" not in answer
        with server.server() as client:
            assert client.get("/v1/people/u-c").json()["exists"]
            assert client.get("/readyz").status_code == 200
            metrics = client.get("/metrics").text
        assert "attimo_redis_errors_total{" not in metrics
        log = server.log_path.read_text()
        assert "CROSSSLOT" not in log and "Traceback" not in log, log[-2000:]
    finally:
        stop_api(server)
