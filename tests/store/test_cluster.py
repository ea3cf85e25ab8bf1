"""On a real 3-primary Redis Cluster: people spread over every primary, and
the API end to end. The profile, pipeline, due-queue and scheduler suites run
on the cluster too, from their own modules: conftest's `redis` fixture is
parametrised over the single server and the cluster for them (ON_BOTH), and
every test here gets the cluster only. A CROSSSLOT error anywhere fails them."""

from __future__ import annotations

import pytest
import redis as redis_sync

from engine.testing.processes import start_api, stop_api
from tests.conftest import ROOT, signed


@pytest.fixture
def cluster(redis_cluster):
    return redis_cluster


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
