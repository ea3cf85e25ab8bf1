"""KPIs over HTTP (SCENARIOS 14) against `attimo serve` with its embedded
scheduler and a real SMTP sink: people enter a journey with a 50 % hold-out,
the treated get an email, some open it (one twice), some click, one
unsubscribes, treated and held-out people buy (one purchase sent twice), and
GET /v1/kpis counts each of these once, with the rates and the uplift. Per
offer: impressions and clicks a browser sends, purchases after them or naming a
discount's code, the discount's cost and ROI."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.decisions.ids import DecisionSigner
from engine.followups.transitions import held_out
from engine.ingest.identity import known
from engine.testing.processes import SITE_SECRET, start_api, stop_api, wait_until

CATALOG = """
placements: [hero]
offers:
  - id: hello
    kind: content
    placements: [hero]
    content: {title: Hello}
  - id: spring10
    kind: discount
    placements: [hero]
    value: 10
    content: {title: "10% off", code: SPRING10}
templates:
  promo:
    subject: "Spring deal, {{ traits.name | default('friend') }}"
    text: "Ten percent off everything this week."
    html: '<p><a href="https://shop.example/spring">See the deal</a></p>'
journeys:
  - id: spring_promo
    trigger: {event: signup}
    holdout: 50
    steps:
      - send: {channel: email, template: promo}
"""
PEOPLE = [f"u-k{n}" for n in range(24)]
SIGNER = DecisionSigner.from_secret(SITE_SECRET)


@pytest.fixture(scope="module")
def kpi_api(redis_server, tmp_path_factory):
    from engine.testing.sinks import SmtpSink

    smtp = SmtpSink().start()
    server = start_api(redis_server.url, tmp_path_factory.mktemp("kpis"), ATTIMO_KEY_PREFIX="kpi",
                       ATTIMO_SCHEDULER="embedded", ATTIMO_SCHEDULER_POLL_MS="20",
                       ATTIMO_SMTP_PORT=str(smtp.port))
    server.post_catalog(CATALOG)
    yield server, smtp
    stop_api(server)
    smtp.stop()


def events(client, *batch) -> None:
    answer = client.post("/v1/events", json={"events": list(batch)})
    assert answer.status_code == 202, answer.text


def local(url: str, base: str) -> str:
    """A link from an email, pointed at this test's server (only the query is signed)."""
    parts = urlsplit(url.replace("&amp;", "&"))
    return f"{base}{parts.path}?{parts.query}"


def test_kpis_count_each_thing_once_and_measure_the_uplift(kpi_api):
    server, smtp = kpi_api
    journey = compile_catalog(parse_catalog_text(CATALOG)).journeys.by_id["spring_promo"]
    control = [p for p in PEOPLE if held_out(known(p), journey)]  # the engine's person: u:<user id>
    treated = [p for p in PEOPLE if p not in control]
    assert control and treated  # a 50 % hold-out of 24 people splits them
    with server.server() as client:
        for person in PEOPLE:
            events(client,
                   {"id": f"{person}-c", "type": "consent", "user_id": person,
                    "properties": {"channel": "email", "purpose": "*", "granted": True}},
                   {"id": f"{person}-i", "type": "identify", "user_id": person,
                    "traits": {"email": f"{person}@example.com"}},
                   {"id": f"{person}-s", "type": "signup", "user_id": person})
        wait_until(lambda: len(smtp.messages) >= len(treated), what="an email for every treated person")
        by_person = {recipients[0].split("@")[0]: email for recipients, email in smtp.messages}
        assert sorted(by_person) == sorted(treated)

        openers, clickers = treated[:3], treated[:2]
        for person in openers:
            html = by_person[person].get_body(("html",)).get_content()
            [pixel] = re.findall(r'<img src="([^"]+)"', html)
            for _ in range(2 if person == openers[0] else 1):  # a mail client loading the pixel again
                assert client.get(local(pixel, server.base_url)).status_code == 200
        for person in clickers:
            html = by_person[person].get_body(("html",)).get_content()
            [link] = re.findall(r'href="([^"]+)"', html)
            assert client.get(local(link, server.base_url)).status_code == 302
        leaver = treated[-1]
        unsubscribe = by_person[leaver]["List-Unsubscribe"].strip("<>")
        assert client.post(local(unsubscribe, server.base_url)).status_code == 200  # the page's button

        purchase = {"id": f"{treated[0]}-buy", "type": "purchase", "user_id": treated[0],
                    "properties": {"revenue": 100}}
        events(client, purchase)
        events(client, purchase)  # the client resends: counted once
        events(client, {"id": f"{treated[1]}-buy", "type": "purchase", "user_id": treated[1],
                        "properties": {"value": 50.5}})
        events(client, {"id": f"{control[0]}-buy", "type": "purchase", "user_id": control[0],
                        "properties": {"revenue": 30}})
        report = client.get("/v1/kpis").json()

    spring = report["journeys"]["spring_promo"]
    n, m = len(treated), len(control)
    assert (spring["entered"], spring["held_out"]) == (n, m)
    assert spring["sent"] == n and spring["sent_by_channel"] == {"email": n}
    assert (spring["opened"], spring["clicked"]) == (3, 2)
    assert spring["open_rate"] == round(3 / n, 4) and spring["click_rate"] == round(2 / n, 4)
    assert (spring["converted"], spring["converted_control"]) == (2, 1)
    assert spring["conversion_rate"] == round(2 / n, 4) and spring["conversion_rate_control"] == round(1 / m, 4)
    assert spring["uplift"] == round(round(2 / n, 4) - round(1 / m, 4), 4)
    assert (spring["revenue"], spring["revenue_control"]) == (150.5, 30.0)
    email = report["channels"]["email"]
    assert (email["sent"], email["opened"], email["clicked"], email["unsubscribed"]) == (n, 3, 2, 1)
    assert email["unsubscribe_rate"] == round(1 / n, 4)


DAY = 86_400_000


def test_offer_kpis_count_views_clicks_conversions_and_the_discounts_roi(kpi_api):
    """What a browser sends for filled slots (impression, click: site key,
    anonymous ids) and what people buy: a purchase within 7 days of seeing an
    offer converts for it; one naming a discount's code redeems it and costs
    value % of its revenue; an offer seen 8 days before the purchase, an offer
    the catalog lacks, and a purchase resent count nothing more."""
    server, _ = kpi_api
    now = int(time.time() * 1000)  # the server's clock is the wall clock

    decisions: dict[str, str] = {}

    def slot(eid: str, kind: str, person: str, offer: str, ts: int = now) -> dict:
        # The decision id the API gave this visitor for this offer (what the
        # snippet sends back, the same again when it resends); minted here with
        # the server's secret, decided now (ts is the client's).
        decision = decisions.setdefault(eid, SIGNER.issue(f"a:{person}", [offer], now // 1000))
        return {"id": eid, "type": kind, "anonymous_id": person, "ts": ts,
                "properties": {"offer": offer, "placement": "hero", "decision_id": decision}}

    def buy(eid: str, person: str, revenue: float, **extra) -> dict:
        return {"id": eid, "type": "purchase", "anonymous_id": person, "ts": now + 1,
                "properties": {"revenue": revenue, **extra}}

    with server.browser() as browser:
        for batch in ([slot("o1", "impression", "a-1", "spring10"), slot("o2", "impression", "a-1", "spring10"),
                       slot("o3", "click", "a-1", "spring10")],
                      [slot("o4", "impression", "a-2", "spring10"), slot("o5", "impression", "a-3", "hello"),
                       slot("o6", "impression", "a-4", "hello", now - 8 * DAY),
                       slot("o7", "impression", "a-5", "made_up")],
                      [slot("o1", "impression", "a-1", "spring10")]):  # resent: counted once
            answer = browser.post("/v1/events", json={"events": batch})
            assert answer.status_code == 202, answer.text
    with server.server() as client:
        purchases = [buy("b1", "a-1", 200, code="SPRING10"), buy("b1", "a-1", 200, code="SPRING10"),
                     buy("b2", "a-3", 50), buy("b3", "a-4", 80), buy("b4", "a-6", 100, coupon="SPRING10")]
        for purchase in purchases:
            events(client, purchase)
        report = client.get("/v1/kpis").json()["offers"]

    assert set(report) == {"hello", "spring10"}
    spring = report["spring10"]
    assert {k: spring[k] for k in ("impressions", "viewers", "clicks", "clickers", "converted", "redeemed")} == {
        "impressions": 3, "viewers": 2, "clicks": 1, "clickers": 1, "converted": 1, "redeemed": 2}
    assert (spring["click_through_rate"], spring["conversion_rate"]) == (round(1 / 3, 4), 0.5)
    # a-1 saw it and used the code (200), a-6 only used the code (100): 10 % of 300 given away.
    assert (spring["revenue"], spring["discount_cost"], spring["roi"]) == (300.0, 30.0, 9.0)
    hello = report["hello"]
    assert (hello["impressions"], hello["viewers"], hello["converted"], hello["revenue"]) == (2, 2, 1, 50.0)
    assert (hello["discount_cost"], hello["roi"]) == (0.0, None)  # not a discount
