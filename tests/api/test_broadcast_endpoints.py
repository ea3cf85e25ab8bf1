"""Broadcasts over HTTP against `attimo serve` with its embedded scheduler and a
real SMTP sink: an operator starts one, the scheduler process walks the tracked
segment and sends, the signed open pixel counts for it, GET /v1/broadcasts
shows the progress and the KPIs, and a broadcast done is neither started nor
cancelled again."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from engine.testing.processes import start_api, stop_api, wait_until

CATALOG = """
segments:
  - id: subscribers
    track: true
    when: {trait: newsletter, equals: true}
templates:
  newsletter:
    subject: "News for {{ traits.name }}"
    text: "What is new."
    html: '<p><a href="https://shop.example/news">Read it</a></p>'
broadcasts:
  - id: news
    segment: subscribers
    channel: email
    template: newsletter
    rate: 100
"""
READER = "test-read-token"
PEOPLE = ["bc-ana", "bc-ben", "bc-cy"]


@pytest.fixture(scope="module")
def broadcast_api(redis_server, tmp_path_factory):
    from engine.testing.sinks import SmtpSink

    smtp = SmtpSink().start()
    server = start_api(redis_server.url, tmp_path_factory.mktemp("broadcasts"), ATTIMO_KEY_PREFIX="bcast",
                       ATTIMO_SCHEDULER="embedded", ATTIMO_SCHEDULER_POLL_MS="20",
                       ATTIMO_SMTP_PORT=str(smtp.port), ATTIMO_READ_TOKEN=READER)
    server.post_catalog(CATALOG)
    yield server, smtp
    stop_api(server)
    smtp.stop()


def local(url: str, base: str) -> str:
    parts = urlsplit(url.replace("&amp;", "&"))
    return f"{base}{parts.path}?{parts.query}"


def test_an_operator_starts_a_broadcast_and_reads_its_progress_and_kpis(broadcast_api):
    server, smtp = broadcast_api
    with server.server() as client:
        for person in PEOPLE:
            answer = client.post("/v1/events", json={"events": [
                {"id": f"{person}-c", "type": "consent", "user_id": person,
                 "properties": {"channel": "email", "purpose": "*", "granted": True}},
                {"id": f"{person}-i", "type": "identify", "user_id": person,
                 "traits": {"email": f"{person}@example.com", "name": person[3:].title(), "newsletter": True}}]})
            assert answer.status_code == 202, answer.text
        [listed] = client.get("/v1/broadcasts").json()["broadcasts"]
        assert (listed["id"], listed["state"], listed["queued"], listed["at"]) == ("news", "scheduled", 0, None)
        with server.client(Authorization=f"Bearer {READER}") as reader:
            assert reader.get("/v1/broadcasts/news").status_code == 200
            assert reader.post("/v1/admin/broadcasts/news/start").status_code == 403
        assert client.get("/v1/broadcasts/nope").status_code == 404

        answer = client.post("/v1/admin/broadcasts/news/start")
        assert answer.json() == {"id": "news", "state": "running", "was": "scheduled"}
        assert client.post("/v1/admin/broadcasts/news/start").json()["was"] == "running"  # changes nothing
        wait_until(lambda: len(smtp.messages) >= len(PEOPLE), what="an email for every member")
        assert sorted(r[0] for r, _ in smtp.messages) == [f"{p}@example.com" for p in PEOPLE]

        html = smtp.messages[0][1].get_body(("html",)).get_content()
        [pixel] = re.findall(r'<img src="([^"]+)"', html)
        assert client.get(local(pixel, server.base_url)).status_code == 200
        report = wait_until(lambda: (r := client.get("/v1/broadcasts/news").json())["sent"] == len(PEOPLE) and r,
                            what="the sends counted")
        assert (report["state"], report["queued"]) == ("running", len(PEOPLE))
        kpis = report["kpis"]
        assert (kpis["entered"], kpis["sent_by_channel"], kpis["opened"]) == (3, {"email": 3}, 1)
        assert client.get("/v1/kpis").json()["broadcasts"]["news"]["opened"] == 1

        answer = client.post("/v1/admin/broadcasts/news/cancel")
        assert answer.json() == {"id": "news", "state": "cancelled", "was": "running", "dropped": 0}
        answer = client.post("/v1/admin/broadcasts/news/start")
        assert answer.status_code == 409 and answer.json()["state"] == "cancelled"
