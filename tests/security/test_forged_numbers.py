"""Numbers a browser cannot forge: impressions and clicks count only with a
decision id the API issued to that visitor for that offer; money counts only
from a server's purchases (a browser's are kept apart, never in revenue or
ROI); amounts are bounded. Through a real `attimo serve`."""

from __future__ import annotations

import time

import pytest

from engine.decisions.ids import DecisionSigner
from engine.testing.processes import SITE_SECRET, start_api, stop_api

CATALOG = """
placements: [hero, side]
offers:
  - {id: deal, kind: discount, placements: [hero], value: 20, content: {title: Deal, code: DEAL20}}
  - {id: other, kind: content, placements: [side], content: {title: Other}}
"""


@pytest.fixture
def shop(redis_server, redis_sync_client, tmp_path):
    server = start_api(redis_server.url, tmp_path, ATTIMO_KEY_PREFIX="forge")
    server.post_catalog(CATALOG)
    yield server
    stop_api(server)


def decision(shop, visitor: str) -> dict:
    with shop.browser() as client:
        answer = client.post("/v1/decide", json={"anonymous_id": visitor, "placements": ["hero", "side"]})
    return answer.json()


def send(client, *events: dict) -> None:
    answer = client.post("/v1/events", json={"events": list(events)})
    assert answer.status_code == 202, answer.text


def slot(eid: str, kind: str, visitor: str, offer: str, decision_id: str) -> dict:
    return {"id": eid, "type": kind, "anonymous_id": visitor,
            "properties": {"offer": offer, "placement": "hero", "decision_id": decision_id}}


def kpis(shop) -> dict:
    with shop.server() as client:
        return client.get("/v1/kpis").json()


def test_forged_impressions_and_browser_revenue_count_nothing(shop):
    with shop.browser() as browser:
        send(browser, slot("f1", "impression", "a-forger", "deal", "d-made-up"),
             {"id": "f2", "type": "purchase", "anonymous_id": "a-forger",
              "properties": {"revenue": 1e15, "code": "DEAL20"}})
    report = kpis(shop)
    deal = report["offers"]["deal"]
    assert (deal["impressions"], deal["converted"], deal["redeemed"], deal["revenue"]) == (0, 0, 0, 0.0)
    assert report["unverified_purchases"] == 1


def test_a_decision_counts_for_its_visitor_and_its_offers_only(shop):
    issued = decision(shop, "a-real")
    assert issued["placements"]["hero"]["offer"] == "deal"
    decision_id = issued["decision_id"]
    with shop.browser() as browser:
        send(browser, slot("r1", "impression", "a-real", "deal", decision_id),
             slot("r2", "click", "a-real", "deal", decision_id),
             slot("r3", "impression", "a-thief", "deal", decision_id),  # another visitor replays it
             slot("r4", "impression", "a-real", "spring_sale", decision_id))  # an offer it did not choose
    deal = kpis(shop)["offers"]["deal"]
    assert (deal["impressions"], deal["viewers"], deal["clicks"]) == (1, 1, 1)


def test_a_decision_id_replayed_or_stale_counts_once_or_not_at_all(shop):
    issued = decision(shop, "a-replay")["decision_id"]
    stale = DecisionSigner.from_secret(SITE_SECRET).issue("a:a-old", ["deal"], int(time.time()) - 2 * 86_400)
    old_ts = (int(time.time()) - 2 * 86_400 + 1) * 1000
    with shop.browser() as browser:
        send(browser, *[slot(f"p{n}", "impression", "a-replay", "deal", issued) for n in range(5)])
        send(browser, {**slot("s1", "impression", "a-old", "deal", stale), "ts": old_ts})  # ts claims it fresh
    deal = kpis(shop)["offers"]["deal"]
    assert (deal["impressions"], deal["viewers"]) == (1, 1)


def test_an_offer_that_is_not_text_is_ignored_not_a_500(shop):
    with shop.browser() as browser:
        answer = browser.post("/v1/events", json={"events": [
            {"id": "l1", "type": "impression", "anonymous_id": "a-list", "properties": {"offer": ["deal"]}}]})
    assert answer.status_code == 202
    assert kpis(shop)["offers"]["deal"]["impressions"] == 0


def test_only_server_purchases_count_and_amounts_are_bounded(shop):
    issued = decision(shop, "a-buyer")
    with shop.browser() as browser:
        send(browser, slot("b0", "impression", "a-buyer", "deal", issued["decision_id"]))
    with shop.server() as server:
        send(server, {"id": "b1", "type": "purchase", "anonymous_id": "a-buyer",
                      "properties": {"revenue": 200, "code": "DEAL20"}})
        send(server, {"id": "b2", "type": "purchase", "anonymous_id": "a-buyer",
                      "properties": {"revenue": -50, "code": "DEAL20"}})  # a refund is not negative revenue
        send(server, {"id": "b3", "type": "purchase", "anonymous_id": "a-buyer",
                      "properties": {"revenue": 1e15, "code": "DEAL20"}})  # past any one purchase
        infinite = server.post("/v1/events", content='{"events": [{"id": "b4", "type": "purchase", '
                               '"anonymous_id": "a-buyer", "properties": {"revenue": 1e999}}]}',
                               headers={"Content-Type": "application/json"})
    assert infinite.status_code == 422
    deal = kpis(shop)["offers"]["deal"]
    assert (deal["converted"], deal["revenue"], deal["discount_cost"]) == (1, 200.0, 40.0)
