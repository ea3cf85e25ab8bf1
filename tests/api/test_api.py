"""The API end to end over HTTP: `attimo serve` as a subprocess against the
suite's redis-server. Events in, decisions out, auth, bad input, catalog swaps,
and the operational endpoints, each asserted on what the server answers and
what the profile holds afterwards."""

from __future__ import annotations

import re
import signal
import socket
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.endpoints import HTTPEndpoint

from api.app import create_app
from engine.settings import Settings
from engine.testing.processes import ORIGIN, SITE_KEY, TOKEN, start_api, stop_api, wait_until
from tests.conftest import ROOT, signed

CATALOG = """
protected_traits: [vip]
placements: {hero: {}, side: {}}
rules:
  pricing_fan: {event: page_view, where: {page_type: pricing}, within: 7d, count: {at_least: 2}}
segments:
  - {id: vips, when: {trait: vip, equals: true}}
offers:
  - {id: vip_gift, kind: discount, placements: [hero], priority: 100, value: 30,
     content: {title: VIP gift}, when: {segment: vips}}
  - {id: trial, kind: banner, placements: [hero, side], priority: 50, content: {title: Try it},
     cap: {impressions: 2, within: 7d}, when: {rule: pricing_fan}, exclude: {trait: customer, equals: true}}
  - {id: mobile_only, kind: content, placements: [side], priority: 20, content: {title: Get the app},
     when: {context: device, equals: mobile}}
  - {id: high_score, kind: content, placements: [hero, side], priority: 10, score: 5, content: {title: five}}
  - {id: low_score, kind: content, placements: [hero, side], priority: 10, score: 1, content: {title: one}}
  - {id: later, kind: content, placements: [hero], priority: 1000, start: 2099-01-01, content: {title: later}}
"""
DEMO_CATALOG = (ROOT / "examples" / "catalog.yaml").read_text()


@pytest.fixture
def shop(api, redis_sync_client):
    """The shared API with an empty Redis and this module's catalog in force;
    the demo catalog is put back afterwards for the other modules."""
    api.post_catalog(CATALOG)
    yield api
    api.post_catalog(DEMO_CATALOG)


def pricing_view(event_id: str, person: str = "a-1", **extra) -> dict:
    return {"id": event_id, "type": "page_view", "anonymous_id": person,
            "properties": {"path": "/pricing", "page_type": "pricing"}, **extra}


def send(server, events: list[dict], **headers) -> httpx.Response:
    with server.browser(**headers) as client:
        return client.post("/v1/events", json={"events": events})


def decide(server, person: str = "a-1", placements=("hero", "side"), explain: bool = False, **body) -> dict:
    # Explain is for operators (a read token): the reasons would tell a browser too much.
    with (server.server() if explain else server.browser()) as client:
        answer = client.post("/v1/decide" + ("?explain=1" if explain else ""),
                             json={"anonymous_id": person, "placements": list(placements), **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def offers(answer: dict) -> dict:
    return {name: (chosen or {}).get("offer") for name, chosen in answer["placements"].items()}


def person(server, person_id: str) -> dict:
    with server.server() as client:
        answer = client.get(f"/v1/people/{person_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def pricing_count(profile: dict) -> float:
    (count,) = [value for label, value in profile["features"].items() if "pricing" in label]
    return count


# -- events in, decisions out ------------------------------------------------------


def test_the_next_decide_after_a_202_sees_the_events(shop):
    before = offers(decide(shop))
    assert before["hero"] == "high_score"  # priority tie broken by the declared score
    answer = send(shop, [pricing_view("e1"), pricing_view("e2")])
    assert answer.status_code == 202
    assert answer.json() == {"accepted": 2, "duplicates": 0}
    after = offers(decide(shop))
    assert after == {"hero": "trial", "side": "high_score"}  # never the same offer twice


def test_the_same_batch_sent_five_times_changes_the_profile_once(shop):
    batch = [pricing_view("d1"), pricing_view("d2"), pricing_view("d3")]
    answers = [send(shop, batch).json() for _ in range(5)]
    assert answers[0] == {"accepted": 3, "duplicates": 0}
    assert answers[1:] == [{"accepted": 0, "duplicates": 3}] * 4
    profile = person(shop, "a:a-1")
    assert pricing_count(profile) == 3
    assert profile["version"] == 1


def test_event_times_as_epoch_ms_iso_absent_or_in_the_future(shop):
    now = datetime.now(UTC)
    send(shop, [
        pricing_view("t-old", ts=(now - timedelta(days=8)).isoformat()),  # outside the 7-day window
        pricing_view("t-iso", ts=(now - timedelta(days=2)).isoformat().replace("+00:00", "Z")),
        pricing_view("t-ms", ts=int((now - timedelta(days=1)).timestamp() * 1000)),
        pricing_view("t-none"),
        pricing_view("t-future", ts=int((now + timedelta(days=30)).timestamp() * 1000)),
    ])
    profile = person(shop, "a:a-1")
    assert pricing_count(profile) == 4
    last_seen = datetime.fromisoformat(profile["last_seen"])
    assert last_seen <= datetime.now(UTC) + timedelta(seconds=1)  # the future stamp was clamped
    assert datetime.fromisoformat(profile["first_seen"]) < now - timedelta(days=7)


def test_an_unknown_person_and_an_unknown_placement_keep_their_defaults(shop):
    answer = decide(shop, person="nobody-yet", placements=("hero", "nowhere"), explain=True)
    assert answer["placements"]["nowhere"] is None
    assert answer["explain"]["nowhere"] == {"error": "no such placement in the catalog"}
    assert "fallback" not in answer
    assert answer["placements"]["hero"]["offer"] == "high_score"


def test_explain_lists_every_candidate_with_why_it_was_not_chosen(shop):
    hero = decide(shop, placements=("hero",), explain=True)["explain"]["hero"]["offers"]
    by_offer = {row["offer"]: row for row in hero}
    assert by_offer["later"]["reason"] == "not started"
    assert by_offer["vip_gift"]["reason"] == "conditions not met"
    assert by_offer["high_score"]["chosen"] is True
    assert [row["offer"] for row in hero] == ["later", "vip_gift", "trial", "high_score", "low_score"]


def test_impressions_count_toward_the_cap(shop):
    send(shop, [pricing_view("c1"), pricing_view("c2")])
    for n in range(2):
        chosen = decide(shop, placements=("hero",))
        assert offers(chosen)["hero"] == "trial"
        send(shop, [{"id": f"imp-{n}", "type": "impression", "anonymous_id": "a-1",
                     "properties": {"decision_id": chosen["decision_id"], "offer": "trial"}}])
    answer = decide(shop, placements=("hero",), explain=True)
    assert offers(answer)["hero"] == "high_score"
    trial = next(row for row in answer["explain"]["hero"]["offers"] if row["offer"] == "trial")
    assert trial["reason"] == "impression cap 2 reached"
    assert person(shop, "a:a-1")["impressions"]["trial"] == {"count": 2, "cap": 2}


def test_exclusions_by_trait_and_context_conditions(shop):
    send(shop, [pricing_view("x1"), pricing_view("x2")])
    with shop.server() as client:
        client.post("/v1/events", json={"events": [
            {"id": "x3", "type": "identify", "anonymous_id": "a-1", "traits": {"customer": True}}]})
    answer = decide(shop, context={"device": "mobile"}, explain=True)
    assert offers(answer) == {"hero": "high_score", "side": "mobile_only"}
    trial = next(row for row in answer["explain"]["hero"]["offers"] if row["offer"] == "trial")
    assert trial["reason"] == "excluded"


# -- auth -------------------------------------------------------------------------


def test_missing_or_unknown_credentials_are_401(shop):
    with shop.client() as client:
        answer = client.post("/v1/decide", json={"anonymous_id": "a-1", "placements": ["hero"]})
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/decide", headers={"X-Attimo-Key": "nope"},
                           json={"anonymous_id": "a-1", "placements": ["hero"]}).status_code == 401
        assert client.post("/v1/events", headers={"Authorization": "Bearer nope"},
                           json={"events": [pricing_view("z")]}).status_code == 401


def test_a_user_id_from_a_site_key_needs_its_signature(shop):
    event = {"id": "s1", "type": "page_view", "user_id": "u-7"}
    unsigned = send(shop, [event])
    assert unsigned.status_code == 403
    assert "user_sig" in unsigned.json()["error"]
    assert send(shop, [{**event, "user_sig": signed("u-8")}]).status_code == 403
    assert send(shop, [{**event, "user_sig": signed("u-7")}]).status_code == 202
    assert person(shop, "u-7")["exists"]
    with shop.browser() as client:
        forged = client.post("/v1/decide", json={"user_id": "u-7", "user_sig": "00" * 32, "placements": ["hero"]})
    assert forged.status_code == 403


def test_a_browser_cannot_set_a_protected_trait_but_the_server_can(shop):
    vip = {"id": "v1", "type": "identify", "anonymous_id": "a-1", "traits": {"vip": True}}
    answer = send(shop, [vip])
    assert answer.status_code == 403
    assert answer.json()["error"].endswith("a protected trait; only the server token sets it")
    assert "vip" not in person(shop, "a:a-1")["traits"]
    with shop.server() as client:
        assert client.post("/v1/events", json={"events": [vip]}).status_code == 202
    assert offers(decide(shop, placements=("hero",)))["hero"] == "vip_gift"


@pytest.mark.parametrize("link_event", ["email_open", "email_click"])
def test_a_browser_cannot_send_what_an_emails_signed_links_record(shop, link_event):
    forged = {"id": "f1", "type": link_event, "anonymous_id": "a-9", "properties": {"email": "welcome"}}
    answer = send(shop, [pricing_view("f0", "a-9"), forged])
    assert answer.status_code == 403
    assert answer.json()["error"].startswith(f"events[1].type: {link_event} is recorded by the email's signed links")
    assert not person(shop, "a:a-9")["exists"]  # the whole batch was refused
    with shop.server() as client:  # an ESP's webhook forwarded by the site's backend
        assert client.post("/v1/events", json={"events": [forged]}).status_code == 202
    assert person(shop, "a:a-9")["exists"]


def test_only_a_signed_user_or_the_server_sets_a_contact_address(shop):
    """An anonymous page could otherwise have Attimo email any address it typed."""
    typed = {"id": "m1", "type": "identify", "anonymous_id": "a-mail", "traits": {"email": "victim@example.com"}}
    answer = send(shop, [typed])
    assert answer.status_code == 403
    assert answer.json()["error"].startswith("events[0].traits.email: a contact address; only a signed user_id")
    assert not person(shop, "a:a-mail")["exists"]
    mine = {**typed, "user_id": "u-mail", "user_sig": signed("u-mail")}
    assert send(shop, [mine]).status_code == 202
    assert person(shop, "u-mail")["traits"]["email"] == "victim@example.com"


def test_server_only_endpoints_refuse_the_site_key(shop):
    with shop.browser() as client:
        assert client.get("/v1/people/a-1").status_code == 403
        assert client.post("/v1/admin/catalog", content=CATALOG).status_code == 403
        assert client.delete("/v1/people/a-1").status_code == 403


def test_a_signed_user_arriving_with_an_anonymous_id_takes_its_history_once(shop):
    send(shop, [pricing_view("m1", "a-m"), pricing_view("m2", "a-m")])
    login = {"id": "m3", "type": "login", "anonymous_id": "a-m", "user_id": "u-m", "user_sig": signed("u-m")}
    assert send(shop, [login]).json() == {"accepted": 1, "duplicates": 0}
    assert pricing_count(person(shop, "u-m")) == 2
    assert not person(shop, "a:a-m")["exists"]
    again = {**login, "id": "m4"}
    assert send(shop, [again]).status_code == 202
    assert pricing_count(person(shop, "u-m")) == 2
    with shop.browser() as client:
        answer = client.post("/v1/decide", json={"user_id": "u-m", "user_sig": signed("u-m"), "placements": ["hero"]})
    assert offers(answer.json())["hero"] == "trial"


def test_cors_allows_the_configured_origin_only(shop):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-attimo-key"}
    with shop.client() as client:
        allowed = client.options("/v1/decide", headers={"Origin": ORIGIN, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        refused = client.options("/v1/decide", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in refused.headers
        body = {"anonymous_id": "a-1", "placements": ["hero"]}
        simple = client.post("/v1/decide", json=body, headers={"Origin": ORIGIN, "X-Attimo-Key": SITE_KEY})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        other = client.post("/v1/decide", json=body, headers={"Origin": "https://evil.example", "X-Attimo-Key": SITE_KEY})
        assert "access-control-allow-origin" not in other.headers


# -- bad input --------------------------------------------------------------------


def test_malformed_json_is_400_with_a_reason(shop):
    with shop.browser() as client:
        for path in ("/v1/events", "/v1/decide"):
            answer = client.post(path, content=b'{"events": [', headers={"Content-Type": "application/json"})
            assert answer.status_code == 400
            assert answer.json()["error"].startswith("malformed JSON")


@pytest.mark.parametrize(("events", "field", "limit"), [
    ([pricing_view(f"n{i}") for i in range(501)], "events", 500),
    ([pricing_view("deep", properties={"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}})], "events[0].properties.a.b.c.d.e", 5),
    ([pricing_view("long", properties={"note": "x" * 4097})], "events[0].properties.note", 4096),
    ([pricing_view("wide", properties={f"p{i}": i for i in range(101)})], "events[0].properties", 100),
])
def test_limits_are_422_naming_the_field_and_the_limit(shop, events, field, limit):
    answer = send(shop, events)
    assert answer.status_code == 422
    assert answer.json()["field"] == field
    assert answer.json()["limit"] == limit
    assert not person(shop, "a:a-1")["exists"]  # the whole batch or nothing


def test_a_missing_event_id_is_422(shop):
    answer = send(shop, [{"type": "page_view", "anonymous_id": "a-1"}])
    assert answer.status_code == 422
    assert answer.json()["field"].startswith("events[0]")
    assert "id" in answer.json()["error"]
    with shop.browser() as client:
        answer = client.post("/v1/decide", json={"anonymous_id": "a-1"})
    assert answer.status_code == 422
    assert "placements" in answer.json()["error"]


def test_a_body_over_512_kb_is_413(shop):
    big = [pricing_view("big", properties={f"p{i}": "x" * 4000 for i in range(90)})] * 2
    assert send(shop, big).status_code == 413


def test_an_announced_body_over_512_kb_is_refused_before_it_is_sent(shop):
    host, port = shop.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall((f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nX-Attimo-Key: {SITE_KEY}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n").encode())
        answer = b""
        while not answer.endswith(b"}"):  # the JSON body may come in a second segment
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413")
    assert '"limit":524288' in answer


# -- catalog ------------------------------------------------------------------------


def test_a_bad_catalog_is_422_with_every_problem_and_the_old_one_stays(shop):
    broken = CATALOG.replace("kind: banner", "kind: poster").replace("priority: 50", "priority: high")
    with shop.server() as client:
        answer = client.post("/v1/admin/catalog", content=broken)
    assert answer.status_code == 422
    paths = {problem["path"] for problem in answer.json()["problems"]}
    assert {"offers[1].kind", "offers[1].priority"} <= paths
    assert offers(decide(shop, placements=("hero",)))["hero"] == "high_score"


def test_a_good_catalog_is_swapped_in_at_once(shop):
    answer = shop.post_catalog(CATALOG.replace("score: 5", "score: 0"))
    assert answer["offers"] == 6
    assert offers(decide(shop, placements=("hero",)))["hero"] == "low_score"


def test_sighup_reloads_the_catalog_file_and_keeps_the_old_one_if_broken(redis_server, tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    server = start_api(redis_server.url, tmp_path, ATTIMO_CATALOG=str(path), ATTIMO_KEY_PREFIX="sighup")
    try:
        def hero() -> str:
            return offers(decide(server, person="a-h", placements=("hero",)))["hero"]

        assert hero() == "high_score"
        path.write_text(CATALOG.replace("score: 5", "score: 0"))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: hero() == "low_score", 10, 0.05, "the reloaded catalog")
        path.write_text("offers: [{id: broken}]")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: b"catalog reload from" in server.log_path.read_bytes(), 10, 0.05, "the reload error")
        assert hero() == "low_score"
        assert server.process.poll() is None
    finally:
        stop_api(server)


# -- operations ---------------------------------------------------------------------


def test_health_and_readiness(shop):
    with shop.client() as client:
        assert client.get("/healthz").json() == {"ok": True}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert len(ready.json()["catalog"]) == 16


def served_methods(route) -> set[str]:
    """A function route's methods, or the handlers of an HTTPEndpoint class."""
    if isinstance(route.endpoint, type) and issubclass(route.endpoint, HTTPEndpoint):
        return {m for m in ("GET", "PUT", "POST", "DELETE", "PATCH") if hasattr(route.endpoint, m.lower())}
    return set(getattr(route, "methods", ()) or ())


def test_openapi_describes_every_route(shop):
    app = create_app(Settings(site_key=SITE_KEY, site_secret="s", server_token=TOKEN))  # the served routes
    # OpenAPI names a path parameter without Starlette's converter: {token:path} is {token}.
    routes = {(re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method) for route in app.routes
              for method in served_methods(route) if method != "HEAD" and route.include_in_schema}
    with shop.client() as client:
        schema = client.get("/openapi.json").json()
    described = {(path, method.upper()) for path, item in schema["paths"].items() for method in item}
    assert described == routes
    assert schema["paths"]["/v1/events"]["post"]["responses"]["413"]


def test_metrics_count_requests_events_and_decisions(shop):
    def sample(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    with shop.client() as client:
        before = client.get("/metrics").text
        send(shop, [pricing_view("mx1"), pricing_view("mx2")])
        send(shop, [pricing_view("mx1")])
        decide(shop, placements=("hero",))
        after = client.get("/metrics").text
    assert sample(after, "attimo_events_applied_total") - sample(before, "attimo_events_applied_total") == 2
    assert sample(after, "attimo_events_duplicate_total") - sample(before, "attimo_events_duplicate_total") == 1
    trial = 'attimo_decisions_total{offer="trial",placement="hero"}'
    assert sample(after, trial) - sample(before, trial) == 1
    count = 'attimo_request_seconds_count{endpoint="decide"}'
    assert sample(after, count) > sample(before, count)


def test_erasing_a_person_removes_the_profile(shop):
    send(shop, [pricing_view("er1")])
    with shop.server() as client:
        assert client.delete("/v1/people/a:a-1").json()["erased"] >= 2
    assert not person(shop, "a:a-1")["exists"]
